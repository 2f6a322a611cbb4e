//! libFuzzer entry of the `relay_control` target (the target is `twinfs_fuzz::targets::relay_control`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::relay_control::run(data));
