//! Prometheus text exposition of the datapath counters on `metrics_addr`, path `/metrics`.

use std::{fmt::Write as _, net::SocketAddr, path::PathBuf};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::inspect;

/// Renders the counters pinned under `pin_dir` in Prometheus text format 0.0.4.
pub fn render(pin_dir: &std::path::Path, peers: usize) -> Result<String, inspect::InspectError> {
    let rows = inspect::read_counters(pin_dir)?;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, value: fn(&inspect::CounterRow) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for r in &rows {
            let _ = writeln!(
                out,
                "{name}{{direction=\"{}\",outcome=\"{}\",code=\"{}\"}} {}",
                r.direction,
                r.outcome,
                r.code,
                value(r)
            );
        }
    };
    family("xnet_packets_total", "Packets seen by the xnet datapath, by direction and outcome.", |r| {
        r.packets
    });
    family("xnet_bytes_total", "Bytes seen by the xnet datapath, by direction and outcome.", |r| r.bytes);
    let _ = writeln!(out, "# HELP xnet_peers Peer hosts the datapath knows.");
    let _ = writeln!(out, "# TYPE xnet_peers gauge");
    let _ = writeln!(out, "xnet_peers {peers}");
    let _ = writeln!(out, "# HELP xnet_build_info The running xnet version.");
    let _ = writeln!(out, "# TYPE xnet_build_info gauge");
    let _ = writeln!(out, "xnet_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    Ok(out)
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, pin_dir: PathBuf, peers: usize) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let pin_dir = pin_dir.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut len = 0;
            // Read the request head (bounded); the body of a GET is empty.
            while len < buf.len() {
                match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf[len..]))
                    .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if path == "/metrics" {
                match render(&pin_dir, peers) {
                    Ok(body) => ("200 OK", body),
                    Err(e) => ("503 Service Unavailable", format!("{e}\n")),
                }
            } else {
                ("404 Not Found", "xnet serves /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
