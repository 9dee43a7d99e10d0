//! A real etcd (Debian's etcd-server) for tests: a single member on loopback with free ports and
//! its own data directory, removed on drop, also after a panic.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    pub endpoint: String,
    args: Vec<String>,
    /// The network namespace it runs in (None: this process's).
    netns: Option<PathBuf>,
    /// With TLS: the directory holding ca.pem, client.pem and client.key (for etcdctl).
    pub tls_dir: Option<PathBuf>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Etcd {
    /// Starts etcd on 127.0.0.1 and waits until it answers.
    pub fn start() -> Etcd {
        let (client, peer) = (free_port(), free_port());
        Self::start_at(None, "127.0.0.1", client, peer)
    }

    /// Starts etcd in the namespace at `netns`, listening on `ip`.
    pub fn start_in(netns: &std::path::Path, ip: &str) -> Etcd {
        Self::start_at(Some(netns.to_path_buf()), ip, 2379, 2380)
    }

    fn start_at(netns: Option<PathBuf>, ip: &str, client: u16, peer: u16) -> Etcd {
        let mut etcd =
            Self::member(netns, "xnet-test", ip, client, peer, &format!("xnet-test=http://{ip}:{peer}"));
        etcd.resume();
        etcd
    }

    /// etcd on 127.0.0.1 over TLS, requiring client certificates; the CA, server and client
    /// certificates are made with openssl in its directory (`tls_dir`).
    pub fn start_tls() -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let mut etcd = Self::member(
            None,
            "xnet-tls",
            "127.0.0.1",
            client,
            peer,
            &format!("xnet-tls=http://127.0.0.1:{peer}"),
        );
        let certs = etcd.dir.with_extension("certs");
        let _ = std::fs::remove_dir_all(&certs);
        std::fs::create_dir_all(&certs).expect("certs dir");
        let sh = |script: &str| {
            let out = Command::new("sh").arg("-c").arg(script).current_dir(&certs).output().expect("sh");
            assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        };
        sh(
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=xnet-test-ca 2>/dev/null",
        );
        for (name, ext) in [
            ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            sh(&format!(
                "openssl req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN=xnet-{name} 2>/dev/null && \
                 printf '{ext}\\nbasicConstraints=CA:FALSE\\n' > {name}.ext && \
                 openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext 2>/dev/null"
            ));
        }
        let https = format!("https://127.0.0.1:{client}");
        for a in etcd.args.iter_mut() {
            if *a == etcd.endpoint {
                *a = https.clone();
            }
        }
        let c = |f: &str| certs.join(f).to_str().unwrap().to_string();
        etcd.args.extend([
            "--cert-file".into(),
            c("server.pem"),
            "--key-file".into(),
            c("server.key"),
            "--trusted-ca-file".into(),
            c("ca.pem"),
            "--client-cert-auth".into(),
        ]);
        etcd.endpoint = https;
        etcd.tls_dir = Some(certs);
        etcd.resume();
        etcd
    }

    /// A cluster of members (one per address, ports 2379/2380) in the namespace at `netns`, started
    /// together and healthy once they have a leader.
    pub fn cluster_in(netns: &std::path::Path, ips: &[&str]) -> Vec<Etcd> {
        let initial: Vec<String> =
            ips.iter().enumerate().map(|(i, ip)| format!("m{i}=http://{ip}:2380")).collect();
        let mut members: Vec<Etcd> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                Self::member(Some(netns.to_path_buf()), &format!("m{i}"), ip, 2379, 2380, &initial.join(","))
            })
            .collect();
        for m in &mut members {
            m.spawn();
        }
        for m in &members {
            m.wait_healthy();
        }
        members
    }

    fn member(netns: Option<PathBuf>, name: &str, ip: &str, client: u16, peer: u16, initial: &str) -> Etcd {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("xnet-etcd-{}-{n}-{ip}-{client}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let endpoint = format!("http://{ip}:{client}");
        let peer_url = format!("http://{ip}:{peer}");
        let args: Vec<String> = [
            "--name",
            name,
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-level",
            "error",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Etcd { child: None, dir, endpoint, args, netns, tls_dir: None }
    }

    /// Whether this member is the cluster's leader now.
    pub fn is_leader(&self) -> bool {
        let Ok(out) = self.etcdctl(&["endpoint", "status", "-w", "json"]) else { return false };
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let status = &v[0]["Status"];
        status["leader"].as_u64().is_some() && status["leader"] == status["header"]["member_id"]
    }

    /// Starts the (stopped) etcd process again with the same data.
    pub fn resume(&mut self) {
        self.spawn();
        self.wait_healthy();
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd already runs");
        let child = self
            .command("etcd")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (cargo xtask test installs Debian's etcd-server)");
        self.child = Some(child);
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.etcdctl(&["endpoint", "health"]).is_err() {
            assert!(Instant::now() < deadline, "etcd did not become healthy at {}", self.endpoint);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops etcd (its data stays for [`Etcd::resume`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs etcdctl (v3 API) against this etcd; stdout on success.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = self.command("etcdctl");
        cmd.env("ETCDCTL_API", "3").args(["--endpoints", &self.endpoint, "--command-timeout=3s"]);
        if let Some(d) = &self.tls_dir {
            for (flag, file) in [("--cacert", "ca.pem"), ("--cert", "client.pem"), ("--key", "client.key")] {
                cmd.arg(flag).arg(d.join(file));
            }
        }
        let out = cmd.args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => crate::netns::Netns::command_at(ns, program),
            None => Command::new(program),
        }
    }

    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", key, value]).unwrap_or_else(|e| panic!("etcdctl put {key}: {e}"));
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out =
            self.etcdctl(&["get", key, "--print-value-only"]).unwrap_or_else(|e| panic!("etcdctl get: {e}"));
        let v = out.trim_end_matches('\n');
        (!v.is_empty()).then(|| v.to_string())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(d) = &self.tls_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// One write of [`Writer::write`].
#[derive(Clone, Debug)]
pub enum WriteOp {
    Put(String, String),
    Delete(String),
}

type WriteRequest = (Vec<WriteOp>, std::sync::mpsc::Sender<Result<(), String>>);

/// A client that stays connected to an etcd (etcd-client on a thread of its own, inside the etcd's
/// namespace): writes without an etcdctl process each, to load many keys quickly or to time one
/// put without a process start in it. Plain HTTP only (not for [`Etcd::start_tls`]).
pub struct Writer {
    requests: Option<tokio::sync::mpsc::UnboundedSender<WriteRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// etcd's default `--max-txn-ops`: the most operations one transaction may hold.
pub const MAX_TXN_OPS: usize = 128;

impl Etcd {
    /// A [`Writer`] connected to this etcd.
    pub fn writer(&self) -> Writer {
        assert!(self.tls_dir.is_none(), "Writer speaks plain HTTP only");
        let (endpoint, netns) = (self.endpoint.clone(), self.netns.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<WriteRequest>();
        let thread = std::thread::spawn(move || {
            if let Some(ns) = netns {
                use std::os::fd::AsRawFd as _;
                let file =
                    std::fs::File::open(&ns).unwrap_or_else(|e| panic!("open netns {}: {e}", ns.display()));
                // SAFETY: setns on this thread only; the fd is valid for the call.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            }
            // One thread does everything (connecting included), so every socket is in the namespace.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout(Duration::from_secs(30));
                let mut client = match etcd_client::Client::connect([endpoint.as_str()], Some(options)).await
                {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("connect to {endpoint}: {e}")));
                        return;
                    }
                };
                while let Some((ops, reply)) = rx.recv().await {
                    let _ = reply.send(write_ops(&mut client, ops).await);
                }
            });
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Writer { requests: Some(tx), thread: Some(thread) },
            Ok(Err(e)) => panic!("etcd writer: {e}"),
            Err(e) => panic!("etcd writer did not connect: {e}"),
        }
    }
}

async fn write_ops(client: &mut etcd_client::Client, mut ops: Vec<WriteOp>) -> Result<(), String> {
    use etcd_client::{Txn, TxnOp};
    if ops.len() == 1 {
        // A single write is a plain put or delete, as a host's agent or etcdctl would make it.
        return match ops.pop().expect("one op") {
            WriteOp::Put(k, v) => client.put(k, v, None).await.map(drop),
            WriteOp::Delete(k) => client.delete(k, None).await.map(drop),
        }
        .map_err(|e| e.to_string());
    }
    for chunk in ops.chunks(MAX_TXN_OPS) {
        let txn_ops: Vec<TxnOp> = chunk
            .iter()
            .map(|op| match op {
                WriteOp::Put(k, v) => TxnOp::put(k.as_str(), v.as_str(), None),
                WriteOp::Delete(k) => TxnOp::delete(k.as_str(), None),
            })
            .collect();
        let resp = client.txn(Txn::new().and_then(txn_ops)).await.map_err(|e| e.to_string())?;
        if !resp.succeeded() {
            return Err("transaction not applied".into());
        }
    }
    Ok(())
}

impl Writer {
    /// Applies `ops` in order: one op as a plain put or delete, more in transactions of up to
    /// [`MAX_TXN_OPS`] (a key at most once per transaction). Returns once etcd has applied them.
    pub fn write(&self, ops: Vec<WriteOp>) -> Result<(), String> {
        if ops.is_empty() {
            return Ok(());
        }
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        self.requests
            .as_ref()
            .expect("writer open")
            .send((ops, reply_tx))
            .map_err(|_| "writer thread gone")?;
        reply_rx.recv().map_err(|_| "writer thread gone".to_string())?
    }

    pub fn put(&self, key: &str, value: &str) {
        self.write(vec![WriteOp::Put(key.into(), value.into())])
            .unwrap_or_else(|e| panic!("etcd put {key}: {e}"));
    }

    pub fn delete(&self, key: &str) {
        self.write(vec![WriteOp::Delete(key.into())]).unwrap_or_else(|e| panic!("etcd delete {key}: {e}"));
    }

    /// Puts every (key, value) pair, [`MAX_TXN_OPS`] to a transaction.
    pub fn put_all(&self, kvs: impl IntoIterator<Item = (String, String)>) {
        let ops: Vec<WriteOp> = kvs.into_iter().map(|(k, v)| WriteOp::Put(k, v)).collect();
        let n = ops.len();
        self.write(ops).unwrap_or_else(|e| panic!("etcd put of {n} keys: {e}"));
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.requests.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
