//! The keep decision on the inference thread: which scored frames go to the keeper.
//!
//! With `[keep] target_rate`, it hands over frames whose value is in the top
//! [`OVERSAMPLE`] × target share of the camera's last [`HISTORY`] frames — so the keeper
//! chooses the kept frames among several times as many as it keeps, without the
//! hand-off carrying most of the stream — except a frame of the same view as the last
//! one handed over (within `[keep] dedupe_distance`) that is worth no more: a camera
//! staring at one basket for a minute offers it once, not 1800 times. A random `control_share` of
//! the target is handed over whatever its value and tagged control: the uniform sample
//! that lift is later measured against. Frames a trigger fired on always go. Without a
//! target rate, every frame reaching `[policy] min_value` goes.

use super::{KeepDecision, Scored, Verdict};
use crate::{
    capture::{Thumbnail, synthetic::Rng},
    config::Config,
};

/// How many times the target share of frames the keeper is offered.
pub(crate) const OVERSAMPLE: f64 = 8.0;
/// Frames whose values set the hand-off threshold.
const HISTORY: usize = 1024;
/// The threshold is recomputed every this many frames (amortised: a selection over
/// `HISTORY` values, about 10 µs, every 64 frames).
const REFRESH: u32 = 64;

/// Keep frames in the top share of recent values, plus a uniform control sample.
pub(crate) struct TargetRate {
    min_value: f32,
    target_rate: f64,
    control_share: f64,
    dedupe_distance: f32,
    /// The view and value of the last frame handed over to compete.
    last: Option<(Thumbnail, f32)>,
    /// The last `HISTORY` values (a ring) and how many it holds.
    recent: Box<[f32; HISTORY]>,
    scratch: Box<[f32; HISTORY]>,
    held: usize,
    next: usize,
    since_refresh: u32,
    /// `None` until `REFRESH` frames are seen: hand over by `min_value` alone.
    threshold: Option<f32>,
    rng: Rng,
}

impl TargetRate {
    /// A camera's decision; `seed` draws its control sample (in the pipeline
    /// `[keep] control_seed` or the run's seed, plus the camera's number; `evaluate`'s
    /// stream seed).
    pub(crate) fn new(config: &Config, seed: u64) -> Self {
        let mut d = TargetRate {
            min_value: 0.0,
            target_rate: 0.0,
            control_share: 0.0,
            dedupe_distance: 0.0,
            last: None,
            recent: Box::new([0.0; HISTORY]),
            scratch: Box::new([0.0; HISTORY]),
            held: 0,
            next: 0,
            since_refresh: 0,
            threshold: None,
            rng: Rng::new(0x0063_6f6e_7472_6f6c ^ seed),
        };
        d.reconfigure(config);
        d
    }

    fn refresh(&mut self) {
        let n = self.held;
        let share = (OVERSAMPLE * self.target_rate * (1.0 - self.control_share)).min(1.0);
        let values = &mut self.scratch[..n];
        values.copy_from_slice(&self.recent[..n]);
        let rank = ((n as f64 * (1.0 - share)).floor() as usize).min(n - 1);
        let (_, at, _) = values.select_nth_unstable_by(rank, |a, b| a.total_cmp(b));
        self.threshold = Some(*at);
    }
}

impl KeepDecision for TargetRate {
    fn keep(&mut self, frame: &Scored<'_>) -> Verdict {
        let value = frame.scores.value;
        let triggered = frame.scores.triggers != 0;
        let qualifies = if self.target_rate > 0.0 {
            self.recent[self.next] = value;
            self.next = (self.next + 1) % HISTORY;
            self.held = (self.held + 1).min(HISTORY);
            self.since_refresh += 1;
            if self.since_refresh >= REFRESH {
                self.since_refresh = 0;
                self.refresh();
            }
            if f64::from(self.rng.unit()) < self.target_rate * self.control_share {
                return Verdict::Control;
            }
            value >= self.min_value && self.threshold.is_none_or(|t| value >= t)
        } else {
            value >= self.min_value
        };
        if !(qualifies || triggered) {
            return Verdict::Skip;
        }
        if let Some((view, worth)) = &self.last
            && value <= *worth
            && self.dedupe_distance > 0.0
            && view.distance(frame.thumbnail) <= self.dedupe_distance
        {
            return Verdict::Skip;
        }
        self.last = Some((*frame.thumbnail, value));
        Verdict::Keep
    }

    fn reconfigure(&mut self, config: &Config) {
        self.min_value = config.policy.min_value;
        self.target_rate = config.keep.target_rate;
        self.control_share = config.keep.control_share;
        self.dedupe_distance = config.keep.dedupe_distance;
        self.threshold = None;
        self.since_refresh = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::Scores;

    fn decide(d: &mut TargetRate, value: f32) -> Verdict {
        let scores = Scores {
            value,
            ..Scores::default()
        };
        // Every frame a new view, unless a test says otherwise.
        let mut rng = Rng::new(value.to_bits().into());
        let view = Thumbnail(std::array::from_fn(|_| rng.below(256) as u8));
        d.keep(&Scored {
            n: 0,
            scores: &scores,
            inference: Duration::ZERO,
            thumbnail: &view,
        })
    }

    #[test]
    fn it_hands_over_about_oversample_times_the_target_and_a_uniform_control_share() {
        let config = Config::default();
        assert_eq!(config.keep.target_rate, 0.02);
        let mut d = TargetRate::new(&config, 0);
        let mut rng = Rng::new(3);
        let (mut kept, mut control, n) = (0, 0, 200_000);
        let mut control_values = Vec::new();
        for _ in 0..n {
            let v = rng.unit() * 3.0;
            match decide(&mut d, v) {
                Verdict::Keep => kept += 1,
                Verdict::Control => {
                    control += 1;
                    control_values.push(v);
                }
                Verdict::Skip => {}
            }
        }
        let want = OVERSAMPLE * 0.02 * 0.9 * n as f64;
        assert!((kept as f64 - want).abs() < 0.1 * want, "{kept} vs {want}");
        let want_control = 0.02 * 0.1 * n as f64;
        assert!(
            (control as f64 - want_control).abs() < 0.15 * want_control,
            "{control} vs {want_control}"
        );
        // Uniform: the control frames' values spread like all values (mean 1.5 of 0..3).
        let mean = control_values.iter().sum::<f32>() / control_values.len() as f32;
        assert!((mean - 1.5).abs() < 0.15, "{mean}");
    }

    #[test]
    fn the_seed_draws_the_control_frames() {
        let config = Config::default();
        let picks = |seed| {
            let mut d = TargetRate::new(&config, seed);
            (0..20_000)
                .filter(|_| decide(&mut d, 0.0) == Verdict::Control)
                .collect::<Vec<u32>>()
        };
        assert!(!picks(5).is_empty());
        assert_eq!(picks(5), picks(5), "a seed repeats");
        assert_ne!(picks(5), picks(6), "another seed, other frames");
    }

    #[test]
    fn without_a_target_rate_min_value_decides() {
        let mut config = Config::default();
        config.keep.target_rate = 0.0;
        let mut d = TargetRate::new(&config, 0);
        assert_eq!(decide(&mut d, 0.49), Verdict::Skip);
        assert_eq!(decide(&mut d, 0.5), Verdict::Keep);
    }

    #[test]
    fn one_view_is_handed_over_again_only_when_it_is_worth_more() {
        let mut config = Config::default();
        config.keep.target_rate = 0.0;
        let mut d = TargetRate::new(&config, 0);
        let view = Thumbnail([90; Thumbnail::LEN]);
        let mut at = |value: f32| {
            let scores = Scores {
                value,
                ..Scores::default()
            };
            d.keep(&Scored {
                n: 0,
                scores: &scores,
                inference: Duration::ZERO,
                thumbnail: &view,
            })
        };
        assert_eq!(at(1.0), Verdict::Keep);
        assert_eq!(at(1.0), Verdict::Skip);
        assert_eq!(at(0.8), Verdict::Skip);
        assert_eq!(at(1.2), Verdict::Keep);
    }

    #[test]
    fn low_values_never_go_even_when_the_stream_is_quiet() {
        let mut d = TargetRate::new(&Config::default(), 1);
        let kept = (0..10_000)
            .filter(|i| decide(&mut d, (i % 10) as f32 * 0.01) == Verdict::Keep)
            .count();
        assert_eq!(kept, 0, "below min_value");
    }
}
