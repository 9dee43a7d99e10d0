//! The xnet agent and CLI as a library: the `xnet` binary is a thin `main` over it, and the
//! integration tests use its types.

pub mod agent;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod etcd_agent;
pub mod etcd_store;
pub mod flannel;
pub mod host;
pub mod inspect;
pub mod metrics;
pub mod report;
pub mod subnet;
pub mod subnet_env;

/// The compiled eBPF object (built by build.rs from `xnet-ebpf`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xnet"));

/// Program names in [`EBPF_OBJECT`].
pub mod programs {
    pub const TC_EGRESS: &str = "xnet_tc_egress";
    pub const TC_INGRESS: &str = "xnet_tc_ingress";
    pub const XDP_INGRESS: &str = "xnet_xdp_ingress";
}
