//! The staging journal `DIR/journal`: blocks of the CP being applied whose
//! addresses the committed image still uses, and the commit record that makes
//! the CP's switch redoable.
//!
//! ```text
//! entry  (× n):  | addr u64 LE | block (4096) |                           4104 bytes each
//! commit record: | magic "TWPJCMT1" | cp u64 LE | n u64 LE | superblock (4096) | check (32) |
//!                  check = blake3 of every byte of the file before it
//! ```
//!
//! Protocol (see `replica`): entries are appended while the CP's blocks
//! arrive; at the CP's end the entries are fdatasync'ed, the commit record is
//! appended and fdatasync'ed (and the directory, the first time) — the commit
//! point — then the entries are copied to their addresses, the superblock is
//! written, the image fdatasync'ed, and the journal deleted (durably, before
//! anything else happens). On startup a journal whose commit record checks is
//! redone (copying again is idempotent); any other journal is discarded,
//! which leaves the image at its previous CP because nothing the previous
//! image uses was touched before the commit point.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use twinfs_fs::superblock::Superblock;
use twinfs_fs::{CpNumber, BLOCK_SIZE};

use super::image::MirrorImage;
use super::state::{fsync_dir, private_file};
use super::{PeerError, Result};

/// Magic of the commit record.
pub const COMMIT_MAGIC: [u8; 8] = *b"TWPJCMT1";
/// Bytes of one staged entry.
pub const ENTRY_BYTES: usize = 8 + BLOCK_SIZE;
/// Bytes of the commit record.
pub const COMMIT_BYTES: usize = 8 + 8 + 8 + BLOCK_SIZE + 32;
/// Entries copied per read when redoing.
const COPY_BATCH_ENTRIES: usize = 256;

/// A CP's journal while it is being built. Each address is staged at most
/// once per CP (the source sends each block of a CP once; blocks it resends
/// after `CpMissing` were never staged), so the journal never holds more
/// entries than the volume has blocks.
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
    entries: u64,
    /// Addresses staged in this CP, one bit each.
    staged: Vec<u64>,
    /// The file was created since the directory was last synced.
    created: bool,
}

/// A journal found on disk whose commit record checks.
pub struct Committed {
    /// The CP it commits.
    pub cp: CpNumber,
    /// Number of staged entries.
    pub entries: u64,
    /// The superblock to write (peer hold already cleared).
    pub superblock: Box<twinfs_fs::Block>,
}

impl Journal {
    /// A journal at `path` with nothing staged (the file is created on first use).
    pub fn new(path: &Path) -> Journal {
        Journal {
            path: path.to_path_buf(),
            file: None,
            entries: 0,
            staged: Vec::new(),
            created: false,
        }
    }

    /// Number of staged blocks.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    fn file(&mut self) -> Result<&File> {
        if self.file.is_none() {
            let existed = self.path.exists();
            let f = private_file(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true),
            )
            .open(&self.path)
            .map_err(|e| PeerError::io(format!("creating {}", self.path.display()), e))?;
            self.created |= !existed;
            self.file = Some(f);
        }
        Ok(self.file.as_ref().expect("just opened"))
    }

    /// Appends a staged block for `addr` (not durable until [`Journal::commit`]).
    /// The caller checked `addr` against the volume's size; staging an address
    /// twice in one CP is the source's protocol error.
    pub fn stage(&mut self, addr: u64, block: &[u8]) -> Result<()> {
        assert_eq!(block.len(), BLOCK_SIZE, "only whole blocks are staged");
        let (word, bit) = ((addr / 64) as usize, 1u64 << (addr % 64));
        if word >= self.staged.len() {
            self.staged.resize(word + 1, 0);
        }
        if self.staged[word] & bit != 0 {
            return Err(PeerError::Protocol(format!(
                "the CP sends block {addr} a second time; a CP writes each block once"
            )));
        }
        self.staged[word] |= bit;
        let at = self.entries * ENTRY_BYTES as u64;
        let mut entry = Vec::with_capacity(ENTRY_BYTES);
        entry.extend_from_slice(&addr.to_le_bytes());
        entry.extend_from_slice(block);
        let path = self.path.clone();
        self.file()?
            .write_all_at(&entry, at)
            .map_err(|e| PeerError::io(format!("staging block {addr} in {}", path.display()), e))?;
        self.entries += 1;
        Ok(())
    }

    /// Makes the staged entries durable, then appends the commit record for
    /// CP `cp` with `superblock` and makes it durable: the commit point.
    pub fn commit(&mut self, cp: CpNumber, superblock: &[u8]) -> Result<()> {
        assert_eq!(superblock.len(), BLOCK_SIZE);
        let path = self.path.clone();
        let io = |what: &str, e| PeerError::io(format!("{what} {}", path.display()), e);
        let entries = self.entries;
        let file = self.file()?;
        file.sync_data().map_err(|e| io("syncing", e))?;
        let at = entries * ENTRY_BYTES as u64;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; ENTRY_BYTES * COPY_BATCH_ENTRIES];
        let mut off = 0;
        while off < at {
            let n = ((at - off) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], off)
                .map_err(|e| io("reading", e))?;
            hasher.update(&buf[..n]);
            off += n as u64;
        }
        let mut rec = Vec::with_capacity(COMMIT_BYTES);
        rec.extend_from_slice(&COMMIT_MAGIC);
        rec.extend_from_slice(&cp.0.to_le_bytes());
        rec.extend_from_slice(&entries.to_le_bytes());
        rec.extend_from_slice(superblock);
        hasher.update(&rec);
        rec.extend_from_slice(hasher.finalize().as_bytes());
        file.write_all_at(&rec, at)
            .map_err(|e| io("writing the commit record to", e))?;
        file.sync_data().map_err(|e| io("syncing", e))?;
        if std::mem::take(&mut self.created) {
            if let Some(dir) = self.path.parent() {
                fsync_dir(dir)?;
            }
        }
        Ok(())
    }

    /// Copies the staged blocks to their addresses in `image` (not durable
    /// until the image is synced).
    pub fn copy_into(&mut self, image: &MirrorImage) -> Result<()> {
        let entries = self.entries;
        let path = self.path.clone();
        let file = self.file()?;
        copy_entries(file, &path, entries, image)
    }

    /// Deletes the journal durably (after the CP is committed, or to discard it).
    pub fn remove(&mut self) -> Result<()> {
        self.file = None;
        self.entries = 0;
        self.staged = Vec::new();
        self.created = false;
        remove_file(&self.path)
    }

    /// Forgets what was staged without touching the disk (the next stage
    /// truncates the file).
    pub fn reset(&mut self) {
        self.file = None;
        self.entries = 0;
        self.staged = Vec::new();
    }
}

fn copy_entries(file: &File, path: &Path, entries: u64, image: &MirrorImage) -> Result<()> {
    let mut buf = vec![0u8; ENTRY_BYTES * COPY_BATCH_ENTRIES];
    let mut i = 0u64;
    while i < entries {
        let n = ((entries - i) as usize).min(COPY_BATCH_ENTRIES);
        let bytes = &mut buf[..n * ENTRY_BYTES];
        file.read_exact_at(bytes, i * ENTRY_BYTES as u64)
            .map_err(|e| {
                PeerError::io(format!("reading staged blocks from {}", path.display()), e)
            })?;
        for entry in bytes.chunks(ENTRY_BYTES) {
            let addr = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
            image.write_blocks(addr, &entry[8..])?;
        }
        i += n as u64;
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(PeerError::io(format!("deleting {}", path.display()), e)),
    }
    if let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Reads the commit record of the journal at `path`, if the file exists and
/// its record checks.
pub fn read_committed(path: &Path) -> Result<Option<Committed>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PeerError::io(format!("opening {}", path.display()), e)),
    };
    let io = |e| PeerError::io(format!("reading {}", path.display()), e);
    let len = file.metadata().map_err(io)?.len();
    if len < COMMIT_BYTES as u64 {
        return Ok(None);
    }
    let at = len - COMMIT_BYTES as u64;
    let mut rec = vec![0u8; COMMIT_BYTES];
    file.read_exact_at(&mut rec, at).map_err(io)?;
    if rec[..8] != COMMIT_MAGIC {
        return Ok(None);
    }
    let cp = u64::from_le_bytes(rec[8..16].try_into().expect("8 bytes"));
    let entries = u64::from_le_bytes(rec[16..24].try_into().expect("8 bytes"));
    if entries.checked_mul(ENTRY_BYTES as u64) != Some(at) {
        return Ok(None);
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; ENTRY_BYTES * COPY_BATCH_ENTRIES];
    let mut off = 0;
    while off < at {
        let n = ((at - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off).map_err(io)?;
        hasher.update(&buf[..n]);
        off += n as u64;
    }
    hasher.update(&rec[..COMMIT_BYTES - 32]);
    if hasher.finalize().as_bytes()[..] != rec[COMMIT_BYTES - 32..] {
        return Ok(None);
    }
    let mut superblock = twinfs_fs::new_block();
    superblock.copy_from_slice(&rec[24..24 + BLOCK_SIZE]);
    Ok(Some(Committed {
        cp: twinfs_fs::CpNumber(cp),
        entries,
        superblock,
    }))
}

/// What startup recovery did with a journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No journal.
    None,
    /// A journal without a valid commit record: deleted; the image stays at its CP.
    Discarded,
    /// A committed journal: its CP was (re)applied.
    Redone(CpNumber),
}

/// Redoes or discards the journal at `path` against `image`. Afterwards there
/// is no journal and the image is at a committed CP.
pub fn recover(path: &Path, image: &mut MirrorImage) -> Result<Recovery> {
    if !path.exists() {
        return Ok(Recovery::None);
    }
    let Some(c) = read_committed(path)? else {
        log::info!(
            "{}: a CP was being applied when the peer stopped, before its commit point; discarding it (the mirror stays at its previous CP)",
            path.display()
        );
        remove_file(path)?;
        return Ok(Recovery::Discarded);
    };
    let sb = Superblock::decode(&c.superblock, c.cp.0 % 2)
        .map_err(|e| PeerError::volume(format!("the superblock in {}", path.display()), e))?;
    log::info!(
        "{}: redoing the commit of CP {} ({} staged blocks)",
        path.display(),
        c.cp.0,
        c.entries
    );
    let file =
        File::open(path).map_err(|e| PeerError::io(format!("opening {}", path.display()), e))?;
    image.ensure_blocks(sb.total_blocks)?;
    copy_entries(&file, path, c.entries, image)?;
    image.sync()?;
    image.write_superblock(sb.cp, &c.superblock[..])?;
    image.sync()?;
    drop(file);
    remove_file(path)?;
    image.reread_superblock();
    Ok(Recovery::Redone(c.cp))
}
