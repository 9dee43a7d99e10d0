//! Encapsulation: one module per wire format, plus the hand-off to the underlay.

pub mod vxlan;

use aya_ebpf::{bindings::TC_ACT_REDIRECT, helpers::bpf_redirect_neigh};
use xnet_common::{maps::DatapathConfig, stats::Outcome};

/// Sends the encapsulated packet out of the underlay interface. The kernel routes the outer
/// destination and fills in the outer Ethernet addresses from its neighbour table.
#[inline(always)]
pub fn redirect_to_underlay(cfg: &DatapathConfig) -> Result<i32, Outcome> {
    // SAFETY: a null params pointer with length 0 asks the kernel to do the FIB lookup itself.
    let ret = unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) };
    if ret == TC_ACT_REDIRECT as i64 { Ok(ret as i32) } else { Err(Outcome::DropRedirectFailed) }
}
