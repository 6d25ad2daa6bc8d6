//! Keeping: the frames that cross from the inference stages to the keeper, the bounded
//! best-N buffer of each keep window, and the keeper stage that writes them to the spool
//! ([`keeper`]).
//!
//! Candidates are pooled: the inference stage takes an empty one from a free list with
//! `try_recv` (none free → the frame is dropped and counted), swaps its frame buffer
//! with the candidate's (O(1), no pixel copy), and `try_send`s it to the keeper. The
//! keeper returns every candidate to the free list once it has written or evicted it.
//! So the number of frame buffers is fixed by the config ([`KeepConfig::pool`]) and
//! nothing on the hand-off blocks or allocates.

pub(crate) mod context;
pub(crate) mod keeper;
pub(crate) mod select;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use serde::{Deserialize, Serialize};

use crate::{
    capture::FrameStats,
    config::Checker,
    frame::Frame,
    infer::Detection,
    ops::metrics::{Drop, Metrics, event},
    policy::Scores,
};

/// What the buffer does with a new candidate when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Evict the lowest-value candidate (possibly the new one).
    DropLowest,
    /// Refuse new candidates until the window ends.
    DropNewest,
}

/// The most candidates a keep buffer holds (`[keep] capacity`), which also bounds the
/// candidate pool a reload may grow to.
pub(crate) const MAX_CAPACITY: usize = 1024;

/// The longest keep window (`[keep] window_secs`): a day. Longer would hold candidates
/// (and the budget's decisions) back for no use, and must still fit a `Duration`.
const MAX_WINDOW_SECS: f64 = 86_400.0;

/// `[keep]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawKeep {
    capacity: i64,
    window_secs: f64,
    when_full: WhenFull,
    jpeg_quality: i64,
    target_rate: f64,
    control_share: f64,
    control_seed: i64,
    dedupe_distance: f64,
    dedupe_secs: f64,
    context_frames: i64,
}

impl Default for RawKeep {
    fn default() -> Self {
        Self {
            capacity: 16,
            window_secs: 30.0,
            when_full: WhenFull::DropLowest,
            jpeg_quality: 90,
            target_rate: 0.02,
            control_share: 0.1,
            control_seed: 0,
            dedupe_distance: 4.0,
            dedupe_secs: 60.0,
            context_frames: 0,
        }
    }
}

/// The most `[keep] context_frames` (each camera holds that many frames, and the pool
/// twice that many more per camera).
pub(crate) const MAX_CONTEXT: usize = 8;

/// `[keep]` keys that apply without a restart: all but `control_seed` and `context_frames`.
pub(crate) const LIVE_KEYS: &[&str] = &[
    "capacity",
    "window_secs",
    "when_full",
    "jpeg_quality",
    "target_rate",
    "control_share",
    "dedupe_distance",
    "dedupe_secs",
];

/// The validated `[keep]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepConfig {
    pub capacity: usize,
    pub window_secs: f64,
    pub when_full: WhenFull,
    pub jpeg_quality: u8,
    /// The share of captured frames kept; 0: every frame reaching `min_value` competes
    /// for the buffer.
    pub target_rate: f64,
    /// The share of the target kept uniformly at random, tagged `control`.
    pub control_share: f64,
    /// Seeds the control draws; 0: a seed of this run (the spool's device id and start
    /// counter), so carts and restarts draw apart.
    pub control_seed: u64,
    pub dedupe_distance: f32,
    pub dedupe_secs: f64,
    /// Frames kept before and after each frame a trigger fired on, as its group
    /// ([`context`]); 0: none.
    pub context_frames: usize,
}

impl KeepConfig {
    /// How many candidates the pool holds with a keeper queue of `queue`: the queue,
    /// the buffer, one in hand per camera, and each camera's context frames on their
    /// way (the `context_frames` before and after one trigger).
    pub(crate) fn pool(&self, queue: usize, cameras: usize) -> usize {
        queue + self.capacity + cameras * (1 + 2 * self.context_frames)
    }

    /// The most candidates a reload may grow the pool to.
    pub(crate) fn pool_room(queue: usize, cameras: usize) -> usize {
        queue + MAX_CAPACITY + cameras * (1 + 2 * MAX_CONTEXT)
    }

    pub(crate) fn select(&self) -> select::SelectConfig {
        select::SelectConfig {
            capacity: self.capacity,
            when_full: self.when_full,
            target_rate: self.target_rate,
            dedupe_distance: self.dedupe_distance,
            dedupe_secs: self.dedupe_secs,
        }
    }
}

impl KeepConfig {
    pub(crate) fn validate(k: &RawKeep, c: &mut Checker) -> Self {
        KeepConfig {
            capacity: c.int("capacity", k.capacity, 1, MAX_CAPACITY as i64) as usize,
            window_secs: c.float(
                "window_secs",
                k.window_secs,
                |v| v > 0.0 && v <= MAX_WINDOW_SECS,
                "greater than 0, at most 86400 (a day), e.g. 30.0",
            ),
            when_full: k.when_full,
            jpeg_quality: c.int("jpeg_quality", k.jpeg_quality, 1, 100) as u8,
            target_rate: c.float(
                "target_rate",
                k.target_rate,
                |v| (0.0..=1.0).contains(&v),
                "from 0 (no target: min_value decides) to 1, the share of frames to keep, e.g. 0.02",
            ),
            control_share: c.unit("control_share", k.control_share, "0.1"),
            control_seed: c.int("control_seed", k.control_seed, 0, i64::MAX) as u64,
            dedupe_distance: c.float(
                "dedupe_distance",
                k.dedupe_distance,
                |v| v >= 0.0,
                "0 (off) or more luma levels per thumbnail cell, e.g. 4.0",
            ) as f32,
            dedupe_secs: c.float(
                "dedupe_secs",
                k.dedupe_secs,
                |v| v >= 0.0,
                "0 (off) or more seconds, e.g. 60.0",
            ),
            context_frames: c.int("context_frames", k.context_frames, 0, MAX_CONTEXT as i64)
                as usize,
        }
    }
}

/// A frame worth considering for the spool, with everything its sidecar needs.
#[derive(Debug)]
pub struct Candidate {
    /// Index of the camera in the config's camera list.
    pub camera: usize,
    pub frame: Frame,
    pub detections: Vec<Detection>,
    pub stats: FrameStats,
    pub scores: Scores,
    pub kind: Kind,
}

/// Why a candidate was handed over, which decides how the keeper treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// Ranked against the others by value.
    #[default]
    Ranked,
    /// Part of the uniform control sample ([`crate::policy::Verdict::Control`]): kept
    /// first, within the budget.
    Control,
    /// A trigger fired on it and it has context frames: ranked, and its context is
    /// kept with it.
    Anchor,
    /// A context frame of the anchor of this frame sequence number (same camera):
    /// kept if and only if the anchor is.
    Context { anchor: u64 },
}

impl Candidate {
    /// An empty candidate with buffers sized for `width × height` frames and
    /// `max_detections` detections.
    pub fn with_capacity(width: u32, height: u32, max_detections: usize) -> Self {
        Candidate {
            camera: 0,
            frame: Frame::with_capacity(width, height),
            detections: Vec::with_capacity(max_detections),
            stats: FrameStats::default(),
            scores: Scores::default(),
            kind: Kind::Ranked,
        }
    }
}

/// Anything the keep buffer can rank.
pub trait Valued {
    fn value(&self) -> f32;
}

impl Valued for Candidate {
    fn value(&self) -> f32 {
        self.scores.value
    }
}

impl<T: Valued> Valued for Box<T> {
    fn value(&self) -> f32 {
        (**self).value()
    }
}

impl select::Selectable for Candidate {
    fn camera(&self) -> usize {
        self.camera
    }

    fn thumbnail(&self) -> &crate::capture::Thumbnail {
        &self.stats.thumbnail
    }

    fn at(&self) -> f64 {
        self.frame
            .captured_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    fn is_control(&self) -> bool {
        self.kind == Kind::Control
    }
}

impl<T: select::Selectable> select::Selectable for Box<T> {
    fn camera(&self) -> usize {
        (**self).camera()
    }

    fn thumbnail(&self) -> &crate::capture::Thumbnail {
        (**self).thumbnail()
    }

    fn at(&self) -> f64 {
        (**self).at()
    }

    fn is_control(&self) -> bool {
        (**self).is_control()
    }
}

/// What happened to an item offered to the buffer. Items that leave the buffer are
/// handed back so their buffers can be recycled.
#[derive(Debug, PartialEq)]
pub enum Offer<T> {
    Accepted,
    /// Accepted; the lowest-value item was evicted to make room.
    Evicted(T),
    /// Not accepted (full, and not better than the lowest under `drop_lowest`, or full
    /// under `drop_newest`).
    Rejected(T),
}

/// At most `capacity` items, the highest-value ones offered since the last drain.
pub struct KeepBuffer<T> {
    items: Vec<T>,
    capacity: usize,
    when_full: WhenFull,
}

impl<T: Valued> KeepBuffer<T> {
    pub fn new(capacity: usize, when_full: WhenFull) -> Self {
        assert!(capacity > 0, "keep capacity must be at least 1");
        KeepBuffer {
            items: Vec::with_capacity(capacity),
            capacity,
            when_full,
        }
    }

    /// New settings (a reload). A smaller capacity evicts the lowest-value items at
    /// once, handing them to `evicted`.
    pub fn reconfigure(
        &mut self,
        capacity: usize,
        when_full: WhenFull,
        mut evicted: impl FnMut(T),
    ) {
        let capacity = capacity.max(1);
        self.capacity = capacity;
        self.when_full = when_full;
        if self.items.len() > capacity {
            self.items
                .sort_unstable_by(|a, b| b.value().total_cmp(&a.value()));
            for item in self.items.drain(capacity..) {
                evicted(item);
            }
        }
        self.items
            .reserve(capacity.saturating_sub(self.items.len()));
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// Take out every item `pred` holds for, handing each to `out`.
    pub(crate) fn take_if(&mut self, mut pred: impl FnMut(&T) -> bool, mut out: impl FnMut(T)) {
        let mut i = 0;
        while i < self.items.len() {
            if pred(&self.items[i]) {
                out(self.items.swap_remove(i));
            } else {
                i += 1;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Offer an item. Never grows past capacity; never blocks.
    pub fn offer(&mut self, item: T) -> Offer<T> {
        if self.items.len() < self.capacity {
            self.items.push(item);
            return Offer::Accepted;
        }
        match self.when_full {
            WhenFull::DropNewest => Offer::Rejected(item),
            WhenFull::DropLowest => {
                let (lowest, lowest_value) = self
                    .items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| (i, it.value()))
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap_or((0, f32::MAX));
                if item.value() > lowest_value {
                    Offer::Evicted(std::mem::replace(&mut self.items[lowest], item))
                } else {
                    Offer::Rejected(item)
                }
            }
        }
    }

    #[cfg(test)]
    /// Take every item out, best first.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.items
            .sort_unstable_by(|a, b| b.value().total_cmp(&a.value()));
        self.items.drain(..)
    }

    /// Move every item into `out` (emptied first) ordered so that `out.pop()` yields the
    /// best first; reuses both buffers' capacity.
    pub fn drain_into(&mut self, out: &mut Vec<T>) {
        out.clear();
        self.items
            .sort_unstable_by(|a, b| a.value().total_cmp(&b.value()));
        out.append(&mut self.items);
    }

    #[cfg(test)]
    /// The lowest value held, if any.
    pub fn lowest_value(&self) -> Option<f32> {
        self.items
            .iter()
            .map(|i| i.value())
            .min_by(|a, b| a.total_cmp(b))
    }
}

/// The inference side of the keeper boundary: a free list of candidates and the keeper
/// queue. Nothing here blocks.
#[derive(Clone)]
pub struct Handoff {
    free_rx: Receiver<Box<Candidate>>,
    free_tx: Sender<Box<Candidate>>,
    keep_tx: Sender<Box<Candidate>>,
}

/// The keeper's ends of the hand-off: the queue it receives from and the free list it
/// returns candidates to.
pub struct KeeperEnds {
    pub keep_rx: Receiver<Box<Candidate>>,
    pub free_tx: Sender<Box<Candidate>>,
}

impl Handoff {
    /// A hand-off with `free` pooled candidates (buffers for `width × height` frames), a
    /// free list with room for up to `room` of them (a reload may grow the pool) and a
    /// keeper queue of `queue`. Returns the keeper's ends.
    pub fn new(
        free: usize,
        room: usize,
        queue: usize,
        width: u32,
        height: u32,
        max_detections: usize,
    ) -> (Handoff, KeeperEnds) {
        let (free_tx, free_rx) = bounded(room.max(free));
        for _ in 0..free {
            let _ = free_tx.try_send(Box::new(Candidate::with_capacity(
                width,
                height,
                max_detections,
            )));
        }
        let (keep_tx, keep_rx) = bounded(queue);
        (
            Handoff {
                free_rx,
                free_tx: free_tx.clone(),
                keep_tx,
            },
            KeeperEnds { keep_rx, free_tx },
        )
    }

    /// Give a candidate to the keeper without blocking: take a free candidate, swap the
    /// frame buffers (no pixel copy), `try_send`. Every failure is counted.
    #[allow(clippy::too_many_arguments)] // the parts of one frame, each copied once
    pub fn offer(
        &self,
        metrics: &Metrics,
        camera: usize,
        frame: &mut Frame,
        detections: &[Detection],
        stats: FrameStats,
        scores: Scores,
        kind: Kind,
    ) {
        let Ok(mut candidate) = self.free_rx.try_recv() else {
            event::dropped(metrics, Drop::KeeperBusy);
            return;
        };
        std::mem::swap(&mut candidate.frame, frame);
        candidate.camera = camera;
        candidate.detections.clear();
        candidate.detections.extend_from_slice(detections);
        candidate.stats = stats;
        candidate.scores = scores;
        candidate.kind = kind;
        match self.keep_tx.try_send(candidate) {
            Ok(()) => {}
            Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) => {
                event::dropped(metrics, Drop::KeeperQueueFull);
                let _ = self.free_tx.try_send(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::Detection;

    #[derive(Debug, PartialEq)]
    struct V(f32);
    impl Valued for V {
        fn value(&self) -> f32 {
            self.0
        }
    }

    #[test]
    fn bounded_and_evicts_the_lowest() {
        let mut buf = KeepBuffer::new(3, WhenFull::DropLowest);
        for v in [0.5, 0.9, 0.2] {
            assert_eq!(buf.offer(V(v)), Offer::Accepted);
        }
        assert_eq!(buf.offer(V(0.6)), Offer::Evicted(V(0.2)));
        assert_eq!(buf.offer(V(0.1)), Offer::Rejected(V(0.1)));
        assert_eq!(
            buf.offer(V(0.5)),
            Offer::Rejected(V(0.5)),
            "ties keep the incumbent"
        );
        assert_eq!(buf.len(), 3);
        assert_eq!(buf.lowest_value(), Some(0.5));
        let drained: Vec<f32> = buf.drain().map(|v| v.0).collect();
        assert_eq!(drained, [0.9, 0.6, 0.5]);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_smaller_capacity_evicts_the_lowest_and_a_larger_one_takes_more() {
        let mut buf = KeepBuffer::new(4, WhenFull::DropLowest);
        for v in [0.4, 0.9, 0.1, 0.7] {
            buf.offer(V(v));
        }
        let mut evicted = Vec::new();
        buf.reconfigure(2, WhenFull::DropLowest, |v| evicted.push(v.0));
        evicted.sort_by(f32::total_cmp);
        assert_eq!(evicted, [0.1, 0.4]);
        buf.reconfigure(3, WhenFull::DropNewest, |_| panic!("nothing to evict"));
        assert_eq!(buf.offer(V(0.2)), Offer::Accepted);
        assert_eq!(
            buf.offer(V(0.95)),
            Offer::Rejected(V(0.95)),
            "drop_newest now"
        );
        let mut out = vec![V(5.0)];
        buf.drain_into(&mut out);
        let popped: Vec<f32> = std::iter::from_fn(|| out.pop()).map(|v| v.0).collect();
        assert_eq!(popped, [0.9, 0.7, 0.2], "best first");
        assert!(buf.is_empty());
    }

    #[test]
    fn drop_newest_refuses_when_full() {
        let mut buf = KeepBuffer::new(2, WhenFull::DropNewest);
        buf.offer(V(0.1));
        buf.offer(V(0.2));
        assert_eq!(buf.offer(V(0.9)), Offer::Rejected(V(0.9)));
        assert_eq!(buf.len(), 2);
    }

    #[test]
    fn many_offers_stay_bounded_and_keep_the_best() {
        // A deterministic shuffle of 0..1000: the buffer ends with the top 10.
        let mut buf = KeepBuffer::new(10, WhenFull::DropLowest);
        let mut returned = 0;
        for i in 0..1000u32 {
            let v = ((i * 7919) % 1000) as f32;
            match buf.offer(V(v)) {
                Offer::Accepted => {}
                Offer::Evicted(_) | Offer::Rejected(_) => returned += 1,
            }
            assert!(buf.len() <= 10);
        }
        assert_eq!(returned, 990, "every item not kept is handed back");
        let kept: Vec<f32> = buf.drain().map(|v| v.0).collect();
        assert_eq!(
            kept,
            (990..1000).rev().map(|v| v as f32).collect::<Vec<_>>()
        );
    }

    fn handoff(free: usize, queue: usize) -> (Handoff, Receiver<Box<Candidate>>) {
        let (h, ends) = Handoff::new(free, free, queue, 4, 4, 4);
        (h, ends.keep_rx)
    }

    fn frame(seq: u64) -> Frame {
        let mut f = Frame::with_capacity(4, 4);
        f.set_size(4, 4);
        f.seq = seq;
        f
    }

    /// Offer 100 candidates to a keeper that never receives.
    fn stalled(free: usize, queue: usize) -> (Metrics, usize) {
        let (h, keep_rx) = handoff(free, queue);
        let metrics = Metrics::default();
        for seq in 0..100 {
            let mut f = frame(seq);
            h.offer(
                &metrics,
                0,
                &mut f,
                &[],
                FrameStats::default(),
                Scores::default(),
                Kind::Ranked,
            );
        }
        (metrics, keep_rx.len())
    }

    #[test]
    fn handoff_never_blocks_when_the_keeper_is_stalled() {
        // More free candidates than queue room: the queue fills, the rest bounce off it
        // and go back to the free list.
        let (metrics, queued) = stalled(3, 2);
        assert_eq!(queued, 2);
        assert_eq!(metrics.drops(Drop::KeeperQueueFull), 98);
        assert_eq!(metrics.drops(Drop::KeeperBusy), 0);
        // Every candidate is in the queue (the keeper holds them): the free list is dry.
        let (metrics, queued) = stalled(2, 2);
        assert_eq!(queued, 2);
        assert_eq!(metrics.drops(Drop::KeeperBusy), 98);
        assert_eq!(metrics.total_drops(), 98);
    }

    #[test]
    fn handoff_swaps_frames_instead_of_copying() {
        let (h, keep_rx) = handoff(1, 1);
        let metrics = Metrics::default();
        let mut f = frame(7);
        f.rgb[0] = 99;
        let pixels = f.rgb.as_ptr();
        let det = Detection {
            class_id: 1,
            score: 0.3,
            second_score: 0.1,
            x1: 0.0,
            y1: 0.0,
            x2: 1.0,
            y2: 1.0,
        };
        h.offer(
            &metrics,
            2,
            &mut f,
            &[det],
            FrameStats::default(),
            Scores {
                value: 0.9,
                ..Scores::default()
            },
            Kind::Ranked,
        );
        let c = keep_rx.try_recv().expect("candidate queued");
        assert_eq!((c.camera, c.frame.seq, c.frame.rgb[0]), (2, 7, 99));
        assert_eq!(
            c.frame.rgb.as_ptr(),
            pixels,
            "the same buffer moved, no copy"
        );
        assert_eq!(c.detections, [det]);
        assert_ne!(
            f.rgb.as_ptr(),
            pixels,
            "the slot got the candidate's spare buffer"
        );
    }
}
