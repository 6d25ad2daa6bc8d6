//! Blur: motion-blurred or defocused frames, which the model sees rarely in training.
//!
//! Value: how far the frame's blur score (variance of the Laplacian of its luma at 1/4
//! of the captured size, so raw and JPEG cameras score alike) falls below `threshold`:
//! 1 − blur ÷ threshold, clamped to 0..=1 (0 = sharp enough).

use serde::{Deserialize, Serialize};

use super::{FrameFacts, Signal};
use crate::config::Checker;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Raw {
    threshold: f64,
    weight: f64,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            threshold: 30.0,
            weight: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    threshold: f32,
    weight: f32,
}

pub(crate) struct Blur {
    threshold: f32,
}

impl Signal for Blur {
    const REASON: &'static str = "blurred";
    type Raw = Raw;
    type Settings = Settings;

    fn validate(raw: &Raw, c: &mut Checker) -> Settings {
        Settings {
            threshold: c.float(
                "threshold",
                raw.threshold,
                |v| v > 0.0,
                "greater than 0, e.g. 30.0",
            ) as f32,
            weight: super::weight(c, raw.weight, "0.5"),
        }
    }

    fn weight(settings: &Settings) -> f32 {
        settings.weight
    }

    fn new(settings: &Settings) -> Self {
        Blur {
            threshold: settings.threshold,
        }
    }

    fn reconfigure(&mut self, settings: &Settings) {
        self.threshold = settings.threshold;
    }

    fn value(&mut self, frame: &FrameFacts<'_>) -> f32 {
        (1.0 - frame.stats.blur / self.threshold).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{capture::FrameStats, policy::tests::facts};

    #[test]
    fn blurred_frames_score_by_how_far_below_the_threshold() {
        let mut blur = Blur { threshold: 30.0 };
        let at = |blur: &mut Blur, b: f32| {
            blur.value(&facts(
                &[],
                &FrameStats {
                    blur: b,
                    ..FrameStats::default()
                },
            ))
        };
        assert!((at(&mut blur, 6.0) - 0.8).abs() < 1e-5);
        assert_eq!(at(&mut blur, 0.0), 1.0);
        assert_eq!(at(&mut blur, 30.0), 0.0);
        assert_eq!(at(&mut blur, 500.0), 0.0);
        blur.reconfigure(&Settings {
            threshold: 60.0,
            weight: 0.5,
        });
        assert!((at(&mut blur, 30.0) - 0.5).abs() < 1e-5);
    }
}
