//! `twinfs` as the mount helper of mount(8).
//!
//! `mount -t fuse.twinfs IMAGE MOUNTPOINT -o OPTIONS` (and the fstab line
//! `IMAGE MOUNTPOINT fuse.twinfs defaults,_netdev 0 0`) makes mount(8) run
//! `/sbin/mount.fuse.twinfs IMAGE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`.
//! With that path a symlink to the `twinfs` binary, [`translate`] turns the
//! helper's argument convention into `twinfs mount IMAGE MOUNTPOINT -o OPTIONS`,
//! which returns once the mount is ready, as mount(8) expects of a helper.
//! `mount.twinfs` (for `-t twinfs`) is accepted the same way.

use std::ffi::{OsStr, OsString};
use std::path::Path;

/// File names under which the binary acts as a mount helper.
pub const HELPER_NAMES: [&str; 2] = ["mount.fuse.twinfs", "mount.twinfs"];

/// What a helper invocation turns into.
#[derive(Debug, PartialEq, Eq)]
pub enum Helper {
    /// Not invoked as a helper: parse the arguments as they are.
    NotHelper,
    /// Run these arguments (argv\[0\] first) as the `twinfs` command line.
    Run(Vec<OsString>),
    /// `-f` ("fake"): mount(8) asks for everything but the mount itself.
    Fake,
    /// `--help`/`-h` or `--version`/`-V`: print this on stdout and exit 0.
    Print(String),
}

/// The helper's usage line.
pub const HELPER_USAGE: &str =
    "usage: mount.fuse.twinfs IMAGE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]";

/// Translates argv when argv\[0\]'s file name is one of [`HELPER_NAMES`].
/// An error is a usage error (exit 2), with a message for stderr.
pub fn translate(argv: &[OsString]) -> Result<Helper, String> {
    let Some(argv0) = argv.first() else {
        return Ok(Helper::NotHelper);
    };
    let name = Path::new(argv0).file_name().and_then(OsStr::to_str);
    if !name.is_some_and(|n| HELPER_NAMES.contains(&n)) {
        return Ok(Helper::NotHelper);
    }
    let usage = HELPER_USAGE;
    if argv[1..].iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Helper::Print(format!(
            "{usage}\n\nThe mount(8) helper of twinfs: runs `twinfs mount IMAGE MOUNTPOINT -o OPTIONS`.\n\
             -s sloppy, -n no mtab (both accepted and ignored), -f fake (do nothing),\n\
             -v verbose, -o OPTIONS as in MOUNT OPTIONS of twinfs(8), -t fuse.twinfs.\n"
        )));
    }
    if argv[1..].iter().any(|a| a == "--version" || a == "-V") {
        return Ok(Helper::Print(format!(
            "mount.fuse.twinfs (twinfs {})\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let mut positionals: Vec<OsString> = Vec::new();
    let mut options: Vec<OsString> = Vec::new();
    let mut verbose = false;
    let mut fake = false;
    let mut rest = argv[1..].iter();
    while let Some(arg) = rest.next() {
        let Some(s) = arg.to_str().filter(|s| s.starts_with('-') && s.len() > 1) else {
            positionals.push(arg.clone());
            continue;
        };
        // Options with a value: -o OPTS / -oOPTS, -t TYPE, -N NAMESPACE.
        if let Some(letter @ ('o' | 't' | 'N')) = s.chars().nth(1) {
            let value = match &s[2..] {
                "" => rest
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("-{letter} needs a value; {usage}"))?,
                attached => OsString::from(attached),
            };
            match letter {
                'o' => options.push(value),
                'N' => return Err("-N (mount namespaces) is not supported by twinfs".into()),
                _ => {} // -t fuse.twinfs: we are that type
            }
            continue;
        }
        for flag in s[1..].chars() {
            match flag {
                's' | 'n' => {} // sloppy; do not write mtab: nothing to do
                'f' => fake = true,
                'v' => verbose = true,
                _ => return Err(format!("unknown option -{flag}; {usage}")),
            }
        }
    }
    if positionals.len() != 2 {
        return Err(format!("expected IMAGE and MOUNTPOINT; {usage}"));
    }
    if fake {
        return Ok(Helper::Fake);
    }
    let mut out: Vec<OsString> = vec!["twinfs".into(), "mount".into()];
    if verbose {
        out.push("-v".into());
    }
    out.append(&mut positionals);
    for opts in options {
        out.push("-o".into());
        out.push(opts);
    }
    Ok(Helper::Run(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn plain_invocation_is_not_a_helper() {
        let plain = argv(&["/usr/bin/twinfs", "mount", "img", "/mnt"]);
        assert_eq!(translate(&plain), Ok(Helper::NotHelper));
        assert_eq!(translate(&[]), Ok(Helper::NotHelper));
    }

    #[test]
    fn mount_convention_becomes_the_mount_subcommand() {
        let helper = argv(&[
            "/sbin/mount.fuse.twinfs",
            "/srv/vol.img",
            "/mnt/vol",
            "-o",
            "rw,_netdev,peer=b:7070",
            "-t",
            "fuse.twinfs",
        ]);
        let expected = argv(&[
            "twinfs",
            "mount",
            "/srv/vol.img",
            "/mnt/vol",
            "-o",
            "rw,_netdev,peer=b:7070",
        ]);
        assert_eq!(translate(&helper), Ok(Helper::Run(expected)));
    }

    #[test]
    fn helper_flags_are_understood() {
        let helper = argv(&["mount.twinfs", "-nsv", "img", "-oro", "mnt"]);
        let expected = argv(&["twinfs", "mount", "-v", "img", "mnt", "-o", "ro"]);
        assert_eq!(translate(&helper), Ok(Helper::Run(expected)));
        let fake = argv(&["mount.twinfs", "img", "mnt", "-f"]);
        assert_eq!(translate(&fake), Ok(Helper::Fake));
    }

    #[test]
    fn helper_rejects_wrong_arity_and_unknown_flags() {
        assert!(translate(&argv(&["mount.twinfs", "img"])).is_err());
        assert!(translate(&argv(&["mount.twinfs", "img", "mnt", "extra"])).is_err());
        assert!(translate(&argv(&["mount.twinfs", "img", "mnt", "-x"])).is_err());
        assert!(translate(&argv(&["mount.twinfs", "img", "mnt", "-o"])).is_err());
        assert!(translate(&argv(&["mount.twinfs", "img", "mnt", "-N", "ns"])).is_err());
    }

    #[test]
    fn helper_help_and_version_print_and_succeed() {
        let Ok(Helper::Print(help)) = translate(&argv(&["mount.fuse.twinfs", "--help"])) else {
            panic!("--help is not a usage error")
        };
        assert!(help.starts_with(HELPER_USAGE), "{help}");
        let Ok(Helper::Print(v)) = translate(&argv(&["mount.twinfs", "-V"])) else {
            panic!("-V is not a usage error")
        };
        assert!(v.starts_with("mount.fuse.twinfs (twinfs "), "{v}");
    }
}
