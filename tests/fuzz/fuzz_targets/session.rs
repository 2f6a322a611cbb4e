//! libFuzzer entry of the `session` target (the target is `twinfs_fuzz::targets::session`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::session::run(data));
