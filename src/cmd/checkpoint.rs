//! `twinfs checkpoint MOUNTPOINT`

use crate::cli::CheckpointArgs;
use crate::cmd::require_dir;
use crate::control::{request, Request};
use crate::error::CmdError;

/// Takes a CP in the running mount; returns once it is committed there and,
/// with a peer, applied at the peer. Exits 1 when the peer did not apply it:
/// always in sync and strict mode, in async mode only when it was connected.
pub fn run(args: CheckpointArgs) -> Result<(), CmdError> {
    let mp = &args.mountpoint;
    require_dir("checkpoint", mp, "give the mount point of a twinfs volume")?;
    let what = format!("checkpoint {}", mp.display());
    let v = request(mp, &Request::Checkpoint)
        .map_err(|e| e.into_cmd(&what, &format!("check `twinfs status {}`", mp.display())))?;
    let cp = v["cp"].as_u64().unwrap_or(0);
    let note = v["peer_note"]
        .as_str()
        .unwrap_or("the peer did not apply it");
    match v["applied_at_peer"].as_bool() {
        Some(false) => Err(CmdError::failed(
            what,
            format!("CP {cp} committed here, not at the peer ({note})"),
            format!("check the peer with `twinfs status {}`", mp.display()),
        )),
        Some(true) => {
            println!("CP {cp} committed and applied at the peer");
            Ok(())
        }
        None if v["peer_note"].is_string() => {
            println!("CP {cp} committed here; not at the peer ({note}, async mode)");
            Ok(())
        }
        None => {
            println!("CP {cp} committed");
            Ok(())
        }
    }
}
