//! Names through a real FUSE mount: directories, links, renames, special
//! files, ownership, and the attributes the kernel caches about them.

mod fuse_common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use fuse_common::*;

/// Long enough for the volume's clock to move between two changes.
const TICK: Duration = Duration::from_millis(20);

fn ctime(p: &Path) -> (i64, i64) {
    let st = stat(p);
    (st.st_ctime, st.st_ctime_nsec)
}

fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

#[test]
fn readdir_lists_every_entry_once_and_hides_dot_snapshot() {
    let m = Mounted::new(&[]);
    let d = m.path("many");
    fs::create_dir(&d).unwrap();
    let mut want = BTreeSet::new();
    for i in 0..700 {
        let name = format!("file-with-a-longish-name-{i:04}");
        File::create(d.join(&name)).unwrap();
        want.insert(name);
    }
    let got: BTreeSet<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(got, want);
    // ls -l style: names with attributes (readdirplus).
    let out = run("ls", &["-la", d.to_str().unwrap()]);
    assert_eq!(out.lines().filter(|l| l.contains("file-with")).count(), 700);
    let root: Vec<String> = fs::read_dir(m.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(root, vec!["many".to_string()]);
    assert!(m.path(".snapshot").is_dir());
}

#[test]
fn rmdir_and_unlink_refuse_the_wrong_kind_and_non_empty_directories() {
    let m = Mounted::new(&[]);
    fs::create_dir_all(m.path("a/b")).unwrap();
    fs::write(m.path("f"), b"").unwrap();
    assert_eq!(errno_of(fs::remove_dir(m.path("a"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_dir(m.path("f"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_file(m.path("a"))), libc::EISDIR);
    assert_eq!(errno_of(fs::create_dir(m.path("a"))), libc::EEXIST);
    assert_eq!(errno_of(fs::read(m.path("nope"))), libc::ENOENT);
    fs::remove_dir(m.path("a/b")).unwrap();
    fs::remove_dir(m.path("a")).unwrap();
    assert!(!m.path("a").exists());
}

#[test]
fn directory_link_counts_follow_subdirectories() {
    let m = Mounted::new(&[]);
    fs::create_dir_all(m.path("p/q")).unwrap();
    fs::create_dir(m.path("r")).unwrap();
    assert_eq!(stat(&m.path("p")).st_nlink, 3);
    renameat2(&m.path("p/q"), &m.path("r/q"), 0).unwrap();
    assert_eq!(stat(&m.path("p")).st_nlink, 2);
    assert_eq!(stat(&m.path("r")).st_nlink, 3);
    fs::remove_dir(m.path("r/q")).unwrap();
    assert_eq!(stat(&m.path("r")).st_nlink, 2);
}

#[test]
fn hard_links_share_data_and_the_cached_nlink_and_ctime_stay_right() {
    let m = Mounted::new(&[]);
    let (a, b, c) = (m.path("a"), m.path("b"), m.path("c"));
    fs::write(&a, b"shared").unwrap();
    let t0 = ctime(&a); // now cached by the kernel
    sleep(TICK);
    fs::hard_link(&a, &b).unwrap();
    assert_eq!(stat(&a).st_nlink, 2);
    assert!(ctime(&a) > t0, "link changes the target's ctime");
    assert_eq!(stat(&a).st_ino, stat(&b).st_ino);
    fs::write(&b, b"changed").unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"changed");
    let t1 = ctime(&a);
    sleep(TICK);
    fs::remove_file(&b).unwrap();
    assert_eq!(stat(&a).st_nlink, 1);
    assert!(ctime(&a) > t1, "unlink changes the remaining name's ctime");
    // The victim of a rename: its other name sees nlink drop.
    fs::write(&c, b"victim").unwrap();
    fs::hard_link(&c, m.path("c2")).unwrap();
    assert_eq!(stat(&m.path("c2")).st_nlink, 2);
    let t2 = ctime(&m.path("c2"));
    let ta = ctime(&a);
    sleep(TICK);
    renameat2(&a, &c, 0).unwrap();
    assert_eq!(stat(&m.path("c2")).st_nlink, 1);
    assert!(ctime(&m.path("c2")) > t2, "the victim's ctime changes");
    assert!(ctime(&c) > ta, "the renamed inode's ctime changes");
    assert_eq!(fs::read(&c).unwrap(), b"changed");
    assert_eq!(
        errno_of(fs::hard_link(m.root(), m.path("dirlink"))),
        libc::EPERM
    );
}

#[test]
fn rename_noreplace_and_exchange() {
    let m = Mounted::new(&[]);
    let (x, y) = (m.path("x"), m.path("y"));
    fs::write(&x, b"x").unwrap();
    fs::create_dir(&y).unwrap();
    fs::write(y.join("inside"), b"i").unwrap();
    assert_eq!(
        errno_of(renameat2(&x, &y, libc::RENAME_NOREPLACE)),
        libc::EEXIST
    );
    let (tx, ty) = (ctime(&x), ctime(&y));
    sleep(TICK);
    renameat2(&x, &y, libc::RENAME_EXCHANGE).unwrap();
    assert!(m.path("x/inside").is_file());
    assert_eq!(fs::read(&y).unwrap(), b"x");
    assert!(ctime(&y) > tx && ctime(&x) > ty);
    assert_eq!(
        errno_of(renameat2(&m.path("nope"), &y, libc::RENAME_EXCHANGE)),
        libc::ENOENT
    );
    renameat2(&y, &m.path("z"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(fs::read(m.path("z")).unwrap(), b"x");
    assert_eq!(
        errno_of(renameat2(&x, &m.path("x/inside/deeper"), 0)),
        libc::ENOTDIR
    );
    assert_eq!(errno_of(renameat2(&x, &m.path("x/sub"), 0)), libc::EINVAL);
}

#[test]
fn symlinks_hold_their_targets() {
    let m = Mounted::new(&[]);
    let long = "t/".repeat(1500) + "end";
    std::os::unix::fs::symlink("target/../file", m.path("s")).unwrap();
    std::os::unix::fs::symlink(&long, m.path("long")).unwrap();
    assert_eq!(
        fs::read_link(m.path("s")).unwrap().to_str(),
        Some("target/../file")
    );
    assert_eq!(
        fs::read_link(m.path("long")).unwrap().to_str(),
        Some(long.as_str())
    );
    let st = stat(&m.path("s"));
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(st.st_size, 14);
    assert_eq!(errno_of(fs::read(m.path("s"))), libc::ENOENT);
}

#[test]
fn mknod_makes_fifos_devices_and_sockets() {
    let m = Mounted::new(&[]);
    let fifo = cstr(&m.path("fifo"));
    // SAFETY: valid path.
    check(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }).unwrap();
    let st = stat(&m.path("fifo"));
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFIFO);
    let dev = libc::makedev(1, 3);
    let null = cstr(&m.path("null"));
    // SAFETY: valid path.
    check(unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, dev) }).unwrap();
    let st = stat(&m.path("null"));
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(st.st_rdev, dev);
    let blk = cstr(&m.path("blk"));
    // SAFETY: valid path.
    check(unsafe { libc::mknod(blk.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(8, 1)) })
        .unwrap();
    assert_eq!(stat(&m.path("blk")).st_rdev, libc::makedev(8, 1));
    let _sock = std::os::unix::net::UnixListener::bind(m.path("sock")).unwrap();
    assert_eq!(stat(&m.path("sock")).st_mode & libc::S_IFMT, libc::S_IFSOCK);
    // A fifo works as a fifo.
    let p = m.path("fifo");
    let writer = std::thread::spawn(move || fs::write(p, b"through the pipe").unwrap());
    assert_eq!(fs::read(m.path("fifo")).unwrap(), b"through the pipe");
    writer.join().unwrap();
}

#[test]
fn new_files_take_the_umask_and_set_group_id_directories_pass_on_their_group() {
    let m = Mounted::new(&[]);
    let f = m.path("f");
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .open(&f)
        .unwrap();
    assert_eq!(stat(&f).st_mode & 0o7777, 0o666 & !umask());
    let d = m.path("shared");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, None, Some(1234)).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(d.join("file"), b"").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    assert_eq!(stat(&d.join("file")).st_gid, 1234);
    let sub = stat(&d.join("sub"));
    assert_eq!(sub.st_gid, 1234);
    assert_ne!(sub.st_mode & libc::S_ISGID, 0);
}

#[test]
fn files_belong_to_the_caller_and_permissions_are_enforced() {
    let m = Mounted::new(&["allow_other"]);
    fs::set_permissions(m.root(), fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(m.path("roots"), b"secret").unwrap();
    fs::set_permissions(m.path("roots"), fs::Permissions::from_mode(0o600)).unwrap();
    let (mine, denied) = {
        let root = m.root().to_path_buf();
        std::thread::spawn(move || {
            // setfsuid/setfsgid are per thread: this thread acts as 1000:1000.
            // SAFETY: plain syscalls on this thread's credentials.
            unsafe {
                libc::setfsgid(1000);
                libc::setfsuid(1000);
            }
            fs::write(root.join("users"), b"mine").unwrap();
            let denied = fs::read(root.join("roots"));
            (stat(&root.join("users")), denied)
        })
        .join()
        .unwrap()
    };
    assert_eq!((mine.st_uid, mine.st_gid), (1000, 1000));
    assert_eq!(errno_of(denied), libc::EACCES);
}

#[test]
fn chmod_chown_and_utimens_change_what_stat_shows() {
    let m = Mounted::new(&[]);
    let f = m.path("f");
    fs::write(&f, b"x").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(stat(&f).st_mode & 0o7777, 0o4751);
    std::os::unix::fs::chown(&f, Some(42), Some(43)).unwrap();
    let st = stat(&f);
    assert_eq!((st.st_uid, st.st_gid), (42, 43));
    assert_eq!(st.st_mode & 0o7777, 0o751, "chown clears set-user-ID");
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    let before = stat(&f);
    // SAFETY: valid path and times array.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, cstr(&f).as_ptr(), times.as_ptr(), 0) })
        .unwrap();
    let st = stat(&f);
    assert_eq!((st.st_atime, st.st_atime_nsec), (1_000_000_000, 5));
    assert_eq!(
        (st.st_mtime, st.st_mtime_nsec),
        (before.st_mtime, before.st_mtime_nsec)
    );
    let now = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    sleep(TICK);
    // SAFETY: valid path and times array.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, cstr(&f).as_ptr(), now.as_ptr(), 0) }).unwrap();
    let st = stat(&f);
    assert_eq!(st.st_atime, 1_000_000_000);
    assert!((st.st_mtime, st.st_mtime_nsec) > (before.st_mtime, before.st_mtime_nsec));
    let file = File::open(&f).unwrap();
    assert_eq!(file.metadata().unwrap().mode() & 0o777, 0o751);
}

#[test]
fn an_open_directory_outlives_its_removal() {
    let m = Mounted::new(&[]);
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    let f = File::open(&d).unwrap();
    fs::remove_dir(&d).unwrap();
    assert!(!d.exists());
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
}
