//! libFuzzer entry of the `message` target (the target is `twinfs_fuzz::targets::message`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::message::run(data));
