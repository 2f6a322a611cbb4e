//! Property test of `--cp-sync best` (issue: CP recipes and deltas): random
//! operation sequences with random CPs on a source volume, every CP encoded by
//! the real encoder in `best` mode, sent with its transfers to an in-process
//! peer, applied there; the peer's root hash must equal the source's at every
//! CP. Some CPs have one non-`Full` block corrupted in flight: the peer must
//! refuse to write it, ask for it, and converge once it is resent in full.

mod peer_support;

use std::sync::Arc;

use peer_support::*;
use proptest::prelude::*;
use twinfs_fs::cp::CpBlock as FsCpBlock;
use twinfs_fs::volume::AttrChanges;
use twinfs_fs::{
    Block, BlockAddr, BlockPtr, CpNumber, FileKind, Hash128, TransferId, BLOCK_SIZE, ROOT_INO,
};
use twinfs_replicate::encode::{self, CpSync, PrevReader};
use twinfs_replicate::message::{CpBlock, Encoding, Message, Patch, MAX_BLOCKS_PER_CP_FRAME};
use twinfs_replicate::peer::replica::Flow;
use twinfs_replicate::peer::Replica;

const FILES: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    /// Write `len` bytes of pattern `seed` at `offset` (aligned or not).
    Write {
        file: usize,
        offset: u64,
        len: usize,
        seed: u64,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    /// Unlink and create again (empty).
    Recreate {
        file: usize,
    },
    SetXattr {
        file: usize,
        value_len: usize,
        seed: u64,
    },
    /// A CP; with `corrupt`, one of its non-`Full` blocks is damaged in flight.
    Cp {
        corrupt: Option<Corruption>,
    },
}

#[derive(Clone, Copy, Debug)]
struct Corruption {
    /// Which non-`Full` block (modulo their count).
    pick: usize,
    how: How,
}

#[derive(Clone, Copy, Debug)]
enum How {
    /// The claimed hash is wrong.
    Hash,
    /// The payload is wrong: another block number, patch source, delta byte
    /// or base.
    Payload,
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..FILES;
    let max = 24 * BLOCK_SIZE as u64;
    prop_oneof![
        6 => (file.clone(), 0..max, 1..3 * BLOCK_SIZE, any::<u64>()).prop_map(
            |(file, offset, len, seed)| Op::Write { file, offset, len, seed }
        ),
        3 => (file.clone(), 0..24u64, 1..4usize, any::<u64>()).prop_map(
            |(file, block, blocks, seed)| Op::Write {
                file,
                offset: block * BLOCK_SIZE as u64,
                len: blocks * BLOCK_SIZE,
                seed,
            }
        ),
        2 => (file.clone(), 0..max).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => file.clone().prop_map(|file| Op::Recreate { file }),
        1 => (file, 1..3000usize, any::<u64>())
            .prop_map(|(file, value_len, seed)| Op::SetXattr { file, value_len, seed }),
        3 => proptest::option::weighted(
            0.4,
            (any::<usize>(), prop_oneof![Just(How::Hash), Just(How::Payload)])
                .prop_map(|(pick, how)| Corruption { pick, how })
        )
        .prop_map(|corrupt| Op::Cp { corrupt }),
    ]
}

/// The previous image's blocks as the capture read them.
struct CapturedPrev<'a>(&'a CapBlock);

impl PrevReader for CapturedPrev<'_> {
    fn read_prev(&self, ptr: &BlockPtr) -> Option<Arc<Block>> {
        let data = self.0.prev_data.as_ref()?;
        (Some(ptr.addr.0) == self.0.prev_addr).then(|| Arc::new(data[..].try_into().unwrap()))
    }
}

/// Encodes a captured block with the real encoder in `best` mode.
fn encode_best(b: &CapBlock, base_covers: u64) -> Encoding {
    let data: Arc<Block> = Arc::new(b.data[..].try_into().unwrap());
    let fs_block = FsCpBlock {
        addr: BlockAddr(b.addr),
        hash: Hash128(b.hash),
        data: &data,
        kind: b.kind,
        source: &b.source,
        prev: b.prev_addr.map(|a| BlockPtr {
            addr: BlockAddr(a),
            birth: CpNumber(0),
            hash: Hash128::of(b.prev_data.as_deref().unwrap_or(&[])),
        }),
    };
    encode::encode(
        CpSync::Best,
        &fs_block,
        encode::Peer {
            has_transfers_after: TransferId(base_covers),
            has_base: true,
        },
        &CapturedPrev(b),
    )
}

/// Damages one block's encoding; returns false if it cannot (a `Full` block).
fn damage(block: &mut CpBlock, how: How) -> bool {
    if let How::Hash = how {
        block.hash[3] ^= 0x40;
        return true;
    }
    match &mut block.enc {
        Encoding::Full(_) => return false,
        Encoding::Ref { block_no, .. } => *block_no ^= 1,
        Encoding::Recipe { base, patches } => match patches.iter_mut().find_map(|p| match p {
            Patch::Bytes { src_offset, .. } => Some(src_offset),
            Patch::Zero { .. } => None,
        }) {
            Some(src_offset) => *src_offset ^= 1,
            None => {
                *base = match base {
                    twinfs_replicate::Base::Zero => twinfs_replicate::Base::Prev { addr: 2 },
                    _ => twinfs_replicate::Base::Zero,
                }
            }
        },
        Encoding::Delta { base, ranges, .. } => match ranges.first_mut() {
            Some(r) => r.data[0] ^= 0x01,
            None => {
                *base = match base {
                    twinfs_replicate::Base::Zero => twinfs_replicate::Base::Prev { addr: 2 },
                    _ => twinfs_replicate::Base::Zero,
                }
            }
        },
    }
    true
}

fn feed(peer: &mut Replica, msgs: Vec<Message>) -> Vec<Message> {
    let mut replies = Vec::new();
    for m in msgs {
        let flow = peer
            .handle(m, &mut replies)
            .expect("the peer handles the message");
        assert_eq!(flow, Flow::Continue);
    }
    replies
}

struct Run {
    src: Source,
    peer: Replica,
    _dir: tempfile::TempDir,
    names: Vec<Vec<u8>>,
    /// CPs of the capture already sent.
    sent_cps: usize,
    /// The last transfer the peer's applied CP covers.
    base_covers: u64,
    non_full: usize,
    misses: usize,
}

impl Run {
    fn new() -> Run {
        let src = Source::new(8192);
        let dir = tempfile::tempdir().unwrap();
        let mut peer = Replica::open(dir.path(), None).expect("open replica");
        peer.accept_uuid(UUID).expect("bind");
        feed(&mut peer, src.resync_from_nothing());
        let base_covers = src.committed().log.next_transfer.0 - 1;
        let names: Vec<Vec<u8>> = (0..FILES).map(|i| format!("f{i}").into_bytes()).collect();
        for n in &names {
            src.vol
                .create(ROOT_INO, n, FileKind::Regular, 0o644, 0, 0, 0)
                .unwrap();
        }
        Run {
            src,
            peer,
            _dir: dir,
            names,
            sent_cps: 0,
            base_covers,
            non_full: 0,
            misses: 0,
        }
    }

    fn ino(&self, file: usize) -> twinfs_fs::Ino {
        self.src
            .vol
            .lookup(twinfs_fs::View::Live, ROOT_INO, &self.names[file])
            .unwrap()
            .ino
    }

    fn apply(&mut self, op: &Op) {
        let vol = &self.src.vol;
        match *op {
            Op::Write {
                file,
                offset,
                len,
                seed,
            } => {
                vol.write(self.ino(file), offset, &pattern(len, seed), false)
                    .unwrap();
            }
            Op::Truncate { file, size } => {
                let ch = AttrChanges {
                    size: Some(size),
                    ..Default::default()
                };
                vol.setattr(self.ino(file), &ch).unwrap();
            }
            Op::Recreate { file } => {
                vol.unlink(ROOT_INO, &self.names[file]).unwrap();
                vol.create(
                    ROOT_INO,
                    &self.names[file],
                    FileKind::Regular,
                    0o644,
                    0,
                    0,
                    0,
                )
                .unwrap();
            }
            Op::SetXattr {
                file,
                value_len,
                seed,
            } => {
                vol.setxattr(self.ino(file), b"user.t", &pattern(value_len, seed), 0)
                    .unwrap();
            }
            Op::Cp { corrupt } => {
                self.src.vol.fsync().unwrap();
                self.src.vol.checkpoint().unwrap();
                self.send_new_cps(corrupt);
            }
        }
    }

    /// Sends every CP captured since the last call, each after its transfers.
    fn send_new_cps(&mut self, corrupt: Option<Corruption>) {
        let cps: Vec<CapCp> = self.src.cap.lock().unwrap().cps[self.sent_cps..].to_vec();
        self.sent_cps += cps.len();
        for cp in cps {
            self.send_cp(&cp, corrupt);
        }
    }

    fn send_cp(&mut self, cp: &CapCp, corrupt: Option<Corruption>) {
        let from = self.peer.resume_point().durable_transfer + 1;
        let mut msgs = transfer_messages(&self.src.batches_from(from));
        msgs.push(Message::CpBegin {
            cp: cp.cp,
            base_cp: Some(cp.base),
            covers_transfer: cp.covers,
            resync: false,
        });
        let mut blocks: Vec<CpBlock> = cp
            .blocks
            .iter()
            .map(|b| CpBlock {
                addr: b.addr,
                hash: b.hash,
                enc: encode_best(b, self.base_covers),
            })
            .collect();
        let candidates: Vec<usize> = (0..blocks.len())
            .filter(|&i| !matches!(blocks[i].enc, Encoding::Full(_)))
            .collect();
        self.non_full += candidates.len();
        let mut damaged = None;
        if let (Some(c), false) = (corrupt, candidates.is_empty()) {
            let i = candidates[c.pick % candidates.len()];
            assert!(damage(&mut blocks[i], c.how));
            damaged = Some((blocks[i].addr, c.how));
        }
        for chunk in blocks.chunks(MAX_BLOCKS_PER_CP_FRAME) {
            msgs.push(Message::CpBlocks {
                cp: cp.cp,
                blocks: chunk.to_vec(),
            });
        }
        let end = Message::CpEnd {
            cp: cp.cp,
            superblock: cp.superblock.clone(),
            root_hash: cp.sb.root_hash().0,
        };
        msgs.push(end.clone());
        let mut replies = feed(&mut self.peer, msgs);

        // Resend in full whatever the peer asks for, until it applies.
        for _round in 0..3 {
            let missing: Vec<u64> = replies
                .iter()
                .filter_map(|m| match m {
                    Message::CpMissing { addrs, .. } => Some(addrs.clone()),
                    _ => None,
                })
                .flatten()
                .collect();
            if missing.is_empty() {
                break;
            }
            self.misses += missing.len();
            let resend = missing
                .iter()
                .map(|a| {
                    let b = cp.blocks.iter().find(|b| b.addr == *a).unwrap_or_else(|| {
                        panic!("CP {}: the peer asked for {a}, not in the CP", cp.cp)
                    });
                    CpBlock {
                        addr: b.addr,
                        hash: b.hash,
                        enc: Encoding::Full(b.data.clone()),
                    }
                })
                .collect();
            replies = feed(
                &mut self.peer,
                vec![
                    Message::CpBlocks {
                        cp: cp.cp,
                        blocks: resend,
                    },
                    end.clone(),
                ],
            );
        }
        if let Some((addr, How::Hash)) = damaged {
            // A wrong hash can never verify: the block must have been asked for.
            assert!(
                self.misses > 0,
                "CP {}: block {addr} with a wrong hash was not asked for",
                cp.cp
            );
        }
        let applied: Vec<(u64, [u8; 32])> = replies
            .iter()
            .filter_map(|m| match m {
                Message::CpApplied { cp, root_hash } => Some((*cp, *root_hash)),
                _ => None,
            })
            .collect();
        assert_eq!(
            applied,
            vec![(cp.cp, cp.sb.root_hash().0)],
            "CP {} (damaged: {damaged:?}): replies {replies:?}",
            cp.cp
        );
        self.base_covers = cp.covers.max(self.base_covers);
    }

    /// Every block of the mirror equals the source's (deep hash).
    fn check_deep(&mut self) {
        let cp = self.src.committed().cp.0;
        let mut replies = Vec::new();
        self.peer
            .handle(Message::VerifyRequest { cp, deep: true }, &mut replies)
            .unwrap();
        match &replies[..] {
            [Message::VerifyReply {
                root_hash,
                deep_hash: Some(h),
                ..
            }] => {
                assert_eq!(*root_hash, self.src.committed().root_hash().0);
                assert_eq!(h[..], self.src.deep_hash()[..], "deep hash at CP {cp}");
            }
            other => panic!("verify at CP {cp}: {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn best_cps_converge_even_with_damaged_encodings(ops in proptest::collection::vec(op(), 1..60)) {
        init_log();
        let mut run = Run::new();
        for op in &ops {
            run.apply(op);
        }
        run.apply(&Op::Cp { corrupt: None });
        run.check_deep();
    }
}

/// A fixed sequence that certainly uses recipes and deltas, with damage in
/// every CP, so the property above cannot pass by never exercising them.
#[test]
fn damaged_recipes_and_deltas_are_asked_for_and_resent() {
    init_log();
    let mut run = Run::new();
    let mut ops = Vec::new();
    for round in 0..6u64 {
        ops.push(Op::Write {
            file: 0,
            offset: 0,
            len: 8 * BLOCK_SIZE,
            seed: round,
        });
        ops.push(Op::Write {
            file: 1,
            offset: 100 + round * 37,
            len: 700,
            seed: round + 50,
        });
        ops.push(Op::SetXattr {
            file: 2,
            value_len: 200,
            seed: round,
        });
        ops.push(Op::Cp {
            corrupt: Some(Corruption {
                pick: round as usize * 7,
                how: if round % 2 == 0 {
                    How::Payload
                } else {
                    How::Hash
                },
            }),
        });
    }
    for op in &ops {
        run.apply(op);
    }
    run.check_deep();
    assert!(
        run.non_full > 0,
        "no recipes, deltas or references were used"
    );
    assert!(run.misses >= 3, "only {} blocks were asked for", run.misses);
}
