//! libFuzzer entry of the `items` target (the target is `twinfs_fuzz::targets::items`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::items::run(data));
