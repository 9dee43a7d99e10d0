//! The one place that counts packets: every entry point ends here with the packet's outcome.

use xnet_common::{
    maps::Counter,
    stats::{self, Direction, Outcome},
};

use crate::STATS;

#[inline(always)]
pub fn count(direction: Direction, outcome: Outcome, bytes: u32) {
    if let Some(counter) = STATS.get_ptr_mut(stats::index(direction, outcome)) {
        // SAFETY: per-CPU array slot for this CPU; programs do not migrate between CPUs while they
        // run, so nothing else writes this slot concurrently. Userspace only reads it.
        let counter: &mut Counter = unsafe { &mut *counter };
        counter.count(bytes as u64);
    }
}
