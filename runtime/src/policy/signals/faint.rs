//! Faint objects: candidate boxes the model scored below the confidence threshold —
//! things it half-saw and did not report, each a likely missed product.
//!
//! A frame where the model misses products (a hand over them, a dim aisle, an odd
//! angle, a product it was never trained on) is rarely one where it sees nothing: the
//! missed objects leave candidates just under the threshold. Counting them finds those
//! frames better than counting doubt about reported detections ([`super::uncertainty`]),
//! because a reported detection is a found product whatever its score.
//!
//! Each candidate scoring `floor` ≤ s < confidence counts (s − floor) ÷ (confidence −
//! floor): one just under the threshold counts almost 1, one at the floor 0 (the decoder
//! keeps detections down to `floor` for this signal while its weight is above 0).
//! Value: their sum ÷ `saturate`, at most 1.

use serde::{Deserialize, Serialize};

use super::{FrameFacts, Signal};
use crate::config::Checker;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Raw {
    floor: f64,
    saturate: f64,
    weight: f64,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            floor: 0.04,
            saturate: 4.0,
            weight: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    floor: f32,
    saturate: f32,
    weight: f32,
}

impl Raw {
    /// Whether the floor differs from its default (was set in a file).
    pub(crate) fn floor_set(&self) -> bool {
        self.floor != Raw::default().floor
    }
}

impl Settings {
    /// The lowest score a faint candidate may have.
    pub(crate) fn floor(&self) -> f32 {
        self.floor
    }
}

pub(crate) struct Faint {
    floor: f32,
    saturate: f32,
}

impl Signal for Faint {
    const REASON: &'static str = "faint_objects";
    type Raw = Raw;
    type Settings = Settings;

    fn validate(raw: &Raw, c: &mut Checker) -> Settings {
        Settings {
            floor: c.float(
                "floor",
                raw.floor,
                |v| (0.0..1.0).contains(&v),
                "from 0 up to (not including) 1, below [model] confidence_threshold, e.g. 0.04",
            ) as f32,
            saturate: c.float(
                "saturate",
                raw.saturate,
                |v| v >= 1.0,
                "1 or more (how many faint candidates make a frame's value 1), e.g. 4.0",
            ) as f32,
            weight: super::weight(c, raw.weight, "0.5"),
        }
    }

    fn weight(settings: &Settings) -> f32 {
        settings.weight
    }

    fn lowest_score(settings: &Settings, confidence: f32, used: bool) -> f32 {
        // Unused, it costs the decoder nothing: no extra candidates through NMS.
        if used {
            settings.floor.min(confidence)
        } else {
            confidence
        }
    }

    fn new(settings: &Settings) -> Self {
        Faint {
            floor: settings.floor,
            saturate: settings.saturate,
        }
    }

    fn reconfigure(&mut self, settings: &Settings) {
        self.floor = settings.floor;
        self.saturate = settings.saturate;
    }

    fn value(&mut self, frame: &FrameFacts<'_>) -> f32 {
        let span = frame.confidence - self.floor;
        if span <= 0.0 {
            return 0.0;
        }
        let mut sum = 0.0f32;
        for d in frame.detections {
            if d.score >= self.floor && d.score < frame.confidence {
                sum += (d.score - self.floor) / span;
            }
        }
        (sum / self.saturate).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::{det, facts, sharp};

    fn faint(floor: f32, saturate: f32) -> Faint {
        Faint { floor, saturate }
    }

    #[test]
    fn candidates_just_under_the_threshold_count_most() {
        // Threshold 0.25 (the test facts), floor 0.05: span 0.2.
        let mut s = faint(0.05, 1.0);
        let value = |s: &mut Faint, score| s.value(&facts(&[det(score, 0.0)], &sharp()));
        assert!((value(&mut s, 0.24) - 0.95).abs() < 1e-5);
        assert!((value(&mut s, 0.15) - 0.5).abs() < 1e-5);
        assert_eq!(value(&mut s, 0.05), 0.0);
        assert_eq!(value(&mut s, 0.04), 0.0);
        // Reported detections are found products, not faint ones.
        assert_eq!(value(&mut s, 0.25), 0.0);
        assert_eq!(value(&mut s, 0.9), 0.0);
    }

    #[test]
    fn the_value_grows_with_the_number_of_faint_candidates_up_to_saturate() {
        let mut s = faint(0.05, 4.0);
        let half = det(0.15, 0.0);
        let confident = det(0.9, 0.0);
        let one = s.value(&facts(&[confident, half], &sharp()));
        let three = s.value(&facts(&[confident, half, half, half], &sharp()));
        assert!((one - 0.125).abs() < 1e-5, "{one}");
        assert!((three - 0.375).abs() < 1e-5, "{three}");
        let crowd = [det(0.24, 0.0); 10];
        assert_eq!(s.value(&facts(&crowd, &sharp())), 1.0);
        assert_eq!(s.value(&facts(&[confident], &sharp())), 0.0);
    }

    #[test]
    fn a_floor_at_or_above_the_threshold_sees_nothing() {
        let mut s = faint(0.3, 1.0);
        assert_eq!(s.value(&facts(&[det(0.28, 0.0)], &sharp())), 0.0);
    }

    #[test]
    fn the_decoder_keeps_candidates_down_to_the_floor_only_while_the_signal_is_used() {
        let settings = Settings {
            floor: 0.04,
            saturate: 4.0,
            weight: 1.0,
        };
        assert!((Faint::lowest_score(&settings, 0.25, true) - 0.04).abs() < 1e-6);
        assert!((Faint::lowest_score(&settings, 0.02, true) - 0.02).abs() < 1e-6);
        assert_eq!(Faint::lowest_score(&settings, 0.25, false), 0.25);
    }

    #[test]
    fn a_trigger_on_faint_uses_it_whatever_its_weight() {
        let lowest = |text: &str| {
            crate::config::Config::parse(text, "c.toml")
                .expect("valid")
                .policy
                .lowest_score(0.25)
        };
        let off = "[signals.faint]\nweight = 0.0\n[signals.uncertainty]\nband = 0.0\n";
        assert_eq!(lowest(off), 0.25, "nothing reads it: nothing below the threshold");
        let triggered = format!(
            "{off}[[trigger]]\nname = \"half_seen\"\nsignal = \"faint\"\nthreshold = 0.5\nweight = 1.0\n"
        );
        assert!((lowest(&triggered) - 0.04).abs() < 1e-6, "down to its floor");
    }
}
