//! flannel's network config parser (`xnet::store::flannel::NetworkConfig::parse`) on any text,
//! with the checks of `xnet::fuzz_checks::check_network_config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xnet::fuzz_checks::check_network_config(&String::from_utf8_lossy(data));
});
