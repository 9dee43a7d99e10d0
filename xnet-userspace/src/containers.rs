//! What sits behind the configured container interfaces, as netlink reports it: the bridge ports
//! (the egress program runs on each, before the bridge sees the frame), the learned container
//! MACs and the port each is behind (LOCAL_PORTS), and the first interface's own MAC (CONFIG's
//! gateway MAC). Refreshed by dumps when an event concerns them: no process is spawned, nothing
//! is polled.

use std::collections::BTreeMap;

use crate::netlink::{HostEvent, Netlink, NetlinkError};

/// The container interfaces and what is behind them.
#[derive(Debug, Default)]
pub struct Containers {
    /// The configured container interfaces, in config order.
    names: Vec<String>,
    /// Those that exist, name -> ifindex.
    present: BTreeMap<String, u32>,
    gateway_mac: Option<[u8; 6]>,
    /// Bridge ports (not configured interfaces themselves), name -> ifindex.
    ports: BTreeMap<String, u32>,
    /// Container MAC -> the bridge port it was learned on.
    fdb: BTreeMap<[u8; 6], u32>,
}

impl Containers {
    pub fn new(names: Vec<String>) -> Self {
        Self { names, ..Default::default() }
    }

    pub fn ports(&self) -> &BTreeMap<String, u32> {
        &self.ports
    }

    pub fn fdb(&self) -> &BTreeMap<[u8; 6], u32> {
        &self.fdb
    }

    /// The MAC of the first container interface, when it exists.
    pub fn gateway_mac(&self) -> Option<[u8; 6]> {
        self.gateway_mac
    }

    /// Whether `event` may change what [`Containers::refresh`] would find.
    pub fn concerns(&self, event: &HostEvent) -> bool {
        let is_ours = |index: u32| self.present.values().any(|i| *i == index);
        match event {
            HostEvent::Link(l) => {
                self.names.contains(&l.name)
                    || l.master.is_some_and(is_ours)
                    || self.ports.contains_key(&l.name)
                    || self.present.values().any(|i| *i == l.index)
            }
            HostEvent::LinkGone { index, name } => {
                self.names.contains(name) || self.ports.contains_key(name) || is_ours(*index)
            }
            HostEvent::Fdb { bridge, .. } => is_ours(*bridge),
            HostEvent::Address { .. } | HostEvent::Route { .. } => false,
            HostEvent::Resync => true,
        }
    }

    /// The configured container interfaces, in config order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The configured interfaces that exist now, name -> ifindex.
    pub fn present(&self) -> &BTreeMap<String, u32> {
        &self.present
    }

    /// The configured interfaces that do not exist (yet).
    pub fn awaited(&self) -> Vec<&str> {
        self.names.iter().filter(|n| !self.present.contains_key(*n)).map(String::as_str).collect()
    }

    /// Reads the interfaces, their ports and their learned MACs again. Returns the configured
    /// interfaces that appeared since the last refresh, or were re-created (a new ifindex).
    pub async fn refresh(&mut self, netlink: &Netlink) -> Result<Vec<String>, NetlinkError> {
        let mut present = BTreeMap::new();
        let mut gateway_mac = None;
        for (i, name) in self.names.iter().enumerate() {
            if let Some(link) = netlink.link(name).await? {
                if i == 0 {
                    gateway_mac = link.mac;
                }
                present.insert(name.clone(), link.index);
            }
        }
        let mut ports = BTreeMap::new();
        let mut fdb = BTreeMap::new();
        for index in present.values() {
            ports.extend(netlink.bridge_ports(*index).await?);
            fdb.extend(netlink.bridge_fdb(*index).await?);
        }
        ports.retain(|name, _| !self.names.contains(name));
        let appeared = present
            .iter()
            .filter(|(n, i)| self.present.get(*n) != Some(*i))
            .map(|(n, _)| n.clone())
            .collect();
        *self = Self { names: std::mem::take(&mut self.names), present, gateway_mac, ports, fdb };
        Ok(appeared)
    }
}
