//! Process plumbing shared by the long-running commands (`mount`, `peer`):
//! going to the background once ready, and turning SIGTERM/SIGINT/SIGHUP
//! into a clean stop on a thread of our own, and the allocator settings
//! for moving gigabytes through a daemon.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use crate::error::CmdError;

/// Heap memory glibc keeps free before handing it back to the kernel.
const MALLOC_TRIM_THRESHOLD_BYTES: libc::c_int = 32 << 20;
/// Smallest allocation glibc serves with its own mmap. Above the 4 MiB
/// frames, which should be reused, and below the FUSE request buffers
/// (16 MiB and a page, one per FUSE thread): from their own mmap those stay
/// untouched pages until used (from the arenas, calloc may zero, and so
/// make resident, all of each: the likely reason for the difference). Peak
/// RSS of an async-mode mount over a 4 GiB copy: 245-275 MiB at 32 MiB,
/// 216-232 MiB at 16 MiB.
const MALLOC_MMAP_THRESHOLD_BYTES: libc::c_int = 16 << 20;

/// Keeps freed heap memory for reuse instead of returning it at once. A frame
/// of 1,024 blocks is decoded on one thread and freed on another; with
/// glibc's defaults each frame's 4 MiB went back to the kernel and was
/// faulted in and zeroed again for the next (a sixth of the peer's CPU
/// during a resync). Peak memory stays what the queues bound; at most
/// `MALLOC_TRIM_THRESHOLD_BYTES` per arena stays free on top of it.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before the
    // daemon starts its threads.
    unsafe {
        if libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES) == 0
            || libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES) == 0
        {
            log::info!("the allocator refused its settings: defaults stay (more page faults)");
        }
    }
}

/// The child's end of the readiness pipe: say "ready" or why not.
pub struct Ready {
    pipe: Option<std::fs::File>,
}

impl Ready {
    /// A foreground process: nothing to report to.
    pub fn foreground() -> Ready {
        Ready { pipe: None }
    }

    /// Tells the waiting parent that the service is up; it exits 0.
    pub fn ok(&mut self) {
        self.ok_with_warnings(&[]);
    }

    /// Like [`Ready::ok`], and the parent prints each warning on stderr
    /// (in the foreground they go to stderr at once): what the user must
    /// know before the service disappears into the background.
    pub fn ok_with_warnings(&mut self, warnings: &[String]) {
        match self.pipe.take() {
            Some(mut p) => {
                let mut msg = String::from("OK\n");
                // Warnings logged while starting (peer unusable, degraded,
                // refused, hash mismatch, disk errors): the log of a
                // background daemon is not where a user looks first.
                let logged = crate::logging::take_startup_warnings();
                for w in warnings.iter().chain(&logged) {
                    msg.push_str(&w.replace('\n', " "));
                    msg.push('\n');
                }
                let _ = p.write_all(msg.as_bytes());
            }
            None => {
                for w in warnings {
                    eprintln!("twinfs: warning: {w}");
                }
            }
        }
    }

    /// Tells the waiting parent why we failed; it prints that and exits 1.
    pub fn fail(&mut self, e: &CmdError) {
        if let Some(mut p) = self.pipe.take() {
            log::error!("{}", e.one_line());
            let _ = crate::logging::take_startup_warnings();
            let _ = p.write_all(e.one_line().as_bytes());
        }
    }
}

/// Forks. The parent waits until the child reports readiness and then
/// exits (0 when ready, 1 with the child's message otherwise); only the
/// child returns. Must be called before any thread is started.
pub fn background(what: &str) -> Result<Ready, CmdError> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two valid descriptors into fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(CmdError::failed(
            what,
            std::io::Error::last_os_error(),
            "try again with -f",
        ));
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread runs yet, so the child is a faithful copy.
    match unsafe { libc::fork() } {
        -1 => Err(CmdError::failed(
            what,
            std::io::Error::last_os_error(),
            "try again with -f",
        )),
        0 => {
            drop(read_end);
            // SAFETY: setsid has no preconditions; the child leaves the terminal's session.
            unsafe { libc::setsid() };
            // Helpers we start (fusermount3 for auto_unmount) must not hold
            // our caller's pipes open; errors travel through the ready pipe.
            detach_stdio();
            crate::logging::to_background();
            Ok(Ready {
                pipe: Some(std::fs::File::from(write_end)),
            })
        }
        child => {
            drop(write_end);
            let mut msg = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut msg);
            if let Some(rest) = msg.strip_prefix("OK\n") {
                for w in rest.lines().filter(|l| !l.is_empty()) {
                    eprintln!("twinfs: warning: {w}");
                }
                std::process::exit(0);
            }
            // A failed start leaves nothing running once we return.
            reap(child, std::time::Duration::from_secs(10));
            let msg = msg.trim();
            if msg.is_empty() {
                eprintln!("twinfs: {what}: the background process died before it was ready; run with -f to see why");
            } else {
                eprintln!("twinfs: {msg}");
            }
            std::process::exit(1);
        }
    }
}

/// Waits up to `limit` for `child` to exit (it has said it failed and is
/// only unwinding), so that the caller can rely on it being gone.
fn reap(child: libc::pid_t, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if r != 0 || start.elapsed() >= limit {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Points stdin, stdout and stderr at /dev/null. A daemon that kept the
/// caller's stderr would hold its pipe open for as long as it runs, so
/// `out=$(twinfs mount IMG MP 2>&1)`, `| tee` or ssh would hang until
/// unmount, and a failure before "ready" would be printed twice (by the
/// parent, from the ready pipe, and by the child itself). The log goes to
/// the journal or syslog and `--log-file` instead (`crate::logging`).
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto the standard descriptors with a valid source fd.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread and every thread started
/// after it, and runs `on_signal` on a dedicated thread for each one that
/// arrives. Call before starting other threads.
pub fn on_termination(on_signal: impl Fn(i32) + Send + 'static) -> Result<(), CmdError> {
    // SAFETY: the sigset is initialised by sigemptyset before use; masks only
    // this thread (threads started later inherit it).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::Builder::new()
        .name("twinfs-signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: `set` is a valid, initialised signal set.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                on_signal(sig);
            }
        })
        .map_err(|e| CmdError::failed("starting the signal thread", e, "try again"))?;
    Ok(())
}

/// Tells systemd (a `Type=notify` service) that the service is usable, with
/// a status line for `systemctl status`. Does nothing outside systemd.
pub fn notify_ready(status: &str) {
    if let Err(e) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]) {
        log::warn!("telling systemd the service is ready: {e}");
    }
}

/// Tells systemd the service is stopping (unmounting, final CP).
pub fn notify_stopping() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        log::debug!("telling systemd the service stops: {e}");
    }
}
