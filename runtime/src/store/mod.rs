//! The store: kept frames on disk ([`spool`]) with the JSON sidecar that says why each
//! was kept ([`sidecar`]).

pub(crate) mod sidecar;
pub(crate) mod spool;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub(crate) use spool::{ImageEncoding, Spool, SpoolError};

use crate::config::Checker;

/// `[spool]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSpool {
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

/// `[spool]` keys that apply without a restart.
pub(crate) const LIVE_KEYS: &[&str] = &["max_bytes"];

/// The validated `[spool]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
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
        let id_ok = |id: &str| {
            id.len() <= 64
                && id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
        };
        if !id_ok(&sp.device_id) {
            c.fail(
                "device_id",
                format!("spool.device_id = \"{}\" is not a usable id", sp.device_id),
                "write up to 64 letters, digits, '-', '_' or '.', e.g. device_id = \"cart-0042\""
                    .to_string(),
            );
        }
        SpoolConfig {
            dir: PathBuf::from(&sp.dir),
            max_bytes: c.int("max_bytes", sp.max_bytes, 1 << 20, i64::MAX) as u64,
            device_id: (!sp.device_id.is_empty()).then(|| sp.device_id.clone()),
        }
    }

    /// This config with the live keys of `new` ([`LIVE_KEYS`]).
    pub(crate) fn with_live_changes(&self, new: &SpoolConfig) -> SpoolConfig {
        SpoolConfig {
            max_bytes: new.max_bytes,
            ..self.clone()
        }
    }
}
