//! The `twinfs` command line: parsing (`cli`), one module per subcommand
//! (`cmd`), the command error (`error`) and the mount(8) helper convention
//! (`helper`). Wiring only: the volume is `twinfs-fs`, mirroring is
//! `twinfs-replicate`.
//!
//! The binary (`src/main.rs`) calls [`run`]; the library target exists so
//! that tests (e.g. `tests/cli_man.rs`) can walk the clap command tree.

use std::ffi::OsString;

use clap::Parser;

pub mod cli;
pub mod cmd;
pub mod control;
pub mod daemon;
pub mod error;
pub mod helper;
pub mod logging;
pub mod metrics;
pub mod node;

use error::{EXIT_FAILURE, EXIT_USAGE};

/// Runs `twinfs` with `argv` (argv\[0\] first) and returns the exit code:
/// 0 success, 1 operational failure (one line on stderr), 2 usage error.
pub fn run(argv: Vec<OsString>) -> u8 {
    let argv = match helper::translate(&argv) {
        Ok(helper::Helper::NotHelper) => argv,
        Ok(helper::Helper::Run(translated)) => translated,
        Ok(helper::Helper::Fake) => return 0,
        Ok(helper::Helper::Print(text)) => {
            print!("{text}");
            return 0;
        }
        Err(msg) => {
            eprintln!("twinfs: mount helper: {msg}");
            return EXIT_USAGE;
        }
    };
    let cli = match cli::Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version land here too, with exit code 0.
            let code = e.exit_code();
            if e.print().is_err() {
                return EXIT_FAILURE;
            }
            return u8::try_from(code).unwrap_or(EXIT_USAGE);
        }
    };
    logging::init(cli.log_filter());
    let name = cli.command.name();
    log::debug!("running {name}");
    match cmd::run(cli.command) {
        Ok(()) => 0,
        Err(e) => {
            log::debug!("{name} failed: {e:?}");
            eprintln!("twinfs: {}", e.one_line());
            e.exit_code()
        }
    }
}
