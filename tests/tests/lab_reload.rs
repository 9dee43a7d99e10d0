//! SIGHUP reads the static file's peers again: a peer removed and added back without a restart,
//! and a file that may not be taken (it does not load, or it changes more than the peers) refused
//! whole, the running peers kept.

use std::{collections::BTreeSet, time::Duration};

use xnet_lab::lab::{Lab, LabSpec, wait_for};

fn subnets(lab: &Lab, i: usize) -> BTreeSet<String> {
    lab.routes(i).into_iter().map(|r| r.subnet).collect()
}

fn hangup(lab: &Lab, i: usize) {
    let pid = lab.agent_pid(i).expect("agent runs");
    // SAFETY: kill(2) on the lab's own child process, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0, "SIGHUP to {pid}");
}

#[test]
fn sighup_reads_the_peers_again_and_refuses_what_needs_a_restart() {
    let lab = Lab::start(LabSpec { hosts: 3, containers_per_host: 1, ..LabSpec::default() });
    let config = lab.host(1).config_path.clone();
    let full = lab.config_text(1);
    let (two, three) = (lab.host(2).subnet.clone(), lab.host(3).subnet.clone());
    let peer3 = format!("\n[[peer]]\nsubnet = \"{three}\"\npublic_ip = \"{}\"\n", lab.host(3).public_ip);
    assert!(full.contains(&peer3), "host 3 is a peer in:\n{full}");
    let (to2, to3) = (lab.container((2, 1)).ip, lab.container((3, 1)).ip);
    assert!(lab.ping((1, 1), to3));
    let pid = lab.agent_pid(1);
    let limit = Duration::from_secs(10);

    // Host 3 taken out of the file: its route goes, host 2's stays, and so does the traffic.
    std::fs::write(&config, full.replace(&peer3, "")).unwrap();
    hangup(&lab, 1);
    wait_for(limit, "host 3's route removed on SIGHUP", || !subnets(&lab, 1).contains(&three));
    assert_eq!(subnets(&lab, 1), BTreeSet::from([two.clone()]));
    assert!(lab.ping((1, 1), to2), "host 2 still reached");
    assert!(!lab.ping((1, 1), to3), "host 3 no longer reached from host 1");

    // Files that may not be taken: each refused with its reason, the running peers kept.
    let refusals = [
        // A peer whose subnet overlaps this host's: the file does not load.
        (
            full.clone() + "\n[[peer]]\nsubnet = \"10.244.1.0/25\"\npublic_ip = \"198.18.0.77\"\n",
            "`peer[2].subnet` = \"10.244.1.0/25\" overlaps this host's `subnet`",
        ),
        // The VNI: only a restart applies it.
        (full.replace("vni = 1", "vni = 2"), "`[backend]` changed, which only a restart applies"),
    ];
    for (n, (text, reason)) in refusals.into_iter().enumerate() {
        assert_ne!(text, full);
        std::fs::write(&config, text).unwrap();
        hangup(&lab, 1);
        wait_for(limit, &format!("refusal {}: {reason}", n + 1), || {
            let log = lab.log(1);
            log.matches("reload refused").count() == n + 1 && log.contains(reason)
        });
        assert_eq!(subnets(&lab, 1), BTreeSet::from([two.clone()]), "refusal {}: peers kept", n + 1);
    }
    assert!(lab.ping((1, 1), to2));

    // Host 3 back: route and traffic, from the same agent.
    std::fs::write(&config, &full).unwrap();
    hangup(&lab, 1);
    wait_for(limit, "host 3's route back on SIGHUP", || subnets(&lab, 1).contains(&three));
    assert_eq!(subnets(&lab, 1), BTreeSet::from([two, three]));
    assert!(lab.ping((1, 1), to3), "host 3 reached again");
    lab.tcp_transfer((1, 1), (3, 1), 1 << 20);
    assert_eq!(lab.agent_pid(1), pid, "the same agent throughout");
    assert_eq!(lab.log(1).matches("SIGHUP: peers read again").count(), 2, "{}", lab.log(1));
}
