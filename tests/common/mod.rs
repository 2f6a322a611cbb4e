//! Shared helpers of the end-to-end tests of the `twinfs` binary
//! (`tests/e2e_*.rs`): running the binary, volumes mounted in a temporary
//! directory with a guard that always unmounts and stops the daemon, and an
//! independent tree comparer ([`tree`]) written with std and libc only, so a
//! bug in twinfs cannot hide behind the same bug in the checker.
//!
//! Everything lives on the local disk (`/var/tmp`), never on tmpfs, so that
//! sparse files, xattrs and ACLs on the source side behave like a workstation's.

#![allow(dead_code)] // each e2e_*.rs test uses a different part of this module

pub mod gen;
pub mod tree;

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn twinfs() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_twinfs"))
}

/// A temporary directory on the local disk, removed at the end (after the
/// mounts inside it are gone: drop [`Mount`]s first, they are declared later).
pub fn scratch(tag: &str) -> tempfile::TempDir {
    let base = Path::new("/var/tmp");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix(&format!("twinfs-e2e-{tag}-"))
        .tempdir_in(base)
        .expect("creating a scratch directory in /var/tmp")
}

/// Output of a finished command, printable on failure.
pub fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` to completion, capturing stdout and stderr.
pub fn output(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

/// Runs `cmd`, asserts exit status 0, and returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = output(cmd);
    assert!(out.status.success(), "{}", describe(&what, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A shell pipeline (`bash -o pipefail -c`), asserted to succeed.
pub fn sh(script: &str) -> String {
    ok(Command::new("bash").args(["-o", "pipefail", "-c", script]))
}

/// `twinfs ARGS...`, captured.
pub fn twinfs_cmd(args: &[&OsStr]) -> Output {
    output(Command::new(twinfs()).args(args))
}

/// `twinfs mkfs IMAGE --size SIZE`.
pub fn mkfs(image: &Path, size: &str) {
    ok(Command::new(twinfs())
        .arg("mkfs")
        .arg(image)
        .args(["--size", size]));
}

/// `twinfs fsck IMAGE`: (exit code, stdout and stderr together).
pub fn fsck(image: &Path) -> (i32, String) {
    let out = output(Command::new(twinfs()).arg("fsck").arg(image));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Asserts that `twinfs fsck IMAGE` exits 0.
pub fn assert_fsck_clean(image: &Path, when: &str) {
    let (code, text) = fsck(image);
    assert_eq!(
        code,
        0,
        "twinfs fsck {} ({when}) exit {code}:\n{text}",
        image.display()
    );
}

/// Whether `mp` is a mount point now (per /proc/self/mountinfo).
pub fn is_mounted(mp: &Path) -> bool {
    mount_fstype(mp).is_some()
}

/// The file system type of the mount at `mp` (e.g. `fuse.twinfs`), if any.
pub fn mount_fstype(mp: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(mp).unwrap_or_else(|_| mp.to_path_buf());
    let want = escape_mountinfo(canon.as_os_str().as_bytes());
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() > 4 && fields[4] == want {
            // "... - FSTYPE SOURCE OPTIONS": the last mount on a path wins.
            let sep = fields.iter().position(|f| *f == "-")?;
            found = fields.get(sep + 1).map(|s| s.to_string());
        }
    }
    found
}

fn escape_mountinfo(path: &[u8]) -> String {
    let mut s = String::new();
    for &b in path {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => s.push_str(&format!("\\{b:03o}")),
            _ => s.push(b as char),
        }
    }
    s
}

/// Whether process `pid` has ended: gone, or a zombie nobody reaps (PID 1
/// of this machine does not reap orphans) whose every thread has exited.
/// A group leader shows state Z as soon as it exits itself, while its other
/// threads may still be finishing (holding the image's lock); so every
/// task of the group is looked at.
pub fn process_gone(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks
        .flatten()
        .all(|t| match std::fs::read_to_string(t.path().join("stat")) {
            Err(_) => true,
            Ok(stat) => {
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .unwrap_or("");
                state == "Z" || state == "X"
            }
        })
}

/// Waits until `cond` holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The live twinfs process serving `mp` (argv\[0\] `twinfs` or one of the
/// mount helper names, with an argument naming `mp`).
pub fn find_daemon(mp: &Path) -> Option<i32> {
    let canon = std::fs::canonicalize(mp).ok()?;
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let argv0 = Path::new(OsStr::from_bytes(args[0]));
        let name = argv0.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
        if !matches!(name, b"twinfs" | b"mount.fuse.twinfs" | b"mount.twinfs") {
            continue;
        }
        // A daemon's auto_unmount watchdog has its command line.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == "twinfs-watchdog" {
            continue;
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        let names_mp = args[1..].iter().any(|a| {
            !a.is_empty()
                && std::fs::canonicalize(cwd.join(OsStr::from_bytes(a))).ok() == Some(canon.clone())
        });
        if names_mp && !process_gone(pid) {
            found.push(pid);
        }
    }
    // The daemon outlives the command that started it; with several
    // candidates (a `twinfs mount` still exiting), the newest is the daemon.
    found.into_iter().max()
}

/// Where [`Mount::try_new`] sends the output of `twinfs mount IMAGE`.
pub fn log_path(image: &Path) -> PathBuf {
    let mut name = image.file_name().expect("image file name").to_os_string();
    name.push(".mount.log");
    image.with_file_name(name)
}

/// `ps`-like lines (pid, state, wchan, command line) of the processes whose
/// command line mentions `path`, for messages.
pub fn processes_naming(path: &Path) -> String {
    let want = path.as_os_str().as_bytes();
    let mut out = String::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !cmdline.windows(want.len()).any(|w| w == want) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r.trim())
            .split(' ')
            .next()
            .unwrap_or("");
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let cmd: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push_str(&format!("  {pid} {state} {wchan} {}\n", cmd.join(" ")));
    }
    out
}

/// How long a clean unmount may take (the final CP of a busy volume).
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(120);

/// A twinfs volume mounted by the binary. Dropping it always unmounts
/// (`umount`, then `umount -l`) and makes sure the daemon is gone.
pub struct Mount {
    pub image: PathBuf,
    pub mp: PathBuf,
    pid: i32,
    done: bool,
}

impl Mount {
    /// `twinfs mount IMAGE MP EXTRA...` (it returns once mounted); panics
    /// with the command's output when it fails.
    pub fn new(image: &Path, mp: &Path, extra: &[&str]) -> Mount {
        match Mount::try_new(image, mp, extra) {
            Ok(m) => m,
            Err((code, text)) => panic!("twinfs mount exited {code:?}:\n{text}"),
        }
    }

    /// Like [`Mount::new`], returning the exit code and output on failure.
    ///
    /// The command's output goes to a file next to the image,
    /// `IMAGE.mount.log` (appended to), not to a pipe: a daemon that kept a
    /// descriptor of the pipe would make reading it hang until unmount
    /// (`mount_closes_its_output_once_mounted` in e2e_cli.rs checks that
    /// the daemon does not).
    pub fn try_new(
        image: &Path,
        mp: &Path,
        extra: &[&str],
    ) -> Result<Mount, (Option<i32>, String)> {
        std::fs::create_dir_all(mp).expect("creating the mount point");
        let image = std::fs::canonicalize(image).expect("image path");
        let mp = std::fs::canonicalize(mp).expect("mount point path");
        let log = log_path(&image);
        let start = std::fs::metadata(&log).map_or(0, |m| m.len());
        let file = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("opening the mount log")
        };
        let status = Command::new(twinfs())
            .arg("mount")
            .arg(&image)
            .arg(&mp)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file())
            .stderr(file())
            .status()
            .expect("running twinfs mount");
        if !status.success() {
            let text = std::fs::read(&log).unwrap_or_default();
            let text = String::from_utf8_lossy(&text[start as usize..]).into_owned();
            return Err((status.code(), text));
        }
        Ok(Mount::adopt(&image, &mp))
    }

    /// Takes charge of a mount made some other way (mount(8) and the helper).
    pub fn adopt(image: &Path, mp: &Path) -> Mount {
        let mp = std::fs::canonicalize(mp).expect("mount point path");
        assert_eq!(
            mount_fstype(&mp).as_deref(),
            Some("fuse.twinfs"),
            "{} is not a twinfs mount after mounting",
            mp.display()
        );
        let pid = find_daemon(&mp)
            .unwrap_or_else(|| panic!("no twinfs daemon found for {}", mp.display()));
        Mount {
            image: image.to_path_buf(),
            mp,
            pid,
            done: false,
        }
    }

    /// The daemon serving the mount.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// What the daemons of this image logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(log_path(&self.image)).unwrap_or_default())
            .into_owned()
    }

    /// `self.mp / rel`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mp.join(rel)
    }

    /// `twinfs status MP --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        status_json(&self.mp)
    }

    /// `twinfs checkpoint MP`; returns the committed CP number (from status).
    pub fn checkpoint(&self) -> u64 {
        ok(Command::new(twinfs()).arg("checkpoint").arg(&self.mp));
        self.status()["cp"].as_u64().expect("status cp")
    }

    /// Clean unmount: `umount MP` (retried while busy), then waits for the
    /// daemon to finish its final CP and exit. Panics if it does not.
    pub fn unmount(mut self) {
        self.done = true;
        let mut last = None;
        let unmounted = wait_for(Duration::from_secs(20), || {
            let out = output(Command::new("umount").arg(&self.mp));
            let done = out.status.success() || !is_mounted(&self.mp);
            last = Some(out);
            done
        });
        if !unmounted {
            let out = last.expect("umount ran");
            self.force_cleanup();
            panic!("{}", describe("umount", &out));
        }
        if !wait_for(UNMOUNT_TIMEOUT, || process_gone(self.pid)) {
            self.force_cleanup();
            panic!(
                "the twinfs daemon {} did not exit within {UNMOUNT_TIMEOUT:?} of umount {}; its log:\n{}",
                self.pid,
                self.mp.display(),
                self.log()
            );
        }
        assert!(!is_mounted(&self.mp), "{} still mounted", self.mp.display());
    }

    /// kill -9 of the daemon. Ok when the mount went away by itself
    /// (auto_unmount); otherwise, after a few seconds, the mount is detached
    /// with `umount -l` and the error says what was seen (the fusermount3
    /// helper's state, what the mount point answered). Either way the mount
    /// point is free afterwards.
    pub fn kill9(mut self) -> Result<(), String> {
        self.done = true;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        assert!(
            wait_for(Duration::from_secs(10), || process_gone(self.pid)),
            "daemon {} survived SIGKILL",
            self.pid
        );
        if wait_for(Duration::from_secs(5), || !is_mounted(&self.mp)) {
            return Ok(());
        }
        let seen = format!(
            "{} still mounted 5 s after kill -9 of its daemon {}; opening it: {:?}; processes naming it:\n{}",
            self.mp.display(),
            self.pid,
            std::fs::read_dir(&self.mp).map(|_| "ok"),
            processes_naming(&self.mp)
        );
        let _ = output(Command::new("umount").arg("-l").arg(&self.mp));
        assert!(
            wait_for(Duration::from_secs(5), || !is_mounted(&self.mp)),
            "{} still mounted after umount -l",
            self.mp.display()
        );
        Err(seen)
    }

    fn force_cleanup(&mut self) {
        if is_mounted(&self.mp) {
            let out = output(Command::new("umount").arg(&self.mp));
            if !out.status.success() {
                let _ = output(Command::new("umount").arg("-l").arg(&self.mp));
            }
        }
        if !wait_for(Duration::from_secs(60), || process_gone(self.pid)) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            wait_for(Duration::from_secs(5), || process_gone(self.pid));
        }
        if is_mounted(&self.mp) {
            let _ = output(Command::new("umount").arg("-l").arg(&self.mp));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.done {
            self.force_cleanup();
        }
    }
}

/// `twinfs status MP --json`, parsed; panics with the output on failure.
pub fn status_json(mp: &Path) -> serde_json::Value {
    let text = ok(Command::new(twinfs()).arg("status").arg(mp).arg("--json"));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {text}"))
}

/// Deterministic pseudo-random bytes: `len` bytes of stream `seed`
/// (xorshift64*), so a test can regenerate what a file should hold.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The first offset where `a` and `b` differ, or None when equal.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// Asserts `got == want`, naming the first differing offset instead of
/// dumping megabytes.
pub fn assert_bytes(what: &str, got: &[u8], want: &[u8]) {
    if let Some(off) = first_difference(got, want) {
        let show = |v: &[u8]| {
            let end = (off + 16).min(v.len());
            format!("{:02x?}", &v[off.min(v.len())..end])
        };
        panic!(
            "{what}: bytes differ at offset {off} (got {} bytes, want {}): got {} want {}",
            got.len(),
            want.len(),
            show(got),
            show(want)
        );
    }
}

/// statfs(2) of `path`: (block size, free blocks, available blocks).
pub fn statfs(path: &Path) -> (u64, u64, u64) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: buf is a zeroed statfs the call fills; c is a valid C string.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        assert_eq!(
            libc::statfs(c.as_ptr(), &mut buf),
            0,
            "statfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        (buf.f_bsize as u64, buf.f_bfree, buf.f_bavail)
    }
}
