//! libFuzzer entry of the `superblock` target (the target is `twinfs_fuzz::targets::superblock`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::superblock::run(data));
