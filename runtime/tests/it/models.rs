//! Bring-your-own models: every supported output layout, decoded through the real
//! ONNX Runtime, checked against hand-computed boxes.
//!
//! The models (tests/data/models, built by make_models.py) return fixed candidates in
//! 64×64 input pixels. The frame is 128×64, so the letterbox scales by 0.5 and pads 16
//! rows above: frame = ((x - 0) / 0.5, (y - 16) / 0.5).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{framesift, run_ok, text};

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/models")
        .join(name)
}

/// Run `model` on one 128×64 frame, keeping every frame; the frame's detections as
/// (class, score, below_threshold, [x1, y1, x2, y2]).
fn detect(model: &Path) -> Vec<(String, f64, bool, [f64; 4])> {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).expect("mkdir");
    let mut png = Vec::new();
    image::RgbImage::from_pixel(128, 64, image::Rgb([90, 120, 150]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    std::fs::write(frames.join("frame.png"), png).expect("write");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[policy]\nmin_value = 0.0\n").expect("config");
    let spool = dir.path().join("spool");
    let arg = |p: &Path| p.to_str().expect("utf8").to_string();
    run_ok(&mut framesift(&[
        "run",
        "--config",
        &arg(&config),
        "--model",
        &arg(model),
        "--replay",
        &arg(&frames),
        "--spool-dir",
        &arg(&spool),
    ]));
    let sidecar = std::fs::read_dir(&spool)
        .expect("spool")
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .expect("the frame was kept");
    let s: Value =
        serde_json::from_slice(&std::fs::read(sidecar.path()).expect("read")).expect("json");
    s["detections"]
        .as_array()
        .expect("detections")
        .iter()
        .map(|d| {
            let b = crate::bbox(d);
            (
                d["class"].as_str().expect("class").to_string(),
                d["score"].as_f64().expect("score"),
                d["below_threshold"].as_bool().expect("flag"),
                [b[0], b[1], b[2], b[3]],
            )
        })
        .collect()
}

fn check(got: &[(String, f64, bool, [f64; 4])], want: &[(&str, f64, bool, [f64; 4])]) {
    assert_eq!(got.len(), want.len(), "got {got:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.0.as_str(), g.2), (w.0, w.2), "got {got:?}");
        assert!((g.1 - w.1).abs() < 1e-5, "score {} vs {}", g.1, w.1);
        for i in 0..4 {
            assert!((g.3[i] - w.3[i]).abs() < 1e-3, "box {:?} vs {:?}", g.3, w.3);
        }
    }
}

#[test]
fn yolov8_layout_from_metadata_without_a_manifest() {
    // Anchor 1 (same box, 0.8) is suppressed by NMS; anchor 3 (0.05, below the
    // uncertainty band) is kept as a below-threshold candidate for faint (floor 0.04).
    check(
        &detect(&model("v8.onnx")),
        &[
            ("a", 0.9, false, [44.0, 22.0, 84.0, 42.0]),
            ("b", 0.6, false, [12.0, 40.0, 28.0, 56.0]),
            ("b", 0.05, true, [96.0, 4.0, 104.0, 12.0]),
        ],
    );
}

#[test]
fn yolov5_layout_multiplies_objectness() {
    // 0.9 × 0.8, 0.9 × 0.5, and 0.5 × 0.4 = 0.2 kept as a below-threshold candidate.
    check(
        &detect(&model("v5.onnx")),
        &[
            ("b", 0.72, false, [44.0, 22.0, 84.0, 42.0]),
            ("a", 0.45, false, [88.0, 0.0, 104.0, 16.0]),
            ("a", 0.2, true, [16.0, 0.0, 24.0, 0.0]),
        ],
    );
}

#[test]
fn end_to_end_layout_skips_nms() {
    // The 0.05 box lies above the frame; clipped, it keeps its width only.
    check(
        &detect(&model("e2e.onnx")),
        &[
            ("a", 0.9, false, [44.0, 22.0, 84.0, 42.0]),
            ("a", 0.7, false, [46.0, 22.0, 86.0, 42.0]),
            ("b", 0.05, true, [0.0, 0.0, 8.0, 0.0]),
        ],
    );
}

#[test]
fn a_model_without_metadata_or_manifest_says_what_to_write() {
    let out = framesift(&[
        "run",
        "--max-frames",
        "1",
        "--model",
        model("bare.onnx").to_str().expect("utf8"),
    ])
    .output()
    .expect("spawn");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    for needle in [
        "no manifest",
        "bare.toml",
        "layout = \"yolov8\"",
        "input_width",
        "names = [",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in: {stderr}");
    }
}

#[test]
fn an_unsupported_layout_names_the_shape() {
    let out = framesift(&[
        "run",
        "--max-frames",
        "1",
        "--model",
        model("odd.onnx").to_str().expect("utf8"),
    ])
    .output()
    .expect("spawn");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("[1, 9, 9]"), "{stderr}");
}

#[test]
fn the_shared_yolov8n_benchmark_model_runs() {
    let shared = crate::workspace().join("../shared/models/yolov8n-320.onnx");
    if !shared.is_file() {
        eprintln!("skipped: {} not present", shared.display());
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_ok(&mut framesift(&[
        "run",
        "--model",
        shared.to_str().expect("utf8"),
        "--max-frames",
        "5",
        "--spool-dir",
        dir.path().to_str().expect("utf8"),
    ]));
    assert!(
        text(&out.stdout).contains("5 acquired, 5 inferred"),
        "{}",
        text(&out.stdout)
    );
}

/// `dynamic.onnx` (input `[1, 3, height, width]`) in a scratch directory with a
/// manifest giving `width × height`.
fn dynamic_model(dir: &Path, width: u32, height: u32) -> PathBuf {
    let onnx = dir.join("dynamic.onnx");
    std::fs::copy(model("dynamic.onnx"), &onnx).expect("copy");
    std::fs::write(
        dir.join("dynamic.toml"),
        format!(
            "id = \"dynamic\"\nversion = \"1\"\nlayout = \"yolov8\"\ninput_width = {width}\ninput_height = {height}\nnames = [\"a\", \"b\"]\n"
        ),
    )
    .expect("manifest");
    onnx
}

#[test]
fn a_dynamic_input_model_takes_its_size_from_the_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    check(
        &detect(&dynamic_model(dir.path(), 64, 64)),
        &[
            ("a", 0.9, false, [44.0, 22.0, 84.0, 42.0]),
            ("b", 0.6, false, [12.0, 40.0, 28.0, 56.0]),
            ("b", 0.05, true, [96.0, 4.0, 104.0, 12.0]),
        ],
    );
}

#[test]
fn a_manifest_with_a_zero_input_size_is_refused() {
    for (width, height, key) in [(0, 64, "input_width"), (64, 0, "input_height")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let onnx = dynamic_model(dir.path(), width, height);
        let out = framesift(&[
            "run",
            "--max-frames",
            "1",
            "--model",
            onnx.to_str().expect("utf8"),
            "--spool-dir",
            dir.path().join("spool").to_str().expect("utf8"),
        ])
        .output()
        .expect("spawn");
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "a clear error, not a panic: {stderr}"
        );
        assert!(
            stderr.contains(&format!("{key} = 0")) && stderr.contains("dynamic.toml"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A `features_output` the model does not have, or one that is not `[1, D]`, is refused
/// with what to write.
#[test]
fn a_manifest_naming_a_wrong_features_output_is_refused() {
    for (name, says) in [
        ("nope", "has no output named \"nope\""),
        ("output0", "expected [1, D]"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let onnx = dynamic_model(dir.path(), 64, 64);
        let manifest = dir.path().join("dynamic.toml");
        let text_was = std::fs::read_to_string(&manifest).expect("manifest");
        std::fs::write(
            &manifest,
            format!("{text_was}features_output = \"{name}\"\n"),
        )
        .expect("manifest");
        let out = framesift(&[
            "run",
            "--max-frames",
            "1",
            "--model",
            onnx.to_str().expect("utf8"),
            "--spool-dir",
            dir.path().join("spool").to_str().expect("utf8"),
        ])
        .output()
        .expect("spawn");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}
