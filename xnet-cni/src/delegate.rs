//! The delegate: the standard `bridge` plugin (with `host-local` IPAM) does the real work, with a
//! config built from the network config and the agent's subnet file, as flannel's CNI plugin
//! does. The config of each container is saved at ADD and reused at DEL and CHECK, so that a pod
//! is torn down as it was set up even when the subnet file changed or is gone.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Map, Value, json};

use crate::{
    config::{self, DEFAULT_BRIDGE, NetConf},
    error::{CniError, DECODE_FAILURE, DELEGATE_FAILED, IO_FAILURE},
    subnet::SubnetEnv,
};

/// The delegate's network config for `conf` on a host whose subnet file says `env`.
pub fn build(conf: &NetConf, env: &SubnetEnv) -> Map<String, Value> {
    let mut d = conf.delegate.clone().unwrap_or_default();
    d.insert("cniVersion".into(), conf.cni_version.clone().into());
    d.insert("name".into(), conf.name.clone().into());
    let delegate_type = d.entry("type").or_insert_with(|| "bridge".into()).as_str() == Some("bridge");
    if delegate_type {
        d.entry("bridge").or_insert_with(|| conf.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE).into());
        d.entry("isGateway").or_insert(true.into());
        d.entry("hairpinMode").or_insert(true.into());
    }
    // As flannel: when the agent does not masquerade traffic leaving the overlay, the bridge does.
    d.entry("ipMasq").or_insert((!env.ipmasq).into());
    d.entry("mtu").or_insert(env.mtu.into());

    let mut ipam = conf.ipam.clone().unwrap_or_default();
    ipam.entry("type").or_insert_with(|| "host-local".into());
    ipam.insert("ranges".into(), json!([[{ "subnet": env.subnet.to_string() }]]));
    let mut routes = match ipam.remove("routes") {
        Some(Value::Array(r)) => r,
        _ => Vec::new(),
    };
    // Through the bridge's address (host-local's default gateway, the subnet's first address),
    // written out: the route the delegate installs is the same, and the CHECK of bridge plugins
    // before 1.3.0 looks for a route without a gateway when the result names none, and fails.
    let overlay = json!({ "dst": env.network.to_string(), "gw": env.gateway().to_string() });
    if !routes.iter().any(|r| r["dst"] == overlay["dst"]) {
        routes.push(overlay);
    }
    ipam.insert("routes".into(), routes.into());
    d.insert("ipam".into(), ipam.into());

    if let Some(rc) = &conf.runtime_config {
        d.insert("runtimeConfig".into(), rc.clone());
    }
    d
}

/// Where the delegate config of `container_id` is saved.
pub fn saved_path(data_dir: &Path, container_id: &str) -> PathBuf {
    data_dir.join(container_id)
}

/// Saves `delegate` for `container_id` (atomically: a DEL never reads half a file).
pub fn save(data_dir: &Path, container_id: &str, delegate: &Map<String, Value>) -> Result<(), CniError> {
    let io_err = |what: &str, path: &Path, e: io::Error| {
        CniError::new(IO_FAILURE, format!("cannot {what} {}: {e}", path.display()))
    };
    create_private_dir(data_dir).map_err(|e| io_err("create data dir", data_dir, e))?;
    let path = saved_path(data_dir, container_id);
    let tmp = data_dir.join(format!(".{container_id}.tmp"));
    let bytes = serde_json::to_vec(delegate).expect("a JSON map serializes");
    write_private(&tmp, &bytes).map_err(|e| io_err("write", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io_err("write", &path, e))
}

/// The saved delegate config of `container_id`: `Ok(None)` when there is none.
pub fn load(data_dir: &Path, container_id: &str) -> Result<Option<Map<String, Value>>, CniError> {
    let path = saved_path(data_dir, container_id);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CniError::new(IO_FAILURE, format!("cannot read {}: {e}", path.display()))),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) if m.get("type").and_then(Value::as_str).is_some_and(config::is_plugin_name) => {
            Ok(Some(m))
        }
        _ => Err(CniError::new(
            DECODE_FAILURE,
            format!("saved delegate config {} is not a plugin config", path.display()),
        )),
    }
}

/// Forgets the saved config of `container_id` (gone already is fine).
pub fn remove(data_dir: &Path, container_id: &str) -> Result<(), CniError> {
    let path = saved_path(data_dir, container_id);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::new(IO_FAILURE, format!("cannot remove {}: {e}", path.display()))),
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The plugin `name` in the first directory of `cni_path` that has it.
pub fn find_plugin(name: &str, cni_path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if !config::is_plugin_name(name) {
        return Err(CniError::new(DELEGATE_FAILED, format!("{name:?} is not a plugin name")));
    }
    cni_path.iter().map(|dir| dir.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        let dirs: Vec<String> = cni_path.iter().map(|d| d.display().to_string()).collect();
        CniError::new(
            DELEGATE_FAILED,
            format!("cannot find the {name} plugin in CNI_PATH ({})", dirs.join(":")),
        )
        .with_details(
            "xnet-cni delegates to the standard CNI plugins (bridge, host-local): install them (e.g. \
             Debian's containernetworking-plugins) into a directory of CNI_PATH",
        )
    })
}

/// Runs the delegate plugin `plugin` for `command` with `conf` on stdin, in this process's
/// environment (the runtime's CNI_* variables) with CNI_COMMAND set. Its stdout on success; its
/// CNI error (its message prefixed with the plugin's name) on failure. Its stderr is passed on.
pub fn exec(plugin: &Path, command: &str, conf: &Map<String, Value>) -> Result<Vec<u8>, CniError> {
    let name =
        plugin.file_name().map_or_else(|| plugin.display().to_string(), |n| n.to_string_lossy().into());
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(DELEGATE_FAILED, format!("cannot run {}: {e}", plugin.display())))?;
    let input = serde_json::to_vec(conf).expect("a JSON map serializes");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A config is far smaller than a pipe's buffer; a plugin that exits without reading it is
    // judged by its exit status and output.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output();
    let _ = writer.join();
    let out =
        out.map_err(|e| CniError::new(DELEGATE_FAILED, format!("cannot run {}: {e}", plugin.display())))?;
    let _ = io::stderr().write_all(&out.stderr);
    if out.status.success() {
        return Ok(out.stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(v) if v.get("code").and_then(Value::as_u64).is_some() => {
            let code = v["code"].as_u64().unwrap_or(u64::from(DELEGATE_FAILED));
            let msg = v.get("msg").and_then(Value::as_str).unwrap_or("(no message)");
            let details = v.get("details").and_then(Value::as_str).unwrap_or_default();
            Err(CniError::new(u32::try_from(code).unwrap_or(DELEGATE_FAILED), format!("{name}: {msg}"))
                .with_details(details))
        }
        _ => Err(CniError::new(
            DELEGATE_FAILED,
            format!("{name} {command} failed ({}) without a CNI error", out.status),
        )
        .with_details(format!("stdout: {}; stderr: {stderr}", String::from_utf8_lossy(&out.stdout).trim()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config, error::*, subnet};

    fn env() -> SubnetEnv {
        subnet::parse(
            "XNET_NETWORK=10.244.0.0/16\nXNET_SUBNET=10.244.1.1/24\nXNET_MTU=1450\nXNET_IPMASQ=false\n",
            Path::new("subnet.env"),
        )
        .unwrap()
    }

    fn conf(json: &str) -> NetConf {
        config::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn builds_the_bridge_config_flannel_builds() {
        let d = build(&conf(r#"{"cniVersion":"1.0.0","name":"xnet","type":"xnet-cni"}"#), &env());
        assert_eq!(
            Value::Object(d),
            json!({
                "cniVersion": "1.0.0",
                "name": "xnet",
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "hairpinMode": true,
                "ipMasq": true,
                "mtu": 1450,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": "10.244.1.0/24" }]],
                    "routes": [{ "dst": "10.244.0.0/16", "gw": "10.244.1.1" }],
                },
            })
        );
    }

    #[test]
    fn ipmasq_follows_the_agent() {
        let mut e = env();
        e.ipmasq = true;
        let d = build(&conf(r#"{"cniVersion":"1.0.0","name":"xnet"}"#), &e);
        assert_eq!(d["ipMasq"], false);
    }

    #[test]
    fn overrides_and_ipam_settings_are_kept() {
        let d = build(
            &conf(
                r#"{"cniVersion":"0.4.0","name":"pods","bridge":"xbr0",
                   "delegate":{"hairpinMode":false,"mtu":1400,"ipMasq":false},
                   "ipam":{"dataDir":"/tmp/ipam","routes":[{"dst":"0.0.0.0/0"}]},
                   "runtimeConfig":{"portMappings":[]}}"#,
            ),
            &env(),
        );
        assert_eq!(d["cniVersion"], "0.4.0");
        assert_eq!(d["name"], "pods");
        assert_eq!(d["bridge"], "xbr0");
        assert_eq!(d["hairpinMode"], false);
        assert_eq!(d["mtu"], 1400);
        assert_eq!(d["ipMasq"], false);
        assert_eq!(d["isGateway"], true);
        assert_eq!(
            d["ipam"],
            json!({
                "type": "host-local",
                "dataDir": "/tmp/ipam",
                "ranges": [[{ "subnet": "10.244.1.0/24" }]],
                "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "10.244.0.0/16", "gw": "10.244.1.1" }],
            })
        );
        assert_eq!(d["runtimeConfig"], json!({ "portMappings": [] }));
        // A delegate's bridge name wins over the top-level one.
        let d = build(
            &conf(r#"{"cniVersion":"1.0.0","name":"x","bridge":"a","delegate":{"bridge":"b"}}"#),
            &env(),
        );
        assert_eq!(d["bridge"], "b");
    }

    #[test]
    fn another_delegate_gets_no_bridge_keys() {
        let d = build(&conf(r#"{"cniVersion":"1.0.0","name":"x","delegate":{"type":"ipvlan"}}"#), &env());
        assert_eq!(d["type"], "ipvlan");
        assert!(!d.contains_key("bridge") && !d.contains_key("isGateway") && !d.contains_key("hairpinMode"));
        assert_eq!(d["mtu"], 1450);
    }

    #[test]
    fn saves_loads_and_removes() {
        let dir = std::env::temp_dir().join(format!("xnet-cni-unit-{}", std::process::id()));
        let data = dir.join("data");
        let d = build(&conf(r#"{"cniVersion":"1.0.0","name":"xnet"}"#), &env());
        assert_eq!(load(&data, "c1").unwrap(), None);
        save(&data, "c1", &d).unwrap();
        assert_eq!(load(&data, "c1").unwrap(), Some(d));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(fs::metadata(saved_path(&data, "c1")).unwrap().permissions().mode() & 0o777, 0o600);
        remove(&data, "c1").unwrap();
        remove(&data, "c1").unwrap();
        assert_eq!(load(&data, "c1").unwrap(), None);
        fs::write(saved_path(&data, "c2"), "junk").unwrap();
        assert_eq!(load(&data, "c2").unwrap_err().code, DECODE_FAILURE);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn finds_plugins_in_cni_path_only() {
        let dir = std::env::temp_dir().join(format!("xnet-cni-path-{}", std::process::id()));
        fs::create_dir_all(dir.join("b")).unwrap();
        fs::write(dir.join("b/bridge"), "").unwrap();
        let path = vec![dir.join("a"), dir.join("b")];
        assert_eq!(find_plugin("bridge", &path).unwrap(), dir.join("b/bridge"));
        let e = find_plugin("host-local", &path).unwrap_err();
        assert_eq!(e.code, DELEGATE_FAILED);
        assert!(e.msg.starts_with("cannot find the host-local plugin in CNI_PATH ("), "{}", e.msg);
        assert!(find_plugin("../b/bridge", &path).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn passes_on_the_delegates_cni_error() {
        let dir = std::env::temp_dir().join(format!("xnet-cni-exec-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let script = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt as _;
            let p = dir.join(name);
            fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let d = Map::new();
        let ok = script("ok", r#"cat >/dev/null; echo "{\"cmd\":\"$CNI_COMMAND\"}""#);
        assert_eq!(exec(&ok, "ADD", &d).unwrap(), b"{\"cmd\":\"ADD\"}\n");
        let failing = script(
            "bridge",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":7,"msg":"bad bridge","details":"d"}'; exit 1"#,
        );
        let e = exec(&failing, "ADD", &d).unwrap_err();
        assert_eq!(e, CniError::new(7, "bridge: bad bridge").with_details("d"));
        let crashing = script("crash", "echo oops >&2; exit 2");
        let e = exec(&crashing, "DEL", &d).unwrap_err();
        assert_eq!(e.code, DELEGATE_FAILED);
        assert!(e.msg.starts_with("crash DEL failed"), "{}", e.msg);
        assert!(e.details.contains("oops"), "{}", e.details);
        let _ = fs::remove_dir_all(&dir);
    }
}
