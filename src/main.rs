//! `twinfs`: see `man/twinfs.8` and the library target (`src/lib.rs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(twinfs::run(std::env::args_os().collect()))
}
