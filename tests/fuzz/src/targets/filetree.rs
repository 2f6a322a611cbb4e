//! File-tree indirect blocks (`fs/src/filetree.rs`): 128 block pointers
//! each. The input is a root (height, which block, birth) and up to eight
//! blocks (see [`super::blocks`]), then block indices to look up. Checked:
//! nothing panics on any pointers; `lookup`, `lookup_run`, `count_blocks`,
//! `find` and `walk` agree about which blocks hold data.
//!
//! Heights above 2 are looked up but not scanned: a crafted tree that names
//! the same indirect block from every slot makes a full scan visit 128^h
//! pointers (the read budget stops walks, but `count_blocks` over a cached
//! block reads it once per parent slot).

use arbitrary::Unstructured;
use twinfs_fs::btree::TreeRoot;
use twinfs_fs::filetree::{self, span, MAX_HEIGHT};
use twinfs_fs::{BlockAddr, BlockPtr, CpNumber, Hash128};

use super::blocks::{Blocks, BASE_ADDR};

/// Longest run looked up at once.
const MAX_RUN: u64 = 512;

/// Entry point.
pub fn run(data: &[u8]) {
    let (header, store, rest) = Blocks::from_input(data, 8);
    let height = header[0] % (MAX_HEIGHT + 2);
    let which = u64::from(header[1] % 8);
    let null_root = header[2] == 0xFF;
    let mut u = Unstructured::new(rest);
    let root = TreeRoot {
        ptr: if null_root {
            BlockPtr::NULL
        } else {
            BlockPtr {
                addr: BlockAddr(BASE_ADDR + which),
                birth: CpNumber(1),
                hash: Hash128([0; 16]),
            }
        },
        height,
    };
    let top = if height <= MAX_HEIGHT {
        span(height)
    } else {
        1
    };
    let start = u.arbitrary::<u64>().unwrap_or(0) % (top + 2);
    let count = u.int_in_range(0..=MAX_RUN).unwrap_or(0);

    store.reset_budget();
    let run = filetree::lookup_run(&store, &root, start, count);
    if height > MAX_HEIGHT {
        assert!(run.is_err(), "a tree of height {height} was read");
        assert!(filetree::lookup(&store, &root, start).is_err());
        return;
    }
    if let Ok(run) = &run {
        assert_eq!(run.len() as u64, count);
        for (i, p) in run.iter().enumerate().step_by(7) {
            store.reset_budget();
            let Ok(one) = filetree::lookup(&store, &root, start + i as u64) else {
                continue;
            };
            // A hole is a hole whatever the other fields of its null pointer hold.
            assert!(
                one == *p || (one.is_null() && p.is_null()),
                "lookup and lookup_run disagree at {}",
                start + i as u64
            );
        }
        if store.blocks.len() <= 8 && height <= 2 {
            store.reset_budget();
            if let Ok(n) = filetree::count_blocks(&store, &root, start..start + count) {
                let present = run.iter().filter(|p| !p.is_null()).count() as u64;
                assert_eq!(n, present, "count_blocks and lookup_run disagree");
            }
        }
    }
    if height <= 2 {
        for want_data in [true, false] {
            store.reset_budget();
            let Ok(found) = filetree::find(&store, &root, start, want_data) else {
                continue;
            };
            if let Some(i) = found {
                assert!(i >= start);
                store.reset_budget();
                if let Ok(p) = filetree::lookup(&store, &root, i) {
                    assert_eq!(!p.is_null(), want_data, "find({want_data}) landed on {i}");
                }
            }
        }
        store.reset_budget();
        let mut data_blocks = 0u64;
        let walked = filetree::walk(&store, &root, CpNumber(0), &mut |level, _, _| {
            data_blocks += u64::from(level == 0);
            Ok(())
        });
        if walked.is_ok() {
            store.reset_budget();
            if let Ok(n) = filetree::count_blocks(&store, &root, 0..top) {
                assert_eq!(n, data_blocks, "walk and count_blocks disagree");
            }
        }
    }
}
