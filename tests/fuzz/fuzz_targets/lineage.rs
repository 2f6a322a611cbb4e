//! libFuzzer entry of the `lineage` target (the target is `twinfs_fuzz::targets::lineage`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::lineage::run(data));
