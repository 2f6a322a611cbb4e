//! libFuzzer entry of the `message_arb` target (the target is `twinfs_fuzz::targets::message_arb`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::message_arb::run(data));
