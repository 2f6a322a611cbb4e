//! `twinfs switchover MOUNTPOINT [--listen ADDR] [--dir DIR]`

use std::time::Instant;

use crate::cli::SwitchoverArgs;
use crate::cmd::require_dir;
use crate::control::{request, Request};
use crate::error::CmdError;

/// Asks the mount at MOUNTPOINT to hand its volume over to its peer: it
/// stops taking changes, its final CP reaches the peer, the peer becomes
/// the primary (mounted read-write where its replica view was) and this
/// machine its peer (the mount point shows the replica). Nothing is lost:
/// every change made before the switch is in the final CP.
pub fn run(args: SwitchoverArgs) -> Result<(), CmdError> {
    let mp = &args.mountpoint;
    require_dir("switchover", mp, "give the mount point of a twinfs volume")?;
    let what = format!("switchover {}", mp.display());
    let started = Instant::now();
    let v = request(
        mp,
        &Request::Switchover {
            listen: args.listen.as_ref().map(|l| l.to_string()),
            dir: args.dir.clone(),
        },
    )
    .map_err(|e| e.into_cmd(&what, "check `twinfs status` on both sides"))?;
    println!(
        "final CP {} handed over in {:.2} s: the peer is the primary (its CP {})",
        v["final_cp"],
        v["handed_over_secs"].as_f64().unwrap_or(0.0),
        v["new_primary_cp"]
    );
    println!(
        "this machine is its peer now: directory {}, listening on {}; {} shows the replica",
        v["dir"].as_str().unwrap_or("?"),
        v["listen"].as_str().unwrap_or("?"),
        mp.display()
    );
    log::info!("switchover took {:.3} s", started.elapsed().as_secs_f64());
    Ok(())
}
