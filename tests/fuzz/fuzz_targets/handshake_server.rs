//! libFuzzer entry of the `handshake_server` target (the target is `twinfs_fuzz::targets::handshake_server`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::handshake_server::run(data));
