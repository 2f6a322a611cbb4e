//! The handshake's messages, raw: a plaintext frame body as `HandshakeMsg`
//! (what anyone who connects can send), the decrypted payload of the last
//! Noise message as `Announce`, and the first sealed frame's plaintext as
//! `Admission`. Checked: whatever decodes re-encodes and decodes to the same
//! value; errors are `Malformed`, never a panic.

use twinfs_replicate::codec;
use twinfs_replicate::handshake::{Admission, Announce, HandshakeMsg};
use twinfs_replicate::FrameFault;

/// Entry point.
pub fn run(data: &[u8]) {
    round_trip::<HandshakeMsg>(data);
    round_trip::<Announce>(data);
    round_trip::<Admission>(data);
}

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    match codec::decode::<T>(data) {
        Ok(v) => {
            let encoded = codec::encode(&v).expect("a decoded value encodes");
            let again: T = codec::decode(&encoded).expect("a re-encoded value decodes");
            assert_eq!(again, v);
        }
        Err(FrameFault::Malformed(_)) => {}
        Err(other) => panic!("codec::decode reported {other:?}"),
    }
}
