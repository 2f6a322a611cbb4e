//! libFuzzer entry of the `nvlog_scan` target (the target is `twinfs_fuzz::targets::nvlog_scan`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::nvlog_scan::run(data));
