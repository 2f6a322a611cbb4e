//! One module per subcommand, each with `pub fn run(args) -> Result<(), CmdError>`.
//!
//! Commands are wiring only (DESIGN.md): they check what the user named
//! exists, call into `twinfs-fs` / `twinfs-replicate`, and turn failures into
//! [`CmdError`]s that say what to do. File-system logic lives in those crates.

use std::path::Path;

use crate::cli::Command;
use crate::error::CmdError;

pub mod checkpoint;
pub mod demo;
pub mod fsck;
pub mod mkfs;
pub mod mount;
pub mod peer;
pub mod promote;
pub mod relay;
pub mod snapshot;
pub mod status;
pub mod verify;

/// Runs the parsed subcommand.
pub fn run(command: Command) -> Result<(), CmdError> {
    match command {
        Command::Mkfs(args) => mkfs::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Peer(args) => peer::run(args),
        Command::Status(args) => status::run(args),
        Command::Checkpoint(args) => checkpoint::run(args),
        Command::Snapshot(command) => snapshot::run(command),
        Command::Verify(args) => verify::run(args),
        Command::Promote(args) => promote::run(args),
        Command::Fsck(args) => fsck::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Relay(args) => relay::run(args),
    }
}

/// Fails unless `path` is an existing image: a regular file or a block device.
pub(crate) fn require_image(command: &str, path: &Path) -> Result<(), CmdError> {
    let what = || format!("{command} {}", path.display());
    let meta = std::fs::metadata(path)
        .map_err(|e| CmdError::failed(what(), e, "check the path of the image"))?;
    if meta.is_dir() {
        return Err(CmdError::failed(
            what(),
            "it is a directory, not an image",
            "give the image file or block device made by `twinfs mkfs`",
        ));
    }
    Ok(())
}

/// Fails unless `path` is an existing directory (a mount point, a peer directory).
pub(crate) fn require_dir(command: &str, path: &Path, todo: &str) -> Result<(), CmdError> {
    let what = || format!("{command} {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| CmdError::failed(what(), e, todo))?;
    if !meta.is_dir() {
        return Err(CmdError::failed(what(), "not a directory", todo));
    }
    Ok(())
}

/// Fails unless the secret file can be read and is not empty. The secret
/// itself is returned for the caller to hand on, never logged.
pub(crate) fn read_secret(command: &str, path: &Path) -> Result<Vec<u8>, CmdError> {
    let what = || format!("{command}: read secret {}", path.display());
    let todo = "give a readable file holding the secret shared by source and peer (mode 0600)";
    let secret = std::fs::read(path).map_err(|e| CmdError::failed(what(), e, todo))?;
    if secret.iter().all(u8::is_ascii_whitespace) {
        return Err(CmdError::failed(what(), "the file is empty", todo));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_image_names_the_path_and_what_to_do() {
        let err = require_image("fsck", Path::new("/nonexistent/x.img")).expect_err("missing");
        let msg = err.to_string();
        assert!(msg.starts_with("fsck /nonexistent/x.img: "), "{msg}");
        assert!(msg.ends_with("; check the path of the image"), "{msg}");
    }

    #[test]
    fn a_directory_is_not_an_image_and_a_file_is_not_a_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(require_image("fsck", dir.path()).is_err());
        let file = dir.path().join("img");
        std::fs::write(&file, b"x").expect("write");
        assert!(require_image("fsck", &file).is_ok());
        assert!(require_dir("status", &file, "give a mount point").is_err());
        assert!(require_dir("status", dir.path(), "give a mount point").is_ok());
    }

    #[test]
    fn an_empty_secret_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secret");
        std::fs::write(&file, b" \n").expect("write");
        assert!(read_secret("peer", &file).is_err());
        std::fs::write(&file, b"s3cret\n").expect("write");
        assert_eq!(read_secret("peer", &file).expect("readable"), b"s3cret\n");
    }
}
