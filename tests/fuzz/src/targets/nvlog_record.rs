//! NVLOG records (`Record::decode`), raw: the input's first byte says how
//! many whole blocks the batch's block area holds (0 to 7), the rest is the
//! records area, decoded one record after another until the first error.
//! Checked: every record decoded re-encodes to bytes that decode to the same
//! record, its position advances, and a write's parts add up and are split
//! at block boundaries as `Write::split` would split them.

use std::sync::Arc;

use twinfs_fs::nvlog::record::{head_len, Record};
use twinfs_fs::{Block, Hash128, BLOCK_SIZE, BLOCK_SIZE_U64};

/// Entry point.
pub fn run(data: &[u8]) {
    let Some((&ctl, area)) = data.split_first() else {
        return;
    };
    let blocks: Vec<Arc<Block>> = (0..ctl % 8)
        .map(|i| Arc::new([i.wrapping_mul(37); BLOCK_SIZE]))
        .collect();
    let hashes: Vec<Hash128> = blocks.iter().map(|b| Hash128::of(&b[..])).collect();
    let mut pos = 0;
    while pos < area.len() {
        let before = pos;
        let Ok((rec, span)) = Record::decode(area, &mut pos, &blocks, &hashes) else {
            assert_eq!(pos, before, "a failed decode moved the position");
            return;
        };
        assert!(pos > before && pos <= area.len());
        if let Record::Write(w) = &rec {
            assert_eq!(w.blocks.len(), w.hashes.len());
            assert_eq!(w.head.len() as u64, head_len(w.offset, w.len()));
            assert!(w.tail.len() < BLOCK_SIZE);
            assert!(w.offset.checked_add(w.len()).is_some());
            if !w.blocks.is_empty() {
                assert_eq!((w.offset + w.head.len() as u64) % BLOCK_SIZE_U64, 0);
            }
            assert!(span.head_off as usize >= before && span.tail_off as usize <= pos);
        }
        let mut encoded = Vec::new();
        rec.encode(span.first_block, &mut encoded);
        let mut at = 0;
        let (again, _) = Record::decode(&encoded, &mut at, &blocks, &hashes)
            .expect("a re-encoded record decodes");
        assert_eq!(at, encoded.len());
        assert_eq!(again, rec);
    }
}
