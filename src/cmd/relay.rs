//! `twinfs relay --listen ADDR --to HOST:PORT [--control ADDR] [link options]`

use std::io::Write;

use twinfs_replicate::relay::{self, LinkConfig, RelayOptions, Stopper};

use crate::cli::RelayArgs;
use crate::daemon;
use crate::error::CmdError;

/// Relays connections through an emulated link until SIGTERM/SIGINT; prints
/// one line with the addresses bound once it listens.
pub fn run(args: RelayArgs) -> Result<(), CmdError> {
    let what = format!("relay --listen {} --to {}", args.listen, args.to);
    let cfg = LinkConfig {
        delay: std::time::Duration::from_millis(args.delay),
        jitter: std::time::Duration::from_millis(args.jitter),
        rate_bytes_per_sec: args
            .rate
            .as_deref()
            .map(relay::parse_rate)
            .transpose()
            .map_err(CmdError::Usage)?,
        loss: args.loss,
        cut: args.cut,
    };
    cfg.check().map_err(CmdError::Usage)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let stopper = Stopper::new();
    let s = stopper.clone();
    daemon::on_termination(move |sig| {
        log::info!("signal {sig}: stopping the relay");
        s.stop();
    })?;
    let target = format!("{}:{}", args.to.host, args.to.port);
    let opts = RelayOptions {
        listen: format!("{}:{}", args.listen.host, args.listen.port),
        target: target.clone(),
        control: args.control.map(|c| format!("{}:{}", c.host, c.port)),
        link: cfg,
        buffer_bytes: usize::try_from(args.buffer.bytes).unwrap_or(usize::MAX),
        seed,
    };
    relay::run_blocking(
        opts,
        |bound, ctl| {
            let ctl = ctl.map_or(String::new(), |c| format!("; control on {c}"));
            println!("twinfs relay: listening on {bound}, relaying to {target}{ctl} (seed {seed})");
            let _ = std::io::stdout().flush();
        },
        stopper,
    )
    .map_err(|e| CmdError::failed(what, e, "check --listen, --to and --control"))
}
