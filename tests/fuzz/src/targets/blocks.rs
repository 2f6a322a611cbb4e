//! A block store for the tree targets (`btree`, `filetree`): blocks the
//! input describes, at addresses from [`BASE_ADDR`], served without hash
//! verification (the volume's reader would refuse any block whose hash does
//! not match its pointer, and the fuzzer cannot forge hashes) so that the
//! decoders themselves see the bytes. Every operation gets a budget of
//! reads: a crafted tree may name one node from many places, and walking
//! such a DAG is exponential (see the README's fuzzing notes); past the
//! budget a read fails, as an I/O error would.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use twinfs_fs::btree::{NodeReader, NodeStore};
use twinfs_fs::{Block, BlockAddr, BlockPtr, CpNumber, FsError, Hash128, Result, BLOCK_SIZE};

/// Address of the input's first block.
pub const BASE_ADDR: u64 = 100;
/// Bytes of the header before the blocks: a level or height, which block is
/// the root, and the root pointer's birth (`u64` little-endian).
pub const HEADER_BYTES: usize = 10;
/// Reads allowed per operation.
pub const READ_BUDGET: u32 = 4096;
/// The birth of every block written by an operation on the store: newer
/// than anything the input can name but `u64::MAX`.
pub const WRITE_CP: CpNumber = CpNumber(u64::MAX - 1);

/// Blocks by address, and what was written and freed.
#[derive(Default)]
pub struct Blocks {
    pub blocks: HashMap<u64, Arc<Block>>,
    reads: Cell<u32>,
    next: u64,
    /// Every block `free_node` was called for.
    pub freed: HashSet<u64>,
    /// A block was freed twice, or a block that does not exist was freed.
    pub bad_free: Option<u64>,
}

impl Blocks {
    /// Parses the tree targets' input: a 10-byte header (returned as it is),
    /// then up to `max` blocks, each a `u16` little-endian length and that
    /// many bytes, zero-padded to a block (the tail of a node or of an
    /// indirect block is mostly zeros, which the fuzzer need not spell
    /// out), then whatever is left for the target.
    pub fn from_input(data: &[u8], max: usize) -> ([u8; HEADER_BYTES], Blocks, &[u8]) {
        let mut header = [0u8; HEADER_BYTES];
        let n = data.len().min(HEADER_BYTES);
        header[..n].copy_from_slice(&data[..n]);
        let mut rest = &data[n..];
        let mut store = Blocks {
            next: 1 << 32,
            ..Blocks::default()
        };
        for i in 0..max as u64 {
            let Some((len, tail)) = rest.split_first_chunk::<2>() else {
                break;
            };
            let len = (u16::from_le_bytes(*len) as usize % (BLOCK_SIZE + 1)).min(tail.len());
            let mut block = [0u8; BLOCK_SIZE];
            block[..len].copy_from_slice(&tail[..len]);
            store.blocks.insert(BASE_ADDR + i, Arc::new(block));
            rest = &tail[len..];
        }
        (header, store, rest)
    }

    /// The input [`Blocks::from_input`] parses back into `header` and
    /// `blocks` (for the seed corpora).
    pub fn to_input(header: [u8; HEADER_BYTES], blocks: &[&[u8]], rest: &[u8]) -> Vec<u8> {
        let mut out = header.to_vec();
        for b in blocks {
            let used = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
            out.extend_from_slice(&(used as u16).to_le_bytes());
            out.extend_from_slice(&b[..used]);
        }
        out.extend_from_slice(rest);
        out
    }

    /// Starts an operation: a fresh read budget.
    pub fn reset_budget(&self) {
        self.reads.set(0);
    }

    /// Whether the last operation ran out of reads.
    pub fn exhausted(&self) -> bool {
        self.reads.get() > READ_BUDGET
    }
}

impl NodeReader for Blocks {
    fn read_node(&self, ptr: &BlockPtr) -> Result<Arc<Block>> {
        self.reads.set(self.reads.get() + 1);
        if self.exhausted() {
            return Err(FsError::Failed("fuzz read budget exhausted".into()));
        }
        self.blocks
            .get(&ptr.addr.0)
            .cloned()
            .ok_or_else(|| FsError::corrupt(ptr.addr, "no such block in the fuzz input"))
    }
}

impl NodeStore for Blocks {
    fn write_node(&mut self, data: Box<Block>, _replaces: Option<BlockPtr>) -> Result<BlockPtr> {
        let addr = self.next;
        self.next += 1;
        let ptr = BlockPtr {
            addr: BlockAddr(addr),
            birth: WRITE_CP,
            hash: Hash128::of(&data[..]),
        };
        self.blocks.insert(addr, Arc::from(data));
        Ok(ptr)
    }

    fn free_node(&mut self, ptr: BlockPtr) {
        if !self.blocks.contains_key(&ptr.addr.0) || !self.freed.insert(ptr.addr.0) {
            self.bad_free.get_or_insert(ptr.addr.0);
        }
    }
}
