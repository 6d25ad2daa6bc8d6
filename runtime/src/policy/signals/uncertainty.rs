//! Uncertainty: a detection whose confidence lies near the decision threshold, where
//! the model is least sure whether the object is there.
//!
//! Each detection within `band` of the threshold (above or below; the decoder keeps
//! detections down to `confidence − band` for this signal) counts 1 − distance ÷ band.
//! Value: their sum ÷ `saturate`, at most 1 — so a frame with several objects the model
//! is unsure of (each a likely miss or false positive) outranks a frame with one.

use serde::{Deserialize, Serialize};

use super::{FrameFacts, Signal};
use crate::config::Checker;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Raw {
    band: f64,
    saturate: f64,
    weight: f64,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            band: 0.15,
            saturate: 2.0,
            weight: 3.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    band: f32,
    saturate: f32,
    weight: f32,
}

pub(crate) struct Uncertainty {
    band: f32,
    saturate: f32,
}

impl Signal for Uncertainty {
    const REASON: &'static str = "uncertain";
    type Raw = Raw;
    type Settings = Settings;

    fn validate(raw: &Raw, c: &mut Checker) -> Settings {
        Settings {
            band: c.float(
                "band",
                raw.band,
                |v| (0.0..1.0).contains(&v),
                "from 0 up to (not including) 1, e.g. 0.15",
            ) as f32,
            saturate: c.float(
                "saturate",
                raw.saturate,
                |v| v >= 1.0,
                "1 or more (1: the single most uncertain detection decides), e.g. 2.0",
            ) as f32,
            weight: super::weight(c, raw.weight, "1.0"),
        }
    }

    fn weight(settings: &Settings) -> f32 {
        settings.weight
    }

    fn lowest_score(settings: &Settings, confidence: f32, _used: bool) -> f32 {
        (confidence - settings.band).max(0.0)
    }

    fn new(settings: &Settings) -> Self {
        Uncertainty {
            band: settings.band,
            saturate: settings.saturate,
        }
    }

    fn reconfigure(&mut self, settings: &Settings) {
        self.band = settings.band;
        self.saturate = settings.saturate;
    }

    fn value(&mut self, frame: &FrameFacts<'_>) -> f32 {
        let band = self.band;
        if band <= 0.0 {
            return 0.0;
        }
        let mut sum = 0.0f32;
        for d in frame.detections {
            let distance = (d.score - frame.confidence).abs();
            if distance <= band {
                sum += 1.0 - distance / band;
            }
        }
        (sum / self.saturate).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::{det, facts, sharp};

    #[test]
    fn a_detection_at_the_threshold_is_most_uncertain() {
        let mut s = Uncertainty {
            band: 0.15,
            saturate: 1.0,
        };
        let value = |s: &mut Uncertainty, score| s.value(&facts(&[det(score, 0.0)], &sharp()));
        assert_eq!(value(&mut s, 0.25), 1.0);
        assert!((value(&mut s, 0.325) - 0.5).abs() < 1e-5);
        assert!((value(&mut s, 0.13) - 0.2).abs() < 1e-5);
        assert_eq!(value(&mut s, 0.41), 0.0);
        assert_eq!(value(&mut s, 0.95), 0.0);
        // No band, no uncertainty.
        let mut off = Uncertainty {
            band: 0.0,
            saturate: 1.0,
        };
        assert_eq!(value(&mut off, 0.25), 0.0);
    }

    #[test]
    fn several_uncertain_detections_add_up_to_saturate() {
        let mut s = Uncertainty {
            band: 0.15,
            saturate: 2.0,
        };
        let one = [det(0.9, 0.0), det(0.25, 0.0)];
        assert!((s.value(&facts(&one, &sharp())) - 0.5).abs() < 1e-5);
        // 1 + 0.5 + (1 − 0.05/0.15): capped at 1.
        let three = [det(0.25, 0.0), det(0.325, 0.0), det(0.2, 0.0)];
        assert_eq!(s.value(&facts(&three, &sharp())), 1.0);
        let two_halves = [det(0.325, 0.0), det(0.175, 0.0)];
        assert!((s.value(&facts(&two_halves, &sharp())) - 0.5).abs() < 1e-5);
    }

    #[test]
    fn the_decoder_keeps_detections_down_to_the_band() {
        let settings = Settings {
            band: 0.15,
            saturate: 2.0,
            weight: 1.0,
        };
        assert!((Uncertainty::lowest_score(&settings, 0.25, true) - 0.10).abs() < 1e-6);
        assert_eq!(Uncertainty::lowest_score(&settings, 0.1, true), 0.0);
    }
}
