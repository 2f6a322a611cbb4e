//! Shared helpers of the `peer_*` tests: a source volume whose log batches and
//! CP change sets are captured (with each block's buffer descriptor), and an
//! encoder that turns them into the messages a source sends, using every
//! encoding the protocol has.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use twinfs_fs::cp::{BlockKind, CpBlock as FsCpBlock, CpSink};
use twinfs_fs::descriptor::{Base as FsBase, BlockSource, Patch as FsPatch};
use twinfs_fs::device::{BlockDevice, MemDevice};
use twinfs_fs::lineage::GenerationId;
use twinfs_fs::nvlog::batch::{OpenBatch, SealedBatch};
use twinfs_fs::nvlog::record::{Record, Write};
use twinfs_fs::superblock::Superblock;
use twinfs_fs::volume::{self, Replicator};
use twinfs_fs::{
    Block, BlockAddr, CpNumber, FileKind, Ino, MkfsOptions, Timestamp, TransferId, View, Volume,
    VolumeConfig, BLOCK_SIZE, ROOT_INO,
};
use twinfs_replicate::message::{
    Base, CpBlock, DeltaRange, Encoding, Message, Patch, MAX_BLOCKS_PER_CP_FRAME,
};
use twinfs_replicate::{Credentials, Secret};

/// UUID of every test source volume.
pub const UUID: [u8; 16] = [0x5a; 16];

pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

pub fn secret() -> Secret {
    Secret::from_bytes(b"peer tests shared secret: 4d1c8e0b9a27f365").expect("random enough")
}

/// The source's and the peer's credentials of every test: one key pair each,
/// each trusting the other, made once per test binary.
fn credentials() -> &'static (Credentials, Credentials) {
    static PAIR: std::sync::OnceLock<(Credentials, Credentials)> = std::sync::OnceLock::new();
    PAIR.get_or_init(|| Credentials::pair(&secret()).expect("keys"))
}

/// What a test source brings to the handshake.
pub fn source_credentials() -> Credentials {
    credentials().0.clone()
}

/// What a test peer brings to the handshake.
pub fn peer_credentials() -> Credentials {
    credentials().1.clone()
}

/// One block a CP wrote, with what an encoder needs.
#[derive(Clone, Debug)]
pub struct CapBlock {
    pub addr: u64,
    pub hash: [u8; 16],
    pub data: Vec<u8>,
    pub kind: BlockKind,
    pub source: BlockSource,
    pub prev_addr: Option<u64>,
    /// The block `prev_addr` held in the base image, read when the CP ran.
    pub prev_data: Option<Vec<u8>>,
}

/// One CP as the source's CP sink saw it.
#[derive(Clone, Debug)]
pub struct CapCp {
    pub cp: u64,
    pub base: u64,
    pub covers: u64,
    pub blocks: Vec<CapBlock>,
    pub sb: Superblock,
    pub superblock: Vec<u8>,
}

#[derive(Default)]
pub struct Captured {
    pub batches: Vec<SealedBatch>,
    pub cps: Vec<CapCp>,
    /// The CP being captured: (cp, base, covers, blocks).
    cur: Option<(u64, u64, u64, Vec<CapBlock>)>,
}

struct Sink {
    cap: Arc<Mutex<Captured>>,
    dev: Arc<dyn BlockDevice>,
}

impl CpSink for Sink {
    fn begin(&mut self, cp: CpNumber, base: CpNumber, covers: Option<TransferId>) {
        self.cap.lock().unwrap().cur = Some((cp.0, base.0, covers.map_or(0, |c| c.0), Vec::new()));
    }

    fn block(&mut self, b: &FsCpBlock<'_>) {
        let prev_data = b.prev.map(|p| {
            let mut buf = vec![0u8; BLOCK_SIZE];
            self.dev.read(p.addr, &mut buf).expect("read prev");
            buf
        });
        let mut cap = self.cap.lock().unwrap();
        cap.cur.as_mut().expect("a CP is open").3.push(CapBlock {
            addr: b.addr.0,
            hash: b.hash.0,
            data: b.data.to_vec(),
            kind: b.kind,
            source: b.source.clone(),
            prev_addr: b.prev.map(|p| p.addr.0),
            prev_data,
        });
    }

    fn commit(&mut self, sb: &Superblock, superblock: &Block) {
        let mut cap = self.cap.lock().unwrap();
        let (cp, base, covers, blocks) = cap.cur.take().expect("a CP is open");
        cap.cps.push(CapCp {
            cp,
            base,
            covers,
            blocks,
            sb: sb.clone(),
            superblock: superblock.to_vec(),
        });
    }

    fn abort(&mut self) {
        self.cap.lock().unwrap().cur = None;
    }
}

struct Hooks(Arc<Mutex<Captured>>);

impl Replicator for Hooks {
    fn batch_logged(&self, batch: &SealedBatch) {
        self.0.lock().unwrap().batches.push(batch.clone());
    }

    fn wait_for_peer(&self, _id: TransferId) -> twinfs_fs::Result<()> {
        Ok(())
    }
}

/// A source volume in memory whose output is captured.
pub struct Source {
    pub dev: Arc<MemDevice>,
    pub vol: Volume,
    pub cap: Arc<Mutex<Captured>>,
}

impl Source {
    /// A fresh volume of `blocks` blocks with the default log size.
    pub fn new(blocks: u64) -> Source {
        let dev = Arc::new(MemDevice::new(blocks));
        volume::mkfs(
            dev.clone(),
            &MkfsOptions {
                uuid: Some(UUID),
                time: Some(Timestamp::new(1_700_000_000, 0)),
                generation: Some(GenerationId(1)),
                ..Default::default()
            },
        )
        .expect("mkfs");
        // Fixed generations: every Source of a test is the same history,
        // so a fresh one can stand in for another at the same CP.
        let vol = Volume::open(
            dev.clone(),
            VolumeConfig {
                background: false,
                cp_interval: None,
                generation: Some(GenerationId(2)),
                ..Default::default()
            },
        )
        .expect("open");
        let cap = Arc::new(Mutex::new(Captured::default()));
        vol.set_replicator(Some(Arc::new(Hooks(cap.clone()))));
        vol.set_cp_sink(Some(Box::new(Sink {
            cap: cap.clone(),
            dev: dev.clone(),
        })));
        Source { dev, vol, cap }
    }

    pub fn create(&self, name: &str) -> Ino {
        self.vol
            .create(ROOT_INO, name.as_bytes(), FileKind::Regular, 0o644, 0, 0, 0)
            .expect("create")
            .ino
    }

    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) {
        self.vol.write(ino, offset, data, false).expect("write");
    }

    /// Makes the log durable (captures its batches), then takes a CP.
    pub fn checkpoint(&self) -> CapCp {
        self.vol.fsync().expect("fsync");
        self.vol.checkpoint().expect("checkpoint");
        self.cap
            .lock()
            .unwrap()
            .cps
            .last()
            .cloned()
            .expect("a CP was captured")
    }

    /// Batches captured with IDs in `from..`.
    pub fn batches_from(&self, from: u64) -> Vec<SealedBatch> {
        self.cap
            .lock()
            .unwrap()
            .batches
            .iter()
            .filter(|b| b.id.0 >= from)
            .cloned()
            .collect()
    }

    pub fn committed(&self) -> Superblock {
        self.vol.committed()
    }

    pub fn deep_hash(&self) -> [u8; 32] {
        twinfs_fs::diff::deep_hash(self.vol.cache(), &*self.dev, &self.vol.committed())
            .expect("deep hash")
    }

    /// `SourceLineage` for the committed CP: the first message of a session.
    pub fn hello(&self) -> Message {
        let sb = self.vol.committed();
        Message::SourceLineage {
            generations: twinfs_replicate::message::wire_lineage(&self.vol.lineage()),
            cp: sb.cp.0,
            root_hash: sb.root_hash().0,
            uncommitted: false,
            hold: None,
        }
    }

    /// A session's start (`SourceLineage`) and the resync of the committed
    /// image from nothing: every block, in full.
    pub fn resync_from_nothing(&self) -> Vec<Message> {
        let sb = self.vol.committed();
        let mut blocks = Vec::new();
        twinfs_fs::diff::walk_image(self.vol.cache(), &sb, CpNumber(0), &mut |p, _| {
            let mut buf = vec![0u8; BLOCK_SIZE];
            self.dev.read(p.addr, &mut buf).expect("read");
            blocks.push(CpBlock {
                addr: p.addr.0,
                hash: p.hash.0,
                enc: Encoding::Full(buf),
            });
            Ok(())
        })
        .expect("walk");
        let mut out = vec![self.hello()];
        out.extend(resync_messages(&sb, None, blocks));
        out
    }

    /// A session's start and a resync of the committed image from CP
    /// `base`: the blocks born since, in full.
    pub fn resync_from(&self, base: u64) -> Vec<Message> {
        let sb = self.vol.committed();
        let mut blocks = Vec::new();
        twinfs_fs::diff::walk_image(self.vol.cache(), &sb, CpNumber(base + 1), &mut |p, _| {
            let mut buf = vec![0u8; BLOCK_SIZE];
            self.dev.read(p.addr, &mut buf).expect("read");
            blocks.push(CpBlock {
                addr: p.addr.0,
                hash: p.hash.0,
                enc: Encoding::Full(buf),
            });
            Ok(())
        })
        .expect("walk");
        let mut out = vec![self.hello()];
        out.extend(resync_messages(&sb, Some(base), blocks));
        out
    }
}

fn resync_messages(sb: &Superblock, base: Option<u64>, blocks: Vec<CpBlock>) -> Vec<Message> {
    let mut out = vec![Message::CpBegin {
        cp: sb.cp.0,
        base_cp: base,
        covers_transfer: sb.log.next_transfer.0 - 1,
        resync: true,
    }];
    for chunk in blocks.chunks(MAX_BLOCKS_PER_CP_FRAME) {
        out.push(Message::CpBlocks {
            cp: sb.cp.0,
            blocks: chunk.to_vec(),
        });
    }
    out.push(Message::CpEnd {
        cp: sb.cp.0,
        superblock: sb.encode().to_vec(),
        root_hash: sb.root_hash().0,
    });
    out
}

/// `SourceLineage` of a source with a history of one generation at CP 0:
/// starts a session with a peer that holds no CP yet.
pub fn new_source_hello() -> Message {
    Message::SourceLineage {
        generations: vec![twinfs_replicate::message::WireGeneration { id: 1, first_cp: 0 }],
        cp: 0,
        root_hash: [0; 32],
        uncommitted: false,
        hold: None,
    }
}

/// How a test encodes a CP's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enc {
    /// Every block in full.
    Full,
    /// References, recipes and deltas wherever the descriptor allows.
    Best,
}

/// Encodes one captured block.
pub fn encode(b: &CapBlock, how: Enc) -> Encoding {
    if how == Enc::Full {
        return Encoding::Full(b.data.clone());
    }
    match &b.source {
        BlockSource::Whole { transfer, block_no } => Encoding::Ref {
            transfer: transfer.0,
            block_no: *block_no,
        },
        BlockSource::Patched { base, patches } => {
            let base = match base {
                FsBase::Zero => Some(Base::Zero),
                FsBase::Prev => b.prev_addr.map(|addr| Base::Prev { addr }),
                FsBase::Logged { transfer, block_no } => Some(Base::Ref {
                    transfer: transfer.0,
                    block_no: *block_no,
                }),
            };
            match base {
                Some(base) => Encoding::Recipe {
                    base,
                    patches: patches
                        .iter()
                        .map(|p| match *p {
                            FsPatch::Bytes {
                                offset,
                                len,
                                transfer,
                                src_offset,
                            } => Patch::Bytes {
                                offset,
                                transfer: transfer.0,
                                src_offset,
                                len,
                            },
                            FsPatch::Zero { offset, len } => Patch::Zero { offset, len },
                        })
                        .collect(),
                },
                None => Encoding::Full(b.data.clone()),
            }
        }
        BlockSource::Opaque => match (&b.prev_addr, &b.prev_data) {
            (Some(addr), Some(prev)) => Encoding::Delta {
                base: Base::Prev { addr: *addr },
                moves: Vec::new(),
                ranges: diff_ranges(prev, &b.data),
            },
            _ => Encoding::Full(b.data.clone()),
        },
    }
}

/// The byte ranges where `new` differs from `old`, merged across short gaps.
pub fn diff_ranges(old: &[u8], new: &[u8]) -> Vec<DeltaRange> {
    const MERGE_GAP: usize = 8;
    let n = new.len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        if old[i] == new[i] {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i + 1;
        let mut j = i + 1;
        while j < n && j - end < MERGE_GAP {
            if old[j] != new[j] {
                end = j + 1;
            }
            j += 1;
        }
        out.push(DeltaRange {
            offset: start as u16,
            data: new[start..end].to_vec(),
        });
        i = end;
    }
    out
}

/// The messages of one captured CP: begin, blocks, end.
pub fn cp_messages(cp: &CapCp, how: Enc) -> Vec<Message> {
    let mut out = vec![Message::CpBegin {
        cp: cp.cp,
        base_cp: Some(cp.base),
        covers_transfer: cp.covers,
        resync: false,
    }];
    let blocks: Vec<CpBlock> = cp
        .blocks
        .iter()
        .map(|b| CpBlock {
            addr: b.addr,
            hash: b.hash,
            enc: encode(b, how),
        })
        .collect();
    for chunk in blocks.chunks(MAX_BLOCKS_PER_CP_FRAME) {
        out.push(Message::CpBlocks {
            cp: cp.cp,
            blocks: chunk.to_vec(),
        });
    }
    out.push(Message::CpEnd {
        cp: cp.cp,
        superblock: cp.superblock.clone(),
        root_hash: cp.sb.root_hash().0,
    });
    out
}

/// Transfer messages for captured batches.
pub fn transfer_messages(batches: &[SealedBatch]) -> Vec<Message> {
    batches
        .iter()
        .map(|b| Message::Transfer {
            id: b.id.0,
            batch: b.bytes.to_vec(),
        })
        .collect()
}

/// A valid batch of volume `uuid` with ID `id` holding `nblocks` whole blocks
/// (block `k` filled with `fill + k`), chained after `prev`.
pub fn make_batch(
    uuid: [u8; 16],
    id: u64,
    prev: [u8; 32],
    nblocks: usize,
    fill: u8,
) -> SealedBatch {
    let mut data = Vec::with_capacity(nblocks * BLOCK_SIZE + 10);
    for k in 0..nblocks {
        data.extend(std::iter::repeat_n(fill.wrapping_add(k as u8), BLOCK_SIZE));
    }
    data.extend_from_slice(b"tail bytes");
    let mut b = OpenBatch::new(TransferId(id));
    b.append(&Record::Write(Write::split(
        Ino(2),
        0,
        &data,
        Timestamp::new(1, 0),
        false,
    )));
    b.seal(&uuid, prev)
}

/// Reads a whole file of a volume.
pub fn read_file(vol: &Volume, name: &str) -> Vec<u8> {
    let attr = vol
        .lookup(View::Live, ROOT_INO, name.as_bytes())
        .expect("lookup");
    vol.read(View::Live, attr.ino, 0, attr.size as u32)
        .expect("read")
}

/// Opens an image file read-only as a volume (a replica view).
pub fn open_read_only(path: &std::path::Path) -> Volume {
    let dev = twinfs_fs::device::FileDevice::open(path, false).expect("open image");
    Volume::open(
        Arc::new(dev),
        VolumeConfig {
            read_only: true,
            background: false,
            cp_interval: None,
            ..Default::default()
        },
    )
    .expect("open replica read-only")
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Block address newtype helper.
pub fn addr(a: u64) -> BlockAddr {
    BlockAddr(a)
}
