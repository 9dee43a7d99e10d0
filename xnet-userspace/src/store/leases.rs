//! The other hosts' leases, validated like the static file's peers: a pure table that the etcd
//! store feeds with what it lists and watches, and that answers with the peers to add, change and
//! remove. One lease change costs work proportional to the leases it conflicts with, not to the
//! network.
//!
//! A lease is refused (skipped, logged once, counted) when it lies outside the network (the
//! key does not parse into it), claims or overlaps this host's subnet, names a public IP no
//! host can have (unspecified, loopback, multicast, broadcast, this host's own), or conflicts with
//! an older lease: overlapping subnets, or the same public IP. "Older" is etcd's create revision,
//! which every host reads alike, so every host refuses the same lease.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use crate::{
    cidr::{self, Ipv4Network},
    config::PeerConfig,
    mac::Mac,
    store::flannel::{Lease, SchemaError},
};

/// What a change did to the peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerDelta {
    /// Peers added or changed.
    pub set: Vec<PeerConfig>,
    /// Subnets that no longer lead to a peer.
    pub removed: Vec<Ipv4Network>,
}

impl PeerDelta {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.removed.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    lease: Lease,
    /// etcd's create revision of the key: the lower, the older.
    created: i64,
}

/// Every lease under the subnets directory, and which of them are peers.
#[derive(Clone, Debug)]
pub struct LeaseTable {
    my_subnet: Ipv4Network,
    my_ip: Ipv4Addr,
    /// Parsed leases by (first address, prefix length).
    leases: BTreeMap<(u32, u8), Entry>,
    /// Subnets by public IP, for the same-IP conflict.
    by_ip: BTreeMap<Ipv4Addr, BTreeSet<(u32, u8)>>,
    /// Keys whose value does not parse, with why.
    malformed: BTreeMap<String, String>,
    /// Leases refused, with why.
    refused: BTreeMap<(u32, u8), String>,
    /// The peers: accepted leases.
    peers: BTreeMap<(u32, u8), PeerConfig>,
}

fn slot(net: &Ipv4Network) -> (u32, u8) {
    (u32::from(net.network()), net.prefix())
}

fn net_of((addr, prefix): (u32, u8)) -> Ipv4Network {
    cidr::network(Ipv4Addr::from(addr), prefix).expect("table keys are networks")
}

impl LeaseTable {
    /// An empty table for a host that holds `my_subnet` with `my_ip`.
    pub fn new(my_subnet: Ipv4Network, my_ip: Ipv4Addr) -> Self {
        Self {
            my_subnet,
            my_ip,
            leases: BTreeMap::new(),
            by_ip: BTreeMap::new(),
            malformed: BTreeMap::new(),
            refused: BTreeMap::new(),
            peers: BTreeMap::new(),
        }
    }

    /// The accepted peers, by subnet.
    pub fn peers(&self) -> impl Iterator<Item = &PeerConfig> {
        self.peers.values()
    }

    /// Entries skipped: malformed values and refused leases.
    pub fn invalid(&self) -> u32 {
        (self.malformed.len() + self.refused.len()) as u32
    }

    /// The lease at this host's subnet and its create revision, if any (to notice it was deleted,
    /// overwritten, or created anew by another host).
    pub fn at_my_subnet(&self) -> Option<(&Lease, i64)> {
        self.leases.get(&slot(&self.my_subnet)).map(|e| (&e.lease, e.created))
    }

    /// A key was written: `parsed` is its value as parsed (or why not), `created` its create
    /// revision.
    pub fn put(&mut self, key: &str, parsed: Result<Lease, SchemaError>, created: i64) -> PeerDelta {
        let lease = match parsed {
            Ok(lease) => lease,
            Err(e) => {
                let message = e.to_string();
                if self.malformed.get(key) != Some(&message) {
                    tracing::warn!(entry = %message, "skipping a malformed lease");
                    self.malformed.insert(key.to_string(), message);
                }
                // A key that held a lease and now holds garbage no longer leads anywhere.
                return match crate::store::flannel::parse_lease_key_any(key) {
                    Some(subnet) => self.remove_subnet(&subnet),
                    None => PeerDelta::default(),
                };
            }
        };
        self.malformed.remove(key);
        let at = slot(&lease.subnet);
        let mut affected = self.conflicts_of(&lease.subnet, lease.public_ip);
        if let Some(old) = self.leases.get(&at) {
            affected.extend(self.conflicts_of(&old.lease.subnet, old.lease.public_ip));
            let old_ip = old.lease.public_ip;
            self.unindex_ip(old_ip, at);
        }
        self.by_ip.entry(lease.public_ip).or_default().insert(at);
        self.leases.insert(at, Entry { lease, created });
        affected.insert(at);
        self.reevaluate(affected)
    }

    /// A key was deleted.
    pub fn delete(&mut self, key: &str) -> PeerDelta {
        self.malformed.remove(key);
        match crate::store::flannel::parse_lease_key_any(key) {
            Some(subnet) => self.remove_subnet(&subnet),
            None => PeerDelta::default(),
        }
    }

    fn remove_subnet(&mut self, subnet: &Ipv4Network) -> PeerDelta {
        let at = slot(subnet);
        let Some(old) = self.leases.remove(&at) else { return PeerDelta::default() };
        self.unindex_ip(old.lease.public_ip, at);
        let mut affected = self.conflicts_of(&old.lease.subnet, old.lease.public_ip);
        affected.insert(at);
        self.reevaluate(affected)
    }

    fn unindex_ip(&mut self, ip: Ipv4Addr, at: (u32, u8)) {
        if let Some(set) = self.by_ip.get_mut(&ip) {
            set.remove(&at);
            if set.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// Leases that overlap `subnet` or carry `ip` (whatever their own state).
    fn conflicts_of(&self, subnet: &Ipv4Network, ip: Ipv4Addr) -> BTreeSet<(u32, u8)> {
        let (start, end) = cidr::range(subnet);
        // Inside `subnet` (or equal to it): they start within its range.
        let mut out: BTreeSet<(u32, u8)> =
            self.leases.range((start, 0)..=(end, 32)).map(|(k, _)| *k).collect();
        // Around it: the supernets of its first address.
        for prefix in 0..subnet.prefix() {
            let around = (start & cidr::mask(prefix), prefix);
            if self.leases.contains_key(&around) {
                out.insert(around);
            }
        }
        out.extend(self.by_ip.get(&ip).into_iter().flatten().copied());
        out
    }

    /// Why the lease at `at` is not a peer on its own merits, or `None` if it could be one;
    /// `Some("")` for this host's own lease (neither a peer nor an error).
    fn own_fault(&self, lease: &Lease) -> Option<String> {
        if lease.subnet == self.my_subnet {
            return Some(if lease.public_ip == self.my_ip {
                String::new()
            } else {
                format!("claims this host's subnet {} for {}", self.my_subnet, lease.public_ip)
            });
        }
        if cidr::overlaps(&lease.subnet, &self.my_subnet) {
            return Some(format!("overlaps this host's subnet {}", self.my_subnet));
        }
        let ip = lease.public_ip;
        if ip == self.my_ip {
            return Some(format!("names this host's own public IP {ip}"));
        }
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
            return Some(format!("names {ip}, which no host can have as its public IP"));
        }
        None
    }

    /// Why the lease at `at` is refused, or `None` if it is a peer (`Some("")`: this host's own).
    fn verdict(&self, at: (u32, u8)) -> Option<String> {
        let entry = &self.leases[&at];
        if let Some(fault) = self.own_fault(&entry.lease) {
            return Some(fault);
        }
        let age = |k: &(u32, u8)| (self.leases[k].created, *k);
        let older = self
            .conflicts_of(&entry.lease.subnet, entry.lease.public_ip)
            .into_iter()
            .filter(|k| *k != at && age(k) < age(&at))
            .find(|k| self.own_fault(&self.leases[k].lease).is_none())?;
        let other = &self.leases[&older].lease;
        Some(if other.public_ip == entry.lease.public_ip {
            format!("names {}, which already holds {}", other.public_ip, other.subnet)
        } else {
            format!("overlaps {} of {}, which was leased first", other.subnet, other.public_ip)
        })
    }

    fn reevaluate(&mut self, affected: BTreeSet<(u32, u8)>) -> PeerDelta {
        let mut delta = PeerDelta::default();
        for at in affected {
            let peer = match self.leases.contains_key(&at).then(|| self.verdict(at)) {
                // Gone.
                None => {
                    self.refused.remove(&at);
                    None
                }
                Some(None) => {
                    self.refused.remove(&at);
                    let lease = &self.leases[&at].lease;
                    Some(PeerConfig {
                        subnet: lease.subnet,
                        public_ip: lease.public_ip,
                        vtep_mac: lease.vtep_mac.unwrap_or_else(|| Mac::from_ipv4(lease.public_ip)),
                        // Send each peer what it says it receives (a flannel host speaks only its backend).
                        backend: Some(lease.backend),
                        protocol: None,
                    })
                }
                Some(Some(reason)) if reason.is_empty() => {
                    self.refused.remove(&at);
                    None
                }
                Some(Some(reason)) => {
                    if self.refused.get(&at) != Some(&reason) {
                        tracing::warn!(subnet = %net_of(at), reason = %reason, "skipping a lease");
                        self.refused.insert(at, reason);
                    }
                    None
                }
            };
            match peer {
                Some(p) => {
                    if self.peers.get(&at) != Some(&p) {
                        self.peers.insert(at, p.clone());
                        delta.set.push(p);
                    }
                }
                None => {
                    if self.peers.remove(&at).is_some() {
                        delta.removed.push(net_of(at));
                    }
                }
            }
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xnet_common::maps::Backend;

    fn lease(subnet: &str, ip: &str) -> Lease {
        let public_ip: Ipv4Addr = ip.parse().unwrap();
        Lease {
            subnet: cidr::parse(subnet).unwrap(),
            public_ip,
            backend: Backend::Vxlan,
            vtep_mac: Some(Mac::from_ipv4(public_ip)),
            vni: Some(1),
        }
    }

    fn key(subnet: &str) -> String {
        format!("/coreos.com/network/subnets/{}", subnet.replace('/', "-"))
    }

    fn table() -> LeaseTable {
        LeaseTable::new(cidr::parse("10.244.1.0/24").unwrap(), "198.18.0.1".parse().unwrap())
    }

    fn subnets(t: &LeaseTable) -> Vec<String> {
        t.peers().map(|p| p.subnet.to_string()).collect()
    }

    #[test]
    fn peers_come_and_go() {
        let mut t = table();
        let d = t.put(&key("10.244.2.0/24"), Ok(lease("10.244.2.0/24", "198.18.0.2")), 5);
        assert_eq!(d.set.len(), 1);
        assert_eq!(d.set[0].vtep_mac, Mac::from_ipv4("198.18.0.2".parse().unwrap()));
        assert!(t.put(&key("10.244.1.0/24"), Ok(lease("10.244.1.0/24", "198.18.0.1")), 6).is_empty(), "ours");
        assert_eq!((subnets(&t), t.invalid()), (vec!["10.244.2.0/24".to_string()], 0));
        // The same value again changes nothing; a new VTEP MAC is a change.
        assert!(t.put(&key("10.244.2.0/24"), Ok(lease("10.244.2.0/24", "198.18.0.2")), 5).is_empty());
        let mut moved = lease("10.244.2.0/24", "198.18.0.2");
        moved.vtep_mac = Some("02:00:00:00:00:99".parse().unwrap());
        assert_eq!(t.put(&key("10.244.2.0/24"), Ok(moved), 5).set.len(), 1);
        let d = t.delete(&key("10.244.2.0/24"));
        assert_eq!((d.set.len(), d.removed), (0, vec![cidr::parse("10.244.2.0/24").unwrap()]));
        assert!(t.delete(&key("10.244.9.0/24")).is_empty(), "deleting what is not there");
    }

    #[test]
    fn a_lease_over_this_hosts_subnet_is_refused_and_counted() {
        let mut t = table();
        assert!(t.put(&key("10.244.1.0/25"), Ok(lease("10.244.1.0/25", "198.18.0.3")), 9).is_empty());
        assert!(t.put(&key("10.244.1.0/24"), Ok(lease("10.244.1.0/24", "198.18.0.3")), 9).is_empty());
        assert_eq!((subnets(&t).len(), t.invalid()), (0, 2));
        // Bad public IPs.
        for (i, ip) in
            ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255", "198.18.0.1"].iter().enumerate()
        {
            let s = format!("10.244.{}.0/24", 10 + i);
            assert!(t.put(&key(&s), Ok(lease(&s, ip)), 10).is_empty(), "{ip}");
        }
        assert_eq!(t.invalid(), 7);
        // Malformed values count once per key, and go when fixed.
        let bad = SchemaError { key: key("10.244.20.0/24"), message: "is not JSON".into() };
        t.put(&key("10.244.20.0/24"), Err(bad.clone()), 11);
        t.put(&key("10.244.20.0/24"), Err(bad), 11);
        assert_eq!(t.invalid(), 8);
        assert_eq!(
            t.put(&key("10.244.20.0/24"), Ok(lease("10.244.20.0/24", "198.18.0.20")), 11).set.len(),
            1
        );
        assert_eq!(t.invalid(), 7);
    }

    #[test]
    fn this_hosts_key_is_told_apart_by_its_create_revision() {
        let mut t = table();
        assert_eq!(t.at_my_subnet(), None);
        t.put(&key("10.244.1.0/24"), Ok(lease("10.244.1.0/24", "198.18.0.1")), 6);
        assert_eq!(
            t.at_my_subnet().map(|(l, c)| (l.public_ip.to_string(), c)),
            Some(("198.18.0.1".into(), 6))
        );
        // Deleted (expired) and created anew by another host: a new create revision, not a peer.
        t.delete(&key("10.244.1.0/24"));
        assert_eq!(t.at_my_subnet(), None);
        assert!(t.put(&key("10.244.1.0/24"), Ok(lease("10.244.1.0/24", "198.18.0.3")), 9).is_empty());
        assert_eq!(
            t.at_my_subnet().map(|(l, c)| (l.public_ip.to_string(), c)),
            Some(("198.18.0.3".into(), 9))
        );
        assert_eq!((subnets(&t).len(), t.invalid()), (0, 1), "refused: it claims this host's subnet");
    }

    #[test]
    fn the_older_of_two_overlapping_leases_wins_until_it_goes() {
        let mut t = table();
        t.put(&key("10.244.2.0/24"), Ok(lease("10.244.2.0/24", "198.18.0.2")), 5);
        // Younger and overlapping: refused, whatever order the table hears them in.
        assert!(t.put(&key("10.244.2.0/25"), Ok(lease("10.244.2.0/25", "198.18.0.3")), 8).is_empty());
        assert!(t.put(&key("10.244.0.0/16"), Ok(lease("10.244.0.0/16", "198.18.0.4")), 9).is_empty());
        assert_eq!(
            (subnets(&t), t.invalid()),
            (vec!["10.244.2.0/24".to_string()], 2),
            "the /16 also overlaps ours"
        );
        let mut other = table();
        other.put(&key("10.244.2.0/25"), Ok(lease("10.244.2.0/25", "198.18.0.3")), 8);
        other.put(&key("10.244.2.0/24"), Ok(lease("10.244.2.0/24", "198.18.0.2")), 5);
        assert_eq!(subnets(&other), vec!["10.244.2.0/24".to_string()], "every host agrees");
        // The older one goes: the younger one becomes a peer.
        let d = t.delete(&key("10.244.2.0/24"));
        assert_eq!(d.removed, vec![cidr::parse("10.244.2.0/24").unwrap()]);
        assert_eq!(d.set.iter().map(|p| p.subnet.to_string()).collect::<Vec<_>>(), vec!["10.244.2.0/25"]);
        // Same public IP on a second subnet: the younger is refused.
        assert!(t.put(&key("10.244.7.0/24"), Ok(lease("10.244.7.0/24", "198.18.0.3")), 12).is_empty());
        assert_eq!(t.invalid(), 2);
    }
}
