//! The store: kept frames on disk ([`spool`]) with the JSON sidecar that says why each
//! was kept ([`sidecar`]), the file operations they go through ([`fs`]).

#[cfg(test)]
mod crash_tests;
pub(crate) mod fs;
mod s3;
pub(crate) mod sidecar;
#[cfg(test)]
mod sim;
pub(crate) mod spool;
pub(crate) mod upload;
pub(crate) mod uploader;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

pub(crate) use spool::{Budget, ImageEncoding, NewEntry, Recovery, Spool, SpoolError};

use crate::config::Checker;

/// The spool, shared by the keeper (which writes) and the uploader (which delivers).
pub(crate) type SharedSpool = Arc<Mutex<Spool>>;

/// What the daemon last said about its spool, in `<spool>/.meta/status.json` (rewritten
/// every few seconds; read by `framesift spool status`). Counts are since the daemon
/// started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct DaemonStatus {
    pub pid: u32,
    pub updated_unix_ms: u64,
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    pub failed_attempts: u64,
    /// The last failed attempt's error ("" while none has failed); never holds a secret.
    #[serde(default)]
    pub last_upload_error: String,
    pub evicted: u64,
    pub dropped_spool_full: u64,
    pub dropped_disk_full: u64,
    /// "idle", "uploading", "yielding" (slowed while the detector is busy), "paused",
    /// "failing", or "off" (no [upload]).
    pub upload_state: String,
}

impl DaemonStatus {
    /// The status now, from the run's metrics (`uploading`: an uploader runs).
    pub(crate) fn from_metrics(m: &crate::ops::metrics::Metrics, uploading: bool) -> Self {
        use crate::ops::metrics::Drop;
        use std::sync::atomic::Ordering::Relaxed;
        DaemonStatus {
            pid: std::process::id(),
            updated_unix_ms: sidecar::unix_ms(std::time::SystemTime::now()),
            uploaded: m.uploaded.load(Relaxed),
            uploaded_bytes: m.uploaded_bytes.load(Relaxed),
            failed_attempts: m.upload_failures.load(Relaxed),
            last_upload_error: m.last_upload_error(),
            evicted: m.spool_evicted.load(Relaxed),
            dropped_spool_full: m.drops(Drop::SpoolFull),
            dropped_disk_full: m.drops(Drop::DiskFull),
            upload_state: if uploading { m.upload_state() } else { "off" }.to_string(),
        }
    }
}

fn status_file(dir: &std::path::Path) -> PathBuf {
    dir.join(".meta").join("status.json")
}

/// Write the daemon's status (best effort: a lost write only makes it older).
pub(crate) fn write_status(dir: &std::path::Path, status: &DaemonStatus) {
    let file = status_file(dir);
    let staged = dir.join(".tmp").join("status.json");
    if let Ok(json) = serde_json::to_vec_pretty(status)
        && std::fs::write(&staged, json).is_ok()
    {
        let _ = std::fs::rename(&staged, &file);
    }
}

pub(crate) fn read_status(dir: &std::path::Path) -> Option<DaemonStatus> {
    serde_json::from_slice(&std::fs::read(status_file(dir)).ok()?).ok()
}

/// Open and recover the configured spool on the real filesystem.
pub(crate) fn open(config: &SpoolConfig) -> Result<(SharedSpool, Recovery), SpoolError> {
    let (spool, recovery) = Spool::open(
        Arc::new(fs::OsFs),
        &config.dir,
        config.budget(),
        config.device_id.as_deref(),
    )?;
    Ok((Arc::new(Mutex::new(spool)), recovery))
}

/// `[spool]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSpool {
    dir: String,
    max_bytes: i64,
    min_free_bytes: i64,
    device_id: String,
}

impl Default for RawSpool {
    fn default() -> Self {
        Self {
            dir: "framesift-spool".into(),
            max_bytes: 1 << 30,
            min_free_bytes: 256 << 20,
            device_id: String::new(),
        }
    }
}

/// `[spool]` keys that apply without a restart.
pub(crate) const LIVE_KEYS: &[&str] = &["max_bytes", "min_free_bytes"];

/// The validated `[spool]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// Bytes that must stay free on the spool's filesystem.
    pub min_free_bytes: u64,
    /// `None`: the id kept in the spool, made at random the first time.
    pub device_id: Option<String>,
}

impl SpoolConfig {
    pub(crate) fn validate(sp: &RawSpool, c: &mut Checker) -> Self {
        if sp.dir.is_empty() {
            c.fail(
                "dir",
                "spool.dir is empty".into(),
                "write a directory, e.g. dir = \"/var/lib/framesift/spool\"".to_string(),
            );
        }
        // It names a directory in object keys (and on a file share): `.` and `..` would
        // climb out of the prefix, so it starts with a letter or digit.
        let id_ok = |id: &str| {
            id.len() <= 64
                && id
                    .chars()
                    .next()
                    .is_none_or(|ch| ch.is_ascii_alphanumeric())
                && id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
        };
        if !id_ok(&sp.device_id) {
            c.fail(
                "device_id",
                format!("spool.device_id = \"{}\" is not a usable id", sp.device_id),
                "write up to 64 letters, digits, '-', '_' or '.', starting with a letter or digit, e.g. device_id = \"cart-0042\""
                    .to_string(),
            );
        }
        SpoolConfig {
            dir: PathBuf::from(&sp.dir),
            max_bytes: c.int("max_bytes", sp.max_bytes, 1 << 20, i64::MAX) as u64,
            min_free_bytes: c.int("min_free_bytes", sp.min_free_bytes, 0, i64::MAX) as u64,
            device_id: (!sp.device_id.is_empty()).then(|| sp.device_id.clone()),
        }
    }

    /// This config with the live keys of `new` ([`LIVE_KEYS`]).
    pub(crate) fn with_live_changes(&self, new: &SpoolConfig) -> SpoolConfig {
        SpoolConfig {
            max_bytes: new.max_bytes,
            min_free_bytes: new.min_free_bytes,
            ..self.clone()
        }
    }

    pub(crate) fn budget(&self) -> Budget {
        Budget {
            max_bytes: self.max_bytes,
            min_free_bytes: self.min_free_bytes,
        }
    }
}
