//! `twinfs peer --dir DIR --listen ADDR --secret FILE [--key FILE] [--trusted-keys FILE]
//! [--max-volume SIZE] [--log-quota SIZE] [--mount MOUNTPOINT]`

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use twinfs_fs::device::{BlockDevice, FileDevice};
use twinfs_fs::fuse;
use twinfs_fs::{Volume, VolumeConfig};
use twinfs_replicate::peer::limits::{PeerLimits, DEFAULT_LOG_QUOTA_BYTES, MIN_LOG_QUOTA_BYTES};
use twinfs_replicate::peer::{PeerConfig, PeerDaemon, ReplicaView};

use crate::cli::PeerArgs;
use crate::cmd::{load_credentials, require_dir};
use crate::daemon;
use crate::error::CmdError;

/// Runs the peer daemon in the foreground until SIGTERM/SIGINT: keeps the
/// replica in DIR and, with `--mount`, serves its latest applied CP read-only.
pub fn run(args: PeerArgs) -> Result<(), CmdError> {
    daemon::tune_allocator();
    if let Some(mp) = &args.mount {
        require_dir("peer --mount", mp, "create the mount point directory first")?;
    }
    let what = format!("peer --dir {}", args.dir.display());
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
    let view = match &args.mount {
        Some(mp) => Some(Arc::new(ReplicaMount {
            image: args.dir.join("mirror.img"),
            mountpoint: std::fs::canonicalize(mp)
                .map_err(|e| CmdError::failed(&what, e, "check the mount point"))?,
            mounted: Mutex::new(None),
        })),
        None => None,
    };
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
        listen: format!("{}:{}", args.listen.host, args.listen.port),
        credentials,
        limits,
        view: view.clone().map(|v| v as Arc<dyn ReplicaView>),
    })
    .map_err(|e| {
        CmdError::failed(
            &what,
            e,
            "check --dir and --listen; another peer may be using them",
        )
    })?;
    *stop_flag
        .lock()
        .map_err(|_| CmdError::failed(&what, "lock poisoned", "report a bug"))? =
        Some(daemon.shutdown_handle());
    eprintln!(
        "twinfs peer: listening on {} for {}",
        daemon.local_addr(),
        args.dir.display()
    );
    if let Some(v) = &view {
        // Serve the CP the replica already holds at once.
        if let Ok(st) = twinfs_replicate::peer::peer_status(&args.dir) {
            if st.applied_cp.is_some() {
                v.after_commit(0, [0; 32]);
            }
        }
    }
    let result = daemon.run();
    if let Some(v) = &view {
        v.unmount();
    }
    result.map_err(|e| CmdError::failed(what, e, "see the log above"))
}

/// The `--mount` replica view: a read-only volume over the mirror image,
/// reloaded at each committed CP so readers see whole CPs only.
struct ReplicaMount {
    image: PathBuf,
    mountpoint: PathBuf,
    mounted: Mutex<Option<(Arc<Volume>, fuse::MountHandle)>>,
}

impl ReplicaMount {
    fn open(image: &Path, mountpoint: &Path) -> Result<(Arc<Volume>, fuse::MountHandle), String> {
        let dev: Arc<dyn BlockDevice> =
            Arc::new(FileDevice::open(image, false).map_err(|e| e.to_string())?);
        let vol = Arc::new(
            Volume::open(
                dev,
                VolumeConfig {
                    read_only: true,
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?,
        );
        let cfg = fuse::MountConfig {
            options: vec!["ro".into(), format!("fsname={}", image.display())],
            changing: true,
            ..Default::default()
        };
        let handle = fuse::mount_with(vol.clone(), mountpoint, cfg).map_err(|e| e.to_string())?;
        Ok((vol, handle))
    }

    fn unmount(&self) {
        if let Ok(mut m) = self.mounted.lock() {
            if let Some((vol, handle)) = m.take() {
                drop(handle);
                let _ = vol.close();
            }
        }
    }
}

impl ReplicaView for ReplicaMount {
    fn after_commit(&self, cp: u64, _root_hash: [u8; 32]) {
        let Ok(mut m) = self.mounted.lock() else {
            return;
        };
        match &*m {
            Some((vol, _)) => {
                if let Err(e) = vol.reload() {
                    log::error!("replica view: switching to CP {cp}: {e}");
                }
            }
            None => match Self::open(&self.image, &self.mountpoint) {
                Ok(v) => {
                    log::info!("replica view mounted on {}", self.mountpoint.display());
                    *m = Some(v);
                }
                Err(e) => log::error!("replica view on {}: {e}", self.mountpoint.display()),
            },
        }
    }
}
