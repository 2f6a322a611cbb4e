//! libFuzzer entry of the `btree` target (the target is `twinfs_fuzz::targets::btree`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::btree::run(data));
