//! The running pipeline: threads and bounded channels wiring the stages.
//!
//! Per camera:
//! ```text
//! capture-<cam>  source → preprocess (letterbox + stats) ─ work queue (bounded) ─▶
//! infer-<cam>    copy into bound input → ORT run → decode+NMS → score
//!                  └─ candidate? try_recv a free candidate, swap frame, try_send ─▶
//! ```
//! One `keeper` thread serves all cameras: best-N buffer per window → spool.
//!
//! Architecture invariants kept here:
//! - The inference thread never blocks on anything downstream and never does I/O: the
//!   hand-off is `try_recv` (free candidate) + `try_send` (keeper queue), each failure
//!   counted by reason.
//! - Memory is fixed at start-up: per camera `queue_depth + 2` frame slots (each a frame
//!   and an input tensor), and `keeper_queue + keep capacity + cameras` candidates.
//!   Buffers circulate; nothing framesift does per frame allocates after warm-up (ONNX
//!   Runtime and libjpeg-turbo allocate inside their own calls: tests/alloc.rs).
//! - Shutdown is ordered by channel closure: capture stops → inference drains its queue
//!   and drops its keeper sender → the keeper flushes its buffer to the spool and exits.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

use crate::{
    codec::JpegEncoder,
    config::{CameraConfig, Config},
    detector::{DecodeParams, Decoder, Detection},
    frame::Frame,
    keep::{Candidate, KeepBuffer, Offer},
    metrics::{Drop, Heartbeat, Metrics, Stage, event},
    model::{Model, ModelInfo, Runner},
    preprocess::{FrameMeter, FrameStats, Letterbox, Preprocessor},
    priority,
    score::{self, Scores},
    sidecar,
    source::{FrameSource, Next, SourceError},
    spool::{ImageEncoding, Spool},
};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("camera {camera}: {error}")]
    Source { camera: String, error: SourceError },
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error("camera {camera}: {reason}")]
    Inference { camera: String, reason: String },
    #[error("could not start thread {name}: {error}")]
    Spawn { name: String, error: std::io::Error },
    #[error("thread {0} panicked")]
    Panicked(String),
    #[error("keeper: could not create the JPEG encoder: {0}")]
    Encoder(turbojpeg::Error),
}

/// The model, shared by every camera's inference thread (one session; ORT parallelises
/// inside a run with its intra-op threads).
pub type SharedModel = Arc<Mutex<Model>>;

/// When to stop on its own (besides the end of every source and a stop request).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Stop after this many frames have been acquired (all cameras together).
    pub max_frames: Option<u64>,
    pub duration: Option<Duration>,
}

/// `framesift bench`'s paired measurement of what keeping frames costs inference.
///
/// Each inference thread alternates blocks of `block` frames: in one every frame is handed
/// to the keeper whatever its score, in the next none is. Each frame's `session.run` time
/// is kept with its block number, for the bench's p99s and their resampled interval.
/// Machine noise that comes and goes over seconds then falls on both alike, and there is
/// no pipeline start-up in either. Blocks are counted per inference thread.
pub struct CaptureBlocks {
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
    pub const SETTLE: u64 = 4;

    /// Blocks of `block` frames (at least 1), starting with a capturing block when
    /// `capturing_first`, keeping samples of up to `frames` frames.
    pub fn new(block: u64, capturing_first: bool, frames: usize) -> Self {
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
    pub fn blocks(&self) -> Vec<(bool, Vec<u32>)> {
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
    pub fn is_capturing(&self, n: u64) -> bool {
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

/// One frame in flight between capture and inference, with its input tensor.
pub struct Slot {
    pub frame: Frame,
    pub tensor: Vec<f32>,
    pub letterbox: Letterbox,
    pub stats: FrameStats,
}

impl Slot {
    /// A slot with buffers for `width × height` frames and a `tensor_len` input.
    pub fn new(width: u32, height: u32, tensor_len: usize) -> Self {
        // A zeroed allocation is lazily mapped too, and a release build turns
        // `with_capacity` + `resize(0.0)` into one: fault the pages in first
        // (`slot_tensors_are_resident_before_the_first_frame` fails in release without).
        let mut tensor = Vec::with_capacity(tensor_len);
        crate::frame::prefault(&mut tensor);
        tensor.resize(tensor_len, 0.0);
        Slot {
            frame: Frame::with_capacity(width, height),
            tensor,
            letterbox: Letterbox::fit(1, 1, 1, 1),
            stats: FrameStats::default(),
        }
    }
}

/// The capture thread's per-frame work after acquisition: letterbox into the slot's
/// tensor and measure the frame. Separate from the thread so benchmarks and the
/// allocation test run exactly the same code.
pub struct Preparer {
    pub preprocessor: Preprocessor,
    pub meter: FrameMeter,
}

impl Preparer {
    pub fn new(info: &ModelInfo) -> Self {
        Preparer {
            preprocessor: Preprocessor::new(
                info.input_width,
                info.input_height,
                info.letterbox_fill,
                info.normalization,
            ),
            meter: FrameMeter::default(),
        }
    }

    pub fn prepare(&mut self, slot: &mut Slot) -> Result<(), crate::preprocess::PreprocessError> {
        slot.letterbox = self.preprocessor.letterbox(&slot.frame, &mut slot.tensor)?;
        // When the letterbox already holds the frame at the meter's scale (1280×720 into
        // 320), read the statistics from it instead of passing over the frame again.
        slot.stats = match self.meter.measure_letterboxed(
            &slot.frame,
            &self.preprocessor,
            &slot.letterbox,
            &slot.tensor,
        ) {
            Some(stats) => stats,
            None => self.meter.measure(&slot.frame),
        };
        Ok(())
    }
}

/// The inference thread's per-frame work: run the model on a prepared slot, decode,
/// score. Owns the bound tensors and decode buffers, so it allocates nothing per frame.
pub struct Inferer {
    runner: Runner,
    decoder: Decoder,
    detections: Vec<Detection>,
    output_shape: Vec<usize>,
    confidence: f32,
    scoring: crate::config::ScoringConfig,
    /// How long the last `session.run` took.
    last_inference: Duration,
}

impl Inferer {
    pub fn new(model: &Model, config: &Config) -> Result<Self, crate::model::ModelError> {
        let info = &model.info;
        Ok(Inferer {
            runner: model.runner()?,
            decoder: Decoder::new(
                info.layout,
                info.names.len(),
                DecodeParams {
                    confidence: config.model.confidence_threshold,
                    keep_down_to: (config.model.confidence_threshold
                        - config.scoring.uncertainty_band)
                        .max(0.0),
                    iou: config.model.iou_threshold,
                    max_detections: config.model.max_detections,
                },
            ),
            detections: Vec::with_capacity(config.model.max_detections),
            output_shape: info.output_shape.clone(),
            confidence: config.model.confidence_threshold,
            scoring: config.scoring.clone(),
            last_inference: Duration::ZERO,
        })
    }

    /// Inference → decode + NMS → score for one slot, recording each stage's latency.
    pub fn infer(
        &mut self,
        model: &Mutex<Model>,
        slot: &Slot,
        metrics: &Metrics,
    ) -> Result<Scores, String> {
        let t0 = Instant::now();
        self.runner.input_mut().copy_from_slice(&slot.tensor);
        model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .run(&mut self.runner)
            .map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        self.last_inference = t1 - t0;
        metrics.record(Stage::Inference, self.last_inference);
        self.decoder
            .decode(
                self.runner.output(),
                &self.output_shape,
                &slot.letterbox,
                &mut self.detections,
            )
            .map_err(|e| e.to_string())?;
        let t2 = Instant::now();
        metrics.record(Stage::Decode, t2 - t1);
        let scores = score::score(
            &self.detections,
            &slot.stats,
            self.confidence,
            &self.scoring,
        );
        metrics.record(Stage::Score, t2.elapsed());
        Ok(scores)
    }

    /// How long `session.run` took for the last inferred frame.
    pub fn last_inference(&self) -> Duration {
        self.last_inference
    }

    /// Detections of the last inferred frame.
    pub fn detections(&self) -> &[Detection] {
        &self.detections
    }

    /// Whether scores make the frame a candidate for keeping.
    pub fn is_candidate(&self, scores: &Scores) -> bool {
        scores.value >= self.scoring.min_value
    }

    /// The bound tensors, for running the bare model on the same inputs.
    pub fn runner_mut(&mut self) -> &mut Runner {
        &mut self.runner
    }
}

/// A running pipeline. Dropping it without [`Pipeline::join`] requests a stop.
#[must_use = "a pipeline runs until joined"]
pub struct Pipeline {
    threads: Vec<(String, JoinHandle<Result<(), PipelineError>>)>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    started: Instant,
    model: Arc<ModelInfo>,
    heartbeats: Vec<Arc<Heartbeat>>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub elapsed: Duration,
    /// From start to the last inference (excludes the final keeper flush).
    pub inference_elapsed: Duration,
    /// From start to the end of the first inference: start-up and pipeline fill.
    pub first_inference: Duration,
    pub frames: u64,
    pub inferred: u64,
    pub kept: u64,
    pub candidates: u64,
    pub evicted: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub drops: Vec<(&'static str, u64)>,
    /// (stage, count, median ms, p99 ms)
    pub stages: Vec<(&'static str, u64, f64, f64)>,
}

impl Summary {
    /// Frames inferred per second of inference time (start to last inference).
    pub fn fps(&self) -> f64 {
        let s = if self.inference_elapsed.is_zero() {
            self.elapsed
        } else {
            self.inference_elapsed
        }
        .as_secs_f64();
        if s > 0.0 {
            self.inferred as f64 / s
        } else {
            0.0
        }
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|(_, n)| n).sum()
    }
}

impl Pipeline {
    /// Open every source, recover the spool and start all threads. Fails before starting
    /// anything if a source cannot run (e.g. no camera) or the spool cannot be opened.
    pub fn start(
        config: &Config,
        model: SharedModel,
        limits: Limits,
    ) -> Result<Pipeline, PipelineError> {
        Self::start_with(config, model, limits, None)
    }

    /// As [`Pipeline::start`], with the keep decision replaced by `blocks`' alternation
    /// and every frame's inference time recorded there (`framesift bench`).
    pub fn start_measuring(
        config: &Config,
        model: SharedModel,
        limits: Limits,
        blocks: Arc<CaptureBlocks>,
    ) -> Result<Pipeline, PipelineError> {
        Self::start_with(config, model, limits, Some(blocks))
    }

    fn start_with(
        config: &Config,
        model: SharedModel,
        limits: Limits,
        blocks: Option<Arc<CaptureBlocks>>,
    ) -> Result<Pipeline, PipelineError> {
        let metrics = Arc::new(Metrics::default());
        let stop = Arc::new(AtomicBool::new(false));
        let info = Arc::new(model.lock().unwrap_or_else(|p| p.into_inner()).info.clone());

        let mut sources = Vec::with_capacity(config.cameras.len());
        for cam in &config.cameras {
            let source = cam
                .source
                .build(
                    (info.input_width, info.input_height),
                    config.pipeline.max_frame_pixels,
                )
                .map_err(|error| PipelineError::Source {
                    camera: cam.name.clone(),
                    error,
                })?;
            tracing::info!(camera = %cam.name, source = %source.describe(), "camera ready");
            sources.push(source);
        }
        let (spool, recovery) = Spool::open(
            &config.spool.dir,
            config.spool.max_bytes,
            config.spool.device_id.as_deref(),
        )?;
        tracing::info!(
            dir = %config.spool.dir.display(),
            complete = recovery.complete,
            removed_temp = recovery.removed_temp,
            removed_orphans = recovery.removed_orphan_images,
            removed_bad_sidecars = recovery.removed_bad_sidecars,
            "spool ready"
        );

        // Candidate pool shared by all cameras.
        let (max_w, max_h) = config
            .cameras
            .iter()
            .map(|c| c.source.frame_size())
            .max()
            .unwrap_or((0, 0));
        let candidates = config.pipeline.keeper_queue + config.keep.capacity + config.cameras.len();
        let (free_tx, free_rx) = bounded::<Box<Candidate>>(candidates);
        for _ in 0..candidates {
            let _ = free_tx.try_send(Box::new(Candidate::with_capacity(
                max_w,
                max_h,
                config.model.max_detections,
            )));
        }
        let (keep_tx, keep_rx) = bounded::<Box<Candidate>>(config.pipeline.keeper_queue);

        let mut threads = Vec::new();
        let mut heartbeats = Vec::new();
        let epoch = Instant::now();
        let acquired = Arc::new(AtomicU64::new(0));
        for ((index, cam), source) in config.cameras.iter().enumerate().zip(sources) {
            let (work_tx, work_rx) = bounded::<Box<Slot>>(config.pipeline.queue_depth);
            let slots = config.pipeline.queue_depth + 2;
            let (slot_tx, slot_rx) = bounded::<Box<Slot>>(slots);
            let tensor_len = 3 * info.input_width as usize * info.input_height as usize;
            let (w, h) = cam.source.frame_size();
            for _ in 0..slots {
                let _ = slot_tx.try_send(Box::new(Slot::new(w, h, tensor_len)));
            }
            let capture_beat = Arc::new(Heartbeat::new(format!("capture-{}", cam.name), epoch));
            let infer_beat = Arc::new(Heartbeat::new(format!("infer-{}", cam.name), epoch));
            heartbeats.push(capture_beat.clone());
            heartbeats.push(infer_beat.clone());
            let capture = Capture {
                heartbeat: capture_beat,
                camera: cam.clone(),
                source,
                preparer: Preparer::new(&info),
                live: cam.source.is_live(),
                work_tx,
                work_rx: work_rx.clone(),
                slot_rx: slot_rx.clone(),
                metrics: metrics.clone(),
                stop: stop.clone(),
                acquired: acquired.clone(),
                max_frames: limits.max_frames,
            };
            threads.push(spawn(
                format!("capture-{}", cam.name),
                config.pipeline.capture_nice,
                move || capture.run(),
            )?);

            let inferer = Inferer::new(&model.lock().unwrap_or_else(|p| p.into_inner()), config)
                .map_err(|e| PipelineError::Inference {
                    camera: cam.name.clone(),
                    reason: e.to_string(),
                })?;
            let inference = Inference {
                epoch,
                heartbeat: infer_beat,
                camera: cam.name.clone(),
                camera_index: index,
                model: model.clone(),
                inferer,
                work_rx,
                slot_tx,
                handoff: Handoff {
                    free_rx: free_rx.clone(),
                    free_tx: free_tx.clone(),
                    keep_tx: keep_tx.clone(),
                },
                metrics: metrics.clone(),
                blocks: blocks.clone(),
            };
            threads.push(spawn(format!("infer-{}", cam.name), 0, move || {
                inference.run()
            })?);
        }
        drop(keep_tx);

        let keeper = Keeper {
            cameras: config.cameras.iter().map(|c| c.name.clone()).collect(),
            model: info.clone(),
            buffer: KeepBuffer::new(config.keep.capacity, config.keep.when_full),
            window: Duration::from_secs_f64(config.keep.window_secs),
            jpeg_quality: config.keep.jpeg_quality,
            confidence: config.model.confidence_threshold,
            spool,
            keep_rx,
            free_tx,
            metrics: metrics.clone(),
            jpeg: JpegEncoder::new().map_err(PipelineError::Encoder)?,
            frame_size: (max_w, max_h),
        };
        threads.push(spawn(
            "keeper".into(),
            config.pipeline.keeper_nice,
            move || keeper.run(),
        )?);

        let started = epoch;
        if let Some(d) = limits.duration {
            let stop = stop.clone();
            let _ = std::thread::Builder::new()
                .name("deadline".into())
                .spawn(move || {
                    let until = started + d;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        std::thread::sleep(
                            Duration::from_millis(20)
                                .min(until.saturating_duration_since(Instant::now())),
                        );
                    }
                    stop.store(true, Ordering::Relaxed);
                });
        }
        Ok(Pipeline {
            threads,
            stop,
            metrics,
            started,
            model: info,
            heartbeats,
        })
    }

    /// Ask every thread to finish: capture stops, queued frames are inferred, the keep
    /// buffer is flushed to the spool.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The flag [`Pipeline::stop`] sets, for signal handlers.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The pipeline thread that has been busy with one frame the longest, and for how
    /// long; `None` when every thread is idle or waiting for input. A systemd watchdog
    /// is fed only while this stays short.
    pub fn longest_busy(&self) -> Option<(&str, Duration)> {
        self.heartbeats
            .iter()
            .filter_map(|h| h.busy_for().map(|d| (h.thread.as_str(), d)))
            .max_by_key(|(_, d)| *d)
    }

    /// True once every thread has ended.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|(_, t)| t.is_finished())
    }

    /// Wait for every thread; the first error (if any) wins, but all threads are joined.
    pub fn join(mut self) -> Result<Summary, PipelineError> {
        let mut first_error = None;
        for (name, handle) in std::mem::take(&mut self.threads) {
            let result = handle.join().unwrap_or(Err(PipelineError::Panicked(name)));
            if let Err(e) = result {
                tracing::error!(error = %e, "pipeline thread failed");
                first_error.get_or_insert(e);
            }
        }
        let summary = summarize(&self.metrics, self.started.elapsed());
        match first_error {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}

impl std::ops::Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A snapshot of the metrics as a summary.
pub fn summarize(m: &Metrics, elapsed: Duration) -> Summary {
    Summary {
        elapsed,
        inference_elapsed: Duration::from_nanos(m.inference_done_ns.load(Ordering::Relaxed)),
        first_inference: Duration::from_nanos(m.first_inference_ns.load(Ordering::Relaxed)),
        frames: m.frames.load(Ordering::Relaxed),
        inferred: m.stage(Stage::Inference).count(),
        kept: m.kept.load(Ordering::Relaxed),
        candidates: m.candidates.load(Ordering::Relaxed),
        evicted: m.evicted.load(Ordering::Relaxed),
        disconnects: m.disconnects.load(Ordering::Relaxed),
        reconnects: m.reconnects.load(Ordering::Relaxed),
        drops: Drop::ALL.iter().map(|d| (d.name(), m.drops(*d))).collect(),
        stages: Stage::ALL
            .iter()
            .map(|s| {
                let h = m.stage(*s);
                (s.name(), h.count(), h.quantile_ms(0.5), h.quantile_ms(0.99))
            })
            .collect(),
    }
}

/// Start a pipeline thread `nice` steps below the caller's priority (see [`priority`]).
fn spawn(
    name: String,
    nice: i32,
    f: impl FnOnce() -> Result<(), PipelineError> + Send + 'static,
) -> Result<(String, JoinHandle<Result<(), PipelineError>>), PipelineError> {
    let thread = name.clone();
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if nice > 0
                && std::env::var_os("FRAMESIFT_NO_NICE").is_none()
                && let Err(e) = priority::lower_current_thread(nice)
            {
                tracing::warn!(%thread, nice, "could not lower thread priority: {e}");
            }
            f()
        })
        .map_err(|error| PipelineError::Spawn {
            name: name.clone(),
            error,
        })?;
    Ok((name, handle))
}

// ---------------------------------------------------------------------------------------
// Capture + preprocess.

struct Capture {
    heartbeat: Arc<Heartbeat>,
    camera: CameraConfig,
    source: Box<dyn FrameSource>,
    preparer: Preparer,
    live: bool,
    work_tx: Sender<Box<Slot>>,
    /// A second handle on the work queue, to drop the oldest frame when it is full.
    work_rx: Receiver<Box<Slot>>,
    slot_rx: Receiver<Box<Slot>>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    acquired: Arc<AtomicU64>,
    max_frames: Option<u64>,
}

impl Capture {
    fn run(mut self) -> Result<(), PipelineError> {
        let name = self.camera.name.clone();
        let mut spare: Option<Box<Slot>> = None;
        // Between a lost stream and the next frame: failed attempts are not reconnects.
        let mut gone = false;
        while !self.stop.load(Ordering::Relaxed) {
            if let Some(max) = self.max_frames
                && self.acquired.load(Ordering::Relaxed) >= max
            {
                break;
            }
            // A free slot: a spare, one returned by inference, or (live sources only,
            // when the queue is full of waiting frames) the oldest waiting frame.
            let mut slot = match spare.take() {
                Some(s) => s,
                None => match self.slot_rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(s) => s,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };

            let t0 = Instant::now();
            slot.frame.clear();
            self.heartbeat.begin();
            let next = self.source.next_frame(&mut slot.frame);
            self.heartbeat.end();
            match next {
                Ok(Next::Frame) if gone => {
                    gone = false;
                    event::camera_reconnected(&self.metrics, &name);
                }
                Ok(Next::Frame) => {}
                Ok(Next::End) => break,
                Err(SourceError::BadFrame { path, reason }) => {
                    event::bad_frame(&self.metrics, &name, &path, &reason);
                    spare = Some(slot);
                    continue;
                }
                Err(SourceError::FrameTooLarge { path, reason }) => {
                    event::frame_too_large(&self.metrics, &name, &path, &reason);
                    spare = Some(slot);
                    continue;
                }
                Err(SourceError::Disconnected { reason, .. }) => {
                    if gone {
                        event::camera_still_gone(&name, &reason);
                    } else {
                        gone = true;
                        event::camera_lost(&self.metrics, &name, &reason);
                    }
                    spare = Some(slot);
                    continue;
                }
                Err(error @ SourceError::Fatal(_)) => {
                    return Err(PipelineError::Source {
                        camera: name,
                        error,
                    });
                }
            }
            let t1 = Instant::now();
            self.metrics.record(Stage::Acquire, t1 - t0);
            self.acquired.fetch_add(1, Ordering::Relaxed);
            self.metrics.frames.fetch_add(1, Ordering::Relaxed);

            if let Err(e) = self.preparer.prepare(&mut slot) {
                event::bad_frame(
                    &self.metrics,
                    &name,
                    std::path::Path::new(&slot.frame.origin),
                    &e.to_string(),
                );
                spare = Some(slot);
                continue;
            }
            self.metrics.record(Stage::Preprocess, t1.elapsed());

            if self.live {
                match self.work_tx.try_send(slot) {
                    Ok(()) => {}
                    Err(TrySendError::Full(slot)) => {
                        // Drop the oldest waiting frame and queue this one instead.
                        if let Ok(oldest) = self.work_rx.try_recv() {
                            event::dropped(&self.metrics, Drop::QueueFull);
                            spare = Some(oldest);
                        }
                        if let Err(e) = self.work_tx.try_send(slot) {
                            // Inference just took a frame; requeue failed only if the
                            // queue refilled, which only this thread does. Count it.
                            event::dropped(&self.metrics, Drop::QueueFull);
                            spare.get_or_insert(e.into_inner());
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => break,
                }
            } else if self.work_tx.send(slot).is_err() {
                break;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Inference → decode → score → hand-off.

struct Inference {
    epoch: Instant,
    heartbeat: Arc<Heartbeat>,
    camera: String,
    camera_index: usize,
    model: SharedModel,
    inferer: Inferer,
    work_rx: Receiver<Box<Slot>>,
    slot_tx: Sender<Box<Slot>>,
    handoff: Handoff,
    metrics: Arc<Metrics>,
    blocks: Option<Arc<CaptureBlocks>>,
}

impl Inference {
    fn run(mut self) -> Result<(), PipelineError> {
        let camera = self.camera.clone();
        let fail = |reason: String| PipelineError::Inference {
            camera: camera.clone(),
            reason,
        };
        let mut inferred_one = false;
        let mut n = 0u64;
        while let Ok(mut slot) = self.work_rx.recv() {
            self.heartbeat.begin();
            let scores = self
                .inferer
                .infer(&self.model, &slot, &self.metrics)
                .map_err(&fail)?;
            if !inferred_one {
                inferred_one = true;
                // The first camera to get here sets it; 0 means "none yet".
                let first = (self.epoch.elapsed().as_nanos() as u64).max(1);
                let _ = self.metrics.first_inference_ns.compare_exchange(
                    0,
                    first,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            let candidate = match &self.blocks {
                Some(blocks) => {
                    blocks.record(n, self.inferer.last_inference());
                    blocks.is_capturing(n)
                }
                None => self.inferer.is_candidate(&scores),
            };
            n += 1;
            if candidate {
                let t0 = Instant::now();
                self.metrics.candidates.fetch_add(1, Ordering::Relaxed);
                self.handoff.offer(
                    &self.metrics,
                    self.camera_index,
                    &mut slot.frame,
                    self.inferer.detections(),
                    slot.stats,
                    scores,
                );
                self.metrics.record(Stage::Handoff, t0.elapsed());
            }
            // The slot channel holds every slot of this camera, so this never blocks.
            let _ = self.slot_tx.try_send(slot);
            self.heartbeat.end();
        }
        let done = self.epoch.elapsed().as_nanos() as u64;
        self.metrics
            .inference_done_ns
            .fetch_max(done, Ordering::Relaxed);
        Ok(())
    }
}

/// The inference side of the keeper boundary: a free list of candidates and the keeper
/// queue. Nothing here blocks.
pub struct Handoff {
    free_rx: Receiver<Box<Candidate>>,
    free_tx: Sender<Box<Candidate>>,
    keep_tx: Sender<Box<Candidate>>,
}

impl Handoff {
    /// A hand-off with `free` pooled candidates (buffers for `width × height` frames) and
    /// a keeper queue of `queue`. Returns the keeper's ends: the queue to receive from
    /// and the free list to return candidates to.
    pub fn new(
        free: usize,
        queue: usize,
        width: u32,
        height: u32,
        max_detections: usize,
    ) -> (Handoff, Receiver<Box<Candidate>>, Sender<Box<Candidate>>) {
        let (free_tx, free_rx) = bounded(free);
        for _ in 0..free {
            let _ = free_tx.try_send(Box::new(Candidate::with_capacity(
                width,
                height,
                max_detections,
            )));
        }
        let (keep_tx, keep_rx) = bounded(queue);
        (
            Handoff {
                free_rx,
                free_tx: free_tx.clone(),
                keep_tx,
            },
            keep_rx,
            free_tx,
        )
    }

    /// Give a candidate to the keeper without blocking: take a free candidate, swap the
    /// frame buffers (no pixel copy), `try_send`. Every failure is counted.
    pub fn offer(
        &self,
        metrics: &Metrics,
        camera: usize,
        frame: &mut Frame,
        detections: &[Detection],
        stats: FrameStats,
        scores: Scores,
    ) {
        let Ok(mut candidate) = self.free_rx.try_recv() else {
            event::dropped(metrics, Drop::KeeperBusy);
            return;
        };
        std::mem::swap(&mut candidate.frame, frame);
        candidate.camera = camera;
        candidate.detections.clear();
        candidate.detections.extend_from_slice(detections);
        candidate.stats = stats;
        candidate.scores = scores;
        match self.keep_tx.try_send(candidate) {
            Ok(()) => {}
            Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) => {
                event::dropped(metrics, Drop::KeeperQueueFull);
                let _ = self.free_tx.try_send(c);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Keeper: best-N per window → spool.

struct Keeper {
    cameras: Vec<String>,
    model: Arc<ModelInfo>,
    buffer: KeepBuffer<Box<Candidate>>,
    window: Duration,
    jpeg_quality: u8,
    confidence: f32,
    spool: Spool,
    keep_rx: Receiver<Box<Candidate>>,
    free_tx: Sender<Box<Candidate>>,
    metrics: Arc<Metrics>,
    /// Encodes kept raw frames; warmed up to `frame_size` when the keeper starts.
    jpeg: JpegEncoder,
    /// The largest configured camera frame (0×0 when only replay files know).
    frame_size: (u32, u32),
}

impl Keeper {
    fn run(mut self) -> Result<(), PipelineError> {
        let (w, h) = self.frame_size;
        if let Err(e) = self.jpeg.warm_up(w, h) {
            // Not fatal: frames that arrived as JPEG need no encoder, and a real
            // encode failure is reported per frame.
            tracing::warn!("keeper: JPEG encoder warm-up at {w}x{h} failed: {e}");
        }
        let mut window_end = Instant::now() + self.window;
        loop {
            let timeout = window_end.saturating_duration_since(Instant::now());
            match self.keep_rx.recv_timeout(timeout) {
                Ok(candidate) => self.offer(candidate),
                // A timeout can come early (seen under qemu-user): flush only once the
                // window has really ended, so a window never yields more than capacity.
                Err(RecvTimeoutError::Timeout) if Instant::now() >= window_end => {
                    self.flush();
                    window_end = Instant::now() + self.window;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return Ok(());
                }
            }
        }
    }

    fn offer(&mut self, candidate: Box<Candidate>) {
        match self.buffer.offer(candidate) {
            Offer::Accepted => {}
            Offer::Evicted(c) | Offer::Rejected(c) => {
                self.metrics.evicted.fetch_add(1, Ordering::Relaxed);
                let _ = self.free_tx.try_send(c);
            }
        }
    }

    /// Write everything in the buffer to the spool, best first. Between writes, take
    /// what inference handed over meanwhile into the emptied buffer (the next window),
    /// so a slow disk or a busy CPU does not back the hand-off up into drops.
    fn flush(&mut self) {
        let items: Vec<Box<Candidate>> = self.buffer.drain().collect();
        for candidate in items {
            while let Ok(next) = self.keep_rx.try_recv() {
                self.offer(next);
            }
            let t0 = Instant::now();
            self.write(&candidate);
            self.metrics.record(Stage::Keeper, t0.elapsed());
            let _ = self.free_tx.try_send(candidate);
        }
    }

    fn write(&mut self, c: &Candidate) {
        let camera = &self.cameras[c.camera];
        let (image, encoding): (&[u8], ImageEncoding) = if !c.frame.encoded.is_empty() {
            (&c.frame.encoded, ImageEncoding::Original)
        } else {
            let encoded = self.jpeg.encode(
                &c.frame.rgb,
                c.frame.width,
                c.frame.height,
                self.jpeg_quality,
            );
            match encoded {
                Ok(bytes) => (bytes, ImageEncoding::Encoded),
                Err(e) => {
                    event::spool_write_failed(&self.metrics, &format!("JPEG encode: {e}"));
                    return;
                }
            }
        };
        let model = &self.model;
        let confidence = self.confidence;
        let result = self.spool.write(image, encoding, |id, record| {
            serde_json::to_vec_pretty(&sidecar::Sidecar::new(
                id, camera, c, model, confidence, record,
            ))
        });
        match result {
            Ok(path) => event::kept(&self.metrics, camera, &path, c.scores.value),
            Err(crate::spool::SpoolError::Full { used, max }) => {
                event::spool_full(&self.metrics, used, max)
            }
            Err(e) => event::spool_write_failed(&self.metrics, &e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn slot_tensors_are_resident_before_the_first_frame() {
        // 64 MB of f32: far above what the tests running beside this one allocate.
        let len = 16 << 20;
        let before = crate::metrics::rss_kib();
        let slot = Slot::new(0, 0, len);
        let grown = crate::metrics::rss_kib() - before;
        let kib = (len * 4 / 1024) as i64;
        assert_eq!(slot.tensor.len(), len);
        assert!(
            grown >= kib * 9 / 10,
            "RSS grew by {grown} KiB for a {kib} KiB tensor"
        );
        std::hint::black_box(&slot);
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

    fn handoff(free: usize, queue: usize) -> (Handoff, Receiver<Box<Candidate>>) {
        let (h, keep_rx, _free_tx) = Handoff::new(free, queue, 4, 4, 4);
        (h, keep_rx)
    }

    fn frame(seq: u64) -> Frame {
        let mut f = Frame::with_capacity(4, 4);
        f.set_size(4, 4);
        f.seq = seq;
        f
    }

    /// Offer 100 candidates to a keeper that never receives.
    fn stalled(free: usize, queue: usize) -> (Metrics, usize) {
        let (h, keep_rx) = handoff(free, queue);
        let metrics = Metrics::default();
        for seq in 0..100 {
            let mut f = frame(seq);
            h.offer(
                &metrics,
                0,
                &mut f,
                &[],
                FrameStats::default(),
                Scores::default(),
            );
        }
        (metrics, keep_rx.len())
    }

    fn keeper(dir: &std::path::Path, capacity: usize) -> (Keeper, Sender<Box<Candidate>>) {
        let (spool, _) = Spool::open(dir, u64::MAX, None).expect("spool");
        let (keep_tx, keep_rx) = bounded(8);
        let (free_tx, _free_rx) = bounded(64);
        let info = ModelInfo {
            id: "test".into(),
            version: "1".into(),
            origin: "test".into(),
            sha256: String::new(),
            layout: crate::detector::Layout::YoloV8,
            input_width: 32,
            input_height: 32,
            input_name: "images".into(),
            output_name: "output0".into(),
            output_shape: vec![1, 5, 21],
            normalization: crate::preprocess::Normalization::UNIT,
            letterbox_fill: 114,
            names: vec!["thing".into()],
        };
        let keeper = Keeper {
            cameras: vec!["cam0".into()],
            model: Arc::new(info),
            buffer: KeepBuffer::new(capacity, crate::config::WhenFull::DropLowest),
            window: Duration::from_secs(3600),
            jpeg_quality: 80,
            confidence: 0.25,
            spool,
            keep_rx,
            free_tx,
            metrics: Arc::new(Metrics::default()),
            jpeg: JpegEncoder::new().expect("encoder"),
            frame_size: (8, 8),
        };
        (keeper, keep_tx)
    }

    fn candidate(seq: u64, value: f32) -> Box<Candidate> {
        let mut c = Box::new(Candidate::with_capacity(8, 8, 1));
        c.frame = frame(seq);
        c.scores.value = value;
        c
    }

    /// A source that plays a script: a frame, or a disconnection.
    struct Scripted(std::collections::VecDeque<bool>, u64);

    impl FrameSource for Scripted {
        fn next_frame(&mut self, frame: &mut Frame) -> Result<Next, SourceError> {
            match self.0.pop_front() {
                None => Ok(Next::End),
                Some(true) => {
                    frame.set_size(64, 64);
                    frame.seq = self.1;
                    self.1 += 1;
                    Ok(Next::Frame)
                }
                Some(false) => Err(SourceError::Disconnected {
                    device: "/dev/video9".into(),
                    reason: "gone".into(),
                }),
            }
        }

        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    #[test]
    fn a_camera_that_comes_back_after_failed_attempts_counts_one_reconnect() {
        // Lost after one frame, four failed reopen attempts, back; lost again for one
        // attempt, back.
        let script = [true, false, false, false, false, true, true, false, true];
        let info = test_model_info();
        let (work_tx, work_rx) = bounded(16);
        let (slot_tx, slot_rx) = bounded(16);
        for _ in 0..16 {
            let _ = slot_tx.try_send(Box::new(Slot::new(64, 64, 3 * 32 * 32)));
        }
        let metrics = Arc::new(Metrics::default());
        let capture = Capture {
            heartbeat: Arc::new(Heartbeat::new("capture-test".into(), Instant::now())),
            camera: CameraConfig {
                name: "test".into(),
                source: crate::config::SourceConfig::Synthetic(Default::default()),
            },
            source: Box::new(Scripted(script.into_iter().collect(), 0)),
            preparer: Preparer::new(&info),
            live: false,
            work_tx,
            work_rx: work_rx.clone(),
            slot_rx,
            metrics: metrics.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            acquired: Arc::new(AtomicU64::new(0)),
            max_frames: None,
        };
        capture.run().expect("capture ends with the script");
        assert_eq!(work_rx.len(), 4, "every frame went on");
        assert_eq!(metrics.disconnects.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.reconnects.load(Ordering::Relaxed), 2);
    }

    fn test_model_info() -> ModelInfo {
        ModelInfo {
            id: "test".into(),
            version: "1".into(),
            origin: "test".into(),
            sha256: String::new(),
            layout: crate::detector::Layout::YoloV8,
            input_width: 32,
            input_height: 32,
            input_name: "images".into(),
            output_name: "output0".into(),
            output_shape: vec![1, 5, 21],
            normalization: crate::preprocess::Normalization::UNIT,
            letterbox_fill: 114,
            names: vec!["thing".into()],
        }
    }

    #[test]
    fn keeper_takes_hand_offs_into_the_next_window_while_it_flushes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut keeper, keep_tx) = keeper(dir.path(), 4);
        for seq in 0..4 {
            keeper.offer(candidate(seq, 1.0 + seq as f32));
        }
        for seq in 4..7 {
            keep_tx.send(candidate(seq, 0.5)).expect("send");
        }
        keeper.flush();
        assert_eq!(keeper.metrics.kept.load(Ordering::Relaxed), 4);
        assert!(
            keeper.keep_rx.is_empty(),
            "the queue was drained while writing"
        );
        let next: Vec<u64> = keeper.buffer.drain().map(|c| c.frame.seq).collect();
        assert_eq!(
            next.len(),
            3,
            "the next window holds what arrived: {next:?}"
        );
        assert!(next.iter().all(|seq| (4..7).contains(seq)));
        let written = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count();
        assert_eq!(written, 4);
    }

    /// Frame sequence numbers start at 0 in every run and the clock may be unset (a
    /// cart without RTC before NTP): neither may make a new entry replace a kept one.
    #[test]
    fn entries_of_restarted_runs_never_replace_each_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        for _run in 0..3 {
            let (mut keeper, _keep_tx) = keeper(dir.path(), 4);
            let mut c = candidate(0, 1.0);
            c.frame.captured_at = std::time::SystemTime::UNIX_EPOCH;
            keeper.offer(c);
            keeper.flush();
        }
        let (spool, _) = Spool::open(dir.path(), u64::MAX, None).expect("spool");
        let entries = spool.entries().expect("entries");
        assert_eq!(entries.len(), 3, "{entries:?}");
    }

    #[test]
    fn handoff_never_blocks_when_the_keeper_is_stalled() {
        // More free candidates than queue room: the queue fills, the rest bounce off it
        // and go back to the free list.
        let (metrics, queued) = stalled(3, 2);
        assert_eq!(queued, 2);
        assert_eq!(metrics.drops(Drop::KeeperQueueFull), 98);
        assert_eq!(metrics.drops(Drop::KeeperBusy), 0);
        // Every candidate is in the queue (the keeper holds them): the free list is dry.
        let (metrics, queued) = stalled(2, 2);
        assert_eq!(queued, 2);
        assert_eq!(metrics.drops(Drop::KeeperBusy), 98);
        assert_eq!(metrics.total_drops(), 98);
    }

    #[test]
    fn handoff_swaps_frames_instead_of_copying() {
        let (h, keep_rx) = handoff(1, 1);
        let metrics = Metrics::default();
        let mut f = frame(7);
        f.rgb[0] = 99;
        let pixels = f.rgb.as_ptr();
        let det = Detection {
            class_id: 1,
            score: 0.3,
            second_score: 0.1,
            x1: 0.0,
            y1: 0.0,
            x2: 1.0,
            y2: 1.0,
        };
        h.offer(
            &metrics,
            2,
            &mut f,
            &[det],
            FrameStats::default(),
            Scores {
                value: 0.9,
                ..Scores::default()
            },
        );
        let c = keep_rx.try_recv().expect("candidate queued");
        assert_eq!((c.camera, c.frame.seq, c.frame.rgb[0]), (2, 7, 99));
        assert_eq!(
            c.frame.rgb.as_ptr(),
            pixels,
            "the same buffer moved, no copy"
        );
        assert_eq!(c.detections, [det]);
        assert_ne!(
            f.rgb.as_ptr(),
            pixels,
            "the slot got the candidate's spare buffer"
        );
    }
}
