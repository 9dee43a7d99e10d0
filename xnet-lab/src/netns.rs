//! Network namespaces the lab creates, and running code inside them.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output},
    time::{Duration, Instant},
};

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` with its loopback up.
    pub fn create(name: &str) -> Self {
        run_ok(Command::new("ip").args(["netns", "add", name]));
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs inside the namespace at `path` (see [`Netns::command`]).
    pub fn command_at(path: &std::path::Path, program: &str) -> Command {
        let file = File::open(path).unwrap_or_else(|e| panic!("open netns {}: {e}", path.display()));
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe; `file` is moved into the closure and stays open until
        // exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// A command that runs inside this namespace, as `nsenter --net=/run/netns/NAME` would run it:
    /// only the network namespace changes, so the command keeps the caller's mounts and with them
    /// the root bpffs at /sys/fs/bpf, where agents pin their maps. (`ip netns exec` would also put
    /// the command in a mount namespace of its own, with a fresh /sys that has no bpffs, and that
    /// mount namespace dies with the command: pins made there would be invisible to the rest of
    /// the lab and gone when it exits.)
    pub fn command(&self, program: &str) -> Command {
        Self::command_at(&self.path(), program)
    }

    /// `ip -n <ns> args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(&self.name).args(args);
        run_ok(&mut cmd);
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens live there).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = File::open(self.path()).unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only; the fd is valid for the call.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Runs `cmd` and panics with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stops `child` with SIGTERM (SIGKILL after 10 s) and reaps it.
pub fn stop_child(mut child: Child) -> ExitStatus {
    // SAFETY: kill(2) on a child we own and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
