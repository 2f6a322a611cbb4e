//! Extended attributes and POSIX ACLs through a real FUSE mount.

mod fuse_common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use fuse_common::*;

#[test]
fn user_xattrs_set_get_list_and_remove() {
    let m = Mounted::new(&[]);
    let f = m.path("f");
    fs::write(&f, b"").unwrap();
    setxattr(&f, "user.small", b"value", 0).unwrap();
    let big = pattern(65536, 9);
    setxattr(&f, "user.big", &big, 0).unwrap();
    assert_eq!(getxattr(&f, "user.small").unwrap(), b"value");
    assert_eq!(getxattr(&f, "user.big").unwrap(), big);
    let mut names = listxattr(&f).unwrap();
    names.sort();
    assert_eq!(names, ["user.big", "user.small"]);
    assert_eq!(errno_of(getxattr(&f, "user.none")), libc::ENODATA);
    assert_eq!(
        errno_of(setxattr(&f, "user.small", b"v", libc::XATTR_CREATE)),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(setxattr(&f, "user.none", b"v", libc::XATTR_REPLACE)),
        libc::ENODATA
    );
    setxattr(&f, "user.small", b"replaced", libc::XATTR_REPLACE).unwrap();
    assert_eq!(getxattr(&f, "user.small").unwrap(), b"replaced");
    setxattr(&f, "user.empty", b"", 0).unwrap();
    assert_eq!(getxattr(&f, "user.empty").unwrap(), b"");
    // A buffer too small for the value: ERANGE.
    let name = std::ffi::CString::new("user.small").unwrap();
    let mut tiny = [0u8; 3];
    // SAFETY: valid path, name and buffer.
    let r = unsafe {
        libc::lgetxattr(
            cstr(&f).as_ptr(),
            name.as_ptr(),
            tiny.as_mut_ptr().cast(),
            3,
        )
    };
    assert_eq!(errno_of(check(r as libc::c_int)), libc::ERANGE);
    let name = std::ffi::CString::new("user.x").unwrap();
    // SAFETY: valid path and name.
    check(unsafe { libc::lremovexattr(cstr(&f).as_ptr(), name.as_ptr()) }).unwrap_err();
    fs::remove_file(&f).unwrap();
}

#[test]
fn xattrs_survive_remount_and_trusted_and_security_work_for_root() {
    let mut m = Mounted::on_file(&[]);
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    setxattr(&d, "trusted.t", b"root only", 0).unwrap();
    setxattr(&d, "security.s", b"label", 0).unwrap();
    setxattr(&d, "user.u", b"user", 0).unwrap();
    assert_eq!(
        errno_of(setxattr(&d, "system.other", b"x", 0)),
        libc::EOPNOTSUPP
    );
    m.remount();
    assert_eq!(getxattr(&d, "trusted.t").unwrap(), b"root only");
    assert_eq!(getxattr(&d, "security.s").unwrap(), b"label");
    let mut names = listxattr(&d).unwrap();
    names.sort();
    assert_eq!(names, ["security.s", "trusted.t", "user.u"]);
}

fn getfacl(p: &std::path::Path) -> String {
    run("getfacl", &["-cpn", p.to_str().unwrap()])
}

#[test]
fn setfacl_sets_an_acl_that_getfacl_shows_and_the_mode_follows_the_mask() {
    let m = Mounted::new(&[]);
    let f = m.path("f");
    fs::write(&f, b"x").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    run("setfacl", &["-m", "u:1000:rwx", f.to_str().unwrap()]);
    let acl = getfacl(&f);
    assert!(acl.contains("user:1000:rwx"), "{acl}");
    assert!(acl.contains("mask::rwx"), "{acl}");
    // The group bits of the mode are the mask.
    assert_eq!(stat(&f).st_mode & 0o777, 0o670);
    // chmod rewrites the mask.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let acl = getfacl(&f);
    assert!(acl.contains("mask::---"), "{acl}");
    assert!(acl.contains("user:1000:rwx\t#effective:---"), "{acl}");
    // An ACL no wider than the mode is no ACL at all.
    run("setfacl", &["-b", f.to_str().unwrap()]);
    assert_eq!(
        errno_of(getxattr(&f, "system.posix_acl_access")),
        libc::ENODATA
    );
    run("setfacl", &["-m", "g::r", f.to_str().unwrap()]);
    assert_eq!(stat(&f).st_mode & 0o777, 0o640);
    assert_eq!(
        errno_of(getxattr(&f, "system.posix_acl_access")),
        libc::ENODATA
    );
}

#[test]
fn the_kernel_enforces_acls_for_other_users() {
    let m = Mounted::new(&["allow_other"]);
    let f = m.path("f");
    fs::write(&f, b"for 1000 only").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let read_as = |uid: u32| {
        let f = f.clone();
        std::thread::spawn(move || {
            // SAFETY: plain syscalls on this thread's credentials.
            unsafe {
                libc::setfsgid(uid);
                libc::setfsuid(uid);
            }
            fs::read(&f)
        })
        .join()
        .unwrap()
    };
    assert_eq!(errno_of(read_as(1000)), libc::EACCES);
    run("setfacl", &["-m", "u:1000:r", f.to_str().unwrap()]);
    assert_eq!(read_as(1000).unwrap(), b"for 1000 only");
    assert_eq!(errno_of(read_as(1001)), libc::EACCES);
}

#[test]
fn default_acls_are_inherited_instead_of_the_umask() {
    let m = Mounted::new(&[]);
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    run(
        "setfacl",
        &[
            "-d",
            "-m",
            "u::rwx,g::rwx,o::rwx,u:1000:rw",
            d.to_str().unwrap(),
        ],
    );
    fs::write(d.join("f"), b"").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    let acl = getfacl(&d.join("f"));
    assert!(acl.contains("user:1000:rw-"), "{acl}");
    // Created with 0666 under umask 022: the umask is not applied, the default ACL is.
    assert_eq!(stat(&d.join("f")).st_mode & 0o777, 0o666);
    let sub = run("getfacl", &["-cpnd", d.join("sub").to_str().unwrap()]);
    assert!(sub.contains("user:1000:rw-"), "{sub}");
    // Removing the default ACL brings the umask back.
    run("setfacl", &["-k", d.to_str().unwrap()]);
    fs::write(d.join("g"), b"").unwrap();
    assert_eq!(
        errno_of(getxattr(&d.join("g"), "system.posix_acl_access")),
        libc::ENODATA
    );
}

#[test]
fn rsync_keeps_acls_and_xattrs() {
    let m = Mounted::new(&[]);
    let src = m.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    setxattr(&src.join("f"), "user.tag", b"v", 0).unwrap();
    run(
        "setfacl",
        &["-m", "u:1000:rw", src.join("f").to_str().unwrap()],
    );
    run(
        "rsync",
        &[
            "-aAX",
            &format!("{}/", src.display()),
            m.path("dst").to_str().unwrap(),
        ],
    );
    assert_eq!(getxattr(&m.path("dst/f"), "user.tag").unwrap(), b"v");
    assert!(getfacl(&m.path("dst/f")).contains("user:1000:rw-"));
    assert_eq!(
        stat(&m.path("dst/f")).st_mode & 0o777,
        stat(&src.join("f")).st_mode & 0o777
    );
}
