//! The peer's CP applier, driven directly (no socket): every encoding rebuilt
//! and verified, missing blocks asked for and resent, CPs on another base
//! rejected, bad transfers refused, staged blocks committed through the
//! journal — and a kill between any two commit steps leaving exactly the old
//! or the new CP.

mod peer_support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use peer_support::*;
use twinfs_fs::{CpNumber, BLOCK_SIZE};
use twinfs_replicate::message::{Base, CpBlock, Encoding, Message};
use twinfs_replicate::peer::replica::Flow;
use twinfs_replicate::peer::{CommitStep, PeerError, Replica, ReplicaView};

/// Feeds messages to the replica; returns every reply.
fn feed(r: &mut Replica, msgs: &[Message]) -> Vec<Message> {
    let mut replies = Vec::new();
    for m in msgs {
        let flow = r.handle(m.clone(), &mut replies).expect("handled");
        assert_eq!(flow, Flow::Continue);
    }
    replies
}

fn applied(replies: &[Message]) -> Vec<(u64, [u8; 32])> {
    replies
        .iter()
        .filter_map(|m| match m {
            Message::CpApplied { cp, root_hash } => Some((*cp, *root_hash)),
            _ => None,
        })
        .collect()
}

fn open_bound(dir: &std::path::Path) -> Replica {
    let mut r = Replica::open(dir, None).expect("open replica");
    r.accept_uuid(UUID).expect("bind");
    feed(&mut r, &[new_source_hello()]);
    r
}

/// A source with an empty volume and a peer brought to its CP 0 by a resync
/// (the directory lives as long as the returned guard).
fn source_and_peer_at_cp0() -> (Source, tempfile::TempDir, Replica) {
    init_log();
    let src = Source::new(4096);
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = open_bound(tmp.path());
    feed(&mut peer, &src.resync_from_nothing());
    (src, tmp, peer)
}

fn kinds(msgs: &[Message]) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::new();
    for m in msgs {
        if let Message::CpBlocks { blocks, .. } = m {
            for b in blocks {
                out.insert(match &b.enc {
                    Encoding::Full(_) => "full",
                    Encoding::Ref { .. } => "ref",
                    Encoding::Recipe {
                        base: Base::Zero, ..
                    } => "recipe-zero",
                    Encoding::Recipe {
                        base: Base::Prev { .. },
                        ..
                    } => "recipe-prev",
                    Encoding::Recipe {
                        base: Base::Ref { .. },
                        ..
                    } => "recipe-ref",
                    Encoding::Delta { .. } => "delta",
                });
            }
        }
    }
    out
}

#[test]
fn every_encoding_is_rebuilt_verified_and_committed() {
    init_log();
    let src = Source::new(4096);
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = open_bound(tmp.path());

    let replies = feed(&mut peer, &src.resync_from_nothing());
    assert_eq!(applied(&replies), vec![(0, src.committed().root_hash().0)]);

    // CP 1: a file of whole blocks (references) and a small one.
    let a = src.create("a");
    let mut a_data = pattern(6 * BLOCK_SIZE, 1);
    src.write(a, 0, &a_data);
    let b = src.create("b");
    src.write(b, 0, b"small file");
    let cp1 = src.checkpoint();
    // CP 2: partial writes over old blocks, into new blocks, and over a block
    // logged whole in this CP.
    let patch = pattern(300, 2);
    src.write(a, 2 * BLOCK_SIZE as u64 + 100, &patch);
    a_data[2 * BLOCK_SIZE + 100..2 * BLOCK_SIZE + 400].copy_from_slice(&patch);
    src.write(a, 9 * BLOCK_SIZE as u64 + 7, b"beyond the end");
    a_data.resize(9 * BLOCK_SIZE + 7, 0);
    a_data.extend_from_slice(b"beyond the end");
    let whole = pattern(BLOCK_SIZE, 3);
    src.write(a, 4 * BLOCK_SIZE as u64, &whole);
    src.write(a, 4 * BLOCK_SIZE as u64 + 10, b"0123456789");
    a_data[4 * BLOCK_SIZE..5 * BLOCK_SIZE].copy_from_slice(&whole);
    a_data[4 * BLOCK_SIZE + 10..4 * BLOCK_SIZE + 20].copy_from_slice(b"0123456789");
    let cp2 = src.checkpoint();

    let mut sent = Vec::new();
    for cp in [&cp1, &cp2] {
        let from = peer.resume_point().durable_transfer + 1;
        let mut msgs = transfer_messages(&src.batches_from(from));
        msgs.extend(cp_messages(cp, Enc::Best));
        let replies = feed(&mut peer, &msgs);
        assert!(
            replies
                .iter()
                .all(|m| !matches!(m, Message::CpMissing { .. } | Message::CpRejected { .. })),
            "CP {} applied without resends: {replies:?}",
            cp.cp
        );
        assert_eq!(applied(&replies), vec![(cp.cp, cp.sb.root_hash().0)]);
        sent.extend(msgs);
    }
    let used = kinds(&sent);
    for k in [
        "ref",
        "recipe-zero",
        "recipe-prev",
        "recipe-ref",
        "delta",
        "full",
    ] {
        assert!(used.contains(k), "the CPs used {used:?}, not {k}");
    }

    // The mirror is the source's image, block for block.
    let mut replies = Vec::new();
    peer.handle(
        Message::VerifyRequest {
            cp: cp2.cp,
            deep: true,
        },
        &mut replies,
    )
    .unwrap();
    assert_eq!(
        replies,
        vec![Message::VerifyReply {
            cp: cp2.cp,
            root_hash: src.committed().root_hash().0,
            deep_hash: Some(src.deep_hash().to_vec()),
        }]
    );
    // Transfers the CPs contain are released.
    assert_eq!(peer.log_store().transfers(), 0);
    let path = peer.image().path().to_path_buf();
    drop(peer);
    let view = open_read_only(&path);
    assert_eq!(view.committed().cp, CpNumber(cp2.cp));
    assert_eq!(read_file(&view, "a"), a_data);
    assert_eq!(read_file(&view, "b"), b"small file");
}

#[test]
fn a_block_that_cannot_be_rebuilt_is_asked_for_and_the_resend_applies() {
    let (src, _tmp, mut peer) = source_and_peer_at_cp0();
    let a = src.create("a");
    src.write(a, 0, &pattern(3 * BLOCK_SIZE, 9));
    let cp1 = src.checkpoint();

    let mut msgs = transfer_messages(&src.batches_from(1));
    let mut cp = cp_messages(&cp1, Enc::Best);
    // Spoil two blocks: a reference whose hash is wrong, and a Full block of wrong bytes.
    let mut spoiled = Vec::new();
    for m in cp.iter_mut() {
        if let Message::CpBlocks { blocks, .. } = m {
            let r = blocks
                .iter_mut()
                .find(|b| matches!(b.enc, Encoding::Ref { .. }))
                .unwrap();
            r.hash[0] ^= 1;
            spoiled.push(r.addr);
            let f = blocks
                .iter_mut()
                .find(|b| matches!(b.enc, Encoding::Full(_)))
                .unwrap();
            if let Encoding::Full(d) = &mut f.enc {
                d[77] ^= 0xff;
            }
            spoiled.push(f.addr);
        }
    }
    spoiled.sort_unstable();
    msgs.extend(cp.clone());
    let replies = feed(&mut peer, &msgs);
    let missing: Vec<_> = replies
        .iter()
        .filter(|m| matches!(m, Message::CpMissing { .. }))
        .cloned()
        .collect();
    assert_eq!(
        missing,
        vec![Message::CpMissing {
            cp: cp1.cp,
            addrs: spoiled.clone(),
            more: false
        }]
    );
    assert!(applied(&replies).is_empty(), "the CP stays open");
    assert_eq!(peer.applied().unwrap().cp, 0);
    // Neither bad block was written.
    for &a in &spoiled {
        let good = &cp1.blocks.iter().find(|b| b.addr == a).unwrap().data;
        let mut on_disk = vec![0u8; BLOCK_SIZE];
        peer.image().read_block(a, &mut on_disk).unwrap();
        assert_ne!(&on_disk, good);
    }

    // The source resends them in full, then the same CpEnd.
    let resend: Vec<CpBlock> = spoiled
        .iter()
        .map(|&a| {
            let b = cp1.blocks.iter().find(|b| b.addr == a).unwrap();
            CpBlock {
                addr: a,
                hash: b.hash,
                enc: Encoding::Full(b.data.clone()),
            }
        })
        .collect();
    let end = cp.last().unwrap().clone();
    let replies = feed(
        &mut peer,
        &[
            Message::CpBlocks {
                cp: cp1.cp,
                blocks: resend,
            },
            end,
        ],
    );
    assert_eq!(applied(&replies), vec![(cp1.cp, cp1.sb.root_hash().0)]);
    let mut replies = Vec::new();
    peer.handle(Message::VerifyRequest { cp: 1, deep: true }, &mut replies)
        .unwrap();
    assert!(
        matches!(&replies[0], Message::VerifyReply { deep_hash: Some(h), .. } if h[..] == src.deep_hash()[..])
    );
}

#[test]
fn a_cp_on_another_base_is_rejected_and_its_frames_are_ignored() {
    let (src, _tmp, mut peer) = source_and_peer_at_cp0();
    let a = src.create("a");
    src.write(a, 0, b"one");
    let cp1 = src.checkpoint();
    src.write(a, 0, b"two");
    let cp2 = src.checkpoint();

    feed(&mut peer, &transfer_messages(&src.batches_from(1)));
    let replies = feed(&mut peer, &cp_messages(&cp2, Enc::Full));
    assert_eq!(
        replies.len(),
        1,
        "only the rejection, nothing for the ignored frames: {replies:?}"
    );
    assert!(
        matches!(&replies[0], Message::CpRejected { cp: 2, reason } if reason.contains("CP 1") && reason.contains("CP 0")),
        "{replies:?}"
    );
    assert_eq!(peer.applied().unwrap().cp, 0);
    let replies = feed(&mut peer, &cp_messages(&cp1, Enc::Best));
    assert_eq!(applied(&replies), vec![(1, cp1.sb.root_hash().0)]);

    // A superblock that does not match the announced root hash is rejected too.
    let mut bad = cp_messages(&cp2, Enc::Best);
    if let Some(Message::CpEnd { root_hash, .. }) = bad.last_mut() {
        root_hash[3] ^= 1;
    }
    let replies = feed(&mut peer, &bad);
    assert!(
        matches!(&replies[..], [Message::CpRejected { cp: 2, reason }] if reason.contains("root hash")),
        "{replies:?}"
    );
    assert_eq!(peer.applied().unwrap().cp, 1);
}

/// CPs are pipelined: the source may answer a `CpMissing` for CP 1 after
/// CP 2's begin left. That begin ends CP 1 here and is rejected (it builds on
/// CP 1); the late resend of CP 1 is ignored, not a protocol error that
/// would end the session, and the resync the rejection starts applies.
#[test]
fn a_resend_that_crosses_the_next_cp_is_ignored_and_the_resync_applies() {
    let (src, _tmp, mut peer) = source_and_peer_at_cp0();
    let a = src.create("a");
    src.write(a, 0, &pattern(3 * BLOCK_SIZE, 5));
    let cp1 = src.checkpoint();
    src.write(a, 0, b"two");
    let cp2 = src.checkpoint();
    feed(&mut peer, &transfer_messages(&src.batches_from(1)));

    let mut cp = cp_messages(&cp1, Enc::Full);
    let mut spoiled = None;
    if let Some(Message::CpBlocks { blocks, .. }) = cp.get_mut(1) {
        if let Encoding::Full(d) = &mut blocks[0].enc {
            d[0] ^= 1;
            spoiled = Some(blocks[0].addr);
        }
    }
    let spoiled = spoiled.expect("a Full block in CP 1's first frame");
    let replies = feed(&mut peer, &cp);
    assert!(
        matches!(&replies[..], [Message::CpMissing { cp: 1, addrs, more: false }] if addrs == &vec![spoiled]),
        "{replies:?}"
    );

    let begin2 = cp_messages(&cp2, Enc::Best).remove(0);
    assert!(matches!(begin2, Message::CpBegin { cp: 2, .. }));
    let replies = feed(&mut peer, &[begin2]);
    assert!(
        matches!(&replies[..], [Message::CpRejected { cp: 2, .. }]),
        "{replies:?}"
    );

    let good = cp1.blocks.iter().find(|b| b.addr == spoiled).unwrap();
    let late = [
        Message::CpBlocks {
            cp: 1,
            blocks: vec![CpBlock {
                addr: spoiled,
                hash: good.hash,
                enc: Encoding::Full(good.data.clone()),
            }],
        },
        cp.last().unwrap().clone(),
    ];
    assert!(
        feed(&mut peer, &late).is_empty(),
        "the late resend is ignored"
    );
    assert_eq!(peer.applied().unwrap().cp, 0);

    let replies = feed(&mut peer, &src.resync_from(0));
    assert_eq!(applied(&replies), vec![(2, cp2.sb.root_hash().0)]);
}

#[test]
fn a_damaged_or_foreign_transfer_ends_the_session() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = open_bound(tmp.path());
    let good = make_batch(UUID, 1, [0; 32], 1, 5);
    let mut replies = Vec::new();
    peer.handle(
        Message::Transfer {
            id: 1,
            batch: good.bytes.to_vec(),
        },
        &mut replies,
    )
    .unwrap();
    assert_eq!(replies, vec![Message::TransferAck { id: 1 }]);

    let mut flipped = make_batch(UUID, 2, good.hash, 1, 6).bytes.to_vec();
    flipped[5000] ^= 1;
    let err = peer
        .handle(
            Message::Transfer {
                id: 2,
                batch: flipped,
            },
            &mut replies,
        )
        .unwrap_err();
    assert!(
        matches!(&err, PeerError::Protocol(m) if m.contains("transfer 2") && m.contains("checksum")),
        "{err}"
    );

    let foreign = make_batch([9; 16], 2, good.hash, 1, 6);
    let err = peer
        .handle(
            Message::Transfer {
                id: 2,
                batch: foreign.bytes.to_vec(),
            },
            &mut replies,
        )
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&"09".repeat(16)) && text.contains(&"5a".repeat(16)),
        "{text}"
    );

    let renumbered = make_batch(UUID, 3, good.hash, 1, 6);
    let err = peer
        .handle(
            Message::Transfer {
                id: 2,
                batch: renumbered.bytes.to_vec(),
            },
            &mut replies,
        )
        .unwrap_err();
    assert!(err.to_string().contains("carries log batch 3"), "{err}");
    assert_eq!(
        peer.log_store().ids().collect::<Vec<_>>(),
        vec![1],
        "nothing bad was stored"
    );
}

/// A peer at CP 1 while the source went on to CP 3 and reused blocks CP 1
/// uses (no peer hold): the resync from CP 1 must stage those blocks.
struct GapScenario {
    cp0: Vec<Message>,
    cp1: Vec<Message>,
    cp1_root: [u8; 32],
    cp1_deep: [u8; 32],
    cp1_content: Vec<u8>,
    resync3: Vec<Message>,
    cp3_root: [u8; 32],
    cp3_deep: [u8; 32],
    cp3_content: Vec<u8>,
}

fn gap_scenario() -> GapScenario {
    // A data area of 420 blocks: room for two versions of a 150-block file
    // and the reserve, but not three, so that CP 3 wraps around onto CP 1's.
    let src = Source::new(2 + twinfs_fs::volume::MIN_LOG_BLOCKS + 420);
    let cp0 = src.resync_from_nothing();
    let a = src.create("a");
    let len = 150 * BLOCK_SIZE;
    let v1 = pattern(len, 11);
    src.write(a, 0, &v1);
    let c1 = src.checkpoint();
    let mut cp1 = transfer_messages(&src.batches_from(1));
    cp1.extend(cp_messages(&c1, Enc::Best));
    let cp1_blocks: BTreeSet<u64> = {
        let mut s = BTreeSet::new();
        twinfs_fs::diff::walk_image(
            src.vol.cache(),
            &src.committed(),
            CpNumber(0),
            &mut |p, _| {
                s.insert(p.addr.0);
                Ok(())
            },
        )
        .unwrap();
        s
    };
    let (cp1_root, cp1_deep) = (src.committed().root_hash().0, src.deep_hash());
    src.write(a, 0, &pattern(len, 12));
    src.checkpoint();
    let v3 = pattern(len, 13);
    src.write(a, 0, &v3);
    let c3 = src.checkpoint();
    assert_eq!(c3.cp, 3);
    let resync3 = src.resync_from(1);
    let reused: Vec<u64> = resync3
        .iter()
        .filter_map(|m| match m {
            Message::CpBlocks { blocks, .. } => Some(blocks.iter().map(|b| b.addr)),
            _ => None,
        })
        .flatten()
        .filter(|a| cp1_blocks.contains(a))
        .collect();
    assert!(
        reused.len() > 10,
        "CP 3 reuses blocks of CP 1 ({} of them)",
        reused.len()
    );
    GapScenario {
        cp0,
        cp1,
        cp1_root,
        cp1_deep,
        cp1_content: v1,
        resync3,
        cp3_root: src.committed().root_hash().0,
        cp3_deep: src.deep_hash(),
        cp3_content: v3,
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl ReplicaView for Recorder {
    fn before_overwrite(&self, cp: u64) {
        self.0.lock().unwrap().push(format!("before {cp}"));
    }
    fn after_commit(&self, cp: u64, _root_hash: [u8; 32]) {
        self.0.lock().unwrap().push(format!("commit {cp}"));
    }
}

fn deep_hash_of(peer: &Replica) -> [u8; 32] {
    let sb = peer.image().committed().unwrap();
    twinfs_fs::diff::deep_hash(peer.image().cache(), &**peer.image().device(), sb).unwrap()
}

#[test]
fn blocks_the_current_image_uses_are_staged_and_committed_through_the_journal() {
    init_log();
    let s = gap_scenario();
    let tmp = tempfile::tempdir().unwrap();
    let events = Arc::new(Recorder::default());
    let mut peer = Replica::open(tmp.path(), Some(events.clone())).unwrap();
    peer.accept_uuid(UUID).unwrap();
    feed(&mut peer, &s.cp0);
    assert_eq!(applied(&feed(&mut peer, &s.cp1)), vec![(1, s.cp1_root)]);

    let replies = feed(&mut peer, &s.resync3);
    assert_eq!(applied(&replies), vec![(3, s.cp3_root)]);
    // A view of CP 1 is told before staged blocks overwrite what its readers read.
    assert_eq!(
        *events.0.lock().unwrap(),
        vec!["commit 0", "commit 1", "before 3", "commit 3"]
    );
    assert_eq!(deep_hash_of(&peer), s.cp3_deep);
    assert!(
        !tmp.path().join("journal").exists(),
        "the journal is gone after the commit"
    );
    let path = peer.image().path().to_path_buf();
    drop(peer);
    assert_eq!(read_file(&open_read_only(&path), "a"), s.cp3_content);
}

#[test]
fn a_kill_between_commit_steps_leaves_exactly_the_old_or_the_new_cp() {
    init_log();
    let s = gap_scenario();
    for (step, expect_new) in [
        (CommitStep::BlocksSynced, false),
        (CommitStep::JournalCommitted, true),
        (CommitStep::StagedCopied, true),
        (CommitStep::SuperblockWritten, true),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut peer = open_bound(tmp.path());
        feed(&mut peer, &s.cp0);
        feed(&mut peer, &s.cp1);
        peer.set_crash_after(Some(step));
        let mut replies = Vec::new();
        let mut crashed = false;
        for m in &s.resync3 {
            match peer.handle(m.clone(), &mut replies) {
                Ok(_) => {}
                Err(PeerError::SimulatedCrash(at)) => {
                    assert_eq!(at, step);
                    crashed = true;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(crashed, "the commit stopped after {step:?}");
        assert!(applied(&replies).is_empty());
        drop(peer);

        // Restart.
        let peer = Replica::open(tmp.path(), None).unwrap();
        let (cp, root, deep, content) = if expect_new {
            (3, s.cp3_root, s.cp3_deep, &s.cp3_content)
        } else {
            (1, s.cp1_root, s.cp1_deep, &s.cp1_content)
        };
        let a = peer.applied().unwrap();
        assert_eq!((a.cp, a.root_hash), (cp, root), "after a kill at {step:?}");
        assert_eq!(
            deep_hash_of(&peer),
            deep,
            "every block of CP {cp} intact after a kill at {step:?}"
        );
        assert!(!tmp.path().join("journal").exists());
        let path = peer.image().path().to_path_buf();
        drop(peer);
        assert_eq!(&read_file(&open_read_only(&path), "a"), content);

        // And the peer goes on: the resync applies after the restart.
        if !expect_new {
            let mut peer = Replica::open(tmp.path(), None).unwrap();
            assert_eq!(applied(&feed(&mut peer, &s.resync3)), vec![(3, s.cp3_root)]);
            assert_eq!(deep_hash_of(&peer), s.cp3_deep);
        }
    }
}
