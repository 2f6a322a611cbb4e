//! libFuzzer entry of the `nvlog_record` target (the target is `twinfs_fuzz::targets::nvlog_record`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::nvlog_record::run(data));
