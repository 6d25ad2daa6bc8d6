//! `framesift calibrate`: run the model over a reference sample and write what the drift
//! monitor compares cameras with — each drift statistic's histogram, the alert bands
//! for its window, and the value thresholds that keep a target share of such frames.
//!
//! It runs the same per-frame code as the pipeline (the capture stage's [`Preparer`],
//! the inference stage's [`Inferer`] and [`Policy`], the drift monitor's [`Sample`]), one
//! frame at a time on the calling thread, so a reference and a running camera bin
//! their frames identically.

use std::{fmt::Write as _, path::Path};

use calibration::{
    DerivedBands, Histogram, ModelStamp, Reference, StatReference, derive_bands, threshold_for_rate,
};

use crate::{
    capture::{Next, Preparer, Slot, SourceConfig, SourceError, Thumbnail},
    config::Config,
    drift::stats::{STATS, Sample},
    infer::{Inferer, ModelInfo, SharedModel},
    ops::metrics::Metrics,
    policy::{Policy, Scores, signals},
};

/// What to calibrate for.
#[derive(Debug, Clone)]
pub(crate) struct CalibrateOptions {
    /// Stop after this many frames (`None`: the source's end).
    pub frames: Option<u64>,
    /// The share of reference frames the thresholds keep.
    pub target_rate: f64,
    /// What the sample is, for the file's `source`.
    pub describe: String,
}

/// A finished calibration: the reference file's content and each frame's scores.
pub(crate) struct Calibration {
    pub reference: Reference,
    /// Each frame's value, and each signal's value, in frame order.
    pub values: Vec<f32>,
    pub signals: Vec<[f32; signals::COUNT]>,
    /// Each frame's mean luma, in frame order (for the exposure signal's range).
    pub luma_means: Vec<f32>,
    /// Frames the source could not give (corrupt files), skipped.
    pub skipped: u64,
    pub derived: DerivedBands,
}

/// The key of a signal's threshold in the reference's `thresholds`.
pub(crate) fn signal_key(name: &str) -> String {
    format!("signals.{name}")
}

/// The pipeline's per-frame work on the calling thread: prepare, infer, score, sample.
pub(crate) struct Scorer {
    preparer: Preparer,
    pub slot: Slot,
    inferer: Inferer,
    policy: Policy,
    metrics: Metrics,
    confidence: f32,
    /// Time spent in each signal, when set to `Some` (zeros) by the caller.
    pub signal_time: Option<[std::time::Duration; signals::COUNT]>,
}

impl Scorer {
    /// A scorer for `model` with `config`'s thresholds and signals, for frames of up to
    /// `frame_size` (it grows for larger ones).
    pub(crate) fn new(
        config: &Config,
        model: &SharedModel,
        frame_size: (u32, u32),
    ) -> anyhow::Result<Scorer> {
        let model = model.lock().unwrap_or_else(|p| p.into_inner());
        let info = &model.info;
        let params = config.model.decode_params(
            config
                .policy
                .lowest_score(config.model.confidence_threshold),
        );
        let mut policy = Policy::new(&config.policy);
        if config.drift.reference.is_some() {
            let reference = crate::drift::LoadedReference::load(&config.drift, info)?;
            policy.use_reference(&reference.views);
        }
        Ok(Scorer {
            preparer: Preparer::new(info),
            slot: Slot::new(
                frame_size.0,
                frame_size.1,
                3 * (info.input_width * info.input_height) as usize,
            ),
            inferer: Inferer::new(&model, params)?,
            policy,
            metrics: Metrics::default(),
            confidence: config.model.confidence_threshold,
            signal_time: None,
        })
    }

    /// The last scored frame's detections, best first (including those below the
    /// confidence threshold a signal asked the decoder for).
    pub(crate) fn detections(&self) -> &[crate::infer::Detection] {
        self.inferer.detections()
    }

    /// Score the frame in `self.slot.frame`; `None` when it cannot be prepared.
    pub(crate) fn score(
        &mut self,
        model: &SharedModel,
    ) -> anyhow::Result<Option<(Scores, Sample)>> {
        if let Err(e) = self.preparer.prepare(&mut self.slot) {
            tracing::warn!("skipped a frame: {e}");
            return Ok(None);
        }
        self.inferer.infer(model, &self.slot, &self.metrics)?;
        let facts = self.inferer.facts(&self.slot);
        let scores = match &mut self.signal_time {
            Some(spent) => self.policy.score_timed(&facts, spent),
            None => self.policy.score(&facts),
        };
        let sample = Sample::new(
            0,
            &self.slot.stats,
            self.inferer.detections(),
            self.confidence,
        );
        Ok(Some((scores, sample)))
    }
}

/// Run `model` over the first camera of `config`, calling `progress(frames done)`.
pub(crate) fn calibrate(
    config: &Config,
    model: &SharedModel,
    opts: &CalibrateOptions,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Calibration> {
    let info = model.lock().unwrap_or_else(|p| p.into_inner()).info.clone();
    let (mut source, frame_size) = crate::capture::open_first_camera(config, &info)?;
    let mut scorer = Scorer::new(config, model, frame_size)?;
    let (mut scored, mut skipped) = (Vec::new(), 0u64);
    let mut views = Views::new();
    while opts.frames.is_none_or(|n| (scored.len() as u64) < n) {
        match source.next_frame(&mut scorer.slot.frame) {
            Ok(Next::Frame) => {}
            Ok(Next::End) => break,
            Err(e @ SourceError::Fatal(_)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!("calibrate: {e}");
                skipped += 1;
                continue;
            }
        }
        match scorer.score(model)? {
            Some(frame) => {
                scored.push(frame);
                views.offer(scorer.slot.stats.thumbnail);
            }
            None => skipped += 1,
        }
        progress(scored.len() as u64);
    }
    anyhow::ensure!(
        !scored.is_empty(),
        "the source gave no usable frame ({skipped} skipped)"
    );
    let mut cal = reference_from(config, &info, &scored, opts);
    cal.skipped = skipped;
    cal.reference.novelty.views = views.held.iter().map(Thumbnail::to_hex).collect();
    Ok(cal)
}

/// Views a reference keeps for the novelty signal: enough to cover a store's few
/// hundred views, few enough for the inference thread (one distance each, ~0.08 µs).
const VIEWS: usize = 128;

/// A uniform sample of [`VIEWS`] of the sample's views (reservoir sampling, seeded: the
/// same sample gives the same reference).
struct Views {
    held: Vec<Thumbnail>,
    seen: u64,
    rng: crate::capture::synthetic::Rng,
}

impl Views {
    fn new() -> Self {
        Views {
            held: Vec::with_capacity(VIEWS),
            seen: 0,
            rng: crate::capture::synthetic::Rng::new(0x7669_6577),
        }
    }

    fn offer(&mut self, view: Thumbnail) {
        self.seen += 1;
        if self.held.len() < VIEWS {
            self.held.push(view);
        } else {
            let j = self.rng.below(self.seen.min(u64::from(u32::MAX)) as u32) as usize;
            if let Some(slot) = self.held.get_mut(j) {
                *slot = view;
            }
        }
    }
}

/// The reference for frames scored as `scored` (in capture order).
pub(crate) fn reference_from(
    config: &Config,
    info: &ModelInfo,
    scored: &[(Scores, Sample)],
    opts: &CalibrateOptions,
) -> Calibration {
    let mut histograms: Vec<Histogram> = STATS.iter().map(|s| Histogram::new(s.bins)).collect();
    let mut sequences: Vec<Vec<u32>> = vec![Vec::new(); STATS.len()];
    for (_, sample) in scored {
        for (stat, value) in sample.values() {
            if let Some(bin) = STATS[stat].bins.index(value) {
                histograms[stat].add_index(bin);
                sequences[stat].push(bin as u32);
            }
        }
    }
    let values: Vec<f32> = scored.iter().map(|(s, _)| s.value).collect();
    let per_signal: Vec<[f32; signals::COUNT]> = scored.iter().map(|(s, _)| s.signals).collect();
    let mut thresholds = std::collections::BTreeMap::new();
    // A threshold that keeps nothing (every frame scored the same) is left out: the
    // caller reports that no threshold reaches the rate.
    let mut choose = |key: String, values: &[f32]| {
        if let Some(t) = threshold_for_rate(values, opts.target_rate)
            && kept_share(values, f64::from(t)) > 0.0
        {
            thresholds.insert(key, f64::from(t));
        }
    };
    choose("min_value".to_string(), &values);
    for (i, name) in signals::NAMES.iter().enumerate() {
        let own: Vec<f32> = per_signal.iter().map(|s| s[i]).collect();
        choose(signal_key(name), &own);
    }
    let window = config.drift.window_frames;
    let derived = noise_bands(config, &sequences, scored.len());
    let reference = Reference {
        format: calibration::FORMAT,
        model: ModelStamp {
            id: info.id.clone(),
            sha256: info.sha256.clone(),
        },
        source: opts.describe.clone(),
        frames: values.len() as u64,
        window_frames: window,
        bands: derived.bands,
        reference_noise: derived.reference_noise,
        thresholds,
        novelty: Default::default(),
        stats: STATS
            .iter()
            .zip(histograms)
            .zip(&derived.noise)
            .map(|((stat, h), &noise)| StatReference {
                name: stat.name.to_string(),
                bins: stat.bins,
                counts: h.counts,
                noise,
            })
            .collect(),
    };
    let luma_means = scored
        .iter()
        .filter_map(|(_, sample)| sample.values().next().map(|(_, v)| v as f32))
        .collect();
    Calibration {
        reference,
        values,
        luma_means,
        signals: per_signal,
        skipped: 0,
        derived,
    }
}

/// The bands and each statistic's spread for windows of `[drift] window_frames` frames.
/// A per-detection statistic holds several values a frame, so its windows are as many
/// values as that many frames hold on average — a camera's window is frames, not values.
fn noise_bands(config: &Config, sequences: &[Vec<u32>], frames: usize) -> DerivedBands {
    let window = config.drift.window_frames;
    let (psi_moderate, psi_significant) = (config.drift.psi_moderate, config.drift.psi_significant);
    let (mut noise, mut windows) = (Vec::with_capacity(STATS.len()), 0);
    for (stat, seq) in STATS.iter().zip(sequences) {
        let values_per_frame = seq.len() as f64 / frames.max(1) as f64;
        let stat_window = if stat.per_detection {
            ((window as f64 * values_per_frame).round() as usize).max(1)
        } else {
            window
        };
        let one = derive_bands(
            &[(stat.bins, seq)],
            stat_window,
            psi_moderate,
            psi_significant,
        );
        windows += one.windows;
        noise.push(one.reference_noise);
    }
    let worst = noise.iter().flatten().copied().reduce(f64::max);
    DerivedBands {
        bands: calibration::bands_for_noise(worst, psi_moderate, psi_significant),
        reference_noise: worst,
        windows,
        noise,
    }
}

/// `[signals.exposure]` bounds a little outside the range the middle 99 % of a
/// sample's mean lumas span: `(p0.5, p99.5, dark_luma, bright_luma)`.
pub(crate) fn exposure_range(luma_means: &[f32]) -> Option<(f32, f32, f32, f32)> {
    if luma_means.is_empty() {
        return None;
    }
    let mut sorted = luma_means.to_vec();
    sorted.sort_by(f32::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.005), at(0.995));
    let dark = (0.8 * lo).clamp(1.0, 250.0);
    let bright = (hi + 0.2 * (255.0 - hi)).clamp(dark + 1.0, 254.0);
    Some((lo, hi, dark, bright))
}

/// The share of `values` at or above `threshold`.
pub(crate) fn kept_share(values: &[f32], threshold: f64) -> f64 {
    let kept = values
        .iter()
        .filter(|&&v| f64::from(v) >= threshold)
        .count();
    kept as f64 / values.len().max(1) as f64
}

/// How a source was described in the reference (`synthetic store, seed 1` or a path).
pub(crate) fn describe_source(source: &SourceConfig) -> String {
    match source {
        SourceConfig::Synthetic(c) => format!(
            "synthetic {} {}x{}, seed {}, {} frames per scene",
            c.split.name(),
            c.width,
            c.height,
            c.seed,
            c.frames_per_scene
        ),
        SourceConfig::Replay(c) => format!("frames in {}", c.dir.display()),
        SourceConfig::V4l2(c) => format!("camera {}", c.device),
    }
}

/// Write `DIR/summary.md` and a PNG per histogram: each drift statistic's reference
/// distribution, and the frame value and each signal with its chosen threshold marked.
pub(crate) fn write_report(
    dir: &Path,
    cal: &Calibration,
    config: &Config,
    target_rate: f64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let r = &cal.reference;
    let mut md = String::new();
    let _ = writeln!(md, "# Calibration\n");
    let _ = writeln!(
        md,
        "Reference: {}, {} frames ({} skipped), model `{}` (sha256 `{}`).\n",
        r.source, r.frames, cal.skipped, r.model.id, r.model.sha256
    );
    let _ = writeln!(
        md,
        "## Thresholds for a {:.1} % capture rate\n",
        100.0 * target_rate
    );
    let _ = writeln!(
        md,
        "A threshold keeps the frames at or above it; on this sample each keeps the share shown.\n"
    );
    let _ = writeln!(
        md,
        "| threshold | value | keeps | plot |\n|---|---|---|---|"
    );
    let mut plots: Vec<(String, Vec<f32>)> = vec![("min_value".into(), cal.values.clone())];
    for (i, name) in signals::NAMES.iter().enumerate() {
        plots.push((signal_key(name), cal.signals.iter().map(|s| s[i]).collect()));
    }
    for (key, values) in &plots {
        let Some(&t) = r.thresholds.get(key) else {
            continue;
        };
        let file = format!("{}.png", key.replace('.', "-"));
        let hist = value_histogram(values);
        draw(
            &dir.join(&file),
            &hist,
            Some((t - hist.0) / (hist.1 - hist.0)),
        )?;
        let _ = writeln!(
            md,
            "| `{key}` | {t:.4} | {:.2} % | [{file}]({file}) |",
            100.0 * kept_share(values, t)
        );
    }
    let _ = writeln!(
        md,
        "\nTo keep about this share of frames like these, set `[policy] min_value = {:.4}`.\n",
        r.thresholds.get("min_value").copied().unwrap_or(f64::NAN)
    );
    let _ = writeln!(
        md,
        "## Drift bands for a {}-frame window\n",
        r.window_frames
    );
    let _ = writeln!(
        md,
        "A camera alerts on each statistic's JS distance between its window and this \
         reference, against that statistic's own bands: the JS values matching PSI {} and {}, \
         raised to 1.5 times the largest distance between a window of this sample and the \
         rest of it where that is larger — over {} windows sliding through the sample and {} \
         drawn from it at random per statistic, in blocks of a tenth of a window.\n",
        config.drift.psi_moderate,
        config.drift.psi_significant,
        cal.derived.windows,
        calibration::RESAMPLES
    );
    let _ = writeln!(
        md,
        "| statistic | largest JS, window vs rest | moderate from | significant from |\n|---|---|---|---|"
    );
    let mut unreachable = false;
    for stat in &r.stats {
        let bands = config.drift.bands(stat.noise, r.window_frames);
        unreachable |= bands.js_significant >= 1.0;
        let spread = stat.noise.map_or_else(
            || "— (sample shorter than two windows)".to_string(),
            |n| format!("{n:.4}"),
        );
        let _ = writeln!(
            md,
            "| `{}` | {spread} | {:.4} | {:.4} |",
            stat.name, bands.js_moderate, bands.js_significant
        );
    }
    if unreachable {
        let _ = writeln!(
            md,
            "\nA significant band at 1 or above cannot be reached (JS is at most 1): this \
             sample varies too much between windows this short; raise `[drift] window_frames`."
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "## Reference statistics\n\n| statistic | values | plot |\n|---|---|---|"
    );
    for stat in &r.stats {
        let file = format!("stat-{}.png", stat.name);
        let total: u64 = stat.counts.iter().sum();
        let max = stat.counts.iter().copied().max().unwrap_or(0).max(1) as f64;
        let bars: Vec<f64> = stat.counts.iter().map(|&c| c as f64 / max).collect();
        draw(&dir.join(&file), &(stat.bins.lo, stat.bins.hi, bars), None)?;
        let _ = writeln!(md, "| `{}` | {total} | [{file}]({file}) |", stat.name);
    }
    std::fs::write(dir.join("summary.md"), md)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", dir.join("summary.md").display()))?;
    Ok(())
}

/// 50 bins over the values' range: (lo, hi, heights scaled to the tallest).
fn value_histogram(values: &[f32]) -> (f64, f64, Vec<f64>) {
    let lo = values
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min)
        .min(0.0) as f64;
    let hi = (values.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64).max(lo + 1e-6);
    let mut bars = vec![0.0f64; 50];
    for &v in values {
        let i = (((f64::from(v) - lo) / (hi - lo)) * 50.0) as usize;
        bars[i.min(49)] += 1.0;
    }
    let max = bars.iter().copied().fold(1.0, f64::max);
    bars.iter_mut().for_each(|b| *b /= max);
    (lo, hi, bars)
}

/// A bar chart, 600×200, with an optional red line at `marker` (0..1 across).
fn draw(path: &Path, hist: &(f64, f64, Vec<f64>), marker: Option<f64>) -> anyhow::Result<()> {
    const W: u32 = 600;
    const H: u32 = 200;
    let mut img = image::RgbImage::from_pixel(W, H, image::Rgb([255, 255, 255]));
    let bars = &hist.2;
    let width = W as f64 / bars.len().max(1) as f64;
    for (i, &b) in bars.iter().enumerate() {
        let x0 = (i as f64 * width) as u32;
        let x1 = (((i + 1) as f64 * width) as u32).min(W);
        let top = H - ((b * (H - 10) as f64) as u32).min(H);
        for x in x0..x1.saturating_sub(1).max(x0 + 1).min(W) {
            for y in top..H {
                img.put_pixel(x, y, image::Rgb([70, 110, 160]));
            }
        }
    }
    if let Some(m) = marker.filter(|m| m.is_finite()) {
        let x = ((m.clamp(0.0, 1.0) * (W - 1) as f64) as u32).min(W - 1);
        for y in 0..H {
            for dx in 0..2 {
                img.put_pixel((x + dx).min(W - 1), y, image::Rgb([210, 40, 40]));
            }
        }
    }
    img.save(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_per_detection_statistic_is_windowed_by_frames_not_values() {
        // 1000 frames, five detections each: a 100-frame window is 500 confidences.
        let mut config = Config::default();
        config.drift.window_frames = 100;
        let mut rng = crate::capture::synthetic::Rng::new(7);
        let per_frame: Vec<u32> = (0..1000).map(|_| rng.below(4)).collect();
        let per_detection: Vec<u32> = (0..5000).map(|i| ((i / 700) % 3) as u32).collect();
        let sequences: Vec<Vec<u32>> = STATS
            .iter()
            .map(|s| {
                if s.per_detection {
                    per_detection.clone()
                } else {
                    per_frame.clone()
                }
            })
            .collect();
        let derived = noise_bands(&config, &sequences, 1000);
        let confidence = STATS.iter().position(|s| s.per_detection).expect("one");
        let bins = STATS[confidence].bins;
        let by_frames = derive_bands(&[(bins, &per_detection)], 500, 0.1, 0.25);
        let by_values = derive_bands(&[(bins, &per_detection)], 100, 0.1, 0.25);
        assert_eq!(derived.noise[confidence], by_frames.reference_noise);
        assert_ne!(by_frames.reference_noise, by_values.reference_noise);
        let luma = derive_bands(&[(STATS[0].bins, &per_frame)], 100, 0.1, 0.25);
        assert_eq!(derived.noise[0], luma.reference_noise);
    }
}
