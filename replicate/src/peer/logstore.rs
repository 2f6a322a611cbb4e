//! The log store: every transfer the source sent, kept durably until a CP
//! that contains it is applied (the patent's claim 15: transfer IDs stored
//! with the offsets at which their blocks lie in the peer's local storage).
//!
//! Transfers are appended to segment files `DIR/log/NNNNNNNNNNNNNNNNNNNN.seg`
//! (20 decimal digits, the segment's sequence number), each record being
//!
//! ```text
//!  0        8              16             24                    56          56 + len
//!  +--------+--------------+--------------+---------------------+-------------+
//!  | magic  | transfer id  | len          | check               | batch bytes |
//!  | 8      | u64 LE       | u64 LE       | blake3(id‖len‖sum)  |  len        |
//!  +--------+--------------+--------------+---------------------+-------------+
//! ```
//!
//! `sum` is the batch's own checksum (in its header), which covers the
//! header, the records and the hash of every data block: the peer verified
//! the batch that way when it arrived, so appending hashes 64 bytes instead
//! of the batch once more, and a scan verifies the batch itself. Records of
//! the first format (magic `TWPLOG01`, check over id‖len‖batch bytes) are
//! still read.
//!
//! In append order (segment, then offset) transfer IDs strictly increase. An
//! in-memory index maps each ID to its segment, the offset of its batch bytes,
//! and the batch's geometry, so that block `k` of transfer `t` is read with one
//! `pread` at `offset + (header_blocks + k) * 4096`.
//!
//! Durability: [`LogStore::append`] writes; [`LogStore::sync`] fdatasyncs every
//! segment written since the last sync, and the directory when a segment was
//! created or removed. The peer acknowledges a transfer only after `sync`.
//!
//! Recovery: [`LogStore::open`] rebuilds the index by reading every record and
//! checking it; the first record that is torn, corrupt or out of order ends the
//! log: its segment is truncated there and later segments are deleted (none of
//! that was acknowledged, since acknowledgements follow a sync of everything
//! before them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use twinfs_fs::device::write_all_vectored_at;
use twinfs_fs::nvlog::batch;
use twinfs_fs::BLOCK_SIZE;

use super::state::{ensure_dir, fsync_dir, keep_private, private_file};
use super::{PeerError, Result};
use crate::message::MAX_BATCH_BYTES;

/// First bytes of every record appended now.
pub const RECORD_MAGIC: [u8; 8] = *b"TWPLOG02";
/// First bytes of a record of the first format (still read).
const RECORD_MAGIC_V1: [u8; 8] = *b"TWPLOG01";
/// Bytes of a record's header.
pub const RECORD_HEADER_BYTES: usize = 56;
/// A segment is closed and a new one started once it holds this many bytes.
pub const SEGMENT_TARGET_BYTES: u64 = 64 << 20;
/// File name suffix of segments.
const SEGMENT_SUFFIX: &str = ".seg";

const OFF_ID: usize = 8;
const OFF_LEN: usize = 16;
const OFF_CHECK: usize = 24;
const _: () = assert!(OFF_CHECK + 32 == RECORD_HEADER_BYTES);

/// Where a stored transfer lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Segment sequence number.
    pub seg: u64,
    /// Byte offset of the batch bytes (after the record header) in the segment.
    pub offset: u64,
    /// Bytes of the batch.
    pub len: u64,
    /// Header blocks of the batch: its data block `k` starts at byte
    /// `(header_blocks + k) * 4096` of the batch.
    pub header_blocks: u32,
    /// Data blocks of the batch.
    pub nblocks: u32,
}

#[derive(Debug, Default)]
struct Segment {
    bytes: u64,
    /// Bytes known durable: synced, or found by the scan at open.
    synced: u64,
    /// Highest transfer in the segment (0 when empty).
    last_id: u64,
}

/// The log store of one peer directory.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    index: BTreeMap<u64, Loc>,
    files: HashMap<u64, File>,
    /// Segments written since the last sync.
    unsynced: BTreeSet<u64>,
    /// Segments were created or removed since the last sync.
    dir_unsynced: bool,
}

/// The result of checking a record header and its batch.
struct Scanned {
    id: u64,
    len: u64,
    header_blocks: u32,
    nblocks: u32,
}

impl LogStore {
    /// Opens (creating if needed) the log store in `dir`, rebuilding the index.
    pub fn open(dir: &Path) -> Result<LogStore> {
        ensure_dir(dir)?;
        let mut store = LogStore {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            files: HashMap::new(),
            unsynced: BTreeSet::new(),
            dir_unsynced: false,
        };
        let mut seqs = Vec::new();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| PeerError::io(format!("listing {}", dir.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| PeerError::io(format!("listing {}", dir.display()), e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match parse_segment_name(&name) {
                Some(seq) => seqs.push(seq),
                None => log::warn!(
                    "log store {}: ignoring {name}, which is not a segment",
                    dir.display()
                ),
            }
        }
        seqs.sort_unstable();
        let mut ended = false;
        for seq in seqs {
            if ended {
                log::warn!(
                    "log store: deleting segment {seq}, which follows a damaged record (it was never acknowledged)"
                );
                store.remove_segment_file(seq)?;
                continue;
            }
            ended = store.scan_segment(seq)?;
        }
        if store.dir_unsynced {
            store.sync()?;
        }
        Ok(store)
    }

    /// Reads every record of a segment into the index. Returns true when the
    /// log ended inside it (a damaged record, truncated away).
    fn scan_segment(&mut self, seq: u64) -> Result<bool> {
        let path = self.segment_path(seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| PeerError::io(format!("opening log segment {}", path.display()), e))?;
        keep_private(&file, &path)?;
        let file_len = file
            .metadata()
            .map_err(|e| PeerError::io(format!("reading log segment {}", path.display()), e))?
            .len();
        let mut off = 0u64;
        let mut seg = Segment::default();
        let mut ended = false;
        let mut buf = Vec::new();
        while off < file_len {
            let prev = self.highest();
            match check_record(&file, off, file_len, prev, &mut buf) {
                Ok(r) => {
                    self.index.insert(
                        r.id,
                        Loc {
                            seg: seq,
                            offset: off + RECORD_HEADER_BYTES as u64,
                            len: r.len,
                            header_blocks: r.header_blocks,
                            nblocks: r.nblocks,
                        },
                    );
                    seg.last_id = r.id;
                    off += RECORD_HEADER_BYTES as u64 + r.len;
                }
                Err(why) => {
                    log::warn!(
                        "log store: segment {} ends at byte {off} of {file_len}: {why}; truncating the rest (it was never acknowledged)",
                        path.display()
                    );
                    file.set_len(off)
                        .and_then(|()| file.sync_all())
                        .map_err(|e| {
                            PeerError::io(format!("truncating log segment {}", path.display()), e)
                        })?;
                    ended = true;
                    break;
                }
            }
        }
        if off == 0 {
            // Nothing valid in it: an empty segment is only clutter.
            drop(file);
            self.remove_segment_file(seq)?;
            return Ok(ended);
        }
        seg.bytes = off;
        seg.synced = off;
        self.segments.insert(seq, seg);
        self.files.insert(seq, file);
        Ok(ended)
    }

    /// Appends transfer `id` (not yet durable: call [`LogStore::sync`]). If a
    /// transfer with this ID or a higher one is stored, the source restarted
    /// and diverged: those are dropped first, and this one takes their place.
    /// The batch must have passed `batch::verify` (the record's check covers
    /// its checksum, not its bytes).
    pub fn append(&mut self, id: u64, batch_bytes: &[u8]) -> Result<()> {
        assert!(
            batch_bytes.len() <= MAX_BATCH_BYTES,
            "the session checked the batch size"
        );
        debug_assert!(
            batch::verify(batch_bytes).is_ok_and(|h| h.id.0 == id),
            "the peer verified transfer {id} before storing it"
        );
        let header = batch::parse_header(batch_bytes)
            .map_err(|e| PeerError::Protocol(format!("transfer {id}: {e}")))?;
        if id <= self.highest() {
            log::warn!(
                "transfer {id} arrives again while transfers up to {} are stored: the source restarted; dropping the stored transfers from {id} on",
                self.highest()
            );
            self.truncate_from(id)?;
        }
        let seq = self.writable_segment()?;
        let seg = self
            .segments
            .get_mut(&seq)
            .expect("writable segment exists");
        let file = self.files.get(&seq).expect("segment files are open");
        let mut header_bytes = [0u8; RECORD_HEADER_BYTES];
        header_bytes[..8].copy_from_slice(&RECORD_MAGIC);
        header_bytes[OFF_ID..OFF_ID + 8].copy_from_slice(&id.to_le_bytes());
        header_bytes[OFF_LEN..OFF_LEN + 8]
            .copy_from_slice(&(batch_bytes.len() as u64).to_le_bytes());
        header_bytes[OFF_CHECK..].copy_from_slice(&record_check(
            id,
            batch_bytes.len(),
            &header.checksum,
        ));
        let at = seg.bytes;
        let written = write_all_vectored_at(file, &[&header_bytes, batch_bytes], at, 0);
        if let Err(e) = written {
            // Leave no partial record behind (best effort: a scan would cut it anyway).
            let _ = file.set_len(at);
            return Err(PeerError::io(
                format!(
                    "appending transfer {id} to {}",
                    self.segment_path(seq).display()
                ),
                e,
            ));
        }
        seg.bytes = at + (RECORD_HEADER_BYTES + batch_bytes.len()) as u64;
        seg.last_id = id;
        self.unsynced.insert(seq);
        self.index.insert(
            id,
            Loc {
                seg: seq,
                offset: at + RECORD_HEADER_BYTES as u64,
                len: batch_bytes.len() as u64,
                header_blocks: header.header_blocks,
                nblocks: header.nblocks,
            },
        );
        Ok(())
    }

    /// Makes everything appended so far durable. Returns the highest stored ID.
    ///
    /// When a segment's fdatasync fails, what was appended since its last
    /// good sync may never reach the disk, and a later fdatasync need not
    /// say so again (Linux reports a writeback error once per file). The
    /// records appended since the last good sync are then cut off the files
    /// (see [`LogStore::discard_unsynced`]), so that no later sync and no
    /// scan of the directory can take them for durable; the source sends
    /// them again.
    pub fn sync(&mut self) -> Result<u64> {
        let pending: Vec<u64> = self.unsynced.iter().copied().collect();
        for seq in pending {
            if let Some(f) = self.files.get(&seq) {
                if let Err(e) = f.sync_data() {
                    let err = PeerError::io(
                        format!("syncing log segment {}", self.segment_path(seq).display()),
                        e,
                    );
                    self.discard_unsynced();
                    return Err(err);
                }
            }
            self.unsynced.remove(&seq);
            if let Some(seg) = self.segments.get_mut(&seq) {
                seg.synced = seg.bytes;
            }
        }
        // The flag stays set until a directory sync succeeds: a new
        // segment is not durable before its directory entry is.
        if self.dir_unsynced {
            fsync_dir(&self.dir)?;
            self.dir_unsynced = false;
        }
        Ok(self.highest())
    }

    /// Cuts every record appended since the last good sync off the segment
    /// files (truncating the first segment concerned, deleting later ones),
    /// after a failed sync. Best effort: the files' lengths change at once
    /// (so a scan no longer finds the records); the syncs that would make
    /// the cut durable may fail on the same disk, and do not matter, since
    /// the cut records were never acknowledged.
    fn discard_unsynced(&mut self) {
        let first_unsynced = self
            .index
            .iter()
            .find(|(_, loc)| {
                self.segments
                    .get(&loc.seg)
                    .is_some_and(|seg| loc.offset - RECORD_HEADER_BYTES as u64 >= seg.synced)
            })
            .map(|(&id, _)| id);
        if let Some(id) = first_unsynced {
            log::warn!(
                "log store {}: dropping transfers from {id} on, which a failed sync may have lost",
                self.dir.display()
            );
            if let Err(e) = self.truncate_from(id) {
                log::warn!("log store {}: {e}", self.dir.display());
            }
        }
        self.dir_unsynced = true;
    }

    /// Drops every segment whose transfers are all `<= through` (a CP that
    /// contains them was applied). Durable when this returns.
    pub fn release_through(&mut self, through: u64) -> Result<()> {
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, s)| s.last_id <= through)
            .map(|(&seq, _)| seq)
            .collect();
        if done.is_empty() {
            return Ok(());
        }
        for seq in done {
            self.remove_segment(seq)?;
        }
        fsync_dir(&self.dir)?;
        self.dir_unsynced = false;
        Ok(())
    }

    /// Reads `buf.len()` bytes from byte `offset` of transfer `id`'s batch.
    pub fn read(&self, id: u64, offset: u64, buf: &mut [u8]) -> std::result::Result<(), String> {
        let loc = self
            .index
            .get(&id)
            .ok_or_else(|| format!("transfer {id} is not in the log store"))?;
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= loc.len)
            .ok_or_else(|| {
                format!(
                    "bytes {offset}..+{} lie outside transfer {id} ({} bytes)",
                    buf.len(),
                    loc.len
                )
            })?;
        debug_assert!(end <= loc.len);
        let file = self.files.get(&loc.seg).expect("indexed segments are open");
        file.read_exact_at(buf, loc.offset + offset)
            .map_err(|e| format!("reading transfer {id} from segment {}: {e}", loc.seg))
    }

    /// Reads data block `block_no` of transfer `id` (the patent's reference).
    pub fn read_block(
        &self,
        id: u64,
        block_no: u32,
        buf: &mut [u8],
    ) -> std::result::Result<(), String> {
        let loc = self
            .index
            .get(&id)
            .ok_or_else(|| format!("transfer {id} is not in the log store"))?;
        if block_no >= loc.nblocks {
            return Err(format!(
                "transfer {id} has {} data blocks, no block {block_no}",
                loc.nblocks
            ));
        }
        let offset = (u64::from(loc.header_blocks) + u64::from(block_no)) * BLOCK_SIZE as u64;
        self.read(id, offset, buf)
    }

    /// Reads a whole stored batch.
    pub fn read_batch(&self, id: u64) -> std::result::Result<Vec<u8>, String> {
        let loc = self
            .index
            .get(&id)
            .ok_or_else(|| format!("transfer {id} is not in the log store"))?;
        let mut buf = vec![0u8; loc.len as usize];
        self.read(id, 0, &mut buf)?;
        Ok(buf)
    }

    /// Where transfer `id` is stored, if it is.
    pub fn get(&self, id: u64) -> Option<Loc> {
        self.index.get(&id).copied()
    }

    /// IDs of every stored transfer, in order.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.index.keys().copied()
    }

    /// The highest stored transfer ID (0 if none).
    pub fn highest(&self) -> u64 {
        self.index.keys().next_back().copied().unwrap_or(0)
    }

    /// Number of stored transfers.
    pub fn transfers(&self) -> u64 {
        self.index.len() as u64
    }

    /// Bytes held in segment files.
    pub fn bytes_held(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Path of segment `seq`.
    pub fn segment_path(&self, seq: u64) -> PathBuf {
        segment_path(&self.dir, seq)
    }

    /// The segment to append to: the last one unless it is full or absent.
    fn writable_segment(&mut self) -> Result<u64> {
        if let Some((&seq, seg)) = self.segments.iter().next_back() {
            if seg.bytes < SEGMENT_TARGET_BYTES {
                return Ok(seq);
            }
        }
        let seq = self.segments.keys().next_back().map_or(1, |s| s + 1);
        let path = self.segment_path(seq);
        let file = private_file(OpenOptions::new().read(true).write(true).create_new(true))
            .open(&path)
            .map_err(|e| PeerError::io(format!("creating log segment {}", path.display()), e))?;
        self.files.insert(seq, file);
        self.segments.insert(seq, Segment::default());
        self.dir_unsynced = true;
        Ok(seq)
    }

    /// Drops every stored transfer after `id`, durably.
    pub fn drop_after(&mut self, id: u64) -> Result<()> {
        self.truncate_from(id.saturating_add(1))
    }

    /// Drops every stored transfer with an ID `>= id`, durably.
    fn truncate_from(&mut self, id: u64) -> Result<()> {
        let Some((_, first)) = self.index.range(id..).next() else {
            return Ok(());
        };
        let first = *first;
        let later: Vec<u64> = self
            .segments
            .range(first.seg + 1..)
            .map(|(&s, _)| s)
            .collect();
        for seq in later {
            self.remove_segment(seq)?;
        }
        let keep = first.offset - RECORD_HEADER_BYTES as u64;
        self.index.retain(|&t, _| t < id);
        if keep == 0 {
            self.remove_segment(first.seg)?;
        } else {
            let path = self.segment_path(first.seg);
            let file = self.files.get(&first.seg).expect("segment files are open");
            file.set_len(keep)
                .and_then(|()| file.sync_all())
                .map_err(|e| {
                    PeerError::io(format!("truncating log segment {}", path.display()), e)
                })?;
            let seg = self.segments.get_mut(&first.seg).expect("segment exists");
            seg.bytes = keep;
            seg.synced = keep;
            seg.last_id = self
                .index
                .range(..id)
                .next_back()
                .filter(|(_, l)| l.seg == first.seg)
                .map_or(0, |(&t, _)| t);
        }
        fsync_dir(&self.dir)?;
        self.dir_unsynced = false;
        Ok(())
    }

    /// Forgets segment `seq` and deletes its file (the caller syncs the directory).
    fn remove_segment(&mut self, seq: u64) -> Result<()> {
        self.segments.remove(&seq);
        self.files.remove(&seq);
        self.unsynced.remove(&seq);
        self.index.retain(|_, l| l.seg != seq);
        self.remove_segment_file(seq)
    }

    fn remove_segment_file(&mut self, seq: u64) -> Result<()> {
        let path = self.segment_path(seq);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(PeerError::io(
                    format!("deleting log segment {}", path.display()),
                    e,
                ))
            }
        }
        self.dir_unsynced = true;
        Ok(())
    }
}

/// The check field of a record of a `len`-byte batch: blake3 over the ID,
/// the length and `covered` (the batch's checksum; a first-format record
/// covers the batch bytes themselves).
fn record_check(id: u64, len: usize, covered: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(&(len as u64).to_le_bytes());
    h.update(covered);
    *h.finalize().as_bytes()
}

/// Reads and checks the record at `off`; the error says why the log ends there.
fn check_record(
    file: &File,
    off: u64,
    file_len: u64,
    prev_id: u64,
    buf: &mut Vec<u8>,
) -> std::result::Result<Scanned, String> {
    if file_len - off < RECORD_HEADER_BYTES as u64 {
        return Err("a torn record header".into());
    }
    let mut h = [0u8; RECORD_HEADER_BYTES];
    file.read_exact_at(&mut h, off)
        .map_err(|e| format!("reading a record header: {e}"))?;
    let v1 = h[..8] == RECORD_MAGIC_V1;
    if h[..8] != RECORD_MAGIC && !v1 {
        return Err("no record magic".into());
    }
    let id = u64::from_le_bytes(h[OFF_ID..OFF_ID + 8].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(h[OFF_LEN..OFF_LEN + 8].try_into().expect("8 bytes"));
    if len > MAX_BATCH_BYTES as u64 {
        return Err(format!("a record length {len} above the batch limit"));
    }
    if file_len - off - (RECORD_HEADER_BYTES as u64) < len {
        return Err(format!("transfer {id} is torn"));
    }
    if id <= prev_id {
        return Err(format!("transfer {id} follows transfer {prev_id}"));
    }
    buf.resize(len as usize, 0);
    file.read_exact_at(buf, off + RECORD_HEADER_BYTES as u64)
        .map_err(|e| format!("reading transfer {id}: {e}"))?;
    let damaged = || format!("transfer {id} fails its check (torn or damaged)");
    let header = if v1 {
        if record_check(id, buf.len(), buf) != h[OFF_CHECK..] {
            return Err(damaged());
        }
        batch::parse_header(buf).map_err(|e| format!("transfer {id}: {e}"))?
    } else {
        let header = batch::verify(buf).map_err(|e| format!("{}: {e}", damaged()))?;
        if header.id.0 != id || record_check(id, buf.len(), &header.checksum) != h[OFF_CHECK..] {
            return Err(damaged());
        }
        header
    };
    Ok(Scanned {
        id,
        len,
        header_blocks: header.header_blocks,
        nblocks: header.nblocks,
    })
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a log store directory holds, counted without verifying or changing
/// anything (for `twinfs status --dir` while the daemon is down).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuickCount {
    /// Bytes of segment files.
    pub bytes: u64,
    /// Records found.
    pub transfers: u64,
    /// Highest transfer ID found (0 if none).
    pub highest: u64,
}

/// Counts what the log store in `dir` holds by walking record headers.
pub fn quick_count(dir: &Path) -> QuickCount {
    let mut count = QuickCount::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return count;
    };
    for entry in entries.flatten() {
        if parse_segment_name(&entry.file_name().to_string_lossy()).is_none() {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        count.bytes += len;
        let mut off = 0u64;
        let mut h = [0u8; RECORD_HEADER_BYTES];
        while off + RECORD_HEADER_BYTES as u64 <= len && file.read_exact_at(&mut h, off).is_ok() {
            if h[..8] != RECORD_MAGIC && h[..8] != RECORD_MAGIC_V1 {
                break;
            }
            let id = u64::from_le_bytes(h[OFF_ID..OFF_ID + 8].try_into().expect("8 bytes"));
            let rec_len = u64::from_le_bytes(h[OFF_LEN..OFF_LEN + 8].try_into().expect("8 bytes"));
            off = off
                .saturating_add(RECORD_HEADER_BYTES as u64)
                .saturating_add(rec_len);
            if off > len {
                break;
            }
            count.transfers += 1;
            count.highest = count.highest.max(id);
        }
    }
    count
}
