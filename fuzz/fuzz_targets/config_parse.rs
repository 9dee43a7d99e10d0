//! The config file parser (`xnet::config::Config::parse`) on any text (invalid UTF-8 replaced, as
//! a `&str` API sees it), with the checks of `xnet::fuzz_checks::check_config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xnet::fuzz_checks::check_config(&String::from_utf8_lossy(data));
});
