//! Integration tests: the real `framesift` binary with the real ONNX Runtime library.
//!
//! ONNX Runtime comes from `$ORT_DYLIB_PATH`, else `target/ort/<arch>/` as fetched by
//! `cross/fetch-ort.sh` (scripts/test.sh does both).

mod cli;
mod models;
mod run;

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

/// The ONNX Runtime library to test with.
pub fn ort_library() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let fetched = workspace()
        .join("target/ort")
        .join(std::env::consts::ARCH)
        .join("libonnxruntime.so");
    assert!(
        fetched.is_file(),
        "ONNX Runtime not found: run cross/fetch-ort.sh or set ORT_DYLIB_PATH"
    );
    fetched
}

/// `framesift ARGS` with ONNX Runtime available and quiet logs.
pub fn framesift(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_framesift"));
    cmd.args(args)
        .env("ORT_DYLIB_PATH", ort_library())
        .env("FRAMESIFT_LOG", "warn");
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
