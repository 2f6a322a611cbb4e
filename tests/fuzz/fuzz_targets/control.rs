//! libFuzzer entry of the `control` target (the target is `twinfs_fuzz::targets::control`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::control::run(data));
