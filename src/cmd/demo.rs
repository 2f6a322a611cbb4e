//! `twinfs demo [DIR]`

use crate::cli::DemoArgs;
use crate::error::CmdError;

/// Self-contained run on loopback (README "Demo"): make a volume and a peer
/// in `DIR` (or a temporary directory), mount both, do real work in the
/// source, checkpoint, show the replica has the same tree and root hash, and
/// print the bytes each CP encoding saved. Unmounts and stops everything it
/// started, also on failure.
pub fn run(args: DemoArgs) -> Result<(), CmdError> {
    if let Some(dir) = &args.dir {
        log::info!("demo in {}", dir.display());
    }
    Err(CmdError::NotBuilt { command: "demo" })
}
