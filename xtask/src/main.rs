//! `cargo xtask <command>`: set-up, build, run, demo and test for xnet.
//!
//! `demo` and `test` first install whatever this machine lacks (Debian packages, the nightly
//! rust-src component, bpf-linker built against the nightly toolchain's own LLVM, a bpffs mount);
//! every step checks before it acts, so a second run goes straight to the work.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing xnet needs, if missing.
    Setup,
    /// Build the agent (and the eBPF programs inside it) in release mode, then run it with the given
    /// arguments, e.g. `cargo xtask run -- run --config /etc/xnet/xnet.toml`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show xnet working: simulated hosts with containers on this machine, all pairs pinging.
    Demo {
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        #[arg(long, default_value_t = 2)]
        containers: usize,
        /// vxlan, udp, gre or direct.
        #[arg(long, default_value = "vxlan")]
        backend: String,
        /// file (a config file per host) or etcd (a real etcd, flannel's schema).
        #[arg(long, default_value = "file")]
        store: String,
    },
    /// Measure xnet against plain routing, the kernel's vxlan and a flannel-udp-style relay on the
    /// lab; per-packet program cost; scale. Writes target/bench/bench.{md,json,svg}.
    Bench {
        /// Runs per mode (rounds, each taking every mode once in a rotated order).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// In how many of the rounds the 64-byte UDP rate and the ping-pong latency are measured
        /// too.
        #[arg(long, default_value_t = 3)]
        udp_runs: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// 4-stream runs back to back in one lab for plain routing and each xnet backend, after the
        /// rounds (0 leaves them out).
        #[arg(long, default_value_t = 10)]
        back_to_back: usize,
        /// A short version: one 1-second run per mode (about a minute).
        #[arg(long)]
        quick: bool,
        /// Only these traffic modes, comma-separated (see bench.json; plain routing always runs).
        #[arg(long)]
        modes: Option<String>,
    },
    /// Coverage-guided fuzzing (cargo-fuzz, libFuzzer, nightly) of the packet classifiers and the
    /// config, network-config and lease parsers; prints the executions per target. Installs
    /// cargo-fuzz if missing. (The fixed-seed slice runs in `test`.)
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (default: all of them).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(FUZZ_TARGETS))]
        target: Option<String>,
    },
    /// Format and lint checks, then every test: unit, BPF_PROG_TEST_RUN and lab tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Debian packages the lab, the tests and the demo use.
/// (protobuf-compiler, libprotobuf-dev: the etcd client's build runs protoc, which needs the
/// well-known .proto files; etcd-server, etcd-client: a real etcd
/// for the tests; prometheus: for promtool, which checks the metrics output; python3-scapy: the
/// independent decoder of captured GRE and UDP packets; docker.io, busybox-static: a real dockerd per
/// simulated host and a tiny image made with `docker import`; containernetworking-plugins: the
/// standard `bridge` and `host-local` plugins that xnet-cni delegates to; iptables: what dockerd and
/// the bridge plugin program NAT with.)
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "bpftool",
    "procps",
    "iperf3",
    "protobuf-compiler",
    "libprotobuf-dev",
    "etcd-server",
    "etcd-client",
    "prometheus",
    "python3-scapy",
    "docker.io",
    "busybox-static",
    "containernetworking-plugins",
    "iptables",
    // The lab's wire that behaves like NICs' (no GSO where the switch sends, GRO where hosts receive).
    "ethtool",
    // Routing daemons for the routes store's lab tests; the lab runs its own per namespace.
    "frr",
    "bird2",
];
/// The system services that `frr` and `bird2` install and Debian starts on install: the lab runs
/// its own daemons in its namespaces, and a system-wide one would touch the machine's routes.
const DAEMON_SERVICES: &[(&str, &str)] = &[("frr", "frr"), ("bird2", "bird")];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The fuzz targets in fuzz/ (fuzz/Cargo.toml), each with its libFuzzer dictionary in fuzz/dicts.
const FUZZ_TARGETS: [&str; 5] =
    ["decap_classify", "egress_classify", "config_parse", "network_config_parse", "lease_parse"];

fn fuzz_dictionary(target: &str) -> &'static str {
    match target {
        "decap_classify" | "egress_classify" => "frames.dict",
        "config_parse" => "toml.dict",
        "network_config_parse" => "json.dict",
        _ => "lease.dict",
    }
}
/// Cargo's selection of the host crates: the whole workspace, the integration tests (xnet-tests)
/// included although they are not a default member, but not the eBPF programs, which build for
/// bpfel-unknown-none (and are checked apart).
const HOST_CRATES: &[&str] = &["--workspace", "--exclude", "xnet-ebpf"];

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Setup => setup(),
        Cmd::Run { args } => {
            setup()?;
            cargo(&["build", "--release", "-p", "xnet-userspace"])?;
            let bin = root.join("target/release/xnet");
            let mut cmd = if is_root() {
                Command::new(&bin)
            } else {
                let mut c = Command::new("sudo");
                c.arg("-E").arg(&bin);
                c
            };
            let status = cmd.args(&args).status().context("running xnet")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Demo { hosts, containers, backend, store } => {
            setup()?;
            require_root("the demo creates network namespaces and loads eBPF programs")?;
            cargo(&["build", "-p", "xnet-userspace", "-p", "xnet-lab", "--bins"])?;
            let status = Command::new(root.join("target/debug/xnet-demo"))
                .args(["--hosts", &hosts.to_string(), "--containers", &containers.to_string()])
                .args(["--backend", &backend, "--store", &store])
                .env("XNET_BIN", root.join("target/debug/xnet"))
                .status()
                .context("running the demo")?;
            if !status.success() {
                bail!("the demo failed ({status})");
            }
            Ok(())
        }
        Cmd::Bench { runs, udp_runs, seconds, back_to_back, quick, modes } => {
            setup()?;
            require_root("the benchmark creates network namespaces and loads eBPF programs")?;
            cargo(&["build", "--release", "-p", "xnet-userspace", "-p", "xnet-lab", "--bins"])?;
            let status = Command::new(root.join("target/release/xnet-bench"))
                .args(["--runs", &runs.to_string(), "--seconds", &seconds.to_string()])
                .args(["--udp-runs", &udp_runs.to_string(), "--back-to-back", &back_to_back.to_string()])
                .args(quick.then_some("--quick"))
                .args(modes.iter().flat_map(|m| ["--modes", m.as_str()]))
                .args(["--out".as_ref(), root.join("target/bench").as_os_str()])
                .env("XNET_BIN", root.join("target/release/xnet"))
                .status()
                .context("running the benchmark")?;
            if !status.success() {
                bail!("the benchmark failed ({status})");
            }
            Ok(())
        }
        Cmd::Fuzz { seconds, target } => {
            setup()?;
            cargo_fuzz()?;
            let targets: Vec<&str> = match &target {
                Some(t) => vec![t.as_str()],
                None => FUZZ_TARGETS.to_vec(),
            };
            let mut results = Vec::new();
            for t in targets {
                step(&format!("fuzz {t} for {seconds} s"));
                results.push((t, fuzz(&root, t, seconds)?));
            }
            eprintln!("\n{:<22} {:>14} {:>9} {:>10}  result", "target", "executions", "seconds", "exec/s");
            let mut failed = Vec::new();
            for (t, r) in &results {
                eprintln!(
                    "{t:<22} {:>14} {:>9} {:>10}  {}",
                    r.executions,
                    r.seconds,
                    r.executions / r.seconds.max(1),
                    if r.ok { "ok" } else { "FAILED (see fuzz/artifacts)" }
                );
                if !r.ok {
                    failed.push(*t);
                }
            }
            let total: u64 = results.iter().map(|(_, r)| r.executions).sum();
            eprintln!("{:<22} {total:>14}", "total");
            if !failed.is_empty() {
                bail!("fuzzing found failures in {}", failed.join(", "));
            }
            Ok(())
        }
        Cmd::Test { args } => {
            setup()?;
            require_root("the tests create network namespaces and load eBPF programs")?;
            step("cargo fmt --check");
            cargo(&["fmt", "--all", "--check"])?;
            // fuzz/ is a workspace of its own (nightly): rustfmt needs no build to check it.
            let fuzz_manifest = root.join("fuzz/Cargo.toml");
            cargo(&["fmt", "--all", "--check", "--manifest-path", &fuzz_manifest.to_string_lossy()])?;
            step("cargo clippy (host crates)");
            cargo(&[&["clippy"], HOST_CRATES, &["--all-targets", "--", "-D", "warnings"]].concat())?;
            step("cargo clippy (eBPF crate, bpfel-unknown-none)");
            cargo(&[
                "+nightly",
                "clippy",
                "-p",
                "xnet-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])?;
            // The lab runs these binaries: the agent (XNET_BIN) and the flannel-udp relay (found next
            // to the test executables). `cargo test` builds only its own package's binaries.
            step("build the agent and the lab's binaries");
            cargo(&["build", "-p", "xnet-userspace", "-p", "xnet-lab", "-p", "xnet-cni", "--bins"])?;
            step("cargo test (unit, BPF_PROG_TEST_RUN and lab tests)");
            let mut test_args = [&["test"], HOST_CRATES, &["--all-targets"]].concat();
            test_args.extend(args.iter().map(String::as_str));
            let status = Command::new("cargo")
                .args(&test_args)
                .env("XNET_BIN", root.join("target/debug/xnet"))
                .status()?;
            if !status.success() {
                bail!("tests failed");
            }
            Ok(())
        }
    }
}

/// The checkout `cargo xtask` was run in: `cargo run` names it in CARGO_MANIFEST_DIR at run time.
/// The path compiled in is only the fallback (the binary run by hand), since a build copied from
/// another checkout would otherwise work on that one.
fn workspace_root() -> PathBuf {
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir.parent().expect("xtask lives in the workspace").to_path_buf()
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("cargo").args(args).status().context("running cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).map(|s| s.trim() == "0").unwrap_or(false)
}

fn require_root(why: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("run this as root: {why} (e.g. `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

/// `sudo` in front of commands that need root, when we are not root.
fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

fn setup() -> anyhow::Result<()> {
    step("set-up (installs only what is missing)");
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !run(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| s.contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        eprintln!("    apt packages: present ({})", APT_PACKAGES.join(", "));
        return Ok(());
    }
    eprintln!("    apt packages: installing {}", missing.join(", "));
    run(privileged("apt-get").args(["update", "-qq"]))?;
    run(privileged("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for (package, service) in DAEMON_SERVICES {
        if missing.contains(package) {
            stop_system_service(service);
        }
    }
    Ok(())
}

/// Stops and disables the system service `service` that a package install may have started
/// (systemd, or the init script where there is no systemd). Nothing to do is not an error.
fn stop_system_service(service: &str) {
    let quiet = |c: &mut Command| {
        let _ = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status();
    };
    if Path::new("/run/systemd/system").exists() {
        quiet(privileged("systemctl").args(["disable", "--now", service]));
    } else if Path::new("/etc/init.d").join(service).exists() {
        quiet(privileged(&format!("/etc/init.d/{service}")).arg("stop"));
        quiet(privileged("update-rc.d").args([service, "disable"]));
    }
    eprintln!("    {service}: system service stopped and disabled (the lab runs its own daemons)");
}

fn rust_src() -> anyhow::Result<()> {
    let installed =
        run(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .context(
                "the `nightly` toolchain is needed for the eBPF programs (rustup toolchain install nightly)",
            )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("    rust-src (nightly): present");
        return Ok(());
    }
    eprintln!("    rust-src (nightly): installing");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    Ok(())
}

/// bpf-linker, built against the LLVM inside the nightly toolchain (no system LLVM needed), so
/// that it reads the bitcode that toolchain's rustc writes. The build wants an LLVM prefix:
/// `$CARGO_HOME/bpf-linker-llvm`, whose lib/ holds `libLLVM.so` (what the build links against)
/// and a link named like the library's SONAME (`libLLVM.so.22.1-rust-...`), both pointing at the
/// toolchain's library; the installed binary finds it there at run time through its rpath.
fn bpf_linker() -> anyhow::Result<()> {
    if Command::new("bpf-linker").arg("--version").output().map(|o| o.status.success()).unwrap_or(false) {
        eprintln!("    bpf-linker: present");
        return Ok(());
    }
    let sysroot = PathBuf::from(run(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim());
    let llvm = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .context("the nightly toolchain ships no libLLVM.so.*")?;
    let major = llvm_major(&llvm).with_context(|| format!("no LLVM version in {llvm}"))?;
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    let prefix = cargo_home.join("bpf-linker-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&llvm), &link)?;
    }
    eprintln!(
        "    bpf-linker: building {BPF_LINKER_VERSION} against the nightly toolchain's LLVM {major} (about a minute)"
    );
    let status = Command::new("cargo")
        .args(["+nightly", "install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .status()?;
    if !status.success() {
        bail!("building bpf-linker failed ({status})");
    }
    Ok(())
}

/// cargo-fuzz, the libFuzzer driver (its targets build with the nightly toolchain).
fn cargo_fuzz() -> anyhow::Result<()> {
    if Command::new("cargo").args(["fuzz", "--version"]).output().map(|o| o.status.success()).unwrap_or(false)
    {
        eprintln!("    cargo-fuzz: present");
        return Ok(());
    }
    eprintln!("    cargo-fuzz: installing (about a minute)");
    cargo(&["install", "cargo-fuzz", "--locked"])
}

/// What one target's run did.
struct FuzzRun {
    executions: u64,
    seconds: u64,
    /// No crash, no failed check, no timeout or out-of-memory.
    ok: bool,
}

/// Runs fuzz target `target` for `seconds` from its committed seeds (fuzz/seeds/<target>), growing
/// its corpus in fuzz/corpus/<target>; libFuzzer's progress lines are shown, its final statistics
/// read.
fn fuzz(root: &Path, target: &str, seconds: u64) -> anyhow::Result<FuzzRun> {
    use std::io::{BufRead as _, BufReader};
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let dict = root.join("fuzz/dicts").join(fuzz_dictionary(target));
    // Debug assertions on (`-a`): an arithmetic overflow is a finding too. No sanitizer: the code
    // under test is safe Rust but for the packet view's header cast, whose bounds the checks
    // cover, and AddressSanitizer would halve the executions.
    let mut child = Command::new("cargo")
        .args(["+nightly", "fuzz", "run", "--sanitizer", "none", "--debug-assertions", target])
        .arg(&corpus)
        .arg(root.join("fuzz/seeds").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-dict={}", dict.display()))
        .arg("-print_final_stats=1")
        .current_dir(root)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running cargo fuzz")?;
    let mut executions = None;
    // libFuzzer's own count when it finishes ("Done"), else the time since it started ("INFO:
    // Seed:", after the build): a failure stops it early.
    let mut elapsed = None;
    let mut started = None;
    // From a failed check on, everything: the panic message and the failing input.
    let mut failing = false;
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line?;
        if line.starts_with("INFO: Seed:") {
            started = Some(std::time::Instant::now());
        }
        // `stat::number_of_executed_units: 123456`, and `Done 123456 runs in 60 second(s)`.
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            executions = n.trim().parse().ok();
        }
        if let Some(rest) = line.strip_prefix("Done ") {
            let mut words = rest.split_whitespace();
            if let (Some(runs), Some(secs)) = (words.next(), words.nth(2)) {
                executions = executions.or(runs.parse().ok());
                elapsed = secs.parse().ok();
            }
        }
        let shown =
            ["pulse", "DONE", "Done", "ERROR", "panicked", "SUMMARY", "Test unit written", "INFO: Loaded"];
        failing |= line.contains("panicked") || line.contains("ERROR: libFuzzer");
        if failing || line.starts_with("error") || shown.iter().any(|s| line.contains(s)) {
            eprintln!("    {line}");
        }
    }
    let status = child.wait()?;
    let seconds = elapsed.or(started.map(|t| t.elapsed().as_secs())).unwrap_or(0);
    Ok(FuzzRun { executions: executions.unwrap_or(0), seconds, ok: status.success() })
}

fn bpffs() -> anyhow::Result<()> {
    let fstype = run(Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"])).unwrap_or_default();
    if fstype.trim() == "bpf_fs" {
        eprintln!("    bpffs: mounted on /sys/fs/bpf");
        return Ok(());
    }
    eprintln!("    bpffs: mounting on /sys/fs/bpf");
    run(privileged("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    Ok(())
}

/// The LLVM major version in the name of the toolchain's library: `libLLVM.so.22.1-rust-1.97.0-nightly`
/// -> `22` (bpf-linker's cargo feature is then `llvm-22`).
fn llvm_major(library: &str) -> Option<String> {
    let major: String =
        library.strip_prefix("libLLVM.so.")?.chars().take_while(char::is_ascii_digit).collect();
    (!major.is_empty()).then_some(major)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_llvm_major_version_comes_from_the_library_name() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly").as_deref(), Some("22"));
        assert_eq!(llvm_major("libLLVM.so.9").as_deref(), Some("9"));
        assert_eq!(llvm_major("libLLVM.so.rust"), None);
        assert_eq!(llvm_major("libLLVM-22.so"), None);
    }
}
