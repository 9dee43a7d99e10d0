//! The etcd store, in flannel's schema (see [`crate::flannel`]): read the network config, lease a
//! subnet with a transaction that only creates a key that does not exist (two hosts racing never
//! get the same subnet), keep the lease alive, and list the other hosts' leases.

use std::{net::Ipv4Addr, time::Duration};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};

use crate::{
    config::BackendType,
    flannel::{self, Lease, NetworkConfig, SchemaError},
    subnet::{Ipv4Net, Mac},
};

/// Where the store is and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// TTL of this host's subnet lease (flannel: 24 h); renewed well before it runs out.
    pub lease_ttl: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM files for https:// endpoints: the CA that signed etcd's certificate, and this host's
    /// client certificate and key (when etcd asks for one).
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

impl EtcdSettings {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: flannel::DEFAULT_PREFIX.into(),
            lease_ttl: Duration::from_secs(24 * 3600),
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

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
    Exhausted { network: Ipv4Net, min: Ipv4Addr, max: Ipv4Addr },
}

/// This host, as its lease describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Me {
    pub public_ip: Ipv4Addr,
    pub backend: BackendType,
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
}

/// Every lease under `<prefix>/subnets/`, the malformed ones set aside with their reason, and the
/// revision they were read at (a watch continues from there).
#[derive(Clone, Debug, Default)]
pub struct LeaseList {
    pub leases: Vec<Lease>,
    pub invalid: Vec<SchemaError>,
    pub revision: i64,
}

pub struct EtcdStore {
    client: Client,
    settings: EtcdSettings,
}

impl EtcdStore {
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
            let read = |what: &'static str, path: &std::path::Path| {
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
            match parse_lease(&self.settings.prefix, cfg, &key, kv.value()) {
                Ok(lease) => list.leases.push(lease),
                Err(e) => list.invalid.push(e),
            }
        }
        Ok(list)
    }

    /// Leases a subnet for `me`: the one that already carries this host's public IP, or `hint` (the
    /// subnet this host had, from its subnet file) if it is still free, or the first free subnet.
    /// Every new key is created by a transaction that fails if the key exists.
    pub async fn acquire(
        &mut self,
        cfg: &NetworkConfig,
        me: &Me,
        hint: Option<Ipv4Net>,
    ) -> Result<Held, StoreError> {
        let ttl = self.settings.lease_ttl.as_secs().max(1) as i64;
        let grant = self.client.lease_grant(ttl, None).await.map_err(|e| self.fail(e))?;
        let (lease_id, ttl) = (grant.id(), grant.ttl());
        let list = self.leases(cfg).await?;
        let lease_for = |subnet: Ipv4Net| Lease {
            subnet,
            public_ip: me.public_ip,
            backend: me.backend,
            vtep_mac: Some(me.vtep_mac),
            vni: Some(me.vni),
        };
        // Ours already (a restart): keep the subnet, attach it to the new etcd lease.
        if let Some(old) = list.leases.iter().find(|l| l.public_ip == me.public_ip && cfg.allows(&l.subnet)) {
            let lease = lease_for(old.subnet);
            let key = flannel::lease_key(&self.settings.prefix, &lease.subnet);
            self.client
                .put(key, lease.to_json(), Some(PutOptions::new().with_lease(lease_id)))
                .await
                .map_err(|e| self.fail(e))?;
            return Ok(Held { lease, lease_id, ttl });
        }
        let taken: std::collections::BTreeSet<Ipv4Net> = list.leases.iter().map(|l| l.subnet).collect();
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
            if self.client.txn(txn).await.map_err(|e| self.fail(e))?.succeeded() {
                return Ok(Held { lease, lease_id, ttl });
            }
        }
        let _ = self.client.lease_revoke(lease_id).await;
        Err(StoreError::Exhausted { network: cfg.network, min: cfg.subnet_min, max: cfg.subnet_max })
    }

    /// Writes `held`'s lease value again, attached to its etcd lease (after someone deleted or
    /// overwrote it).
    pub async fn restore(&mut self, held: &Held) -> Result<(), StoreError> {
        let key = flannel::lease_key(&self.settings.prefix, &held.lease.subnet);
        self.client
            .put(key, held.lease.to_json(), Some(PutOptions::new().with_lease(held.lease_id)))
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
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

    /// The underlying client, for watches.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// A lease found at `key`: its key must name a subnet of the network, and its value must parse.
pub fn parse_lease(prefix: &str, cfg: &NetworkConfig, key: &str, value: &[u8]) -> Result<Lease, SchemaError> {
    let subnet = flannel::parse_lease_key(prefix, key)?;
    if !cfg.network.contains(&subnet) {
        return Err(SchemaError {
            key: key.into(),
            message: format!("is outside the network {}", cfg.network),
        });
    }
    Lease::parse(key, subnet, &String::from_utf8_lossy(value))
}
