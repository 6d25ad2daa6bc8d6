//! Live reload: what changed between two loads of the same files, which of it applies
//! without a restart, and the config that results.
//!
//! A key is live when the stage that uses it can take a new value between two frames
//! without reallocating what the per-frame path relies on: thresholds, weights, signal
//! settings, the keep window and capacity, the spool's size limit. Everything else —
//! the model, the cameras, the queues, thread priorities, the spool directory — needs a
//! restart; a reload that changes such a key says so and keeps the running value.

use super::{Config, Loaded};

/// One key whose effective value differs between two loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub key: String,
    /// `None`: the key was absent (an array item that was not there).
    pub old: Option<String>,
    pub new: Option<String>,
    pub live: bool,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        write!(
            f,
            "{}: {} -> {}",
            self.key,
            show(&self.old),
            show(&self.new)
        )?;
        if !self.live {
            write!(f, " (needs a restart; the running value is kept)")?;
        }
        Ok(())
    }
}

/// Every key whose effective value differs, in key order — among the tables whose
/// validated settings differ: a default written out (`frames_per_scene = 8` where it
/// was left out) changes the text, not the settings, and is no change.
pub(crate) fn diff(old: &Loaded, new: &Loaded) -> Vec<Change> {
    let mut keys: Vec<&String> = old.effective.keys().chain(new.effective.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (a, b) = (old.effective.get(key), new.effective.get(key));
            (a != b && table_differs(key, &old.config, &new.config)).then(|| Change {
                key: key.clone(),
                old: a.cloned(),
                new: b.cloned(),
                live: is_live(key),
            })
        })
        .collect()
}

/// Whether the validated settings of the table holding `key` differ.
fn table_differs(key: &str, old: &Config, new: &Config) -> bool {
    match key.split(['.', '[']).next().unwrap_or(key) {
        "model" => old.model != new.model,
        "camera" => old.cameras != new.cameras,
        "pipeline" => old.pipeline != new.pipeline,
        "policy" | "signals" | "trigger" => old.policy != new.policy,
        "keep" => old.keep != new.keep,
        "spool" => old.spool != new.spool,
        "upload" => old.upload != new.upload,
        "drift" => old.drift != new.drift,
        _ => true,
    }
}

/// Whether the key at a dotted path can change without a restart.
pub(crate) fn is_live(key: &str) -> bool {
    let (table, rest) = key.split_once('.').unwrap_or((key, ""));
    match table {
        "model" => crate::infer::LIVE_KEYS.contains(&rest),
        "policy" | "signals" | "trigger" => true,
        "keep" => crate::keep::LIVE_KEYS.contains(&rest),
        "spool" => crate::store::LIVE_KEYS.contains(&rest),
        "upload" => crate::store::uploader::LIVE_KEYS.contains(&rest),
        _ => false,
    }
}

impl Config {
    /// This config with the live keys of `new` applied and every other key kept.
    pub(crate) fn with_live_changes(&self, new: &Config) -> Config {
        Config {
            model: self.model.with_live_changes(&new.model),
            cameras: self.cameras.clone(),
            pipeline: self.pipeline.clone(),
            policy: new.policy.clone(),
            keep: new.keep.clone(),
            spool: self.spool.with_live_changes(&new.spool),
            upload: self.upload.with_live_changes(&new.upload),
            drift: self.drift.clone(),
        }
    }
}

/// What a reload does to a running config: the config to run with and the changes to
/// report, one line each.
pub(crate) struct Reload {
    pub running: Loaded,
    pub changes: Vec<Change>,
}

/// Compare a fresh load with the running one. The result keeps the running value of
/// every key that needs a restart, so it can be compared with the next load again.
pub(crate) fn apply(running: &Loaded, fresh: Loaded) -> Reload {
    let changes = diff(running, &fresh);
    let config = running.config.with_live_changes(&fresh.config);
    let mut effective = fresh.effective;
    for change in changes.iter().filter(|c| !c.live) {
        match &change.old {
            Some(old) => effective.insert(change.key.clone(), old.clone()),
            None => effective.remove(&change.key),
        };
    }
    Reload {
        running: Loaded {
            config,
            files: fresh.files,
            effective,
        },
        changes,
    }
}
