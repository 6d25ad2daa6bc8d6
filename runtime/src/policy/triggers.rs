//! Triggers: `[[trigger]]` tables that give a frame a strong boost when one signal
//! crosses a threshold, within rate limits.
//!
//! On the inference thread, a trigger whose signal is at or above its `threshold` fires:
//! its bit is set in [`super::Scores::triggers`], its `weight` is added to the frame's
//! value, and the frame goes to the keeper whatever the target rate's hand-off
//! threshold. On the keeper's side ([`Limits`]), a fired trigger whose `per_minute`,
//! `per_hour` or `per_day` allowance is spent loses its weight before selection; one
//! that is kept uses up one of each. Allowances run over calendar minutes, hours and
//! days (UTC) and persist in the spool directory, so a restart does not reset them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::signals;
use crate::config::Checker;

/// The most `[[trigger]]` tables (a bit each in [`super::Scores::triggers`]).
pub(crate) const MAX_TRIGGERS: usize = 16;

/// `[[trigger]]` as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrigger {
    #[serde(default)]
    name: String,
    #[serde(default)]
    signal: String,
    #[serde(default = "one")]
    threshold: f64,
    #[serde(default = "one")]
    weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    per_minute: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    per_hour: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    per_day: Option<i64>,
}

fn one() -> f64 {
    1.0
}

/// A validated trigger.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Trigger {
    pub name: String,
    /// Index of its signal in [`signals::NAMES`].
    pub signal: usize,
    pub threshold: f32,
    pub weight: f32,
    /// Kept frames allowed per calendar minute, hour, day (`None`: no limit).
    pub limits: [Option<u32>; 3],
}

/// Validate every `[[trigger]]`; keys are reported as `trigger[i].key`.
pub(crate) fn validate(raw: &[RawTrigger], c: &mut Checker) -> Vec<Trigger> {
    if raw.len() > MAX_TRIGGERS {
        c.fail(
            "trigger",
            format!("{} [[trigger]] tables; at most {MAX_TRIGGERS}", raw.len()),
            "merge triggers on the same signal".to_string(),
        );
    }
    let triggers: Vec<Trigger> = c.within("trigger", |c| {
        raw.iter()
            .take(MAX_TRIGGERS)
            .enumerate()
            .map(|(i, t)| c.within(i, |c| validate_one(t, c)))
            .collect()
    });
    for (i, t) in triggers.iter().enumerate() {
        if triggers[..i].iter().any(|o| o.name == t.name) {
            c.within("trigger", |c| {
                c.within(i, |c| {
                    c.fail(
                        "name",
                        format!("trigger name \"{}\" is used twice", t.name),
                        "give every [[trigger]] its own name".to_string(),
                    )
                })
            });
        }
    }
    triggers
}

fn validate_one(raw: &RawTrigger, c: &mut Checker) -> Trigger {
    let name_ok = !raw.name.is_empty()
        && raw
            .name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
    if !name_ok && !c.failed("name") {
        let problem = if raw.name.is_empty() {
            "a [[trigger]] has no name".to_string()
        } else {
            format!("trigger name {:?} is not a plain word", raw.name)
        };
        c.fail(
            "name",
            problem,
            "name it with letters, digits, _ or -, e.g. name = \"dark_aisle\"".to_string(),
        );
    }
    let signal = signals::NAMES.iter().position(|n| *n == raw.signal);
    if signal.is_none() && !c.failed("signal") {
        c.fail(
            "signal",
            format!("unknown signal {:?}", raw.signal),
            format!("one of: {}", signals::NAMES.join(", ")),
        );
    }
    let limit = |c: &mut Checker, key: &str, v: Option<i64>| {
        v.map(|v| c.int(key, v, 0, i64::from(u32::MAX)) as u32)
    };
    Trigger {
        name: raw.name.clone(),
        signal: signal.unwrap_or(0),
        threshold: c.float(
            "threshold",
            raw.threshold,
            |v| v > 0.0 && v <= 1.0,
            "above 0 and at most 1 (a signal value), e.g. 0.8",
        ) as f32,
        weight: c.float("weight", raw.weight, |v| v >= 0.0, "0 or more, e.g. 2.0") as f32,
        limits: [
            limit(c, "per_minute", raw.per_minute),
            limit(c, "per_hour", raw.per_hour),
            limit(c, "per_day", raw.per_day),
        ],
    }
}

/// Seconds in a calendar minute, hour, day.
const PERIODS: [u64; 3] = [60, 3600, 86_400];

/// One trigger's use of its allowances: the period each count belongs to (unix time ÷
/// the period's length) and the frames kept in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Used {
    minute: (u64, u32),
    hour: (u64, u32),
    day: (u64, u32),
}

impl Used {
    fn slots(&mut self) -> [&mut (u64, u32); 3] {
        [&mut self.minute, &mut self.hour, &mut self.day]
    }
}

/// The keeper's rate limits: what each trigger has used, by name (a reload that renames
/// or reorders triggers keeps each one's counts).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Limits {
    used: BTreeMap<String, Used>,
}

impl Limits {
    /// Whether trigger `t` may have another frame kept at unix time `now`.
    pub(crate) fn allows(&self, t: &Trigger, now: u64) -> bool {
        let mut used = self.used.get(&t.name).copied().unwrap_or_default();
        used.slots()
            .into_iter()
            .zip(PERIODS)
            .zip(t.limits)
            .all(|((slot, period), limit)| {
                let count = if slot.0 == now / period { slot.1 } else { 0 };
                limit.is_none_or(|l| count < l)
            })
    }

    /// Count a kept frame of trigger `t` at unix time `now`.
    pub(crate) fn record(&mut self, t: &Trigger, now: u64) {
        let used = self.used.entry(t.name.clone()).or_default();
        for (slot, period) in used.slots().into_iter().zip(PERIODS) {
            let bucket = now / period;
            *slot = if slot.0 == bucket {
                (bucket, slot.1 + 1)
            } else {
                (bucket, 1)
            };
        }
    }

    /// The file's content.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.used).unwrap_or_default()
    }

    /// Read what [`Limits::to_json`] wrote.
    pub(crate) fn from_json(bytes: &[u8]) -> Result<Limits, serde_json::Error> {
        Ok(Limits {
            used: serde_json::from_slice(bytes)?,
        })
    }
}

/// The file the keeper keeps the limits in, inside the spool directory.
pub(crate) fn limits_path(spool: &std::path::Path) -> std::path::PathBuf {
    spool.join(".meta").join("triggers.json")
}

/// Load the limits saved in `spool`; none saved is a fresh start, an unreadable file is
/// reported and replaced (the allowances restart; no frame is lost).
pub(crate) fn load_limits(spool: &std::path::Path) -> Limits {
    let path = limits_path(spool);
    match std::fs::read(&path) {
        Ok(bytes) => Limits::from_json(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), "trigger rate limits unreadable ({e}); starting them afresh");
            Limits::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Limits::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot read trigger rate limits ({e}); starting them afresh");
            Limits::default()
        }
    }
}

/// Save the limits into `spool` atomically (temp file, fsync, rename).
pub(crate) fn save_limits(spool: &std::path::Path, limits: &Limits) -> std::io::Result<()> {
    use std::io::Write as _;
    let path = limits_path(spool);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&limits.to_json())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn trigger(limits: [Option<u32>; 3]) -> Trigger {
        Trigger {
            name: "dark".into(),
            signal: 3,
            threshold: 0.8,
            weight: 2.0,
            limits,
        }
    }

    #[test]
    fn allowances_run_per_calendar_minute_hour_and_day() {
        let t = trigger([Some(2), Some(3), None]);
        let mut l = Limits::default();
        let t0 = 1_000_000_040; // 20 s into a minute
        assert!(l.allows(&t, t0));
        l.record(&t, t0);
        l.record(&t, t0 + 5);
        assert!(!l.allows(&t, t0 + 10), "two a minute");
        assert!(l.allows(&t, t0 + 40), "the next minute");
        l.record(&t, t0 + 40);
        assert!(!l.allows(&t, t0 + 100), "three an hour");
        assert!(l.allows(&t, t0 + 3600), "the next hour");
    }

    #[test]
    fn limits_and_their_counters_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = trigger([None, None, Some(1)]);
        let now = 1_700_000_000;
        let mut l = load_limits(dir.path());
        assert!(l.allows(&t, now));
        l.record(&t, now);
        save_limits(dir.path(), &l).expect("save");
        // A new daemon on the same spool: the day's allowance is spent.
        let again = load_limits(dir.path());
        assert_eq!(again, l);
        assert!(!again.allows(&t, now + 60));
        assert!(again.allows(&t, now + 86_400));
        // A corrupt file starts afresh rather than stopping the keeper.
        std::fs::write(limits_path(dir.path()), b"{not json").expect("write");
        assert!(load_limits(dir.path()).allows(&t, now));
    }

    #[test]
    fn triggers_are_read_from_the_config_with_located_errors() {
        let text = "[[trigger]]\nname = \"dark_aisle\"\nsignal = \"exposure\"\nthreshold = 0.8\nweight = 2.0\nper_hour = 30\n";
        let config = Config::parse(text, "c.toml").expect("valid");
        let t = &config.policy.triggers[0];
        assert_eq!(t.name, "dark_aisle");
        assert_eq!(signals::NAMES[t.signal], "exposure");
        assert_eq!(t.limits, [None, Some(30), None]);

        let bad = "[[trigger]]\nname = \"x\"\nsignal = \"darkness\"\n";
        let err = Config::parse(bad, "c.toml")
            .expect_err("unknown signal")
            .to_string();
        assert!(err.contains("c.toml: line 3"), "{err}");
        assert!(err.contains("exposure"), "the fix lists the signals: {err}");

        // A trigger without a name is pointed at by its first line, not by whichever of
        // its keys the parser happens to list first.
        let nameless = "[model]\nconfidence_threshold = 0.3\n\n[[trigger]]\nsignal = \"novelty\"\nthreshold = 0.8\nper_minute = 2\n";
        let err = Config::parse(nameless, "c.toml")
            .expect_err("no name")
            .to_string();
        assert!(
            err.contains("c.toml: line 5, column 1: a [[trigger]] has no name"),
            "{err}"
        );
    }
}
