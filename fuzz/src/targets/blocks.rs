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

use arbitrary::Unstructured;
use twinfs_fs::btree::{NodeReader, NodeStore};
use twinfs_fs::{Block, BlockAddr, BlockPtr, CpNumber, FsError, Hash128, Result, BLOCK_SIZE};

/// Address of the input's first block.
pub const BASE_ADDR: u64 = 100;
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
    /// Up to `max` blocks from the input, each a `u16` length and that many
    /// bytes, zero-padded to a block: the tail of a node or of an indirect
    /// block is mostly zeros, which the fuzzer need not spell out.
    pub fn from_input(u: &mut Unstructured, max: usize) -> Blocks {
        let mut store = Blocks {
            next: 1 << 32,
            ..Blocks::default()
        };
        for i in 0..max as u64 {
            let Ok(len) = u.arbitrary::<u16>() else {
                break;
            };
            let len = (len as usize % (BLOCK_SIZE + 1)).min(u.len());
            let Ok(bytes) = u.bytes(len) else {
                break;
            };
            let mut block = [0u8; BLOCK_SIZE];
            block[..len].copy_from_slice(bytes);
            store.blocks.insert(BASE_ADDR + i, Arc::new(block));
        }
        store
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
