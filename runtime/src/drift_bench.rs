//! `framesift bench --drift`: how fast the drift monitor notices a changed world, and
//! how often it cries wolf on an unchanged one, on synthetic streams run through the
//! real model.
//!
//! Each case calibrates a reference on one synthetic cart (`seed`, 1 by default: its
//! basket and background), then feeds the monitor scenes of the same cart it has not
//! shown yet: `before` frames like the reference, then `after` frames of the changed
//! world.
//! Reported: frames after the change until the camera leaves `stable`, and any band
//! change before it (a false alarm). The stationary runs feed `stationary` frames like
//! the reference: fresh scenes scored once, then drawn again as whole scenes, in random
//! order, to reach the count (a block bootstrap: frames of a scene are correlated,
//! scenes are the independent draws).
//!
//! Every case and stationary run is judged twice on the same frames, side by side: with
//! each statistic's own bands (`own`, what a reference of the current format gives) and
//! with every statistic sharing the noisiest one's (`shared`, what a format 1 reference
//! gives).

use std::time::Instant;

use calibration::Band;
use serde::Serialize;

use crate::{
    calibrate::{CalibrateOptions, Scorer, reference_from},
    capture::{
        FrameSource, Next,
        synthetic::{Rng, Split, SyntheticConfig, SyntheticSource},
    },
    config::Config,
    drift::{LoadedReference, monitor::Monitor, stats::Sample},
    frame::Frame,
    infer::SharedModel,
    policy::Scores,
};

#[derive(Debug, Clone)]
pub(crate) struct DriftBenchOptions {
    /// Frames each reference is calibrated on.
    pub reference: u64,
    /// Frames like the reference before each change, and of the changed world after.
    pub before: u64,
    pub after: u64,
    /// Frames of each stationary run, and fresh frames scored for it.
    pub stationary: u64,
    pub stationary_fresh: u64,
    /// The synthetic cart.
    pub seed: u64,
}

/// One change case.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Case {
    pub name: &'static str,
    pub reference: &'static str,
    /// `own` or `shared` ([`RULES`]).
    pub bands: &'static str,
    /// Frames after the change until the band left `stable`; `None`: not within `after`.
    pub detected_after: Option<u64>,
    /// The band, worst statistic and its JS and PSI at the end of the stream.
    pub band: Band,
    pub worst: String,
    pub js: f64,
    pub js_moderate: f64,
    pub psi: f64,
    /// Band changes before the change happened.
    pub false_alarms: u64,
}

/// One stationary run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stationary {
    pub reference: &'static str,
    /// `own` or `shared` ([`RULES`]).
    pub bands: &'static str,
    pub frames: u64,
    pub fresh_frames: u64,
    pub false_alarms: u64,
    /// The verdict closest to an alarm: its worst statistic, JS and that statistic's
    /// moderate threshold.
    pub closest: String,
    pub js: f64,
    pub js_moderate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct DriftBenchReport {
    /// The synthetic cart.
    pub seed: u64,
    pub window_frames: usize,
    pub min_frames: usize,
    pub cases: Vec<Case>,
    pub stationary: Vec<Stationary>,
    /// The inference thread's share: building a sample and `try_send`, per frame.
    pub tap_ns_p50: f64,
    pub tap_ns_p99: f64,
}

/// A change applied to every frame after the switch.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// Dimmer, warmer light (gains 0.65 / 0.55 / 0.45).
    Lighting,
    /// The camera moved: the view zooms 1.4× into its lower left.
    Angle,
    /// The stream switches split (studio ↔ store).
    Split,
}

const WIDTH: u32 = 640;
const HEIGHT: u32 = 360;

/// The band rules each case is judged by: each statistic's own bands, and the noisiest
/// statistic's shared by all.
const RULES: [&str; 2] = ["own", "shared"];

/// Where each part of the benchmark starts in the cart's frame sequence, so no scene is
/// used twice.
const REFERENCE_AT: u64 = 0;
const STREAM_AT: u64 = 10_000_000;
const STATIONARY_AT: u64 = 20_000_000;

/// The benchmark's cart `seed` in `split`, from frame `at`.
fn source(seed: u64, split: Split, at: u64) -> SyntheticSource {
    SyntheticSource::new(SyntheticConfig {
        width: WIDTH,
        height: HEIGHT,
        split,
        seed,
        ..SyntheticConfig::default()
    })
    .starting_at(at)
}

/// Score `frames` frames of `source`, applying `change` to each.
fn score(
    scorer: &mut Scorer,
    model: &SharedModel,
    source: &mut SyntheticSource,
    frames: u64,
    change: Option<Change>,
    scratch: &mut Vec<u8>,
    progress: &mut impl FnMut(&str),
) -> anyhow::Result<Vec<(Scores, Sample)>> {
    let mut out = Vec::with_capacity(frames as usize);
    while (out.len() as u64) < frames {
        if source.next_frame(&mut scorer.slot.frame)? == Next::End {
            break;
        }
        match change {
            Some(Change::Lighting) => dim(&mut scorer.slot.frame),
            Some(Change::Angle) => zoom(&mut scorer.slot.frame, scratch),
            Some(Change::Split) | None => {}
        }
        if let Some(scored) = scorer.score(model)? {
            out.push(scored);
        }
        if out.len() % 500 == 0 {
            progress(&format!("{} frames scored", out.len()));
        }
    }
    Ok(out)
}

fn dim(frame: &mut Frame) {
    const GAIN: [u16; 3] = [166, 141, 115]; // ×256: 0.65, 0.55, 0.45
    let n = frame.width as usize * frame.height as usize * 3;
    for px in frame.rgb[..n].chunks_exact_mut(3) {
        for (v, g) in px.iter_mut().zip(GAIN) {
            *v = ((u16::from(*v) * g) >> 8) as u8;
        }
    }
}

fn zoom(frame: &mut Frame, scratch: &mut Vec<u8>) {
    let (w, h) = (frame.width as usize, frame.height as usize);
    scratch.clear();
    scratch.extend_from_slice(&frame.rgb[..w * h * 3]);
    // Nearest-neighbour 1.4× zoom anchored at the lower-left corner.
    for y in 0..h {
        let sy = (h - 1) - ((h - 1 - y) * 5 / 7);
        for x in 0..w {
            let sx = x * 5 / 7;
            let (d, s) = ((y * w + x) * 3, (sy * w + sx) * 3);
            frame.rgb[d..d + 3].copy_from_slice(&scratch[s..s + 3]);
        }
    }
}

/// Run the benchmark.
pub(crate) fn run(
    config: &Config,
    model: &SharedModel,
    opts: &DriftBenchOptions,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<DriftBenchReport> {
    let info = model.lock().unwrap_or_else(|p| p.into_inner()).info.clone();
    let mut scorer = Scorer::new(config, model, (WIDTH, HEIGHT))?;
    let mut scratch = Vec::new();
    let drift = &config.drift;
    let mut references = Vec::new();
    for split in [Split::Studio, Split::Store] {
        progress(&format!(
            "calibrating on {} {} frames",
            opts.reference,
            split.name()
        ));
        let scored = score(
            &mut scorer,
            model,
            &mut source(opts.seed, split, REFERENCE_AT),
            opts.reference,
            None,
            &mut scratch,
            &mut progress,
        )?;
        let cal = reference_from(
            config,
            &info,
            &scored,
            &CalibrateOptions {
                frames: None,
                target_rate: 0.02,
                describe: format!("synthetic {}", split.name()),
            },
        );
        let shared = calibration::Reference {
            format: calibration::OLDEST_FORMAT,
            ..cal.reference.clone()
        };
        references.push([
            LoadedReference::from_reference(&cal.reference, drift),
            LoadedReference::from_reference(&shared, drift),
        ]);
    }
    let reference = |split: Split| &references[usize::from(split == Split::Store)];

    let cases = [
        ("lighting shift", Split::Studio, Change::Lighting),
        ("camera angle", Split::Studio, Change::Angle),
        ("store after studio", Split::Studio, Change::Split),
        ("studio after store", Split::Store, Change::Split),
    ];
    let mut report_cases = Vec::new();
    for (name, split, change) in cases {
        progress(&format!("case: {name}"));
        let mut stream = source(opts.seed, split, STREAM_AT);
        let mut samples = score(
            &mut scorer,
            model,
            &mut stream,
            opts.before,
            None,
            &mut scratch,
            &mut progress,
        )?;
        let mut changed = match change {
            Change::Split => source(
                opts.seed,
                if split == Split::Studio {
                    Split::Store
                } else {
                    Split::Studio
                },
                STREAM_AT + opts.before,
            ),
            _ => stream,
        };
        samples.extend(score(
            &mut scorer,
            model,
            &mut changed,
            opts.after,
            Some(change),
            &mut scratch,
            &mut progress,
        )?);
        for (bands, r) in RULES.into_iter().zip(reference(split)) {
            let mut monitor = Monitor::new(drift.window_frames, drift.min_frames);
            let (mut detected_after, mut false_alarms) = (None, 0);
            for (i, (_, sample)) in samples.iter().enumerate() {
                let change = monitor.push(sample, r.baselines());
                let i = i as u64;
                if change.is_some() && i < opts.before {
                    false_alarms += 1;
                }
                if i >= opts.before && detected_after.is_none() && monitor.band != Band::Stable {
                    detected_after = Some(i - opts.before + 1);
                }
            }
            let verdict = monitor.verdict;
            report_cases.push(Case {
                name,
                reference: split.name(),
                bands,
                detected_after,
                band: monitor.band,
                worst: verdict.map(|v| v.worst.to_string()).unwrap_or_default(),
                js: verdict.map_or(0.0, |v| v.js),
                js_moderate: verdict.map_or(0.0, |v| v.js_moderate),
                psi: verdict.map_or(0.0, |v| v.psi),
                false_alarms,
            });
        }
    }

    let mut stationary = Vec::new();
    for split in [Split::Studio, Split::Store] {
        progress(&format!(
            "stationary {}: scoring fresh scenes",
            split.name()
        ));
        let fresh = score(
            &mut scorer,
            model,
            &mut source(opts.seed, split, STATIONARY_AT),
            opts.stationary_fresh,
            None,
            &mut scratch,
            &mut progress,
        )?;
        let per_scene = SyntheticConfig::default().frames_per_scene.max(1) as usize;
        let scenes: Vec<&[(Scores, Sample)]> = fresh.chunks(per_scene).collect();
        for (bands, r) in RULES.into_iter().zip(reference(split)) {
            let mut monitor = Monitor::new(drift.window_frames, drift.min_frames);
            // The same draws for both rules.
            let mut rng = Rng::new(0xd21f7);
            let (mut fed, mut false_alarms) = (0u64, 0u64);
            let mut closest: Option<crate::drift::monitor::Verdict> = None;
            while fed < opts.stationary && !scenes.is_empty() {
                let scene = scenes[rng.below(scenes.len() as u32) as usize];
                for (_, sample) in scene {
                    false_alarms += u64::from(monitor.push(sample, r.baselines()).is_some());
                    if monitor.take_fresh()
                        && let Some(v) = monitor.verdict
                        && closest.is_none_or(|c| v.js / v.js_moderate > c.js / c.js_moderate)
                    {
                        closest = Some(v);
                    }
                    fed += 1;
                }
            }
            stationary.push(Stationary {
                reference: split.name(),
                bands,
                frames: fed,
                fresh_frames: fresh.len() as u64,
                false_alarms,
                closest: closest.map(|v| v.worst.to_string()).unwrap_or_default(),
                js: closest.map_or(0.0, |v| v.js),
                js_moderate: closest.map_or(0.0, |v| v.js_moderate),
            });
        }
    }

    // The inference thread's part, as it runs there: a sample and a try_send into a
    // queue the drift stage keeps drained.
    let (tx, rx) = crossbeam_channel::bounded::<Sample>(crate::drift::QUEUE);
    let mut times = Vec::with_capacity(100_000);
    let detections = [crate::infer::Detection {
        class_id: 0,
        score: 0.8,
        second_score: 0.1,
        x1: 0.0,
        y1: 0.0,
        x2: 10.0,
        y2: 10.0,
    }; 6];
    let stats = scorer.slot.stats;
    for _ in 0..100_000 {
        let t0 = Instant::now();
        let sample = Sample::new(0, &stats, std::hint::black_box(&detections), 0.25);
        let _ = tx.try_send(sample);
        times.push(t0.elapsed().as_nanos() as f64);
        let _ = rx.try_recv();
    }
    times.sort_by(f64::total_cmp);
    Ok(DriftBenchReport {
        seed: opts.seed,
        window_frames: drift.window_frames,
        min_frames: drift.min_frames,
        cases: report_cases,
        stationary,
        tap_ns_p50: times[times.len() / 2],
        tap_ns_p99: times[times.len() * 99 / 100],
    })
}

impl DriftBenchReport {
    pub(crate) fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "framesift bench --drift (cart {}, {}-frame windows, verdicts from {} frames, every {} frames)",
            self.seed,
            self.window_frames,
            self.min_frames,
            (self.window_frames / 10).max(1)
        );
        let _ = writeln!(
            t,
            "  case                 reference bands   detected after  band at end   worst: JS (moderate from), PSI          false alarms before"
        );
        for c in &self.cases {
            let _ = writeln!(
                t,
                "  {:<20} {:<9} {:<7} {:>14} {:<13} {:<39} {}",
                c.name,
                c.reference,
                c.bands,
                c.detected_after
                    .map_or("not detected".to_string(), |n| format!("{n} frames")),
                c.band.to_string(),
                format!(
                    "{}: {:.3} ({:.3}), {:.3}",
                    c.worst, c.js, c.js_moderate, c.psi
                ),
                c.false_alarms
            );
        }
        for s in &self.stationary {
            let _ = writeln!(
                t,
                "  stationary {:<7} {:<7} {} frames ({} fresh, drawn as whole scenes): {} false alarms; closest: {} at JS {:.4}, moderate from {:.4}",
                s.reference,
                s.bands,
                s.frames,
                s.fresh_frames,
                s.false_alarms,
                s.closest,
                s.js,
                s.js_moderate
            );
        }
        let _ = writeln!(
            t,
            "  inference-thread cost  sample + try_send: p50 {:.0} ns, p99 {:.0} ns per frame",
            self.tap_ns_p50, self.tap_ns_p99
        );
        t
    }
}
