//! Shared harness of the `mirror_*` end-to-end tests: the `twinfs` binary as
//! a peer process and as a source mount, each behind a guard that always
//! stops, kills and unmounts what it started; secrets, ports, status JSON;
//! a generated tree of everything archivers care about; and a tree walker
//! that compares two trees field by field (kind, mode, owner, size, ns times,
//! symlink target, xattrs, hard-link groups, bytes).
//!
//! Everything runs on 127.0.0.1. The tests that use this take [`serial`]
//! first: they kill processes on timers and measure waits, which goes wrong
//! when several of them share two cores at once.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_twinfs")
}

// ---- running the binary ----------------------------------------------------

/// What a finished `twinfs` command did.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `twinfs ARGS...` to completion.
pub fn twinfs(args: &[&str]) -> Ran {
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running twinfs {args:?}: {e}"));
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `twinfs ARGS...`, which must exit 0; returns its stdout.
pub fn twinfs_ok(args: &[&str]) -> String {
    let r = twinfs(args);
    assert_eq!(
        r.code, 0,
        "twinfs {args:?} exited {}:\n{}{}",
        r.code, r.stdout, r.stderr
    );
    r.stdout
}

/// Runs any command, which must succeed; returns its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `twinfs mkfs IMAGE --size SIZE`.
pub fn mkfs(image: &Path, size: &str) {
    twinfs_ok(&["mkfs", s(image), "--size", size]);
}

/// A path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- one mirror test at a time ---------------------------------------------

/// Holds an exclusive lock on a file in /tmp for the life of a test, so the
/// mirror tests of every test binary (cargo test, nextest) run one at a time.
/// `TWINFS_TEST_LOCK` names another lock file: a soak run by hand
/// (tests/campaign.sh) takes its own, not to hold up other test runs for hours.
pub struct Serial(fs::File);

pub fn serial() -> Serial {
    let _ = env_logger::builder().is_test(true).try_init();
    let path = std::env::var_os("TWINFS_TEST_LOCK").map_or_else(
        || PathBuf::from("/tmp/twinfs-mirror-tests.lock"),
        PathBuf::from,
    );
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("lock file");
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    Serial(f)
}

// ---- scratch space, secrets, ports -----------------------------------------

/// A temporary directory with short paths (mount points, sockets).
/// `TWINFS_TEST_KEEP=1` keeps it (and every daemon's log in it) after the test.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tm")
        .disable_cleanup(std::env::var_os("TWINFS_TEST_KEEP").is_some())
        .tempdir_in("/tmp")
        .expect("temp dir")
}

/// Writes a secret file of mode 0600 and, unless they exist, the files the
/// channel's defaults look for next to it: a key pair (`key`, `key.pub`) and
/// `trusted-keys` listing that key, so a source and a peer started with this
/// secret on one machine share one key and trust it.
pub fn secret_file(path: &Path, secret: &[u8]) -> PathBuf {
    fs::write(path, secret).expect("write secret");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let dir = path.parent().expect("the secret is in a directory");
    let key = dir.join(twinfs_replicate::keys::DEFAULT_KEY_FILE);
    if !key.exists() {
        let pair = twinfs_replicate::StaticKey::generate().expect("a key pair");
        let public = pair
            .write_files(&key, "test", false)
            .expect("write the key pair");
        let trusted = dir.join(twinfs_replicate::keys::DEFAULT_TRUSTED_FILE);
        fs::copy(public, trusted).expect("write trusted-keys");
    }
    path.to_path_buf()
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ---- mounts ----------------------------------------------------------------

/// Whether `path` is a mount point now (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let want = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape(mp) == want.as_os_str().as_bytes())
    })
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// `umount -l PATH` if it is still a mount point (a killed daemon's mount).
pub fn force_unmount(path: &Path) {
    if is_mounted(path) {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the id of a child we started and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

/// Sends SIGTERM and waits up to `grace`; then SIGKILL. Returns the exit code
/// (None after a kill).
fn terminate(child: &mut Child, grace: Duration) -> Option<i32> {
    if let Ok(Some(st)) = child.try_wait() {
        return st.code();
    }
    signal(child, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn log_file(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

// ---- the peer process ------------------------------------------------------

/// A `twinfs peer` process. Dropping it stops it (SIGTERM, then SIGKILL) and
/// unmounts its replica view if it is left behind.
pub struct Peer {
    child: Option<Child>,
    pub dir: PathBuf,
    pub secret: PathBuf,
    pub mount: Option<PathBuf>,
    pub log: PathBuf,
    pub port: u16,
    /// Extra environment of the process (e.g. a fault-injecting LD_PRELOAD).
    pub env: Vec<(String, String)>,
    /// Extra arguments of `twinfs peer`, kept for restarts.
    pub args: Vec<String>,
}

impl Peer {
    /// Starts `twinfs -v peer --dir DIR --listen 127.0.0.1:PORT --secret S
    /// [--mount M]` (port 0: any) and waits until it listens.
    pub fn start(dir: &Path, port: u16, secret: &Path, mount: Option<&Path>, log: &Path) -> Peer {
        Peer::start_with_env(dir, port, secret, mount, log, &[], &[])
    }

    /// [`Peer::start`] with extra environment variables and arguments, kept
    /// for restarts.
    pub fn start_with_env(
        dir: &Path,
        port: u16,
        secret: &Path,
        mount: Option<&Path>,
        log: &Path,
        env: &[(String, String)],
        args: &[&str],
    ) -> Peer {
        let mut p = Peer {
            child: None,
            dir: dir.to_path_buf(),
            secret: secret.to_path_buf(),
            mount: mount.map(Path::to_path_buf),
            log: log.to_path_buf(),
            port,
            env: env.to_vec(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the peer runs already");
        let before = fs::read_to_string(&self.log).map_or(0, |t| t.len());
        let listen = format!("127.0.0.1:{}", self.port);
        let mut cmd = Command::new(bin());
        cmd.args(["-v", "peer", "--dir", s(&self.dir), "--listen", &listen])
            .args(["--secret", s(&self.secret)]);
        if let Some(m) = &self.mount {
            cmd.args(["--mount", s(m)]);
        }
        let child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file(&self.log))
            .stderr(log_file(&self.log))
            .spawn()
            .expect("spawn twinfs peer");
        self.child = Some(child);
        // "twinfs peer: listening on 127.0.0.1:PORT for DIR"
        let mut port = None;
        wait_for("the peer to listen", Duration::from_secs(30), || {
            self.assert_running("starting");
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            port = text[before.min(text.len())..]
                .lines()
                .find_map(|l| l.split("listening on 127.0.0.1:").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|p| p.parse::<u16>().ok());
            port.is_some()
        });
        self.port = port.expect("port");
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the peer runs").id()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self, when: &str) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(st)) = c.try_wait() {
                panic!("the peer exited ({st}) while {when}:\n{}", self.log_text());
            }
        }
    }

    /// kill -9, then unmount a replica view left behind (as an admin would).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(m) = &self.mount {
            force_unmount(m);
        }
    }

    /// SIGTERM and wait for a clean stop; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let code = self
            .child
            .take()
            .and_then(|mut c| terminate(&mut c, Duration::from_secs(30)));
        if let Some(m) = &self.mount {
            force_unmount(m);
        }
        code
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// SIGSTOP / SIGCONT: a peer that is connected but does nothing.
    pub fn freeze(&self, frozen: bool) {
        let c = self.child.as_ref().expect("the peer runs");
        signal(c, if frozen { libc::SIGSTOP } else { libc::SIGCONT });
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `twinfs status --dir DIR --json`.
    pub fn status(&self) -> Value {
        dir_status(&self.dir)
    }

    /// Waits until the replica view is mounted.
    pub fn wait_view(&mut self) {
        let m = self.mount.clone().expect("a peer with --mount");
        wait_for("the replica view", Duration::from_secs(30), || {
            self.assert_running("mounting its view");
            is_mounted(&m)
        });
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen peer cannot handle SIGTERM.
            signal(c, libc::SIGCONT);
        }
        self.stop();
    }
}

/// `twinfs status --dir DIR --json`.
pub fn dir_status(dir: &Path) -> Value {
    let out = twinfs_ok(&["status", "--dir", s(dir), "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --dir JSON: {e}: {out}"))
}

// ---- the source mount ------------------------------------------------------

/// A `twinfs mount IMAGE MNT -f ...` process. Dropping it unmounts (SIGTERM,
/// which takes the final CP), then kills and lazily unmounts what is left.
pub struct Source {
    child: Option<Child>,
    pub image: PathBuf,
    pub mnt: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Source {
    /// Mounts `image` on `mnt` (created if missing) in the foreground with
    /// `args` (e.g. `--peer`, `--secret`, `--mode`), waiting until the mount
    /// serves and its control socket answers.
    pub fn start(image: &Path, mnt: &Path, args: &[&str], log: &Path) -> Source {
        Source::start_with_env(image, mnt, args, log, &[])
    }

    /// [`Source::start`] with extra environment variables for the daemon.
    pub fn start_with_env(
        image: &Path,
        mnt: &Path,
        args: &[&str],
        log: &Path,
        env: &[(String, String)],
    ) -> Source {
        fs::create_dir_all(mnt).expect("mount point");
        let mut src = Source {
            child: None,
            image: image.to_path_buf(),
            mnt: mnt.to_path_buf(),
            log: log.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.to_vec(),
        };
        src.spawn();
        src
    }

    /// Mounts `image` mirrored to `peer` (mode and CP encoding as given;
    /// timed CPs effectively off so the tests decide when CPs happen).
    pub fn mirrored(
        image: &Path,
        mnt: &Path,
        peer: &str,
        secret: &Path,
        extra: &[&str],
        log: &Path,
    ) -> Source {
        let mut args = vec![
            "--peer",
            peer,
            "--secret",
            s(secret),
            "--cp-interval",
            "86400",
        ];
        args.extend_from_slice(extra);
        Source::start(image, mnt, &args, log)
    }

    fn spawn(&mut self) {
        let child = Command::new(bin())
            .args(["-v", "mount", s(&self.image), s(&self.mnt), "-f"])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file(&self.log))
            .stderr(log_file(&self.log))
            .spawn()
            .expect("spawn twinfs mount");
        self.child = Some(child);
        let mnt = self.mnt.clone();
        wait_for("the mount to serve", Duration::from_secs(30), || {
            self.assert_running("mounting");
            is_mounted(&mnt) && twinfs(&["status", s(&mnt), "--json"]).code == 0
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mounted").id()
    }

    pub fn assert_running(&mut self, when: &str) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(st)) = c.try_wait() {
                panic!("the mount exited ({st}) while {when}:\n{}", self.log_text());
            }
        }
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `twinfs status MNT --json`.
    pub fn status(&self) -> Value {
        let out = twinfs_ok(&["status", s(&self.mnt), "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"))
    }

    /// `twinfs status MNT`, the human view, which must name the headline
    /// `state` (upper case) on its first line; returns the whole text.
    pub fn status_text_says(&self, state: &str) -> String {
        let out = twinfs_ok(&["status", s(&self.mnt)]);
        let first = out.lines().next().unwrap_or_default();
        assert_eq!(
            first.trim(),
            format!("state: {}", state.to_uppercase()),
            "the human status leads with its state:\n{out}"
        );
        assert!(out.contains("action: "), "and says what to do:\n{out}");
        out
    }

    /// `twinfs checkpoint MNT`, which must say the peer applied the CP;
    /// returns the CP number.
    pub fn checkpoint(&self) -> u64 {
        let out = twinfs_ok(&["checkpoint", s(&self.mnt)]);
        assert!(out.contains("applied at the peer"), "checkpoint: {out}");
        out.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("checkpoint output: {out}"))
    }

    /// `twinfs checkpoint MNT` with the peer away, in sync or strict mode:
    /// the CP commits here and the command says the peer does not have it.
    pub fn checkpoint_alone(&self) {
        let ran = self.checkpoint_ran();
        assert_eq!(ran.code, 1, "checkpoint without the peer: {ran:?}");
        assert!(
            ran.stderr.contains("committed here, not at the peer"),
            "checkpoint without the peer: {ran:?}"
        );
    }

    /// `twinfs checkpoint MNT` whatever the peer does; returns what it did.
    pub fn checkpoint_ran(&self) -> Ran {
        twinfs(&["checkpoint", s(&self.mnt)])
    }

    /// Waits until the link streams (a session is up and caught up).
    pub fn wait_streaming(&mut self, timeout: Duration) {
        let mnt = self.mnt.clone();
        wait_for("the mirror to stream", timeout, || {
            self.assert_running("waiting for the peer");
            let st = status_of(&mnt);
            st["peer"]["connected"] == true && st["peer"]["state"] == "streaming"
        });
    }

    /// Waits until the peer acknowledged the committed CP with its root hash.
    pub fn wait_converged(&mut self, timeout: Duration) -> Value {
        let mnt = self.mnt.clone();
        let mut last;
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running("waiting for the peer to converge");
            last = status_of(&mnt);
            if last["peer"]["connected"] == true
                && last["peer"]["acked_cp"] == last["cp"]
                && last["peer"]["acked_root_hash"] == last["root_hash"]
            {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "the peer did not converge in {timeout:?}: {last:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 of the mount daemon (no final CP); the kernel mount goes with
    /// auto_unmount, else it is lazily unmounted here.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // auto_unmount's helper needs a moment to notice.
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_mounted(&self.mnt) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        force_unmount(&self.mnt);
    }

    /// A clean unmount (SIGTERM: final CP, and with a connected peer its
    /// application there); returns the exit code.
    pub fn unmount(&mut self) -> Option<i32> {
        let code = self
            .child
            .take()
            .and_then(|mut c| terminate(&mut c, Duration::from_secs(90)));
        force_unmount(&self.mnt);
        code
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// `twinfs status MNT --json`, or Null when it fails.
pub fn status_of(mnt: &Path) -> Value {
    let r = twinfs(&["status", s(mnt), "--json"]);
    if r.code != 0 {
        return Value::Null;
    }
    serde_json::from_str(&r.stdout).unwrap_or(Value::Null)
}

/// A status counter (`bytes.X` or `bytes.X.blocks`) as u64.
pub fn counter(st: &Value, path: &str) -> u64 {
    let mut v = st;
    for k in path.split('.') {
        v = &v[k];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("status has no counter {path}: {st:#}"))
}

// ---- a source and its peer -------------------------------------------------

/// A fresh volume mounted with `--peer` and its peer (with a replica view
/// if asked), streaming, in a scratch directory. Fields drop in order: the
/// mount first (its final CP), then the peer, then the directory.
pub struct Pair {
    pub src: Source,
    pub peer: Peer,
    /// The scratch directory holding everything below.
    pub root: PathBuf,
    pub image: PathBuf,
    pub secret: PathBuf,
    /// The peer's `--dir`.
    pub dir: PathBuf,
    /// The replica view's mount point (made even without a view).
    pub replica: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Pair {
    /// `mkfs --size SIZE`, `peer [--mount]`, `mount --peer ... SOURCE_ARGS`,
    /// then waits until the mirror streams.
    pub fn start(size: &str, view: bool, source_args: &[&str]) -> Pair {
        let scratch = scratch();
        let root = scratch.path().to_path_buf();
        let secret = secret_file(
            &root.join("secret"),
            b"twinfs mirror tests: the shared secret\n",
        );
        let image = root.join("source.img");
        mkfs(&image, size);
        let (dir, replica) = (root.join("peer"), root.join("replica"));
        fs::create_dir(&replica).expect("replica mount point");
        let view = view.then_some(replica.as_path());
        let peer = Peer::start(&dir, 0, &secret, view, &root.join("peer.log"));
        let mut src = Source::mirrored(
            &image,
            &root.join("mnt"),
            &peer.addr(),
            &secret,
            source_args,
            &root.join("source.log"),
        );
        src.wait_streaming(Duration::from_secs(30));
        Pair {
            src,
            peer,
            root,
            image,
            secret,
            dir,
            replica,
            _scratch: scratch,
        }
    }
}

// ---- a generated tree ------------------------------------------------------

/// Deterministic bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// Sets atime and mtime (ns) of `p` without following a symlink.
pub fn set_times(p: &Path, sec: i64, nsec: i64) {
    let ts = [
        libc::timespec {
            tv_sec: sec - 1000,
            tv_nsec: 1,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: valid path and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn lchown(p: &Path, uid: u32, gid: u32) {
    // SAFETY: valid path.
    let rc = unsafe { libc::lchown(cstr(p).as_ptr(), uid, gid) };
    assert_eq!(
        rc,
        0,
        "lchown {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).expect("name");
    // SAFETY: valid path, name and buffer.
    let rc = unsafe {
        libc::lsetxattr(
            cstr(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// What [`make_tree`] makes.
#[derive(Clone, Copy, Debug)]
pub struct TreeShape {
    /// Directories of small files.
    pub dirs: usize,
    /// Small files in each.
    pub files_per_dir: usize,
    /// Large files (`large_bytes` each, block-aligned writes).
    pub large: usize,
    pub large_bytes: usize,
}

impl TreeShape {
    /// A few MiB: every kind of thing, quickly copied.
    pub const SMALL: TreeShape = TreeShape {
        dirs: 4,
        files_per_dir: 12,
        large: 2,
        large_bytes: 3 << 20,
    };
}

/// Makes a tree under `root` with files of many sizes (empty, unaligned,
/// block-sized, large), modes (0600, 0444, 0755, setuid, sticky and setgid
/// directories), owners other than root, symlinks (relative, absolute,
/// dangling, long), hard links across directories, a FIFO, xattrs (text,
/// binary, large, on directories and on a linked file) and ns mtimes on
/// everything. Returns the bytes of file data written.
pub fn make_tree(root: &Path, seed: u64, shape: TreeShape) -> u64 {
    let mut bytes = 0u64;
    fs::create_dir_all(root).expect("root");
    let sizes = [
        0usize,
        1,
        100,
        4095,
        4096,
        4097,
        12_288,
        65_536,
        100_000,
        1 << 20,
    ];
    let modes = [0o644, 0o600, 0o755, 0o444, 0o640, 0o4755];
    let mut made: Vec<PathBuf> = Vec::new();
    for d in 0..shape.dirs {
        let dir = root.join(format!("d{d}")).join(format!("sub{}", d % 2));
        fs::create_dir_all(&dir).expect("dir");
        for f in 0..shape.files_per_dir {
            let p = dir.join(format!("file-{f:03}.dat"));
            let len = sizes[(f + d) % sizes.len()] + (f % 3) * 7;
            fs::write(&p, pattern(len, seed + (d * 1000 + f) as u64)).expect("file");
            bytes += len as u64;
            chmod(&p, modes[(f + d) % modes.len()]);
            if f % 4 == 1 {
                lchown(&p, 1000 + f as u32, 2000 + d as u32);
            }
            made.push(p);
        }
    }
    let big = root.join("big");
    fs::create_dir_all(&big).expect("dir");
    for i in 0..shape.large {
        let p = big.join(format!("large-{i}.bin"));
        let mut f = fs::File::create(&p).expect("large");
        let chunk = 1 << 20;
        let mut left = shape.large_bytes;
        let mut n = 0u64;
        while left > 0 {
            let len = left.min(chunk);
            f.write_all(&pattern(len, seed ^ (i as u64) << 32 ^ n))
                .expect("write large");
            left -= len;
            n += 1;
        }
        bytes += shape.large_bytes as u64;
        made.push(p);
    }
    // Hard links: one file with three names in three directories.
    let linked = made[1].clone();
    fs::hard_link(&linked, root.join("d0/hard-a")).expect("link");
    fs::create_dir_all(root.join("links")).expect("dir");
    fs::hard_link(&linked, root.join("links/hard-b")).expect("link");
    fs::hard_link(&made[2], root.join("links/pair")).expect("link");
    // Symlinks.
    std::os::unix::fs::symlink("../d0/sub0", root.join("links/rel")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", root.join("links/abs")).expect("symlink");
    std::os::unix::fs::symlink("nowhere/at/all", root.join("links/dangling")).expect("symlink");
    std::os::unix::fs::symlink("x".repeat(200), root.join("links/long")).expect("symlink");
    lchown(&root.join("links/rel"), 4242, 4343);
    // A FIFO.
    // SAFETY: valid path.
    let rc = unsafe { libc::mkfifo(cstr(&root.join("links/fifo")).as_ptr(), 0o640) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    // Odd directories.
    fs::create_dir_all(root.join("empty")).expect("dir");
    fs::create_dir_all(root.join("sticky")).expect("dir");
    chmod(&root.join("sticky"), 0o1777);
    fs::create_dir_all(root.join("shared")).expect("dir");
    chmod(&root.join("shared"), 0o2775);
    lchown(&root.join("shared"), 0, 100);
    fs::create_dir_all(root.join("private")).expect("dir");
    fs::write(root.join("private/secret.txt"), b"only the owner").expect("file");
    chmod(&root.join("private"), 0o700);
    // Xattrs.
    set_xattr(&made[0], "user.comment", b"a text value");
    set_xattr(&linked, "user.linked", b"on every name of the link");
    let binary: Vec<u8> = (0..=255u8).collect();
    set_xattr(&made[3], "user.binary", &binary);
    set_xattr(&made[3], "user.big", &pattern(3000, seed + 7));
    set_xattr(&made[3], "user.empty", b"");
    set_xattr(&root.join("d0"), "user.dir", b"on a directory");
    // Times last, deepest first, with nanoseconds everywhere.
    let mut all: Vec<PathBuf> = Vec::new();
    collect(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_times(
            p,
            1_600_000_000 + i as i64 * 3607,
            123_456_789 + i as i64 * 1_000_003 % 876_543_210,
        );
    }
    set_times(root, 1_650_000_000, 999_999_999);
    bytes
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    for p in names {
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        out.push(p.clone());
        if md.is_dir() {
            collect(&p, out);
        }
    }
}

// ---- the tree walker -------------------------------------------------------

/// Everything a tree walk records about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    /// Permission and special bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `None` for directories unless [`Compare::dir_sizes`].
    pub size: Option<u64>,
    pub mtime: (i64, i64),
    /// Only with [`Compare::ctime`].
    pub ctime: Option<(i64, i64)>,
    pub nlink: u64,
    pub rdev: u64,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// blake3 of a regular file's bytes.
    pub content: Option<String>,
}

/// What a comparison looks at beyond the portable fields.
#[derive(Clone, Copy, Debug, Default)]
pub struct Compare {
    /// Directory sizes (they differ between file systems).
    pub dir_sizes: bool,
    /// Change times (equal only between two images of one volume).
    pub ctime: bool,
    /// Link counts of directories (file systems count subdirectories differently).
    pub dir_nlink: bool,
}

impl Compare {
    /// Two images of one volume (source and replica): every field.
    pub const EXACT: Compare = Compare {
        dir_sizes: true,
        ctime: true,
        dir_nlink: true,
    };
    /// A copy on another file system: everything a copy preserves.
    pub const COPY: Compare = Compare {
        dir_sizes: false,
        ctime: false,
        dir_nlink: false,
    };
}

/// A walked tree: entries by relative path and the hard-link groups.
#[derive(Debug, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<PathBuf, Entry>,
    /// Sets of names of one inode (non-directories with more than one link).
    pub links: BTreeSet<Vec<PathBuf>>,
}

/// Walks `root` (without following symlinks), recording what `how` asks for.
pub fn walk(root: &Path, how: Compare) -> Tree {
    let mut entries = BTreeMap::new();
    let mut by_ino: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut all = vec![root.to_path_buf()];
    collect(root, &mut all);
    for p in all {
        let rel = p.strip_prefix(root).expect("inside").to_path_buf();
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "special"
        };
        if !ft.is_dir() && md.nlink() > 1 {
            by_ino.entry(md.ino()).or_default().push(rel.clone());
        }
        let content = ft.is_file().then(|| {
            let bytes = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            blake3::hash(&bytes).to_hex().to_string()
        });
        let target = ft.is_symlink().then(|| {
            fs::read_link(&p)
                .expect("readlink")
                .as_os_str()
                .as_bytes()
                .to_vec()
        });
        entries.insert(
            rel,
            Entry {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: (!ft.is_dir() || how.dir_sizes).then_some(md.size()),
                mtime: (md.mtime(), md.mtime_nsec()),
                ctime: how.ctime.then_some((md.ctime(), md.ctime_nsec())),
                nlink: if ft.is_dir() && !how.dir_nlink {
                    0
                } else {
                    md.nlink()
                },
                rdev: md.rdev(),
                target,
                xattrs: xattrs(&p),
                content,
            },
        );
    }
    let links = by_ino
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    Tree { entries, links }
}

/// Every xattr of `p` (not following a symlink).
pub fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = cstr(p);
    let mut names = vec![0u8; 1 << 16];
    // SAFETY: valid path and buffer of the given length.
    let len = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        len >= 0,
        "listxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    names.truncate(len as usize);
    let mut out = BTreeMap::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let n = CString::new(name).expect("name");
        let mut buf = vec![0u8; 1 << 17];
        // SAFETY: valid path, name and buffer of the given length.
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(
            len >= 0,
            "getxattr {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
        buf.truncate(len as usize);
        out.insert(name.to_vec(), buf);
    }
    out
}

/// The differences between two walked trees, one line each (at most 40).
pub fn differences(a: &Tree, b: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    let paths: BTreeSet<&PathBuf> = a.entries.keys().chain(b.entries.keys()).collect();
    for p in paths {
        match (a.entries.get(p), b.entries.get(p)) {
            (Some(_), None) => out.push(format!("{}: only in the first tree", p.display())),
            (None, Some(_)) => out.push(format!("{}: only in the second tree", p.display())),
            (Some(x), Some(y)) if x != y => {
                out.push(format!("{}: differs:\n    {x:?}\n    {y:?}", p.display()))
            }
            _ => {}
        }
        if out.len() >= 40 {
            out.push("...".into());
            return out;
        }
    }
    if a.links != b.links {
        out.push(format!(
            "hard-link groups differ:\n    {:?}\n    {:?}",
            a.links, b.links
        ));
    }
    out
}

/// Asserts that the trees under `a` and `b` are equal as `how` says.
pub fn assert_same_tree(a: &Path, b: &Path, how: Compare) {
    let (ta, tb) = (walk(a, how), walk(b, how));
    let diff = differences(&ta, &tb);
    assert!(
        diff.is_empty(),
        "{} and {} differ ({} entries vs {}):\n{}",
        a.display(),
        b.display(),
        ta.entries.len(),
        tb.entries.len(),
        diff.join("\n")
    );
}

/// Polls until the trees under `a` and `b` are equal (a replica view
/// switches to a new CP just after the source is told it was applied, and
/// the kernel may keep attributes for a second); panics with the
/// differences after `timeout`.
pub fn wait_same_tree(a: &Path, b: &Path, how: Compare, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (ta, tb) = (walk(a, how), walk(b, how));
        let diff = differences(&ta, &tb);
        if diff.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} and {} still differ after {timeout:?}:\n{}",
            a.display(),
            b.display(),
            diff.join("\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// blake3 of a whole file (an image), hex.
pub fn file_hash(p: &Path) -> String {
    let mut h = blake3::Hasher::new();
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    std::io::copy(&mut f, &mut h).expect("read");
    h.finalize().to_hex().to_string()
}
