//! libFuzzer entry of the `peer_state` target (the target is `twinfs_fuzz::targets::peer_state`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::peer_state::run(data));
