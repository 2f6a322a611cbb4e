//! libFuzzer entry of the `handshake_msg` target (the target is `twinfs_fuzz::targets::handshake_msg`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::handshake_msg::run(data));
