//! lz4 payloads of `TransferLz4` (`decompress_transfer`), raw: the first four
//! input bytes are the claimed `raw_len`, the rest the compressed data.
//! Checked: decompression either fails cleanly or yields exactly `raw_len`
//! bytes; and the sender's compressor, run on the same bytes, round-trips.

use twinfs_replicate::message::{decompress_transfer, TransferCompressor, MAX_BATCH_BYTES};
use twinfs_replicate::Message;

/// Largest `raw_len` tried: decompression allocates it up front, and a
/// fuzzer asking for 16 MiB on every run would measure the allocator.
const RAW_LEN_CAP: u32 = 1 << 20;

/// Entry point.
pub fn run(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let (len, payload) = data.split_at(4);
    let claimed = u32::from_le_bytes(len.try_into().expect("4 bytes"));
    // Keep the claim's low bits and its size class: over the protocol's
    // limit stays over it, the rest is capped.
    let raw_len = if claimed as usize > MAX_BATCH_BYTES {
        claimed
    } else {
        claimed % RAW_LEN_CAP
    };
    let msg = Message::TransferLz4 {
        id: 1,
        raw_len,
        data: payload.to_vec(),
    };
    match decompress_transfer(msg) {
        Ok(Message::Transfer { id, batch }) => {
            assert_eq!(id, 1);
            assert_eq!(batch.len(), raw_len as usize);
        }
        Ok(other) => panic!("decompress_transfer returned {other:?}"),
        Err(_) => assert!(
            raw_len as usize > MAX_BATCH_BYTES
                || lz4_flex::block::decompress(payload, raw_len as usize)
                    .map_or(true, |b| b.len() != raw_len as usize),
            "decompress_transfer refused a payload that decompresses to raw_len"
        ),
    }

    // The sender's side: what it compresses comes back whole.
    let mut compressor = TransferCompressor::default();
    if let Some(packed) = compressor.compress(payload) {
        assert!(
            packed.len() * 8 < payload.len() * 7,
            "compressed only when it pays"
        );
        let back = decompress_transfer(Message::TransferLz4 {
            id: 2,
            raw_len: payload.len() as u32,
            data: packed,
        })
        .expect("what the compressor made decompresses");
        assert_eq!(
            back,
            Message::Transfer {
                id: 2,
                batch: payload.to_vec()
            }
        );
    }
}
