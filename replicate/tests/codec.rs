//! Codec and framing: round trips, compact byte payloads, limits, and malformed input
//! (raw bytes) that must give clean errors and never panic.

use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};
use twinfs_replicate::codec;
use twinfs_replicate::frame::{
    check_frame, encode_frame, FrameReader, LEN_PREFIX_BYTES, MAX_FRAME_BYTES,
};
use twinfs_replicate::handshake::HandshakeMsg;
use twinfs_replicate::message::{
    clip_reason, BLOCK_BYTES, MAX_BLOCKS_PER_CP_FRAME, MAX_REASON_BYTES, SUPERBLOCK_BYTES,
};
use twinfs_replicate::{
    Base, CpBlock, DeltaRange, Direction, Encoding, FrameFault, Message, Patch, ReplicateError,
};

mod common;
use common::{bytes, message};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_valid_message_survives_an_encode_decode_round_trip(msg in message()) {
        prop_assert_eq!(msg.validate(), Ok(()));
        let bytes = msg.encode().unwrap();
        prop_assert_eq!(Message::decode(&bytes).unwrap(), msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_or_message_decoders(data in bytes(2048)) {
        let _ = check_frame(&data);
        let _ = Message::decode(&data);
        let _ = codec::decode::<HandshakeMsg>(&data);
    }

    #[test]
    fn damaged_encodings_decode_to_an_error_or_a_valid_message_never_a_panic(
        msg in message(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let intact = msg.encode().unwrap();
        // MessagePack is self-delimiting: no strict prefix of an encoding decodes.
        prop_assert!(Message::decode(&intact[..cut.index(intact.len())]).is_err());
        let mut bytes = intact;
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(decoded) = Message::decode(&bytes) {
            prop_assert_eq!(decoded.validate(), Ok(()));
        }
    }

    #[test]
    fn frames_are_found_whatever_the_read_sizes(
        bodies in prop::collection::vec(bytes(300), 0..8),
        chunk_sizes in prop::collection::vec(1usize..64, 1..16),
    ) {
        let mut stream = Vec::new();
        for body in &bodies {
            stream.extend_from_slice(&encode_frame(body).unwrap());
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got = rt.block_on(async {
            let mut reader = FrameReader::new(ChunkedReader::new(stream, chunk_sizes), Direction::SourceToPeer);
            let mut got = Vec::new();
            while let Some(body) = reader.read_frame().await.unwrap() {
                got.push(body.to_vec());
            }
            got
        });
        prop_assert_eq!(got, bodies);
    }
}

/// An `AsyncRead` that hands out its bytes in the given chunk sizes, cycling.
struct ChunkedReader {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl ChunkedReader {
    fn new(data: Vec<u8>, sizes: Vec<usize>) -> Self {
        ChunkedReader {
            data,
            pos: 0,
            sizes,
            turn: 0,
        }
    }
}

impl AsyncRead for ChunkedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = self.sizes[self.turn % self.sizes.len()];
        self.turn += 1;
        let n = size.min(buf.remaining()).min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Reads from `stream` (then end of stream) and returns the first frame result.
async fn first_frame(stream: Vec<u8>) -> Result<Option<Vec<u8>>, ReplicateError> {
    let mut reader = FrameReader::new(ChunkedReader::new(stream, vec![7]), Direction::PeerToSource);
    reader.read_frame().await.map(|o| o.map(|b| b.to_vec()))
}

fn fault_of(result: Result<Option<Vec<u8>>, ReplicateError>) -> FrameFault {
    match result {
        Err(ReplicateError::Frame {
            direction: Direction::PeerToSource,
            frame: 0,
            fault,
        }) => fault,
        other => panic!("expected a frame 0 fault, got {other:?}"),
    }
}

// ---- raw-byte tests of malformed frames ----

#[tokio::test]
async fn a_length_above_the_maximum_is_refused_from_the_prefix_alone() {
    // The reader gets the prefix and then waits forever: the error must come without
    // waiting for (or allocating) the announced body.
    let (mut w, r) = tokio::io::duplex(64);
    let len = (MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
    tokio::io::AsyncWriteExt::write_all(&mut w, &len)
        .await
        .unwrap();
    let mut reader = FrameReader::new(r, Direction::SourceToPeer);
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), reader.read_frame())
        .await
        .expect("must not wait for the body");
    match result {
        Err(ReplicateError::Frame {
            fault: FrameFault::TooLarge { len, max },
            frame: 0,
            ..
        }) => {
            assert_eq!((len, max), (MAX_FRAME_BYTES as u64 + 1, MAX_FRAME_BYTES));
        }
        other => panic!(
            "expected TooLarge, got {:?}",
            other.map(|o| o.map(|b| b.len()))
        ),
    }
    drop(w);
}

#[tokio::test]
async fn the_largest_allowed_frame_is_accepted() {
    let body = vec![0x42; MAX_FRAME_BYTES];
    let got = first_frame(encode_frame(&body).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), MAX_FRAME_BYTES);
    assert!(encode_frame(&vec![0; MAX_FRAME_BYTES + 1]).is_err());
}

#[tokio::test]
async fn a_truncated_length_prefix_is_a_truncated_frame() {
    assert_eq!(
        fault_of(first_frame(vec![0, 0]).await),
        FrameFault::Truncated {
            got: 2,
            expected: LEN_PREFIX_BYTES
        }
    );
}

#[tokio::test]
async fn a_truncated_body_is_a_truncated_frame_with_both_sizes() {
    let mut stream = 100u32.to_be_bytes().to_vec();
    stream.extend_from_slice(&[1; 10]);
    assert_eq!(
        fault_of(first_frame(stream).await),
        FrameFault::Truncated {
            got: 14,
            expected: 104
        }
    );
}

#[tokio::test]
async fn an_empty_stream_is_a_clean_end() {
    assert_eq!(first_frame(Vec::new()).await.unwrap(), None);
}

#[test]
fn garbage_messagepack_is_malformed() {
    for garbage in [
        &[0xc1u8][..],
        &[0xff, 0xff, 0xff],
        &[0x92, 0x01],
        b"not msgpack at all",
        &[],
    ] {
        assert!(
            matches!(Message::decode(garbage), Err(FrameFault::Malformed(_))),
            "{garbage:?}"
        );
    }
}

#[test]
fn valid_messagepack_of_the_wrong_shape_is_malformed() {
    let wrong = [
        codec::encode(&HandshakeMsg::Refused { reason: "x".into() }).unwrap(),
        codec::encode(&("Transfer", 1u64)).unwrap(),
        codec::encode(&std::collections::BTreeMap::from([(
            "Transfer",
            vec!["a", "b"],
        )]))
        .unwrap(),
        codec::encode(&42u64).unwrap(),
    ];
    for bytes in wrong {
        assert!(
            matches!(Message::decode(&bytes), Err(FrameFault::Malformed(_))),
            "{bytes:?}"
        );
    }
}

#[test]
fn trailing_bytes_after_a_message_are_malformed() {
    let mut bytes = Message::Ping { nonce: 1 }.encode().unwrap();
    bytes.push(0);
    match Message::decode(&bytes) {
        Err(FrameFault::Malformed(msg)) => assert!(msg.contains("1 trailing bytes"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

// ---- compact encoding: byte payloads are MessagePack bin, not arrays of integers ----

#[test]
fn byte_payloads_travel_as_messagepack_bin() {
    let batch = vec![0xEE; 1000];
    let transfer = Message::Transfer { id: 1, batch }.encode().unwrap();
    assert!(
        transfer.len() < 1000 + 24,
        "Transfer of 1000 bytes encoded in {}",
        transfer.len()
    );

    let block = CpBlock {
        addr: 1,
        hash: [0xCC; 16],
        enc: Encoding::Full(vec![0xFF; BLOCK_BYTES]),
    };
    let blocks = Message::CpBlocks {
        cp: 1,
        blocks: vec![block],
    }
    .encode()
    .unwrap();
    assert!(
        blocks.len() < BLOCK_BYTES + 48,
        "one Full block encoded in {}",
        blocks.len()
    );
    // The 16-byte hash is one bin8 of 16: 0xc4 0x10 then the bytes.
    let hash_at = blocks
        .windows(2)
        .position(|w| w == [0xc4, 0x10])
        .expect("hash as bin8");
    assert_eq!(&blocks[hash_at + 2..hash_at + 18], &[0xCC; 16]);

    let end = Message::CpEnd {
        cp: 1,
        superblock: vec![0xFF; SUPERBLOCK_BYTES],
        root_hash: [0xFF; 32],
    };
    assert!(end.encode().unwrap().len() < SUPERBLOCK_BYTES + 48);
}

// ---- protocol limits ----

fn full(addr: u64, len: usize) -> CpBlock {
    CpBlock {
        addr,
        hash: [0; 16],
        enc: Encoding::Full(vec![0; len]),
    }
}

#[test]
fn messages_that_break_a_limit_are_refused_by_the_decoder_with_the_reason() {
    let cases: Vec<(Message, &str)> = vec![
        (
            Message::CpBlocks {
                cp: 1,
                blocks: vec![full(9, 100)],
            },
            "block 9: Full block bytes: 100",
        ),
        (
            Message::CpBlocks {
                cp: 1,
                blocks: (0..=MAX_BLOCKS_PER_CP_FRAME as u64)
                    .map(|a| CpBlock {
                        addr: a,
                        hash: [0; 16],
                        enc: Encoding::Ref {
                            transfer: 1,
                            block_no: 0,
                        },
                    })
                    .collect(),
            },
            "CpBlocks blocks",
        ),
        (
            Message::CpEnd {
                cp: 1,
                superblock: vec![0; 10],
                root_hash: [0; 32],
            },
            "superblock",
        ),
        (
            Message::Transfer {
                id: 0,
                batch: vec![],
            },
            "transfer IDs start at 1",
        ),
        (
            Message::Error {
                reason: "x".repeat(MAX_REASON_BYTES + 1),
            },
            "reason bytes",
        ),
        (
            Message::CpBegin {
                cp: 5,
                base_cp: Some(5),
                covers_transfer: 0,
                resync: false,
            },
            "not older",
        ),
        (
            Message::CpBlocks {
                cp: 1,
                blocks: vec![CpBlock {
                    addr: 3,
                    hash: [0; 16],
                    enc: Encoding::Recipe {
                        base: Base::Zero,
                        patches: vec![Patch::Zero {
                            offset: 4000,
                            len: 200,
                        }],
                    },
                }],
            },
            "runs past",
        ),
        (
            Message::CpBlocks {
                cp: 1,
                blocks: vec![CpBlock {
                    addr: 4,
                    hash: [0; 16],
                    enc: Encoding::Delta {
                        base: Base::Prev { addr: 2 },
                        moves: vec![],
                        ranges: vec![
                            DeltaRange {
                                offset: 10,
                                data: vec![1; 20],
                            },
                            DeltaRange {
                                offset: 15,
                                data: vec![2],
                            },
                        ],
                    },
                }],
            },
            "overlaps",
        ),
        (
            Message::VerifyReply {
                cp: 1,
                root_hash: [0; 32],
                deep_hash: Some(vec![0; 65]),
            },
            "deep_hash",
        ),
    ];
    for (msg, needle) in cases {
        let err = msg.validate().expect_err(needle);
        assert!(err.contains(needle), "{err} should mention {needle}");
        let bytes = msg.encode().unwrap();
        match Message::decode(&bytes) {
            Err(FrameFault::Limit(reason)) => assert_eq!(reason, err),
            other => panic!("{needle}: expected Limit, got {other:?}"),
        }
    }
}

#[test]
fn reasons_are_clipped_on_a_character_boundary() {
    let long = "é".repeat(MAX_REASON_BYTES);
    let clipped = clip_reason(&long);
    assert!(clipped.len() <= MAX_REASON_BYTES);
    assert!(clipped.len() >= MAX_REASON_BYTES - 1);
    assert!(long.starts_with(&clipped));
    assert_eq!(clip_reason("short"), "short");
}

#[test]
fn messages_only_travel_their_own_direction() {
    use Direction::*;
    assert!(Message::Transfer {
        id: 1,
        batch: vec![]
    }
    .may_travel(SourceToPeer));
    assert!(!Message::Transfer {
        id: 1,
        batch: vec![]
    }
    .may_travel(PeerToSource));
    assert!(!Message::TransferAck { id: 1 }.may_travel(SourceToPeer));
    assert!(
        Message::Ping { nonce: 0 }.may_travel(SourceToPeer)
            && Message::Ping { nonce: 0 }.may_travel(PeerToSource)
    );
}

#[tokio::test]
async fn a_read_cancelled_mid_frame_loses_no_bytes() {
    use tokio::io::AsyncWriteExt;
    let (mut w, r) = tokio::io::duplex(1024);
    let frame = encode_frame(b"the whole body of one frame").unwrap();
    let mut reader = FrameReader::new(r, Direction::SourceToPeer);
    w.write_all(&frame[..9]).await.unwrap();
    let cancelled =
        tokio::time::timeout(std::time::Duration::from_millis(20), reader.read_frame()).await;
    assert!(cancelled.is_err(), "half a frame must not complete a read");
    w.write_all(&frame[9..]).await.unwrap();
    assert_eq!(
        reader.read_frame().await.unwrap().unwrap(),
        b"the whole body of one frame"
    );
    assert_eq!(reader.frames_read(), 1);
    assert_eq!(reader.bytes_read(), frame.len() as u64);
}
