//! Shared harness of the real-FUSE tests: a volume mounted in a temp dir,
//! always unmounted when the guard drops.

#![allow(dead_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use twinfs_fs::device::{BlockDevice, FileDevice, MemDevice};
use twinfs_fs::fuse::{self, MountConfig, MountHandle};
use twinfs_fs::volume::{self, VolumeConfig};
use twinfs_fs::{MkfsOptions, Volume};

/// Blocks of the test volumes (1 GiB, sparse).
pub const BLOCKS: u64 = 262_144;

pub fn config() -> VolumeConfig {
    VolumeConfig {
        background: true,
        ..Default::default()
    }
}

/// A mounted volume. Dropping it unmounts, then closes the volume.
pub struct Mounted {
    pub dev: Arc<dyn BlockDevice>,
    pub volume: Arc<Volume>,
    pub options: Vec<String>,
    handle: Option<MountHandle>,
    mnt: PathBuf,
    // Dropped last: the mount point and any image file live here.
    pub dir: tempfile::TempDir,
}

impl Mounted {
    /// A fresh volume on a memory device, mounted with `options`.
    pub fn new(options: &[&str]) -> Mounted {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(BLOCKS));
        Self::on(dev, tempfile::tempdir().expect("temp dir"), options)
    }

    /// A fresh volume in an image file inside the temp dir.
    pub fn on_file(options: &[&str]) -> Mounted {
        Self::on_file_of(BLOCKS, options)
    }

    /// A fresh volume of `blocks` in an image file inside the temp dir.
    pub fn on_file_of(blocks: u64, options: &[&str]) -> Mounted {
        let dir = tempfile::tempdir().expect("temp dir");
        let dev = FileDevice::create(&dir.path().join("image"), blocks * 4096).expect("image");
        Self::on(Arc::new(dev), dir, options)
    }

    fn on(dev: Arc<dyn BlockDevice>, dir: tempfile::TempDir, options: &[&str]) -> Mounted {
        let _ = env_logger::builder().is_test(true).try_init();
        volume::mkfs(dev.clone(), &MkfsOptions::default()).expect("mkfs");
        let volume = Arc::new(Volume::open(dev.clone(), config()).expect("open volume"));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        let options: Vec<String> = options.iter().map(|s| s.to_string()).collect();
        let handle = fuse::mount(volume.clone(), &mnt, &options).expect("mount");
        Mounted {
            dev,
            volume,
            options,
            handle: Some(handle),
            mnt,
            dir,
        }
    }

    /// Mounts again with another configuration (after `unmount`).
    pub fn mount_with(&mut self, cfg: MountConfig) {
        assert!(self.handle.is_none(), "unmount first");
        self.handle = Some(fuse::mount_with(self.volume.clone(), &self.mnt, cfg).expect("mount"));
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.mnt
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The mount's handle.
    pub fn handle(&self) -> &MountHandle {
        self.handle.as_ref().expect("mounted")
    }

    /// Takes the handle: the caller unmounts and waits.
    pub fn take_handle(&mut self) -> MountHandle {
        self.handle.take().expect("mounted")
    }

    /// Unmounts and waits until the kernel has let go and every request is answered.
    pub fn unmount(&mut self) {
        if let Some(h) = self.handle.take() {
            h.unmount().expect("unmount");
            h.wait().expect("FUSE session");
        }
    }

    /// Unmount, `Volume::close` (the final CP), reopen the device, mount again.
    pub fn remount(&mut self) {
        self.unmount();
        self.volume.close().expect("close");
        self.volume = Arc::new(Volume::open(self.dev.clone(), config()).expect("reopen"));
        let options = self.options.clone();
        self.handle = Some(fuse::mount(self.volume.clone(), &self.mnt, &options).expect("mount"));
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // MountHandle's drop unmounts (lazily if busy) and waits.
        drop(self.handle.take());
        let _ = self.volume.close();
    }
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// The errno of the last libc call when `ret` says it failed.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn errno_of<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.expect_err("the call should fail")
        .raw_os_error()
        .expect("an OS error")
}

pub fn stat(p: &Path) -> libc::stat {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    check(unsafe { libc::lstat(cstr(p).as_ptr(), &mut st) }).expect("lstat");
    st
}

pub fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: valid paths; AT_FDCWD.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cstr(from).as_ptr(),
            libc::AT_FDCWD,
            cstr(to).as_ptr(),
            flags,
        )
    })
    .map(|_| ())
}

pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: libc::c_int) -> io::Result<()> {
    let n = CString::new(name).expect("name");
    // SAFETY: valid path, name and buffer.
    check(unsafe {
        libc::lsetxattr(
            cstr(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(|_| ())
}

pub fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let n = CString::new(name).expect("name");
    let mut buf = vec![0u8; 1 << 17];
    // SAFETY: valid path, name and buffer of the given length.
    let len = unsafe {
        libc::lgetxattr(
            cstr(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

pub fn listxattr(p: &Path) -> io::Result<Vec<String>> {
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: valid path and buffer of the given length.
    let len = unsafe { libc::llistxattr(cstr(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf[..len as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
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

/// Bytes of a recognizable pattern.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}
