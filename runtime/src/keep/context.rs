//! Context frames: the frames just before and after a trigger, kept with it as one group,
//! so a labeller sees the moment unfold (a hand reaching in, a product turning).
//!
//! With `[keep] context_frames = k`, each camera's inference stage remembers its last k
//! frames that were not handed over, in a ring of k frame buffers that it swaps with the
//! slot's (no pixel copy: the slot takes the ring's oldest buffer back to the camera).
//! When a frame a trigger fired on is handed over, the remembered frames among the k
//! before it go with it as its context, and so do the k frames after it (a trigger
//! among those starts a group of its own). The keeper keeps context frames exactly when
//! it keeps their anchor, and writes them with the anchor's entry id as `context_of`
//! ([`Groups`]).
//!
//! Memory bound: k frame buffers per camera here, and 2k more candidates per camera in
//! the pool ([`super::KeepConfig::pool`]) for a group on its way: 3k frames per camera,
//! 16.6 MB for k = 2 at 1280×720 RGB. Context frames are not part of the keep budget;
//! the triggers' rate limits bound them.

use std::collections::VecDeque;

use super::{Candidate, Handoff, Kind};
use crate::{
    capture::FrameStats, frame::Frame, infer::Detection, ops::metrics::Metrics, policy::Scores,
    policy::Verdict,
};

/// One camera's recent frames, and the group being handed over. Lives on the inference
/// thread; allocates only in [`History::new`].
pub(crate) struct History {
    held: Vec<Held>,
    /// The ring position the next remembered frame goes to (its oldest).
    next: usize,
    /// Frames still to hand over after the last anchor, and that anchor's sequence number.
    after: usize,
    anchor: u64,
}

struct Held {
    frame: Frame,
    detections: Vec<Detection>,
    stats: FrameStats,
    scores: Scores,
    /// Holds a frame not handed over yet.
    full: bool,
}

/// One scored frame, as the inference stage hands it over.
pub(crate) struct Scored<'a> {
    pub camera: usize,
    pub frame: &'a mut Frame,
    pub detections: &'a [Detection],
    pub stats: FrameStats,
    pub scores: Scores,
}

impl History {
    /// A history of `frames` frames of up to `width × height` (0: no context frames).
    pub(crate) fn new(frames: usize, width: u32, height: u32, max_detections: usize) -> Self {
        History {
            held: (0..frames)
                .map(|_| Held {
                    frame: Frame::with_capacity(width, height),
                    detections: Vec::with_capacity(max_detections),
                    stats: FrameStats::default(),
                    scores: Scores::default(),
                    full: false,
                })
                .collect(),
            next: 0,
            after: 0,
            anchor: 0,
        }
    }

    /// Hand `frame` over as `verdict` says, with the context of a trigger it fired or
    /// follows; remember it if it is not handed over. Returns how many frames were
    /// handed over.
    pub(crate) fn hand_over(
        &mut self,
        handoff: &Handoff,
        metrics: &Metrics,
        verdict: Verdict,
        f: Scored<'_>,
    ) -> u64 {
        let mut handed = 1;
        let k = self.held.len();
        let offer = |f: Scored<'_>, kind| {
            handoff.offer(
                metrics,
                f.camera,
                f.frame,
                f.detections,
                f.stats,
                f.scores,
                kind,
            );
        };
        match verdict {
            Verdict::Control => {
                // The control sample stays uniform; a group it interrupts is one short.
                self.after = self.after.saturating_sub(1);
                offer(f, Kind::Control);
            }
            Verdict::Keep if k > 0 && f.scores.triggers != 0 => {
                // The anchor first: the keeper routes context frames by what became of it.
                let (seq, camera) = (f.frame.seq, f.camera);
                offer(f, Kind::Anchor);
                for i in 0..k {
                    let h = &mut self.held[(self.next + i) % k];
                    if h.full && h.frame.seq < seq && seq - h.frame.seq <= k as u64 {
                        handoff.offer(
                            metrics,
                            camera,
                            &mut h.frame,
                            &h.detections,
                            h.stats,
                            h.scores,
                            Kind::Context { anchor: seq },
                        );
                        handed += 1;
                    }
                    h.full = false;
                }
                self.after = k;
                self.anchor = seq;
            }
            _ if self.after > 0 => {
                self.after -= 1;
                offer(
                    f,
                    Kind::Context {
                        anchor: self.anchor,
                    },
                );
            }
            Verdict::Keep => offer(f, Kind::Ranked),
            Verdict::Skip => {
                handed = 0;
                if let Some(h) = self.held.get_mut(self.next) {
                    std::mem::swap(&mut h.frame, f.frame);
                    h.detections.clear();
                    h.detections.extend_from_slice(f.detections);
                    h.stats = f.stats;
                    h.scores = f.scores;
                    h.full = true;
                    self.next = (self.next + 1) % k;
                }
            }
        }
        handed
    }
}

/// Anchors remembered on the keeper's side.
const ANCHORS: usize = 1024;

/// What becomes of an anchor's context frames.
#[derive(Debug, Clone, PartialEq)]
enum Anchor {
    /// The anchor is in the keep buffer: its context waits.
    Held,
    /// The anchor was written as this entry: its context is written too.
    Written(String),
    /// Not kept: the anchor was not, or a more valuable group of its camera took the
    /// room its context would wait in.
    Dropped,
}

/// The keeper's side of context groups: the anchors of recent groups and the context
/// frames waiting for theirs to be written or dropped. Each anchor arrives before its
/// context frames (one queue, in order; the inference side sends it first).
///
/// Context frames wait for one anchor per camera at a time — the most valuable one
/// held — so at most 2k of them wait per camera, the room the pool has for them: they
/// never take candidates from the frames that compete for the budget.
#[derive(Default)]
pub(crate) struct Groups {
    anchors: VecDeque<(usize, u64, Anchor)>,
    /// Per camera, the held anchor whose context waits, and its value.
    current: Vec<Option<(u64, f32)>>,
    #[allow(clippy::vec_box)]
    waiting: Vec<Box<Candidate>>,
}

/// What to do with a context frame that arrived.
pub(crate) enum Arrival {
    /// Its anchor is held: it waits (taken).
    Waits,
    /// Its anchor was written as this entry: write it now.
    Write(Box<Candidate>, String),
    /// Its context is not kept (the anchor was not, or never arrived).
    Drop(Box<Candidate>),
}

impl Groups {
    /// An anchor worth `value` entered the keep buffer. Returns the waiting context
    /// frames this lets go: a less valuable group's of the same camera, or a forgotten
    /// one's.
    #[allow(clippy::vec_box)]
    pub(crate) fn anchor(&mut self, camera: usize, seq: u64, value: f32) -> Vec<Box<Candidate>> {
        let mut released = Vec::new();
        if self.anchors.len() >= ANCHORS
            && let Some((c, s, _)) = self.anchors.pop_front()
        {
            released = self.take(c, s);
            if let Some(current) = self.current.get_mut(c)
                && current.is_some_and(|(held, _)| held == s)
            {
                *current = None;
            }
        }
        if self.current.len() <= camera {
            self.current.resize(camera + 1, None);
        }
        match self.current[camera] {
            Some((_, best)) if value <= best => {
                self.anchors.push_back((camera, seq, Anchor::Dropped));
                return released;
            }
            Some((older, _)) => {
                self.set(camera, older, Anchor::Dropped);
                released.extend(self.take(camera, older));
            }
            None => {}
        }
        self.current[camera] = Some((seq, value));
        self.anchors.push_back((camera, seq, Anchor::Held));
        released
    }

    /// Route a context frame by what became of its anchor.
    pub(crate) fn arrive(&mut self, candidate: Box<Candidate>) -> Arrival {
        let Kind::Context { anchor } = candidate.kind else {
            return Arrival::Drop(candidate);
        };
        match self.find(candidate.camera, anchor) {
            Some(Anchor::Held) => {
                self.waiting.push(candidate);
                Arrival::Waits
            }
            Some(Anchor::Written(id)) => {
                let id = id.clone();
                Arrival::Write(candidate, id)
            }
            Some(Anchor::Dropped) | None => Arrival::Drop(candidate),
        }
    }

    /// The anchor was written as entry `id` (`None`: the write failed, or it was not
    /// kept): returns its waiting context frames.
    #[allow(clippy::vec_box)]
    pub(crate) fn resolve(
        &mut self,
        camera: usize,
        seq: u64,
        id: Option<String>,
    ) -> Vec<Box<Candidate>> {
        self.set(camera, seq, id.map_or(Anchor::Dropped, Anchor::Written));
        if let Some(current) = self.current.get_mut(camera)
            && current.is_some_and(|(held, _)| held == seq)
        {
            *current = None;
        }
        self.take(camera, seq)
    }

    fn set(&mut self, camera: usize, seq: u64, to: Anchor) {
        if let Some((_, _, state)) = self
            .anchors
            .iter_mut()
            .rev()
            .find(|(c, s, _)| (*c, *s) == (camera, seq))
        {
            *state = to;
        }
    }

    /// Context frames waiting.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn find(&self, camera: usize, seq: u64) -> Option<&Anchor> {
        self.anchors
            .iter()
            .rev()
            .find(|(c, s, _)| (*c, *s) == (camera, seq))
            .map(|(_, _, a)| a)
    }

    #[allow(clippy::vec_box)]
    fn take(&mut self, camera: usize, seq: u64) -> Vec<Box<Candidate>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let w = &self.waiting[i];
            if w.camera == camera && w.kind == (Kind::Context { anchor: seq }) {
                out.push(self.waiting.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Written in capture order.
        out.sort_unstable_by_key(|c| c.frame.seq);
        out
    }
}

#[cfg(test)]
mod tests {
    use crossbeam_channel::Receiver;

    use super::*;

    fn handoff(free: usize) -> (Handoff, Receiver<Box<Candidate>>) {
        let (h, ends) = Handoff::new(free, free, free, 4, 4, 4);
        (h, ends.keep_rx)
    }

    fn frame(seq: u64) -> Frame {
        let mut f = Frame::with_capacity(4, 4);
        f.set_size(4, 4);
        f.seq = seq;
        f
    }

    /// Run `n` frames through a history of `k`; frames in `triggers` fire a trigger,
    /// frames in `keep` are handed over without one. Returns (seq, kind) handed over.
    fn stream(k: usize, n: u64, triggers: &[u64], keep: &[u64]) -> Vec<(u64, Kind)> {
        let (h, rx) = handoff(64);
        let metrics = Metrics::default();
        let mut history = History::new(k, 4, 4, 4);
        let mut out = Vec::new();
        for seq in 0..n {
            let mut f = frame(seq);
            let mut scores = Scores::default();
            let verdict = if triggers.contains(&seq) {
                scores.triggers = 1;
                Verdict::Keep
            } else if keep.contains(&seq) {
                Verdict::Keep
            } else {
                Verdict::Skip
            };
            history.hand_over(
                &h,
                &metrics,
                verdict,
                Scored {
                    camera: 0,
                    frame: &mut f,
                    detections: &[],
                    stats: FrameStats::default(),
                    scores,
                },
            );
            while let Ok(c) = rx.try_recv() {
                out.push((c.frame.seq, c.kind));
                let _ = h.free_tx.try_send(c);
            }
        }
        assert_eq!(history.held.len(), k, "the history holds k frames, always");
        out
    }

    #[test]
    fn a_trigger_brings_the_frames_before_and_after_it_and_no_more() {
        let got = stream(2, 20, &[10], &[]);
        let ctx = Kind::Context { anchor: 10 };
        assert_eq!(
            got,
            [(10, Kind::Anchor), (8, ctx), (9, ctx), (11, ctx), (12, ctx)]
        );
    }

    #[test]
    fn context_groups_are_bounded_and_overlapping_triggers_start_new_groups() {
        // Triggers on every third frame: each group holds at most 2k + 1 frames, a frame
        // belongs to one group, and frames handed over on their own are not context.
        let triggers: Vec<u64> = (5..60).step_by(3).collect();
        let got = stream(3, 100, &triggers, &[40]);
        let mut seen = std::collections::HashSet::new();
        for (seq, kind) in &got {
            assert!(seen.insert(*seq), "frame {seq} handed over twice");
            if let Kind::Context { anchor } = kind {
                assert!(triggers.contains(anchor));
                assert!(seq.abs_diff(*anchor) <= 3, "{seq} is within k of {anchor}");
            }
        }
        for t in &triggers {
            let size = got
                .iter()
                .filter(|(s, k)| s == t || *k == Kind::Context { anchor: *t })
                .count();
            assert!((1..=7).contains(&size), "group {t}: {size}");
        }
        assert!(got.contains(&(40, Kind::Context { anchor: 38 })));
        assert!(
            !got.iter().any(|(s, _)| *s > 62),
            "nothing after the last group"
        );
        // No context frames configured: triggers are ranked like any other frame.
        assert_eq!(stream(0, 20, &[10], &[]), [(10, Kind::Ranked)]);
    }

    #[test]
    fn the_history_swaps_buffers_instead_of_copying_them() {
        let mut history = History::new(1, 4, 4, 4);
        let (h, _rx) = handoff(4);
        let metrics = Metrics::default();
        let mut f = frame(0);
        let pixels = f.rgb.as_ptr();
        history.hand_over(
            &h,
            &metrics,
            Verdict::Skip,
            Scored {
                camera: 0,
                frame: &mut f,
                detections: &[],
                stats: FrameStats::default(),
                scores: Scores::default(),
            },
        );
        assert_eq!(history.held[0].frame.rgb.as_ptr(), pixels);
        assert_ne!(f.rgb.as_ptr(), pixels);
    }

    fn context(seq: u64, anchor: u64) -> Box<Candidate> {
        let mut c = Box::new(Candidate::with_capacity(4, 4, 1));
        c.frame.seq = seq;
        c.kind = Kind::Context { anchor };
        c
    }

    #[test]
    fn the_keeper_side_keeps_context_with_its_anchor_and_drops_it_without() {
        let mut g = Groups::default();
        assert!(g.anchor(0, 10, 1.0).is_empty());
        assert!(matches!(g.arrive(context(9, 10)), Arrival::Waits));
        assert!(matches!(g.arrive(context(8, 10)), Arrival::Waits));
        assert!(
            matches!(g.arrive(context(3, 99)), Arrival::Drop(_)),
            "unknown anchor"
        );
        let ready = g.resolve(0, 10, Some("cart-1-7".into()));
        assert_eq!(
            ready.iter().map(|c| c.frame.seq).collect::<Vec<_>>(),
            [8, 9]
        );
        match g.arrive(context(11, 10)) {
            Arrival::Write(c, id) => assert_eq!((c.frame.seq, id.as_str()), (11, "cart-1-7")),
            _ => panic!("an after-frame of a written anchor is written"),
        }
        g.anchor(0, 20, 1.0);
        g.arrive(context(19, 20));
        assert_eq!(g.resolve(0, 20, None).len(), 1, "handed back to be let go");
        assert!(matches!(g.arrive(context(21, 20)), Arrival::Drop(_)));
        assert_eq!(g.waiting(), 0);
        // One group of a camera waits at a time, the most valuable.
        g.anchor(0, 30, 2.0);
        g.arrive(context(29, 30));
        assert!(
            g.anchor(0, 40, 1.0).is_empty(),
            "worth less: no room for its context"
        );
        assert!(matches!(g.arrive(context(39, 40)), Arrival::Drop(_)));
        let released = g.anchor(0, 50, 3.0);
        assert_eq!(
            released.len(),
            1,
            "the less valuable group's context let go"
        );
        assert!(matches!(g.arrive(context(31, 30)), Arrival::Drop(_)));
        assert!(matches!(g.arrive(context(49, 50)), Arrival::Waits));
        let mut other = context(9, 10);
        other.camera = 1;
        assert!(g.anchor(1, 10, 0.5).is_empty(), "cameras wait apart");
        assert!(matches!(g.arrive(other), Arrival::Waits));
        assert_eq!(g.waiting(), 2);
        // Bounded: a long-forgotten anchor's waiting frames are handed back.
        let forgotten: usize = (1..=ANCHORS as u64)
            .map(|s| g.anchor(2, 100 + s, 1.0).len())
            .sum();
        assert_eq!(forgotten, 2);
        assert_eq!(g.anchors.len(), ANCHORS);
    }
}
