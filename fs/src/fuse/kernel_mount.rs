//! Mounting with mount(2) on a `/dev/fuse` descriptor of our own, so that
//! nothing ever unmounts by path when a session ends.
//!
//! fuser's own mount unmounts its mount point when its session ends, unless
//! its descriptor already reads as disconnected. A session detached with
//! `umount -l` and ending later (its last user let go) can pass that check
//! (it ends on the kernel's DESTROY, just before the kernel disconnects), and
//! then unmounts whatever is mounted on the path by then: the replica view
//! that a switchover mounted where the read-write mount was. A session made
//! from our descriptor ([`fuser::Session::from_fd`]) has no mount to undo;
//! unmounting is [`super::Unmounter`]'s job alone, and only ever on request.
//!
//! Only root may call mount(2) for FUSE; other users go through
//! `fusermount3` (fuser's mount), as does `auto_unmount`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use fuser::{MountOption, SessionACL};

/// Mounts a FUSE file system of type `fuse.twinfs` at `mountpoint` with
/// `options` and returns the descriptor to serve it on; `None` when this
/// process may not mount by itself (not root, or `auto_unmount` asked for).
pub fn mount(
    mountpoint: &Path,
    options: &[MountOption],
    acl: SessionACL,
) -> io::Result<Option<OwnedFd>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || options.contains(&MountOption::AutoUnmount) {
        return Ok(None);
    }
    let rootmode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let dev: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/fuse: {e}")))?
        .into();
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode={rootmode:o},user_id={uid},group_id={gid}",
        dev.as_raw_fd()
    );
    let mut flags: libc::c_ulong = 0;
    let mut source = "twinfs".to_string();
    if !options.contains(&MountOption::Dev) {
        flags |= libc::MS_NODEV;
    }
    if !options.contains(&MountOption::Suid) {
        flags |= libc::MS_NOSUID;
    }
    for o in options {
        match o {
            MountOption::DefaultPermissions => data.push_str(",default_permissions"),
            MountOption::RO => flags |= libc::MS_RDONLY,
            MountOption::NoExec => flags |= libc::MS_NOEXEC,
            MountOption::NoAtime => flags |= libc::MS_NOATIME,
            MountOption::Sync => flags |= libc::MS_SYNCHRONOUS,
            MountOption::DirSync => flags |= libc::MS_DIRSYNC,
            MountOption::FSName(name) => source = name.clone(),
            // The type below carries the subtype; the rest are defaults.
            _ => {}
        }
    }
    if acl != SessionACL::Owner {
        // fuser's session checks allow_root itself.
        data.push_str(",allow_other");
    }
    let c = |s: &[u8]| {
        CString::new(s)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a mount argument"))
    };
    let (source, target, fstype, data) = (
        c(source.as_bytes())?,
        c(mountpoint.as_os_str().as_bytes())?,
        c(b"fuse.twinfs")?,
        c(data.as_bytes())?,
    );
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(dev))
}
