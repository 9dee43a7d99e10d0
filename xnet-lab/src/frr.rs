//! FRR (Debian `frr`) in a lab namespace: zebra and ospfd in the foreground, with their own
//! config, pid, zserv and vty socket paths under a directory of the lab, so that nothing touches
//! the machine's own FRR (if any) or its routes. The daemons are stopped on drop, also after a
//! panic.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// Where Debian installs the FRR daemons.
pub const FRR_DIR: &str = "/usr/lib/frr";

/// zebra and ospfd running in one namespace.
pub struct Frr {
    pub dir: PathBuf,
    /// zebra first: it is stopped last.
    children: Vec<(String, Child)>,
}

/// An OSPF speaker's settings.
pub struct OspfConfig<'a> {
    pub router_id: &'a str,
    /// The networks whose interfaces speak OSPF (area 0).
    pub networks: &'a [&'a str],
    /// Redistribute the kernel and connected routes inside `overlay` (xnet's announcement, the
    /// container bridge's route).
    pub overlay: Option<&'a str>,
}

impl OspfConfig<'_> {
    /// ospfd's configuration: OSPF on every interface of `networks`, with hello 1 s and dead 4 s
    /// (a shared segment waits the dead interval before it elects a designated router), and the
    /// kernel routes of the overlay redistributed: the configuration the README documents.
    pub fn render(&self) -> String {
        let mut s = String::from("hostname lab\n!\n");
        // The interfaces of a lab host or router: eth0 (hosts), r0 and r1 (the router).
        for iface in ["eth0", "r0", "r1"] {
            s += &format!("interface {iface}\n ip ospf hello-interval 1\n ip ospf dead-interval 4\n!\n");
        }
        if let Some(overlay) = self.overlay {
            s += &format!(
                "ip prefix-list XNET seq 5 permit {overlay} ge 17 le 30\n!\nroute-map XNET permit 10\n match ip address prefix-list XNET\n!\n"
            );
        }
        s += &format!("router ospf\n ospf router-id {}\n timers throttle spf 0 50 500\n", self.router_id);
        for n in self.networks {
            s += &format!(" network {n} area 0\n");
        }
        if self.overlay.is_some() {
            // xnet's announcement, and the container bridge's own route: zebra prefers a
            // connected route to a kernel one for the same prefix and redistributes only what it
            // prefers, so with the bridge up the announcement travels as the connected route.
            s += " redistribute kernel route-map XNET\n redistribute connected route-map XNET\n";
        }
        s + "!\n"
    }
}

impl Frr {
    /// Starts zebra, then ospfd with `ospfd_conf`, inside `ns`, with their files under `dir`.
    pub fn start_ospf(ns: &Netns, dir: &Path, ospfd_conf: &str) -> Frr {
        fs::create_dir_all(dir).expect("frr dir");
        fs::write(dir.join("zebra.conf"), "hostname lab\n!\n").expect("zebra.conf");
        fs::write(dir.join("ospfd.conf"), ospfd_conf).expect("ospfd.conf");
        // The daemons drop their privileges to the frr user, which must write there.
        let _ = Command::new("chown").args(["-R", "frr:frr"]).arg(dir).status();
        let mut frr = Frr { dir: dir.to_path_buf(), children: Vec::new() };
        frr.spawn(ns, "zebra");
        let zserv = dir.join("zserv.api");
        let start = Instant::now();
        while !zserv.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "zebra in {} made no zserv socket:\n{}",
                ns.name,
                frr.log("zebra")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        frr.spawn(ns, "ospfd");
        frr
    }

    fn spawn(&mut self, ns: &Netns, daemon: &str) {
        let d = &self.dir;
        let out = fs::File::create(d.join(format!("{daemon}.out"))).expect("daemon output");
        let child = ns
            .command(&format!("{FRR_DIR}/{daemon}"))
            .arg("-N")
            .arg(&ns.name)
            .arg("-z")
            .arg(d.join("zserv.api"))
            .arg("-i")
            .arg(d.join(format!("{daemon}.pid")))
            .arg("--vty_socket")
            .arg(d)
            .arg("-f")
            .arg(d.join(format!("{daemon}.conf")))
            .arg("--log")
            .arg(format!("file:{}", d.join(format!("{daemon}.log")).display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("output"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {FRR_DIR}/{daemon} (install Debian's frr): {e}"));
        self.children.push((daemon.to_string(), child));
    }

    /// A daemon's log.
    pub fn log(&self, daemon: &str) -> String {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        read(&format!("{daemon}.out")) + &read(&format!("{daemon}.log"))
    }

    /// Stops the daemons (ospfd, then zebra, which removes its routes from the kernel).
    pub fn stop(&mut self) {
        while let Some((_, child)) = self.children.pop() {
            crate::netns::stop_child(child);
        }
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        self.stop();
    }
}
