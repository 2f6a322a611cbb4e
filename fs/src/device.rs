//! The block device under a volume: an image file in production, memory in
//! tests, and wrappers that simulate crashes and I/O faults.
//!
//! The trait is deliberately small (read, write, flush) so that the crash
//! simulator can model exactly what a disk promises: a write is durable only
//! after a later `flush` returns.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::types::{BlockAddr, BLOCK_SIZE, BLOCK_SIZE_U64};

/// Storage addressed in whole blocks.
pub trait BlockDevice: Send + Sync {
    /// Number of blocks the device holds.
    fn num_blocks(&self) -> u64;
    /// Reads `buf.len() / BLOCK_SIZE` consecutive blocks starting at `addr`.
    fn read(&self, addr: BlockAddr, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data.len() / BLOCK_SIZE` consecutive blocks starting at `addr`.
    /// Not durable until a later [`BlockDevice::flush`] returns.
    fn write(&self, addr: BlockAddr, data: &[u8]) -> io::Result<()>;
    /// Makes every write issued before this call durable.
    fn flush(&self) -> io::Result<()>;
    /// Writes blocks and returns once these blocks are durable; other
    /// unflushed writes may stay volatile. The log writer uses it so that
    /// making a log batch durable does not wait for a CP's writes to the
    /// same image (a whole-file flush would).
    ///
    /// `parts` are written back to back from `addr` (a gather write).
    fn write_durable(&self, addr: BlockAddr, parts: &[&[u8]]) -> io::Result<()> {
        let mut at = addr;
        for part in parts {
            self.write(at, part)?;
            at = BlockAddr(at.0 + (part.len() / BLOCK_SIZE) as u64);
        }
        self.flush()
    }
    /// Lets go of the device's claim on the image (its lock), for a holder
    /// that only lingers (a detached, read-only mount) so that another
    /// opener may take it; the device stays readable. No-op where there is
    /// no lock.
    fn unlock(&self) {}
}

fn check_range(dev_blocks: u64, addr: BlockAddr, len: usize) -> io::Result<()> {
    if !len.is_multiple_of(BLOCK_SIZE) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("I/O length {len} is not a multiple of the block size"),
        ));
    }
    let n = (len / BLOCK_SIZE) as u64;
    if addr.0.checked_add(n).is_none_or(|end| end > dev_blocks) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "blocks {}..{} lie beyond the end of the device ({dev_blocks} blocks): is the image truncated?",
                addr.0,
                addr.0.saturating_add(n)
            ),
        ));
    }
    Ok(())
}

/// A heap buffer aligned for O_DIRECT I/O, grown in whole blocks.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    const ALIGN: usize = BLOCK_SIZE;

    pub fn new() -> AlignedBuf {
        AlignedBuf {
            ptr: std::ptr::NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }

    fn layout(cap: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(cap, Self::ALIGN).expect("block-aligned layout")
    }

    fn reserve(&mut self, extra: usize) {
        let need = self.len + extra;
        if need <= self.cap {
            return;
        }
        let cap = need.next_multiple_of(Self::ALIGN).max(self.cap * 2);
        // SAFETY: cap > 0 and the layout is valid; the old contents are copied
        // before the old allocation is freed with its own layout.
        unsafe {
            let new = std::alloc::alloc(Self::layout(cap));
            let new = std::ptr::NonNull::new(new)
                .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout(cap)));
            if self.cap > 0 {
                std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), new.as_ptr(), self.len);
                std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap));
            }
            self.ptr = new;
            self.cap = cap;
        }
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.reserve(data.len());
        // SAFETY: reserve made room for data.len() bytes after len.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                data.len(),
            )
        };
        self.len += data.len();
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.cap == 0 {
            return &[];
        }
        // SAFETY: the first len bytes are initialized.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        AlignedBuf::new()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap > 0 {
            // SAFETY: allocated in reserve with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
        }
    }
}

fn is_aligned(data: &[u8]) -> bool {
    (data.as_ptr() as usize).is_multiple_of(AlignedBuf::ALIGN)
}

thread_local! {
    /// Bounce buffer for O_DIRECT writes of unaligned memory.
    static BOUNCE: std::cell::RefCell<AlignedBuf> = std::cell::RefCell::new(AlignedBuf::new());
}

/// An image file (or block device node), locked against a second user.
///
/// With `TWINFS_DIRECT_IO` set, writes go through a second, O_DIRECT
/// descriptor where the file system allows it: the log and the CPs then
/// reach the disk without filling the page cache. Reads stay buffered so the
/// kernel's readahead helps sequential reads.
pub struct FileDevice {
    file: File,
    direct: Option<File>,
    blocks: u64,
}

impl FileDevice {
    /// Opens an existing image. Takes an exclusive `flock` so that a second
    /// mount of the same image fails instead of corrupting it.
    pub fn open(path: &Path, writable: bool) -> io::Result<FileDevice> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Self::lock(&file, path, writable)?;
        let blocks = Self::size_of(&file)? / BLOCK_SIZE_U64;
        let direct = if writable {
            Self::open_direct(path)
        } else {
            None
        };
        Ok(FileDevice {
            file,
            direct,
            blocks,
        })
    }

    fn open_direct(path: &Path) -> Option<File> {
        use std::os::unix::fs::OpenOptionsExt;
        // Opt-in until measured to help on the target machines.
        std::env::var_os("TWINFS_DIRECT_IO")?;
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
    }

    /// Creates (or resizes) a sparse image file of `size_bytes`.
    pub fn create(path: &Path, size_bytes: u64) -> io::Result<FileDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Self::lock(&file, path, true)?;
        if file.metadata()?.file_type().is_file() {
            file.set_len(0)?;
            file.set_len(size_bytes)?;
        }
        let blocks = Self::size_of(&file)?.min(size_bytes) / BLOCK_SIZE_U64;
        let direct = Self::open_direct(path);
        Ok(FileDevice {
            file,
            direct,
            blocks,
        })
    }

    /// Announces that the process holding this image has stopped serving
    /// and is only finishing (its final CP after an unmount). Another
    /// process that finds the image locked then waits for it instead of
    /// refusing, so `umount` followed at once by `fsck` or `mount` works.
    /// The marker is an OFD read lock on byte 0, separate from the `flock`
    /// that guards the image, and goes away with the process.
    pub fn mark_closing(&self) -> io::Result<()> {
        let mut lk = ofd_lock_range(libc::F_RDLCK);
        // SAFETY: fcntl with a valid descriptor and an initialised flock.
        if unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_OFD_SETLK, &mut lk) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn lock(file: &File, path: &Path, exclusive: bool) -> io::Result<()> {
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        } | libc::LOCK_NB;
        let try_lock = || -> io::Result<bool> {
            // SAFETY: flock on a valid, owned file descriptor.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(true);
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Ok(false)
            } else {
                Err(err)
            }
        };
        let start = std::time::Instant::now();
        let mut announced = false;
        loop {
            if try_lock()? {
                return Ok(());
            }
            let closing = holder_is_closing(file)?;
            // The holder may have exited between the two checks.
            if !closing && try_lock()? {
                return Ok(());
            }
            // A holder that is not closing may be a mount whose daemon has
            // not yet noticed its unmount: give it a moment to say so,
            // unless the image is visibly still mounted.
            let waited = start.elapsed();
            let give_up = if closing {
                waited >= CLOSING_HOLDER_WAIT
            } else {
                waited >= UNMOUNT_NOTICE_WAIT || image_is_mounted(path)
            };
            if give_up {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by another twinfs process (mounted or being checked); unmount it first",
                        path.display()
                    ),
                ));
            }
            if closing && !announced {
                log::info!(
                    "{}: waiting for the twinfs process that had it mounted to finish its final checkpoint",
                    path.display()
                );
                announced = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn size_of(file: &File) -> io::Result<u64> {
        let meta = file.metadata()?;
        if meta.file_type().is_file() {
            return Ok(meta.len());
        }
        // A block device node: ask the kernel for its size.
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), 0x8008_1272, &mut size) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(size)
    }
}

/// How long an opener waits for a holder that announced it is closing.
const CLOSING_HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// How long an opener gives a holder that is not (yet) closing and whose
/// image is not in the mount table to announce that it is closing.
const UNMOUNT_NOTICE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the image is the source of a FUSE mount in this mount namespace
/// (twinfs mounts name their image as `fsname`).
fn image_is_mounted(path: &Path) -> bool {
    let Ok(path) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    table.lines().any(|line| {
        let Some((_, tail)) = line.split_once(" - ") else {
            return false;
        };
        let mut fields = tail.split(' ');
        let fstype = fields.next().unwrap_or("");
        let source = fields.next().unwrap_or("");
        fstype.starts_with("fuse") && Path::new(&unescape_mountinfo(source)) == path
    })
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte range of the "closing" marker (see [`FileDevice::mark_closing`]).
fn ofd_lock_range(kind: i32) -> libc::flock {
    // SAFETY: an all-zero flock is a valid value; the fields are set below.
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = kind as libc::c_short;
    lk.l_whence = libc::SEEK_SET as libc::c_short;
    lk.l_start = 0;
    lk.l_len = 1;
    lk
}

/// Whether some process holds the "closing" marker on this image.
fn holder_is_closing(file: &File) -> io::Result<bool> {
    let mut lk = ofd_lock_range(libc::F_WRLCK);
    // SAFETY: fcntl with a valid descriptor and an initialised flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lk) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lk.l_type != libc::F_UNLCK as libc::c_short)
}

impl BlockDevice for FileDevice {
    fn unlock(&self) {
        // SAFETY: flock on a valid, owned file descriptor.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }

    fn num_blocks(&self) -> u64 {
        self.blocks
    }

    fn read(&self, addr: BlockAddr, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.blocks, addr, buf.len())?;
        self.file.read_exact_at(buf, addr.byte_offset())
    }

    fn write(&self, addr: BlockAddr, data: &[u8]) -> io::Result<()> {
        check_range(self.blocks, addr, data.len())?;
        let Some(direct) = &self.direct else {
            return self.file.write_all_at(data, addr.byte_offset());
        };
        let result = if is_aligned(data) {
            direct.write_all_at(data, addr.byte_offset())
        } else {
            BOUNCE.with(|b| {
                let mut b = b.borrow_mut();
                b.clear();
                b.extend_from_slice(data);
                direct.write_all_at(b.as_slice(), addr.byte_offset())
            })
        };
        match result {
            // Some file systems refuse O_DIRECT on some writes: fall back.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.file.write_all_at(data, addr.byte_offset())
            }
            r => r,
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn write_durable(&self, addr: BlockAddr, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        check_range(self.blocks, addr, len)?;
        let mut offset = addr.byte_offset();
        // pwritev2 takes at most IOV_MAX (1024) buffers per call.
        for group in parts.chunks(1024) {
            match write_all_vectored_at(&self.file, group, offset, libc::RWF_DSYNC) {
                // RWF_DSYNC unknown to the kernel or the file system: the
                // whole-file flush is always correct, only slower.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {
                    for part in group {
                        self.file.write_all_at(part, offset)?;
                        offset += part.len() as u64;
                    }
                    self.flush()?;
                }
                Err(e) => return Err(e),
                Ok(()) => offset += group.iter().map(|p| p.len() as u64).sum::<u64>(),
            }
        }
        Ok(())
    }
}

/// `pwritev2` of all of `parts`, back to back from `offset`, in as few
/// calls as the kernel allows. With `RWF_DSYNC` the kernel writes back and
/// flushes only this range (and the file metadata needed to read it back),
/// not the rest of the file's dirty pages.
pub fn write_all_vectored_at(
    file: &File,
    parts: &[&[u8]],
    mut offset: u64,
    flags: libc::c_int,
) -> io::Result<()> {
    // Bytes of `parts` already written.
    let mut done = 0usize;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    while done < total {
        let mut skip = done;
        let iov: Vec<libc::iovec> = parts
            .iter()
            .filter_map(|p| {
                if skip >= p.len() {
                    skip -= p.len();
                    return None;
                }
                let rest = &p[skip..];
                skip = 0;
                Some(libc::iovec {
                    iov_base: rest.as_ptr() as *mut libc::c_void,
                    iov_len: rest.len(),
                })
            })
            .collect();
        // SAFETY: the iovecs point into live slices that outlive the call;
        // the descriptor is open.
        let n = unsafe {
            libc::pwritev2(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
                flags,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev2 wrote nothing",
            ));
        }
        done += n as usize;
        offset += n as u64;
    }
    Ok(())
}

type Sparse = HashMap<u64, Box<[u8]>>;

fn sparse_read(map: &Sparse, addr: BlockAddr, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(BLOCK_SIZE).enumerate() {
        match map.get(&(addr.0 + i as u64)) {
            Some(b) => chunk.copy_from_slice(b),
            None => chunk.fill(0),
        }
    }
}

fn sparse_write(map: &mut Sparse, addr: BlockAddr, data: &[u8]) {
    for (i, chunk) in data.chunks(BLOCK_SIZE).enumerate() {
        map.insert(addr.0 + i as u64, chunk.into());
    }
}

/// A sparse in-memory device: unwritten blocks read as zeros.
pub struct MemDevice {
    blocks: u64,
    data: Mutex<Sparse>,
}

impl MemDevice {
    pub fn new(blocks: u64) -> MemDevice {
        MemDevice {
            blocks,
            data: Mutex::new(HashMap::new()),
        }
    }

    /// Overwrites part of a block directly, bypassing the volume: for corruption tests.
    pub fn poke(&self, addr: BlockAddr, offset: usize, bytes: &[u8]) {
        let mut map = self.data.lock();
        let block = map
            .entry(addr.0)
            .or_insert_with(|| vec![0u8; BLOCK_SIZE].into_boxed_slice());
        block[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// A copy of one block, for tests that inspect the image.
    pub fn peek(&self, addr: BlockAddr) -> Vec<u8> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        sparse_read(&self.data.lock(), addr, &mut buf);
        buf
    }
}

impl BlockDevice for MemDevice {
    fn num_blocks(&self) -> u64 {
        self.blocks
    }

    fn read(&self, addr: BlockAddr, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.blocks, addr, buf.len())?;
        sparse_read(&self.data.lock(), addr, buf);
        Ok(())
    }

    fn write(&self, addr: BlockAddr, data: &[u8]) -> io::Result<()> {
        check_range(self.blocks, addr, data.len())?;
        sparse_write(&mut self.data.lock(), addr, data);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// What happens to a write that was not flushed when the simulated power fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostWrite {
    /// The write never reached the disk.
    Dropped,
    /// The write reached the disk whole.
    Kept,
    /// Some 512-byte sectors of the block are new, the others old.
    Torn,
}

struct CrashState {
    durable: Sparse,
    /// Writes since the last flush, oldest first, one entry per block.
    pending: Vec<(u64, Box<[u8]>)>,
}

/// A memory device that remembers which writes are durable, so that a test can
/// cut the power at any moment and see what a real disk might have kept.
pub struct CrashDevice {
    blocks: u64,
    state: Mutex<CrashState>,
    flushes: AtomicU64,
}

impl CrashDevice {
    pub fn new(blocks: u64) -> CrashDevice {
        CrashDevice {
            blocks,
            state: Mutex::new(CrashState {
                durable: HashMap::new(),
                pending: Vec::new(),
            }),
            flushes: AtomicU64::new(0),
        }
    }

    /// Number of writes not yet made durable by a flush.
    pub fn pending_writes(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// Number of flushes so far.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Simulates a power failure: every unflushed write is dropped, kept or torn
    /// as `fate` decides (it is called once per pending block write, in order).
    /// The device then holds only what survived, and nothing is pending.
    pub fn crash(&self, mut fate: impl FnMut(u64) -> (LostWrite, u8)) {
        let mut st = self.state.lock();
        let pending = std::mem::take(&mut st.pending);
        for (addr, data) in pending {
            let (what, sector_mask) = fate(addr);
            match what {
                LostWrite::Dropped => {}
                LostWrite::Kept => {
                    st.durable.insert(addr, data);
                }
                LostWrite::Torn => {
                    let block = st
                        .durable
                        .entry(addr)
                        .or_insert_with(|| vec![0u8; BLOCK_SIZE].into_boxed_slice());
                    for sector in 0..8 {
                        if sector_mask & (1 << sector) != 0 {
                            let r = sector * 512..(sector + 1) * 512;
                            block[r.clone()].copy_from_slice(&data[r]);
                        }
                    }
                }
            }
        }
    }

    /// Overwrites part of a durable block directly: for corruption tests.
    pub fn poke(&self, addr: BlockAddr, offset: usize, bytes: &[u8]) {
        let mut st = self.state.lock();
        let block = st
            .durable
            .entry(addr.0)
            .or_insert_with(|| vec![0u8; BLOCK_SIZE].into_boxed_slice());
        block[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
}

impl BlockDevice for CrashDevice {
    fn num_blocks(&self) -> u64 {
        self.blocks
    }

    fn read(&self, addr: BlockAddr, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.blocks, addr, buf.len())?;
        let st = self.state.lock();
        sparse_read(&st.durable, addr, buf);
        // Later pending writes win over earlier ones and over durable data.
        for (i, chunk) in buf.chunks_mut(BLOCK_SIZE).enumerate() {
            let a = addr.0 + i as u64;
            if let Some((_, data)) = st.pending.iter().rev().find(|(pa, _)| *pa == a) {
                chunk.copy_from_slice(data);
            }
        }
        Ok(())
    }

    fn write(&self, addr: BlockAddr, data: &[u8]) -> io::Result<()> {
        check_range(self.blocks, addr, data.len())?;
        let mut st = self.state.lock();
        for (i, chunk) in data.chunks(BLOCK_SIZE).enumerate() {
            st.pending.push((addr.0 + i as u64, chunk.into()));
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        let pending = std::mem::take(&mut st.pending);
        for (addr, data) in pending {
            st.durable.insert(addr, data);
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn write_durable(&self, addr: BlockAddr, parts: &[&[u8]]) -> io::Result<()> {
        check_range(self.blocks, addr, parts.iter().map(|p| p.len()).sum())?;
        let mut st = self.state.lock();
        let blocks = parts.iter().flat_map(|p| p.chunks(BLOCK_SIZE));
        for (i, chunk) in blocks.enumerate() {
            let a = addr.0 + i as u64;
            // An older unflushed write of the same block can no longer
            // land on top of this one.
            st.pending.retain(|(pa, _)| *pa != a);
            st.durable.insert(a, chunk.into());
        }
        Ok(())
    }
}

/// Wraps a device and fails I/O once a countdown of operations runs out,
/// to test that errors surface as EIO and corrupt nothing.
pub struct FaultDevice<D: BlockDevice> {
    inner: D,
    /// Operations left before every read/write/flush starts failing; u64::MAX = never.
    remaining: AtomicU64,
}

impl<D: BlockDevice> FaultDevice<D> {
    pub fn new(inner: D) -> FaultDevice<D> {
        FaultDevice {
            inner,
            remaining: AtomicU64::new(u64::MAX),
        }
    }

    /// Fails every operation after the next `ops` succeed.
    pub fn fail_after(&self, ops: u64) {
        self.remaining.store(ops, Ordering::SeqCst);
    }

    /// Stops failing.
    pub fn heal(&self) {
        self.remaining.store(u64::MAX, Ordering::SeqCst);
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn tick(&self) -> io::Result<()> {
        let r = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                if r == u64::MAX || r == 0 {
                    None
                } else {
                    Some(r - 1)
                }
            });
        match r {
            Err(0) => Err(io::Error::other("injected I/O fault")),
            _ => Ok(()),
        }
    }
}

impl<D: BlockDevice> BlockDevice for FaultDevice<D> {
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }

    fn read(&self, addr: BlockAddr, buf: &mut [u8]) -> io::Result<()> {
        self.tick()?;
        self.inner.read(addr, buf)
    }

    fn write(&self, addr: BlockAddr, data: &[u8]) -> io::Result<()> {
        self.tick()?;
        self.inner.write(addr, data)
    }

    fn flush(&self) -> io::Result<()> {
        self.tick()?;
        self.inner.flush()
    }

    fn write_durable(&self, addr: BlockAddr, parts: &[&[u8]]) -> io::Result<()> {
        self.tick()?;
        self.inner.write_durable(addr, parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_device_keeps_only_flushed_writes_when_all_are_dropped() {
        let dev = CrashDevice::new(16);
        dev.write(BlockAddr(3), &[1u8; BLOCK_SIZE]).unwrap();
        dev.flush().unwrap();
        dev.write(BlockAddr(3), &[2u8; BLOCK_SIZE]).unwrap();
        dev.write(BlockAddr(4), &[2u8; BLOCK_SIZE]).unwrap();
        let mut buf = vec![0u8; BLOCK_SIZE];
        dev.read(BlockAddr(3), &mut buf).unwrap();
        assert_eq!(buf[0], 2, "reads see pending writes");
        dev.crash(|_| (LostWrite::Dropped, 0));
        dev.read(BlockAddr(3), &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 1));
        dev.read(BlockAddr(4), &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_durable_write_survives_a_crash_and_leaves_other_writes_volatile() {
        let dev = CrashDevice::new(16);
        dev.write(BlockAddr(2), &[1u8; BLOCK_SIZE]).unwrap();
        dev.write(BlockAddr(5), &[1u8; BLOCK_SIZE]).unwrap();
        let parts: [&[u8]; 2] = [&[3u8; BLOCK_SIZE], &[4u8; 2 * BLOCK_SIZE]];
        dev.write_durable(BlockAddr(4), &parts).unwrap();
        // Keeping every unflushed write must not put the older write of
        // block 5 over the durable one.
        dev.crash(|_| (LostWrite::Kept, 0));
        let mut buf = vec![0u8; BLOCK_SIZE];
        for (addr, want) in [(2, 1), (4, 3), (5, 4), (6, 4)] {
            dev.read(BlockAddr(addr), &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == want), "block {addr}");
        }
        let dev = CrashDevice::new(16);
        dev.write(BlockAddr(2), &[1u8; BLOCK_SIZE]).unwrap();
        dev.write_durable(BlockAddr(4), &parts).unwrap();
        dev.crash(|_| (LostWrite::Dropped, 0));
        dev.read(BlockAddr(2), &mut buf).unwrap();
        assert!(
            buf.iter().all(|&b| b == 0),
            "a durable write flushed other writes"
        );
    }

    #[test]
    fn a_file_device_gathers_durable_writes_in_order() {
        let dir = std::env::temp_dir().join(format!("twinfs-dsync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        let dev = FileDevice::create(&path, 16 * BLOCK_SIZE_U64).unwrap();
        let parts: [&[u8]; 3] = [
            &[1u8; BLOCK_SIZE],
            &[2u8; 3 * BLOCK_SIZE],
            &[3u8; BLOCK_SIZE],
        ];
        dev.write_durable(BlockAddr(7), &parts).unwrap();
        let mut buf = vec![0u8; 5 * BLOCK_SIZE];
        dev.read(BlockAddr(7), &mut buf).unwrap();
        let want: Vec<u8> = parts.concat();
        assert!(buf == want);
        let err = dev.write_durable(BlockAddr(14), &parts).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        drop(dev);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn crash_device_tears_a_write_by_sector() {
        let dev = CrashDevice::new(4);
        dev.write(BlockAddr(1), &[7u8; BLOCK_SIZE]).unwrap();
        dev.crash(|_| (LostWrite::Torn, 0b0000_0101));
        let mut buf = vec![0u8; BLOCK_SIZE];
        dev.read(BlockAddr(1), &mut buf).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 7));
        assert!(buf[512..1024].iter().all(|&b| b == 0));
        assert!(buf[1024..1536].iter().all(|&b| b == 7));
        assert!(buf[1536..].iter().all(|&b| b == 0));
    }

    #[test]
    fn out_of_range_io_is_an_error_not_a_panic() {
        let dev = MemDevice::new(2);
        let mut buf = vec![0u8; BLOCK_SIZE * 2];
        assert!(dev.read(BlockAddr(1), &mut buf).is_err());
        assert!(dev.write(BlockAddr(u64::MAX), &buf[..BLOCK_SIZE]).is_err());
        assert!(dev.read(BlockAddr(0), &mut buf[..100]).is_err());
    }

    #[test]
    fn fault_device_fails_after_countdown() {
        let dev = FaultDevice::new(MemDevice::new(4));
        dev.fail_after(1);
        let buf = [0u8; BLOCK_SIZE];
        assert!(dev.write(BlockAddr(0), &buf).is_ok());
        assert!(dev.write(BlockAddr(0), &buf).is_err());
        dev.heal();
        assert!(dev.write(BlockAddr(0), &buf).is_ok());
    }

    #[test]
    fn second_open_of_an_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let _a = FileDevice::create(&path, 1 << 20).unwrap();
        let err = FileDevice::open(&path, true)
            .err()
            .expect("second open must fail");
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c\134d"), "/a b/c\\d");
        assert_eq!(unescape_mountinfo(r"/plain\04"), r"/plain\04");
    }

    #[test]
    fn an_open_waits_for_a_holder_that_is_closing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let holder = FileDevice::create(&path, 1 << 20).unwrap();
        holder.mark_closing().unwrap();
        let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = released.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            flag.store(true, Ordering::SeqCst);
            drop(holder);
        });
        let second = FileDevice::open(&path, true).expect("waits, then opens");
        assert!(
            released.load(Ordering::SeqCst),
            "opened before the holder let go"
        );
        t.join().unwrap();
        // And the new holder, not closing, is refused at once to a third.
        let err = FileDevice::open(&path, false).err().expect("refused");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(second);
    }
}
