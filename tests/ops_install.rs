//! What installing twinfs as a service relies on (issue 19): the systemd
//! units pass `systemd-analyze verify`, `twinfs mount -f` speaks the
//! notify protocol (READY once usable, STOPPING at unmount), and shell
//! completions are generated for bash, zsh and fish.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const UNITS: [&str; 2] = ["twinfs-peer@.service", "twinfs-mount@.service"];

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let dir = scratch("units");
    let root = dir.path();
    // The units name the installed binary and man page: point them at the
    // built ones (verify checks that ExecStart exists and that
    // Documentation=man:twinfs(8) resolves).
    let man8 = root.join("man").join("man8");
    std::fs::create_dir_all(&man8).expect("mkdir");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("man/twinfs.8"),
        man8.join("twinfs.8"),
    )
    .expect("copy the man page");
    let mut instances = Vec::new();
    for unit in UNITS {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("man/systemd")
                .join(unit),
        )
        .expect("read the unit");
        assert!(text.contains("Type=notify"), "{unit}");
        assert!(text.contains("ExecStart=/usr/local/bin/twinfs "), "{unit}");
        let text = text.replace("/usr/local/bin/twinfs", twinfs().to_str().expect("utf-8"));
        std::fs::write(root.join(unit), text).expect("write the unit");
        instances.push(root.join(unit.replace("@.", "@vol1.")));
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&instances)
        .env("MANPATH", root.join("man"))
        .current_dir(root)
        .output()
        .expect("systemd-analyze runs (apt package systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish() {
    let gen = |shell: &str| {
        let out = Command::new(twinfs())
            .args(["completions", shell])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(0), "{shell}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let bash = gen("bash");
    assert!(bash.contains("complete -F _twinfs"), "{bash}");
    for word in [
        "mount",
        "peer",
        "status",
        "--metrics",
        "--log-file",
        "--watch",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let check = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(bash.as_bytes())?;
            c.wait()
        })
        .expect("bash -n");
    assert!(check.success(), "the bash script parses");
    let zsh = gen("zsh");
    assert!(zsh.starts_with("#compdef twinfs"), "{zsh}");
    assert!(
        zsh.contains("--log-file"),
        "zsh completion lacks --log-file"
    );
    let fish = gen("fish");
    assert!(
        fish.contains("complete -c twinfs") && fish.contains("-l metrics"),
        "{fish}"
    );
    let bad = Command::new(twinfs())
        .args(["completions", "tcsh"])
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_foreground_mount_tells_systemd_it_is_ready_and_when_it_stops() {
    let dir = scratch("notify");
    let root = dir.path();
    let image = root.join("vol.img");
    mkfs(&image, "64M");
    let mp = root.join("mp");
    std::fs::create_dir(&mp).expect("mkdir");
    let sock_path = root.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut child = Command::new(twinfs())
        .arg("mount")
        .arg(&image)
        .arg(&mp)
        .arg("-f")
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the mount");
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("READY within 60 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(
        is_mounted(&mp),
        "READY comes once the mount serves: {}",
        mp.display()
    );
    std::fs::write(mp.join("f"), b"kept").expect("the mount is usable");
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).expect("STOPPING within 60 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg}");
    let status = child.wait().expect("the mount exits");
    assert_eq!(status.code(), Some(0));
    assert!(!is_mounted(&mp));
    assert_fsck_clean(&image, "after a stop by SIGTERM");
}

#[test]
fn a_default_mount_serves_only_its_owner_and_root() {
    use std::os::unix::process::CommandExt;
    let dir = scratch("owner");
    let root = dir.path();
    // Let the other user reach the mount point itself.
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let image = root.join("vol.img");
    mkfs(&image, "64M");
    let mp = root.join("mp");
    let m = Mount::new(&image, &mp, &[]);
    std::fs::write(m.path("f"), b"mine").expect("the owner writes");
    let parent = Command::new("stat")
        .arg(root)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run stat as nobody");
    assert!(
        parent.status.success(),
        "control: nobody reaches the directory holding the mount point: {}",
        String::from_utf8_lossy(&parent.stderr)
    );
    let other = Command::new("stat")
        .arg(&m.mp)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run stat as nobody");
    assert!(!other.status.success(), "nobody reached the mount");
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
        "EACCES for another user: {}",
        String::from_utf8_lossy(&other.stderr)
    );
    m.unmount();
}

#[test]
fn the_grafana_dashboard_queries_only_series_twinfs_exports() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/grafana/twinfs.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON");
    let page = include_str!("../man/twinfs.8").replace("\\-", "-");
    let mut series = 0;
    for panel in d["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("twinfs_") {
                    // Histogram and counter series names end in a suffix the
                    // man page's METRICS section does not repeat.
                    let base = name.trim_end_matches("_bucket");
                    assert!(
                        page.contains(&format!("twinfs_{base}")),
                        "the dashboard queries twinfs_{name}, which METRICS does not list"
                    );
                    series += 1;
                }
            }
        }
    }
    assert!(series >= 10, "{series} series queried");
}
