//! Writer pacing: spreads the wait for a slow log (disk or peer) over every
//! write instead of stalling writers for a long time whenever the backlog
//! is full.
//!
//! Without pacing, writers run at memory speed until the backlog of sealed
//! log bytes (not yet durable, or not yet sent to the peer) reaches its
//! limit, then all of them stop until the disk or the peer drains a large
//! chunk: a few fast writes and one write that waits half a second. The
//! pacer measures how fast the backlog drains and, once the backlog is past
//! a quarter of its limit, sleeps each writer for as long as its bytes take
//! to drain, a little less while the backlog is low and more as it fills
//! (the same control as the kernel's dirty-page throttling). The backlog
//! then stays near half its limit, which leaves the other half to absorb a
//! pause of the disk or the peer (a CP's sync) without stopping writers.

use std::time::{Duration, Instant};

/// How long a drain-rate sample is measured over.
const SAMPLE_WINDOW: Duration = Duration::from_millis(100);
/// Longest single sleep: the backlog is re-checked after it.
const MAX_SLEEP: Duration = Duration::from_millis(40);

/// The backlog's level as the writers see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Bytes waiting (for the disk, or to be sent to the peer).
    pub bytes: u64,
    /// Most bytes that may wait.
    pub limit: u64,
    /// Bytes that have left the backlog since the volume opened (monotonic).
    pub drained_total: u64,
}

/// Estimates the drain rate and turns the backlog level into pauses.
#[derive(Debug, Default)]
pub struct Pacer {
    /// Bytes per second, smoothed; `None` until first measured.
    rate: Option<f64>,
    /// Start of the current sample: when, and `drained_total` then.
    sample: Option<(Instant, u64)>,
}

impl Pacer {
    pub fn new() -> Pacer {
        Pacer::default()
    }

    /// The drain rate in bytes per second, once measured.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// How long a writer that just added `bytes` sleeps (often zero). The
    /// hard limit (wait until the backlog is below its limit) is the
    /// caller's: a sleep is at most [`MAX_SLEEP`].
    pub fn pause(&mut self, bytes: u64, level: Backlog, now: Instant) -> Duration {
        self.observe(level, now);
        // Below a quarter of the limit the backlog is no concern.
        let fill = level.bytes as f64 / level.limit.max(1) as f64;
        if fill <= 0.25 {
            return Duration::ZERO;
        }
        let Some(rate) = self.rate else {
            // Not measured yet: only the hard limit applies.
            return Duration::ZERO;
        };
        // Allowed input rate relative to the drain rate: 1.5x at a quarter
        // full, 1x at half, 0.5x at three quarters, nothing when full.
        let allowed = rate * 2.0 * (1.0 - fill.min(1.0));
        if allowed < 1.0 {
            return MAX_SLEEP;
        }
        Duration::from_secs_f64(bytes as f64 / allowed).min(MAX_SLEEP)
    }

    /// Takes a drain-rate sample while the backlog is busy (an idle backlog
    /// drains slowly only because nothing arrives).
    fn observe(&mut self, level: Backlog, now: Instant) {
        if level.bytes * 8 <= level.limit {
            self.sample = None;
            return;
        }
        let Some((start, drained)) = self.sample else {
            self.sample = Some((now, level.drained_total));
            return;
        };
        let dt = now.saturating_duration_since(start);
        if dt < SAMPLE_WINDOW {
            return;
        }
        let sample = level.drained_total.saturating_sub(drained) as f64 / dt.as_secs_f64();
        self.rate = Some(match self.rate {
            Some(r) => 0.7 * r + 0.3 * sample,
            None => sample,
        });
        self.sample = Some((now, level.drained_total));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn level(bytes: u64, drained_total: u64) -> Backlog {
        Backlog {
            bytes,
            limit: 32 * MIB,
            drained_total,
        }
    }

    #[test]
    fn no_pause_until_the_drain_rate_is_known_or_while_the_backlog_is_low() {
        let mut p = Pacer::new();
        let t = Instant::now();
        assert_eq!(p.pause(MIB, level(30 * MIB, 0), t), Duration::ZERO);
        p.pause(
            MIB,
            level(30 * MIB, 10 * MIB),
            t + Duration::from_millis(100),
        );
        assert!(p.rate().is_some());
        assert_eq!(p.pause(MIB, level(MIB, 10 * MIB), t), Duration::ZERO);
        assert_eq!(p.pause(MIB, level(8 * MIB, 10 * MIB), t), Duration::ZERO);
        assert_eq!(p.pause(MIB, level(40 * MIB, 10 * MIB), t), MAX_SLEEP);
    }

    #[test]
    fn measures_the_drain_rate_only_while_busy() {
        let mut p = Pacer::new();
        let t = Instant::now();
        // Idle backlog: 100 MiB drained in a second says nothing.
        p.pause(MIB, level(0, 0), t);
        p.pause(MIB, level(0, 100 * MIB), t + Duration::from_secs(1));
        assert_eq!(p.rate(), None);
        // Busy: 10 MiB in 100 ms is 100 MiB/s.
        p.pause(MIB, level(16 * MIB, 0), t);
        p.pause(
            MIB,
            level(16 * MIB, 10 * MIB),
            t + Duration::from_millis(100),
        );
        let r = p.rate().expect("measured");
        assert!((r - 100.0 * MIB as f64).abs() < MIB as f64, "{r}");
    }

    #[test]
    fn sleeps_longer_as_the_backlog_fills() {
        let mut p = Pacer::new();
        let t = Instant::now();
        p.pause(MIB, level(16 * MIB, 0), t);
        // 100 MiB/s drain.
        p.pause(
            MIB,
            level(16 * MIB, 10 * MIB),
            t + Duration::from_millis(100),
        );
        let mut at = |fill: u64| p.pause(MIB / 4, level(fill * MIB, 10 * MIB), t);
        let (low, half, high) = (at(10), at(16), at(24));
        assert!(low < half && half < high, "{low:?} {half:?} {high:?}");
        // At half full, 256 KiB at 100 MiB/s: 2.5 ms.
        assert!((half.as_secs_f64() - 0.0025).abs() < 0.0002, "{half:?}");
        // Never longer than the cap, however slow the drain.
        assert!(at(31) <= MAX_SLEEP);
    }
}
