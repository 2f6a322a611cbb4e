//! `twinfs peer --dir DIR --listen ADDR --secret FILE [--mount MOUNTPOINT]`

use std::sync::{Arc, Mutex};

use twinfs_fs::VolumeConfig;
use twinfs_replicate::keys::Credentials;
use twinfs_replicate::peer::limits::{PeerLimits, DEFAULT_LOG_QUOTA_BYTES, MIN_LOG_QUOTA_BYTES};
use twinfs_replicate::peer::{PeerConfig, PeerDaemon};
use twinfs_replicate::source::DEFAULT_QUEUE_BYTES;
use twinfs_replicate::Compression;

use crate::cli::PeerArgs;
use crate::cmd::{load_credentials, require_dir};
use crate::daemon;
use crate::error::CmdError;
use crate::node::{Node, PrimarySettings};

/// Runs the peer daemon in the foreground until SIGTERM/SIGINT: keeps the
/// replica in DIR and, with `--mount`, serves its latest applied CP
/// read-only there — and, asked by the source in a switchover, takes over
/// as the primary on that mount point.
pub fn run(args: PeerArgs) -> Result<(), CmdError> {
    daemon::tune_allocator();
    if let Some(mp) = &args.mount {
        require_dir("peer --mount", mp, "create the mount point directory first")?;
    }
    if let Some(f) = &args.log_file {
        crate::logging::add_file(f).map_err(|e| {
            CmdError::failed(
                format!("peer: log file {}", f.display()),
                e,
                "give a writable path for --log-file",
            )
        })?;
    }
    let what = format!("peer --dir {}", args.dir.display());
    if args.dir.exists() && !args.dir.is_dir() {
        return Err(CmdError::failed(
            &what,
            "it exists and is not a directory",
            "give a directory for the replica (it is created if missing)",
        ));
    }
    let credentials = load_credentials(
        &what,
        &args.secret,
        args.key.as_deref(),
        args.trusted_keys.as_deref(),
    )?;
    let log_quota_bytes = args.log_quota.map_or(DEFAULT_LOG_QUOTA_BYTES, |s| s.bytes);
    if log_quota_bytes < MIN_LOG_QUOTA_BYTES {
        return Err(CmdError::Usage(format!(
            "peer: --log-quota {log_quota_bytes} bytes is too small: give at least 128M"
        )));
    }
    let limits = PeerLimits {
        max_volume_bytes: args.max_volume.map(|s| s.bytes),
        log_quota_bytes,
    };
    twinfs_replicate::peer::state::ensure_dir(&args.dir)
        .map_err(|e| CmdError::failed(&what, e, "check the path"))?;
    let listen = format!("{}:{}", args.listen.host, args.listen.port);
    let Some(mp) = &args.mount else {
        return run_daemon(&args, &what, credentials, limits, &listen);
    };
    let node: Arc<Mutex<Option<Arc<Node>>>> = Arc::new(Mutex::new(None));
    let n = node.clone();
    daemon::on_termination(move |sig| {
        log::info!("signal {sig}: stopping");
        daemon::notify_stopping();
        if let Some(node) = n.lock().ok().and_then(|g| g.clone()) {
            node.stop();
        }
    })?;
    serve_metrics(&args, &what, crate::metrics::node_source(node.clone()))?;
    let settings = PrimarySettings {
        mountpoint: std::fs::canonicalize(mp)
            .map_err(|e| CmdError::failed(&what, e, "check the mount point"))?,
        fuse_options: Vec::new(),
        volume: VolumeConfig::default(),
        queue_bytes: DEFAULT_QUEUE_BYTES,
        credentials: Some(credentials),
        compress: Compression::Auto,
        limits,
        mode: twinfs_replicate::source::Mode::Sync,
    };
    let (started, _) = Node::start_replica(settings, &args.dir, &listen).map_err(|e| {
        CmdError::failed(
            &what,
            e,
            "check --dir and --listen; another peer may be using them",
        )
    })?;
    *node
        .lock()
        .map_err(|_| CmdError::failed(&what, "lock poisoned", "report a bug"))? =
        Some(started.clone());
    daemon::notify_ready(&format!("serving {}", args.dir.display()));
    started
        .run()
        .map_err(|e| CmdError::failed(what, e, "see the log above"))
}

/// A peer without a mount point: the daemon alone.
fn run_daemon(
    args: &PeerArgs,
    what: &str,
    credentials: Credentials,
    limits: PeerLimits,
    listen: &str,
) -> Result<(), CmdError> {
    let stop_flag = Arc::new(Mutex::new(None::<twinfs_replicate::peer::ShutdownHandle>));
    let s = stop_flag.clone();
    daemon::on_termination(move |sig| {
        log::info!("signal {sig}: stopping the peer");
        daemon::notify_stopping();
        if let Some(h) = s.lock().ok().and_then(|g| g.clone()) {
            h.shutdown();
        }
    })?;
    serve_metrics(args, what, crate::metrics::dir_source(args.dir.clone()))?;
    let daemon = PeerDaemon::start(PeerConfig {
        dir: args.dir.clone(),
        listen: listen.to_string(),
        credentials,
        limits,
        view: None,
        takeover: None,
        listener: None,
    })
    .map_err(|e| {
        CmdError::failed(
            what,
            e,
            "check --dir and --listen; another peer may be using them",
        )
    })?;
    *stop_flag
        .lock()
        .map_err(|_| CmdError::failed(what, "lock poisoned", "report a bug"))? =
        Some(daemon.shutdown_handle());
    eprintln!(
        "twinfs peer: listening on {} for {}",
        daemon.local_addr(),
        args.dir.display()
    );
    daemon::notify_ready(&format!(
        "listening on {} for {}",
        daemon.local_addr(),
        args.dir.display()
    ));
    daemon
        .run()
        .map_err(|e| CmdError::failed(what, e, "see the log above"))
}

/// `--metrics ADDR`: serves the peer's metrics (refusing to start when the
/// address is taken).
fn serve_metrics(
    args: &PeerArgs,
    what: &str,
    source: crate::metrics::Source,
) -> Result<(), CmdError> {
    let Some(addr) = &args.metrics else {
        return Ok(());
    };
    let bound = crate::metrics::serve(&addr.to_string(), source).map_err(|e| {
        CmdError::failed(
            format!("{what}: metrics at {addr}"),
            e,
            "give a free address for --metrics",
        )
    })?;
    eprintln!("twinfs peer: metrics at http://{bound}/metrics");
    Ok(())
}
