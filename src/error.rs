//! The error of a `twinfs` command: one line for stderr and an exit code.

use std::fmt::Display;

/// Exit code of an operational failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage error (clap uses the same for its own).
pub const EXIT_USAGE: u8 = 2;

/// Why a command failed. `main` prints `twinfs: <message>` as one line on
/// stderr and exits with [`CmdError::exit_code`].
///
/// Messages follow `<what failed>: <why>; <what to do>`, so a user can act on
/// them without reading logs. Lower layers' errors (the volume's `FsError`,
/// the replication errors) become [`CmdError::Failed`] in the command that
/// saw them, which knows what it was doing and what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// An operation failed (exit 1).
    #[error("{what}: {why}{}", if todo.is_empty() { String::new() } else { format!("; {todo}") })]
    Failed {
        /// What failed, naming the object: "mount /mnt/a", "open image /srv/x.img".
        what: String,
        /// Why, usually the lower layer's error.
        why: String,
        /// What the user can do about it; empty when `why` already says it
        /// (a lower layer's message that ends in its own fix).
        todo: String,
    },
    /// A usage error found after parsing, e.g. a setting given twice (exit 2).
    #[error("{0}")]
    Usage(String),
}

impl CmdError {
    /// Shorthand for [`CmdError::Failed`].
    pub fn failed(what: impl Into<String>, why: impl Display, todo: impl Into<String>) -> CmdError {
        CmdError::Failed {
            what: what.into(),
            why: why.to_string(),
            todo: todo.into(),
        }
    }

    /// A failure whose `why` already says what to do: the lower layer
    /// knew the fix better than the command (no second hint is added).
    pub fn said(what: impl Into<String>, why: impl Display) -> CmdError {
        CmdError::failed(what, why, "")
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CmdError::Usage(_) => EXIT_USAGE,
            CmdError::Failed { .. } => EXIT_FAILURE,
        }
    }

    /// The message as exactly one line (newlines from lower layers folded).
    pub fn one_line(&self) -> String {
        let text = self.to_string();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reads_what_why_todo() {
        let e = CmdError::failed("fsck /x.img", "no such file", "check the path");
        assert_eq!(e.to_string(), "fsck /x.img: no such file; check the path");
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn a_message_that_carries_its_own_fix_gets_no_second_one() {
        let e = CmdError::said("mount /x.img", "not a volume; make one with mkfs");
        assert_eq!(
            e.to_string(),
            "mount /x.img: not a volume; make one with mkfs"
        );
    }

    #[test]
    fn usage_exits_2_and_messages_fold_to_one_line() {
        let e = CmdError::Usage("first\n  second third\n".into());
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.one_line(), "first second third");
    }
}
