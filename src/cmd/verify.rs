//! `twinfs verify MOUNTPOINT [--deep]`

use crate::cli::VerifyArgs;
use crate::cmd::require_dir;
use crate::control::{request, Request};
use crate::error::CmdError;

/// Takes a CP, waits for the peer to apply it, and compares the root hashes
/// (with `--deep`, rehashes every block on both sides). Exits 1 on a difference.
pub fn run(args: VerifyArgs) -> Result<(), CmdError> {
    let mp = &args.mountpoint;
    require_dir("verify", mp, "give the mount point of a twinfs volume")?;
    let what = format!("verify {}", mp.display());
    let v = request(mp, &Request::Verify { deep: args.deep }).map_err(|e| {
        e.into_cmd(
            &what,
            &format!("check the peer with `twinfs status {}`", mp.display()),
        )
    })?;
    let cp = v["cp"].as_u64().unwrap_or(0);
    let show = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    println!(
        "CP {cp}: source root {} peer root {}",
        show("source_root_hash"),
        show("peer_root_hash")
    );
    if args.deep {
        println!(
            "CP {cp}: source deep {} peer deep {}",
            show("source_deep_hash"),
            show("peer_deep_hash")
        );
    }
    if v["equal"] == true {
        println!("equal");
        Ok(())
    } else {
        Err(CmdError::failed(
            what,
            format!("the source and the peer differ at CP {cp}"),
            "see the hashes above; the mirror resyncs by itself on a root hash mismatch",
        ))
    }
}
