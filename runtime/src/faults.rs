//! Fault injection, for the tests that show how stages fail. Compiled only with the
//! `fault-injection` feature (the test build turns it on); without it [`at`] is a
//! constant `None` and every check vanishes from the binary.
//!
//! `FRAMESIFT_FAULTS="infer-cam0=error@40,keeper=panic@3,capture-cam1=gone@20"`: when the
//! stage named before `=` reaches its `n`th item (frame or candidate, from 0), the
//! fault fires: `error` fails the stage, `panic` panics it, `gone` makes a camera's
//! source report itself disconnected from then on (with a 30 s backoff).
//!
//! Named protocol points ([`point`]: `spool-image-synced`, `spool-committed`,
//! `upload-confirmed`, …) take `stop`: the process stops itself (SIGSTOP) the `n`th time
//! it passes there, so the power-cut tests can cut the power at that exact point.

use std::time::Duration;

use crate::{
    capture::{Next, SourceError},
    supervisor::StageFailure,
};

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub(crate) enum Fault {
    Error,
    Panic,
    Gone,
    Stop,
}

#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
impl Fault {
    /// For a stage's per-item check: fail or panic the stage.
    pub(crate) fn fire(self) -> Result<(), StageFailure> {
        match self {
            Fault::Error => Err(StageFailure::new("injected fault")),
            Fault::Panic => panic!("injected fault"),
            Fault::Gone | Fault::Stop => Ok(()),
        }
    }

    /// For a capture stage: what the source "returned" instead of `_result`.
    pub(crate) fn into_source_result(
        self,
        _result: Result<Next, SourceError>,
    ) -> Result<Next, SourceError> {
        match self {
            Fault::Gone => Err(SourceError::Disconnected {
                device: "injected".into(),
                reason: "injected fault: the camera is gone".into(),
                retry_after: Duration::from_secs(30),
            }),
            Fault::Error => Err(SourceError::Fatal("injected fault".into())),
            Fault::Panic => panic!("injected fault"),
            Fault::Stop => _result,
        }
    }
}

/// The fault for stage `point` at its item `n`, if one is configured.
#[cfg(feature = "fault-injection")]
pub(crate) fn at(point: &str, n: u64) -> Option<Fault> {
    use std::sync::OnceLock;
    static FAULTS: OnceLock<Vec<(String, Fault, u64)>> = OnceLock::new();
    let faults = FAULTS.get_or_init(|| {
        std::env::var("FRAMESIFT_FAULTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|spec| {
                let (stage, what) = spec.trim().split_once('=')?;
                let (kind, at) = what.split_once('@')?;
                let fault = match kind {
                    "error" => Fault::Error,
                    "panic" => Fault::Panic,
                    "gone" => Fault::Gone,
                    "stop" => Fault::Stop,
                    _ => return None,
                };
                Some((stage.to_string(), fault, at.parse().ok()?))
            })
            .collect()
    });
    faults.iter().find_map(|(stage, fault, at)| {
        let due = match fault {
            Fault::Gone => n >= *at,
            Fault::Error | Fault::Panic | Fault::Stop => n == *at,
        };
        (stage == point && due).then_some(*fault)
    })
}

/// Without the `fault-injection` feature there are no faults.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn at(_point: &str, _n: u64) -> Option<Fault> {
    None
}

/// A named point of the spool or upload protocol: counts the passes and stops the
/// process where a `stop` fault is due.
#[cfg(feature = "fault-injection")]
pub(crate) fn point(name: &'static str) {
    use std::sync::Mutex;
    static PASSES: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());
    let n = {
        let mut passes = PASSES.lock().unwrap_or_else(|p| p.into_inner());
        match passes.iter_mut().find(|(p, _)| *p == name) {
            Some((_, count)) => {
                *count += 1;
                *count - 1
            }
            None => {
                passes.push((name, 1));
                0
            }
        }
    };
    if at(name, n) == Some(Fault::Stop) {
        tracing::warn!(
            point = name,
            pass = n,
            "injected fault: stopping the process"
        );
        let _ = signal_hook::low_level::raise(signal_hook::consts::SIGSTOP);
    }
}

/// Without the `fault-injection` feature there are no protocol faults.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn point(_name: &'static str) {}
