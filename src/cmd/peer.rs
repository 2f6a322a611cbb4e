//! `twinfs peer --dir DIR --listen ADDR --secret FILE [--mount MOUNTPOINT]`

use std::sync::{Arc, Mutex};

use twinfs_fs::VolumeConfig;
use twinfs_replicate::peer::{PeerConfig, PeerDaemon};
use twinfs_replicate::source::DEFAULT_QUEUE_BYTES;
use twinfs_replicate::Secret;

use crate::cli::PeerArgs;
use crate::cmd::require_dir;
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
    let what = format!("peer --dir {}", args.dir.display());
    let secret = Secret::from_file(&args.secret).map_err(|e| {
        CmdError::failed(
            &what,
            e,
            "give a --secret file of 16 bytes or more, the source's",
        )
    })?;
    std::fs::create_dir_all(&args.dir).map_err(|e| CmdError::failed(&what, e, "check the path"))?;
    let listen = format!("{}:{}", args.listen.host, args.listen.port);
    let Some(mp) = &args.mount else {
        return run_daemon(&args, &what, secret, &listen);
    };
    let node: Arc<Mutex<Option<Arc<Node>>>> = Arc::new(Mutex::new(None));
    let n = node.clone();
    daemon::on_termination(move |sig| {
        log::info!("signal {sig}: stopping");
        if let Some(node) = n.lock().ok().and_then(|g| g.clone()) {
            node.stop();
        }
    })?;
    let settings = PrimarySettings {
        mountpoint: std::fs::canonicalize(mp)
            .map_err(|e| CmdError::failed(&what, e, "check the mount point"))?,
        fuse_options: Vec::new(),
        volume: VolumeConfig::default(),
        queue_bytes: DEFAULT_QUEUE_BYTES,
        secret: Some(secret),
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
    started
        .run()
        .map_err(|e| CmdError::failed(what, e, "see the log above"))
}

/// A peer without a mount point: the daemon alone.
fn run_daemon(args: &PeerArgs, what: &str, secret: Secret, listen: &str) -> Result<(), CmdError> {
    let stop_flag = Arc::new(Mutex::new(None::<twinfs_replicate::peer::ShutdownHandle>));
    let s = stop_flag.clone();
    daemon::on_termination(move |sig| {
        log::info!("signal {sig}: stopping the peer");
        if let Some(h) = s.lock().ok().and_then(|g| g.clone()) {
            h.shutdown();
        }
    })?;
    let daemon = PeerDaemon::start(PeerConfig {
        dir: args.dir.clone(),
        listen: listen.to_string(),
        secret,
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
    daemon
        .run()
        .map_err(|e| CmdError::failed(what, e, "see the log above"))
}
