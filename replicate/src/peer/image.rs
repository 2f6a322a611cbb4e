//! The mirror image `DIR/mirror.img`: a twinfs image whose blocks sit at the
//! source's addresses. Created sparse on first need; writing past its end
//! extends it; after the first CP it has the volume's full size.
//!
//! The file is opened without a lock so that a read-only replica mount (which
//! takes a shared `flock` through `FileDevice`) can read it while the peer
//! writes; `DIR/lock` keeps a second daemon out.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use twinfs_fs::alloc::{self, Bitmap};
use twinfs_fs::btree::{self, Key};
use twinfs_fs::cache::BlockCache;
use twinfs_fs::device::BlockDevice;
use twinfs_fs::items::{self, RetainedImage};
use twinfs_fs::superblock::{self, Superblock, MAX_VOLUME_BLOCKS};
use twinfs_fs::{BlockAddr, CpNumber, FsError, BLOCK_SIZE, BLOCK_SIZE_U64};

use super::state::PRIVATE_FILE_MODE;
use super::{PeerError, Result};

/// Metadata blocks the peer's cache keeps (allocation maps, tree nodes for
/// `verify --deep`).
const CACHE_META_BLOCKS: usize = 4096;
/// Data blocks the peer's cache keeps (it reads few).
const CACHE_DATA_BLOCKS: usize = 64;

/// Bytes written after which the peer asks the kernel to start writing them
/// back, so that the CP's final fdatasync finds little left to do (a resync's
/// gigabyte otherwise waited in the page cache and was written out only then).
const WRITEBACK_KICK_BYTES: u64 = 16 << 20;

/// The image file as a block device whose size follows the file.
pub struct ImageDevice {
    file: File,
    blocks: AtomicU64,
    /// Bytes written since the last writeback kick.
    unkicked: AtomicU64,
}

impl ImageDevice {
    fn open(path: &Path) -> io::Result<ImageDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(path)?;
        if file.metadata()?.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
        }
        let blocks = file.metadata()?.len() / BLOCK_SIZE_U64;
        Ok(ImageDevice {
            file,
            blocks: AtomicU64::new(blocks),
            unkicked: AtomicU64::new(0),
        })
    }

    /// Starts writeback of the file's dirty pages once enough were written.
    /// Only a hint: durability is `flush`'s job, which reports any error.
    fn kick_writeback(&self, written: usize) {
        let before = self.unkicked.fetch_add(written as u64, Ordering::Relaxed);
        if before + written as u64 >= WRITEBACK_KICK_BYTES {
            self.unkicked.store(0, Ordering::Relaxed);
            // SAFETY: plain syscall on an open descriptor of ours.
            let rc = unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
            };
            if rc != 0 {
                log::debug!(
                    "sync_file_range on the mirror image: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }

    /// Grows the file to at least `blocks` blocks (sparse).
    fn ensure_len(&self, blocks: u64) -> io::Result<()> {
        if self.blocks.load(Ordering::SeqCst) < blocks {
            let len = self.file.metadata()?.len();
            if len < blocks * BLOCK_SIZE_U64 {
                self.file.set_len(blocks * BLOCK_SIZE_U64)?;
            }
            self.blocks.fetch_max(blocks, Ordering::SeqCst);
        }
        Ok(())
    }
}

impl BlockDevice for ImageDevice {
    fn num_blocks(&self) -> u64 {
        self.blocks.load(Ordering::SeqCst)
    }

    fn read(&self, addr: BlockAddr, buf: &mut [u8]) -> io::Result<()> {
        let n = (buf.len() / BLOCK_SIZE) as u64;
        if !buf.len().is_multiple_of(BLOCK_SIZE) || addr.0.saturating_add(n) > self.num_blocks() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "blocks {}..+{n} lie beyond the end of the mirror image",
                    addr.0
                ),
            ));
        }
        self.file.read_exact_at(buf, addr.byte_offset())
    }

    fn write(&self, addr: BlockAddr, data: &[u8]) -> io::Result<()> {
        let n = (data.len() / BLOCK_SIZE) as u64;
        if !data.len().is_multiple_of(BLOCK_SIZE) || addr.0.saturating_add(n) > MAX_VOLUME_BLOCKS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("blocks {}..+{n} lie beyond the largest volume", addr.0),
            ));
        }
        self.file.write_all_at(data, addr.byte_offset())?;
        self.blocks.fetch_max(addr.0 + n, Ordering::SeqCst);
        self.kick_writeback(data.len());
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Which blocks the committed image uses (they must not be overwritten in place).
enum InUse {
    Known(Bitmap),
    /// The image could not be read: treat every block as used (stage everything).
    All,
}

/// The mirror image and what the peer knows about its committed CP.
pub struct MirrorImage {
    path: PathBuf,
    dev: Arc<ImageDevice>,
    cache: BlockCache,
    committed: Option<Superblock>,
    in_use: Option<(CpNumber, InUse)>,
}

impl MirrorImage {
    /// Opens (creating an empty file if needed) the image at `path` and reads
    /// its committed superblock, if it has one.
    pub fn open(path: &Path) -> Result<MirrorImage> {
        let dev = Arc::new(
            ImageDevice::open(path)
                .map_err(|e| PeerError::io(format!("opening {}", path.display()), e))?,
        );
        let cache = BlockCache::new(dev.clone(), CACHE_META_BLOCKS, CACHE_DATA_BLOCKS);
        let mut image = MirrorImage {
            path: path.to_path_buf(),
            dev,
            cache,
            committed: None,
            in_use: None,
        };
        image.reread_superblock();
        Ok(image)
    }

    /// Rereads both slots (after recovery wrote them).
    pub fn reread_superblock(&mut self) {
        self.committed = if self.dev.num_blocks() >= 2 {
            match superblock::read_latest(&*self.dev) {
                Ok((sb, problems)) => {
                    for p in problems {
                        log::debug!("mirror image {}: {p}", self.path.display());
                    }
                    Some(sb)
                }
                Err(e) => {
                    log::info!(
                        "mirror image {} has no committed CP yet ({e})",
                        self.path.display()
                    );
                    None
                }
            }
        } else {
            None
        };
        self.in_use = None;
        self.cache.clear();
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The block device (for the volume layer's readers).
    pub fn device(&self) -> &Arc<ImageDevice> {
        &self.dev
    }

    /// The verified block cache over the image.
    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// The committed superblock, if a CP was ever applied.
    pub fn committed(&self) -> Option<&Superblock> {
        self.committed.as_ref()
    }

    /// Records a newly committed superblock.
    pub fn set_committed(&mut self, sb: Superblock) {
        self.committed = Some(sb);
        self.in_use = None;
    }

    /// Reads block `addr` of the image (zeros where never written; an error past its end).
    pub fn read_block(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.dev.read(BlockAddr(addr), buf)
    }

    /// Writes blocks at `addr` (not durable until [`MirrorImage::sync`]).
    pub fn write_blocks(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.dev.write(BlockAddr(addr), data).map_err(|e| {
            PeerError::io(
                format!("writing block {addr} of {}", self.path.display()),
                e,
            )
        })
    }

    /// Makes every write so far durable (fdatasync).
    pub fn sync(&self) -> Result<()> {
        self.dev
            .flush()
            .map_err(|e| PeerError::io(format!("syncing {}", self.path.display()), e))
    }

    /// Grows the file to `blocks` blocks if it is smaller.
    pub fn ensure_blocks(&self, blocks: u64) -> Result<()> {
        self.dev
            .ensure_len(blocks)
            .map_err(|e| PeerError::io(format!("extending {}", self.path.display()), e))
    }

    /// The CP in superblock slot `slot`, if the slot holds a valid one.
    pub fn slot_cp(&self, slot: u64) -> Option<CpNumber> {
        let mut b = twinfs_fs::new_block();
        self.dev.read(BlockAddr(slot), &mut b[..]).ok()?;
        Superblock::decode(&b, slot)
            .ok()
            .filter(|sb| sb.slot() == slot)
            .map(|sb| sb.cp)
    }

    /// Writes the superblock `sb_bytes` of CP `cp` into its slot and, if the
    /// other slot holds a CP that is not older (the source went back to an
    /// earlier CP number), wipes it so that the new CP is the one read. Not
    /// durable until [`MirrorImage::sync`].
    pub fn write_superblock(&self, cp: CpNumber, sb_bytes: &[u8]) -> Result<()> {
        let slot = cp.0 % 2;
        self.write_blocks(slot, sb_bytes)?;
        let other = 1 - slot;
        if self.slot_cp(other).is_some_and(|c| c >= cp) {
            log::warn!(
                "superblock slot {other} holds a CP not older than CP {}: wiping it",
                cp.0
            );
            self.write_blocks(other, &[0u8; BLOCK_SIZE])?;
        }
        Ok(())
    }

    /// Makes `sb` (a superblock of a CP whose blocks the image holds) the
    /// committed CP, durably: it goes to its slot and the other slot is
    /// wiped, so that no later CP of another history is read instead.
    /// Idempotent: `twinfs failback` and a restart after it call it alike.
    pub fn roll_back_to(&mut self, sb: &Superblock) -> Result<()> {
        let slot = sb.slot();
        self.write_blocks(1 - slot, &[0u8; BLOCK_SIZE])?;
        self.sync()?;
        self.write_blocks(slot, &sb.encode()[..])?;
        self.sync()?;
        self.reread_superblock();
        match &self.committed {
            Some(c) if c.cp == sb.cp && c.root_hash() == sb.root_hash() => Ok(()),
            _ => Err(PeerError::Dir {
                dir: self.path.clone(),
                problem: format!("rolling the mirror back to CP {} did not take", sb.cp.0),
            }),
        }
    }

    /// Zeroes superblock slot `slot` (best effort, not synced): a superblock
    /// whose sync failed is taken back, so that the slot reads as empty and
    /// the committed CP stays the one read.
    pub fn wipe_slot(&self, slot: u64) {
        if let Err(e) = self.write_blocks(slot, &[0u8; BLOCK_SIZE]) {
            log::error!("taking back superblock slot {slot}: {e}");
        }
    }

    /// Whether the committed image (its tree, allocation map and snapshots)
    /// uses block `addr`, so that a new block for that address must be staged.
    pub fn in_use(&mut self, addr: u64) -> bool {
        let Some(sb) = &self.committed else {
            return false;
        };
        if addr < sb.data_start() {
            return true;
        }
        if self.in_use.as_ref().is_none_or(|(cp, _)| *cp != sb.cp) {
            let map = match used_blocks(&self.cache, sb) {
                Ok(m) => InUse::Known(m),
                Err(e) => {
                    log::warn!(
                        "cannot read the allocation map of CP {} in the mirror ({e}): staging every block of the next CP",
                        sb.cp.0
                    );
                    InUse::All
                }
            };
            self.in_use = Some((sb.cp, map));
        }
        match &self.in_use {
            Some((_, InUse::Known(m))) => m.get(addr),
            _ => true,
        }
    }

    /// Forgets cached blocks (after blocks were written under the cache).
    pub fn clear_cache(&self) {
        self.cache.clear();
    }
}

/// Every block the image of `sb` references: its allocation map and map
/// tree, and those of every snapshot it keeps.
fn used_blocks(cache: &BlockCache, sb: &Superblock) -> std::result::Result<Bitmap, FsError> {
    let mut used = alloc::image_blocks(cache, &sb.alloc, sb.total_blocks)?;
    let lo = RetainedImage::snapshot_key(0);
    let hi = Key {
        ino: items::VOLUME_INO,
        kind: items::kind::SNAPSHOT + 1,
        off: 0,
    };
    for item in btree::range(cache, &sb.meta, lo, hi) {
        let (_, v) = item?;
        let snap = RetainedImage::decode(&v)?;
        used.or_assign(&alloc::image_blocks(cache, &snap.alloc, sb.total_blocks)?);
    }
    Ok(used)
}
