//! Counters and latency histograms, and typed events that log and count at once so logs
//! and metrics never disagree.
//!
//! Everything is atomics over fixed-size arrays: recording never allocates or locks, so
//! the inference thread can record freely.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// Pipeline stages whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Getting a frame from the source (camera read, file read + decode, render).
    Acquire,
    /// Letterbox into the tensor, plus luma statistics and blur.
    Preprocess,
    /// ONNX Runtime `run`.
    Inference,
    /// Output decoding and NMS.
    Decode,
    /// Scoring and the keep decision.
    Score,
    /// Handing a candidate to the keeper (`try_send`).
    Handoff,
    /// Encoding and writing one kept frame to the spool.
    Keeper,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Acquire,
        Stage::Preprocess,
        Stage::Inference,
        Stage::Decode,
        Stage::Score,
        Stage::Handoff,
        Stage::Keeper,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Acquire => "acquire",
            Stage::Preprocess => "preprocess",
            Stage::Inference => "inference",
            Stage::Decode => "decode+nms",
            Stage::Score => "score",
            Stage::Handoff => "hand-off",
            Stage::Keeper => "keeper write",
        }
    }
}

/// Why a frame or candidate was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// The capture→inference queue was full; the oldest waiting frame was dropped.
    QueueFull,
    /// An input frame could not be used (corrupt, truncated, empty, not an image).
    BadFrame,
    /// An input frame was larger than `[pipeline] max_frame_pixels`.
    FrameTooLarge,
    /// No free candidate buffer: the keeper is behind.
    KeeperBusy,
    /// The keeper's queue was full.
    KeeperQueueFull,
    /// The spool reached `max_bytes`.
    SpoolFull,
    /// Writing to the spool failed (an I/O error).
    SpoolError,
    /// The disk holding the spool ran out of space while writing.
    DiskFull,
    /// The drift monitor's queue was full: the frame's statistics were not counted.
    DriftBehind,
}

impl Drop {
    pub const ALL: [Drop; 9] = [
        Drop::QueueFull,
        Drop::BadFrame,
        Drop::FrameTooLarge,
        Drop::KeeperBusy,
        Drop::KeeperQueueFull,
        Drop::SpoolFull,
        Drop::SpoolError,
        Drop::DiskFull,
        Drop::DriftBehind,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Drop::QueueFull => "queue_full",
            Drop::BadFrame => "bad_frame",
            Drop::FrameTooLarge => "frame_too_large",
            Drop::KeeperBusy => "keeper_busy",
            Drop::KeeperQueueFull => "keeper_queue_full",
            Drop::SpoolFull => "spool_full",
            Drop::SpoolError => "spool_error",
            Drop::DiskFull => "disk_full",
            Drop::DriftBehind => "drift_behind",
        }
    }
}

/// Log-spaced latency histogram from 1 µs to ~100 s.
pub struct Histogram {
    /// `BUCKETS` counters, on the heap (64 KiB: too big to build on a thread's stack).
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..Self::BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// 1000 buckets per decade over 8 decades: 0.23% resolution, so a p99 ratio
    /// compared against 1.02 is not rounded to the 1.2% steps 200 a decade gave.
    const PER_DECADE: f64 = 1000.0;
    const BUCKETS: usize = 8000;
    const MIN_NS: f64 = 1_000.0;

    fn bucket(ns: u64) -> usize {
        let x = (ns as f64).max(Self::MIN_NS) / Self::MIN_NS;
        ((x.log10() * Self::PER_DECADE) as usize).min(Self::BUCKETS - 1)
    }

    /// Upper edge of a bucket, in nanoseconds.
    fn upper_ns(bucket: usize) -> f64 {
        Self::MIN_NS * 10f64.powf((bucket + 1) as f64 / Self::PER_DECADE)
    }

    pub fn record(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        self.buckets[Self::bucket(ns)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The sum of every observation, in nanoseconds.
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns.load(Relaxed)
    }

    /// Add every observation of `other` to this histogram.
    pub fn merge(&self, other: &Histogram) {
        for (a, b) in self.buckets.iter().zip(&other.buckets) {
            a.fetch_add(b.load(Relaxed), Relaxed);
        }
        self.count.fetch_add(other.count(), Relaxed);
        self.sum_ns.fetch_add(other.sum_ns.load(Relaxed), Relaxed);
    }

    /// The `q` quantile (0..1) in milliseconds: the upper edge of the bucket holding it.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return 0.0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return Self::upper_ns(i) / 1e6;
            }
        }
        Self::upper_ns(Self::BUCKETS - 1) / 1e6
    }
}

/// All counters of one run (all cameras together).
#[derive(Default)]
pub struct Metrics {
    pub frames: AtomicU64,
    pub kept: AtomicU64,
    pub candidates: AtomicU64,
    pub evicted: AtomicU64,
    /// Candidates let go as near-duplicates of a more valuable frame.
    pub duplicates: AtomicU64,
    /// Spool entries evicted to make room for frames worth more.
    pub spool_evicted: AtomicU64,
    /// Entries the uploader delivered, their bytes, and the attempts that failed.
    pub uploaded: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub upload_failures: AtomicU64,
    /// The last failed attempt's error ("" while none has failed), for
    /// `framesift spool status`. Written only on failures.
    last_upload_error: std::sync::Mutex<String>,
    /// Entries found corrupt when read for upload (and removed).
    pub spool_corrupt: AtomicU64,
    /// 0 idle, 1 uploading, 2 paused (window/docking), 3 failing, 4 yielding (uploading
    /// at `busy_max_bytes_per_sec` while the detector is busy).
    pub upload_state: AtomicU64,
    /// Times a camera's drift band changed.
    pub drift_changes: AtomicU64,
    /// Times a camera went away while streaming.
    pub disconnects: AtomicU64,
    /// Times a camera that had gone away delivered frames again.
    pub reconnects: AtomicU64,
    /// Nanoseconds from pipeline start to the end of the last inference thread.
    pub inference_done_ns: AtomicU64,
    /// Nanoseconds from pipeline start to the end of the first inference (0: none yet).
    /// With `inference_done_ns`, the steady-state span that excludes start-up.
    pub first_inference_ns: AtomicU64,
    drops: [AtomicU64; Drop::ALL.len()],
    stages: [Histogram; 7],
}

impl Metrics {
    pub fn stage(&self, stage: Stage) -> &Histogram {
        &self.stages[stage as usize]
    }

    pub fn record(&self, stage: Stage, d: Duration) {
        self.stages[stage as usize].record(d);
    }

    pub fn drops(&self, reason: Drop) -> u64 {
        self.drops[reason as usize].load(Relaxed)
    }

    pub fn total_drops(&self) -> u64 {
        Drop::ALL.iter().map(|d| self.drops(*d)).sum()
    }

    /// The uploader's state, as `framesift spool status` shows it.
    pub fn upload_state(&self) -> &'static str {
        match self.upload_state.load(Relaxed) {
            0 => "idle",
            1 => "uploading",
            2 => "paused",
            4 => "yielding",
            _ => "failing",
        }
    }

    /// Count a failed upload attempt and keep its error for `spool status`; the
    /// uploads are failing until the next delivery.
    pub fn upload_failure(&self, error: &dyn std::fmt::Display) {
        self.upload_failures.fetch_add(1, Relaxed);
        self.upload_state.store(3, Relaxed);
        *self
            .last_upload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = error.to_string();
    }

    /// The last failed attempt's error; empty while none has failed.
    pub fn last_upload_error(&self) -> String {
        self.last_upload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn count_drop(&self, reason: Drop) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }
}

/// Typed events: each writes one `tracing` event and bumps the matching counter.
pub mod event {
    use std::{path::Path, sync::atomic::Ordering::Relaxed, time::Duration};

    use super::{Drop, Metrics};

    /// A candidate left the keep buffer unwritten (a better one took its place, or the
    /// buffer was full under `drop_newest`): counted only, like a drop.
    pub fn evicted(m: &Metrics) {
        m.evicted.fetch_add(1, Relaxed);
    }

    /// A candidate was let go as a near-duplicate of a more valuable one.
    pub fn duplicate(m: &Metrics) {
        m.duplicates.fetch_add(1, Relaxed);
    }

    pub fn bad_frame(m: &Metrics, camera: &str, path: &Path, reason: &str) {
        m.count_drop(Drop::BadFrame);
        tracing::warn!(camera, path = %path.display(), reason, "skipped a bad frame");
    }

    pub fn frame_too_large(m: &Metrics, camera: &str, path: &Path, reason: &str) {
        m.count_drop(Drop::FrameTooLarge);
        tracing::warn!(camera, path = %path.display(), reason, "skipped a frame that is too large");
    }

    /// A drop on the hot path: counted only (a log line per dropped frame would flood
    /// the journal); the summary and progress line report the totals.
    pub fn dropped(m: &Metrics, reason: Drop) {
        m.count_drop(reason);
    }

    pub fn camera_lost(m: &Metrics, camera: &str, reason: &str, retry_after: Duration) {
        m.disconnects.fetch_add(1, Relaxed);
        tracing::warn!(
            camera,
            reason,
            retry_in_ms = retry_after.as_millis() as u64,
            "camera disconnected; reconnecting"
        );
    }

    /// One more failed attempt while the camera is gone: logged, not counted.
    pub fn camera_still_gone(camera: &str, reason: &str, retry_after: Duration) {
        tracing::info!(
            camera,
            reason,
            retry_in_ms = retry_after.as_millis() as u64,
            "camera still gone"
        );
    }

    pub fn camera_reconnected(m: &Metrics, camera: &str) {
        m.reconnects.fetch_add(1, Relaxed);
        tracing::info!(camera, "camera reconnected");
    }

    pub fn spool_write_failed(m: &Metrics, reason: &str) {
        m.count_drop(Drop::SpoolError);
        tracing::error!(
            reason,
            "could not write a kept frame to the spool; it was dropped"
        );
    }

    /// A kept frame the spool's budget had no room for: it was worth less than every
    /// entry that could have been evicted.
    pub fn spool_full(m: &Metrics, reason: &str) {
        // Log the first time only; every later one is counted.
        if m.drops(Drop::SpoolFull) == 0 {
            tracing::warn!(
                reason,
                "spool is full of frames worth more; lower-value frames are dropped until the uploader frees space"
            );
        }
        m.count_drop(Drop::SpoolFull);
    }

    /// ENOSPC while writing: the frame is dropped, the daemon goes on.
    pub fn disk_full(m: &Metrics, reason: &str) {
        if m.drops(Drop::DiskFull) == 0 {
            tracing::error!(reason, "the spool's disk is full; kept frames are dropped");
        }
        m.count_drop(Drop::DiskFull);
    }

    /// An entry delivered; `yielding`: at the busy rate, the detector running flat out.
    pub fn uploaded(m: &Metrics, id: &str, bytes: u64, yielding: bool) {
        m.uploaded.fetch_add(1, Relaxed);
        m.uploaded_bytes.fetch_add(bytes, Relaxed);
        m.upload_state.store(if yielding { 4 } else { 1 }, Relaxed);
        tracing::debug!(id, bytes, "uploaded");
    }

    /// A camera's drift band changed: logged once per change, counted.
    pub fn drift_changed(
        m: &Metrics,
        camera: &str,
        from: calibration::Band,
        to: calibration::Band,
        worst: &str,
        js: f64,
        psi: f64,
    ) {
        m.drift_changes.fetch_add(1, Relaxed);
        let (from, to) = (from.to_string(), to.to_string());
        if to == "stable" {
            tracing::info!(camera, %from, %to, worst, js, psi, "drift band changed");
        } else {
            tracing::warn!(camera, %from, %to, worst, js, psi, "drift band changed");
        }
    }

    pub fn upload_idle(m: &Metrics) {
        m.upload_state.store(0, Relaxed);
    }

    /// Uploading is not allowed now (`why`); logged when it starts being so.
    pub fn upload_paused(m: &Metrics, why: &str) {
        if m.upload_state.swap(2, Relaxed) != 2 {
            tracing::info!(why, "uploads paused");
        }
    }

    /// A failed attempt; the entry stays in the spool and is retried after `retry_in`.
    /// Logged at the first failure of a run of them, then counted.
    pub fn upload_failed(
        m: &Metrics,
        error: &dyn std::fmt::Display,
        retry_in: Duration,
        first: bool,
    ) {
        m.upload_failure(error);
        if first {
            tracing::warn!(
                error = %error,
                retry_in_ms = retry_in.as_millis() as u64,
                "upload failed; the frames stay in the spool and are retried"
            );
        } else {
            tracing::debug!(error = %error, "upload failed again");
        }
    }

    pub fn upload_recovered(m: &Metrics) {
        tracing::info!(
            failures = m.upload_failures.load(Relaxed),
            "uploads are going through again"
        );
    }

    pub fn upload_corrupt(m: &Metrics, id: &str, reason: &str) {
        m.spool_corrupt.fetch_add(1, Relaxed);
        tracing::error!(
            id,
            reason,
            "a spool entry no longer matches its sidecar; removed"
        );
    }

    /// `n` entries left the spool to make room for a frame worth more (the spool logs
    /// each, with its value).
    pub fn spool_evicted(m: &Metrics, n: u64) {
        m.spool_evicted.fetch_add(n, Relaxed);
    }

    /// An entry is committed to the spool (`id`, its sidecar `file`).
    pub fn kept(m: &Metrics, camera: &str, id: &str, file: &Path, value: f32) {
        m.kept.fetch_add(1, Relaxed);
        tracing::debug!(camera, id, file = %file.display(), value, "kept a frame");
    }
}

/// Resident set size of this process in KiB (Linux; 0 where unknown).
pub fn rss_kib() -> i64 {
    proc_status_kib("VmRSS:")
}

/// Peak resident set size of this process in KiB (Linux; 0 where unknown).
pub fn peak_rss_kib() -> i64 {
    proc_status_kib("VmHWM:")
}

fn proc_status_kib(key: &str) -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_within_bucket_resolution() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 100);
        let p50 = h.quantile_ms(0.5);
        let p99 = h.quantile_ms(0.99);
        assert!((50.0..=50.0 * 1.0024).contains(&p50), "p50 {p50}");
        assert!((99.0..=99.0 * 1.0024).contains(&p99), "p99 {p99}");
        let merged = Histogram::default();
        merged.merge(&h);
        merged.merge(&h);
        assert_eq!((merged.count(), merged.quantile_ms(0.5)), (200, p50));
    }

    #[test]
    fn empty_histogram_is_zero() {
        let h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), 0.0);
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let m = Metrics::default();
        event::dropped(&m, Drop::QueueFull);
        event::dropped(&m, Drop::QueueFull);
        event::bad_frame(&m, "cam0", Path::new("x.jpg"), "empty file");
        assert_eq!(m.drops(Drop::QueueFull), 2);
        assert_eq!(m.drops(Drop::BadFrame), 1);
        assert_eq!(m.total_drops(), 3);
    }

    use std::path::Path;
}
