//! `twinfs checkpoint MOUNTPOINT`

use crate::cli::CheckpointArgs;
use crate::cmd::require_dir;
use crate::control::{request, Request};
use crate::error::CmdError;

/// Takes a CP in the running mount; returns once it is committed there and,
/// when a peer is connected, applied at the peer.
pub fn run(args: CheckpointArgs) -> Result<(), CmdError> {
    let mp = &args.mountpoint;
    require_dir("checkpoint", mp, "give the mount point of a twinfs volume")?;
    let what = format!("checkpoint {}", mp.display());
    let v = request(mp, &Request::Checkpoint)
        .map_err(|e| CmdError::failed(&what, e, "check `twinfs status`"))?;
    let cp = v["cp"].as_u64().unwrap_or(0);
    match v["applied_at_peer"].as_bool() {
        Some(false) => Err(CmdError::failed(
            what,
            format!("CP {cp} is committed here but the peer did not apply it"),
            "check the peer with `twinfs status`",
        )),
        Some(true) => {
            println!("CP {cp} committed and applied at the peer");
            Ok(())
        }
        None => {
            println!("CP {cp} committed");
            Ok(())
        }
    }
}
