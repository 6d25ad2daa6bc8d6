//! Inference: one stage per camera that runs the detector on each prepared frame,
//! decodes its output, scores the frame with the policy's signals and hands the frames
//! the keep decision picks to the keeper.
//!
//! Invariant: the inference stage never blocks on anything downstream of it and never
//! does file or network I/O. The hand-off is `try_recv` (a free candidate) then
//! `try_send` (the keeper queue); every failure is counted by reason. It ends when its
//! work queue closes (after draining it), or at once on a direct `Shutdown`.

pub(crate) mod detector;
pub mod model;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use serde::{Deserialize, Serialize};

pub use detector::{DecodeParams, Decoder, Detection, Layout};
pub use model::{Model, ModelError, ModelFile, ModelInfo, Runner};

use crate::{
    capture::Slot,
    config::{Checker, Config},
    drift::{DriftStatus, stats::Sample},
    keep::{
        Handoff,
        context::{self, History},
    },
    ops::metrics::{Metrics, Stage},
    policy::{FrameFacts, KeepDecision, Policy, Scored},
    supervisor::{Command, StageContext, StageFailure},
};

/// The model, shared by every camera's inference stage (one session; ORT parallelises
/// inside a run with its intra-op threads).
pub type SharedModel = Arc<Mutex<Model>>;

/// ONNX Runtime's graph optimization level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizationLevel {
    Disable,
    Basic,
    Extended,
    All,
}

/// `[model]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawModel {
    path: String,
    ort_library: String,
    intra_threads: i64,
    intra_spinning: bool,
    optimization_level: OptimizationLevel,
    confidence_threshold: f64,
    iou_threshold: f64,
    max_detections: i64,
}

impl Default for RawModel {
    fn default() -> Self {
        Self {
            path: String::new(),
            ort_library: String::new(),
            intra_threads: 2,
            intra_spinning: false,
            optimization_level: OptimizationLevel::All,
            confidence_threshold: 0.25,
            iou_threshold: 0.45,
            max_detections: 100,
        }
    }
}

/// `[model]` keys that apply without a restart (the decoder's thresholds).
pub(crate) const LIVE_KEYS: &[&str] = &["confidence_threshold", "iou_threshold"];

/// The validated `[model]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `None`: the detector embedded in the binary.
    pub path: Option<PathBuf>,
    /// `None`: `$ORT_DYLIB_PATH`, else beside the binary.
    pub ort_library: Option<PathBuf>,
    pub intra_threads: usize,
    pub intra_spinning: bool,
    pub optimization_level: OptimizationLevel,
    pub confidence_threshold: f32,
    pub iou_threshold: f32,
    pub max_detections: usize,
}

impl ModelConfig {
    pub(crate) fn validate(m: &RawModel, c: &mut Checker) -> Self {
        let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        ModelConfig {
            path: path(&m.path),
            ort_library: path(&m.ort_library),
            intra_threads: c.int("intra_threads", m.intra_threads, 1, 64) as usize,
            intra_spinning: m.intra_spinning,
            optimization_level: m.optimization_level,
            confidence_threshold: c.float(
                "confidence_threshold",
                m.confidence_threshold,
                |v| v > 0.0 && v < 1.0,
                "between 0 and 1, e.g. 0.25",
            ) as f32,
            iou_threshold: c.float(
                "iou_threshold",
                m.iou_threshold,
                |v| v > 0.0 && v <= 1.0,
                "greater than 0 and at most 1, e.g. 0.45",
            ) as f32,
            max_detections: c.int("max_detections", m.max_detections, 1, 1000) as usize,
        }
    }

    /// This config with the live keys of `new` ([`LIVE_KEYS`]).
    pub(crate) fn with_live_changes(&self, new: &ModelConfig) -> ModelConfig {
        ModelConfig {
            confidence_threshold: new.confidence_threshold,
            iou_threshold: new.iou_threshold,
            ..self.clone()
        }
    }

    /// The decoder's thresholds, keeping detections down to `lowest_score` for the
    /// signals that look below the confidence threshold.
    pub fn decode_params(&self, lowest_score: f32) -> DecodeParams {
        DecodeParams {
            confidence: self.confidence_threshold,
            keep_down_to: lowest_score.min(self.confidence_threshold),
            iou: self.iou_threshold,
            max_detections: self.max_detections,
        }
    }
}

/// Why one inference failed.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Run(#[from] ModelError),
    #[error("decoding the output: {0}")]
    Decode(#[from] detector::ShapeError),
}

/// The inference stage's per-frame model work: run the model on a prepared slot, decode
/// and NMS. Owns the bound tensors and decode buffers, so it allocates nothing per frame.
pub struct Inferer {
    runner: Runner,
    decoder: Decoder,
    detections: Vec<Detection>,
    output_shape: Vec<usize>,
    confidence: f32,
    class_names: Vec<String>,
    /// How long the last `session.run` took.
    last_inference: Duration,
}

impl Inferer {
    /// An inferer for `model`, decoding with `params` ([`ModelConfig::decode_params`]).
    pub fn new(model: &Model, params: DecodeParams) -> Result<Self, ModelError> {
        let info = &model.info;
        Ok(Inferer {
            runner: model.runner()?,
            decoder: Decoder::new(info.layout, info.names.len(), params),
            detections: Vec::with_capacity(params.max_detections),
            output_shape: info.output_shape.clone(),
            confidence: params.confidence,
            class_names: info.names.clone(),
            last_inference: Duration::ZERO,
        })
    }

    /// New thresholds (a reload); `max_detections` stays what the buffers were made for.
    pub fn reconfigure(&mut self, params: DecodeParams) {
        self.confidence = params.confidence;
        self.decoder.set_params(DecodeParams {
            max_detections: self.detections.capacity().min(params.max_detections),
            ..params
        });
    }

    /// Inference → decode + NMS for one slot, recording each stage's latency.
    pub fn infer(
        &mut self,
        model: &Mutex<Model>,
        slot: &Slot,
        metrics: &Metrics,
    ) -> Result<(), InferError> {
        self.run_model(model, slot, metrics)?;
        self.decode(slot, metrics)
    }

    /// The model's run on the slot's tensor (the first half of [`Inferer::infer`]).
    pub fn run_model(
        &mut self,
        model: &Mutex<Model>,
        slot: &Slot,
        metrics: &Metrics,
    ) -> Result<(), InferError> {
        let t0 = Instant::now();
        self.runner.input_mut().copy_from_slice(&slot.tensor);
        model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .run(&mut self.runner)?;
        self.last_inference = t0.elapsed();
        metrics.record(Stage::Inference, self.last_inference);
        Ok(())
    }

    /// Decode + NMS of the last run's output (the second half of [`Inferer::infer`]).
    pub fn decode(&mut self, slot: &Slot, metrics: &Metrics) -> Result<(), InferError> {
        let t0 = Instant::now();
        self.decoder.decode(
            self.runner.output(),
            &self.output_shape,
            &slot.letterbox,
            &mut self.detections,
        )?;
        metrics.record(Stage::Decode, t0.elapsed());
        Ok(())
    }

    /// What the signals see of the last inferred frame.
    pub fn facts<'a>(&'a self, slot: &'a Slot) -> FrameFacts<'a> {
        FrameFacts {
            detections: &self.detections,
            stats: &slot.stats,
            confidence: self.confidence,
            class_names: &self.class_names,
            features: self.runner.features(),
        }
    }

    /// How long `session.run` took for the last inferred frame.
    pub fn last_inference(&self) -> Duration {
        self.last_inference
    }

    /// Detections of the last inferred frame.
    pub fn detections(&self) -> &[Detection] {
        &self.detections
    }

    /// The bound tensors, for running the bare model on the same inputs.
    pub fn runner_mut(&mut self) -> &mut Runner {
        &mut self.runner
    }
}

/// The inference stage of one camera.
pub(crate) struct Inference {
    epoch: Instant,
    camera_index: usize,
    model: SharedModel,
    inferer: Inferer,
    policy: Policy,
    decision: Box<dyn KeepDecision>,
    work_rx: Receiver<Box<Slot>>,
    slot_tx: Sender<Box<Slot>>,
    handoff: Handoff,
    /// The last frames not handed over, for context frames around a trigger.
    history: History,
    drift: Option<DriftTap>,
    metrics: Arc<Metrics>,
}

/// The inference side of the drift monitor: where each frame's sample goes, and the
/// camera's band for the capture boost.
pub(crate) struct DriftTap {
    pub samples: Sender<Sample>,
    pub status: Arc<DriftStatus>,
    /// `[drift] boost`.
    pub boost: f32,
    /// The reference's sample of views, for the novelty signal.
    pub views: Arc<[crate::capture::Thumbnail]>,
}

impl Inference {
    /// Camera `camera_index`'s inference stage, taking frames from `work_rx`, returning
    /// slots to `slot_tx`, and handing kept frames over through `handoff` (whose
    /// candidates hold frames of up to `frame_size`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        config: &Config,
        camera_index: usize,
        model: SharedModel,
        decision: Box<dyn KeepDecision>,
        work_rx: Receiver<Box<Slot>>,
        slot_tx: Sender<Box<Slot>>,
        (handoff, frame_size): (Handoff, (u32, u32)),
        drift: Option<DriftTap>,
        metrics: Arc<Metrics>,
        epoch: Instant,
    ) -> Result<Inference, ModelError> {
        let params = config.model.decode_params(
            config
                .policy
                .lowest_score(config.model.confidence_threshold),
        );
        let inferer = Inferer::new(&model.lock().unwrap_or_else(|p| p.into_inner()), params)?;
        let mut policy = Policy::new(&config.policy);
        if let Some(tap) = &drift {
            policy.use_reference(&tap.views);
        }
        Ok(Inference {
            epoch,
            camera_index,
            model,
            inferer,
            policy,
            decision,
            work_rx,
            slot_tx,
            handoff,
            history: History::new(
                config.keep.context_frames,
                frame_size.0,
                frame_size.1,
                config.model.max_detections,
            ),
            drift,
            metrics,
        })
    }

    pub(crate) fn run(mut self, ctx: &StageContext) -> Result<(), StageFailure> {
        let mut n = 0u64;
        loop {
            // Between frames: a reload takes effect here; a direct shutdown ends now.
            match ctx.commands.try_recv() {
                Ok(Command::Shutdown) => break,
                Ok(Command::Reload(config)) => {
                    let params = config.model.decode_params(
                        config
                            .policy
                            .lowest_score(config.model.confidence_threshold),
                    );
                    self.inferer.reconfigure(params);
                    self.policy.reconfigure(&config.policy);
                    self.decision.reconfigure(&config);
                }
                Ok(Command::Flush { done }) => {
                    let _ = done.send(());
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
            }
            let mut slot = match self.work_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(slot) => slot,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            ctx.heartbeat.begin();
            if let Some(fault) = crate::faults::at(&ctx.name, n) {
                fault.fire()?;
            }
            self.inferer
                .infer(&self.model, &slot, &self.metrics)
                .map_err(|e| StageFailure::new(format!("inference failed: {e}")))?;
            if n == 0 {
                // The first camera to get here sets it; 0 means "none yet".
                let first = (self.epoch.elapsed().as_nanos() as u64).max(1);
                let _ = self.metrics.first_inference_ns.compare_exchange(
                    0,
                    first,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            let t0 = Instant::now();
            let mut scores = self.policy.score(&self.inferer.facts(&slot));
            if let Some(drift) = &self.drift {
                let sample = Sample::new(
                    self.camera_index as u16,
                    &slot.stats,
                    self.inferer.detections(),
                    self.inferer.confidence,
                );
                if drift.samples.try_send(sample).is_err() {
                    crate::ops::metrics::event::dropped(
                        &self.metrics,
                        crate::ops::metrics::Drop::DriftBehind,
                    );
                }
                if drift.status.drifted(self.camera_index) {
                    scores.value *= drift.boost;
                }
            }
            let verdict = self.decision.keep(&Scored {
                n,
                scores: &scores,
                inference: self.inferer.last_inference(),
                thumbnail: &slot.stats.thumbnail,
            });
            self.metrics.record(Stage::Score, t0.elapsed());
            n += 1;
            let t0 = Instant::now();
            let handed = self.history.hand_over(
                &self.handoff,
                &self.metrics,
                verdict,
                context::Scored {
                    camera: self.camera_index,
                    frame: &mut slot.frame,
                    detections: self.inferer.detections(),
                    stats: slot.stats,
                    scores,
                },
            );
            if handed > 0 {
                self.metrics.record(Stage::Handoff, t0.elapsed());
                self.metrics
                    .candidates
                    .fetch_add(handed, std::sync::atomic::Ordering::Relaxed);
            }
            // The slot channel holds every slot of this camera, so this never blocks.
            let _ = self.slot_tx.try_send(slot);
            ctx.heartbeat.end();
        }
        let done = self.epoch.elapsed().as_nanos() as u64;
        self.metrics
            .inference_done_ns
            .fetch_max(done, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// A small model description for tests that need one but run no model.
#[cfg(test)]
pub(crate) fn test_model_info() -> ModelInfo {
    ModelInfo {
        id: "test".into(),
        version: "1".into(),
        origin: "test".into(),
        sha256: String::new(),
        layout: Layout::YoloV8,
        input_width: 32,
        input_height: 32,
        input_name: "images".into(),
        output_name: "output0".into(),
        output_shape: vec![1, 5, 21],
        features: None,
        normalization: crate::capture::preprocess::Normalization::UNIT,
        letterbox_fill: 114,
        names: vec!["thing".into()],
    }
}
