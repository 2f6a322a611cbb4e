//! libFuzzer entry of the `keys` target (the target is `twinfs_fuzz::targets::keys`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| twinfs_fuzz::targets::keys::run(data));
