//! libFuzzer entry of the `peer_status` target (the target is `twinfs_fuzz::targets::peer_status`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::peer_status::run(data));
