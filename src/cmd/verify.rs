//! `twinfs verify MOUNTPOINT [--deep]`

use crate::cli::VerifyArgs;
use crate::cmd::require_dir;
use crate::error::CmdError;

/// Compares the source's root hash with the peer's at the last CP both hold;
/// `--deep` rehashes every block on both sides. Exit 0 when they match; a
/// mismatch is a [`CmdError::Failed`] naming the CP and both hashes.
pub fn run(args: VerifyArgs) -> Result<(), CmdError> {
    require_dir(
        "verify",
        &args.mountpoint,
        "give the mount point of a twinfs volume",
    )?;
    log::info!("verify {} deep {}", args.mountpoint.display(), args.deep);
    Err(CmdError::NotBuilt { command: "verify" })
}
