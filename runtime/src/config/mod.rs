//! Configuration: one or more TOML files merged into one document, each stage's table
//! deserialized into the raw struct that stage owns, then validated into [`Config`].
//!
//! Parse, don't validate: every stage module defines its table as a `Raw*` struct
//! (`deny_unknown_fields`, every key optional, `Default` holding the defaults — the one
//! place they are written), and a `validate` that turns it into the typed settings the
//! stage is built from. Every problem is collected — unknown keys, wrong types,
//! out-of-range values — and reported with the file, line and column that set the
//! value, and a hint, not just the first.
//!
//! `framesift run --config base.toml --config cart.toml`: later files override earlier
//! ones key by key, `[[camera]]` tables merge by `name` ([`load`]). On SIGHUP the same
//! files are read again and what can change live is applied ([`reload`]).
//!
//! The commented default file (`default-config.toml`, printed by
//! `framesift config default`) is the user documentation; tests check that it parses
//! to exactly the built-in defaults, mentions every key, and marks exactly the keys
//! that need a restart.

mod check;
pub(crate) mod diagnostics;
mod load;
pub(crate) mod reload;

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use check::{Checker, Problem};
pub use diagnostics::{ConfigError, Diagnostic};

use crate::{
    capture::{self, CameraConfig, RawCamera},
    drift::{DriftConfig, RawDrift},
    infer::{ModelConfig, RawModel},
    keep::{KeepConfig, RawKeep},
    pipeline::{PipelineConfig, RawPipeline},
    policy::{PolicyConfig, RawPolicy, signals::RawSignals, triggers::RawTrigger},
    store::{
        RawSpool, SpoolConfig,
        uploader::{RawUpload, UploadConfig},
    },
};

/// The commented default configuration, exactly what `framesift config default` prints.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../default-config.toml");

/// Everything a run needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub model: ModelConfig,
    pub cameras: Vec<CameraConfig>,
    pub pipeline: PipelineConfig,
    pub policy: PolicyConfig,
    pub keep: KeepConfig,
    pub spool: SpoolConfig,
    pub upload: UploadConfig,
    pub drift: DriftConfig,
}

/// The file as written: one table per stage, each owned by its stage's module.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    model: RawModel,
    #[serde(skip_serializing_if = "Option::is_none")]
    camera: Option<Vec<RawCamera>>,
    pipeline: RawPipeline,
    policy: RawPolicy,
    signals: RawSignals,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    trigger: Vec<RawTrigger>,
    keep: RawKeep,
    spool: RawSpool,
    upload: RawUpload,
    drift: RawDrift,
}

/// Whether loading a config reads the files it names (the drift reference) to check
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NamedFiles {
    Check,
    /// For commands that do not use the reference (`upload`, `spool status`, `lift`) or
    /// write it (`calibrate`).
    Skip,
}

/// A validated config and every key's effective value (defaults included), for
/// telling what a reload changes.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The files it was read from, base first (empty: the built-in defaults).
    pub files: Vec<PathBuf>,
    effective: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_raw(&RawConfig::default(), Vec::new()).unwrap_or_else(|problems| {
            // The built-in defaults are checked by a test; this cannot happen.
            panic!("built-in defaults are invalid: {problems:?}")
        })
    }
}

impl Config {
    /// Read, merge and validate config files, base first (none: the built-in defaults),
    /// and check that the drift reference they name can be read.
    pub fn load(files: &[PathBuf]) -> Result<Loaded, ConfigError> {
        Config::load_with(files, NamedFiles::Check)
    }

    /// [`Config::load`], reading the files the config names only when `named` says so.
    pub(crate) fn load_with(files: &[PathBuf], named: NamedFiles) -> Result<Loaded, ConfigError> {
        let mut texts = Vec::with_capacity(files.len());
        let mut diagnostics = Vec::new();
        for path in files {
            let file = path.display().to_string();
            match std::fs::read(path).map(String::from_utf8) {
                Ok(Ok(text)) => texts.push((file, text)),
                Ok(Err(e)) => {
                    // Lines and columns of the valid text before the first bad byte.
                    let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                    let before = String::from_utf8_lossy(valid);
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    let byte = e.as_bytes()[valid.len()];
                    diagnostics.push(Diagnostic {
                        file,
                        line,
                        column,
                        message: format!("the file is not UTF-8 text (byte 0x{byte:02X})"),
                        hint: Some(
                            "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8), or retype the character"
                                .into(),
                        ),
                    });
                }
                Err(e) => diagnostics.push(Diagnostic {
                    file,
                    line: 0,
                    column: 0,
                    message: format!("cannot read the file: {e}"),
                    hint: Some(
                        "check the path, or leave out --config to use the built-in defaults".into(),
                    ),
                }),
            }
        }
        if !diagnostics.is_empty() {
            return Err(ConfigError { diagnostics });
        }
        let sources = load::Sources::new(texts.iter().map(|(n, t)| (n.as_str(), t.as_str())));
        let (config, raw) = Config::from_sources(&sources, named)?;
        Ok(Loaded {
            config,
            files: files.to_vec(),
            effective: effective(&raw),
        })
    }

    /// Parse and validate one config text; `file` names it in error messages.
    #[cfg(test)]
    pub(crate) fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        Config::from_sources(&load::Sources::new([(file, text)]), NamedFiles::Check)
            .map(|(config, _)| config)
    }

    fn from_sources(
        sources: &load::Sources,
        named: NamedFiles,
    ) -> Result<(Config, RawConfig), ConfigError> {
        let mut doc = sources
            .merged()
            .map_err(|diagnostics| ConfigError { diagnostics })?;
        let mut diagnostics = Vec::new();
        if let Ok(toml::Value::Table(defaults)) = toml::Value::try_from(RawConfig::default()) {
            sources.check_shapes(
                doc.get_mut(),
                &defaults,
                &["camera", "trigger"],
                "",
                &mut diagnostics,
            );
        }
        let mut reported = Vec::new();
        let raw: Option<RawConfig> = sources.deserialize(&doc, &mut diagnostics, &mut reported);
        let Some(raw) = raw else {
            return Err(sources.error(diagnostics));
        };
        let checked = Config::from_raw(&raw, reported).and_then(|config| match named {
            NamedFiles::Check => {
                let problems = config.drift.check_reference();
                if problems.is_empty() {
                    Ok(config)
                } else {
                    Err(problems)
                }
            }
            NamedFiles::Skip => Ok(config),
        });
        match checked {
            Ok(config) if diagnostics.is_empty() => Ok((config, raw)),
            Ok(_) => Err(sources.error(diagnostics)),
            Err(problems) => {
                for problem in problems {
                    let at = sources.locate(doc.get_ref(), &problem.path);
                    diagnostics.push(sources.diagnostic(at, problem.message, problem.hint));
                }
                Err(sources.error(diagnostics))
            }
        }
    }

    /// `reported`: keys a wrong type already reported, for [`Checker::failed`].
    fn from_raw(
        raw: &RawConfig,
        reported: Vec<Vec<check::PathPart>>,
    ) -> Result<Config, Vec<check::Problem>> {
        let mut c = Checker::default();
        c.reported = reported;
        let model = c.within("model", |c| ModelConfig::validate(&raw.model, c));
        let cameras = capture::validate_cameras(raw.camera.as_deref(), &mut c);
        let pipeline = c.within("pipeline", |c| PipelineConfig::validate(&raw.pipeline, c));
        if !c.within("pipeline", |c| c.failed("max_frame_pixels")) {
            capture::check_frame_sizes(
                &cameras,
                raw.camera.is_some(),
                pipeline.max_frame_pixels,
                &mut c,
            );
        }
        let policy = PolicyConfig::validate(&raw.policy, &raw.signals, &raw.trigger, &mut c);
        if policy.uses("faint") && !c.within("model", |c| c.failed("confidence_threshold")) {
            check_faint_floor(
                policy.signals.faint.floor(),
                model.confidence_threshold,
                raw.signals.faint.floor_set(),
                &mut c,
            );
        }
        let keep = c.within("keep", |c| KeepConfig::validate(&raw.keep, c));
        let spool = c.within("spool", |c| SpoolConfig::validate(&raw.spool, c));
        let upload = c.within("upload", |c| UploadConfig::validate(&raw.upload, c));
        let drift = c.within("drift", |c| DriftConfig::validate(&raw.drift, c));
        if !c.problems.is_empty() {
            return Err(c.problems);
        }
        Ok(Config {
            model,
            cameras,
            pipeline,
            policy,
            keep,
            spool,
            upload,
            drift,
        })
    }
}

impl Loaded {
    /// The built-in defaults, as loaded from no file.
    pub fn defaults() -> Loaded {
        Loaded {
            config: Config::default(),
            files: Vec::new(),
            effective: effective(&RawConfig::default()),
        }
    }

    /// Load the same files again (a reload).
    pub fn reread(&self) -> Result<Loaded, ConfigError> {
        Config::load(&self.files)
    }
}

/// Every leaf key's value, defaults included: `keep.capacity = 16`, `camera[0].fps = 0.0`.
fn effective(raw: &RawConfig) -> BTreeMap<String, String> {
    fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                for (i, item) in items.iter().enumerate() {
                    flatten(&format!("{prefix}[{i}]"), item, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    match toml::Value::try_from(raw) {
        Ok(value) => flatten("", &value, &mut out),
        Err(e) => {
            out.insert("?".into(), e.to_string());
        }
    }
    out
}

/// Every key a raw table accepts, as serde lists them (for the default-file tests).
#[cfg(test)]
fn accepted_keys<T: serde::de::DeserializeOwned>() -> Vec<String> {
    let message = match toml::from_str::<T>("__not_a_key__ = 0\n") {
        Ok(_) => return Vec::new(),
        Err(e) => e.message().to_string(),
    };
    let rest = message
        .strip_prefix("unknown field `")
        .unwrap_or_else(|| panic!("{message}"));
    let (_, expected) = diagnostics::split_expected(rest);
    expected.into_iter().map(str::to_string).collect()
}

/// The files of a load as shown in messages.
pub fn describe_files(files: &[PathBuf]) -> String {
    if files.is_empty() {
        return "the built-in defaults".into();
    }
    files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Faint counts the candidates between its floor and the confidence threshold: none when
/// the floor is not below it (the threshold may be set in another file). The problem is
/// reported at the floor when the config writes one, else at the threshold.
fn check_faint_floor(floor: f32, threshold: f32, floor_written: bool, c: &mut Checker) {
    if floor < threshold {
        return;
    }
    let message = format!(
        "signals.faint.floor = {floor} is not below [model] confidence_threshold = {threshold}"
    );
    let hint = format!(
        "faint counts the candidates between the two: lower the floor, e.g. [signals.faint] floor = {}",
        (threshold * 160.0).round() / 1000.0
    );
    if floor_written {
        c.within("signals", |c| {
            c.within("faint", |c| c.fail("floor", message, hint))
        });
    } else {
        c.within("model", |c| c.fail("confidence_threshold", message, hint));
    }
}

#[cfg(test)]
mod tests;
