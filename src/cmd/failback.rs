//! `twinfs failback IMAGE --dir DIR [--keep-as FILE]` and
//! `twinfs resolve --dir DIR (--keep-as FILE | --keep-replica)`

use std::io::{IsTerminal, Write};
use std::time::Instant;

use twinfs_replicate::peer;

use crate::cli::{FailbackArgs, ResolveArgs};
use crate::cmd::{require_dir, require_image};
use crate::error::CmdError;

/// Makes the old source's image the replica of the new primary in DIR,
/// keeping its own changes since its peer's last CP in a copy.
pub fn run(args: FailbackArgs) -> Result<(), CmdError> {
    let what = format!("failback {}", args.image.display());
    let resuming = !args.image.exists() && args.dir.join(peer::IMAGE_FILE).is_file();
    if !resuming {
        require_image("failback", &args.image)?;
    }
    let mut progress = progress_printer("copying");
    let done = peer::failback(
        &args.image,
        &args.dir,
        args.keep_as.as_deref(),
        &mut progress,
    )
    .map_err(|e| {
        CmdError::failed(
            &what,
            e,
            "unmount the image, give a new --dir, and run failback again",
        )
    })?;
    finish_progress();
    match (done.base_cp, &done.kept) {
        (Some(base), kept) => {
            println!(
                "{} is now the replica in {} at CP {base}: the new primary sends only what changed since",
                args.image.display(),
                args.dir.display()
            );
            if let Some(k) = kept {
                println!(
                    "this volume's own changes after CP {base} (up to its CP {}) are kept in {} (mount it with `twinfs mount`)",
                    done.source_cp,
                    k.display()
                );
            }
        }
        (None, _) => println!(
            "{} records no CP its peer held: it stays as it is (mountable), and {} starts empty; the new primary sends a full copy",
            args.image.display(),
            args.dir.display()
        ),
    }
    println!(
        "next: twinfs peer --dir {} --listen ADDR --secret FILE, and mount the new primary with --peer pointing here",
        args.dir.display()
    );
    Ok(())
}

/// Settles a divergence a stopped peer recorded.
pub fn resolve(args: ResolveArgs) -> Result<(), CmdError> {
    require_dir(
        "resolve",
        &args.dir,
        "give the --dir of a stopped twinfs peer",
    )?;
    let what = format!("resolve --dir {}", args.dir.display());
    let todo = "stop the peer daemon and any replica mount first";
    if let Some(keep) = &args.keep_as {
        let mut progress = progress_printer("moving");
        let k = peer::resolve_keep_as(&args.dir, keep, &mut progress)
            .map_err(|e| CmdError::failed(&what, e, todo))?;
        finish_progress();
        println!(
            "the replica is now the volume {} (CP {}); {} starts over and the next source sends a full copy",
            k.kept.display(),
            k.cp,
            args.dir.display()
        );
    } else {
        let had =
            peer::resolve_keep_replica(&args.dir).map_err(|e| CmdError::failed(&what, e, todo))?;
        if had {
            println!(
                "the replica in {} stays; the refused source is forgotten (make it a peer with `twinfs failback`, or retire it)",
                args.dir.display()
            );
        } else {
            println!("{} has no refused source on record", args.dir.display());
        }
    }
    Ok(())
}

/// Prints "VERB: X of Y MiB (P%)" on stderr, in place on a terminal.
fn progress_printer(verb: &'static str) -> impl FnMut(u64, u64) {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    move |done, total| {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let pct = if total > 0 {
            done as f64 * 100.0 / total as f64
        } else {
            100.0
        };
        let rate = mib(done) / started.elapsed().as_secs_f64().max(1e-3);
        let line = format!(
            "{verb}: {:.0} of {:.0} MiB ({pct:.0}%), {rate:.0} MiB/s",
            mib(done),
            mib(total)
        );
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
}

fn finish_progress() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}
