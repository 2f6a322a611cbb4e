//! `twinfs mount IMAGE MOUNTPOINT [-f] [-o OPTIONS]... [--peer HOST:PORT --secret FILE] ...`

use std::sync::{Arc, Mutex};

use twinfs_fs::device::{BlockDevice, FileDevice};
use twinfs_fs::fuse;
use twinfs_fs::{Volume, VolumeConfig};
use twinfs_replicate::encode::CpSync;
use twinfs_replicate::source::{Mirror, MirrorConfig, Mode, DEFAULT_SYNC_TIMEOUT};
use twinfs_replicate::Compression;

use crate::cli::{self, FuseOption, MountArgs, MountConfig};
use crate::cmd::{load_credentials, require_dir, require_image};
use crate::control;
use crate::daemon::{self, Ready};
use crate::error::CmdError;

/// Serves the volume in `args.image` on `args.mountpoint`: opens it
/// (replaying the log), starts mirroring when a peer is given, serves the
/// control socket, and mounts. Without `-f` it returns once the mount is
/// usable and keeps serving in the background. SIGTERM/SIGINT, `umount` or
/// `fusermount3 -u` end it with a final CP.
pub fn run(args: MountArgs) -> Result<(), CmdError> {
    daemon::tune_allocator();
    let mut config = check(&args)?;
    config.image = absolute(&config.image)?;
    config.mountpoint = absolute(&config.mountpoint)?;
    let what = format!(
        "mount {} on {}",
        config.image.display(),
        config.mountpoint.display()
    );
    let mut ready = if config.foreground {
        Ready::foreground()
    } else {
        daemon::background(&what)?
    };
    match serve(&config, &what, &mut ready) {
        Ok(()) => Ok(()),
        Err(e) => {
            ready.fail(&e);
            Err(e)
        }
    }
}

fn absolute(p: &std::path::Path) -> Result<std::path::PathBuf, CmdError> {
    std::fs::canonicalize(p)
        .map_err(|e| CmdError::failed(format!("mount: {}", p.display()), e, "check the path"))
}

/// How `--memory` is shared out. Each share bounds one buffer; the rest
/// (about a third) is left for code, FUSE request buffers, the metadata
/// being changed and allocator slack.
#[derive(Debug, PartialEq, Eq)]
struct MemoryShares {
    /// Dirty data is held up to three times over: the overlay a CP is
    /// writing and the next one, which writers fill up to twice the bound.
    dirty_limit: u64,
    cache_meta_blocks: usize,
    cache_data_blocks: usize,
    log_backlog: usize,
    peer_queue: usize,
}

impl MemoryShares {
    fn of(budget: u64) -> MemoryShares {
        let blocks = |bytes: u64| (bytes / twinfs_fs::BLOCK_SIZE_U64) as usize;
        MemoryShares {
            dirty_limit: budget / 8,
            cache_meta_blocks: blocks(budget / 16),
            cache_data_blocks: blocks(budget / 16),
            log_backlog: (budget / 16) as usize,
            peer_queue: (budget / 8) as usize,
        }
    }
}

/// Keeps freed memory from piling up in per-thread malloc arenas (glibc
/// gives each busy thread its own, up to 8 per core). Measured: peak RSS
/// during a 10 GiB copy with a peer 210 -> 157 MiB at the same speed.
/// (Also returning large buffers to the kernel on free, M_MMAP_THRESHOLD,
/// saved a little more but halved cold reads: every 1 MiB read buffer then
/// came fresh from the kernel, page faults and zeroing included.)
fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator parameters; called before the
    // daemon starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// How long an unmount waits for the peer to apply the final CP.
const FINAL_CP_PEER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn serve(config: &MountConfig, what: &str, ready: &mut Ready) -> Result<(), CmdError> {
    limit_malloc_arenas();
    let unmounter: Arc<Mutex<Option<fuse::Unmounter>>> = Arc::new(Mutex::new(None));
    let u = unmounter.clone();
    daemon::on_termination(move |sig| {
        log::info!("signal {sig}: unmounting");
        if let Some(u) = u.lock().ok().and_then(|g| g.clone()) {
            if u.unmount().is_err() {
                let _ = u.unmount_lazy();
            }
        }
    })?;
    let options = fuse_options(config);
    let read_only = options.iter().any(|o| o == "ro");
    let dev = FileDevice::open(&config.image, !read_only).map_err(|e| {
        CmdError::failed(
            what,
            e,
            "check the image path; a volume can be mounted only once at a time",
        )
    })?;
    let file_dev = Arc::new(dev);
    let dev: Arc<dyn BlockDevice> = file_dev.clone();
    let shares = MemoryShares::of(config.memory_bytes);
    let vcfg = VolumeConfig {
        read_only,
        cp_interval: Some(config.cp_interval),
        dirty_limit_bytes: config.dirty_limit_bytes.unwrap_or(shares.dirty_limit),
        cache_meta_blocks: shares.cache_meta_blocks,
        cache_data_blocks: shares.cache_data_blocks,
        log_backlog_bytes: shares.log_backlog,
        ..VolumeConfig::default()
    };
    let vol = Arc::new(
        Volume::open(dev, vcfg)
            .map_err(|e| CmdError::failed(what, e, "run `twinfs fsck` on the image"))?,
    );
    let mode = match config.mode {
        cli::Mode::Sync => Mode::Sync,
        cli::Mode::Strict => Mode::Strict,
        cli::Mode::Async => Mode::Async,
    };
    let mirror = match &config.peer {
        None => None,
        Some(p) if read_only => {
            log::warn!("read-only mount: not mirroring to {}", p.addr);
            None
        }
        Some(p) => {
            let credentials =
                load_credentials(what, &p.secret, p.key.as_deref(), p.trusted_keys.as_deref())?;
            let compress = match p.compress {
                cli::Compress::Auto => Compression::Auto,
                cli::Compress::Always => Compression::Always,
                cli::Compress::Never => Compression::Never,
            };
            let cp_sync = match config.cp_sync {
                cli::CpSync::Full => CpSync::Full,
                cli::CpSync::Refs => CpSync::Refs,
                cli::CpSync::Best => CpSync::Best,
            };
            let m = Mirror::start(
                vol.clone(),
                MirrorConfig {
                    peer: format!("{}:{}", p.addr.host, p.addr.port),
                    credentials,
                    compress,
                    mode,
                    cp_sync,
                    sync_timeout: DEFAULT_SYNC_TIMEOUT,
                    queue_bytes: shares.peer_queue,
                },
            )
            .map_err(|e| CmdError::failed(what, e, "check the --peer address"))?;
            Some(m)
        }
    };
    let target = Arc::new(control::Target {
        vol: vol.clone(),
        mirror: mirror.clone(),
        mode,
    });
    let server = control::serve(&config.mountpoint, target)
        .map_err(|e| CmdError::failed(what, e, "unmount it first"))?;
    let handle = fuse::mount_with(
        vol.clone(),
        &config.mountpoint,
        fuse::MountConfig::with_options(&options),
    )
    .map_err(|e| {
        CmdError::failed(
            what,
            e,
            "check that the mount point is an empty directory and /dev/fuse is usable",
        )
    })?;
    *unmounter
        .lock()
        .map_err(|_| CmdError::failed(what, "lock poisoned", "report a bug"))? =
        Some(handle.unmounter());
    log::info!("{what}: mounted");
    ready.ok();
    let session = handle.wait();
    drop(server);
    // From here on an opener of the image waits for us instead of refusing.
    if let Err(e) = file_dev.mark_closing() {
        log::warn!("{what}: could not mark the image as closing: {e}");
    }
    // The final CP, and with a connected peer, its application there.
    let closing = vol.checkpoint();
    if let (Some(m), Ok(cp)) = (&mirror, &closing) {
        if m.status().connected && !m.wait_applied(*cp, FINAL_CP_PEER_WAIT) {
            log::warn!(
                "the peer did not apply the final CP {} before unmount",
                cp.0
            );
        }
    }
    if let Some(m) = &mirror {
        m.shutdown();
    }
    let closed = vol.close();
    session.map_err(|e| CmdError::failed(what, e, "check the kernel log"))?;
    closing
        .and(closed)
        .map_err(|e| CmdError::failed(what, e, "run `twinfs fsck` on the image"))?;
    log::info!("{what}: unmounted cleanly");
    Ok(())
}

/// The mount options in FUSE spelling; `auto_unmount` is added when the
/// fuse3 helper is installed, so that a killed daemon leaves no stale mount.
fn fuse_options(config: &MountConfig) -> Vec<String> {
    let mut out: Vec<String> = config.fuse_options.iter().map(fuse_word).collect();
    if !out.iter().any(|o| o.starts_with("fsname=")) {
        out.push(format!("fsname={}", config.image.display()));
    }
    if !out.iter().any(|o| o == "auto_unmount") && fusermount3_present() {
        out.push("auto_unmount".into());
    }
    out
}

fn fusermount3_present() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()))
}

fn fuse_word(o: &FuseOption) -> String {
    match o {
        FuseOption::ReadOnly => "ro".into(),
        FuseOption::ReadWrite => "rw".into(),
        FuseOption::AllowOther => "allow_other".into(),
        FuseOption::AllowRoot => "allow_root".into(),
        FuseOption::AutoUnmount => "auto_unmount".into(),
        FuseOption::DefaultPermissions => "default_permissions".into(),
        FuseOption::Dev => "dev".into(),
        FuseOption::NoDev => "nodev".into(),
        FuseOption::Suid => "suid".into(),
        FuseOption::NoSuid => "nosuid".into(),
        FuseOption::Exec => "exec".into(),
        FuseOption::NoExec => "noexec".into(),
        FuseOption::Atime => "atime".into(),
        FuseOption::NoAtime => "noatime".into(),
        FuseOption::Sync => "sync".into(),
        FuseOption::Async => "async".into(),
        FuseOption::DirSync => "dirsync".into(),
        FuseOption::FsName(n) => format!("fsname={n}"),
        FuseOption::Subtype(n) => format!("subtype={n}"),
    }
}

/// Resolves the options and checks that the image and the mount point exist
/// and, with a peer, that the secret and keys are usable; returns the configuration.
pub fn check(args: &MountArgs) -> Result<MountConfig, CmdError> {
    let config = args
        .config()
        .map_err(|why| CmdError::Usage(format!("mount: {why} (see twinfs mount --help)")))?;
    require_image("mount", &config.image)?;
    require_dir(
        "mount",
        &config.mountpoint,
        "create the mount point directory first",
    )?;
    if let Some(peer) = &config.peer {
        load_credentials(
            "mount",
            &peer.secret,
            peer.key.as_deref(),
            peer.trusted_keys.as_deref(),
        )?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinfs_fs::nvlog::batch::MAX_BATCH_BLOCKS;
    use twinfs_fs::BLOCK_SIZE_U64;

    #[test]
    fn memory_shares_leave_a_quarter_of_the_budget_and_hold_log_batches() {
        for budget in [cli::MIN_MEMORY_BYTES, cli::DEFAULT_MEMORY_BYTES, 4 << 30] {
            let s = MemoryShares::of(budget);
            let cached = (s.cache_meta_blocks + s.cache_data_blocks) as u64 * BLOCK_SIZE_U64;
            let held = 3 * s.dirty_limit + cached + s.log_backlog as u64 + s.peer_queue as u64;
            assert!(held <= budget / 4 * 3, "{budget}: {s:?}");
            assert!(
                s.log_backlog as u64 >= MAX_BATCH_BLOCKS * BLOCK_SIZE_U64,
                "{budget}: {s:?}"
            );
        }
    }
}
