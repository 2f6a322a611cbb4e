//! A session message's plaintext (`Message::decode`: MessagePack, then the
//! limits), raw bytes: what an authenticated but buggy or hostile source or
//! peer could send. Checked: whatever decodes also validates, re-encodes and
//! decodes to the same message; an error is `Malformed` or `Limit`, never a
//! panic; `TransferLz4` decompresses or fails cleanly.

use twinfs_replicate::message::decompress_transfer;
use twinfs_replicate::{FrameFault, Message};

/// Entry point.
pub fn run(data: &[u8]) {
    check(data);
}

/// The checks, shared with `message_arb`.
pub fn check(data: &[u8]) {
    match Message::decode(data) {
        Ok(msg) => {
            assert_eq!(msg.validate(), Ok(()));
            let encoded = msg.encode().expect("a decoded message encodes");
            let again = Message::decode(&encoded).expect("a re-encoded message decodes");
            assert_eq!(again, msg);
            let _ = msg.kind();
            if let Ok(Message::Transfer { id, batch }) = decompress_transfer(msg.clone()) {
                if let Message::TransferLz4 {
                    id: lz_id, raw_len, ..
                } = msg
                {
                    assert_eq!(id, lz_id);
                    assert_eq!(batch.len(), raw_len as usize);
                }
            }
        }
        Err(FrameFault::Malformed(_) | FrameFault::Limit(_)) => {}
        Err(other) => panic!("Message::decode reported {other:?}"),
    }
}
