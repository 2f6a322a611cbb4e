//! `twinfs snapshot (create|list|delete) MOUNTPOINT [NAME]`

use crate::cli::SnapshotCommand;
use crate::cmd::require_dir;
use crate::control::{request, Request};
use crate::error::CmdError;

/// Creates, lists or deletes snapshots of the running mount. Snapshots are
/// readable under `MOUNTPOINT/.snapshot/NAME`.
pub fn run(command: SnapshotCommand) -> Result<(), CmdError> {
    let (mp, label) = match &command {
        SnapshotCommand::Create(a) => (&a.mountpoint, "create"),
        SnapshotCommand::List(a) => (&a.mountpoint, "list"),
        SnapshotCommand::Delete(a) => (&a.mountpoint, "delete"),
    };
    require_dir("snapshot", mp, "give the mount point of a twinfs volume")?;
    let what = format!("snapshot {label} {}", mp.display());
    let todo = format!(
        "check the name against `twinfs snapshot list {}`",
        mp.display()
    );
    let req = match &command {
        SnapshotCommand::List(_) => Request::SnapshotList,
        SnapshotCommand::Delete(a) => Request::SnapshotDelete {
            name: a.name.clone(),
        },
        SnapshotCommand::Create(a) => Request::SnapshotCreate {
            name: a.name.clone(),
        },
    };
    let v = request(mp, &req).map_err(|e| e.into_cmd(&what, &todo))?;
    match req {
        Request::SnapshotList => {
            for s in v["snapshots"].as_array().into_iter().flatten() {
                println!(
                    "{}\tcp {}\t{}",
                    s["name"].as_str().unwrap_or("?"),
                    s["cp"].as_u64().unwrap_or(0),
                    s["root_hash"].as_str().unwrap_or("")
                );
            }
        }
        Request::SnapshotCreate { .. } => {
            println!("snapshot {} created", v["name"].as_str().unwrap_or("?"))
        }
        Request::SnapshotDelete { name } => println!("snapshot {name} deleted"),
        _ => {}
    }
    Ok(())
}
