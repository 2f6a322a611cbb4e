//! End to end through real mounts: a peer with a `--mount` replica view and
//! a source mounted with `--peer`; a generated tree copied in with `cp -a`
//! and `rsync -aHAX`; after `twinfs checkpoint` the replica mount shows the
//! same tree as the source mount, field for field, `verify` and
//! `verify --deep` agree, the replica refuses writes with EROFS, and
//! `status --json` tells the story in its counters.

mod mirror_common;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use mirror_common::*;

#[test]
fn cp_and_rsync_trees_reach_the_replica_mount_identical_and_verified() {
    let _serial = serial();
    let mut p = Pair::start("2G", true, &[]);
    let (src, peer, root, image) = (&mut p.src, &mut p.peer, p.root.clone(), p.image.clone());

    let outside = root.join("outside");
    let written = make_tree(&outside, 42, TreeShape::SMALL);
    run("cp", &["-a", s(&outside), s(&src.path("by-cp"))]);
    run(
        "rsync",
        &[
            "-aHAX",
            &format!("{}/", outside.display()),
            s(&src.path("by-rsync")),
        ],
    );
    // The copies are faithful (this is the file system's job, but the
    // mirror test means nothing without it).
    assert_same_tree(&outside, &src.path("by-cp"), Compare::COPY);
    assert_same_tree(&outside, &src.path("by-rsync"), Compare::COPY);

    let cp = src.checkpoint();
    let verify = twinfs_ok(&["verify", s(&src.mnt)]);
    assert!(verify.contains("equal"), "verify: {verify}");
    let deep = twinfs_ok(&["verify", s(&src.mnt), "--deep"]);
    assert!(deep.contains("equal"), "verify --deep: {deep}");
    let deep_line = deep
        .lines()
        .find(|l| l.contains("source deep"))
        .unwrap_or_else(|| panic!("verify --deep prints the deep hashes: {deep}"));
    let words: Vec<&str> = deep_line.split_whitespace().collect();
    assert_eq!(words[4], words[7], "deep hashes: {deep_line}");
    assert_eq!(words[4].len(), 64, "a blake3 deep hash: {deep_line}");

    // The replica view shows exactly the source's tree.
    peer.wait_view();
    wait_same_tree(
        &src.mnt,
        &root.join("replica"),
        Compare::EXACT,
        Duration::from_secs(15),
    );
    let replica = root.join("replica");
    assert_same_tree(&outside, &replica.join("by-rsync"), Compare::COPY);

    // The replica is read-only.
    let erofs = |what: &str, r: std::io::Result<()>| {
        let e = r.expect_err(what);
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "{what} on the replica: {e}"
        );
    };
    erofs("create", fs::write(replica.join("new-file"), b"x"));
    erofs("mkdir", fs::create_dir(replica.join("new-dir")));
    erofs(
        "open for writing",
        fs::OpenOptions::new()
            .write(true)
            .open(replica.join("by-cp/d0/sub0/file-000.dat"))
            .map(drop),
    );
    erofs(
        "unlink",
        fs::remove_file(replica.join("by-cp/d0/sub0/file-000.dat")),
    );
    erofs(
        "chmod",
        fs::set_permissions(
            replica.join("by-cp/empty"),
            fs::Permissions::from_mode(0o700),
        ),
    );
    erofs(
        "rename",
        fs::rename(replica.join("by-cp"), replica.join("moved")),
    );
    let c = std::ffi::CString::new(replica.join("by-cp").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path, name and buffer.
    let rc = unsafe { libc::setxattr(c.as_ptr(), c"user.x".as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS),
        "setxattr on the replica"
    );
    // Still the same tree after all those attempts.
    assert!(fs::symlink_metadata(replica.join("new-file"))
        .is_err_and(|e| e.kind() == ErrorKind::NotFound));

    // What status says.
    let st = src.status();
    let p = &st["peer"];
    assert_eq!(p["connected"], true, "{st:#}");
    assert_eq!(p["state"], "streaming", "{st:#}");
    assert_eq!(st["state"], "mirrored", "{st:#}");
    assert_eq!(st["action"], "none", "{st:#}");
    src.status_text_says("mirrored");
    assert_eq!(p["addr"], peer.addr(), "{st:#}");
    assert!(st["cp"].as_u64().unwrap() >= cp, "{st:#}");
    assert_eq!(p["acked_cp"], st["cp"], "{st:#}");
    assert_eq!(p["acked_root_hash"], st["root_hash"], "{st:#}");
    assert_eq!(st["root_hash"].as_str().unwrap().len(), 64, "{st:#}");
    assert_eq!(p["alarm"], serde_json::Value::Null, "{st:#}");
    assert_eq!(st["mode"], "sync", "{st:#}");
    let written_here = counter(&st, "bytes.written");
    assert!(
        written_here >= 2 * written,
        "bytes.written {written_here} counts both copies of {written} bytes: {st:#}"
    );
    let (log, cps, wire) = (
        counter(&st, "bytes.log_sent"),
        counter(&st, "bytes.cp_sent"),
        counter(&st, "bytes.wire_total"),
    );
    assert!(log > 0 && cps > 0, "{st:#}");
    assert!(
        wire >= log + cps,
        "wire_total {wire} < log_sent {log} + cp_sent {cps}"
    );
    // Every encoded block is counted somewhere (best: refs for the large
    // files written in whole blocks).
    assert!(counter(&st, "bytes.refs.blocks") > 0, "{st:#}");
    for k in ["full", "refs", "recipes", "deltas", "misses"] {
        counter(&st, &format!("bytes.{k}.blocks"));
        counter(&st, &format!("bytes.{k}.bytes"));
    }
    // And the peer's side.
    let ds = peer.status();
    assert_eq!(ds["applied_cp"], st["cp"], "{ds:#}");
    assert_eq!(ds["root_hash"], st["root_hash"], "{ds:#}");
    assert_eq!(ds["source_connected"], true, "{ds:#}");
    assert_eq!(ds["daemon_running"], true, "{ds:#}");
    assert_eq!(ds["promoted"], false, "{ds:#}");

    // A clean unmount takes a final CP that the peer applies too.
    assert_eq!(src.unmount(), Some(0), "{}", src.log_text());
    wait_for(
        "the peer to apply the final CP",
        Duration::from_secs(30),
        || peer.status()["source_connected"] == false,
    );
    let after = peer.status();
    assert!(after["applied_cp"].as_u64().unwrap() >= cp, "{after:#}");
    assert_eq!(peer.stop(), Some(0), "{}", peer.log_text());
    let fsck = twinfs(&["fsck", s(&root.join("peer/mirror.img")), "-q"]);
    assert_eq!(
        fsck.code, 0,
        "fsck of the mirror: {}{}",
        fsck.stdout, fsck.stderr
    );
    let fsck = twinfs(&["fsck", s(&image), "-q"]);
    assert_eq!(
        fsck.code, 0,
        "fsck of the source: {}{}",
        fsck.stdout, fsck.stderr
    );
}
