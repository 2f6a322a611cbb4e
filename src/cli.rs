//! The command line of `twinfs`: the contract of DESIGN.md "Command line and
//! status", as clap derive types.
//!
//! Everything a user can type is parsed and checked here, so that a typo is a
//! usage error (exit 2) before any command touches an image, a mount or the
//! network. Command modules (`crate::cmd::*`) receive these types already
//! validated; `MountArgs::config` additionally merges the FUSE-style `-o`
//! options with the long flags into one [`MountConfig`].
//!
//! `man/twinfs.8` documents every subcommand and flag defined here; the test
//! `tests/cli_man.rs` walks this tree and fails when the page misses one.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// The largest accepted `--cp-interval`, one day: a longer interval would
/// only let the log grow until the dirty-data bound forces a CP anyway.
pub const MAX_CP_INTERVAL_SECS: u64 = 86_400;

/// The `--cp-interval` used when neither the flag nor `-o cp_interval=` is given.
pub const DEFAULT_CP_INTERVAL_SECS: u64 = 10;
/// Default `--memory` of a mount.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 << 20;
/// Smallest `--memory`: the log backlog's share must hold a few of the
/// largest log batches.
pub const MIN_MEMORY_BYTES: u64 = 128 << 20;

/// twinfs: a FUSE file system that mirrors every change to a peer.
#[derive(Debug, Parser)]
#[command(name = "twinfs", version, propagate_version = true)]
#[command(about = "A FUSE file system that mirrors every change to a peer")]
#[command(after_help = "See twinfs(8) (man/twinfs.8) for the details of every command.")]
pub struct Cli {
    /// More log output: -v info, -vv debug, -vvv trace (default: warnings
    /// only; RUST_LOG, when set, overrides)
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The `log` level that `-v` asks for, as an env_logger filter string.
    pub fn log_filter(&self) -> &'static str {
        match self.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    }
}

/// The subcommands; one module in `src/cmd/` each.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an empty twinfs volume in an image file or block device
    Mkfs(MkfsArgs),
    /// Serve a volume over FUSE, optionally mirroring it to a peer
    Mount(MountArgs),
    /// Run the peer daemon that receives and stores a mirrored volume
    Peer(PeerArgs),
    /// Show the state of a mount or of a peer directory
    Status(StatusArgs),
    /// Take a consistency point now and wait until it is committed
    Checkpoint(CheckpointArgs),
    /// Create, list or delete snapshots of a mounted volume
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Compare the root hash of a mount with its peer's
    Verify(VerifyArgs),
    /// Turn a peer's replica into a volume that `twinfs mount` serves
    Promote(PromoteArgs),
    /// Turn the old source's image into the replica of the new primary
    Failback(FailbackArgs),
    /// Swap roles with the peer: it becomes the primary, this machine its peer
    Switchover(SwitchoverArgs),
    /// Settle a divergence a peer refused: keep its replica, or set it aside
    Resolve(ResolveArgs),
    /// Check the consistency of an unmounted image
    Fsck(FsckArgs),
    /// Run a self-contained demonstration on loopback
    Demo(DemoArgs),
    /// Make a static key pair for the secure channel to the other side
    Keygen(KeygenArgs),
    /// Relay TCP connections through an emulated slow, lossy or partitioned link
    Relay(RelayArgs),
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell
    Completions(CompletionsArgs),
}

impl Command {
    /// The subcommand's name as typed, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Mkfs(_) => "mkfs",
            Command::Mount(_) => "mount",
            Command::Peer(_) => "peer",
            Command::Status(_) => "status",
            Command::Checkpoint(_) => "checkpoint",
            Command::Snapshot(_) => "snapshot",
            Command::Verify(_) => "verify",
            Command::Promote(_) => "promote",
            Command::Failback(_) => "failback",
            Command::Switchover(_) => "switchover",
            Command::Resolve(_) => "resolve",
            Command::Fsck(_) => "fsck",
            Command::Demo(_) => "demo",
            Command::Keygen(_) => "keygen",
            Command::Relay(_) => "relay",
            Command::Completions(_) => "completions",
        }
    }
}

#[derive(Debug, Args)]
pub struct MkfsArgs {
    /// Image file (created if missing) or block device
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,

    /// Size of the volume: bytes, or a number with K, M, G or T (powers of 1024)
    #[arg(long, value_name = "SIZE")]
    pub size: Size,

    /// Overwrite IMAGE even if it already holds a twinfs volume or other data
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Image file or block device made by `twinfs mkfs` (or by `twinfs promote`)
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,

    /// Existing directory to mount the volume on
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,

    /// Stay in the foreground instead of returning once the mount is ready
    #[arg(short, long)]
    pub foreground: bool,

    /// Mount options in FUSE spelling, comma-separated, repeatable
    /// (e.g. -o allow_other,default_permissions -o peer=host:7070)
    #[arg(short = 'o', value_name = "OPTIONS", value_delimiter = ',', action = ArgAction::Append)]
    pub options: Vec<MountOpt>,

    /// Seconds between timed consistency points [default: 10]
    #[arg(long, value_name = "SECS", value_parser = parse_cp_interval)]
    pub cp_interval: Option<u64>,

    /// Mirror every change to the peer daemon at HOST:PORT (needs --secret)
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_peer_addr)]
    pub peer: Option<HostPort>,

    /// File holding the secret shared with the peer
    #[arg(long, value_name = "FILE")]
    pub secret: Option<PathBuf>,

    /// This machine's private key (from `twinfs keygen`) [default: `key`
    /// next to the --secret file]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Public keys of the peers this source trusts, one per line [default:
    /// `trusted-keys` next to the --secret file]
    #[arg(long, value_name = "FILE")]
    pub trusted_keys: Option<PathBuf>,

    /// When log transfers travel lz4-compressed [default: auto]
    #[arg(long, value_enum, value_name = "WHEN")]
    pub compress: Option<Compress>,

    /// When fsync waits for the peer [default: sync]
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<Mode>,

    /// How consistency points are sent to the peer [default: best]
    #[arg(long, value_enum, value_name = "METHOD")]
    pub cp_sync: Option<CpSync>,

    /// Dirty data that forces a consistency point before the interval ends
    /// (SIZE as for mkfs) [default: an eighth of --memory]
    #[arg(long, value_name = "SIZE")]
    pub dirty_limit: Option<Size>,

    /// Memory the mount daemon stays within: sets the dirty-data bound, the
    /// block caches, the log backlog and the queue to the peer (SIZE as for
    /// mkfs, at least 128M) [default: 256M]
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<Size>,

    /// Fail (exit 1, nothing left mounted) unless the peer accepts the
    /// volume within a few seconds, instead of mounting with a warning
    #[arg(long)]
    pub require_peer: bool,

    /// Also append the log to FILE (in the background the log goes to the
    /// journal, or syslog, as well)
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Serve Prometheus metrics over HTTP at ADDR (`GET /metrics`)
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub metrics: Option<HostPort>,
}

#[derive(Debug, Args)]
pub struct PeerArgs {
    /// Directory holding the replica (mirror image, log store, state);
    /// created if missing
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// Address to accept the source's connection on
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub listen: HostPort,

    /// File holding the secret shared with the source
    #[arg(long, value_name = "FILE")]
    pub secret: PathBuf,

    /// This machine's private key (from `twinfs keygen`) [default: `key`
    /// next to the --secret file]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Public keys of the sources this peer serves, one per line [default:
    /// `trusted-keys` next to the --secret file]
    #[arg(long, value_name = "FILE")]
    pub trusted_keys: Option<PathBuf>,

    /// Largest volume accepted (SIZE as for mkfs) [default: the size of the
    /// volume DIR holds, or of the file system holding DIR while it is empty]
    #[arg(long, value_name = "SIZE")]
    pub max_volume: Option<Size>,

    /// Most log data kept that no applied consistency point covers yet (SIZE
    /// as for mkfs, at least 128M) [default: 4G]
    #[arg(long, value_name = "SIZE")]
    pub log_quota: Option<Size>,

    /// Also serve the latest applied CP read-only on this directory
    #[arg(long, value_name = "MOUNTPOINT")]
    pub mount: Option<PathBuf>,

    /// Also append the log to FILE
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Serve Prometheus metrics over HTTP at ADDR (`GET /metrics`)
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub metrics: Option<HostPort>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["mountpoint", "dir"])))]
pub struct StatusArgs {
    /// A mounted twinfs volume
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: Option<PathBuf>,

    /// A peer directory instead of a mount
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,

    /// Print the status again every SECS seconds until interrupted
    /// (with --json: one object per line) [default SECS: 2]
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub watch: Option<u64>,
}

/// What `twinfs status` reports on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusTarget {
    Mount(PathBuf),
    Dir(PathBuf),
}

impl StatusArgs {
    /// The one target clap guaranteed (the ArgGroup makes exactly one present).
    pub fn target(&self) -> StatusTarget {
        match (&self.mountpoint, &self.dir) {
            (_, Some(dir)) => StatusTarget::Dir(dir.clone()),
            (Some(mp), None) => StatusTarget::Mount(mp.clone()),
            // Unreachable through clap; an empty path then fails with a clear
            // "no such mount" message rather than a panic.
            (None, None) => StatusTarget::Mount(PathBuf::new()),
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// A mounted twinfs volume
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save the current state of the volume under NAME
    Create(SnapshotCreateArgs),
    /// List the snapshots of the volume
    List(SnapshotListArgs),
    /// Delete the snapshot NAME, releasing the blocks only it kept
    Delete(SnapshotDeleteArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotCreateArgs {
    /// A mounted twinfs volume
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// Name of the new snapshot [default: cp-N, after the CP it captures]
    #[arg(value_name = "NAME", value_parser = parse_snapshot_name)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotListArgs {
    /// A mounted twinfs volume
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

#[derive(Debug, Args)]
pub struct SnapshotDeleteArgs {
    /// A mounted twinfs volume
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// Name of the snapshot to delete
    #[arg(value_name = "NAME", value_parser = parse_snapshot_name)]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A mounted twinfs volume with a peer
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// Rehash every block on both sides instead of comparing root hashes
    #[arg(long)]
    pub deep: bool,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The peer directory to turn into a volume (its peer daemon stopped)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct FailbackArgs {
    /// The old source's image (not mounted)
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// New peer directory to make from it (created; must not be a peer directory yet)
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Where to keep the image's own changes since its peer's last CP
    /// [default: IMAGE.diverged-cpN beside the image]
    #[arg(long, value_name = "FILE")]
    pub keep_as: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    /// The mounted primary (with a connected peer started with --mount)
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// Where this machine listens as the new peer [default: 0.0.0.0 and
    /// the port of its current peer]
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub listen: Option<HostPort>,
    /// Peer directory the image moves into [default: the one it lives in,
    /// if it was a peer's]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("outcome").required(true).args(["keep_as", "keep_replica"])))]
pub struct ResolveArgs {
    /// The peer directory that refused a source (its peer daemon stopped)
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The refused source wins: promote the replica into a volume at FILE
    /// and start the directory over for a full copy from the source
    #[arg(long, value_name = "FILE")]
    pub keep_as: Option<PathBuf>,
    /// The replica wins: forget the refused source (make that one a peer with
    /// `twinfs failback`, or retire it)
    #[arg(long)]
    pub keep_replica: bool,
}

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Image file or block device (not mounted)
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// Print only problems, no progress
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Working directory for the demo's images and mounts
    /// [default: a new temporary directory]
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where the private key goes (mode 0600); the public key goes to FILE.pub
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Replace FILE and FILE.pub if they exist
    #[arg(long)]
    pub force: bool,
    /// Text after the key in FILE.pub [default: this machine's host name]
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
}

/// `--compress`: when log transfers travel lz4-compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compress {
    /// Only while transfers wait to be sent (the link is the bottleneck)
    Auto,
    /// Every transfer that lz4 shrinks enough
    Always,
    /// Never (sealed lengths then tell nothing about the data)
    Never,
}

impl Compress {
    pub fn as_str(self) -> &'static str {
        match self {
            Compress::Auto => "auto",
            Compress::Always => "always",
            Compress::Never => "never",
        }
    }
}

impl FromStr for Compress {
    type Err = String;
    fn from_str(s: &str) -> Result<Compress, String> {
        <Compress as ValueEnum>::from_str(s, false)
            .map_err(|_| format!("unknown compress setting '{s}' (expected auto, always or never)"))
    }
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Address to accept connections on (port 0: any; the address is printed)
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub listen: HostPort,

    /// Where to relay each connection to
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_peer_addr)]
    pub to: HostPort,

    /// Address of the control port (one command per line; port 0: any)
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub control: Option<HostPort>,

    /// One-way delay in milliseconds added to every byte (a round trip costs twice this)
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub delay: u64,

    /// Further delay of up to this many milliseconds, drawn per chunk
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub jitter: u64,

    /// Bandwidth of each direction in bytes per second (K, M, G suffixes) [default: unlimited]
    #[arg(long, value_name = "RATE")]
    pub rate: Option<String>,

    /// Probability per chunk that its direction stalls for 200 ms, as TCP does
    /// after a lost packet
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub loss: f64,

    /// Probability per chunk that the connection is reset
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub cut: f64,

    /// Most bytes held in flight in each direction of a connection (SIZE as for mkfs)
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub buffer: Size,

    /// Seed of the jitter, loss and cut draws [default: from the clock]
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

/// `--mode`: what fsync waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// fsync waits for the peer; carries on without it past a timeout
    Sync,
    /// fsync fails with EIO when the peer cannot confirm
    Strict,
    /// fsync never waits for the peer
    Async,
}

/// `--cp-sync`: how a consistency point travels to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpSync {
    /// Every block the CP writes, in full (the naive baseline)
    Full,
    /// References to logged whole blocks, the rest in full (the patent's method)
    Refs,
    /// All encodings: full, refs, recipes and deltas, the cheapest per block
    Best,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Strict => "strict",
            Mode::Async => "async",
        }
    }
}

impl CpSync {
    pub fn as_str(self) -> &'static str {
        match self {
            CpSync::Full => "full",
            CpSync::Refs => "refs",
            CpSync::Best => "best",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        <Mode as ValueEnum>::from_str(s, false)
            .map_err(|_| format!("unknown mode '{s}' (expected sync, strict or async)"))
    }
}

impl FromStr for CpSync {
    type Err = String;
    fn from_str(s: &str) -> Result<CpSync, String> {
        <CpSync as ValueEnum>::from_str(s, false)
            .map_err(|_| format!("unknown cp-sync method '{s}' (expected full, refs or best)"))
    }
}

/// Most digits accepted after the decimal point of a size (`1.5G`).
pub const MAX_SIZE_FRACTION_DIGITS: usize = 6;

/// A size in bytes, typed as plain bytes or with a K/M/G/T suffix
/// (powers of 1024; an optional trailing `iB` or `B` is accepted: `64MiB`;
/// with a suffix the number may have a decimal fraction, `1.5G`, rounded
/// down to whole bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub bytes: u64,
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Size, String> {
        let bad = |why: &str| format!("invalid size '{s}': {why} (e.g. 4096, 512K, 64M, 10G, 1T)");
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, rest) = t.split_at(digits_end);
        if digits.is_empty() {
            return Err(bad("it must start with a number"));
        }
        let number: u64 = digits.parse().map_err(|_| bad("the number is too large"))?;
        // A decimal fraction: `1.5G`.
        let (fraction, suffix) = match rest.strip_prefix('.') {
            Some(r) => {
                let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                if end == 0 || end > MAX_SIZE_FRACTION_DIGITS {
                    return Err(bad("give 1 to 6 digits after the decimal point"));
                }
                r.split_at(end)
            }
            None => ("", rest),
        };
        let suffix = suffix
            .strip_suffix("iB")
            .or_else(|| suffix.strip_suffix('B'))
            .filter(|rest| !rest.is_empty())
            .unwrap_or(suffix);
        let shift = match suffix {
            "" => 0,
            "K" | "k" => 10,
            "M" | "m" => 20,
            "G" | "g" => 30,
            "T" | "t" => 40,
            _ => return Err(bad("the unit must be K, M, G or T")),
        };
        if !fraction.is_empty() && shift == 0 {
            return Err(bad("a fraction needs a unit (K, M, G or T)"));
        }
        // Rounded down to whole bytes: fraction * unit / 10^digits.
        let fraction_bytes = if fraction.is_empty() {
            0
        } else {
            let f: u128 = fraction.parse().map_err(|_| bad("bad fraction"))?;
            let scale = 10u128.pow(fraction.len() as u32);
            (f * (1u128 << shift) / scale) as u64
        };
        let bytes = number
            .checked_mul(1u64 << shift)
            .and_then(|b| b.checked_add(fraction_bytes))
            .ok_or_else(|| bad("it does not fit in 64 bits"))?;
        if bytes == 0 {
            return Err(bad("it must be greater than zero"));
        }
        Ok(Size { bytes })
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            let unit_bytes = 1u64 << shift;
            if self.bytes.is_multiple_of(unit_bytes) {
                return write!(f, "{}{unit}", self.bytes / unit_bytes);
            }
        }
        write!(f, "{}", self.bytes)
    }
}

/// A network address as typed: `HOST:PORT`, `IPv4:PORT` or `[IPv6]:PORT`.
/// The host is resolved when connecting or binding, not when parsing, so a
/// peer whose name does not resolve yet can still be configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
}

impl HostPort {
    fn parse(s: &str) -> Result<HostPort, String> {
        let bad = |why: &str| {
            format!("invalid address '{s}': {why} (expected HOST:PORT, e.g. peer.example:7070, 192.0.2.7:7070 or [::1]:7070)")
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("the part in brackets is not an IPv6 address"));
            }
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("missing ':PORT'"))?;
            (host, port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("missing ':PORT'"))?;
            if host.contains(':') {
                return Err(bad("write an IPv6 address in brackets"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(bad("the host has characters a host name cannot have"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port must be a number from 0 to 65535"))?;
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `--peer`: a HOST:PORT to connect to; port 0 is not connectable.
pub fn parse_peer_addr(s: &str) -> Result<HostPort, String> {
    let addr = HostPort::parse(s)?;
    if addr.port == 0 {
        return Err(format!(
            "invalid address '{s}': port 0 cannot be connected to"
        ));
    }
    Ok(addr)
}

/// `--listen`: a HOST:PORT to bind; port 0 lets the system choose.
pub fn parse_listen_addr(s: &str) -> Result<HostPort, String> {
    HostPort::parse(s)
}

/// `--cp-interval`: whole seconds from 1 to [`MAX_CP_INTERVAL_SECS`].
pub fn parse_cp_interval(s: &str) -> Result<u64, String> {
    let secs: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid interval '{s}': expected whole seconds, e.g. 10"))?;
    if !(1..=MAX_CP_INTERVAL_SECS).contains(&secs) {
        return Err(format!(
            "invalid interval '{s}': must be from 1 to {MAX_CP_INTERVAL_SECS} seconds"
        ));
    }
    Ok(secs)
}

/// The longest snapshot name, in bytes.
pub const MAX_SNAPSHOT_NAME_BYTES: usize = 255;

/// A snapshot name: 1 to 255 bytes of letters, digits, `.`, `_`, `-`, `:`, `@`,
/// not starting with `.` (so it can appear as a path component).
pub fn parse_snapshot_name(s: &str) -> Result<String, String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@');
    if s.is_empty() || s.len() > MAX_SNAPSHOT_NAME_BYTES {
        return Err(format!(
            "invalid snapshot name '{s}': must be 1 to {MAX_SNAPSHOT_NAME_BYTES} bytes"
        ));
    }
    if s.starts_with('.') || !s.chars().all(ok_char) {
        return Err(format!(
            "invalid snapshot name '{s}': use letters, digits and . _ - : @, not starting with '.'"
        ));
    }
    Ok(s.to_string())
}

/// One item of `-o`: a FUSE mount option, a twinfs setting, or an option that
/// only means something to mount(8)/fstab and is accepted and ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOpt {
    Fuse(FuseOption),
    Twinfs(TwinfsOpt),
    /// `defaults`, `_netdev`, `noauto`, `nofail`, `user`, `x-*`, `comment=*`, ...
    Ignored(String),
}

/// FUSE/kernel mount options twinfs passes on. This is a plain enum so the
/// command line needs no `fuser`; the FUSE adapter maps it to
/// `fuser::MountOption` (one match arm each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FuseOption {
    ReadOnly,
    ReadWrite,
    AllowOther,
    AllowRoot,
    AutoUnmount,
    DefaultPermissions,
    Dev,
    NoDev,
    Suid,
    NoSuid,
    Exec,
    NoExec,
    Atime,
    NoAtime,
    Sync,
    Async,
    DirSync,
    /// `fsname=NAME`: the source shown in /proc/mounts (default: IMAGE).
    FsName(String),
    /// `subtype=NAME`: shown as fuse.NAME (default: twinfs).
    Subtype(String),
}

/// twinfs settings that can also be given as `-o key=value`, so an fstab line
/// can say everything a command line can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwinfsOpt {
    Peer(HostPort),
    Secret(PathBuf),
    Key(PathBuf),
    TrustedKeys(PathBuf),
    Compress(Compress),
    Mode(Mode),
    CpInterval(u64),
    CpSync(CpSync),
    DirtyLimit(Size),
    Memory(Size),
    RequirePeer,
    /// Mount over a directory that is not empty (hiding what it holds).
    NonEmpty,
    LogFile(PathBuf),
    Metrics(HostPort),
}

/// fstab/mount(8) options that mean nothing to the file system itself.
const IGNORED_MOUNT_OPTIONS: &[&str] = &[
    "defaults", "_netdev", "auto", "noauto", "nofail", "user", "nouser", "users", "owner", "group",
];

impl FromStr for MountOpt {
    type Err = String;

    fn from_str(s: &str) -> Result<MountOpt, String> {
        use FuseOption as F;
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (s, None),
        };
        if IGNORED_MOUNT_OPTIONS.contains(&key) || key.starts_with("x-") || key == "comment" {
            return Ok(MountOpt::Ignored(s.to_string()));
        }
        let flag = |opt: FuseOption| match value {
            None => Ok(MountOpt::Fuse(opt)),
            Some(_) => Err(format!("mount option '{key}' takes no value")),
        };
        let need = |what: &str| {
            value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("mount option '{key}' needs a value: {key}={what}"))
        };
        let twinfs = |opt: Result<TwinfsOpt, String>| opt.map(MountOpt::Twinfs);
        match key {
            "ro" => flag(F::ReadOnly),
            "rw" => flag(F::ReadWrite),
            "allow_other" => flag(F::AllowOther),
            "allow_root" => flag(F::AllowRoot),
            "auto_unmount" => flag(F::AutoUnmount),
            "default_permissions" => flag(F::DefaultPermissions),
            "dev" => flag(F::Dev),
            "nodev" => flag(F::NoDev),
            "suid" => flag(F::Suid),
            "nosuid" => flag(F::NoSuid),
            "exec" => flag(F::Exec),
            "noexec" => flag(F::NoExec),
            "atime" => flag(F::Atime),
            "noatime" => flag(F::NoAtime),
            "sync" => flag(F::Sync),
            "async" => flag(F::Async),
            "dirsync" => flag(F::DirSync),
            "fsname" => Ok(MountOpt::Fuse(F::FsName(need("NAME")?.to_string()))),
            "subtype" => Ok(MountOpt::Fuse(F::Subtype(need("NAME")?.to_string()))),
            "peer" => twinfs(parse_peer_addr(need("HOST:PORT")?).map(TwinfsOpt::Peer)),
            "secret" => twinfs(Ok(TwinfsOpt::Secret(PathBuf::from(need("FILE")?)))),
            "key" => twinfs(Ok(TwinfsOpt::Key(PathBuf::from(need("FILE")?)))),
            "trusted_keys" => twinfs(Ok(TwinfsOpt::TrustedKeys(PathBuf::from(need("FILE")?)))),
            "compress" => twinfs(need("auto|always|never")?.parse().map(TwinfsOpt::Compress)),
            "mode" => twinfs(need("sync|strict|async")?.parse().map(TwinfsOpt::Mode)),
            "cp_interval" => twinfs(parse_cp_interval(need("SECS")?).map(TwinfsOpt::CpInterval)),
            "cp_sync" => twinfs(need("full|refs|best")?.parse().map(TwinfsOpt::CpSync)),
            "dirty_limit" => twinfs(need("SIZE")?.parse().map(TwinfsOpt::DirtyLimit)),
            "memory" => twinfs(need("SIZE")?.parse().map(TwinfsOpt::Memory)),
            "require_peer" => match value {
                None => twinfs(Ok(TwinfsOpt::RequirePeer)),
                Some(_) => Err(format!("mount option '{key}' takes no value")),
            },
            "log_file" => twinfs(Ok(TwinfsOpt::LogFile(PathBuf::from(need("FILE")?)))),
            "metrics" => twinfs(parse_listen_addr(need("ADDR")?).map(TwinfsOpt::Metrics)),
            "nonempty" => match value {
                None => twinfs(Ok(TwinfsOpt::NonEmpty)),
                Some(_) => Err(format!("mount option '{key}' takes no value")),
            },
            _ => Err(format!(
                "unknown mount option '{s}' (see MOUNT OPTIONS in twinfs(8))"
            )),
        }
    }
}

/// Where a mount mirrors to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTarget {
    pub addr: HostPort,
    /// File holding the shared secret; read by the command, never logged.
    pub secret: PathBuf,
    /// `--key`; `None`: `key` next to the secret.
    pub key: Option<PathBuf>,
    /// `--trusted-keys`; `None`: `trusted-keys` next to the secret.
    pub trusted_keys: Option<PathBuf>,
    /// `--compress`.
    pub compress: Compress,
}

/// Everything `twinfs mount` was asked for, flags and `-o` merged, defaults
/// filled in. This is what the volume and the replication layer consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConfig {
    pub image: PathBuf,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    /// FUSE options in the order given; `fsname`/`subtype` only if the user set them.
    pub fuse_options: Vec<FuseOption>,
    pub cp_interval: Duration,
    pub peer: Option<PeerTarget>,
    pub mode: Mode,
    pub cp_sync: CpSync,
    /// `None`: the share of `memory_bytes`.
    pub dirty_limit_bytes: Option<u64>,
    pub memory_bytes: u64,
    /// Fail unless the peer accepts the volume at mount time.
    pub require_peer: bool,
    /// `-o nonempty`: mount over a directory that holds files.
    pub nonempty: bool,
    /// `--log-file`.
    pub log_file: Option<PathBuf>,
    /// `--metrics`.
    pub metrics: Option<HostPort>,
}

/// Sets `slot` from a flag or an `-o` option, refusing the same setting twice.
fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!(
            "{name} is given twice (as a flag and as -o {name}=, or twice in -o); give it once"
        ));
    }
    *slot = Some(value);
    Ok(())
}

impl MountArgs {
    /// Merges the long flags with the twinfs settings given through `-o` and
    /// fills in defaults. Errors are usage errors (exit 2): a setting given
    /// twice, or a peer without a secret and vice versa.
    pub fn config(&self) -> Result<MountConfig, String> {
        let mut cp_interval = self.cp_interval;
        let mut peer = self.peer.clone();
        let mut secret = self.secret.clone();
        let mut key = self.key.clone();
        let mut trusted_keys = self.trusted_keys.clone();
        let mut compress = self.compress;
        let mut mode = self.mode;
        let mut cp_sync = self.cp_sync;
        let mut dirty_limit = self.dirty_limit;
        let mut memory = self.memory;
        let mut require_peer = self.require_peer;
        let mut nonempty = false;
        let mut log_file = self.log_file.clone();
        let mut metrics = self.metrics.clone();
        let mut fuse_options = Vec::new();
        for opt in &self.options {
            match opt {
                MountOpt::Fuse(f) => fuse_options.push(f.clone()),
                MountOpt::Ignored(name) => log::debug!("ignoring mount option '{name}'"),
                MountOpt::Twinfs(t) => match t.clone() {
                    TwinfsOpt::Peer(v) => set_once(&mut peer, v, "peer")?,
                    TwinfsOpt::Secret(v) => set_once(&mut secret, v, "secret")?,
                    TwinfsOpt::Key(v) => set_once(&mut key, v, "key")?,
                    TwinfsOpt::TrustedKeys(v) => set_once(&mut trusted_keys, v, "trusted_keys")?,
                    TwinfsOpt::Compress(v) => set_once(&mut compress, v, "compress")?,
                    TwinfsOpt::Mode(v) => set_once(&mut mode, v, "mode")?,
                    TwinfsOpt::CpInterval(v) => set_once(&mut cp_interval, v, "cp_interval")?,
                    TwinfsOpt::CpSync(v) => set_once(&mut cp_sync, v, "cp_sync")?,
                    TwinfsOpt::DirtyLimit(v) => set_once(&mut dirty_limit, v, "dirty_limit")?,
                    TwinfsOpt::Memory(v) => set_once(&mut memory, v, "memory")?,
                    TwinfsOpt::RequirePeer => require_peer = true,
                    TwinfsOpt::NonEmpty => nonempty = true,
                    TwinfsOpt::LogFile(v) => set_once(&mut log_file, v, "log_file")?,
                    TwinfsOpt::Metrics(v) => set_once(&mut metrics, v, "metrics")?,
                },
            }
        }
        let memory_bytes = memory.map_or(DEFAULT_MEMORY_BYTES, |m| m.bytes);
        if memory_bytes < MIN_MEMORY_BYTES {
            return Err(format!(
                "--memory {memory_bytes} bytes is too small: give at least 128M"
            ));
        }
        if peer.is_none() && (key.is_some() || trusted_keys.is_some() || compress.is_some()) {
            return Err(
                "--key, --trusted-keys and --compress are only meaningful with --peer HOST:PORT"
                    .into(),
            );
        }
        let peer = match (peer, secret) {
            (Some(addr), Some(secret)) => Some(PeerTarget {
                addr,
                secret,
                key,
                trusted_keys,
                compress: compress.unwrap_or(Compress::Auto),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err("--peer needs --secret FILE (the secret shared with the peer)".into())
            }
            (None, Some(_)) => {
                return Err("--secret is only meaningful with --peer HOST:PORT".into())
            }
        };
        Ok(MountConfig {
            image: self.image.clone(),
            mountpoint: self.mountpoint.clone(),
            foreground: self.foreground,
            fuse_options,
            cp_interval: Duration::from_secs(cp_interval.unwrap_or(DEFAULT_CP_INTERVAL_SECS)),
            peer,
            mode: mode.unwrap_or(Mode::Sync),
            cp_sync: cp_sync.unwrap_or(CpSync::Best),
            dirty_limit_bytes: dirty_limit.map(|s| s.bytes),
            memory_bytes,
            require_peer,
            nonempty,
            log_file,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("twinfs").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_accept_plain_bytes_and_binary_suffixes() {
        let bytes = |s: &str| s.parse::<Size>().map(|s| s.bytes);
        assert_eq!(bytes("4096"), Ok(4096));
        assert_eq!(bytes("512K"), Ok(512 << 10));
        assert_eq!(bytes("64m"), Ok(64 << 20));
        assert_eq!(bytes("10G"), Ok(10 << 30));
        assert_eq!(bytes("2T"), Ok(2 << 40));
        assert_eq!(bytes("64MiB"), Ok(64 << 20));
        assert_eq!(bytes("1GB"), Ok(1 << 30));
        assert_eq!(bytes("1.5G"), Ok(3 << 29));
        assert_eq!(bytes("0.5M"), Ok(512 << 10));
        assert_eq!(bytes("1.1K"), Ok(1126));
    }

    #[test]
    fn sizes_reject_bad_units_zero_overflow_and_fractions() {
        for bad in [
            "10Q",
            "",
            "G",
            "0",
            "0K",
            "1.5",
            "1.G",
            "1.1234567G",
            "-1",
            "99999999999T",
            "1 G",
            "1KK",
            "B",
        ] {
            let err = bad.parse::<Size>().expect_err(bad);
            assert!(err.contains("invalid size"), "{bad}: {err}");
        }
    }

    #[test]
    fn size_display_round_trips() {
        for s in ["4000", "512K", "64M", "10G", "2T", "4097"] {
            let size: Size = s.parse().expect(s);
            assert_eq!(size.to_string(), s);
        }
        assert_eq!(Size { bytes: 4096 }.to_string(), "4K");
    }

    #[test]
    fn addresses_accept_names_ipv4_and_bracketed_ipv6() {
        let hp = |h: &str, p| HostPort {
            host: h.into(),
            port: p,
        };
        assert_eq!(parse_peer_addr("peer.lan:7070"), Ok(hp("peer.lan", 7070)));
        assert_eq!(parse_peer_addr("192.0.2.7:1"), Ok(hp("192.0.2.7", 1)));
        assert_eq!(parse_peer_addr("[::1]:7070"), Ok(hp("::1", 7070)));
        assert_eq!(parse_listen_addr("0.0.0.0:0"), Ok(hp("0.0.0.0", 0)));
        assert_eq!(hp("::1", 7070).to_string(), "[::1]:7070");
        assert_eq!(hp("peer.lan", 7070).to_string(), "peer.lan:7070");
    }

    #[test]
    fn addresses_reject_missing_port_bad_port_and_bare_ipv6() {
        for bad in [
            "peer",
            "peer:",
            ":7070",
            "peer:70000",
            "peer:x",
            "::1:7070",
            "[::1]",
            "[zz]:1",
            "a b:1",
        ] {
            let err = parse_peer_addr(bad).expect_err(bad);
            assert!(err.contains("invalid address"), "{bad}: {err}");
        }
        assert!(parse_peer_addr("peer:0").is_err());
    }

    #[test]
    fn mount_defaults_match_the_contract() {
        let cli = parse(&["mount", "img", "/mnt"]).expect("parses");
        let Command::Mount(args) = cli.command else {
            panic!("not mount")
        };
        let config = args.config().expect("valid");
        assert_eq!(config.cp_interval, Duration::from_secs(10));
        assert_eq!(config.mode, Mode::Sync);
        assert_eq!(config.cp_sync, CpSync::Best);
        assert_eq!(config.peer, None);
        assert_eq!(config.dirty_limit_bytes, None);
        assert!(!config.foreground);
        assert!(config.fuse_options.is_empty());
    }

    #[test]
    fn mount_merges_repeated_o_options_and_flags() {
        let cli = parse(&[
            "mount",
            "img",
            "/mnt",
            "-f",
            "-o",
            "allow_other,defaults,_netdev",
            "-o",
            "peer=host:7070,secret=/etc/twinfs.key,cp_sync=refs",
            "--mode",
            "strict",
            "--cp-interval",
            "3",
            "--dirty-limit",
            "64M",
        ])
        .expect("parses");
        let Command::Mount(args) = cli.command else {
            panic!("not mount")
        };
        let config = args.config().expect("valid");
        assert!(config.foreground);
        assert_eq!(config.fuse_options, vec![FuseOption::AllowOther]);
        assert_eq!(
            config.peer,
            Some(PeerTarget {
                addr: HostPort {
                    host: "host".into(),
                    port: 7070
                },
                secret: PathBuf::from("/etc/twinfs.key"),
                key: None,
                trusted_keys: None,
                compress: Compress::Auto,
            })
        );
        assert_eq!(config.mode, Mode::Strict);
        assert_eq!(config.cp_sync, CpSync::Refs);
        assert_eq!(config.cp_interval, Duration::from_secs(3));
        assert_eq!(config.dirty_limit_bytes, Some(64 << 20));
        assert_eq!(config.memory_bytes, DEFAULT_MEMORY_BYTES);
    }

    fn config(args: &[&str]) -> Result<MountConfig, String> {
        let Command::Mount(m) = parse(args).expect("parses").command else {
            panic!("not mount")
        };
        m.config()
    }

    #[test]
    fn mount_takes_a_memory_budget_as_flag_or_option_and_refuses_a_tiny_one() {
        let flag = config(&["mount", "i", "m", "--memory", "512M"]).expect("valid");
        assert_eq!(flag.memory_bytes, 512 << 20);
        let opt = config(&["mount", "i", "m", "-o", "memory=1G"]).expect("valid");
        assert_eq!(opt.memory_bytes, 1 << 30);
        let tiny = config(&["mount", "i", "m", "--memory", "64M"]).expect_err("too small");
        assert!(tiny.contains("at least 128M"), "{tiny}");
        let twice = config(&["mount", "i", "m", "--memory", "1G", "-o", "memory=1G"]);
        assert!(twice.expect_err("twice").contains("given twice"));
    }

    #[test]
    fn mount_refuses_a_setting_given_twice_and_a_peer_without_secret() {
        let twice = config(&["mount", "i", "m", "--mode", "sync", "-o", "mode=async"]);
        assert!(twice.expect_err("twice").contains("given twice"));
        let no_secret = config(&["mount", "i", "m", "--peer", "h:1"]);
        assert!(no_secret.expect_err("no secret").contains("--secret"));
        let no_peer = config(&["mount", "i", "m", "--secret", "k"]);
        assert!(no_peer.expect_err("no peer").contains("--peer"));
    }

    #[test]
    fn usage_errors_are_clap_errors_with_exit_code_2() {
        for args in [
            &["mkfs", "img", "--size", "10Q"][..],
            &["mkfs", "img"],
            &["mount", "img", "/mnt", "-o", "allow_ohter"],
            &["mount", "img", "/mnt", "--mode", "eventually"],
            &["mount", "img", "/mnt", "--cp-interval", "0"],
            &["mount", "img", "/mnt", "--peer", "nohost"],
            &["peer", "--dir", "d", "--secret", "s"],
            &["status"],
            &["status", "/mnt", "--dir", "d"],
            &["snapshot", "create", "/mnt", "../x"],
            &["snapshot", "delete", "/mnt"],
            &["frobnicate"],
        ] {
            let err = parse(args).expect_err(&args.join(" "));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn status_takes_a_mountpoint_or_a_dir() {
        let target = |args: &[&str]| {
            let Command::Status(s) = parse(args).expect("parses").command else {
                panic!("not status")
            };
            (s.target(), s.json)
        };
        assert_eq!(
            target(&["status", "/mnt"]),
            (StatusTarget::Mount("/mnt".into()), false)
        );
        assert_eq!(
            target(&["status", "--dir", "/srv/r", "--json"]),
            (StatusTarget::Dir("/srv/r".into()), true)
        );
    }

    #[test]
    fn verbosity_sets_the_log_filter() {
        let level = |args: &[&str]| parse(args).expect("parses").log_filter();
        assert_eq!(level(&["fsck", "i"]), "warn");
        assert_eq!(level(&["-v", "fsck", "i"]), "info");
        assert_eq!(level(&["fsck", "i", "-vv"]), "debug");
        assert_eq!(level(&["--verbose", "-vv", "fsck", "i"]), "trace");
    }
}
