//! Telling systemd (a `Type=notify` service) how the agent is doing, through the `sd-notify`
//! crate.
//!
//! Each function sends one datagram to `$NOTIFY_SOCKET` and does nothing when that variable is not
//! set (not started by systemd). A failure is logged as a warning and otherwise ignored: the agent
//! works the same without its service manager hearing from it. The socket must be a path (what
//! systemd gives services); `sd-notify` does not connect to abstract sockets (`@name`).

use sd_notify::NotifyState;

/// Tells systemd that the agent is up (`READY=1`): the datapath is attached and the metrics
/// endpoint, if any, listens.
pub fn notify_ready() {
    notify(&[NotifyState::Ready]);
}

/// Tells systemd that the agent is shutting down (`STOPPING=1`).
pub fn notify_stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Sets the one-line status `systemctl status` shows for the service (`STATUS=…`).
pub fn notify_status(status: &str) {
    // A newline would end the STATUS= field and start another (made-up) one.
    let status = status.replace('\n', " ");
    notify(&[NotifyState::Status(&status)]);
}

/// Sends `states`, logging a failure.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        let socket = std::env::var_os("NOTIFY_SOCKET").unwrap_or_default();
        let message: Vec<String> = states.iter().map(ToString::to_string).collect();
        tracing::warn!(
            error = %e,
            socket = %socket.to_string_lossy(),
            "cannot tell systemd {}",
            message.join(" ")
        );
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::net::UnixDatagram, process::Command, time::Duration};

    use super::*;

    /// Set in the child process the test runs (setting NOTIFY_SOCKET in the test's own process
    /// would race with the other tests' threads).
    const CHILD: &str = "XNET_SYSTEMD_TEST_CHILD";

    /// Runs this test binary again, with `notify_socket` (or without NOTIFY_SOCKET), for the test
    /// alone, as the child that sends.
    fn run_child(notify_socket: Option<&std::path::Path>) {
        let mut child = Command::new(std::env::current_exe().unwrap());
        child.args(["--exact", "systemd::tests::sends_each_state_to_notify_socket"]).env(CHILD, "1");
        match notify_socket {
            Some(path) => child.env("NOTIFY_SOCKET", path),
            None => child.env_remove("NOTIFY_SOCKET"),
        };
        let out = child.output().unwrap();
        assert!(out.status.success(), "child test: {}", String::from_utf8_lossy(&out.stdout));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    #[test]
    fn sends_each_state_to_notify_socket() {
        if std::env::var_os(CHILD).is_some() {
            notify_ready();
            notify_status("syncing\nREADY=1");
            notify_stopping();
            return;
        }
        let dir = std::env::temp_dir().join(format!("xnet-systemd-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

        run_child(Some(&path));
        let mut buf = [0u8; 256];
        let mut received = || {
            let n = socket.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        assert_eq!(received(), "READY=1\n");
        assert_eq!(received(), "STATUS=syncing READY=1\n");
        assert_eq!(received(), "STOPPING=1\n");

        // Without NOTIFY_SOCKET: nothing sent, no failure. With a socket that is gone: a warning.
        run_child(None);
        run_child(Some(&dir.join("gone.sock")));
        socket.set_nonblocking(true).unwrap();
        assert!(socket.recv(&mut buf).is_err(), "a datagram arrived after the first child");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
