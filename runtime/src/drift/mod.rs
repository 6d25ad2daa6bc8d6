//! Drift: how far each camera's recent frames have moved from the calibration
//! reference (`framesift calibrate`), per camera, off the inference thread.
//!
//! The inference thread hands each frame's [`stats::Sample`] over with `try_send` (a full
//! queue is a counted `drift_behind` drop, never a wait). The drift stage keeps a rolling
//! window per camera ([`monitor::Monitor`]), and every tenth of a window compares each
//! statistic's histogram with the reference's: Jensen–Shannon distance decides the band
//! (stable / moderate / significant), population stability index is reported beside it.
//! A band change is an event (logged once, counted); the current verdicts are in
//! [`DriftStatus`], which the run summary prints and the inference thread reads (one
//! atomic per camera) to boost frames while their camera is drifted.

pub(crate) mod monitor;
pub(crate) mod stats;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering::Relaxed},
    },
    time::Duration,
};

use calibration::{Band, Bands, Reference, bands_for_noise};
use crossbeam_channel::{Receiver, TryRecvError};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Checker, Problem},
    infer::ModelInfo,
    ops::metrics::{Metrics, event},
    supervisor::{Command, StageContext, StageFailure},
};
use monitor::{Baseline, Baselines, Monitor, Verdict};
use stats::{STATS, Sample};

/// Samples waiting for the drift stage; past this the inference thread drops them. At
/// [`POLL`] it holds what 2 cameras at 1000 fps send between two polls.
pub(crate) const QUEUE: usize = 256;

/// How long the drift stage sleeps once its queue is empty.
const POLL: Duration = Duration::from_millis(50);

/// What to do when the reference was made with another model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMismatch {
    Warn,
    Error,
}

/// `[drift]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawDrift {
    reference: String,
    window_frames: i64,
    min_frames: i64,
    psi_moderate: f64,
    psi_significant: f64,
    on_model_mismatch: OnMismatch,
    boost: f64,
}

impl Default for RawDrift {
    fn default() -> Self {
        RawDrift {
            reference: String::new(),
            window_frames: 500,
            min_frames: 250,
            psi_moderate: 0.1,
            psi_significant: 0.25,
            on_model_mismatch: OnMismatch::Warn,
            boost: 1.0,
        }
    }
}

/// The validated `[drift]` table. Every key needs a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftConfig {
    /// The calibration file; `None`: no drift monitor.
    pub reference: Option<PathBuf>,
    pub window_frames: usize,
    pub min_frames: usize,
    pub psi_moderate: f64,
    pub psi_significant: f64,
    pub on_model_mismatch: OnMismatch,
    /// A frame's value is multiplied by this while its camera is moderate or worse.
    pub boost: f32,
}

impl DriftConfig {
    /// The problem with the reference file, if one is named and cannot be read as a
    /// reference (which model made it is checked when a run loads its model).
    pub(crate) fn check_reference(&self) -> Vec<Problem> {
        let Some(path) = &self.reference else {
            return Vec::new();
        };
        let Err(error) = Reference::load(path) else {
            return Vec::new();
        };
        let hint = match &error {
            calibration::ReferenceError::Read { error, .. }
                if error.kind() == std::io::ErrorKind::NotFound =>
            {
                format!(
                    "write it with framesift calibrate --out {}, or remove [drift] reference to run without drift monitoring",
                    path.display()
                )
            }
            _ => "run framesift calibrate again to rewrite it, or point reference at another file"
                .to_string(),
        };
        vec![Problem {
            path: vec!["drift".into(), "reference".into()],
            message: format!("drift.reference cannot be used: {error}"),
            hint: Some(hint),
        }]
    }

    pub(crate) fn validate(raw: &RawDrift, c: &mut Checker) -> Self {
        let window_frames = c.int("window_frames", raw.window_frames, 20, 100_000) as usize;
        let min_frames = c.int("min_frames", raw.min_frames, 10, 100_000) as usize;
        if min_frames > window_frames && !c.failed("window_frames") && !c.failed("min_frames") {
            c.fail(
                "min_frames",
                format!("min_frames ({min_frames}) is larger than window_frames ({window_frames})"),
                format!("write min_frames = {} (half the window)", window_frames / 2),
            );
        }
        let psi_moderate = c.float(
            "psi_moderate",
            raw.psi_moderate,
            |v| v > 0.0 && v < 10.0,
            "above 0 and below 10, e.g. 0.1",
        );
        let psi_significant = c.float(
            "psi_significant",
            raw.psi_significant,
            |v| v > 0.0 && v < 10.0,
            "above 0 and below 10, e.g. 0.25",
        );
        if psi_significant <= psi_moderate {
            c.fail(
                "psi_significant",
                format!(
                    "psi_significant ({psi_significant}) must be above psi_moderate ({psi_moderate})"
                ),
                "write e.g. psi_moderate = 0.1 and psi_significant = 0.25".to_string(),
            );
        }
        DriftConfig {
            reference: (!raw.reference.is_empty()).then(|| PathBuf::from(&raw.reference)),
            window_frames,
            min_frames,
            psi_moderate,
            psi_significant,
            on_model_mismatch: raw.on_model_mismatch,
            boost: c.float(
                "boost",
                raw.boost,
                |v| (1.0..=10.0).contains(&v),
                "from 1 (off) to 10, e.g. 1.5",
            ) as f32,
        }
    }

    /// The alert bands for this config's window: the PSI bands as configured, and JS
    /// thresholds at the JS distance matching each PSI value, raised to 1.5 × the
    /// reference's own window-to-window JS spread (`noise`) when that is larger
    /// ([`calibration::bands_for_noise`]) — rescaled from the window it was measured on
    /// by √(that window ÷ this one), as sampling noise shrinks as 1/√n.
    pub(crate) fn bands(&self, noise: Option<f64>, measured_on: usize) -> Bands {
        let noise = noise.map(|n| n * (measured_on as f64 / self.window_frames as f64).sqrt());
        bands_for_noise(noise, self.psi_moderate, self.psi_significant)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    // Not a `#[source]`: the message already holds it, and error chains would print it
    // twice.
    #[error("[drift] reference: {0}")]
    Reference(calibration::ReferenceError),
    #[error(
        "[drift] reference {path} was made with model {made_with}, this run uses {running}; run framesift calibrate with this model, or set [drift] on_model_mismatch = \"warn\""
    )]
    ModelMismatch {
        path: PathBuf,
        made_with: String,
        running: String,
    },
    #[error(
        "[drift] reference {path}: [novelty] views[{index}] is not a view (384 hex digits, a 16x12 luma thumbnail); run framesift calibrate again to rewrite the file"
    )]
    View { path: PathBuf, index: usize },
}

/// A loaded reference, ready for the monitors.
#[derive(Debug, Clone)]
pub(crate) struct LoadedReference {
    baselines: Baselines,
    /// The sample's views, for the novelty signal (empty in older references).
    pub views: std::sync::Arc<[crate::capture::Thumbnail]>,
}

impl LoadedReference {
    /// Load `config.reference` (empty when unset) for a run of `model`.
    pub(crate) fn load(config: &DriftConfig, model: &ModelInfo) -> Result<Self, DriftError> {
        let path = config.reference.clone().unwrap_or_default();
        let reference = Reference::load(&path).map_err(DriftError::Reference)?;
        let made_with = format!("{} (sha256 {})", reference.model.id, reference.model.sha256);
        let running = format!("{} (sha256 {})", model.id, model.sha256);
        if reference.model.sha256 != model.sha256 {
            match config.on_model_mismatch {
                OnMismatch::Error => {
                    return Err(DriftError::ModelMismatch {
                        path,
                        made_with,
                        running,
                    });
                }
                OnMismatch::Warn => tracing::warn!(
                    reference = %path.display(),
                    made_with,
                    running,
                    "the drift reference was made with another model; detection statistics may drift for that reason alone (run framesift calibrate with this model)"
                ),
            }
        }
        let views = reference
            .novelty
            .views
            .iter()
            .enumerate()
            .map(|(index, hex)| {
                crate::capture::Thumbnail::from_hex(hex).ok_or(DriftError::View {
                    path: path.clone(),
                    index,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(LoadedReference {
            views,
            ..Self::from_reference(&reference, config)
        })
    }

    /// Each statistic is judged by bands from its own noise, which a format 2 reference
    /// measures over resampled windows as well as sliding ones: a steady statistic (the
    /// detections' confidence) then warns of a change long before the noisiest one would
    /// (`framesift bench --drift` on eight carts: after 100–350 frames, against 150–800
    /// and four changes missed with one shared band), and no statistic's tail crossed its
    /// band on the stationary streams (1.6 million frames). A format 1 reference's
    /// per-statistic noise came from sliding windows alone, which understate how far one
    /// statistic strays over a long run (`calibration`'s test
    /// `resampled_windows_bound_a_long_stationary_run`), so its statistics share the
    /// bands of the noisiest one.
    pub(crate) fn from_reference(reference: &Reference, config: &DriftConfig) -> Self {
        let shared = config.bands(reference.reference_noise, reference.window_frames);
        let own = reference.per_statistic_bands();
        let baselines = STATS
            .iter()
            .map(|stat| {
                let Some(found) = reference.stat(stat.name).filter(|s| s.bins == stat.bins)
                else {
                    tracing::warn!(
                        statistic = stat.name,
                        "the drift reference has no matching histogram for this statistic; it is not monitored (calibrate again)"
                    );
                    return None;
                };
                Some(Baseline {
                    counts: found.counts.clone(),
                    bands: if own {
                        config.bands(found.noise, reference.window_frames)
                    } else {
                        shared
                    },
                })
            })
            .collect();
        LoadedReference {
            baselines,
            views: std::sync::Arc::new([]),
        }
    }

    pub(crate) fn baselines(&self) -> &Baselines {
        &self.baselines
    }

    /// The lowest and highest moderate thresholds the statistics are judged by, for logs.
    pub(crate) fn moderate_range(&self) -> Option<(f64, f64)> {
        self.baselines
            .iter()
            .flatten()
            .map(|b| (b.bands.js_moderate, b.bands.js_moderate))
            .reduce(|(lo, hi), (a, b)| (lo.min(a), hi.max(b)))
    }
}

/// One camera's drift, as the status and the summary report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraDrift {
    pub camera: String,
    pub band: Band,
    /// Frames the monitor has seen, and its window.
    pub frames: u64,
    pub window: usize,
    /// The statistic furthest from the reference in the latest window, with its JS
    /// distance and PSI; `None` before the first verdict.
    pub worst: Option<String>,
    pub js: f64,
    pub psi: f64,
    /// The worst statistic's moderate JS threshold.
    pub js_moderate: f64,
    pub max_psi: f64,
    pub band_changes: u64,
}

/// The current verdicts, per camera. Written by the drift stage only.
pub(crate) struct DriftStatus {
    cameras: Mutex<Vec<CameraDrift>>,
    /// Each camera's band as a number, read on the inference threads.
    bands: Vec<AtomicU8>,
}

impl DriftStatus {
    pub(crate) fn new(cameras: &[String], window: usize) -> Arc<Self> {
        Arc::new(DriftStatus {
            cameras: Mutex::new(
                cameras
                    .iter()
                    .map(|camera| CameraDrift {
                        camera: camera.clone(),
                        band: Band::Stable,
                        frames: 0,
                        window,
                        worst: None,
                        js: 0.0,
                        psi: 0.0,
                        js_moderate: 0.0,
                        max_psi: 0.0,
                        band_changes: 0,
                    })
                    .collect(),
            ),
            bands: cameras.iter().map(|_| AtomicU8::new(0)).collect(),
        })
    }

    /// Whether camera `index` is moderate or worse now (lock-free).
    pub(crate) fn drifted(&self, index: usize) -> bool {
        self.bands.get(index).is_some_and(|b| b.load(Relaxed) > 0)
    }

    pub(crate) fn snapshot(&self) -> Vec<CameraDrift> {
        self.cameras
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn seen(&self, index: usize, frames: u64) {
        let mut cameras = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cameras.get_mut(index) {
            c.frames = frames;
        }
    }

    fn update(&self, index: usize, monitor: &Monitor, verdict: &Verdict, changed: bool) {
        if let Some(b) = self.bands.get(index) {
            b.store(band_number(verdict.band), Relaxed);
        }
        let mut cameras = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cameras.get_mut(index) {
            c.band = verdict.band;
            c.frames = monitor.frames;
            c.worst = Some(verdict.worst.to_string());
            c.js = verdict.js;
            c.psi = verdict.psi;
            c.js_moderate = verdict.js_moderate;
            c.max_psi = verdict.max_psi;
            c.band_changes += u64::from(changed);
        }
    }
}

fn band_number(band: Band) -> u8 {
    match band {
        Band::Stable => 0,
        Band::Moderate => 1,
        Band::Significant => 2,
    }
}

/// The drift stage: one for all cameras.
pub(crate) struct DriftStage {
    pub cameras: Vec<String>,
    pub reference: LoadedReference,
    pub monitors: Vec<Monitor>,
    pub samples: Receiver<Sample>,
    pub status: Arc<DriftStatus>,
    pub metrics: Arc<Metrics>,
}

impl DriftStage {
    pub(crate) fn new(
        config: &DriftConfig,
        cameras: Vec<String>,
        reference: LoadedReference,
        samples: Receiver<Sample>,
        status: Arc<DriftStatus>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let monitors = cameras
            .iter()
            .map(|_| Monitor::new(config.window_frames, config.min_frames))
            .collect();
        DriftStage {
            cameras,
            reference,
            monitors,
            samples,
            status,
            metrics,
        }
    }

    /// Count samples until every inference stage has ended (the queue closes) or a
    /// direct `Shutdown`. The stage polls: it drains the queue, then sleeps
    /// [`POLL`]. Blocked in `recv` it would be woken by every `try_send`, a futex wake
    /// on the inference thread per frame (`framesift bench`: the score stage's p50 went
    /// from 2 µs to 14 µs); polled, a send finds nobody waiting and costs ~60 ns.
    pub(crate) fn run(mut self, ctx: &StageContext) -> Result<(), StageFailure> {
        loop {
            match ctx.commands.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return Ok(()),
                Ok(Command::Flush { done }) => {
                    let _ = done.send(());
                }
                Ok(Command::Reload(_)) | Err(TryRecvError::Empty) => {}
            }
            ctx.heartbeat.begin();
            loop {
                match self.samples.try_recv() {
                    Ok(sample) => self.take(&sample),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        ctx.heartbeat.end();
                        return Ok(());
                    }
                }
            }
            ctx.heartbeat.end();
            std::thread::sleep(POLL);
        }
    }

    fn take(&mut self, sample: &Sample) {
        let index = usize::from(sample.camera);
        let Some(monitor) = self.monitors.get_mut(index) else {
            return;
        };
        let change = monitor.push(sample, &self.reference.baselines);
        if monitor.take_fresh()
            && let Some(verdict) = monitor.verdict
        {
            self.status
                .update(index, monitor, &verdict, change.is_some());
        } else if monitor.verdict.is_none() {
            // Before the first verdict the count is all there is to report.
            self.status.seen(index, monitor.frames);
        }
        if let (Some((from, to)), Some(verdict)) = (change, monitor.verdict) {
            event::drift_changed(
                &self.metrics,
                &self.cameras[index],
                from,
                to,
                verdict.worst,
                verdict.js,
                verdict.psi,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use stats::STATS;

    /// A reference in `format` whose statistics' noise grows with their index.
    fn reference(format: u32) -> Reference {
        let stats: Vec<calibration::StatReference> = STATS
            .iter()
            .enumerate()
            .map(|(i, s)| calibration::StatReference {
                name: s.name.to_string(),
                bins: s.bins,
                counts: vec![1; s.bins.count],
                noise: Some(0.02 * (i + 1) as f64),
            })
            .collect();
        let worst = 0.02 * STATS.len() as f64;
        Reference {
            format,
            model: calibration::ModelStamp {
                id: "m".into(),
                sha256: "00".into(),
            },
            source: "test".into(),
            frames: 3000,
            window_frames: 500,
            bands: bands_for_noise(Some(worst), 0.1, 0.25),
            reference_noise: Some(worst),
            thresholds: Default::default(),
            stats,
            novelty: Default::default(),
        }
    }

    #[test]
    fn each_statistic_has_its_own_bands_unless_the_reference_predates_them() {
        let config = Config::default().drift;
        let moderate = |format: u32| -> Vec<f64> {
            LoadedReference::from_reference(&reference(format), &config)
                .baselines()
                .iter()
                .map(|b| b.as_ref().expect("every statistic").bands.js_moderate)
                .collect()
        };
        let own = moderate(2);
        let floor = js_matching_psi_floor(&config);
        let noisiest = 1.5 * 0.02 * STATS.len() as f64;
        // The quiet statistics keep the PSI-matching floor, the noisy ones are raised.
        assert_eq!(own[0], floor);
        assert!((own[STATS.len() - 1] - noisiest).abs() < 1e-12, "{own:?}");
        assert!(own.windows(2).all(|w| w[0] <= w[1]), "{own:?}");
        // Format 1: every statistic takes the noisiest one's bands.
        let shared = moderate(1);
        assert!(
            shared.iter().all(|&m| (m - noisiest).abs() < 1e-12),
            "{shared:?}"
        );
        let loaded = LoadedReference::from_reference(&reference(2), &config);
        assert_eq!(
            loaded.moderate_range(),
            Some((own[0], own[STATS.len() - 1]))
        );
    }

    fn js_matching_psi_floor(config: &DriftConfig) -> f64 {
        bands_for_noise(None, config.psi_moderate, config.psi_significant).js_moderate
    }
}
