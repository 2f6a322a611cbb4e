//! libFuzzer entry of the `lz4` target (the target is `twinfs_fuzz::targets::lz4`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::lz4::run(data));
