//! `twinfs promote DIR`

use crate::cli::PromoteArgs;
use crate::cmd::require_dir;
use crate::error::CmdError;

/// Replays the durable transfers newer than the last applied CP into the
/// replica in `args.dir` and commits it as a volume; prints the image path
/// to mount as the last line of stdout.
pub fn run(args: PromoteArgs) -> Result<(), CmdError> {
    require_dir(
        "promote",
        &args.dir,
        "give the --dir of a stopped twinfs peer",
    )?;
    Err(CmdError::NotBuilt { command: "promote" })
}
