//! `twinfs fsck IMAGE [--quiet]`

use crate::cli::FsckArgs;
use crate::cmd::require_image;
use crate::error::CmdError;

/// Checks an unmounted image: both superblock slots, every block pointer's
/// hash from the chosen root, the allocation map against the reachable
/// blocks, the log after the CP. Progress on stderr unless `--quiet`;
/// problems are reported and make the exit code 1.
pub fn run(args: FsckArgs) -> Result<(), CmdError> {
    require_image("fsck", &args.image)?;
    log::info!("fsck {} quiet {}", args.image.display(), args.quiet);
    Err(CmdError::NotBuilt { command: "fsck" })
}
