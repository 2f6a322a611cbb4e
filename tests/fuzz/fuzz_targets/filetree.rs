//! libFuzzer entry of the `filetree` target (the target is `twinfs_fuzz::targets::filetree`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::filetree::run(data));
