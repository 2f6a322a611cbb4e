//! `DIR/state`, `DIR/lock`, and the small durable-file helpers the peer uses.
//!
//! The state file holds what the peer must remember that its image and log
//! store cannot tell: the volume it is bound to (recorded before anything of
//! that volume is stored, so that a second volume can never mix into the
//! directory), whether the directory was promoted, the directory's own
//! random ID (which lets a source recognise a directory restored from an
//! older copy), the last source it refused for a diverged history, and a
//! roll-back that `twinfs failback` began. It is JSON:
//!
//! ```json
//! {"format": 1, "volume_uuid": "00112233445566778899aabbccddeeff", "promoted": false,
//!  "peer_id": "0123456789abcdef", "divergence": null, "rollback": null}
//! ```
//!
//! It is replaced atomically: written to `state.tmp`, fsync'ed, renamed over
//! `state`, and the directory fsync'ed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{parse_hex, PeerError, Result, LOCK_FILE, STATE_FILE};
use crate::history::DivergenceReport;

/// Version of the state file's format.
pub const STATE_FORMAT: u32 = 1;

/// Largest state file read (a few KiB at most; anything larger is not ours).
const MAX_STATE_BYTES: u64 = 64 * 1024;

/// What `DIR/state` records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerState {
    /// The volume this directory mirrors; `None` until the first source is accepted.
    pub volume_uuid: Option<[u8; 16]>,
    /// `twinfs promote` turned the mirror into a read-write volume: the daemon
    /// must not apply anything more to it.
    pub promoted: bool,
    /// The directory's random ID (0 until first stored).
    pub peer_id: u64,
    /// The last source refused for a history that does not extend this
    /// replica's; kept until `twinfs resolve` clears it.
    pub divergence: Option<DivergenceReport>,
    /// The superblock `twinfs failback` rolls the mirror back to; set until
    /// the roll-back is durable (the daemon finishes it if failback was
    /// interrupted).
    pub rollback: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct StateJson {
    format: u32,
    volume_uuid: Option<String>,
    promoted: bool,
    #[serde(default)]
    peer_id: Option<String>,
    #[serde(default)]
    divergence: Option<DivergenceReport>,
    #[serde(default)]
    rollback: Option<String>,
}

impl PeerState {
    /// Reads `DIR/state`; a missing file is a fresh, unbound state.
    pub fn load(dir: &Path) -> Result<PeerState> {
        let path = dir.join(STATE_FILE);
        let bad = |problem: String| PeerError::Dir {
            dir: dir.to_path_buf(),
            problem: format!("{}: {problem}", path.display()),
        };
        let bytes = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PeerState::default()),
            Err(e) => return Err(PeerError::io(format!("reading {}", path.display()), e)),
            Ok(m) if m.len() > MAX_STATE_BYTES => {
                return Err(bad("too large to be a twinfs peer state file".into()))
            }
            Ok(_) => std::fs::read(&path)
                .map_err(|e| PeerError::io(format!("reading {}", path.display()), e))?,
        };
        let json: StateJson = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!(
                "not a twinfs peer state file ({e}); is --dir the right directory?"
            ))
        })?;
        if json.format != STATE_FORMAT {
            return Err(bad(format!(
                "state format {} is not the {STATE_FORMAT} this twinfs reads",
                json.format
            )));
        }
        let volume_uuid = match json.volume_uuid {
            None => None,
            Some(h) => Some(
                parse_hex::<16>(&h)
                    .ok_or_else(|| bad(format!("volume_uuid {h:?} is not 32 hex digits")))?,
            ),
        };
        let peer_id = match json.peer_id {
            None => 0,
            Some(h) => u64::from_be_bytes(
                parse_hex::<8>(&h)
                    .ok_or_else(|| bad(format!("peer_id {h:?} is not 16 hex digits")))?,
            ),
        };
        let rollback = match json.rollback {
            None => None,
            Some(h) => Some(
                parse_hex::<{ twinfs_fs::BLOCK_SIZE }>(&h)
                    .ok_or_else(|| bad("rollback is not a hex superblock".into()))?
                    .to_vec(),
            ),
        };
        Ok(PeerState {
            volume_uuid,
            promoted: json.promoted,
            peer_id,
            divergence: json.divergence,
            rollback,
        })
    }

    /// Gives the directory its random ID if it has none yet (stored by the
    /// caller's next [`PeerState::store`]); returns whether it did.
    pub fn ensure_peer_id(&mut self) -> bool {
        if self.peer_id != 0 {
            return false;
        }
        self.peer_id = twinfs_fs::lineage::random_generation_id().0;
        true
    }

    /// Replaces `DIR/state` atomically and durably.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let json = StateJson {
            format: STATE_FORMAT,
            volume_uuid: self.volume_uuid.map(|u| twinfs_fs::hex(&u)),
            promoted: self.promoted,
            peer_id: (self.peer_id != 0).then(|| format!("{:016x}", self.peer_id)),
            divergence: self.divergence.clone(),
            rollback: self.rollback.as_deref().map(twinfs_fs::hex),
        };
        let mut bytes = serde_json::to_vec_pretty(&json).expect("the state always serializes");
        bytes.push(b'\n');
        write_atomic(&dir.join(STATE_FILE), &bytes, true)
    }
}

/// Writes `bytes` to `path` through `path.tmp` and a rename, so that readers
/// see the old or the new content whole. With `durable`, the file and the
/// directory are fsync'ed so the new content survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let tmp = tmp_path(path);
    let io = |what: &str, e| PeerError::io(format!("{what} {}", tmp.display()), e);
    let mut f = private_file(OpenOptions::new().write(true).create(true).truncate(true))
        .open(&tmp)
        .map_err(|e| io("creating", e))?;
    keep_private(&f, &tmp)?;
    f.write_all(bytes).map_err(|e| io("writing", e))?;
    if durable {
        f.sync_all().map_err(|e| io("syncing", e))?;
    }
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        PeerError::io(
            format!("renaming {} to {}", tmp.display(), path.display()),
            e,
        )
    })?;
    if durable {
        if let Some(parent) = path.parent() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PeerError::io(format!("syncing directory {}", dir.display()), e))
}

/// An exclusive `flock` on `DIR/lock`: one daemon (or promote) per directory.
/// Released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock, or fails at once naming who presumably holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let file = open_lock_file(dir)?;
        if flock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
            Ok(DirLock { _file: file })
        } else {
            Err(PeerError::Dir {
                dir: dir.to_path_buf(),
                problem:
                    "it is in use by another twinfs peer daemon or promote; stop that process first"
                        .into(),
            })
        }
    }

    /// Whether some process holds the lock now (the daemon is running).
    pub fn is_held(dir: &Path) -> bool {
        let Ok(file) = OpenOptions::new().read(true).open(dir.join(LOCK_FILE)) else {
            return false;
        };
        matches!(flock(&file, libc::LOCK_SH | libc::LOCK_NB), Ok(false))
    }
}

fn open_lock_file(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = private_file(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
    )
    .open(&path)
    .map_err(|e| PeerError::io(format!("opening {}", path.display()), e))?;
    keep_private(&file, &path)?;
    Ok(file)
}

/// `flock(2)`; `Ok(false)` when another process holds a conflicting lock.
fn flock(file: &File, op: libc::c_int) -> Result<bool> {
    // SAFETY: flock on a valid, owned file descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(PeerError::io("locking the peer directory", err))
    }
}

/// Mode of the peer directory and of every directory in it: the replica is
/// the volume's data, for root (or the daemon's user) only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file in the peer directory.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode 0700 if needed, and takes
/// the group's and others' permissions from an existing one.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|e| PeerError::io(format!("creating directory {}", dir.display()), e))?;
    let meta = std::fs::metadata(dir)
        .map_err(|e| PeerError::io(format!("reading directory {}", dir.display()), e))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        log::info!(
            "{}: mode {:o} let other users in; setting it to {PRIVATE_DIR_MODE:o}",
            dir.display(),
            mode & 0o777
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(|e| PeerError::io(format!("chmod 700 {}", dir.display()), e))?;
    }
    Ok(())
}

/// `opts` creating files with mode 0600.
pub fn private_file(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts.mode(PRIVATE_FILE_MODE)
}

/// Takes the group's and others' permissions from an open file of the peer
/// directory (one created by an older twinfs, or copied in).
pub fn keep_private(file: &File, path: &Path) -> Result<()> {
    let meta = file
        .metadata()
        .map_err(|e| PeerError::io(format!("reading {}", path.display()), e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))
            .map_err(|e| PeerError::io(format!("chmod 600 {}", path.display()), e))?;
    }
    Ok(())
}
