//! The lift measured in the field: kept frames that came back labelled, the frames the
//! policy chose against the uniform control sample kept beside them.
//!
//! Every kept frame's sidecar records what the model reported on it and whether the
//! policy chose it or it was drawn for the control sample (`"control": true`). Once a
//! labeller has drawn the true boxes (one YOLO text file per frame, `<entry id>.txt`),
//! each frame's errors are labelled as `framesift evaluate` labels them ([`super::truth`]:
//! a miss is a labelled box with no reported detection of its class at IoU ≥ 0.5, a false
//! positive a reported detection matching no labelled box of its class), and the chosen
//! frames' errors per frame are divided by the control sample's. That is the policy's lift
//! on the carts' own data, which no synthetic stream can stand in for.
//!
//! Control frames are few (10 % of the budget by default), so every lift comes with a
//! bootstrap interval: both groups resampled with replacement, [`DRAWS`] times, from a
//! fixed seed so the same returns give the same report.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    truth::{self, ClassMap, Errors},
    tune::{self, Lifts, Objective, Tuned},
};
use crate::{
    capture::synthetic::{PRODUCT_NAMES, Rng},
    frame::{GroundTruth, TruthBox},
    infer::Detection,
    policy::signals,
    store::sidecar::SIDECAR_VERSION,
};

/// Bootstrap resamples behind each interval.
const DRAWS: usize = 2000;
/// The interval's share: from the 5th to the 95th percentile of the resampled lifts.
const INTERVAL: f64 = 0.90;
/// Below this many control frames the report points at the interval: the lift alone
/// says little.
pub(crate) const FEW_CONTROL_FRAMES: usize = 30;
/// How far outside 0..1 a normalised label coordinate may stray (rounding in tools).
const COORD_SLACK: f32 = 1e-3;

/// The fields of a sidecar this reads (serde skips the rest).
#[derive(Debug, Deserialize)]
struct SidecarIn {
    version: u32,
    id: String,
    model: ModelIn,
    frame: FrameIn,
    detections: Vec<DetectionIn>,
    #[serde(default)]
    reasons: Vec<String>,
    #[serde(default)]
    triggers: Vec<String>,
    #[serde(default)]
    control: bool,
    #[serde(default)]
    context_of: Option<String>,
    /// Each signal's value, by name.
    #[serde(default)]
    signals: BTreeMap<String, f32>,
    /// The frame's value: the signals' weighted sum plus the weights of the triggers
    /// that fired.
    #[serde(default)]
    value: Option<f32>,
    /// Synthetic frames only.
    #[serde(default)]
    truth: Option<TruthIn>,
}

#[derive(Debug, Deserialize)]
struct TruthIn {
    boxes: Vec<TruthBoxIn>,
}

#[derive(Debug, Deserialize)]
struct TruthBoxIn {
    class: String,
    bbox: [f32; 4],
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub(crate) struct ModelIn {
    pub id: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
struct FrameIn {
    width: u32,
    height: u32,
}

#[derive(Debug, Deserialize)]
struct DetectionIn {
    class_id: u16,
    class: String,
    score: f32,
    bbox: [f32; 4],
    #[serde(default)]
    below_threshold: bool,
}

/// Why a frame was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Group {
    /// Drawn uniformly at random, whatever its value: the baseline.
    Control,
    /// Chosen by the policy.
    Chosen,
    /// Sent with a trigger frame as its context, outside the budget.
    Context,
}

impl Group {
    pub(crate) const ALL: [Group; 3] = [Group::Control, Group::Chosen, Group::Context];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Group::Control => "control",
            Group::Chosen => "chosen",
            Group::Context => "context",
        }
    }
}

/// One kept frame whose labels came back.
#[derive(Debug, Clone)]
struct Labelled {
    model: ModelIn,
    group: Group,
    errors: Errors,
    /// The sidecar's reasons and, prefixed `trigger:`, its triggers.
    why: Vec<String>,
    /// Each signal's value, in [`signals::NAMES`] order (0 for one the sidecar lacks).
    signals: [f32; signals::COUNT],
    /// The frame's value when no trigger fired on it: what the weights the cart ran made
    /// of `signals`.
    untriggered_value: Option<f32>,
}

/// What was read: the labelled frames and what could not be used.
#[derive(Debug, Default)]
pub(crate) struct Returns {
    frames: Vec<Labelled>,
    /// Sidecars read.
    pub kept: usize,
    /// Ids of kept frames with no label file.
    pub unlabelled: Vec<String>,
    /// Label files whose entry has no sidecar here.
    pub orphan_labels: usize,
    /// `.json` files that are not framesift sidecars, with why.
    pub skipped: Vec<(PathBuf, String)>,
    /// Classes a model reported that the label classes do not name, by model: their
    /// detections can only count as false positives.
    pub unnamed_classes: Vec<Unnamed>,
}

/// A model and the class names it reported that the label classes lack, each with the
/// label class spelled like it but for case, spaces, `-` and `_` (`Cereal Box` for
/// `cereal_box`), if there is one.
pub(crate) type Unnamed = (ModelIn, Vec<(String, Option<String>)>);

/// Where the labels come from.
#[derive(Debug, Clone)]
pub(crate) enum LabelSource {
    /// A labeller's YOLO files (`<entry id>.txt`) under `dir`, searched recursively;
    /// `classes` names their class ids, in order.
    Files { dir: PathBuf, classes: Vec<String> },
    /// The ground truth that synthetic frames carry in their sidecars: what a perfect
    /// labeller would return, to try the measurement end to end without one.
    SyntheticTruth,
}

/// Read the sidecars under `frames_dir` (searched recursively) and label each from
/// `source`. A label file that cannot be read as YOLO labels, or two files for one
/// frame, is a problem: every one is returned, and nothing is measured on a partial
/// reading.
pub(crate) fn read(
    frames_dir: &Path,
    source: &LabelSource,
) -> anyhow::Result<Result<Returns, Vec<String>>> {
    let catalogue: Vec<String>;
    let (classes, mut labels, mut problems) = match source {
        LabelSource::Files { dir, classes } => {
            let (labels, problems) = label_files(dir)?;
            (classes.as_slice(), labels, problems)
        }
        LabelSource::SyntheticTruth => {
            catalogue = PRODUCT_NAMES.iter().map(|n| n.to_string()).collect();
            (catalogue.as_slice(), HashMap::new(), Vec::new())
        }
    };
    let mut returns = Returns::default();
    let sidecars = read_sidecars(frames_dir, &mut returns.skipped)?;
    returns.kept = sidecars.len();
    let (maps, unnamed) = class_maps(&sidecars, classes);
    returns.unnamed_classes = unnamed;
    for s in &sidecars {
        let truth = match source {
            LabelSource::SyntheticTruth => match &s.truth {
                Some(t) => synthetic_truth(t, classes).map_err(|e| vec![format!("{}: {e}", s.id)]),
                None => {
                    returns.unlabelled.push(s.id.clone());
                    continue;
                }
            },
            LabelSource::Files { .. } => {
                let Some(path) = labels.remove(&s.id) else {
                    returns.unlabelled.push(s.id.clone());
                    continue;
                };
                std::fs::read_to_string(&path)
                    .map_err(|e| vec![format!("cannot read: {e}")])
                    .and_then(|text| {
                        parse_labels(&text, classes.len(), (s.frame.width, s.frame.height))
                    })
                    .map_err(|lines| {
                        lines
                            .iter()
                            .map(|l| format!("{}: {l}", path.display()))
                            .collect()
                    })
            }
        };
        let truth = match truth {
            Ok(t) => t,
            Err(lines) => {
                problems.extend(lines);
                continue;
            }
        };
        let reported: Vec<Detection> = s
            .detections
            .iter()
            .filter(|d| !d.below_threshold)
            .map(|d| Detection {
                class_id: d.class_id,
                score: d.score,
                second_score: 0.0,
                x1: d.bbox[0],
                y1: d.bbox[1],
                x2: d.bbox[2],
                y2: d.bbox[3],
            })
            .collect();
        // Every detection passed is reported: the threshold was applied when it was kept.
        let errors = truth::label(&truth, &reported, f32::MIN, &maps[&s.model]);
        let group = if s.control {
            Group::Control
        } else if s.context_of.is_some() {
            Group::Context
        } else {
            Group::Chosen
        };
        let why = s
            .reasons
            .iter()
            .cloned()
            .chain(s.triggers.iter().map(|t| format!("trigger:{t}")))
            .collect();
        returns.frames.push(Labelled {
            model: s.model.clone(),
            group,
            errors,
            why,
            signals: signals::NAMES.map(|name| s.signals.get(name).copied().unwrap_or(0.0)),
            untriggered_value: s.value.filter(|_| s.triggers.is_empty()),
        });
    }
    returns.orphan_labels = labels.len();
    Ok(if problems.is_empty() {
        Ok(returns)
    } else {
        Err(problems)
    })
}

/// A synthetic frame's ground truth, its classes numbered as in `catalogue`.
fn synthetic_truth(t: &TruthIn, catalogue: &[String]) -> Result<GroundTruth, String> {
    let mut truth = GroundTruth::default();
    for b in &t.boxes {
        let Some(class_id) = catalogue.iter().position(|c| *c == b.class) else {
            return Err(format!(
                "ground truth names a product \"{}\" the synthetic catalogue lacks",
                b.class
            ));
        };
        let [x1, y1, x2, y2] = b.bbox;
        truth.boxes.push(TruthBox {
            class_id: class_id as u16,
            x1,
            y1,
            x2,
            y2,
            occluded: false,
        });
    }
    Ok(truth)
}

/// The label files under `dir` by entry id (`classes.txt` aside), and a problem for each
/// entry labelled twice.
fn label_files(dir: &Path) -> anyhow::Result<(HashMap<String, PathBuf>, Vec<String>)> {
    let mut files = Vec::new();
    walk(dir, "txt", &mut files)?;
    let mut labels = HashMap::new();
    let mut problems = Vec::new();
    for path in files {
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if stem == "classes" {
            continue;
        }
        if let Some(first) = labels.insert(stem.to_string(), path.clone()) {
            problems.push(format!(
                "{} and {} both label entry {stem}; keep one",
                first.display(),
                path.display()
            ));
        }
    }
    Ok((labels, problems))
}

/// The sidecars under `dir`, once per entry; any other `.json` file, a sidecar of a newer
/// version or a second copy of an entry goes to `skipped` with why.
fn read_sidecars(
    dir: &Path,
    skipped: &mut Vec<(PathBuf, String)>,
) -> anyhow::Result<Vec<SidecarIn>> {
    let mut files = Vec::new();
    walk(dir, "json", &mut files)?;
    let mut sidecars = Vec::new();
    let mut seen = HashMap::new();
    for path in files {
        let text = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let sidecar: SidecarIn = match serde_json::from_slice(&text) {
            Ok(s) => s,
            Err(e) => {
                skipped.push((path, format!("not a framesift sidecar ({e})")));
                continue;
            }
        };
        if sidecar.version > SIDECAR_VERSION {
            let why = format!(
                "sidecar version {} is newer than this framesift reads ({SIDECAR_VERSION}); use a newer framesift",
                sidecar.version
            );
            skipped.push((path, why));
            continue;
        }
        if let Some(first) = seen.insert(sidecar.id.clone(), path.clone()) {
            let why = format!("entry {} is also at {}", sidecar.id, first.display());
            skipped.push((path, why));
            continue;
        }
        sidecars.push(sidecar);
    }
    Ok(sidecars)
}

/// Each model's class map onto the label classes, its class names taken from the
/// detections its sidecars name (a class it never reported needs no name: no detection
/// of it is there to match), and the names it reported that the label classes lack.
fn class_maps<'a>(
    sidecars: &'a [SidecarIn],
    classes: &[String],
) -> (BTreeMap<&'a ModelIn, ClassMap>, Vec<Unnamed>) {
    let mut names: BTreeMap<&ModelIn, Vec<String>> = BTreeMap::new();
    for s in sidecars {
        let names = names.entry(&s.model).or_default();
        for d in &s.detections {
            let i = usize::from(d.class_id);
            if names.len() <= i {
                names.resize(i + 1, String::new());
            }
            names[i].clone_from(&d.class);
        }
    }
    let unnamed = names
        .iter()
        .filter_map(|(m, names)| {
            let lacking: Vec<(String, Option<String>)> = names
                .iter()
                .filter(|n| !n.is_empty() && !classes.contains(n))
                .map(|n| (n.clone(), spelled_like(n, classes).cloned()))
                .collect();
            (!lacking.is_empty()).then(|| ((*m).clone(), lacking))
        })
        .collect();
    let maps = names
        .into_iter()
        .map(|(m, names)| (m, ClassMap::between(&names, classes)))
        .collect();
    (maps, unnamed)
}

/// The label class spelled like `name` but for case, spaces, `-` and `_`.
fn spelled_like<'a>(name: &str, classes: &'a [String]) -> Option<&'a String> {
    let fold = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect()
    };
    let key = fold(name);
    classes.iter().find(|c| fold(c) == key)
}

/// Every file under `dir` ending in `.ext`, in name order; hidden directories (a spool's
/// `.meta`) are skipped.
fn walk(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?;
    paths.sort();
    for path in paths {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if path.is_dir() {
            if !hidden {
                walk(&path, ext, out)?;
            }
        } else if path.extension().and_then(|e| e.to_str()) == Some(ext) {
            out.push(path);
        }
    }
    Ok(())
}

/// A YOLO label file (`class x_center y_center width height` per line, the class an id
/// below `classes`, the rest normalised to 0..1) as boxes in frame pixels. Blank lines
/// and `#` comments are skipped; an empty file is a frame with nothing on it. Every bad
/// line is reported as `line N: ...`.
pub(crate) fn parse_labels(
    text: &str,
    classes: usize,
    (width, height): (u32, u32),
) -> Result<GroundTruth, Vec<String>> {
    let (w, h) = (width as f32, height as f32);
    let mut truth = GroundTruth::default();
    let mut problems = Vec::new();
    for (n, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = match fields.as_slice() {
            [class, rest @ ..] if rest.len() == 4 => class.parse::<u16>().ok().zip(
                rest.iter()
                    .map(|v| v.parse::<f32>().ok())
                    .collect::<Option<Vec<_>>>(),
            ),
            _ => None,
        };
        let Some((class_id, v)) = parsed else {
            problems.push(format!(
                "line {}: `{line}` is not a YOLO label; write `class x_center y_center width height`, the class a whole number and the rest from 0 to 1",
                n + 1
            ));
            continue;
        };
        if usize::from(class_id) >= classes {
            problems.push(format!(
                "line {}: class {class_id} is not in the class list ({classes} classes, ids 0 to {}); add its name to classes.txt",
                n + 1,
                classes.saturating_sub(1)
            ));
            continue;
        }
        let within = |x: f32| x.is_finite() && (-COORD_SLACK..=1.0 + COORD_SLACK).contains(&x);
        if !v.iter().all(|&x| within(x)) || v[2] <= 0.0 || v[3] <= 0.0 {
            problems.push(format!(
                "line {}: `{line}`: coordinates must be fractions of the image from 0 to 1, with width and height above 0",
                n + 1
            ));
            continue;
        }
        let (cx, cy, bw, bh) = (v[0] * w, v[1] * h, v[2] * w, v[3] * h);
        truth.boxes.push(TruthBox {
            class_id,
            x1: cx - bw / 2.0,
            y1: cy - bh / 2.0,
            x2: cx + bw / 2.0,
            y2: cy + bh / 2.0,
            occluded: false,
        });
    }
    if problems.is_empty() {
        Ok(truth)
    } else {
        Err(problems)
    }
}

/// Errors per frame of a set of frames.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Figures {
    pub frames: usize,
    pub misses_per_frame: f64,
    pub false_positives_per_frame: f64,
    pub errors_per_frame: f64,
    /// The share of frames with at least one miss.
    pub miss_precision: f64,
}

impl Figures {
    fn of(errors: &[Errors]) -> Figures {
        let n = errors.len().max(1) as f64;
        // A fold from 0.0: an empty f64 `sum` is -0.0, which JSON shows as such.
        let mean = |f: fn(&Errors) -> u32| {
            errors
                .iter()
                .map(|e| f64::from(f(e)))
                .fold(0.0, |a, b| a + b)
                / n
        };
        Figures {
            frames: errors.len(),
            misses_per_frame: mean(|e| e.misses),
            false_positives_per_frame: mean(|e| e.false_positives),
            errors_per_frame: mean(|e| e.total()),
            miss_precision: mean(|e| u32::from(e.misses > 0)),
        }
    }
}

/// One group's errors (serialization only, so `flatten` costs no error message).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GroupReport {
    pub name: &'static str,
    #[serde(flatten)]
    pub figures: Figures,
}

/// A lift (chosen ÷ control) with its bootstrap interval; `None` where it is undefined
/// (no control frames, or none of them with that kind of error).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Lift {
    pub lift: Option<f64>,
    pub interval: Option<[Option<f64>; 2]>,
}

/// The chosen frames that give one reason (or trigger).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReasonReport {
    pub name: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// The report for the frames of one model.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModelReport {
    pub model: ModelIn,
    pub groups: Vec<GroupReport>,
    pub lift_misses: Lift,
    pub lift_false_positives: Lift,
    pub lift_errors: Lift,
    /// Among the chosen frames, by reason, most frames first.
    pub reasons: Vec<ReasonReport>,
}

/// Measure each model's frames (a fleet part-way through a rollout runs two; their
/// errors are not comparable, so each gets its own lift).
pub(crate) fn report(returns: &Returns) -> Vec<ModelReport> {
    let mut by_model: BTreeMap<&ModelIn, Vec<&Labelled>> = BTreeMap::new();
    for f in &returns.frames {
        by_model.entry(&f.model).or_default().push(f);
    }
    by_model
        .into_iter()
        .map(|(model, frames)| {
            let errors_of = |g: Group| -> Vec<Errors> {
                frames
                    .iter()
                    .filter(|f| f.group == g)
                    .map(|f| f.errors)
                    .collect()
            };
            let groups = Group::ALL
                .iter()
                .map(|&g| GroupReport {
                    name: g.name(),
                    figures: Figures::of(&errors_of(g)),
                })
                .collect();
            let (chosen, control) = (errors_of(Group::Chosen), errors_of(Group::Control));
            let [lift_misses, lift_false_positives, lift_errors] = lifts(&chosen, &control);
            let mut why: BTreeMap<&str, Vec<Errors>> = BTreeMap::new();
            for f in frames.iter().filter(|f| f.group == Group::Chosen) {
                for w in &f.why {
                    why.entry(w).or_default().push(f.errors);
                }
            }
            let mut reasons: Vec<ReasonReport> = why
                .into_iter()
                .map(|(name, errors)| ReasonReport {
                    name: name.to_string(),
                    figures: Figures::of(&errors),
                })
                .collect();
            reasons.sort_by(|a, b| {
                b.figures
                    .frames
                    .cmp(&a.figures.frames)
                    .then(a.name.cmp(&b.name))
            });
            ModelReport {
                model: model.clone(),
                groups,
                lift_misses,
                lift_false_positives,
                lift_errors,
                reasons,
            }
        })
        .collect()
}

/// Misses, false positives and errors of the chosen frames over the control frames'.
fn lifts(chosen: &[Errors], control: &[Errors]) -> [Lift; 3] {
    const KINDS: [fn(&Errors) -> u32; 3] = [|e| e.misses, |e| e.false_positives, |e| e.total()];
    let mean = |set: &[Errors], kind: fn(&Errors) -> u32| {
        set.iter().map(|e| f64::from(kind(e))).sum::<f64>() / set.len() as f64
    };
    let ratio = |c: f64, k: f64| if k > 0.0 { c / k } else { f64::INFINITY };
    if chosen.is_empty() || control.is_empty() {
        return [Lift::default(); 3];
    }
    let point = KINDS.map(|kind| ratio(mean(chosen, kind), mean(control, kind)));
    let mut rng = Rng::new(0x6c69_6674); // "lift": the same returns give the same report
    let mut draws: [Vec<f64>; 3] = Default::default();
    let resample = |set: &[Errors], rng: &mut Rng| -> [f64; 3] {
        let mut sums = [0.0; 3];
        for _ in 0..set.len() {
            let e = &set[rng.below(set.len() as u32) as usize];
            for (sum, kind) in sums.iter_mut().zip(KINDS) {
                *sum += f64::from(kind(e));
            }
        }
        sums.map(|s| s / set.len() as f64)
    };
    for _ in 0..DRAWS {
        let c = resample(chosen, &mut rng);
        let k = resample(control, &mut rng);
        for i in 0..3 {
            draws[i].push(ratio(c[i], k[i]));
        }
    }
    let finite = |x: f64| x.is_finite().then_some(x);
    std::array::from_fn(|i| {
        let d = &mut draws[i];
        d.sort_by(f64::total_cmp);
        let tail = (1.0 - INTERVAL) / 2.0;
        let at = |q: f64| d[((q * (d.len() - 1) as f64).round() as usize).min(d.len() - 1)];
        Lift {
            lift: finite(point[i]),
            interval: Some([finite(at(tail)), finite(at(1.0 - tail))]),
        }
    })
}

/// Labelled control frames `lift --tune` needs: with fewer, the few frames with errors
/// among the top-ranked ones cannot tell weights apart.
pub(crate) const MIN_TUNING_CONTROL: usize = 200;
/// The top shares of the control frames, by value, whose errors `lift --tune` weighs:
/// about the share a few percent of budget hands the keeper.
const TOP_SHARES: [f64; 3] = [0.05, 0.1, 0.2];
/// Seeds the split into halves that checks the tuned weights.
const HALVES_SEED: u64 = 0x5eed_ba1f;

/// One labelled control frame as `lift --tune` sees it: its signals and its errors.
pub(crate) type Sample = ([f32; signals::COUNT], Errors);

/// Each model's labelled control frames, the model with the most first.
pub(crate) fn control_samples(returns: &Returns) -> Vec<(ModelIn, Vec<Sample>)> {
    let mut by_model: BTreeMap<&ModelIn, Vec<Sample>> = BTreeMap::new();
    for f in returns.frames.iter().filter(|f| f.group == Group::Control) {
        by_model
            .entry(&f.model)
            .or_default()
            .push((f.signals, f.errors));
    }
    let mut out: Vec<_> = by_model
        .into_iter()
        .map(|(model, samples)| (model.clone(), samples))
        .collect();
    out.sort_by_key(|(_, samples)| std::cmp::Reverse(samples.len()));
    out
}

/// The signals' weighted sum, added in registration order as the policy adds them.
fn weighted(values: &[f32; signals::COUNT], weights: &[f32; signals::COUNT]) -> f32 {
    values.iter().zip(weights).map(|(v, w)| v * w).sum()
}

/// Of the frames with no trigger, how many carry a value other than `weights` make of
/// their signals (or that times `drift_boost`, for a camera that was drifting), and how
/// many were checked: a mismatch means the carts ran other weights than those
/// `lift --tune` starts from.
pub(crate) fn value_mismatches(
    returns: &Returns,
    weights: &[f32; signals::COUNT],
    drift_boost: f32,
) -> (usize, usize) {
    let mut checked = 0;
    let mut mismatched = 0;
    // Sidecars write f32 in full: only rounding separates equal weights.
    let equal = |a: f32, b: f32| (a - b).abs() <= 1e-3 * b.abs().max(1.0);
    for f in &returns.frames {
        let Some(value) = f.untriggered_value else {
            continue;
        };
        let sum = weighted(&f.signals, weights);
        checked += 1;
        // A frame of a drifting camera carries its value times [drift] boost.
        if !equal(sum, value) && !equal(sum * drift_boost, value) {
            mismatched += 1;
        }
    }
    (mismatched, checked)
}

/// What the frames `weights` rank first hold: misses and errors per frame among the top
/// [`TOP_SHARES`] of `samples` by value over those of all of them, averaged over the
/// shares. Control frames are a uniform sample of what the cameras saw, so this is the
/// lift of what the weights would hand the keeper (near-duplicate suppression and keep
/// windows aside, which need the whole stream).
pub(crate) fn ranked_lifts(samples: &[Sample], weights: &[f32; signals::COUNT]) -> Lifts {
    let mut ranked: Vec<(f32, Errors)> = samples
        .iter()
        .map(|(values, errors)| (weighted(values, weights), *errors))
        .collect();
    // Stable: frames of equal value keep the order they were read in.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mean = |set: &[(f32, Errors)], kind: fn(&Errors) -> u32| {
        set.iter().map(|(_, e)| f64::from(kind(e))).sum::<f64>() / set.len().max(1) as f64
    };
    let lift = |kind: fn(&Errors) -> u32| {
        let all = mean(&ranked, kind);
        if all == 0.0 {
            return 1.0;
        }
        TOP_SHARES
            .iter()
            .map(|share| {
                let top = ((share * ranked.len() as f64).round() as usize).clamp(1, ranked.len());
                mean(&ranked[..top], kind) / all
            })
            .sum::<f64>()
            / TOP_SHARES.len() as f64
    };
    Lifts {
        misses: lift(|e| e.misses),
        errors: lift(|e| e.total()),
    }
}

/// `lift --tune`'s result: the weights searched on every control frame, and whether
/// such weights hold on frames they were not searched on — each half of the frames
/// ranked by weights searched on the other half (the two halves' mean).
#[derive(Debug, Clone)]
pub(crate) struct ControlTuned {
    pub tuned: Tuned,
    pub held_out_before: Lifts,
    pub held_out_after: Lifts,
}

/// Search the signal weights, from `before`, that rank the control frames with errors
/// first (the search and its rules are `evaluate --tune`'s, [`tune::search`]).
pub(crate) fn tune_on_control(
    before: [f32; signals::COUNT],
    samples: &[Sample],
    objective: Objective,
) -> ControlTuned {
    let mut rng = Rng::new(HALVES_SEED);
    let mut halves: [Vec<Sample>; 2] = Default::default();
    for sample in samples {
        halves[rng.below(2) as usize].push(*sample);
    }
    let mut held_out = [(0.0, 0.0); 2];
    for (fit, check) in [(0, 1), (1, 0)] {
        let tuned = tune::search(
            before,
            |w| ranked_lifts(&halves[fit], w),
            objective,
            |_, _| {},
        );
        for (sum, weights) in held_out.iter_mut().zip([&before, &tuned.after]) {
            let l = ranked_lifts(&halves[check], weights);
            sum.0 += l.misses / 2.0;
            sum.1 += l.errors / 2.0;
        }
    }
    let [held_out_before, held_out_after] =
        held_out.map(|(misses, errors)| Lifts { misses, errors });
    ControlTuned {
        tuned: tune::search(before, |w| ranked_lifts(samples, w), objective, |_, _| {}),
        held_out_before,
        held_out_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_group_has_figures_of_zero_not_minus_zero() {
        let f = Figures::of(&[]);
        let json = serde_json::to_string(&f).expect("json");
        assert!(!json.contains("-0"), "{json}");
    }

    fn errors(misses: u32, false_positives: u32) -> Errors {
        Errors {
            misses,
            false_positives,
        }
    }

    fn at(name: &str) -> usize {
        signals::NAMES
            .iter()
            .position(|n| *n == name)
            .expect("a signal")
    }

    #[test]
    fn control_samples_come_per_model_the_model_with_the_most_first() {
        let model = |sha: &str| ModelIn {
            id: "m".into(),
            version: "1".into(),
            sha256: sha.into(),
        };
        let frame = |sha: &str, group| Labelled {
            model: model(sha),
            group,
            errors: errors(1, 0),
            why: Vec::new(),
            signals: [0.5; signals::COUNT],
            untriggered_value: None,
        };
        let mut returns = Returns::default();
        for (sha, control, chosen) in [("aa", 2, 9), ("bb", 3, 0)] {
            returns
                .frames
                .extend((0..control).map(|_| frame(sha, Group::Control)));
            returns
                .frames
                .extend((0..chosen).map(|_| frame(sha, Group::Chosen)));
        }
        let samples = control_samples(&returns);
        let counts: Vec<(&str, usize)> = samples
            .iter()
            .map(|(m, s)| (m.sha256.as_str(), s.len()))
            .collect();
        assert_eq!(counts, [("bb", 3), ("aa", 2)], "control frames only");
    }

    #[test]
    fn a_value_the_drift_boost_raised_is_not_a_mismatch() {
        let mut signals_of = [0.0; signals::COUNT];
        signals_of[at("uncertainty")] = 0.5;
        let mut weights = [0.0; signals::COUNT];
        weights[at("uncertainty")] = 2.0;
        let frame = |value: f32| Labelled {
            model: ModelIn {
                id: "m".into(),
                version: "1".into(),
                sha256: "aa".into(),
            },
            group: Group::Chosen,
            errors: errors(0, 0),
            why: Vec::new(),
            signals: signals_of,
            untriggered_value: Some(value),
        };
        // The weighted sum (1.0), the same times a boost of 1.5, and another weighting.
        let returns = Returns {
            frames: vec![frame(1.0), frame(1.5), frame(0.7)],
            ..Returns::default()
        };
        assert_eq!(value_mismatches(&returns, &weights, 1.5), (1, 3));
        assert_eq!(value_mismatches(&returns, &weights, 1.0), (2, 3));
    }

    #[test]
    fn ranked_lifts_weigh_the_errors_of_the_frames_ranked_first() {
        // 100 frames; the last 10 hold 2 misses each and are the only uncertain ones.
        let samples: Vec<Sample> = (0..100)
            .map(|i| {
                let mut values = [0.0; signals::COUNT];
                let misses = if i >= 90 { 2 } else { 0 };
                values[at("uncertainty")] = if misses > 0 { 0.9 } else { 0.0 };
                values[at("exposure")] = 0.5;
                (values, errors(misses, 0))
            })
            .collect();
        let mut weights = [0.0; signals::COUNT];
        weights[at("uncertainty")] = 1.0;
        // Top 5 and top 10 all have 2 misses (10× the mean of 0.2); the top 20 half.
        let l = ranked_lifts(&samples, &weights);
        assert!((l.misses - (10.0 + 10.0 + 5.0) / 3.0).abs() < 1e-9, "{l:?}");
        assert_eq!(l.misses, l.errors);
        // Ranked by a signal that says nothing, ties keep the read order: none first.
        weights = [0.0; signals::COUNT];
        weights[at("exposure")] = 1.0;
        assert_eq!(ranked_lifts(&samples, &weights).misses, 0.0);
        // No errors at all: nothing to lift.
        let clean: Vec<Sample> = samples.iter().map(|(v, _)| (*v, errors(0, 0))).collect();
        assert_eq!(ranked_lifts(&clean, &weights).misses, 1.0);
    }

    #[test]
    fn tuning_on_control_frames_raises_the_signal_that_finds_errors() {
        // Uncertainty is high where the model misses; exposure on a random third.
        let mut rng = Rng::new(7);
        let samples: Vec<Sample> = (0..600)
            .map(|_| {
                let misses = u32::from(rng.below(5) == 0) * (1 + rng.below(2));
                let mut values = [0.0; signals::COUNT];
                values[at("uncertainty")] =
                    if misses > 0 { 0.6 } else { 0.1 } + 0.01 * rng.below(10) as f32;
                values[at("exposure")] = if rng.below(3) == 0 { 0.9 } else { 0.0 };
                (values, errors(misses, 0))
            })
            .collect();
        let mut before = [0.0; signals::COUNT];
        before[at("uncertainty")] = 0.2;
        before[at("exposure")] = 2.0;
        let found = tune_on_control(before, &samples, Objective::Misses);
        let after = found.tuned.after;
        assert!(
            after[at("uncertainty")] > after[at("exposure")],
            "{after:?}"
        );
        assert!(
            found.tuned.lifts_after.misses > found.tuned.lifts_before.misses,
            "{found:?}"
        );
        assert!(
            found.held_out_after.misses > found.held_out_before.misses,
            "{found:?}"
        );
        assert_eq!(ranked_lifts(&samples, &after), found.tuned.lifts_after);
        // A signal configured off stays off.
        assert!(
            after
                .iter()
                .zip(before)
                .all(|(a, b)| (*a > 0.0) == (b > 0.0))
        );
        // The same frames give the same weights.
        assert_eq!(
            tune_on_control(before, &samples, Objective::Misses)
                .tuned
                .after,
            after
        );
    }

    #[test]
    fn yolo_labels_become_pixel_boxes_and_bad_lines_are_all_named() {
        let t = parse_labels(
            "# a comment\n\n0 0.5 0.5 0.25 0.5\n2 0.1 0.2 0.1 0.1\n",
            3,
            (400, 200),
        )
        .expect("valid");
        assert_eq!(t.boxes.len(), 2);
        let b = t.boxes[0];
        assert_eq!(
            (b.class_id, b.x1, b.y1, b.x2, b.y2),
            (0, 150.0, 50.0, 250.0, 150.0)
        );
        assert_eq!(t.boxes[1].class_id, 2);
        // A byte-order mark (editors on Windows write one) is not part of the line.
        let marked = parse_labels("\u{feff}1 0.5 0.5 0.25 0.5\r\n", 3, (400, 200)).expect("valid");
        assert_eq!(marked.boxes[0].class_id, 1);
        // An empty file: a labelled frame with nothing on it.
        assert!(
            parse_labels("", 3, (400, 200))
                .expect("valid")
                .boxes
                .is_empty()
        );

        let bad = parse_labels(
            "0 0.5 0.5 0.2\n5 0.5 0.5 0.2 0.2\n1 0.5 1.5 0.2 0.2\n1 0.5 0.5 0 0.2\ncat 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n",
            3,
            (400, 200),
        )
        .expect_err("five bad lines");
        assert_eq!(bad.len(), 5, "{bad:#?}");
        assert!(
            bad[0].starts_with("line 1:") && bad[0].contains("x_center"),
            "{}",
            bad[0]
        );
        assert!(
            bad[1].starts_with("line 2: class 5") && bad[1].contains("classes.txt"),
            "{}",
            bad[1]
        );
        assert!(
            bad[2].starts_with("line 3:") && bad[2].contains("from 0 to 1"),
            "{}",
            bad[2]
        );
        assert!(bad[3].starts_with("line 4:"), "{}", bad[3]);
        assert!(bad[4].starts_with("line 5:"), "{}", bad[4]);
    }

    #[test]
    fn the_lift_divides_the_chosen_frames_errors_by_the_control_samples() {
        // Control: 1 error a frame (misses 0.5, false positives 0.5); chosen: 3 (2 + 1).
        let control = [errors(1, 0), errors(0, 1), errors(1, 0), errors(0, 1)];
        let chosen = [errors(2, 1), errors(2, 1), errors(2, 1)];
        let [m, fp, e] = lifts(&chosen, &control);
        assert_eq!(m.lift, Some(4.0));
        assert_eq!(fp.lift, Some(2.0));
        assert_eq!(e.lift, Some(3.0));
        // The chosen frames are all alike, so the interval comes from the control sample:
        // its error count never moves (1 a frame whatever the draw), its misses do.
        assert_eq!(e.interval, Some([Some(3.0), Some(3.0)]));
        let [lo, hi] = m.interval.expect("interval");
        let (lo, hi) = (lo.expect("finite"), hi);
        assert!((2.0..4.0).contains(&lo), "{lo}");
        // A draw of four control frames without a miss has probability 1/16: the upper
        // end of a 90 % interval is past every finite ratio.
        assert_eq!(hi, None);
    }

    #[test]
    fn the_interval_narrows_as_control_frames_come_back_and_repeats_itself() {
        let control = |n: usize| -> Vec<Errors> {
            (0..n).map(|i| errors(u32::from(i % 2 == 0), 0)).collect()
        };
        let chosen: Vec<Errors> = (0..200)
            .map(|i| errors(1 + u32::from(i % 4 == 0), 0))
            .collect();
        let width = |n: usize| {
            let [m, ..] = lifts(&chosen, &control(n));
            let [lo, hi] = m.interval.expect("interval");
            hi.expect("finite") - lo.expect("finite")
        };
        assert!(
            width(400) < width(40) / 2.0,
            "{} vs {}",
            width(400),
            width(40)
        );
        assert_eq!(
            lifts(&chosen, &control(40))[0].interval,
            lifts(&chosen, &control(40))[0].interval
        );
        // Lift of 1.25 / 0.5.
        assert_eq!(lifts(&chosen, &control(40))[0].lift, Some(2.5));
    }

    #[test]
    fn no_control_frames_no_lift() {
        let [m, fp, e] = lifts(&[errors(1, 1)], &[]);
        for l in [m, fp, e] {
            assert_eq!(l.lift, None);
            assert_eq!(l.interval, None);
        }
        // Control frames without false positives: that lift is undefined, the others not.
        let [m, fp, _] = lifts(&[errors(1, 1)], &[errors(1, 0)]);
        assert_eq!(m.lift, Some(1.0));
        assert_eq!(fp.lift, None);
    }
}
