//! Detection count: fewer or more objects than the camera usually reports. A frame where
//! the model reports nothing while the basket is full is where it misses products; a
//! frame with far more detections than usual is where it fires on things that are not
//! there.
//!
//! The expected count is `expected` when set, else learnt per camera as a running mean
//! over about `memory_frames` frames. Value: the larger of
//! - fewer: (expected − reported) ÷ expected;
//! - more: 0 at 1.5 × expected reported detections, rising to 1 at 2.5 ×;
//!
//! 0 until the camera has seen `memory_frames / 10` frames when the count is learnt.

use serde::{Deserialize, Serialize};

use super::{FrameFacts, Signal};
use crate::config::Checker;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Raw {
    expected: f64,
    memory_frames: i64,
    weight: f64,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            expected: 0.0,
            memory_frames: 300,
            weight: 0.05,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// `None`: learn it.
    expected: Option<f32>,
    memory_frames: u32,
    weight: f32,
}

pub(crate) struct Count {
    settings: Settings,
    /// The running mean of reported detections, and the frames it has seen.
    mean: f32,
    seen: u32,
}

impl Count {
    fn expected(&self) -> Option<f32> {
        match self.settings.expected {
            Some(e) => Some(e),
            None => (self.seen >= (self.settings.memory_frames / 10).max(1)).then_some(self.mean),
        }
    }
}

impl Signal for Count {
    const REASON: &'static str = "unusual_count";
    type Raw = Raw;
    type Settings = Settings;

    fn validate(raw: &Raw, c: &mut Checker) -> Settings {
        let expected = c.float(
            "expected",
            raw.expected,
            |v| v >= 0.0,
            "of 0 or more: the detections a frame usually holds, or 0 to learn each camera's usual count, e.g. 4.0",
        ) as f32;
        Settings {
            expected: (expected > 0.0).then_some(expected),
            memory_frames: c.int("memory_frames", raw.memory_frames, 10, 1_000_000) as u32,
            weight: super::weight(c, raw.weight, "1.0"),
        }
    }

    fn weight(settings: &Settings) -> f32 {
        settings.weight
    }

    fn new(settings: &Settings) -> Self {
        Count {
            settings: settings.clone(),
            mean: 0.0,
            seen: 0,
        }
    }

    fn reconfigure(&mut self, settings: &Settings) {
        self.settings = settings.clone();
    }

    fn value(&mut self, frame: &FrameFacts<'_>) -> f32 {
        let n = frame.reported().count() as f32;
        let value = match self.expected() {
            Some(expected) if expected >= 0.5 => {
                let fewer = (expected - n) / expected;
                let more = n / expected - 1.5;
                fewer.max(more).clamp(0.0, 1.0)
            }
            _ => 0.0,
        };
        // The mean of the first frames, then an exponential mean over memory_frames.
        self.seen = self.seen.saturating_add(1);
        let alpha = 1.0 / (self.seen.min(self.settings.memory_frames) as f32);
        self.mean += alpha * (n - self.mean);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::{det, facts, sharp};

    fn frame(n: usize) -> Vec<crate::infer::Detection> {
        vec![det(0.9, 0.0); n]
    }

    #[test]
    fn a_frame_far_below_or_above_the_usual_count_scores() {
        let mut c = Count::new(&Settings {
            expected: None,
            memory_frames: 100,
            weight: 1.0,
        });
        // Nothing until it has learnt what is usual.
        for _ in 0..9 {
            assert_eq!(c.value(&facts(&frame(4), &sharp())), 0.0);
        }
        for _ in 0..200 {
            c.value(&facts(&frame(4), &sharp()));
        }
        assert_eq!(c.value(&facts(&frame(4), &sharp())), 0.0);
        assert_eq!(c.value(&facts(&frame(0), &sharp())), 1.0);
        let one = c.value(&facts(&frame(1), &sharp()));
        assert!((one - 0.75).abs() < 0.02, "{one}");
        assert!(c.value(&facts(&frame(6), &sharp())) < 0.05, "1.5 × usual: about 0");
        let eight = c.value(&facts(&frame(8), &sharp()));
        assert!((eight - 0.5).abs() < 0.03, "{eight}");
        assert_eq!(c.value(&facts(&frame(12), &sharp())), 1.0);
    }

    #[test]
    fn detections_below_the_threshold_are_not_counted_and_a_fixed_count_needs_no_warm_up() {
        let mut c = Count::new(&Settings {
            expected: Some(2.0),
            memory_frames: 100,
            weight: 1.0,
        });
        let faint = [det(0.9, 0.0), det(0.2, 0.0)];
        assert!((c.value(&facts(&faint, &sharp())) - 0.5).abs() < 1e-5);
    }
}
