//! The host's links, bridge ports, bridge forwarding databases and IPv4 routes, read from
//! rtnetlink: dumps on request, and the kernel's change notifications as a stream of
//! [`HostEvent`]s.
//!
//! Two sockets: one answers dumps, the other only listens to the multicast groups. A dump answer
//! is paced by the reader, so it cannot overflow; events can (when the agent does not read them in
//! time), and then the kernel drops them: [`HostEvents::next`] reports that as
//! [`HostEvent::Resync`], after which the agent must dump everything again.

use std::{collections::BTreeMap, convert::Infallible, io, os::fd::AsRawFd, time::Duration};

use futures::{Stream, StreamExt, TryStreamExt, channel::mpsc::UnboundedReceiver};
use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{self, LinkAttribute, LinkFlags, LinkMessage},
    neighbour::{NeighbourAttribute, NeighbourMessage},
    nsid::{NsidAttribute, NsidMessage},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType},
};
use netlink_sys::{AsyncSocket, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE};
use rtnetlink::{Handle, MulticastGroup};

/// How long a request may take before [`NetlinkError::Timeout`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The receive queue [`Netlink::connect`] asks for on the event socket (the kernel doubles it):
/// room for a few thousand notifications while the agent is busy.
pub const EVENT_QUEUE_BYTES: usize = 4 << 20;

/// The multicast groups the agent's event socket joins.
const GROUPS: [MulticastGroup; 3] = [MulticastGroup::Link, MulticastGroup::Neigh, MulticastGroup::Ipv4Ifaddr];
/// The multicast group a routes store's event socket joins.
const ROUTE_GROUPS: [MulticastGroup; 1] = [MulticastGroup::Ipv4Route];

/// One rtnetlink connection: dumps on request (the events arrive on the [`HostEvents`] that
/// [`Netlink::connect`] returns with it).
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

/// The kernel's link, bridge FDB and IPv4 address notifications, as [`HostEvent`]s.
#[derive(Debug)]
pub struct HostEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RawRoute>, SocketAddr)>,
}

/// A change on the host that the agent may have to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEvent {
    /// A link appeared or changed (name, ifindex, master, up/down, MTU, MAC...).
    Link(LinkInfo),
    /// A link was deleted (or moved to another network namespace).
    LinkGone { index: u32, name: String },
    /// A bridge FDB entry for a unicast MAC behind a port was added or changed (`present`), or
    /// deleted or no longer a learned one (not `present`, see [`learned_entry`]).
    Fdb { bridge: u32, port: u32, mac: [u8; 6], present: bool },
    /// An IPv4 address was added to or removed from the link `index`.
    Address { index: u32 },
    /// An IPv4 route was added or replaced (`present`), or deleted.
    Route { route: KernelRoute, present: bool },
    /// Events were lost (the kernel's queue for the event socket overflowed, or a notification
    /// could not be parsed): everything known from earlier dumps and events may be stale, and must
    /// be dumped again.
    Resync,
}

/// A network interface as rtnetlink describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// The hardware address, when it is an Ethernet one.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// The ifindex of the bridge (or bond...) this link is enslaved to.
    pub master: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Operationally up (`IFF_RUNNING`: up with a carrier, e.g. a veth whose peer is up too).
    pub running: bool,
    /// The driver kind from `IFLA_LINKINFO` ("bridge", "veth", "vxlan"...); `None` for physical
    /// devices and loopback.
    pub kind: Option<String>,
    /// The largest IPv4 GSO packet the stack may hand the link (`gso_ipv4_max_size`); `None` on
    /// kernels before 6.3, which have no such setting (no IPv4 BIG TCP).
    pub gso_ipv4_max: Option<u32>,
    /// The largest IPv4 packet GRO may build on the link (`gro_ipv4_max_size`).
    pub gro_ipv4_max: Option<u32>,
    /// The largest TSO packet the driver takes (`tso_max_size`): the ceiling of the two above.
    pub tso_max: Option<u32>,
    /// The other end of a veth pair (`IFLA_LINK`), with the id of the network namespace it is in
    /// when that is another one (`IFLA_LINK_NETNSID`, as this namespace numbers it).
    pub peer: Option<(Option<i32>, u32)>,
}

/// An IPv4 route as the kernel describes it: what a routes store needs to judge it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub destination: std::net::Ipv4Addr,
    pub prefix: u8,
    pub table: u32,
    /// `rtm_protocol`: who installed it (`RTPROT_*`: 188 ospf, 186 bgp, 12 bird...).
    pub protocol: u8,
    /// A plain unicast route (not blackhole, unreachable, local, broadcast...).
    pub unicast: bool,
    pub gateway: Option<std::net::Ipv4Addr>,
    /// The outgoing interface.
    pub oif: Option<u32>,
    /// The metric (`RTA_PRIORITY`).
    pub priority: u32,
    /// `onlink`: the gateway is reached on `oif` whatever the interface's addresses.
    pub onlink: bool,
    /// The route has several next hops (`RTA_MULTIPATH`); `gateway`, `oif` and `onlink` are the
    /// first one's.
    pub multipath: bool,
    /// A route with a type of service or a source prefix: not a plain destination route.
    pub qualified: bool,
}

impl KernelRoute {
    /// The route a route message describes; `None` for one that is not IPv4.
    pub fn of(message: &RouteMessage) -> Option<KernelRoute> {
        let h = &message.header;
        if h.address_family != AddressFamily::Inet {
            return None;
        }
        let mut route = KernelRoute {
            destination: std::net::Ipv4Addr::UNSPECIFIED,
            prefix: h.destination_prefix_length,
            table: u32::from(h.table),
            protocol: h.protocol.into(),
            unicast: h.kind == RouteType::Unicast,
            gateway: None,
            oif: None,
            priority: 0,
            onlink: h.flags.contains(RouteFlags::Onlink),
            multipath: false,
            qualified: h.tos != 0 || h.source_prefix_length != 0,
        };
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => route.destination = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some(*a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Priority(p) => route.priority = *p,
                RouteAttribute::Table(t) => route.table = *t,
                RouteAttribute::MultiPath(hops) => {
                    route.multipath = hops.len() > 1;
                    if let Some(first) = hops.first() {
                        route.oif = Some(first.interface_index);
                        route.onlink |=
                            first.flags.contains(netlink_packet_route::route::RouteNextHopFlags::Onlink);
                        for a in &first.attributes {
                            if let RouteAttribute::Gateway(RouteAddress::Inet(g)) = a {
                                route.gateway = Some(*g);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Some(route)
    }
}

/// A failed rtnetlink operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A socket could not be opened, configured or subscribed.
    #[error("{doing}: {error}")]
    Socket { doing: &'static str, error: io::Error },
    /// The kernel refused a request or answered it with something unexpected.
    #[error("{doing}: {}", describe(error))]
    Request { doing: String, error: rtnetlink::Error },
    /// The kernel did not finish answering within [`REQUEST_TIMEOUT`].
    #[error("{doing}: no complete answer from the kernel within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout { doing: String },
}

/// The reason in a [`NetlinkError::Request`], without rtnetlink's own wording around errno.
fn describe(error: &rtnetlink::Error) -> String {
    match error {
        rtnetlink::Error::NetlinkError(e) => e.to_io().to_string(),
        rtnetlink::Error::RequestFailed => "the netlink connection is closed".to_string(),
        other => other.to_string(),
    }
}

impl Netlink {
    /// Opens the connection and subscribes to link, neighbour and IPv4 address notifications,
    /// with an event queue of [`EVENT_QUEUE_BYTES`]. The two socket tasks are spawned with
    /// [`tokio::spawn`] on the current runtime (no `LocalSet` needed, but a time driver for
    /// [`REQUEST_TIMEOUT`]); the request one ends when the last clone of the [`Netlink`] (and of
    /// its [`Handle`]) is dropped, the event one when the [`HostEvents`] is.
    ///
    /// Subscribe first, dump second: a change that lands between the two is then seen twice,
    /// never missed.
    pub async fn connect() -> Result<(Netlink, HostEvents), NetlinkError> {
        Self::connect_with_event_queue(EVENT_QUEUE_BYTES).await
    }

    /// [`Netlink::connect`] with an event queue of `bytes` (the kernel doubles it, and caps it at
    /// `net.core.rmem_max` unless the process has `CAP_NET_ADMIN`). A queue smaller than one
    /// notification (a few KiB) loses them all.
    pub async fn connect_with_event_queue(bytes: usize) -> Result<(Netlink, HostEvents), NetlinkError> {
        Self::connect_to(&GROUPS, bytes).await
    }

    /// A connection whose events are the kernel's IPv4 route notifications only (a routes store's
    /// own), with an event queue of [`EVENT_QUEUE_BYTES`].
    pub async fn connect_routes() -> Result<(Netlink, HostEvents), NetlinkError> {
        Self::connect_to(&ROUTE_GROUPS, EVENT_QUEUE_BYTES).await
    }

    /// A connection whose event socket joins `groups`.
    async fn connect_to(
        groups: &[MulticastGroup],
        bytes: usize,
    ) -> Result<(Netlink, HostEvents), NetlinkError> {
        let (requests, handle, unsolicited) = rtnetlink::new_connection()
            .map_err(|error| NetlinkError::Socket { doing: "opening the rtnetlink request socket", error })?;
        // The request socket joins no group: nothing unsolicited arrives there.
        drop(unsolicited);
        tokio::spawn(requests);

        let (mut events, _, messages) =
            rtnetlink::proto::new_connection_with_socket::<RawRoute, TokioSocket>(NETLINK_ROUTE).map_err(
                |error| NetlinkError::Socket { doing: "opening the rtnetlink event socket", error },
            )?;
        let socket = events.socket_mut().socket_mut();
        set_receive_queue(socket, bytes)
            .map_err(|error| NetlinkError::Socket { doing: "sizing the rtnetlink event queue", error })?;
        let groups = groups.iter().fold(0u32, |all, &g| all | 1 << (g as u32 - 1));
        socket.bind(&SocketAddr::new(0, groups)).map_err(|error| NetlinkError::Socket {
            doing: "subscribing to rtnetlink notifications",
            error,
        })?;
        tokio::spawn(events);
        Ok((Netlink { handle }, HostEvents { messages }))
    }

    /// The rtnetlink handle the dumps go through, for other requests.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The link called `name`; `None` if there is none (or `name` cannot be an interface name).
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Ok(None);
        }
        let answer = self.handle.link().get().match_name(name).execute();
        one_link(collect(|| format!("reading link {name}"), answer).await)
    }

    /// All the links of the network namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        self.dump_links(|| "dumping the links".to_string()).await
    }

    /// Every IPv4 route of every table.
    pub async fn routes(&self) -> Result<Vec<KernelRoute>, NetlinkError> {
        let mut request = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
        // Every table, not only main: a dump with table 0 (RT_TABLE_UNSPEC) lists them all.
        request.header.table = 0;
        let answer = self.handle.route().get(request).execute();
        let messages = collect(|| "dumping the IPv4 routes".to_string(), answer).await?;
        Ok(messages.iter().filter_map(KernelRoute::of).collect())
    }

    /// The ports of the bridge `bridge` (an ifindex): name -> ifindex. Empty if it has none, or if
    /// there is no such bridge.
    pub async fn bridge_ports(&self, bridge: u32) -> Result<BTreeMap<String, u32>, NetlinkError> {
        let links = self.dump_links(|| format!("listing the ports of bridge index {bridge}")).await?;
        Ok(links.into_iter().filter(|l| l.master == Some(bridge)).map(|l| (l.name, l.index)).collect())
    }

    /// The learned MACs behind the ports of the bridge `bridge` (an ifindex): MAC -> port ifindex
    /// (see [`learned_entry`]).
    pub async fn bridge_fdb(&self, bridge: u32) -> Result<BTreeMap<[u8; 6], u32>, NetlinkError> {
        let answer = self.handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
        let entries = collect(|| format!("dumping the FDB of bridge index {bridge}"), answer).await?;
        Ok(entries
            .iter()
            .filter_map(|m| learned_entry(&FdbFields::of(m)))
            .filter(|e| e.bridge == bridge)
            .map(|e| (e.mac, e.port))
            .collect())
    }

    /// A connection for requests alone (no events), in the calling thread's network namespace;
    /// its socket task is spawned on the current runtime.
    pub fn requests_only() -> Result<Netlink, NetlinkError> {
        let (requests, handle, _) = rtnetlink::new_connection()
            .map_err(|error| NetlinkError::Socket { doing: "opening the rtnetlink request socket", error })?;
        tokio::spawn(requests);
        Ok(Netlink { handle })
    }

    /// The link with ifindex `index`; `None` if there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        let answer = self.handle.link().get().match_index(index).execute();
        one_link(collect(|| format!("reading link index {index}"), answer).await)
    }

    /// The id this network namespace gives the one `netns` (an open namespace file) is
    /// (`RTM_GETNSID`, as [`LinkInfo::peer`] reports it); `None` if it gives it none.
    pub async fn nsid_of(&self, netns: &std::fs::File) -> Result<Option<i32>, NetlinkError> {
        let mut message = NsidMessage::default();
        message.attributes = vec![NsidAttribute::Fd(netns.as_raw_fd() as u32)];
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(message));
        request.header.flags = netlink_packet_core::NLM_F_REQUEST;
        let doing = || "asking the id of a network namespace".to_string();
        let answer = self
            .handle
            .clone()
            .request(request)
            .map_err(|error| NetlinkError::Request { doing: doing(), error })?;
        let answers = match tokio::time::timeout(REQUEST_TIMEOUT, answer.collect::<Vec<_>>()).await {
            Ok(answers) => answers,
            Err(_) => return Err(NetlinkError::Timeout { doing: doing() }),
        };
        for answer in answers {
            match answer.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    return Ok(m.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                        _ => None,
                    }));
                }
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(NetlinkError::Request {
                        doing: doing(),
                        error: rtnetlink::Error::NetlinkError(e),
                    });
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Sets the IPv4 GSO and GRO sizes (`gso_ipv4_max_size`, `gro_ipv4_max_size`) of the link
    /// `index`; `name` names it in errors.
    pub async fn set_ipv4_gso_gro(
        &self,
        index: u32,
        name: &str,
        (gso, gro): (u32, u32),
    ) -> Result<(), NetlinkError> {
        let message = rtnetlink::LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::GsoIpv4MaxSize(gso))
            .append_extra_attribute(LinkAttribute::GroIpv4MaxSize(gro))
            .build();
        let doing = || format!("setting the IPv4 GSO and GRO sizes of {name} to {gso} and {gro}");
        match tokio::time::timeout(REQUEST_TIMEOUT, self.handle.link().set(message).execute()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(NetlinkError::Request { doing: doing(), error }),
            Err(_) => Err(NetlinkError::Timeout { doing: doing() }),
        }
    }

    /// All the links, `doing` naming the operation in errors.
    async fn dump_links(&self, doing: impl FnOnce() -> String) -> Result<Vec<LinkInfo>, NetlinkError> {
        let answer = self.handle.link().get().execute();
        Ok(collect(doing, answer).await?.iter().filter(|m| is_link(m)).map(LinkInfo::of).collect())
    }
}

/// The link an answer to a request for one describes; `None` when the kernel says there is no such
/// device.
fn one_link(answer: Result<Vec<LinkMessage>, NetlinkError>) -> Result<Option<LinkInfo>, NetlinkError> {
    match answer {
        Ok(links) => Ok(links.iter().find(|m| is_link(m)).map(LinkInfo::of)),
        Err(NetlinkError::Request { error: rtnetlink::Error::NetlinkError(e), .. })
            if e.raw_code() == -libc::ENODEV =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether a link message describes a link. A bridge also sends `AF_BRIDGE` link messages about
/// its ports, and a deletion among them means "no longer a port", not "deleted".
fn is_link(message: &LinkMessage) -> bool {
    message.header.interface_family == AddressFamily::Unspec
}

/// All the answers to a request, or the first error; [`NetlinkError::Timeout`] after
/// [`REQUEST_TIMEOUT`].
async fn collect<T>(
    doing: impl FnOnce() -> String,
    answer: impl Stream<Item = Result<T, rtnetlink::Error>>,
) -> Result<Vec<T>, NetlinkError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, answer.try_collect::<Vec<T>>()).await {
        Ok(Ok(all)) => Ok(all),
        Ok(Err(error)) => Err(NetlinkError::Request { doing: doing(), error }),
        Err(_) => Err(NetlinkError::Timeout { doing: doing() }),
    }
}

/// Asks for a receive queue of `bytes` on `socket`: beyond `net.core.rmem_max` with
/// `CAP_NET_ADMIN` (SO_RCVBUFFORCE), up to it otherwise.
fn set_receive_queue(socket: &netlink_sys::Socket, bytes: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: `size` outlives the call, and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    };
    set(libc::SO_RCVBUFFORCE).or_else(|_| set(libc::SO_RCVBUF))
}

impl HostEvents {
    /// The next event; `None` once the event socket has failed (the kernel closed it, or it could
    /// not be read). Cancel-safe: an event is never lost when this future is dropped unfinished, so
    /// it can be a branch of `tokio::select!`.
    pub async fn next(&mut self) -> Option<HostEvent> {
        while let Some((message, _)) = self.messages.next().await {
            if let Some(event) = event_of(message) {
                return Some(event);
            }
        }
        None
    }
}

/// The event a message of the event socket stands for, if the agent cares about it.
fn event_of(message: NetlinkMessage<RawRoute>) -> Option<HostEvent> {
    match message.payload {
        // Also what the socket task reports when the kernel answers a read with ENOBUFS.
        NetlinkPayload::Overrun(_) => {
            tracing::warn!("the kernel dropped rtnetlink notifications (event queue full): resyncing");
            Some(HostEvent::Resync)
        }
        NetlinkPayload::InnerMessage(RawRoute(bytes)) => {
            match RouteNetlinkMessage::deserialize(&message.header, &bytes) {
                Ok(parsed) => host_event(&parsed),
                Err(e) => {
                    tracing::warn!(
                        message_type = message.header.message_type,
                        error = %e,
                        "could not parse an rtnetlink notification: resyncing"
                    );
                    Some(HostEvent::Resync)
                }
            }
        }
        _ => None,
    }
}

/// The event a parsed notification stands for, if the agent cares about it.
pub fn host_event(message: &RouteNetlinkMessage) -> Option<HostEvent> {
    match message {
        RouteNetlinkMessage::NewLink(l) if is_link(l) => Some(HostEvent::Link(LinkInfo::of(l))),
        RouteNetlinkMessage::DelLink(l) if is_link(l) => {
            let info = LinkInfo::of(l);
            Some(HostEvent::LinkGone { index: info.index, name: info.name })
        }
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            let fields = FdbFields::of(n);
            let entry = bridge_entry(&fields)?;
            let present =
                matches!(message, RouteNetlinkMessage::NewNeighbour(_)) && learned_state(fields.state);
            Some(HostEvent::Fdb { bridge: entry.bridge, port: entry.port, mac: entry.mac, present })
        }
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a)
            if a.header.family == AddressFamily::Inet =>
        {
            Some(HostEvent::Address { index: a.header.index })
        }
        RouteNetlinkMessage::NewRoute(r) => {
            KernelRoute::of(r).map(|route| HostEvent::Route { route, present: true })
        }
        RouteNetlinkMessage::DelRoute(r) => {
            KernelRoute::of(r).map(|route| HostEvent::Route { route, present: false })
        }
        _ => None,
    }
}

impl LinkInfo {
    /// The link a link message describes.
    pub fn of(message: &LinkMessage) -> LinkInfo {
        let flags = message.header.flags;
        let mut info = LinkInfo {
            index: message.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            master: None,
            up: flags.contains(LinkFlags::Up),
            running: flags.contains(LinkFlags::Running),
            kind: None,
            gso_ipv4_max: None,
            gro_ipv4_max: None,
            tso_max: None,
            peer: None,
        };
        let mut peer_index = None;
        let mut peer_netns = None;
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => info.name.clone_from(name),
                LinkAttribute::Address(mac) => info.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
                LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
                LinkAttribute::Controller(master) if *master != 0 => info.master = Some(*master),
                LinkAttribute::GsoIpv4MaxSize(bytes) => info.gso_ipv4_max = Some(*bytes),
                LinkAttribute::GroIpv4MaxSize(bytes) => info.gro_ipv4_max = Some(*bytes),
                LinkAttribute::TsoMaxSize(bytes) => info.tso_max = Some(*bytes),
                LinkAttribute::Link(index) if *index != 0 => peer_index = Some(*index),
                LinkAttribute::LinkNetNsId(id) => peer_netns = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let link::LinkInfo::Kind(kind) = i {
                            info.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        if info.kind.as_deref() == Some("veth") {
            info.peer = peer_index.map(|index| (peer_netns, index));
        }
        info
    }
}

/// The fields of a neighbour message that decide whether it is a MAC learned behind a bridge port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdbFields {
    /// The message is an `AF_BRIDGE` one: a forwarding database entry, not an ARP or NDP one.
    pub bridge_family: bool,
    /// `ndm_ifindex`: the port (or the device whose own table it is, with `NTF_SELF`).
    pub port: u32,
    /// `ndm_state`: `NUD_*` bits.
    pub state: u16,
    /// `ndm_flags`: `NTF_*` bits.
    pub flags: u8,
    /// `NDA_MASTER`: the bridge whose table holds the entry. The kernel names a bridge's entries
    /// with this attribute; it does not set `NTF_MASTER` in what it sends.
    pub master: Option<u32>,
    /// `NDA_LLADDR`, when it is 6 bytes long.
    pub mac: Option<[u8; 6]>,
}

impl FdbFields {
    /// The fields of `message`.
    pub fn of(message: &NeighbourMessage) -> FdbFields {
        let mut fields = FdbFields {
            bridge_family: message.header.family == AddressFamily::Bridge,
            port: message.header.ifindex,
            state: message.header.state.into(),
            flags: message.header.flags.bits(),
            master: None,
            mac: None,
        };
        for attribute in &message.attributes {
            match attribute {
                NeighbourAttribute::Controller(master) => fields.master = Some(*master),
                NeighbourAttribute::LinkLayerAddress(mac) => {
                    fields.mac = <[u8; 6]>::try_from(mac.as_slice()).ok()
                }
                _ => {}
            }
        }
        fields
    }
}

/// A bridge forwarding database entry: `mac` is behind `port` of `bridge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub bridge: u32,
    pub port: u32,
    pub mac: [u8; 6],
}

/// The entry `fields` describe if it is one of a bridge's own entries (`NDA_MASTER` set, no
/// `NTF_SELF`, which marks a device's own table) for a unicast MAC behind one of its ports, in any
/// state; `None` for anything else.
pub fn bridge_entry(fields: &FdbFields) -> Option<FdbEntry> {
    let bridge = fields.master?;
    let mac = fields.mac?;
    let own_table = fields.flags & libc::NTF_SELF != 0;
    let unicast = mac[0] & 1 == 0;
    let of_a_port = fields.port != bridge;
    if fields.bridge_family && !own_table && unicast && of_a_port {
        Some(FdbEntry { bridge, port: fields.port, mac })
    } else {
        None
    }
}

/// Whether an entry in `state` (`NUD_*` bits) was learned rather than configured: neither
/// `NUD_PERMANENT` (the bridge's and its ports' own addresses) nor `NUD_NOARP` (static entries).
/// Learned entries are `NUD_REACHABLE`, or `NUD_STALE` once past the ageing time.
pub fn learned_state(state: u16) -> bool {
    state & (libc::NUD_PERMANENT | libc::NUD_NOARP) == 0
}

/// The entry `fields` describe if it is a MAC the bridge learned behind one of its ports: what
/// `bridge -j fdb show br BRIDGE` lists with `"master": BRIDGE`, no `self` flag, a unicast MAC
/// and a state of `""` or `"stale"`.
pub fn learned_entry(fields: &FdbFields) -> Option<FdbEntry> {
    bridge_entry(fields).filter(|_| learned_state(fields.state))
}

/// A route netlink message as it came off the event socket, parsed later by [`event_of`] so that
/// a message this crate version cannot parse is reported instead of dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RawRoute(Vec<u8>);

impl NetlinkDeserializable for RawRoute {
    type Error = Infallible;
    fn deserialize(_: &NetlinkHeader, payload: &[u8]) -> Result<Self, Infallible> {
        Ok(RawRoute(payload.to_vec()))
    }
}

/// Never sent: the event socket makes no requests.
impl NetlinkSerializable for RawRoute {
    fn message_type(&self) -> u16 {
        0
    }
    fn buffer_len(&self) -> usize {
        self.0.len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        buffer.copy_from_slice(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::{
        address::AddressMessage,
        link::{InfoKind, LinkInfo as Info},
        neighbour::{NeighbourFlags, NeighbourState},
    };

    const BR: u32 = 3;
    const MAC: [u8; 6] = [2, 0x42, 10, 0xf4, 1, 2];

    /// A learned entry for `MAC` behind port 11 of `BR`, as the kernel sends it.
    fn learned() -> FdbFields {
        FdbFields {
            bridge_family: true,
            port: 11,
            state: libc::NUD_REACHABLE,
            flags: 0,
            master: Some(BR),
            mac: Some(MAC),
        }
    }

    #[test]
    fn learned_entries_are_dynamic_unicast_entries_of_the_bridge() {
        let entry = FdbEntry { bridge: BR, port: 11, mac: MAC };
        assert_eq!(learned_entry(&learned()), Some(entry));
        // Past the ageing time, no state at all, or learned by a switch driver: still learned.
        for state in [libc::NUD_STALE, libc::NUD_NONE] {
            assert_eq!(learned_entry(&FdbFields { state, ..learned() }), Some(entry), "{state:#x}");
        }
        let extern_learned = FdbFields { flags: NeighbourFlags::ExtLearned.bits(), ..learned() };
        assert_eq!(learned_entry(&extern_learned), Some(entry));
        let not_learned = [
            // The ports' and the bridge's own addresses, static entries.
            FdbFields { state: libc::NUD_PERMANENT, ..learned() },
            FdbFields { state: libc::NUD_NOARP, ..learned() },
            // A device's own table (`self`), whatever its master.
            FdbFields { flags: libc::NTF_SELF, state: libc::NUD_PERMANENT, master: None, ..learned() },
            FdbFields { flags: libc::NTF_SELF, ..learned() },
            FdbFields { flags: libc::NTF_SELF | libc::NTF_MASTER, ..learned() },
            // No bridge, or the bridge device itself as the port.
            FdbFields { master: None, ..learned() },
            FdbFields { port: BR, ..learned() },
            // Multicast and broadcast MACs, no MAC.
            FdbFields { mac: Some([0x01, 0, 0x5e, 0, 0, 1]), ..learned() },
            FdbFields { mac: Some([0x33, 0x33, 0, 0, 0, 1]), ..learned() },
            FdbFields { mac: Some([0xff; 6]), ..learned() },
            FdbFields { mac: None, ..learned() },
            // An ARP entry.
            FdbFields { bridge_family: false, ..learned() },
        ];
        for fields in not_learned {
            assert_eq!(learned_entry(&fields), None, "{fields:?}");
        }
        // A static or permanent entry is still one of the bridge's entries (an event about it
        // says the MAC is not a learned one any more).
        assert_eq!(bridge_entry(&FdbFields { state: libc::NUD_NOARP, ..learned() }), Some(entry));
    }

    /// A bridge neighbour message with the given fields.
    fn neighbour(
        port: u32,
        state: NeighbourState,
        flags: NeighbourFlags,
        master: Option<u32>,
    ) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = port;
        m.header.state = state;
        m.header.flags = flags;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(MAC.to_vec()));
        m.attributes.extend(master.map(NeighbourAttribute::Controller));
        m
    }

    #[test]
    fn fields_are_read_from_neighbour_messages() {
        let mut m = neighbour(11, NeighbourState::Stale, NeighbourFlags::Own, Some(BR));
        m.attributes.push(NeighbourAttribute::Vlan(1));
        let expected =
            FdbFields { state: libc::NUD_STALE, flags: libc::NTF_SELF, master: Some(BR), ..learned() };
        assert_eq!(FdbFields::of(&m), expected);
        m.header.family = AddressFamily::Inet;
        m.attributes = vec![NeighbourAttribute::LinkLayerAddress(vec![1, 2, 3])];
        let expected = FdbFields {
            bridge_family: false,
            state: libc::NUD_STALE,
            flags: libc::NTF_SELF,
            master: None,
            mac: None,
            ..learned()
        };
        assert_eq!(FdbFields::of(&m), expected);
    }

    #[test]
    fn neighbour_messages_become_fdb_events() {
        let none = NeighbourFlags::empty();
        let new = RouteNetlinkMessage::NewNeighbour(neighbour(11, NeighbourState::Reachable, none, Some(BR)));
        let fdb = |present| Some(HostEvent::Fdb { bridge: BR, port: 11, mac: MAC, present });
        assert_eq!(host_event(&new), fdb(true));
        let del = RouteNetlinkMessage::DelNeighbour(neighbour(11, NeighbourState::Reachable, none, Some(BR)));
        assert_eq!(host_event(&del), fdb(false));
        // Made static: no longer a learned MAC.
        let made_static =
            RouteNetlinkMessage::NewNeighbour(neighbour(11, NeighbourState::Noarp, none, Some(BR)));
        assert_eq!(host_event(&made_static), fdb(false));
        // A device's own table, an ARP entry: nothing.
        let own = RouteNetlinkMessage::NewNeighbour(neighbour(
            11,
            NeighbourState::Permanent,
            NeighbourFlags::Own,
            None,
        ));
        assert_eq!(host_event(&own), None);
        let mut arp = neighbour(11, NeighbourState::Reachable, none, None);
        arp.header.family = AddressFamily::Inet;
        assert_eq!(host_event(&RouteNetlinkMessage::NewNeighbour(arp)), None);
    }

    /// A link message for a veth port of `BR`.
    fn veth_port(family: AddressFamily) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.interface_family = family;
        m.header.index = 11;
        m.header.flags = LinkFlags::Up | LinkFlags::Broadcast | LinkFlags::Multicast;
        m.attributes = vec![
            LinkAttribute::IfName("vc1".to_string()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Address(MAC.to_vec()),
            LinkAttribute::Controller(BR),
            LinkAttribute::LinkInfo(vec![Info::Kind(InfoKind::Veth)]),
            LinkAttribute::GsoIpv4MaxSize(65536),
            LinkAttribute::GroIpv4MaxSize(185_000),
            LinkAttribute::TsoMaxSize(524_280),
            LinkAttribute::Link(2),
            LinkAttribute::LinkNetNsId(7),
        ];
        m
    }

    #[test]
    fn link_messages_become_link_events() {
        let vc1 = LinkInfo {
            index: 11,
            name: "vc1".to_string(),
            mac: Some(MAC),
            mtu: 1450,
            master: Some(BR),
            up: true,
            running: false,
            kind: Some("veth".to_string()),
            gso_ipv4_max: Some(65536),
            gro_ipv4_max: Some(185_000),
            tso_max: Some(524_280),
            peer: Some((Some(7), 2)),
        };
        let new = RouteNetlinkMessage::NewLink(veth_port(AddressFamily::Unspec));
        assert_eq!(host_event(&new), Some(HostEvent::Link(vc1)));
        let del = RouteNetlinkMessage::DelLink(veth_port(AddressFamily::Unspec));
        assert_eq!(host_event(&del), Some(HostEvent::LinkGone { index: 11, name: "vc1".to_string() }));
        // What a bridge says about its ports, including "vc1 left the bridge": not about links.
        assert_eq!(host_event(&RouteNetlinkMessage::NewLink(veth_port(AddressFamily::Bridge))), None);
        assert_eq!(host_event(&RouteNetlinkMessage::DelLink(veth_port(AddressFamily::Bridge))), None);

        let mut lo = LinkMessage::default();
        lo.header.index = 1;
        lo.header.flags = LinkFlags::Up | LinkFlags::Running | LinkFlags::Loopback;
        lo.attributes = vec![LinkAttribute::IfName("lo".to_string()), LinkAttribute::Address(vec![0; 6])];
        let Some(HostEvent::Link(lo)) = host_event(&RouteNetlinkMessage::NewLink(lo)) else { panic!() };
        assert_eq!((lo.running, lo.master, lo.kind, lo.mac), (true, None, None, Some([0; 6])));
    }

    #[test]
    fn ipv4_address_messages_become_address_events() {
        let mut a = AddressMessage::default();
        a.header.family = AddressFamily::Inet;
        a.header.index = 4;
        assert_eq!(
            host_event(&RouteNetlinkMessage::NewAddress(a.clone())),
            Some(HostEvent::Address { index: 4 })
        );
        assert_eq!(
            host_event(&RouteNetlinkMessage::DelAddress(a.clone())),
            Some(HostEvent::Address { index: 4 })
        );
        a.header.family = AddressFamily::Inet6;
        assert_eq!(host_event(&RouteNetlinkMessage::NewAddress(a)), None);
    }

    #[test]
    fn route_messages_become_route_events() {
        use netlink_packet_route::route::{RouteHeader, RouteProtocol};
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 24;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Ospf;
        m.header.kind = RouteType::Unicast;
        m.header.flags = RouteFlags::Onlink;
        m.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet([10, 244, 2, 0].into())),
            RouteAttribute::Gateway(RouteAddress::Inet([198, 18, 0, 2].into())),
            RouteAttribute::Oif(7),
            RouteAttribute::Priority(20),
        ];
        let route = KernelRoute {
            destination: [10, 244, 2, 0].into(),
            prefix: 24,
            table: 254,
            protocol: 188,
            unicast: true,
            gateway: Some([198, 18, 0, 2].into()),
            oif: Some(7),
            priority: 20,
            onlink: true,
            multipath: false,
            qualified: false,
        };
        let new = RouteNetlinkMessage::NewRoute(m.clone());
        assert_eq!(event_of(wire(new)), Some(HostEvent::Route { route: route.clone(), present: true }));
        let del = RouteNetlinkMessage::DelRoute(m.clone());
        assert_eq!(host_event(&del), Some(HostEvent::Route { route: route.clone(), present: false }));
        // A table number above 255 travels in RTA_TABLE.
        m.attributes.push(RouteAttribute::Table(1000));
        m.header.kind = RouteType::BlackHole;
        assert_eq!(KernelRoute::of(&m).map(|r| (r.table, r.unicast)), Some((1000, false)));
        m.header.address_family = AddressFamily::Inet6;
        assert_eq!(KernelRoute::of(&m), None, "IPv6 is not followed");
    }

    /// `message` as the event socket reads it off the wire.
    fn wire(message: RouteNetlinkMessage) -> NetlinkMessage<RawRoute> {
        let mut message = NetlinkMessage::from(message);
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        NetlinkMessage::<RawRoute>::deserialize(&bytes).unwrap()
    }

    #[test]
    fn socket_messages_become_events_or_resync() {
        let new = RouteNetlinkMessage::NewLink(veth_port(AddressFamily::Unspec));
        let Some(HostEvent::Link(link)) = event_of(wire(new)) else { panic!() };
        assert_eq!((link.index, link.name.as_str(), link.master), (11, "vc1", Some(BR)));
        let none = NeighbourFlags::empty();
        let del = RouteNetlinkMessage::DelNeighbour(neighbour(11, NeighbourState::Stale, none, Some(BR)));
        assert_eq!(
            event_of(wire(del)),
            Some(HostEvent::Fdb { bridge: BR, port: 11, mac: MAC, present: false })
        );

        // What the socket task reports on ENOBUFS.
        let mut header = NetlinkHeader::default();
        header.message_type = netlink_packet_core::NLMSG_OVERRUN;
        let overrun = NetlinkMessage::new(header, NetlinkPayload::Overrun(Vec::new()));
        assert_eq!(event_of(overrun), Some(HostEvent::Resync));

        // A notification that cannot be parsed (a link message shorter than its header).
        let mut header = NetlinkHeader::default();
        header.message_type = libc::RTM_NEWLINK;
        let garbled = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(RawRoute(vec![0; 3])));
        assert_eq!(event_of(garbled), Some(HostEvent::Resync));

        // Done, Noop: nothing.
        assert_eq!(event_of(NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::Noop)), None);
    }

    #[test]
    fn errors_name_the_operation() {
        let mut e = netlink_packet_core::ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(-libc::ENODEV);
        let error = NetlinkError::Request {
            doing: "dumping the FDB of bridge index 5".to_string(),
            error: rtnetlink::Error::NetlinkError(e),
        };
        assert_eq!(error.to_string(), "dumping the FDB of bridge index 5: No such device (os error 19)");
        let timeout = NetlinkError::Timeout { doing: "dumping the links".to_string() };
        assert_eq!(timeout.to_string(), "dumping the links: no complete answer from the kernel within 10 s");
    }
}
