//! Per-file block trees: a file's data blocks hang under a tree of indirect
//! blocks, each holding [`FANOUT`] block pointers. Height 0 means the root
//! points straight at the file's only data block. A null pointer is a hole,
//! so sparse files cost nothing for what they never wrote.
//!
//! The same structure holds the allocation map (a "file" of bitmap blocks).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::btree::{NodeReader, NodeStore, TreeRoot};
use crate::descriptor::BlockSource;
use crate::error::{FsError, Result};
use crate::rangeset::RangeSet;
use crate::types::*;

/// Pointers per indirect block.
pub const FANOUT: u64 = (BLOCK_SIZE / BlockPtr::SIZE) as u64;
/// Tallest tree: FANOUT^5 blocks = 2^35 blocks = 128 TiB.
pub const MAX_HEIGHT: u8 = 5;
/// Largest file size the trees can address.
pub const MAX_FILE_SIZE: u64 = (1u64 << (7 * MAX_HEIGHT as u32)) * BLOCK_SIZE_U64;

/// A dirty data block and its buffer descriptor.
#[derive(Clone, Debug)]
pub struct DirtyBlock {
    pub data: Arc<Block>,
    pub source: BlockSource,
    /// `Hash128` of `data` when already known (a logged whole block), so the
    /// CP need not hash it again. Cleared whenever `data` changes.
    pub hash: Option<Hash128>,
}

/// Where new data blocks go: the CP writer.
pub trait DataStore: NodeStore {
    /// Writes a data block. `prev` is the block it replaces at the same file
    /// position in the image the CP builds upon (null if none).
    fn write_data(&mut self, block: &DirtyBlock, prev: BlockPtr) -> Result<BlockPtr>;
}

/// Number of blocks a tree of `height` covers.
pub fn span(height: u8) -> u64 {
    1u64 << (7 * height as u32)
}

/// The smallest height whose tree covers block `index`.
pub fn height_for(index: u64) -> u8 {
    let mut h = 0;
    while span(h) <= index {
        h += 1;
    }
    h
}

fn child_ptr(node: &Block, i: u64) -> BlockPtr {
    let off = i as usize * BlockPtr::SIZE;
    BlockPtr::decode(&node[off..off + BlockPtr::SIZE])
}

fn children(node: &Block) -> Vec<BlockPtr> {
    (0..FANOUT).map(|i| child_ptr(node, i)).collect()
}

fn check_root(root: &TreeRoot) -> Result<()> {
    if root.height > MAX_HEIGHT {
        return Err(FsError::corrupt(
            root.ptr.addr,
            format!("file tree height {} exceeds {MAX_HEIGHT}", root.height),
        ));
    }
    Ok(())
}

/// The pointer to data block `index`, or null for a hole.
pub fn lookup(r: &impl NodeReader, root: &TreeRoot, index: u64) -> Result<BlockPtr> {
    check_root(root)?;
    if root.ptr.is_null() || index >= span(root.height) {
        return Ok(BlockPtr::NULL);
    }
    let mut ptr = root.ptr;
    for level in (1..=root.height).rev() {
        let node = r.read_node(&ptr)?;
        ptr = child_ptr(&node, (index / span(level - 1)) % FANOUT);
        if ptr.is_null() {
            break;
        }
    }
    Ok(ptr)
}

/// Pointers to data blocks `start..start+count` (null for holes), reading
/// each indirect block on the way only once.
pub fn lookup_run(
    r: &impl NodeReader,
    root: &TreeRoot,
    start: u64,
    count: u64,
) -> Result<Vec<BlockPtr>> {
    check_root(root)?;
    let mut out = vec![BlockPtr::NULL; count as usize];
    let end = start.saturating_add(count).min(span(root.height));
    if !root.ptr.is_null() && start < end {
        collect(r, root.ptr, root.height, 0, start, end, &mut |i, p| {
            out[(i - start) as usize] = p
        })?;
    }
    Ok(out)
}

fn collect(
    r: &impl NodeReader,
    ptr: BlockPtr,
    level: u8,
    base: u64,
    start: u64,
    end: u64,
    f: &mut dyn FnMut(u64, BlockPtr),
) -> Result<()> {
    if level == 0 {
        f(base, ptr);
        return Ok(());
    }
    let node = r.read_node(&ptr)?;
    let child_span = span(level - 1);
    let first = start.saturating_sub(base) / child_span;
    let last = ((end - 1 - base) / child_span).min(FANOUT - 1);
    for i in first..=last {
        let c = child_ptr(&node, i);
        if !c.is_null() {
            collect(r, c, level - 1, base + i * child_span, start, end, f)?;
        }
    }
    Ok(())
}

/// The first block index `>= from` that holds data (`want_data`) or is a hole
/// (`!want_data`); `None` when there is no such data block. Every index past
/// the tree's span is a hole.
pub fn find(
    r: &impl NodeReader,
    root: &TreeRoot,
    from: u64,
    want_data: bool,
) -> Result<Option<u64>> {
    check_root(root)?;
    let top = span(root.height);
    if root.ptr.is_null() || from >= top {
        return Ok(if want_data { None } else { Some(from) });
    }
    match find_in(r, root.ptr, root.height, 0, from, want_data)? {
        Some(i) => Ok(Some(i)),
        None if want_data => Ok(None),
        None => Ok(Some(top.max(from))),
    }
}

fn find_in(
    r: &impl NodeReader,
    ptr: BlockPtr,
    level: u8,
    base: u64,
    from: u64,
    want_data: bool,
) -> Result<Option<u64>> {
    if ptr.is_null() {
        return Ok(if want_data {
            None
        } else {
            Some(from.max(base))
        });
    }
    if level == 0 {
        return Ok(if want_data { Some(base) } else { None });
    }
    let node = r.read_node(&ptr)?;
    let child_span = span(level - 1);
    let first = from.saturating_sub(base) / child_span;
    for i in first..FANOUT {
        let cb = base + i * child_span;
        if let Some(x) = find_in(
            r,
            child_ptr(&node, i),
            level - 1,
            cb,
            from.max(cb),
            want_data,
        )? {
            return Ok(Some(x));
        }
    }
    Ok(None)
}

/// Number of data blocks present among indices `range`.
pub fn count_blocks(
    r: &impl NodeReader,
    root: &TreeRoot,
    range: std::ops::Range<u64>,
) -> Result<u64> {
    check_root(root)?;
    let end = range.end.min(span(root.height));
    let mut n = 0;
    if !root.ptr.is_null() && range.start < end {
        collect(
            r,
            root.ptr,
            root.height,
            0,
            range.start,
            end,
            &mut |_, p| {
                if !p.is_null() {
                    n += 1
                }
            },
        )?;
    }
    Ok(n)
}

/// Applies dirty blocks and hidden ranges (truncated or punched: their old
/// blocks are dropped unless rewritten) to a file tree and returns the new
/// root. Only the paths to changed blocks are rewritten; every replaced or
/// dropped block is freed once. Deterministic: children are visited in order.
pub fn apply(
    s: &mut impl DataStore,
    root: &TreeRoot,
    writes: &BTreeMap<u64, DirtyBlock>,
    hide: &RangeSet,
) -> Result<TreeRoot> {
    check_root(root)?;
    if writes.is_empty() && hide.is_empty() {
        return Ok(*root);
    }
    let needed = writes.keys().next_back().map_or(0, |&i| height_for(i));
    if needed > MAX_HEIGHT {
        return Err(FsError::FileTooBig {
            limit: MAX_FILE_SIZE,
        });
    }
    let height = root.height.max(needed);
    let old = Old {
        ptr: root.ptr,
        level: root.height,
    };
    let ptr = rebuild(s, old, height, 0, writes, hide)?;
    Ok(if ptr.is_null() {
        TreeRoot::default()
    } else {
        TreeRoot { ptr, height }
    })
}

/// A subtree of the old tree. When the tree grows, `level` is below the level
/// being built: the old subtree then stands as child 0 of virtual nodes.
#[derive(Clone, Copy)]
struct Old {
    ptr: BlockPtr,
    level: u8,
}

fn rebuild(
    s: &mut impl DataStore,
    old: Old,
    level: u8,
    base: u64,
    writes: &BTreeMap<u64, DirtyBlock>,
    hide: &RangeSet,
) -> Result<BlockPtr> {
    let end = base + span(level);
    let has_writes = writes.range(base..end).next().is_some();
    let real = old.level == level;
    if real && !has_writes && !hide.intersects(base..end) {
        return Ok(old.ptr);
    }
    if !has_writes && hide.covers(base..end) {
        free_tree(s, old.ptr, old.level)?;
        return Ok(BlockPtr::NULL);
    }
    if level == 0 {
        debug_assert!(real);
        return match writes.get(&base) {
            Some(block) => {
                let new = s.write_data(block, old.ptr)?;
                if !old.ptr.is_null() {
                    s.free_node(old.ptr);
                }
                Ok(new)
            }
            None => {
                // Hidden (otherwise we returned above).
                if !old.ptr.is_null() {
                    s.free_node(old.ptr);
                }
                Ok(BlockPtr::NULL)
            }
        };
    }
    let child_span = span(level - 1);
    let old_children: Vec<Old> = if old.ptr.is_null() {
        vec![
            Old {
                ptr: BlockPtr::NULL,
                level: level - 1
            };
            FANOUT as usize
        ]
    } else if real {
        children(&*s.read_node(&old.ptr)?)
            .into_iter()
            .map(|ptr| Old {
                ptr,
                level: level - 1,
            })
            .collect()
    } else {
        // A virtual node above a grown tree: the old root is its child 0.
        let mut v = vec![
            Old {
                ptr: BlockPtr::NULL,
                level: level - 1
            };
            FANOUT as usize
        ];
        v[0] = old;
        v
    };
    let mut node = new_block();
    let mut any = false;
    let mut changed = !real;
    for (i, child) in old_children.into_iter().enumerate() {
        let cb = base + i as u64 * child_span;
        let new = if child.ptr.is_null() && writes.range(cb..cb + child_span).next().is_none() {
            BlockPtr::NULL
        } else {
            rebuild(s, child, level - 1, cb, writes, hide)?
        };
        changed |= new != child.ptr || child.level != level - 1;
        any |= !new.is_null();
        new.encode(&mut node[i * BlockPtr::SIZE..]);
    }
    if !changed {
        return Ok(old.ptr);
    }
    let replaces = (real && !old.ptr.is_null()).then_some(old.ptr);
    if let Some(p) = replaces {
        s.free_node(p);
    }
    if !any {
        return Ok(BlockPtr::NULL);
    }
    s.write_node(node, replaces)
}

/// Frees every block of a tree (file deletion, truncation to zero).
pub fn free_tree(s: &mut impl NodeStore, ptr: BlockPtr, level: u8) -> Result<()> {
    if ptr.is_null() {
        return Ok(());
    }
    if level > 0 {
        let node = s.read_node(&ptr)?;
        for c in children(&node) {
            free_tree(s, c, level - 1)?;
        }
    }
    s.free_node(ptr);
    Ok(())
}

/// The visitor of [`walk`]: `(level, pointer, indirect block contents)`.
pub type Visit<'a> = dyn FnMut(u8, &BlockPtr, Option<&Block>) -> Result<()> + 'a;

/// Visits a tree for fsck and CP differences: `f(level, ptr, node)` for every
/// pointer whose birth is at least `min_birth`, with the indirect block's
/// contents for level > 0 (data blocks are not read).
pub fn walk(
    r: &impl NodeReader,
    root: &TreeRoot,
    min_birth: CpNumber,
    f: &mut Visit<'_>,
) -> Result<()> {
    check_root(root)?;
    walk_in(r, root.ptr, root.height, min_birth, f)
}

fn walk_in(
    r: &impl NodeReader,
    ptr: BlockPtr,
    level: u8,
    min_birth: CpNumber,
    f: &mut Visit<'_>,
) -> Result<()> {
    if ptr.is_null() || ptr.birth < min_birth {
        return Ok(());
    }
    if level == 0 {
        return f(0, &ptr, None);
    }
    let node = r.read_node(&ptr)?;
    f(level, &ptr, Some(&node))?;
    for c in children(&node) {
        walk_in(r, c, level - 1, min_birth, f)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    /// An in-memory store that checks every free matches a live block.
    #[derive(Default)]
    pub struct MemStore {
        pub blocks: HashMap<u64, Arc<Block>>,
        pub freed: HashSet<u64>,
        pub next: u64,
        pub cp: u64,
    }

    impl NodeReader for MemStore {
        fn read_node(&self, ptr: &BlockPtr) -> Result<Arc<Block>> {
            let b = self.blocks.get(&ptr.addr.0).expect("block exists");
            assert_eq!(Hash128::of(&b[..]), ptr.hash);
            Ok(b.clone())
        }
    }

    impl NodeStore for MemStore {
        fn write_node(
            &mut self,
            data: Box<Block>,
            _replaces: Option<BlockPtr>,
        ) -> Result<BlockPtr> {
            self.next += 1;
            let ptr = BlockPtr {
                addr: BlockAddr(self.next + 100),
                birth: CpNumber(self.cp),
                hash: Hash128::of(&data[..]),
            };
            self.blocks.insert(ptr.addr.0, Arc::new(*data));
            Ok(ptr)
        }
        fn free_node(&mut self, ptr: BlockPtr) {
            assert!(
                self.blocks.contains_key(&ptr.addr.0),
                "free of unknown block {}",
                ptr.addr.0
            );
            assert!(
                self.freed.insert(ptr.addr.0),
                "double free of {}",
                ptr.addr.0
            );
        }
    }

    impl DataStore for MemStore {
        fn write_data(&mut self, block: &DirtyBlock, _prev: BlockPtr) -> Result<BlockPtr> {
            self.write_node(Box::new(*block.data), None)
        }
    }

    fn dirty(fill: u8) -> DirtyBlock {
        DirtyBlock {
            data: Arc::new([fill; BLOCK_SIZE]),
            source: BlockSource::Opaque,
            hash: None,
        }
    }

    fn read_all(s: &MemStore, root: &TreeRoot, n: u64) -> Vec<u8> {
        lookup_run(s, root, 0, n)
            .unwrap()
            .iter()
            .map(|p| {
                if p.is_null() {
                    0
                } else {
                    s.read_node(p).unwrap()[0]
                }
            })
            .collect()
    }

    #[test]
    fn sparse_write_at_one_tebibyte_builds_one_path() {
        let mut s = MemStore::default();
        let idx = (1u64 << 40) / BLOCK_SIZE_U64 - 1;
        let writes = BTreeMap::from([(idx, dirty(9))]);
        let root = apply(&mut s, &TreeRoot::default(), &writes, &RangeSet::new()).unwrap();
        assert_eq!(root.height, 4);
        assert_eq!(s.blocks.len(), 5, "one data block and four indirect blocks");
        assert_eq!(s.read_node(&lookup(&s, &root, idx).unwrap()).unwrap()[0], 9);
        assert!(lookup(&s, &root, idx - 1).unwrap().is_null());
        assert_eq!(find(&s, &root, 0, true).unwrap(), Some(idx));
        assert_eq!(find(&s, &root, 0, false).unwrap(), Some(0));
        assert_eq!(find(&s, &root, idx, false).unwrap(), Some(idx + 1));
        assert_eq!(count_blocks(&s, &root, 0..u64::MAX).unwrap(), 1);
    }

    #[test]
    fn writes_beyond_the_largest_file_are_refused() {
        let mut s = MemStore::default();
        let writes = BTreeMap::from([(MAX_FILE_SIZE / BLOCK_SIZE_U64, dirty(1))]);
        let err = apply(&mut s, &TreeRoot::default(), &writes, &RangeSet::new()).unwrap_err();
        assert_eq!(err.errno(), libc::EFBIG);
    }

    proptest! {
        #[test]
        fn matches_a_model_through_writes_and_hides(
            steps in proptest::collection::vec(
                (proptest::collection::vec((0u64..2000, 1u8..255), 0..20), proptest::option::of((0u64..2000, 0u64..600))),
                1..12)
        ) {
            let mut s = MemStore::default();
            let mut root = TreeRoot::default();
            let mut model: BTreeMap<u64, u8> = BTreeMap::new();
            for (cp, (ws, hide)) in steps.into_iter().enumerate() {
                s.cp = cp as u64 + 1;
                let mut hidden = RangeSet::new();
                if let Some((start, len)) = hide {
                    hidden.insert(start..start + len);
                    model.retain(|&i, _| !(start..start + len).contains(&i));
                }
                let writes: BTreeMap<u64, DirtyBlock> = ws.iter().map(|&(i, f)| (i, dirty(f))).collect();
                for (&i, b) in &writes { model.insert(i, b.data[0]); }
                let before: HashSet<u64> = reachable(&s, &root);
                root = apply(&mut s, &root, &writes, &hidden).unwrap();
                let after = reachable(&s, &root);
                // Exactly the old blocks no longer reachable were freed.
                for a in before.difference(&after) {
                    prop_assert!(s.freed.contains(a), "block {} leaked", a);
                }
                for a in &after {
                    prop_assert!(!s.freed.contains(a), "live block {} was freed", a);
                }
                let all = read_all(&s, &root, 2100);
                for (i, v) in all.iter().enumerate() {
                    prop_assert_eq!(*v, model.get(&(i as u64)).copied().unwrap_or(0));
                }
                prop_assert_eq!(count_blocks(&s, &root, 0..u64::MAX).unwrap(), model.len() as u64);
                prop_assert_eq!(find(&s, &root, 0, true).unwrap(), model.keys().next().copied());
                if model.is_empty() { prop_assert!(root.ptr.is_null()); }
            }
        }
    }

    fn reachable(s: &MemStore, root: &TreeRoot) -> HashSet<u64> {
        let mut set = HashSet::new();
        walk(s, root, CpNumber(0), &mut |_, p, _| {
            set.insert(p.addr.0);
            Ok(())
        })
        .unwrap();
        set
    }
}
