//! `twinfs mkfs IMAGE --size SIZE [--force]`

use crate::cli::MkfsArgs;
use crate::error::CmdError;

/// Creates an empty volume of `args.size` bytes in `args.image`.
///
/// To wire: create/open the image (a missing file is created; an existing
/// twinfs volume or non-zero data is refused unless `--force`), then write the
/// empty volume with twinfs-fs and report the volume UUID on stdout.
pub fn run(args: MkfsArgs) -> Result<(), CmdError> {
    if args.image.is_dir() {
        return Err(CmdError::failed(
            format!("mkfs {}", args.image.display()),
            "it is a directory",
            "give a file path or a block device",
        ));
    }
    log::info!(
        "mkfs {} size {} ({} bytes) force {}",
        args.image.display(),
        args.size,
        args.size.bytes,
        args.force
    );
    Err(CmdError::NotBuilt { command: "mkfs" })
}
