//! What the runtime hands the plugin: the `CNI_*` environment variables and the network config
//! on stdin.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{
    CniError, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG, INVALID_ENV, UNSUPPORTED_FIELD,
};

/// Where the agent writes its subnet file by default (`xnet run`'s default `subnet_file`).
pub const DEFAULT_SUBNET_FILE: &str = "/run/xnet/subnet.env";
/// Where the delegate configs of the attached containers are kept, one file per container ID.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/xnet";
/// The bridge the delegate creates (the agent's `container_ifaces`).
pub const DEFAULT_BRIDGE: &str = "cni0";
/// The CNI versions this plugin takes: the ones the standard `bridge` plugin takes, up to 1.0.0
/// (GC and STATUS of 1.1.0 are not implemented).
pub const SUPPORTED_VERSIONS: [&str; 6] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// What VERSION reports as the plugin's own version, and errors use when the request had none.
pub const LATEST_VERSION: &str = "1.0.0";

/// The CNI command, from `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

/// The environment of an ADD, DEL or CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub container_id: String,
    /// Absent only at DEL (the spec allows a DEL after the namespace is gone).
    pub netns: Option<String>,
    pub ifname: String,
    /// `CNI_PATH`: where to look for the delegate plugin.
    pub path: Vec<PathBuf>,
}

/// Reads `CNI_COMMAND` through `var` (the process environment, or a map in tests).
pub fn command(var: &dyn Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    match var("CNI_COMMAND").as_deref() {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("VERSION") => Ok(Command::Version),
        Some(c @ ("GC" | "STATUS")) => Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!("CNI_COMMAND {c} is a CNI 1.1.0 command; xnet-cni implements CNI up to 1.0.0"),
        )),
        Some(other) => Err(CniError::new(
            INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}: expected ADD, DEL, CHECK or VERSION"),
        )),
        None => Err(CniError::new(
            INVALID_ENV,
            "CNI_COMMAND is not set: xnet-cni is a CNI plugin, run by a container runtime with the \
             CNI_* variables set and the network config on stdin",
        )),
    }
}

/// Reads the variables an ADD, DEL or CHECK needs.
pub fn env(command: Command, var: &dyn Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let required = |name: &str| {
        var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            CniError::new(INVALID_ENV, format!("{name} is not set (required for {})", command.as_str()))
        })
    };
    let container_id = required("CNI_CONTAINERID")?;
    // It names a file under dataDir: nothing that could climb out of it.
    let id_ok = container_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && container_id.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !id_ok {
        return Err(CniError::new(
            INVALID_ENV,
            format!(
                "CNI_CONTAINERID {container_id:?} is invalid: letters, digits, '-', '_' and '.' only, \
                 starting with a letter or digit"
            ),
        ));
    }
    let netns = var("CNI_NETNS").filter(|v| !v.is_empty());
    let netns = match command {
        Command::Del => netns,
        _ => Some(netns.ok_or_else(|| {
            CniError::new(INVALID_ENV, format!("CNI_NETNS is not set (required for {})", command.as_str()))
        })?),
    };
    let ifname = required("CNI_IFNAME")?;
    let path: Vec<PathBuf> =
        required("CNI_PATH")?.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect();
    Ok(Env { container_id, netns, ifname, path })
}

/// The network config (a plugin's entry of a conflist, with `name` and `cniVersion` filled in by
/// the runtime). Unknown keys are ignored, as the spec asks.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    /// The agent's subnet file.
    pub subnet_file: Option<PathBuf>,
    /// Where the delegate config of each container is saved at ADD for DEL and CHECK.
    pub data_dir: Option<PathBuf>,
    /// The bridge's name.
    pub bridge: Option<String>,
    /// Keys of the delegate's config to set or override (`type`, `mtu`, `ipMasq`, `hairpinMode`,
    /// ...); not `name`, `cniVersion` or `ipam`, which the plugin sets.
    pub delegate: Option<Map<String, Value>>,
    /// The delegate's IPAM section, completed by the plugin: `type` defaults to host-local, the
    /// range is this host's subnet, a route to the overlay network is added to `routes`; other
    /// keys (host-local's `dataDir`, more `routes`) are kept.
    pub ipam: Option<Map<String, Value>>,
    /// Handed to the delegate as is (capabilities the runtime filled in).
    pub runtime_config: Option<Value>,
    /// CHECK and DEL: the result of the ADD, handed to the delegate.
    pub prev_result: Option<Value>,
}

impl NetConf {
    pub fn subnet_file(&self) -> PathBuf {
        self.subnet_file.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SUBNET_FILE))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }
}

/// The cniVersion of a request, for its error message, even when the rest does not parse.
pub fn version_of(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// Parses and checks the network config.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::new(DECODE_FAILURE, "no network config on stdin"));
    }
    let conf: NetConf = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(DECODE_FAILURE, format!("network config on stdin is not valid: {e}")))?;
    if conf.cni_version.is_empty() {
        return Err(CniError::new(INVALID_CONFIG, "network config has no \"cniVersion\""));
    }
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {:?} is not supported: xnet-cni supports {}",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    // host-local keeps its reservations in <dataDir>/<name>: the name must stay a plain name.
    let name_ok = conf.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && conf.name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        return Err(CniError::new(
            INVALID_CONFIG,
            format!(
                "network name {:?} is invalid: letters, digits, '-', '_' and '.' only, starting with a \
                 letter or digit",
                conf.name
            ),
        ));
    }
    if let Some(bridge) = &conf.bridge
        && (bridge.is_empty() || bridge.len() > 15 || bridge.contains(['/', ' ']))
    {
        return Err(CniError::new(INVALID_CONFIG, format!("\"bridge\" {bridge:?} is not an interface name")));
    }
    if let Some(d) = &conf.delegate {
        for key in ["name", "cniVersion", "ipam"] {
            if d.contains_key(key) {
                return Err(CniError::new(
                    UNSUPPORTED_FIELD,
                    format!(
                        "\"delegate\" must not have {key:?}: xnet-cni sets it (put IPAM settings in the \
                         top-level \"ipam\")"
                    ),
                ));
            }
        }
        match d.get("type") {
            None => {}
            Some(Value::String(t)) if is_plugin_name(t) => {}
            Some(t) => {
                return Err(CniError::new(
                    INVALID_CONFIG,
                    format!("\"delegate\".\"type\" {t} is not a plugin name"),
                ));
            }
        }
    }
    if let Some(ipam) = &conf.ipam {
        for key in ["ranges", "subnet", "rangeStart", "rangeEnd", "gateway"] {
            if ipam.contains_key(key) {
                return Err(CniError::new(
                    UNSUPPORTED_FIELD,
                    format!(
                        "\"ipam\" must not have {key:?}: xnet-cni gives pods addresses from this host's \
                         subnet in the subnet file"
                    ),
                ));
            }
        }
        match ipam.get("type") {
            None => {}
            Some(Value::String(t)) if is_plugin_name(t) => {}
            Some(t) => {
                return Err(CniError::new(
                    INVALID_CONFIG,
                    format!("\"ipam\".\"type\" {t} is not a plugin name"),
                ));
            }
        }
        if ipam.get("routes").is_some_and(|r| !r.is_array()) {
            return Err(CniError::new(INVALID_CONFIG, "\"ipam\".\"routes\" is not a list"));
        }
    }
    Ok(conf)
}

/// A plugin name that can be looked up in CNI_PATH (no path separators).
pub fn is_plugin_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// Orders CNI versions: "0.4.0" < "1.0.0".
pub fn version_at_least(version: &str, min: &str) -> bool {
    let parts = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parts(version) >= parts(min)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const RUNTIME_ENV: [(&str, &str); 6] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "3f2a9c"),
        ("CNI_NETNS", "/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAME=web"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn reads_the_runtime_environment() {
        let var = vars(&RUNTIME_ENV);
        assert_eq!(command(&var).unwrap(), Command::Add);
        let env = env(Command::Add, &var).unwrap();
        assert_eq!(env.container_id, "3f2a9c");
        assert_eq!(env.netns.as_deref(), Some("/run/netns/pod"));
        assert_eq!(env.ifname, "eth0");
        assert_eq!(env.path, vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]);
    }

    #[test]
    fn commands_and_their_errors() {
        for (c, want) in [("DEL", Command::Del), ("CHECK", Command::Check), ("VERSION", Command::Version)] {
            assert_eq!(command(&vars(&[("CNI_COMMAND", c)])).unwrap(), want);
        }
        let e = command(&vars(&[])).unwrap_err();
        assert_eq!(e.code, INVALID_ENV);
        assert!(e.msg.starts_with("CNI_COMMAND is not set"));
        assert_eq!(command(&vars(&[("CNI_COMMAND", "GC")])).unwrap_err().code, INCOMPATIBLE_VERSION);
        assert_eq!(command(&vars(&[("CNI_COMMAND", "add")])).unwrap_err().code, INVALID_ENV);
    }

    #[test]
    fn netns_is_optional_at_del_only() {
        let without: Vec<_> = RUNTIME_ENV.iter().copied().filter(|(k, _)| *k != "CNI_NETNS").collect();
        assert_eq!(env(Command::Del, &vars(&without)).unwrap().netns, None);
        let e = env(Command::Add, &vars(&without)).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (INVALID_ENV, "CNI_NETNS is not set (required for ADD)"));
        let without: Vec<_> = RUNTIME_ENV.iter().copied().filter(|(k, _)| *k != "CNI_PATH").collect();
        assert_eq!(
            env(Command::Del, &vars(&without)).unwrap_err().msg,
            "CNI_PATH is not set (required for DEL)"
        );
    }

    #[test]
    fn container_ids_cannot_name_other_files() {
        for bad in ["../../etc/passwd", "a/b", ".hidden", "-x", "a b"] {
            let mut pairs = RUNTIME_ENV.to_vec();
            pairs[1] = ("CNI_CONTAINERID", bad);
            let e = env(Command::Add, &vars(&pairs)).unwrap_err();
            assert_eq!(e.code, INVALID_ENV, "{bad}");
        }
    }

    #[test]
    fn parses_a_minimal_config_with_defaults() {
        let conf = parse(br#"{"cniVersion":"1.0.0","name":"xnet","type":"xnet-cni"}"#).unwrap();
        assert_eq!(conf.cni_version, "1.0.0");
        assert_eq!(conf.name, "xnet");
        assert_eq!(conf.subnet_file(), PathBuf::from("/run/xnet/subnet.env"));
        assert_eq!(conf.data_dir(), PathBuf::from("/var/lib/cni/xnet"));
        assert_eq!(conf.bridge, None);
        assert!(conf.delegate.is_none() && conf.ipam.is_none() && conf.prev_result.is_none());
    }

    #[test]
    fn parses_every_key() {
        let conf = parse(
            br#"{"cniVersion":"0.4.0","name":"pods","type":"xnet-cni","subnetFile":"/tmp/s.env",
                "dataDir":"/tmp/d","bridge":"xbr0","delegate":{"hairpinMode":false},
                "ipam":{"dataDir":"/tmp/ipam"},"runtimeConfig":{"portMappings":[]},
                "prevResult":{"cniVersion":"0.4.0"},"capabilities":{"portMappings":true}}"#,
        )
        .unwrap();
        assert_eq!(conf.subnet_file(), PathBuf::from("/tmp/s.env"));
        assert_eq!(conf.data_dir(), PathBuf::from("/tmp/d"));
        assert_eq!(conf.bridge.as_deref(), Some("xbr0"));
        assert_eq!(conf.delegate.unwrap()["hairpinMode"], false);
        assert_eq!(conf.ipam.unwrap()["dataDir"], "/tmp/ipam");
        assert!(conf.runtime_config.is_some() && conf.prev_result.is_some());
    }

    #[test]
    fn rejects_bad_configs() {
        let err = |s: &str| parse(s.as_bytes()).unwrap_err();
        assert_eq!(err("").code, DECODE_FAILURE);
        assert_eq!(err("{not json").code, DECODE_FAILURE);
        assert_eq!(err(r#"{"name":"x"}"#).code, INVALID_CONFIG);
        let e = err(r#"{"cniVersion":"2.0.0","name":"x"}"#);
        assert_eq!(e.code, INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("1.0.0"), "{}", e.msg);
        assert_eq!(err(r#"{"cniVersion":"1.0.0","name":"../x"}"#).code, INVALID_CONFIG);
        assert_eq!(err(r#"{"cniVersion":"1.0.0"}"#).code, INVALID_CONFIG);
        assert_eq!(err(r#"{"cniVersion":"1.0.0","name":"x","bridge":"a/b"}"#).code, INVALID_CONFIG);
        let e = err(r#"{"cniVersion":"1.0.0","name":"x","delegate":{"ipam":{}}}"#);
        assert_eq!(e.code, UNSUPPORTED_FIELD);
        assert_eq!(err(r#"{"cniVersion":"1.0.0","name":"x","delegate":{"type":"../sh"}}"#).code, 7);
        assert_eq!(err(r#"{"cniVersion":"1.0.0","name":"x","delegate":{"type":3}}"#).code, 7);
        let e = err(r#"{"cniVersion":"1.0.0","name":"x","ipam":{"ranges":[]}}"#);
        assert_eq!(e.code, UNSUPPORTED_FIELD);
        assert!(e.msg.contains("this host's subnet"));
        assert_eq!(err(r#"{"cniVersion":"1.0.0","name":"x","ipam":{"routes":{}}}"#).code, 7);
        assert_eq!(err(r#"{"cniVersion":"1.0.0","name":"x","subnetFile":3}"#).code, DECODE_FAILURE);
    }

    #[test]
    fn versions() {
        assert_eq!(version_of(br#"{"cniVersion":"0.4.0","name":1}"#).as_deref(), Some("0.4.0"));
        assert_eq!(version_of(b"junk"), None);
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
    }
}
