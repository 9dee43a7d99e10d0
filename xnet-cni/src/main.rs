//! `xnet-cni`: the CNI plugin that attaches pods to xnet's overlay, in the model of flannel's CNI
//! plugin. It reads the subnet file the xnet agent writes (this host's subnet, the overlay network,
//! the MTU), builds a config for the standard `bridge` plugin with `host-local` IPAM over this
//! host's subnet, and delegates ADD, CHECK and DEL to it. The agent, configured with the bridge as
//! its container interface (`container_ifaces = ["cni0"]`), carries the pods' traffic between
//! hosts.
//!
//! The runtime calls it with the CNI_* environment variables and the network config on stdin, and
//! reads the result (or a CNI error) on stdout. See the README, "Run it with Kubernetes (CNI)".

mod config;
mod delegate;
mod error;
mod subnet;

use std::{
    io::{self, IsTerminal, Read, Write},
    process::ExitCode,
};

use serde_json::{Value, json};

use crate::{
    config::{Command, Env, LATEST_VERSION, NetConf, SUPPORTED_VERSIONS},
    error::{CniError, DELEGATE_FAILED, INCOMPATIBLE_VERSION, INVALID_CONFIG, IO_FAILURE, UNKNOWN_CONTAINER},
};

fn main() -> ExitCode {
    let var = |name: &str| std::env::var(name).ok();
    // The runtime always writes the config to stdin; a person trying the binary at a terminal gets
    // an error instead of a process waiting for input.
    let mut stdin = Vec::new();
    let read = if io::stdin().is_terminal() { Ok(0) } else { io::stdin().read_to_end(&mut stdin) };
    let outcome = match read {
        Ok(_) => run(&var, &stdin),
        Err(e) => Err(CniError::new(IO_FAILURE, format!("cannot read the network config from stdin: {e}"))),
    };
    let mut stdout = io::stdout().lock();
    match outcome {
        Ok(out) => {
            let _ = stdout.write_all(&out);
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            let version = config::version_of(&stdin).unwrap_or_else(|| LATEST_VERSION.to_string());
            let _ = writeln!(stdout, "{}", e.to_json(&version));
            let _ = stdout.flush();
            eprintln!("xnet-cni: {}", e.msg);
            ExitCode::FAILURE
        }
    }
}

/// One invocation: what goes to stdout on success.
fn run(var: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let command = config::command(var)?;
    if command == Command::Version {
        return Ok(version_info());
    }
    let env = config::env(command, var)?;
    let conf = config::parse(stdin)?;
    match command {
        Command::Add => add(&env, &conf),
        Command::Del => del(&env, &conf),
        Command::Check => check(&env, &conf),
        Command::Version => unreachable!("answered above"),
    }
}

fn version_info() -> Vec<u8> {
    let mut out =
        json!({ "cniVersion": LATEST_VERSION, "supportedVersions": SUPPORTED_VERSIONS }).to_string();
    out.push('\n');
    out.into_bytes()
}

/// ADD: build the delegate config from the subnet file, save it, delegate, print its result.
fn add(env: &Env, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    let subnet = subnet::load(&conf.subnet_file())?;
    let d = delegate::build(conf, &subnet);
    let plugin = delegate::find_plugin(delegate_type(&d), &env.path)?;
    // Saved before the delegate runs: if ADD fails half-way, the runtime's DEL finds it.
    delegate::save(&conf.data_dir(), &env.container_id, &d)?;
    let out = delegate::exec(&plugin, "ADD", &d)?;
    // The delegate got the request's cniVersion, so its result is in that version already.
    if serde_json::from_slice::<Value>(&out).is_err() {
        return Err(CniError::new(
            DELEGATE_FAILED,
            format!("{} ADD printed no JSON result", delegate_type(&d)),
        )
        .with_details(String::from_utf8_lossy(&out).into_owned()));
    }
    Ok(out)
}

/// DEL: delegate with the config saved at ADD (or, without one, a config built from the subnet
/// file), then forget it. Nothing to delete (no saved config, no subnet file) is a success, as
/// the spec wants DEL to be idempotent.
fn del(env: &Env, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    let data_dir = conf.data_dir();
    let saved = delegate::load(&data_dir, &env.container_id).unwrap_or_else(|e| {
        eprintln!("xnet-cni: {}; using the subnet file instead", e.msg);
        None
    });
    let mut d = match saved {
        Some(d) => d,
        None => match subnet::load(&conf.subnet_file()) {
            Ok(subnet) => delegate::build(conf, &subnet),
            Err(e) => {
                eprintln!(
                    "xnet-cni: DEL of {}: no saved config and {}; nothing to delete",
                    env.container_id, e.msg
                );
                delegate::remove(&data_dir, &env.container_id)?;
                return Ok(Vec::new());
            }
        },
    };
    with_request(&mut d, conf);
    let plugin = delegate::find_plugin(delegate_type(&d), &env.path)?;
    delegate::exec(&plugin, "DEL", &d)?;
    delegate::remove(&data_dir, &env.container_id)?;
    Ok(Vec::new())
}

/// CHECK: delegate CHECK with the saved config and the runtime's prevResult; also fails when the
/// host's subnet has changed since the pod got its address.
fn check(env: &Env, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    if !config::version_at_least(&conf.cni_version, "0.4.0") {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!("CHECK needs cniVersion 0.4.0 or later, the config has {}", conf.cni_version),
        ));
    }
    if conf.prev_result.is_none() {
        return Err(CniError::new(INVALID_CONFIG, "CHECK needs the ADD result in \"prevResult\""));
    }
    let data_dir = conf.data_dir();
    let mut d = delegate::load(&data_dir, &env.container_id)?.ok_or_else(|| {
        CniError::new(
            UNKNOWN_CONTAINER,
            format!(
                "container {} is unknown: no delegate config saved under {} (was it added by xnet-cni?)",
                env.container_id,
                data_dir.display()
            ),
        )
    })?;
    // A subnet file that is missing (agent not running) says nothing about the pod; one that names
    // another subnet does: the pod's address is no longer routed to this host.
    if let Ok(now) = subnet::load(&conf.subnet_file()) {
        let given = d["ipam"]["ranges"][0][0]["subnet"].as_str().unwrap_or_default();
        if given != now.subnet.to_string() {
            return Err(CniError::new(
                INVALID_CONFIG,
                format!(
                    "container {} got its address from {given}, but this host's subnet is now {} \
                     (subnet file {}): recreate the pod",
                    env.container_id,
                    now.subnet,
                    conf.subnet_file().display()
                ),
            ));
        }
    }
    with_request(&mut d, conf);
    let plugin = delegate::find_plugin(delegate_type(&d), &env.path)?;
    delegate::exec(&plugin, "CHECK", &d)?;
    Ok(Vec::new())
}

/// The saved config as the delegate gets it for this request: the request's cniVersion (which
/// `prevResult` is in) and its prevResult.
fn with_request(d: &mut serde_json::Map<String, Value>, conf: &NetConf) {
    d.insert("cniVersion".into(), conf.cni_version.clone().into());
    match &conf.prev_result {
        Some(prev) => d.insert("prevResult".into(), prev.clone()),
        None => d.remove("prevResult"),
    };
}

fn delegate_type(d: &serde_json::Map<String, Value>) -> &str {
    d.get("type").and_then(Value::as_str).unwrap_or("bridge")
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, fs, os::unix::fs::PermissionsExt as _, path::PathBuf};

    use super::*;
    use crate::error::*;

    /// A CNI_PATH with a fake `bridge` that logs its input and answers like the real one.
    struct Sandbox {
        dir: PathBuf,
    }

    impl Sandbox {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("xnet-cni-run-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("bin")).unwrap();
            let bridge = dir.join("bin/bridge");
            fs::write(
                &bridge,
                format!(
                    "#!/bin/sh\ncat > {0}/last-$CNI_COMMAND.json\n\
                     [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.244.1.2/24\"}}]}}'\n\
                     exit 0\n",
                    dir.display()
                ),
            )
            .unwrap();
            fs::set_permissions(&bridge, fs::Permissions::from_mode(0o755)).unwrap();
            fs::write(
                dir.join("subnet.env"),
                "XNET_NETWORK=10.244.0.0/16\nXNET_SUBNET=10.244.1.1/24\nXNET_MTU=1450\nXNET_IPMASQ=false\n",
            )
            .unwrap();
            Sandbox { dir }
        }

        fn conf(&self) -> String {
            format!(
                r#"{{"cniVersion":"1.0.0","name":"xnet","type":"xnet-cni","subnetFile":"{0}/subnet.env",
                    "dataDir":"{0}/data","prevResult":{{"cniVersion":"1.0.0"}}}}"#,
                self.dir.display()
            )
        }

        fn run(&self, command: &str, conf: &str) -> Result<Vec<u8>, CniError> {
            let vars: HashMap<&str, String> = [
                ("CNI_COMMAND", command.to_string()),
                ("CNI_CONTAINERID", "pod1".into()),
                ("CNI_NETNS", "/run/netns/pod1".into()),
                ("CNI_IFNAME", "eth0".into()),
                ("CNI_PATH", self.dir.join("bin").display().to_string()),
            ]
            .into();
            run(&|k| vars.get(k).cloned(), conf.as_bytes())
        }

        fn delegate_input(&self, command: &str) -> Value {
            serde_json::from_slice(&fs::read(self.dir.join(format!("last-{command}.json"))).unwrap()).unwrap()
        }
    }

    impl Drop for Sandbox {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn version_lists_the_supported_versions() {
        let out = run(&|k| (k == "CNI_COMMAND").then(|| "VERSION".into()), b"").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion": "1.0.0", "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]})
        );
    }

    #[test]
    fn add_check_del_through_the_delegate() {
        let s = Sandbox::new("cycle");
        let out = s.run("ADD", &s.conf()).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["ips"][0]["address"], "10.244.1.2/24");
        let input = s.delegate_input("ADD");
        assert_eq!(input["type"], "bridge");
        assert_eq!(input["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert!(input.get("prevResult").is_none());
        assert!(s.dir.join("data/pod1").is_file());

        assert_eq!(s.run("CHECK", &s.conf()).unwrap(), b"");
        assert_eq!(s.delegate_input("CHECK")["prevResult"], json!({"cniVersion": "1.0.0"}));

        // The host's subnet changed: CHECK says so.
        fs::write(
            s.dir.join("subnet.env"),
            "XNET_NETWORK=10.244.0.0/16\nXNET_SUBNET=10.244.9.1/24\nXNET_MTU=1450\nXNET_IPMASQ=false\n",
        )
        .unwrap();
        let e = s.run("CHECK", &s.conf()).unwrap_err();
        assert!(
            e.msg.contains("got its address from 10.244.1.0/24, but this host's subnet is now 10.244.9.0/24")
        );

        // DEL uses the saved config (the old subnet), then forgets it; a second DEL is a no-op.
        fs::remove_file(s.dir.join("subnet.env")).unwrap();
        assert_eq!(s.run("DEL", &s.conf()).unwrap(), b"");
        assert_eq!(s.delegate_input("DEL")["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert!(!s.dir.join("data/pod1").exists());
        fs::remove_file(s.dir.join("last-DEL.json")).unwrap();
        assert_eq!(s.run("DEL", &s.conf()).unwrap(), b"");
        assert!(!s.dir.join("last-DEL.json").exists(), "nothing to delete: the delegate is not run");
        // CHECK of an unknown container.
        assert_eq!(s.run("CHECK", &s.conf()).unwrap_err().code, UNKNOWN_CONTAINER);
    }

    #[test]
    fn add_without_the_subnet_file_asks_to_try_again() {
        let s = Sandbox::new("nofile");
        fs::remove_file(s.dir.join("subnet.env")).unwrap();
        let e = s.run("ADD", &s.conf()).unwrap_err();
        assert_eq!(e.code, TRY_AGAIN_LATER);
        assert!(e.msg.ends_with("subnet.env does not exist yet: is the xnet agent running?"), "{}", e.msg);
        assert!(!s.dir.join("data/pod1").exists());
    }

    #[test]
    fn add_without_the_bridge_plugin_names_cni_path() {
        let s = Sandbox::new("noplugin");
        fs::remove_file(s.dir.join("bin/bridge")).unwrap();
        let e = s.run("ADD", &s.conf()).unwrap_err();
        assert_eq!(e.code, DELEGATE_FAILED);
        assert!(e.msg.starts_with("cannot find the bridge plugin in CNI_PATH"), "{}", e.msg);
    }

    #[test]
    fn check_needs_0_4_0_and_a_prev_result() {
        let s = Sandbox::new("checkver");
        let old = s.conf().replace("\"1.0.0\",\"name\"", "\"0.3.1\",\"name\"");
        assert_eq!(s.run("CHECK", &old).unwrap_err().code, INCOMPATIBLE_VERSION);
        let no_prev = s.conf().replace(r#""prevResult":{"cniVersion":"1.0.0"}"#, r#""x":1"#);
        assert_eq!(s.run("CHECK", &no_prev).unwrap_err().code, INVALID_CONFIG);
    }
}
