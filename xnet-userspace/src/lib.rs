//! The xnet agent and CLI as a library: the `xnet` binary is a thin `main` over it, and the
//! integration tests use its types.
//!
//! Data flows one way: [`config`] (the validated file and flags, immutable) -> [`store`] (the
//! static file or etcd: the overlay, this host's subnet, the peers and their changes) -> [`plan`]
//! (pure: host facts and store state -> the wanted datapath) -> [`datapath`] (the one owner of the
//! maps, links and pins) -> the programs. [`agent`] is the one loop that drives it; nothing imports
//! the agent.

pub mod agent;
pub mod big_tcp;
pub mod cidr;
pub mod cli;
pub mod clock;
pub mod config;
pub mod containers;
pub mod datapath;
pub mod host;
pub mod inspect;
pub mod mac;
pub mod metrics;
pub mod netlink;
pub mod plan;
pub mod report;
pub mod store;
pub mod subnet_env;
pub mod systemd;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_checks;
