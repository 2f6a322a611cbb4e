//! `twinfs fsck IMAGE [--quiet]`

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use twinfs_fs::device::FileDevice;
use twinfs_fs::fsck;
use twinfs_fs::FsError;

use crate::cli::FsckArgs;
use crate::cmd::require_image;
use crate::error::CmdError;

/// Checks an unmounted image (see `twinfs_fs::fsck`): prints the report on
/// stdout and progress on stderr (unless `--quiet`); exits 1 if the image
/// has warnings or errors.
pub fn run(args: FsckArgs) -> Result<(), CmdError> {
    require_image("fsck", &args.image)?;
    let what = format!("fsck {}", args.image.display());
    let dev = FileDevice::open(&args.image, false)
        .map_err(|e| CmdError::failed(&what, e, "check the path; unmount the volume first"))?;
    let tty = std::io::stderr().is_terminal();
    let mut last = Instant::now();
    let started = Instant::now();
    let mut progress = |p: fsck::Progress| {
        if args.quiet || last.elapsed() < Duration::from_secs(1) {
            return;
        }
        last = Instant::now();
        let pct = if p.blocks_total > 0 {
            (p.blocks_checked as f64 * 100.0 / p.blocks_total as f64).min(100.0)
        } else {
            0.0
        };
        let rate =
            p.blocks_checked as f64 * 4096.0 / 1e6 / started.elapsed().as_secs_f64().max(1e-3);
        let line = format!(
            "fsck: {:?}: {} of {} blocks ({pct:.0}%), {rate:.0} MB/s",
            p.phase, p.blocks_checked, p.blocks_total
        );
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
    };
    let report = fsck::check(&dev, &mut progress).map_err(|e| match e {
        FsError::NotAVolume => CmdError::failed(
            &what,
            e,
            "give the image made by `twinfs mkfs` (a peer's is DIR/mirror.img)",
        ),
        FsError::CorruptVolume(why) => CmdError::failed(
            &what,
            why,
            "the image cannot be checked; restore it from the peer or a backup",
        ),
        e => CmdError::failed(
            &what,
            e,
            "the image cannot be checked; restore it from the peer or a backup",
        ),
    })?;
    if tty && !args.quiet {
        eprintln!();
    }
    if args.quiet {
        print!("{}", problems_only(&report));
    } else {
        println!("{report}");
    }
    if report.is_clean() {
        if !args.quiet {
            println!("clean");
        }
        Ok(())
    } else {
        Err(CmdError::failed(
            what,
            format!(
                "{} errors and {} warnings",
                report.errors(),
                report.warnings()
            ),
            "see the report above; restore damaged files from a snapshot or the peer",
        ))
    }
}

/// What `fsck --quiet` prints: the warnings and errors, one per line, and
/// how many more there were; nothing for a clean image.
fn problems_only(report: &fsck::Report) -> String {
    let mut out = String::new();
    for p in &report.problems {
        if p.severity != fsck::Severity::Note {
            out.push_str(&format!("{p}\n"));
        }
    }
    if report.omitted > 0 {
        out.push_str(&format!("... and {} more problems\n", report.omitted));
    }
    out
}
