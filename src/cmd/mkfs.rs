//! `twinfs mkfs IMAGE --size SIZE [--force]`

use std::sync::Arc;

use twinfs_fs::device::{BlockDevice, FileDevice};
use twinfs_fs::volume::{self, MkfsOptions};

use crate::cli::MkfsArgs;
use crate::error::CmdError;

/// Creates an empty volume of `args.size` bytes in `args.image` (a sparse
/// file, created if missing). An existing volume or other data is refused
/// unless `--force`.
pub fn run(args: MkfsArgs) -> Result<(), CmdError> {
    let what = format!("mkfs {}", args.image.display());
    if args.image.is_dir() {
        return Err(CmdError::failed(
            what,
            "it is a directory",
            "give a file path or a block device",
        ));
    }
    let size = args.size.bytes;
    if size < volume::min_volume_bytes() {
        return Err(CmdError::failed(
            what,
            format!("{size} bytes is too small"),
            format!(
                "give --size of at least {} bytes",
                volume::min_volume_bytes()
            ),
        ));
    }
    if !args.force {
        refuse_existing(&args.image, &what)?;
    }
    let dev = FileDevice::create(&args.image, size).map_err(|e| {
        CmdError::failed(
            &what,
            e,
            "check that the directory is writable and the image is not in use",
        )
    })?;
    let dev: Arc<dyn BlockDevice> = Arc::new(dev);
    if dev.num_blocks() * twinfs_fs::BLOCK_SIZE_U64 < size {
        return Err(CmdError::failed(
            what,
            format!(
                "the device holds only {} bytes",
                dev.num_blocks() * twinfs_fs::BLOCK_SIZE_U64
            ),
            "give a --size that fits the device",
        ));
    }
    let sb = volume::mkfs(
        dev,
        &MkfsOptions {
            root_uid: unsafe_uid(),
            root_gid: unsafe_gid(),
            ..Default::default()
        },
    )
    .map_err(|e| CmdError::failed(&what, e, "check the device and try again"))?;
    println!(
        "made twinfs volume {} on {}: {} blocks of 4 KiB, {} MiB log",
        twinfs_fs::hex(&sb.uuid),
        args.image.display(),
        sb.total_blocks,
        sb.log_blocks * 4 / 1024
    );
    Ok(())
}

/// The owner of the new root directory: whoever runs mkfs.
fn unsafe_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn unsafe_gid() -> u32 {
    // SAFETY: getgid has no preconditions and cannot fail.
    unsafe { libc::getgid() }
}

/// Refuses an image that holds a volume or any other data.
fn refuse_existing(path: &std::path::Path, what: &str) -> Result<(), CmdError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let is_file = meta.file_type().is_file();
    if is_file && meta.len() == 0 {
        return Ok(());
    }
    if let Ok(dev) = FileDevice::open(path, false) {
        if let Ok((sb, _)) = twinfs_fs::superblock::read_latest(&dev) {
            return Err(CmdError::failed(
                what,
                format!(
                    "it already holds twinfs volume {} (CP {})",
                    twinfs_fs::hex(&sb.uuid),
                    sb.cp.0
                ),
                "use --force to overwrite it",
            ));
        }
    }
    Err(CmdError::failed(
        what,
        "it exists and is not empty",
        "remove it, or use --force to overwrite it",
    ))
}
