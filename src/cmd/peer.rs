//! `twinfs peer --dir DIR --listen ADDR --secret FILE [--mount MOUNTPOINT]`

use crate::cli::PeerArgs;
use crate::cmd::{read_secret, require_dir};
use crate::error::CmdError;

/// Runs the peer daemon in the foreground until SIGINT/SIGTERM.
///
/// To wire: create `args.dir` if missing, open its log store and mirror
/// image, listen on `args.listen`, accept only the configured source
/// (authenticated with the secret), and with `--mount` serve the latest
/// applied CP read-only. Print the bound address on stdout once listening
/// (so `--listen HOST:0` is usable).
pub fn run(args: PeerArgs) -> Result<(), CmdError> {
    let _secret = read_secret("peer", &args.secret)?;
    if let Some(mountpoint) = &args.mount {
        require_dir(
            "peer --mount",
            mountpoint,
            "create the mount point directory first",
        )?;
    }
    log::info!("peer dir {} listen {}", args.dir.display(), args.listen);
    Err(CmdError::NotBuilt { command: "peer" })
}
