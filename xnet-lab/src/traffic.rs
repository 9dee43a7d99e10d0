//! Traffic that runs while a test does something to the hosts (a failure drill), and says
//! afterwards what it went through: a TCP stream that keeps one connection open and a fast ping
//! that timestamps every reply.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{lab::Fnv, netns::Netns};

/// One TCP connection that sends a steady trickle (a 16 KiB write every millisecond at most)
/// until [`Stream::finish`].
pub struct Stream {
    stop: Arc<AtomicBool>,
    client: JoinHandle<Sent>,
    server: JoinHandle<Received>,
}

struct Sent {
    bytes: u64,
    hash: u64,
    error: Option<String>,
}

struct Received {
    bytes: u64,
    hash: u64,
    error: Option<String>,
    /// (when, bytes received so far), at every read.
    progress: Vec<(Instant, u64)>,
}

/// What a [`Stream`] went through.
#[derive(Debug)]
pub struct StreamReport {
    pub sent: u64,
    pub received: u64,
    /// The content arrived as sent.
    pub intact: bool,
    /// A send or receive error (a reset), if one ended the stream.
    pub error: Option<String>,
    /// The longest time without a byte arriving.
    pub longest_stall: Duration,
    progress: Vec<(Instant, u64)>,
}

impl StreamReport {
    /// Bytes that arrived after `t`.
    pub fn received_after(&self, t: Instant) -> u64 {
        let before = self.progress.iter().take_while(|(at, _)| *at <= t).last().map_or(0, |(_, n)| *n);
        self.received - before
    }
}

impl Stream {
    /// Opens a connection from a thread in `from` to a listener in `to` (at `to_ip`, `port`) and
    /// starts sending.
    pub fn start(from: &Netns, to: &Netns, to_ip: Ipv4Addr, port: u16) -> Stream {
        let (ready_tx, ready_rx) = mpsc::channel();
        let server = to.spawn(move || {
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            ready_tx.send(()).expect("ready");
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
            let mut buf = vec![0u8; 1 << 16];
            let mut r = Received { bytes: 0, hash: Fnv::new().0, error: None, progress: Vec::new() };
            let mut hash = Fnv::new();
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        hash.update(&buf[..k]);
                        r.bytes += k as u64;
                        r.progress.push((Instant::now(), r.bytes));
                    }
                    Err(e) => {
                        r.error = Some(format!("receiving after {} bytes: {e}", r.bytes));
                        break;
                    }
                }
            }
            r.hash = hash.0;
            r
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("stream server did not start");
        let stop = Arc::new(AtomicBool::new(false));
        let stop_client = stop.clone();
        let client = from.spawn(move || {
            let mut conn =
                TcpStream::connect_timeout(&SocketAddrV4::new(to_ip, port).into(), Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connect to {to_ip}:{port}: {e}"));
            conn.set_write_timeout(Some(Duration::from_secs(30))).expect("timeout");
            let chunk: Vec<u8> = (0..1 << 14).map(|i: usize| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect();
            let mut s = Sent { bytes: 0, hash: 0, error: None };
            let mut hash = Fnv::new();
            while !stop_client.load(Ordering::Relaxed) {
                if let Err(e) = conn.write_all(&chunk) {
                    s.error = Some(format!("sending after {} bytes: {e}", s.bytes));
                    break;
                }
                hash.update(&chunk);
                s.bytes += chunk.len() as u64;
                std::thread::sleep(Duration::from_millis(1));
            }
            if s.error.is_none()
                && let Err(e) = conn.shutdown(std::net::Shutdown::Write)
            {
                s.error = Some(format!("closing: {e}"));
            }
            s.hash = hash.0;
            s
        });
        Stream { stop, client, server }
    }

    /// Stops sending, closes the connection and waits for the last byte.
    pub fn finish(self) -> StreamReport {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.client.join().expect("stream client panicked");
        let received = self.server.join().expect("stream server panicked");
        let longest_stall = received.progress.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap_or_default();
        StreamReport {
            sent: sent.bytes,
            received: received.bytes,
            intact: sent.bytes == received.bytes && sent.hash == received.hash,
            error: sent.error.or(received.error),
            longest_stall,
            progress: received.progress,
        }
    }
}

/// `ping -D -i INTERVAL` for a fixed time, every reply timestamped.
pub struct FastPing {
    child: Child,
    interval: Duration,
}

/// What a [`FastPing`] saw.
#[derive(Debug)]
pub struct PingReport {
    /// Echo requests sent (the highest sequence number).
    pub sent: u64,
    pub received: u64,
    /// Sequence numbers without a reply (up to the last answered one: later requests were still
    /// in flight when ping stopped).
    pub lost: Vec<u64>,
    /// The longest time between two consecutive replies.
    pub longest_gap: Duration,
}

impl FastPing {
    /// Pings `to` from `from` every `interval` for `duration`.
    pub fn start(from: &Netns, to: Ipv4Addr, interval: Duration, duration: Duration) -> FastPing {
        let child = from
            .command("ping")
            .args(["-D", "-n", "-i", &format!("{:.3}", interval.as_secs_f64())])
            .args(["-w", &duration.as_secs().to_string(), "-W", "1", &to.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ping");
        FastPing { child, interval }
    }

    /// Waits for the end and reads the replies.
    pub fn finish(self) -> PingReport {
        let out = self.child.wait_with_output().expect("ping");
        let text = String::from_utf8_lossy(&out.stdout);
        let replies = parse_replies(&text);
        let sent = text
            .lines()
            .find_map(|l| l.split_once(" packets transmitted").map(|(n, _)| n.trim().parse::<u64>()))
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("no ping summary in:\n{text}"));
        let seen: std::collections::BTreeSet<u64> = replies.iter().map(|(_, seq)| *seq).collect();
        // Requests after the last answered one were still in flight when -w ended ping.
        let last = seen.last().copied().unwrap_or(sent);
        let lost = (1..=last).filter(|s| !seen.contains(s)).collect();
        let longest_gap = replies
            .windows(2)
            .map(|w| Duration::from_secs_f64((w[1].0 - w[0].0).max(0.0)))
            .max()
            .unwrap_or(self.interval);
        PingReport { sent, received: seen.len() as u64, lost, longest_gap }
    }
}

/// (Unix time, icmp_seq) of every reply line of `ping -D`:
/// `[1700000000.123456] 64 bytes from 10.244.2.2: icmp_seq=7 ttl=63 time=0.101 ms`.
pub fn parse_replies(text: &str) -> Vec<(f64, u64)> {
    text.lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| {
            let t = l.strip_prefix('[')?.split_once(']')?.0.parse().ok()?;
            let seq = l.split_once("icmp_seq=")?.1.split_whitespace().next()?.parse().ok()?;
            Some((t, seq))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_give_time_and_sequence() {
        let text = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\
                    [1700000000.100000] 64 bytes from 10.244.2.2: icmp_seq=1 ttl=63 time=0.101 ms\n\
                    [1700000000.350000] 64 bytes from 10.244.2.2: icmp_seq=3 ttl=63 time=0.090 ms\n\
                    \n--- 10.244.2.2 ping statistics ---\n3 packets transmitted, 2 received, 33% packet loss\n";
        assert_eq!(parse_replies(text), vec![(1_700_000_000.1, 1), (1_700_000_000.35, 3)]);
    }
}
