//! The ingress decision (`xnet_common::decap::classify`) on any frame: the first byte picks the
//! CONFIG (`xnet_common::oracle::config`: GRE keyed or not, behind a NAT or not, untunnelled
//! traffic to containers open or not, which tunnel formats are in use), the rest is the frame.
//! Checked against the independent reference and the padding and length invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&which, frame)) = data.split_first() {
        xnet_common::oracle::check_decap(frame, which);
    }
});
