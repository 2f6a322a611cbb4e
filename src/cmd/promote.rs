//! `twinfs promote DIR`

use crate::cli::PromoteArgs;
use crate::cmd::require_dir;
use crate::error::CmdError;

/// Turns a stopped peer's replica into a volume `twinfs mount` serves
/// read-write: replays the durable transfers newer than the last applied
/// CP and prints the image path as the last line.
pub fn run(args: PromoteArgs) -> Result<(), CmdError> {
    require_dir(
        "promote",
        &args.dir,
        "give the --dir of a stopped twinfs peer",
    )?;
    let what = format!("promote {}", args.dir.display());
    let p = twinfs_replicate::peer::promote(&args.dir).map_err(|e| {
        CmdError::failed(&what, e, "stop the peer daemon and any replica mount first")
    })?;
    if p.already {
        println!("{} was promoted before", args.dir.display());
    } else {
        println!(
            "replica at CP {} plus {} transfers replayed: now CP {}",
            p.applied_cp, p.replayed, p.final_cp
        );
        if let Some(why) = &p.stopped {
            println!("replay stopped early: {why}");
        }
    }
    println!("{}", p.image.display());
    Ok(())
}
