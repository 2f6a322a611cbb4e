//! `twinfs snapshot create|list|delete MOUNTPOINT [NAME]`

use crate::cli::SnapshotCommand;
use crate::cmd::require_dir;
use crate::error::CmdError;

/// Creates, lists or deletes a snapshot of the mounted volume.
///
/// To wire: `create` takes a CP and saves its root under the name (default
/// `cp-N`), printing the name; `list` prints one line per snapshot (name, CP,
/// root hash); `delete` releases the snapshot. Names were validated by
/// `cli::parse_snapshot_name`.
pub fn run(command: SnapshotCommand) -> Result<(), CmdError> {
    let mountpoint = match &command {
        SnapshotCommand::Create(a) => &a.mountpoint,
        SnapshotCommand::List(a) => &a.mountpoint,
        SnapshotCommand::Delete(a) => &a.mountpoint,
    };
    require_dir(
        "snapshot",
        mountpoint,
        "give the mount point of a twinfs volume",
    )?;
    log::info!("snapshot {command:?}");
    Err(CmdError::NotBuilt {
        command: "snapshot",
    })
}
