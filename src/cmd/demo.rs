//! `twinfs demo [DIR]`: the whole story on loopback in a couple of minutes.
//!
//! For each CP encoding (`full`, `refs`, `best`) it makes a volume and a
//! peer with a replica mount, mounts the source, copies a real tree from
//! this machine and writes a large file, checkpoints, verifies root hashes
//! (deep), compares the two mounted trees file by file, and records bytes
//! written against bytes on the wire. Everything it starts is stopped and
//! unmounted again, also on failure.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::DemoArgs;
use crate::error::CmdError;

/// Trees worth copying, first one found wins.
const TREES: [&str; 3] = ["/usr/share/doc", "/usr/include", "/usr/share/zoneinfo"];
/// Size of the large file written with 1 MiB writes.
const BIG_FILE_MIB: usize = 256;

/// What the signal thread undoes when the demo is interrupted (SIGINT,
/// SIGTERM, SIGHUP): every mount and process the demo started, newest
/// first, and its temporary directory. The guards below register here and
/// take themselves off when dropped normally.
static CLEANUP: parking_lot::Mutex<Vec<(u64, Undo)>> = parking_lot::Mutex::new(Vec::new());
static NEXT_UNDO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Set by the signal thread before it undoes anything: from then on the
/// demo's own failures (a `cp` that met the vanishing mount) are its
/// doing, and the exit status is the signal's.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Clone)]
enum Undo {
    Unmount(PathBuf),
    Stop(u32),
    Remove(PathBuf),
}

fn register(undo: Undo) -> u64 {
    let id = NEXT_UNDO.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    CLEANUP.lock().push((id, undo));
    id
}

fn unregister(id: u64) {
    CLEANUP.lock().retain(|(i, _)| *i != id);
}

/// Runs on the signal thread: undo everything, newest first, and exit
/// 128 + the signal's number, as a shell reports a killed command.
fn interrupted(sig: i32) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    eprintln!("demo: interrupted by signal {sig}: unmounting and stopping what the demo started");
    let undo: Vec<Undo> = CLEANUP
        .lock()
        .iter()
        .rev()
        .map(|(_, u)| u.clone())
        .collect();
    for u in undo {
        match u {
            Undo::Unmount(mp) => unmount(&mp),
            Undo::Stop(pid) => stop_pid(pid),
            Undo::Remove(d) => {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    std::process::exit(128 + sig);
}

pub fn run(args: DemoArgs) -> Result<(), CmdError> {
    crate::daemon::on_termination(interrupted)?;
    let result = run_rounds(args);
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        // The signal thread is undoing the rest and exits with the
        // signal's status; this thread must not exit first.
        loop {
            std::thread::park();
        }
    }
    result
}

fn run_rounds(args: DemoArgs) -> Result<(), CmdError> {
    let (dir, _temp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| fail("create the demo directory", e))?;
            (d.clone(), None)
        }
        None => {
            let base =
                std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
            let d = base.join(format!("twinfs-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d).map_err(|e| fail("create the demo directory", e))?;
            let id = register(Undo::Remove(d.clone()));
            (d.clone(), Some(RemoveOnDrop(d, id)))
        }
    };
    let tree = TREES
        .iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .ok_or_else(|| {
            fail(
                "find a tree to copy",
                "none of /usr/share/doc, /usr/include exists",
            )
        })?;
    let exe = std::env::current_exe().map_err(|e| fail("find the twinfs binary", e))?;
    say(&format!(
        "twinfs demo in {}: copying {} and a {BIG_FILE_MIB} MiB file through a mirrored mount, once per CP encoding",
        dir.display(),
        tree.display()
    ));
    let mut rows = Vec::new();
    for mode in ["full", "refs", "best"] {
        rows.push(one_round(&exe, &dir.join(mode), tree, mode)?);
    }
    println!();
    println!("bytes written by clients vs bytes sent to the peer (same work each time):");
    println!(
        "{:<6} {:>11} {:>11} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "cp-sync", "written", "wire", "log", "cp", "full", "refs", "recipes", "deltas", "wire/w"
    );
    for r in &rows {
        println!(
            "{:<6} {:>11} {:>11} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7.3}",
            r.mode,
            mib(r.written),
            mib(r.wire),
            mib(r.log),
            mib(r.cp),
            r.full,
            r.refs,
            r.recipes,
            r.deltas,
            r.wire as f64 / r.written.max(1) as f64
        );
    }
    println!("(block counts per encoding; MiB = 2^20 bytes)");
    say("done: every round's replica was equal to its source, by root hash, deep rehash and file by file");
    Ok(())
}

struct Row {
    mode: &'static str,
    written: u64,
    wire: u64,
    log: u64,
    cp: u64,
    full: u64,
    refs: u64,
    recipes: u64,
    deltas: u64,
}

fn one_round(exe: &Path, dir: &Path, tree: &Path, mode: &'static str) -> Result<Row, CmdError> {
    let _ = std::fs::remove_dir_all(dir);
    let (src_mp, rep_mp, peer_dir) = (dir.join("source"), dir.join("replica"), dir.join("peer"));
    for d in [&src_mp, &rep_mp, &peer_dir] {
        std::fs::create_dir_all(d).map_err(|e| fail("create the demo directories", e))?;
    }
    let image = dir.join("source.img");
    let secret = dir.join("secret");
    write_secret(&secret)?;
    say(&format!("[{mode}] mkfs {}", image.display()));
    twinfs(exe, &["mkfs", path(&image), "--size", "4G"])?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    say(&format!(
        "[{mode}] peer on {listen} with a replica mount on {}",
        rep_mp.display()
    ));
    let peer = Process::new(
        Command::new(exe)
            .args([
                "peer",
                "--dir",
                path(&peer_dir),
                "--listen",
                &listen,
                "--secret",
                path(&secret),
            ])
            .args(["--mount", path(&rep_mp)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail("start the peer", e))?,
    );
    let _replica_mount = Unmount::new(rep_mp.clone());
    wait_for(
        || std::net::TcpStream::connect(&listen).is_ok(),
        "the peer to listen",
    )?;
    say(&format!(
        "[{mode}] mount {} on {} mirrored to the peer",
        image.display(),
        src_mp.display()
    ));
    // Registered before mounting: a signal may come while `twinfs mount`
    // is returning, with the mount already in place.
    let _source_mount = Unmount::new(src_mp.clone());
    twinfs(
        exe,
        &[
            "mount",
            path(&image),
            path(&src_mp),
            "--peer",
            &listen,
            "--secret",
            path(&secret),
            "--cp-sync",
            mode,
        ],
    )?;
    let started = Instant::now();
    say(&format!(
        "[{mode}] cp -a {} and write the large file",
        tree.display()
    ));
    let status = Command::new("cp")
        .args(["-a", path(tree), path(&src_mp.join("tree"))])
        .status()
        .map_err(|e| fail("run cp", e))?;
    if !status.success() {
        return Err(fail(
            "cp -a into the mount",
            format!("cp exited with {status}"),
        ));
    }
    write_big(&src_mp.join("big.bin"))?;
    say(&format!(
        "[{mode}] checkpoint (returns once the peer applied it)"
    ));
    twinfs(exe, &["checkpoint", path(&src_mp)])?;
    say(&format!(
        "[{mode}] verify --deep: root hashes and a rehash of every block on both sides"
    ));
    twinfs(exe, &["verify", "--deep", path(&src_mp)])?;
    wait_for(
        || rep_mp.join("big.bin").exists(),
        "the replica view to show the CP",
    )?;
    let (files, bytes) = compare_trees(&src_mp, &rep_mp)?;
    say(&format!(
        "[{mode}] replica equal to source: {files} files, {} MiB, compared byte for byte ({:.1} s)",
        bytes >> 20,
        started.elapsed().as_secs_f64()
    ));
    let st = status_json(exe, &src_mp)?;
    let b = &st["bytes"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let row = Row {
        mode,
        written: n(&b["written"]),
        wire: n(&b["wire_total"]),
        log: n(&b["log_sent"]),
        cp: n(&b["cp_sent"]),
        full: n(&b["full"]["blocks"]),
        refs: n(&b["refs"]["blocks"]),
        recipes: n(&b["recipes"]["blocks"]),
        deltas: n(&b["deltas"]["blocks"]),
    };
    drop(_source_mount);
    drop(peer);
    drop(_replica_mount);
    let _ = std::fs::remove_dir_all(dir);
    Ok(row)
}

fn say(msg: &str) {
    println!("demo: {msg}");
    let _ = std::io::stdout().flush();
}

fn mib(b: u64) -> String {
    format!("{:.1}M", b as f64 / (1 << 20) as f64)
}

fn fail(what: &str, why: impl std::fmt::Display) -> CmdError {
    CmdError::failed(
        format!("demo: {what}"),
        why,
        "run the step by hand to see more (see README)",
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn twinfs(exe: &Path, args: &[&str]) -> Result<(), CmdError> {
    let out = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(&format!("run twinfs {}", args[0]), e))?;
    if !out.status.success() {
        return Err(fail(
            &format!("twinfs {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

fn status_json(exe: &Path, mp: &Path) -> Result<serde_json::Value, CmdError> {
    let out = Command::new(exe)
        .args(["status", "--json", path(mp)])
        .output()
        .map_err(|e| fail("run twinfs status", e))?;
    serde_json::from_slice(&out.stdout).map_err(|e| fail("read twinfs status --json", e))
}

fn write_secret(p: &Path) -> Result<(), CmdError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| fail("make a secret", e))?;
    std::fs::write(p, bytes).map_err(|e| fail("write the secret", e))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail("chmod the secret", e))?;
    // Source and peer run here with the channel's default key files next to
    // the secret: one key pair, which both trust.
    let dir = p.parent().unwrap_or(Path::new("."));
    let key = twinfs_replicate::StaticKey::generate().map_err(|e| fail("make a key pair", e))?;
    let public = key
        .write_files(
            &dir.join(twinfs_replicate::keys::DEFAULT_KEY_FILE),
            "demo",
            true,
        )
        .map_err(|e| fail("write the key pair", e))?;
    std::fs::copy(
        public,
        dir.join(twinfs_replicate::keys::DEFAULT_TRUSTED_FILE),
    )
    .map(|_| ())
    .map_err(|e| fail("write the trusted keys", e))
}

fn free_port() -> Result<u16, CmdError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| fail("find a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| fail("find a free port", e))?
        .port())
}

fn wait_for(mut ok: impl FnMut() -> bool, what: &str) -> Result<(), CmdError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(fail(&format!("wait for {what}"), "timed out after 30 s"))
}

fn write_big(p: &Path) -> Result<(), CmdError> {
    let mut f = std::fs::File::create(p).map_err(|e| fail("create the large file", e))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..BIG_FILE_MIB {
        for b in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk)
            .map_err(|e| fail("write the large file", e))?;
    }
    f.sync_all().map_err(|e| fail("fsync the large file", e))
}

/// What one tree entry is, for comparison.
#[derive(PartialEq, Eq, Debug)]
enum Entry {
    File {
        mode: u32,
        size: u64,
        hash: [u8; 32],
    },
    Dir {
        mode: u32,
    },
    Link {
        target: PathBuf,
    },
    Other {
        mode: u32,
    },
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Entry>) -> Result<(), CmdError> {
    let dir = root.join(rel);
    let rd = std::fs::read_dir(&dir).map_err(|e| fail(&format!("read {}", dir.display()), e))?;
    for e in rd {
        let e = e.map_err(|e| fail(&format!("read {}", dir.display()), e))?;
        let r = rel.join(e.file_name());
        let p = root.join(&r);
        let m =
            std::fs::symlink_metadata(&p).map_err(|e| fail(&format!("stat {}", p.display()), e))?;
        let ft = m.file_type();
        let entry = if ft.is_symlink() {
            Entry::Link {
                target: std::fs::read_link(&p).map_err(|e| fail("readlink", e))?,
            }
        } else if ft.is_dir() {
            walk(root, &r, out)?;
            Entry::Dir { mode: m.mode() }
        } else if ft.is_file() {
            let mut h = blake3::Hasher::new();
            let mut f =
                std::fs::File::open(&p).map_err(|e| fail(&format!("open {}", p.display()), e))?;
            std::io::copy(&mut f, &mut h).map_err(|e| fail(&format!("read {}", p.display()), e))?;
            Entry::File {
                mode: m.mode(),
                size: m.len(),
                hash: *h.finalize().as_bytes(),
            }
        } else {
            Entry::Other { mode: m.mode() }
        };
        out.insert(r, entry);
    }
    Ok(())
}

/// Compares two trees entry by entry; returns (files, bytes) when equal.
fn compare_trees(a: &Path, b: &Path) -> Result<(u64, u64), CmdError> {
    let (mut ta, mut tb) = (BTreeMap::new(), BTreeMap::new());
    walk(a, Path::new(""), &mut ta)?;
    walk(b, Path::new(""), &mut tb)?;
    for (p, e) in &ta {
        match tb.get(p) {
            Some(f) if f == e => {}
            Some(f) => {
                return Err(fail(
                    "compare the trees",
                    format!("{} differs: {e:?} vs {f:?}", p.display()),
                ))
            }
            None => {
                return Err(fail(
                    "compare the trees",
                    format!("{} is missing on the replica", p.display()),
                ))
            }
        }
    }
    if let Some(p) = tb.keys().find(|p| !ta.contains_key(*p)) {
        return Err(fail(
            "compare the trees",
            format!("{} is only on the replica", p.display()),
        ));
    }
    let files = ta
        .values()
        .filter(|e| matches!(e, Entry::File { .. }))
        .count() as u64;
    let bytes = ta
        .values()
        .map(|e| {
            if let Entry::File { size, .. } = e {
                *size
            } else {
                0
            }
        })
        .sum();
    Ok((files, bytes))
}

/// Kills a child process (SIGTERM, then SIGKILL) when dropped.
struct Process(Option<Child>, u64);

impl Process {
    fn new(child: Child) -> Process {
        let id = register(Undo::Stop(child.id()));
        Process(Some(child), id)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        unregister(self.1);
        if let Some(mut c) = self.0.take() {
            // SAFETY: kill with a valid pid of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Stops a child by its pid from the signal thread (the `Child` stays with
/// its guard): SIGTERM, then SIGKILL after 30 s.
fn stop_pid(pid: u32) {
    let pid = pid as libc::pid_t;
    // SAFETY: signals and waits for our own child by pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: as above, with a valid status pointer.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Unmounts a mount point when dropped (the daemon then takes its final CP and exits).
struct Unmount(PathBuf, u64);

impl Unmount {
    fn new(mp: PathBuf) -> Unmount {
        let id = register(Undo::Unmount(mp.clone()));
        Unmount(mp, id)
    }
}

impl Drop for Unmount {
    fn drop(&mut self) {
        unregister(self.1);
        unmount(&self.0);
    }
}

fn unmount(mp: &Path) {
    for _ in 0..50 {
        let st = Command::new("umount")
            .arg(mp)
            .stderr(Stdio::null())
            .status();
        if matches!(st, Ok(s) if s.success()) || !is_mounted(mp) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if is_mounted(mp) {
        let _ = Command::new("umount").arg("-l").arg(mp).status();
    }
    // Give the daemon time to take its final CP and exit.
    std::thread::sleep(Duration::from_millis(300));
}

fn is_mounted(p: &Path) -> bool {
    let want = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == want.to_str()))
        .unwrap_or(false)
}

struct RemoveOnDrop(PathBuf, u64);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        unregister(self.1);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
