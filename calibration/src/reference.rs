//! The reference file: what a calibration measured, for the runtime to score drift against.
//!
//! TOML, written by [`Reference::to_toml`] and read by [`Reference::parse`] or
//! [`Reference::load`], which report every problem with its line and column.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, Deserializer};

use crate::{Bands, Bins, Scale};

/// The format version this crate writes. In format 2 each statistic's `noise` covers
/// resampled windows as well as sliding ones ([`crate::derive_bands`]), which bounds
/// that statistic's own tail, so a reader may give each statistic its own bands.
pub const FORMAT: u32 = 2;
/// The oldest format this crate reads. A format 1 statistic's `noise` came from sliding
/// windows alone, too few to bound its own tail: its readers share the noisiest
/// statistic's bands ([`Reference::per_statistic_bands`]).
pub const OLDEST_FORMAT: u32 = 1;

/// Reference statistics measured on a sample, with the bands and thresholds derived from
/// it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Format version, from [`OLDEST_FORMAT`] to [`FORMAT`]; a file of another version
    /// is refused.
    pub format: u32,
    /// The model whose outputs the statistics describe.
    pub model: ModelStamp,
    /// What the sample was, e.g. "synthetic store, 3000 frames, seed 1" or a directory.
    pub source: String,
    /// Frames in the sample.
    pub frames: u64,
    /// Frames per drift window that the bands were derived for.
    pub window_frames: usize,
    /// Drift bands for windows of `window_frames`.
    pub bands: Bands,
    /// The largest JS distance between a window of the sample and the whole sample; absent
    /// when the sample was too short to measure it.
    pub reference_noise: Option<f64>,
    /// Thresholds chosen on the sample, by name, e.g. `min_value` and one per signal.
    pub thresholds: BTreeMap<String, f64>,
    /// One histogram per statistic, names unique.
    pub stats: Vec<StatReference>,
    /// What the novelty signal compares frames with; absent in older references.
    #[serde(default, skip_serializing_if = "NoveltyReference::is_empty")]
    pub novelty: NoveltyReference,
}

/// The `[novelty]` table of a reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoveltyReference {
    /// A uniform sample of the sample's views: each a 16 × 12 luma thumbnail as 384 hex
    /// digits, row by row.
    pub views: Vec<String>,
}

impl NoveltyReference {
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }
}

/// Identifies a model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelStamp {
    /// The model's id from its manifest.
    pub id: String,
    /// SHA-256 of the model file, lowercase hex.
    pub sha256: String,
}

/// One statistic's histogram over the reference sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatReference {
    /// The statistic, e.g. `luma` or `blur`.
    pub name: String,
    pub bins: Bins,
    /// One count per bin.
    pub counts: Vec<u64>,
    /// The largest JS distance between a window of the sample and the rest of it
    /// ([`crate::derive_bands`]: sliding and, from format 2, resampled windows); `None`
    /// when the sample is shorter than two windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<f64>,
}

/// Why a reference could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The file could not be read.
    #[error("{path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Every problem found, in file order; `path` is `None` for [`Reference::parse`].
    #[error("{}", Located { path: path.as_deref(), problems })]
    Invalid {
        path: Option<PathBuf>,
        problems: Vec<Problem>,
    },
}

/// One problem in a reference file, at a 1-based line and column (in characters), or 0
/// and 0 when the position is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Formats problems one per line as `path:line:column: message`.
struct Located<'a> {
    path: Option<&'a Path>,
    problems: &'a [Problem],
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (self.path, p.line) {
                (Some(path), 0) => write!(f, "{}: ", path.display())?,
                (Some(path), line) => write!(f, "{}:{line}:{}: ", path.display(), p.column)?,
                (None, 0) => {}
                (None, line) => write!(f, "{line}:{}: ", p.column)?,
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}

impl Reference {
    /// The statistic called `name`.
    pub fn stat(&self, name: &str) -> Option<&StatReference> {
        self.stats.iter().find(|s| s.name == name)
    }

    /// Whether each statistic's `noise` bounds its own tail (format 2 on), so that it
    /// can have bands of its own; else every statistic takes the bands of the noisiest.
    pub fn per_statistic_bands(&self) -> bool {
        self.format >= 2
    }

    /// Reads and checks the reference file at `path`.
    pub fn load(path: &Path) -> Result<Reference, ReferenceError> {
        let text = std::fs::read_to_string(path).map_err(|error| ReferenceError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        parse(&text).map_err(|problems| ReferenceError::Invalid {
            path: Some(path.to_path_buf()),
            problems,
        })
    }

    /// Parses and checks a reference: TOML syntax, then the format version (another
    /// version is refused before its keys are looked at), keys and types, then that
    /// there is at least one statistic, names are unique, bins are valid with one count
    /// per bin, the window is not empty, and the bands and thresholds are finite with
    /// moderate <= significant.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        parse(text).map_err(|problems| ReferenceError::Invalid {
            path: None,
            problems,
        })
    }

    /// The reference as TOML that [`Reference::parse`] reads back to an equal value
    /// (TOML integers stop at i64::MAX, far beyond any real count).
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_toml(&mut out);
        out
    }

    fn write_toml(&self, out: &mut String) -> fmt::Result {
        writeln!(
            out,
            "# Reference statistics for framesift drift scoring, written by `framesift calibrate`."
        )?;
        writeln!(out, "format = {}", self.format)?;
        writeln!(out, "source = {}", quoted(&self.source))?;
        writeln!(out, "frames = {}", self.frames)?;
        writeln!(out, "window_frames = {}", self.window_frames)?;
        if let Some(noise) = self.reference_noise {
            writeln!(out, "reference_noise = {}", float(noise))?;
        }

        writeln!(out, "\n[model]")?;
        writeln!(out, "id = {}", quoted(&self.model.id))?;
        writeln!(out, "sha256 = {}", quoted(&self.model.sha256))?;

        let b = &self.bands;
        writeln!(out, "\n[bands]")?;
        writeln!(out, "psi_moderate = {}", float(b.psi_moderate))?;
        writeln!(out, "psi_significant = {}", float(b.psi_significant))?;
        writeln!(out, "js_moderate = {}", float(b.js_moderate))?;
        writeln!(out, "js_significant = {}", float(b.js_significant))?;

        writeln!(out, "\n[thresholds]")?;
        for (name, value) in &self.thresholds {
            writeln!(out, "{} = {}", key(name), float(*value))?;
        }

        for stat in &self.stats {
            let bins = &stat.bins;
            let scale = match bins.scale {
                Scale::Linear => "linear",
                Scale::Log10p1 => "log10p1",
            };
            writeln!(out, "\n[[stats]]")?;
            writeln!(out, "name = {}", quoted(&stat.name))?;
            writeln!(
                out,
                "bins = {{ lo = {}, hi = {}, count = {}, scale = \"{scale}\" }}",
                float(bins.lo),
                float(bins.hi),
                bins.count
            )?;
            if let Some(noise) = stat.noise {
                writeln!(out, "noise = {}", float(noise))?;
            }
            write_counts(out, &stat.counts)?;
        }
        if !self.novelty.is_empty() {
            writeln!(
                out,
                "\n# Sampled views (16x12 luma thumbnails, hex) for the novelty signal."
            )?;
            writeln!(out, "[novelty]")?;
            writeln!(out, "views = [")?;
            for view in &self.novelty.views {
                writeln!(out, "    {},", quoted(view))?;
            }
            writeln!(out, "]")?;
        }
        Ok(())
    }
}

/// Counts on one line when short, else `PER_LINE` to a line.
fn write_counts(out: &mut String, counts: &[u64]) -> fmt::Result {
    const PER_LINE: usize = 16;
    let line = |chunk: &[u64]| {
        chunk
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if counts.len() <= PER_LINE {
        return writeln!(out, "counts = [{}]", line(counts));
    }
    writeln!(out, "counts = [")?;
    for chunk in counts.chunks(PER_LINE) {
        writeln!(out, "    {},", line(chunk))?;
    }
    writeln!(out, "]")
}

/// A TOML float that reads back to the same bits (NaN aside).
fn float(x: f64) -> String {
    toml::Value::Float(x).to_string()
}

/// A one-line TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key: bare when it can be, else quoted.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { name.to_string() } else { quoted(name) }
}

fn parse(text: &str) -> Result<Reference, Vec<Problem>> {
    let at = |span: Option<Range<usize>>, message: String| {
        let (line, column) = span.map_or((0, 0), |span| line_column(text, span.start));
        Problem {
            line,
            column,
            message,
        }
    };
    let from_toml = |error: toml::de::Error| vec![at(error.span(), error.message().to_string())];

    let doc = DeTable::parse(text).map_err(from_toml)?;

    // The version first: a file from another version may well fail the schema, and
    // "unknown field" would hide the real reason.
    #[derive(Deserialize)]
    struct Version {
        format: Spanned<i64>,
    }
    if let Ok(Version { format }) = Version::deserialize(Deserializer::from(doc.clone()))
        && !(i64::from(OLDEST_FORMAT)..=i64::from(FORMAT)).contains(format.get_ref())
    {
        let message = format!(
            "format = {} is not supported: this build reads format = {OLDEST_FORMAT} to {FORMAT}",
            format.get_ref()
        );
        return Err(vec![at(Some(format.span()), message)]);
    }

    let reference = Reference::deserialize(Deserializer::from(doc.clone())).map_err(from_toml)?;
    let mut problems: Vec<Problem> = check(&reference)
        .into_iter()
        .map(|(path, message)| at(span(&doc, &path), message))
        .collect();
    problems.sort_by_key(|p| (p.line, p.column));
    if problems.is_empty() {
        Ok(reference)
    } else {
        Err(problems)
    }
}

/// A step from a table to one of its values.
#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Semantic problems, each with where it is in the document.
/// The longest window a reference may have been measured on (the drift config's
/// largest `window_frames`).
pub const MAX_WINDOW_FRAMES: usize = 100_000;

fn check(r: &Reference) -> Vec<(Vec<Step<'_>>, String)> {
    use Step::{Index, Key};
    let mut problems = Vec::new();

    if r.window_frames == 0 || r.window_frames > MAX_WINDOW_FRAMES {
        problems.push((
            vec![Key("window_frames")],
            format!(
                "window_frames = {} is not a window (1 to {MAX_WINDOW_FRAMES} frames)",
                r.window_frames
            ),
        ));
    }
    // Noise is a Jensen–Shannon distance: 0 to 1.
    let distance = |noise: f64| noise.is_finite() && (0.0..=1.0).contains(&noise);
    if let Some(noise) = r.reference_noise
        && !distance(noise)
    {
        problems.push((
            vec![Key("reference_noise")],
            format!("reference_noise = {noise} is not a distance (0 to 1)"),
        ));
    }
    let b = &r.bands;
    for (name, moderate, significant) in [
        ("psi", b.psi_moderate, b.psi_significant),
        ("js", b.js_moderate, b.js_significant),
    ] {
        if !(moderate.is_finite() && significant.is_finite() && 0.0 <= moderate) {
            problems.push((
                vec![Key("bands")],
                format!(
                    "bands: {name}_moderate = {moderate} and {name}_significant = {significant} must be finite and not negative"
                ),
            ));
        } else if significant < moderate {
            problems.push((
                vec![Key("bands")],
                format!(
                    "bands: {name}_significant = {significant} is below {name}_moderate = {moderate}"
                ),
            ));
        }
    }
    for (name, value) in &r.thresholds {
        if !value.is_finite() {
            problems.push((
                vec![Key("thresholds"), Key(name)],
                format!("threshold {name} = {value} is not finite"),
            ));
        }
    }

    if r.stats.is_empty() {
        problems.push((vec![Key("stats")], "no [[stats]]".to_string()));
    }
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    for (i, stat) in r.stats.iter().enumerate() {
        let name = &stat.name;
        if let Some(&first) = first_index.get(name.as_str()) {
            problems.push((
                vec![Key("stats"), Index(i), Key("name")],
                format!(
                    "stat \"{name}\" appears twice, as [[stats]] {} and {}",
                    first + 1,
                    i + 1
                ),
            ));
        } else {
            first_index.insert(name, i);
        }
        if let Some(noise) = stat.noise
            && !distance(noise)
        {
            problems.push((
                vec![Key("stats"), Index(i), Key("noise")],
                format!("stat \"{name}\": noise = {noise} is not a distance (0 to 1)"),
            ));
        }
        if let Err(error) = stat.bins.validate() {
            problems.push((
                vec![Key("stats"), Index(i), Key("bins")],
                format!("stat \"{name}\": {error}"),
            ));
        }
        if stat.counts.len() != stat.bins.count {
            problems.push((
                vec![Key("stats"), Index(i), Key("counts")],
                format!(
                    "stat \"{name}\" has {} counts for {} bins",
                    stat.counts.len(),
                    stat.bins.count
                ),
            ));
        }
    }
    problems
}

/// The span of the value at `path`, or of the deepest part of it that exists.
fn span(doc: &Spanned<DeTable<'_>>, path: &[Step<'_>]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let Step::Key(first) = first else {
        return None;
    };
    let mut value = doc.get_ref().get(*first)?;
    for step in rest {
        let next = match step {
            Step::Key(k) => value.get_ref().get(*k),
            Step::Index(i) => value.get_ref().get(*i),
        };
        match next {
            Some(v) => value = v,
            None => break,
        }
    }
    Some(value.span())
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
