//! Uncertainty: a detection whose confidence lies near the decision threshold, where
//! the model is least sure whether the object is there.
//!
//! Value: 1 − distance ÷ band for the detection closest to the threshold among those
//! within `band` of it (above or below; the decoder keeps detections down to
//! `confidence − band` for this signal), 0 when none is.

use serde::{Deserialize, Serialize};

use super::{FrameFacts, Signal};
use crate::config::Checker;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Raw {
    band: f64,
    weight: f64,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            band: 0.15,
            weight: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    band: f32,
    weight: f32,
}

pub(crate) struct Uncertainty {
    band: f32,
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
            weight: super::weight(c, raw.weight, "1.0"),
        }
    }

    fn weight(settings: &Settings) -> f32 {
        settings.weight
    }

    fn lowest_score(settings: &Settings, confidence: f32) -> f32 {
        (confidence - settings.band).max(0.0)
    }

    fn new(settings: &Settings) -> Self {
        Uncertainty {
            band: settings.band,
        }
    }

    fn reconfigure(&mut self, settings: &Settings) {
        self.band = settings.band;
    }

    fn value(&mut self, frame: &FrameFacts<'_>) -> f32 {
        let band = self.band;
        let mut value = 0.0f32;
        for d in frame.detections {
            let distance = (d.score - frame.confidence).abs();
            if band > 0.0 && distance <= band {
                value = value.max(1.0 - distance / band);
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
    fn a_detection_at_the_threshold_is_most_uncertain() {
        let mut s = Uncertainty { band: 0.15 };
        let value = |s: &mut Uncertainty, score| s.value(&facts(&[det(score, 0.0)], &sharp()));
        assert_eq!(value(&mut s, 0.25), 1.0);
        assert!((value(&mut s, 0.325) - 0.5).abs() < 1e-5);
        assert!((value(&mut s, 0.13) - 0.2).abs() < 1e-5);
        assert_eq!(value(&mut s, 0.41), 0.0);
        assert_eq!(value(&mut s, 0.95), 0.0);
        // The closest of several counts.
        let many = [det(0.9, 0.0), det(0.3, 0.0), det(0.2, 0.0)];
        assert!((s.value(&facts(&many, &sharp())) - (1.0 - 0.05 / 0.15)).abs() < 1e-5);
        // No band, no uncertainty.
        assert_eq!(value(&mut Uncertainty { band: 0.0 }, 0.25), 0.0);
    }

    #[test]
    fn the_decoder_keeps_detections_down_to_the_band() {
        let settings = Settings {
            band: 0.15,
            weight: 1.0,
        };
        assert!((Uncertainty::lowest_score(&settings, 0.25) - 0.10).abs() < 1e-6);
        assert_eq!(Uncertainty::lowest_score(&settings, 0.1), 0.0);
    }
}
