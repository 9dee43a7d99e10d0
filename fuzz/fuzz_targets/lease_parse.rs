//! flannel's lease key and lease value parsers (`xnet::store::flannel::{parse_lease_key,
//! Lease::parse}`): the input's first line is a key, the rest a value; with the checks of
//! `xnet::fuzz_checks::{check_lease_key, check_lease}`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (key, value) = text.split_once('\n').unwrap_or((&text, ""));
    xnet::fuzz_checks::check_lease_key(key);
    xnet::fuzz_checks::check_lease(value);
});
