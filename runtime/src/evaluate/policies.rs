//! The policies `framesift evaluate` compares, replayed over one scored stream, and what
//! each kept.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use super::Record;
use crate::{
    capture::{
        Thumbnail,
        synthetic::{PRODUCT_NAMES, Rng},
    },
    config::Config,
    frame::Perturbations,
    keep::{
        Valued,
        select::{Selectable, Selector},
    },
    policy::{
        KeepDecision, Scored, Scores, Verdict, decide::TargetRate, signals, triggers::Limits,
    },
};

/// Random draws averaged for the random baseline.
pub(crate) const RANDOM_DRAWS: u32 = 200;

/// What one policy kept, summarised.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PolicyReport {
    pub name: String,
    /// Frames kept (the mean over draws for random).
    pub kept: f64,
    pub misses_per_kept: f64,
    pub false_positives_per_kept: f64,
    pub errors_per_kept: f64,
    /// Each per-kept figure ÷ random's.
    pub lift_misses: f64,
    pub lift_false_positives: f64,
    pub lift_errors: f64,
    /// The share of kept frames with at least one miss.
    pub miss_precision: f64,
    /// Scenes among the kept frames, and their share of the kept frames.
    pub distinct_scenes: f64,
    pub distinct_share: f64,
    /// Kept frames of a scene already kept.
    pub near_duplicates: f64,
    /// Kept frames that were control frames (the configured policy only).
    pub control: f64,
    pub coverage: Coverage,
}

/// Kept frames showing each perturbation and each product.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Coverage {
    pub perturbations: BTreeMap<&'static str, f64>,
    pub classes: BTreeMap<&'static str, f64>,
}

/// One recorded frame as selection sees it.
struct Item {
    index: usize,
    value: f32,
    triggers: u16,
    thumbnail: Thumbnail,
    at: f64,
    control: bool,
}

impl Valued for Item {
    fn value(&self) -> f32 {
        self.value
    }
}

impl Selectable for Item {
    fn camera(&self) -> usize {
        0
    }
    fn thumbnail(&self) -> &Thumbnail {
        &self.thumbnail
    }
    fn at(&self) -> f64 {
        self.at
    }
    fn is_control(&self) -> bool {
        self.control
    }
}

/// The configured policy over `records` with each frame's value from `value`: the
/// inference thread's keep decision, then the keeper's selection, windows ending on
/// `[keep] window_secs` of stream time or a full budget, as in the pipeline; `seed` draws
/// the control sample. Returns the
/// kept frames' indices and which of them were control frames.
pub(crate) fn replay(
    config: &Config,
    records: &[Record],
    seed: u64,
    value: impl Fn(&Record) -> f32,
) -> (Vec<usize>, Vec<bool>) {
    let mut decide = TargetRate::new(config, seed);
    let mut selector = Selector::new(config.keep.select());
    let triggers = &config.policy.triggers;
    let mut limits = Limits::default();
    let (mut kept, mut control) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    let mut end = |selector: &mut Selector<Item>, limits: &mut Limits, frames: u64, told| {
        selector.end_window(frames, told, &mut out, |_, _| {});
        while let Some(item) = out.pop() {
            for (i, t) in triggers.iter().enumerate() {
                if item.triggers & (1 << i) != 0 {
                    limits.record(t, item.at as u64);
                }
            }
            kept.push(item.index);
            control.push(item.control);
        }
    };
    let (mut window_start, mut frames) = (records.first().map_or(0.0, |r| r.at), 0u64);
    for (index, r) in records.iter().enumerate() {
        frames += 1;
        let scores = Scores {
            value: value(r),
            ..r.scores
        };
        let verdict = decide.keep(&Scored {
            n: index as u64,
            scores: &scores,
            inference: Duration::ZERO,
            thumbnail: &r.thumbnail,
        });
        if verdict != Verdict::Skip {
            // As the keeper does: a trigger past its rate limit gives no boost.
            let (mut value, mut fired) = (scores.value, scores.triggers);
            for (i, t) in triggers.iter().enumerate() {
                if fired & (1 << i) != 0 && !limits.allows(t, r.at as u64) {
                    fired &= !(1 << i);
                    value -= t.weight;
                }
            }
            selector.offer(
                Item {
                    index,
                    value,
                    triggers: fired,
                    thumbnail: r.thumbnail,
                    at: r.at,
                    control: verdict == Verdict::Control,
                },
                |_, _| {},
            );
        }
        if selector.window_full(frames) || r.at - window_start >= config.keep.window_secs {
            end(&mut selector, &mut limits, frames, false);
            (window_start, frames) = (r.at, 0);
        }
    }
    end(&mut selector, &mut limits, frames, true);
    (kept, control)
}

/// Per-kept figures of one set of kept frames.
#[derive(Debug, Clone, Default)]
pub(super) struct Tally {
    kept: f64,
    misses: f64,
    false_positives: f64,
    with_miss: f64,
    scenes: f64,
    control: f64,
    coverage: Coverage,
}

pub(super) fn tally(records: &[Record], kept: &[usize]) -> Tally {
    let mut t = Tally {
        kept: kept.len() as f64,
        ..Tally::default()
    };
    let mut scenes = std::collections::HashSet::new();
    for (_, name) in Perturbations::ALL {
        t.coverage.perturbations.insert(name, 0.0);
    }
    for name in PRODUCT_NAMES {
        t.coverage.classes.insert(name, 0.0);
    }
    for &i in kept {
        let r = &records[i];
        t.misses += f64::from(r.errors.misses);
        t.false_positives += f64::from(r.errors.false_positives);
        t.with_miss += f64::from(u8::from(r.errors.misses > 0));
        scenes.insert(r.scene);
        for name in r.perturbations.names() {
            *t.coverage.perturbations.entry(name).or_default() += 1.0;
        }
        for (id, name) in PRODUCT_NAMES.iter().enumerate() {
            if r.products & (1 << id) != 0 {
                *t.coverage.classes.entry(name).or_default() += 1.0;
            }
        }
    }
    t.scenes = scenes.len() as f64;
    t
}

impl Tally {
    fn add(&mut self, other: &Tally, weight: f64) {
        self.kept += weight * other.kept;
        self.misses += weight * other.misses;
        self.false_positives += weight * other.false_positives;
        self.with_miss += weight * other.with_miss;
        self.scenes += weight * other.scenes;
        for (k, v) in &other.coverage.perturbations {
            *self.coverage.perturbations.entry(k).or_default() += weight * v;
        }
        for (k, v) in &other.coverage.classes {
            *self.coverage.classes.entry(k).or_default() += weight * v;
        }
    }

    fn per_kept(&self, x: f64) -> f64 {
        if self.kept > 0.0 { x / self.kept } else { 0.0 }
    }

    pub(super) fn report(&self, name: String, random: Option<&Tally>) -> PolicyReport {
        let (m, f) = (
            self.per_kept(self.misses),
            self.per_kept(self.false_positives),
        );
        let lift = |mine: f64, theirs: fn(&Tally) -> f64| match random {
            Some(r) if theirs(r) > 0.0 => mine / theirs(r),
            Some(_) => 0.0,
            None => 1.0,
        };
        PolicyReport {
            name,
            kept: self.kept,
            misses_per_kept: m,
            false_positives_per_kept: f,
            errors_per_kept: m + f,
            lift_misses: lift(m, |r| r.per_kept(r.misses)),
            lift_false_positives: lift(f, |r| r.per_kept(r.false_positives)),
            lift_errors: lift(m + f, |r| r.per_kept(r.misses + r.false_positives)),
            miss_precision: self.per_kept(self.with_miss),
            distinct_scenes: self.scenes,
            distinct_share: self.per_kept(self.scenes),
            near_duplicates: self.kept - self.scenes,
            control: self.control,
            coverage: self.coverage.clone(),
        }
    }
}

/// Every policy's report: the configured policy, random (the mean of [`RANDOM_DRAWS`]
/// seeded draws of the budget), the oracle (the frames with the most errors), the
/// oracle keeping one frame per scene, and each weighted signal alone through the
/// configured selection.
pub(crate) fn compare(
    config: &Config,
    records: &[Record],
    budget: f64,
    seed: u64,
) -> Vec<PolicyReport> {
    let n = records.len();
    let k = ((budget * n as f64).round() as usize).clamp(1, n.max(1));

    let mut random = Tally::default();
    let mut rng = Rng::new(seed ^ 0x7261_6e64_6f6d);
    let mut indices: Vec<usize> = (0..n).collect();
    for _ in 0..RANDOM_DRAWS {
        // A partial Fisher–Yates shuffle: the first k are a uniform sample.
        for i in 0..k {
            let j = i + rng.below((n - i) as u32) as usize;
            indices.swap(i, j);
        }
        random.add(
            &tally(records, &indices[..k]),
            1.0 / f64::from(RANDOM_DRAWS),
        );
    }

    let (kept, control) = replay(config, records, seed, |r| r.scores.value);
    let mut framesift = tally(records, &kept);
    framesift.control = control.iter().filter(|&&c| c).count() as f64;

    let mut by_errors: Vec<usize> = (0..n).collect();
    by_errors.sort_by_key(|&i| {
        let e = records[i].errors;
        (std::cmp::Reverse(e.total()), std::cmp::Reverse(e.misses), i)
    });
    let oracle = tally(records, &by_errors[..k]);
    // The same, one frame per scene: the best any policy that spreads its budget over
    // distinct scenes can do.
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<usize> = by_errors
        .iter()
        .copied()
        .filter(|&i| seen.insert(records[i].scene))
        .take(k)
        .collect();
    let oracle_distinct = tally(records, &distinct);
    // The configured selection — windows, near-duplicates, control slice — with a value
    // that knows each frame's errors: the most this policy could find with perfect
    // signals.
    let (kept, control) = replay(config, records, seed, |r| {
        r.errors.total() as f32 + 0.001 * r.errors.misses as f32
    });
    let mut oracle_policy = tally(records, &kept);
    oracle_policy.control = control.iter().filter(|&&c| c).count() as f64;

    let mut reports = vec![
        framesift.report("framesift".into(), Some(&random)),
        random.report("random".into(), Some(&random)),
        oracle.report("oracle".into(), Some(&random)),
        oracle_distinct.report("oracle:distinct".into(), Some(&random)),
        oracle_policy.report("oracle:policy".into(), Some(&random)),
    ];
    // Each signal alone: its own 0..1 value is the frame's value.
    for (i, name) in signals::NAMES.iter().enumerate() {
        let (kept, _) = replay(config, records, seed, |r| r.scores.signals[i]);
        reports.push(tally(records, &kept).report(format!("signal:{name}"), Some(&random)));
    }
    reports
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::evaluate::truth::Errors;

    /// Frame `i` of a stream of four-frame scenes, each scene its own view.
    pub(crate) fn record(i: u64, value: f32, misses: u32) -> Record {
        Record {
            scene: i / 4,
            perturbations: Perturbations::NONE,
            products: 1,
            errors: Errors {
                misses,
                false_positives: 0,
            },
            scores: Scores {
                value,
                ..Scores::default()
            },
            // Each scene its own view.
            thumbnail: {
                let mut rng = Rng::new(i / 4);
                Thumbnail(std::array::from_fn(|_| rng.below(256) as u8))
            },
            at: i as f64 / 30.0,
        }
    }

    #[test]
    fn the_random_baseline_is_seeded_and_really_random() {
        // Misses only on even scenes: random keeps about half its frames with a miss.
        let records: Vec<Record> = (0..4000)
            .map(|i| record(i, 0.0, u32::from(i / 4 % 2 == 0)))
            .collect();
        let config = Config::default();
        let a = compare(&config, &records, 0.02, 1);
        let b = compare(&config, &records, 0.02, 1);
        let c = compare(&config, &records, 0.02, 2);
        let random = |r: &[PolicyReport]| {
            r.iter()
                .find(|p| p.name == "random")
                .cloned()
                .expect("random")
        };
        assert_eq!(
            random(&a).miss_precision,
            random(&b).miss_precision,
            "seeded"
        );
        assert_ne!(
            random(&a).miss_precision,
            random(&c).miss_precision,
            "another seed, other draws"
        );
        assert!(
            (random(&a).miss_precision - 0.5).abs() < 0.03,
            "{}",
            random(&a).miss_precision
        );
        assert!((random(&a).kept - 80.0).abs() < 1e-9);
        let oracle = a.iter().find(|p| p.name == "oracle").expect("oracle");
        assert_eq!(oracle.miss_precision, 1.0);
        assert!(
            (oracle.lift_misses - 2.0).abs() < 0.15,
            "{}",
            oracle.lift_misses
        );
    }

    #[test]
    fn the_configured_policy_keeps_the_target_rate_of_distinct_valuable_scenes() {
        // Value = misses, so a perfect signal; four frames per scene.
        let records: Vec<Record> = (0..6000)
            .map(|i| {
                let m = ((i / 4) * 7 % 5) as u32;
                record(i, m as f32, m)
            })
            .collect();
        let config = Config::default();
        let (kept, control) = replay(&config, &records, 1, |r| r.scores.value);
        let rate = kept.len() as f64 / records.len() as f64;
        assert!((rate - 0.02).abs() < 0.004, "kept {} of 6000", kept.len());
        let scenes: std::collections::HashSet<u64> =
            kept.iter().map(|&i| records[i].scene).collect();
        let valued: Vec<usize> = kept
            .iter()
            .zip(&control)
            .filter(|(_, c)| !**c)
            .map(|(&i, _)| i)
            .collect();
        assert!(
            scenes.len() * 10 >= kept.len() * 9,
            "{} scenes in {}",
            scenes.len(),
            kept.len()
        );
        let mean = valued
            .iter()
            .map(|&i| records[i].errors.misses as f64)
            .sum::<f64>()
            / valued.len() as f64;
        assert!(mean > 3.5, "the valuable scenes: {mean}");
        assert!(control.iter().any(|&c| c), "a control slice");
    }

    #[test]
    fn the_policy_oracle_is_the_configured_selection_with_perfect_signals() {
        // A signal that knows nothing (a value drawn at random for each frame); misses on
        // one scene in five, 1 to 4 of them.
        let mut rng = Rng::new(9);
        let records: Vec<Record> = (0..6000)
            .map(|i| {
                let s = i / 4;
                let m = if s % 5 == 0 {
                    (s / 5 % 4 + 1) as u32
                } else {
                    0
                };
                record(i, 0.5 + rng.unit(), m)
            })
            .collect();
        let reports = compare(&Config::default(), &records, 0.02, 3);
        let by = |name: &str| {
            reports
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("no {name}"))
        };
        let (ours, perfect, distinct) =
            (by("framesift"), by("oracle:policy"), by("oracle:distinct"));
        assert!(
            ours.lift_misses < 1.6,
            "a blind signal: {}",
            ours.lift_misses
        );
        // Perfect signals through the same selection: the same control slice and the
        // same spread, so the best scenes but not all of the budget on them.
        assert_eq!(perfect.control, ours.control);
        assert!(perfect.control >= 1.0, "a control slice");
        assert!(perfect.distinct_share >= 0.9, "{}", perfect.distinct_share);
        assert!(
            perfect.lift_misses > 2.0 * ours.lift_misses,
            "{} vs {}",
            perfect.lift_misses,
            ours.lift_misses
        );
        assert!(
            perfect.lift_misses <= distinct.lift_misses,
            "{} vs {}",
            perfect.lift_misses,
            distinct.lift_misses
        );
    }
}
