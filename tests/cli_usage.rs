//! The built `twinfs` binary keeps the exit-code contract of DESIGN.md:
//! 0 success, 1 operational failure with one line on stderr, 2 usage error.

use std::path::Path;
use std::process::{Command, Output};

fn twinfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twinfs"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the twinfs binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_exits_0_and_lists_every_subcommand() {
    let out = twinfs(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "mkfs",
        "mount",
        "peer",
        "status",
        "checkpoint",
        "snapshot",
        "verify",
        "promote",
        "fsck",
        "demo",
        "relay",
    ] {
        assert!(help.contains(sub), "--help lacks {sub}:\n{help}");
    }
}

#[test]
fn subcommand_help_exits_0() {
    let out = twinfs(&["mount", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--cp-sync"), "{help}");
}

#[test]
fn unknown_subcommand_exits_2() {
    let out = twinfs(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("frobnicate"), "{}", stderr(&out));
}

#[test]
fn bad_size_exits_2_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("x.img");
    let image = image.to_str().expect("utf-8 temp path");
    let out = twinfs(&["mkfs", image, "--size", "10Q"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("invalid size '10Q'"), "{err}");
    assert!(err.contains("--size"), "{err}");
    assert!(
        !Path::new(image).exists(),
        "a usage error must not create the image"
    );
}

#[test]
fn bad_peer_address_and_unknown_mount_option_exit_2() {
    let out = twinfs(&["mount", "img", "mnt", "--peer", "nohost"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid address 'nohost'"),
        "{}",
        stderr(&out)
    );
    let out = twinfs(&["mount", "img", "mnt", "-o", "allow_other,allow_ohter"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("allow_ohter"), "{}", stderr(&out));
}

#[test]
fn fsck_of_a_missing_image_exits_1_with_one_line_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("missing.img");
    let image = image.to_str().expect("utf-8 temp path");
    let out = twinfs(&["fsck", image]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr, got: {err:?}");
    let line = lines[0];
    assert!(
        line.starts_with(&format!("twinfs: fsck {image}: ")),
        "{line}"
    );
    assert!(line.contains("No such file or directory"), "{line}");
    assert!(line.contains("; "), "the line says what to do: {line}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn mount_helper_name_translates_to_mount() {
    // Invoked as /sbin/mount.fuse.twinfs (a symlink to the binary), the
    // mount(8) convention IMAGE MOUNTPOINT -o OPTS runs `twinfs mount`: an
    // unknown option then is a mount usage error (exit 2) naming it...
    let dir = tempfile::tempdir().expect("tempdir");
    let helper = dir.path().join("mount.fuse.twinfs");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_twinfs"), &helper).expect("symlink");
    let run = |args: &[&str]| {
        Command::new(&helper)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("the helper runs")
    };
    let out = run(&[
        "img",
        "mnt",
        "-o",
        "defaults,_netdev,bogus_opt",
        "-t",
        "fuse.twinfs",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bogus_opt"), "{}", stderr(&out));
    // ...a missing image is an operational failure of mount (exit 1)...
    let missing = dir.path().join("none.img");
    let missing = missing.to_str().expect("utf-8 temp path");
    let mnt = dir.path().to_str().expect("utf-8 temp path");
    let out = run(&[missing, mnt, "-o", "rw,_netdev"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(&format!("twinfs: mount {missing}: ")),
        "{}",
        stderr(&out)
    );
    // ...and -f ("fake", as mount -f passes it) does nothing and succeeds.
    let out = run(&[missing, mnt, "-f", "-o", "rw"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
