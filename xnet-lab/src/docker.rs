//! Real Docker on the lab's hosts: one `dockerd` per host network namespace, started the way a host
//! starts it from xnet's subnet.env (`--bip=$XNET_SUBNET --mtu=$XNET_MTU`), and a tiny image made
//! from the machine's static busybox, since no registry is reachable.
//!
//! Two daemons run side by side because each has its own of everything a daemon keeps: data root,
//! exec root (where it starts its own managed containerd, whose socket lives there too), pid file,
//! API socket, trust key, config file and cgroup parent. The daemon is started with
//! `nsenter --net=/run/netns/NAME`, which changes only the network namespace (`ip netns exec` would
//! also give it a private /sys without the cgroup mounts that runc needs).
//!
//! What a daemon leaves behind goes on drop, also after a panic: its containers (`docker rm -f`),
//! the daemon (SIGTERM, then SIGKILL to its process group), its containerd and the shims (found by
//! their command lines, which name the exec root), the containers' processes (by cgroup), every
//! mount under its root, its cgroups, the shims' sockets and its directory.

use std::{
    fs,
    io::Read,
    net::Ipv4Addr,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// The image [`Dockerd::import_busybox`] makes.
pub const BUSYBOX_IMAGE: &str = "xnet-lab-busybox:1";

/// The applets the image links to `/bin/busybox`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "cat",
    "dd",
    "sha256sum",
    "nc",
    "ping",
    "sleep",
    "ip",
    "ifconfig",
    "ls",
    "wc",
    "head",
    "ps",
    "kill",
    "hostname",
    "true",
    "echo",
    "mkdir",
    "rm",
    "netstat",
    "timeout",
];

/// Storage drivers tried in this order; the first one the daemon starts with is kept.
const STORAGE_DRIVERS: [&str; 2] = ["overlay2", "vfs"];

/// A `dockerd` in a network namespace, removed with everything it made on drop.
pub struct Dockerd {
    /// A short name that is unique on the machine (the lab id and the host), for the cgroup parent.
    pub name: String,
    netns: PathBuf,
    /// Holds `data/`, `exec/`, `docker.sock`, `dockerd.pid`, `daemon.json`, `key.json` and
    /// `dockerd.log`.
    pub root: PathBuf,
    /// The flags of the caller (`--bip`, `--mtu`, ...), after the ones this module sets.
    args: Vec<String>,
    /// The storage driver the daemon runs with: overlay2, or vfs where overlay2 does not start.
    pub storage_driver: Option<&'static str>,
    cgroup_parent: String,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts `dockerd args...` in `ns`, with its state under `root` (created; keep it short: the
    /// sockets inside must fit in 108 bytes), and waits until its API answers. `name` must be
    /// unique on the machine (e.g. "<lab id>-h1").
    pub fn start(ns: &Netns, root: PathBuf, name: &str, args: &[String]) -> Dockerd {
        let path = std::env::var_os("PATH").unwrap_or_default();
        assert!(
            std::env::split_paths(&path).any(|dir| dir.join("dockerd").is_file()),
            "no dockerd on PATH: install docker.io (`cargo xtask setup` does)"
        );
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        // Without a key path of its own every daemon reads and writes /etc/docker/key.json (a file
        // setting only: dockerd 20.10 has no flag for it).
        let config = serde_json::json!({ "deprecated-key-path": root.join("key.json") });
        fs::write(root.join("daemon.json"), format!("{config}\n")).expect("daemon.json");
        let mut d = Dockerd {
            name: name.to_string(),
            netns: ns.path(),
            root,
            args: args.to_vec(),
            storage_driver: None,
            cgroup_parent: format!("/xnet-lab-docker-{name}"),
            child: None,
        };
        // From here on a panic drops `d`, which removes whatever the daemon made.
        d.start_again();
        d
    }

    /// Starts the daemon (again, after [`Dockerd::stop`]) and waits until its API answers; returns
    /// how long that took. The first start picks the storage driver.
    pub fn start_again(&mut self) -> Duration {
        assert!(self.child.is_none(), "dockerd {} already runs", self.name);
        let drivers: Vec<&'static str> = match self.storage_driver {
            Some(d) => vec![d],
            None => STORAGE_DRIVERS.to_vec(),
        };
        let start = Instant::now();
        let mut failures = String::new();
        for driver in drivers {
            match self.launch(driver) {
                Ok(()) => {
                    self.storage_driver = Some(driver);
                    return start.elapsed();
                }
                Err(e) => {
                    failures += &format!("\n--- with --storage-driver {driver}: {e}");
                    self.kill_leftovers();
                    self.unmount_all();
                }
            }
        }
        panic!("dockerd {} does not start:{failures}", self.name);
    }

    /// One attempt: spawn the daemon and wait for "API listen on" in its log.
    fn launch(&mut self, driver: &str) -> Result<(), String> {
        let log_path = self.root.join("dockerd.log");
        let before = fs::read_to_string(&log_path).unwrap_or_default();
        let ready_before = before.matches("API listen on").count();
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("dockerd.log");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display())).arg("dockerd");
        cmd.arg("--config-file").arg(self.root.join("daemon.json"));
        cmd.arg("--data-root").arg(self.root.join("data"));
        cmd.arg("--exec-root").arg(self.root.join("exec"));
        cmd.arg("--pidfile").arg(self.root.join("dockerd.pid"));
        cmd.arg("-H").arg(format!("unix://{}", self.socket().display()));
        cmd.args(["--storage-driver", driver, "--cgroup-parent", &self.cgroup_parent]);
        cmd.arg("--userland-proxy=false");
        cmd.args(&self.args);
        cmd.env_remove("NOTIFY_SOCKET").env_remove("DOCKER_HOST");
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("log")).stderr(log);
        // Its own process group, so that the group can be killed.
        cmd.process_group(0);
        let mut child = cmd.spawn().map_err(|e| format!("cannot run nsenter ... dockerd: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            if text.matches("API listen on").count() > ready_before {
                self.child = Some(child);
                return Ok(());
            }
            let new_lines = || tail(text.get(before.len()..).unwrap_or(""), 15);
            if let Some(status) = child.try_wait().expect("wait dockerd") {
                return Err(format!("dockerd exited ({status}):\n{}", new_lines()));
            }
            if Instant::now() > deadline {
                stop_group(&mut child, Duration::from_secs(5));
                return Err(format!("no API after 60 s:\n{}", new_lines()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon as its service manager would (SIGTERM; it stops its containers, unmounts
    /// their file systems and stops its containerd), waiting up to 30 s before SIGKILL. Returns
    /// the exit status and how long the stop took.
    pub fn stop(&mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let mut child = self.child.take().expect("dockerd runs");
        let status = stop_group(&mut child, Duration::from_secs(30));
        // The managed containerd is stopped by dockerd; wait until it is gone too.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.leftover_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        (status, start.elapsed())
    }

    /// The process id of the daemon, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's API socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("docker.sock")
    }

    /// The daemon's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default()
    }

    /// A `docker -H unix://<this daemon's socket>` command.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H").arg(format!("unix://{}", self.socket().display()));
        // The client's own files (contexts, config) stay in the daemon's directory.
        cmd.env("DOCKER_CONFIG", self.root.join("client")).env_remove("DOCKER_HOST");
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `docker args...`, waited for at most `limit`; None when it took longer (it is killed).
    pub fn docker_within(&self, args: &[&str], limit: Duration) -> Option<Output> {
        output_within(self.command().args(args), limit)
    }

    /// `docker args...`, which must succeed within 60 s; its standard output, trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = self
            .docker_within(args, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("docker {args:?} (daemon {}): no answer in 60 s", self.name));
        assert!(
            out.status.success(),
            "docker {args:?} (daemon {}) failed ({}): {}{}\n--- dockerd log (end):\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 20)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Makes [`BUSYBOX_IMAGE`] with `docker import`: a root file system holding the machine's static
    /// busybox as /bin/busybox and [`BUSYBOX_APPLETS`] as links to it. Returns how long it took.
    pub fn import_busybox(&self) -> Duration {
        let start = Instant::now();
        let busybox = static_busybox();
        let rootfs = self.root.join("busybox-rootfs");
        let _ = fs::remove_dir_all(&rootfs);
        for dir in ["bin", "dev", "etc", "proc", "sys", "tmp", "root"] {
            fs::create_dir_all(rootfs.join(dir)).expect("rootfs dir");
        }
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod /tmp");
        fs::copy(&busybox, rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in BUSYBOX_APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet link");
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run tar");
        let tar_out = tar.stdout.take().expect("tar stdout");
        let out = output_within(
            self.command().args(["import", "-", BUSYBOX_IMAGE]).stdin(Stdio::from(tar_out)),
            Duration::from_secs(60),
        )
        .expect("docker import: no answer in 60 s");
        assert!(tar.wait().expect("wait tar").success(), "tar of {} failed", rootfs.display());
        assert!(
            out.status.success(),
            "docker import failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 20)
        );
        start.elapsed()
    }

    /// `docker run -d --init --name NAME [extra...] IMAGE cmd...`; the container id. `--init`
    /// (docker-init, tini) passes SIGTERM on, so a stop does not wait the 10 s grace period.
    pub fn run_detached(&self, name: &str, extra: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--init", "--name", name];
        args.extend_from_slice(extra);
        args.push(BUSYBOX_IMAGE);
        args.extend_from_slice(cmd);
        self.docker(&args)
    }

    /// A container's address on the default bridge (`docker inspect`).
    pub fn container_ip(&self, name: &str) -> Ipv4Addr {
        let ip = self.docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name]);
        ip.parse().unwrap_or_else(|e| panic!("container {name}: address {ip:?}: {e}"))
    }

    /// `docker exec NAME cmd...`, waited for at most `limit` (None after that).
    pub fn exec_within(&self, name: &str, cmd: &[&str], limit: Duration) -> Option<Output> {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.docker_within(&args, limit)
    }

    /// The processes that belong to this daemon: whose command line names its root (dockerd, its
    /// containerd, the containerd shims, clients talking to its socket).
    fn leftover_pids(&self) -> Vec<i32> {
        let needle = self.root.as_os_str().as_bytes().to_vec();
        let me = std::process::id() as i32;
        let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_slice()))
            })
            .collect()
    }

    /// Kills what a daemon that did not stop cleanly left: the daemon's process group, its
    /// processes (containerd, shims), the containers' processes; then removes its cgroups and the
    /// shims' sockets.
    fn kill_leftovers(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) with a negative pid signals the daemon's own process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
        let sockets = self.shim_sockets();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.leftover_pids();
            let procs = self.cgroup_procs();
            if pids.is_empty() && procs.is_empty() {
                break;
            }
            for pid in pids.into_iter().chain(procs) {
                // SAFETY: kill(2) on a process of this daemon (found by its command line or cgroup).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if Instant::now() > deadline {
                eprintln!("dockerd {}: processes left after SIGKILL", self.name);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.remove_cgroups();
        for s in sockets {
            let _ = fs::remove_file(s);
        }
    }

    /// The sockets of this daemon's containerd shims (containerd 1.6 puts them in
    /// /run/containerd/s/, named by a hash; each task's `address` file names it).
    fn shim_sockets(&self) -> Vec<PathBuf> {
        let tasks = self.root.join("exec/containerd/daemon/io.containerd.runtime.v2.task");
        let mut out = Vec::new();
        for ns in fs::read_dir(tasks).into_iter().flatten().filter_map(Result::ok) {
            for task in fs::read_dir(ns.path()).into_iter().flatten().filter_map(Result::ok) {
                let address = fs::read_to_string(task.path().join("address")).unwrap_or_default();
                if let Some(path) = address.trim().strip_prefix("unix://")
                    && path.starts_with("/run/containerd/s/")
                {
                    out.push(PathBuf::from(path));
                }
            }
        }
        out
    }

    /// This daemon's cgroup parent in every cgroup hierarchy that has it.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let rel = self.cgroup_parent.trim_start_matches('/');
        let mut bases = vec![PathBuf::from("/sys/fs/cgroup")];
        bases.extend(
            fs::read_dir("/sys/fs/cgroup").into_iter().flatten().filter_map(Result::ok).map(|e| e.path()),
        );
        bases.into_iter().map(|b| b.join(rel)).filter(|p| p.join("cgroup.procs").exists()).collect()
    }

    /// The processes in this daemon's cgroups (its containers').
    fn cgroup_procs(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in self.cgroup_dirs() {
            for cg in subdirs_deepest_first(&dir) {
                let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn remove_cgroups(&self) {
        for dir in self.cgroup_dirs() {
            for cg in subdirs_deepest_first(&dir) {
                let deadline = Instant::now() + Duration::from_secs(2);
                while fs::remove_dir(&cg).is_err() && cg.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Unmounts (lazily) every mount at or under the daemon's root: overlay file systems, the
    /// data root's own bind mount, the containers' network namespace files.
    fn unmount_all(&self) {
        for _ in 0..5 {
            let mounts = mounts_under(&self.root);
            if mounts.is_empty() {
                return;
            }
            for m in mounts {
                let c = std::ffi::CString::new(m.as_os_str().as_bytes()).expect("mount point");
                // SAFETY: umount2 with a NUL-terminated path that lives across the call.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }

    /// Everything [`Drop`] does, with the daemon's containers removed through its API first.
    fn teardown(&mut self) {
        if self.child.is_some() {
            // A daemon whose API does not answer gets a short grace period only.
            let mut grace = Duration::from_secs(3);
            if let Some(out) = self.docker_within(&["ps", "-aq"], Duration::from_secs(5)) {
                grace = Duration::from_secs(15);
                let ids: Vec<String> =
                    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids.iter().map(String::as_str));
                    let _ = self.docker_within(&args, Duration::from_secs(30));
                }
            }
            let mut child = self.child.take().expect("checked");
            stop_group(&mut child, grace);
        }
        self.kill_leftovers();
        self.unmount_all();
        let left = mounts_under(&self.root);
        if !left.is_empty() {
            eprintln!("dockerd {}: still mounted, {} kept: {left:?}", self.name, self.root.display());
            return;
        }
        if std::env::var_os("XNET_LAB_KEEP_LOGS").is_some() {
            for dir in ["data", "exec", "busybox-rootfs"] {
                let _ = fs::remove_dir_all(self.root.join(dir));
            }
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// SIGTERM to `child`, then SIGKILL to its process group after `grace`; its exit status.
fn stop_group(child: &mut Child, grace: Duration) -> ExitStatus {
    // SAFETY: kill(2) on a child we own and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            // SAFETY: the child leads its own process group (process_group(0) at spawn).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            return child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` with its output collected, killing it after `limit` (then None).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    status.map(|status| Output { status, stdout, stderr })
}

/// The machine's busybox, which must be static (Debian's busybox-static) to run in an image that
/// holds nothing else.
fn static_busybox() -> PathBuf {
    let path = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("no busybox: install busybox-static");
    let elf = fs::read(&path).expect("read busybox");
    assert!(!has_interpreter(&elf), "{} is linked dynamically: install busybox-static", path.display());
    path
}

/// Whether a 64-bit little-endian ELF file names a program interpreter (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| {
        elf.get(o..o + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4).is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == 3)
    })
}

/// The mount points at or under `root`, deepest first (from /proc/self/mountinfo).
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(root))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `dir` and every directory below it, deepest first (cgroups are removed leaf first).
fn subdirs_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(subdirs_deepest_first(&e.path()));
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A subnet.env file (`KEY=value` lines) as key-value pairs.
pub fn read_env_file(path: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_unescape() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path("/tmp/plain"), "/tmp/plain");
        assert_eq!(unescape_mount_path(r"/x\134y"), r"/x\y");
    }

    #[test]
    fn interpreter_is_found_in_a_dynamic_executable_only() {
        // This test binary is dynamically linked (it has a PT_INTERP).
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me));
        assert!(!has_interpreter(&[0u8; 64]));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
