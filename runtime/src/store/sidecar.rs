//! The JSON sidecar written beside every kept frame: everything a labelling tool or a
//! data engineer needs to know about why the frame was kept.

use std::time::SystemTime;

use serde::Serialize;

use super::spool::ImageRecord;
use crate::{capture::FrameStats, infer::ModelInfo, keep::Candidate};

/// Bumped when a field changes meaning or disappears. 2: `scores` became `value` and
/// `signals` (every registered signal's value by name).
pub const SIDECAR_VERSION: u32 = 2;

#[derive(Debug, Serialize)]
pub struct Sidecar<'a> {
    pub version: u32,
    /// The spool entry's id, unique across restarts and carts (see `spool`).
    pub id: &'a str,
    /// Capture time, RFC 3339 UTC with milliseconds.
    pub captured_at: String,
    /// The same, in milliseconds since 1970 (0 when the clock was unset).
    pub captured_unix_ms: u64,
    pub camera: &'a str,
    pub seq: u64,
    /// File name for replay sources, device for cameras; empty for synthetic frames.
    pub origin: &'a str,
    pub model: ModelRef<'a>,
    pub frame: FrameRef,
    pub image: &'a ImageRecord,
    pub detections: Vec<DetectionRecord<'a>>,
    /// The frame's value: the weighted sum of the signals.
    pub value: f32,
    /// Every signal's value in 0..=1, by name, in registration order.
    pub signals: SignalRecord,
    /// The signals that fired (at or above `[policy] reason_level`; when none did and the
    /// value reaches that level, the signal that gave most of it).
    pub reasons: Vec<&'static str>,
    /// The `[[trigger]]`s that fired and were within their rate limits.
    pub triggers: Vec<&'a str>,
    /// Kept as part of the uniform control sample, whatever its value.
    pub control: bool,
    /// A context frame: the entry id of the trigger frame whose group it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_of: Option<String>,
    pub stats: FrameStats,
    /// Ground truth, for synthetic frames only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth: Option<TruthRecord<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ModelRef<'a> {
    pub id: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
}

#[derive(Debug, Serialize)]
pub struct FrameRef {
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Serialize)]
pub struct DetectionRecord<'a> {
    pub class_id: u16,
    pub class: &'a str,
    pub score: f32,
    pub second_score: f32,
    /// `[x1, y1, x2, y2]` in frame pixels.
    pub bbox: [f32; 4],
    /// Below the confidence threshold: reported because it sits in the uncertainty band.
    pub below_threshold: bool,
}

/// Serialized as a JSON object `{ "<signal>": value, ... }`.
#[derive(Debug)]
pub struct SignalRecord(crate::policy::Scores);

impl Serialize for SignalRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(crate::policy::signals::COUNT))?;
        for (name, value) in self.0.named() {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}

#[derive(Debug, Serialize)]
pub struct TruthRecord<'a> {
    pub perturbations: Vec<&'static str>,
    pub boxes: Vec<TruthBoxRecord<'a>>,
}

#[derive(Debug, Serialize)]
pub struct TruthBoxRecord<'a> {
    pub class: &'a str,
    pub bbox: [f32; 4],
    pub occluded: bool,
}

impl<'a> Sidecar<'a> {
    pub fn new(
        id: &'a str,
        camera: &'a str,
        c: &'a Candidate,
        model: &'a ModelInfo,
        confidence: f32,
        image: &'a ImageRecord,
    ) -> Self {
        let class_name = |id: u16| {
            model
                .names
                .get(id as usize)
                .map_or("unknown", String::as_str)
        };
        Sidecar {
            version: SIDECAR_VERSION,
            id,
            captured_at: rfc3339(c.frame.captured_at),
            captured_unix_ms: unix_ms(c.frame.captured_at),
            camera,
            seq: c.frame.seq,
            origin: &c.frame.origin,
            model: ModelRef {
                id: &model.id,
                version: &model.version,
                sha256: &model.sha256,
            },
            frame: FrameRef {
                width: c.frame.source_width,
                height: c.frame.source_height,
            },
            image,
            detections: c
                .detections
                .iter()
                .map(|d| DetectionRecord {
                    class_id: d.class_id,
                    class: class_name(d.class_id),
                    score: d.score,
                    second_score: d.second_score,
                    bbox: [d.x1, d.y1, d.x2, d.y2],
                    below_threshold: d.score < confidence,
                })
                .collect(),
            value: c.scores.value,
            signals: SignalRecord(c.scores),
            reasons: c.scores.reasons.names().collect(),
            triggers: Vec::new(),
            control: c.kind == crate::keep::Kind::Control,
            context_of: None,
            stats: c.stats,
            truth: c.frame.truth.as_ref().map(|t| TruthRecord {
                perturbations: t.perturbations.names().collect(),
                boxes: t
                    .boxes
                    .iter()
                    .map(|b| TruthBoxRecord {
                        class: crate::capture::synthetic::PRODUCT_NAMES
                            .get(b.class_id as usize)
                            .copied()
                            .unwrap_or("unknown"),
                        bbox: [b.x1, b.y1, b.x2, b.y2],
                        occluded: b.occluded,
                    })
                    .collect(),
            }),
        }
    }
}

/// Milliseconds since 1970 (0 for an earlier time, as an unset clock gives).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-21T22:05:07.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_298_707_123);
        assert_eq!(rfc3339(t), "2026-11-21T22:05:07.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
