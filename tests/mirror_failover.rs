//! Failover without losing a byte: the real binaries on loopback.
//!
//! - The old source, back after its replica was promoted, is refused by the
//!   new primary's peer as a split brain; nothing is applied, both sides
//!   show it, and a failback turns the old source into the new primary's
//!   peer while its own late changes stay readable in a kept copy.
//! - Both sides written during a partition: the split brain is detected on
//!   reconnection and nothing is lost on either side.
//! - A peer directory, and a source image, restored from older copies are
//!   each detected and nothing is applied.
//! - A mirror image is refused read-write; a mount whose peer refuses it
//!   says so before it goes to the background.

mod mirror_common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use mirror_common::*;

const WAIT: Duration = Duration::from_secs(60);

/// Writes `data` to `path` and fsyncs it.
fn write_synced(path: &Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().expect("fsync");
}

/// Waits until `twinfs status MNT` reports the peer state `state`.
fn wait_peer_state(src: &mut Source, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        src.assert_running("waiting for the peer's verdict");
        let last = status_of(&src.mnt);
        if last["peer"]["state"] == state {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "no peer state {state} after {WAIT:?}: {last:#}\n{}",
            src.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the peer directory's status has the headline `state`.
fn wait_dir_state(dir: &Path, state: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_for(&format!("peer directory state {state}"), WAIT, || {
        last = dir_status(dir);
        last["state"] == state
    });
    last
}

/// `twinfs promote DIR`; returns the image path (its last line).
fn promote(dir: &Path) -> std::path::PathBuf {
    let out = twinfs_ok(&["promote", s(dir)]);
    out.lines().last().expect("a last line").into()
}

#[test]
fn the_old_source_back_after_a_promote_is_refused_and_failback_keeps_both_sides() {
    let _serial = serial();
    let mut p = Pair::start("512M", false, &["--mode", "sync"]);
    let root = p.root.clone();
    // Common history: a tree and a large file, applied at the peer.
    make_tree(&p.src.path("common"), 1, TreeShape::SMALL);
    write_synced(&p.src.path("big"), &pattern(24 << 20, 2));
    let common = p.src.checkpoint();
    // The next CP records that the peer holds `common` (an image records
    // its peer's CP at the CP after the acknowledgement: failback resends
    // at most the CP interval before a loss).
    write_synced(&p.src.path("small"), b"one more CP");
    p.src.checkpoint();
    // A late change the peer holds only in its log (sync mode), then the
    // source is lost.
    write_synced(&p.src.path("late"), b"fsynced before the loss");
    p.src.kill9();
    p.peer.stop();

    // The replica takes over, with a new peer of its own, and writes.
    let new_image = promote(&p.dir);
    let dir2 = root.join("peer2");
    fs::create_dir_all(root.join("view2")).unwrap();
    let mut peer2 = Peer::start(
        &dir2,
        0,
        &p.secret,
        Some(&root.join("view2")),
        &root.join("peer2.log"),
    );
    let mut n = Source::mirrored(
        &new_image,
        &root.join("mnt-n"),
        &peer2.addr(),
        &p.secret,
        &["--mode", "sync"],
        &root.join("n.log"),
    );
    n.wait_streaming(WAIT);
    assert_eq!(
        fs::read(n.path("late")).unwrap(),
        b"fsynced before the loss"
    );
    write_synced(&n.path("n-file"), &pattern(300_000, 3));
    let n_cp = n.checkpoint();
    assert!(n_cp > common, "the new primary went on after CP {common}");
    let n_root = n.status()["root_hash"].clone();

    // The old source comes back and is mounted against that peer: refused.
    fs::create_dir_all(root.join("mnt-o")).unwrap();
    let refused = twinfs(&[
        "mount",
        s(&p.image),
        s(&root.join("mnt-o")),
        "--peer",
        &peer2.addr(),
        "--secret",
        s(&p.secret),
        "--require-peer",
    ]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("split-brain"), "{}", refused.stderr);
    assert!(!is_mounted(&root.join("mnt-o")));
    // Without --require-peer it mounts, and says why it does not mirror.
    let mut o = Source::mirrored(
        &p.image,
        &root.join("mnt-o"),
        &peer2.addr(),
        &p.secret,
        &["--mode", "sync"],
        &root.join("o.log"),
    );
    let st = wait_peer_state(&mut o, "split-brain");
    let d = &st["peer"]["divergence"];
    assert_eq!(d["kind"], "split-brain", "{st:#}");
    assert!(
        d["common_cp"].as_u64().is_some_and(|c| c >= common),
        "{st:#}"
    );
    assert!(d["reason"].as_str().unwrap().contains("failback"), "{st:#}");
    assert_ne!(d["source_lineage"], d["peer_lineage"]);
    assert_eq!(st["state"], "refused", "{st:#}");
    let text = o.status_text_says("refused");
    assert!(
        text.contains("failback"),
        "the action is the way out:\n{text}"
    );
    // The old source keeps working alone: fsync does not wait (sync mode).
    write_synced(
        &o.path("o-diverged"),
        b"written by the old source after the split",
    );
    assert!(
        o.log_text().contains("split-brain"),
        "logged at error level"
    );

    // The peer applied nothing of it and says so; the new primary's data is whole.
    let pst = wait_dir_state(&dir2, "split-brain");
    assert_eq!(pst["applied_cp"], n_cp, "{pst:#}");
    assert_eq!(pst["root_hash"], n_root, "{pst:#}");
    assert_eq!(pst["divergence"]["kind"], "split-brain");
    peer2.wait_view();
    assert_eq!(
        fs::read(root.join("view2/n-file")).unwrap(),
        pattern(300_000, 3)
    );
    assert!(!root.join("view2/o-diverged").exists());
    let n_st = n.wait_converged(WAIT);
    assert_eq!(n_st["root_hash"], n_root);

    // Resolution: the old source becomes the new primary's peer.
    o.unmount();
    let dir3 = root.join("peer3");
    let out = twinfs_ok(&["failback", s(&p.image), "--dir", s(&dir3)]);
    let kept = root.join(format!(
        "{}.diverged-cp{}",
        p.image.file_name().unwrap().to_str().unwrap(),
        status_cp_of_kept(&out)
    ));
    assert!(kept.is_file(), "{out}");
    assert!(!p.image.exists(), "the image moved into {}", dir3.display());
    // Its diverged files stay readable in the kept copy.
    let mut kept_mount = Source::start(
        &kept,
        &root.join("mnt-kept"),
        &["-o", "ro"],
        &root.join("kept.log"),
    );
    assert_eq!(
        fs::read(kept_mount.path("o-diverged")).unwrap(),
        b"written by the old source after the split"
    );
    assert_eq!(
        fs::read(kept_mount.path("late")).unwrap(),
        b"fsynced before the loss"
    );
    kept_mount.unmount();

    // The new primary mirrors to it and sends only what changed.
    let mut peer3 = Peer::start(&dir3, 0, &p.secret, None, &root.join("peer3.log"));
    n.unmount();
    peer2.stop();
    let mut n = Source::mirrored(
        &new_image,
        &root.join("mnt-n"),
        &peer3.addr(),
        &p.secret,
        &["--mode", "sync"],
        &root.join("n2.log"),
    );
    let st = n.wait_converged(WAIT);
    let sent = counter(&st, "bytes.wire_total");
    assert!(
        sent < 8 << 20,
        "failback sent {sent} bytes; the volume holds over 24 MiB that were common"
    );
    let out = twinfs_ok(&["verify", s(&n.mnt), "--deep"]);
    assert!(out.contains("equal"), "{out}");
    peer3.assert_running("after the failback");

    // The recorded split brain on the other peer is cleared by hand.
    let out = twinfs_ok(&["resolve", "--dir", s(&dir2), "--keep-replica"]);
    assert!(out.contains("stays"), "{out}");
    assert_eq!(dir_status(&dir2)["divergence"], serde_json::Value::Null);
}

/// Failback after the new primary changed a lot (1 GiB by default,
/// `TWINFS_FAILBACK_MIB`): what goes to the old source is the change and
/// little more, and the two sides end with the same root hash.
#[test]
fn failback_after_a_large_change_sends_little_more_than_the_change() {
    let _serial = serial();
    let mib: usize = std::env::var("TWINFS_FAILBACK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = format!("{}M", 256 + mib * 5 / 4);
    let mut p = Pair::start(&size, false, &["--mode", "sync"]);
    let root = p.root.clone();
    // Common history, and a CP that records that the peer holds it.
    make_tree(&p.src.path("common"), 4, TreeShape::SMALL);
    write_synced(&p.src.path("common.bin"), &pattern(32 << 20, 4));
    p.src.checkpoint();
    write_synced(&p.src.path("small"), b"one more CP");
    p.src.checkpoint();
    p.src.kill9();
    p.peer.stop();

    // The new primary runs alone and rewrites much of the volume.
    let new_image = promote(&p.dir);
    let mut n = Source::start(&new_image, &root.join("mnt-n"), &[], &root.join("n.log"));
    let started = Instant::now();
    {
        let mut f = fs::File::create(n.path("changed.bin")).unwrap();
        for i in 0..mib {
            f.write_all(&pattern(1 << 20, 1000 + i as u64)).unwrap();
        }
        f.sync_all().expect("fsync");
    }
    fs::remove_file(n.path("common.bin")).unwrap();
    twinfs_ok(&["checkpoint", s(&n.mnt)]);
    eprintln!(
        "wrote {mib} MiB on the new primary in {:?}",
        started.elapsed()
    );
    n.unmount();

    // The old source becomes its peer; only the change travels.
    let dir3 = root.join("peer3");
    twinfs_ok(&["failback", s(&p.image), "--dir", s(&dir3)]);
    let _peer3 = Peer::start(&dir3, 0, &p.secret, None, &root.join("peer3.log"));
    let started = Instant::now();
    let mut n = Source::mirrored(
        &new_image,
        &root.join("mnt-n"),
        &_peer3.addr(),
        &p.secret,
        &["--mode", "sync"],
        &root.join("n2.log"),
    );
    let st = n.wait_converged(Duration::from_secs(600));
    let took = started.elapsed();
    let sent = counter(&st, "bytes.wire_total");
    let changed = (mib as u64) << 20;
    eprintln!(
        "failback: {sent} bytes sent for {changed} bytes changed ({:.3}x) in {took:?}",
        sent as f64 / changed as f64
    );
    assert!(
        sent <= changed + changed / 10 + (8 << 20),
        "failback sent {sent} bytes for {changed} bytes changed since the common CP"
    );
    let out = twinfs_ok(&["verify", s(&n.mnt), "--deep"]);
    assert!(out.contains("equal"), "{out}");
    assert_eq!(dir_status(&dir3)["root_hash"], n.status()["root_hash"]);
}

/// The CP named in failback's "up to its CP N" line.
fn status_cp_of_kept(out: &str) -> u64 {
    out.split("up to its CP ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("failback output: {out}"))
}

#[test]
fn both_sides_written_during_a_partition_are_a_split_brain_and_nothing_is_lost() {
    let _serial = serial();
    let mut p = Pair::start("256M", false, &["--mode", "sync"]);
    let root = p.root.clone();
    write_synced(&p.src.path("before"), b"both sides have this");
    p.src.checkpoint();
    // A partition: the peer stops answering; sync mode carries on alone.
    p.peer.freeze(true);
    write_synced(&p.src.path("source-side"), b"written during the partition");
    // Meanwhile the peer's side is promoted and takes writes (killed while
    // frozen, it never reads what the source sent into the partition).
    let port = p.peer.port;
    p.peer.kill9();
    let new_image = promote(&p.dir);
    // The promoted side mirrors to a peer of its own elsewhere...
    let dir2 = root.join("peer2");
    let mut peer2 = Peer::start(&dir2, 0, &p.secret, None, &root.join("peer2.log"));
    let mut n = Source::mirrored(
        &new_image,
        &root.join("mnt-n"),
        &peer2.addr(),
        &p.secret,
        &["--mode", "sync"],
        &root.join("n.log"),
    );
    n.wait_streaming(WAIT);
    write_synced(&n.path("peer-side"), b"written on the promoted side");
    n.checkpoint();
    n.unmount();
    // ...which later answers at the old address: the partition heals and
    // the old source reconnects there.
    peer2.stop();
    peer2.port = port;
    peer2.restart();
    let st = wait_peer_state(&mut p.src, "split-brain");
    assert!(st["peer"]["divergence"]["common_cp"].is_u64(), "{st:#}");
    let pst = wait_dir_state(&dir2, "split-brain");
    assert_eq!(pst["divergence"]["kind"], "split-brain");
    // Nothing lost on either side.
    assert_eq!(
        fs::read(p.src.path("source-side")).unwrap(),
        b"written during the partition"
    );
    assert_eq!(
        fs::read(p.src.path("before")).unwrap(),
        b"both sides have this"
    );
    assert!(!p.src.path("peer-side").exists());
    peer2.stop();
    let mut view = Source::start(
        &new_image,
        &root.join("mnt-n2"),
        &["-o", "ro"],
        &root.join("n2.log"),
    );
    assert_eq!(
        fs::read(view.path("peer-side")).unwrap(),
        b"written on the promoted side"
    );
    assert!(!view.path("source-side").exists());
    view.unmount();
    // Strict mode refuses fsync at once instead of carrying on.
    p.src.unmount();
    let mut strict = Source::mirrored(
        &p.image,
        &root.join("mnt"),
        &format!("127.0.0.1:{port}"),
        &p.secret,
        &["--mode", "strict"],
        &root.join("strict.log"),
    );
    let mut peer2 = Peer::start(&dir2, port, &p.secret, None, &root.join("peer2b.log"));
    wait_peer_state(&mut strict, "split-brain");
    let mut f = fs::File::create(strict.path("strict-file")).unwrap();
    f.write_all(b"x").unwrap();
    let err = f
        .sync_all()
        .expect_err("strict mode fails fsync while refused");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    peer2.assert_running("after the strict refusal");
}

#[test]
fn a_peer_directory_restored_from_an_older_copy_is_refused() {
    let _serial = serial();
    let mut p = Pair::start("256M", false, &["--mode", "sync"]);
    let root = p.root.clone();
    write_synced(&p.src.path("a"), b"first");
    let old_cp = p.src.checkpoint();
    p.peer.stop();
    run("cp", &["-a", s(&p.dir), s(&root.join("peer.bak"))]);
    p.peer.restart();
    p.src.wait_streaming(WAIT);
    write_synced(&p.src.path("b"), b"second");
    let new_cp = p.src.checkpoint();
    p.peer.stop();
    fs::remove_dir_all(&p.dir).unwrap();
    fs::rename(root.join("peer.bak"), &p.dir).unwrap();
    p.peer.restart();
    let st = wait_peer_state(&mut p.src, "peer-behind");
    assert_eq!(st["peer"]["divergence"]["peer_cp"], old_cp, "{st:#}");
    let pst = wait_dir_state(&p.dir, "peer-behind");
    assert_eq!(pst["applied_cp"], old_cp, "nothing applied: {pst:#}");
    assert!(new_cp > old_cp);
    // Setting the restored copy aside lets the source send everything again.
    p.peer.stop();
    let kept = root.join("restored.img");
    twinfs_ok(&["resolve", "--dir", s(&p.dir), "--keep-as", s(&kept)]);
    assert!(kept.is_file());
    p.peer.restart();
    let st = p.src.wait_converged(WAIT);
    assert_eq!(st["peer"]["divergence"], serde_json::Value::Null);
    let out = twinfs_ok(&["verify", s(&p.src.mnt)]);
    assert!(out.contains("equal"), "{out}");
}

#[test]
fn a_source_image_restored_from_an_older_copy_is_refused() {
    let _serial = serial();
    let mut p = Pair::start("256M", false, &["--mode", "sync"]);
    let root = p.root.clone();
    write_synced(&p.src.path("a"), b"first");
    p.src.checkpoint();
    p.src.unmount();
    fs::copy(&p.image, root.join("source.bak")).unwrap();
    let mut src = Source::mirrored(
        &p.image,
        &root.join("mnt"),
        &p.peer.addr(),
        &p.secret,
        &["--mode", "sync"],
        &root.join("src2.log"),
    );
    src.wait_streaming(WAIT);
    write_synced(&src.path("b"), b"second");
    let newer = src.checkpoint();
    src.unmount();
    let peer_root = dir_status(&p.dir)["root_hash"].clone();
    fs::rename(root.join("source.bak"), &p.image).unwrap();
    let mut old = Source::mirrored(
        &p.image,
        &root.join("mnt"),
        &p.peer.addr(),
        &p.secret,
        &["--mode", "sync"],
        &root.join("src3.log"),
    );
    let st = wait_peer_state(&mut old, "source-behind");
    assert_eq!(st["peer"]["divergence"]["peer_cp"], newer, "{st:#}");
    let pst = wait_dir_state(&p.dir, "source-behind");
    assert_eq!(pst["applied_cp"], newer, "{pst:#}");
    assert_eq!(pst["root_hash"], peer_root, "nothing applied");
    // Writing on from the old copy makes it a split brain, still refused.
    write_synced(&old.path("c"), b"third, on the old copy");
    old.unmount();
    let mut old = Source::mirrored(
        &p.image,
        &root.join("mnt"),
        &p.peer.addr(),
        &p.secret,
        &["--mode", "sync"],
        &root.join("src4.log"),
    );
    wait_peer_state(&mut old, "split-brain");
    assert_eq!(dir_status(&p.dir)["root_hash"], peer_root);
}

#[test]
fn a_mirror_image_is_refused_read_write_and_a_refusing_peer_is_reported_before_backgrounding() {
    let _serial = serial();
    let mut p = Pair::start("256M", false, &["--mode", "sync"]);
    let root = p.root.clone();
    write_synced(&p.src.path("a"), b"x");
    p.src.checkpoint();
    p.src.unmount();
    p.peer.stop();
    let mirror = p.dir.join("mirror.img");
    fs::create_dir_all(root.join("m")).unwrap();
    let r = twinfs(&["mount", s(&mirror), s(&root.join("m"))]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("promote"), "{}", r.stderr);
    assert!(!is_mounted(&root.join("m")));
    // Read-only is fine.
    let mut ro = Source::start(
        &mirror,
        &root.join("m"),
        &["-o", "ro"],
        &root.join("ro.log"),
    );
    assert_eq!(fs::read(ro.path("a")).unwrap(), b"x");
    ro.unmount();

    // A wrong secret: said on stderr before the mount goes to the background.
    p.peer.restart();
    let wrong = secret_file(&root.join("wrong"), b"not the secret the peer knows\n");
    let started = Instant::now();
    let r = twinfs(&[
        "mount",
        s(&p.image),
        s(&root.join("m")),
        "--peer",
        &p.peer.addr(),
        "--secret",
        s(&wrong),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("warning"), "{}", r.stderr);
    assert!(r.stderr.contains("secret"), "{}", r.stderr);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(is_mounted(&root.join("m")));
    let st = status_of(&root.join("m"));
    assert_ne!(st["peer"]["state"], "streaming", "{st:#}");
    run("umount", &[s(&root.join("m"))]);
    wait_for("the unmount", WAIT, || {
        twinfs(&["fsck", s(&p.image)]).code == 0
    });
    let r = twinfs(&[
        "mount",
        s(&p.image),
        s(&root.join("m")),
        "--peer",
        &p.peer.addr(),
        "--secret",
        s(&wrong),
        "--require-peer",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!is_mounted(&root.join("m")));
}

#[test]
fn checkpoint_says_when_the_peer_did_not_apply_it() {
    let _serial = serial();
    let mut p = Pair::start("256M", false, &["--mode", "sync"]);
    write_synced(&p.src.path("a"), b"x");
    p.src.checkpoint();
    p.peer.stop();
    wait_for("the disconnection", WAIT, || {
        status_of(&p.src.mnt)["peer"]["connected"] == false
    });
    write_synced(&p.src.path("b"), b"y");
    let r = p.src.checkpoint_ran();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("committed here, not at the peer"),
        "{}",
        r.stderr
    );
}
