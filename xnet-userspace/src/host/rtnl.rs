//! The host set-up's requests to the kernel, over a blocking rtnetlink socket: the links, the
//! address, the routes and the rule that `ip` would make, each one acknowledged before the next,
//! so the agent needs no iproute2 on the host or in its image.

use std::{io, net::Ipv4Addr, os::fd::AsRawFd, time::Duration};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use crate::cidr::Ipv4Network;

/// How long the kernel may take to answer one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One rtnetlink socket of the calling thread's network namespace.
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
}

/// A route as the host set-up writes it: to `to`, through `device` (with `source`), or of `kind`
/// (a blackhole or a throw) with no device.
pub struct Route {
    pub to: Ipv4Network,
    pub kind: RouteType,
    pub device: Option<u32>,
    pub source: Option<Ipv4Addr>,
    pub protocol: RouteProtocol,
    pub metric: Option<u32>,
    pub table: u32,
}

impl Route {
    fn message(&self, deleting: bool) -> RouteMessage {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(self.to.network(), self.to.prefix())
            .protocol(self.protocol)
            .kind(self.kind)
            .table_id(self.table);
        if let Some(index) = self.device {
            route = route.output_interface(index);
        }
        if let Some(source) = self.source {
            route = route.pref_source(source);
        }
        if let Some(metric) = self.metric {
            route = route.priority(metric);
        }
        // As `ip route` does: a deletion matches a route of any scope; a unicast route straight
        // out of a device (no gateway) reaches its link alone.
        let scope = if deleting {
            RouteScope::NoWhere
        } else if self.kind == RouteType::Unicast && self.device.is_some() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        route.scope(scope).build()
    }
}

impl Rtnl {
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Dumps filtered by the kernel (a route dump by table), not the whole host's.
        socket.set_netlink_get_strict_chk(true)?;
        let timeout = libc::timeval { tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
        // SAFETY: the option value is a valid timeval of the size given, on an open socket.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Rtnl { socket, sequence: 0 })
    }

    /// Creates the veth pair `name`/`peer`.
    pub fn add_veth(&mut self, name: &str, peer: &str) -> io::Result<()> {
        let link = LinkVeth::new(name, peer).build();
        self.acknowledged(RouteNetlinkMessage::NewLink(link), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Creates `name`, a vxlan device in collect-metadata mode (`external`) on UDP `port`, that
    /// learns no addresses.
    pub fn add_vxlan_external(&mut self, name: &str, port: u16) -> io::Result<()> {
        let link = LinkMessageBuilder::<LinkVxlan>::new(name)
            .port(port)
            .collect_metadata(true)
            .learning(false)
            .build();
        self.acknowledged(RouteNetlinkMessage::NewLink(link), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Changes the link `index` as `change` says (MTU, flags, address).
    pub fn set_link(
        &mut self,
        index: u32,
        change: impl FnOnce(LinkMessageBuilder<LinkUnspec>) -> LinkMessageBuilder<LinkUnspec>,
    ) -> io::Result<()> {
        let link = change(LinkUnspec::new_with_index(index)).build();
        self.acknowledged(RouteNetlinkMessage::SetLink(link), 0)
    }

    /// Deletes the link `index` (the other end too, for a veth).
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let link = LinkUnspec::new_with_index(index).build();
        self.acknowledged(RouteNetlinkMessage::DelLink(link), 0)
    }

    /// Gives the link `index` the address `address/prefix`, replacing one it may have.
    pub fn replace_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix;
        message.header.index = index;
        message.attributes =
            vec![AddressAttribute::Local(address.into()), AddressAttribute::Address(address.into())];
        self.acknowledged(RouteNetlinkMessage::NewAddress(message), NLM_F_CREATE | NLM_F_REPLACE)
    }

    /// Writes `route`, replacing the one of the same destination, metric and table.
    pub fn replace_route(&mut self, route: &Route) -> io::Result<()> {
        self.acknowledged(RouteNetlinkMessage::NewRoute(route.message(false)), NLM_F_CREATE | NLM_F_REPLACE)
    }

    /// Deletes `route`.
    pub fn delete_route(&mut self, route: &Route) -> io::Result<()> {
        self.acknowledged(RouteNetlinkMessage::DelRoute(route.message(true)), 0)
    }

    /// Deletes every IPv4 route of `table` (none when there is no such table).
    pub fn flush_table(&mut self, table: u32) -> io::Result<()> {
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        request.header.table = RouteHeader::RT_TABLE_UNSPEC;
        request.attributes = vec![RouteAttribute::Table(table)];
        let routes = match self.dump(RouteNetlinkMessage::GetRoute(request)) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            routes => routes?,
        };
        for message in routes {
            if let RouteNetlinkMessage::NewRoute(route) = message
                && route_table(&route) == table
            {
                match self.acknowledged(RouteNetlinkMessage::DelRoute(route), 0) {
                    Err(e) if e.raw_os_error() != Some(libc::ESRCH) => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Adds the rule "packets to `to` that the host sends (`iif lo`) look up `table`", of priority
    /// `priority`.
    pub fn add_local_rule(&mut self, to: Ipv4Network, table: u32, priority: u32) -> io::Result<()> {
        let mut rule = RuleMessage::default();
        rule.header.family = AddressFamily::Inet;
        rule.header.dst_len = to.prefix();
        rule.header.action = RuleAction::ToTable;
        rule.header.table = if table < 256 { table as u8 } else { RouteHeader::RT_TABLE_UNSPEC };
        rule.attributes = vec![
            RuleAttribute::Destination(to.network().into()),
            RuleAttribute::Iifname("lo".into()),
            RuleAttribute::Priority(priority),
            RuleAttribute::Table(table),
        ];
        self.acknowledged(RouteNetlinkMessage::NewRule(rule), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Deletes every IPv4 rule of priority `priority`; returns how many there were.
    pub fn delete_rules(&mut self, priority: u32) -> io::Result<usize> {
        let mut deleted = 0;
        loop {
            let mut rule = RuleMessage::default();
            rule.header.family = AddressFamily::Inet;
            rule.attributes = vec![RuleAttribute::Priority(priority)];
            match self.acknowledged(RouteNetlinkMessage::DelRule(rule), 0) {
                Ok(()) => deleted += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(deleted),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `message` and waits for the kernel's acknowledgement; its refusal is the error.
    fn acknowledged(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let sequence = self.send(message, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        let mut answer = None;
        while answer.is_none() {
            self.receive(sequence, |payload| match payload {
                NetlinkPayload::Error(e) => {
                    answer =
                        Some(e.code.map_or(Ok(()), |code| Err(io::Error::from_raw_os_error(-code.get()))));
                    false
                }
                _ => true,
            })?;
        }
        answer.unwrap_or(Ok(()))
    }

    /// Sends the dump request `message` and returns every message of the answer.
    fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let sequence = self.send(message, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut messages = Vec::new();
        let mut failed = None;
        let mut more = true;
        while more {
            more = self.receive(sequence, |payload| match payload {
                NetlinkPayload::InnerMessage(m) => {
                    messages.push(m);
                    true
                }
                NetlinkPayload::Error(e) => {
                    failed = e.code.map(|code| io::Error::from_raw_os_error(-code.get()));
                    false
                }
                NetlinkPayload::Done(done) => {
                    if done.code != 0 {
                        failed = Some(io::Error::from_raw_os_error(-done.code));
                    }
                    false
                }
                _ => true,
            })?;
        }
        failed.map_or(Ok(messages), Err)
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        loop {
            match self.socket.send(&buffer, 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                sent => {
                    sent?;
                    break;
                }
            }
        }
        Ok(self.sequence)
    }

    /// Reads one datagram and hands `each` the payload of every message in it that answers
    /// `sequence`; returns false once `each` does (the answer is complete). Messages that answer
    /// an earlier request (one given up on) are skipped unread.
    fn receive(
        &mut self,
        sequence: u32,
        mut each: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> bool,
    ) -> io::Result<bool> {
        let buffer = loop {
            match self.socket.recv_from_full() {
                Ok((buffer, _)) => break buffer,
                // A signal for the agent (its handlers run elsewhere) while it waits here.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the kernel did not answer a netlink request",
                    ));
                }
                Err(e) => return Err(e),
            }
        };
        let invalid =
            |e: netlink_packet_core::DecodeError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        let mut offset = 0;
        let mut more = true;
        while offset < buffer.len() {
            let header = NetlinkBuffer::new_checked(&buffer[offset..]).map_err(invalid)?;
            let length = header.length() as usize;
            if header.sequence_number() == sequence && more {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buffer[offset..offset + length])
                        .map_err(invalid)?;
                more = each(message.payload);
            }
            offset += length.next_multiple_of(4);
        }
        Ok(more)
    }
}

/// The table a dumped route is in: the attribute when there is one (tables above 255).
fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(route.header.table as u32)
}
