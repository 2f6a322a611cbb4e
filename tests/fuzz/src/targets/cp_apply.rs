//! The peer's rebuilding of one CP block from its encoding
//! (`replicate/src/peer/apply.rs`): `Full`, `Ref`, `Recipe` and `Delta`
//! blocks built from the input (see [`crate::arb::cp_block`]), over a few
//! stored transfers and base blocks of known bytes. Checked against a model
//! written from PROTOCOL.md §4 (a base, then patches in order; moves read
//! the base as it was, then ranges): the block is rebuilt exactly when every
//! source it names exists and every range lies inside the block and the
//! transfer, and then to the model's bytes; and `check` accepts it exactly
//! when it hashes to the block's hash.

use arbitrary::Unstructured;
use twinfs_fs::{Hash128, BLOCK_SIZE};
use twinfs_replicate::peer::apply::{check, rebuild_into, BlockSources};
use twinfs_replicate::{Base, Encoding, Patch};

use crate::arb;

/// Stored transfers 1..=3, transfer `t` holding `t * 3000` bytes and 4 data blocks.
const TRANSFERS: u64 = 3;
/// Base blocks 0..16 exist.
const BASE_BLOCKS: u64 = 16;

fn batch_len(t: u64) -> u64 {
    t * 3000
}

fn byte_of(t: u64, at: u64) -> u8 {
    (t.wrapping_mul(31) ^ at.wrapping_mul(7)) as u8
}

struct Sources;

impl BlockSources for Sources {
    fn transfer_bytes(&self, transfer: u64, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        if !(1..=TRANSFERS).contains(&transfer) || offset + buf.len() as u64 > batch_len(transfer) {
            return Err("not held".into());
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = byte_of(transfer, offset + i as u64);
        }
        Ok(())
    }

    fn transfer_block(&self, transfer: u64, block_no: u32, buf: &mut [u8]) -> Result<(), String> {
        if !(1..=TRANSFERS).contains(&transfer) || block_no >= 4 {
            return Err("not held".into());
        }
        buf.fill((transfer as u8) << 4 | block_no as u8);
        Ok(())
    }

    fn base_block(&self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        if addr >= BASE_BLOCKS {
            return Err("not in the base".into());
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (addr as u8).wrapping_add(i as u8);
        }
        Ok(())
    }
}

/// The model: the block PROTOCOL.md describes, or `None` when it cannot be built.
fn model(enc: &Encoding) -> Option<Vec<u8>> {
    let base = |b: &Base| -> Option<Vec<u8>> {
        let mut out = vec![0u8; BLOCK_SIZE];
        match *b {
            Base::Zero => {}
            Base::Prev { addr } => Sources.base_block(addr, &mut out).ok()?,
            Base::Ref { transfer, block_no } => {
                Sources.transfer_block(transfer, block_no, &mut out).ok()?
            }
        }
        Some(out)
    };
    let inside = |off: u16, len: u16| usize::from(off) + usize::from(len) <= BLOCK_SIZE;
    match enc {
        Encoding::Full(b) => (b.len() == BLOCK_SIZE).then(|| b.clone()),
        Encoding::Ref { transfer, block_no } => {
            let mut out = vec![0u8; BLOCK_SIZE];
            Sources
                .transfer_block(*transfer, *block_no, &mut out)
                .ok()?;
            Some(out)
        }
        Encoding::Recipe { base: b, patches } => {
            let mut out = base(b)?;
            for p in patches {
                match *p {
                    Patch::Bytes {
                        offset,
                        transfer,
                        src_offset,
                        len,
                    } => {
                        if !inside(offset, len)
                            || !(1..=TRANSFERS).contains(&transfer)
                            || u64::from(src_offset) + u64::from(len) > batch_len(transfer)
                        {
                            return None;
                        }
                        for i in 0..usize::from(len) {
                            out[usize::from(offset) + i] =
                                byte_of(transfer, u64::from(src_offset) + i as u64);
                        }
                    }
                    Patch::Zero { offset, len } => {
                        if !inside(offset, len) {
                            return None;
                        }
                        out[usize::from(offset)..usize::from(offset) + usize::from(len)].fill(0);
                    }
                }
            }
            Some(out)
        }
        Encoding::Delta {
            base: b,
            moves,
            ranges,
        } => {
            let original = base(b)?;
            let mut out = original.clone();
            for m in moves {
                if !inside(m.from, m.len) || !inside(m.to, m.len) {
                    return None;
                }
                let (from, to, len) = (usize::from(m.from), usize::from(m.to), usize::from(m.len));
                out[to..to + len].copy_from_slice(&original[from..from + len]);
            }
            for r in ranges {
                let off = usize::from(r.offset);
                if off + r.data.len() > BLOCK_SIZE {
                    return None;
                }
                out[off..off + r.data.len()].copy_from_slice(&r.data);
            }
            Some(out)
        }
    }
}

/// Entry point.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(mut block) = arb::cp_block(&mut u) else {
        return;
    };
    let want = model(&block.enc);
    // Half the time the block's hash is the model's, so `check` is tried on both sides.
    if let (Some(w), true) = (&want, u.arbitrary::<bool>().unwrap_or(false)) {
        block.hash = Hash128::of(w).0;
    }
    let mut out = vec![0xA5u8; BLOCK_SIZE];
    let got = rebuild_into(&block, &Sources, &mut out);
    assert_eq!(
        got.is_ok(),
        want.is_some(),
        "rebuild says {got:?} for {:?}",
        block.enc
    );
    if let Some(w) = want {
        assert_eq!(out, w, "rebuilt otherwise than PROTOCOL.md says");
        let verdict = check(&block, Hash128::of(&out));
        assert_eq!(verdict.is_ok(), Hash128::of(&w).0 == block.hash);
    }
}
