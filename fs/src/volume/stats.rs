//! Counters and the fsync latency histogram the volume keeps for `status` and the metrics.

use super::*;

/// Counters since the volume was opened.
#[derive(Default)]
pub struct VolumeStats {
    pub bytes_written: AtomicU64,
    pub batches_sealed: AtomicU64,
    pub cps: AtomicU64,
    pub last_cp_ms: AtomicU64,
    pub longest_cp_ms: AtomicU64,
    pub writer_waits: AtomicU64,
    /// Time writers slept to pace to the log and the peer.
    pub paced_ns: AtomicU64,
    /// How long each [`Volume::fsync`] took (locally durable and, in sync
    /// mode, at the peer).
    pub fsync_latency: LatencyHistogram,
}

/// Upper bounds of the [`LatencyHistogram`] buckets, in microseconds
/// (a last, unbounded bucket follows).
pub const LATENCY_BUCKET_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets, updated without locks.
#[derive(Default, Debug)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKET_BOUNDS_US.len() + 1],
    sum_ns: AtomicU64,
}

/// A copy of a [`LatencyHistogram`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Observations per bucket, as in [`LATENCY_BUCKET_BOUNDS_US`] plus the last.
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = LATENCY_BUCKET_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKET_BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}
