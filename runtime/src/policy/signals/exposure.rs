//! Exposure: frames darker, brighter or more clipped than the camera's normal range —
//! dim aisles, a lamp in view, a blown-out window — where a detector trained under even
//! light misses and misclassifies products.
//!
//! Value: the largest of
//! - dark: 0 at `dark_luma` mean luma, rising to 1 at half of it;
//! - bright: 0 at `bright_luma`, rising to 1 halfway from it to 255;
//! - clipped: 0 at `max_clipped` (the share of the frame crushed to black or blown to
//!   white), rising to 1 at twice that.
//!
//! `framesift calibrate` prints the range a reference sample's mean luma spans, for
//! setting `dark_luma` and `bright_luma` to what a store's cameras normally see.

use serde::{Deserialize, Serialize};

use super::{FrameFacts, Signal};
use crate::config::Checker;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Raw {
    dark_luma: f64,
    bright_luma: f64,
    max_clipped: f64,
    weight: f64,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            dark_luma: 40.0,
            bright_luma: 200.0,
            max_clipped: 0.05,
            weight: 0.3,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    dark_luma: f32,
    bright_luma: f32,
    max_clipped: f32,
    weight: f32,
}

pub(crate) struct Exposure(Settings);

impl Signal for Exposure {
    const REASON: &'static str = "exposure";
    type Raw = Raw;
    type Settings = Settings;

    fn validate(raw: &Raw, c: &mut Checker) -> Settings {
        let dark_luma = c.float(
            "dark_luma",
            raw.dark_luma,
            |v| v > 0.0 && v < 255.0,
            "between 0 and 255 (a mean luma), e.g. 40.0",
        ) as f32;
        let bright_luma = c.float(
            "bright_luma",
            raw.bright_luma,
            |v| v > 0.0 && v < 255.0,
            "between 0 and 255 (a mean luma), e.g. 200.0",
        ) as f32;
        if dark_luma > 0.0 && bright_luma > 0.0 && bright_luma <= dark_luma {
            // Point at the one that was changed from its default (a file may set one).
            let changed = if raw.dark_luma == Raw::default().dark_luma {
                "bright_luma"
            } else {
                "dark_luma"
            };
            let name = c.key("");
            c.fail(
                changed,
                format!(
                    "{name}.bright_luma ({bright_luma}) is not above dark_luma ({dark_luma})"
                ),
                format!(
                    "write dark_luma below bright_luma, e.g. dark_luma = {} and bright_luma = {}",
                    (bright_luma / 2.0).round().min(40.0),
                    bright_luma.clamp(200.0, 250.0)
                ),
            );
        }
        Settings {
            dark_luma,
            bright_luma,
            max_clipped: c.float(
                "max_clipped",
                raw.max_clipped,
                |v| v > 0.0 && v <= 0.5,
                "above 0 and at most 0.5 (a share of the frame), e.g. 0.05",
            ) as f32,
            weight: super::weight(c, raw.weight, "2.0"),
        }
    }

    fn weight(settings: &Settings) -> f32 {
        settings.weight
    }

    fn new(settings: &Settings) -> Self {
        Exposure(settings.clone())
    }

    fn reconfigure(&mut self, settings: &Settings) {
        self.0 = settings.clone();
    }

    fn value(&mut self, frame: &FrameFacts<'_>) -> f32 {
        let s = &self.0;
        let luma = frame.stats.luma_mean;
        let dark = (s.dark_luma - luma) / (s.dark_luma / 2.0);
        let bright = (luma - s.bright_luma) / ((255.0 - s.bright_luma) / 2.0);
        let clipped = (frame.stats.dark_clip + frame.stats.bright_clip) / s.max_clipped - 1.0;
        dark.max(bright).max(clipped).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{capture::FrameStats, policy::tests::facts};

    fn at(luma_mean: f32, clipped: f32) -> f32 {
        let stats = FrameStats {
            luma_mean,
            dark_clip: clipped,
            ..FrameStats::default()
        };
        let raw = Raw::default();
        let mut c = Checker::default();
        let mut e = Exposure::new(&Exposure::validate(&raw, &mut c));
        e.value(&facts(&[], &stats))
    }

    #[test]
    fn dark_bright_and_clipped_frames_score_by_how_far_out_they_are() {
        assert_eq!(at(100.0, 0.0), 0.0);
        assert_eq!(at(40.0, 0.0), 0.0);
        assert!((at(30.0, 0.0) - 0.5).abs() < 1e-5);
        assert_eq!(at(20.0, 0.0), 1.0);
        assert_eq!(at(5.0, 0.0), 1.0);
        assert_eq!(at(200.0, 0.0), 0.0);
        assert!((at(213.75, 0.0) - 0.5).abs() < 1e-5);
        assert_eq!(at(250.0, 0.0), 1.0);
        assert_eq!(at(100.0, 0.05), 0.0);
        assert!((at(100.0, 0.075) - 0.5).abs() < 1e-5);
        assert_eq!(at(100.0, 0.3), 1.0);
    }

    #[test]
    fn an_inverted_range_is_refused_with_the_fix() {
        let raw = Raw {
            bright_luma: 30.0,
            ..Raw::default()
        };
        let mut c = Checker::default();
        Exposure::validate(&raw, &mut c);
        assert!(format!("{c:?}").contains("above dark_luma"), "{c:?}");
    }
}
