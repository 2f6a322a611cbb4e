//! The copy-on-write metadata B+tree: every inode record, directory entry
//! bucket, xattr item and orphan marker of the volume is an item of one tree
//! whose nodes are 4096-byte blocks (format in `fs/FORMAT.md`, section
//! "Metadata B-tree node").
//!
//! Nodes are never modified in place. [`apply`] takes a sorted batch of
//! changes (one consistency point's worth), rebuilds in memory every node on a
//! changed path, splits and merges so that every non-root node stays at least
//! [`MIN_FILL_BYTES`] full, and only then writes the new nodes, children
//! before parents, left to right. Keeping the rebuilt nodes in memory until
//! the batch is resolved means no node is written and then thrown away, and
//! the same prior tree plus the same batch always writes the same bytes in the
//! same order (DESIGN invariant 4). Each parent pointer carries its child's
//! hash, so the root pointer is a Merkle root of all metadata.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::{FsError, Result};
use crate::types::{new_block, Block, BlockAddr, BlockPtr, CpNumber, BLOCK_SIZE};

/// Key of a metadata item; items are ordered by `(ino, kind, off)`.
///
/// Encoded big-endian so that comparing encoded keys byte by byte gives the
/// key order (handy in hex dumps and for prefix-sharing deltas).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Key {
    pub ino: u64,
    pub kind: u8,
    pub off: u64,
}

impl Key {
    /// The smallest key.
    pub const MIN: Key = Key::new(0, 0, 0);
    /// The largest key. Reserved: [`range`] ends are exclusive, so an item at
    /// `MAX` could not be listed; [`apply`] refuses it.
    pub const MAX: Key = Key::new(u64::MAX, u8::MAX, u64::MAX);
    /// Bytes of an encoded key: `ino u64 BE | kind u8 | off u64 BE`.
    pub const ENCODED_SIZE: usize = 17;

    pub const fn new(ino: u64, kind: u8, off: u64) -> Key {
        Key { ino, kind, off }
    }

    pub fn to_bytes(&self) -> [u8; Key::ENCODED_SIZE] {
        let mut b = [0u8; Key::ENCODED_SIZE];
        b[0..8].copy_from_slice(&self.ino.to_be_bytes());
        b[8] = self.kind;
        b[9..17].copy_from_slice(&self.off.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Key::ENCODED_SIZE]) -> Key {
        let mut ino = [0u8; 8];
        let mut off = [0u8; 8];
        ino.copy_from_slice(&b[0..8]);
        off.copy_from_slice(&b[9..17]);
        Key::new(u64::from_be_bytes(ino), b[8], u64::from_be_bytes(off))
    }
}

/// The two bytes every node starts with.
pub const NODE_MAGIC: [u8; 2] = *b"TB";
/// Node format version; a node with another version is refused.
pub const NODE_VERSION: u8 = 1;
/// Bytes of the node header: magic, version, level, count, used.
pub const NODE_HEADER_SIZE: usize = 8;
/// Bytes available for entries after the header.
pub const NODE_CAPACITY: usize = BLOCK_SIZE - NODE_HEADER_SIZE;
/// Bytes a leaf item takes besides its value: key and value length.
pub const LEAF_ITEM_OVERHEAD: usize = Key::ENCODED_SIZE + 2;
/// Bytes of an internal entry: separator key and child pointer.
pub const INTERNAL_ENTRY_SIZE: usize = Key::ENCODED_SIZE + BlockPtr::SIZE;
/// Every node but the root holds at least this many bytes of entries, so a
/// tree of n items never takes more than about 4 n / (items per full leaf) leaves.
pub const MIN_FILL_BYTES: usize = NODE_CAPACITY / 4;
/// Largest value an item may carry: 2000 bytes. Two such items fit in a leaf,
/// and the split rule needs `NODE_CAPACITY >= 2 * MIN_FILL_BYTES + largest item`
/// (checked below) to always cut an overfull run into nodes that are each at
/// least `MIN_FILL_BYTES` full. Larger payloads (long xattrs) must be chunked.
pub const MAX_VALUE_SIZE: usize = 2000;
/// Highest node level accepted (the root of a tree of height h has level h).
/// With at least 21 children per internal node, level 15 is far beyond any
/// volume; the bound keeps recursion on a corrupt tree finite.
pub const MAX_LEVEL: u8 = 15;
/// `check` stops collecting problems after this many.
const MAX_PROBLEMS: usize = 1000;

const _: () = assert!(NODE_CAPACITY >= 2 * MIN_FILL_BYTES + LEAF_ITEM_OVERHEAD + MAX_VALUE_SIZE);
const _: () = assert!(NODE_CAPACITY >= 2 * MIN_FILL_BYTES + INTERNAL_ENTRY_SIZE);
const _: () = assert!(NODE_CAPACITY <= u16::MAX as usize);

/// Root of a tree, as stored in the superblock or an inode.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TreeRoot {
    /// `BlockPtr::NULL` for an empty tree.
    pub ptr: BlockPtr,
    /// Level of the root node: 0 when the root is a leaf.
    pub height: u8,
}

impl TreeRoot {
    /// The empty tree.
    pub const EMPTY: TreeRoot = TreeRoot {
        ptr: BlockPtr::NULL,
        height: 0,
    };

    pub fn is_empty(&self) -> bool {
        self.ptr.is_null()
    }
}

/// Where nodes come from: the block cache in the volume, memory in tests.
pub trait NodeReader {
    /// Reads a node block and verifies it against `ptr.hash` (the implementor does the verification).
    fn read_node(&self, ptr: &BlockPtr) -> Result<Arc<Block>>;
}

/// Where a consistency point puts the nodes it writes.
pub trait NodeStore: NodeReader {
    /// Writes a brand-new node and returns its pointer. `replaces` = the node this new one takes the place of
    /// (the old version of the same node, or for a split/merge the old node it was derived from), if any;
    /// the mirroring layer uses it to send a delta. Addresses/birth/hash are the implementor's business.
    fn write_node(&mut self, data: Box<Block>, replaces: Option<BlockPtr>) -> Result<BlockPtr>;
    /// `ptr` is no longer referenced by the new tree (called once for each old node that was replaced or dropped).
    fn free_node(&mut self, ptr: BlockPtr);
}

/// One change of a batch: the new value, or `None` to delete.
pub type Change = (Key, Option<Vec<u8>>);

// ---------------------------------------------------------------------------
// Node decoding and encoding

/// A node checked by [`parse`]: its keys and, per entry, the child pointer
/// (internal) or the value's byte span in the block (leaf).
struct Parsed {
    level: u8,
    /// Bytes of entries after the header.
    used: usize,
    keys: Vec<Key>,
    ptrs: Vec<BlockPtr>,
    spans: Vec<(usize, usize)>,
}

impl Parsed {
    fn len(&self) -> usize {
        self.keys.len()
    }

    /// Value of leaf item `i`; `parse` checked that its span lies inside the block.
    fn value<'b>(&self, block: &'b Block, i: usize) -> &'b [u8] {
        let (start, end) = self.spans[i];
        &block[start..end]
    }

    /// Index of the child whose subtree would hold `key` (child 0 also takes keys below its separator).
    fn child_index(&self, key: &Key) -> usize {
        self.keys.partition_point(|k| k <= key).saturating_sub(1)
    }

    /// Index of the first leaf item with a key >= `key`.
    fn lower_bound(&self, key: &Key) -> usize {
        self.keys.partition_point(|k| k < key)
    }
}

fn le16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Checks a node's header for a node at `level`; returns its entry count
/// and the bytes its entries take.
fn check_header(block: &Block, level: u8) -> Result<(usize, usize), String> {
    if block[0..2] != NODE_MAGIC {
        return Err(format!("bad magic {:02x}{:02x}", block[0], block[1]));
    }
    if block[2] != NODE_VERSION {
        return Err(format!("unknown node version {}", block[2]));
    }
    let node_level = block[3];
    if node_level != level || node_level > MAX_LEVEL {
        return Err(format!("node has level {node_level}, expected {level}"));
    }
    let count = le16(block, 4);
    let used = le16(block, 6);
    if count == 0 {
        return Err("node has no entries".into());
    }
    if used > NODE_CAPACITY {
        return Err(format!(
            "entries take {used} bytes, more than {NODE_CAPACITY}"
        ));
    }
    Ok((count, used))
}

/// The key encoded at byte `pos` (the caller checked it lies in the block).
fn key_at(block: &Block, pos: usize) -> Key {
    let mut kb = [0u8; Key::ENCODED_SIZE];
    kb.copy_from_slice(&block[pos..pos + Key::ENCODED_SIZE]);
    Key::from_bytes(&kb)
}

/// Decodes and validates a node that must be at `level`. Every length and
/// offset is checked, so garbage yields a description of what is wrong,
/// never a panic.
fn parse(block: &Block, level: u8) -> Result<Parsed, String> {
    let (count, used) = check_header(block, level)?;
    let end = NODE_HEADER_SIZE + used;
    // An OR over the tail (vectorized) rather than a search for the first non-zero byte.
    if block[end..].iter().fold(0, |acc, &b| acc | b) != 0 {
        return Err("non-zero bytes after the entries".into());
    }
    let mut node = Parsed {
        level,
        used,
        keys: Vec::with_capacity(count),
        ptrs: Vec::new(),
        spans: Vec::new(),
    };
    let mut pos = NODE_HEADER_SIZE;
    let mut take = |n: usize, what: &str| -> Result<std::ops::Range<usize>, String> {
        if pos + n > end {
            return Err(format!(
                "{what} at byte {pos} runs past the entries (end {end})"
            ));
        }
        pos += n;
        Ok(pos - n..pos)
    };
    for i in 0..count {
        let key = key_at(block, take(Key::ENCODED_SIZE, "key")?.start);
        if node.keys.last().is_some_and(|prev| *prev >= key) {
            return Err(format!(
                "entry {i}: key {key:?} is not above the previous one"
            ));
        }
        node.keys.push(key);
        if level == 0 {
            let len = le16(block, take(2, "value length")?.start);
            if len > MAX_VALUE_SIZE {
                return Err(format!(
                    "entry {i}: value length {len} exceeds {MAX_VALUE_SIZE}"
                ));
            }
            let span = take(len, "value")?;
            node.spans.push((span.start, span.end));
        } else {
            let ptr = BlockPtr::decode(&block[take(BlockPtr::SIZE, "child pointer")?]);
            if ptr.is_null() {
                return Err(format!("entry {i}: null child pointer"));
            }
            node.ptrs.push(ptr);
        }
    }
    if pos != end {
        return Err(format!(
            "{count} entries end at byte {pos}, header says {end}"
        ));
    }
    Ok(node)
}

/// A decoded node: its keys and, per entry, the value's byte range in the
/// block (leaf) or the child pointer (internal node). What the two decoders
/// of the node format (this module's and fsck's) return when asked from
/// outside, so that the fuzz target `btree` can check that they agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntries {
    pub keys: Vec<Key>,
    pub values: Vec<std::ops::Range<usize>>,
    pub children: Vec<BlockPtr>,
}

/// Decodes and validates a node that must be at `level`, with every check
/// of [`parse`] (FORMAT.md, "Metadata B-tree node").
pub fn decode_node(block: &Block, level: u8) -> Result<NodeEntries, String> {
    let p = parse(block, level)?;
    Ok(NodeEntries {
        values: p.spans.iter().map(|&(start, end)| start..end).collect(),
        keys: p.keys,
        children: p.ptrs,
    })
}

/// Reads the node `ptr` points to and checks it is a valid node at `level`.
fn load(r: &(impl NodeReader + ?Sized), ptr: &BlockPtr, level: u8) -> Result<(Arc<Block>, Parsed)> {
    let block = r.read_node(ptr)?;
    let node = parse(&block, level)
        .map_err(|what| FsError::corrupt(ptr.addr, format!("metadata B-tree node: {what}")))?;
    Ok((block, node))
}

/// An error for a broken invariant of this module (a bug, not bad input).
fn bug(what: &str) -> FsError {
    FsError::Failed(format!("metadata B-tree invariant broken: {what}"))
}

fn encode_header(block: &mut Block, level: u8, count: usize, used: usize) -> Result<()> {
    if count == 0 || used > NODE_CAPACITY || level > MAX_LEVEL {
        return Err(bug("encoding a node that is empty, too big or too tall"));
    }
    block[0..2].copy_from_slice(&NODE_MAGIC);
    block[2] = NODE_VERSION;
    block[3] = level;
    // Both fit: count <= used <= NODE_CAPACITY <= u16::MAX (checked above and at compile time).
    block[4..6].copy_from_slice(&(count as u16).to_le_bytes());
    block[6..8].copy_from_slice(&(used as u16).to_le_bytes());
    Ok(())
}

fn leaf_item_size(value: &[u8]) -> usize {
    LEAF_ITEM_OVERHEAD + value.len()
}

/// Encodes a leaf. Items must be sorted, non-empty, and fit.
fn encode_leaf(items: &[(Key, Vec<u8>)]) -> Result<Box<Block>> {
    let used: usize = items.iter().map(|(_, v)| leaf_item_size(v)).sum();
    if items.iter().any(|(_, v)| v.len() > MAX_VALUE_SIZE) {
        return Err(bug("value larger than MAX_VALUE_SIZE"));
    }
    let mut block = new_block();
    encode_header(&mut block, 0, items.len(), used)?;
    let mut pos = NODE_HEADER_SIZE;
    for (key, value) in items {
        block[pos..pos + Key::ENCODED_SIZE].copy_from_slice(&key.to_bytes());
        pos += Key::ENCODED_SIZE;
        block[pos..pos + 2].copy_from_slice(&(value.len() as u16).to_le_bytes());
        pos += 2;
        block[pos..pos + value.len()].copy_from_slice(value);
        pos += value.len();
    }
    Ok(block)
}

/// Encodes an internal node at `level` (>= 1) from (separator, child) entries.
fn encode_internal(level: u8, entries: &[(Key, BlockPtr)]) -> Result<Box<Block>> {
    if level == 0 {
        return Err(bug("internal node at level 0"));
    }
    let mut block = new_block();
    encode_header(
        &mut block,
        level,
        entries.len(),
        entries.len() * INTERNAL_ENTRY_SIZE,
    )?;
    for (i, (key, ptr)) in entries.iter().enumerate() {
        let pos = NODE_HEADER_SIZE + i * INTERNAL_ENTRY_SIZE;
        block[pos..pos + Key::ENCODED_SIZE].copy_from_slice(&key.to_bytes());
        ptr.encode(&mut block[pos + Key::ENCODED_SIZE..pos + INTERNAL_ENTRY_SIZE]);
    }
    Ok(block)
}

// ---------------------------------------------------------------------------
// Reading

/// The items of a leaf node block, for walkers that look inside leaves
/// (resync, deep verify, fsck). The block must be a verified node.
pub fn leaf_items(block: &Block) -> Result<Vec<(Key, &[u8])>, String> {
    let p = parse(block, 0)?;
    Ok((0..p.len())
        .map(|i| (p.keys[i], p.value(block, i)))
        .collect())
}

/// The value stored under `key`, if any.
pub fn get(r: &impl NodeReader, root: &TreeRoot, key: &Key) -> Result<Option<Vec<u8>>> {
    if root.ptr.is_null() {
        return Ok(None);
    }
    let (mut ptr, mut level) = (root.ptr, root.height);
    loop {
        let block = r.read_node(&ptr)?;
        let step = search(&block, level, key)
            .map_err(|what| FsError::corrupt(ptr.addr, format!("metadata B-tree node: {what}")))?;
        match step {
            Search::Child(child) => ptr = child,
            Search::Value(span) => return Ok(span.map(|s| block[s].to_vec())),
        }
        level -= 1;
    }
}

/// Where [`search`] leads: down to a child, or to a leaf's value (`None` = no such key).
enum Search {
    Child(BlockPtr),
    Value(Option<std::ops::Range<usize>>),
}

/// One step of a point lookup, reading only the entries it needs: a binary
/// search over an internal node's fixed-size entries, a scan of a leaf up to
/// `key`. Lookups are most of the metadata work and the node was verified
/// against its hash already, so this skips [`parse`]'s full decoding and
/// checks of the rest of the node (CPs, walks and fsck still do them); every
/// offset it reads is still bounds-checked, so garbage cannot make it panic.
fn search(block: &Block, level: u8, key: &Key) -> Result<Search, String> {
    let (count, used) = check_header(block, level)?;
    if level > 0 {
        if used != count * INTERNAL_ENTRY_SIZE {
            return Err(format!("{count} internal entries cannot take {used} bytes"));
        }
        let entry = |i: usize| NODE_HEADER_SIZE + i * INTERNAL_ENTRY_SIZE;
        // The child whose subtree would hold `key` (child 0 also takes keys below its separator).
        let (mut lo, mut hi) = (0, count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if key_at(block, entry(mid)) <= *key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let at = entry(lo.saturating_sub(1)) + Key::ENCODED_SIZE;
        let child = BlockPtr::decode(&block[at..at + BlockPtr::SIZE]);
        if child.is_null() {
            return Err("null child pointer".into());
        }
        return Ok(Search::Child(child));
    }
    let end = NODE_HEADER_SIZE + used;
    let mut pos = NODE_HEADER_SIZE;
    for _ in 0..count {
        if pos + LEAF_ITEM_OVERHEAD > end {
            return Err(format!(
                "entry at byte {pos} runs past the entries (end {end})"
            ));
        }
        let k = key_at(block, pos);
        let len = le16(block, pos + Key::ENCODED_SIZE);
        let value = pos + LEAF_ITEM_OVERHEAD..pos + LEAF_ITEM_OVERHEAD + len;
        if value.end > end {
            return Err(format!(
                "value at byte {} runs past the entries (end {end})",
                value.start
            ));
        }
        if k >= *key {
            return Ok(Search::Value((k == *key).then_some(value)));
        }
        pos = value.end;
    }
    Ok(Search::Value(None))
}

/// Items with `start <= key < end` in key order, read lazily: the iterator
/// holds one node per level, never the whole tree.
pub fn range<'a, R: NodeReader>(r: &'a R, root: &TreeRoot, start: Key, end: Key) -> Range<'a, R> {
    Range {
        r,
        root: *root,
        start,
        end,
        stack: Vec::new(),
        started: false,
        done: false,
    }
}

/// Iterator returned by [`range`]. After an error it yields nothing more.
pub struct Range<'a, R: NodeReader> {
    r: &'a R,
    root: TreeRoot,
    start: Key,
    end: Key,
    /// The path from the root to the current leaf; `next` = next entry to visit.
    stack: Vec<Frame>,
    started: bool,
    done: bool,
}

struct Frame {
    block: Arc<Block>,
    node: Parsed,
    next: usize,
}

impl<R: NodeReader> Range<'_, R> {
    /// Descends from the root to the first item >= start.
    fn seek(&mut self) -> Result<()> {
        if self.root.ptr.is_null() || self.start >= self.end {
            return Ok(());
        }
        let (mut ptr, mut level) = (self.root.ptr, self.root.height);
        loop {
            let (block, node) = load(self.r, &ptr, level)?;
            if level == 0 {
                let next = node.lower_bound(&self.start);
                self.stack.push(Frame { block, node, next });
                return Ok(());
            }
            let i = node.child_index(&self.start);
            ptr = node.ptrs[i];
            self.stack.push(Frame {
                block,
                node,
                next: i + 1,
            });
            level -= 1;
        }
    }

    fn step(&mut self) -> Result<Option<(Key, Vec<u8>)>> {
        if !self.started {
            self.started = true;
            self.seek()?;
        }
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            if top.next >= top.node.len() {
                self.stack.pop();
                continue;
            }
            let i = top.next;
            top.next += 1;
            let key = top.node.keys[i];
            // A separator is the smallest key of its subtree: once one reaches `end`, so does everything after it.
            if key >= self.end {
                return Ok(None);
            }
            if top.node.level == 0 {
                return Ok(Some((key, top.node.value(&top.block, i).to_vec())));
            }
            let (ptr, level) = (top.node.ptrs[i], top.node.level - 1);
            let (block, node) = load(self.r, &ptr, level)?;
            self.stack.push(Frame {
                block,
                node,
                next: 0,
            });
        }
    }
}

impl<R: NodeReader> Iterator for Range<'_, R> {
    type Item = Result<(Key, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
            self.stack.clear();
        }
        item
    }
}

/// Visits every node reachable from `root` whose pointer has `birth >= min_birth`
/// (pass `CpNumber(0)` for all), parents before children, calling `f(level, &ptr, &block)`.
/// A node is never younger than its parent, so an old pointer prunes its whole
/// subtree: this is how a CP's difference from an older one is found (DESIGN invariant 5).
pub fn walk(
    r: &impl NodeReader,
    root: &TreeRoot,
    min_birth: CpNumber,
    f: &mut dyn FnMut(u8, &BlockPtr, &Block) -> Result<()>,
) -> Result<()> {
    if root.ptr.is_null() {
        return Ok(());
    }
    walk_node(r, &root.ptr, root.height, min_birth, f)
}

fn walk_node(
    r: &impl NodeReader,
    ptr: &BlockPtr,
    level: u8,
    min_birth: CpNumber,
    f: &mut dyn FnMut(u8, &BlockPtr, &Block) -> Result<()>,
) -> Result<()> {
    if ptr.birth < min_birth {
        return Ok(());
    }
    let (block, node) = load(r, ptr, level)?;
    f(level, ptr, &block)?;
    for child in &node.ptrs {
        walk_node(r, child, level - 1, min_birth, f)?;
    }
    Ok(())
}

/// Structural check for fsck: keys sorted within and across nodes, separators
/// equal to the smallest key of their subtree, levels consistent, sizes and
/// fill valid, children no younger than parents, no node reached twice.
/// Returns human-readable problems (empty = fine). Unreadable or corrupt nodes
/// are reported as problems; only other errors (I/O) are returned as `Err`.
pub fn check(r: &impl NodeReader, root: &TreeRoot) -> Result<Vec<String>> {
    let mut c = Checker {
        problems: Vec::new(),
        seen: HashSet::new(),
    };
    if root.ptr.is_null() {
        if root.height != 0 {
            c.report(format!("empty tree with height {}", root.height));
        }
    } else if root.height > MAX_LEVEL {
        c.report(format!("tree height {} exceeds {MAX_LEVEL}", root.height));
    } else {
        c.node(r, &root.ptr, root.height, None, None)?;
    }
    Ok(c.problems)
}

struct Checker {
    problems: Vec<String>,
    seen: HashSet<BlockAddr>,
}

impl Checker {
    fn report(&mut self, problem: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(problem);
        } else if self.problems.len() == MAX_PROBLEMS {
            self.problems.push("further problems omitted".into());
        }
    }

    /// Checks the subtree at `ptr`. `sep` is the parent's separator for it
    /// (None for the root) and `hi` the exclusive upper bound of its keys.
    fn node(
        &mut self,
        r: &impl NodeReader,
        ptr: &BlockPtr,
        level: u8,
        sep: Option<Key>,
        hi: Option<Key>,
    ) -> Result<()> {
        if self.problems.len() > MAX_PROBLEMS {
            return Ok(());
        }
        let at = format!("metadata B-tree node {} (level {level})", ptr.addr);
        if !self.seen.insert(ptr.addr) {
            self.report(format!("{at}: referenced more than once"));
            return Ok(());
        }
        let block = match r.read_node(ptr) {
            Ok(b) => b,
            Err(e @ (FsError::Corrupt { .. } | FsError::CorruptVolume(_))) => {
                self.report(format!("{at}: unreadable: {e}"));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let node = match parse(&block, level) {
            Ok(n) => n,
            Err(what) => {
                self.report(format!("{at}: {what}"));
                return Ok(());
            }
        };
        match sep {
            None if level > 0 && node.len() == 1 => {
                self.report(format!("{at}: root has a single child"))
            }
            None => {}
            Some(sep) => {
                if node.used < MIN_FILL_BYTES {
                    self.report(format!(
                        "{at}: underfull, {} bytes of entries < {MIN_FILL_BYTES}",
                        node.used
                    ));
                }
                if node.keys[0] != sep {
                    self.report(format!(
                        "{at}: first key {:?} differs from separator {sep:?}",
                        node.keys[0]
                    ));
                }
            }
        }
        if let (Some(hi), Some(last)) = (hi, node.keys.last()) {
            if *last >= hi {
                self.report(format!(
                    "{at}: key {last:?} is not below the next separator {hi:?}"
                ));
            }
        }
        for (i, child) in node.ptrs.iter().enumerate() {
            if child.birth > ptr.birth {
                self.report(format!(
                    "{at}: child {} born in CP {} after its parent (CP {})",
                    child.addr, child.birth, ptr.birth
                ));
            }
            let child_hi = node.keys.get(i + 1).copied().or(hi);
            self.node(r, child, level - 1, Some(node.keys[i]), child_hi)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Writing

/// Applies `changes` (strictly increasing keys; `None` = delete, deleting an
/// absent key is a no-op) and returns the new root.
///
/// Only nodes on changed paths are rewritten (plus a neighbour when an
/// underfull node merges into it); changes are grouped per node, so a node is
/// rewritten once per batch however many of its items change. A batch that
/// changes nothing (deletes of absent keys, rewrites of equal values) writes
/// nothing. Every non-root node ends at least [`MIN_FILL_BYTES`] full; a root
/// with one child collapses; an empty result is [`TreeRoot::EMPTY`]. Each
/// replaced or dropped old node is freed exactly once, after all writes.
pub fn apply(s: &mut impl NodeStore, root: &TreeRoot, changes: &[Change]) -> Result<TreeRoot> {
    validate(changes)?;
    let mut b = Builder {
        s,
        freed: Vec::new(),
    };
    let pending = if root.ptr.is_null() {
        let items: Vec<(Key, Vec<u8>)> = changes
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
            .collect();
        (!items.is_empty()).then_some(Pending {
            level: 0,
            body: Body::Leaf(items),
            replaces: None,
            append: true,
        })
    } else {
        b.rebuild(root.ptr, root.height, changes)?
    };
    let Some(pending) = pending else {
        return Ok(if root.ptr.is_null() {
            TreeRoot::EMPTY
        } else {
            *root
        });
    };
    let new_root = b.finish_root(pending)?;
    for ptr in std::mem::take(&mut b.freed) {
        b.s.free_node(ptr);
    }
    Ok(new_root)
}

fn validate(changes: &[Change]) -> Result<()> {
    if changes.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(FsError::Invalid(
            "metadata B-tree changes must have strictly increasing keys",
        ));
    }
    if changes.iter().any(|(k, _)| *k == Key::MAX) {
        return Err(FsError::Invalid(
            "Key::MAX is reserved in the metadata B-tree",
        ));
    }
    if changes
        .iter()
        .any(|(_, v)| v.as_ref().is_some_and(|v| v.len() > MAX_VALUE_SIZE))
    {
        return Err(FsError::Invalid(
            "metadata item value larger than MAX_VALUE_SIZE",
        ));
    }
    Ok(())
}

/// A node being rebuilt by `apply`, kept in memory until the batch is resolved.
struct Pending {
    level: u8,
    body: Body,
    /// The old node this one is derived from, passed on to `write_node`.
    replaces: Option<BlockPtr>,
    /// Changes only appended at its right end: split it by filling nodes to
    /// capacity, since the left part will not grow again (sequential inode
    /// numbers would otherwise leave half-full leaves behind).
    append: bool,
}

enum Body {
    Leaf(Vec<(Key, Vec<u8>)>),
    Internal(Vec<Kid>),
}

/// A child of a node being rebuilt: an untouched old subtree, or a rebuilt one.
enum Kid {
    Old(Key, BlockPtr),
    New(Box<Pending>),
}

impl Pending {
    fn entry_sizes(&self) -> Vec<usize> {
        match &self.body {
            Body::Leaf(items) => items.iter().map(|(_, v)| leaf_item_size(v)).collect(),
            Body::Internal(kids) => vec![INTERNAL_ENTRY_SIZE; kids.len()],
        }
    }

    fn bytes(&self) -> usize {
        match &self.body {
            Body::Leaf(items) => items.iter().map(|(_, v)| leaf_item_size(v)).sum(),
            Body::Internal(kids) => kids.len() * INTERNAL_ENTRY_SIZE,
        }
    }

    fn is_empty(&self) -> bool {
        match &self.body {
            Body::Leaf(items) => items.is_empty(),
            Body::Internal(kids) => kids.is_empty(),
        }
    }

    fn first_key(&self) -> Option<Key> {
        match &self.body {
            Body::Leaf(items) => items.first().map(|(k, _)| *k),
            Body::Internal(kids) => kids.first().and_then(|kid| match kid {
                Kid::Old(k, _) => Some(*k),
                Kid::New(p) => p.first_key(),
            }),
        }
    }
}

impl Kid {
    fn new(p: Pending) -> Kid {
        Kid::New(Box::new(p))
    }

    fn is_underfull(&self) -> bool {
        matches!(self, Kid::New(p) if p.bytes() < MIN_FILL_BYTES)
    }
}

struct Builder<'s, S: NodeStore> {
    s: &'s mut S,
    /// Old nodes consumed by the rebuild, in the order they were consumed.
    freed: Vec<BlockPtr>,
}

impl<S: NodeStore> Builder<'_, S> {
    /// New content of the subtree at `ptr` after `changes`, or None if nothing changed.
    /// The content may be over- or underfull; the caller resolves that.
    fn rebuild(&mut self, ptr: BlockPtr, level: u8, changes: &[Change]) -> Result<Option<Pending>> {
        let (block, node) = load(&*self.s, &ptr, level)?;
        let (body, append) = if level == 0 {
            match merge_leaf(&block, &node, changes) {
                Some(rebuilt) => rebuilt,
                None => return Ok(None),
            }
        } else {
            let mut kids = Vec::with_capacity(node.len());
            let (mut changed, mut append) = (false, false);
            let mut rest = changes;
            for i in 0..node.len() {
                let take = match node.keys.get(i + 1) {
                    Some(next) => rest.partition_point(|(k, _)| k < next),
                    None => rest.len(),
                };
                let (mine, tail) = rest.split_at(take);
                rest = tail;
                let old = Kid::Old(node.keys[i], node.ptrs[i]);
                if mine.is_empty() {
                    kids.push(old);
                    continue;
                }
                match self.rebuild(node.ptrs[i], level - 1, mine)? {
                    None => kids.push(old),
                    Some(p) => {
                        changed = true;
                        // Appending to this node means every change went to its last child, as an append.
                        append = i + 1 == node.len() && mine.len() == changes.len() && p.append;
                        if !p.is_empty() {
                            kids.push(Kid::new(p));
                        }
                    }
                }
            }
            if !changed {
                return Ok(None);
            }
            self.resolve(&mut kids, level - 1)?;
            (Body::Internal(kids), append)
        };
        self.freed.push(ptr);
        Ok(Some(Pending {
            level,
            body,
            replaces: Some(ptr),
            append,
        }))
    }

    /// Brings every rebuilt child in `kids` (children at `level`) within the
    /// node size bounds: an underfull one merges with its left neighbour (the
    /// first child with its right one), an overfull one splits. A lone
    /// underfull child stays as it is: its parent is then underfull too and
    /// merges one level up, where `concat` resolves the lone child again.
    fn resolve(&mut self, kids: &mut Vec<Kid>, level: u8) -> Result<()> {
        let mut i = 0;
        while i < kids.len() {
            if kids.len() > 1 && kids[i].is_underfull() {
                let l = i.saturating_sub(1);
                let right = kids.remove(l + 1);
                let left = kids.remove(l);
                let left = self.materialize(left, level)?;
                let right = self.materialize(right, level)?;
                let merged = self.concat(left, right)?;
                kids.insert(l, Kid::new(merged));
                i = l;
            } else {
                i += 1;
            }
        }
        if kids
            .iter()
            .any(|k| matches!(k, Kid::New(p) if p.bytes() > NODE_CAPACITY))
        {
            for kid in std::mem::take(kids) {
                match kid {
                    Kid::New(p) if p.bytes() > NODE_CAPACITY => {
                        kids.extend(split(*p)?.into_iter().map(Kid::new))
                    }
                    kid => kids.push(kid),
                }
            }
        }
        Ok(())
    }

    /// The content of a child, reading (and consuming) an old one.
    fn materialize(&mut self, kid: Kid, level: u8) -> Result<Pending> {
        let ptr = match kid {
            Kid::New(p) => return Ok(*p),
            Kid::Old(_, ptr) => ptr,
        };
        let (block, node) = load(&*self.s, &ptr, level)?;
        let body = if level == 0 {
            Body::Leaf(
                (0..node.len())
                    .map(|i| (node.keys[i], node.value(&block, i).to_vec()))
                    .collect(),
            )
        } else {
            Body::Internal(
                node.keys
                    .iter()
                    .zip(&node.ptrs)
                    .map(|(k, p)| Kid::Old(*k, *p))
                    .collect(),
            )
        };
        self.freed.push(ptr);
        Ok(Pending {
            level,
            body,
            replaces: Some(ptr),
            append: false,
        })
    }

    /// Joins two adjacent siblings; for internal nodes the children that meet
    /// at the seam are resolved again (one of them may be a lone underfull child).
    fn concat(&mut self, left: Pending, right: Pending) -> Result<Pending> {
        let level = left.level;
        let replaces = left.replaces.or(right.replaces);
        let body = match (left.body, right.body) {
            (Body::Leaf(mut a), Body::Leaf(b)) if level == right.level => {
                a.extend(b);
                Body::Leaf(a)
            }
            (Body::Internal(mut a), Body::Internal(b)) if level == right.level && level > 0 => {
                a.extend(b);
                self.resolve(&mut a, level - 1)?;
                Body::Internal(a)
            }
            _ => return Err(bug("merging nodes of different levels")),
        };
        Ok(Pending {
            level,
            body,
            replaces,
            append: false,
        })
    }

    /// Turns the rebuilt root into the new tree: grows it while it overflows,
    /// collapses it while it has a single child, then writes it.
    fn finish_root(&mut self, mut p: Pending) -> Result<TreeRoot> {
        loop {
            if p.is_empty() {
                return Ok(TreeRoot::EMPTY);
            }
            if p.bytes() > NODE_CAPACITY {
                if p.level >= MAX_LEVEL {
                    return Err(bug("tree would grow beyond MAX_LEVEL"));
                }
                let level = p.level + 1;
                let kids = split(p)?.into_iter().map(Kid::new).collect();
                p = Pending {
                    level,
                    body: Body::Internal(kids),
                    replaces: None,
                    append: false,
                };
                continue;
            }
            if let Body::Internal(kids) = &mut p.body {
                if kids.len() == 1 {
                    match kids.pop() {
                        Some(Kid::New(q)) => p = *q,
                        Some(Kid::Old(_, ptr)) => {
                            return Ok(TreeRoot {
                                ptr,
                                height: p.level - 1,
                            })
                        }
                        None => return Err(bug("lost the only child of the root")),
                    }
                    continue;
                }
            }
            let height = p.level;
            let (_, ptr) = self.write(p)?;
            return Ok(TreeRoot { ptr, height });
        }
    }

    /// Writes a rebuilt subtree, children first, left to right (the order the
    /// CP assigns addresses in), and returns its separator and pointer.
    fn write(&mut self, p: Pending) -> Result<(Key, BlockPtr)> {
        let key = p.first_key().ok_or_else(|| bug("writing an empty node"))?;
        let block = match p.body {
            Body::Leaf(items) => encode_leaf(&items)?,
            Body::Internal(kids) => {
                let mut entries = Vec::with_capacity(kids.len());
                for kid in kids {
                    entries.push(match kid {
                        Kid::Old(k, ptr) => (k, ptr),
                        Kid::New(q) => self.write(*q)?,
                    });
                }
                encode_internal(p.level, &entries)?
            }
        };
        // Check before writing: what goes to disk must decode to a valid node.
        parse(&block, p.level)
            .map_err(|what| bug(&format!("encoded node does not decode: {what}")))?;
        let ptr = self.s.write_node(block, p.replaces)?;
        Ok((key, ptr))
    }
}

/// Merges a leaf's items with its changes; None if nothing actually changed.
/// Also says whether the changes only appended items after the old last key.
fn merge_leaf(block: &Block, node: &Parsed, changes: &[Change]) -> Option<(Body, bool)> {
    let mut out = Vec::with_capacity(node.len() + changes.len());
    let mut changed = false;
    let mut i = 0;
    for (key, value) in changes {
        while i < node.len() && node.keys[i] < *key {
            out.push((node.keys[i], node.value(block, i).to_vec()));
            i += 1;
        }
        let present = node.keys.get(i) == Some(key);
        match value {
            Some(v) => {
                changed |= !present || node.value(block, i) != v.as_slice();
                out.push((*key, v.clone()));
            }
            None => changed |= present,
        }
        if present {
            i += 1;
        }
    }
    if !changed {
        return None;
    }
    out.extend((i..node.len()).map(|j| (node.keys[j], node.value(block, j).to_vec())));
    let last = node.keys.last();
    let append = changes
        .iter()
        .all(|(k, v)| v.is_some() && last.is_none_or(|l| k > l));
    Some((Body::Leaf(out), append))
}

/// Cuts an overfull node into nodes that each fit and are at least MIN_FILL_BYTES full.
fn split(p: Pending) -> Result<Vec<Pending>> {
    let counts = partition(&p.entry_sizes(), p.append)?;
    let Pending {
        level,
        body,
        replaces,
        ..
    } = p;
    let part = |body| Pending {
        level,
        body,
        replaces,
        append: false,
    };
    Ok(match body {
        Body::Leaf(items) => chunks(items, &counts)
            .into_iter()
            .map(|c| part(Body::Leaf(c)))
            .collect(),
        Body::Internal(kids) => chunks(kids, &counts)
            .into_iter()
            .map(|c| part(Body::Internal(c)))
            .collect(),
    })
}

fn chunks<T>(v: Vec<T>, counts: &[usize]) -> Vec<Vec<T>> {
    let mut it = v.into_iter();
    counts
        .iter()
        .map(|&n| it.by_ref().take(n).collect())
        .collect()
}

/// Splits a run of entries with the given byte sizes into consecutive groups
/// (returned as entry counts) of at most NODE_CAPACITY bytes, each at least
/// MIN_FILL_BYTES when there is more than one. It uses the fewest nodes
/// possible; `pack_left` fills them in order to capacity (for appends),
/// otherwise the largest group is made as small as possible (balanced halves
/// for a random insert, room to grow on both sides).
fn partition(sizes: &[usize], pack_left: bool) -> Result<Vec<usize>> {
    let total: usize = sizes.iter().sum();
    if total <= NODE_CAPACITY {
        return Ok(vec![sizes.len()]);
    }
    let k = greedy(sizes, NODE_CAPACITY).len();
    let cap = if pack_left {
        NODE_CAPACITY
    } else {
        let largest = sizes.iter().copied().max().unwrap_or(0);
        let (mut lo, mut hi) = (total.div_ceil(k).max(largest), NODE_CAPACITY);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if greedy(sizes, mid).len() <= k {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    };
    let mut groups = greedy(sizes, cap);
    // Greedy cuts can leave a small group (the last one, typically). Merge it with a
    // neighbour; if the pair does not fit one node, re-cut it so that the small side
    // just reaches the bound. Since the neighbour fits a node and
    // NODE_CAPACITY >= 2 * MIN_FILL_BYTES + largest entry, both sides then fit and are
    // full enough, so each round removes an underfull group.
    while groups.len() > 1 {
        let Some(i) = groups.iter().position(|g| g.1 < MIN_FILL_BYTES) else {
            break;
        };
        let l = i.saturating_sub(1);
        let first: usize = groups[..l].iter().map(|g| g.0).sum();
        let n = groups[l].0 + groups[l + 1].0;
        let bytes = groups[l].1 + groups[l + 1].1;
        let run = &sizes[first..first + n];
        let pair = if bytes <= NODE_CAPACITY {
            vec![(n, bytes)]
        } else {
            let cut = if i > l {
                n - reach(run.iter().rev(), MIN_FILL_BYTES)
            } else {
                reach(run.iter(), MIN_FILL_BYTES)
            };
            let left: usize = run[..cut].iter().sum();
            vec![(cut, left), (n - cut, bytes - left)]
        };
        groups.splice(l..l + 2, pair);
    }
    let several = groups.len() > 1;
    if groups
        .iter()
        .any(|&(n, b)| n == 0 || b > NODE_CAPACITY || (several && b < MIN_FILL_BYTES))
    {
        return Err(bug("partition broke the node size bounds"));
    }
    Ok(groups.into_iter().map(|g| g.0).collect())
}

/// Groups (count, bytes) filled in order up to `cap` bytes each.
fn greedy(sizes: &[usize], cap: usize) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let (mut n, mut bytes) = (0, 0);
    for &s in sizes {
        if n > 0 && bytes + s > cap {
            groups.push((n, bytes));
            (n, bytes) = (0, 0);
        }
        n += 1;
        bytes += s;
    }
    if n > 0 {
        groups.push((n, bytes));
    }
    groups
}

/// How many of the entries it takes for their sizes to reach `min`.
fn reach<'a>(sizes: impl Iterator<Item = &'a usize>, min: usize) -> usize {
    let mut sum = 0;
    let mut n = 0;
    for s in sizes {
        if sum >= min {
            break;
        }
        sum += s;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Hash128;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use std::cell::Cell;
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    /// In-memory store: addresses in write order, birth = the current CP,
    /// hashes verified on read (unless a test turns that off to feed garbage).
    #[derive(Clone)]
    struct MemStore {
        blocks: HashMap<u64, Arc<Block>>,
        next_addr: u64,
        cp: u64,
        /// Writes and frees of the current CP.
        written: Vec<(BlockPtr, Option<BlockPtr>)>,
        freed: Vec<BlockPtr>,
        reads: Cell<usize>,
        verify_hashes: bool,
    }

    impl MemStore {
        fn new() -> MemStore {
            MemStore {
                blocks: HashMap::new(),
                next_addr: 2,
                cp: 0,
                written: Vec::new(),
                freed: Vec::new(),
                reads: Cell::new(0),
                verify_hashes: true,
            }
        }

        /// Applies `changes` as one CP.
        fn cp(&mut self, root: &TreeRoot, changes: &[Change]) -> TreeRoot {
            self.cp += 1;
            self.written.clear();
            self.freed.clear();
            apply(self, root, changes).expect("apply")
        }

        /// Changes a stored node behind the hashes' back.
        fn tamper(&mut self, addr: BlockAddr, f: impl FnOnce(&mut Block)) {
            let mut block = *self.blocks[&addr.0].clone();
            f(&mut block);
            self.blocks.insert(addr.0, Arc::new(block));
        }
    }

    impl NodeReader for MemStore {
        fn read_node(&self, ptr: &BlockPtr) -> Result<Arc<Block>> {
            self.reads.set(self.reads.get() + 1);
            let block = self
                .blocks
                .get(&ptr.addr.0)
                .ok_or_else(|| FsError::corrupt(ptr.addr, "no such block"))?;
            if self.verify_hashes && Hash128::of(&block[..]) != ptr.hash {
                return Err(FsError::corrupt(ptr.addr, "hash mismatch"));
            }
            Ok(block.clone())
        }
    }

    impl NodeStore for MemStore {
        fn write_node(&mut self, data: Box<Block>, replaces: Option<BlockPtr>) -> Result<BlockPtr> {
            let ptr = BlockPtr {
                addr: BlockAddr(self.next_addr),
                birth: CpNumber(self.cp),
                hash: Hash128::of(&data[..]),
            };
            self.next_addr += 1;
            self.blocks.insert(ptr.addr.0, Arc::from(data));
            self.written.push((ptr, replaces));
            Ok(ptr)
        }

        fn free_node(&mut self, ptr: BlockPtr) {
            self.freed.push(ptr);
        }
    }

    fn k(ino: u64, off: u64) -> Key {
        Key::new(ino, 1, off)
    }

    fn puts(keys: impl IntoIterator<Item = Key>, len: usize) -> Vec<Change> {
        keys.into_iter()
            .map(|key| (key, Some(vec![key.off as u8; len])))
            .collect()
    }

    fn dels(keys: impl IntoIterator<Item = Key>) -> Vec<Change> {
        keys.into_iter().map(|key| (key, None)).collect()
    }

    fn apply_to_model(model: &mut BTreeMap<Key, Vec<u8>>, changes: &[Change]) {
        for (key, value) in changes {
            match value {
                Some(v) => model.insert(*key, v.clone()),
                None => model.remove(key),
            };
        }
    }

    struct NodeInfo {
        level: u8,
        ptr: BlockPtr,
        used: usize,
        count: usize,
    }

    /// Every node reachable from `root` born at or after `min_birth`, parents first.
    fn nodes_since(s: &MemStore, root: &TreeRoot, min_birth: u64) -> Vec<NodeInfo> {
        let mut out = Vec::new();
        walk(s, root, CpNumber(min_birth), &mut |level, ptr, block| {
            let node = parse(block, level).expect("walk only visits valid nodes");
            out.push(NodeInfo {
                level,
                ptr: *ptr,
                used: node.used,
                count: node.len(),
            });
            Ok(())
        })
        .expect("walk");
        out
    }

    fn nodes(s: &MemStore, root: &TreeRoot) -> Vec<NodeInfo> {
        nodes_since(s, root, 0)
    }

    fn scan(s: &MemStore, root: &TreeRoot, start: Key, end: Key) -> Vec<(Key, Vec<u8>)> {
        range(s, root, start, end)
            .collect::<Result<_>>()
            .expect("range")
    }

    /// The tree holds exactly `model`, passes `check`, and meets the fill bound.
    fn assert_holds(s: &MemStore, root: &TreeRoot, model: &BTreeMap<Key, Vec<u8>>) {
        assert_eq!(check(s, root).expect("check"), Vec::<String>::new());
        let all: Vec<_> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
        assert_eq!(scan(s, root, Key::MIN, Key::MAX), all);
        for (key, value) in model {
            assert_eq!(
                get(s, root, key).expect("get").as_ref(),
                Some(value),
                "get {key:?}"
            );
        }
        for n in nodes(s, root) {
            if n.ptr != root.ptr {
                assert!(
                    n.used >= MIN_FILL_BYTES,
                    "node {:?} holds {} bytes",
                    n.ptr,
                    n.used
                );
            }
        }
        assert_eq!(root.is_empty(), model.is_empty());
    }

    /// After a CP from `old_live`: every node no longer reachable was freed
    /// exactly once, nothing reachable was freed, every written node is reachable,
    /// each `replaces` names a freed node, and the walk from this CP's birth
    /// finds exactly the nodes it wrote.
    fn assert_accounting(
        s: &MemStore,
        root: &TreeRoot,
        old_live: &BTreeSet<BlockAddr>,
    ) -> BTreeSet<BlockAddr> {
        let live: BTreeSet<BlockAddr> = nodes(s, root).iter().map(|n| n.ptr.addr).collect();
        let written: BTreeSet<BlockAddr> = s.written.iter().map(|(p, _)| p.addr).collect();
        let freed: Vec<BlockAddr> = s.freed.iter().map(|p| p.addr).collect();
        let freed_set: BTreeSet<BlockAddr> = freed.iter().copied().collect();
        assert_eq!(freed.len(), freed_set.len(), "a node was freed twice");
        let dropped: BTreeSet<BlockAddr> = old_live
            .union(&written)
            .filter(|a| !live.contains(a))
            .copied()
            .collect();
        assert_eq!(
            freed_set, dropped,
            "freed nodes differ from the unreachable ones"
        );
        assert!(
            written.is_subset(&live),
            "a node was written and then dropped"
        );
        for (_, replaces) in &s.written {
            if let Some(old) = replaces {
                assert!(
                    freed_set.contains(&old.addr),
                    "replaces {old:?}, which is still live"
                );
            }
        }
        let born: BTreeSet<BlockAddr> = nodes_since(s, root, s.cp)
            .iter()
            .map(|n| n.ptr.addr)
            .collect();
        assert_eq!(born, written);
        live
    }

    #[test]
    fn key_bytes_sort_like_keys() {
        let mut keys = vec![
            Key::new(1, 0, 5),
            Key::new(0, 9, u64::MAX),
            Key::new(1, 0, 256),
            Key::new(256, 0, 0),
            Key::new(1, 1, 0),
            Key::MIN,
            Key::MAX,
        ];
        let mut by_bytes = keys.clone();
        keys.sort();
        by_bytes.sort_by_key(|k| k.to_bytes());
        assert_eq!(keys, by_bytes);
        for key in keys {
            assert_eq!(Key::from_bytes(&key.to_bytes()), key);
        }
    }

    #[test]
    fn leaf_bytes_are_as_documented() {
        let key = Key::new(0x0102_0304_0506_0708, 9, 0x1112_1314_1516_1718);
        let block = encode_leaf(&[(key, vec![0xaa; 3])]).expect("encode");
        let mut want = vec![b'T', b'B', 1, 0, 1, 0, 22, 0];
        want.extend([
            1, 2, 3, 4, 5, 6, 7, 8, 9, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
        ]);
        want.extend([3, 0, 0xaa, 0xaa, 0xaa]);
        want.resize(BLOCK_SIZE, 0);
        assert_eq!(&block[..], &want[..]);
    }

    #[test]
    fn encoded_sizes_match_the_format_doc() {
        assert_eq!(NODE_HEADER_SIZE, 8);
        assert_eq!(NODE_CAPACITY, 4088);
        assert_eq!(LEAF_ITEM_OVERHEAD, 19);
        assert_eq!(INTERNAL_ENTRY_SIZE, 49);
        assert_eq!(MIN_FILL_BYTES, 1022);
        assert_eq!(MAX_VALUE_SIZE, 2000);
        let doc = include_str!("../FORMAT.md");
        let section = doc
            .split("## Metadata B-tree node")
            .nth(1)
            .expect("FORMAT.md has the B-tree section");
        let section = section.split("\n## ").next().unwrap_or(section);
        for fact in [
            "`TB`",
            "4088",
            "1022",
            "2000",
            "49 bytes",
            "19 bytes",
            "big-endian",
            "MAX_LEVEL` = 15",
        ] {
            assert!(
                section.contains(fact),
                "FORMAT.md B-tree section does not state {fact}"
            );
        }
    }

    #[test]
    fn nodes_round_trip_through_encode_and_parse() {
        let items = vec![
            (k(1, 0), vec![]),
            (k(1, 5), vec![7; 300]),
            (k(2, 0), vec![1; MAX_VALUE_SIZE]),
        ];
        let block = encode_leaf(&items).expect("encode leaf");
        let node = parse(&block, 0).expect("parse leaf");
        let back: Vec<_> = (0..node.len())
            .map(|i| (node.keys[i], node.value(&block, i).to_vec()))
            .collect();
        assert_eq!(back, items);
        assert_eq!(node.used, 3 * LEAF_ITEM_OVERHEAD + 300 + MAX_VALUE_SIZE);
        assert!(parse(&block, 1).is_err(), "a leaf is not a level-1 node");

        let entries: Vec<(Key, BlockPtr)> = (0..83u64)
            .map(|i| {
                let ptr = BlockPtr {
                    addr: BlockAddr(100 + i),
                    birth: CpNumber(i),
                    hash: Hash128::of(&i.to_le_bytes()),
                };
                (k(i * 10, 0), ptr)
            })
            .collect();
        let block = encode_internal(3, &entries).expect("a full internal node fits");
        let node = parse(&block, 3).expect("parse internal");
        assert_eq!(node.keys, entries.iter().map(|e| e.0).collect::<Vec<_>>());
        assert_eq!(node.ptrs, entries.iter().map(|e| e.1).collect::<Vec<_>>());
        assert!(
            encode_internal(3, &[entries.clone(), entries[..1].to_vec()].concat()).is_err(),
            "84 entries do not fit"
        );
    }

    fn sample_leaf() -> Box<Block> {
        encode_leaf(&[
            (k(1, 1), vec![5; 10]),
            (k(1, 2), vec![6; 20]),
            (k(3, 0), vec![]),
        ])
        .expect("encode")
    }

    #[test]
    fn parse_rejects_damaged_nodes() {
        type Damage = fn(&mut Block);
        let damaged: Vec<(&str, Damage)> = vec![
            ("magic", |b| b[0] ^= 1),
            ("version", |b| b[2] = 2),
            ("level", |b| b[3] = 1),
            ("count too big", |b| b[4] = 4),
            ("count too small", |b| b[4] = 2),
            ("count zero", |b| b[4] = 0),
            ("used too big", |b| {
                b[6..8].copy_from_slice(&4089u16.to_le_bytes())
            }),
            ("used short", |b| b[6] -= 1),
            ("value length over the limit", |b| {
                b[25..27].copy_from_slice(&2001u16.to_le_bytes())
            }),
            ("value length past the end", |b| b[25] = 200),
            ("trailing garbage", |b| b[4000] = 1),
            ("keys out of order", |b| b[8 + 7] = 9),
        ];
        for (what, damage) in damaged {
            let mut block = sample_leaf();
            damage(&mut block);
            assert!(parse(&block, 0).is_err(), "{what} was accepted");
        }
        let mut internal = encode_internal(1, &[(k(1, 0), BlockPtr::NULL)]).expect("encode");
        assert!(parse(&internal, 1).is_err(), "null child accepted");
        internal[3] = 0;
        assert!(
            parse(&internal, 0).is_err(),
            "internal entries parsed as a leaf"
        );
    }

    #[test]
    fn parse_never_panics_on_garbage() {
        let ptr = BlockPtr {
            addr: BlockAddr(9),
            birth: CpNumber(1),
            hash: Hash128::of(b"x"),
        };
        let internal = encode_internal(2, &[(k(1, 0), ptr), (k(2, 0), ptr)]).expect("encode");
        for (original, level) in [(sample_leaf(), 0u8), (internal, 2)] {
            for pos in 0..200 {
                for flip in [0x01u8, 0x10, 0x80, 0xff] {
                    let mut block = original.clone();
                    block[pos] ^= flip;
                    for l in [level, level.wrapping_sub(1), 200] {
                        let _ = parse(&block, l);
                        search_agrees_with_parse(&block, l);
                    }
                }
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..2000 {
            let mut block = sample_leaf();
            let start = if round % 2 == 0 { 0 } else { NODE_HEADER_SIZE };
            rng.fill(&mut block[start..start + 64 + round % 512]);
            block[4] = rng.gen_range(0..4);
            let _ = parse(&block, block[3]);
            search_agrees_with_parse(&block, block[3]);
        }
    }

    /// `search` never panics, and on a node `parse` accepts it finds what
    /// the parsed node says, for keys at, between and around its entries.
    fn search_agrees_with_parse(block: &Block, level: u8) {
        let keys = [k(0, 0), k(1, 0), k(1, 5), k(2, 0), k(3, 0), Key::MAX];
        let Ok(node) = parse(block, level) else {
            for key in &keys {
                let _ = search(block, level, key);
            }
            return;
        };
        for key in keys.iter().chain(&node.keys) {
            match search(block, level, key).expect("a valid node") {
                Search::Child(c) => assert_eq!(c, node.ptrs[node.child_index(key)]),
                Search::Value(v) => {
                    let i = node.lower_bound(key);
                    let want = node
                        .keys
                        .get(i)
                        .filter(|k| *k == key)
                        .map(|_| node.value(block, i));
                    assert_eq!(v.map(|r| &block[r]), want, "key {key:?}");
                }
            }
        }
    }

    /// A stored tree of a few hundred items (height 1) and its model.
    fn small_tree() -> (MemStore, TreeRoot, BTreeMap<Key, Vec<u8>>) {
        let mut s = MemStore::new();
        let changes = puts((0..300).map(|i| k(i, 0)), 100);
        let root = s.cp(&TreeRoot::EMPTY, &changes);
        let mut model = BTreeMap::new();
        apply_to_model(&mut model, &changes);
        (s, root, model)
    }

    #[test]
    fn tampered_nodes_yield_errors_not_panics() {
        let (s, root, _) = small_tree();
        assert!(root.height >= 1);
        let addrs: Vec<BlockAddr> = nodes(&s, &root).iter().map(|n| n.ptr.addr).collect();

        // With hashes verified, any flipped byte is an error naming the block.
        for &addr in &addrs {
            let mut bad = s.clone();
            bad.tamper(addr, |b| b[100] ^= 1);
            assert!(range(&bad, &root, Key::MIN, Key::MAX).any(|r| r.is_err()));
            let problems = check(&bad, &root).expect("corruption is a problem, not an error");
            assert!(
                problems.iter().any(|p| p.contains("unreadable")),
                "{problems:?}"
            );
        }

        // Without hash checks the decoder itself must cope with anything.
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for &addr in &addrs {
            let mut bad = s.clone();
            bad.verify_hashes = false;
            bad.tamper(addr, |b| b[0] ^= 0xff);
            assert!(!check(&bad, &root).expect("check").is_empty());
            assert!(get(&bad, &root, &k(150, 0)).is_err() || addr != root.ptr.addr);
            for _ in 0..200 {
                let mut bad = s.clone();
                bad.verify_hashes = false;
                let (pos, flip) = (rng.gen_range(0..600), rng.gen_range(1..=255u8));
                bad.tamper(addr, |b| b[pos] ^= flip);
                let _ = check(&bad, &root).expect("check reports, it does not fail");
                let _ = get(&bad, &root, &k(rng.gen_range(0..300), 0));
                let _ = range(&bad, &root, k(rng.gen_range(0..300), 0), Key::MAX).count();
                let _ = walk(&bad, &root, CpNumber(0), &mut |_, _, _| Ok(()));
                let _ = apply(&mut bad, &root, &puts([k(rng.gen_range(0..300), 1)], 10));
            }
        }
    }

    #[test]
    fn empty_tree_reads_nothing_and_deletes_stay_empty() {
        let mut s = MemStore::new();
        let root = TreeRoot::EMPTY;
        assert_eq!(get(&s, &root, &k(1, 0)).expect("get"), None);
        assert!(scan(&s, &root, Key::MIN, Key::MAX).is_empty());
        assert!(check(&s, &root).expect("check").is_empty());
        assert!(nodes(&s, &root).is_empty());
        assert_eq!(s.cp(&root, &dels([k(1, 0), k(2, 0)])), TreeRoot::EMPTY);
        assert!(s.written.is_empty() && s.freed.is_empty());
    }

    #[test]
    fn appending_past_a_full_leaf_splits_it_and_grows_the_root() {
        let mut s = MemStore::new();
        // 4 items of 1019 bytes fill a leaf (4076 of 4088 bytes).
        let first = puts((0..4).map(|i| k(i, 0)), 1000);
        let root = s.cp(&TreeRoot::EMPTY, &first);
        assert_eq!(root.height, 0);
        let leaf = root.ptr;

        let root = s.cp(&root, &puts([k(4, 0)], 1000));
        assert_eq!(root.height, 1);
        let ns = nodes(&s, &root);
        let leaves: Vec<usize> = ns
            .iter()
            .filter(|n| n.level == 0)
            .map(|n| n.count)
            .collect();
        // Packed full, then the last leaf topped up to the fill bound.
        assert_eq!(leaves, vec![3, 2]);
        assert_eq!(
            s.written.iter().map(|w| w.1).collect::<Vec<_>>(),
            vec![Some(leaf), Some(leaf), None]
        );
        assert_eq!(s.freed, vec![leaf]);
        let mut model = BTreeMap::new();
        apply_to_model(&mut model, &first);
        apply_to_model(&mut model, &puts([k(4, 0)], 1000));
        assert_holds(&s, &root, &model);
    }

    #[test]
    fn inserting_into_the_middle_of_a_full_leaf_splits_it_evenly() {
        let mut s = MemStore::new();
        // 8 items of 509 bytes: 4072 bytes.
        let root = s.cp(&TreeRoot::EMPTY, &puts((0..8).map(|i| k(i * 2, 0)), 490));
        let root = s.cp(&root, &puts([k(7, 0)], 490));
        let leaves: Vec<usize> = nodes(&s, &root)
            .iter()
            .filter(|n| n.level == 0)
            .map(|n| n.count)
            .collect();
        assert_eq!(leaves, vec![5, 4]);
    }

    #[test]
    fn deletes_merge_an_underfull_leaf_and_collapse_the_root() {
        let mut s = MemStore::new();
        let mut model = BTreeMap::new();
        let changes = puts((0..6).map(|i| k(i, 0)), 1000);
        apply_to_model(&mut model, &changes);
        let root = s.cp(&TreeRoot::EMPTY, &changes);
        assert_eq!(root.height, 1);
        let old: Vec<BlockPtr> = nodes(&s, &root).iter().map(|n| n.ptr).collect();
        assert_eq!(old.len(), 3, "root and two leaves");

        let changes = dels([k(1, 0), k(4, 0), k(5, 0)]);
        apply_to_model(&mut model, &changes);
        let root = s.cp(&root, &changes);
        assert_eq!(
            root.height, 0,
            "the two leaves merged and the root collapsed"
        );
        assert_eq!(s.written.len(), 1);
        assert_eq!(
            s.written[0].1,
            Some(old[1]),
            "the merged leaf replaces the left leaf"
        );
        assert_eq!(
            s.freed
                .iter()
                .map(|p| p.addr)
                .collect::<BTreeSet<_>>()
                .len(),
            3
        );
        assert_holds(&s, &root, &model);
    }

    #[test]
    fn deleting_everything_frees_every_node() {
        let mut s = MemStore::new();
        let changes = puts((0..3000).map(|i| k(i, 0)), 300);
        let root = s.cp(&TreeRoot::EMPTY, &changes);
        assert_eq!(root.height, 2);
        let live: BTreeSet<BlockAddr> = nodes(&s, &root).iter().map(|n| n.ptr.addr).collect();
        let root = s.cp(&root, &dels(changes.iter().map(|c| c.0)));
        assert_eq!(root, TreeRoot::EMPTY);
        assert!(s.written.is_empty());
        assert_eq!(s.freed.len(), live.len());
        assert_eq!(
            s.freed.iter().map(|p| p.addr).collect::<BTreeSet<_>>(),
            live
        );
    }

    /// Deletes everything under level-1 node `which` except two items of one
    /// leaf: that leaf is left as its parent's only child and must merge into a
    /// leaf of the neighbouring parent.
    fn lone_survivor(which: usize) {
        let mut s = MemStore::new();
        let mut model = BTreeMap::new();
        let changes = puts((0..3000).map(|i| k(i, 0)), 300);
        apply_to_model(&mut model, &changes);
        let root = s.cp(&TreeRoot::EMPTY, &changes);
        assert_eq!(root.height, 2);
        let live = nodes(&s, &root).iter().map(|n| n.ptr.addr).collect();
        let (block, top) = load(&s, &root.ptr, 2).expect("root");
        drop(block);
        assert!(top.len() >= 3);
        let lo = top.keys[which].ino;
        let hi = top.keys.get(which + 1).map_or(3000, |k| k.ino);
        let keep = [(lo + hi) / 2, (lo + hi) / 2 + 1];
        let changes = dels((lo..hi).filter(|i| !keep.contains(i)).map(|i| k(i, 0)));
        apply_to_model(&mut model, &changes);
        let root = s.cp(&root, &changes);
        assert_eq!(root.height, 2);
        assert_accounting(&s, &root, &live);
        assert_holds(&s, &root, &model);
    }

    #[test]
    fn a_lone_leaf_merges_into_the_previous_parent() {
        lone_survivor(1);
    }

    #[test]
    fn a_lone_leaf_in_the_first_parent_merges_into_the_next_one() {
        lone_survivor(0);
    }

    #[test]
    fn batches_that_change_nothing_write_nothing() {
        let (mut s, root, model) = small_tree();
        let (key, value) = model.iter().nth(10).expect("item");
        let changes = vec![
            (k(0, 5), None),
            (*key, Some(value.clone())),
            (k(999, 0), None),
        ];
        assert_eq!(s.cp(&root, &changes), root);
        assert!(s.written.is_empty() && s.freed.is_empty());
    }

    #[test]
    fn an_update_rewrites_only_its_path() {
        let mut s = MemStore::new();
        let root = s.cp(&TreeRoot::EMPTY, &puts((0..3000).map(|i| k(i, 0)), 300));
        assert_eq!(root.height, 2);
        let before = nodes(&s, &root);
        let root2 = s.cp(&root, &puts([k(1500, 0)], 301));
        assert_eq!(s.written.len(), 3);
        let path: Vec<BlockPtr> = s
            .written
            .iter()
            .map(|w| w.1.expect("replaces the old version"))
            .collect();
        for (old, level) in path.iter().zip([0u8, 1, 2]) {
            assert!(before.iter().any(|n| n.ptr == *old && n.level == level));
        }
        assert_eq!(s.freed, path, "children are freed before parents");
        assert_eq!(
            get(&s, &root2, &k(1500, 0)).expect("get"),
            Some(vec![0; 301])
        );
        assert_eq!(
            get(&s, &root, &k(1500, 0)).expect("the old tree is intact"),
            Some(vec![0; 300])
        );
    }

    fn leaf_fill(s: &MemStore, root: &TreeRoot) -> f64 {
        let leaves: Vec<usize> = nodes(s, root)
            .iter()
            .filter(|n| n.level == 0)
            .map(|n| n.used)
            .collect();
        leaves.iter().sum::<usize>() as f64 / (leaves.len() * NODE_CAPACITY) as f64
    }

    #[test]
    fn sequential_appends_pack_leaves_tightly() {
        // One big batch of ascending keys (a bulk load) fills leaves to capacity.
        let mut s = MemStore::new();
        let root = s.cp(&TreeRoot::EMPTY, &puts((0..5000).map(|i| k(i, 0)), 120));
        let fill = leaf_fill(&s, &root);
        assert!(fill > 0.98, "bulk-loaded leaves only {fill:.2} full");

        // Small appends per CP: each split leaves a full leaf minus what the new
        // last leaf needs to reach the fill bound (balanced splits would leave ~55%).
        let mut root = TreeRoot::EMPTY;
        for batch in 0..200u64 {
            root = s.cp(&root, &puts((0..25).map(|i| k(batch * 25 + i, 0)), 120));
        }
        let fill = leaf_fill(&s, &root);
        assert!(fill > 0.8, "appended leaves only {fill:.2} full");
    }

    #[test]
    fn a_large_batch_into_one_leaf_writes_each_new_node_once() {
        let (mut s, root, mut model) = small_tree();
        let changes = puts((0..10_000).map(|off| Key::new(150, 2, off)), 40);
        apply_to_model(&mut model, &changes);
        let root = s.cp(&root, &changes);
        // 10,000 items of 59 bytes need about 145 full leaves; even at the fill
        // bound it would be under 600. One write per new node, no rewrites.
        assert!(s.written.len() < 600, "{} writes", s.written.len());
        let born = nodes_since(&s, &root, s.cp).len();
        assert_eq!(s.written.len(), born);
        assert_holds(&s, &root, &model);
    }

    #[test]
    fn range_reads_only_the_nodes_on_its_path() {
        let mut s = MemStore::new();
        let root = s.cp(&TreeRoot::EMPTY, &puts((0..20_000).map(|i| k(i, 0)), 100));
        assert_eq!(root.height, 2);
        s.reads.set(0);
        let items = scan(&s, &root, k(12_345, 0), k(12_350, 0));
        assert_eq!(items.len(), 5);
        assert!(s.reads.get() <= 5, "{} reads for 5 items", s.reads.get());
        s.reads.set(0);
        assert_eq!(scan(&s, &root, Key::MIN, Key::MAX).len(), 20_000);
        assert_eq!(
            s.reads.get(),
            nodes(&s, &root).len(),
            "a full scan reads each node once"
        );
    }

    #[test]
    fn walk_from_a_birth_visits_only_newer_nodes_parents_first() {
        let mut s = MemStore::new();
        let root = s.cp(&TreeRoot::EMPTY, &puts((0..3000).map(|i| k(i, 0)), 300));
        let root = s.cp(&root, &puts([k(10, 0), k(2900, 0)], 7));
        let newer = nodes_since(&s, &root, s.cp);
        let written: BTreeSet<BlockAddr> = s.written.iter().map(|w| w.0.addr).collect();
        assert_eq!(
            newer.iter().map(|n| n.ptr.addr).collect::<BTreeSet<_>>(),
            written
        );
        assert_eq!(newer[0].ptr, root.ptr);
        let levels: Vec<u8> = newer.iter().map(|n| n.level).collect();
        assert_eq!(
            levels,
            vec![2, 1, 0, 1, 0],
            "two separate paths below the root"
        );
        assert!(nodes(&s, &root).len() > newer.len());
    }

    #[test]
    fn check_reports_structural_damage() {
        let mut s = MemStore::new();
        let leaf = |s: &mut MemStore, keys: &[u64], len: usize| -> BlockPtr {
            let items: Vec<_> = keys.iter().map(|&i| (k(i, 0), vec![0; len])).collect();
            s.write_node(encode_leaf(&items).expect("encode"), None)
                .expect("write")
        };
        let a = leaf(&mut s, &[1, 2], 1000);
        let b = leaf(&mut s, &[5, 6], 1000);
        let small = leaf(&mut s, &[9], 10);
        let tree = |s: &mut MemStore, entries: &[(Key, BlockPtr)], level: u8| -> Vec<String> {
            let ptr = s
                .write_node(encode_internal(level, entries).expect("encode"), None)
                .expect("write");
            check(s, &TreeRoot { ptr, height: level }).expect("check")
        };
        assert!(tree(&mut s, &[(k(1, 0), a), (k(5, 0), b)], 1).is_empty());
        type Case = (&'static str, Vec<(Key, BlockPtr)>, u8);
        let cases: Vec<Case> = vec![
            (
                "differs from separator",
                vec![(k(0, 0), a), (k(5, 0), b)],
                1,
            ),
            (
                "not below the next separator",
                vec![(k(1, 0), a), (k(2, 0), b)],
                1,
            ),
            ("underfull", vec![(k(1, 0), a), (k(9, 0), small)], 1),
            ("single child", vec![(k(1, 0), a)], 1),
            ("expected 1", vec![(k(1, 0), a), (k(5, 0), b)], 2),
            ("more than once", vec![(k(1, 0), a), (k(5, 0), a)], 1),
        ];
        for (want, entries, level) in cases {
            let problems = tree(&mut s, &entries, level);
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "wanted {want:?}, got {problems:?}"
            );
        }
        let old_child = BlockPtr {
            birth: CpNumber(0),
            ..a
        };
        s.cp = 5;
        let young = leaf(&mut s, &[5, 6], 1000);
        s.cp = 1;
        let problems = tree(&mut s, &[(k(1, 0), old_child), (k(5, 0), young)], 1);
        assert!(
            problems.iter().any(|p| p.contains("after its parent")),
            "{problems:?}"
        );
        assert_eq!(
            check(
                &s,
                &TreeRoot {
                    ptr: BlockPtr::NULL,
                    height: 2
                }
            )
            .expect("check")
            .len(),
            1
        );
    }

    #[test]
    fn apply_refuses_bad_batches() {
        let (mut s, root, _) = small_tree();
        let bad: Vec<Vec<Change>> = vec![
            vec![(k(2, 0), None), (k(1, 0), None)],
            vec![(k(1, 0), None), (k(1, 0), Some(vec![]))],
            vec![(Key::MAX, Some(vec![1]))],
            vec![(k(1, 0), Some(vec![0; MAX_VALUE_SIZE + 1]))],
        ];
        for changes in bad {
            s.written.clear();
            assert!(matches!(
                apply(&mut s, &root, &changes),
                Err(FsError::Invalid(_))
            ));
            assert!(s.written.is_empty() && s.freed.is_empty());
        }
    }

    #[test]
    fn a_three_level_tree_grows_and_shrinks_back_to_empty() {
        let mut s = MemStore::new();
        let mut model = BTreeMap::new();
        let mut live = BTreeSet::new();
        let mut root = TreeRoot::EMPTY;
        let mut step = |s: &mut MemStore, root: &mut TreeRoot, changes: Vec<Change>| {
            apply_to_model(&mut model, &changes);
            *root = s.cp(root, &changes);
            live = assert_accounting(s, root, &live);
            assert_holds(s, root, &model);
        };
        // Two 2000-byte items per leaf: 14,000 items need more than 83 * 83 leaves.
        step(
            &mut s,
            &mut root,
            puts((0..14_000).map(|i| k(i, 0)), MAX_VALUE_SIZE),
        );
        assert_eq!(root.height, 3);
        step(
            &mut s,
            &mut root,
            dels((0..14_000).filter(|i| i % 3 != 0).map(|i| k(i, 0))),
        );
        step(
            &mut s,
            &mut root,
            dels(
                (0..14_000)
                    .filter(|i| i % 3 == 0 && (600..13_800).contains(i))
                    .map(|i| k(i, 0)),
            ),
        );
        assert!(root.height < 3);
        step(&mut s, &mut root, dels((0..600).map(|i| k(i, 0))));
        assert_eq!(root.height, 1, "67 items of 2019 bytes left");
        step(&mut s, &mut root, dels((13_800..14_000).map(|i| k(i, 0))));
        assert_eq!(root, TreeRoot::EMPTY);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(Key, usize, u8),
        Del(Key),
        /// Consecutive keys of one inode: sequential appends and big leaves.
        PutRun(u64, u64, usize),
        /// Deletes every item of inodes lo..hi: merges and collapses.
        DelInodes(u64, u64),
    }

    fn key_strategy() -> impl Strategy<Value = Key> {
        (0u64..40, 0u8..3, 0u64..30).prop_map(|(ino, kind, off)| Key::new(ino, kind, off))
    }

    fn len_strategy() -> impl Strategy<Value = usize> {
        prop_oneof![4 => 0usize..48, 1 => 48usize..1200, 1 => 1200usize..=MAX_VALUE_SIZE, 1 => Just(MAX_VALUE_SIZE)]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (key_strategy(), len_strategy(), any::<u8>()).prop_map(|(k, n, b)| Op::Put(k, n, b)),
            3 => key_strategy().prop_map(Op::Del),
            1 => (0u64..40, 1u64..150, len_strategy()).prop_map(|(i, n, len)| Op::PutRun(i, n, len)),
            1 => (0u64..40, 1u64..15).prop_map(|(lo, n)| Op::DelInodes(lo, lo + n)),
        ]
    }

    fn batch_changes(ops: &[Op], model: &BTreeMap<Key, Vec<u8>>) -> Vec<Change> {
        let mut batch: BTreeMap<Key, Option<Vec<u8>>> = BTreeMap::new();
        for op in ops {
            match *op {
                Op::Put(key, len, byte) => {
                    batch.insert(key, Some(vec![byte; len]));
                }
                Op::Del(key) => {
                    batch.insert(key, None);
                }
                Op::PutRun(ino, n, len) => {
                    for off in 0..n {
                        batch.insert(Key::new(ino, 3, off), Some(vec![off as u8; len]));
                    }
                }
                Op::DelInodes(lo, hi) => {
                    let doomed: Vec<Key> = model
                        .keys()
                        .chain(batch.keys())
                        .filter(|k| (lo..hi).contains(&k.ino))
                        .copied()
                        .collect();
                    for key in doomed {
                        batch.insert(key, None);
                    }
                }
            }
        }
        batch.into_iter().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn random_batches_match_a_btreemap_model(
            batches in prop::collection::vec(prop::collection::vec(op_strategy(), 0..80), 1..7),
            probes in prop::collection::vec((key_strategy(), key_strategy()), 4),
        ) {
            let (mut s, mut twin) = (MemStore::new(), MemStore::new());
            let (mut root, mut twin_root) = (TreeRoot::EMPTY, TreeRoot::EMPTY);
            let mut model = BTreeMap::new();
            let mut live = BTreeSet::new();
            for ops in &batches {
                let changes = batch_changes(ops, &model);
                apply_to_model(&mut model, &changes);
                root = s.cp(&root, &changes);
                live = assert_accounting(&s, &root, &live);
                assert_holds(&s, &root, &model);
                for (key, _) in &changes {
                    prop_assert_eq!(get(&s, &root, key).expect("get"), model.get(key).cloned());
                }
                for &(a, b) in &probes {
                    let (lo, hi) = (a.min(b), a.max(b));
                    let want: Vec<_> = model.range(lo..hi).map(|(k, v)| (*k, v.clone())).collect();
                    prop_assert_eq!(scan(&s, &root, lo, hi), want);
                    prop_assert!(scan(&s, &root, hi, lo).is_empty() || lo == hi);
                }
                // Determinism: the same batch on the same prior tree writes the same nodes in the same order.
                twin_root = twin.cp(&twin_root, &changes);
                prop_assert_eq!(twin_root, root);
                prop_assert_eq!(&twin.written, &s.written);
                prop_assert_eq!(&twin.freed, &s.freed);
            }
        }
    }
}
