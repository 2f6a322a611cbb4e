//! `twinfs mount IMAGE MOUNTPOINT [-f] [-o OPTIONS]... [--peer HOST:PORT --secret FILE] ...`

use std::sync::{Arc, Mutex};

use twinfs_fs::VolumeConfig;
use twinfs_replicate::encode::CpSync;
use twinfs_replicate::source::Mode;
use twinfs_replicate::Compression;

use crate::cli::{self, FuseOption, MountArgs, MountConfig};
use crate::cmd::{load_credentials, require_dir, require_image};
use crate::daemon::{self, Ready};
use crate::error::CmdError;
use crate::node::{MirrorTo, Node, PrimarySettings};

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
    if let Some(f) = &config.log_file {
        crate::logging::add_file(f).map_err(|e| {
            CmdError::failed(
                format!("mount: log file {}", f.display()),
                e,
                "give a writable path for --log-file",
            )
        })?;
    }
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

/// How long a mount with a peer waits for its first session's verdict
/// before it goes to the background (a refusal or a wrong secret is known
/// in milliseconds; an unreachable host takes the connect timeout).
const PEER_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(6);

fn serve(config: &MountConfig, what: &str, ready: &mut Ready) -> Result<(), CmdError> {
    limit_malloc_arenas();
    let node: Arc<Mutex<Option<Arc<Node>>>> = Arc::new(Mutex::new(None));
    let n = node.clone();
    daemon::on_termination(move |sig| {
        log::info!("signal {sig}: unmounting");
        daemon::notify_stopping();
        if let Some(node) = n.lock().ok().and_then(|g| g.clone()) {
            node.stop();
        }
    })?;
    if let Some(addr) = &config.metrics {
        crate::metrics::serve(&addr.to_string(), crate::metrics::node_source(node.clone()))
            .map_err(|e| {
                CmdError::failed(
                    format!("{what}: metrics at {addr}"),
                    e,
                    "give a free address for --metrics",
                )
            })?;
    }
    let options = fuse_options(config);
    let read_only = options.iter().any(|o| o == "ro");
    let shares = MemoryShares::of(config.memory_bytes);
    let credentials = match &config.peer {
        Some(p) if !read_only => Some(load_credentials(
            what,
            &p.secret,
            p.key.as_deref(),
            p.trusted_keys.as_deref(),
        )?),
        _ => None,
    };
    let compress = match config.peer.as_ref().map(|p| p.compress) {
        Some(cli::Compress::Always) => Compression::Always,
        Some(cli::Compress::Never) => Compression::Never,
        _ => Compression::Auto,
    };
    let mode = match config.mode {
        cli::Mode::Sync => Mode::Sync,
        cli::Mode::Strict => Mode::Strict,
        cli::Mode::Async => Mode::Async,
    };
    let settings = PrimarySettings {
        mountpoint: config.mountpoint.clone(),
        fuse_options: options.into_iter().filter(|o| o != "ro").collect(),
        volume: VolumeConfig {
            cp_interval: Some(config.cp_interval),
            dirty_limit_bytes: config.dirty_limit_bytes.unwrap_or(shares.dirty_limit),
            cache_meta_blocks: shares.cache_meta_blocks,
            cache_data_blocks: shares.cache_data_blocks,
            log_backlog_bytes: shares.log_backlog,
            ..VolumeConfig::default()
        },
        queue_bytes: shares.peer_queue,
        credentials,
        compress,
        limits: Default::default(),
        mode,
    };
    let mirror_to = config.peer.as_ref().map(|p| MirrorTo {
        addr: format!("{}:{}", p.addr.host, p.addr.port),
        mode,
        cp_sync: match config.cp_sync {
            cli::CpSync::Full => CpSync::Full,
            cli::CpSync::Refs => CpSync::Refs,
            cli::CpSync::Best => CpSync::Best,
        },
    });
    let started = Node::start_primary(settings, &config.image, read_only, mirror_to)
        .map_err(|e| CmdError::said(what, e))?;
    *node
        .lock()
        .map_err(|_| CmdError::failed(what, "lock poisoned", "report a bug"))? =
        Some(started.clone());
    if let (Some(m), Some(p)) = (started.mirror(), &config.peer) {
        if let Err(why) = m.wait_first_outcome(PEER_CHECK_WAIT) {
            let msg = format!(
                "the peer {} did not accept {}: {why}",
                p.addr,
                config.image.display()
            );
            if config.require_peer {
                started.abandon();
                return Err(CmdError::failed(
                    what,
                    msg,
                    "fix the peer (see `twinfs status --dir` there), or mount without --require-peer",
                ));
            }
            log::warn!(
                "{msg}; mounted anyway without a working mirror (it retries by itself): see `twinfs status {}`",
                config.mountpoint.display()
            );
        }
    }
    log::info!("{what}: mounted");
    ready.ok();
    daemon::notify_ready(&format!("serving {}", config.mountpoint.display()));
    started
        .run()
        .map_err(|e| CmdError::failed(what, e, "run `twinfs fsck` on the image"))?;
    daemon::notify_stopping();
    log::info!("{what}: unmounted cleanly");
    Ok(())
}

/// The mount options in FUSE spelling; `auto_unmount` is added where it
/// works (as root, or with the fuse3 helper installed), so that a killed
/// daemon leaves no stale mount.
fn fuse_options(config: &MountConfig) -> Vec<String> {
    let mut out: Vec<String> = config.fuse_options.iter().map(fuse_word).collect();
    if !out.iter().any(|o| o.starts_with("fsname=")) {
        out.push(format!("fsname={}", config.image.display()));
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !out.iter().any(|o| o == "auto_unmount") && (root || fusermount3_present()) {
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

/// Resolves the options and checks that the image, the mount point and the
/// credentials exist; returns the configuration.
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
    if !config.nonempty {
        refuse_nonempty(&config.mountpoint)?;
    }
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

/// Fails when `mountpoint` holds anything: the mount would hide it (and a
/// mount point that already holds files is more often a wrong path than a
/// wish). `-o nonempty` mounts anyway.
fn refuse_nonempty(mountpoint: &std::path::Path) -> Result<(), CmdError> {
    let Ok(mut entries) = std::fs::read_dir(mountpoint) else {
        return Ok(()); // unreadable: the mount itself says why
    };
    if entries.next().is_none() {
        return Ok(());
    }
    let count = 1 + entries.count();
    let held = if count == 1 {
        "1 entry".to_string()
    } else {
        format!("{count} entries")
    };
    Err(CmdError::failed(
        format!("mount {}", mountpoint.display()),
        format!("the mount point is not empty: mounting would hide the {held} it holds"),
        "give an empty directory, or add -o nonempty to mount over them",
    ))
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
