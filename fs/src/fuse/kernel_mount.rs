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
//! `fusermount3` (fuser's mount). `auto_unmount` on a mount of our own is a
//! [`Watchdog`] of our own: fusermount3's, once its daemon died, unmounts
//! whatever FUSE mount of the same type is on the path by then, which may be
//! a replica view mounted there since.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use fuser::{MountOption, SessionACL};

/// A mount made here: the descriptor to serve it on, and its watchdog when
/// `auto_unmount` was asked for.
pub struct OwnMount {
    pub fd: OwnedFd,
    pub watchdog: Option<Watchdog>,
}

/// Mounts a FUSE file system of type `fuse.twinfs` at `mountpoint` with
/// `options`; `None` when this process may not mount by itself (not root).
pub fn mount(
    mountpoint: &Path,
    options: &[MountOption],
    acl: SessionACL,
) -> io::Result<Option<OwnMount>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
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
    let watchdog = if options.contains(&MountOption::AutoUnmount) {
        Some(Watchdog::start(target.clone()).inspect_err(|_| {
            // SAFETY: `target` is a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        })?)
    } else {
        None
    };
    Ok(Some(OwnMount { fd: dev, watchdog }))
}

/// The process name (`/proc/PID/comm`) of a [`Watchdog`].
pub const WATCHDOG_NAME: &CStr = c"twinfs-watchdog";

/// A child process that detaches the mount once this process is gone
/// (`auto_unmount`): it waits for the end of a pipe only this process
/// writes to, which the kernel closes when the process dies however it
/// dies. It then detaches the mount point only if what is mounted there
/// answers "not connected" (or "connection aborted"), a FUSE mount whose
/// daemon is gone: never a live mount made there since. Dropping the
/// watchdog (after a clean unmount) lets the child go and reaps it.
pub struct Watchdog {
    pid: libc::pid_t,
    /// The write end; the child sees its end when this closes.
    pipe: Option<OwnedFd>,
}

impl Watchdog {
    fn start(mountpoint: CString) -> io::Result<Watchdog> {
        let mut ends = [0 as libc::c_int; 2];
        // SAFETY: `ends` has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        let dev_null = c"/dev/null";
        let root = c"/";
        // SAFETY: fork has no preconditions; the child only makes
        // async-signal-safe calls (no allocation, no locks) and ends in _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: raw system calls on descriptors and NUL-terminated
            // strings prepared before the fork.
            unsafe { watch(read_end.as_raw_fd(), &mountpoint, dev_null, root) }
        }
        drop(read_end);
        Ok(Watchdog {
            pid,
            pipe: Some(write_end),
        })
    }
}

/// The watchdog child: never returns.
///
/// # Safety
///
/// Only in a child just forked; `pipe` is the read end of the watch pipe.
unsafe fn watch(pipe: libc::c_int, mountpoint: &CString, dev_null: &CStr, root: &CStr) -> ! {
    // Out of the daemon's session, its terminal's signals and its directory;
    // nothing of the daemon's held open (not /dev/fuse, not its sockets,
    // not its caller's pipes) but the watch pipe.
    libc::setsid();
    // Its command line is the daemon's; its name tells it apart in ps.
    libc::prctl(libc::PR_SET_NAME, WATCHDOG_NAME.as_ptr());
    libc::chdir(root.as_ptr());
    libc::dup2(pipe, 0);
    let null = libc::open(dev_null.as_ptr(), libc::O_RDWR);
    if null >= 0 {
        libc::dup2(null, 1);
        libc::dup2(null, 2);
    }
    if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
        for fd in 3..4096 {
            libc::close(fd);
        }
    }
    let mut byte = 0u8;
    loop {
        let n = libc::read(0, (&raw mut byte).cast(), 1);
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        break;
    }
    // Opening the directory asks its daemon (a stat could be answered from
    // the kernel's attribute cache).
    let dir = libc::open(
        mountpoint.as_ptr(),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
    );
    // ECONNABORTED: the request was queued before the dying daemon's FUSE
    // descriptor closed (its pipe may close first).
    if dir >= 0 {
        libc::close(dir);
    } else if matches!(
        *libc::__errno_location(),
        libc::ENOTCONN | libc::ECONNABORTED
    ) {
        libc::umount2(mountpoint.as_ptr(), libc::MNT_DETACH);
    }
    libc::_exit(0)
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.pipe.take());
        // The child exits at once; do not wait on it for long.
        for _ in 0..100 {
            let mut status = 0;
            // SAFETY: waitpid on our own child, with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r != 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}
