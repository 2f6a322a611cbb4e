//! libFuzzer entry of the `peer_logstore` target (the target is `twinfs_fuzz::targets::peer_logstore`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::peer_logstore::run(data));
