//! Human-readable renderings of what [`crate::inspect`] reads (the `--json` forms are serde's).

use std::fmt::Write as _;

use crate::inspect::{CounterRow, RouteRow, Status, ago, utc};

fn outcome_label(r: &CounterRow) -> String {
    if r.drop { format!("drop:{}", r.outcome) } else { r.outcome.to_string() }
}

/// The counters table. `rates`: (packets/s, bits/s) per row, from `--watch`.
pub fn counters(rows: &[CounterRow], rates: Option<&[(f64, f64)]>) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:<8} {:<24} {:>5} {:>14} {:>16}", "DIR", "OUTCOME", "CODE", "PACKETS", "BYTES");
    if rates.is_some() {
        let _ = write!(out, " {:>12} {:>12}", "PKT/S", "BIT/S");
    }
    out.push('\n');
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            out,
            "{:<8} {:<24} {:>5} {:>14} {:>16}",
            r.direction,
            outcome_label(r),
            r.code,
            r.packets,
            r.bytes
        );
        if let Some(rates) = rates {
            let (pps, bps) = rates[i];
            let _ = write!(out, " {:>12.0} {:>12}", pps, si(bps));
        }
        out.push('\n');
    }
    out
}

/// 1.23G, 456.0M, 12.0k.
fn si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

pub fn routes(rows: &[RouteRow]) -> String {
    let mut out = format!(
        "{:<18} {:<15} {:<8} {:>10} {:<17} {:<12} {:>8}\n",
        "SUBNET", "PEER", "BACKEND", "VNI/KEY", "VTEP MAC", "SOURCE", "AGE"
    );
    for r in rows {
        let age = r.age_seconds.map_or("-".to_string(), ago);
        let id = r.vni.or(r.key).map_or("-".to_string(), |v| v.to_string());
        let source = match &r.protocol {
            Some(p) => format!("{} ({p})", r.source),
            None => r.source.to_string(),
        };
        let _ = writeln!(
            out,
            "{:<18} {:<15} {:<8} {:>10} {:<17} {:<12} {:>8}",
            r.subnet,
            r.peer.to_string(),
            r.backend,
            id,
            r.vtep_mac,
            source,
            age
        );
    }
    out
}

pub fn status(s: &Status, now: u64) -> String {
    let mut out = String::new();
    let agent = if s.agent_running {
        format!("pid {}, running, up {}", s.agent_pid, ago(now.saturating_sub(s.agent_started_at)))
    } else {
        format!("not running (last agent pid {}); the datapath keeps forwarding", s.agent_pid)
    };
    let lease = match (s.lease_lost, s.lease_expiry) {
        (true, _) => format!(
            "LOST: {} now held by {}; not advertised (see the agent log)",
            s.subnet,
            s.lease_holder.map_or("a key that names no host".to_string(), |ip| ip.to_string())
        ),
        (false, Some(t)) if t <= now => {
            format!("EXPIRED {} ({} ago, the store out of reach) for {}", utc(t), ago(now - t), s.subnet)
        }
        (false, Some(t)) => format!("expires {} (in {}) for {}", utc(t), ago(t - now), s.subnet),
        (false, None) if s.store == "routes" => "none (routing daemon)".to_string(),
        (false, None) => "none (static file)".to_string(),
    };
    let _ = writeln!(out, "pin dir      {}", s.pin_dir.display());
    let _ = writeln!(out, "agent        {agent}");
    let _ = writeln!(
        out,
        "store        {}, {}, last reconciled {} ({} ago)",
        s.store,
        if s.store_up { "up" } else { "DOWN" },
        utc(s.last_reconcile),
        ago(now.saturating_sub(s.last_reconcile))
    );
    if s.invalid_entries > 0 {
        let _ =
            writeln!(out, "skipped      {} malformed store entries (see the agent log)", s.invalid_entries);
    }
    if s.refused_macs > 0 {
        let _ = writeln!(
            out,
            "local ports  {} container MACs left out: {} bridge port(s) claim more than {} each (see the agent log)",
            s.refused_macs, s.ports_over_cap, s.local_ports_cap
        );
    }
    if let Some(map) = s.full_map {
        let _ = writeln!(
            out,
            "maps full    {map} has no room for what the store holds: the maps keep the last state that fit ({} syncs refused); raise `[capacity]`",
            s.refused_syncs
        );
    }
    let _ = writeln!(out, "lease        {lease}");
    let key = s.gre_key.map_or("none".to_string(), |k| k.to_string());
    let _ = writeln!(
        out,
        "backend      {}; public ip {}; vxlan vni {} port {}, vtep mac {}; udp port {}; gre key {}",
        s.backend, s.public_ip, s.vni, s.vxlan_port, s.vtep_mac, s.udp_port, key
    );
    let _ = writeln!(out, "mtu          {} (containers)", s.overlay_mtu);
    let lookup = if s.route_index { "route index" } else { "LPM trie" };
    let _ = writeln!(out, "peers        {} ({} routes, looked up in the {lookup})", s.peers, s.routes);
    let _ = writeln!(out, "decap        {} (tunnel formats judged: {})", s.ingress, s.tunnel_formats);
    let _ = writeln!(out, "untunnelled  to containers from {}", s.untunnelled);
    let containers: Vec<String> = s
        .container_ifaces
        .iter()
        .map(|c| {
            if c.state == "awaited" {
                format!("{} (awaited: not there yet)", c.name)
            } else {
                format!("{} ({})", c.name, c.state)
            }
        })
        .collect();
    let _ = writeln!(
        out,
        "containers   {}",
        if containers.is_empty() { "(none recorded)".to_string() } else { containers.join(", ") }
    );
    let _ = writeln!(out, "attachments");
    for a in &s.attachments {
        let _ = writeln!(
            out,
            "  {:<10} {:<12} {:<18} prog {:<6} link {}",
            a.iface, a.hook, a.program, a.program_id, a.link_id
        );
    }
    if s.attachments.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    let total: u64 = s.maps.iter().map(|m| m.memlock).sum();
    let _ = writeln!(out, "maps         {} of kernel memory; room for", size(total));
    for m in &s.maps {
        let _ = writeln!(out, "  {:<18} {:>9} entries {:>10}", m.name, m.max_entries, size(m.memlock));
    }
    out
}

/// Bytes in KiB below a MiB, else in MiB with one decimal.
fn size(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{} KiB", bytes.div_ceil(1 << 10))
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const NOW: u64 = 1_700_000_200;

    fn lease_line(s: &Status, now: u64) -> String {
        status(s, now).lines().find(|l| l.starts_with("lease ")).expect("a lease line").to_string()
    }

    #[test]
    fn the_lease_line_says_held_expired_or_lost() {
        let etcd = |lease_expiry: Option<u64>, lost: Option<Option<Ipv4Addr>>| Status {
            store: "etcd",
            lease_expiry,
            lease_lost: lost.is_some(),
            lease_holder: lost.flatten(),
            ..Status::example()
        };
        assert_eq!(
            lease_line(&etcd(Some(NOW + 90), None), NOW),
            "lease        expires 2023-11-14T22:18:10Z (in 1m30s) for 10.244.1.0/24"
        );
        let expired = lease_line(&etcd(Some(NOW - 7), None), NOW);
        assert!(expired.starts_with("lease        EXPIRED "), "{expired}");
        assert_eq!(
            lease_line(&etcd(Some(NOW - 7), Some(Some(Ipv4Addr::new(198, 18, 0, 9)))), NOW),
            "lease        LOST: 10.244.1.0/24 now held by 198.18.0.9; not advertised (see the agent log)"
        );
        assert!(
            lease_line(&etcd(Some(NOW - 7), Some(None)), NOW)
                .contains("now held by a key that names no host")
        );
        assert_eq!(lease_line(&etcd(None, None), NOW), "lease        none (static file)");
    }

    #[test]
    fn status_says_when_a_map_is_full_and_only_then() {
        let full = Status { full_map: Some("REMOTE_SUBNETS"), refused_syncs: 3, ..Status::example() };
        let text = status(&full, NOW);
        let line = text.lines().find(|l| l.starts_with("maps full")).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(
            line,
            "maps full    REMOTE_SUBNETS has no room for what the store holds: the maps keep the last state that fit (3 syncs refused); raise `[capacity]`"
        );
        // Room again: the count stays (a counter), the line goes.
        let text = status(&Status { refused_syncs: 3, ..Status::example() }, NOW);
        assert!(!text.contains("maps full"), "{text}");
    }

    #[test]
    fn status_names_container_macs_left_out_only_when_there_are_some() {
        let flooded = Status { ports_over_cap: 1, refused_macs: 69_744, ..Status::example() };
        let text = status(&flooded, NOW);
        let line = text.lines().find(|l| l.starts_with("local ports")).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(
            line,
            "local ports  69744 container MACs left out: 1 bridge port(s) claim more than 256 each (see the agent log)"
        );
        let calm = status(&Status { ports_over_cap: 0, refused_macs: 0, ..Status::example() }, NOW);
        assert!(!calm.contains("local ports"), "{calm}");
    }
}
