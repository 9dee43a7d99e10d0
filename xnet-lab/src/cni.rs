//! Pods attached through CNI plugins the way a container runtime (kubelet's containerd, CRI-O)
//! attaches them: a network namespace per pod, the CNI_* environment variables, each plugin of a
//! network config list run in turn with its config on stdin (ADD in order with the previous
//! plugin's result as `prevResult`, CHECK and DEL with the cached result, DEL in reverse order),
//! the result read from stdout. The plugins run inside the host's network namespace, as the
//! runtime of that host would run them.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
};

use serde_json::{Value, json};

use crate::{lab::Lab, netns::Netns};

/// Where distributions put the standard CNI plugins (bridge, host-local, portmap, ...).
pub const SYSTEM_PLUGIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

/// The `xnet-cni` binary under test: `$XNET_CNI_BIN`, or `xnet-cni` next to (or above) the running
/// executable in cargo's target directory.
pub fn plugin_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XNET_CNI_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors().skip(1).take(3).map(|dir| dir.join("xnet-cni")).find(|c| c.is_file()).unwrap_or_else(
        || {
            panic!(
                "cannot find the xnet-cni binary near {}; build it (cargo build -p xnet-cni) or set \
                 XNET_CNI_BIN",
                exe.display()
            )
        },
    )
}

/// The network config list shipped in packaging/cni/10-xnet.conflist.
pub fn packaged_conflist() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/cni/10-xnet.conflist");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Makes `dir` a CNI_PATH directory: links to the standard plugins (from the first of
/// [`SYSTEM_PLUGIN_DIRS`] that has `bridge`) and to [`plugin_bin`].
pub fn plugin_dir(dir: &Path) -> PathBuf {
    let system =
        SYSTEM_PLUGIN_DIRS.iter().map(Path::new).find(|d| d.join("bridge").is_file()).unwrap_or_else(|| {
            panic!(
                "no standard CNI plugins (bridge) in {SYSTEM_PLUGIN_DIRS:?}: install \
                 containernetworking-plugins (cargo xtask setup does)"
            )
        });
    fs::create_dir_all(dir).expect("CNI_PATH dir");
    for entry in fs::read_dir(system).expect("read plugin dir") {
        let entry = entry.expect("plugin dir entry");
        let link = dir.join(entry.file_name());
        if !link.exists() {
            std::os::unix::fs::symlink(entry.path(), &link).expect("link a plugin");
        }
    }
    let link = dir.join("xnet-cni");
    if !link.exists() {
        std::os::unix::fs::symlink(plugin_bin(), &link).expect("link xnet-cni");
    }
    dir.to_path_buf()
}

/// One plugin run: what it printed and how it exited.
#[derive(Debug)]
pub struct PluginRun {
    pub plugin: String,
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl PluginRun {
    /// Stdout as JSON (`null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }
}

impl std::fmt::Display for PluginRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} exited with {}\nstdout: {}\nstderr: {}",
            self.plugin,
            self.command,
            self.status,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// What identifies one attachment: the runtime's CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub container_id: String,
    /// Empty at a DEL after the namespace is gone.
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

/// The CNI side of one host's container runtime: where its plugins run (the host's namespace),
/// its CNI_PATH and its network config list.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub host_ns: PathBuf,
    pub cni_path: PathBuf,
    pub conflist: Value,
}

impl Runtime {
    /// Host `i` of `lab` with `conflist`, its first plugin (xnet-cni) pointed at the lab: the
    /// host's subnet file, and a data dir and a host-local data dir of its own in the lab's
    /// directory, so that nothing outside the lab's namespaces and directory is touched.
    pub fn lab_host(lab: &Lab, i: usize, conflist: &Value) -> Runtime {
        let h = lab.host(i);
        let mut conflist = conflist.clone();
        let xnet = &mut conflist["plugins"][0];
        assert_eq!(xnet["type"], "xnet-cni", "the conflist's first plugin is xnet-cni");
        xnet["subnetFile"] = h.subnet_file.display().to_string().into();
        xnet["dataDir"] = Runtime::data_dir(lab, i).display().to_string().into();
        if !xnet["ipam"].is_object() {
            xnet["ipam"] = json!({});
        }
        xnet["ipam"]["dataDir"] = Runtime::ipam_dir(lab, i).display().to_string().into();
        Runtime { host_ns: h.ns.path(), cni_path: plugin_dir(&lab.dir.join("cni-bin")), conflist }
    }

    /// xnet-cni's data dir (saved delegate configs) of host `i` in the lab.
    pub fn data_dir(lab: &Lab, i: usize) -> PathBuf {
        lab.dir.join(format!("h{i}-cni"))
    }

    /// host-local's data dir of host `i` in the lab.
    pub fn ipam_dir(lab: &Lab, i: usize) -> PathBuf {
        lab.dir.join(format!("h{i}-ipam"))
    }

    /// The network's name (the conflist's `name`).
    pub fn network(&self) -> &str {
        self.conflist["name"].as_str().expect("conflist name")
    }

    /// The config of plugin `index` of the list as the runtime hands it over: the entry, with the
    /// list's `name` and `cniVersion`, and `prevResult` if given.
    pub fn plugin_config(&self, index: usize, prev_result: Option<&Value>) -> Value {
        let mut conf = self.conflist["plugins"][index].clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(prev) = prev_result {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn plugin_count(&self) -> usize {
        self.conflist["plugins"].as_array().expect("conflist plugins").len()
    }

    /// Runs one plugin as the runtime does: in the host's namespace, with the CNI_* variables and
    /// `conf` on stdin.
    pub fn exec(&self, command: &str, attachment: &Attachment, conf: &Value) -> PluginRun {
        let plugin = conf["type"].as_str().expect("plugin type");
        self.exec_plugin(plugin, command, attachment, conf)
    }

    /// VERSION of `plugin`, as a runtime asks it (`{"cniVersion": ...}` on stdin).
    pub fn version(&self, plugin: &str) -> PluginRun {
        let none = Attachment {
            container_id: String::new(),
            netns: String::new(),
            ifname: String::new(),
            args: String::new(),
        };
        self.exec_plugin(plugin, "VERSION", &none, &json!({ "cniVersion": self.conflist["cniVersion"] }))
    }

    fn exec_plugin(&self, plugin: &str, command: &str, attachment: &Attachment, conf: &Value) -> PluginRun {
        let plugin = plugin.to_string();
        let bin = self.cni_path.join(&plugin);
        let mut cmd = Netns::command_at(&self.host_ns, bin.to_str().expect("utf-8 path"));
        cmd.env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &attachment.container_id)
            .env("CNI_NETNS", &attachment.netns)
            .env("CNI_IFNAME", &attachment.ifname)
            .env("CNI_ARGS", &attachment.args)
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
        let input = conf.to_string();
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("wait for plugin");
        let _ = writer.join();
        PluginRun {
            plugin,
            command: command.to_string(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// ADD over the whole list; the last plugin's result.
    pub fn add(&self, attachment: &Attachment) -> Result<Value, PluginRun> {
        let mut result: Option<Value> = None;
        for i in 0..self.plugin_count() {
            let run = self.exec("ADD", attachment, &self.plugin_config(i, result.as_ref()));
            if !run.status.success() {
                return Err(run);
            }
            result = Some(run.json());
        }
        Ok(result.expect("a list has plugins"))
    }

    /// CHECK over the whole list, with the cached ADD result.
    pub fn check(&self, attachment: &Attachment, result: &Value) -> Result<(), PluginRun> {
        for i in 0..self.plugin_count() {
            let run = self.exec("CHECK", attachment, &self.plugin_config(i, Some(result)));
            if !run.status.success() {
                return Err(run);
            }
        }
        Ok(())
    }

    /// DEL over the whole list in reverse order, with the cached ADD result if there is one. Every
    /// plugin runs; the first failure is returned.
    pub fn del(&self, attachment: &Attachment, result: Option<&Value>) -> Result<(), PluginRun> {
        let mut first_err = None;
        for i in (0..self.plugin_count()).rev() {
            let run = self.exec("DEL", attachment, &self.plugin_config(i, result));
            if !run.status.success() && first_err.is_none() {
                first_err = Some(run);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Whether host-local (with this runtime's IPAM data dir `ipam_dir`) holds a reservation for
    /// `ip` in this network.
    pub fn reserved(&self, ipam_dir: &Path, ip: Ipv4Addr) -> bool {
        ipam_dir.join(self.network()).join(ip.to_string()).exists()
    }
}

/// A pod: a network namespace attached through a [`Runtime`]. On drop it is deleted as a runtime
/// deletes a pod (DEL, best effort, then the namespace), also after a failed test.
pub struct Pod {
    pub ns: Netns,
    pub attachment: Attachment,
    /// The ADD result (the list's last plugin's).
    pub result: Value,
    runtime: Runtime,
    deleted: bool,
}

impl Pod {
    /// Creates namespace `ns_name` and attaches it as container `container_id`, interface
    /// `eth0`, with kubelet's CNI_ARGS. A failed ADD is cleaned up (DEL, namespace) as a runtime
    /// does, and returned.
    pub fn add(runtime: &Runtime, ns_name: &str, container_id: &str) -> Result<Pod, PluginRun> {
        let ns = Netns::create(ns_name);
        let attachment = Attachment {
            container_id: container_id.to_string(),
            netns: ns.path().display().to_string(),
            ifname: "eth0".to_string(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={ns_name};\
                 K8S_POD_INFRA_CONTAINER_ID={container_id}"
            ),
        };
        match runtime.add(&attachment) {
            Ok(result) => Ok(Pod { ns, attachment, result, runtime: runtime.clone(), deleted: false }),
            Err(run) => {
                let _ = runtime.del(&attachment, None);
                Err(run)
            }
        }
    }

    /// The pod's IPv4 address, from the ADD result.
    pub fn ip(&self) -> Ipv4Addr {
        let address = self.result["ips"][0]["address"].as_str().expect("ADD result has an address");
        address.split('/').next().and_then(|a| a.parse().ok()).expect("an IPv4 address")
    }

    /// CHECK with the cached result.
    pub fn check(&self) -> Result<(), PluginRun> {
        self.runtime.check(&self.attachment, &self.result)
    }

    /// DEL with the cached result; the namespace stays (with no interface but lo) until drop.
    pub fn del(&mut self) -> Result<(), PluginRun> {
        self.runtime.del(&self.attachment, Some(&self.result))?;
        self.deleted = true;
        Ok(())
    }

    /// Pings `to` once from the pod. True if answered.
    pub fn ping(&self, to: Ipv4Addr) -> bool {
        self.ns
            .command("ping")
            .args(["-c", "1", "-W", "1", "-q", &to.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `ping -c count to` from the pod: its output, and whether it succeeded.
    pub fn ping_output(&self, to: Ipv4Addr, count: u32) -> (bool, String) {
        let out = self
            .ns
            .command("ping")
            .args(["-c", &count.to_string(), "-W", "2", &to.to_string()])
            .output()
            .expect("run ping");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = self.runtime.del(&self.attachment, Some(&self.result));
        }
        // The namespace goes with `ns` (Netns::drop), the veth pair with it.
    }
}
