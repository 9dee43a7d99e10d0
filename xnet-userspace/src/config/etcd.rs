//! `[etcd]` and the etcd flags: where etcd is, how to authenticate, and the lease's TTL.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{Checker, ConfigError, DEFAULT_ETCD_PREFIX, Overrides};

/// Where etcd is and how to talk to it.
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
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl EtcdSettings {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: DEFAULT_ETCD_PREFIX.into(),
            lease_ttl: Duration::from_secs(24 * 3600),
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcd {
    endpoints: Vec<String>,
    prefix: Option<String>,
    /// Seconds.
    lease_ttl: Option<i64>,
    username: Option<String>,
    password: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// `[etcd]` with the command line's endpoints and prefix over it.
pub(super) fn etcd_settings(
    c: &Checker<'_>,
    raw: Option<&RawEtcd>,
    overrides: &Overrides,
) -> Result<EtcdSettings, ConfigError> {
    let tls = raw.is_some_and(|e| e.ca_file.is_some());
    let scheme_ok = |u: &String| u.starts_with("http://") || (tls && u.starts_with("https://"));
    let mut settings = EtcdSettings::new(Vec::new());
    if let Some(e) = raw {
        if (e.endpoints.is_empty() && overrides.etcd_endpoints.is_empty())
            || !e.endpoints.iter().all(scheme_ok)
        {
            return Err(c.invalid(
                "etcd.endpoints",
                "must list http:// URLs such as [\"http://127.0.0.1:2379\"], or https:// ones with `ca_file` set"
                    .into(),
            ));
        }
        for (key, path) in
            [("etcd.ca_file", &e.ca_file), ("etcd.cert_file", &e.cert_file), ("etcd.key_file", &e.key_file)]
        {
            if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(c.invalid(key, "must be an absolute path to a PEM file".into()));
            }
        }
        if e.cert_file.is_some() != e.key_file.is_some() {
            return Err(
                c.invalid("etcd.cert_file", "and `etcd.key_file` go together; set both or neither".into())
            );
        }
        settings.endpoints = e.endpoints.clone();
        if let Some(prefix) = &e.prefix {
            if !prefix.starts_with('/') {
                return Err(c.invalid("etcd.prefix", format!("= \"{prefix}\" must start with /")));
            }
            settings.prefix = prefix.trim_end_matches('/').to_string();
        }
        if let Some(ttl) = e.lease_ttl {
            if ttl < 1 {
                return Err(
                    c.invalid("etcd.lease_ttl", format!("= {ttl} must be a positive number of seconds"))
                );
            }
            settings.lease_ttl = Duration::from_secs(ttl as u64);
        }
        settings.username = e.username.clone();
        settings.password = e.password.clone();
        settings.ca_file = e.ca_file.clone();
        settings.cert_file = e.cert_file.clone();
        settings.key_file = e.key_file.clone();
    }
    if !overrides.etcd_endpoints.is_empty() {
        if let Some(bad) = overrides.etcd_endpoints.iter().find(|u| !scheme_ok(u)) {
            return Err(ConfigError::Flag {
                flag: "--etcd-endpoints",
                message: format!(
                    "{bad:?} is not an http:// URL such as http://127.0.0.1:2379 (https:// needs `ca_file` in [etcd])"
                ),
            });
        }
        settings.endpoints = overrides.etcd_endpoints.clone();
    }
    if let Some(prefix) = &overrides.etcd_prefix {
        if !prefix.starts_with('/') {
            return Err(ConfigError::Flag {
                flag: "--etcd-prefix",
                message: format!("\"{prefix}\" must start with /"),
            });
        }
        settings.prefix = prefix.trim_end_matches('/').to_string();
    }
    Ok(settings)
}
