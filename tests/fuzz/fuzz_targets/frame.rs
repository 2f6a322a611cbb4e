//! libFuzzer entry of the `frame` target (the target is `twinfs_fuzz::targets::frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::frame::run(data));
