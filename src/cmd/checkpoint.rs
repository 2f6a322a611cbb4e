//! `twinfs checkpoint MOUNTPOINT`

use crate::cli::CheckpointArgs;
use crate::cmd::require_dir;
use crate::error::CmdError;

/// Takes a CP now; returns once it is committed locally and, with a peer
/// connected, applied there. Prints the CP number and root hash.
///
/// To wire: ask the daemon serving `args.mountpoint` (control channel of the
/// volume's choosing) and wait for its answer.
pub fn run(args: CheckpointArgs) -> Result<(), CmdError> {
    require_dir(
        "checkpoint",
        &args.mountpoint,
        "give the mount point of a twinfs volume",
    )?;
    Err(CmdError::NotBuilt {
        command: "checkpoint",
    })
}
