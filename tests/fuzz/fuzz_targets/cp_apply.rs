//! libFuzzer entry of the `cp_apply` target (the target is `twinfs_fuzz::targets::cp_apply`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::cp_apply::run(data));
