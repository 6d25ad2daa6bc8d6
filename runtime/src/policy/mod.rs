//! The capture policy: which frames a labeller would learn the most from.
//!
//! It runs in two parts:
//! - **per frame, on each camera's inference thread** ([`Policy`]): the label-free
//!   [`signals`] score the frame from its detections and statistics, their weighted sum
//!   is the frame's value, each signal at or above `reason_level` is a reason, and a
//!   [`KeepDecision`] says whether the frame goes to the keeper. State is per camera, no
//!   I/O, no allocation per frame.
//! - **on the keeper's thread**: decisions that need history — the best frames of each
//!   keep window ([`crate::keep`]), and later near-duplicate suppression, rate limits
//!   and context frames.

pub(crate) mod decide;
pub(crate) mod signals;
pub(crate) mod triggers;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{capture::FrameStats, config::Checker, infer::Detection};

/// What the inference thread knows about one frame, for the signals.
#[derive(Debug, Clone, Copy)]
pub struct FrameFacts<'a> {
    /// After NMS, best first; may include detections below `confidence` that a signal
    /// asked the decoder to keep ([`PolicyConfig::lowest_score`]).
    pub detections: &'a [Detection],
    pub stats: &'a FrameStats,
    /// The confidence threshold: detections at or above it are reported.
    pub confidence: f32,
    /// The model's class names, by class id.
    pub class_names: &'a [String],
    /// The model's pooled features for the frame (an embedding); empty when the model
    /// has no such output.
    pub features: &'a [f32],
}

impl FrameFacts<'_> {
    /// The detections at or above the confidence threshold: what the model reports.
    pub fn reported(&self) -> impl Iterator<Item = &Detection> + '_ {
        self.detections
            .iter()
            .filter(move |d| d.score >= self.confidence)
    }
}

/// Which signals fired for a frame: a bit per registered signal, so scoring allocates
/// nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reasons(u32);

const _: () = assert!(
    signals::COUNT <= 32,
    "Reasons holds a bit per signal in a u32"
);

impl Reasons {
    fn insert(&mut self, signal: usize) {
        self.0 |= 1 << signal;
    }

    /// The reasons' names, in registration order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        signals::REASONS
            .into_iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, name)| name)
    }
}

/// A frame's scores.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    /// Weighted sum of the signals.
    pub value: f32,
    /// Each signal's value, in [`signals::NAMES`] order.
    pub signals: [f32; signals::COUNT],
    pub reasons: Reasons,
    /// A bit per `[[trigger]]` that fired, in config order.
    pub triggers: u16,
}

impl Scores {
    /// `(name, value)` of every signal.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, f32)> + '_ {
        signals::NAMES.into_iter().zip(self.signals)
    }
}

/// `[policy]`: how signal values become a keep decision.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPolicy {
    min_value: f64,
    reason_level: f64,
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            min_value: 0.5,
            reason_level: 0.5,
        }
    }
}

/// The validated `[policy]` and `[signals.*]` tables. Every key is live.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// A frame is handed to the keeper when its value is at least this.
    pub min_value: f32,
    /// A signal at or above this level is listed as a reason.
    pub reason_level: f32,
    pub(crate) signals: signals::Settings,
    pub(crate) triggers: Vec<triggers::Trigger>,
}

impl PolicyConfig {
    pub(crate) fn validate(
        raw: &RawPolicy,
        raw_signals: &signals::RawSignals,
        raw_triggers: &[triggers::RawTrigger],
        c: &mut Checker,
    ) -> Self {
        let (min_value, reason_level) = c.within("policy", |c| {
            (
                c.float(
                    "min_value",
                    raw.min_value,
                    |v| v >= 0.0,
                    "0 or more, e.g. 0.5",
                ) as f32,
                c.unit("reason_level", raw.reason_level, "0.5") as f32,
            )
        });
        PolicyConfig {
            min_value,
            reason_level,
            signals: c.within("signals", |c| signals::Settings::validate(raw_signals, c)),
            triggers: triggers::validate(raw_triggers, c),
        }
    }

    /// The lowest detection score the decoder must keep for the signals in use.
    pub fn lowest_score(&self, confidence: f32) -> f32 {
        self.signals.lowest_score(confidence, self.used())
    }

    /// Whether the signal `name` is in use (see [`PolicyConfig::used`]).
    pub(crate) fn uses(&self, name: &str) -> bool {
        signals::NAMES
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| self.used()[i])
    }

    /// The signals in use: those with a weight, and those a trigger reads (a trigger on
    /// `faint` fires on the faint candidates whatever faint's weight).
    fn used(&self) -> [bool; signals::COUNT] {
        let mut used = self.signals.weights().map(|w| w > 0.0);
        for trigger in &self.triggers {
            used[trigger.signal] = true;
        }
        used
    }
}

/// One camera's per-frame policy: its signals (with their state) and weights.
pub struct Policy {
    signals: signals::Signals,
    weights: [f32; signals::COUNT],
    reason_level: f32,
    triggers: Vec<triggers::Trigger>,
}

impl Policy {
    pub fn new(config: &PolicyConfig) -> Self {
        Policy {
            signals: signals::Signals::new(&config.signals),
            weights: config.signals.weights(),
            reason_level: config.reason_level,
            triggers: config.triggers.clone(),
        }
    }

    /// Take new settings (a reload), keeping each signal's per-camera state.
    pub fn reconfigure(&mut self, config: &PolicyConfig) {
        self.signals.reconfigure(&config.signals);
        self.weights = config.signals.weights();
        self.reason_level = config.reason_level;
        self.triggers.clone_from(&config.triggers);
    }

    /// Measure against a calibration reference's sample of views too (novelty).
    pub(crate) fn use_reference(&mut self, views: &std::sync::Arc<[crate::capture::Thumbnail]>) {
        self.signals.use_reference(views);
    }

    /// Score one frame: every signal's value, their weighted sum, the reasons, and the
    /// triggers that fired (each adding its weight).
    pub fn score(&mut self, frame: &FrameFacts<'_>) -> Scores {
        let mut scores = Scores::default();
        self.signals.values(frame, &mut scores.signals);
        self.combine(scores)
    }

    /// As [`Policy::score`], adding each signal's time to `spent`.
    pub(crate) fn score_timed(
        &mut self,
        frame: &FrameFacts<'_>,
        spent: &mut [std::time::Duration; signals::COUNT],
    ) -> Scores {
        let mut scores = Scores::default();
        self.signals.values_timed(frame, &mut scores.signals, spent);
        self.combine(scores)
    }

    /// The value, reasons and triggers of a frame's signal values.
    fn combine(&self, mut scores: Scores) -> Scores {
        for (i, (&v, &w)) in scores.signals.iter().zip(&self.weights).enumerate() {
            scores.value += w * v;
            if w > 0.0 && v >= self.reason_level && v > 0.0 {
                scores.reasons.insert(i);
            }
        }
        // A frame whose value reaches reason_level says why even when no single signal
        // does: the one that gave most of its value.
        if scores.reasons == Reasons::default() && scores.value >= self.reason_level {
            let top = (0..signals::COUNT)
                .map(|i| (i, self.weights[i] * scores.signals[i]))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((i, contribution)) = top
                && contribution > 0.0
            {
                scores.reasons.insert(i);
            }
        }
        for (i, t) in self.triggers.iter().enumerate() {
            if scores.signals[t.signal] >= t.threshold {
                scores.triggers |= 1 << i;
                scores.value += t.weight;
            }
        }
        scores
    }
}

/// One scored frame, as the keep decision sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scored<'a> {
    /// The frame's number on its inference thread, from 0.
    pub n: u64,
    pub scores: &'a Scores,
    /// How long its `session.run` took.
    pub inference: Duration,
    pub thumbnail: &'a crate::capture::Thumbnail,
}

/// What the keep decision makes of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Skip,
    /// To the keeper, to compete on its value.
    Keep,
    /// To the keeper as part of the uniform control sample.
    Control,
}

/// Decides, on the inference thread after scoring, whether a frame goes to the keeper.
/// The policy's decision is [`decide::TargetRate`]; `framesift bench` drives the
/// pipeline through the same hook with its own.
pub(crate) trait KeepDecision: Send {
    fn keep(&mut self, frame: &Scored<'_>) -> Verdict;
    /// Take new settings (a reload).
    fn reconfigure(&mut self, _config: &crate::config::Config) {}
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;

    pub(crate) fn det(score: f32, second: f32) -> Detection {
        Detection {
            class_id: 0,
            score,
            second_score: second,
            x1: 0.0,
            y1: 0.0,
            x2: 10.0,
            y2: 10.0,
        }
    }

    /// Where signal `name` is registered.
    pub(crate) fn at(name: &str) -> usize {
        signals::NAMES
            .iter()
            .position(|n| *n == name)
            .expect("registered")
    }

    pub(crate) fn sharp() -> FrameStats {
        FrameStats {
            luma_mean: 100.0,
            luma_std: 40.0,
            blur: 500.0,
            ..FrameStats::default()
        }
    }

    pub(crate) fn facts<'a>(detections: &'a [Detection], stats: &'a FrameStats) -> FrameFacts<'a> {
        FrameFacts {
            detections,
            stats,
            confidence: 0.25,
            class_names: &[],
            features: &[],
        }
    }

    #[test]
    fn the_value_is_the_weighted_sum_and_reasons_are_the_signals_at_reason_level() {
        let config = Config::default().policy;
        let weights = config.signals.weights();
        let mut policy = Policy::new(&config);
        let mut rng = crate::capture::synthetic::Rng::new(17);
        let mut fired = [0usize; signals::COUNT];
        for _ in 0..20_000 {
            let n = rng.below(10) as usize;
            let dets: Vec<Detection> = (0..n)
                .map(|_| {
                    let score = 0.02 + 0.98 * rng.unit();
                    det(score, score * rng.unit())
                })
                .collect();
            let stats = FrameStats {
                blur: 60.0 * rng.unit(),
                luma_mean: 10.0 + 240.0 * rng.unit(),
                ..sharp()
            };
            let scores = policy.score(&facts(&dets, &stats));
            let sum: f32 = scores
                .signals
                .iter()
                .zip(&weights)
                .map(|(v, w)| v * w)
                .sum();
            assert!((scores.value - sum).abs() < 1e-5, "{scores:?}");
            let mut want: Vec<&str> = (0..signals::COUNT)
                .filter(|&i| weights[i] > 0.0 && scores.signals[i] >= 0.5)
                .map(|i| signals::REASONS[i])
                .collect();
            if want.is_empty() && scores.value >= 0.5 {
                let top = (0..signals::COUNT)
                    .max_by(|&a, &b| {
                        (weights[a] * scores.signals[a])
                            .total_cmp(&(weights[b] * scores.signals[b]))
                    })
                    .expect("signals");
                want.push(signals::REASONS[top]);
            }
            assert_eq!(scores.reasons.names().collect::<Vec<_>>(), want);
            for (i, &v) in scores.signals.iter().enumerate() {
                assert!((0.0..=1.0).contains(&v), "{} = {v}", signals::NAMES[i]);
                fired[i] += usize::from(v >= 0.5);
            }
        }
        for name in [
            "uncertainty",
            "faint",
            "margin",
            "blur",
            "exposure",
            "count",
        ] {
            let i = at(name);
            assert!(fired[i] > 500, "{name} exercised: {fired:?}");
        }
    }

    #[test]
    fn a_confident_sharp_frame_scores_nothing() {
        let config = Config::default().policy;
        let s = Policy::new(&config).score(&facts(&[det(0.95, 0.01)], &sharp()));
        let signal = |name: &str| s.signals[at(name)];
        assert_eq!(signal("uncertainty"), 0.0);
        assert_eq!(signal("faint"), 0.0);
        assert!(signal("margin") < 0.02);
        assert_eq!(signal("blur"), 0.0);
        assert!(s.reasons.names().next().is_none());
        assert!(s.value < config.min_value);
    }

    #[test]
    fn zero_weight_signals_never_fire() {
        let text = "[signals.blur]\nweight = 0.0\n";
        let config = Config::parse(text, "c.toml").expect("valid").policy;
        let stats = FrameStats {
            blur: 0.0,
            ..sharp()
        };
        let s = Policy::new(&config).score(&facts(&[], &stats));
        assert_eq!(s.signals[at("blur")], 1.0, "the value is still recorded");
        assert_eq!(s.value, 0.0);
        assert!(s.reasons.names().next().is_none());
    }

    #[test]
    fn a_reload_changes_weights_and_levels() {
        let mut policy = Policy::new(&Config::default().policy);
        let stats = FrameStats {
            blur: 6.0,
            ..sharp()
        };
        assert!((policy.score(&facts(&[], &stats)).value - 0.4).abs() < 1e-5);
        let text = "[policy]\nreason_level = 0.9\n[signals.blur]\nweight = 2.0\nthreshold = 60.0\n";
        policy.reconfigure(&Config::parse(text, "c.toml").expect("valid").policy);
        let s = policy.score(&facts(&[], &stats));
        assert!((s.value - 1.8).abs() < 1e-5, "{s:?}");
        assert!(s.reasons.names().eq(["blurred"]));
    }

    #[test]
    fn signal_names_are_unique() {
        let mut names = signals::NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), signals::COUNT);
    }
}
