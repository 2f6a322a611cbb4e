//! Failing, slow and full disks under real daemons: a source mounted with
//! `--peer` and its peer, with the fault shim (`faults_common/faultshim.c`,
//! preloaded) failing, shortening, corrupting or stalling chosen calls on
//! chosen files, and a small loop-mounted ext4 for the peer's full disk.
//!
//! What must hold: an error reaches whoever asked (EIO, or ENOSPC for a
//! full volume) and the log; nothing not durable is acknowledged (fsync
//! fails, or in sync mode carries on without the peer and says so); no
//! block whose hash does not match is ever served (the reader gets EIO, the
//! peer asks for the block again); the other side stays safe (the peer's
//! image stays at a whole CP, the source keeps serving); and once the fault
//! is gone everything converges, fsck clean, hashes equal.

mod faults_common;
mod mirror_common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use faults_common::{Action, FaultShim, LoopFs, Rule, READ, SYNC, WRITE};
use mirror_common::*;

/// The source's fsync wait for the peer (`DEFAULT_SYNC_TIMEOUT`).
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// A source and its peer (with a replica view), both with the fault shim
/// loaded, in a scratch directory.
struct Rig {
    src: Option<Source>,
    peer: Peer,
    shim: FaultShim,
    root: PathBuf,
    image: PathBuf,
    secret: PathBuf,
    /// The peer's `--dir`.
    dir: PathBuf,
    view: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Rig {
    /// `mkfs --size SIZE`, the peer in `peer_dir` (default: in the scratch
    /// directory), the source in `mode`; waits until the mirror streams.
    fn start(mode: &str, size: &str, peer_dir: Option<&Path>) -> Rig {
        let scratch = scratch();
        let root = scratch.path().to_path_buf();
        let shim = FaultShim::build(&root);
        let secret = secret_file(&root.join("secret"), b"twinfs disk fault tests secret\n");
        let image = root.join("source.img");
        mkfs(&image, size);
        let dir = peer_dir.map_or_else(|| root.join("peer"), Path::to_path_buf);
        let view = root.join("view");
        fs::create_dir(&view).expect("view mount point");
        let env = shim.env();
        // A peer directory on a small file system takes a larger volume
        // only when told to: the full-disk test fills that file system.
        let args: &[&str] = if peer_dir.is_some() {
            &["--max-volume", "4G"]
        } else {
            &[]
        };
        let peer = Peer::start_with_env(
            &dir,
            0,
            &secret,
            Some(&view),
            &root.join("peer.log"),
            &env,
            args,
        );
        let mut rig = Rig {
            src: None,
            peer,
            shim,
            root,
            image,
            secret,
            dir,
            view,
            _scratch: scratch,
        };
        rig.mount(mode);
        rig.src().wait_streaming(Duration::from_secs(60));
        rig.src().checkpoint();
        rig.peer.wait_view();
        rig
    }

    fn src(&mut self) -> &mut Source {
        self.src.as_mut().expect("the source is mounted")
    }

    /// Mounts the source in `mode` (whatever was mounted is unmounted
    /// first, its exit code ignored).
    fn mount(&mut self, mode: &str) {
        drop(self.src.take());
        let args = [
            "--peer",
            &self.peer.addr(),
            "--secret",
            s(&self.secret),
            "--mode",
            mode,
            "--cp-interval",
            "86400",
        ];
        let env = self.shim.env();
        self.src = Some(Source::start_with_env(
            &self.image,
            &self.root.join("mnt"),
            &args,
            &self.root.join("source.log"),
            &env,
        ));
    }

    /// A clean unmount, which must exit 0, and a new mount in `mode`.
    fn remount(&mut self, mode: &str) {
        let code = self.src().unmount();
        assert_eq!(code, Some(0), "clean unmount: {}", self.src().log_text());
        self.mount(mode);
    }

    /// A CP the peer applies, then `verify --deep`: equal hashes.
    fn converge(&mut self, what: &str) {
        let src = self.src.as_mut().expect("the source is mounted");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            src.wait_streaming(Duration::from_secs(90));
            let ck = src.checkpoint_ran();
            if ck.stdout.contains("applied at the peer") {
                break;
            }
            if Instant::now() > deadline {
                let tail = |t: String| t[t.len().saturating_sub(4000)..].to_string();
                panic!(
                    "{what}: no CP applied at the peer within 90 s: {ck:?}\n{:#}\n--- source log ---\n{}\n--- peer log ---\n{}",
                    src.status(),
                    tail(src.log_text()),
                    tail(self.peer.log_text())
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        src.wait_converged(Duration::from_secs(90));
        let v = twinfs(&["verify", s(&src.mnt), "--deep"]);
        assert!(
            v.code == 0 && v.stdout.contains("equal"),
            "{what}: verify --deep: {}{}",
            v.stdout,
            v.stderr
        );
    }

    fn path(&mut self, rel: &str) -> PathBuf {
        self.src().path(rel)
    }
}

/// Writes `data` to a new file and fsyncs it: the fsync's result and time.
fn write_fsync(path: &Path, data: &[u8]) -> (std::io::Result<()>, Duration) {
    let t = Instant::now();
    let r = (|| {
        let mut f = fs::File::create(path)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    (r, t.elapsed())
}

fn errno(r: &std::io::Result<()>) -> Option<i32> {
    r.as_ref().err().and_then(|e| e.raw_os_error())
}

fn rule(ops: u32, path: &str, action: Action) -> Rule {
    Rule {
        ops,
        path: path.into(),
        action,
        skip: 0,
        count: -1,
    }
}

/// fsck of an image, which must be clean.
fn assert_fsck(image: &Path, when: &str) {
    let r = twinfs(&["fsck", s(image)]);
    assert_eq!(
        r.code,
        0,
        "fsck {} {when}:\n{}{}",
        image.display(),
        r.stdout,
        r.stderr
    );
}

// ---- the source's disk ---------------------------------------------------------

#[test]
fn a_failing_source_disk_fails_loudly_and_loses_nothing_fsynced() {
    let _serial = serial();
    let mut r = Rig::start("sync", "256M", None);
    let a = pattern((1 << 20) + 333, 1);
    let (res, _) = write_fsync(&r.path("a"), &a);
    res.expect("fsync before any fault");

    // Short writes: every write to the image returns half; the retries
    // complete it. Nothing is lost or torn.
    r.shim.set(
        0,
        &Rule {
            count: 40,
            ..rule(WRITE, "source.img", Action::Short)
        },
    );
    let b = pattern(3 << 20, 2);
    let (res, _) = write_fsync(&r.path("b"), &b);
    res.expect("fsync with short writes to the image");
    r.src().checkpoint();
    assert!(r.shim.fired(0) > 0, "no short write was given");
    r.shim.clear();

    // Corrupt reads: a block read from the image with a flipped bit is an
    // I/O error for the reader, never wrong bytes; the log says which block.
    r.remount("sync");
    let mut f = fs::File::open(r.path("a")).expect("open a");
    r.shim.set(0, &rule(READ, "source.img", Action::Corrupt));
    let got = std::io::Read::read_to_end(&mut f, &mut Vec::new());
    drop(f);
    let fired = r.shim.fired(0);
    r.shim.clear();
    let e = got.expect_err("reading blocks that fail their hash must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(fired > 0, "no read was corrupted");
    let log = r.src().log_text();
    assert!(
        log.contains("hash") || log.contains("corrupt"),
        "the source's log names the bad block:\n{log}"
    );
    // The fault was in the read, not on the disk: a new read is right.
    assert!(fs::read(r.path("a")).expect("read a again") == a);

    // Writes fail: the change is refused with EIO, never acknowledged.
    let peer_before = dir_status(&r.dir);
    r.shim.set(
        0,
        &rule(WRITE | SYNC, "source.img", Action::Error(libc::EIO)),
    );
    let (res, _) = write_fsync(&r.path("c"), &pattern(200_000, 3));
    assert_eq!(
        errno(&res),
        Some(libc::EIO),
        "fsync on a failing disk: {res:?}"
    );
    let (again, _) = write_fsync(&r.path("d"), b"after the failure");
    assert!(again.is_err(), "a volume whose disk failed took a change");
    assert!(r.shim.fired(0) > 0);
    let log = r.src().log_text();
    assert!(
        log.contains("Input/output error"),
        "the log says why:\n{log}"
    );
    // The peer is untouched: still at a whole CP the source had committed.
    let peer_now = dir_status(&r.dir);
    assert_eq!(
        peer_now["applied_cp"], peer_before["applied_cp"],
        "{peer_now:#}"
    );
    assert_eq!(
        peer_now["root_hash"], peer_before["root_hash"],
        "{peer_now:#}"
    );
    fs::read_dir(&r.view).expect("the replica view still serves");

    // The disk heals; the daemon is stopped and started again on it.
    r.shim.clear();
    // The daemon of a failed volume still stops on SIGTERM, saying why.
    let code = r.src().unmount();
    assert_eq!(
        code,
        Some(1),
        "unmount of a failed volume: {}",
        r.src().log_text()
    );
    let image = r.image.clone();
    assert_fsck(&image, "after the failed writes");
    r.mount("sync");
    assert!(fs::read(r.path("a")).unwrap() == a, "a after the failure");
    assert!(fs::read(r.path("b")).unwrap() == b, "b after the failure");
    r.converge("after the failing disk");
}

// ---- the peer's disk -------------------------------------------------------------

/// Peer files by the part of their path a rule matches.
const SEGMENTS: &str = "/peer/log/";
const MIRROR: &str = "/peer/mirror.img";
const JOURNAL: &str = "/peer/journal";

/// In strict mode an fsync the peer cannot make durable fails, whatever
/// the peer's storage does wrong; nothing it did not store is acknowledged.
/// Each fault in turn, each time healed: EIO on writes and on fsyncs of the
/// log store, short writes, EIO while applying a CP (the image stays at the
/// previous CP, whole), and corrupt reads, which never make a wrong block.
#[test]
fn a_failing_peer_disk_is_never_taken_for_a_durable_one() {
    let _serial = serial();
    let mut r = Rig::start("strict", "256M", None);
    let mut n = 0u64;
    let mut write_file = |r: &mut Rig, len: usize| {
        n += 1;
        let name = format!("f{n}");
        let data = pattern(len, n);
        let res = write_fsync(&r.path(&name), &data);
        (name, data, res)
    };

    // Log store: writes fail, then fsyncs fail.
    for (what, ops) in [("writes", WRITE), ("fsyncs", SYNC)] {
        r.shim
            .set(0, &rule(ops, SEGMENTS, Action::Error(libc::EIO)));
        let (name, _, (res, took)) = write_file(&mut r, 300_000);
        assert_eq!(
            errno(&res),
            Some(libc::EIO),
            "strict fsync while the peer's log store {what} fail: {res:?} after {took:?}"
        );
        assert!(
            r.shim.fired(0) > 0,
            "the peer's log store {what} were not hit"
        );
        let st = r.src().status();
        let peer_log = r.peer.log_text();
        assert!(
            peer_log.contains("Input/output error"),
            "the peer logs the failing {what}:\n{peer_log}"
        );
        r.peer.assert_running("its log store failing");
        r.shim.clear();
        r.converge(&format!(
            "after failing log store {what} ({name}), status then: {st:#}"
        ));
    }

    // Short writes everywhere in the peer's directory: completed by retries.
    r.shim.set(
        0,
        &Rule {
            count: 200,
            ..rule(WRITE, "/peer/", Action::Short)
        },
    );
    let (short_name, short_data, (res, _)) = write_file(&mut r, 2 << 20);
    res.expect("strict fsync with short writes at the peer");
    r.converge("with short writes at the peer");
    assert!(r.shim.fired(0) > 0, "no short write at the peer");
    r.shim.clear();
    r.peer.wait_view();
    assert!(
        fs::read(r.view.join(&short_name)).expect("read in the view") == short_data,
        "{short_name} written with short writes at the peer differs in the view"
    );

    // The image fails while a CP is applied: the CP is not applied, the
    // image is still the previous CP, whole; then it is applied.
    let before = dir_status(&r.dir);
    let (_, _, (res, _)) = write_file(&mut r, 4 << 20);
    res.expect("fsync before the image fails");
    r.shim
        .set(0, &rule(WRITE | SYNC, MIRROR, Action::Error(libc::EIO)));
    let ck = r.src().checkpoint_ran();
    assert!(
        !ck.stdout.contains("applied at the peer"),
        "a CP the peer could not write was reported applied: {ck:?}"
    );
    assert!(r.shim.fired(0) > 0, "the image was not written");
    let during = dir_status(&r.dir);
    assert_eq!(during["applied_cp"], before["applied_cp"], "{during:#}");
    assert_eq!(during["root_hash"], before["root_hash"], "{during:#}");
    r.shim.clear();
    r.converge("after the image failed mid-CP");
    r.peer.stop();
    assert_fsck(&r.dir.join("mirror.img"), "after the image failed mid-CP");
    r.peer.restart();
    r.peer.wait_view();

    // The image's fdatasync after the new superblock fails: the peer must
    // not take that CP for applied, not even after it recovers its
    // directory (the superblock it wrote is still in the page cache).
    r.converge("before the superblock's sync fails");
    let before = dir_status(&r.dir);
    let (_, _, (res, _)) = write_file(&mut r, 5000);
    res.expect("fsync before the superblock's sync fails");
    r.shim.set(
        0,
        &Rule {
            skip: 1,
            ..rule(SYNC, MIRROR, Action::Error(libc::EIO))
        },
    );
    let ck = r.src().checkpoint_ran();
    assert!(
        r.shim.fired(0) >= 1,
        "the superblock's sync was not hit: {ck:?}"
    );
    assert!(
        !ck.stdout.contains("applied at the peer"),
        "a CP whose superblock did not sync was reported applied: {ck:?}"
    );
    // Every later sync of the image fails too (a retry cannot apply it);
    // the peer's own view of its directory is what is checked.
    r.peer.stop();
    r.shim.clear();
    let after = dir_status(&r.dir);
    assert_eq!(
        after["applied_cp"], before["applied_cp"],
        "the peer's directory claims a CP whose superblock never synced: {after:#}"
    );
    r.peer.restart();
    r.peer.wait_view();

    // Corrupt reads of the log store while a CP is rebuilt from it: every
    // block is checked against its hash, so the peer asks for the blocks
    // again and the CP is applied right.
    r.converge("after the peer restarted");
    let misses0 = counter(&r.src().status(), "bytes.misses.blocks");
    let (_, _, (res, _)) = write_file(&mut r, 2 << 20);
    res.expect("fsync before corrupt reads");
    r.shim.set(0, &rule(READ, SEGMENTS, Action::Corrupt));
    r.src().checkpoint();
    let corrupted = r.shim.fired(0);
    r.shim.clear();
    assert!(corrupted > 0, "the CP read nothing from the log store");
    let misses = counter(&r.src().status(), "bytes.misses.blocks") - misses0;
    assert!(
        misses > 0,
        "no block was asked for again after {corrupted} corrupt reads"
    );
    r.converge("after corrupt reads of the log store");

    // Corrupt reads of the image under the replica view: EIO, not bytes.
    let view_file = r.view.join(&short_name);
    let mut f = fs::File::open(&view_file).expect("open in the view");
    r.shim.set(0, &rule(READ, MIRROR, Action::Corrupt));
    let got = std::io::Read::read_to_end(&mut f, &mut Vec::new());
    drop(f);
    r.shim.clear();
    let e = got.expect_err("the view served blocks that fail their hash");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");

    // After all that, both sides agree and both images are clean.
    r.converge("at the end");
    r.src().unmount();
    r.peer.stop();
    assert_fsck(&r.image, "at the end");
    assert_fsck(&r.dir.join("mirror.img"), "at the end");
}

/// A resync that reuses blocks of the peer's CP stages them in the
/// journal; when the journal cannot be written the peer keeps its CP whole.
#[test]
fn a_failing_peer_journal_leaves_the_previous_cp_whole() {
    let _serial = serial();
    let mut r = Rig::start("sync", "256M", None);
    fs::write(r.path("a"), pattern(1 << 20, 1)).unwrap();
    r.src().checkpoint();
    let before = dir_status(&r.dir);
    // Two CPs while the peer is away: the resync's CP lands in the same
    // superblock slot as the peer's, which takes the journal.
    r.peer.kill9();
    for i in 0..2 {
        fs::write(r.path(&format!("away{i}")), pattern(300_000, 10 + i)).unwrap();
        fs::remove_file(r.path("a")).ok();
        r.src().checkpoint_alone();
    }
    r.shim
        .set(0, &rule(WRITE | SYNC, JOURNAL, Action::Error(libc::EIO)));
    r.peer.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.shim.fired(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "the resync never wrote the journal"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = dir_status(&r.dir);
    assert_eq!(during["applied_cp"], before["applied_cp"], "{during:#}");
    assert_eq!(during["root_hash"], before["root_hash"], "{during:#}");
    r.peer.stop();
    assert_fsck(&r.dir.join("mirror.img"), "after the journal failed");
    r.shim.clear();
    r.peer.restart();
    r.converge("after the journal failed");
}

// ---- slow disks --------------------------------------------------------------------

/// A disk that stalls for seconds holds up only what must wait for it.
#[test]
fn a_stalled_disk_does_not_wedge_the_other_side() {
    let _serial = serial();
    let mut r = Rig::start("sync", "256M", None);
    fs::write(r.path("old"), pattern(100_000, 1)).unwrap();
    r.src().checkpoint();
    const STALL: Duration = Duration::from_secs(8);

    // The peer's log store stalls: a sync-mode fsync waits at most the sync
    // timeout, and everything else on the source goes on meanwhile.
    r.shim.set(
        0,
        &Rule {
            count: 1,
            ..rule(SYNC, SEGMENTS, Action::Stall(STALL))
        },
    );
    let p = r.path("during-peer-stall");
    let fsync = std::thread::spawn(move || write_fsync(&p, &pattern(50_000, 2)));
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    assert!(fs::read(r.path("old")).unwrap() == pattern(100_000, 1));
    fs::write(r.path("no-fsync"), b"written while the peer's disk stalls").unwrap();
    let _ = r.src().status();
    let side = t.elapsed();
    let (res, took) = fsync.join().unwrap();
    res.expect("sync-mode fsync while the peer's disk stalls");
    assert!(r.shim.fired(0) == 1, "the stall was not hit");
    assert!(
        side < Duration::from_secs(2),
        "reads, writes and status on the source took {side:?} while the peer's disk stalled"
    );
    assert!(
        took < SYNC_TIMEOUT + Duration::from_secs(3),
        "fsync waited {took:?} for a peer whose disk stalls for {STALL:?}"
    );
    r.shim.clear();
    std::thread::sleep(STALL);
    r.converge("after the peer's disk stalled");

    // The source's disk stalls: its own fsync waits, the peer does not.
    r.shim.set(
        0,
        &Rule {
            count: 1,
            ..rule(
                SYNC | WRITE,
                "source.img",
                Action::Stall(Duration::from_secs(6)),
            )
        },
    );
    let p = r.path("during-source-stall");
    let fsync = std::thread::spawn(move || write_fsync(&p, &pattern(50_000, 3)));
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let ds = dir_status(&r.dir);
    assert_eq!(ds["daemon_running"], true, "{ds:#}");
    fs::read_dir(&r.view).expect("the replica view serves");
    fs::read(r.view.join("old")).expect("reading the replica view");
    let side = t.elapsed();
    assert!(
        side < Duration::from_secs(2),
        "the peer took {side:?} to answer while the source's disk stalled"
    );
    let (res, _) = fsync.join().unwrap();
    res.expect("fsync on a stalled (not failed) source disk");
    assert!(r.shim.fired(0) == 1, "the source's stall was not hit");
    r.shim.clear();
    r.converge("after the source's disk stalled");
}

// ---- full disks ----------------------------------------------------------------------

/// Writes files `prefix-N` of `len` bytes, each fsynced, until a write or
/// fsync fails or `max` are written; returns the whole files and the error.
fn fill(
    dir: &Path,
    prefix: &str,
    len: usize,
    max: usize,
) -> (Vec<(PathBuf, Vec<u8>)>, Option<std::io::Error>) {
    let mut done = Vec::new();
    for i in 0..max {
        let p = dir.join(format!("{prefix}-{i}"));
        let data = pattern(len, 1000 + i as u64);
        let (res, _) = write_fsync(&p, &data);
        match res {
            Ok(()) => done.push((p, data)),
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

fn assert_files(files: &[(PathBuf, Vec<u8>)], when: &str) {
    for (p, data) in files {
        let got = fs::read(p).unwrap_or_else(|e| panic!("{when}: read {}: {e}", p.display()));
        assert!(got == *data, "{when}: {} differs", p.display());
    }
}

/// Bytes available in the mount (statvfs).
fn available(mnt: &Path) -> u64 {
    let c = std::ffi::CString::new(s(mnt)).expect("path");
    // SAFETY: buf is zeroed and filled by the call; c is a valid C string.
    unsafe {
        let mut buf: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut buf), 0, "statvfs");
        buf.f_frsize as u64 * buf.f_bavail as u64
    }
}

/// A full mirrored volume whose deleted files a snapshot still holds, with
/// the peer holding its last CP: writers get ENOSPC (never EIO), nothing
/// written is harmed, a CP still commits, deleting files gives room back
/// once the peer has applied the CP that freed them, writes resume, and
/// deleting the snapshot gives back what it held.
#[test]
fn a_full_source_volume_says_enospc_and_recovers_with_a_snapshot_and_the_peer_holding_blocks() {
    let _serial = serial();
    let mut r = Rig::start("async", "96M", None);
    let mnt = r.src().mnt.clone();
    const MIB: usize = 1 << 20;
    // Set 1: in a CP the peer applied, and in a snapshot; then deleted.
    fs::create_dir(mnt.join("set1")).unwrap();
    let (set1, err) = fill(&mnt.join("set1"), "f", 3 * MIB, 8);
    assert!(err.is_none(), "{err:?}");
    let snap = twinfs(&["snapshot", "create", s(&mnt), "s1"]);
    assert_eq!(snap.code, 0, "{snap:?}");
    fs::remove_dir_all(mnt.join("set1")).unwrap();
    r.converge("after set 1");
    // Fill: ENOSPC, not EIO, and everything before it intact.
    fs::create_dir(mnt.join("set2")).unwrap();
    let (set2, err) = fill(&mnt.join("set2"), "f", MIB + 1000, 200);
    let err = err.expect("200 MiB fitted in a 96 MiB volume");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "on a full volume: {err:?}"
    );
    assert!(!set2.is_empty(), "nothing fitted beside the held set 1");
    assert_files(&set2, "when full");
    for (i, (_, data)) in set1.iter().enumerate() {
        let got = fs::read(mnt.join(format!(".snapshot/s1/set1/f-{i}"))).expect("snapshot file");
        assert!(got == *data, "snapshot s1 set1/f-{i} on a full volume");
    }
    r.converge("when full");
    // Deleting files gives room back once the peer applied the CP that
    // freed them (until then they are kept for the peer's CP).
    let (gone, kept) = set2.split_at(set2.len() / 2);
    let full = available(&mnt);
    for (p, _) in gone {
        fs::remove_file(p).unwrap();
    }
    let freed = (gone.len() * MIB) as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while available(&mnt) < full + freed * 8 / 10 {
        assert!(
            Instant::now() < deadline,
            "deleting {freed} bytes gave back {} bytes",
            available(&mnt).saturating_sub(full)
        );
        r.converge("after deletes on a full volume");
    }
    let (set3, err) = fill(&mnt, "g", MIB, gone.len() / 2);
    assert!(
        err.is_none(),
        "writes after deletes on a full volume: {err:?}"
    );
    assert_files(kept, "after deletes");
    assert_files(&set3, "after deletes");
    // The snapshot let go: set 1's room comes back.
    let before = available(&mnt);
    let del = twinfs(&["snapshot", "delete", s(&mnt), "s1"]);
    assert_eq!(del.code, 0, "{del:?}");
    let set1_bytes = (set1.len() * 3 * MIB) as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while available(&mnt) < before + set1_bytes * 8 / 10 {
        assert!(
            Instant::now() < deadline,
            "deleting the snapshot freed {} bytes of set 1's {set1_bytes}",
            available(&mnt).saturating_sub(before)
        );
        r.converge("after the snapshot was deleted");
    }
    let (_, err) = fill(&mnt, "h", MIB, set1.len() * 2);
    assert!(err.is_none(), "writing into set 1's room: {err:?}");
    assert_files(kept, "at the end");
    r.converge("at the end");
    assert_eq!(r.src().unmount(), Some(0));
    r.peer.stop();
    assert_fsck(&r.image, "after filling");
    assert_fsck(&r.dir.join("mirror.img"), "after filling");
}

/// A volume that fills up while its peer is away: deleting files shows as
/// room at the next CP (`df` counts blocks kept only for the absent peer as
/// free) and writes go on (the hold is given up when they need its blocks;
/// the peer catches up by a resync).
#[test]
fn deletes_give_room_back_while_the_peer_is_away() {
    let _serial = serial();
    let mut r = Rig::start("async", "96M", None);
    let mnt = r.src().mnt.clone();
    const MIB: usize = 1 << 20;
    r.peer.kill9();
    let (files, err) = fill(&mnt, "f", MIB, 200);
    assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::ENOSPC));
    let full = available(&mnt);
    for (p, _) in &files {
        fs::remove_file(p).unwrap();
    }
    for _ in 0..3 {
        assert_eq!(r.src().checkpoint_ran().code, 0);
    }
    let room = available(&mnt).saturating_sub(full);
    assert!(
        room >= (files.len() * MIB) as u64 * 8 / 10,
        "deleting {} files of 1 MiB gave back {room} bytes while the peer is away",
        files.len()
    );
    let (written, err) = fill(&mnt, "g", MIB, files.len() / 2);
    assert!(
        err.is_none(),
        "writes after deletes with the peer away: {err:?}"
    );
    // The peer comes back and catches up: the same bytes on both sides.
    r.peer.restart();
    r.converge("after the peer came back");
    assert_files(&written, "after the peer came back");
}

/// The peer's directory on a small file system that fills up: the peer
/// refuses what it cannot store (its image and log store stay whole), a
/// sync-mode source carries on without it and says so, a strict-mode
/// fsync fails with EIO, and once room is made everything converges.
#[test]
fn a_full_peer_disk_refuses_what_it_cannot_store_and_recovers() {
    let _serial = serial();
    let outer = scratch();
    let lfs = LoopFs::new(
        &outer.path().join("peerfs.img"),
        &outer.path().join("peerfs"),
        160,
    );
    let mut r = Rig::start("sync", "512M", Some(&lfs.mnt.join("peer")));
    let mnt = r.src().mnt.clone();
    const MIB: usize = 1 << 20;

    for (round, mode) in ["sync", "strict"].into_iter().enumerate() {
        if mode == "strict" {
            r.remount("strict");
        }
        let before = dir_status(&r.dir);
        let ballast = lfs.fill_leaving(10 * MIB as u64);
        let dir = mnt.join(format!("round{round}"));
        fs::create_dir(&dir).unwrap();
        let (files, err) = fill(&dir, "f", MIB, 24);
        let st = r.src().status();
        let peer_log = r.peer.log_text();
        r.peer.assert_running("its disk is full");
        assert!(
            peer_log.contains("No space left on device"),
            "{mode}: the peer logs the full disk:\n{peer_log}"
        );
        match mode {
            "sync" => {
                assert!(
                    err.is_none(),
                    "sync mode carries on without the peer: {err:?}"
                );
                assert!(
                    st["peer"]["state"]
                        .as_str()
                        .unwrap_or("")
                        .contains("degraded"),
                    "sync mode says it carries on without the peer: {st:#}"
                );
                // Each retry ends with the peer's refusal; the source reads
                // it unless its own write met the closed connection first
                // ("Connection reset"), so look over a few retries.
                let mut last = st.clone();
                let deadline = Instant::now() + Duration::from_secs(20);
                while !last["peer"]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("No space left on device"))
                {
                    assert!(
                        Instant::now() < deadline,
                        "the source's status names the peer's full disk: {last:#}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                    last = r.src().status();
                }
            }
            _ => {
                let err = err.expect("strict fsync with the peer's disk full");
                assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err:?}");
            }
        }
        // A peer that fails every session is not retried in a tight loop
        // (each retry is a resync of what it lacks).
        let wire = |r: &mut Rig| counter(&r.src().status(), "bytes.wire_total");
        let (w0, t0) = (wire(&mut r), Instant::now());
        std::thread::sleep(Duration::from_secs(6));
        let per_sec = (wire(&mut r) - w0) as f64 / t0.elapsed().as_secs_f64();
        assert!(
            per_sec < (8 * MIB) as f64,
            "{mode}: {:.1} MiB/s to a peer that refuses every session",
            per_sec / MIB as f64
        );
        // The peer kept what it had whole: the same or a later CP of ours.
        let during = dir_status(&r.dir);
        assert!(
            during["applied_cp"].as_u64() >= before["applied_cp"].as_u64(),
            "{during:#}"
        );
        assert!(r.peer.log_text().len() >= peer_log.len());
        assert_files(&files, "with the peer's disk full");
        // Room again: the peer catches up by itself.
        fs::remove_file(&ballast).unwrap();
        r.converge(&format!("{mode}: after room was made at the peer"));
        r.peer.wait_view();
        wait_same_tree(&mnt, &r.view, Compare::EXACT, Duration::from_secs(30));
    }
    assert_eq!(r.src().unmount(), Some(0));
    r.peer.stop();
    assert_fsck(&r.dir.join("mirror.img"), "after the peer's disk was full");
    drop(r);
    drop(lfs);
}
