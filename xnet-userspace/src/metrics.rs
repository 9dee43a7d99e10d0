//! Prometheus text exposition of the datapath counters on `metrics_addr`, path `/metrics`.

use std::{fmt::Write as _, net::SocketAddr, path::PathBuf};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::inspect;

/// Renders the state pinned under `pin_dir` in Prometheus text format 0.0.4.
pub fn render(pin_dir: &std::path::Path, now: u64) -> Result<String, inspect::InspectError> {
    let rows = inspect::read_counters(pin_dir)?;
    let status = inspect::read_status(pin_dir)?;
    let mut out = String::new();
    let mut counter_family = |name: &str, help: &str, value: fn(&inspect::CounterRow) -> u64| {
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
    counter_family(
        "xnet_packets_total",
        "Packets seen by the xnet datapath, by direction and outcome.",
        |r| r.packets,
    );
    counter_family("xnet_bytes_total", "Bytes seen by the xnet datapath, by direction and outcome.", |r| {
        r.bytes
    });
    let mut gauge = |name: &str, help: &str, labels: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{labels} {value}");
    };
    gauge("xnet_peers", "Peer hosts the datapath knows.", "", status.peers.to_string());
    gauge("xnet_routes", "Remote subnets in the datapath.", "", status.routes.to_string());
    gauge(
        "xnet_store_up",
        "1 when the route store was reachable at the last attempt.",
        &format!("{{store=\"{}\"}}", status.store),
        u8::from(status.store_up).to_string(),
    );
    gauge(
        "xnet_store_invalid_entries",
        "Store entries (leases) skipped as malformed at the last reconcile.",
        "",
        status.invalid_entries.to_string(),
    );
    gauge(
        "xnet_last_reconcile_timestamp_seconds",
        "When the datapath maps were last made to match the store (Unix time).",
        "",
        status.last_reconcile.to_string(),
    );
    if let Some(expiry) = status.lease_expiry {
        gauge(
            "xnet_lease_seconds_left",
            "Seconds until this host's subnet lease expires.",
            "",
            expiry.saturating_sub(now).to_string(),
        );
    }
    gauge(
        "xnet_agent_start_time_seconds",
        "When the agent started (Unix time).",
        "",
        status.agent_started_at.to_string(),
    );
    gauge(
        "xnet_build_info",
        "The running xnet version.",
        &format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
        "1".into(),
    );
    Ok(out)
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, pin_dir: PathBuf) {
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
                match render(&pin_dir, crate::agent::unix_now()) {
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
