//! Types and packet logic shared by xnet's eBPF programs and its agent.
//!
//! Everything here is `no_std`, `#[repr(C)]` and free of implicit padding, so the same bytes mean
//! the same thing in the kernel, in the agent and in `bpftool map dump`. The packet decisions
//! ([`egress`], [`decap`]) are plain Rust over the [`packet::Packet`] trait: the eBPF programs run
//! them over the live packet, and `cargo test` runs them over byte slices.
#![no_std]

pub mod csum;
pub mod decap;
pub mod egress;
pub mod icmp;
pub mod maps;
#[cfg(any(test, feature = "mutate"))]
pub mod mutate;
#[cfg(any(test, feature = "mutate"))]
pub mod oracle;
pub mod outer;
pub mod packet;
pub mod stats;
pub mod wire;

#[cfg(test)]
mod fuzz_tests;

#[cfg(any(test, feature = "mutate"))]
extern crate alloc;
#[cfg(any(test, feature = "mutate"))]
extern crate std;
