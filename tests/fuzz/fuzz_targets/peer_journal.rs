//! libFuzzer entry of the `peer_journal` target (the target is `twinfs_fuzz::targets::peer_journal`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::peer_journal::run(data));
