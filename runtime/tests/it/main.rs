//! Integration tests: the real `framesift` binary with the real ONNX Runtime library.
//!
//! ONNX Runtime comes from `$ORT_DYLIB_PATH`, as for the product: scripts/test.sh sets
//! it to the library `cross/fetch-ort.sh` fetched, and so does `.cargo/config.toml` for
//! a plain `cargo test` in the workspace.

mod cli;
mod delivery;
mod drift;
mod lift;
mod models;
mod power_cut;
mod run;
mod servers;
mod stages;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `framesift ARGS` with ONNX Runtime available and quiet logs.
pub fn framesift(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_framesift"));
    cmd.args(args).env("FRAMESIFT_LOG", "warn");
    cmd
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn framesift");
    assert!(
        out.status.success(),
        "framesift failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `framesift run --config CONFIG --max-frames FRAMES --spool-dir SPOOL`, which must succeed.
pub fn run_frames(config: &Path, frames: u32, spool: &Path) -> Output {
    run_ok(&mut framesift(&[
        "run",
        "--config",
        config.to_str().expect("utf8"),
        "--max-frames",
        &frames.to_string(),
        "--spool-dir",
        spool.to_str().expect("utf8"),
    ]))
}

/// Every file below `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A sidecar detection's `bbox` as `[x1, y1, x2, y2]`.
pub fn bbox(detection: &serde_json::Value) -> Vec<f64> {
    detection["bbox"]
        .as_array()
        .expect("bbox")
        .iter()
        .map(|v| v.as_f64().expect("f64"))
        .collect()
}
