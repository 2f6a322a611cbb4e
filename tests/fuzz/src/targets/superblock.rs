//! Superblock slots (`Superblock::decode`, `superblock::read_latest`).
//!
//! The input's first byte is a control byte: bit 0 writes the magic, version
//! and block size (so the fuzzer gets past them), bit 1 fixes up the
//! checksum (blake3 of bytes 0..4064, as FORMAT.md says) so that the fields
//! behind it are decoded rather than refused, bits 2-3 pick the slot and the
//! device's size. The rest is up to two slots of 4096 bytes. Checked: what
//! decodes passes every geometry rule of FORMAT.md, re-encodes to a slot
//! that decodes to the same superblock with the same root hash; `read_latest`
//! picks the valid slot with the highest CP that belongs in its slot, and
//! refuses an image shorter than the volume.

use twinfs_fs::device::{BlockDevice, MemDevice};
use twinfs_fs::superblock::{
    self, Superblock, FORMAT_VERSION, MAGIC, MAX_VOLUME_BLOCKS, OFF_CHECKSUM,
};
use twinfs_fs::{new_block, Block, BlockAddr, BLOCK_SIZE};

/// Entry point.
pub fn run(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let (first, second) = rest.split_at(rest.len().min(BLOCK_SIZE));
    let slots = [slot(ctl, first), slot(ctl, second)];
    let chosen = u64::from(ctl >> 2 & 1);
    if let Ok(sb) = Superblock::decode(&slots[0], chosen) {
        check_rules(&sb);
        let again =
            Superblock::decode(&sb.encode(), chosen).expect("a re-encoded superblock decodes");
        assert_eq!(again, sb);
        assert_eq!(again.root_hash(), sb.root_hash());
    }

    // Both slots on a device of a size the control byte picks.
    let blocks = match ctl >> 3 & 3 {
        0 => 2,
        1 => 64,
        2 => 1 << 20,
        _ => 1 << 30,
    };
    let dev = MemDevice::new(blocks);
    for (i, s) in slots.iter().enumerate() {
        dev.write(BlockAddr(i as u64), &s[..])
            .expect("two blocks fit");
    }
    let decoded: Vec<Option<Superblock>> = (0..2u64)
        .map(|i| {
            Superblock::decode(&slots[i as usize], i)
                .ok()
                .filter(|sb| sb.slot() == i)
        })
        .collect();
    let best = decoded.iter().flatten().map(|sb| sb.cp).max();
    match superblock::read_latest(&dev) {
        Ok((sb, _)) => {
            assert_eq!(
                Some(sb.cp),
                best,
                "read_latest did not pick the newest valid slot"
            );
            assert!(decoded.iter().flatten().any(|d| *d == sb));
            assert!(sb.total_blocks <= dev.num_blocks());
        }
        Err(_) => assert!(
            best.is_none()
                || decoded
                    .iter()
                    .flatten()
                    .filter(|d| Some(d.cp) == best)
                    .all(|d| d.total_blocks > blocks),
            "read_latest refused a valid slot"
        ),
    }
}

/// A slot from `bytes` (zero-padded), with the header and checksum fixed up
/// as the control byte asks.
fn slot(ctl: u8, bytes: &[u8]) -> Box<Block> {
    let mut b = new_block();
    let n = bytes.len().min(BLOCK_SIZE);
    b[..n].copy_from_slice(&bytes[..n]);
    if ctl & 1 != 0 {
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    }
    if ctl & 2 != 0 {
        let sum = blake3::hash(&b[..OFF_CHECKSUM]);
        b[OFF_CHECKSUM..].copy_from_slice(sum.as_bytes());
    }
    b
}

/// The geometry rules of FORMAT.md ("A slot is valid when ...").
fn check_rules(sb: &Superblock) {
    assert_eq!(sb.log_start, 2);
    assert!(sb.log_blocks > 0 && sb.data_start() < sb.total_blocks);
    assert!(sb.total_blocks <= MAX_VOLUME_BLOCKS);
    assert!(sb.log.replay_offset < sb.log_blocks);
    for root in [&sb.meta, &sb.alloc] {
        assert!(
            root.ptr.is_null()
                || (root.ptr.addr.0 >= sb.data_start() && root.ptr.addr.0 < sb.total_blocks)
        );
        assert!(root.ptr.birth <= sb.cp);
    }
    if let Some(h) = &sb.peer_hold {
        assert!(h.cp <= sb.cp);
    }
}
