//! The design of flannel's `udp` backend, re-implemented for `cargo xtask bench` (this is not
//! flannel's code, and not part of xnet): the kernel routes overlay traffic into a TUN device, one
//! userspace thread reads each packet, looks up the host owning its destination subnet, and sends
//! it as the payload of a UDP datagram to that host's port 8285; datagrams that arrive are written
//! back into the TUN device. One packet per system call, with the inner TTL decremented on the way
//! out, as flannel's proxy does. It shows what moving every packet through userspace costs.
//!
//! Usage: xnet-udp-relay --tun flannel0 --local 198.18.0.1 --peer 10.244.2.0/24=198.18.0.2 ...
//! It creates the TUN device and prints `ready`; whoever started it sets addresses, MTU and routes.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use clap::Parser;
use ipnetwork::Ipv4Network;
use xnet_common::wire::Ipv4Hdr;

#[derive(Parser)]
struct Args {
    /// Name of the TUN device to create.
    #[arg(long, default_value = "flannel0")]
    tun: String,
    /// This host's underlay address (the UDP socket binds it).
    #[arg(long)]
    local: Ipv4Addr,
    /// UDP port, on both ends.
    #[arg(long, default_value_t = 8285)]
    port: u16,
    /// A remote subnet and the host that owns it, as SUBNET=IP.
    #[arg(long, value_parser = parse_peer)]
    peer: Vec<(Ipv4Network, Ipv4Addr)>,
}

fn parse_peer(s: &str) -> Result<(Ipv4Network, Ipv4Addr), String> {
    let (net, ip) = s.split_once('=').ok_or("expected SUBNET=IP")?;
    Ok((net.parse::<Ipv4Network>().map_err(|e| format!("{e}"))?, ip.parse().map_err(|e| format!("{e}"))?))
}

/// Opens /dev/net/tun and creates the layer-3 device `name` (no packet information prefix).
fn open_tun(name: &str) -> std::io::Result<OwnedFd> {
    let path = c"/dev/net/tun";
    // SAFETY: a NUL-terminated path; the returned fd is checked below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads a properly initialised ifreq on a /dev/net/tun fd.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn main() {
    let args = Args::parse();
    let tun = open_tun(&args.tun).unwrap_or_else(|e| panic!("cannot create TUN device {}: {e}", args.tun));
    let sock = UdpSocket::bind(SocketAddrV4::new(args.local, args.port))
        .unwrap_or_else(|e| panic!("cannot bind {}:{}: {e}", args.local, args.port));
    println!("ready");
    let mut fds = [
        libc::pollfd { fd: tun.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: two valid pollfd entries.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("poll: {e}");
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: reads at most buf.len() bytes into buf.
            let n = unsafe { libc::read(tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                tun_to_peer(&args, &sock, &mut buf[..n as usize]);
            }
        }
        if fds[1].revents & libc::POLLIN != 0
            && let Ok((n, _)) = sock.recv_from(&mut buf)
        {
            // SAFETY: writes the n bytes just received.
            unsafe { libc::write(tun.as_raw_fd(), buf.as_ptr().cast(), n) };
        }
    }
}

/// One packet from the TUN device to the peer owning its destination (dropped if none, or if its
/// TTL runs out).
fn tun_to_peer(args: &Args, sock: &UdpSocket, packet: &mut [u8]) {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return;
    }
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let Some((_, peer)) = args.peer.iter().find(|(net, _)| net.contains(dst)) else {
        return;
    };
    // SAFETY: Ipv4Hdr is 20 bytes of u8 fields with alignment 1, and packet has at least 20 bytes.
    let ip = unsafe { &mut *packet.as_mut_ptr().cast::<Ipv4Hdr>() };
    if ip.ttl <= 1 {
        return;
    }
    ip.decrement_ttl();
    let _ = sock.send_to(packet, SocketAddrV4::new(*peer, args.port));
}
