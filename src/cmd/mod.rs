//! One module per subcommand, each with `pub fn run(args) -> Result<(), CmdError>`.
//!
//! Commands are wiring only (DESIGN.md): they check what the user named
//! exists, call into `twinfs-fs` / `twinfs-replicate`, and turn failures into
//! [`CmdError`]s that say what to do. File-system logic lives in those crates.

use std::path::Path;

use twinfs_replicate::{Credentials, KeyPaths};

use crate::cli::Command;
use crate::error::CmdError;

pub mod checkpoint;
pub mod demo;
pub mod failback;
pub mod fsck;
pub mod keygen;
pub mod mkfs;
pub mod mount;
pub mod peer;
pub mod promote;
pub mod relay;
pub mod snapshot;
pub mod status;
pub mod switchover;
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
        Command::Failback(args) => failback::run(args),
        Command::Switchover(args) => switchover::run(args),
        Command::Resolve(args) => failback::resolve(args),
        Command::Fsck(args) => fsck::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Relay(args) => relay::run(args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            let mut cmd = crate::cli::Cli::command();
            clap_complete::generate(args.shell, &mut cmd, "twinfs", &mut std::io::stdout());
            Ok(())
        }
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

/// Reads the channel's credentials: the shared secret, this machine's key
/// and the other side's trusted keys (the last two default to `key` and
/// `trusted-keys` next to the secret). The error names the file and the fix.
pub(crate) fn load_credentials(
    command: &str,
    secret: &Path,
    key: Option<&Path>,
    trusted: Option<&Path>,
) -> Result<Credentials, CmdError> {
    let paths = KeyPaths::resolve(secret, key, trusted);
    Credentials::load(&paths).map_err(|e| {
        CmdError::failed(
            command,
            e,
            "KEYS in twinfs(8) shows how to set up the key files and the secret",
        )
    })
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
    fn missing_keys_are_named_with_the_default_path_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"k3Yq9vXz7TpL2mNw4RbH8cJd\n").expect("write");
        let mut perms = std::fs::metadata(&secret).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&secret, perms).expect("chmod");
        let err = load_credentials("peer", &secret, None, None)
            .expect_err("no key file")
            .to_string();
        let key = dir.path().join("key");
        assert!(err.contains(&key.display().to_string()), "{err}");
        assert!(err.contains("twinfs keygen"), "{err}");
    }
}
