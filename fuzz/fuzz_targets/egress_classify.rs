//! The egress decision (`xnet_common::egress::classify`) on any frame, checked against the
//! independent reference and the padding invariant (`xnet_common::oracle`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xnet_common::oracle::check_egress(data);
});
