//! `twinfs mount IMAGE MOUNTPOINT [-f] [-o OPTIONS]... [--peer HOST:PORT --secret FILE] ...`

use crate::cli::{MountArgs, MountConfig};
use crate::cmd::{read_secret, require_dir, require_image};
use crate::error::CmdError;

/// Serves the volume in `args.image` on `args.mountpoint`.
///
/// To wire: with the [`MountConfig`] from [`check`], open the volume (replaying
/// the log), map `fuse_options` to `fuser::MountOption` in the FUSE adapter
/// (fsname defaults to the image path, subtype to "twinfs"), connect the
/// forwarder when `peer` is set, and mount. Without `-f`, return only once
/// the mount is ready (mount(8) waits for its helper) and keep serving in a
/// daemon; with `-f`, serve until unmounted or SIGINT/SIGTERM, then take a
/// final CP.
pub fn run(args: MountArgs) -> Result<(), CmdError> {
    let config = check(&args)?;
    log::info!("mount {config:?}");
    Err(CmdError::NotBuilt { command: "mount" })
}

/// Resolves the options and checks that the image, the mount point and the
/// secret exist; returns the configuration and, with a peer, the secret.
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
        read_secret("mount", &peer.secret)?;
    }
    Ok(config)
}
