//! `xnet::netlink` against a real kernel: links, bridge ports and learned FDB entries, dumped and
//! notified, in throwaway network namespaces (needs root).

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    time::Duration,
};

use tokio::time::Instant;
use xnet::netlink::{HostEvent, HostEvents, Netlink};

/// The MAC of the veth end that stays outside the bridge: what br0 learns behind its port.
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x4e, 0x00, 0x02];

/// A network namespace of this test process, deleted on drop (also when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("xnet-nltest-{}-{tag}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("cannot run `ip`");
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        Netns { name }
    }

    /// Runs `body` inside the namespace: on a thread of its own that joins it, on a current-thread
    /// tokio runtime (as the agent's). A panic in `body` fails the calling test.
    fn run<F, Fut>(&self, body: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let path = format!("/run/netns/{}", self.name);
        let thread = std::thread::spawn(move || {
            let netns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: a valid namespace fd; this only moves the calling thread.
            let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(body());
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Runs `ip -n NETNS args...`, and fails the test if it fails.
fn ip_in(netns: &str, args: &[&str]) {
    let out = Command::new("ip").arg("-n").arg(netns).args(args).output().expect("cannot run `ip`");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Reads events until one `matches`, and returns all those read; fails after `within`.
async fn wait_for(
    events: &mut HostEvents,
    within: Duration,
    what: &str,
    mut matches: impl FnMut(&HostEvent) -> bool,
) -> Vec<HostEvent> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(event)) => {
                let hit = matches(&event);
                seen.push(event);
                if hit {
                    return seen;
                }
            }
            Ok(None) => panic!("the event stream ended while waiting for {what}; saw {seen:#?}"),
            Err(_) => panic!("no {what} within {within:?}; saw {seen:#?}"),
        }
    }
}

/// Sends one broadcast Ethernet frame from `src` out of the link `ifindex` (of the calling
/// thread's network namespace).
fn send_frame(ifindex: u32, src: [u8; 6]) {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut frame = [0u8; 60];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental ethertype
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: `frame` and `to` outlive the call, with the lengths passed.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const to).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(sent, frame.len() as isize, "sendto: {}", io::Error::last_os_error());
}

#[test]
fn bridge_ports_and_learned_macs_are_dumped_and_notified() {
    let ns = Netns::new("events");
    let name = ns.name.clone();
    ns.run(move || async move {
        let ip = |args: &[&str]| ip_in(&name, args);
        // Nothing in the namespace sends on its own (IPv6 would, on every link going up).
        for conf in ["all", "default"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
        }
        let (netlink, mut events) = Netlink::connect().await.unwrap();

        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["link", "set", "br0", "up"]);
        let br0 = netlink.link("br0").await.unwrap().expect("br0 exists");
        assert_eq!((br0.kind.as_deref(), br0.master), (Some("bridge"), None));
        assert_eq!(netlink.link("nope0").await.unwrap(), None);
        assert_eq!(netlink.link("a-name-too-long-for-a-link").await.unwrap(), None);
        assert!(netlink.bridge_ports(br0.index).await.unwrap().is_empty());

        ip(&["link", "add", "vp0", "type", "veth", "peer", "name", "vp1", "address", "02:00:0a:4e:00:02"]);
        ip(&["link", "set", "vp0", "master", "br0"]);
        ip(&["link", "set", "vp0", "up"]);
        ip(&["link", "set", "vp1", "up"]);
        // Running: the bridge has seen the carrier, so the port forwards (and learns).
        let seen = wait_for(&mut events, Duration::from_secs(5), "running port vp0 of br0", |e| {
            matches!(e, HostEvent::Link(l) if l.name == "vp0" && l.master == Some(br0.index) && l.running)
        })
        .await;
        let Some(HostEvent::Link(vp0)) = seen.last() else { unreachable!() };
        assert_eq!((vp0.kind.as_deref(), vp0.up), (Some("veth"), true));
        let vp0 = vp0.index;
        assert_eq!(netlink.bridge_ports(br0.index).await.unwrap(), [("vp0".to_string(), vp0)].into());
        let vp1 = netlink.link("vp1").await.unwrap().expect("vp1 exists");
        assert_eq!((vp1.mac, vp1.master), (Some(PEER_MAC), None));
        assert!(netlink.bridge_fdb(br0.index).await.unwrap().is_empty());

        // br0 learns PEER_MAC behind vp0 from a frame vp1 sends.
        send_frame(vp1.index, PEER_MAC);
        let learned = HostEvent::Fdb { bridge: br0.index, port: vp0, mac: PEER_MAC, present: true };
        wait_for(&mut events, Duration::from_secs(1), "the FDB event", |e| *e == learned).await;
        assert_eq!(netlink.bridge_fdb(br0.index).await.unwrap(), [(PEER_MAC, vp0)].into());

        ip(&["addr", "add", "10.78.0.1/24", "dev", "br0"]);
        let address = HostEvent::Address { index: br0.index };
        wait_for(&mut events, Duration::from_secs(1), "the address event", |e| *e == address).await;

        // Leaving the bridge flushes the MACs behind the port, and is no link deletion (the bridge
        // says "deleted" about its former port in an AF_BRIDGE message).
        ip(&["link", "set", "vp0", "nomaster"]);
        let forgotten = HostEvent::Fdb { bridge: br0.index, port: vp0, mac: PEER_MAC, present: false };
        let (mut flushed, mut left) = (false, false);
        let seen = wait_for(&mut events, Duration::from_secs(5), "vp0 leaving br0", |e| {
            flushed |= *e == forgotten;
            left |= matches!(e, HostEvent::Link(l) if l.index == vp0 && l.master.is_none());
            flushed && left
        })
        .await;
        assert!(!seen.iter().any(|e| matches!(e, HostEvent::LinkGone { .. })), "{seen:#?}");
        assert!(netlink.bridge_ports(br0.index).await.unwrap().is_empty());
        assert!(netlink.bridge_fdb(br0.index).await.unwrap().is_empty());

        ip(&["link", "del", "vp0"]);
        let gone = HostEvent::LinkGone { index: vp0, name: "vp0".to_string() };
        let seen = wait_for(&mut events, Duration::from_secs(5), "vp0 deleted", |e| *e == gone).await;
        assert!(!seen.contains(&HostEvent::Resync), "{seen:#?}");
        assert_eq!(netlink.link("vp0").await.unwrap(), None);
    });
}

#[test]
fn a_full_event_queue_is_reported_as_resync() {
    let ns = Netns::new("overflow");
    let name = ns.name.clone();
    ns.run(move || async move {
        let ip = |args: &[&str]| ip_in(&name, args);
        // A small queue (room for the notifications of a few new links), and no reading while
        // 30 links are added: the kernel drops notifications.
        let (netlink, mut events) = Netlink::connect_with_event_queue(16 << 10).await.unwrap();
        for i in 0..30 {
            ip(&["link", "add", &format!("b{i}"), "type", "bridge"]);
        }
        wait_for(&mut events, Duration::from_secs(5), "Resync", |e| *e == HostEvent::Resync).await;
        // The socket keeps working after the loss: once the queue is empty, the first
        // notification of the next change fits in (whatever follows it may not).
        while tokio::time::timeout(Duration::from_millis(300), events.next()).await.is_ok() {}
        ip(&["link", "add", "after", "type", "bridge"]);
        wait_for(
            &mut events,
            Duration::from_secs(5),
            "the link added after the loss",
            |e| matches!(e, HostEvent::Link(l) if l.name == "after"),
        )
        .await;
        assert_eq!(netlink.links().await.unwrap().len(), 32); // lo, b0..b29, after
    });
}
