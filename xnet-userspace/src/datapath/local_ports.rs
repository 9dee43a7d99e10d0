//! Which container MACs LOCAL_PORTS holds: what the bridges' forwarding tables say, and the MACs
//! xnet delivered to while their port lives, with each bridge port's claim capped, so that a
//! container sending from tens of thousands of made-up source MACs can neither fill the map for
//! everyone else nor stop the agent's expiry.

use std::collections::{BTreeMap, BTreeSet};

/// The most container MACs one bridge port may have in LOCAL_PORTS. A container has one MAC (a
/// few, with macvlan or VMs inside); at this cap a /24's 254 containers still fit the map
/// ([`xnet_common::maps::LOCAL_PORTS_MAX`]) with room to spare.
pub const PER_PORT_MAX: usize = 256;

/// The container MACs LOCAL_PORTS is to hold: those the bridges have `learned`, and, while their
/// port is one of `live_ports`, those packets were `delivered` to. A bridge learns a MAC only
/// from frames that enter it, and the egress program takes a container's overlay traffic before
/// the bridge sees it: a container that talks only to remote ones drops out of the bridge's table
/// after its ageing time (300 s by default) while it still receives. Remembering it keeps its
/// packets on the direct path. The forwarding table wins when it puts a MAC on another port.
pub fn wanted(
    learned: &BTreeMap<[u8; 6], u32>,
    delivered: &BTreeMap<[u8; 6], u32>,
    live_ports: &BTreeSet<u32>,
) -> BTreeMap<[u8; 6], u32> {
    let mut out = learned.clone();
    for (mac, port) in delivered {
        if live_ports.contains(port) {
            out.entry(*mac).or_insert(*port);
        }
    }
    out
}

/// The writes that make LOCAL_PORTS hold what is wanted, within the cap.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LocalPortsPlan {
    /// What LOCAL_PORTS is to hold: container MAC -> bridge port ifindex.
    pub kept: BTreeMap<[u8; 6], u32>,
    /// Entries to remove (first: they make room).
    pub remove: Vec<[u8; 6]>,
    /// Entries to write (new, or moved to another port).
    pub put: Vec<([u8; 6], u32)>,
    /// Bridge ports over the cap -> how many of their MACs were left out.
    pub refused: BTreeMap<u32, usize>,
}

/// Plans LOCAL_PORTS from `current` (what it holds) to `wanted` (the forwarding tables' container
/// MACs -> bridge port), at most `per_port` MACs a port. A port over the cap keeps the MACs it
/// already has in the map (so a flood cannot push a container's real MAC out), then the lowest.
pub fn plan(
    current: &BTreeMap<[u8; 6], u32>,
    wanted: &BTreeMap<[u8; 6], u32>,
    per_port: usize,
) -> LocalPortsPlan {
    let mut by_port: BTreeMap<u32, Vec<[u8; 6]>> = BTreeMap::new();
    for (mac, port) in wanted {
        by_port.entry(*port).or_default().push(*mac);
    }
    let mut out = LocalPortsPlan::default();
    for (port, mut macs) in by_port {
        if macs.len() > per_port {
            // Stable sort: those in the map already first, each group in MAC order.
            macs.sort_by_key(|m| current.get(m) != Some(&port));
            out.refused.insert(port, macs.len() - per_port);
            macs.truncate(per_port);
        }
        out.kept.extend(macs.into_iter().map(|m| (m, port)));
    }
    out.remove = current.keys().filter(|m| !out.kept.contains_key(*m)).copied().collect();
    out.put = out.kept.iter().filter(|(m, p)| current.get(*m) != Some(*p)).map(|(m, p)| (*m, *p)).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u32) -> [u8; 6] {
        let b = n.to_be_bytes();
        [2, 0x42, b[0], b[1], b[2], b[3]]
    }

    #[test]
    fn delivered_macs_outlive_the_bridges_ageing_while_their_port_lives() {
        let learned = BTreeMap::from([(mac(1), 10), (mac(3), 12)]);
        // mac(2) aged out of the bridge, still behind live port 11; mac(3) was delivered to on
        // port 11 but the bridge has since seen it on 12; mac(4)'s port 13 is gone.
        let delivered = BTreeMap::from([(mac(2), 11), (mac(3), 11), (mac(4), 13)]);
        let live = BTreeSet::from([10, 11, 12]);
        let w = wanted(&learned, &delivered, &live);
        assert_eq!(w, BTreeMap::from([(mac(1), 10), (mac(2), 11), (mac(3), 12)]));
        assert_eq!(
            wanted(&learned, &BTreeMap::new(), &live),
            learned,
            "nothing delivered: the bridge's table"
        );
    }

    #[test]
    fn removals_come_with_the_puts_of_what_changed() {
        let current = BTreeMap::from([(mac(1), 10), (mac(2), 10), (mac(3), 11)]);
        let wanted = BTreeMap::from([(mac(1), 10), (mac(3), 12), (mac(4), 11)]);
        let p = plan(&current, &wanted, PER_PORT_MAX);
        assert_eq!(p.remove, vec![mac(2)], "gone");
        assert_eq!(p.put, vec![(mac(3), 12), (mac(4), 11)], "moved, new");
        assert_eq!(p.kept, wanted);
        assert!(p.refused.is_empty());
    }

    #[test]
    fn a_port_flooding_macs_is_capped_and_keeps_the_ones_it_had() {
        // Port 10: a real container at mac(70_000), already in the map, then 70,000 made-up MACs
        // (all lower). Port 11: one container.
        let current = BTreeMap::from([(mac(70_000), 10), (mac(1_000_000), 11)]);
        let mut wanted: BTreeMap<[u8; 6], u32> = (0..70_000).map(|n| (mac(n), 10)).collect();
        wanted.insert(mac(70_000), 10);
        wanted.insert(mac(1_000_000), 11);
        let p = plan(&current, &wanted, PER_PORT_MAX);
        assert_eq!(p.refused, BTreeMap::from([(10, 70_001 - PER_PORT_MAX)]));
        assert_eq!(p.kept.values().filter(|&&port| port == 10).count(), PER_PORT_MAX);
        assert_eq!(p.kept.get(&mac(70_000)), Some(&10), "the MAC it had stays");
        assert_eq!(p.kept.get(&mac(1_000_000)), Some(&11), "the other port is untouched");
        assert!(p.kept.contains_key(&mac(0)) && !p.kept.contains_key(&mac(PER_PORT_MAX as u32)));
        assert!(p.remove.is_empty());
        assert_eq!(p.put.len(), PER_PORT_MAX - 1, "the kept MACs that are new");
    }
}
