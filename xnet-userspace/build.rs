//! Builds the eBPF programs (crate `xnet-ebpf`, nightly, bpfel-unknown-none) into OUT_DIR/xnet, so
//! a plain `cargo build` of the agent embeds an up-to-date object.
fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ebpf_dir = root.join("xnet-ebpf");
    let common_dir = root.join("xnet-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir = ebpf_dir.to_str().expect("workspace path is UTF-8");
    // aya-build relays every line the nested cargo prints as a build warning: keep it to errors.
    // SAFETY: the build script is single-threaded here; nothing reads the environment concurrently.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package { name: "xnet-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
