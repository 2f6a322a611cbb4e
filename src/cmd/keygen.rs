//! `twinfs keygen FILE [--force] [--comment TEXT]`: a static key pair for the
//! replication channel (private key in FILE, mode 0600; public key in FILE.pub).

use twinfs_replicate::keys::public_key_path;
use twinfs_replicate::StaticKey;

use crate::cli::KeygenArgs;
use crate::error::CmdError;

/// Writes a new key pair and says where the public key goes.
pub fn run(args: KeygenArgs) -> Result<(), CmdError> {
    let what = format!("keygen {}", args.file.display());
    let key = StaticKey::generate()
        .map_err(|e| CmdError::failed(&what, e, "check the system's random source"))?;
    let comment = args.comment.unwrap_or_else(host_name);
    let public = key
        .write_files(&args.file, &comment, args.force)
        .map_err(|e| CmdError::failed(&what, e, "see KEYS in twinfs(8)"))?;
    debug_assert_eq!(public, public_key_path(&args.file));
    println!("{}", key.public().to_line(&comment));
    eprintln!(
        "twinfs keygen: private key in {} (keep it on this machine), public key in {}; add that line to the other machine's trusted keys file (by default `trusted-keys` next to its --secret file)",
        args.file.display(),
        public.display()
    );
    Ok(())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
