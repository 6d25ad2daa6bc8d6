//! Margin: a reported detection whose top two class scores are close, where the model
//! is torn between two products.
//!
//! Value: the largest second-best ÷ best class score over the detections at or above
//! the confidence threshold (0 when there is none; end-to-end models report no second
//! score, so 0 there).

use serde::{Deserialize, Serialize};

use super::{FrameFacts, Signal};
use crate::config::Checker;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Raw {
    weight: f64,
}

impl Default for Raw {
    fn default() -> Self {
        Raw { weight: 0.25 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    weight: f32,
}

pub(crate) struct Margin;

impl Signal for Margin {
    const REASON: &'static str = "ambiguous_class";
    type Raw = Raw;
    type Settings = Settings;

    fn validate(raw: &Raw, c: &mut Checker) -> Settings {
        Settings {
            weight: super::weight(c, raw.weight, "0.25"),
        }
    }

    fn weight(settings: &Settings) -> f32 {
        settings.weight
    }

    fn new(_settings: &Settings) -> Self {
        Margin
    }

    fn reconfigure(&mut self, _settings: &Settings) {}

    fn value(&mut self, frame: &FrameFacts<'_>) -> f32 {
        let mut value = 0.0f32;
        for d in frame.detections {
            if d.score >= frame.confidence && d.score > 0.0 {
                value = value.max((d.second_score / d.score).clamp(0.0, 1.0));
            }
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::{det, facts, sharp};

    #[test]
    fn close_top_two_classes_are_ambiguous() {
        let value = |dets: &[_]| Margin.value(&facts(dets, &sharp()));
        assert!((value(&[det(0.8, 0.7)]) - 0.875).abs() < 1e-5);
        assert!(value(&[det(0.95, 0.01)]) < 0.02);
        // Below the threshold: not reported, not counted.
        assert_eq!(value(&[det(0.2, 0.19)]), 0.0);
        assert!((value(&[det(0.9, 0.1), det(0.5, 0.45)]) - 0.9).abs() < 1e-5);
    }
}
