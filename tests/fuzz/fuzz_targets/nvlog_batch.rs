//! libFuzzer entry of the `nvlog_batch` target (the target is `twinfs_fuzz::targets::nvlog_batch`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::nvlog_batch::run(data));
