//! The etcd store, in flannel's schema (see [`crate::store::flannel`]): read the network config,
//! lease a subnet with a transaction that only creates a key that does not exist (two hosts racing
//! never get the same subnet), keep the lease alive, and follow the other hosts' leases with a
//! watch. [`run`] is the store's task: it turns all of that into [`StoreEvent`]s for the agent and
//! never touches the datapath. While etcd is unreachable it retries every endpoint with backoff;
//! the agent keeps forwarding with the last peers it was told about.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions, WatchStream,
};
use tokio::sync::mpsc;
use xnet_common::maps::Backend;

use crate::{
    cidr::{self, Ipv4Network},
    clock::unix_now,
    config::EtcdSettings,
    mac::Mac,
    store::{
        Identity, LeaseState, Overlay, StoreEvent,
        flannel::{self, Lease, NetworkConfig, SchemaError},
        leases::{LeaseTable, PeerDelta},
    },
};

/// What went wrong talking to etcd, or with what it holds.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd at {endpoints} is unreachable or failed: {error}")]
    Etcd { endpoints: String, error: String },
    #[error(
        "{key} does not exist; write flannel's network config there, e.g. etcdctl put {key} '{{\"Network\": \"10.244.0.0/16\", \"Backend\": {{\"Type\": \"vxlan\"}}}}'"
    )]
    NoConfig { key: String },
    #[error("cannot read {what} {path}: {error}")]
    TlsFile { what: &'static str, path: std::path::PathBuf, error: std::io::Error },
    #[error("invalid network config: {0}")]
    BadConfig(SchemaError),
    #[error(
        "every subnet of {network} between {min} and {max} is leased; widen the network or remove stale leases"
    )]
    Exhausted { network: Ipv4Network, min: Ipv4Addr, max: Ipv4Addr },
}

/// This host, as its lease describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Me {
    pub public_ip: Ipv4Addr,
    pub backend: Backend,
    pub vtep_mac: Mac,
    pub vni: u32,
}

/// A subnet this host holds, and the etcd lease that keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub lease: Lease,
    pub lease_id: i64,
    /// Seconds left on the etcd lease when it was granted or last renewed.
    pub ttl: i64,
    /// etcd's create revision of the lease's key as this host wrote it: a key at the same subnet
    /// with another create revision was created anew, by another host.
    pub created: i64,
}

/// What [`EtcdClient::retake`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retake {
    /// The subnet was free (or still carried this host's public IP): it is held again, with a
    /// new etcd lease.
    Taken(Held),
    /// Another host holds it (`None`: a key that names no host).
    HeldBy(Option<Ipv4Addr>),
}

/// One key under `<prefix>/subnets/`: its lease, or why it is not one.
#[derive(Clone, Debug)]
pub struct ListedLease {
    pub key: String,
    pub parsed: Result<Lease, SchemaError>,
    /// etcd's create revision of the key.
    pub created: i64,
}

/// Every key under `<prefix>/subnets/` and the revision they were read at (a watch continues from
/// there).
#[derive(Clone, Debug, Default)]
pub struct LeaseList {
    pub entries: Vec<ListedLease>,
    pub revision: i64,
}

/// A connection to etcd.
pub struct EtcdClient {
    client: Client,
    settings: EtcdSettings,
}

impl EtcdClient {
    /// Connects (tries every endpoint; fails after a few seconds if none answers).
    pub async fn connect(settings: EtcdSettings) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(ca) = &settings.ca_file {
            let read = |what: &'static str, path: &Path| {
                std::fs::read(path).map_err(|error| StoreError::TlsFile { what, path: path.into(), error })
            };
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read("etcd.ca_file", ca)?));
            if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read("etcd.cert_file", cert)?,
                    read("etcd.key_file", key)?,
                ));
            }
            options = options.with_tls(tls);
        }
        let client = Client::connect(&settings.endpoints, Some(options)).await.map_err(|e| {
            StoreError::Etcd { endpoints: settings.endpoints.join(","), error: e.to_string() }
        })?;
        Ok(Self { client, settings })
    }

    /// `key` changed while this host was writing it: the caller tries again.
    fn raced(&self, key: &str) -> StoreError {
        StoreError::Etcd {
            endpoints: self.settings.endpoints.join(","),
            error: format!("{key} changed while it was being written; trying again"),
        }
    }

    fn fail(&self, e: etcd_client::Error) -> StoreError {
        StoreError::Etcd { endpoints: self.settings.endpoints.join(","), error: e.to_string() }
    }

    pub fn settings(&self) -> &EtcdSettings {
        &self.settings
    }

    /// `<prefix>/config`, parsed with flannel's defaults.
    pub async fn network_config(&mut self) -> Result<NetworkConfig, StoreError> {
        let key = format!("{}/config", self.settings.prefix.trim_end_matches('/'));
        let resp = self.client.get(key.as_str(), None).await.map_err(|e| self.fail(e))?;
        let kv = resp.kvs().first().ok_or_else(|| StoreError::NoConfig { key: key.clone() })?;
        let text = String::from_utf8_lossy(kv.value());
        NetworkConfig::parse(&key, &text).map_err(StoreError::BadConfig)
    }

    /// Every lease, as of now.
    pub async fn leases(&mut self, cfg: &NetworkConfig) -> Result<LeaseList, StoreError> {
        let dir = format!("{}/subnets/", self.settings.prefix.trim_end_matches('/'));
        let resp = self
            .client
            .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.fail(e))?;
        let mut list =
            LeaseList { revision: resp.header().map_or(0, |h| h.revision()), ..Default::default() };
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let parsed = parse_lease(&self.settings.prefix, cfg, &key, kv.value());
            list.entries.push(ListedLease { key, parsed, created: kv.create_revision() });
        }
        Ok(list)
    }

    /// Watches the leases from `revision` on.
    pub async fn watch(&mut self, revision: i64) -> Result<WatchStream, StoreError> {
        let dir = format!("{}/subnets/", self.settings.prefix);
        let options = WatchOptions::new().with_prefix().with_start_revision(revision);
        let stream = self.client.watch(dir, Some(options)).await.map_err(|e| self.fail(e))?;
        Ok(stream)
    }

    /// Leases a subnet for `me`: the one that already carries this host's public IP, or `hint` (the
    /// subnet this host had, from its subnet file) if it is still free, or the first free subnet.
    /// Every new key is created by a transaction that fails if the key exists.
    pub async fn acquire(
        &mut self,
        cfg: &NetworkConfig,
        me: &Me,
        hint: Option<Ipv4Network>,
    ) -> Result<Held, StoreError> {
        let ttl = self.settings.lease_ttl.as_secs().max(1) as i64;
        let grant = self.client.lease_grant(ttl, None).await.map_err(|e| self.fail(e))?;
        let (lease_id, ttl) = (grant.id(), grant.ttl());
        let list = self.leases(cfg).await?;
        let leases: Vec<(Lease, i64)> =
            list.entries.into_iter().filter_map(|e| e.parsed.ok().map(|l| (l, e.created))).collect();
        let lease_for = |subnet: Ipv4Network| Lease {
            subnet,
            public_ip: me.public_ip,
            backend: me.backend,
            vtep_mac: Some(me.vtep_mac),
            vni: Some(me.vni),
        };
        // Ours already (a restart): keep the subnet, attach it to the new etcd lease, unless the key
        // was created anew (by another host) since it was listed.
        if let Some((old, created)) =
            leases.iter().find(|(l, _)| l.public_ip == me.public_ip && cfg.allows(&l.subnet))
        {
            let lease = lease_for(old.subnet);
            let key = flannel::lease_key(&self.settings.prefix, &lease.subnet);
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, *created)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    lease.to_json(),
                    Some(PutOptions::new().with_lease(lease_id)),
                )]);
            if self.client.txn(txn).await.map_err(|e| self.fail(e))?.succeeded() {
                return Ok(Held { lease, lease_id, ttl, created: *created });
            }
        }
        let taken: std::collections::BTreeSet<Ipv4Network> = leases.iter().map(|(l, _)| l.subnet).collect();
        let candidates = hint.filter(|h| cfg.allows(h)).into_iter().chain(cfg.candidates());
        for subnet in candidates {
            if taken.contains(&subnet) {
                continue;
            }
            let lease = lease_for(subnet);
            let key = flannel::lease_key(&self.settings.prefix, &subnet);
            let txn =
                Txn::new().when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)]).and_then([
                    TxnOp::put(key.as_str(), lease.to_json(), Some(PutOptions::new().with_lease(lease_id))),
                ]);
            let resp = self.client.txn(txn).await.map_err(|e| self.fail(e))?;
            if resp.succeeded() {
                let created = resp.header().map_or(0, |h| h.revision());
                return Ok(Held { lease, lease_id, ttl, created });
            }
        }
        let _ = self.client.lease_revoke(lease_id).await;
        Err(StoreError::Exhausted { network: cfg.network, min: cfg.subnet_min, max: cfg.subnet_max })
    }

    /// Writes `held`'s lease value again, attached to its etcd lease, after someone overwrote it
    /// in place; only while the key is the one this host created (never over a key another host
    /// created since). False when it is not.
    pub async fn restore(&mut self, held: &Held) -> Result<bool, StoreError> {
        let key = flannel::lease_key(&self.settings.prefix, &held.lease.subnet);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, held.created)])
            .and_then([TxnOp::put(
                key.as_str(),
                held.lease.to_json(),
                Some(PutOptions::new().with_lease(held.lease_id)),
            )]);
        Ok(self.client.txn(txn).await.map_err(|e| self.fail(e))?.succeeded())
    }

    /// Takes `held`'s subnet again with a new etcd lease (after the old one expired, or the key
    /// was deleted): only if its key does not exist, still carries this host's public IP, or is
    /// still the key this host created (overwritten in place).
    /// Another host's lease is never overwritten: then it answers who holds the subnet.
    pub async fn retake(&mut self, held: &Held) -> Result<Retake, StoreError> {
        let key = flannel::lease_key(&self.settings.prefix, &held.lease.subnet);
        let ttl = self.settings.lease_ttl.as_secs().max(1) as i64;
        let grant = self.client.lease_grant(ttl, None).await.map_err(|e| self.fail(e))?;
        let (lease_id, ttl) = (grant.id(), grant.ttl());
        let put =
            || TxnOp::put(key.as_str(), held.lease.to_json(), Some(PutOptions::new().with_lease(lease_id)));
        let result = async {
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([put()])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = self.client.txn(txn).await.map_err(|e| self.fail(e))?;
            let revision = resp.header().map_or(0, |h| h.revision());
            if resp.succeeded() {
                return Ok(Retake::Taken(Held {
                    lease: held.lease.clone(),
                    lease_id,
                    ttl,
                    created: revision,
                }));
            }
            let found = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                    let text = String::from_utf8_lossy(kv.value()).into_owned();
                    let ip = Lease::parse(&key, held.lease.subnet, &text).ok().map(|l| l.public_ip);
                    (ip, kv.create_revision())
                }),
                _ => None,
            });
            match found {
                // Written with this host's address by someone else (no host takes another's
                // address), or the key this host created, overwritten in place: this host's still,
                // unless it changes meanwhile.
                Some((ip, created)) if ip == Some(held.lease.public_ip) || created == held.created => {
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, created)])
                        .and_then([put()]);
                    if self.client.txn(txn).await.map_err(|e| self.fail(e))?.succeeded() {
                        Ok(Retake::Taken(Held { lease: held.lease.clone(), lease_id, ttl, created }))
                    } else {
                        Err(self.raced(&key))
                    }
                }
                Some((ip, _)) => Ok(Retake::HeldBy(ip)),
                // The get runs in the transaction that found the key: not reached.
                None => Err(self.raced(&key)),
            }
        }
        .await;
        if !matches!(result, Ok(Retake::Taken(_))) {
            let _ = self.client.lease_revoke(lease_id).await;
        }
        result
    }

    /// Renews the etcd lease; returns the seconds it now has left (0: it expired or was revoked).
    pub async fn renew(&mut self, lease_id: i64) -> Result<i64, StoreError> {
        let gone = |e: &etcd_client::Error| e.to_string().contains("lease not found");
        let (mut keeper, mut stream) = match self.client.lease_keep_alive(lease_id).await {
            Ok(k) => k,
            Err(e) if gone(&e) => return Ok(0),
            Err(e) => return Err(self.fail(e)),
        };
        keeper.keep_alive().await.map_err(|e| self.fail(e))?;
        match stream.message().await {
            Ok(resp) => Ok(resp.map_or(0, |r| r.ttl())),
            Err(e) if gone(&e) => Ok(0),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Gives the subnet up (its key goes with the etcd lease).
    pub async fn release(&mut self, lease_id: i64) -> Result<(), StoreError> {
        self.client.lease_revoke(lease_id).await.map_err(|e| self.fail(e))?;
        Ok(())
    }
}

/// A lease found at `key`: its key must name a subnet of the network, and its value must parse.
pub fn parse_lease(prefix: &str, cfg: &NetworkConfig, key: &str, value: &[u8]) -> Result<Lease, SchemaError> {
    let subnet = flannel::parse_lease_key(prefix, key)?;
    if !cidr::contains(&cfg.network, &subnet) {
        return Err(SchemaError {
            key: key.into(),
            message: format!("is outside the network {}", cfg.network),
        });
    }
    Lease::parse(key, subnet, &String::from_utf8_lossy(value))
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The longest wait between two listings while etcd is out of reach: a listing that fails costs
/// etcd nothing, and every host should be back in step within seconds of etcd returning.
const MAX_RELIST_BACKOFF: Duration = Duration::from_secs(2);

/// The next delay of a retry loop: doubling from half a second up to 30 s.
fn backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(Duration::from_millis(500), MAX_BACKOFF)
}

/// Logs `error` unless it is the same as the last one (a retry loop's `last`).
fn warn_once(last: &mut String, what: &str, error: &StoreError) {
    let message = error.to_string();
    if *last != message {
        tracing::warn!(error = %message, "{what}");
        *last = message;
    }
}

/// The subnet this host had, from its subnet file (`XNET_SUBNET=10.244.1.1/24`), if any.
pub fn remembered_subnet(file: &Path) -> Option<Ipv4Network> {
    let text = std::fs::read_to_string(file).ok()?;
    let value = text.lines().find_map(|l| l.strip_prefix("XNET_SUBNET="))?;
    let (ip, len) = value.split_once('/')?;
    let (ip, len): (Ipv4Addr, u8) = (ip.parse().ok()?, len.parse().ok()?);
    cidr::network_of(ip, len)
}

/// The etcd store's task: connects, leases, reports the overlay and the peers, then follows
/// them until `events` is closed.
pub async fn run(
    settings: EtcdSettings,
    me: Identity,
    hint: Option<Ipv4Network>,
    events: mpsc::Sender<StoreEvent>,
) {
    let mut task = match Task::start(settings, me, hint).await {
        Some(task) => task,
        None => return,
    };
    let ready = StoreEvent::Ready {
        overlay: Overlay {
            network: task.net.network,
            subnet: task.held.lease.subnet,
            tunnel: task.net.tunnel(),
        },
        peers: task.table.peers().cloned().collect(),
        invalid: task.table.invalid(),
        lease_expiry: Some(task.lease_expiry()),
    };
    if events.send(ready).await.is_err() {
        return;
    }
    task.follow(&events).await;
}

/// What the store's task holds once it has its lease.
struct Task {
    client: EtcdClient,
    net: NetworkConfig,
    held: Held,
    /// Unix seconds when the etcd lease was granted or last renewed (as sent: etcd counts the TTL
    /// from a moment no earlier, so this host never believes in its lease longer than etcd does).
    renewed_at: u64,
    /// Set when this host's subnet went to another host (`None`: to a key that names no host).
    lost: Option<Option<Ipv4Addr>>,
    /// Lease events to send before the next event.
    lease_events: Vec<StoreEvent>,
    table: LeaseTable,
    revision: i64,
}

impl Task {
    /// Connects, reads the network config, leases a subnet and lists the leases, retrying each
    /// step with backoff until it works.
    async fn start(settings: EtcdSettings, me: Identity, hint: Option<Ipv4Network>) -> Option<Self> {
        let mut delay = Duration::from_millis(250);
        let mut last = String::new();
        let (mut client, net) = loop {
            let attempt = async {
                let mut client = EtcdClient::connect(settings.clone()).await?;
                let net = client.network_config().await?;
                Ok::<_, StoreError>((client, net))
            };
            match attempt.await {
                Ok(ok) => break ok,
                Err(e) => warn_once(&mut last, "waiting for etcd; retrying", &e),
            }
            delay = backoff(delay);
            tokio::time::sleep(delay).await;
        };
        let me = Me { public_ip: me.public_ip, backend: net.backend, vtep_mac: me.vtep_mac, vni: net.vni };
        // Leasing and the first listing are retried like the config: etcd may blink, and a full
        // range may free up when stale leases expire.
        let mut delay = Duration::from_millis(250);
        let (held, list, renewed_at) = loop {
            let granted_at = unix_now();
            let attempt = async {
                let held = client.acquire(&net, &me, hint).await?;
                let list = client.leases(&net).await?;
                Ok::<_, StoreError>((held, list, granted_at))
            };
            match attempt.await {
                Ok(ok) => break ok,
                Err(e) => warn_once(&mut last, "cannot lease a subnet yet; retrying", &e),
            }
            delay = backoff(delay);
            tokio::time::sleep(delay).await;
        };
        tracing::info!(subnet = %held.lease.subnet, lease_id = held.lease_id, ttl = held.ttl, "leased");
        let table = table_of(&held, &list);
        Some(Self {
            client,
            net,
            held,
            renewed_at,
            lost: None,
            lease_events: Vec::new(),
            table,
            revision: list.revision,
        })
    }

    fn lease_expiry(&self) -> u64 {
        self.renewed_at + self.held.ttl.max(0) as u64
    }

    /// Follows the leases and keeps this host's own alive, until `events` is closed.
    async fn follow(&mut self, events: &mpsc::Sender<StoreEvent>) {
        let renew_every =
            Duration::from_secs((self.held.ttl.max(3) / 3) as u64).min(Duration::from_secs(3600));
        let mut renew_tick = tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
        let mut stream = self.client.watch(self.revision + 1).await.ok();
        let mut retry_delay = Duration::from_millis(250);
        // Without a watch: list again and watch again (at once for a first watch that failed).
        let mut retry_at = stream.is_none().then(tokio::time::Instant::now);
        let mut up = true;
        loop {
            let next_message = async {
                match stream.as_mut() {
                    Some(s) => s.message().await,
                    None => std::future::pending().await,
                }
            };
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                _ = events.closed() => return,
                _ = renew_tick.tick() => self.renew().await,
                message = next_message => match message {
                    Ok(Some(resp)) if !resp.canceled() && resp.compact_revision() == 0 => {
                        let mut delta = PeerDelta::default();
                        for event in resp.events() {
                            let Some(kv) = event.kv() else { continue };
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            let change = match event.event_type() {
                                EventType::Put => {
                                    let parsed = parse_lease(&self.client.settings.prefix, &self.net, &key, kv.value());
                                    self.table.put(&key, parsed, kv.create_revision())
                                }
                                EventType::Delete => self.table.delete(&key),
                            };
                            self.revision = self.revision.max(kv.mod_revision());
                            delta.removed.retain(|s| !change.set.iter().any(|p| p.subnet == *s));
                            delta.set.retain(|p| !change.removed.contains(&p.subnet) && !change.set.iter().any(|q| q.subnet == p.subnet));
                            delta.set.extend(change.set);
                            delta.removed.extend(change.removed);
                        }
                        if let Err(e) = self.check_my_lease().await {
                            tracing::warn!(error = %e, "cannot restore this host's lease; retrying");
                        }
                        Some(StoreEvent::Changed { delta, invalid: self.table.invalid() })
                    }
                    other => {
                        // Compaction, cancel, end of stream or an error: list again and watch again.
                        tracing::warn!(reason = ?other.err(), "lost the etcd watch; listing again");
                        stream = None;
                        retry_at = Some(tokio::time::Instant::now() + retry_delay);
                        Some(StoreEvent::Health { up: false, lease_expiry: None })
                    }
                },
                _ = retry => {
                    retry_at = None;
                    match self.relist().await {
                        Ok(peers) => {
                            tracing::info!("etcd is back; reconciled");
                            retry_delay = Duration::from_millis(250);
                            // The watch may take a moment longer on a connection that just came
                            // back: retry it soon, without backing off.
                            match self.client.watch(self.revision + 1).await {
                                Ok(s) => stream = Some(s),
                                Err(e) => {
                                    tracing::warn!(error = %e, "listed, but the watch is not back yet; retrying");
                                    retry_at = Some(tokio::time::Instant::now() + retry_delay);
                                }
                            }
                            Some(StoreEvent::Resync { peers, invalid: self.table.invalid() })
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "etcd still unreachable");
                            retry_delay = backoff(retry_delay).min(MAX_RELIST_BACKOFF);
                            retry_at = Some(tokio::time::Instant::now() + retry_delay);
                            Some(StoreEvent::Health { up: false, lease_expiry: None })
                        }
                    }
                }
            };
            for lease_event in std::mem::take(&mut self.lease_events) {
                if events.send(lease_event).await.is_err() {
                    return;
                }
            }
            let Some(event) = event else { continue };
            let now_up = !matches!(event, StoreEvent::Health { up: false, .. });
            if now_up && !up {
                let expiry = self.lost.is_none().then(|| self.lease_expiry());
                let health = StoreEvent::Health { up: true, lease_expiry: expiry };
                if events.send(health).await.is_err() {
                    return;
                }
            }
            up = now_up;
            if events.send(event).await.is_err() {
                return;
            }
        }
    }

    /// Lists every lease again (after a lost watch) and rebuilds the table from it.
    async fn relist(&mut self) -> Result<Vec<crate::config::PeerConfig>, StoreError> {
        let list = self.client.leases(&self.net).await?;
        self.table = table_of(&self.held, &list);
        self.revision = list.revision;
        self.check_my_lease().await?;
        Ok(self.table.peers().cloned().collect())
    }

    /// Our subnet is ours while our etcd lease lives. Checks what etcd holds at its key: overwritten
    /// in place (the key this host created), it is written back; deleted, it is taken again (a new
    /// etcd lease if the old one is gone); created anew by another host (after our lease expired),
    /// it is lost: never overwritten. While lost, a subnet that becomes free is taken back.
    async fn check_my_lease(&mut self) -> Result<(), StoreError> {
        let mine = &self.held;
        let found = self.table.at_my_subnet().map(|(l, created)| (l.public_ip, created));
        match (self.lost, found) {
            (None, Some((ip, _))) if ip == mine.lease.public_ip => Ok(()),
            (None, Some((ip, created))) if created == mine.created => {
                tracing::error!(
                    subnet = %mine.lease.subnet,
                    found = %ip,
                    "this host's lease was deleted or overwritten in etcd; restoring it"
                );
                if self.client.restore(&self.held).await? { Ok(()) } else { self.retake().await }
            }
            (None, None) => {
                tracing::warn!(
                    subnet = %mine.lease.subnet,
                    "this host's lease is gone from etcd (it expired while etcd was out of reach, or was deleted); taking the subnet again if it is free"
                );
                self.retake().await
            }
            (None, Some((ip, _))) => {
                self.lose(Some(ip)).await;
                Ok(())
            }
            (Some(_), None) => {
                tracing::info!(subnet = %mine.lease.subnet, "this host's lost subnet is free again; taking it back");
                self.retake().await
            }
            (Some(_), Some((ip, _))) if ip == mine.lease.public_ip => self.retake().await,
            (Some(_), Some((ip, _))) => {
                self.lose(Some(ip)).await;
                Ok(())
            }
        }
    }

    /// Takes this host's subnet again with a new etcd lease if it is free; otherwise it is lost.
    async fn retake(&mut self) -> Result<(), StoreError> {
        let granted_at = unix_now();
        match self.client.retake(&self.held).await? {
            Retake::Taken(held) => {
                let old = std::mem::replace(&mut self.held, held);
                self.renewed_at = granted_at;
                if old.lease_id != 0 {
                    // Holds no key of ours any more, if it still lives.
                    let _ = self.client.release(old.lease_id).await;
                }
                let was_lost = self.lost.take().is_some();
                tracing::warn!(
                    subnet = %self.held.lease.subnet,
                    lease_id = self.held.lease_id,
                    "{}",
                    if was_lost {
                        "took this host's subnet back (it was free again); advertising it again"
                    } else {
                        "leased this host's subnet again under a new etcd lease; the datapath was not touched"
                    }
                );
                self.lease_events.push(StoreEvent::Lease(LeaseState::Held { expiry: self.lease_expiry() }));
            }
            Retake::HeldBy(holder) => self.lose(holder).await,
        }
        Ok(())
    }

    /// Records that another host (`holder`) holds this host's subnet now: never overwrite its
    /// lease, stop advertising the subnet, say so once.
    async fn lose(&mut self, holder: Option<Ipv4Addr>) {
        if self.lost == Some(holder) {
            return;
        }
        tracing::error!(
            subnet = %self.held.lease.subnet,
            holder = holder.map_or("a key that names no host".to_string(), |ip| ip.to_string()),
            "LEASE LOST: this host's subnet lease expired or was deleted, and another host holds the subnet now; not advertising it, never overwriting the other host's lease. Local containers keep forwarding among themselves, remote hosts no longer reach them. Stop the agent, remove the subnet file and restart it (and the containers) to lease another subnet"
        );
        if self.held.lease_id != 0 {
            // It holds no key any more, if it still lives.
            let _ = self.client.release(self.held.lease_id).await;
            self.held.lease_id = 0;
        }
        self.lost = Some(holder);
        self.lease_events.push(StoreEvent::Lease(LeaseState::Lost { holder }));
    }

    /// Renews this host's lease; takes the same subnet again if the lease expired and the subnet
    /// is free, and (while lost) as soon as it is free again.
    async fn renew(&mut self) -> Option<StoreEvent> {
        if self.lost.is_some() {
            return match self.retake().await {
                Ok(()) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot check whether the lost subnet is free");
                    Some(StoreEvent::Health { up: false, lease_expiry: None })
                }
            };
        }
        let sent = unix_now();
        match self.client.renew(self.held.lease_id).await {
            Ok(0) => {
                // Expired (etcd was out of reach longer than the TTL) or revoked behind our back:
                // take the same subnet again if it is free; never move the containers silently.
                tracing::warn!(subnet = %self.held.lease.subnet, "this host's lease expired or was revoked; taking the subnet again if it is free");
                self.held.lease_id = 0;
                match self.retake().await {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot lease the subnet again; retrying");
                        Some(StoreEvent::Health { up: false, lease_expiry: None })
                    }
                }
            }
            Ok(ttl) => {
                self.held.ttl = ttl;
                self.renewed_at = sent;
                // A key that could not be restored at the watch event that showed it gone is
                // tried again here (nothing is written when it is as it should be).
                if let Err(e) = self.check_my_lease().await {
                    tracing::warn!(error = %e, "cannot restore this host's lease; retrying");
                }
                Some(StoreEvent::Health { up: true, lease_expiry: Some(self.lease_expiry()) })
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the lease; the datapath keeps forwarding, retrying");
                Some(StoreEvent::Health { up: false, lease_expiry: None })
            }
        }
    }
}

/// The lease table of `list`, for the host that holds `held`.
fn table_of(held: &Held, list: &LeaseList) -> LeaseTable {
    let mut table = LeaseTable::new(held.lease.subnet, held.lease.public_ip);
    for entry in &list.entries {
        table.put(&entry.key, entry.parsed.clone(), entry.created);
    }
    table
}
