//! Configuration: one TOML file, parsed into raw structs, then validated into [`Config`].
//!
//! Parse, don't validate: the `Raw*` structs mirror the file exactly
//! (`deny_unknown_fields`, every key optional with a default), and `Config::from_raw`
//! turns them into the typed settings each stage is built from. Every problem is
//! collected — unknown keys, wrong types, out-of-range values — and reported with file,
//! line, column and a hint, not just the first.
//!
//! The commented default file (`default-config.toml`, printed by
//! `framesift config default`) is the user documentation; a test checks it parses to
//! exactly the built-in defaults and mentions every key.

use std::{fmt, ops::Range, path::PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use crate::source::{
    camera::{CameraFormat, V4l2Config},
    replay::ReplayConfig,
    synthetic::{Split, SyntheticConfig},
};

/// The commented default configuration, exactly what `framesift config default` prints.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default-config.toml");

// ---------------------------------------------------------------------------------------
// Validated configuration.

/// Everything a run needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub model: ModelConfig,
    pub cameras: Vec<CameraConfig>,
    pub pipeline: PipelineConfig,
    pub scoring: ScoringConfig,
    pub keep: KeepConfig,
    pub spool: SpoolConfig,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizationLevel {
    Disable,
    Basic,
    Extended,
    All,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CameraConfig {
    pub name: String,
    pub source: SourceConfig,
}

/// The frame source of one camera, closed set tagged by `type` in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    Synthetic(SyntheticConfig),
    Replay(ReplayConfig),
    V4l2(V4l2Config),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub queue_depth: usize,
    pub keeper_queue: usize,
    /// Nice steps the capture threads run below inference (see `priority`).
    pub capture_nice: i32,
    /// Nice steps the keeper runs below inference.
    pub keeper_nice: i32,
    /// Frames with more pixels are refused before anything is allocated for them.
    pub max_frame_pixels: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoringConfig {
    pub uncertainty_band: f32,
    pub blur_threshold: f32,
    pub uncertainty_weight: f32,
    pub margin_weight: f32,
    pub blur_weight: f32,
    pub min_value: f32,
    pub reason_level: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    DropLowest,
    DropNewest,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeepConfig {
    pub capacity: usize,
    pub window_secs: f64,
    pub when_full: WhenFull,
    pub jpeg_quality: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// `None`: the id kept in the spool, made at random the first time.
    pub device_id: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_raw(RawConfig::default()).unwrap_or_else(|errors| {
            // The built-in defaults are checked by a test; this cannot happen.
            panic!("built-in defaults are invalid: {errors:?}")
        })
    }
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            diagnostics: vec![Diagnostic {
                line: 0,
                column: 0,
                message: format!("cannot read the file: {e}"),
                hint: Some(
                    "check the path, or run without --config to use the built-in defaults".into(),
                ),
            }],
        })?;
        Config::parse(&text, &file)
    }

    /// Parse and validate config text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let error = |diagnostics| ConfigError {
            file: file.to_string(),
            diagnostics,
        };
        let (raw, mut diagnostics) = deserialize_collecting(text);
        let Some(raw) = raw else {
            return Err(error(diagnostics));
        };
        match Config::from_raw(raw) {
            Ok(config) if diagnostics.is_empty() => Ok(config),
            Ok(_) => Err(error(diagnostics)),
            Err(semantic) => {
                let doc = DeTable::parse(text).ok();
                for problem in semantic {
                    let span = doc
                        .as_ref()
                        .and_then(|d| locate(d.get_ref(), &problem.path));
                    let (line, column) = span.map_or((0, 0), |s| line_column(text, s.start));
                    diagnostics.push(Diagnostic {
                        line,
                        column,
                        message: problem.message,
                        hint: problem.hint,
                    });
                }
                diagnostics.sort_by_key(|d| (d.line, d.column));
                Err(error(diagnostics))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors.

/// All problems found in one config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub diagnostics: Vec<Diagnostic>,
}

/// One problem, at a 1-based line and column (0 when the position is unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {}: ", self.file)?;
            if d.line > 0 {
                write!(f, "line {}, column {}: ", d.line, d.column)?;
            }
            write!(f, "{}", d.message)?;
            if let Some(hint) = &d.hint {
                write!(f, "; {hint}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A semantic problem found after deserializing, located later by its key path.
#[derive(Debug)]
struct Problem {
    path: Vec<PathPart>,
    message: String,
    hint: Option<String>,
}

#[derive(Debug, Clone)]
enum PathPart {
    Key(&'static str),
    Index(usize),
}

fn dotted(path: &[PathPart]) -> String {
    let mut out = String::new();
    for part in path {
        match part {
            PathPart::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            PathPart::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Raw structs: the file as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    model: RawModel,
    camera: Option<Vec<RawCamera>>,
    pipeline: RawPipeline,
    scoring: RawScoring,
    keep: RawKeep,
    spool: RawSpool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawModel {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum SourceKind {
    #[default]
    Synthetic,
    Replay,
    V4l2,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawSplit {
    Studio,
    Store,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawFormat {
    Mjpeg,
    Yuyv,
}

/// One `[[camera]]` table. Flat on purpose: a `type`-tagged serde enum would lose the
/// line/column of errors inside it. Keys that do not apply to the type are rejected
/// during validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCamera {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: SourceKind,
    width: Option<i64>,
    height: Option<i64>,
    fps: Option<f64>,
    seed: Option<u64>,
    split: Option<RawSplit>,
    frames_per_scene: Option<i64>,
    dir: Option<String>,
    #[serde(rename = "loop")]
    looping: Option<bool>,
    device: Option<String>,
    format: Option<RawFormat>,
    reconnect_initial_ms: Option<i64>,
    reconnect_max_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPipeline {
    queue_depth: i64,
    keeper_queue: i64,
    capture_nice: i64,
    keeper_nice: i64,
    max_frame_pixels: i64,
}

impl Default for RawPipeline {
    fn default() -> Self {
        Self {
            queue_depth: 2,
            keeper_queue: 16,
            capture_nice: crate::priority::CAPTURE_NICE as i64,
            keeper_nice: crate::priority::KEEPER_NICE as i64,
            max_frame_pixels: crate::codec::DEFAULT_MAX_FRAME_PIXELS as i64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawScoring {
    uncertainty_band: f64,
    blur_threshold: f64,
    uncertainty_weight: f64,
    margin_weight: f64,
    blur_weight: f64,
    min_value: f64,
    reason_level: f64,
}

impl Default for RawScoring {
    fn default() -> Self {
        Self {
            uncertainty_band: 0.15,
            blur_threshold: 30.0,
            uncertainty_weight: 1.0,
            margin_weight: 0.5,
            blur_weight: 0.5,
            min_value: 0.5,
            reason_level: 0.5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawKeep {
    capacity: i64,
    window_secs: f64,
    when_full: WhenFull,
    jpeg_quality: i64,
}

impl Default for RawKeep {
    fn default() -> Self {
        Self {
            capacity: 16,
            window_secs: 30.0,
            when_full: WhenFull::DropLowest,
            jpeg_quality: 90,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSpool {
    dir: String,
    max_bytes: i64,
    device_id: String,
}

impl Default for RawSpool {
    fn default() -> Self {
        Self {
            dir: "framesift-spool".into(),
            max_bytes: 1 << 30,
            device_id: String::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validation: raw → typed, collecting every problem.

/// Collects problems while converting; each check names the key path it is about.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn fail(&mut self, path: Vec<PathPart>, message: String, hint: impl Into<Option<String>>) {
        self.problems.push(Problem {
            path,
            message,
            hint: hint.into(),
        });
    }

    /// An integer in `lo..=hi`; on failure records a problem and returns `lo`.
    fn int(&mut self, path: Vec<PathPart>, value: i64, lo: i64, hi: i64) -> i64 {
        if (lo..=hi).contains(&value) {
            value
        } else {
            let key = dotted(&path);
            let range = if hi == i64::MAX {
                format!("of at least {lo}")
            } else {
                format!("from {lo} to {hi}")
            };
            self.fail(
                path,
                format!("{key} = {value} is out of range"),
                format!("write a whole number {range}"),
            );
            lo
        }
    }

    /// A float satisfying `ok`, described by `range` for the hint.
    fn float(
        &mut self,
        path: Vec<PathPart>,
        value: f64,
        ok: impl Fn(f64) -> bool,
        range: &str,
    ) -> f64 {
        if value.is_finite() && ok(value) {
            value
        } else {
            let key = dotted(&path);
            self.fail(
                path,
                format!("{key} = {value} is out of range"),
                format!("write a number {range}"),
            );
            0.0
        }
    }
}

fn key(k: &'static str) -> PathPart {
    PathPart::Key(k)
}

impl Config {
    fn from_raw(raw: RawConfig) -> Result<Config, Vec<Problem>> {
        let mut c = Checker::default();

        let m = &raw.model;
        let model = ModelConfig {
            path: non_empty(&m.path),
            ort_library: non_empty(&m.ort_library),
            intra_threads: c.int(
                vec![key("model"), key("intra_threads")],
                m.intra_threads,
                1,
                64,
            ) as usize,
            intra_spinning: m.intra_spinning,
            optimization_level: m.optimization_level,
            confidence_threshold: c.float(
                vec![key("model"), key("confidence_threshold")],
                m.confidence_threshold,
                |v| v > 0.0 && v < 1.0,
                "between 0 and 1, e.g. 0.25",
            ) as f32,
            iou_threshold: c.float(
                vec![key("model"), key("iou_threshold")],
                m.iou_threshold,
                |v| v > 0.0 && v <= 1.0,
                "greater than 0 and at most 1, e.g. 0.45",
            ) as f32,
            max_detections: c.int(
                vec![key("model"), key("max_detections")],
                m.max_detections,
                1,
                1000,
            ) as usize,
        };

        let raw_cameras = raw.camera.unwrap_or_else(|| vec![RawCamera::default()]);
        if raw_cameras.is_empty() {
            c.fail(
                vec![key("camera")],
                "no cameras configured".into(),
                "add a [[camera]] table, e.g. type = \"synthetic\"".to_string(),
            );
        }
        let mut cameras = Vec::with_capacity(raw_cameras.len());
        for (i, cam) in raw_cameras.into_iter().enumerate() {
            cameras.push(validate_camera(&mut c, i, cam));
        }
        for (i, cam) in cameras.iter().enumerate() {
            if cameras[..i].iter().any(|other| other.name == cam.name) {
                c.fail(
                    vec![key("camera"), PathPart::Index(i), key("name")],
                    format!("camera name \"{}\" is used twice", cam.name),
                    "give every [[camera]] its own name".to_string(),
                );
            }
        }

        let p = &raw.pipeline;
        let pipeline = PipelineConfig {
            queue_depth: c.int(
                vec![key("pipeline"), key("queue_depth")],
                p.queue_depth,
                1,
                64,
            ) as usize,
            keeper_queue: c.int(
                vec![key("pipeline"), key("keeper_queue")],
                p.keeper_queue,
                1,
                1024,
            ) as usize,
            capture_nice: c.int(
                vec![key("pipeline"), key("capture_nice")],
                p.capture_nice,
                0,
                19,
            ) as i32,
            keeper_nice: c.int(
                vec![key("pipeline"), key("keeper_nice")],
                p.keeper_nice,
                0,
                19,
            ) as i32,
            max_frame_pixels: c.int(
                vec![key("pipeline"), key("max_frame_pixels")],
                p.max_frame_pixels,
                64 * 64,
                8192 * 8192,
            ) as u64,
        };
        for (i, cam) in cameras.iter().enumerate() {
            let (w, h) = cam.source.frame_size();
            if u64::from(w) * u64::from(h) > pipeline.max_frame_pixels {
                c.fail(
                    vec![key("camera"), PathPart::Index(i), key("width")],
                    format!(
                        "camera[{i}] is {w}x{h}, more pixels than pipeline.max_frame_pixels = {}",
                        pipeline.max_frame_pixels
                    ),
                    format!(
                        "make the frame smaller, or raise [pipeline] max_frame_pixels to at least {}",
                        u64::from(w) * u64::from(h)
                    ),
                );
            }
        }

        let s = &raw.scoring;
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        let non_negative = |v: f64| v >= 0.0;
        let scoring = ScoringConfig {
            uncertainty_band: c.float(
                vec![key("scoring"), key("uncertainty_band")],
                s.uncertainty_band,
                |v| (0.0..1.0).contains(&v),
                "from 0 up to (not including) 1, e.g. 0.15",
            ) as f32,
            blur_threshold: c.float(
                vec![key("scoring"), key("blur_threshold")],
                s.blur_threshold,
                |v| v > 0.0,
                "greater than 0, e.g. 30.0",
            ) as f32,
            uncertainty_weight: c.float(
                vec![key("scoring"), key("uncertainty_weight")],
                s.uncertainty_weight,
                non_negative,
                "0 or more, e.g. 1.0",
            ) as f32,
            margin_weight: c.float(
                vec![key("scoring"), key("margin_weight")],
                s.margin_weight,
                non_negative,
                "0 or more, e.g. 0.5",
            ) as f32,
            blur_weight: c.float(
                vec![key("scoring"), key("blur_weight")],
                s.blur_weight,
                non_negative,
                "0 or more, e.g. 0.5",
            ) as f32,
            min_value: c.float(
                vec![key("scoring"), key("min_value")],
                s.min_value,
                non_negative,
                "0 or more, e.g. 0.5",
            ) as f32,
            reason_level: c.float(
                vec![key("scoring"), key("reason_level")],
                s.reason_level,
                unit,
                "from 0 to 1, e.g. 0.5",
            ) as f32,
        };

        let k = &raw.keep;
        let keep = KeepConfig {
            capacity: c.int(vec![key("keep"), key("capacity")], k.capacity, 1, 1024) as usize,
            window_secs: c.float(
                vec![key("keep"), key("window_secs")],
                k.window_secs,
                |v| v > 0.0,
                "greater than 0, e.g. 30.0",
            ),
            when_full: k.when_full,
            jpeg_quality: c.int(
                vec![key("keep"), key("jpeg_quality")],
                k.jpeg_quality,
                1,
                100,
            ) as u8,
        };

        let sp = &raw.spool;
        if sp.dir.is_empty() {
            c.fail(
                vec![key("spool"), key("dir")],
                "spool.dir is empty".into(),
                "write a directory, e.g. dir = \"/var/lib/framesift/spool\"".to_string(),
            );
        }
        let id_ok = |id: &str| {
            id.len() <= 64
                && id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
        };
        if !id_ok(&sp.device_id) {
            c.fail(
                vec![key("spool"), key("device_id")],
                format!("spool.device_id = \"{}\" is not a usable id", sp.device_id),
                "write up to 64 letters, digits, '-', '_' or '.', e.g. device_id = \"cart-0042\""
                    .to_string(),
            );
        }
        let spool = SpoolConfig {
            device_id: (!sp.device_id.is_empty()).then(|| sp.device_id.clone()),
            dir: PathBuf::from(&sp.dir),
            max_bytes: c.int(
                vec![key("spool"), key("max_bytes")],
                sp.max_bytes,
                1 << 20,
                i64::MAX,
            ) as u64,
        };

        if c.problems.is_empty() {
            Ok(Config {
                model,
                cameras,
                pipeline,
                scoring,
                keep,
                spool,
            })
        } else {
            Err(c.problems)
        }
    }
}

fn non_empty(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

fn validate_camera(c: &mut Checker, index: usize, cam: RawCamera) -> CameraConfig {
    let at = |k: &'static str| vec![key("camera"), PathPart::Index(index), key(k)];
    let type_name = match cam.kind {
        SourceKind::Synthetic => "synthetic",
        SourceKind::Replay => "replay",
        SourceKind::V4l2 => "v4l2",
    };
    // Keys that only some types accept, with the types that accept them.
    let specific: [(&'static str, bool, &[SourceKind]); 10] = [
        (
            "width",
            cam.width.is_some(),
            &[SourceKind::Synthetic, SourceKind::V4l2],
        ),
        (
            "height",
            cam.height.is_some(),
            &[SourceKind::Synthetic, SourceKind::V4l2],
        ),
        ("seed", cam.seed.is_some(), &[SourceKind::Synthetic]),
        ("split", cam.split.is_some(), &[SourceKind::Synthetic]),
        (
            "frames_per_scene",
            cam.frames_per_scene.is_some(),
            &[SourceKind::Synthetic],
        ),
        ("dir", cam.dir.is_some(), &[SourceKind::Replay]),
        ("loop", cam.looping.is_some(), &[SourceKind::Replay]),
        ("device", cam.device.is_some(), &[SourceKind::V4l2]),
        ("format", cam.format.is_some(), &[SourceKind::V4l2]),
        (
            "reconnect_initial_ms",
            cam.reconnect_initial_ms.is_some() || cam.reconnect_max_ms.is_some(),
            &[SourceKind::V4l2],
        ),
    ];
    for (name, present, kinds) in specific {
        if present && !kinds.contains(&cam.kind) {
            let names: Vec<String> = kinds
                .iter()
                .map(|k| {
                    format!(
                        "\"{}\"",
                        match k {
                            SourceKind::Synthetic => "synthetic",
                            SourceKind::Replay => "replay",
                            SourceKind::V4l2 => "v4l2",
                        }
                    )
                })
                .collect();
            let key_name = if name == "reconnect_initial_ms" && cam.reconnect_initial_ms.is_none() {
                "reconnect_max_ms"
            } else {
                name
            };
            c.fail(
                at(key_name),
                format!("camera[{index}].{key_name} does not apply to type = \"{type_name}\""),
                format!("remove it, or set type = {}", names.join(" or ")),
            );
        }
    }

    let name = match cam.name {
        Some(n)
            if !n.is_empty()
                && n.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') =>
        {
            n
        }
        Some(n) => {
            c.fail(
                at("name"),
                format!("camera name \"{n}\" may only hold letters, digits, '-' and '_'"),
                "write e.g. name = \"front-basket\"".to_string(),
            );
            format!("cam{index}")
        }
        None => format!("cam{index}"),
    };
    let size = |c: &mut Checker, k: &'static str, v: Option<i64>, default: i64| {
        c.int(at(k), v.unwrap_or(default), 64, 8192) as u32
    };
    let fps = c.float(
        at("fps"),
        cam.fps.unwrap_or(0.0),
        |v| (0.0..=1000.0).contains(&v),
        "from 0 to 1000 (0 = unpaced)",
    );

    let source = match cam.kind {
        SourceKind::Synthetic => SourceConfig::Synthetic(SyntheticConfig {
            width: size(c, "width", cam.width, 1280),
            height: size(c, "height", cam.height, 720),
            fps: fps as f32,
            seed: cam.seed.unwrap_or(1),
            split: match cam.split {
                Some(RawSplit::Studio) => Split::Studio,
                Some(RawSplit::Store) | None => Split::Store,
            },
            frames_per_scene: c.int(
                at("frames_per_scene"),
                cam.frames_per_scene.unwrap_or(8),
                1,
                1000,
            ) as u32,
            prerendered: 0,
        }),
        SourceKind::Replay => {
            let dir = cam.dir.unwrap_or_default();
            if dir.is_empty() {
                c.fail(
                    at("type"),
                    format!("camera[{index}] has type = \"replay\" but no dir"),
                    "add dir = \"/path/to/frames\" (a directory of .jpg/.png files)".to_string(),
                );
            }
            SourceConfig::Replay(ReplayConfig {
                dir: PathBuf::from(dir),
                fps: fps as f32,
                looping: cam.looping.unwrap_or(false),
            })
        }
        SourceKind::V4l2 => {
            let initial = c.int(
                at("reconnect_initial_ms"),
                cam.reconnect_initial_ms.unwrap_or(500),
                1,
                3_600_000,
            );
            let max = c.int(
                at("reconnect_max_ms"),
                cam.reconnect_max_ms.unwrap_or(30_000),
                1,
                3_600_000,
            );
            if max < initial {
                c.fail(
                    at("reconnect_max_ms"),
                    format!(
                        "reconnect_max_ms ({max}) is less than reconnect_initial_ms ({initial})"
                    ),
                    "make reconnect_max_ms at least reconnect_initial_ms".to_string(),
                );
            }
            let fps = if cam.fps.is_some() { fps } else { 30.0 };
            if fps < 1.0 || fps.fract() != 0.0 {
                c.fail(
                    at("fps"),
                    format!("camera[{index}].fps = {fps} is not a whole rate a camera can run at"),
                    "write e.g. fps = 30".to_string(),
                );
            }
            SourceConfig::V4l2(V4l2Config {
                device: cam.device.unwrap_or_else(|| "/dev/video0".into()),
                width: size(c, "width", cam.width, 1280),
                height: size(c, "height", cam.height, 720),
                fps: fps as u32,
                format: match cam.format {
                    Some(RawFormat::Yuyv) => CameraFormat::Yuyv,
                    Some(RawFormat::Mjpeg) | None => CameraFormat::Mjpeg,
                },
                reconnect_initial_ms: initial as u64,
                reconnect_max_ms: max as u64,
            })
        }
    };
    CameraConfig { name, source }
}

// ---------------------------------------------------------------------------------------
// Deserializing while collecting every error.

/// Deserialize the raw config, collecting every serde error rather than stopping at the
/// first: after each error the offending entry is blanked out (replaced by spaces, so
/// line and column of everything else stay put) and deserialization is retried.
fn deserialize_collecting(text: &str) -> (Option<RawConfig>, Vec<Diagnostic>) {
    // Syntax errors first: all of them, from the recovering parser.
    let (_, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let diagnostics = syntax
            .iter()
            .map(|e| {
                let (line, column) = e.span().map_or((0, 0), |s| line_column(text, s.start));
                Diagnostic {
                    line,
                    column,
                    message: format!("invalid TOML: {}", e.message().trim()),
                    hint: Some("see https://toml.io for the syntax; `framesift config default` prints a valid file".into()),
                }
            })
            .collect();
        return (None, diagnostics);
    }

    let mut working = text.to_string();
    let mut diagnostics = Vec::new();
    for _ in 0..100 {
        match toml::from_str::<RawConfig>(&working) {
            Ok(raw) => return (Some(raw), diagnostics),
            Err(e) => {
                let Some(span) = e.span() else {
                    diagnostics.push(Diagnostic {
                        line: 0,
                        column: 0,
                        message: e.message().trim().to_string(),
                        hint: None,
                    });
                    return (None, diagnostics);
                };
                let Ok(doc) = DeTable::parse(&working) else {
                    break;
                };
                let entry = find_entry(doc.get_ref(), &span, &working, &mut Vec::new());
                let (line, column) = line_column(text, span.start);
                let (message, hint) = explain(
                    e.message(),
                    entry.as_ref().map(|e| e.path.as_str()).unwrap_or(""),
                );
                diagnostics.push(Diagnostic {
                    line,
                    column,
                    message,
                    hint,
                });
                match entry {
                    Some(entry) => blank(&mut working, entry.blank),
                    None => return (None, diagnostics),
                }
            }
        }
    }
    (None, diagnostics)
}

/// The table entry an error points into: its dotted path and the text to blank out.
struct Entry {
    path: String,
    blank: Range<usize>,
}

/// Find the innermost key/value entry whose key or value span contains `span`.
fn find_entry(
    table: &DeTable<'_>,
    span: &Range<usize>,
    text: &str,
    prefix: &mut Vec<String>,
) -> Option<Entry> {
    for (k, v) in table.iter() {
        let (ks, vs) = (k.span(), v.span());
        let whole = ks.start.min(vs.start)..ks.end.max(vs.end);
        let hit_key = ks.start <= span.start && span.end <= ks.end;
        let hit_value = whole.start <= span.start && span.end <= whole.end;
        if !hit_key && !hit_value {
            // A standard table's value span may be just its header: also search inside.
            if let DeValue::Table(inner) = v.get_ref() {
                prefix.push(k.get_ref().to_string());
                if let Some(found) = find_entry(inner, span, text, prefix) {
                    return Some(found);
                }
                prefix.pop();
            }
            if let DeValue::Array(items) = v.get_ref() {
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        prefix.push(format!("{}[{i}]", k.get_ref()));
                        if let Some(found) = find_entry(inner, span, text, prefix) {
                            return Some(found);
                        }
                        prefix.pop();
                    }
                }
            }
            continue;
        }
        if !hit_key {
            // The error is inside the value: descend if it is a table.
            if let DeValue::Table(inner) = v.get_ref() {
                prefix.push(k.get_ref().to_string());
                if let Some(found) = find_entry(inner, span, text, prefix) {
                    return Some(found);
                }
                prefix.pop();
            }
        }
        let mut path = prefix.join(".");
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k.get_ref());
        let blank = if matches!(v.get_ref(), DeValue::Table(_)) && is_header(text, ks.start) {
            // `[table]`: blank the header and its body, up to the next header.
            line_start(text, ks.start)..next_header(text, ks.end)
        } else {
            whole
        };
        return Some(Entry { path, blank });
    }
    None
}

fn line_start(text: &str, at: usize) -> usize {
    text[..at].rfind('\n').map_or(0, |i| i + 1)
}

fn is_header(text: &str, key_start: usize) -> bool {
    text[line_start(text, key_start)..key_start]
        .trim_start()
        .starts_with('[')
}

fn next_header(text: &str, from: usize) -> usize {
    let mut pos = text[from..].find('\n').map_or(text.len(), |i| from + i + 1);
    while pos < text.len() {
        if text[pos..].trim_start_matches([' ', '\t']).starts_with('[') {
            return pos;
        }
        pos = text[pos..].find('\n').map_or(text.len(), |i| pos + i + 1);
    }
    text.len()
}

fn blank(text: &mut String, range: Range<usize>) {
    let replaced: String = text[range.clone()]
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(range, &replaced);
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before[line_start(text, offset)..].chars().count() + 1;
    (line, column)
}

/// Turn a serde message into a field engineer's message and hint.
fn explain(message: &str, path: &str) -> (String, Option<String>) {
    let message = message.trim();
    let (table, key_name) = match path.rsplit_once('.') {
        Some((table, k)) => (Some(table), k),
        None => (None, path),
    };
    let within = table.map_or("at the top level".to_string(), |t| format!("in [{t}]"));
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (unknown, expected) = split_expected(rest);
        let hint = closest(unknown, &expected)
            .map(|best| format!("did you mean \"{best}\"?"))
            .or_else(|| {
                (!expected.is_empty()).then(|| format!("valid keys here: {}", expected.join(", ")))
            });
        return (format!("unknown key \"{unknown}\" {within}"), hint);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (unknown, expected) = split_expected(rest);
        let quoted: Vec<String> = expected.iter().map(|e| format!("\"{e}\"")).collect();
        let hint = closest(unknown, &expected)
            .map(|best| format!("did you mean \"{best}\"?"))
            .or_else(|| Some(format!("write one of {}", quoted.join(", "))));
        return (
            format!("unknown value \"{unknown}\" for {}", display_key(path)),
            hint,
        );
    }
    // "invalid type: string \"x\", expected f64" and "invalid value: ..., expected ...".
    let mismatch = message
        .strip_prefix("invalid type: ")
        .map(|rest| (rest, true))
        .or_else(|| {
            message
                .strip_prefix("invalid value: ")
                .map(|rest| (rest, false))
        });
    if let Some((rest, is_type)) = mismatch
        && let Some((found, expected)) = rest.split_once(", expected ")
    {
        let hint = if is_type {
            default_example(path, key_name).map(|example| format!("write e.g. {example}"))
        } else {
            None
        };
        return (
            format!(
                "{} must be {}, found {found}",
                display_key(path),
                describe_expected(expected)
            ),
            hint,
        );
    }
    (format!("{}: {message}", display_key(path)), None)
}

fn display_key(path: &str) -> String {
    if path.is_empty() {
        "the file".into()
    } else {
        path.to_string()
    }
}

/// Split "x`, expected one of `a`, `b`" into ("x", ["a", "b"]).
fn split_expected(rest: &str) -> (&str, Vec<&str>) {
    let (unknown, tail) = rest.split_once('`').unwrap_or((rest, ""));
    let expected = tail.split('`').skip(1).step_by(2).collect();
    (unknown, expected)
}

fn closest<'a>(unknown: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(unknown, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn describe_expected(expected: &str) -> String {
    let e = expected.trim();
    if e.starts_with('i') || e.starts_with('u') {
        "a whole number".into()
    } else if e.starts_with('f') {
        "a number".into()
    } else if e.contains("string") || e.contains("variant") {
        "a string in quotes".into()
    } else if e.contains("bool") {
        "true or false".into()
    } else if e.contains("sequence") {
        "a list of [[camera]] tables".into()
    } else {
        e.to_string()
    }
}

/// `key = value` as written in the default config, to show in hints.
fn default_example(path: &str, key_name: &str) -> Option<String> {
    let generic = path_without_indexes(path);
    let (table, _) = generic.rsplit_once('.')?;
    let mut in_table = false;
    for line in DEFAULT_CONFIG_TOML.lines() {
        let line = line.trim_start_matches("# ").trim();
        if line.starts_with('[') {
            in_table = line.trim_matches(['[', ']']) == table;
            continue;
        }
        if in_table
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key_name
        {
            return Some(format!("{key_name} = {}", v.trim()));
        }
    }
    None
}

fn path_without_indexes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut depth = 0;
    for ch in path.chars() {
        match ch {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out
}

/// Find the span of a key path in the parsed document (the key's span when present,
/// else the closest enclosing table's).
fn locate(table: &DeTable<'_>, path: &[PathPart]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let PathPart::Key(name) = first else {
        return None;
    };
    let (k, v) = table.get_key_value(*name)?;
    match rest.first() {
        None => Some(k.span()),
        Some(PathPart::Index(i)) => {
            let DeValue::Array(items) = v.get_ref() else {
                return Some(k.span());
            };
            let item = items.get(*i)?;
            let DeValue::Table(inner) = item.get_ref() else {
                return Some(item.span());
            };
            locate(inner, &rest[1..]).or(Some(item.span()))
        }
        Some(PathPart::Key(_)) => {
            let DeValue::Table(inner) = v.get_ref() else {
                return Some(k.span());
            };
            locate(inner, rest).or(Some(k.span()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        match Config::parse(text, "config.toml") {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let config = Config::parse("", "empty.toml").expect("empty config");
        assert_eq!(config, Config::default());
        assert_eq!(config.cameras.len(), 1);
        assert!(matches!(
            config.cameras[0].source,
            SourceConfig::Synthetic(_)
        ));
    }

    #[test]
    fn default_file_is_valid_and_equals_builtin_defaults() {
        let config =
            Config::parse(DEFAULT_CONFIG_TOML, "default.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config, Config::default());
    }

    #[test]
    fn default_file_documents_every_key() {
        // Every key the raw structs accept must appear (maybe commented out) in the
        // default file, preceded by a comment.
        let keys = [
            (
                "model",
                &[
                    "path",
                    "ort_library",
                    "intra_threads",
                    "intra_spinning",
                    "optimization_level",
                    "confidence_threshold",
                    "iou_threshold",
                    "max_detections",
                ][..],
            ),
            (
                "camera",
                &[
                    "name",
                    "type",
                    "width",
                    "height",
                    "fps",
                    "seed",
                    "split",
                    "frames_per_scene",
                    "dir",
                    "loop",
                    "device",
                    "format",
                    "reconnect_initial_ms",
                    "reconnect_max_ms",
                ][..],
            ),
            (
                "pipeline",
                &[
                    "queue_depth",
                    "keeper_queue",
                    "capture_nice",
                    "keeper_nice",
                    "max_frame_pixels",
                ][..],
            ),
            (
                "scoring",
                &[
                    "uncertainty_band",
                    "blur_threshold",
                    "uncertainty_weight",
                    "margin_weight",
                    "blur_weight",
                    "min_value",
                    "reason_level",
                ][..],
            ),
            (
                "keep",
                &["capacity", "window_secs", "when_full", "jpeg_quality"][..],
            ),
            ("spool", &["dir", "max_bytes", "device_id"][..]),
        ];
        for (table, names) in keys {
            for name in names {
                let path = format!("{table}.{name}");
                assert!(
                    default_example(&path, name).is_some(),
                    "{path} is not in default-config.toml"
                );
                // And the file accepts it (unknown keys would be rejected).
                let value = default_example(&path, name).unwrap_or_default();
                let header = if table == "camera" {
                    "[[camera]]\ntype = \"synthetic\""
                } else {
                    ""
                };
                let _ = (value, header);
            }
        }
    }

    #[test]
    fn several_cameras() {
        let text = r#"
[[camera]]
name = "front"
type = "synthetic"
seed = 3

[[camera]]
name = "back"
type = "replay"
dir = "/data/frames"
loop = true
"#;
        let config = Config::parse(text, "c.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.cameras.len(), 2);
        assert_eq!(config.cameras[0].name, "front");
        assert!(
            matches!(&config.cameras[1].source, SourceConfig::Replay(r) if r.looping && r.dir == std::path::Path::new("/data/frames"))
        );
    }

    #[test]
    fn unknown_key_names_line_column_and_closest_key() {
        insta::assert_snapshot!(errors("[scoring]\nblur_treshold = 12.0\n"), @r#"error: config.toml: line 2, column 1: unknown key "blur_treshold" in [scoring]; did you mean "blur_threshold"?"#);
    }

    #[test]
    fn all_errors_are_collected() {
        let text = r#"[model]
intra_threads = "two"
confidence_threshold = 1.5

[scoring]
treshold = 0.3
blur_weight = -1.0

[keep]
when_full = "drop_oldest"

[[camera]]
type = "v4l"

[spool]
max_bytes = 10
"#;
        insta::assert_snapshot!(errors(text), @r#"
        error: config.toml: line 2, column 17: model.intra_threads must be a whole number, found string "two"; write e.g. intra_threads = 2
        error: config.toml: line 3, column 1: model.confidence_threshold = 1.5 is out of range; write a number between 0 and 1, e.g. 0.25
        error: config.toml: line 6, column 1: unknown key "treshold" in [scoring]; valid keys here: uncertainty_band, blur_threshold, uncertainty_weight, margin_weight, blur_weight, min_value, reason_level
        error: config.toml: line 7, column 1: scoring.blur_weight = -1 is out of range; write a number 0 or more, e.g. 0.5
        error: config.toml: line 10, column 13: unknown value "drop_oldest" for keep.when_full; did you mean "drop_lowest"?
        error: config.toml: line 13, column 8: unknown value "v4l" for camera[0].type; did you mean "v4l2"?
        error: config.toml: line 16, column 1: spool.max_bytes = 10 is out of range; write a whole number of at least 1048576
        "#);
    }

    #[test]
    fn range_errors_are_collected_and_located() {
        let text = "[model]\nconfidence_threshold = 1.5\nintra_threads = 0\n\n[scoring]\nblur_weight = -1.0\n\n[spool]\nmax_bytes = 10\n";
        insta::assert_snapshot!(errors(text), @r"
        error: config.toml: line 2, column 1: model.confidence_threshold = 1.5 is out of range; write a number between 0 and 1, e.g. 0.25
        error: config.toml: line 3, column 1: model.intra_threads = 0 is out of range; write a whole number from 1 to 64
        error: config.toml: line 6, column 1: scoring.blur_weight = -1 is out of range; write a number 0 or more, e.g. 0.5
        error: config.toml: line 9, column 1: spool.max_bytes = 10 is out of range; write a whole number of at least 1048576
        ");
    }

    #[test]
    fn thread_priorities_are_nice_steps_from_0_to_19() {
        let config = Config::parse("[pipeline]\ncapture_nice = 0\nkeeper_nice = 19\n", "c.toml")
            .expect("in range");
        assert_eq!(
            (config.pipeline.capture_nice, config.pipeline.keeper_nice),
            (0, 19)
        );
        insta::assert_snapshot!(errors("[pipeline]\ncapture_nice = 20\nkeeper_nice = -1\n"), @r"
        error: config.toml: line 2, column 1: pipeline.capture_nice = 20 is out of range; write a whole number from 0 to 19
        error: config.toml: line 3, column 1: pipeline.keeper_nice = -1 is out of range; write a whole number from 0 to 19
        ");
    }

    #[test]
    fn cameras_must_fit_the_frame_size_limit() {
        let text = "[pipeline]\nmax_frame_pixels = 100000\n\n[[camera]]\ntype = \"synthetic\"\nwidth = 640\nheight = 360\n";
        insta::assert_snapshot!(errors(text), @"error: config.toml: line 6, column 1: camera[0] is 640x360, more pixels than pipeline.max_frame_pixels = 100000; make the frame smaller, or raise [pipeline] max_frame_pixels to at least 230400");
        assert_eq!(errors("[[camera]]\nwidth = 3840\nheight = 2160\n"), "ok");
    }

    #[test]
    fn camera_keys_must_fit_the_type() {
        let text = "[[camera]]\ntype = \"synthetic\"\ndir = \"/x\"\n\n[[camera]]\nname = \"b\"\ntype = \"replay\"\n";
        insta::assert_snapshot!(errors(text), @r#"
        error: config.toml: line 3, column 1: camera[0].dir does not apply to type = "synthetic"; remove it, or set type = "replay"
        error: config.toml: line 7, column 1: camera[1] has type = "replay" but no dir; add dir = "/path/to/frames" (a directory of .jpg/.png files)
        "#);
    }

    #[test]
    fn unknown_table_and_syntax_errors() {
        insta::assert_snapshot!(errors("[scorng]\nx = 1\n\n[keep]\ncapacity = 4\n"), @r#"error: config.toml: line 1, column 2: unknown key "scorng" at the top level; did you mean "scoring"?"#);
        insta::assert_snapshot!(errors("[model\npath = 3\n"), @"error: config.toml: line 1, column 7: invalid TOML: unclosed table, expected `]`; see https://toml.io for the syntax; `framesift config default` prints a valid file");
    }
}
