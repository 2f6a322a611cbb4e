//! fsck's own reading of a metadata B-tree node, from the format in
//! `fs/FORMAT.md`. `btree.rs` stops a walk at the first bad node; fsck must
//! report the node and carry on with its siblings, so it decodes nodes
//! itself (with the constants `btree.rs` defines) and applies the same
//! rules, every length and offset checked.

use std::ops::Range;

use crate::btree::{
    Key, MAX_LEVEL, MAX_VALUE_SIZE, NODE_CAPACITY, NODE_HEADER_SIZE, NODE_MAGIC, NODE_VERSION,
};
use crate::types::{Block, BlockPtr};

/// A decoded node.
#[derive(Debug)]
pub(super) struct Node {
    /// Bytes of entries after the header.
    pub(super) used: usize,
    pub(super) keys: Vec<Key>,
    /// Leaf: each item's value as a byte range of the block.
    pub(super) values: Vec<Range<usize>>,
    /// Internal node: each entry's child.
    pub(super) children: Vec<BlockPtr>,
}

fn le16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Decodes a node that must be at `level`; says what is wrong otherwise.
pub(super) fn decode(b: &Block, level: u8) -> Result<Node, String> {
    if b[0..2] != NODE_MAGIC {
        return Err(format!("bad magic {:02x}{:02x}", b[0], b[1]));
    }
    if b[2] != NODE_VERSION {
        return Err(format!("unknown node version {}", b[2]));
    }
    if b[3] != level || b[3] > MAX_LEVEL {
        return Err(format!("node has level {}, expected {level}", b[3]));
    }
    let (count, used) = (le16(b, 4), le16(b, 6));
    if count == 0 {
        return Err("node has no entries".into());
    }
    if used > NODE_CAPACITY {
        return Err(format!(
            "entries take {used} bytes, more than {NODE_CAPACITY}"
        ));
    }
    let end = NODE_HEADER_SIZE + used;
    if b[end..].iter().any(|&x| x != 0) {
        return Err("non-zero bytes after the entries".into());
    }
    let mut node = Node {
        used,
        keys: Vec::with_capacity(count),
        values: Vec::new(),
        children: Vec::new(),
    };
    let mut pos = NODE_HEADER_SIZE;
    let mut take = |n: usize, what: &str, i: usize| -> Result<Range<usize>, String> {
        if pos + n > end {
            return Err(format!(
                "entry {i}: {what} runs past the entries (byte {end})"
            ));
        }
        pos += n;
        Ok(pos - n..pos)
    };
    for i in 0..count {
        let r = take(Key::ENCODED_SIZE, "key", i)?;
        let mut kb = [0u8; Key::ENCODED_SIZE];
        kb.copy_from_slice(&b[r]);
        let key = Key::from_bytes(&kb);
        if node.keys.last().is_some_and(|prev| *prev >= key) {
            return Err(format!(
                "entry {i}: key {key:?} is not above the previous one"
            ));
        }
        node.keys.push(key);
        if level == 0 {
            let len = le16(b, take(2, "value length", i)?.start);
            if len > MAX_VALUE_SIZE {
                return Err(format!(
                    "entry {i}: value length {len} exceeds {MAX_VALUE_SIZE}"
                ));
            }
            node.values.push(take(len, "value", i)?);
        } else {
            let ptr = BlockPtr::decode(&b[take(BlockPtr::SIZE, "child pointer", i)?]);
            if ptr.is_null() {
                return Err(format!("entry {i}: null child pointer"));
            }
            node.children.push(ptr);
        }
    }
    if pos != end {
        return Err(format!(
            "{count} entries end at byte {pos}, the header says {end}"
        ));
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::new_block;

    #[test]
    fn garbage_is_described_not_trusted() {
        let mut b = new_block();
        assert!(decode(&b, 0).unwrap_err().contains("magic"));
        b[0..2].copy_from_slice(&NODE_MAGIC);
        b[2] = NODE_VERSION;
        b[4] = 2;
        b[6] = 19;
        assert!(decode(&b, 0).unwrap_err().contains("runs past"));
        b[4] = 1;
        b[6] = 200;
        assert!(decode(&b, 0).unwrap_err().contains("header says"));
        b[6] = 19;
        let node = decode(&b, 0).expect("one empty item at key 0");
        assert_eq!((node.keys.len(), node.values[0].len()), (1, 0));
        assert!(decode(&b, 1).is_err());
        b[100] = 1;
        assert!(decode(&b, 0).unwrap_err().contains("non-zero"));
    }
}
