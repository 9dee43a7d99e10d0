//! The agent's Prometheus endpoint: `GET /metrics` on `metrics_addr`, the datapath counters and the
//! agent's status, read from the pinned maps at every scrape.
//!
//! The exposition is the `prometheus-client` crate's, in the Prometheus text format 0.0.4 or, for
//! clients that ask for it in `Accept`, OpenMetrics 1.0.0. The server is axum on hyper, bounded by
//! [`Limits`]; the map reads run on tokio's blocking pool, one scrape at a time, so that a slow
//! scrape never stalls the agent's (current-thread) runtime.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text, text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};

use crate::inspect::{self, CounterRow, InspectError, MapRow, Status};

/// The exposition formats `/metrics` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4: the default, and what `promtool check metrics`
    /// reads.
    PrometheusText,
    /// OpenMetrics text, version 1.0.0: served to clients that list it in `Accept` (Prometheus
    /// does, first).
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::PrometheusText => prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format for a request whose `Accept` header is `accept` (all its values, comma-separated):
    /// OpenMetrics when `application/openmetrics-text` (version 1.0.0 or unversioned) is listed
    /// with a quality above zero and no lower than any media range the Prometheus text format
    /// matches (`text/plain`, `text/*`, `*/*`); the Prometheus text format otherwise, also when
    /// there is no `Accept` header.
    pub fn negotiate(accept: &str) -> Format {
        let mut openmetrics = 0.0_f32;
        let mut prometheus = 0.0_f32;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media_type = parts.next().unwrap_or_default().to_ascii_lowercase();
            let (mut quality, mut version) = (1.0_f32, None);
            for param in parts {
                let Some((key, value)) = param.split_once('=') else { continue };
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => quality = value.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(value.trim().trim_matches('"').to_string()),
                    _ => {}
                }
            }
            match media_type.as_str() {
                "application/openmetrics-text" if version.as_deref().is_none_or(|v| v == "1.0.0") => {
                    openmetrics = openmetrics.max(quality);
                }
                "text/plain" | "text/*" | "*/*" => prometheus = prometheus.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= prometheus {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }
}

/// Renders the state pinned under `pin_dir` in the Prometheus text format 0.0.4, with `now` (Unix
/// seconds) as the time the lease's remaining seconds are counted from.
pub fn render(pin_dir: &Path, now: u64) -> Result<String, InspectError> {
    scrape(pin_dir, now, Format::PrometheusText)
}

/// Reads the pinned state under `pin_dir` and encodes it in `format`.
fn scrape(pin_dir: &Path, now: u64, format: Format) -> Result<String, InspectError> {
    let rows = inspect::read_counters(pin_dir)?;
    let status = inspect::read_status(pin_dir)?;
    Ok(encode(&rows, &status, now, format))
}

/// The exposition, in `format`, of the counters `rows` and the agent's `status`, with `now` (Unix
/// seconds) as the time the lease's remaining seconds are counted from.
pub fn encode(rows: &[CounterRow], status: &Status, now: u64, format: Format) -> String {
    // A fresh registry per scrape holding one collector over values already read, rather than a
    // long-lived registry whose collector reads the maps itself: a collector can fail only with
    // `fmt::Error`, so a map that cannot be read would truncate the output instead of making the
    // scrape fail with a message (HTTP 503); and nothing here outlives a scrape anyway.
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot { rows: rows.to_vec(), status: status.clone(), now }));
    let mut out = String::new();
    let encoded = match format {
        Format::PrometheusText => prometheus_text::encode(&mut out, &registry),
        Format::OpenMetrics => text::encode(&mut out, &registry),
    };
    // Writing into a `String` cannot fail, and `Snapshot` fails only when its writer does (it has
    // no native histograms, the only thing these encoders reject): this is never an error.
    if let Err(e) = encoded {
        tracing::error!(error = %e, "metrics: encoding into a String failed; the output is truncated");
    }
    out
}

/// One scrape's worth of the datapath's state, which prometheus-client encodes as constant
/// metrics.
#[derive(Debug)]
struct Snapshot {
    rows: Vec<CounterRow>,
    status: Status,
    /// Unix seconds, for `xnet_lease_seconds_left`.
    now: u64,
}

/// The labels of one datapath counter.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    direction: &'static str,
    outcome: &'static str,
    code: u32,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        // Counter names leave out `_total`: the encoders append it to the samples (and, in the
        // Prometheus text format, to HELP and TYPE).
        self.counters(
            &mut encoder,
            "xnet_packets",
            "Packets seen by the xnet datapath, by direction and outcome.",
            |r| r.packets,
        )?;
        self.counters(
            &mut encoder,
            "xnet_bytes",
            "Bytes seen by the xnet datapath, by direction and outcome.",
            |r| r.bytes,
        )?;
        let s = &self.status;
        gauge(&mut encoder, "xnet_peers", "Peer hosts the datapath knows.", s.peers as u64)?;
        gauge(&mut encoder, "xnet_routes", "Remote subnets in the datapath.", s.routes as u64)?;
        for (name, help, value) in [
            (
                "xnet_map_capacity_entries",
                "Entries an eBPF map of the datapath holds at most.",
                (|m| u64::from(m.max_entries)) as fn(&MapRow) -> u64,
            ),
            (
                "xnet_map_memory_bytes",
                "Kernel memory charged for an eBPF map of the datapath (bpftool's bytes_memlock).",
                |m| m.memlock,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for m in &s.maps {
                ConstGauge::new(value(m)).encode(family.encode_family(&[("map", m.name)])?)?;
            }
        }
        let mut store_up = encoder.encode_descriptor(
            "xnet_store_up",
            "1 when the route store was reachable at the last attempt.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(u64::from(s.store_up)).encode(store_up.encode_family(&[("store", s.store)])?)?;
        gauge(
            &mut encoder,
            "xnet_store_invalid_entries",
            "Store entries (leases) skipped as malformed at the last reconcile.",
            u64::from(s.invalid_entries),
        )?;
        gauge(
            &mut encoder,
            "xnet_local_ports_refused_macs",
            "Container MACs left out of LOCAL_PORTS at the last sync: their bridge port claims more than the cap.",
            s.refused_macs,
        )?;
        ConstCounter::new(u64::from(s.refused_syncs)).encode(encoder.encode_descriptor(
            "xnet_syncs_refused",
            "Syncs of the datapath maps refused whole because a map had no room (see `[capacity]`).",
            None,
            MetricType::Counter,
        )?)?;
        gauge(
            &mut encoder,
            "xnet_last_reconcile_timestamp_seconds",
            "When the datapath maps were last made to match the store (Unix time).",
            s.last_reconcile,
        )?;
        if let Some(expiry) = s.lease_expiry {
            gauge(
                &mut encoder,
                "xnet_lease_seconds_left",
                "Seconds until this host's subnet lease expires.",
                expiry.saturating_sub(self.now),
            )?;
            gauge(
                &mut encoder,
                "xnet_lease_lost",
                "1 when this host's subnet lease expired and another host holds the subnet now.",
                u64::from(s.lease_lost),
            )?;
        }
        gauge(
            &mut encoder,
            "xnet_agent_start_time_seconds",
            "When the agent started (Unix time).",
            s.agent_started_at,
        )?;
        // An info metric: `xnet_build_info{version="…"} 1`, of type info in OpenMetrics and gauge in
        // the Prometheus text format (the encoders append `_info`).
        encoder
            .encode_descriptor("xnet_build", "The running xnet version.", None, MetricType::Info)?
            .encode_info(&[("version", env!("CARGO_PKG_VERSION"))])
    }
}

impl Snapshot {
    /// Encodes one counter family with a sample per row, `value` picking the row's number.
    fn counters(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        value: fn(&CounterRow) -> u64,
    ) -> fmt::Result {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for row in &self.rows {
            let labels = OutcomeLabels { direction: row.direction, outcome: row.outcome, code: row.code };
            ConstCounter::new(value(row)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Encodes a gauge family with one unlabelled sample.
fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// What the `/metrics` server allows each client, so that no client can hold the agent's
/// resources for long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; a connection accepted beyond this is closed at once.
    pub max_connections: usize,
    /// How long a client has, from connecting, to send its request line and headers.
    pub header_read_timeout: Duration,
    /// How long a connection may last in all: request, scrape and response (one request per
    /// connection: there is no keep-alive).
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16,
            header_read_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(15),
        }
    }
}

/// Binds the listener for [`serve`] (separately, so that a bad `metrics_addr` fails the start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` for the datapath pinned under `pin_dir`, with the default [`Limits`],
/// until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, pin_dir: PathBuf) {
    serve_with_limits(listener, pin_dir, Limits::default()).await
}

/// Serves `GET /metrics` for the datapath pinned under `pin_dir` within `limits`, until the task
/// is dropped or aborted (which ends the connections in progress too).
pub async fn serve_with_limits(listener: TcpListener, pin_dir: PathBuf, limits: Limits) {
    let app = router(pin_dir);
    // Owned by this task, so that dropping it drops the connections; finished ones are reaped at
    // each accept, so it holds at most `max_connections` tasks.
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors or memory, or a connection reset before it was
                // accepted: wait a little rather than spin on the error.
                tracing::warn!(error = %e, "metrics: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= limits.max_connections {
            tracing::debug!(%peer, limit = limits.max_connections, "metrics: too many connections; closing this one");
            drop(stream);
            continue;
        }
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_timeout, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics: connection cut off after {:?}", limits.connection_timeout),
            }
        });
    }
}

/// What the `/metrics` handler needs.
#[derive(Debug)]
struct Scraper {
    pin_dir: PathBuf,
    /// One scrape at a time: the map walks of a scrape whose client went away still run to the
    /// end on the blocking pool, and must not pile up.
    one_at_a_time: Arc<Semaphore>,
}

/// The routes: `GET /metrics` (and HEAD), 404 for any other path.
fn router(pin_dir: PathBuf) -> Router {
    let scraper = Arc::new(Scraper { pin_dir, one_at_a_time: Arc::new(Semaphore::new(1)) });
    Router::new().route("/metrics", get(metrics)).fallback(not_found).with_state(scraper)
}

/// `GET /metrics`: the pinned state, read on the blocking pool; 503 when it cannot be read.
async fn metrics(State(scraper): State<Arc<Scraper>>, headers: HeaderMap) -> Response {
    let accept: Vec<&str> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    let format = Format::negotiate(&accept.join(","));
    let Ok(permit) = Arc::clone(&scraper.one_at_a_time).acquire_owned().await else {
        // The semaphore is never closed; answered all the same rather than unwrapped.
        return (StatusCode::SERVICE_UNAVAILABLE, "xnet cannot scrape its metrics now\n").into_response();
    };
    let pin_dir = scraper.pin_dir.clone();
    let scraped = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        scrape(&pin_dir, crate::clock::unix_now(), format)
    })
    .await;
    match scraped {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the scrape task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "xnet could not read its metrics\n").into_response()
        }
    }
}

/// Any other path.
async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "xnet serves /metrics only\n")
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        net::Ipv4Addr,
        process::{Command, Stdio},
        time::Instant,
    };

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn rows() -> Vec<CounterRow> {
        let row = |direction, outcome, code, drop, packets, bytes| CounterRow {
            direction,
            outcome,
            code,
            drop,
            packets,
            bytes,
        };
        vec![
            row("egress", "encap_vxlan", 1, false, 20, 2960),
            row("ingress", "decap_vxlan", 2, false, 21, 3108),
            row("ingress", "unknown_peer", 130, true, 0, 0),
        ]
    }

    fn status(lease_expiry: Option<u64>) -> Status {
        Status {
            invalid_entries: 3,
            lease_expiry,
            ports_over_cap: 1,
            refused_macs: 69_745,
            maps: vec![
                MapRow { name: "PEERS", max_entries: 65_536, memlock: 1_052_032 },
                MapRow { name: "REMOTE_SUBNETS", max_entries: 65_536, memlock: 4_096 },
            ],
            ..Status::example()
        }
    }

    const NOW: u64 = 1_700_000_200;

    #[test]
    fn prometheus_text_has_every_family() {
        let out = encode(&rows(), &status(Some(NOW + 90)), NOW, Format::PrometheusText);
        let version = env!("CARGO_PKG_VERSION");
        let expected = format!(
            "# HELP xnet_packets_total Packets seen by the xnet datapath, by direction and outcome.\n\
             # TYPE xnet_packets_total counter\n\
             xnet_packets_total{{direction=\"egress\",outcome=\"encap_vxlan\",code=\"1\"}} 20\n\
             xnet_packets_total{{direction=\"ingress\",outcome=\"decap_vxlan\",code=\"2\"}} 21\n\
             xnet_packets_total{{direction=\"ingress\",outcome=\"unknown_peer\",code=\"130\"}} 0\n\
             # HELP xnet_bytes_total Bytes seen by the xnet datapath, by direction and outcome.\n\
             # TYPE xnet_bytes_total counter\n\
             xnet_bytes_total{{direction=\"egress\",outcome=\"encap_vxlan\",code=\"1\"}} 2960\n\
             xnet_bytes_total{{direction=\"ingress\",outcome=\"decap_vxlan\",code=\"2\"}} 3108\n\
             xnet_bytes_total{{direction=\"ingress\",outcome=\"unknown_peer\",code=\"130\"}} 0\n\
             # HELP xnet_peers Peer hosts the datapath knows.\n\
             # TYPE xnet_peers gauge\n\
             xnet_peers 2\n\
             # HELP xnet_routes Remote subnets in the datapath.\n\
             # TYPE xnet_routes gauge\n\
             xnet_routes 5\n\
             # HELP xnet_map_capacity_entries Entries an eBPF map of the datapath holds at most.\n\
             # TYPE xnet_map_capacity_entries gauge\n\
             xnet_map_capacity_entries{{map=\"PEERS\"}} 65536\n\
             xnet_map_capacity_entries{{map=\"REMOTE_SUBNETS\"}} 65536\n\
             # HELP xnet_map_memory_bytes Kernel memory charged for an eBPF map of the datapath (bpftool's bytes_memlock).\n\
             # TYPE xnet_map_memory_bytes gauge\n\
             xnet_map_memory_bytes{{map=\"PEERS\"}} 1052032\n\
             xnet_map_memory_bytes{{map=\"REMOTE_SUBNETS\"}} 4096\n\
             # HELP xnet_store_up 1 when the route store was reachable at the last attempt.\n\
             # TYPE xnet_store_up gauge\n\
             xnet_store_up{{store=\"file\"}} 1\n\
             # HELP xnet_store_invalid_entries Store entries (leases) skipped as malformed at the last reconcile.\n\
             # TYPE xnet_store_invalid_entries gauge\n\
             xnet_store_invalid_entries 3\n\
             # HELP xnet_local_ports_refused_macs Container MACs left out of LOCAL_PORTS at the last sync: their bridge port claims more than the cap.\n\
             # TYPE xnet_local_ports_refused_macs gauge\n\
             xnet_local_ports_refused_macs 69745\n\
             # HELP xnet_syncs_refused_total Syncs of the datapath maps refused whole because a map had no room (see `[capacity]`).\n\
             # TYPE xnet_syncs_refused_total counter\n\
             xnet_syncs_refused_total 0\n\
             # HELP xnet_last_reconcile_timestamp_seconds When the datapath maps were last made to match the store (Unix time).\n\
             # TYPE xnet_last_reconcile_timestamp_seconds gauge\n\
             xnet_last_reconcile_timestamp_seconds 1700000100\n\
             # HELP xnet_lease_seconds_left Seconds until this host's subnet lease expires.\n\
             # TYPE xnet_lease_seconds_left gauge\n\
             xnet_lease_seconds_left 90\n\
             # HELP xnet_lease_lost 1 when this host's subnet lease expired and another host holds the subnet now.\n\
             # TYPE xnet_lease_lost gauge\n\
             xnet_lease_lost 0\n\
             # HELP xnet_agent_start_time_seconds When the agent started (Unix time).\n\
             # TYPE xnet_agent_start_time_seconds gauge\n\
             xnet_agent_start_time_seconds 1700000000\n\
             # HELP xnet_build_info The running xnet version.\n\
             # TYPE xnet_build_info gauge\n\
             xnet_build_info{{version=\"{version}\"}} 1\n"
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn openmetrics_names_families_without_suffixes_and_ends_with_eof() {
        let out = encode(&rows(), &status(Some(NOW + 90)), NOW, Format::OpenMetrics);
        for line in [
            "# TYPE xnet_packets counter\n",
            "xnet_packets_total{direction=\"egress\",outcome=\"encap_vxlan\",code=\"1\"} 20\n",
            "# TYPE xnet_bytes counter\n",
            "xnet_peers 2\n",
            "xnet_store_up{store=\"file\"} 1\n",
            "xnet_lease_seconds_left 90\n",
            "# TYPE xnet_build info\n",
        ] {
            assert!(out.contains(line), "no {line:?} in:\n{out}");
        }
        assert!(out.ends_with("\n# EOF\n"), "{out}");
    }

    #[test]
    fn no_lease_no_lease_gauge_and_an_expired_lease_is_zero() {
        let out = encode(&rows(), &status(None), NOW, Format::PrometheusText);
        assert!(!out.contains("xnet_lease_seconds_left"), "{out}");
        let out = encode(&[], &status(Some(NOW - 5)), NOW, Format::PrometheusText);
        assert!(out.contains("\nxnet_lease_seconds_left 0\n"), "{out}");
        assert!(out.contains("\nxnet_lease_lost 0\n"), "{out}");
        let mut lost = status(Some(NOW - 5));
        (lost.lease_lost, lost.lease_holder) = (true, Some(Ipv4Addr::new(198, 18, 0, 9)));
        let out = encode(&[], &lost, NOW, Format::PrometheusText);
        assert!(out.contains("\nxnet_lease_lost 1\n"), "{out}");
        assert!(out.contains("# TYPE xnet_packets_total counter\n"), "{out}");
    }

    #[test]
    fn accept_header_picks_the_format() {
        let prometheus_3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                            application/openmetrics-text;version=0.0.1;q=0.5,\
                            text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,\
                            text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::negotiate(prometheus_3), Format::OpenMetrics);
        assert_eq!(Format::negotiate(""), Format::PrometheusText);
        assert_eq!(Format::negotiate("*/*"), Format::PrometheusText);
        assert_eq!(Format::negotiate("text/plain;version=0.0.4"), Format::PrometheusText);
        assert_eq!(Format::negotiate("application/openmetrics-text; version=0.0.1"), Format::PrometheusText);
        assert_eq!(Format::negotiate("application/openmetrics-text;q=0"), Format::PrometheusText);
        assert_eq!(
            Format::negotiate("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
            Format::PrometheusText
        );
    }

    /// `promtool check metrics` (Debian package `prometheus`) accepts the Prometheus text format;
    /// skipped where promtool is missing. (It reads that format only: given OpenMetrics, it takes
    /// `xnet_packets_total` for a family of its own, without HELP, and rejects the type `info`.)
    #[test]
    fn promtool_accepts_the_prometheus_text() {
        let out = encode(&rows(), &status(Some(NOW + 90)), NOW, Format::PrometheusText);
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("promtool is not installed: not checked");
            return;
        };
        child.stdin.take().unwrap().write_all(out.as_bytes()).unwrap();
        let checked = child.wait_with_output().unwrap();
        assert!(
            checked.status.success(),
            "promtool check metrics: {}{}\n{out}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }

    /// Starts the server on an ephemeral port of 127.0.0.1, for a pin directory that does not exist.
    async fn start(limits: Limits) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pin_dir = PathBuf::from("/nonexistent/xnet-metrics-test");
        (addr, tokio::spawn(serve_with_limits(listener, pin_dir, limits)))
    }

    /// Sends `request` on a new connection and reads until the server closes it.
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut response))
            .await
            .expect("response within 10 s")
            .unwrap();
        response
    }

    #[tokio::test(flavor = "current_thread")]
    async fn other_paths_are_404_and_unreadable_maps_503() {
        let (addr, server) = start(Limits::default()).await;
        let response = exchange(addr, "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        assert!(response.ends_with("\r\n\r\nxnet serves /metrics only\n"), "{response}");
        let response = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        assert!(response.contains("/nonexistent/xnet-metrics-test"), "{response}");
        server.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_client_is_cut_off_after_the_header_timeout() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            connection_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let (addr, server) = start(limits).await;
        let started = Instant::now();
        let response = exchange(addr, "").await;
        let waited = started.elapsed();
        assert!(!response.contains(" 200 "), "{response}");
        assert!(waited >= Duration::from_millis(250), "cut off after {waited:?} already");
        assert!(waited < Duration::from_secs(5), "cut off only after {waited:?}");
        server.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connections_beyond_the_limit_are_closed() {
        let limits = Limits { max_connections: 1, ..Limits::default() };
        let (addr, server) = start(limits).await;
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The second connection is accepted after the first, and closed at once: long before the
        // header timeout (5 s) would close it.
        let started = Instant::now();
        let response = exchange(addr, "").await;
        assert_eq!(response, "");
        assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());
        // The first one is still served.
        first.write_all(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut response = String::new();
        first.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        server.abort();
    }
}
