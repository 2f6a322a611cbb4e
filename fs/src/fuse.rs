//! The FUSE adapter: a thin translation from fuser 0.18 callbacks to the
//! [`Volume`] API. Each method logs, calls the volume, and matches the result
//! into a reply; [`errno`] is the one place where a [`FsError`] becomes an
//! errno. The binary mounts with [`mount`] (or [`mount_with`]) and gets a
//! [`MountHandle`] to wait on and to unmount.
//!
//! # Inode numbers
//!
//! FUSE inode numbers are 64 bits; the top 16 bits (the *tag*) say which tree
//! an inode belongs to, the low 48 bits are the volume's inode number:
//!
//! | tag        | FUSE inode               | what                                  |
//! |------------|--------------------------|---------------------------------------|
//! | 0          | `ino` (1 ..= 2^48 - 1)   | the live tree; the root is 1 as FUSE wants |
//! | 1          | `1 << 48` exactly        | the virtual `/.snapshot` directory    |
//! | 2 ..= 2^16-1 | `tag << 48 \| ino`     | inode `ino` inside one snapshot       |
//!
//! Volume inode numbers are never reused and stay below 2^48 (an inode number
//! that would not fit is an EOVERFLOW, never a wrap). A snapshot's tag is a
//! *slot* the adapter hands out the first time it sees that snapshot (by id,
//! CP and creation time) and never hands out again while mounted, so a
//! snapshot deleted and re-created under a reused id gets new FUSE inodes and
//! the kernel never serves the old one's cached pages or dentries for it.
//!
//! # `.snapshot`
//!
//! `/.snapshot` is reachable by lookup but hidden from the root's readdir, so
//! `cp -a`, `rsync -a` and `tar` of the mount do not copy every snapshot.
//! `/.snapshot/NAME` is the root of snapshot NAME, read through
//! `View::Snapshot(id)`. Everything under `.snapshot` is read-only: writes,
//! creates, renames, attribute and xattr changes fail with EROFS. The name
//! `.snapshot` in the root is reserved. The `.snapshot` directory and its
//! entries are returned with TTL 0 so that snapshots created or deleted
//! outside the kernel's sight (by `twinfs snapshot`) show up at once; what is
//! inside a snapshot never changes, so it is cached like the live tree, with
//! `FOPEN_KEEP_CACHE` and `FOPEN_CACHE_DIR`.
//!
//! # Attribute caching (checked against Linux 6.18's fs/fuse)
//!
//! Every reply carries attributes read from the volume after the change. The
//! kernel itself keeps the inodes it did not get a reply about correct: after
//! `link` it takes the entry reply's attributes for the linked inode and bumps
//! its ctime; after `unlink`/`rmdir` and for the victim of a `rename`
//! (`fuse_entry_unlinked`) it drops nlink and invalidates the attributes; the
//! renamed inode and both parents are invalidated (`fuse_update_ctime`,
//! `fuse_dir_changed`); writes, fallocate, copy_file_range and xattr changes
//! invalidate the size, times and blocks. The only writer of the live tree is
//! this kernel, so nothing changes behind its back and no `inval_inode`
//! notification is needed; the tests in `fs/tests/fuse_dirs.rs` check ctime
//! and nlink after link, unlink and rename through cached attributes, and
//! pjdfstest (`fs/tests/fuse_pjdfstest.rs`) passes all its ctime and nlink
//! cases: 382 passed, 0 failed, 16 skipped (remounts, a second file system,
//! LINK_MAX) of 398. Hence a TTL of [`LIVE_TTL`] for attributes and
//! entries, and negative entries (a lookup that finds nothing is cached too,
//! which saves the ENOENT storms of compilers searching include paths). A mount whose volume changes under it
//! (a replica view, [`MountConfig::changing`]) uses [`CHANGING_TTL`], no
//! negative entries, no `KEEP_CACHE`, and `FUSE_AUTO_INVAL_DATA`; each
//! opened directory is listed from one CP (`Listings`).
//!
//! Without the writeback cache the kernel marks inodes `S_NOCMTIME` and
//! `S_NOATIME`: times come only from the volume, which updates mtime and ctime
//! on every change and atime only when asked (`touch -a`): reads do not
//! update atime (as with `noatime`).
//!
//! # Writes, O_APPEND, O_SYNC, fsync
//!
//! The kernel computes the offset of `O_APPEND` writes itself (it refreshes
//! the size first), so a write request's offset is used as is. For `O_SYNC` /
//! `O_DSYNC` writes the kernel sends an FSYNC after the write
//! (`generic_write_sync`); the adapter also makes the write durable before
//! replying when the handle or the write carries those flags, so the promise
//! does not depend on that. `fsync`, `fdatasync` and `fsyncdir` are answered
//! by [`SYNC_WORKERS`] worker threads, so a slow fsync (one waiting for the
//! peer) never holds a FUSE thread; a worker takes every fsync that queued up
//! while it was busy and covers them with one [`Volume::fsync`] (group
//! commit). `O_TRUNC` is done in `open` (`FUSE_ATOMIC_O_TRUNC`), saving a
//! round trip.
//!
//! # Writeback cache: off by default (`-o writeback_cache` turns it on)
//!
//! Measured here (`fs/tests/fuse_writeback.rs`, run with `--ignored`): Linux
//! 6.18, 2 shared cores, 8 FUSE threads, volume in a 16 GiB image file on the
//! local disk, each workload ending in fsync, three rounds (min–max):
//!
//! | workload                                | write-through  | writeback cache |
//! |-----------------------------------------|----------------|-----------------|
//! | 1 GiB in 1 MiB writes                   | 167–263 MiB/s  | 129–208 MiB/s   |
//! | 256 MiB in 4 KiB writes                 | 87–99 MiB/s    | 175–253 MiB/s   |
//! | 2000 files of 8 KiB (two 4 KiB writes)  | 3800–4600 /s   | 3500–5400 /s    |
//! | 4 KiB write + fdatasync                 | 0.32–0.57 ms   | 0.35–0.68 ms    |
//!
//! The cache doubles streams of small writes, costs a fifth on large ones
//! (the kernel's dirty throttling of FUSE and the extra copy), and does not
//! change what a workstation mostly does (trees of small files, fsync). It
//! never weakens fsync: before FUSE_FSYNC the kernel writes back and waits for
//! the file's dirty pages, and close writes them back too. What decides
//! against it by default: with it, writes reach the NVLOG, and so the peer,
//! only when the kernel writes back (at close, fsync, or up to 30 s later for
//! a file kept open) instead of within the log's 20 ms sealing; the kernel
//! owns mtime and ctime and sends them later in a setattr, while the volume
//! records ctime as the time of that setattr; and a daemon that dies loses
//! what sat in the page cache. Streams of small writes gain more from
//! `FUSE_HANDLE_KILLPRIV_V2` (below) than from the cache.
//!
//! # Privileges on write (FUSE_HANDLE_KILLPRIV_V2)
//!
//! Without it the kernel asks for `security.capability` (a GETXATTR round
//! trip) before every write(2), because FUSE mounts are not `SB_NOSEC`;
//! that doubled the requests of small writes (checked in the request log).
//! With it the kernel sets `SB_NOSEC` and leaves to the file system what it
//! would do: a write flagged `FUSE_WRITE_KILL_SUIDGID` drops set-user-ID (and
//! set-group-ID when group-executable) and file capabilities; so do a
//! truncate and an `O_TRUNC` open by an unprivileged caller (fuser hides the
//! kernel's `FATTR_KILL_SUIDGID`/`FUSE_OPEN_KILL_SUIDGID`, so "not root"
//! stands for "lacks CAP_FSETID"), and chown drops capabilities (the volume
//! drops set-user-ID).
//!
//! # Mounting
//!
//! [`mount`] returns once the kernel has finished the FUSE handshake; the
//! session then runs on [`MountConfig::threads`] threads, each with its own
//! `/dev/fuse` descriptor (`clone_fd`), plus the fsync workers. Daemonize
//! (fork) before mounting: threads do not survive a fork. To stop (SIGTERM),
//! call [`Unmounter::unmount`] (or [`Unmounter::unmount_lazy`] when it says
//! EBUSY) from any thread; [`MountHandle::wait`] returns when the kernel has
//! unmounted, by whatever means, and every request has been answered, after
//! the kernel wrote back what it cached. Then call `Volume::close` for the
//! final CP. `destroy` makes the log durable in any case. Kernel settings:
//! `max_write` 1 MiB (the kernel's 256-page cap), `max_readahead` the most
//! the kernel offers (128 KiB), then the mount's `read_ahead_kb` raised to
//! [`READ_AHEAD_KB`] through sysfs, `max_background` 64, readdirplus (auto),
//! parallel dirops, cached symlinks, `st_blksize` 1 MiB so that cp and
//! friends write in whole requests.
//!
//! # Permissions and ACLs
//!
//! Permission checks are the kernel's: `default_permissions` is always set,
//! and the adapter asks for `FUSE_POSIX_ACL` so that the kernel also enforces
//! POSIX ACLs. The ACL xattrs (`system.posix_acl_access`,
//! `system.posix_acl_default`) are stored as ordinary xattrs, in the kernel's
//! xattr format. With `FUSE_POSIX_ACL` the kernel leaves to the file system
//! what ext4 does in `posix_acl_update_mode`, `posix_acl_chmod` and
//! `posix_acl_create`, so the adapter does it (module [`acl`]):
//! - setting an access ACL sets the mode's permission bits from it (owner
//!   from `USER_OBJ`, group from `MASK` when there is one, else `GROUP_OBJ`,
//!   other from `OTHER`), clears set-group-ID when the caller is neither in
//!   the file's group nor root, and stores no xattr when the ACL says no more
//!   than the mode;
//! - chmod of a file with an access ACL rewrites its `USER_OBJ`, `MASK` (or
//!   `GROUP_OBJ`) and `OTHER` entries;
//! - a new inode in a directory with a default ACL inherits it (the umask is
//!   then not applied, which is why the adapter asks for `FUSE_DONT_MASK` and
//!   applies the umask itself otherwise).
//!
//! These take two volume operations (mode and xattr), each logged; a crash
//! between them leaves the mode of the first, never a wider access than asked.
//! `user.*`, `security.*` and `trusted.*` (the kernel lets only root at those)
//! are stored as given; other `system.*` names are EOPNOTSUPP.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session,
    SessionACL, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

mod kernel_mount;

use crate::error::FsError;
use crate::nvlog::record::{RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE};
use crate::types::{FileKind, Ino, Timestamp, ROOT_INO};
use crate::volume::{Attr, AttrChanges, Listing, SnapshotInfo, TimeSet, View, Volume};

/// Name of the virtual snapshot directory in the root.
pub const SNAPSHOT_DIR_NAME: &[u8] = b".snapshot";
/// Bits of a FUSE inode number below the tag.
const TAG_SHIFT: u32 = 48;
/// Live inode numbers are below this.
pub const LIVE_INO_LIMIT: u64 = 1 << TAG_SHIFT;
/// FUSE inode number of `/.snapshot`.
pub const SNAPSHOT_DIR_INO: u64 = 1 << TAG_SHIFT;
/// Tag of the first snapshot slot.
const FIRST_SNAPSHOT_TAG: u64 = 2;
/// Most snapshot slots one mount hands out (tags 2 ..= 0xffff).
const MAX_SNAPSHOT_SLOTS: usize = (u16::MAX as u64 - FIRST_SNAPSHOT_TAG + 1) as usize;

/// Attribute and entry TTL of the live tree and of snapshots.
pub const LIVE_TTL: Duration = Duration::from_secs(10);
/// TTL when the volume changes under the mount (replica views).
pub const CHANGING_TTL: Duration = Duration::from_secs(1);
/// TTL of `/.snapshot` and its entries: snapshots come and go outside the kernel's sight.
const SNAPSHOT_DIR_TTL: Duration = Duration::ZERO;
/// Times a read of a replica view that met the image moving is run again.
const MOVED_READ_RETRIES: usize = 3;

/// Largest write request (the kernel here caps it at 256 pages).
pub const MAX_WRITE_BYTES: u32 = 1 << 20;
/// Background requests (readahead, async writes) the kernel may queue.
const MAX_BACKGROUND: u16 = 64;
/// Background requests at which the kernel considers the mount congested.
const CONGESTION_THRESHOLD: u16 = 48;
/// Readahead window of the mount, in KiB. The kernel starts a FUSE mount at
/// 128 KiB and its INIT can only lower that, which leaves one read request
/// in flight: each waits for the device read, the hash check and the reply
/// copy of the one before. With 2 MiB the kernel keeps two 1 MiB reads in
/// flight and both cores work; cold read of 1 GiB here 540-750 -> 870-1050
/// MiB/s (1 MiB and 4 MiB measured about the same as 2 MiB).
pub const READ_AHEAD_KB: u32 = 2048;
/// `st_blksize`: the I/O size tools such as cp use; one full write request.
const BLKSIZE: u32 = MAX_WRITE_BYTES;
/// FUSE threads by default.
pub const DEFAULT_THREADS: usize = 8;
/// Threads that answer fsync.
pub const SYNC_WORKERS: usize = 2;
/// Fsyncs that may wait for a worker; beyond that a FUSE thread does its own.
const SYNC_QUEUE: usize = 1024;
/// Most fsyncs one worker answers with one volume fsync.
const SYNC_BATCH: usize = 256;
/// Directory entries read from the volume at a time.
const READDIR_BATCH: usize = 128;
/// Most entries of a directory a replica view lists from one CP (see
/// [`Listings`]); a larger directory is listed in batches, which may span CPs.
const WHOLE_LISTING_MAX: usize = 1 << 20;
/// Bytes copy_file_range moves per read/write.
const COPY_CHUNK: u32 = 1 << 20;
/// Most bytes one copy_file_range request copies (callers loop on short copies).
const COPY_MAX_PER_CALL: u64 = 64 << 20;
/// How long dropping a [`MountHandle`] waits for the kernel to let go.
const DROP_WAIT: Duration = Duration::from_secs(10);

thread_local! {
    /// Each FUSE thread's read buffer, kept from one read to the next: a
    /// fresh one per request cost an allocation and a zero fill of up to
    /// 1 MiB (6% of the daemon's CPU in a cold read).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// File capabilities, dropped when a file changes (FUSE_HANDLE_KILLPRIV_V2).
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// File-handle bit: the file was opened with O_SYNC or O_DSYNC.
const FH_SYNC: u64 = 1;

/// How to mount a volume.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Options in FUSE/mount spelling, each possibly comma-separated:
    /// `allow_other`, `allow_root`, `default_permissions`, `ro`, `rw`,
    /// `noatime`, `atime`, `dev`, `nodev`, `suid`, `nosuid`, `exec`,
    /// `noexec`, `sync`, `async`, `dirsync`, `auto_unmount`, `fsname=NAME`;
    /// and twinfs's own `threads=N`, `writeback_cache`, `no_writeback_cache`.
    pub options: Vec<String>,
    /// FUSE threads (each with its own /dev/fuse fd).
    pub threads: usize,
    /// Use the kernel's writeback cache (see the module doc for why not by default).
    pub writeback_cache: bool,
    /// The volume changes under the mount (a replica view that reloads):
    /// short TTLs, no negative entries, no page cache kept across opens.
    pub changing: bool,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            options: Vec::new(),
            threads: DEFAULT_THREADS,
            writeback_cache: false,
            changing: false,
        }
    }
}

impl MountConfig {
    /// A default configuration with these options.
    pub fn with_options<S: AsRef<str>>(options: &[S]) -> MountConfig {
        MountConfig {
            options: options.iter().map(|s| s.as_ref().to_string()).collect(),
            ..Default::default()
        }
    }
}

/// The fuser configuration `cfg` asks for, after twinfs's own options are taken out.
fn fuser_config(cfg: &mut MountConfig, read_only_volume: bool) -> io::Result<Config> {
    let mut opts = vec![MountOption::DefaultPermissions];
    let mut acl = SessionACL::Owner;
    let mut fsname = "twinfs".to_string();
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let words: Vec<String> = cfg
        .options
        .iter()
        .flat_map(|o| o.split(','))
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
        .collect();
    for w in words {
        let opt = match w.as_str() {
            "allow_other" => {
                acl = SessionACL::All;
                continue;
            }
            "allow_root" => {
                acl = SessionACL::RootAndOwner;
                continue;
            }
            "writeback_cache" => {
                cfg.writeback_cache = true;
                continue;
            }
            "no_writeback_cache" => {
                cfg.writeback_cache = false;
                continue;
            }
            "default_permissions" => continue,
            "ro" => MountOption::RO,
            "rw" => MountOption::RW,
            "noatime" => MountOption::NoAtime,
            "atime" => MountOption::Atime,
            "dev" => MountOption::Dev,
            "nodev" => MountOption::NoDev,
            "suid" => MountOption::Suid,
            "nosuid" => MountOption::NoSuid,
            "exec" => MountOption::Exec,
            "noexec" => MountOption::NoExec,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            "auto_unmount" => MountOption::AutoUnmount,
            w if w.starts_with("fsname=") => {
                fsname = w["fsname=".len()..].to_string();
                continue;
            }
            w if w.starts_with("threads=") => {
                cfg.threads = w["threads=".len()..]
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| bad(format!("mount option {w}: threads=1..256")))?;
                continue;
            }
            w => return Err(bad(format!("unknown mount option {w:?}"))),
        };
        if !opts.contains(&opt) {
            opts.push(opt);
        }
    }
    if read_only_volume && !opts.contains(&MountOption::RO) {
        opts.retain(|o| *o != MountOption::RW);
        opts.push(MountOption::RO);
    }
    // SAFETY: geteuid has no preconditions.
    let through_fusermount = unsafe { libc::geteuid() } != 0;
    if opts.contains(&MountOption::AutoUnmount) && acl == SessionACL::Owner && through_fusermount {
        // fusermount3 needs allow_root or allow_other for auto_unmount.
        acl = SessionACL::RootAndOwner;
    }
    opts.push(MountOption::FSName(fsname));
    // The kernel shows the type as fuse.twinfs; fuser's Subtype only reaches fusermount.
    opts.push(MountOption::CUSTOM("subtype=twinfs".into()));
    let mut config = Config::default();
    config.mount_options = opts;
    config.acl = acl;
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = true;
    Ok(config)
}

// ---- errors ----------------------------------------------------------------

/// The errno the kernel gets for a volume error. Failures of the volume
/// itself (EIO) are logged as errors; the rest are the caller's business.
pub fn errno(e: FsError) -> Errno {
    let n = e.errno();
    if n == libc::EIO {
        log::error!("{e}");
    } else {
        log::debug!("-> {e}");
    }
    Errno::from_i32(n)
}

type Res<T> = Result<T, Errno>;

// ---- inode numbering -----------------------------------------------------------

/// Which tree a volume inode is read through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tree {
    Live,
    Snapshot { slot: u16, id: u64 },
}

impl Tree {
    fn view(self) -> View {
        match self {
            Tree::Live => View::Live,
            Tree::Snapshot { id, .. } => View::Snapshot(id),
        }
    }

    fn fuse_ino(self, ino: Ino) -> Res<u64> {
        if ino.0 >= LIVE_INO_LIMIT || ino.0 == 0 {
            log::error!("volume inode {} does not fit the FUSE numbering", ino.0);
            return Err(Errno::EOVERFLOW);
        }
        Ok(match self {
            Tree::Live => ino.0,
            Tree::Snapshot { slot, .. } => {
                ((u64::from(slot) + FIRST_SNAPSHOT_TAG) << TAG_SHIFT) | ino.0
            }
        })
    }
}

/// What a FUSE inode number names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Tree(Tree, Ino),
    SnapshotDir,
}

/// Identity of a snapshot: an id may be reused after a delete, this may not.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SnapKey {
    id: u64,
    cp: u64,
    created: Timestamp,
}

impl SnapKey {
    fn of(s: &SnapshotInfo) -> SnapKey {
        SnapKey {
            id: s.id,
            cp: s.cp.0,
            created: s.created,
        }
    }
}

/// One directory entry as the adapter lists it.
struct DirEntry<'a> {
    node: Node,
    fuse_ino: u64,
    offset: u64,
    kind: FileKind,
    name: &'a [u8],
}

/// Takes one entry; returns true when the reply is full (the entry did not fit).
type AddEntry<'a> = dyn FnMut(&DirEntry<'_>) -> bool + 'a;

/// A [`DirEntry`] kept after the volume's lock is let go.
struct ListedEntry {
    node: Node,
    fuse_ino: u64,
    offset: u64,
    kind: FileKind,
    name: Vec<u8>,
}

impl ListedEntry {
    fn of(e: &DirEntry<'_>) -> ListedEntry {
        ListedEntry {
            node: e.node,
            fuse_ino: e.fuse_ino,
            offset: e.offset,
            kind: e.kind,
            name: e.name.to_vec(),
        }
    }

    fn entry(&self) -> DirEntry<'_> {
        DirEntry {
            node: self.node,
            fuse_ino: self.fuse_ino,
            offset: self.offset,
            kind: self.kind,
            name: &self.name,
        }
    }
}

/// Directories open on a mount whose image changes (a replica view). The
/// kernel lists a directory in several requests, each starting after the
/// last entry's offset; were each read from the CP shown at the time, a
/// listing spanning a reload would mix two CPs (names of the old CP up to
/// the offset, of the new one after it), a directory no CP ever held. So a
/// handle's listing is read whole, from one image, when the kernel asks for
/// offset 0 (the start, or a `rewinddir`), and later requests are answered
/// from it.
#[derive(Default)]
struct Listings {
    last_handle: u64,
    /// Per handle: its listing (None before the first read, or if too large).
    open: HashMap<u64, Option<Arc<[ListedEntry]>>>,
}

/// Snapshot slots handed out by this mount (never reused).
#[derive(Default)]
struct Slots {
    keys: Vec<SnapKey>,
    index: HashMap<SnapKey, u16>,
}

impl Slots {
    fn slot_of(&mut self, s: &SnapshotInfo) -> Option<u16> {
        let key = SnapKey::of(s);
        if let Some(&slot) = self.index.get(&key) {
            return Some(slot);
        }
        if self.keys.len() >= MAX_SNAPSHOT_SLOTS {
            log::warn!(
                "snapshot {} not shown: this mount has used all {MAX_SNAPSHOT_SLOTS} snapshot slots; remount",
                s.name
            );
            return None;
        }
        let slot = self.keys.len() as u16;
        self.keys.push(key.clone());
        self.index.insert(key, slot);
        Some(slot)
    }
}

// ---- attribute conversion ------------------------------------------------------

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr, ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.blocks512,
        atime: a.atime.to_system_time(),
        mtime: a.mtime.to_system_time(),
        ctime: a.ctime.to_system_time(),
        crtime: a.crtime.to_system_time(),
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// Attributes of a live inode, with its FUSE inode number.
fn file_attr_live(a: &Attr) -> Res<FileAttr> {
    Ok(file_attr(a, Tree::Live.fuse_ino(a.ino)?))
}

/// Attributes of a negative entry (only the zero inode number matters).
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timestamp::from_system_time(t)),
    }
}

/// The mode after a change by an unprivileged caller: set-user-ID goes,
/// set-group-ID too when the group may execute (`should_remove_suid`).
fn killed_perm(perm: u32) -> u32 {
    let mut p = perm & !libc::S_ISUID;
    if p & libc::S_IXGRP != 0 {
        p &= !libc::S_ISGID;
    }
    p
}

/// Whether the kernel would let the caller keep set-user-ID bits (CAP_FSETID);
/// fuser does not pass FATTR_KILL_SUIDGID / FUSE_OPEN_KILL_SUIDGID, so root stands for it.
fn privileged(req: &Request) -> bool {
    req.uid() == 0
}

fn is_sync(flags: i32) -> bool {
    flags & (libc::O_SYNC | libc::O_DSYNC) != 0
}

fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Whether the caller of `req` is root or a member of group `gid`.
fn caller_in_group(req: &Request, gid: u32) -> bool {
    if req.uid() == 0 || req.gid() == gid {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", req.pid())) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

// ---- the file system -----------------------------------------------------------

/// The fuser file system over a [`Volume`].
pub struct TwinFs {
    volume: Arc<Volume>,
    ttl: Duration,
    changing: bool,
    writeback_cache: bool,
    /// The kernel took FUSE_POSIX_ACL: ACLs are enforced and kept in step with the mode.
    posix_acl: bool,
    slots: Mutex<Slots>,
    listings: Mutex<Listings>,
    sync: Option<crossbeam_channel::Sender<ReplyEmpty>>,
}

impl TwinFs {
    /// A file system over `volume`; fsync runs on the calling FUSE thread
    /// (use [`mount_with`] for the worker threads).
    pub fn new(volume: Arc<Volume>, cfg: &MountConfig) -> TwinFs {
        TwinFs {
            volume,
            ttl: if cfg.changing { CHANGING_TTL } else { LIVE_TTL },
            changing: cfg.changing,
            writeback_cache: cfg.writeback_cache,
            posix_acl: false,
            slots: Mutex::new(Slots::default()),
            listings: Mutex::new(Listings::default()),
            sync: None,
        }
    }

    // ---- resolving inode numbers ----

    /// The errno for an operation on inode `ino` itself, not on a name. In
    /// a mount whose volume changes under it (a replica view) the kernel may
    /// still hold, for a name, an inode the CP now shown no longer has (a
    /// file replaced by a rename): ESTALE, not ENOENT, makes it look the
    /// name up again, and the new CP may well have it.
    fn on_inode(&self, e: Errno) -> Errno {
        if self.changing && e == Errno::ENOENT {
            Errno::ESTALE
        } else {
            e
        }
    }

    /// Runs `op`, which reads the image the mount shows. In a replica view
    /// that image moves under readers (a new CP; a replica's staged blocks
    /// copied over it), so a read may meet a block of the next image, whose
    /// hash does not match: an EIO that is run again, on the image shown
    /// once the move is over, instead of reaching the reader.
    fn on_shown_image<T>(&self, mut op: impl FnMut() -> Res<T>) -> Res<T> {
        if !self.changing {
            return op();
        }
        for _ in 0..MOVED_READ_RETRIES {
            let moves = self.volume.image_moves();
            match op() {
                Err(e) if e == Errno::EIO && self.volume.image_moves() != moves => {
                    log::debug!("a read met the replica image moving; reading it again");
                    self.volume.wait_not_overwriting(Duration::from_secs(10));
                }
                r => return r,
            }
        }
        op()
    }

    fn node(&self, ino: INodeNo) -> Res<Node> {
        let n = ino.0;
        let tag = n >> TAG_SHIFT;
        let low = n & (LIVE_INO_LIMIT - 1);
        match tag {
            0 if n != 0 => Ok(Node::Tree(Tree::Live, Ino(n))),
            1 if low == 0 => Ok(Node::SnapshotDir),
            t if t >= FIRST_SNAPSHOT_TAG && low != 0 => {
                let slot = (t - FIRST_SNAPSHOT_TAG) as u16;
                let key = self
                    .slots
                    .lock()
                    .keys
                    .get(usize::from(slot))
                    .cloned()
                    .ok_or(Errno::ENOENT)?;
                // The snapshot must still be the one the slot was handed out for.
                let alive = self
                    .volume
                    .snapshot_list()
                    .iter()
                    .any(|s| SnapKey::of(s) == key);
                if !alive {
                    return Err(Errno::ENOENT);
                }
                Ok(Node::Tree(Tree::Snapshot { slot, id: key.id }, Ino(low)))
            }
            _ => Err(Errno::ENOENT),
        }
    }

    /// The live inode `ino` names, or EROFS for anything under `.snapshot`.
    fn live(&self, ino: INodeNo) -> Res<Ino> {
        match self.node(ino)? {
            Node::Tree(Tree::Live, i) => Ok(i),
            _ => Err(Errno::EROFS),
        }
    }

    /// `name` in the root is `.snapshot`, which no change may touch.
    fn reserved(parent: Ino, name: &OsStr) -> bool {
        parent == ROOT_INO && name.as_bytes() == SNAPSHOT_DIR_NAME
    }

    fn ttl_of(&self, node: Node) -> Duration {
        match node {
            Node::SnapshotDir => SNAPSHOT_DIR_TTL,
            Node::Tree(..) => self.ttl,
        }
    }

    // ---- attributes ----

    fn attr_of(&self, node: Node) -> Res<FileAttr> {
        match node {
            Node::SnapshotDir => self.snapshot_dir_attr(),
            Node::Tree(tree, ino) => {
                let a = self.volume.getattr(tree.view(), ino).map_err(errno)?;
                Ok(file_attr(&a, tree.fuse_ino(ino)?))
            }
        }
    }

    /// `/.snapshot`: read-only, owned like the root, dated by its newest snapshot.
    fn snapshot_dir_attr(&self) -> Res<FileAttr> {
        let root = self.volume.getattr(View::Live, ROOT_INO).map_err(errno)?;
        let snaps = self.volume.snapshot_list();
        let newest = snaps.iter().map(|s| s.created).max().unwrap_or(root.crtime);
        let mut a = file_attr(&root, SNAPSHOT_DIR_INO);
        a.perm = 0o555;
        a.nlink = 2 + snaps.len() as u32;
        a.size = snaps.len() as u64;
        a.blocks = 0;
        a.atime = newest.to_system_time();
        a.mtime = newest.to_system_time();
        a.ctime = newest.to_system_time();
        Ok(a)
    }

    fn reply_entry(&self, reply: ReplyEntry, node: Node, attr: &FileAttr) {
        let ttl = self.ttl_of(node);
        reply.entry(&ttl, attr, Generation(0));
    }

    // ---- lookup ----

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Res<(Node, Option<FileAttr>)> {
        match self.node(parent)? {
            Node::SnapshotDir => self.lookup_snapshot(name),
            Node::Tree(Tree::Live, p) if Self::reserved(p, name) => {
                Ok((Node::SnapshotDir, Some(self.snapshot_dir_attr()?)))
            }
            Node::Tree(tree, p) => match self.volume.lookup(tree.view(), p, name.as_bytes()) {
                Ok(a) => {
                    let node = Node::Tree(tree, a.ino);
                    Ok((node, Some(file_attr(&a, tree.fuse_ino(a.ino)?))))
                }
                Err(FsError::NotFound) if !self.changing => Ok((Node::Tree(tree, p), None)),
                Err(e) => Err(errno(e)),
            },
        }
    }

    fn lookup_snapshot(&self, name: &OsStr) -> Res<(Node, Option<FileAttr>)> {
        let snaps = self.volume.snapshot_list();
        let s = snaps
            .iter()
            .find(|s| s.name.as_bytes() == name.as_bytes())
            .ok_or(Errno::ENOENT)?;
        let slot = self.slots.lock().slot_of(s).ok_or(Errno::ENOENT)?;
        let tree = Tree::Snapshot { slot, id: s.id };
        let a = self.volume.getattr(tree.view(), ROOT_INO).map_err(errno)?;
        // Entries of .snapshot come and go: TTL 0 via the SnapshotDir node.
        Ok((
            Node::SnapshotDir,
            Some(file_attr(&a, tree.fuse_ino(ROOT_INO)?)),
        ))
    }

    // ---- directories ----

    /// Up to `limit` entries of `dir` after `cookie` (read under the
    /// volume's lock, so nothing may call the volume from inside).
    fn dir_batch(&self, view: View, dir: Ino, cookie: u64, limit: usize) -> Res<Vec<Listing>> {
        let mut out = Vec::with_capacity(limit.min(READDIR_BATCH));
        self.volume
            .readdir(view, dir, cookie, &mut |l| {
                out.push(l);
                out.len() < limit
            })
            .map_err(errno)?;
        Ok(out)
    }

    /// Lists `ino` after `offset`, giving each entry's FUSE inode, offset,
    /// kind and name to `add` until it says the reply is full.
    fn list(&self, ino: INodeNo, offset: u64, add: &mut AddEntry<'_>) -> Res<()> {
        self.list_in_batches(ino, offset, READDIR_BATCH, add)
    }

    /// [`TwinFs::list`], reading `batch` entries under the volume's lock at a time.
    fn list_in_batches(
        &self,
        ino: INodeNo,
        offset: u64,
        batch: usize,
        add: &mut AddEntry<'_>,
    ) -> Res<()> {
        let (tree, dir) = match self.node(ino)? {
            Node::SnapshotDir => return self.list_snapshots(offset, add),
            Node::Tree(tree, dir) => (tree, dir),
        };
        let mut cookie = offset;
        loop {
            let batch_read = self.dir_batch(tree.view(), dir, cookie, batch)?;
            let n = batch_read.len();
            for l in batch_read {
                let hidden = tree == Tree::Live && dir == ROOT_INO && l.name == SNAPSHOT_DIR_NAME;
                if !hidden {
                    let (node, fino) = if l.name == b".." && dir == ROOT_INO && tree != Tree::Live {
                        (Node::SnapshotDir, SNAPSHOT_DIR_INO)
                    } else {
                        (Node::Tree(tree, l.ino), tree.fuse_ino(l.ino)?)
                    };
                    let e = DirEntry {
                        node,
                        fuse_ino: fino,
                        offset: l.cookie,
                        kind: l.kind,
                        name: &l.name,
                    };
                    if add(&e) {
                        return Ok(());
                    }
                }
                cookie = l.cookie;
            }
            if n < batch {
                return Ok(());
            }
        }
    }

    /// The handle of a directory opened in the live tree: one with a
    /// [`Listings`] entry on a mount whose image changes, else 0.
    fn listing_handle(&self) -> FileHandle {
        if !self.changing {
            return FileHandle(0);
        }
        let mut listings = self.listings.lock();
        listings.last_handle += 1;
        let fh = listings.last_handle;
        listings.open.insert(fh, None);
        FileHandle(fh)
    }

    /// Lists `ino` after `offset` for the directory handle `fh`: from the
    /// handle's listing read whole from one image (see [`Listings`]) where
    /// it has one, else as [`TwinFs::list`] does.
    fn list_open(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        add: &mut AddEntry<'_>,
    ) -> Res<()> {
        let Some(kept) = self.listings.lock().open.get(&fh.0).cloned() else {
            return self.list(ino, offset, add);
        };
        let listing = if offset == 0 {
            // The start, or a rewinddir: read afresh.
            let whole = self.whole_listing(ino)?;
            if let Some(l) = self.listings.lock().open.get_mut(&fh.0) {
                *l = whole.clone();
            }
            whole
        } else {
            kept
        };
        let Some(listing) = listing else {
            return self.list(ino, offset, add);
        };
        let first = listing.partition_point(|e| e.offset <= offset);
        for e in &listing[first..] {
            if add(&e.entry()) {
                break;
            }
        }
        Ok(())
    }

    /// Every entry of `ino` read under one hold of the volume's lock, so from
    /// one image; None if it has more than [`WHOLE_LISTING_MAX`].
    fn whole_listing(&self, ino: INodeNo) -> Res<Option<Arc<[ListedEntry]>>> {
        self.on_shown_image(|| {
            let mut entries = Vec::new();
            self.list_in_batches(ino, 0, WHOLE_LISTING_MAX + 1, &mut |e| {
                entries.push(ListedEntry::of(e));
                false
            })?;
            Ok((entries.len() <= WHOLE_LISTING_MAX).then(|| entries.into()))
        })
    }

    /// `.snapshot`: ".", "..", then one directory per snapshot (offset = id + 2).
    fn list_snapshots(&self, offset: u64, add: &mut AddEntry<'_>) -> Res<()> {
        let dot = [
            (Node::SnapshotDir, SNAPSHOT_DIR_INO, 1, &b"."[..]),
            (Node::Tree(Tree::Live, ROOT_INO), ROOT_INO.0, 2, &b".."[..]),
        ];
        for (node, fuse_ino, off, name) in dot {
            let e = DirEntry {
                node,
                fuse_ino,
                offset: off,
                kind: FileKind::Directory,
                name,
            };
            if off > offset && add(&e) {
                return Ok(());
            }
        }
        let mut snaps = self.volume.snapshot_list();
        snaps.sort_by_key(|s| s.id);
        for s in snaps.iter().filter(|s| s.id + 2 > offset) {
            let Some(slot) = self.slots.lock().slot_of(s) else {
                continue;
            };
            let tree = Tree::Snapshot { slot, id: s.id };
            let e = DirEntry {
                node: Node::Tree(tree, ROOT_INO),
                fuse_ino: tree.fuse_ino(ROOT_INO)?,
                offset: s.id + 2,
                kind: FileKind::Directory,
                name: s.name.as_bytes(),
            };
            if add(&e) {
                return Ok(());
            }
        }
        Ok(())
    }

    // ---- creating ----

    /// The permission bits of a new inode, and the ACLs it inherits from
    /// `parent`'s default ACL (`posix_acl_create`), or the umask applied.
    fn new_mode(
        &self,
        parent: Ino,
        mode: u32,
        umask: u32,
        kind: FileKind,
    ) -> Res<(u32, acl::Inherited)> {
        let mode = mode & 0o7777;
        if !self.posix_acl {
            return Ok((mode & !umask, acl::Inherited::default()));
        }
        match self.volume.getxattr(View::Live, parent, acl::DEFAULT) {
            Ok(bytes) => {
                let default = acl::Acl::decode(&bytes).map_err(errno)?;
                let mut access = default.clone();
                let (perm, equivalent) = access.create_masq(mode);
                Ok((
                    perm,
                    acl::Inherited {
                        access: (!equivalent).then(|| access.encode()),
                        default: (kind == FileKind::Directory).then_some(bytes),
                    },
                ))
            }
            Err(FsError::NoAttr) => Ok((mode & !umask, acl::Inherited::default())),
            Err(e) => Err(errno(e)),
        }
    }

    /// Creates a node with inherited ACLs; returns its attributes.
    #[allow(clippy::too_many_arguments)]
    fn make_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: FileKind,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Res<Attr> {
        let parent = self.live(parent)?;
        if Self::reserved(parent, name) {
            return Err(Errno::EEXIST);
        }
        let (perm, inherited) = self.new_mode(parent, mode, umask, kind)?;
        let a = self
            .volume
            .create(
                parent,
                name.as_bytes(),
                kind,
                perm,
                req.uid(),
                req.gid(),
                u64::from(rdev),
            )
            .map_err(errno)?;
        if inherited.is_empty() {
            return Ok(a);
        }
        for (xname, value) in [
            (acl::ACCESS, inherited.access),
            (acl::DEFAULT, inherited.default),
        ] {
            if let Some(v) = value {
                self.volume.setxattr(a.ino, xname, &v, 0).map_err(errno)?;
            }
        }
        self.volume.getattr(View::Live, a.ino).map_err(errno)
    }

    fn open_flags(&self, tree: Tree) -> FopenFlags {
        let mut f = FopenFlags::FOPEN_NOFLUSH;
        if !self.changing || tree != Tree::Live {
            f |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        f
    }

    // ---- xattrs and ACLs ----

    fn check_xattr_name(name: &[u8]) -> Res<()> {
        let ok = [&b"user."[..], b"trusted.", b"security."]
            .iter()
            .any(|p| name.starts_with(p) && name.len() > p.len())
            || name == acl::ACCESS
            || name == acl::DEFAULT;
        if ok {
            Ok(())
        } else {
            Err(Errno::EOPNOTSUPP)
        }
    }

    fn do_setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Res<()> {
        let ino = self.live(ino)?;
        Self::check_xattr_name(name)?;
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return Err(Errno::EINVAL);
        }
        if self.posix_acl && name == acl::ACCESS {
            return self.set_access_acl(req, ino, value);
        }
        if self.posix_acl && name == acl::DEFAULT {
            acl::Acl::decode(value).map_err(errno)?;
            let a = self.volume.getattr(View::Live, ino).map_err(errno)?;
            if a.kind != FileKind::Directory {
                return Err(Errno::EACCES);
            }
        }
        self.volume.setxattr(ino, name, value, flags).map_err(errno)
    }

    /// `posix_acl_update_mode`: the mode follows the ACL; an ACL that says no
    /// more than the mode is not stored.
    fn set_access_acl(&self, req: &Request, ino: Ino, value: &[u8]) -> Res<()> {
        let acl = acl::Acl::decode(value).map_err(errno)?;
        let a = self.volume.getattr(View::Live, ino).map_err(errno)?;
        let (bits, equivalent) = acl.mode();
        let mut perm = (a.perm & !0o777) | bits;
        if perm & libc::S_ISGID != 0 && !caller_in_group(req, a.gid) {
            perm &= !libc::S_ISGID;
        }
        if perm != a.perm {
            let ch = AttrChanges {
                perm: Some(perm),
                ..Default::default()
            };
            self.volume.setattr(ino, &ch).map_err(errno)?;
        }
        if equivalent {
            match self.volume.removexattr(ino, acl::ACCESS) {
                Ok(()) | Err(FsError::NoAttr) => Ok(()),
                Err(e) => Err(errno(e)),
            }
        } else {
            self.volume
                .setxattr(ino, acl::ACCESS, &acl.encode(), 0)
                .map_err(errno)
        }
    }

    /// `posix_acl_chmod`: after a chmod, the access ACL follows the mode.
    fn chmod_acl(&self, ino: Ino, perm: u32) -> Res<()> {
        let bytes = match self.volume.getxattr(View::Live, ino, acl::ACCESS) {
            Ok(b) => b,
            Err(FsError::NoAttr) => return Ok(()),
            Err(e) => return Err(errno(e)),
        };
        let mut acl = acl::Acl::decode(&bytes).map_err(errno)?;
        acl.chmod(perm);
        self.volume
            .setxattr(ino, acl::ACCESS, &acl.encode(), 0)
            .map_err(errno)
    }

    fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
        if size == 0 {
            reply.size(data.len() as u32);
        } else if data.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(data);
        }
    }

    // ---- privileges (FUSE_HANDLE_KILLPRIV_V2) ----

    /// Drops the file capabilities of `ino`, if it has any.
    fn kill_caps(&self, ino: Ino) -> Res<()> {
        match self.volume.getxattr(View::Live, ino, CAPABILITY_XATTR) {
            Err(FsError::NoAttr) => Ok(()),
            Err(e) => Err(errno(e)),
            Ok(_) => match self.volume.removexattr(ino, CAPABILITY_XATTR) {
                Ok(()) | Err(FsError::NoAttr) => Ok(()),
                Err(e) => Err(errno(e)),
            },
        }
    }

    /// Truncates `ino` to `size` as `req` asks, killing privileges as the
    /// kernel would for an unprivileged caller.
    fn truncate(&self, req: &Request, ino: Ino, mut ch: AttrChanges) -> Res<Attr> {
        if !privileged(req) {
            self.kill_caps(ino)?;
            if ch.perm.is_none() {
                let a = self.volume.getattr(View::Live, ino).map_err(errno)?;
                if a.kind == FileKind::Regular && killed_perm(a.perm) != a.perm {
                    ch.perm = Some(killed_perm(a.perm));
                }
            }
        }
        self.volume.setattr(ino, &ch).map_err(errno)
    }

    // ---- fsync ----

    fn fsync_reply(&self, reply: ReplyEmpty) {
        let reply = match &self.sync {
            Some(tx) => match tx.try_send(reply) {
                Ok(()) => return,
                Err(e) => e.into_inner(),
            },
            None => reply,
        };
        match self.volume.fsync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Res<()> {
        let p = self.live(parent)?;
        let np = self.live(newparent)?;
        if Self::reserved(p, name) || Self::reserved(np, newname) {
            return Err(Errno::EROFS);
        }
        let bits = flags.bits();
        if bits & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(Errno::EINVAL);
        }
        self.volume
            .rename(p, name.as_bytes(), np, newname.as_bytes(), bits)
            .map_err(errno)
    }

    fn do_link(&self, ino: INodeNo, newparent: INodeNo, newname: &OsStr) -> Res<(Ino, FileAttr)> {
        let np = self.live(newparent)?;
        let i = match self.node(ino)? {
            Node::Tree(Tree::Live, i) => i,
            // A snapshot's inode cannot get a name in the live tree.
            _ => return Err(Errno::EXDEV),
        };
        if Self::reserved(np, newname) {
            return Err(Errno::EEXIST);
        }
        let a = self.volume.link(i, np, newname.as_bytes()).map_err(errno)?;
        Ok((a.ino, file_attr(&a, ino.0)))
    }

    /// Opens a file: O_TRUNC here (FUSE_ATOMIC_O_TRUNC); live files are
    /// counted open so that an unlinked one lives until released.
    fn do_open(&self, req: &Request, ino: INodeNo, flags: i32) -> Res<(u64, FopenFlags)> {
        match self.node(ino)? {
            Node::Tree(Tree::Live, i) => {
                if flags & libc::O_TRUNC != 0 {
                    let ch = AttrChanges {
                        size: Some(0),
                        ..Default::default()
                    };
                    self.truncate(req, i, ch)?;
                }
                self.volume.open_file(i).map_err(errno)?;
                let fh = if is_sync(flags) { FH_SYNC } else { 0 };
                Ok((fh, self.open_flags(Tree::Live)))
            }
            Node::Tree(tree, i) => {
                if wants_write(flags) {
                    return Err(Errno::EROFS);
                }
                self.volume.getattr(tree.view(), i).map_err(errno)?;
                Ok((0, self.open_flags(tree)))
            }
            Node::SnapshotDir => Err(Errno::EISDIR),
        }
    }

    fn do_lseek(&self, ino: INodeNo, offset: i64, whence: i32) -> Res<i64> {
        let want_data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(Errno::EINVAL),
        };
        let offset = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        let Node::Tree(tree, i) = self.node(ino)? else {
            return Err(Errno::EISDIR);
        };
        match self
            .volume
            .seek(tree.view(), i, offset, want_data)
            .map_err(errno)?
        {
            Some(o) => i64::try_from(o).map_err(|_| Errno::EOVERFLOW),
            None => Err(Errno::ENXIO),
        }
    }

    fn do_copy(
        &self,
        src: INodeNo,
        offset_in: u64,
        dst: INodeNo,
        offset_out: u64,
        len: u64,
    ) -> Res<u32> {
        let dst = self.live(dst)?;
        let Node::Tree(tree, src) = self.node(src)? else {
            return Err(Errno::EISDIR);
        };
        let len = len.min(COPY_MAX_PER_CALL);
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(u64::from(COPY_CHUNK)) as u32;
            let data = self
                .volume
                .read(tree.view(), src, offset_in + done, want)
                .map_err(errno)?;
            if data.is_empty() {
                break;
            }
            self.volume
                .write(dst, offset_out + done, &data, false)
                .map_err(errno)?;
            done += data.len() as u64;
            if data.len() < want as usize {
                break;
            }
        }
        Ok(done as u32)
    }
}

/// The requested init flags: what a workstation's workload profits from.
fn wanted_capabilities(writeback_cache: bool, changing: bool) -> InitFlags {
    let mut f = InitFlags::FUSE_ASYNC_READ
        | InitFlags::FUSE_BIG_WRITES
        | InitFlags::FUSE_MAX_PAGES
        | InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_READDIRPLUS_AUTO
        | InitFlags::FUSE_CACHE_SYMLINKS
        | InitFlags::FUSE_ATOMIC_O_TRUNC
        | InitFlags::FUSE_ASYNC_DIO
        | InitFlags::FUSE_POSIX_ACL
        | InitFlags::FUSE_DONT_MASK
        | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
    if writeback_cache {
        f |= InitFlags::FUSE_WRITEBACK_CACHE;
    }
    if changing {
        f |= InitFlags::FUSE_AUTO_INVAL_DATA;
    }
    f
}

impl Filesystem for TwinFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE_BYTES);
        if let Err(most) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(most);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(CONGESTION_THRESHOLD);
        let want = wanted_capabilities(self.writeback_cache, self.changing);
        let have = want & config.capabilities();
        if config.add_capabilities(have).is_err() {
            log::warn!("the kernel refused FUSE capabilities it offered");
        }
        self.posix_acl = have.contains(InitFlags::FUSE_POSIX_ACL);
        if !have.contains(InitFlags::FUSE_WRITEBACK_CACHE) {
            self.writeback_cache = false;
        }
        log::info!(
            "FUSE session: capabilities {:?} of wanted {:?}; posix ACLs {}, writeback cache {}",
            have,
            want,
            self.posix_acl,
            self.writeback_cache
        );
        Ok(())
    }

    fn destroy(&mut self) {
        log::debug!("destroy: making the log durable");
        if let Err(e) = self.volume.fsync() {
            log::error!("making the log durable at unmount: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        log::trace!("lookup {} {name:?}", parent.0);
        match self.on_shown_image(|| self.do_lookup(parent, name)) {
            Ok((node, Some(attr))) => self.reply_entry(reply, node, &attr),
            Ok((node, None)) => self.reply_entry(reply, node, &negative_attr()),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // Inodes live in the volume; the kernel's lookup counts change nothing.
        log::trace!("forget {} {nlookup}", ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        log::trace!("getattr {}", ino.0);
        match self.on_shown_image(|| self.node(ino).and_then(|n| Ok((n, self.attr_of(n)?)))) {
            Ok((node, attr)) => reply.attr(&self.ttl_of(node), &attr),
            Err(e) => reply.error(self.on_inode(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        log::debug!(
            "setattr {} mode={mode:?} uid={uid:?} gid={gid:?} size={size:?} atime={atime:?} mtime={mtime:?}",
            ino.0
        );
        let ch = AttrChanges {
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            crtime: crtime.map(Timestamp::from_system_time),
        };
        let result = self.live(ino).and_then(|i| {
            if ch.uid.is_some() || ch.gid.is_some() {
                // chown drops capabilities; the volume drops set-user-ID.
                self.kill_caps(i)?;
            }
            let a = if ch.size.is_some() {
                self.truncate(req, i, ch.clone())?
            } else {
                self.volume.setattr(i, &ch).map_err(errno)?
            };
            if ch.perm.is_some() && self.posix_acl {
                self.chmod_acl(i, a.perm)?;
            }
            Ok(file_attr(&a, ino.0))
        });
        match result {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        log::trace!("readlink {}", ino.0);
        let result = match self.node(ino) {
            Ok(Node::Tree(tree, i)) => self.volume.readlink(tree.view(), i).map_err(errno),
            Ok(Node::SnapshotDir) => Err(Errno::EINVAL),
            Err(e) => Err(e),
        };
        match result {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(self.on_inode(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        log::debug!("mknod {} {name:?} mode={mode:o} rdev={rdev}", parent.0);
        let result = FileKind::from_mode(mode)
            .filter(|k| *k != FileKind::Directory && *k != FileKind::Symlink)
            .ok_or(Errno::EINVAL)
            .and_then(|kind| self.make_node(req, parent, name, kind, mode, umask, rdev));
        match result.and_then(|a| Ok((a.ino, file_attr_live(&a)?))) {
            Ok((i, attr)) => self.reply_entry(reply, Node::Tree(Tree::Live, i), &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        log::debug!("mkdir {} {name:?} mode={mode:o}", parent.0);
        let result = self.make_node(req, parent, name, FileKind::Directory, mode, umask, 0);
        match result.and_then(|a| Ok((a.ino, file_attr_live(&a)?))) {
            Ok((i, attr)) => self.reply_entry(reply, Node::Tree(Tree::Live, i), &attr),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        log::debug!("unlink {} {name:?}", parent.0);
        let result = self.live(parent).and_then(|p| {
            if Self::reserved(p, name) {
                return Err(Errno::EROFS);
            }
            self.volume.unlink(p, name.as_bytes()).map_err(errno)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        log::debug!("rmdir {} {name:?}", parent.0);
        let result = self.live(parent).and_then(|p| {
            if Self::reserved(p, name) {
                return Err(Errno::EROFS);
            }
            self.volume.rmdir(p, name.as_bytes()).map_err(errno)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        log::debug!("symlink {} {link_name:?} -> {target:?}", parent.0);
        let result = self.live(parent).and_then(|p| {
            if Self::reserved(p, link_name) {
                return Err(Errno::EEXIST);
            }
            let a = self
                .volume
                .symlink(
                    p,
                    link_name.as_bytes(),
                    target.as_os_str().as_bytes(),
                    req.uid(),
                    req.gid(),
                )
                .map_err(errno)?;
            Ok((a.ino, file_attr_live(&a)?))
        });
        match result {
            Ok((i, attr)) => self.reply_entry(reply, Node::Tree(Tree::Live, i), &attr),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        log::debug!(
            "rename {} {name:?} -> {} {newname:?} flags={flags}",
            parent.0,
            newparent.0
        );
        match self.do_rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        log::debug!("link {} -> {} {newname:?}", ino.0, newparent.0);
        match self.do_link(ino, newparent, newname) {
            Ok((i, attr)) => self.reply_entry(reply, Node::Tree(Tree::Live, i), &attr),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        log::trace!("open {} flags={:#x}", ino.0, flags.0);
        match self.do_open(req, ino, flags.0) {
            Ok((fh, f)) => reply.opened(FileHandle(fh), f),
            Err(e) => reply.error(self.on_inode(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        log::trace!("read {} {offset}+{size}", ino.0);
        READ_BUF.with_borrow_mut(|buf| {
            let got = self.on_shown_image(|| match self.node(ino)? {
                Node::Tree(tree, i) => self
                    .volume
                    .read_to(tree.view(), i, offset, size, buf)
                    .map_err(errno),
                Node::SnapshotDir => Err(Errno::EISDIR),
            });
            match got {
                Ok(got) => reply.data(&buf[got]),
                Err(e) => reply.error(self.on_inode(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        log::trace!(
            "write {} {offset}+{} flags={:#x}",
            ino.0,
            data.len(),
            flags.0
        );
        let kill_suid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let result = self.live(ino).and_then(|i| {
            if kill_suid {
                self.kill_caps(i)?;
            }
            let n = self
                .volume
                .write(i, offset, data, kill_suid)
                .map_err(errno)?;
            if fh.0 & FH_SYNC != 0 || is_sync(flags.0) {
                self.volume.fsync().map_err(errno)?;
            }
            Ok(n)
        });
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes are in the volume when they are answered; close need not wait.
        log::trace!("flush {}", ino.0);
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        log::trace!("release {}", ino.0);
        let result = match self.node(ino) {
            Ok(Node::Tree(Tree::Live, i)) => self.volume.release_file(i).map_err(errno),
            _ => Ok(()),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        log::debug!("fsync {} datasync={datasync}", ino.0);
        match self.node(ino) {
            Ok(Node::Tree(Tree::Live, _)) => self.fsync_reply(reply),
            _ => reply.ok(),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        log::trace!("opendir {}", ino.0);
        let result = match self.node(ino) {
            // Counted like files, so that a removed directory still open stays readable.
            Ok(Node::Tree(Tree::Live, i)) => self
                .volume
                .open_file(i)
                .map(|()| (self.listing_handle(), FopenFlags::empty()))
                .map_err(errno),
            Ok(Node::Tree(tree, i)) => self
                .volume
                .getattr(tree.view(), i)
                .map(|_| {
                    let cached = FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR;
                    (FileHandle(0), cached)
                })
                .map_err(errno),
            Ok(Node::SnapshotDir) => Ok((FileHandle(0), FopenFlags::empty())),
            Err(e) => Err(e),
        };
        match result {
            Ok((fh, f)) => reply.opened(fh, f),
            Err(e) => reply.error(self.on_inode(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        log::trace!("readdir {} @{offset}", ino.0);
        let result = self.list_open(ino, fh, offset, &mut |e| {
            reply.add(
                INodeNo(e.fuse_ino),
                e.offset,
                file_type(e.kind),
                OsStr::from_bytes(e.name),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.on_inode(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        log::trace!("readdirplus {} @{offset}", ino.0);
        // Entries first (under the volume's lock), attributes after.
        let mut entries = Vec::new();
        let result = self.on_shown_image(|| {
            entries.clear();
            self.list_open(ino, fh, offset, &mut |e| {
                entries.push((e.node, e.fuse_ino, e.offset, e.name.to_vec()));
                entries.len() >= READDIR_BATCH
            })
        });
        if let Err(e) = result {
            return reply.error(self.on_inode(e));
        }
        for (node, fino, off, name) in entries {
            let attr = match self.attr_of(node) {
                Ok(mut a) => {
                    a.ino = INodeNo(fino);
                    a
                }
                // Gone since it was listed.
                Err(_) => continue,
            };
            let ttl = if ino.0 == SNAPSHOT_DIR_INO {
                SNAPSHOT_DIR_TTL
            } else {
                self.ttl_of(node)
            };
            if reply.add(
                INodeNo(fino),
                off,
                OsStr::from_bytes(&name),
                &ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        log::trace!("releasedir {}", ino.0);
        self.listings.lock().open.remove(&fh.0);
        let result = match self.node(ino) {
            Ok(Node::Tree(Tree::Live, i)) => self.volume.release_file(i).map_err(errno),
            _ => Ok(()),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        log::debug!("fsyncdir {} datasync={datasync}", ino.0);
        match self.node(ino) {
            Ok(Node::Tree(Tree::Live, _)) => self.fsync_reply(reply),
            _ => reply.ok(),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.volume.statfs();
        reply.statfs(
            s.blocks,
            s.blocks_free,
            s.blocks_free,
            s.files,
            s.files_free,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        log::debug!(
            "setxattr {} {name:?} {} bytes flags={flags}",
            ino.0,
            value.len()
        );
        let result = if position != 0 {
            Err(Errno::EINVAL)
        } else {
            self.do_setxattr(req, ino, name.as_bytes(), value, flags as u32)
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        log::trace!("getxattr {} {name:?} size={size}", ino.0);
        let result = match self.node(ino) {
            Ok(Node::Tree(tree, i)) => self
                .volume
                .getxattr(tree.view(), i, name.as_bytes())
                .map_err(errno),
            Ok(Node::SnapshotDir) => Err(Errno::ENODATA),
            Err(e) => Err(e),
        };
        match result {
            Ok(v) => Self::reply_xattr(reply, size, &v),
            Err(e) => reply.error(self.on_inode(e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        log::trace!("listxattr {} size={size}", ino.0);
        let result = match self.node(ino) {
            Ok(Node::Tree(tree, i)) => self.volume.listxattr(tree.view(), i).map_err(errno),
            Ok(Node::SnapshotDir) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        match result {
            Ok(names) => {
                let mut out = Vec::new();
                // Like ext4: trusted.* is listed only to root.
                for n in names {
                    if req.uid() == 0 || !n.starts_with(b"trusted.") {
                        out.extend_from_slice(&n);
                        out.push(0);
                    }
                }
                Self::reply_xattr(reply, size, &out);
            }
            Err(e) => reply.error(self.on_inode(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        log::debug!("removexattr {} {name:?}", ino.0);
        let result = self.live(ino).and_then(|i| {
            Self::check_xattr_name(name.as_bytes())?;
            self.volume.removexattr(i, name.as_bytes()).map_err(errno)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Only called without default_permissions, which twinfs always sets;
        // answer for existence and for writes into a read-only tree.
        log::trace!("access {} {mask:?}", ino.0);
        let result = self.node(ino).and_then(|n| {
            self.attr_of(n)?;
            match n {
                Node::Tree(Tree::Live, _) => Ok(()),
                _ if mask.contains(AccessFlags::W_OK) => Err(Errno::EROFS),
                _ => Ok(()),
            }
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.on_inode(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        log::debug!(
            "create {} {name:?} mode={mode:o} flags={flags:#x}",
            parent.0
        );
        let result = self
            .make_node(req, parent, name, FileKind::Regular, mode, umask, 0)
            .and_then(|a| {
                self.volume.open_file(a.ino).map_err(errno)?;
                file_attr_live(&a)
            });
        match result {
            Ok(attr) => {
                let fh = if is_sync(flags) { FH_SYNC } else { 0 };
                reply.created(
                    &self.ttl,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    self.open_flags(Tree::Live),
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        log::debug!("fallocate {} {offset}+{length} mode={mode:#x}", ino.0);
        let result = self.live(ino).and_then(|i| {
            self.volume
                .fallocate(i, offset, length, mode as u32)
                .map_err(errno)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        log::trace!("lseek {} {offset} whence={whence}", ino.0);
        match self.do_lseek(ino, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        log::debug!(
            "copy_file_range {} {offset_in} -> {} {offset_out} len={len}",
            ino_in.0,
            ino_out.0
        );
        let result = if flags.is_empty() {
            self.do_copy(ino_in, offset_in, ino_out, offset_out, len)
        } else {
            Err(Errno::EINVAL)
        };
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }
}

// ---- mounting --------------------------------------------------------------

/// Unmounts a mount from any thread (e.g. the one that handles SIGTERM).
#[derive(Clone, Debug)]
pub struct Unmounter {
    mountpoint: Arc<PathBuf>,
    finished: Arc<AtomicBool>,
}

impl Unmounter {
    fn new(mountpoint: PathBuf) -> Unmounter {
        Unmounter {
            mountpoint: Arc::new(mountpoint),
            finished: Arc::new(AtomicBool::new(false)),
        }
    }

    fn umount2(&self, flags: libc::c_int) -> io::Result<()> {
        if self.finished.load(Ordering::SeqCst) {
            return Ok(());
        }
        let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::umount2(path.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // Already unmounted (by `umount` or `fusermount -u`).
            Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
            _ => Err(err),
        }
    }

    /// Asks the kernel to unmount; fails with the OS error (EBUSY while
    /// something uses the mount). The kernel writes back what it caches first; the session then ends.
    pub fn unmount(&self) -> io::Result<()> {
        self.umount2(0)
    }

    /// Detaches the mount now; the session ends when the last user lets go.
    pub fn unmount_lazy(&self) -> io::Result<()> {
        self.umount2(libc::MNT_DETACH)
    }

    /// Whether the kernel still has the file system mounted.
    pub fn is_mounted(&self) -> bool {
        !self.finished.load(Ordering::SeqCst)
    }
}

/// A mounted twinfs. The session runs on its own threads until the kernel
/// unmounts it (by [`MountHandle::unmount`], `umount` or `fusermount -u`).
/// Dropping the handle unmounts (lazily if busy) and waits a bounded time.
/// After [`MountHandle::wait`] returns, no request is running: the caller
/// then calls `Volume::close` for the final CP.
pub struct MountHandle {
    unmounter: Unmounter,
    session: Option<JoinHandle<io::Result<()>>>,
    workers: Vec<JoinHandle<()>>,
    /// Unmounts should this process die (`auto_unmount`); let go once the
    /// session has ended.
    watchdog: Option<kernel_mount::Watchdog>,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle")
            .field("mountpoint", &self.unmounter.mountpoint)
            .field("mounted", &self.unmounter.is_mounted())
            .finish()
    }
}

impl MountHandle {
    /// The mount point (canonical path).
    pub fn mountpoint(&self) -> &Path {
        &self.unmounter.mountpoint
    }

    /// A cloneable, thread-safe way to unmount.
    pub fn unmounter(&self) -> Unmounter {
        self.unmounter.clone()
    }

    /// See [`Unmounter::unmount`].
    pub fn unmount(&self) -> io::Result<()> {
        self.unmounter.unmount()
    }

    /// Whether the kernel has unmounted and the session loop has ended.
    pub fn is_finished(&self) -> bool {
        !self.unmounter.is_mounted()
    }

    /// Blocks until the kernel has unmounted and every request is answered.
    pub fn wait(mut self) -> io::Result<()> {
        self.join()
    }

    fn join(&mut self) -> io::Result<()> {
        let result = match self.session.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the FUSE session thread panicked"))),
            None => Ok(()),
        };
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        drop(self.watchdog.take());
        result
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if self.session.is_none() {
            return;
        }
        if let Err(e) = self.unmounter.unmount() {
            let at = self.unmounter.mountpoint.display();
            log::warn!("unmounting {at}: {e}; detaching instead");
            if let Err(e) = self.unmounter.unmount_lazy() {
                log::error!("detaching {at}: {e}");
            }
        }
        let deadline = Instant::now() + DROP_WAIT;
        while self.unmounter.is_mounted() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.unmounter.is_mounted() {
            log::error!(
                "{} is still in use after {DROP_WAIT:?}; leaving its session running",
                self.unmounter.mountpoint.display()
            );
            // It still watches over the mount left running.
            std::mem::forget(self.watchdog.take());
            return;
        }
        if let Err(e) = self.join() {
            log::error!("FUSE session: {e}");
        }
    }
}

/// Mounts `volume` at `mountpoint` with options in FUSE spelling (see
/// [`MountConfig::options`]) and the default configuration otherwise.
pub fn mount<S: AsRef<str>>(
    volume: Arc<Volume>,
    mountpoint: &Path,
    options: &[S],
) -> io::Result<MountHandle> {
    mount_with(volume, mountpoint, MountConfig::with_options(options))
}

/// Mounts `volume` at `mountpoint`. Returns once the kernel has completed
/// the FUSE handshake, i.e. the mount is usable.
pub fn mount_with(
    volume: Arc<Volume>,
    mountpoint: &Path,
    mut cfg: MountConfig,
) -> io::Result<MountHandle> {
    let config = fuser_config(&mut cfg, volume.status().read_only)?;
    let mountpoint = mountpoint.canonicalize()?;
    let (tx, rx) = crossbeam_channel::bounded::<ReplyEmpty>(SYNC_QUEUE);
    let mut fs = TwinFs::new(volume.clone(), &cfg);
    fs.sync = Some(tx);
    log::info!(
        "mounting twinfs at {} with {:?}, {} threads",
        mountpoint.display(),
        config.mount_options,
        cfg.threads
    );
    let acl = config.acl;
    let unmounter = Unmounter::new(mountpoint.clone());
    let (session, watchdog) = match kernel_mount::mount(&mountpoint, &config.mount_options, acl)? {
        Some(own) => {
            let session = Session::from_fd(fs, own.fd, acl, config).inspect_err(|_| {
                // The kernel never got its answer to INIT: take the mount away.
                let _ = unmounter.unmount_lazy();
            })?;
            (session, own.watchdog)
        }
        None => (Session::new(fs, &mountpoint, &config)?, None),
    };
    let workers = (0..SYNC_WORKERS)
        .map(|i| {
            let rx = rx.clone();
            let volume = volume.clone();
            std::thread::Builder::new()
                .name(format!("twinfs-fsync-{i}"))
                .spawn(move || sync_worker(&volume, &rx))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let done = unmounter.finished.clone();
    let session = std::thread::Builder::new()
        .name("twinfs-fuse".into())
        .spawn(move || {
            let r = match session.run() {
                // The kernel ended the connection (after a lazy unmount it says so this way).
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
                r => r,
            };
            done.store(true, Ordering::SeqCst);
            match &r {
                Ok(()) => log::info!("FUSE session ended: unmounted"),
                Err(e) => log::error!("FUSE session ended: {e}"),
            }
            r
        })?;
    raise_read_ahead(&mountpoint);
    Ok(MountHandle {
        unmounter,
        session: Some(session),
        workers,
        watchdog,
    })
}

/// Sets the mount's readahead to [`READ_AHEAD_KB`] through sysfs, where only
/// root may write; elsewhere reads keep the kernel's window and work as well,
/// only slower. The session must be running: the `stat` is a FUSE request.
fn raise_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) => m.dev(),
        Err(e) => {
            log::warn!("stat {}: {e}; readahead left as is", mountpoint.display());
            return;
        }
    };
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    match std::fs::write(&knob, READ_AHEAD_KB.to_string()) {
        Ok(()) => log::debug!("{knob}: {READ_AHEAD_KB}"),
        Err(e) => log::info!(
            "raising readahead to {READ_AHEAD_KB} KiB ({knob}): {e}; \
             large sequential reads will be slower (the kernel's window is 128 KiB)"
        ),
    }
}

/// Answers fsyncs: everything queued when a volume fsync starts is covered by it.
fn sync_worker(volume: &Volume, rx: &crossbeam_channel::Receiver<ReplyEmpty>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < SYNC_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match volume.fsync() {
            Ok(()) => batch.into_iter().for_each(ReplyEmpty::ok),
            Err(e) => {
                let e = errno(e);
                batch.into_iter().for_each(|r| r.error(e));
            }
        }
    }
}

// ---- POSIX ACLs ------------------------------------------------------------

/// POSIX ACLs in the kernel's xattr format (`posix_acl_xattr_header` then
/// `posix_acl_xattr_entry`s: tag u16, perm u16, id u32, little endian), and
/// the mode rules of Linux's fs/posix_acl.c.
pub mod acl {
    use crate::error::FsError;

    /// The access ACL's xattr name.
    pub const ACCESS: &[u8] = b"system.posix_acl_access";
    /// The default ACL's xattr name (directories only).
    pub const DEFAULT: &[u8] = b"system.posix_acl_default";

    const VERSION: u32 = 2;
    const HEADER_BYTES: usize = 4;
    const ENTRY_BYTES: usize = 8;
    const UNDEFINED_ID: u32 = u32::MAX;

    pub const USER_OBJ: u16 = 0x01;
    pub const USER: u16 = 0x02;
    pub const GROUP_OBJ: u16 = 0x04;
    pub const GROUP: u16 = 0x08;
    pub const MASK: u16 = 0x10;
    pub const OTHER: u16 = 0x20;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Entry {
        pub tag: u16,
        pub perm: u16,
        pub id: u32,
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Acl {
        pub entries: Vec<Entry>,
    }

    /// What a new inode inherits from its directory's default ACL.
    #[derive(Default)]
    pub struct Inherited {
        pub access: Option<Vec<u8>>,
        pub default: Option<Vec<u8>>,
    }

    impl Inherited {
        pub fn is_empty(&self) -> bool {
            self.access.is_none() && self.default.is_none()
        }
    }

    impl Acl {
        /// Parses and checks an ACL xattr value.
        pub fn decode(b: &[u8]) -> Result<Acl, FsError> {
            let bad = FsError::Invalid("malformed POSIX ACL");
            if b.len() < HEADER_BYTES
                || !b[HEADER_BYTES..]
                    .chunks_exact(ENTRY_BYTES)
                    .remainder()
                    .is_empty()
            {
                return Err(bad);
            }
            if u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != VERSION {
                return Err(FsError::NotSupported("POSIX ACL xattr version"));
            }
            let entries: Vec<Entry> = b[HEADER_BYTES..]
                .chunks_exact(ENTRY_BYTES)
                .map(|e| Entry {
                    tag: u16::from_le_bytes([e[0], e[1]]),
                    perm: u16::from_le_bytes([e[2], e[3]]),
                    id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                })
                .collect();
            let count = |t| entries.iter().filter(|e| e.tag == t).count();
            let known = [USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER];
            if entries
                .iter()
                .any(|e| !known.contains(&e.tag) || e.perm & !7 != 0)
                || count(USER_OBJ) != 1
                || count(GROUP_OBJ) != 1
                || count(OTHER) != 1
                || count(MASK) > 1
                || (count(MASK) == 0 && count(USER) + count(GROUP) > 0)
            {
                return Err(bad);
            }
            Ok(Acl { entries })
        }

        pub fn encode(&self) -> Vec<u8> {
            let mut out = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES * self.entries.len());
            out.extend_from_slice(&VERSION.to_le_bytes());
            for e in &self.entries {
                out.extend_from_slice(&e.tag.to_le_bytes());
                out.extend_from_slice(&e.perm.to_le_bytes());
                let id = match e.tag {
                    USER | GROUP => e.id,
                    _ => UNDEFINED_ID,
                };
                out.extend_from_slice(&id.to_le_bytes());
            }
            out
        }

        fn perm_of(&self, tag: u16) -> Option<u32> {
            self.entries
                .iter()
                .find(|e| e.tag == tag)
                .map(|e| u32::from(e.perm))
        }

        fn set(&mut self, tag: u16, perm: u32) {
            if let Some(e) = self.entries.iter_mut().find(|e| e.tag == tag) {
                e.perm = (perm & 7) as u16;
            }
        }

        /// `posix_acl_equiv_mode`: the rwx bits the ACL gives the mode, and
        /// whether the ACL says no more than those bits.
        pub fn mode(&self) -> (u32, bool) {
            let owner = self.perm_of(USER_OBJ).unwrap_or(0);
            let group = self
                .perm_of(MASK)
                .or_else(|| self.perm_of(GROUP_OBJ))
                .unwrap_or(0);
            let other = self.perm_of(OTHER).unwrap_or(0);
            let equivalent = self
                .entries
                .iter()
                .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER));
            (owner << 6 | group << 3 | other, equivalent)
        }

        /// `posix_acl_chmod`: the entries the mode bits stand for take `mode`'s bits.
        pub fn chmod(&mut self, mode: u32) {
            self.set(USER_OBJ, mode >> 6);
            if self.perm_of(MASK).is_some() {
                self.set(MASK, mode >> 3);
            } else {
                self.set(GROUP_OBJ, mode >> 3);
            }
            self.set(OTHER, mode);
        }

        /// `posix_acl_create_masq`: an inherited ACL is limited by the
        /// creation mode, and the mode by the ACL. Returns the new mode
        /// (special bits kept) and whether the ACL says no more than it.
        pub fn create_masq(&mut self, mode: u32) -> (u32, bool) {
            let mut m = mode & 0o777;
            let mut equivalent = true;
            let has_mask = self.perm_of(MASK).is_some();
            for e in &mut self.entries {
                let p = u32::from(e.perm);
                match e.tag {
                    USER_OBJ => {
                        let np = p & (m >> 6);
                        e.perm = np as u16;
                        m &= (np << 6) | !0o700;
                    }
                    OTHER => {
                        let np = p & m;
                        e.perm = np as u16;
                        m &= np | !0o007;
                    }
                    USER | GROUP => equivalent = false,
                    MASK => equivalent = false,
                    _ => {}
                }
            }
            let group_tag = if has_mask { MASK } else { GROUP_OBJ };
            if let Some(e) = self.entries.iter_mut().find(|e| e.tag == group_tag) {
                let np = u32::from(e.perm) & ((m >> 3) & 7);
                e.perm = np as u16;
                m &= (np << 3) | !0o070;
            }
            ((mode & !0o777) | (m & 0o777), equivalent)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn acl(entries: &[(u16, u16, u32)]) -> Acl {
            Acl {
                entries: entries
                    .iter()
                    .map(|&(tag, perm, id)| Entry { tag, perm, id })
                    .collect(),
            }
        }

        #[test]
        fn round_trips_and_gives_the_mode_from_the_mask() {
            let a = acl(&[
                (USER_OBJ, 6, UNDEFINED_ID),
                (USER, 7, 1000),
                (GROUP_OBJ, 4, UNDEFINED_ID),
                (MASK, 5, UNDEFINED_ID),
                (OTHER, 0, UNDEFINED_ID),
            ]);
            assert_eq!(Acl::decode(&a.encode()).unwrap(), a);
            assert_eq!(a.mode(), (0o650, false));
        }

        #[test]
        fn chmod_sets_the_mask_not_the_owning_group() {
            let mut a = acl(&[
                (USER_OBJ, 6, UNDEFINED_ID),
                (USER, 7, 1000),
                (GROUP_OBJ, 4, UNDEFINED_ID),
                (MASK, 7, UNDEFINED_ID),
                (OTHER, 4, UNDEFINED_ID),
            ]);
            a.chmod(0o640);
            assert_eq!(a.mode(), (0o640, false));
            assert_eq!(a.perm_of(GROUP_OBJ), Some(4));
        }

        #[test]
        fn create_masq_limits_both_ways() {
            let mut a = acl(&[
                (USER_OBJ, 7, UNDEFINED_ID),
                (GROUP_OBJ, 5, UNDEFINED_ID),
                (OTHER, 5, UNDEFINED_ID),
            ]);
            assert_eq!(a.create_masq(0o2666), (0o2644, true));
            let mut b = acl(&[
                (USER_OBJ, 7, UNDEFINED_ID),
                (USER, 7, 1000),
                (GROUP_OBJ, 5, UNDEFINED_ID),
                (MASK, 7, UNDEFINED_ID),
                (OTHER, 0, UNDEFINED_ID),
            ]);
            assert_eq!(b.create_masq(0o666), (0o660, false));
            assert_eq!(b.perm_of(MASK), Some(6));
        }

        #[test]
        fn rejects_malformed_values() {
            assert!(Acl::decode(b"\x02\0\0").is_err());
            assert!(Acl::decode(&acl(&[(USER_OBJ, 7, 0)]).encode()).is_err());
            let no_mask = acl(&[
                (USER_OBJ, 7, 0),
                (USER, 7, 5),
                (GROUP_OBJ, 5, 0),
                (OTHER, 5, 0),
            ]);
            assert!(Acl::decode(&no_mask.encode()).is_err());
        }
    }
}
