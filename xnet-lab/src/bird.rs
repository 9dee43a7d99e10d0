//! BIRD 2 (Debian `bird2`) in a lab namespace, in the foreground, with its own config, control
//! socket and pid file under a directory of the lab. Stopped on drop, also after a panic.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::netns::Netns;

pub struct Bird {
    pub dir: PathBuf,
    child: Option<Child>,
}

/// The kernel route protocol of xnet's announcement (`ANNOUNCE_PROTOCOL` of the agent's config).
pub const ANNOUNCE_PROTOCOL: u8 = 44;

/// A host's BIRD configuration: iBGP (AS 64512) to the route reflector `reflector`; it exports
/// xnet's announcement (a kernel route of protocol 44 inside `overlay`) and installs the routes it
/// learns with their BGP next hop as an `onlink` gateway, so that xnet sees the host that
/// originated each route even behind a router. The route to the other segments is the underlay's
/// (a kernel route the lab installs), which BIRD learns to resolve next hops.
pub fn host_bgp_config(router_id: &str, reflector: &str, overlay: &str) -> String {
    format!(
        r#"router id {router_id};
log stderr all;
protocol device {{ scan time 1; }}
protocol direct {{ ipv4; interface "eth0"; }}
protocol kernel {{
  learn;
  scan time 1;
  ipv4 {{
    import filter {{
      if krt_source = {ANNOUNCE_PROTOCOL} && net ~ [ {overlay}{{17,30}} ] then accept;
      if net ~ [ 198.18.0.0/15{{16,24}} ] then accept;
      reject;
    }};
    export filter {{
      if source = RTS_BGP && net ~ [ {overlay}{{17,30}} ] then {{
        ifname = "eth0";
        onlink = true;
        gw = bgp_next_hop;
        accept;
      }}
      reject;
    }};
  }};
}}
protocol bgp reflector {{
  local as 64512;
  neighbor {reflector} as 64512;
  multihop;
  hold time 3;
  keepalive time 1;
  connect retry time 1;
  ipv4 {{
    gateway recursive;
    import all;
    export filter {{ if krt_source = {ANNOUNCE_PROTOCOL} then accept; reject; }};
  }};
}}
"#
    )
}

/// The route reflector's configuration: iBGP to every client in `clients`, next hops kept.
pub fn reflector_config(router_id: &str, clients: &[String]) -> String {
    let mut s = format!(
        "router id {router_id};\nlog stderr all;\nprotocol device {{ scan time 1; }}\nprotocol direct {{ ipv4; }}\n"
    );
    for (i, c) in clients.iter().enumerate() {
        s += &format!(
            "protocol bgp client{i} {{\n  local as 64512;\n  neighbor {c} as 64512;\n  rr client;\n  hold time 3;\n  keepalive time 1;\n  connect retry time 1;\n  ipv4 {{ import all; export all; }};\n}}\n"
        );
    }
    s
}

impl Bird {
    /// Starts `bird -f` with `config` inside `ns`, its files under `dir`, and waits for its
    /// control socket.
    pub fn start(ns: &Netns, dir: &Path, config: &str) -> Bird {
        fs::create_dir_all(dir).expect("bird dir");
        let conf = dir.join("bird.conf");
        fs::write(&conf, config).expect("bird.conf");
        let out = fs::File::create(dir.join("bird.out")).expect("bird output");
        let child = ns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(dir.join("bird.ctl"))
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("output"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start bird (install Debian's bird2): {e}"));
        let mut bird = Bird { dir: dir.to_path_buf(), child: Some(child) };
        let start = Instant::now();
        while !dir.join("bird.ctl").exists() {
            if let Some(c) = bird.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("bird in {} exited ({status}):\n{}", ns.name, bird.log());
            }
            assert!(start.elapsed() < Duration::from_secs(10), "bird in {} not up:\n{}", ns.name, bird.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        bird
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("bird.out")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::netns::stop_child(child);
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.stop();
    }
}
