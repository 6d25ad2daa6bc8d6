//! The running pipeline: the stages of a run, wired by bounded channels and owned by one
//! [`Supervisor`].
//!
//! Per camera:
//! ```text
//! capture-<cam>  source → preprocess (letterbox + stats) ─ work queue (bounded) ─▶
//! infer-<cam>    copy into bound input → ORT run → decode+NMS → signals → keep decision
//!                  └─ kept? try_recv a free candidate, swap frame, try_send ─▶
//! ```
//! One `keeper` stage serves all cameras: best-N buffer per window → spool.
//!
//! Invariants kept here:
//! - Memory is bounded by the config: per camera `queue_depth + 2` frame slots (each a
//!   frame and an input tensor), and `keeper_queue + keep capacity + cameras`
//!   candidates. Buffers circulate; nothing framesift does per frame allocates after
//!   warm-up (ONNX Runtime and libjpeg-turbo allocate inside their own calls:
//!   tests/alloc.rs).
//! - Shutdown is ordered by channel closure: capture stops → inference drains its queue
//!   and drops its keeper sender → the keeper flushes its buffer to the spool and ends.
//! - A stage that fails or panics ends the run: the supervisor hears it at once, the
//!   keeper is told to flush, every stage is stopped, and [`Pipeline::finish`] returns
//!   the failure naming the stage and its cause. A failed start stops the stages
//!   already started.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crossbeam_channel::bounded;
use serde::{Deserialize, Serialize};

use crate::{
    capture::{CameraChannels, Capture, SourceError},
    codec::DEFAULT_MAX_FRAME_PIXELS,
    config::{Checker, Config},
    drift::{CameraDrift, DriftError, DriftStage, DriftStatus, LoadedReference},
    infer::{DriftTap, Inference, SharedModel},
    keep::{
        Handoff, KeepConfig,
        keeper::{Keeper, KeeperError, Pool},
    },
    ops::metrics::{Drop, Metrics, Stage},
    policy::{KeepDecision, decide::TargetRate},
    store::{DaemonStatus, SharedSpool, uploader::Uploader},
    supervisor::{
        CAPTURE_NICE, Command, ExitReport, KEEPER_NICE, Priority, Role, Supervisor, UPLOADER_NICE,
    },
};

/// `[pipeline]` as written: how the stages are connected and scheduled.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPipeline {
    queue_depth: i64,
    keeper_queue: i64,
    capture_nice: i64,
    keeper_nice: i64,
    uploader_idle: bool,
    max_frame_pixels: i64,
}

impl Default for RawPipeline {
    fn default() -> Self {
        Self {
            queue_depth: 2,
            keeper_queue: 16,
            capture_nice: CAPTURE_NICE as i64,
            keeper_nice: KEEPER_NICE as i64,
            uploader_idle: true,
            max_frame_pixels: DEFAULT_MAX_FRAME_PIXELS as i64,
        }
    }
}

/// The validated `[pipeline]` table. Every key needs a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub queue_depth: usize,
    pub keeper_queue: usize,
    /// Nice steps the capture stages run below inference.
    pub capture_nice: i32,
    /// Nice steps the keeper runs below inference.
    pub keeper_nice: i32,
    /// The uploader's scheduling: the idle class, or nice 19 below inference.
    pub uploader: Priority,
    /// Frames with more pixels are refused before anything is allocated for them.
    pub max_frame_pixels: u64,
}

impl PipelineConfig {
    pub(crate) fn validate(p: &RawPipeline, c: &mut Checker) -> Self {
        PipelineConfig {
            queue_depth: c.int("queue_depth", p.queue_depth, 1, 64) as usize,
            keeper_queue: c.int("keeper_queue", p.keeper_queue, 1, 1024) as usize,
            capture_nice: c.int("capture_nice", p.capture_nice, 0, 19) as i32,
            keeper_nice: c.int("keeper_nice", p.keeper_nice, 0, 19) as i32,
            uploader: if p.uploader_idle {
                Priority::Idle
            } else {
                Priority::Nice(UPLOADER_NICE)
            },
            max_frame_pixels: c.int("max_frame_pixels", p.max_frame_pixels, 64 * 64, 8192 * 8192)
                as u64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("camera {camera}: {error}")]
    Source { camera: String, error: SourceError },
    #[error(transparent)]
    Spool(crate::store::SpoolError),
    #[error(transparent)]
    Keeper(#[from] KeeperError),
    #[error("camera {camera}: {reason}")]
    Inference { camera: String, reason: String },
    #[error("could not start thread {name}: {error}")]
    Spawn { name: String, error: std::io::Error },
    #[error(transparent)]
    Drift(#[from] DriftError),
}

/// A run that ended because a stage failed: the failure, and what the run did.
#[derive(Debug)]
pub struct RunFailure {
    pub failure: String,
    pub summary: Summary,
}

impl std::fmt::Display for RunFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.failure)
    }
}

impl std::error::Error for RunFailure {}

/// When to stop on its own (besides the end of every source and a stop request).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Stop after this many frames have been acquired (all cameras together).
    pub max_frames: Option<u64>,
    pub duration: Option<Duration>,
}

/// Makes each camera's keep decision (by camera index); the default is
/// [`TargetRate`] from `[keep] target_rate` and `[policy] min_value`.
pub(crate) type DecisionFactory = Arc<dyn Fn(usize) -> Box<dyn KeepDecision> + Send + Sync>;

/// How long an ordered shutdown may take before the remaining stages are told to stop
/// directly, and as long again before the run gives up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A running pipeline.
#[must_use = "a pipeline runs until finished"]
pub struct Pipeline {
    supervisor: Supervisor,
    spool: SharedSpool,
    spool_dir: std::path::PathBuf,
    /// An uploader stage runs.
    uploading: bool,
    /// The drift monitor's verdicts, when one runs.
    drift: Option<Arc<DriftStatus>>,
    metrics: Arc<Metrics>,
    started: Instant,
    deadline: Option<Instant>,
    /// A failure has been heard and the run is being stopped.
    failing: bool,
}

impl Pipeline {
    /// Open every source, recover the spool and start all stages. A failure part-way
    /// stops the stages already started before it returns.
    pub fn start(
        config: &Config,
        model: SharedModel,
        limits: Limits,
    ) -> Result<Pipeline, PipelineError> {
        Self::start_deciding(config, model, limits, None)
    }

    /// As [`Pipeline::start`], with each camera's keep decision made by `decision`
    /// instead of the policy's (`framesift bench`).
    pub(crate) fn start_deciding(
        config: &Config,
        model: SharedModel,
        limits: Limits,
        decision: Option<DecisionFactory>,
    ) -> Result<Pipeline, PipelineError> {
        let metrics = Arc::new(Metrics::default());
        let mut supervisor = Supervisor::default();
        let started = Instant::now();
        let (spool, recovery) = crate::store::open(&config.spool).map_err(PipelineError::Spool)?;
        tracing::info!(
            dir = %config.spool.dir.display(),
            entries = recovery.complete,
            removed_temp = recovery.removed_temp,
            removed_partial = recovery.removed_partial,
            removed_corrupt = recovery.removed_corrupt,
            unreadable = recovery.unreadable,
            "spool ready"
        );
        let result = Self::start_stages(
            &mut supervisor,
            config,
            spool.clone(),
            &model,
            &metrics,
            limits,
            decision,
        );
        let drift = match result {
            Ok(drift) => drift,
            Err(e) => {
                // Stop what was started; the keeper flushes whatever it was given.
                let stuck = supervisor.shut_down(SHUTDOWN_GRACE);
                if !stuck.is_empty() {
                    tracing::error!(stages = %stuck.join(", "), "stages did not stop after a failed start");
                }
                return Err(e);
            }
        };
        Ok(Pipeline {
            supervisor,
            spool,
            spool_dir: config.spool.dir.clone(),
            uploading: config.upload.target.is_some(),
            drift,
            metrics,
            started,
            deadline: limits.duration.map(|d| started + d),
            failing: false,
        })
    }

    fn start_stages(
        supervisor: &mut Supervisor,
        config: &Config,
        spool: SharedSpool,
        model: &SharedModel,
        metrics: &Arc<Metrics>,
        limits: Limits,
        decision: Option<DecisionFactory>,
    ) -> Result<Option<Arc<DriftStatus>>, PipelineError> {
        let info = &Arc::new(model.lock().unwrap_or_else(|p| p.into_inner()).info.clone());
        // The candidate pool, shared by all cameras, with room for a reload to grow it.
        let (max_w, max_h) = config
            .cameras
            .iter()
            .map(|c| c.source.frame_size())
            .max()
            .unwrap_or((0, 0));
        let cameras = config.cameras.len();
        let pool = config.keep.pool(config.pipeline.keeper_queue, cameras);
        let room = KeepConfig::pool_room(config.pipeline.keeper_queue, cameras);
        let (handoff, ends) = Handoff::new(
            pool,
            room,
            config.pipeline.keeper_queue,
            max_w,
            max_h,
            config.model.max_detections,
        );
        let pool = Pool {
            made: pool,
            target: pool,
            frame_size: (max_w, max_h),
            max_detections: config.model.max_detections,
        };
        // Camera i draws its control sample from seed + i; 0 in the config means "per
        // start", so a fixed N ≥ 1 maps to seed N - 1 and every u64 seed is reachable.
        let control_seed = match config.keep.control_seed {
            0 => spool.lock().unwrap_or_else(|p| p.into_inner()).run_seed(),
            fixed => fixed - 1,
        };
        let uploader = Uploader::build(config, spool.clone(), metrics.clone());
        let keeper = Keeper::build(config, info.clone(), spool, ends, pool, metrics.clone())?;
        spawn(
            supervisor,
            "keeper".into(),
            Role::Downstream,
            Priority::Nice(config.pipeline.keeper_nice),
            move |ctx| keeper.run(&ctx),
        )?;
        if let Some(uploader) = uploader {
            spawn(
                supervisor,
                "uploader".into(),
                Role::Service,
                config.pipeline.uploader,
                move |ctx| uploader.run(&ctx),
            )?;
        }

        let mut drift = None;
        if let Some(path) = &config.drift.reference {
            let reference = LoadedReference::load(&config.drift, info)?;
            let (lo, hi) = reference.moderate_range().unwrap_or_default();
            tracing::info!(
                reference = %path.display(),
                window_frames = config.drift.window_frames,
                js_moderate = %format!("{lo:.3}–{hi:.3}"),
                "drift monitor ready"
            );
            let names: Vec<String> = config.cameras.iter().map(|c| c.name.clone()).collect();
            let status = DriftStatus::new(&names, config.drift.window_frames);
            let views = reference.views.clone();
            let (samples_tx, samples_rx) = bounded(crate::drift::QUEUE);
            let stage = DriftStage::new(
                &config.drift,
                names,
                reference,
                samples_rx,
                status.clone(),
                metrics.clone(),
            );
            spawn(
                supervisor,
                "drift".into(),
                Role::Downstream,
                Priority::Nice(config.pipeline.keeper_nice),
                move |ctx| stage.run(&ctx),
            )?;
            drift = Some((samples_tx, status, views));
        }

        let epoch = Instant::now();
        let acquired = Arc::new(AtomicU64::new(0));
        for (index, cam) in config.cameras.iter().enumerate() {
            let channels = CameraChannels::new(cam, config.pipeline.queue_depth, info);
            let capture = Capture::build(
                cam,
                config.pipeline.max_frame_pixels,
                info,
                (channels.work_tx, channels.work_rx.clone()),
                channels.slot_rx,
                metrics.clone(),
                (acquired.clone(), limits.max_frames),
            )
            .map_err(|error| PipelineError::Source {
                camera: cam.name.clone(),
                error,
            })?;
            let decision = match &decision {
                Some(make) => make(index),
                None => Box::new(TargetRate::new(
                    config,
                    control_seed.wrapping_add(index as u64),
                )),
            };
            let inference = Inference::build(
                config,
                index,
                model.clone(),
                decision,
                channels.work_rx,
                channels.slot_tx,
                (handoff.clone(), (max_w, max_h)),
                drift.as_ref().map(|(samples, status, views)| DriftTap {
                    samples: samples.clone(),
                    status: status.clone(),
                    boost: config.drift.boost,
                    views: views.clone(),
                }),
                metrics.clone(),
                epoch,
            )
            .map_err(|e| PipelineError::Inference {
                camera: cam.name.clone(),
                reason: e.to_string(),
            })?;
            spawn(
                supervisor,
                cam.infer_stage(),
                Role::Downstream,
                Priority::Nice(0),
                move |ctx| inference.run(&ctx),
            )?;
            spawn(
                supervisor,
                cam.capture_stage(),
                Role::Source,
                Priority::Nice(config.pipeline.capture_nice),
                move |ctx| capture.run(&ctx),
            )?;
        }
        // The inference stages hold the only senders now: the drift stage ends when they do.
        Ok(drift.map(|(_, status, _)| status))
    }

    /// Wait up to `timeout` for the next stage to end. Stops the run when its time
    /// limit has passed, and — the moment a stage fails — tells the keeper to flush and
    /// every stage to stop.
    pub fn poll(&mut self, timeout: Duration) -> Option<ExitReport> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.stop();
        }
        let report = self.supervisor.next_exit(timeout)?;
        if !report.exit.is_clean() && !self.failing {
            self.failing = true;
            self.supervisor
                .tell("keeper", Command::Flush { done: bounded(1).0 });
            self.supervisor.stop();
        }
        Some(report)
    }

    /// True once every stage has ended.
    pub fn is_finished(&self) -> bool {
        self.supervisor.all_exited()
    }

    /// Begin the ordered shutdown: capture stops, queued frames are inferred, the keep
    /// buffer is flushed to the spool.
    pub fn stop(&mut self) {
        self.supervisor.stop();
    }

    /// Apply a new config's live keys (the caller has validated it and chosen them).
    pub fn reload(&self, config: Arc<Config>) {
        self.supervisor
            .broadcast(|| Command::Reload(config.clone()));
    }

    /// The stage busy with one item the longest, and for how long (watchdog).
    pub fn longest_busy(&self) -> Option<(&str, Duration)> {
        self.supervisor.longest_busy()
    }

    /// A stage that failed, if one has.
    pub fn failure(&self) -> Option<&ExitReport> {
        self.supervisor.first_failure()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Write `<spool>/.meta/status.json`, what `framesift spool status` reports of the
    /// running daemon.
    pub fn write_status(&self) {
        crate::store::write_status(
            &self.spool_dir,
            &DaemonStatus::from_metrics(&self.metrics, self.uploading),
        );
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub(crate) fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.supervisor.stage_names()
    }

    /// Let the run end on its own (every source ended, the frame or time limit
    /// reached, or a stage failed), then [`Pipeline::finish`] it.
    pub fn run_to_end(mut self) -> Result<Summary, Box<RunFailure>> {
        while !self.is_finished() {
            self.poll(Duration::from_millis(250));
        }
        self.finish()
    }

    /// Stop every stage (in order), wait for all of them, and say what the run did —
    /// or, when a stage failed, which one and why.
    pub fn finish(mut self) -> Result<Summary, Box<RunFailure>> {
        let stuck = self.supervisor.shut_down(SHUTDOWN_GRACE);
        self.write_status();
        let mut summary = summarize(&self.metrics, self.started.elapsed());
        {
            let spool = self.spool.lock().unwrap_or_else(|p| p.into_inner());
            summary.spool = Some((spool.len(), spool.used_bytes()));
        }
        summary.uploading = self.uploading;
        summary.drift = self
            .drift
            .as_ref()
            .map(|d| d.snapshot())
            .unwrap_or_default();
        let failure = self
            .supervisor
            .first_failure()
            .map(ToString::to_string)
            .or_else(|| {
                (!stuck.is_empty()).then(|| {
                    format!(
                        "stages {} did not stop within {} s of being told to",
                        stuck.join(", "),
                        2 * SHUTDOWN_GRACE.as_secs()
                    )
                })
            });
        match failure {
            Some(failure) => Err(Box::new(RunFailure { failure, summary })),
            None => Ok(summary),
        }
    }
}

fn spawn(
    supervisor: &mut Supervisor,
    name: String,
    role: Role,
    priority: Priority,
    body: impl FnOnce(crate::supervisor::StageContext) -> Result<(), crate::supervisor::StageFailure>
    + Send
    + 'static,
) -> Result<(), PipelineError> {
    supervisor
        .spawn(name.clone(), role, priority, body)
        .map_err(|error| PipelineError::Spawn { name, error })
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
    /// Candidates let go as near-duplicates of more valuable frames.
    pub duplicates: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub drops: Vec<(&'static str, u64)>,
    /// Spool entries evicted for frames worth more.
    pub spool_evicted: u64,
    /// Entries and bytes left in the spool at the end (`None`: not known).
    pub spool: Option<(usize, u64)>,
    /// An uploader ran; what it delivered and how many attempts failed.
    pub uploading: bool,
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    pub upload_failures: u64,
    /// (stage, count, median ms, p99 ms)
    pub stages: Vec<(&'static str, u64, f64, f64)>,
    /// Each camera's drift at the end, when a drift monitor ran.
    pub drift: Vec<CameraDrift>,
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
        duplicates: m.duplicates.load(Ordering::Relaxed),
        disconnects: m.disconnects.load(Ordering::Relaxed),
        reconnects: m.reconnects.load(Ordering::Relaxed),
        drops: Drop::ALL.iter().map(|d| (d.name(), m.drops(*d))).collect(),
        spool_evicted: m.spool_evicted.load(Ordering::Relaxed),
        spool: None,
        uploading: false,
        uploaded: m.uploaded.load(Ordering::Relaxed),
        uploaded_bytes: m.uploaded_bytes.load(Ordering::Relaxed),
        upload_failures: m.upload_failures.load(Ordering::Relaxed),
        stages: Stage::ALL
            .iter()
            .map(|s| {
                let h = m.stage(*s);
                (s.name(), h.count(), h.quantile_ms(0.5), h.quantile_ms(0.99))
            })
            .collect(),
        drift: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::infer::{Model, ModelFile, model};

    fn embedded_model(config: &Config) -> SharedModel {
        let (env, _) = model::environment(None).expect("ONNX Runtime (cross/fetch-ort.sh)");
        let file = ModelFile::embedded().expect("embedded model");
        Arc::new(Mutex::new(
            Model::load(&env, &file, &config.model).expect("model"),
        ))
    }

    #[test]
    fn a_failed_start_stops_the_stages_already_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "[[camera]]\nname = \"sfa\"\ntype = \"synthetic\"\nfps = 30.0\n\n[[camera]]\nname = \"sfb\"\ntype = \"v4l2\"\ndevice = \"/dev/video-framesift-missing\"\n\n[spool]\ndir = \"{}\"\n",
            dir.path().display()
        );
        let config = Config::parse(&text, "c.toml").expect("valid");
        let model = embedded_model(&config);
        let Err(error) = Pipeline::start(&config, model, Limits::default()) else {
            panic!("the second camera cannot start");
        };
        assert!(
            matches!(&error, PipelineError::Source { camera, .. } if camera == "sfb"),
            "{error}"
        );
        let live = crate::supervisor::live_threads();
        for stage in ["capture-sfa", "infer-sfa"] {
            assert!(
                !live.iter().any(|t| t == stage),
                "{stage} still runs: {live:?}"
            );
        }
    }

    #[test]
    fn a_run_to_its_frame_limit_ends_cleanly_with_every_stage_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.spool.dir = dir.path().to_path_buf();
        if let crate::capture::SourceConfig::Synthetic(s) = &mut config.cameras[0].source {
            (s.width, s.height) = (320, 180);
        }
        let model = embedded_model(&config);
        let pipeline = Pipeline::start(
            &config,
            model,
            Limits {
                max_frames: Some(12),
                duration: None,
            },
        )
        .expect("start");
        let names: Vec<String> = pipeline.stage_names().map(str::to_string).collect();
        assert_eq!(names, ["keeper", "infer-cam0", "capture-cam0"]);
        let summary = pipeline.run_to_end().expect("a clean run");
        assert_eq!((summary.frames, summary.inferred), (12, 12));
    }
}
