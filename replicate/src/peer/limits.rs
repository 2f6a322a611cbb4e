//! What the peer allows an authenticated source: the largest volume, and how
//! much its log store may hold. A source over a limit is refused with a
//! reason naming the limit and the option that sets it; nothing is allocated
//! or written for it first.
//!
//! - **Volume size** (`--max-volume`): the source announces its volume's size
//!   in the handshake. Without the option, a directory that holds a CP accepts
//!   exactly that CP's size (what it first bound to), and an empty directory
//!   accepts at most the size of the file system holding it. Block addresses
//!   and superblocks beyond the size admitted end the session, so the mirror
//!   image never grows past it and the allocation map the peer reads is never
//!   larger than that volume's.
//! - **Log store** (`--log-quota`): transfers not yet covered by an applied CP
//!   stay in the log store; one that would take it past the quota ends the
//!   session. The source then reconnects and brings the peer up to date with
//!   a CP first, which releases what that CP covers. A source never needs more
//!   than its log region holds between two CPs (at most 512 MiB by default),
//!   so the default leaves a wide margin.
//! - **Journal**: a CP may stage each block at most once (see `journal`), so
//!   the journal never holds more than the volume's blocks.

use std::path::Path;

use twinfs_fs::BLOCK_SIZE_U64;

use super::logstore::SEGMENT_TARGET_BYTES;

/// Default `--log-quota`.
pub const DEFAULT_LOG_QUOTA_BYTES: u64 = 4 << 30;
/// Smallest `--log-quota`: two segments (whole segments are released, so a
/// segment's covered transfers may stay until its last one is covered).
pub const MIN_LOG_QUOTA_BYTES: u64 = 2 * SEGMENT_TARGET_BYTES;

/// The limits of one peer directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLimits {
    /// Largest volume accepted, in bytes (`--max-volume`); `None`: the size of
    /// the volume the directory holds, or the file system's size while empty.
    pub max_volume_bytes: Option<u64>,
    /// Most bytes the log store may hold (`--log-quota`).
    pub log_quota_bytes: u64,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            max_volume_bytes: None,
            log_quota_bytes: DEFAULT_LOG_QUOTA_BYTES,
        }
    }
}

impl PeerLimits {
    /// Checks the announced size of a source's volume (`announced_blocks`)
    /// against the limits of `dir`, whose mirror holds a CP of
    /// `committed_blocks` blocks if any. The error is the reason to refuse.
    pub fn check_volume(
        &self,
        dir: &Path,
        committed_blocks: Option<u64>,
        announced_blocks: u64,
    ) -> Result<(), String> {
        let bytes = |blocks: u64| blocks.saturating_mul(BLOCK_SIZE_U64);
        if let Some(max) = self.max_volume_bytes {
            if bytes(announced_blocks) > max {
                return Err(format!(
                    "the source's volume has {} bytes, more than this peer's --max-volume of {max} bytes; raise --max-volume on the peer to mirror it",
                    bytes(announced_blocks)
                ));
            }
        }
        match committed_blocks {
            Some(held) if held != announced_blocks => Err(format!(
                "the source's volume has {announced_blocks} blocks, the mirror in {} holds a volume of {held} blocks; a volume's size never changes: this is another volume's mirror or a damaged one",
                dir.display()
            )),
            Some(_) => Ok(()),
            None if self.max_volume_bytes.is_some() => Ok(()),
            None => {
                let fs = filesystem_bytes(dir).ok_or_else(|| {
                    format!(
                        "cannot tell the size of the file system holding {}; give the peer --max-volume",
                        dir.display()
                    )
                })?;
                if bytes(announced_blocks) > fs {
                    return Err(format!(
                        "the source's volume has {} bytes, more than the {fs} bytes of the file system holding {}; give the peer a larger disk, or --max-volume to accept it anyway",
                        bytes(announced_blocks),
                        dir.display()
                    ));
                }
                Ok(())
            }
        }
    }

    /// Checks that the log store, holding `held` bytes, may take a record of
    /// `incoming` bytes more. The error says which quota and what to do.
    pub fn check_log_quota(&self, held: u64, incoming: u64) -> Result<(), String> {
        if held.saturating_add(incoming) > self.log_quota_bytes {
            return Err(format!(
                "the log store holds {held} bytes of transfers that no applied CP covers yet, and one of {incoming} bytes more would pass its quota of {} bytes (--log-quota); the source reconnects and sends a CP first, which releases them",
                self.log_quota_bytes
            ));
        }
        Ok(())
    }
}

/// Size of the file system holding `dir`, in bytes.
fn filesystem_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data, valid when zeroed.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_blocks as u64).saturating_mul(st.f_frsize as u64))
}
