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

pub(crate) mod signals;

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
}

impl PolicyConfig {
    pub(crate) fn validate(
        raw: &RawPolicy,
        raw_signals: &signals::RawSignals,
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
        }
    }

    /// The lowest detection score the decoder must keep for the signals.
    pub fn lowest_score(&self, confidence: f32) -> f32 {
        self.signals.lowest_score(confidence)
    }
}

/// One camera's per-frame policy: its signals (with their state) and weights.
pub struct Policy {
    signals: signals::Signals,
    weights: [f32; signals::COUNT],
    reason_level: f32,
}

impl Policy {
    pub fn new(config: &PolicyConfig) -> Self {
        Policy {
            signals: signals::Signals::new(&config.signals),
            weights: config.signals.weights(),
            reason_level: config.reason_level,
        }
    }

    /// Take new settings (a reload), keeping each signal's per-camera state.
    pub fn reconfigure(&mut self, config: &PolicyConfig) {
        self.signals.reconfigure(&config.signals);
        self.weights = config.signals.weights();
        self.reason_level = config.reason_level;
    }

    /// Score one frame: every signal's value, their weighted sum, the reasons.
    pub fn score(&mut self, frame: &FrameFacts<'_>) -> Scores {
        let mut scores = Scores::default();
        self.signals.values(frame, &mut scores.signals);
        for (i, (&v, &w)) in scores.signals.iter().zip(&self.weights).enumerate() {
            scores.value += w * v;
            if w > 0.0 && v >= self.reason_level && v > 0.0 {
                scores.reasons.insert(i);
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
}

/// Decides, on the inference thread after scoring, whether a frame goes to the keeper.
/// The policy's decision is [`MinValue`]; `framesift bench` drives the pipeline through
/// the same hook with its own.
pub(crate) trait KeepDecision: Send {
    fn keep(&mut self, frame: &Scored<'_>) -> bool;
    /// Take new settings (a reload).
    fn reconfigure(&mut self, _config: &PolicyConfig) {}
}

/// Keep frames whose value reaches `[policy] min_value`.
pub(crate) struct MinValue(pub f32);

impl KeepDecision for MinValue {
    fn keep(&mut self, frame: &Scored<'_>) -> bool {
        frame.scores.value >= self.0
    }

    fn reconfigure(&mut self, config: &PolicyConfig) {
        self.0 = config.min_value;
    }
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
        }
    }

    /// The scoring the signal registry replaced, frozen here as the reference: the
    /// registry must give the same value and reasons for every frame, so the same
    /// seed keeps the same frames.
    fn reference(
        detections: &[Detection],
        stats: &FrameStats,
        confidence: f32,
    ) -> (f32, Vec<&'static str>) {
        let (band, blur_threshold) = (0.15f32, 30.0f32);
        let (uncertainty_weight, margin_weight, blur_weight, reason_level) =
            (1.0f32, 0.5f32, 0.5f32, 0.5f32);
        let mut uncertainty = 0.0f32;
        let mut margin = 0.0f32;
        for d in detections {
            let distance = (d.score - confidence).abs();
            if band > 0.0 && distance <= band {
                uncertainty = uncertainty.max(1.0 - distance / band);
            }
            if d.score >= confidence && d.score > 0.0 {
                margin = margin.max((d.second_score / d.score).clamp(0.0, 1.0));
            }
        }
        let blur = (1.0 - stats.blur / blur_threshold).clamp(0.0, 1.0);
        let value = uncertainty_weight * uncertainty + margin_weight * margin + blur_weight * blur;
        let mut reasons = Vec::new();
        for (signal, weight, reason) in [
            (uncertainty, uncertainty_weight, "uncertain"),
            (margin, margin_weight, "ambiguous_class"),
            (blur, blur_weight, "blurred"),
        ] {
            if weight > 0.0 && signal >= reason_level && signal > 0.0 {
                reasons.push(reason);
            }
        }
        (value, reasons)
    }

    #[test]
    fn the_registry_scores_exactly_as_the_fixed_scorer_did() {
        let config = Config::default().policy;
        let mut policy = Policy::new(&config);
        let mut rng = crate::capture::synthetic::Rng::new(17);
        let unit =
            |rng: &mut crate::capture::synthetic::Rng| rng.below(1 << 20) as f32 / (1 << 20) as f32;
        let mut fired = [0usize; 3];
        for _ in 0..20_000 {
            let n = rng.below(6) as usize;
            let dets: Vec<Detection> = (0..n)
                .map(|_| {
                    // Scores from 0.1 (the decoder's floor) to 1, second below the best.
                    let score = 0.1 + 0.9 * unit(&mut rng);
                    det(score, score * unit(&mut rng))
                })
                .collect();
            let stats = FrameStats {
                blur: 60.0 * unit(&mut rng),
                ..sharp()
            };
            let (value, reasons) = reference(&dets, &stats, 0.25);
            let scores = policy.score(&facts(&dets, &stats));
            assert_eq!(
                scores.value.to_bits(),
                value.to_bits(),
                "{dets:?} {stats:?}"
            );
            assert_eq!(scores.reasons.names().collect::<Vec<_>>(), reasons);
            for (i, name) in ["uncertain", "ambiguous_class", "blurred"]
                .iter()
                .enumerate()
            {
                fired[i] += usize::from(reasons.contains(name));
            }
            let keep = MinValue(config.min_value).keep(&Scored {
                n: 0,
                scores: &scores,
                inference: Duration::ZERO,
            });
            assert_eq!(keep, value >= 0.5);
        }
        assert!(
            fired.iter().all(|&n| n > 500),
            "every reason exercised: {fired:?}"
        );
    }

    #[test]
    fn a_confident_sharp_frame_scores_nothing() {
        let config = Config::default().policy;
        let s = Policy::new(&config).score(&facts(&[det(0.95, 0.01)], &sharp()));
        assert_eq!(s.signals[0], 0.0);
        assert!(s.signals[1] < 0.02);
        assert_eq!(s.signals[2], 0.0);
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
        assert_eq!(s.signals[2], 1.0, "the value is still recorded");
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
