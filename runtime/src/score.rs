//! Scoring: how much a labeller would learn from a frame. Pure: a function of the
//! detections, the frame statistics and the scoring config.
//!
//! Every signal is in 0..1 (1 = most worth labelling); a frame's value is their
//! weighted sum, and each signal at or above `reason_level` is listed as a reason.

use crate::{config::ScoringConfig, detector::Detection, preprocess::FrameStats};

/// Why a frame was considered valuable. A small bit set, so scoring allocates nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reasons(u8);

impl Reasons {
    /// A detection's confidence sits near the decision threshold.
    pub const UNCERTAIN: Self = Self(1);
    /// A detection's top two classes are close: the model is torn between them.
    pub const AMBIGUOUS_CLASS: Self = Self(2);
    /// The frame is blurred (low variance of the Laplacian).
    pub const BLURRED: Self = Self(4);

    pub const ALL: [(Self, &'static str); 3] = [
        (Self::UNCERTAIN, "uncertain"),
        (Self::AMBIGUOUS_CLASS, "ambiguous_class"),
        (Self::BLURRED, "blurred"),
    ];

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::ALL
            .into_iter()
            .filter(move |(r, _)| self.contains(*r))
            .map(|(_, n)| n)
    }
}

/// The scores of one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    /// Weighted sum of the signals.
    pub value: f32,
    /// Closeness of the most borderline detection to the confidence threshold.
    pub uncertainty: f32,
    /// Second-best ÷ best class score of the most ambiguous reported detection.
    pub margin: f32,
    /// How far the blur score is below the blur threshold (0 = sharp enough).
    pub blur: f32,
    /// Detections within the uncertainty band.
    pub uncertain_count: u32,
    pub reasons: Reasons,
}

/// Score one frame. `detections` may include candidates below the confidence threshold
/// (down to `confidence - uncertainty_band`); only those at or above it count as reported.
pub fn score(
    detections: &[Detection],
    stats: &FrameStats,
    confidence: f32,
    config: &ScoringConfig,
) -> Scores {
    let band = config.uncertainty_band;
    let mut uncertainty = 0.0f32;
    let mut uncertain_count = 0;
    let mut margin = 0.0f32;
    for d in detections {
        let distance = (d.score - confidence).abs();
        if band > 0.0 && distance <= band {
            uncertain_count += 1;
            uncertainty = uncertainty.max(1.0 - distance / band);
        }
        if d.score >= confidence && d.score > 0.0 {
            margin = margin.max((d.second_score / d.score).clamp(0.0, 1.0));
        }
    }
    let blur = (1.0 - stats.blur / config.blur_threshold).clamp(0.0, 1.0);

    let value = config.uncertainty_weight * uncertainty
        + config.margin_weight * margin
        + config.blur_weight * blur;
    let mut reasons = Reasons::default();
    let level = config.reason_level;
    for (signal, weight, reason) in [
        (uncertainty, config.uncertainty_weight, Reasons::UNCERTAIN),
        (margin, config.margin_weight, Reasons::AMBIGUOUS_CLASS),
        (blur, config.blur_weight, Reasons::BLURRED),
    ] {
        if weight > 0.0 && signal >= level && signal > 0.0 {
            reasons.insert(reason);
        }
    }
    Scores {
        value,
        uncertainty,
        margin,
        blur,
        uncertain_count,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn det(score: f32, second: f32) -> Detection {
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

    fn sharp() -> FrameStats {
        FrameStats {
            luma_mean: 100.0,
            luma_std: 40.0,
            blur: 500.0,
        }
    }

    #[test]
    fn confident_sharp_frame_scores_nothing() {
        let cfg = Config::default().scoring;
        let s = score(&[det(0.95, 0.01)], &sharp(), 0.25, &cfg);
        assert_eq!(s.uncertainty, 0.0);
        assert!(s.margin < 0.02);
        assert_eq!(s.blur, 0.0);
        assert!(s.reasons.is_empty());
        assert!(s.value < cfg.min_value);
    }

    #[test]
    fn detection_at_the_threshold_is_most_uncertain() {
        let cfg = Config::default().scoring; // band 0.15 around 0.25
        let at = score(&[det(0.25, 0.0)], &sharp(), 0.25, &cfg);
        assert_eq!(at.uncertainty, 1.0);
        assert_eq!(at.uncertain_count, 1);
        assert!(at.reasons.contains(Reasons::UNCERTAIN));
        let near = score(&[det(0.325, 0.0)], &sharp(), 0.25, &cfg);
        assert!((near.uncertainty - 0.5).abs() < 1e-5);
        let below = score(&[det(0.13, 0.0)], &sharp(), 0.25, &cfg);
        assert!((below.uncertainty - 0.2).abs() < 1e-5);
        assert!(!below.reasons.contains(Reasons::UNCERTAIN));
        let outside = score(&[det(0.41, 0.0)], &sharp(), 0.25, &cfg);
        assert_eq!((outside.uncertainty, outside.uncertain_count), (0.0, 0));
    }

    #[test]
    fn close_top_two_classes_are_ambiguous() {
        let cfg = Config::default().scoring;
        let s = score(&[det(0.8, 0.7)], &sharp(), 0.25, &cfg);
        assert!((s.margin - 0.875).abs() < 1e-5);
        assert!(s.reasons.contains(Reasons::AMBIGUOUS_CLASS));
        assert_eq!(s.reasons.names().collect::<Vec<_>>(), ["ambiguous_class"]);
    }

    #[test]
    fn blurred_frames_score_by_how_far_below_threshold() {
        let cfg = Config::default().scoring; // threshold 30
        let s = score(
            &[],
            &FrameStats {
                blur: 6.0,
                ..sharp()
            },
            0.25,
            &cfg,
        );
        assert!((s.blur - 0.8).abs() < 1e-5);
        assert!(s.reasons.contains(Reasons::BLURRED));
        assert!((s.value - cfg.blur_weight * 0.8).abs() < 1e-5);
    }

    #[test]
    fn zero_weight_signals_never_fire() {
        let mut cfg = Config::default().scoring;
        cfg.blur_weight = 0.0;
        let s = score(
            &[],
            &FrameStats {
                blur: 0.0,
                ..sharp()
            },
            0.25,
            &cfg,
        );
        assert_eq!(s.value, 0.0);
        assert!(s.reasons.is_empty());
    }
}
