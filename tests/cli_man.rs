//! man/twinfs.8 documents the whole command line: every subcommand has a
//! `.SS twinfs NAME` section naming each of its flags, arguments and values,
//! the global flags are under OPTIONS, and every status field is under
//! STATUS FIELDS. A failure lists everything the page misses.

use clap::CommandFactory;
use twinfs::cli::Cli;
use twinfs::cmd::status::{ByteCounters, EncodingCounter, MountStatus, PeerStatus, ResyncStatus};
use twinfs_replicate::history::{DivergenceReport, GenerationJson};
use twinfs_replicate::peer::PeerStatus as DirStatus;

/// A divergence report with every field set, lineages included.
fn report() -> DivergenceReport {
    let gen = GenerationJson {
        generation: "00".into(),
        first_cp: 0,
    };
    DivergenceReport {
        kind: "split-brain".into(),
        common_cp: Some(1),
        source_cp: 2,
        source_lineage: vec![gen.clone()],
        peer_cp: Some(2),
        peer_lineage: vec![gen],
        reason: String::new(),
        detected_at: 0,
    }
}

const MAN_PAGE: &str = include_str!("../man/twinfs.8");

/// The page's text with roff escapes removed: `\-` → `-`, fonts dropped.
fn plain(roff: &str) -> String {
    let mut text = roff.replace("\\-", "-").replace("\\&", "");
    for font in ["\\fB", "\\fI", "\\fR", "\\fP"] {
        text = text.replace(font, "");
    }
    text
}

/// The body of the section whose header line is exactly `header`
/// (e.g. `.SS twinfs mkfs`), up to the next `.SH` or `.SS`.
fn section(page: &str, header: &str) -> Option<String> {
    let mut lines = page.lines().skip_while(|l| l.trim_end() != header);
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| !l.starts_with(".SH") && !l.starts_with(".SS"))
        .collect();
    Some(body.join("\n"))
}

/// Whether `token` occurs in `text` as a whole word: not inside a longer
/// flag or identifier (so `-f` does not match inside `--foreground`).
fn has_token(text: &str, token: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(token).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + token.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// What `cmd`'s arguments need in `body`; missing ones are pushed as
/// "<where>: <what>".
fn check_args(cmd: &clap::Command, body: &str, place: &str, missing: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.is_global_set() || id == "help" || id == "version" {
            continue;
        }
        let mut tokens: Vec<String> = Vec::new();
        if let Some(long) = arg.get_long() {
            tokens.push(format!("--{long}"));
        }
        if let Some(short) = arg.get_short() {
            tokens.push(format!("-{short}"));
        }
        if arg.is_positional() {
            let names = arg.get_value_names().unwrap_or_default();
            tokens.extend(names.iter().map(|n| n.to_string()));
            if names.is_empty() {
                tokens.push(id.to_uppercase());
            }
        }
        // Boolean flags report true/false as possible values; only
        // value-taking arguments (like --mode) have values to document.
        let values = if arg.get_action().takes_values() {
            arg.get_possible_values()
        } else {
            Vec::new()
        };
        for value in values {
            if !value.is_hide_set() {
                tokens.push(value.get_name().to_string());
            }
        }
        for token in tokens {
            if !has_token(body, &token) {
                missing.push(format!("{place}: {token} (argument '{id}')"));
            }
        }
    }
}

#[test]
fn every_subcommand_and_flag_is_in_the_man_page() {
    let page = plain(MAN_PAGE);
    let cli = Cli::command();
    let mut missing = Vec::new();

    let options = section(&page, ".SH OPTIONS").unwrap_or_default();
    for arg in cli.get_arguments() {
        if let Some(long) = arg.get_long() {
            if !has_token(&options, &format!("--{long}")) {
                missing.push(format!("OPTIONS: --{long}"));
            }
        }
        if let Some(short) = arg.get_short() {
            if !has_token(&options, &format!("-{short}")) {
                missing.push(format!("OPTIONS: -{short}"));
            }
        }
    }
    for builtin in ["-h", "--help", "-V", "--version"] {
        if !has_token(&options, builtin) {
            missing.push(format!("OPTIONS: {builtin}"));
        }
    }

    let synopsis = section(&page, ".SH SYNOPSIS").unwrap_or_default();
    let mut subcommands = 0;
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        if name == "help" {
            continue;
        }
        subcommands += 1;
        let header = format!(".SS twinfs {name}");
        let Some(body) = section(&page, &header) else {
            missing.push(format!("section '{header}' for subcommand {name}"));
            continue;
        };
        if !synopsis.contains(&format!("twinfs [-v...] {name}")) {
            missing.push(format!("SYNOPSIS: twinfs {name}"));
        }
        check_args(sub, &body, &format!("twinfs {name}"), &mut missing);
        for nested in sub.get_subcommands().filter(|n| n.get_name() != "help") {
            let full = format!("{name} {}", nested.get_name());
            if !body.contains(&full) || !has_token(&body, nested.get_name()) {
                missing.push(format!("twinfs {name}: subcommand '{full}'"));
            }
            check_args(nested, &body, &format!("twinfs {full}"), &mut missing);
        }
    }
    // DESIGN.md's ten, keygen of the secure channel, failback, resolve and
    // switchover of failover, relay, the fault-injection test tool, and
    // completions (issue 19).
    assert_eq!(
        subcommands, 16,
        "DESIGN.md names ten subcommands, and keygen, failback, resolve, switchover, relay, completions"
    );
    assert!(
        missing.is_empty(),
        "man/twinfs.8 does not document:\n  {}",
        missing.join("\n  ")
    );
}

/// Every key of a JSON value, nested keys included.
fn keys(value: &serde_json::Value, out: &mut Vec<String>) {
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            out.push(k.clone());
            keys(v, out);
        }
    }
}

#[test]
fn every_status_field_is_in_the_man_page() {
    let page = plain(MAN_PAGE);
    let fields_section = section(&page, ".SH STATUS FIELDS").expect("a STATUS FIELDS section");
    let mount = MountStatus {
        peer: Some(PeerStatus {
            resync: Some(ResyncStatus::default()),
            alarm: Some(String::new()),
            last_error: Some(String::new()),
            rtt_ms: Some(0.0),
            divergence: Some(report()),
            ..PeerStatus::default()
        }),
        bytes: ByteCounters {
            full: EncodingCounter::default(),
            ..ByteCounters::default()
        },
        lineage: vec![GenerationJson {
            generation: "00".into(),
            first_cp: 0,
        }],
        ..MountStatus::default()
    };
    let mut fields = Vec::new();
    keys(
        &serde_json::to_value(&mount).expect("serializes"),
        &mut fields,
    );
    keys(
        &serde_json::to_value(DirStatus {
            divergence: Some(report()),
            lineage: vec![GenerationJson {
                generation: "00".into(),
                first_cp: 0,
            }],
            ..DirStatus::default()
        })
        .expect("serializes"),
        &mut fields,
    );
    for contract in [
        "cp",
        "root_hash",
        "mode",
        "peer",
        "connected",
        "addr",
        "acked_cp",
        "acked_root_hash",
        "state",
        "bytes",
        "written",
        "log_sent",
        "cp_sent",
        "wire_total",
        "full",
        "refs",
        "recipes",
        "deltas",
        "misses",
        "applied_cp",
        "log_bytes_held",
    ] {
        assert!(
            fields.iter().any(|f| f == contract),
            "status structs lack '{contract}'"
        );
    }
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| !has_token(&fields_section, f))
        .collect();
    assert!(
        missing.is_empty(),
        "STATUS FIELDS of man/twinfs.8 lacks {missing:?}"
    );
}

#[test]
fn the_man_page_gives_the_fstab_line_and_the_helper_symlink() {
    let page = plain(MAN_PAGE);
    assert!(page.contains("/path/to/image /mnt/point fuse.twinfs defaults,_netdev 0 0"));
    assert!(page.contains("/sbin/mount.fuse.twinfs"));
    for section_name in [".SH EXIT STATUS", ".SH ENVIRONMENT", ".SH FILES"] {
        assert!(section(&page, section_name).is_some(), "{section_name}");
    }
    let env = section(&page, ".SH ENVIRONMENT").unwrap_or_default();
    assert!(has_token(&env, "RUST_LOG"));
}

#[test]
fn the_checker_itself_sees_missing_flags() {
    let page = ".SH X\n.SS twinfs a\n\\fB\\-\\-foreground\\fR IMAGE\n.SS twinfs b\n-f\n";
    let page = plain(page);
    let a = section(&page, ".SS twinfs a").expect("section a");
    assert!(has_token(&a, "--foreground"));
    assert!(has_token(&a, "IMAGE"));
    assert!(
        !has_token(&a, "-f"),
        "-f must not match inside --foreground"
    );
    assert!(!has_token(&a, "--fore"));
    assert!(section(&page, ".SS twinfs c").is_none());
}
