//! `framesift bench`: the real pipeline measured against its baselines in one run.
//!
//! Phases are interleaved round by round — pipeline, bare `session.run`, capture
//! blocks, capture on with 1 s windows, capture off, in reverse order every other round —
//! so a noisy shared machine slows each of them alike and the ratios stay meaningful:
//! - `pipeline_vs_bare`: the median over rounds of steady-state pipeline fps (first
//!   inference to last; the start-up is reported apart) ÷ fps of the round's bare loop
//!   of `run` on the same pre-made input tensors, same session and threads;
//! - `capture_p99_ratio`: inference p99 when every frame is handed to the keeper (with
//!   the configured keep window) ÷ inference p99 when none is, both from one pipeline
//!   run per round whose frames alternate between the two in blocks of
//!   [`CAPTURE_BLOCK`] ([`CaptureBlocks`], driving the pipeline through the same
//!   keep-decision hook the policy uses). Blocks keep seconds of machine noise off the
//!   comparison and leave every pipeline start-up out of both conditions;
//! - `capture_1s_p99_ratio`: with 1 s keep windows, so the keeper encodes and writes its
//!   best frames every second (a stress case), against a run capturing nothing. This
//!   one needs separate runs: a flush started in a capturing block would go on into the
//!   next block;
//! - `upload_fps_ratio` / `upload_p99_ratio`: steady fps and inference p99 while the
//!   uploader stage drains a large spool (topped up before every such run, so it never
//!   runs dry) to the destination, ÷ the same in runs with no uploader; capture is off
//!   in both, so the uploader is the only difference. The destination is a scratch
//!   directory (`file://`) unless `--upload-config` names an `[upload]` table, e.g. an
//!   S3-protocol server on loopback (`benches/upload-phase.sh`). An unpaced camera
//!   keeps the detector running flat out, so with the `[upload]` defaults the uploader
//!   drains at `busy_max_bytes_per_sec`; set it to 0 there to measure a full-speed drain.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::{
    capture::{Next, Preparer, Slot, SourceConfig, SourceError, synthetic::Rng},
    config::Config,
    infer::{Inferer, SharedModel},
    ops::metrics::{Histogram, Metrics, Stage},
    pipeline::{Limits, Pipeline},
    policy::{KeepDecision, Scored, Verdict},
};

/// Keep window of the capture stress phase: short, so spool writes overlap inference.
const BENCH_WINDOW_SECS: f64 = 1.0;

/// Frames per block of the capture measurement: about half a second of a 320-input
/// detector on a 2-core board, long against the few frames a block needs to settle
/// ([`CaptureBlocks::SETTLE`]).
const CAPTURE_BLOCK: u64 = 50;

/// Resamplings behind `capture_p99_ratio_interval`.
const RESAMPLES: usize = 1000;

/// Distinct synthetic frames rendered before a bench (16 × 1280×720 RGB = 44 MB).
const BENCH_PRERENDERED: u32 = 16;

/// `framesift bench`'s paired measurement of what keeping frames costs inference.
///
/// Each inference thread alternates blocks of `block` frames: in one every frame is handed
/// to the keeper whatever its score, in the next none is. Each frame's `session.run` time
/// is kept with its block number, for the bench's p99s and their resampled interval.
/// Machine noise that comes and goes over seconds then falls on both alike, and there is
/// no pipeline start-up in either. Blocks are counted per inference thread.
struct CaptureBlocks {
    block: u64,
    settle: u64,
    capturing_first: bool,
    /// Recorded frames as `block number << 32 | µs`, in arrival order; room for
    /// `frames` (later ones are not kept).
    samples: Box<[AtomicU64]>,
    recorded: AtomicUsize,
}

impl CaptureBlocks {
    /// Frames at the start of a block that are not recorded (at most a quarter of a
    /// block). For them the previous block still acts: the capture thread prepared
    /// them ahead, and the keeper may still be taking the last hand-offs.
    const SETTLE: u64 = 4;

    /// Blocks of `block` frames (at least 1), starting with a capturing block when
    /// `capturing_first`, keeping samples of up to `frames` frames.
    fn new(block: u64, capturing_first: bool, frames: usize) -> Self {
        let block = block.max(1);
        CaptureBlocks {
            block,
            settle: Self::SETTLE.min(block / 4),
            capturing_first,
            samples: (0..frames).map(|_| AtomicU64::new(0)).collect(),
            recorded: AtomicUsize::new(0),
        }
    }

    /// The recorded inference times in µs, grouped by block (blocks of every inference
    /// thread with the same number together): `(capturing, times)` per block. Read once
    /// the pipeline has been joined.
    fn blocks(&self) -> Vec<(bool, Vec<u32>)> {
        let recorded = self
            .recorded
            .load(Ordering::Relaxed)
            .min(self.samples.len());
        let mut by_block: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
        for s in &self.samples[..recorded] {
            let v = s.load(Ordering::Relaxed);
            by_block.entry(v >> 32).or_default().push(v as u32);
        }
        by_block
            .into_iter()
            .map(|(b, times)| (self.is_capturing(b * self.block), times))
            .collect()
    }

    /// Whether the `n`th frame of an inference thread (from 0) is in a capturing block.
    fn is_capturing(&self, n: u64) -> bool {
        (n / self.block).is_multiple_of(2) == self.capturing_first
    }

    fn record(&self, n: u64, inference: Duration) {
        if n % self.block < self.settle {
            return;
        }
        let i = self.recorded.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.samples.get(i) {
            let micros = inference.as_micros().min(u128::from(u32::MAX)) as u64;
            slot.store(((n / self.block) << 32) | micros, Ordering::Relaxed);
        }
    }
}

/// The keep decision of the capture measurement: each inference stage hands every
/// frame of a capturing block to the keeper and none of the others, and records each
/// frame's `session.run` time.
struct BlockDecision(Arc<CaptureBlocks>);

impl KeepDecision for BlockDecision {
    fn keep(&mut self, frame: &Scored<'_>) -> Verdict {
        self.0.record(frame.n, frame.inference);
        if self.0.is_capturing(frame.n) {
            Verdict::Keep
        } else {
            Verdict::Skip
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Frames per phase, split over the rounds.
    pub frames: u64,
    pub rounds: u32,
    /// Where the upload phase delivers; `None`: a scratch directory.
    pub upload: Option<crate::store::uploader::UploadConfig>,
}

/// At most this many entries in the upload phase's first spool; doubled for the next
/// rounds whenever the uploader emptied it during a run.
const UPLOAD_SPOOL_ENTRIES: usize = 400;

/// Facts about the board and the run, printed as the table header.
#[derive(Debug, Clone, Serialize)]
pub struct Board {
    pub cpu: String,
    pub cores: usize,
    pub arch: &'static str,
    /// Vector extensions the CPU has (see [`crate::simd::cpu_features`]).
    pub cpu_features: Vec<&'static str>,
    pub ort_version: String,
    pub intra_threads: usize,
    pub model: String,
    pub input: String,
    pub source: String,
    pub frames_per_phase: u64,
    pub rounds: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageRow {
    pub stage: &'static str,
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub board: Board,
    pub stages: Vec<StageRow>,
    /// Steady-state fps: first inference to last, in every round.
    pub pipeline_fps: f64,
    /// Mean time from pipeline start to the end of its first inference, per round
    /// (threads, buffers, the first frame through every stage); not in `pipeline_fps`.
    pub pipeline_startup_ms: f64,
    pub bare_fps: f64,
    /// Median over rounds of (pipeline fps ÷ bare fps) of the round's adjacent pair: a
    /// noisy stretch on a shared machine moves one round, not the result.
    pub pipeline_vs_bare: f64,
    pub pipeline_vs_bare_rounds: Vec<f64>,
    pub bare_p50_ms: f64,
    /// CPU time ÷ wall time of the bare loop, in cores: the detector's own use, so
    /// `cores − this` is what capture can use without taking from inference.
    pub bare_cpu_cores_used: f64,
    /// Inference p99 in the capture measurement's blocks that hand every frame to the
    /// keeper, and in those that hand none.
    pub capture_on_inference_p99_ms: f64,
    pub capture_off_inference_p99_ms: f64,
    pub capture_p99_ratio: f64,
    /// 5th and 95th percentile of the ratio over 1000 resamplings of the blocks (each
    /// condition's blocks drawn with replacement): how far the noise within the run
    /// moves it (not what changes between runs). Absent when either condition has no
    /// block.
    pub capture_p99_ratio_interval: Option<[f64; 2]>,
    /// Length of those blocks, in frames.
    pub capture_block_frames: u64,
    /// Inference p99 capturing every frame with 1 s keep windows, and in separate runs
    /// capturing none.
    pub capture_1s_inference_p99_ms: f64,
    pub capture_none_inference_p99_ms: f64,
    pub capture_1s_p99_ratio: f64,
    /// Frames the keeper wrote to the spool during the 1 s-window phases.
    pub capture_1s_written: u64,
    /// Candidates the capture phases could not hand to the keeper (keeper too slow).
    pub capture_dropped: u64,
    /// CPU time of the process ÷ wall time during pipeline phases, in cores.
    pub cpu_cores_used: f64,
    pub peak_rss_mib: f64,
    /// Resident set growth from the end of the first round to the end of the last.
    pub rss_growth_kib: i64,
    pub dropped: u64,
    /// Where the upload phase delivered (`file://…`, `s3://… at …`).
    pub upload_destination: String,
    /// Median over rounds of steady fps uploading ÷ not uploading (capture off in both).
    pub upload_fps_ratio: f64,
    pub upload_fps_ratio_rounds: Vec<f64>,
    pub upload_on_inference_p99_ms: f64,
    pub upload_off_inference_p99_ms: f64,
    pub upload_p99_ratio: f64,
    /// What the uploader delivered during the uploading runs, and its failed attempts.
    pub upload_delivered: u64,
    pub upload_delivered_mib: f64,
    /// Delivered bytes ÷ the uploading runs' time, in MB (10^6 bytes) a second.
    pub upload_mb_per_sec: f64,
    pub upload_failures: u64,
    /// Uploading runs in which the spool ran dry before the run ended (the uploader
    /// then idles, so the ratio understates its cost; the next round has more).
    pub upload_runs_dry: u32,
}

pub fn run(
    config: &Config,
    model: SharedModel,
    opts: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(opts.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(
        opts.frames >= 2 * opts.rounds as u64,
        "--frames must be at least twice --rounds: a round's steady-state fps needs two frames"
    );
    let per_round = opts.frames / opts.rounds as u64;
    let info = model.lock().unwrap_or_else(|p| p.into_inner()).info.clone();
    let scratch = tempdir()?;
    let spool = scratch.0.clone();

    // The bench's configs: the user's, writing to a scratch spool.
    let mut base = config.clone();
    base.spool.dir = spool.clone();
    // The bench cycles a few pre-rendered frames: to near-duplicate suppression they
    // are one moment, so it would keep almost nothing and the keeper's cost would be
    // missed.
    base.keep.dedupe_distance = 0.0;
    // A camera delivers raw frames for the cost of a copy; the synthetic renderer costs
    // several ms a frame. Render a cycle once so the bench measures the pipeline.
    for camera in &mut base.cameras {
        if let SourceConfig::Synthetic(c) = &mut camera.source {
            c.prerendered = BENCH_PRERENDERED;
            c.frames_per_scene = 1;
        }
    }
    // Capture blocks: the configured keep window, the keep decision made by the blocks.
    // Capture 1 s: every frame a candidate and 1 s keep windows, so the keeper encodes
    // and writes its best frames (fsync included) every second while inference is
    // measured — a stress case, not a quiet stretch between flushes. Capture off: none.
    let mut capture_1s = base.clone();
    capture_1s.policy.min_value = 0.0;
    capture_1s.keep.window_secs = BENCH_WINDOW_SECS;
    capture_1s.keep.target_rate = 0.0;
    let mut capture_off = base.clone();
    capture_off.policy.min_value = f32::INFINITY;

    // Upload on / off: capture off in both; "on" adds the uploader and a full spool.
    let upload_spool = spool.join("upload-spool");
    let mut upload_off = capture_off.clone();
    upload_off.spool.dir = upload_spool.clone();
    let mut upload_on = upload_off.clone();
    upload_on.spool.max_bytes = u64::MAX / 4;
    upload_on.upload = match &opts.upload {
        Some(u) => u.clone(),
        None => {
            let destination = spool.join("upload-destination");
            std::fs::create_dir_all(&destination)?;
            crate::store::uploader::UploadConfig::to_dir(destination)
        }
    };
    let upload_image = bench_jpeg(&base)?;
    // About two entries per frame to start with, so a short run fills little.
    let mut upload_entries = (2 * per_round as usize).clamp(16, UPLOAD_SPOOL_ENTRIES);
    let upload_hist = [Histogram::default(), Histogram::default()];
    let mut upload_rounds = Vec::with_capacity(opts.rounds as usize);
    let (mut upload_delivered, mut upload_bytes, mut upload_failures, mut upload_dry) =
        (0u64, 0u64, 0u64, 0u32);
    let mut upload_secs = 0.0;

    // Pre-made input tensors for the bare loop: the first frames of the same source.
    let tensors = premade_tensors(&base, &model, per_round.min(32) as usize)?;

    let pipeline_metrics = Metrics::default();
    // Inference times (µs) of every capture block, for the ratio's interval.
    let (mut on_blocks, mut off_blocks) = (Vec::new(), Vec::new());
    let (bare, on_1s, none) = (
        Histogram::default(),
        Histogram::default(),
        Histogram::default(),
    );
    let (mut pipeline_frames, mut pipeline_time, mut bare_frames, mut bare_time) =
        (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    let (mut cpu_secs, mut bare_cpu_secs) = (0.0, 0.0);
    let (mut startup, mut cpu_time, mut bare_cpu_time) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut dropped = 0;
    let (mut written_1s, mut capture_dropped) = (0, 0);
    let mut rss_after_first = 0i64;

    let params = base
        .model
        .decode_params(base.policy.lowest_score(base.model.confidence_threshold));
    let mut inferer = Inferer::new(&model.lock().unwrap_or_else(|p| p.into_inner()), params)?;
    let mut round_ratios = Vec::with_capacity(opts.rounds as usize);
    for round in 0..opts.rounds {
        // Alternate which of the pair goes first, so a machine slowing down or warming
        // up across the run does not favour either.
        let (mut pipeline_fps, mut bare_fps) = (0.0, 0.0);
        for bare_phase in [round % 2 == 1, round % 2 == 0] {
            if bare_phase {
                progress(&format!(
                    "round {}/{}: bare session.run",
                    round + 1,
                    opts.rounds
                ));
                let (t0, cpu0) = (Instant::now(), process_cpu_secs());
                // Timed like the pipeline: from the end of the first run to the last.
                let mut first_done = t0;
                for i in 0..per_round as usize {
                    let runner = inferer.runner_mut();
                    runner
                        .input_mut()
                        .copy_from_slice(&tensors[i % tensors.len()]);
                    let t = Instant::now();
                    model
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .run(runner)?;
                    bare.record(t.elapsed());
                    if i == 0 {
                        first_done = Instant::now();
                    }
                }
                let (elapsed, steady) = (t0.elapsed(), first_done.elapsed());
                bare_time += steady;
                bare_cpu_secs += process_cpu_secs() - cpu0;
                bare_cpu_time += elapsed;
                bare_frames += per_round - 1;
                bare_fps = (per_round - 1) as f64 / steady.as_secs_f64().max(1e-9);
                continue;
            }
            progress(&format!("round {}/{}: pipeline", round + 1, opts.rounds));
            let cpu0 = process_cpu_secs();
            let (metrics, summary) = run_pipeline(&base, &model, per_round)?;
            cpu_secs += process_cpu_secs() - cpu0;
            // Steady state: from the end of the first inference to the end of the last,
            // so a round's start-up (buffers, threads, first frame) is reported, not
            // averaged into the fps — a camera pipeline starts once and runs for hours.
            let (frames, steady) = steady_state(&summary);
            pipeline_frames += frames;
            pipeline_time += steady;
            pipeline_fps = frames as f64 / steady.as_secs_f64().max(1e-9);
            startup += summary.first_inference;
            cpu_time += summary.inference_elapsed;
            dropped += metrics.total_drops();
            for stage in Stage::ALL {
                pipeline_metrics.stage(stage).merge(metrics.stage(stage));
            }
        }
        round_ratios.push(pipeline_fps / bare_fps.max(1e-9));

        // The capture phases, reversed every other round like the pair above.
        let mut capture_phases = [0, 1, 2];
        if round % 2 == 1 {
            capture_phases.reverse();
        }
        for phase in capture_phases {
            if phase == 0 {
                let block = CAPTURE_BLOCK.min(per_round);
                progress(&format!(
                    "round {}/{}: capture blocks ({block} frames capturing every frame, {block} none, in turn)",
                    round + 1,
                    opts.rounds
                ));
                // Each condition gets the round's frames; which goes first alternates.
                let blocks = Arc::new(CaptureBlocks::new(
                    block,
                    round % 2 == 0,
                    2 * per_round as usize,
                ));
                let decide = blocks.clone();
                let pipeline = Pipeline::start_deciding(
                    &base,
                    model.clone(),
                    Limits {
                        max_frames: Some(2 * per_round),
                        duration: None,
                    },
                    Some(Arc::new(move |_| {
                        Box::new(BlockDecision(decide.clone())) as Box<dyn KeepDecision>
                    })),
                )?;
                let metrics = pipeline.metrics().clone();
                pipeline.run_to_end()?;
                for (capturing, times) in blocks.blocks() {
                    if capturing {
                        &mut on_blocks
                    } else {
                        &mut off_blocks
                    }
                    .push(times);
                }
                capture_dropped += metrics.total_drops();
                continue;
            }
            let (config, name, histogram) = match phase {
                1 => (&capture_1s, "capture on, 1 s windows", &on_1s),
                _ => (&capture_off, "capture off", &none),
            };
            progress(&format!("round {}/{}: {name}", round + 1, opts.rounds));
            let (m, _) = run_pipeline(config, &model, per_round)?;
            histogram.merge(m.stage(Stage::Inference));
            if phase == 1 {
                written_1s += m.kept.load(std::sync::atomic::Ordering::Relaxed);
                capture_dropped += m.total_drops();
            }
        }

        // The upload pair, in turn like the others.
        let mut fps = [0.0f64; 2];
        for uploading in [round % 2 == 0, round % 2 == 1] {
            let config = if uploading {
                let added = fill_spool(&upload_on, &upload_image, upload_entries)?;
                progress(&format!(
                    "round {}/{}: uploader draining a spool of {upload_entries} frames ({added} added)",
                    round + 1,
                    opts.rounds
                ));
                &upload_on
            } else {
                progress(&format!("round {}/{}: no uploader", round + 1, opts.rounds));
                &upload_off
            };
            let (m, summary) = run_pipeline(config, &model, per_round)?;
            let (frames, steady) = steady_state(&summary);
            fps[usize::from(uploading)] = frames as f64 / steady.as_secs_f64().max(1e-9);
            upload_hist[usize::from(uploading)].merge(m.stage(Stage::Inference));
            if uploading {
                upload_secs += summary.inference_elapsed.as_secs_f64();
                upload_delivered += summary.uploaded;
                upload_bytes += summary.uploaded_bytes;
                upload_failures += summary.upload_failures;
                if summary.spool.is_some_and(|(n, _)| n == 0) {
                    upload_dry += 1;
                    upload_entries *= 2;
                }
            }
        }
        upload_rounds.push(fps[1] / fps[0].max(1e-9));

        if round == 0 {
            rss_after_first = crate::ops::metrics::rss_kib();
        }
    }
    drop(scratch);

    let pipeline_fps = pipeline_frames as f64 / pipeline_time.as_secs_f64().max(1e-9);
    let bare_fps = bare_frames as f64 / bare_time.as_secs_f64().max(1e-9);
    let p99_ms = |blocks: &[Vec<u32>]| p99_us(&mut blocks.concat()).unwrap_or(0.0) / 1e3;
    let [upload_off_p99, upload_on_p99] = upload_hist.map(|h| h.quantile_ms(0.99));
    let upload_destination =
        crate::store::uploader::describe(upload_on.upload.target.as_ref().expect("upload target"));
    let (on_p99, off_p99) = (p99_ms(&on_blocks), p99_ms(&off_blocks));
    Ok(BenchReport {
        board: Board {
            cpu: cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_features: crate::simd::cpu_features(),
            arch: std::env::consts::ARCH,
            ort_version: ort_version(
                &crate::infer::model::environment(None)
                    .map(|(_, p)| p)
                    .unwrap_or_default(),
            ),
            intra_threads: config.model.intra_threads,
            model: format!("{} {} ({})", info.id, info.version, info.origin),
            input: format!("{}x{}", info.input_width, info.input_height),
            source: source_name(config),
            frames_per_phase: per_round * opts.rounds as u64,
            rounds: opts.rounds,
        },
        stages: Stage::ALL
            .iter()
            .map(|s| {
                let h = pipeline_metrics.stage(*s);
                StageRow {
                    stage: s.name(),
                    count: h.count(),
                    p50_ms: h.quantile_ms(0.5),
                    p95_ms: h.quantile_ms(0.95),
                    p99_ms: h.quantile_ms(0.99),
                }
            })
            .filter(|r| r.count > 0)
            .collect(),
        pipeline_fps,
        bare_fps,
        pipeline_vs_bare: median(&mut round_ratios.clone()),
        pipeline_vs_bare_rounds: round_ratios,
        bare_p50_ms: bare.quantile_ms(0.5),
        bare_cpu_cores_used: bare_cpu_secs / bare_cpu_time.as_secs_f64().max(1e-9),
        capture_on_inference_p99_ms: on_p99,
        capture_off_inference_p99_ms: off_p99,
        capture_p99_ratio: on_p99 / off_p99.max(1e-9),
        capture_p99_ratio_interval: p99_ratio_interval(&on_blocks, &off_blocks, RESAMPLES),
        capture_block_frames: CAPTURE_BLOCK.min(per_round),
        capture_1s_inference_p99_ms: on_1s.quantile_ms(0.99),
        capture_none_inference_p99_ms: none.quantile_ms(0.99),
        capture_1s_p99_ratio: on_1s.quantile_ms(0.99) / none.quantile_ms(0.99).max(1e-9),
        capture_1s_written: written_1s,
        capture_dropped,
        pipeline_startup_ms: startup.as_secs_f64() * 1e3 / opts.rounds as f64,
        cpu_cores_used: cpu_secs / cpu_time.as_secs_f64().max(1e-9),
        peak_rss_mib: crate::ops::metrics::peak_rss_kib() as f64 / 1024.0,
        rss_growth_kib: crate::ops::metrics::rss_kib() - rss_after_first,
        dropped,
        upload_destination,
        upload_fps_ratio: median(&mut upload_rounds.clone()),
        upload_fps_ratio_rounds: upload_rounds,
        upload_on_inference_p99_ms: upload_on_p99,
        upload_off_inference_p99_ms: upload_off_p99,
        upload_p99_ratio: upload_on_p99 / upload_off_p99.max(1e-9),
        upload_delivered,
        upload_delivered_mib: upload_bytes as f64 / (1024.0 * 1024.0),
        upload_mb_per_sec: upload_bytes as f64 / 1e6 / upload_secs.max(1e-9),
        upload_failures,
        upload_runs_dry: upload_dry,
    })
}

fn source_name(config: &Config) -> String {
    match config.cameras.first().map(|c| &c.source) {
        Some(SourceConfig::Synthetic(c)) => format!(
            "synthetic {}x{} raw RGB ({}, {BENCH_PRERENDERED} frames rendered once and cycled like camera buffers)",
            c.width,
            c.height,
            c.split.name()
        ),
        Some(SourceConfig::Replay(c)) => format!("replay {}", c.dir.display()),
        Some(SourceConfig::V4l2(c)) => format!(
            "v4l2 {} {}x{} {}",
            c.device,
            c.width,
            c.height,
            c.format.name()
        ),
        None => "none".into(),
    }
}

/// A run's frames and time from the end of its first inference to the end of its
/// last: its start-up is reported apart, not averaged into its fps.
fn steady_state(summary: &crate::pipeline::Summary) -> (u64, Duration) {
    (
        summary.inferred.saturating_sub(1),
        summary
            .inference_elapsed
            .saturating_sub(summary.first_inference),
    )
}

/// Run the pipeline for `frames` frames; returns its metrics and summary.
fn run_pipeline(
    config: &Config,
    model: &SharedModel,
    frames: u64,
) -> anyhow::Result<(Arc<Metrics>, crate::pipeline::Summary)> {
    let pipeline = Pipeline::start(
        config,
        model.clone(),
        Limits {
            max_frames: Some(frames),
            duration: None,
        },
    )?;
    let metrics = pipeline.metrics().clone();
    let summary = pipeline.run_to_end()?;
    Ok((metrics, summary))
}

fn premade_tensors(
    config: &Config,
    model: &SharedModel,
    count: usize,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let info = model.lock().unwrap_or_else(|p| p.into_inner()).info.clone();
    let (mut source, (w, h)) = crate::capture::open_first_camera(config, &info)?;
    let mut preparer = Preparer::new(&info);
    let mut slot = Slot::new(w, h, 3 * (info.input_width * info.input_height) as usize);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        match source.next_frame(&mut slot.frame) {
            Ok(Next::Frame) => {
                if preparer.prepare(&mut slot).is_ok() {
                    out.push(slot.tensor.clone());
                }
            }
            Ok(Next::End) => break,
            Err(e @ SourceError::Fatal(_)) => return Err(e.into()),
            Err(_) => {}
        }
    }
    anyhow::ensure!(!out.is_empty(), "the source gave no usable frame");
    Ok(out)
}

/// The p99 of `times`, ranked like [`Histogram::quantile_ms`] (`None` when empty).
/// Reorders `times`.
fn p99_us(times: &mut [u32]) -> Option<f64> {
    let rank = ((0.99 * times.len() as f64).ceil() as usize).clamp(1, times.len().max(1));
    times.get(rank - 1)?;
    Some(f64::from(*times.select_nth_unstable(rank - 1).1))
}

/// The 5th and 95th percentile of p99(`on`) ÷ p99(`off`) when each side's blocks are
/// drawn with replacement `resamples` times (a block bootstrap: frames within a block
/// share the machine's state, so blocks, not frames, are the independent draws). `None`
/// when a side has no samples.
fn p99_ratio_interval(on: &[Vec<u32>], off: &[Vec<u32>], resamples: usize) -> Option<[f64; 2]> {
    if on.is_empty() || off.is_empty() || resamples == 0 {
        return None;
    }
    let mut rng = Rng::new(0x5eed_b10c);
    let mut pool = Vec::new();
    let mut p99 = |blocks: &[Vec<u32>], rng: &mut Rng| {
        pool.clear();
        for _ in 0..blocks.len() {
            pool.extend_from_slice(&blocks[rng.below(blocks.len() as u32) as usize]);
        }
        p99_us(&mut pool)
    };
    let mut ratios = (0..resamples)
        .map(|_| Some(p99(on, &mut rng)? / p99(off, &mut rng)?.max(1.0)))
        .collect::<Option<Vec<f64>>>()?;
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((q * ratios.len() as f64) as usize).min(ratios.len() - 1)];
    Some([at(0.05), at(0.95)])
}

/// Median of a non-empty sample (mean of the middle two for an even count).
/// The smallest and largest of `values`.
fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One kept-frame-sized JPEG: the source's first frame, encoded as the keeper would.
fn bench_jpeg(config: &Config) -> anyhow::Result<Vec<u8>> {
    let camera = config
        .cameras
        .first()
        .ok_or_else(|| anyhow::anyhow!("no camera configured"))?;
    let (w, h) = camera.source.frame_size();
    let mut source = camera
        .source
        .build((w, h), config.pipeline.max_frame_pixels)?;
    let mut frame = crate::frame::Frame::with_capacity(w, h);
    for _ in 0..100 {
        if let Ok(Next::Frame) = source.next_frame(&mut frame) {
            let mut out = Vec::new();
            crate::codec::encode_jpeg(&frame.rgb, frame.width, frame.height, 90, &mut out)?;
            return Ok(out);
        }
    }
    anyhow::bail!("the source gave no usable frame")
}

/// Write entries of `image` into `config`'s spool until it holds `until`; returns how
/// many were written. Values are spread over 0..1 so the uploader's order is exercised.
fn fill_spool(config: &Config, image: &[u8], until: usize) -> anyhow::Result<usize> {
    use crate::store::spool::{ImageEncoding, NewEntry};
    let (spool, _) = crate::store::open(&config.spool)?;
    let mut spool = spool.lock().unwrap_or_else(|p| p.into_inner());
    let ms = crate::store::sidecar::unix_ms(std::time::SystemTime::now());
    let mut added = 0;
    while spool.len() < until {
        let value = ((spool.len() * 7919) % 1000) as f32 / 1000.0;
        let entry = NewEntry {
            value,
            camera: "bench",
            captured_unix_ms: ms,
        };
        spool.write(entry, image, ImageEncoding::Encoded, |id, record| {
            serde_json::to_vec(&serde_json::json!({
                "id": id, "camera": "bench", "value": value,
                "captured_unix_ms": ms, "image": record,
            }))
        })?;
        added += 1;
    }
    Ok(added)
}

/// How long opening (and recovering) a spool of many entries takes.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolOpenReport {
    pub entries: usize,
    /// The first open, with no index log: every sidecar is read.
    pub without_index_secs: f64,
    /// The next open, from the index log the first one wrote.
    pub with_index_secs: f64,
}

/// Make a spool of `entries` small entries in a scratch directory (files written
/// directly, as the spool lays them out) and time two opens: without and with the
/// index log. The page cache is warm, as on a cart restarted by its service manager.
pub fn spool_open(
    entries: usize,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<SpoolOpenReport> {
    use crate::store::spool::{ImageEncoding, ImageRecord};
    let scratch = tempdir()?;
    let dir = scratch.0.join("spool-open");
    std::fs::create_dir_all(&dir)?;
    progress(&format!("writing {entries} spool entries"));
    let image = vec![0xa5u8; 4096];
    let sha256 = crate::digest::sha256_hex(&image);
    for i in 0..entries {
        let id = format!("benchspool-00000001-{i:08}");
        let file = format!("{id}.jpg");
        std::fs::write(dir.join(&file), &image)?;
        let record = ImageRecord {
            file,
            bytes: image.len() as u64,
            sha256: sha256.clone(),
            encoding: ImageEncoding::Encoded,
        };
        let sidecar = serde_json::to_vec(&serde_json::json!({
            "id": id, "camera": "bench", "value": (i % 1000) as f32 / 1000.0,
            "captured_unix_ms": 1_795_298_707_123u64 + i as u64, "image": record,
        }))?;
        std::fs::write(dir.join(format!("{id}.json")), sidecar)?;
    }
    let mut config = Config::default().spool;
    config.dir = dir.clone();
    config.max_bytes = u64::MAX / 4;
    let mut time_open = |what: &str| -> anyhow::Result<f64> {
        progress(what);
        let t0 = Instant::now();
        let (spool, recovery) = crate::store::open(&config)?;
        let secs = t0.elapsed().as_secs_f64();
        anyhow::ensure!(
            recovery.complete == entries && spool.lock().map(|s| s.len()).unwrap_or(0) == entries,
            "the spool opened with {} of {entries} entries",
            recovery.complete
        );
        Ok(secs)
    };
    let without_index_secs = time_open("opening the spool (no index yet)")?;
    let with_index_secs = time_open("opening the spool again (from its index)")?;
    drop(scratch);
    Ok(SpoolOpenReport {
        entries,
        without_index_secs,
        with_index_secs,
    })
}

/// A scratch directory removed when dropped, on an error path too.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> anyhow::Result<Scratch> {
    let dir = std::env::temp_dir().join(format!("framesift-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(Scratch(dir))
}

/// User + system CPU seconds of this process.
fn process_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    field("model name")
        .or_else(|| {
            std::fs::read_to_string("/proc/device-tree/model")
                .ok()
                .map(|s| s.trim_end_matches('\0').to_string())
        })
        .or_else(|| field("CPU part").map(|p| format!("ARM CPU part {p}")))
        .unwrap_or_else(|| "unknown".into())
}

/// The loaded library's version, from its build info or its file name.
fn ort_version(library: &std::path::Path) -> String {
    let info = ort::info();
    if let Some(v) = info
        .split([',', ' '])
        .find_map(|part| part.strip_prefix("git-branch=rel-"))
    {
        return v.to_string();
    }
    let real = std::fs::canonicalize(library).unwrap_or_else(|_| library.to_path_buf());
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.strip_prefix("libonnxruntime.so.") {
        Some(v) => v.to_string(),
        None => format!("unknown ({})", real.display()),
    }
}

impl BenchReport {
    /// The table a person pastes into an issue.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let b = &self.board;
        let mut s = String::new();
        let _ = writeln!(s, "framesift bench");
        let _ = writeln!(s, "  cpu        {} ({} cores, {})", b.cpu, b.cores, b.arch);
        if !b.cpu_features.is_empty() {
            let _ = writeln!(s, "  vector     {}", b.cpu_features.join(" "));
        }
        let _ = writeln!(
            s,
            "  onnxruntime {}, {} intra-op threads",
            b.ort_version, b.intra_threads
        );
        let _ = writeln!(s, "  model      {}, input {}", b.model, b.input);
        let _ = writeln!(
            s,
            "  source     {}, {} frames per phase in {} interleaved rounds",
            b.source, b.frames_per_phase, b.rounds
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  stage               count    p50 ms    p95 ms    p99 ms"
        );
        for r in &self.stages {
            let _ = writeln!(
                s,
                "  {:<16} {:>8} {:>9.3} {:>9.3} {:>9.3}",
                r.stage, r.count, r.p50_ms, r.p95_ms, r.p99_ms
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  pipeline           {:8.1} fps   (CPU {:.2} cores, dropped {}; start-up to first inference {:.1} ms, not counted)",
            self.pipeline_fps, self.cpu_cores_used, self.dropped, self.pipeline_startup_ms
        );
        let _ = writeln!(
            s,
            "  bare session.run   {:8.1} fps   (CPU {:.2} cores, p50 {:.3} ms)",
            self.bare_fps, self.bare_cpu_cores_used, self.bare_p50_ms
        );
        let (lo, hi) = range(&self.pipeline_vs_bare_rounds);
        let _ = writeln!(
            s,
            "  pipeline_vs_bare   {:8.3}       (median of {} rounds, each pipeline ÷ bare in turn; range {lo:.3}–{hi:.3})",
            self.pipeline_vs_bare,
            self.pipeline_vs_bare_rounds.len()
        );
        let _ = writeln!(
            s,
            "  capture_p99_ratio  {:8.3}       (inference p99 {:.3} ms capturing every frame / {:.3} ms capturing none, in alternating {}-frame blocks; {})",
            self.capture_p99_ratio,
            self.capture_on_inference_p99_ms,
            self.capture_off_inference_p99_ms,
            self.capture_block_frames,
            match self.capture_p99_ratio_interval {
                Some([lo, hi]) => format!("90 % of block resamplings {lo:.3}–{hi:.3}"),
                None => "too few frames for an interval".into(),
            }
        );
        let _ = writeln!(
            s,
            "  capture_1s_p99_ratio {:6.3}       (every frame, {BENCH_WINDOW_SECS} s keep windows: {:.3} ms / {:.3} ms in runs capturing none; {} frames written, {} candidates dropped)",
            self.capture_1s_p99_ratio,
            self.capture_1s_inference_p99_ms,
            self.capture_none_inference_p99_ms,
            self.capture_1s_written,
            self.capture_dropped
        );
        let (lo, hi) = range(&self.upload_fps_ratio_rounds);
        let _ = writeln!(
            s,
            "  upload_fps_ratio   {:8.3}       (uploader draining a spool to {} ÷ none, capture off in both; median of {} rounds, range {lo:.3}–{hi:.3}; {} frames ({:.1} MiB, {:.2} MB/s) delivered, {} failed attempts, {} runs ran dry)",
            self.upload_fps_ratio,
            self.upload_destination,
            self.upload_fps_ratio_rounds.len(),
            self.upload_delivered,
            self.upload_delivered_mib,
            self.upload_mb_per_sec,
            self.upload_failures,
            self.upload_runs_dry
        );
        let _ = writeln!(
            s,
            "  upload_p99_ratio   {:8.3}       (inference p99 {:.3} ms uploading / {:.3} ms not)",
            self.upload_p99_ratio,
            self.upload_on_inference_p99_ms,
            self.upload_off_inference_p99_ms
        );
        let _ = writeln!(
            s,
            "  peak RSS           {:8.1} MiB   (growth after round 1: {} KiB)",
            self.peak_rss_mib, self.rss_growth_kib
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::{CaptureBlocks, Duration, Rng, median, p99_ratio_interval};

    /// `n` blocks of 46 inference times around `ms`, with a tail: 3 % of frames 40 % slower.
    fn blocks(rng: &mut Rng, n: usize, ms: f64) -> Vec<Vec<u32>> {
        (0..n)
            .map(|_| {
                (0..46)
                    .map(|_| {
                        let slow = if rng.below(100) < 3 { 1.4 } else { 1.0 };
                        let jitter = 0.9 + 0.2 * f64::from(rng.below(1000)) / 1000.0;
                        (ms * 1000.0 * slow * jitter) as u32
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_ratio_interval_covers_1_for_equal_conditions_and_not_for_a_slower_one() {
        let mut rng = Rng::new(7);
        let (on, off) = (blocks(&mut rng, 60, 8.0), blocks(&mut rng, 60, 8.0));
        let [lo, hi] = p99_ratio_interval(&on, &off, 1000).expect("interval");
        assert!(lo < 1.0 && 1.0 < hi && hi - lo < 0.2, "{lo}–{hi}");
        let slower = blocks(&mut rng, 60, 8.8);
        let [lo, hi] = p99_ratio_interval(&slower, &off, 1000).expect("interval");
        assert!(1.0 < lo && lo < 1.1 && hi < 1.25, "{lo}–{hi}");
        assert_eq!(p99_ratio_interval(&[], &off, 10), None);
    }

    #[test]
    fn median_of_odd_and_even_samples() {
        assert_eq!(median(&mut [0.9, 1.1, 0.95]), 0.95);
        assert_eq!(median(&mut [1.0, 0.9, 0.8, 1.2]), 0.95);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn capture_blocks_alternate_and_skip_the_frames_that_settle() {
        let blocks = CaptureBlocks::new(10, true, 100);
        let capturing: Vec<bool> = (0..40).map(|n| blocks.is_capturing(n)).collect();
        assert!(capturing[..10].iter().all(|c| *c) && capturing[10..20].iter().all(|c| !c));
        assert!(capturing[20..30].iter().all(|c| *c) && capturing[30..].iter().all(|c| !c));
        for n in 0..40 {
            // Capturing blocks take 1 ms, the others 2 ms: the histograms must not mix.
            let ms = if blocks.is_capturing(n) { 1 } else { 2 };
            blocks.record(n, Duration::from_millis(ms));
        }
        // 10-frame blocks settle for 2 frames (a quarter), so 8 of each 10 count.
        let samples = blocks.blocks();
        let count = |kind: bool| -> usize {
            samples
                .iter()
                .filter(|(c, _)| *c == kind)
                .map(|(_, t)| t.len())
                .sum()
        };
        assert_eq!((count(true), count(false)), (16, 16));
        // Block by block: 8 frames each, the capturing ones at 1 ms, the others at 2 ms.
        assert_eq!(samples.len(), 4);
        for (i, (capturing, times)) in samples.iter().enumerate() {
            assert_eq!(*capturing, i % 2 == 0);
            let us = if *capturing { 1000 } else { 2000 };
            assert!(
                times.len() == 8 && times.iter().all(|t| *t == us),
                "{times:?}"
            );
        }

        let flipped = CaptureBlocks::new(10, false, 0);
        assert!((0..40).all(|n| flipped.is_capturing(n) != blocks.is_capturing(n)));
        // Long blocks settle for SETTLE frames; a 1-frame block for none.
        assert_eq!(
            CaptureBlocks::new(50, true, 0).settle,
            CaptureBlocks::SETTLE
        );
        let single = CaptureBlocks::new(0, true, 2);
        single.record(0, Duration::from_millis(1));
        single.record(1, Duration::from_millis(1));
        assert_eq!(
            single.blocks(),
            vec![(true, vec![1000]), (false, vec![1000])]
        );
        // Frames beyond the room reserved are not kept.
        let full = CaptureBlocks::new(1, true, 1);
        full.record(0, Duration::from_millis(1));
        full.record(1, Duration::from_millis(1));
        assert_eq!(full.blocks(), vec![(true, vec![1000])]);
    }
}
