//! PROTOCOL.md is the specification: its constants and sizes must match the code.

use std::collections::BTreeMap;

use twinfs_replicate::frame::{
    LEN_PREFIX_BYTES, MAX_FRAME_BYTES, MAX_HANDSHAKE_FRAME_BYTES, READ_CHUNK_BYTES,
};
use twinfs_replicate::handshake::{
    Announce, HandshakeMsg, FIRST_FRAME_TIMEOUT_MS, HANDSHAKE_NONCE_BYTES, HANDSHAKE_TIMEOUT_MS,
    MAX_NOISE_HANDSHAKE_BYTES, PROTOCOL_MAGIC, VOLUME_UUID_BYTES,
};
use twinfs_replicate::keys::KEY_BYTES;
use twinfs_replicate::message::*;
use twinfs_replicate::noise::{NOISE_AESGCM, PSK_POSITION};
use twinfs_replicate::peer::daemon::{MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED_PER_IP};
use twinfs_replicate::seal::{
    sealed_len, CHUNK_INDEX_BITS, CHUNK_PLAINTEXT_BYTES, MAX_SEQ, NOISE_MAX_MESSAGE_BYTES,
    REKEY_AFTER_BYTES, REKEY_AFTER_MS, SEALED_OVERHEAD_BYTES, SEQ_BYTES, TAG_BYTES,
};
use twinfs_replicate::secret::{MAX_SECRET_BYTES, MIN_SECRET_BITS, MIN_SECRET_BYTES};
use twinfs_replicate::{codec, PROTOCOL_VERSION};

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md"))
        .expect("PROTOCOL.md")
}

/// Rows `| `CONSTANT_NAME` | number | ... |` of the document.
fn constant_rows(doc: &str) -> BTreeMap<String, u64> {
    doc.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            if !name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                return None;
            }
            let value = cells.get(2)?.parse::<u64>().ok()?;
            Some((name.to_string(), value))
        })
        .collect()
}

/// Rows `| example | number |` of the encoded-sizes table.
fn size_rows(doc: &str) -> BTreeMap<String, usize> {
    let table = doc
        .split("Encoded sizes")
        .nth(1)
        .expect("an 'Encoded sizes' table");
    let table = table.split("## ").next().unwrap_or(table);
    table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let value = cells.get(2)?.parse::<usize>().ok()?;
            Some((cells.get(1)?.to_string(), value))
        })
        .collect()
}

fn code_constants() -> BTreeMap<String, u64> {
    let c = |name: &str, v: u64| (name.to_string(), v);
    BTreeMap::from([
        c("PROTOCOL_VERSION", PROTOCOL_VERSION.into()),
        c("LEN_PREFIX_BYTES", LEN_PREFIX_BYTES as u64),
        c("MAX_FRAME_BYTES", MAX_FRAME_BYTES as u64),
        c(
            "MAX_HANDSHAKE_FRAME_BYTES",
            MAX_HANDSHAKE_FRAME_BYTES as u64,
        ),
        c("READ_CHUNK_BYTES", READ_CHUNK_BYTES as u64),
        c("SEQ_BYTES", SEQ_BYTES as u64),
        c("TAG_BYTES", TAG_BYTES as u64),
        c("SEALED_OVERHEAD_BYTES", SEALED_OVERHEAD_BYTES as u64),
        c("NOISE_MAX_MESSAGE_BYTES", NOISE_MAX_MESSAGE_BYTES as u64),
        c("CHUNK_PLAINTEXT_BYTES", CHUNK_PLAINTEXT_BYTES as u64),
        c("CHUNK_INDEX_BITS", CHUNK_INDEX_BITS.into()),
        c("MAX_SEQ", MAX_SEQ),
        c("REKEY_AFTER_BYTES", REKEY_AFTER_BYTES),
        c("REKEY_AFTER_MS", REKEY_AFTER_MS),
        c("FRAME_HEADROOM_BYTES", FRAME_HEADROOM_BYTES as u64),
        c("MAX_BATCH_BYTES", MAX_BATCH_BYTES as u64),
        c("BLOCK_BYTES", BLOCK_BYTES as u64),
        c("SUPERBLOCK_BYTES", SUPERBLOCK_BYTES as u64),
        c("MAX_BLOCKS_PER_CP_FRAME", MAX_BLOCKS_PER_CP_FRAME as u64),
        c("MAX_PATCHES_PER_BLOCK", MAX_PATCHES_PER_BLOCK as u64),
        c("MAX_RANGES_PER_BLOCK", MAX_RANGES_PER_BLOCK as u64),
        c("MAX_MOVES_PER_BLOCK", MAX_MOVES_PER_BLOCK as u64),
        c("MAX_MISSING_ADDRS", MAX_MISSING_ADDRS as u64),
        c("MAX_REASON_BYTES", MAX_REASON_BYTES as u64),
        c("MAX_DEEP_HASH_BYTES", MAX_DEEP_HASH_BYTES as u64),
        c(
            "MAX_GENERATIONS",
            twinfs_fs::lineage::MAX_GENERATIONS as u64,
        ),
        c("NO_TRANSFER", NO_TRANSFER),
        c("HANDSHAKE_NONCE_BYTES", HANDSHAKE_NONCE_BYTES as u64),
        c("VOLUME_UUID_BYTES", VOLUME_UUID_BYTES as u64),
        c("KEY_BYTES", KEY_BYTES as u64),
        c("PSK_POSITION", PSK_POSITION.into()),
        c(
            "MAX_NOISE_HANDSHAKE_BYTES",
            MAX_NOISE_HANDSHAKE_BYTES as u64,
        ),
        c("FIRST_FRAME_TIMEOUT_MS", FIRST_FRAME_TIMEOUT_MS),
        c("HANDSHAKE_TIMEOUT_MS", HANDSHAKE_TIMEOUT_MS),
        c("MAX_UNAUTHENTICATED", MAX_UNAUTHENTICATED as u64),
        c(
            "MAX_UNAUTHENTICATED_PER_IP",
            MAX_UNAUTHENTICATED_PER_IP as u64,
        ),
        c("MIN_SECRET_BYTES", MIN_SECRET_BYTES as u64),
        c("MIN_SECRET_BITS", MIN_SECRET_BITS.into()),
        c("MAX_SECRET_BYTES", MAX_SECRET_BYTES as u64),
    ])
}

#[test]
fn every_limit_in_the_document_matches_the_code_and_none_is_missing() {
    assert_eq!(constant_rows(&doc()), code_constants());
}

#[test]
fn the_documented_maximum_frame_size_is_the_one_enforced() {
    let documented = constant_rows(&doc())["MAX_FRAME_BYTES"] as usize;
    assert!(twinfs_replicate::frame::encode_frame(&vec![0; documented]).is_ok());
    assert!(twinfs_replicate::frame::encode_frame(&vec![0; documented + 1]).is_err());
}

#[test]
fn the_documented_encoded_sizes_match_the_encoder() {
    let len = |m: Message| m.encoded_len().unwrap();
    let block_in_cp_blocks = |enc: Encoding| {
        len(Message::CpBlocks {
            cp: 1,
            blocks: vec![CpBlock {
                addr: 1,
                hash: [0; 16],
                enc,
            }],
        }) - len(Message::CpBlocks {
            cp: 1,
            blocks: vec![],
        })
    };
    let hello = HandshakeMsg::Hello {
        magic: PROTOCOL_MAGIC,
        version: PROTOCOL_VERSION,
        volume_uuid: [0; 16],
        nonce: [0; 32],
    };
    let computed = BTreeMap::from([
        (
            "`Hello` frame body".to_string(),
            codec::encode(&hello).unwrap().len(),
        ),
        (
            "`NoiseInit` frame body (AES-GCM)".to_string(),
            codec::encode(&HandshakeMsg::NoiseInit {
                protocol: NOISE_AESGCM.into(),
                // Noise message 1: the ephemeral key and an empty payload's tag.
                message: vec![0; KEY_BYTES + TAG_BYTES],
            })
            .unwrap()
            .len(),
        ),
        (
            "`Announce` (Noise message 3 payload)".to_string(),
            codec::encode(&Announce {
                volume_uuid: [0; 16],
                volume_blocks: 1 << 20,
            })
            .unwrap()
            .len(),
        ),
        (
            "`Transfer { id: 1, batch: 1000 bytes }`".to_string(),
            len(Message::Transfer {
                id: 1,
                batch: vec![0; 1000],
            }),
        ),
        (
            "`TransferAck { id: 1 }`".to_string(),
            len(Message::TransferAck { id: 1 }),
        ),
        (
            "`Ping { nonce: 1 }`".to_string(),
            len(Message::Ping { nonce: 1 }),
        ),
        ("`Bye`".to_string(), len(Message::Bye)),
        (
            "`CpBlocks { cp: 1, blocks: [] }`".to_string(),
            len(Message::CpBlocks {
                cp: 1,
                blocks: vec![],
            }),
        ),
        (
            "one `Full` block with `addr: 1` in a `CpBlocks`".to_string(),
            block_in_cp_blocks(Encoding::Full(vec![0; BLOCK_BYTES])),
        ),
        (
            "one `Ref { transfer: 1, block_no: 1 }` block with `addr: 1` in a `CpBlocks`"
                .to_string(),
            block_in_cp_blocks(Encoding::Ref {
                transfer: 1,
                block_no: 1,
            }),
        ),
    ]);
    assert_eq!(size_rows(&doc()), computed);
    assert!(doc().contains(&format!(
        "= {} bytes on the wire",
        LEN_PREFIX_BYTES + SEALED_OVERHEAD_BYTES
    )));
}

/// The document promises that every message within the limits fits in one frame.
#[test]
fn every_valid_message_fits_in_one_frame_even_at_its_limits() {
    let big = u64::MAX;
    let worst_recipe = CpBlock {
        addr: big,
        hash: [0xFF; 16],
        enc: Encoding::Recipe {
            base: Base::Prev { addr: big },
            patches: vec![
                Patch::Bytes {
                    offset: 4000,
                    transfer: big,
                    src_offset: u32::MAX,
                    len: 96
                };
                MAX_PATCHES_PER_BLOCK
            ],
        },
    };
    let worst_delta = CpBlock {
        addr: big,
        hash: [0xFF; 16],
        enc: Encoding::Delta {
            base: Base::Ref {
                transfer: big,
                block_no: u32::MAX,
            },
            moves: vec![
                Move {
                    from: 2048,
                    to: 2048,
                    len: 2048,
                };
                MAX_MOVES_PER_BLOCK
            ],
            ranges: (0..MAX_RANGES_PER_BLOCK)
                .map(|i| DeltaRange {
                    offset: (i * 16) as u16,
                    data: vec![0xFF; 16],
                })
                .collect(),
        },
    };
    let worst_full = CpBlock {
        addr: big,
        hash: [0xFF; 16],
        enc: Encoding::Full(vec![0xFF; BLOCK_BYTES]),
    };
    let reason = "r".repeat(MAX_REASON_BYTES);
    let worst = [
        Message::Transfer {
            id: big,
            batch: vec![0; MAX_BATCH_BYTES],
        },
        Message::TransferLz4 {
            id: big,
            raw_len: MAX_BATCH_BYTES as u32,
            data: vec![0; MAX_BATCH_BYTES],
        },
        Message::CpBlocks {
            cp: big,
            blocks: vec![worst_recipe; MAX_BLOCKS_PER_CP_FRAME],
        },
        Message::CpBlocks {
            cp: big,
            blocks: vec![worst_delta; MAX_BLOCKS_PER_CP_FRAME],
        },
        Message::CpBlocks {
            cp: big,
            blocks: vec![worst_full; MAX_BLOCKS_PER_CP_FRAME],
        },
        Message::CpMissing {
            cp: big,
            addrs: vec![big; MAX_MISSING_ADDRS],
            more: true,
        },
        Message::CpRejected {
            cp: big,
            reason: reason.clone(),
        },
        Message::Error { reason },
        Message::VerifyReply {
            cp: big,
            root_hash: [0xFF; 32],
            deep_hash: Some(vec![0xFF; MAX_DEEP_HASH_BYTES]),
        },
    ];
    for msg in worst {
        assert_eq!(msg.validate(), Ok(()), "{}", msg.kind());
        let sealed = sealed_len(msg.encoded_len().unwrap());
        assert!(
            sealed <= MAX_FRAME_BYTES,
            "{} at its limits takes {sealed} bytes",
            msg.kind()
        );
    }
}
