//! Metadata B-tree nodes (`fs/src/btree.rs` and fsck's own decoder in
//! `fs/src/fsck/node.rs`). The input is a root (level, which block, birth)
//! and up to eight blocks (see [`super::blocks`]), then changes to apply.
//! Checked:
//!
//! - the two node decoders agree on every block at every level (accept the
//!   same blocks, find the same keys, values and children);
//! - `get`, `range`, `walk`, `check`, `leaf_items` and `apply` return errors
//!   on bad nodes, never panic;
//! - when `check` finds nothing wrong, the readers agree: `range` yields
//!   strictly increasing keys, and `get` finds each with its value; `apply`
//!   then makes a tree that `check` also passes, holding exactly the old
//!   items with the changes made, and frees each replaced node once.

use std::collections::BTreeMap;

use arbitrary::Unstructured;
use twinfs_fs::btree::{self, Change, Key, TreeRoot, MAX_VALUE_SIZE};
use twinfs_fs::fsck;
use twinfs_fs::{BlockAddr, BlockPtr, CpNumber, Hash128};

use super::blocks::{Blocks, BASE_ADDR, WRITE_CP};

/// Most items read back from one tree.
const MAX_ITEMS: usize = 2000;

/// Entry point.
pub fn run(data: &[u8]) {
    let (header, mut store, rest) = Blocks::from_input(data, 8);
    let level = header[0] % 5;
    let which = u64::from(header[1] % 8);
    let birth = u64::from_le_bytes(header[2..10].try_into().expect("8 bytes"));
    let mut u = Unstructured::new(rest);

    // The two decoders agree on every block, at every level it could be at.
    for block in store.blocks.values() {
        for l in 0..=level.max(1) {
            // The same verdict and the same entries (the error texts differ).
            assert_eq!(
                btree::decode_node(block, l).ok(),
                fsck::decode_node(block, l).ok(),
                "the B-tree's and fsck's node decoders disagree at level {l}"
            );
        }
        let _ = btree::leaf_items(block);
    }

    let root = TreeRoot {
        ptr: BlockPtr {
            addr: BlockAddr(BASE_ADDR + which),
            birth: CpNumber(birth.min(WRITE_CP.0 - 1)),
            hash: Hash128([0; 16]),
        },
        height: level,
    };
    store.reset_budget();
    let problems = btree::check(&store, &root);
    let sound = matches!(&problems, Ok(p) if p.is_empty()) && !store.exhausted();

    store.reset_budget();
    let items = read_all(&store, &root);
    store.reset_budget();
    let _ = btree::walk(
        &store,
        &root,
        CpNumber(u.arbitrary().unwrap_or(0)),
        &mut |_, _, _| Ok(()),
    );
    let mut keys: Vec<Key> = items
        .as_ref()
        .map(|m| m.keys().copied().collect())
        .unwrap_or_default();
    keys.push(Key::new(
        u.arbitrary().unwrap_or(0),
        u.arbitrary().unwrap_or(0),
        u.arbitrary().unwrap_or(0),
    ));
    for key in &keys {
        store.reset_budget();
        let got = btree::get(&store, &root, key);
        if sound {
            let want = items
                .as_ref()
                .expect("a sound tree reads whole")
                .get(key)
                .cloned();
            assert_eq!(got.expect("a sound tree answers get"), want);
        }
    }
    if sound {
        assert!(items.is_ok(), "check passed but range failed: {items:?}");
    }

    // Changes, applied to the tree and to a model of it.
    let changes = changes(&mut u, &keys);
    store.reset_budget();
    let applied = btree::apply(&mut store, &root, &changes);
    if !sound {
        return;
    }
    let new_root = applied.expect("changes apply to a sound tree");
    assert_eq!(
        store.bad_free, None,
        "a node was freed twice or never existed"
    );
    let mut model = items.expect("sound");
    for (k, v) in changes {
        match v {
            Some(v) => model.insert(k, v),
            None => model.remove(&k),
        };
    }
    store.reset_budget();
    let problems = btree::check(&store, &new_root).expect("the new tree reads");
    assert_eq!(
        problems,
        Vec::<String>::new(),
        "apply made a tree check refuses"
    );
    store.reset_budget();
    assert_eq!(
        read_all(&store, &new_root).expect("the new tree reads"),
        model
    );
}

/// Every item of the tree through `range`, checking the order.
fn read_all(store: &Blocks, root: &TreeRoot) -> Result<BTreeMap<Key, Vec<u8>>, String> {
    let mut items = BTreeMap::new();
    let mut last: Option<Key> = None;
    for item in btree::range(store, root, Key::MIN, Key::MAX).take(MAX_ITEMS) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        if let Some(prev) = last {
            if prev >= k {
                return Err(format!("range yielded {k:?} after {prev:?}"));
            }
        }
        last = Some(k);
        items.insert(k, v);
    }
    Ok(items)
}

/// Up to eight changes with strictly increasing keys, near the tree's keys.
fn changes(u: &mut Unstructured, keys: &[Key]) -> Vec<Change> {
    let mut out: BTreeMap<Key, Option<Vec<u8>>> = BTreeMap::new();
    for _ in 0..u.int_in_range(0..=8).unwrap_or(0) {
        let key = match u.int_in_range(0u8..=2) {
            Ok(0) if !keys.is_empty() => keys[u.choose_index(keys.len()).unwrap_or(0)],
            _ => Key::new(
                u.int_in_range(0..=4).unwrap_or(0),
                u.int_in_range(0..=3).unwrap_or(0),
                u.arbitrary().unwrap_or(0),
            ),
        };
        if key == Key::MAX {
            continue;
        }
        let value = match u.int_in_range(0u8..=3) {
            Ok(0) => None,
            Ok(1) => Some(vec![0xEE; u.int_in_range(0..=MAX_VALUE_SIZE).unwrap_or(0)]),
            _ => Some(crate::arb::take(u, 32).unwrap_or(&[]).to_vec()),
        };
        out.insert(key, value);
    }
    out.into_iter().collect()
}
