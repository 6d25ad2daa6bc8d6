//! `framesift evaluate --tune`: the signal weights under which the configured policy
//! keeps the most errors on scored streams. The same search tunes the weights on
//! labelled control frames from the field (`framesift lift --tune`, [`super::field`]).
//!
//! Which signals find a model's errors depends on the model: one trained without dim
//! scenes misses products in them with no doubt in its scores (exposure finds those),
//! one that has seen them is unsure where it fails (uncertainty finds those). The
//! search replays the recorded streams through the real keep decision and selection
//! ([`replay`]) with other weights, so the tuned weights are judged by what the pipeline
//! would keep, control slice and near-duplicate suppression included.
//!
//! Coordinate search over [`GRID`], starting from the configured weights: each pass
//! tries every grid value for each signal in turn and moves a weight only when the
//! [`Objective`] (by default the mean of `lift_misses` and `lift_errors` over the
//! streams) rises by at least [`MIN_GAIN`], so a signal that never fires on these
//! streams keeps its weight.
//! Tuning reweights and never switches a signal on or off: a signal configured off
//! (weight 0) stays off and one configured on keeps at least the smallest grid weight,
//! since the field holds cases the synthetic stream does not.

use super::{
    Record,
    policies::{replay, tally},
};
use crate::{
    config::Config,
    policy::signals::{self, COUNT},
};

/// The weights the search tries.
const GRID: [f32; 11] = [0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0];
/// The least rise of the objective that moves a weight: less is noise on a few
/// thousand frames.
const MIN_GAIN: f64 = 0.01;
const MAX_PASSES: usize = 4;

/// What the configured policy kept on a set of streams, as lifts over random.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Lifts {
    /// Means over the streams.
    pub misses: f64,
    pub errors: f64,
}

/// What the search maximises (`--tune-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum Objective {
    /// The mean of `lift_misses` and `lift_errors`: misses and false positives alike.
    #[default]
    Both,
    /// `lift_misses`: the frames where the model misses products, at the cost of its
    /// false positives.
    Misses,
    /// `lift_errors`: errors of either kind, each counted once.
    Errors,
}

impl Objective {
    /// As `--tune-for` spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Objective::Both => "both",
            Objective::Misses => "misses",
            Objective::Errors => "errors",
        }
    }

    pub(crate) fn of(self, lifts: Lifts) -> f64 {
        match self {
            Objective::Both => (lifts.misses + lifts.errors) / 2.0,
            Objective::Misses => lifts.misses,
            Objective::Errors => lifts.errors,
        }
    }
}

/// The search's result.
#[derive(Debug, Clone)]
pub(crate) struct Tuned {
    pub before: [f32; COUNT],
    pub after: [f32; COUNT],
    /// The lifts on the tuning streams with the configured and with the tuned weights.
    pub lifts_before: Lifts,
    pub lifts_after: Lifts,
}

/// Scored streams, each with its seed (which draws its control sample, as `evaluate`'s).
pub(crate) type Streams = [(u64, Vec<Record>)];

/// Lifts of the configured policy on `streams` with each signal weighted by `weights`
/// instead of the config's (trigger weights unchanged), as `evaluate` reports them, with
/// random's per-kept figures the stream's per-frame means (what its draws average to).
pub(crate) fn lifts(config: &Config, streams: &Streams, weights: &[f32; COUNT]) -> Lifts {
    let configured = config.policy.signals.weights();
    let (mut misses, mut errors) = (0.0, 0.0);
    for (seed, records) in streams {
        let (kept, _) = replay(config, records, *seed, |r| {
            let mut value = r.scores.value;
            for i in 0..COUNT {
                value += (weights[i] - configured[i]) * r.scores.signals[i];
            }
            value.max(0.0)
        });
        let every: Vec<usize> = (0..records.len()).collect();
        let report = tally(records, &kept).report(String::new(), Some(&tally(records, &every)));
        misses += report.lift_misses;
        errors += report.lift_errors;
    }
    let n = streams.len().max(1) as f64;
    Lifts {
        misses: misses / n,
        errors: errors / n,
    }
}

/// Search the signal weights on `streams`; `progress(step, steps)` after each trial.
pub(crate) fn tune(
    config: &Config,
    streams: &Streams,
    objective: Objective,
    progress: impl FnMut(usize, usize),
) -> Tuned {
    search(
        config.policy.signals.weights(),
        |weights| lifts(config, streams, weights),
        objective,
        progress,
    )
}

/// The coordinate search from the weights `before`, judging each trial by `score`: the
/// one search behind `evaluate --tune` (scored streams) and `lift --tune` (control
/// frames that came back labelled).
pub(crate) fn search(
    before: [f32; COUNT],
    mut score: impl FnMut(&[f32; COUNT]) -> Lifts,
    objective: Objective,
    mut progress: impl FnMut(usize, usize),
) -> Tuned {
    let lifts_before = score(&before);
    let (mut weights, mut best) = (before, lifts_before);
    let active = before.iter().filter(|&&w| w > 0.0).count();
    let steps = MAX_PASSES * active * GRID.len();
    let mut step = 0;
    for _ in 0..MAX_PASSES {
        let mut moved = false;
        for i in (0..COUNT).filter(|&i| before[i] > 0.0) {
            for &w in &GRID {
                step += 1;
                progress(step, steps);
                if w == weights[i] {
                    continue;
                }
                let mut trial = weights;
                trial[i] = w;
                let got = score(&trial);
                if objective.of(got) >= objective.of(best) + MIN_GAIN {
                    (weights, best, moved) = (trial, got, true);
                }
            }
        }
        if !moved {
            break;
        }
    }
    progress(steps, steps);
    Tuned {
        before,
        after: weights,
        lifts_before,
        lifts_after: best,
    }
}

/// The tuned weights as a config overlay (`framesift run -c base.toml -c this.toml`),
/// with how they were found in comments.
pub(crate) fn overlay(tuned: &Tuned, header: &[String]) -> String {
    let mut out: String = header.iter().map(|l| format!("# {l}\n")).collect();
    for (i, name) in signals::NAMES.iter().enumerate() {
        let (was, now) = (tuned.before[i], tuned.after[i]);
        let note = if was == now {
            "unchanged".to_string()
        } else {
            format!("was {was:?}")
        };
        // Debug keeps the decimal point (3.0, not 3), so the value reads as a float.
        out.push_str(&format!(
            "\n[signals.{name}]\nweight = {now:?}   # {note}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{capture::synthetic::Rng, evaluate::policies::tests::record, policy::tests::at};

    /// A stream where uncertainty is high exactly on scenes with misses and exposure is
    /// high on a random third of scenes with no relation to them.
    fn stream(seed: u64, config: &Config) -> Vec<Record> {
        let (uncertainty, exposure) = (at("uncertainty"), at("exposure"));
        let weights = config.policy.signals.weights();
        let mut rng = Rng::new(seed);
        let mut scene_facts = Vec::new();
        (0..6000u64)
            .map(|i| {
                let scene = i / 4;
                if scene as usize == scene_facts.len() {
                    let misses = u32::from(rng.below(4) == 0) * (1 + rng.below(3));
                    let noise = rng.below(3) == 0;
                    scene_facts.push((misses, noise));
                }
                let (misses, noise) = scene_facts[scene as usize];
                let mut signals = [0.0f32; COUNT];
                signals[uncertainty] = if misses > 0 {
                    0.3 + 0.2 * misses as f32
                } else {
                    0.05
                };
                signals[exposure] = if noise { 0.9 } else { 0.0 };
                let value = signals.iter().zip(&weights).map(|(s, w)| s * w).sum();
                let mut r = record(i, value, misses);
                r.scores.signals = signals;
                r
            })
            .collect()
    }

    fn load(toml: &str) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, toml).expect("write");
        Config::load(&[path]).expect("config").config
    }

    #[test]
    fn the_search_turns_down_a_signal_that_finds_nothing() {
        let config =
            load("[signals.uncertainty]\nweight = 1.0\n[signals.exposure]\nweight = 2.0\n");
        let streams: Vec<(u64, Vec<Record>)> = (1..=2).map(|s| (s, stream(s, &config))).collect();
        let tuned = tune(&config, &streams, Objective::Both, |_, _| {});
        let (uncertainty, exposure) = (at("uncertainty"), at("exposure"));
        // Exposure's weight lets noise outrank real misses; the search lowers it and the
        // lifts rise.
        assert!(
            tuned.after[exposure] < tuned.before[exposure],
            "exposure {} -> {}",
            tuned.before[exposure],
            tuned.after[exposure]
        );
        assert!(
            tuned.after[exposure] < tuned.after[uncertainty],
            "uncertainty above exposure: {:?}",
            tuned.after
        );
        let both = |l: Lifts| Objective::Both.of(l);
        assert!(
            both(tuned.lifts_after) >= both(tuned.lifts_before) + MIN_GAIN,
            "{:?} -> {:?}",
            tuned.lifts_before,
            tuned.lifts_after
        );
        // The reported lifts are what those weights give, on a stream not tuned on too.
        assert_eq!(lifts(&config, &streams, &tuned.after), tuned.lifts_after);
        let held_out = [(9, stream(9, &config))];
        let before = lifts(&config, &held_out, &tuned.before);
        let after = lifts(&config, &held_out, &tuned.after);
        assert!(after.misses > before.misses, "{before:?} -> {after:?}");
        // Signals that never fire here keep their weights.
        for i in (0..COUNT).filter(|&i| i != uncertainty && i != exposure) {
            assert_eq!(tuned.after[i], tuned.before[i], "{}", signals::NAMES[i]);
        }
        // Turned down, never off.
        assert!(tuned.after[exposure] >= GRID[0]);
    }

    #[test]
    fn a_signal_configured_off_stays_off() {
        let config = load("[signals.uncertainty]\nweight = 0.0\n");
        let streams = [(1, stream(1, &config))];
        let tuned = tune(&config, &streams, Objective::Both, |_, _| {});
        assert_eq!(tuned.after[at("uncertainty")], 0.0, "{:?}", tuned.after);
    }

    /// Faint is high on scenes with misses and no false positives, uncertainty on
    /// scenes with false positives and no misses (three each, so more errors).
    fn trade_off_stream(seed: u64, config: &Config) -> Vec<Record> {
        let (faint, uncertainty) = (at("faint"), at("uncertainty"));
        let weights = config.policy.signals.weights();
        let mut rng = Rng::new(seed);
        let mut kinds = Vec::new();
        (0..6000u64)
            .map(|i| {
                let scene = (i / 4) as usize;
                if scene == kinds.len() {
                    kinds.push(rng.below(6));
                }
                let mut r = record(i, 0.0, 0);
                match kinds[scene] {
                    0 => {
                        r.errors.misses = 1;
                        r.scores.signals[faint] = 0.9;
                    }
                    1 => {
                        r.errors.false_positives = 3;
                        r.scores.signals[uncertainty] = 0.9;
                    }
                    _ => {}
                }
                r.scores.value = r
                    .scores
                    .signals
                    .iter()
                    .zip(&weights)
                    .map(|(s, w)| s * w)
                    .sum();
                r
            })
            .collect()
    }

    #[test]
    fn the_objective_decides_which_errors_the_weights_chase() {
        let config = load("[signals.uncertainty]\nweight = 1.0\n[signals.faint]\nweight = 1.0\n");
        let streams: Vec<(u64, Vec<Record>)> =
            (1..=2).map(|s| (s, trade_off_stream(s, &config))).collect();
        let (faint, uncertainty) = (at("faint"), at("uncertainty"));
        let misses = tune(&config, &streams, Objective::Misses, |_, _| {});
        let errors = tune(&config, &streams, Objective::Errors, |_, _| {});
        assert!(
            misses.after[faint] > misses.after[uncertainty],
            "for misses, faint leads: {:?}",
            misses.after
        );
        assert!(
            errors.after[uncertainty] > errors.after[faint],
            "for errors, uncertainty leads: {:?}",
            errors.after
        );
        assert!(misses.lifts_after.misses > errors.lifts_after.misses);
        assert!(errors.lifts_after.errors > misses.lifts_after.errors);
    }

    #[test]
    fn the_overlay_loads_as_a_config_with_the_tuned_weights() {
        let config = Config::default();
        let mut after = config.policy.signals.weights();
        after[at("exposure")] = 0.15;
        after[at("uncertainty")] = 2.0;
        let tuned = Tuned {
            before: config.policy.signals.weights(),
            after,
            lifts_before: Lifts {
                misses: 1.0,
                errors: 1.0,
            },
            lifts_after: Lifts {
                misses: 2.0,
                errors: 2.0,
            },
        };
        let text = overlay(&tuned, &["tuned on a test".into()]);
        assert_eq!(load(&text).policy.signals.weights(), after, "{text}");
        assert!(
            text.contains("[signals.uncertainty]\nweight = 2.0 "),
            "a float, as the default file writes it: {text}"
        );
    }
}
