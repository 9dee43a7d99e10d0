//! CLOCK_MONOTONIC_COARSE for every delivered packet, at the price of a jiffies read.
//!
//! The coarse clock only moves when the kernel's tick does, and so does `jiffies`. The helper that
//! reads the clock costs about 35 ns a call here; `bpf_jiffies64` is inlined by the verifier into
//! one load. So each CPU keeps the last reading with the jiffies it was made at, and reads the
//! clock again only once jiffies has moved on: at most once a tick per CPU.

use aya_ebpf::{
    btf_maps::PerCpuArray,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};

/// The last coarse clock reading of this CPU and the jiffies it was made at.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Reading {
    jiffies: u64,
    ns: u64,
}

/// One [`Reading`] per CPU.
#[btf_map]
static COARSE_CLOCK: PerCpuArray<Reading, 1> = PerCpuArray::new();

/// CLOCK_MONOTONIC_COARSE, in ns (within a tick of what `bpf_ktime_get_coarse_ns` says).
#[inline(always)]
pub fn coarse_ns() -> u64 {
    // SAFETY: plain helper call without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(reading) = COARSE_CLOCK.get_ptr_mut(0) else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs do not migrate while they run, so
    // nothing else writes it meanwhile.
    let reading = unsafe { &mut *reading };
    if reading.jiffies != jiffies {
        // SAFETY: as above.
        reading.ns = unsafe { bpf_ktime_get_coarse_ns() };
        reading.jiffies = jiffies;
    }
    reading.ns
}
