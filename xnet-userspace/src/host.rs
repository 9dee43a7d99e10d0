//! The host around the datapath: interfaces, sysctls, the overlay route, MTUs, bpffs.

use std::{
    ffi::{CStr, CString},
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

mod rtnl;

use netlink_packet_route::route::{RouteHeader, RouteProtocol, RouteType};
use rtnl::{Route, Rtnl};

use crate::{
    cidr::{self, Ipv4Network},
    config::HOST_TABLE,
    mac::Mac,
};

/// A host setting or interface that stops the agent, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "interface {name} (`{key}` in the config) does not exist on this host; create it or fix the name"
    )]
    NoInterface { name: String, key: String },
    #[error(
        "interface {name} has no IPv4 address to use as the public IP; give it one or set `public_ip` in the config"
    )]
    NoAddress { name: String },
    #[error("cannot read {what} of interface {name}: {error}")]
    ReadInterface { name: String, what: &'static str, error: io::Error },
    #[error(
        "{path} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` or set `pin_dir`"
    )]
    NotBpffs { path: PathBuf },
    #[error(
        "another xnet agent (pid {pid}) runs with pin_dir {pin_dir}; stop it first, or give this one its own `pin_dir`"
    )]
    AgentRunning { pin_dir: PathBuf, pid: String },
    #[error("cannot set {setting}: {detail}; run xnet as root, or set it yourself and restart")]
    Setting { setting: String, detail: String },
}

/// What the agent needs to know about an interface.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
    pub mtu: u32,
    pub ipv4: Vec<Ipv4Addr>,
    /// The networks those addresses are on (what is reachable without a router).
    pub ipv4_nets: Vec<Ipv4Network>,
    /// The kernel driver (ethtool), e.g. "veth", "bridge", "virtio_net", "ixgbe".
    pub driver: Option<String>,
}

impl Interface {
    /// Looks `name` up in this network namespace; `key` is the config key that named it, for the
    /// error message. (Asks the kernel through a socket, not /sys, which may show another namespace.)
    pub fn find(name: &str, key: &str) -> Result<Self, HostError> {
        let index =
            ifindex(name).ok_or_else(|| HostError::NoInterface { name: name.into(), key: key.into() })?;
        let err = |what: &'static str| {
            move |error: io::Error| HostError::ReadInterface { name: name.into(), what, error }
        };
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(err("a socket"))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        let mut req = ifreq(name);
        // SAFETY: SIOCGIFMTU reads the name and writes ifru_mtu of a properly initialised ifreq.
        if unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &mut req) } != 0 {
            return Err(err("mtu")(io::Error::last_os_error()));
        }
        // SAFETY: the kernel filled the mtu member of the union.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu } as u32;
        let mut req = ifreq(name);
        // SAFETY: SIOCGIFHWADDR writes ifru_hwaddr of a properly initialised ifreq.
        if unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) } != 0 {
            return Err(err("address")(io::Error::last_os_error()));
        }
        // SAFETY: the kernel filled the hwaddr member of the union.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mac = Mac(std::array::from_fn(|i| data[i] as u8));
        let addrs = ipv4_addresses(name).map_err(err("addresses"))?;
        let ipv4 = addrs.iter().map(|(a, _)| *a).collect();
        let ipv4_nets = addrs.iter().filter_map(|(a, p)| cidr::network_of(*a, *p)).collect();
        let driver = driver_name(fd, name);
        Ok(Self { name: name.into(), index, mac, mtu, ipv4, ipv4_nets, driver })
    }

    /// Whether XDP pays off here: a NIC driver, not a virtual device. XDP on a veth turns off the
    /// sending peer's TSO/GSO (a no-op XDP program cut one TCP stream from 14.9 to 4.0 Gbit/s),
    /// and bridges and tunnels have no native XDP.
    pub fn is_virtual(&self) -> bool {
        matches!(
            self.driver.as_deref(),
            None | Some(
                "veth"
                    | "bridge"
                    | "tun"
                    | "vxlan"
                    | "macvlan"
                    | "ipvlan"
                    | "dummy"
                    | "netkit"
                    | "bond"
                    | "team"
            )
        )
    }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *dst = src as libc::c_char;
    }
    req
}

/// The driver behind an interface (ethtool's GDRVINFO), if the kernel says.
fn driver_name(fd: i32, name: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    // SAFETY: DrvInfo is plain data; zero is valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL with GDRVINFO writes at most size_of::<DrvInfo>() bytes into `info`,
    // which outlives the call.
    if unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut req) } != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// The IPv4 addresses of `name` with their prefix lengths, primary first.
fn ipv4_addresses(name: &str) -> io::Result<Vec<(Ipv4Addr, u8)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned; it stays valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        // SAFETY: ifa_name is a NUL-terminated string; ifa_addr, when not null and AF_INET, points at
        // a sockaddr_in.
        unsafe {
            if !ifa.ifa_addr.is_null()
                && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET
                && CStr::from_ptr(ifa.ifa_name).to_bytes() == name.as_bytes()
            {
                let sin: libc::sockaddr_in = std::ptr::read_unaligned(ifa.ifa_addr.cast());
                let prefix = if ifa.ifa_netmask.is_null() {
                    32
                } else {
                    let mask: libc::sockaddr_in = std::ptr::read_unaligned(ifa.ifa_netmask.cast());
                    u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
                };
                out.push((Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)), prefix));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Held while an agent runs: one agent per pin directory. A second agent would swap its programs
/// into the first one's links, and whichever stopped first would tear down the other's datapath.
pub struct PinDirLock {
    path: PathBuf,
    _file: fs::File,
}

impl Drop for PinDirLock {
    fn drop(&mut self) {
        // Unlink before the descriptor (and with it the lock) goes: a new agent then locks a new file.
        let _ = fs::remove_file(&self.path);
    }
}

/// Takes the lock of `pin_dir` (a file under /run/xnet), or says which agent holds it.
pub fn lock_pin_dir(pin_dir: &Path) -> Result<PinDirLock, HostError> {
    use std::{io::Write as _, os::fd::AsRawFd as _};
    let dir = Path::new("/run/xnet");
    let name: String = pin_dir.to_string_lossy().chars().map(|c| if c == '/' { '_' } else { c }).collect();
    let path = dir.join(format!("agent{name}.lock"));
    let setting = || format!("lock file {}", path.display());
    fs::create_dir_all(dir).map_err(|e| HostError::Setting { setting: setting(), detail: e.to_string() })?;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| HostError::Setting { setting: setting(), detail: e.to_string() })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = fs::read_to_string(&path).unwrap_or_default();
        return Err(HostError::AgentRunning { pin_dir: pin_dir.into(), pid: holder.trim().to_string() });
    }
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    Ok(PinDirLock { path, _file: file })
}

/// Refuses a pin directory that is not on bpffs (pins elsewhere fail, or vanish with a tmpfs).
pub fn check_bpffs(pin_dir: &Path) -> Result<(), HostError> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    // The pin directory may not exist yet: check its closest existing ancestor.
    let mut dir = pin_dir;
    while !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new("/"));
    }
    let c = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| HostError::NotBpffs { path: pin_dir.into() })?;
    // SAFETY: statfs writes into `st`, a properly sized, zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is valid for writes.
    let ok = unsafe { libc::statfs(c.as_ptr(), &raw mut st) } == 0;
    if ok && st.f_type == BPF_FS_MAGIC { Ok(()) } else { Err(HostError::NotBpffs { path: pin_dir.into() }) }
}

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

fn read_sysctl(name: &str) -> Result<String, HostError> {
    fs::read_to_string(sysctl_path(name))
        .map(|s| s.trim().to_string())
        .map_err(|e| HostError::Setting { setting: name.into(), detail: e.to_string() })
}

fn write_sysctl(name: &str, value: &str) -> Result<(), HostError> {
    if read_sysctl(name)? == value {
        return Ok(());
    }
    fs::write(sysctl_path(name), value)
        .map_err(|e| HostError::Setting { setting: format!("{name} = {value}"), detail: e.to_string() })?;
    tracing::info!(sysctl = name, value, "host setting changed");
    Ok(())
}

/// The error for `setting`, which the kernel refused with `error`.
fn refused(setting: impl Into<String>) -> impl FnOnce(io::Error) -> HostError {
    let setting = setting.into();
    move |error| HostError::Setting { setting, detail: error.to_string() }
}

fn rtnl() -> Result<Rtnl, HostError> {
    Rtnl::open().map_err(|e| HostError::Setting {
        setting: "the host's links and routes".into(),
        detail: format!("cannot open an rtnetlink socket: {e}"),
    })
}

/// The ifindex of `name`, which the agent has just made or found.
fn existing(name: &str) -> Result<u32, HostError> {
    ifindex(name).ok_or_else(|| HostError::Setting {
        setting: format!("the interface {name}"),
        detail: "it went away while the agent set it up".into(),
    })
}

/// The host's own door into the overlay: a veth pair. `xnet0` holds this host's overlay address
/// (the first address of its subnet's network, `10.244.1.0/32`, as flannel gives `flannel.1`), and
/// the route to the whole overlay network goes through it; what the host sends there arrives at
/// `xnet0-tx`, where the egress program encapsulates it like container traffic.
pub const HOST_DEVICE: &str = "xnet0";
/// The other end of [`HOST_DEVICE`], where the egress program runs.
pub const HOST_DEVICE_PEER: &str = "xnet0-tx";
/// The metric of the blackhole route for this host's own subnet: any real route to it (the
/// container bridge's, metric 0) wins; without one, the host's packets for its own subnet are
/// dropped here instead of looping through the host device.
const OWN_SUBNET_BLACKHOLE_METRIC: u32 = 4242;
/// The kernel's main routing table.
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// The device whose UDP socket merges VXLAN frames on the underlay (see [`open_underlay_gro`]).
pub const GRO_DEVICE: &str = "xnet0-gro";

/// The host settings the datapath relies on.
pub struct HostPlan<'a> {
    pub underlay: &'a Interface,
    pub network: Ipv4Network,
    pub subnet: Ipv4Network,
    pub overlay_mtu: u32,
    /// Announce the subnet to a routing daemon: the blackhole route for it carries
    /// [`crate::config::ANNOUNCE_PROTOCOL`] instead of `static`, a protocol the daemon can
    /// redistribute without per-host configuration (it goes with the route on stop).
    pub announce: bool,
    /// Send this host's own traffic for the overlay through the host device whatever the main
    /// table holds for it (a routing daemon's more specific routes): a rule for locally
    /// generated packets and a table of its own ([`HOST_TABLE`]).
    pub host_table: bool,
    /// The VXLAN port to give underlay GRO (see [`open_underlay_gro`]), when peers send VXLAN.
    pub vxlan_gro_port: Option<u16>,
}

/// Applies `plan`:
/// - IPv4 forwarding on (decapsulated packets are forwarded to the container bridge);
/// - reverse-path filtering on the underlay loose at most: decapsulated packets arrive there from
///   container addresses that are routed elsewhere;
/// - the host device pair ([`HOST_DEVICE`]) with this host's overlay address, at the overlay MTU;
/// - a route for the whole overlay network through it, with that address as the source: the host
///   reaches remote containers (encapsulated), and overlay traffic never leaks out of the default
///   route unencapsulated;
/// - a blackhole route for this host's own subnet, behind the container bridge's route (the
///   announcement of the subnet, with `announce`);
/// - with `host_table`: the overlay route in [`HOST_TABLE`] too (with a `throw` for this host's
///   own subnet) and a rule that sends locally generated packets for the overlay there: a daemon's
///   route in the main table, more specific, would otherwise take them out untunnelled. What the
///   egress program does not send (no datapath route: left to the fabric) re-enters the stack at
///   the device's other end, which shares the device's MAC (the frames' destination) and accepts
///   their local source address (`accept_local`), and is routed by the main table.
pub fn apply(plan: &HostPlan<'_>) -> Result<(), HostError> {
    write_sysctl("net.ipv4.ip_forward", "1")?;
    let rp = |i: &str| read_sysctl(&format!("net.ipv4.conf.{i}.rp_filter"));
    if rp("all")? == "1" || rp(&plan.underlay.name)? == "1" {
        write_sysctl(&format!("net.ipv4.conf.{}.rp_filter", plan.underlay.name), "2")?;
    }
    let mut rtnl = rtnl()?;
    if ifindex(HOST_DEVICE).is_none() {
        rtnl.add_veth(HOST_DEVICE, HOST_DEVICE_PEER)
            .map_err(refused(format!("the host device pair {HOST_DEVICE}/{HOST_DEVICE_PEER}")))?;
        tracing::info!(device = HOST_DEVICE, "host device created");
    }
    let device = existing(HOST_DEVICE)?;
    let peer = existing(HOST_DEVICE_PEER)?;
    let mtu = plan.overlay_mtu;
    for (dev, index) in [(HOST_DEVICE, device), (HOST_DEVICE_PEER, peer)] {
        // No IPv6 chatter into the tunnel end.
        let _ = write_sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "1");
        rtnl.set_link(index, |link| link.mtu(mtu).up()).map_err(refused(format!("MTU {mtu} on {dev}")))?;
    }
    // No neighbour to resolve: frames leave with the device's own MAC as destination, and the
    // egress program at the other end takes every one for a remote subnet.
    rtnl.set_link(device, |link| link.arp(false)).map_err(refused(format!("arp off on {HOST_DEVICE}")))?;
    let address = plan.subnet.network();
    rtnl.replace_address(device, address, 32)
        .map_err(refused(format!("address {address}/32 on {HOST_DEVICE}")))?;
    let net = plan.network;
    let overlay_route = |table| Route {
        to: net,
        kind: RouteType::Unicast,
        device: Some(device),
        source: Some(address),
        protocol: RouteProtocol::Static,
        metric: None,
        table,
    };
    rtnl.replace_route(&overlay_route(MAIN_TABLE))
        .map_err(refused(format!("route {net} dev {HOST_DEVICE} src {address}")))?;
    let own = plan.subnet;
    if plan.host_table {
        let table = HOST_TABLE;
        rtnl.replace_route(&overlay_route(table))
            .map_err(refused(format!("route {net} dev {HOST_DEVICE} in table {table}")))?;
        let throw = Route {
            to: own,
            kind: RouteType::Throw,
            device: None,
            source: None,
            protocol: RouteProtocol::Static,
            metric: None,
            table,
        };
        rtnl.replace_route(&throw).map_err(refused(format!("route throw {own} in table {table}")))?;
        // One rule of this priority: an earlier agent's (another network) goes first.
        rtnl.delete_rules(table)
            .map_err(refused(format!("the host's rule (removing earlier rules of priority {table})")))?;
        rtnl.add_local_rule(net, table, table)
            .map_err(refused(format!("rule to {net} iif lo lookup {table}")))?;
        // Frames from the host device are addressed to its own MAC: the other end takes that MAC
        // too, so what the egress program passes is the stack's to route, not another host's.
        let mac = Interface::find(HOST_DEVICE, "host device")?.mac;
        rtnl.set_link(peer, |link| link.address(mac.0.to_vec()))
            .map_err(refused(format!("MAC {mac} on {HOST_DEVICE_PEER}")))?;
        write_sysctl(&format!("net.ipv4.conf.{HOST_DEVICE_PEER}.accept_local"), "1")?;
        let rp = |i: &str| read_sysctl(&format!("net.ipv4.conf.{i}.rp_filter"));
        if rp("all")? == "1" || rp(HOST_DEVICE_PEER)? == "1" {
            write_sysctl(&format!("net.ipv4.conf.{HOST_DEVICE_PEER}.rp_filter"), "2")?;
        }
    }
    let blackhole = own_subnet_blackhole(own, plan.announce);
    rtnl.replace_route(&blackhole).map_err(refused(format!(
        "blackhole route {own} metric {OWN_SUBNET_BLACKHOLE_METRIC} proto {}",
        crate::config::route_protocol_name(u8::from(blackhole.protocol))
    )))?;
    if let Some(port) = plan.vxlan_gro_port {
        open_underlay_gro(&mut rtnl, port);
    }
    Ok(())
}

/// The blackhole route for this host's own subnet (see [`OWN_SUBNET_BLACKHOLE_METRIC`]), of the
/// protocol a routing daemon announces with `announce`.
fn own_subnet_blackhole(own: Ipv4Network, announce: bool) -> Route {
    Route {
        to: own,
        kind: RouteType::BlackHole,
        device: None,
        source: None,
        protocol: if announce {
            RouteProtocol::from(crate::config::ANNOUNCE_PROTOCOL)
        } else {
            RouteProtocol::Static
        },
        metric: Some(OWN_SUBNET_BLACKHOLE_METRIC),
        table: MAIN_TABLE,
    }
}

/// Gives VXLAN on the underlay GRO. A NIC hands the stack frames of the wire's MTU, and GRO merges
/// a flow's frames into one large packet before tc sees them; but a UDP packet is merged only when
/// a socket on its port knows its tunnel, and xnet's datapath has none: each VXLAN frame would
/// reach the ingress program alone, be decapsulated alone and be delivered to the container alone.
/// The kernel's vxlan device in collect-metadata mode (`external`) opens such a socket on `port`,
/// with VXLAN's GRO. The ingress program runs before the socket and decapsulates or drops every
/// VXLAN packet, so the device receives nothing while the program is attached; IPv4 forwarding is
/// off on it all the same. Not having it costs speed, not traffic, so a failure is a warning:
/// typically another vxlan device (flannel's `flannel.1`) holds the port, and its socket merges
/// the frames already.
fn open_underlay_gro(rtnl: &mut Rtnl, port: u16) {
    if let Some(index) = ifindex(GRO_DEVICE) {
        let _ = rtnl.delete_link(index);
    }
    let setting = format!("the vxlan device {GRO_DEVICE} (UDP port {port}, for underlay GRO)");
    let opened = rtnl
        .add_vxlan_external(GRO_DEVICE, port)
        .map_err(refused(setting.clone()))
        .and_then(|()| write_sysctl(&format!("net.ipv4.conf.{GRO_DEVICE}.forwarding"), "0"))
        .and_then(|()| {
            let _ = write_sysctl(&format!("net.ipv6.conf.{GRO_DEVICE}.disable_ipv6"), "1");
            rtnl.set_link(existing(GRO_DEVICE)?, |link| link.up()).map_err(refused(setting))
        });
    match opened {
        Ok(()) => tracing::info!(device = GRO_DEVICE, port, "underlay GRO for VXLAN"),
        Err(e) => {
            if let Some(index) = ifindex(GRO_DEVICE) {
                let _ = rtnl.delete_link(index);
            }
            tracing::warn!(
                error = %e,
                port,
                "no underlay GRO for VXLAN: each frame is decapsulated and delivered alone (another vxlan device on this port gives it instead)"
            );
        }
    }
}

/// Removes [`GRO_DEVICE`] if there is one.
fn close_underlay_gro(rtnl: &mut Rtnl) {
    if let Some(index) = ifindex(GRO_DEVICE)
        && let Err(e) = rtnl.delete_link(index)
    {
        tracing::warn!(error = %e, "could not remove the underlay GRO device {GRO_DEVICE}");
    }
}

/// Sets the overlay MTU on a container interface (containers take their MTU from the bridge).
pub fn set_container_mtu(iface: &Interface, overlay_mtu: u32) -> Result<(), HostError> {
    if iface.mtu != overlay_mtu {
        rtnl()?
            .set_link(iface.index, |link| link.mtu(overlay_mtu))
            .map_err(refused(format!("MTU {overlay_mtu} on {}", iface.name)))?;
        tracing::info!(iface = %iface.name, mtu = overlay_mtu, "container interface MTU set");
    }
    Ok(())
}

/// Removes the host device (its address and the overlay route go with it), if there is one;
/// returns whether there was (`xnet cleanup`).
pub fn remove_host_device() -> bool {
    let mut rtnl = match rtnl() {
        Ok(rtnl) => rtnl,
        Err(e) => {
            tracing::warn!(error = %e, "could not remove the host device");
            return false;
        }
    };
    remove_host_table();
    close_underlay_gro(&mut rtnl);
    let Some(index) = ifindex(HOST_DEVICE) else {
        return false;
    };
    match rtnl.delete_link(index) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not remove the host device {HOST_DEVICE}");
            false
        }
    }
}

/// Removes the rule and the routes of [`HOST_TABLE`], if any, with a socket of its own (a request
/// given up on leaves nothing for the caller's next ones).
fn remove_host_table() {
    let Ok(mut rtnl) = rtnl() else { return };
    if let Err(e) = rtnl.delete_rules(HOST_TABLE) {
        tracing::warn!(error = %e, "could not remove the host's rule of priority {HOST_TABLE}");
    }
    if let Err(e) = rtnl.flush_table(HOST_TABLE) {
        tracing::warn!(error = %e, "could not remove the routes of the host's own table {HOST_TABLE}");
    }
}

/// Removes what [`apply`] added (on a normal stop): the routes and the host device.
pub fn remove(network: Ipv4Network, subnet: Ipv4Network) {
    let mut rtnl = match rtnl() {
        Ok(rtnl) => rtnl,
        Err(e) => {
            tracing::warn!(error = %e, "could not remove what the agent added");
            return;
        }
    };
    remove_host_table();
    close_underlay_gro(&mut rtnl);
    let overlay_route = Route {
        to: network,
        kind: RouteType::Unicast,
        device: ifindex(HOST_DEVICE),
        source: None,
        protocol: RouteProtocol::Static,
        metric: None,
        table: MAIN_TABLE,
    };
    // The blackhole of either protocol: the one the agent wrote.
    let mut blackhole = own_subnet_blackhole(subnet, false);
    blackhole.protocol = RouteProtocol::Unspec;
    let steps = [
        (
            overlay_route.device.is_some().then(|| rtnl.delete_route(&overlay_route)),
            format!("route {network}"),
        ),
        (Some(rtnl.delete_route(&blackhole)), format!("blackhole route {subnet}")),
        (ifindex(HOST_DEVICE).map(|index| rtnl.delete_link(index)), format!("the host device {HOST_DEVICE}")),
    ];
    for (result, what) in steps {
        if let Some(Err(e)) = result {
            tracing::warn!(error = %e, "could not remove {what}, which the agent added");
        }
    }
}
