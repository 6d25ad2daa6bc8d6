//! The detector: its manifest, the ONNX Runtime environment and session, and the
//! pre-allocated input/output tensors each inference thread runs with.
//!
//! ONNX Runtime is loaded at run time (`ort` with `load-dynamic`) so a field engineer can
//! point at a vendor build. A model is described by a `model.toml` manifest beside it,
//! or, for a bring-your-own Ultralytics export, by the ONNX metadata (`names`, `imgsz`).
//! Shapes are checked against the manifest when the model loads, not on the first frame.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use ort::{
    environment::Environment,
    session::{
        IoBinding, Session,
        builder::{GraphOptimizationLevel, SessionBuilder},
    },
    value::Tensor,
};
use serde::Deserialize;

use super::{ModelConfig, OptimizationLevel, detector::Layout};
use crate::capture::preprocess::Normalization;

/// The detector built into the binary, so `framesift run` works with no files at all.
pub const EMBEDDED_MODEL: &[u8] = include_bytes!("../../../models/detector/model.onnx");
pub const EMBEDDED_MANIFEST: &str = include_str!("../../../models/detector/model.toml");

/// ONNX Runtime version this build is tested against (the PyPI `onnxruntime` wheel).
pub const ORT_VERSION: &str = "1.31.1";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "ONNX Runtime library not found (looked for {tried}).\n  framesift loads libonnxruntime.so at run time. To get it:\n    cross/fetch-ort.sh x86_64            # or aarch64; extracts it from the official onnxruntime {ORT_VERSION} wheel on PyPI\n  then set [model] ort_library = \"/path/to/libonnxruntime.so\", or export ORT_DYLIB_PATH=/path/to/libonnxruntime.so,\n  or put libonnxruntime.so beside the framesift binary."
    )]
    OrtNotFound { tried: String },
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    OrtLoad { path: PathBuf, reason: String },
    /// The first attempt's error (not found, or failed to load), kept for later callers.
    #[error("{0}")]
    OrtUnavailable(String),
    #[error("cannot read model {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("model manifest {path}: {reason}")]
    Manifest { path: String, reason: String },
    #[error(
        "model {path} does not match its manifest: sha256 is {actual}, the manifest says {expected}.\n  The file was changed or is not the model the manifest describes; framesift refuses to run it. Restore the file, or update sha256 in the manifest if the new model is intended."
    )]
    Checksum {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("model {path}: {reason}")]
    Describe { path: String, reason: String },
    #[error("ONNX Runtime could not load model {path}: {reason}")]
    Session { path: String, reason: String },
    #[error("model {path}: {reason}")]
    Shape { path: String, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
}

fn ort_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// ---------------------------------------------------------------------------------------
// Manifest.

/// `model.toml`: what framesift needs to know to run a model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub id: String,
    pub version: String,
    /// sha256 of the ONNX file; checked before loading.
    pub sha256: Option<String>,
    pub layout: Layout,
    pub input_width: u32,
    pub input_height: u32,
    #[serde(default = "default_input_name")]
    pub input_name: String,
    #[serde(default = "default_output_name")]
    pub output_name: String,
    /// An output of pooled features `[1, D]` (an embedding of the frame), which the
    /// novelty signal compares frames by; none: novelty uses luma thumbnails.
    #[serde(default)]
    pub features_output: Option<String>,
    #[serde(default)]
    pub normalization: ManifestNormalization,
    #[serde(default = "default_fill")]
    pub letterbox_fill: u8,
    pub names: Vec<String>,
}

fn default_input_name() -> String {
    "images".into()
}
fn default_output_name() -> String {
    "output0".into()
}
const fn default_fill() -> u8 {
    114
}

/// `"unit"` (pixels / 255) or explicit `{ mean = [..], std = [..] }` in 0..1 units.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(untagged)]
pub enum ManifestNormalization {
    #[default]
    #[serde(skip)]
    Unit,
    Named(String),
    MeanStd {
        mean: [f32; 3],
        std: [f32; 3],
    },
}

impl ManifestNormalization {
    fn resolve(&self) -> Result<Normalization, String> {
        match self {
            ManifestNormalization::Unit => Ok(Normalization::UNIT),
            ManifestNormalization::Named(n) if n == "unit" => Ok(Normalization::UNIT),
            ManifestNormalization::Named(n) if n == "imagenet" => Ok(Normalization {
                mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225],
            }),
            ManifestNormalization::Named(n) => Err(format!(
                "normalization = \"{n}\" is unknown; write \"unit\", \"imagenet\" or {{ mean = [..], std = [..] }}"
            )),
            ManifestNormalization::MeanStd { mean, std } => {
                if std.iter().any(|s| *s <= 0.0) {
                    Err("normalization std values must be greater than 0".into())
                } else {
                    Ok(Normalization {
                        mean: *mean,
                        std: *std,
                    })
                }
            }
        }
    }
}

impl Manifest {
    pub fn parse(text: &str, path: &str) -> Result<Manifest, ModelError> {
        toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map_or((0, 0), |s| {
                let before = &text[..s.start.min(text.len())];
                (
                    before.matches('\n').count() + 1,
                    before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
                )
            });
            ModelError::Manifest {
                path: path.to_string(),
                reason: format!("line {line}, column {col}: {}", e.message().trim()),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// Describing a model: manifest, else ONNX metadata.

/// Everything the pipeline needs to know about a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub id: String,
    pub version: String,
    /// Where the model came from: a path, or `embedded`.
    pub origin: String,
    pub sha256: String,
    pub layout: Layout,
    pub input_width: u32,
    pub input_height: u32,
    pub input_name: String,
    pub output_name: String,
    /// Static output shape, e.g. `[1, 10, 2100]`.
    pub output_shape: Vec<usize>,
    /// The pooled-feature output's name and width (the manifest's `features_output`).
    pub features: Option<(String, usize)>,
    pub normalization: Normalization,
    pub letterbox_fill: u8,
    pub names: Vec<String>,
}

/// Model bytes plus the manifest that describes them (if any).
pub struct ModelFile {
    pub origin: String,
    pub bytes: Vec<u8>,
    pub manifest: Option<(String, Manifest)>,
}

impl ModelFile {
    pub fn embedded() -> Result<ModelFile, ModelError> {
        Ok(ModelFile {
            origin: "embedded".into(),
            bytes: EMBEDDED_MODEL.to_vec(),
            manifest: Some((
                "embedded model.toml".into(),
                Manifest::parse(EMBEDDED_MANIFEST, "embedded model.toml")?,
            )),
        })
    }

    /// Read a model file and its manifest: `<name>.toml` beside it, else `model.toml`
    /// in the same directory when the model is `model.onnx`.
    pub fn read(path: &Path) -> Result<ModelFile, ModelError> {
        let bytes = std::fs::read(path).map_err(|error| ModelError::Read {
            path: path.into(),
            error,
        })?;
        let mut manifest = None;
        for candidate in manifest_candidates(path) {
            if candidate.is_file() {
                let text =
                    std::fs::read_to_string(&candidate).map_err(|error| ModelError::Read {
                        path: candidate.clone(),
                        error,
                    })?;
                let name = candidate.display().to_string();
                manifest = Some((name.clone(), Manifest::parse(&text, &name)?));
                break;
            }
        }
        Ok(ModelFile {
            origin: path.display().to_string(),
            bytes,
            manifest,
        })
    }

    pub fn sha256(&self) -> String {
        crate::digest::sha256_hex(&self.bytes)
    }

    /// Refuse a model whose bytes do not match its manifest's checksum.
    pub fn verify(&self) -> Result<String, ModelError> {
        let actual = self.sha256();
        if let Some((_, manifest)) = &self.manifest
            && let Some(expected) = &manifest.sha256
            && !expected.eq_ignore_ascii_case(&actual)
        {
            return Err(ModelError::Checksum {
                path: self.origin.clone(),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(actual)
    }
}

fn manifest_candidates(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.with_extension("toml")];
    if path.file_name().is_some_and(|n| n == "model.onnx") {
        out.push(path.with_file_name("model.toml"));
    }
    out
}

/// Parse Ultralytics' `names` metadata, a Python dict repr: `{0: 'person', 1: 'car'}`.
pub fn parse_names_metadata(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut names: Vec<(usize, String)> = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (index, after) = rest.split_once(':')?;
        let index: usize = index.trim().parse().ok()?;
        let after = after.trim_start();
        let quote = after.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        let body = &after[1..];
        let end = body.find(quote)?;
        names.push((index, body[..end].to_string()));
        rest = body[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    names.sort_by_key(|(i, _)| *i);
    // Indexes must be 0..n with no gaps.
    names
        .iter()
        .enumerate()
        .all(|(i, (j, _))| i == *j)
        .then(|| names.into_iter().map(|(_, n)| n).collect())
}

/// Parse Ultralytics' `imgsz` metadata: `[640, 640]` (height, width) or `640`.
pub fn parse_imgsz_metadata(text: &str) -> Option<(u32, u32)> {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        let mut parts = inner.split(',').map(|p| p.trim().parse::<u32>());
        let h = parts.next()?.ok()?;
        let w = parts.next()?.ok()?;
        Some((w, h))
    } else {
        let s = t.parse().ok()?;
        Some((s, s))
    }
}

/// Infer the output layout from a static output shape and the class count.
pub fn infer_layout(shape: &[usize], classes: Option<usize>) -> Result<(Layout, usize), String> {
    if shape.len() != 3 || shape[0] != 1 {
        return Err(format!(
            "output shape {shape:?} is not a supported detector layout (expected [1, 4+nc, N], [1, N, 5+nc] or [1, N, 6])"
        ));
    }
    let (a, b) = (shape[1], shape[2]);
    match classes {
        Some(nc) if a == 4 + nc && b != 5 + nc => Ok((Layout::YoloV8, nc)),
        Some(1) if b == 6 && a != 5 => Err(format!(
            "output shape {shape:?} fits both a one-class yolov5 and an end-to-end output; write layout = \"yolov5\" or \"end_to_end\" in the manifest"
        )),
        Some(nc) if b == 5 + nc && a != 4 + nc => Ok((Layout::YoloV5, nc)),
        Some(nc) if b == 6 && a != 4 + nc => Ok((Layout::EndToEnd, nc)),
        Some(nc) => Err(format!(
            "output shape {shape:?} does not fit {nc} classes in any supported layout ([1, {}, N] yolov8, [1, N, {}] yolov5, [1, N, 6] end-to-end); write layout in the manifest",
            4 + nc,
            5 + nc
        )),
        // Without names: the anchor dimension is the large one.
        None if a > 4 && a < b => Ok((Layout::YoloV8, a - 4)),
        None if b == 6 => Err(format!(
            "output shape {shape:?} looks end-to-end but the class names are unknown; write names in the manifest"
        )),
        None if b > 5 && b < a => Ok((Layout::YoloV5, b - 5)),
        None => Err(format!(
            "output shape {shape:?} is not a supported detector layout"
        )),
    }
}

/// A tensor's element type as an exporter names it ("float16"), or what the value is.
fn element_type(dtype: &ort::value::ValueType) -> String {
    match dtype.tensor_type() {
        Some(t) => format!("{t:?}").to_lowercase(),
        None => "not a tensor".to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// ONNX Runtime.

static ENVIRONMENT: OnceLock<Result<(Environment, PathBuf), String>> = OnceLock::new();

/// The library's file names framesift tries beside its own binary, in order, after
/// `$ORT_DYLIB_PATH` (`{v}` stands for [`ORT_VERSION`]).
const BESIDE_BINARY: [&str; 3] = [
    "libonnxruntime.so",
    "libonnxruntime.so.{v}",
    "lib/libonnxruntime.so",
];

/// Where to load ONNX Runtime from: config, else `$ORT_DYLIB_PATH`, else beside the binary.
pub fn ort_library_candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = configured {
        return vec![p.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        out.extend(
            BESIDE_BINARY
                .iter()
                .map(|name| dir.join(name.replace("{v}", ORT_VERSION))),
        );
    }
    out
}

/// The process-wide ONNX Runtime environment (ONNX Runtime allows one per process),
/// loading the library on first use.
pub fn environment(configured: Option<&Path>) -> Result<(Environment, PathBuf), ModelError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let candidates = ort_library_candidates(configured);
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            let tried = candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ModelError::OrtNotFound { tried }.to_string());
        };
        let load = || -> Result<Environment, String> {
            ort::init_from(path)
                .map_err(ort_err)?
                .with_name("framesift")
                .with_telemetry(false)
                .build()
                .map_err(ort_err)
        };
        match load() {
            Ok(env) => Ok((env, path.clone())),
            Err(reason) => Err(ModelError::OrtLoad {
                path: path.clone(),
                reason,
            }
            .to_string()),
        }
    });
    result.clone().map_err(ModelError::OrtUnavailable)
}

/// A loaded detector: the session plus what it was checked to be.
pub struct Model {
    pub info: ModelInfo,
    session: Session,
}

impl Model {
    /// Load `file` into a session configured from `config`, and check its input and
    /// output against the manifest (or the ONNX metadata when there is no manifest).
    pub fn load(
        env: &Environment,
        file: &ModelFile,
        config: &ModelConfig,
    ) -> Result<Model, ModelError> {
        Self::load_tuned(env, file, config, |builder| builder)
    }

    /// [`Model::load`], with `tune` applied to the session builder after the config's
    /// options: for ONNX Runtime options the config does not expose (tests/alloc.rs
    /// measures ORT's allocations under each).
    pub fn load_tuned(
        env: &Environment,
        file: &ModelFile,
        config: &ModelConfig,
        tune: impl FnOnce(SessionBuilder) -> SessionBuilder,
    ) -> Result<Model, ModelError> {
        let sha256 = file.verify()?;
        let path = file.origin.clone();
        let session_err = |e: ort::Error| ModelError::Session {
            path: path.clone(),
            reason: e.to_string(),
        };
        let level = match config.optimization_level {
            OptimizationLevel::Disable => GraphOptimizationLevel::Disable,
            OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
            OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
            OptimizationLevel::All => GraphOptimizationLevel::All,
        };
        let session = Session::builder(env)
            .map_err(session_err)?
            .with_intra_threads(config.intra_threads)
            .map_err(|e| session_err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| session_err(e.into()))?
            .with_intra_op_spinning(config.intra_spinning)
            .map_err(|e| session_err(e.into()))?
            .with_optimization_level(level)
            .map_err(|e| session_err(e.into()))?;
        let session = tune(session)
            .commit_from_memory(&file.bytes)
            .map_err(session_err)?;
        let info = describe(&session, file, sha256)?;
        Ok(Model { info, session })
    }

    /// The [`Runner`] of one inference thread: tensors bound to this model's inputs and
    /// outputs, reused for every run on that thread.
    pub fn runner(&self) -> Result<Runner, ModelError> {
        Runner::new(&self.session, &self.info)
    }

    /// Run one inference with a runner's bound tensors.
    ///
    /// Calls ONNX Runtime's `RunWithBinding` directly. `Session::run_binding` would also
    /// fetch the bound outputs and wrap them in a fresh `SessionOutputs` (two more heap
    /// allocations per frame on top of ORT's own inside the run, which tests/alloc.rs
    /// counts); the outputs are pre-bound tensors we already hold, so that step buys
    /// nothing.
    #[allow(unsafe_code)]
    pub fn run(&mut self, runner: &mut Runner) -> Result<(), ModelError> {
        use ort::AsPointer;
        let api = ort::api();
        // SAFETY: the session and binding pointers come from live ort objects borrowed
        // for the whole call (`&mut self`, `&mut runner`), the binding was created from
        // `self.session` (Runner::new), and a null run-options pointer means defaults, as
        // ORT documents. The returned status is released exactly once below.
        let status = unsafe {
            (api.RunWithBinding)(
                self.session.ptr_mut(),
                std::ptr::null(),
                runner.binding.ptr(),
            )
        };
        if status.0.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null status is a valid OrtStatus until released; its message is a
        // NUL-terminated string owned by the status, copied before the release.
        let message = unsafe {
            let text = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0))
                .to_string_lossy()
                .into_owned();
            (api.ReleaseStatus)(status.0);
            text
        };
        Err(ModelError::Run(message))
    }
}

/// Largest model input side framesift accepts, in pixels.
const MAX_INPUT_SIDE: u32 = 8192;

fn describe(session: &Session, file: &ModelFile, sha256: String) -> Result<ModelInfo, ModelError> {
    let path = file.origin.clone();
    let shape_err = |reason: String| ModelError::Shape {
        path: path.clone(),
        reason,
    };
    let inputs = session.inputs();
    let outputs = session.outputs();
    if inputs.len() != 1 {
        return Err(shape_err(format!(
            "has {} inputs; framesift runs single-input detectors (one image tensor)",
            inputs.len()
        )));
    }
    let input = &inputs[0];
    let input_shape: Vec<i64> = input
        .dtype()
        .tensor_shape()
        .map(|s| s.to_vec())
        .unwrap_or_default();
    if input.dtype().tensor_type() != Some(ort::value::TensorElementType::Float32) {
        return Err(shape_err(format!(
            "input {} is {}; framesift feeds float32 images: export the model in float32 (e.g. Ultralytics half=False)",
            input.name(),
            element_type(input.dtype())
        )));
    }
    let metadata = session.metadata().ok();
    let meta = |k: &str| metadata.as_ref().and_then(|m| m.custom(k));

    let (
        id,
        version,
        manifest_layout,
        names,
        (in_w, in_h),
        input_name,
        output_name,
        features_name,
        normalization,
        fill,
    ) = match &file.manifest {
        Some((mpath, m)) => {
            let norm = m
                .normalization
                .resolve()
                .map_err(|reason| ModelError::Manifest {
                    path: mpath.clone(),
                    reason,
                })?;
            if m.names.is_empty() {
                return Err(ModelError::Manifest {
                    path: mpath.clone(),
                    reason: "names is empty; list the class names in output order".into(),
                });
            }
            (
                m.id.clone(),
                m.version.clone(),
                Some(m.layout),
                m.names.clone(),
                (m.input_width, m.input_height),
                m.input_name.clone(),
                m.output_name.clone(),
                m.features_output.clone(),
                norm,
                m.letterbox_fill,
            )
        }
        None => {
            let names = meta("names").and_then(|n| parse_names_metadata(&n));
            let static_hw = (input_shape.len() == 4 && input_shape[2] > 0 && input_shape[3] > 0)
                .then(|| (input_shape[3] as u32, input_shape[2] as u32));
            let size = meta("imgsz")
                .and_then(|s| parse_imgsz_metadata(&s))
                .or(static_hw);
            let (Some(names), Some(size)) = (names, size) else {
                return Err(ModelError::Describe {
                    path: path.clone(),
                    reason: format!(
                        "no manifest and the ONNX metadata does not say enough (names: {}, imgsz: {}).\n  Write {} beside the model with at least:\n    id = \"my-detector\"\n    version = \"1\"\n    layout = \"yolov8\"        # or \"yolov5\", \"end_to_end\"\n    input_width = 640\n    input_height = 640\n    names = [\"class0\", \"class1\"]",
                        if meta("names").is_some() {
                            "unreadable"
                        } else {
                            "missing"
                        },
                        if meta("imgsz").is_some() {
                            "unreadable"
                        } else {
                            "missing"
                        },
                        manifest_candidates(Path::new(&path))[0].display()
                    ),
                });
            };
            let id = Path::new(&path)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("model")
                .to_string();
            let version = meta("version").unwrap_or_else(|| "unversioned".into());
            (
                id,
                version,
                None,
                names,
                size,
                input.name().to_string(),
                outputs
                    .first()
                    .map(|o| o.name().to_string())
                    .unwrap_or_default(),
                None,
                Normalization::UNIT,
                114,
            )
        }
    };

    // The letterbox and the tensors are sized from these: a zero or absurd size must be
    // refused here, not divide by zero on the first frame.
    for (key, value) in [("input_width", in_w), ("input_height", in_h)] {
        if !(1..=MAX_INPUT_SIDE).contains(&value) {
            let (path, reason) = match &file.manifest {
                Some((mpath, _)) => (
                    mpath.clone(),
                    format!(
                        "{key} = {value}; write the model's input size in pixels, 1 to {MAX_INPUT_SIDE} (e.g. {key} = 640)"
                    ),
                ),
                None => (
                    path.clone(),
                    format!(
                        "the ONNX metadata gives imgsz {in_h}x{in_w} ({key} = {value}); write a manifest with {key} = the model's input size, 1 to {MAX_INPUT_SIDE}"
                    ),
                ),
            };
            return Err(ModelError::Manifest { path, reason });
        }
    }
    if input.name() != input_name {
        return Err(shape_err(format!(
            "input is named \"{}\", the manifest says input_name = \"{input_name}\"",
            input.name()
        )));
    }
    let expected_input = [1, 3, in_h as i64, in_w as i64];
    let fits = input_shape.len() == 4
        && input_shape
            .iter()
            .zip(expected_input)
            .all(|(&have, want)| have == want || have < 0);
    if !fits {
        return Err(shape_err(format!(
            "input {} has shape {input_shape:?}; expected [1, 3, {in_h}, {in_w}] (NCHW, from the manifest/metadata)",
            input.name()
        )));
    }
    let Some(output) = outputs.iter().find(|o| o.name() == output_name) else {
        let have: Vec<&str> = outputs.iter().map(|o| o.name()).collect();
        return Err(shape_err(format!(
            "has no output named \"{output_name}\" (outputs: {have:?})"
        )));
    };
    if output.dtype().tensor_type() != Some(ort::value::TensorElementType::Float32) {
        return Err(shape_err(format!(
            "output {output_name} is {}; framesift reads float32 outputs: export the model in float32 (e.g. Ultralytics half=False)",
            element_type(output.dtype())
        )));
    }
    let out_shape: Vec<i64> = output
        .dtype()
        .tensor_shape()
        .map(|s| s.to_vec())
        .unwrap_or_default();
    if out_shape.iter().any(|d| *d < 0) || out_shape.is_empty() {
        return Err(shape_err(format!(
            "output {output_name} has dynamic shape {out_shape:?}; export the model with a fixed input size (e.g. Ultralytics `dynamic=False`)"
        )));
    }
    let out_shape: Vec<usize> = out_shape.iter().map(|d| *d as usize).collect();
    let layout = match manifest_layout {
        Some(layout) => layout,
        // Ultralytics marks end-to-end exports, whose [1, N, 6] a one-class YOLOv5
        // output shares.
        None if meta("end2end").is_some_and(|v| v.eq_ignore_ascii_case("true")) => Layout::EndToEnd,
        None => {
            infer_layout(&out_shape, Some(names.len()))
                .map_err(&shape_err)?
                .0
        }
    };
    let decoder = super::detector::Decoder::new(
        layout,
        names.len(),
        super::detector::DecodeParams {
            confidence: 0.5,
            keep_down_to: 0.5,
            iou: 0.5,
            max_detections: 1,
        },
    );
    decoder.check_shape(&out_shape).map_err(|e| {
        shape_err(format!(
            "output {output_name}: {e}; {} names {} classes: list the model's classes, in output order",
            if file.manifest.is_some() { "the manifest" } else { "the metadata" },
            names.len()
        ))
    })?;
    let features = match features_name {
        None => None,
        Some(name) => {
            let have: Vec<&str> = outputs.iter().map(|o| o.name()).collect();
            let shape: Vec<i64> = outputs
                .iter()
                .find(|o| o.name() == name)
                .ok_or_else(|| {
                    shape_err(format!(
                        "has no output named \"{name}\" (outputs: {have:?}); remove features_output from the manifest or name one of them"
                    ))
                })?
                .dtype()
                .tensor_shape()
                .map(|s| s.to_vec())
                .unwrap_or_default();
            match shape[..] {
                [1, width] if (1..=4096).contains(&width) => Some((name, width as usize)),
                _ => {
                    return Err(shape_err(format!(
                        "features output {name} has shape {shape:?}; expected [1, D], D from 1 to 4096 (pooled features)"
                    )));
                }
            }
        }
    };

    Ok(ModelInfo {
        id,
        version,
        origin: file.origin.clone(),
        sha256,
        layout,
        input_width: in_w,
        input_height: in_h,
        input_name,
        output_name,
        output_shape: out_shape,
        features,
        normalization,
        letterbox_fill: fill,
        names,
    })
}

/// Input and output tensors allocated once and bound to the session (IoBinding), so a
/// run reads the input in place and writes the output in place.
pub struct Runner {
    binding: IoBinding,
    input: Tensor<f32>,
    output: Tensor<f32>,
    /// The pooled-feature output, when the model has one (unbound outputs are not
    /// computed).
    features: Option<Tensor<f32>>,
}

impl Runner {
    fn new(session: &Session, info: &ModelInfo) -> Result<Runner, ModelError> {
        let err = |e: ort::Error| ModelError::Run(e.to_string());
        let input = Tensor::<f32>::new(
            session.allocator(),
            [
                1usize,
                3,
                info.input_height as usize,
                info.input_width as usize,
            ],
        )
        .map_err(err)?;
        let mut output =
            Tensor::<f32>::new(session.allocator(), info.output_shape.clone()).map_err(err)?;
        let mut binding = session.create_binding().map_err(err)?;
        binding
            .bind_input(info.input_name.as_str(), &input)
            .map_err(err)?;
        binding
            .bind_output(info.output_name.as_str(), &mut output)
            .map_err(err)?;
        let features = match &info.features {
            Some((name, width)) => {
                let mut t =
                    Tensor::<f32>::new(session.allocator(), [1usize, *width]).map_err(err)?;
                binding.bind_output(name.as_str(), &mut t).map_err(err)?;
                Some(t)
            }
            None => None,
        };
        Ok(Runner {
            binding,
            input,
            output,
            features,
        })
    }

    /// The input tensor's values (NCHW), to fill before [`Model::run`].
    pub fn input_mut(&mut self) -> &mut [f32] {
        self.input.extract_tensor_mut().1
    }

    /// The output tensor's values after [`Model::run`].
    pub fn output(&self) -> &[f32] {
        self.output.extract_tensor().1
    }

    /// The pooled features after [`Model::run`]; empty when the model has none.
    pub fn features(&self) -> &[f32] {
        self.features.as_ref().map_or(&[], |t| t.extract_tensor().1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ultralytics_names_metadata() {
        assert_eq!(
            parse_names_metadata("{0: 'person', 1: \"traffic light\", 2: 'car'}"),
            Some(vec![
                "person".to_string(),
                "traffic light".into(),
                "car".into()
            ])
        );
        assert_eq!(
            parse_names_metadata("{1: 'a'}"),
            None,
            "indexes must start at 0"
        );
        assert_eq!(parse_names_metadata("person, car"), None);
    }

    #[test]
    fn ultralytics_imgsz_metadata() {
        assert_eq!(parse_imgsz_metadata("[320, 640]"), Some((640, 320)));
        assert_eq!(parse_imgsz_metadata("640"), Some((640, 640)));
        assert_eq!(parse_imgsz_metadata("big"), None);
    }

    #[test]
    fn layouts_inferred_from_shape() {
        assert_eq!(
            infer_layout(&[1, 84, 8400], Some(80)),
            Ok((Layout::YoloV8, 80))
        );
        assert_eq!(
            infer_layout(&[1, 25200, 85], Some(80)),
            Ok((Layout::YoloV5, 80))
        );
        assert_eq!(
            infer_layout(&[1, 300, 6], Some(80)),
            Ok((Layout::EndToEnd, 80))
        );
        assert_eq!(infer_layout(&[1, 84, 8400], None), Ok((Layout::YoloV8, 80)));
        assert!(infer_layout(&[1, 84], Some(80)).is_err());
        let err = infer_layout(&[1, 7, 7], Some(80)).expect_err("no layout");
        assert!(err.contains("[1, 7, 7]"), "{err}");
        // One class: [1, N, 6] is yolov5's shape as much as end-to-end's.
        let err = infer_layout(&[1, 300, 6], Some(1)).expect_err("ambiguous");
        assert!(err.contains("write layout"), "{err}");
        assert_eq!(
            infer_layout(&[1, 5, 2100], Some(1)),
            Ok((Layout::YoloV8, 1))
        );
    }

    #[test]
    fn embedded_manifest_matches_embedded_model() {
        let file = ModelFile::embedded().expect("embedded manifest parses");
        file.verify()
            .expect("embedded model matches its manifest checksum");
    }

    /// The shipped detector's pooled features are bound and written by each run: they
    /// differ between different images and are not the tensor's initial zeros.
    #[test]
    fn the_embedded_model_fills_its_pooled_features() {
        let (env, _) = environment(None).expect("ONNX Runtime (cross/fetch-ort.sh)");
        let file = ModelFile::embedded().expect("embedded model");
        let config = crate::config::Config::default();
        let mut model = Model::load(&env, &file, &config.model).expect("model");
        assert_eq!(
            model.info.features,
            Some(("features".to_string(), 160)),
            "the manifest names the output"
        );
        let mut runner = model.runner().expect("runner");
        let mut seen = Vec::new();
        for fill in [0.2f32, 0.8] {
            for (i, v) in runner.input_mut().iter_mut().enumerate() {
                *v = if i % 7 == 0 { 1.0 - fill } else { fill };
            }
            model.run(&mut runner).expect("run");
            let features = runner.features().to_vec();
            assert_eq!(features.len(), 160);
            assert!(features.iter().any(|v| *v != 0.0), "{features:?}");
            seen.push(features);
        }
        assert_ne!(seen[0], seen[1]);
    }

    #[test]
    fn the_default_config_says_where_onnx_runtime_is_searched() {
        // The comment above `ort_library`, as one line.
        let text = crate::config::DEFAULT_CONFIG_TOML;
        let at = text
            .find("\nort_library =")
            .expect("ort_library in the default config");
        let comment: Vec<&str> = text[..at]
            .lines()
            .rev()
            .take_while(|l| l.starts_with('#'))
            .filter(|l| !l.contains("Restart to change."))
            .collect();
        let comment: String = comment
            .iter()
            .rev()
            .map(|l| l.trim_start_matches('#').trim())
            .collect::<Vec<_>>()
            .join(" ");
        let names: Vec<String> = BESIDE_BINARY
            .iter()
            .map(|n| n.replace("{v}", ORT_VERSION))
            .collect();
        let expected = format!(
            "Empty: $ORT_DYLIB_PATH, else {} or {} beside the framesift binary.",
            names[..names.len() - 1].join(", "),
            names[names.len() - 1]
        );
        assert!(
            comment.ends_with(&expected),
            "{comment:?}\nshould end with\n{expected:?}"
        );
    }

    #[test]
    fn checksum_mismatch_is_refused() {
        let mut file = ModelFile::embedded().expect("embedded");
        file.bytes.push(0);
        let err = file.verify().expect_err("tampered model");
        assert!(err.to_string().contains("refuses to run"), "{err}");
    }
}
