//! Writes the seed inputs of every target into `corpus/TARGET/seed-*`:
//! well-formed frames, messages, handshake frames, batches, superblocks,
//! B-trees, file trees, items, state and status files and requests, so that
//! a fuzzer starts from inputs that reach deep into each decoder. The
//! corpora in the repository were grown from these by libFuzzer and
//! minimized (README.md, "Fuzzing"); run this only to start a corpus anew.
//!
//! ```text
//! fuzz-seeds [TARGET...]   # writes into the corpus directories next to Cargo.toml
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arbitrary::Unstructured;
use twinfs_fs::btree::{self, Key, NodeReader, NodeStore, TreeRoot};
use twinfs_fs::items::{
    encode_dir_bucket, encode_xattr_bucket, DirEntry, InodeAttrs, InodeRecord, RetainedImage,
    XattrEntry, XattrValue,
};
use twinfs_fs::lineage::{GenerationId, Lineage, GENERATION_BYTES};
use twinfs_fs::superblock::{HeldImage, LogPosition, PeerHold, Superblock};
use twinfs_fs::{
    Block, BlockAddr, BlockPtr, CpNumber, FileKind, FsError, Hash128, Ino, RootHash, Timestamp,
    BLOCK_SIZE,
};
use twinfs_fuzz::arb;
use twinfs_fuzz::creds::{self, SourceCreds};
use twinfs_fuzz::targets::blocks::{Blocks, BASE_ADDR, HEADER_BYTES};
use twinfs_fuzz::util::block_on;
use twinfs_replicate::codec;
use twinfs_replicate::frame::check_frame;
use twinfs_replicate::frame::encode_frame;
use twinfs_replicate::handshake::{
    handshake_client, handshake_server, Admission, Announce, AppliedCp, HandshakeMsg, ResumePoint,
    PROTOCOL_MAGIC, PROTOCOL_VERSION,
};
use twinfs_replicate::keys::{PRIVATE_KEY_LABEL, PUBLIC_KEY_LABEL};
use twinfs_replicate::message::{Divergence, HoldRecord, Refusal, WireGeneration};
use twinfs_replicate::peer::status::PeerStatus;
use twinfs_replicate::{Base, CpBlock, DeltaRange, Encoding, Message, Patch};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut seeds: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    let messages = messages();
    let encoded: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| m.encode().expect("encodes"))
        .collect();

    let mut frames = Vec::new();
    for (ctl, bodies) in [
        (0x80u8, &encoded[..3]),
        (0x03, &encoded[3..6]),
        (0x80, &[][..]),
    ] {
        let mut s = vec![ctl];
        for b in bodies {
            s.extend(encode_frame(b).expect("frame"));
        }
        frames.push(s);
    }
    seeds.insert("frame", frames);
    seeds.insert("message", encoded.clone());
    seeds.insert("message_arb", (0u8..16).map(|i| vec![i * 16; 48]).collect());
    seeds.insert(
        "cp_apply",
        (0u8..16).map(|i| vec![i * 16 + 3; 64]).collect(),
    );
    let text: Vec<u8> = (0..3000)
        .flat_map(|i: u32| format!("line {}\n", i % 50).into_bytes())
        .collect();
    let mut lz = (text.len() as u32).to_le_bytes().to_vec();
    lz.extend(lz4_flex::block::compress(&text));
    seeds.insert(
        "lz4",
        vec![lz, vec![10, 0, 0, 0, 0x40, b'a', b'b', b'c', b'd']],
    );

    let (s2p, p2s) = transcript();
    let mut hs_bodies: Vec<Vec<u8>> = handshake_msgs()
        .iter()
        .map(|m| codec::encode(m).expect("encodes"))
        .collect();
    for stream in [&s2p, &p2s] {
        hs_bodies.extend(frame_bodies(stream));
    }
    hs_bodies.push(
        codec::encode(&Announce {
            volume_uuid: [0xA5; 16],
            volume_blocks: 1 << 20,
        })
        .expect("encodes"),
    );
    hs_bodies.push(
        codec::encode(&Admission::Welcome {
            resume: ResumePoint {
                applied_cp: Some(AppliedCp {
                    cp: 7,
                    root_hash: [3; 32],
                }),
                durable_transfer: 9,
            },
        })
        .expect("encodes"),
    );
    hs_bodies.push(
        codec::encode(&Admission::Refused {
            reason: "bound to another volume".into(),
        })
        .expect("encodes"),
    );
    seeds.insert("handshake_msg", hs_bodies);
    // A real source's frames to a peer (its first two pass the peer's
    // checks), and a real peer's to a source; whole, and cut after the
    // first frames, read 1, 7 and 128 bytes at a time.
    let mut streams = Vec::new();
    for (side, stream) in [(0x00u8, &s2p), (0x80, &p2s)] {
        let ends = frame_ends(stream);
        for (i, chunk) in [(0usize, 127u8), (1, 6), (2, 0)] {
            let end = ends[i.min(ends.len() - 1)];
            let mut s = vec![side | chunk];
            s.extend_from_slice(&stream[..end]);
            streams.push(s);
        }
    }
    seeds.insert("handshake_server", streams);
    // The first byte picks the credentials (below 10: the right ones) or a
    // tampered handshake (13 and above); then settings and steps.
    seeds.insert(
        "session",
        [0u8, 3, 5, 9, 10, 11, 12, 13, 14, 15]
            .iter()
            .enumerate()
            .map(|(i, &pick)| {
                let mut s = vec![pick];
                s.extend((0..400u32).map(|j| (j * 37 + i as u32 * 91) as u8));
                s
            })
            .collect(),
    );
    seeds.insert("keys", key_files());
    seeds.insert(
        "relay_control",
        [
            "delay 25 5\nrate 10M\nloss 0.01\ncut 0\nshow\n",
            "partition forward\npartition both\nstats\nheal\nreset\n",
            "rate off\r\ndelay 60000\ndelay 60001\nrate 0\nloss 1.5\nclear\nshow\n",
            "rate 17179869183G\nrate 64k\npartition sideways\nbogus\n",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
    );

    seeds.insert("lineage", lineages());
    seeds.insert("nvlog_batch", batches());
    seeds.insert("nvlog_record", records());
    seeds.insert(
        "nvlog_scan",
        (0u8..8).map(|i| vec![i * 29 + 5; 400]).collect(),
    );
    seeds.insert("superblock", superblocks());
    seeds.insert("btree", btrees());
    seeds.insert("filetree", filetrees());
    seeds.insert("items", items());
    seeds.insert(
        "peer_logstore",
        (0u8..6).map(|i| vec![i * 41; 300]).collect(),
    );
    seeds.insert(
        "peer_journal",
        (0u8..6).map(|i| vec![i * 41; 120]).collect(),
    );
    seeds.insert(
        "peer_state",
        vec![
            br#"{"format": 1, "volume_uuid": "00112233445566778899aabbccddeeff", "promoted": false}"#.to_vec(),
            b"{\n  \"format\": 1,\n  \"volume_uuid\": null,\n  \"promoted\": true\n}\n".to_vec(),
        ],
    );
    let full = PeerStatus {
        applied_cp: Some(12),
        root_hash: Some("9f".repeat(32)),
        log_bytes_held: 1048632,
        log_transfers: 3,
        durable_transfer: 41,
        volume_uuid: Some("00112233445566778899aabbccddeeff".into()),
        source_connected: true,
        last_error: Some("the source went away".into()),
        daemon_running: true,
        promoted: false,
        ..PeerStatus::default()
    };
    seeds.insert(
        "peer_status",
        vec![
            PeerStatus::default().to_json().into_bytes(),
            full.to_json().into_bytes(),
        ],
    );
    seeds.insert(
        "control",
        [
            r#"{"op":"status"}"#,
            r#"{"op":"checkpoint"}"#,
            r#"{"op":"snapshot_create","name":"before-upgrade"}"#,
            r#"{"op":"snapshot_create","name":null}"#,
            r#"{"op":"snapshot_list"}"#,
            r#"{"op":"snapshot_delete","name":"cp-7"}"#,
            r#"{"op":"verify","deep":true}"#,
            r#"{"op":"switchover","listen":"0.0.0.0:7070","dir":"/srv/twinfs"}"#,
        ]
        .iter()
        .map(|s| format!("{s}\n").into_bytes())
        .collect(),
    );

    // Only the targets named, if any.
    let only: Vec<String> = std::env::args().skip(1).collect();
    for (target, inputs) in seeds {
        if !only.is_empty() && !only.iter().any(|t| t == target) {
            continue;
        }
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for (i, input) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), input).expect("seed written");
        }
        println!("{target}: {} seeds", inputs.len());
    }
}

fn messages() -> Vec<Message> {
    let block = |enc| CpBlock {
        addr: 300,
        hash: [9; 16],
        enc,
    };
    vec![
        Message::Transfer {
            id: 1,
            batch: vec![0x5A; 100],
        },
        Message::TransferLz4 {
            id: 2,
            raw_len: 64,
            data: lz4_flex::block::compress(&[7; 64]),
        },
        Message::LogEnd { transfer: 5 },
        Message::TransferAck { id: 5 },
        Message::CpBegin {
            cp: 4,
            base_cp: Some(3),
            covers_transfer: 5,
            resync: false,
        },
        Message::CpBlocks {
            cp: 4,
            blocks: vec![
                block(Encoding::Full(vec![1; BLOCK_SIZE])),
                block(Encoding::Ref {
                    transfer: 2,
                    block_no: 0,
                }),
                block(Encoding::Recipe {
                    base: Base::Prev { addr: 200 },
                    patches: vec![
                        Patch::Bytes {
                            offset: 0,
                            transfer: 2,
                            src_offset: 112,
                            len: 10,
                        },
                        Patch::Zero {
                            offset: 100,
                            len: 20,
                        },
                    ],
                }),
                block(Encoding::Delta {
                    base: Base::Ref {
                        transfer: 1,
                        block_no: 3,
                    },
                    moves: vec![twinfs_replicate::message::Move {
                        from: 8,
                        to: 40,
                        len: 30,
                    }],
                    ranges: vec![DeltaRange {
                        offset: 8,
                        data: vec![1, 2, 3],
                    }],
                }),
            ],
        },
        Message::CpEnd {
            cp: 4,
            superblock: vec![0; BLOCK_SIZE],
            root_hash: [1; 32],
        },
        Message::CpApplied {
            cp: 4,
            root_hash: [1; 32],
        },
        Message::CpMissing {
            cp: 4,
            addrs: vec![300, 301],
            more: false,
        },
        Message::CpRejected {
            cp: 4,
            reason: "base 3 is not the applied CP".into(),
        },
        Message::Ping { nonce: 77 },
        Message::Pong { nonce: 77 },
        Message::VerifyRequest { cp: 4, deep: true },
        Message::VerifyReply {
            cp: 4,
            root_hash: [1; 32],
            deep_hash: Some(vec![2; 32]),
        },
        Message::Error {
            reason: "disk full".into(),
        },
        Message::Bye,
        Message::SourceLineage {
            generations: vec![
                WireGeneration { id: 0, first_cp: 0 },
                WireGeneration {
                    id: 0x5678,
                    first_cp: 3,
                },
            ],
            cp: 4,
            root_hash: [1; 32],
            uncommitted: false,
            hold: Some(HoldRecord {
                peer_id: 77,
                cp: 3,
                root_hash: [2; 32],
            }),
        },
        Message::LineageVerdict {
            peer_id: 77,
            generations: vec![WireGeneration {
                id: 0x1234,
                first_cp: 0,
            }],
            refusal: Some(Refusal {
                kind: Divergence::SplitBrain,
                common_cp: Some(2),
                reason: "both sides wrote after CP 2".into(),
            }),
        },
        Message::Switchover {
            cp: 4,
            root_hash: [1; 32],
            return_to: "10.0.0.1:7070".into(),
            mode: "sync".into(),
            cp_sync: "best".into(),
        },
        Message::SwitchedOver {
            cp: 4,
            root_hash: [1; 32],
        },
        Message::SwitchoverRefused {
            reason: "the peer is behind".into(),
        },
    ]
}

fn handshake_msgs() -> Vec<HandshakeMsg> {
    vec![
        HandshakeMsg::Hello {
            magic: PROTOCOL_MAGIC,
            version: PROTOCOL_VERSION,
            volume_uuid: [4; 16],
            nonce: [5; 32],
        },
        HandshakeMsg::Refused {
            reason: "no".into(),
        },
        HandshakeMsg::NoiseInit {
            protocol: "Noise_XXpsk3_25519_ChaChaPoly_SHA256".into(),
            message: vec![6; 48],
        },
        HandshakeMsg::Authenticated,
    ]
}

/// What a real source and a real peer send each other in a handshake (the
/// source to the peer, then the peer to the source).
fn transcript() -> (Vec<u8>, Vec<u8>) {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        r: &mut R,
        w: &mut W,
        log: &mut Vec<u8>,
    ) {
        let mut buf = vec![0u8; 4096];
        while let Ok(n @ 1..) = r.read(&mut buf).await {
            log.extend_from_slice(&buf[..n]);
            if w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
    block_on(async {
        let (source_io, mitm_source) = tokio::io::duplex(1 << 16);
        let (mitm_peer, peer_io) = tokio::io::duplex(1 << 16);
        let (mut from_source, mut to_source) = tokio::io::split(mitm_source);
        let (mut from_peer, mut to_peer) = tokio::io::split(mitm_peer);
        let (mut s2p, mut p2s) = (Vec::new(), Vec::new());
        let resume = ResumePoint::default();
        let handshake = async {
            tokio::join!(
                handshake_client(
                    source_io,
                    creds::source(SourceCreds::Right),
                    [0xA5; 16],
                    1 << 20
                ),
                handshake_server(peer_io, creds::peer(), resume, |_| Ok(()))
            )
        };
        let relay = async {
            tokio::join!(
                copy(&mut from_source, &mut to_peer, &mut s2p),
                copy(&mut from_peer, &mut to_source, &mut p2s)
            )
        };
        tokio::select! {
            (s, p) = handshake => {
                s.expect("the source's handshake");
                p.expect("the peer's handshake");
            }
            _ = relay => panic!("the relay ended before the handshake"),
        }
        (s2p, p2s)
    })
}

/// Where each frame of `stream` ends.
fn frame_ends(stream: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while let Ok(Some(span)) = check_frame(&stream[at..]) {
        at += span.frame_end;
        ends.push(at);
    }
    ends
}

/// The bodies of the frames of `stream`.
fn frame_bodies(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    let mut at = 0;
    while let Ok(Some(span)) = check_frame(&stream[at..]) {
        bodies.push(stream[at + span.body_start..at + span.frame_end].to_vec());
        at += span.frame_end;
    }
    bodies
}

/// Key files, trusted-keys files and secret files, good and almost good.
fn key_files() -> Vec<Vec<u8>> {
    let hex = |b: u8| twinfs_fs::hex(&[b; 32]);
    [
        format!("# twinfs static key (X25519). Private: it stays on this machine.\n{PRIVATE_KEY_LABEL} {}\n", hex(0x11)),
        format!("{PUBLIC_KEY_LABEL} {} source@host\n", hex(0x2e)),
        format!("# trusted\n\n{PUBLIC_KEY_LABEL} {} a\n  {PUBLIC_KEY_LABEL} {}\r\n", hex(0xab), hex(0xCD).to_uppercase()),
        format!("{PRIVATE_KEY_LABEL} {}\n", &hex(0x11)[1..]),
        format!("{PUBLIC_KEY_LABEL} {}\n# end\n{PRIVATE_KEY_LABEL} {}\n", hex(0x01), hex(0x02)),
        "7f3a9c21e4b8d605c1e2a7b90d4f6318\n".to_string(),
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .chain(std::iter::once((0..48u8).map(|i| i.wrapping_mul(151)).collect()))
    .collect()
}

/// Records of every kind, made by the structure-aware builder from fixed bytes.
fn some_records(n: usize) -> Vec<twinfs_fs::nvlog::record::Record> {
    let mut out = Vec::new();
    for tag in 0..n as u8 {
        let bytes: Vec<u8> = std::iter::once(tag)
            .chain((0..600u32).map(|i| (i * 7 + u32::from(tag)) as u8))
            .collect();
        let mut u = Unstructured::new(&bytes);
        if let Ok(r) = arb::record(&mut u) {
            out.push(r);
        }
    }
    out
}

fn batches() -> Vec<Vec<u8>> {
    let mut open = twinfs_fs::nvlog::batch::OpenBatch::new(twinfs_fs::TransferId(3));
    let recs = some_records(10);
    for r in &recs {
        open.append(r);
    }
    let sealed = open.seal(&[1; 16], [2; 32]);
    let mut raw = vec![0u8];
    raw.extend_from_slice(&sealed.bytes);
    let mut area = Vec::new();
    for r in &recs {
        r.encode(0, &mut area);
    }
    let mut fixed = vec![1u8];
    let mut fields = [0u8; 61];
    fields[56] = recs.len() as u8;
    fields[58] = 4;
    fixed.extend_from_slice(&fields);
    fixed.extend_from_slice(&area);
    let built: Vec<u8> = std::iter::once(2u8)
        .chain((0..400u32).map(|i| (i * 13) as u8))
        .collect();
    vec![raw, fixed, built]
}

fn records() -> Vec<Vec<u8>> {
    some_records(10)
        .iter()
        .map(|r| {
            let mut out = vec![4u8];
            r.encode(0, &mut out);
            out
        })
        .collect()
}

fn superblocks() -> Vec<Vec<u8>> {
    let mut sb = Superblock {
        uuid: [7; 16],
        total_blocks: 10_000,
        log_start: 2,
        log_blocks: 1000,
        cp: CpNumber(6),
        next_ino: Ino(100),
        alloc_cursor: 1500,
        used_blocks: 40,
        inodes: 3,
        meta: TreeRoot {
            ptr: BlockPtr {
                addr: BlockAddr(1200),
                birth: CpNumber(5),
                hash: Hash128([1; 16]),
            },
            height: 1,
        },
        alloc: TreeRoot::default(),
        log: LogPosition {
            next_transfer: twinfs_fs::TransferId(9),
            replay_offset: 17,
            last_batch_hash: [3; 32],
        },
        cp_time: Timestamp::new(1_700_000_000, 5),
        peer_hold: Some(PeerHold {
            cp: CpNumber(4),
            meta: TreeRoot::default(),
            alloc: TreeRoot::default(),
            root_hash: RootHash([9; 32]),
            peer_id: 77,
            image: Some(HeldImage {
                next_ino: Ino(90),
                alloc_cursor: 1400,
                used_blocks: 38,
                inodes: 3,
                log: LogPosition::default(),
                cp_time: Timestamp::new(1_699_999_990, 0),
            }),
        }),
        lineage: Lineage::start(GenerationId(0x1234)).begin(GenerationId(0x5678), CpNumber(3)),
        replica: false,
    };
    let even = sb.encode();
    sb.cp = CpNumber(7);
    sb.peer_hold = None;
    sb.replica = true;
    let odd = sb.encode();
    let mut both = vec![0x0Cu8];
    both.extend_from_slice(&even[..]);
    both.extend_from_slice(&odd[..]);
    let mut one = vec![0x03u8];
    one.extend_from_slice(&odd[..300]);
    vec![both, one]
}

/// A node store that numbers its blocks from `BASE_ADDR`, as the tree
/// targets' inputs do.
#[derive(Default)]
struct SeedStore {
    blocks: BTreeMap<u64, Arc<Block>>,
}

impl NodeReader for SeedStore {
    fn read_node(&self, ptr: &BlockPtr) -> twinfs_fs::Result<Arc<Block>> {
        self.blocks
            .get(&ptr.addr.0)
            .cloned()
            .ok_or_else(|| FsError::corrupt(ptr.addr, "none"))
    }
}

impl NodeStore for SeedStore {
    fn write_node(&mut self, data: Box<Block>, _: Option<BlockPtr>) -> twinfs_fs::Result<BlockPtr> {
        let addr = BASE_ADDR + self.blocks.len() as u64;
        let ptr = BlockPtr {
            addr: BlockAddr(addr),
            birth: CpNumber(1),
            hash: Hash128::of(&data[..]),
        };
        self.blocks.insert(addr, Arc::from(data));
        Ok(ptr)
    }
    fn free_node(&mut self, _: BlockPtr) {}
}

fn btrees() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (items, value_len) in [(5u64, 20usize), (120, 100), (300, 60)] {
        let mut store = SeedStore::default();
        let changes: Vec<_> = (0..items)
            .map(|i| {
                (
                    Key::new(i / 3, (i % 3) as u8 + 1, i),
                    Some(vec![i as u8; value_len]),
                )
            })
            .collect();
        let root = btree::apply(&mut store, &TreeRoot::EMPTY, &changes).expect("a tree builds");
        if store.blocks.len() > 8 {
            continue;
        }
        let mut header = [0u8; HEADER_BYTES];
        header[0] = root.height;
        header[1] = (root.ptr.addr.0 - BASE_ADDR) as u8;
        header[2..10].copy_from_slice(&5u64.to_le_bytes());
        let blocks: Vec<&[u8]> = store.blocks.values().map(|b| &b[..]).collect();
        out.push(Blocks::to_input(
            header,
            &blocks,
            &[3, 1, 2, 0, 9, 9, 9, 9, 9, 9, 9],
        ));
    }
    out
}

fn filetrees() -> Vec<Vec<u8>> {
    let ptr = |addr: u64| {
        let mut b = [0u8; 32];
        BlockPtr {
            addr: BlockAddr(addr),
            birth: CpNumber(1),
            hash: Hash128([addr as u8; 16]),
        }
        .encode(&mut b);
        b
    };
    // Height 1: one indirect block with data at a few slots.
    let mut leafy = [0u8; BLOCK_SIZE];
    for slot in [0usize, 1, 5, 127] {
        leafy[slot * 32..slot * 32 + 32].copy_from_slice(&ptr(5000 + slot as u64));
    }
    // Height 2: a root naming the indirect block above at slots 0 and 3.
    let mut top = [0u8; BLOCK_SIZE];
    for slot in [0usize, 3] {
        top[slot * 32..slot * 32 + 32].copy_from_slice(&ptr(BASE_ADDR + 1));
    }
    let mut h1 = [0u8; HEADER_BYTES];
    h1[0] = 1;
    h1[1] = 1;
    let mut h2 = [0u8; HEADER_BYTES];
    h2[0] = 2;
    vec![
        Blocks::to_input(h1, &[&top, &leafy], &[0, 0, 0, 0, 0, 0, 0, 0, 200, 0]),
        Blocks::to_input(h2, &[&top, &leafy], &[130, 1, 0, 0, 0, 0, 0, 0, 255, 1]),
    ]
}

fn items() -> Vec<Vec<u8>> {
    let ts = Timestamp::new(1_700_000_000, 1);
    let rec = |kind, symlink: Option<&[u8]>| InodeRecord {
        attrs: InodeAttrs {
            kind,
            perm: 0o644,
            uid: 1000,
            gid: 1000,
            nlink: 1,
            size: 12345,
            rdev: 0,
            parent: Ino(0),
            blocks: 4,
            atime: ts,
            mtime: ts,
            ctime: ts,
            crtime: ts,
            symlink: symlink.map(Into::into),
        },
        data: TreeRoot {
            ptr: BlockPtr {
                addr: BlockAddr(900),
                birth: CpNumber(3),
                hash: Hash128([4; 16]),
            },
            height: 1,
        },
    };
    let with = |which: u8, bytes: Vec<u8>| std::iter::once(which).chain(bytes).collect::<Vec<u8>>();
    vec![
        with(0, rec(FileKind::Regular, None).encode()),
        with(0, rec(FileKind::Symlink, Some(b"../target")).encode()),
        with(
            1,
            encode_dir_bucket(&[
                DirEntry {
                    name: b"a.txt".to_vec(),
                    ino: Ino(5),
                    kind: FileKind::Regular,
                },
                DirEntry {
                    name: b"sub".to_vec(),
                    ino: Ino(6),
                    kind: FileKind::Directory,
                },
            ]),
        ),
        with(
            2,
            encode_xattr_bucket(&[
                XattrEntry {
                    name: b"user.small".to_vec(),
                    value: XattrValue::Inline(b"v".to_vec()),
                },
                XattrEntry {
                    name: b"user.big".to_vec(),
                    value: XattrValue::Blob {
                        len: 5000,
                        blocks: vec![
                            BlockPtr {
                                addr: BlockAddr(70),
                                birth: CpNumber(2),
                                hash: Hash128([1; 16]),
                            };
                            2
                        ],
                    },
                },
            ]),
        ),
        with(
            3,
            RetainedImage {
                name: b"nightly".to_vec(),
                cp: CpNumber(9),
                created: ts,
                meta: TreeRoot::default(),
                alloc: TreeRoot::default(),
                used_blocks: 10,
                inodes: 2,
                root_hash: RootHash([5; 32]),
            }
            .encode(),
        ),
    ]
}

fn lineages() -> Vec<Vec<u8>> {
    let one = Lineage::legacy();
    let two = Lineage::start(GenerationId(0x1234)).begin(GenerationId(0x5678), CpNumber(10));
    let forked = two
        .up_to(CpNumber(12))
        .begin(GenerationId(0x9abc), CpNumber(13));
    let other = two.begin(GenerationId(0xdef0), CpNumber(15));
    let enc = |l: &Lineage| {
        let n = l.generations().len();
        let mut out = vec![n as u8; 1 + n * GENERATION_BYTES];
        l.encode_into(&mut out[1..]);
        out
    };
    let mut seeds = Vec::new();
    for (a, b, ca, cb) in [
        (&one, &two, 0u64, 11u64),
        (&two, &forked, 14, 13),
        (&forked, &other, 13, 16),
        (&two, &two, 12, 12),
    ] {
        let mut s = enc(a);
        s.extend(enc(b));
        s.extend(ca.to_le_bytes());
        s.extend(cb.to_le_bytes());
        s.extend(0x4242u64.to_le_bytes());
        seeds.push(s);
    }
    seeds
}
