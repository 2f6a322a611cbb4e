//! Shared by the test binaries: proptest strategies that generate valid messages.
#![allow(dead_code)]

use proptest::prelude::*;
use twinfs_replicate::message::{Move, BLOCK_BYTES, SUPERBLOCK_BYTES};
use twinfs_replicate::{Base, CpBlock, DeltaRange, Encoding, Message, Patch};

// ---- strategies: valid messages of every kind ----

pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

pub fn transfer_id() -> impl Strategy<Value = u64> {
    1..=u64::MAX
}

fn reason() -> impl Strategy<Value = String> {
    ".{0,60}"
}

fn patch() -> impl Strategy<Value = Patch> {
    let in_block = (0u16..4096).prop_flat_map(|offset| (Just(offset), 1u16..=(4096 - offset)));
    prop_oneof![
        (in_block.clone(), transfer_id(), any::<u32>()).prop_map(
            |((offset, len), transfer, src_offset)| Patch::Bytes {
                offset,
                transfer,
                src_offset,
                len
            }
        ),
        in_block.prop_map(|(offset, len)| Patch::Zero { offset, len }),
    ]
}

fn delta_ranges() -> impl Strategy<Value = Vec<DeltaRange>> {
    // Sorted, disjoint ranges: cut the block at sorted points and keep some pieces.
    prop::collection::btree_set(0u16..4096, 0..12).prop_flat_map(|cuts| {
        let cuts: Vec<u16> = cuts.into_iter().collect();
        let pieces: Vec<(u16, u16)> = cuts.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
        pieces
            .into_iter()
            .map(|(offset, len)| {
                bytes(usize::from(len)).prop_map(move |mut d| {
                    d.resize(usize::from(len), 0xAB);
                    DeltaRange { offset, data: d }
                })
            })
            .collect::<Vec<_>>()
    })
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![
        bytes(16).prop_map(|seed| {
            let mut block = seed;
            block.resize(BLOCK_BYTES, 0x5A);
            Encoding::Full(block)
        }),
        (transfer_id(), any::<u32>())
            .prop_map(|(transfer, block_no)| Encoding::Ref { transfer, block_no }),
        (
            prop_oneof![
                Just(Base::Zero),
                any::<u64>().prop_map(|addr| Base::Prev { addr })
            ],
            prop::collection::vec(patch(), 0..8)
        )
            .prop_map(|(base, patches)| Encoding::Recipe { base, patches }),
        (
            prop_oneof![
                Just(Base::Zero),
                any::<u64>().prop_map(|addr| Base::Prev { addr })
            ],
            prop::collection::vec(delta_move(), 0..4),
            delta_ranges()
        )
            .prop_map(|(base, moves, ranges)| Encoding::Delta {
                base,
                moves,
                ranges
            }),
    ]
}

fn delta_move() -> impl Strategy<Value = Move> {
    (0..BLOCK_BYTES, 0..BLOCK_BYTES, 1..=BLOCK_BYTES).prop_map(|(from, to, len)| {
        let len = len.min(BLOCK_BYTES - from).min(BLOCK_BYTES - to);
        Move {
            from: from as u16,
            to: to as u16,
            len: len.max(1) as u16,
        }
    })
}

fn cp_block() -> impl Strategy<Value = CpBlock> {
    (any::<u64>(), any::<[u8; 16]>(), encoding()).prop_map(|(addr, hash, enc)| CpBlock {
        addr,
        hash,
        enc,
    })
}

pub fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (transfer_id(), bytes(3000)).prop_map(|(id, batch)| Message::Transfer { id, batch }),
        any::<u64>().prop_map(|transfer| Message::LogEnd { transfer }),
        transfer_id().prop_map(|id| Message::TransferAck { id }),
        (1u64.., any::<Option<u64>>(), any::<u64>(), any::<bool>()).prop_map(
            |(cp, base, covers_transfer, resync)| {
                Message::CpBegin {
                    cp,
                    base_cp: base.map(|b| b % cp),
                    covers_transfer,
                    resync,
                }
            }
        ),
        (any::<u64>(), prop::collection::vec(cp_block(), 0..6))
            .prop_map(|(cp, blocks)| Message::CpBlocks { cp, blocks }),
        (any::<u64>(), bytes(8), any::<[u8; 32]>()).prop_map(|(cp, seed, root_hash)| {
            let mut superblock = seed;
            superblock.resize(SUPERBLOCK_BYTES, 1);
            Message::CpEnd {
                cp,
                superblock,
                root_hash,
            }
        }),
        (any::<u64>(), any::<[u8; 32]>())
            .prop_map(|(cp, root_hash)| Message::CpApplied { cp, root_hash }),
        (
            any::<u64>(),
            prop::collection::vec(any::<u64>(), 0..50),
            any::<bool>()
        )
            .prop_map(|(cp, addrs, more)| Message::CpMissing { cp, addrs, more }),
        (any::<u64>(), reason()).prop_map(|(cp, reason)| Message::CpRejected { cp, reason }),
        any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
        (any::<u64>(), any::<bool>()).prop_map(|(cp, deep)| Message::VerifyRequest { cp, deep }),
        (any::<u64>(), any::<[u8; 32]>(), prop::option::of(bytes(64))).prop_map(
            |(cp, root_hash, deep_hash)| Message::VerifyReply {
                cp,
                root_hash,
                deep_hash
            }
        ),
        reason().prop_map(|reason| Message::Error { reason }),
        Just(Message::Bye),
    ]
}
