//! Shared harness of the fault tests (`tests/relay_*.rs`, `tests/faults_*.rs`,
//! `tests/kill_campaign.rs`): the `twinfs relay` process between a source
//! and its peer, with its control port. Builds on `mirror_common` (declare
//! both modules in the test).

#![allow(dead_code)] // each test uses a different part of this module

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mirror_common::{bin, wait_for};

/// A `twinfs relay` process. Dropping it stops it (SIGTERM, then SIGKILL).
pub struct Relay {
    child: Option<Child>,
    /// `127.0.0.1:PORT` the relay listens on: give it to `--peer`.
    pub addr: String,
    /// Where it relays to.
    pub to: String,
    control_addr: String,
    control: Option<(BufReader<TcpStream>, TcpStream)>,
    pub log: PathBuf,
}

impl Relay {
    /// Starts `twinfs relay --listen 127.0.0.1:0 --to TO --control
    /// 127.0.0.1:0 EXTRA...` and waits until it listens.
    pub fn start(to: &str, extra: &[&str], log: &Path) -> Relay {
        let before = fs::read_to_string(log).map_or(0, |t| t.len());
        let out = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("relay log")
        };
        let child = Command::new(bin())
            .args(["-v", "relay", "--listen", "127.0.0.1:0", "--to", to])
            .args(["--control", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out())
            .stderr(out())
            .spawn()
            .expect("spawn twinfs relay");
        let mut relay = Relay {
            child: Some(child),
            addr: String::new(),
            to: to.to_string(),
            control_addr: String::new(),
            control: None,
            log: log.to_path_buf(),
        };
        // "twinfs relay: listening on A, relaying to T; control on C (seed N)"
        wait_for("the relay to listen", Duration::from_secs(30), || {
            relay.assert_running("starting");
            let text = fs::read_to_string(log).unwrap_or_default();
            let Some(line) = text[before.min(text.len())..]
                .lines()
                .find(|l| l.starts_with("twinfs relay: listening on "))
            else {
                return false;
            };
            let word_after = |key: &str| {
                line.split(key)
                    .nth(1)
                    .and_then(|r| r.split([',', ' ', ';']).next())
                    .map(str::to_string)
            };
            relay.addr = word_after("listening on ").expect("relay address");
            relay.control_addr = word_after("control on ").expect("control address");
            true
        });
        relay
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self, when: &str) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(st)) = c.try_wait() {
                panic!(
                    "the relay exited ({st}) while {when}:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        }
    }

    /// Sends one control command; returns the reply after `ok` (panics on
    /// `error:`).
    pub fn cmd(&mut self, line: &str) -> String {
        if self.control.is_none() {
            let s = TcpStream::connect(&self.control_addr).expect("relay control port");
            s.set_read_timeout(Some(Duration::from_secs(30))).ok();
            let r = BufReader::new(s.try_clone().expect("clone"));
            self.control = Some((r, s));
        }
        let (r, w) = self.control.as_mut().expect("connected");
        w.write_all(format!("{line}\n").as_bytes())
            .expect("relay control write");
        let mut reply = String::new();
        r.read_line(&mut reply).expect("relay control reply");
        let reply = reply.trim_end();
        assert!(
            reply == "ok" || reply.starts_with("ok "),
            "relay command {line:?}: {reply:?}"
        );
        reply.trim_start_matches("ok").trim().to_string()
    }

    /// The relay's counters.
    pub fn stats(&mut self) -> Value {
        serde_json::from_str(&self.cmd("stats")).expect("stats JSON")
    }

    /// Waits until a relayed connection is up (the source connected through it).
    pub fn wait_connection(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.stats()["active"].as_u64().unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "no connection through the relay");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the id of a child we started and have not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

pub mod ledger;

/// A directory opened in a mount: every operation goes through its
/// descriptor, so nothing a writer does after the daemon died can land in
/// the directory under the mount point (those fail with ENOTCONN instead).
pub struct DirFd {
    file: fs::File,
}

fn cname(name: &str) -> std::ffi::CString {
    std::ffi::CString::new(name).expect("no NUL in a name")
}

fn check(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl DirFd {
    pub fn open(path: &Path) -> std::io::Result<DirFd> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: valid C string; the result is checked.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fd was just opened and is owned here.
        Ok(DirFd {
            file: unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) },
        })
    }

    fn raw(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }

    /// Creates (or truncates) `name` for writing; `append` opens it O_APPEND
    /// without truncating.
    pub fn create(&self, name: &str, append: bool) -> std::io::Result<fs::File> {
        let flags = libc::O_CREAT
            | libc::O_WRONLY
            | libc::O_CLOEXEC
            | if append {
                libc::O_APPEND
            } else {
                libc::O_TRUNC
            };
        // SAFETY: valid dir fd and C string; the result is checked.
        let fd = check(unsafe { libc::openat(self.raw(), cname(name).as_ptr(), flags, 0o644) })?;
        // SAFETY: fd was just opened and is owned here.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    }

    pub fn mkdir(&self, name: &str) -> std::io::Result<()> {
        // SAFETY: valid dir fd and C string.
        check(unsafe { libc::mkdirat(self.raw(), cname(name).as_ptr(), 0o755) }).map(|_| ())
    }

    pub fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        // SAFETY: valid dir fd and C strings.
        check(unsafe {
            libc::renameat(
                self.raw(),
                cname(from).as_ptr(),
                self.raw(),
                cname(to).as_ptr(),
            )
        })
        .map(|_| ())
    }

    pub fn unlink(&self, name: &str) -> std::io::Result<()> {
        // SAFETY: valid dir fd and C string.
        check(unsafe { libc::unlinkat(self.raw(), cname(name).as_ptr(), 0) }).map(|_| ())
    }

    pub fn fsync(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

/// A small deterministic random generator (SplitMix64): a campaign's seed
/// reproduces its choices.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` if empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    /// A generator for a sub-task, independent of how much this one is used later.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

// ---- a failing and slow disk: the preloaded fault shim ------------------------

/// Classes of calls a [`Rule`] matches (`faultshim.c`'s `enum op`).
pub const READ: u32 = 1;
pub const WRITE: u32 = 2;
pub const SYNC: u32 = 4;
pub const TRUNCATE: u32 = 8;

/// What a rule does to a matching call.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// Fails with this errno, doing nothing.
    Error(i32),
    /// Writes half of what was asked (and says so).
    Short,
    /// Waits this long, then does the call.
    Stall(Duration),
    /// Does the read, then flips one bit of what it returns.
    Corrupt,
}

/// One fault rule: calls of the classes in `ops` on a file whose path
/// contains `path`; after `skip` of them, `count` faults (< 0: no end).
#[derive(Clone, Debug)]
pub struct Rule {
    pub ops: u32,
    pub path: String,
    pub action: Action,
    pub skip: u64,
    pub count: i64,
}

const SHIM_MAGIC: u32 = 0x5457_4653;
const SHIM_RULES: usize = 8;
const SHIM_PATH_BYTES: usize = 64;
/// `struct rule`: four u32/i32, five u64/i64, the path.
const RULE_BYTES: usize = 16 + 40 + SHIM_PATH_BYTES;
const RULES_AT: usize = 8;
const CTL_BYTES: usize = RULES_AT + SHIM_RULES * RULE_BYTES;
const HITS_AT: usize = 40;
const FIRED_AT: usize = 48;

/// The fault shim, built for this test, and its control file.
pub struct FaultShim {
    pub so: PathBuf,
    pub ctl: PathBuf,
    file: fs::File,
}

impl FaultShim {
    /// Compiles `faultshim.c` into `dir` and makes an empty control file.
    pub fn build(dir: &Path) -> FaultShim {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults_common/faultshim.c");
        let so = dir.join("faultshim.so");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
            .arg(&so)
            .arg(&src)
            .arg("-ldl")
            .output()
            .expect("running cc (the fault shim is C, built by the test)");
        assert!(
            out.status.success(),
            "building the fault shim: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ctl = dir.join("faultshim.ctl");
        let mut init = vec![0u8; CTL_BYTES];
        init[..4].copy_from_slice(&SHIM_MAGIC.to_le_bytes());
        fs::write(&ctl, &init).expect("control file");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&ctl)
            .expect("open the control file");
        FaultShim { so, ctl, file }
    }

    /// The environment that loads the shim into a daemon.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.so.display().to_string()),
            ("TWINFS_FAULT_CTL".into(), self.ctl.display().to_string()),
        ]
    }

    fn put(&self, at: usize, bytes: &[u8]) {
        std::os::unix::fs::FileExt::write_all_at(&self.file, bytes, at as u64)
            .expect("writing the fault control file");
    }

    fn get_u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&self.file, &mut b, at as u64)
            .expect("reading the fault control file");
        u64::from_le_bytes(b)
    }

    /// Arms rule `i` (its counters start from zero).
    pub fn set(&self, i: usize, rule: &Rule) {
        assert!(i < SHIM_RULES && rule.path.len() <= SHIM_PATH_BYTES);
        let at = RULES_AT + i * RULE_BYTES;
        self.put(at, &0u32.to_le_bytes());
        let (action, err, stall_ms) = match rule.action {
            Action::Error(e) => (1i32, e, 0u64),
            Action::Short => (2, 0, 0),
            Action::Stall(d) => (3, 0, d.as_millis() as u64),
            Action::Corrupt => (4, 0, 0),
        };
        let mut r = Vec::with_capacity(RULE_BYTES);
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&rule.ops.to_le_bytes());
        r.extend_from_slice(&action.to_le_bytes());
        r.extend_from_slice(&err.to_le_bytes());
        r.extend_from_slice(&rule.skip.to_le_bytes());
        r.extend_from_slice(&rule.count.to_le_bytes());
        r.extend_from_slice(&stall_ms.to_le_bytes());
        r.extend_from_slice(&0u64.to_le_bytes());
        r.extend_from_slice(&0u64.to_le_bytes());
        let mut path = [0u8; SHIM_PATH_BYTES];
        path[..rule.path.len()].copy_from_slice(rule.path.as_bytes());
        r.extend_from_slice(&path);
        assert_eq!(r.len(), RULE_BYTES);
        self.put(at, &r);
        self.put(at, &1u32.to_le_bytes());
        let n = self.get_u64(0) >> 32;
        if (n as usize) <= i {
            self.put(4, &(i as u32 + 1).to_le_bytes());
        }
    }

    /// Disarms every rule.
    pub fn clear(&self) {
        self.put(4, &0u32.to_le_bytes());
        for i in 0..SHIM_RULES {
            self.put(RULES_AT + i * RULE_BYTES, &0u32.to_le_bytes());
        }
    }

    /// Matching calls rule `i` has seen.
    pub fn hits(&self, i: usize) -> u64 {
        self.get_u64(RULES_AT + i * RULE_BYTES + HITS_AT)
    }

    /// Faults rule `i` has given.
    pub fn fired(&self, i: usize) -> u64 {
        self.get_u64(RULES_AT + i * RULE_BYTES + FIRED_AT)
    }
}

// ---- a small file system of its own: a loop-mounted ext4 ----------------------

/// A small ext4 image mounted on a loop device, for a full disk that fills
/// quickly. Dropping it unmounts it (lazily if busy).
pub struct LoopFs {
    pub image: PathBuf,
    pub mnt: PathBuf,
    mounted: bool,
}

impl LoopFs {
    /// `mkfs.ext4` of `size_mib` MiB in `image`, mounted on `mnt`.
    pub fn new(image: &Path, mnt: &Path, size_mib: u64) -> LoopFs {
        let f = fs::File::create(image).expect("loop image");
        f.set_len(size_mib << 20).expect("size the loop image");
        drop(f);
        crate::mirror_common::run("mkfs.ext4", &["-q", "-F", "-m", "0", s(image)]);
        fs::create_dir_all(mnt).expect("loop mount point");
        crate::mirror_common::run("mount", &["-o", "loop", s(image), s(mnt)]);
        LoopFs {
            image: image.to_path_buf(),
            mnt: mnt.to_path_buf(),
            mounted: true,
        }
    }

    /// Bytes free for files (`statvfs` f_bavail).
    pub fn available(&self) -> u64 {
        let st = nix_statvfs(&self.mnt);
        st.0 * st.1
    }

    /// Fills the file system with a ballast file until `leave` bytes are
    /// free (within a few blocks); returns its path.
    pub fn fill_leaving(&self, leave: u64) -> PathBuf {
        let ballast = self.mnt.join("ballast");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ballast)
            .expect("ballast");
        let chunk = vec![0x5au8; 1 << 20];
        while self.available() > leave + (1 << 20) {
            f.write_all(&chunk).expect("writing ballast");
            f.sync_all().expect("fsync ballast");
        }
        let rest = self.available().saturating_sub(leave) as usize;
        if rest > 0 {
            f.write_all(&chunk[..rest.min(chunk.len())])
                .expect("writing ballast");
            f.sync_all().expect("fsync ballast");
        }
        ballast
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// (block size, blocks available) of the file system holding `path`.
fn nix_statvfs(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: buf is zeroed and filled by the call; c is a valid C string.
    unsafe {
        let mut buf: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut buf), 0, "statvfs");
        (buf.f_frsize as u64, buf.f_bavail as u64)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
            self.mounted = false;
        }
    }
}
