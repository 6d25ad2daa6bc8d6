//! `framesift run` end to end: real ORT, the embedded model, spool contents.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::Digest;

use crate::{framesift, run_frames, run_ok, text};

/// Every complete spool entry's sidecar, checked against its image.
fn spool_entries(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("spool dir").flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let sidecar: Value = serde_json::from_slice(&std::fs::read(&path).expect("sidecar"))
                .expect("sidecar is JSON");
            let image = dir.join(sidecar["image"]["file"].as_str().expect("image.file"));
            let bytes = std::fs::read(&image).expect("image beside sidecar");
            assert_eq!(
                bytes.len() as u64,
                sidecar["image"]["bytes"].as_u64().expect("bytes")
            );
            let sha: String = sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(sha, sidecar["image"]["sha256"].as_str().expect("sha256"));
            assert_eq!(&bytes[..2], &[0xff, 0xd8], "image is a JPEG");
            out.push(sidecar);
        }
    }
    let jpgs = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "jpg"))
        .count();
    assert_eq!(jpgs, out.len(), "every image has a sidecar");
    out
}

#[test]
fn default_run_keeps_frames_with_complete_sidecars() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    // Defaults, except one window for the whole run: 60 frames take ~90 s under qemu
    // (or on a slow board), which would span three 30 s windows of 16 frames each.
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[keep]\ntarget_rate = 0.0\ndedupe_distance = 0.0\nwindow_secs = 3600.0\n",
    )
    .expect("write");
    let out = run_frames(&config, 60, &spool);
    let summary = text(&out.stdout);
    assert!(summary.contains("60 acquired, 60 inferred"), "{summary}");
    for stage in ["acquire", "preprocess", "inference", "decode+nms", "score"] {
        assert!(summary.contains(stage), "summary lacks {stage}: {summary}");
    }
    assert!(summary.contains("peak RSS"), "{summary}");

    let entries = spool_entries(&spool);
    assert!(
        !entries.is_empty(),
        "60 store frames should yield candidates: {summary}"
    );
    assert!(
        entries.len() <= 16,
        "keep capacity is 16, got {}",
        entries.len()
    );
    let kept_line = summary
        .lines()
        .find(|l| l.trim_start().starts_with("kept"))
        .expect("kept line");
    assert!(
        kept_line.contains(&format!("kept        {} written", entries.len())),
        "{kept_line}"
    );
    for s in &entries {
        assert_eq!(s["camera"], "cam0");
        assert_eq!(s["model"]["id"], "framesift-products");
        assert_eq!(s["frame"]["width"], 1280);
        assert_eq!(s["image"]["encoding"], "encoded");
        let value = s["value"].as_f64().expect("value");
        assert!(
            value >= 0.5,
            "kept frames are candidates (value >= min_value): {value}"
        );
        assert!(
            !s["reasons"].as_array().expect("reasons").is_empty(),
            "a kept frame says why: {s}"
        );
        assert!(
            s["truth"]["boxes"].is_array(),
            "synthetic frames carry ground truth"
        );
        assert!(s["captured_at"].as_str().expect("time").ends_with('Z'));
        for d in s["detections"].as_array().expect("detections") {
            let b = crate::bbox(d);
            assert!(
                b[0] <= b[2] && b[1] <= b[3] && b[2] <= 1280.0 && b[3] <= 720.0,
                "box in frame: {b:?}"
            );
        }
    }
    assert!(
        !spool.join(".tmp").read_dir().expect("tmp").any(|_| true),
        "no temp files left"
    );
}

fn write_jpeg(path: &Path, w: u32, h: u32, seed: u32) {
    let rgb: Vec<u8> = (0..w * h * 3)
        .map(|i| ((i / 3 % w + seed * 37) ^ (i / 3 / w)) as u8)
        .collect();
    let mut out = Vec::new();
    framesift::codec::encode_jpeg(&rgb, w, h, 90, &mut out).expect("encode");
    std::fs::write(path, out).expect("write");
}

#[test]
fn replay_skips_bad_files_warns_counts_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).expect("mkdir");
    for i in 0..5 {
        write_jpeg(&frames.join(format!("f{i}.jpg")), 320, 240, i);
    }
    let good = std::fs::read(frames.join("f0.jpg")).expect("read");
    std::fs::write(frames.join("f5_truncated.jpg"), &good[..good.len() / 2]).expect("truncated");
    std::fs::write(frames.join("f6_empty.jpg"), b"").expect("empty");
    std::fs::write(
        frames.join("f7_text.jpg"),
        b"this is not an image, just text with a .jpg name\n",
    )
    .expect("text");

    let spool = dir.path().join("spool");
    let out = framesift(&[
        "run",
        "--replay",
        frames.to_str().expect("utf8"),
        "--spool-dir",
        spool.to_str().expect("utf8"),
    ])
    .output()
    .expect("spawn");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    for bad in ["f5_truncated.jpg", "f6_empty.jpg", "f7_text.jpg"] {
        assert!(
            stderr.contains(bad) && stderr.contains("skipped a bad frame"),
            "no warning for {bad}: {stderr}"
        );
    }
    assert!(stdout.contains("5 acquired, 5 inferred"), "{stdout}");
    assert!(stdout.contains("bad_frame 3"), "{stdout}");
    // Replay frames arrive as JPEG: kept ones are written as they came.
    for s in spool_entries(&spool) {
        assert_eq!(s["image"]["encoding"], "original");
        assert!(s["origin"].as_str().expect("origin").starts_with('f'));
        assert!(s.get("truth").is_none());
    }
}

#[test]
fn sigterm_flushes_the_keep_buffer_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    // A long window: nothing reaches the spool unless shutdown flushes it.
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[keep]\ntarget_rate = 0.0\ndedupe_distance = 0.0\nwindow_secs = 3600.0\n[policy]\nmin_value = 0.0\n",
    )
    .expect("write");
    let child = framesift(&[
        "run",
        "--config",
        config.to_str().expect("utf8"),
        "--spool-dir",
        spool.to_str().expect("utf8"),
    ])
    .env("FRAMESIFT_LOG", "info")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn");
    // Wait until frames are flowing (the spool is created at start), then SIGTERM.
    let start = Instant::now();
    while !spool.join(".tmp").exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        spool_entries(&spool).is_empty(),
        "nothing written before the window ends"
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        text(&out.stderr)
    );
    let entries = spool_entries(&spool);
    // Every frame is a candidate (min_value 0): the buffer held min(16, inferred).
    let stdout = text(&out.stdout);
    let inferred: usize = stdout
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1].starts_with("inferred"))
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no inferred count in: {stdout}"));
    assert!(inferred > 0, "{stdout}");
    assert_eq!(
        entries.len(),
        inferred.min(16),
        "the keep buffer was flushed on SIGTERM: {stdout}"
    );
}

#[test]
fn tells_systemd_it_is_ready_and_feeds_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("notify.sock");
    let server = UnixDatagram::bind(&sock).expect("bind");
    server
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let child = framesift(&[
        "run",
        "--duration-secs",
        "3",
        "--spool-dir",
        dir.path().join("s").to_str().expect("utf8"),
    ])
    .env("NOTIFY_SOCKET", &sock)
    .env("WATCHDOG_USEC", "1000000")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn");
    let mut messages = Vec::new();
    let mut buf = [0u8; 256];
    while !messages.iter().any(|m| m == "STOPPING=1") {
        let n = server.recv(&mut buf).expect("a notification within 60 s");
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(messages[0], "READY=1");
    let pings = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        pings >= 4,
        "a 1 s watchdog over a 3 s run is fed every 250 ms: {messages:?}"
    );
}

#[test]
fn several_cameras_share_the_model_and_the_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).expect("mkdir");
    for i in 0..6 {
        write_jpeg(&frames.join(format!("f{i}.jpg")), 320, 240, i);
    }
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[policy]\nmin_value = 0.0\n[keep]\ntarget_rate = 0.0\n\n[[camera]]\nname = \"front\"\ntype = \"synthetic\"\nwidth = 640\nheight = 360\nseed = 3\n\n[[camera]]\nname = \"back\"\ntype = \"replay\"\ndir = \"{}\"\n",
            frames.display()
        ),
    )
    .expect("config");
    let spool = dir.path().join("spool");
    let out = run_ok(&mut framesift(&[
        "run",
        "--config",
        config.to_str().expect("utf8"),
        "--spool-dir",
        spool.to_str().expect("utf8"),
        "--max-frames",
        "30",
    ]));
    let entries = spool_entries(&spool);
    let cameras: std::collections::BTreeSet<&str> = entries
        .iter()
        .map(|s| s["camera"].as_str().expect("camera"))
        .collect();
    assert_eq!(
        cameras.into_iter().collect::<Vec<_>>(),
        ["back", "front"],
        "{}",
        text(&out.stdout)
    );
    for s in &entries {
        let expected = if s["camera"] == "front" { 640 } else { 320 };
        assert_eq!(s["frame"]["width"], expected);
    }
}

/// Replayed 1280×720 JPEGs are decoded at 1/4 scale for the 320×320 model; the boxes in
/// the sidecars must still land on the objects, in captured-image coordinates.
#[test]
fn replayed_jpeg_detections_are_in_captured_coordinates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("synth");
    run_ok(&mut framesift(&[
        "synth",
        "--out",
        data.to_str().expect("utf8"),
        "--frames",
        "4",
        "--split",
        "studio",
        "--seed",
        "3",
        "--width",
        "1280",
        "--height",
        "720",
    ]));
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[keep]\ntarget_rate = 0.0\ndedupe_distance = 0.0\nwindow_secs = 3600.0\n[policy]\nmin_value = 0.0\n",
    )
    .expect("write");
    let spool = dir.path().join("spool");
    run_ok(&mut framesift(&[
        "run",
        "--config",
        config.to_str().expect("utf8"),
        "--replay",
        data.join("images").to_str().expect("utf8"),
        "--spool-dir",
        spool.to_str().expect("utf8"),
    ]));
    let entries = spool_entries(&spool);
    assert_eq!(entries.len(), 4, "min_value 0 keeps every frame");

    let iou = |a: &[f64], b: &[f64]| {
        let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
        let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
        let area = |r: &[f64]| (r[2] - r[0]) * (r[3] - r[1]);
        w * h / (area(a) + area(b) - w * h)
    };
    let mut matched = 0;
    let mut truths = 0;
    for s in &entries {
        assert_eq!(
            (s["frame"]["width"].as_u64(), s["frame"]["height"].as_u64()),
            (Some(1280), Some(720))
        );
        let origin = s["origin"].as_str().expect("origin");
        let stem = origin.trim_end_matches(".jpg");
        let labels = std::fs::read_to_string(data.join("labels").join(format!("{stem}.txt")))
            .expect("labels");
        for line in labels.lines() {
            let v: Vec<f64> = line
                .split_whitespace()
                .map(|x| x.parse().expect("number"))
                .collect();
            let (cx, cy, w, h) = (v[1] * 1280.0, v[2] * 720.0, v[3] * 1280.0, v[4] * 720.0);
            let truth = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
            truths += 1;
            let hit = s["detections"]
                .as_array()
                .expect("detections")
                .iter()
                .any(|d| {
                    d["class_id"].as_f64() == Some(v[0])
                        && d["score"].as_f64().expect("score") >= 0.5
                        && iou(&crate::bbox(d), &truth) >= 0.7
                });
            matched += usize::from(hit);
        }
    }
    // The detector scores mAP@0.5 1.0 on studio frames; allow one miss for the
    // stricter IoU used here.
    assert!(truths > 0);
    assert!(
        matched + 1 >= truths,
        "{matched} of {truths} objects found at their captured-image position"
    );
}

/// Nice value of each thread of process `pid`, by thread name.
#[cfg(target_os = "linux")]
fn thread_nices(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("stat")),
        ) else {
            continue;
        };
        // Fields after the parenthesised name: state is field 3, nice field 19.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        if let Some(nice) = after
            .split_whitespace()
            .nth(16)
            .and_then(|n| n.parse().ok())
        {
            out.push((comm.trim().to_string(), nice));
        }
    }
    out
}

#[cfg(target_os = "linux")]
#[test]
fn capture_and_keeper_run_at_the_configured_nice_steps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[pipeline]\ncapture_nice = 7\nkeeper_nice = 3\n\n[[camera]]\ntype = \"synthetic\"\nfps = 5\n",
    )
    .expect("write");
    let mut child = framesift(&[
        "run",
        "--config",
        config.to_str().expect("utf8"),
        "--duration-secs",
        "30",
        "--spool-dir",
        dir.path().join("spool").to_str().expect("utf8"),
        "--quiet",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("spawn");
    // The threads lower themselves as they start; wait until both have.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen = thread_nices(child.id());
        let nice = |name: &str| seen.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        if nice("capture-cam0") == Some(7) && nice("keeper") == Some(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let nice = |name: &str| seen.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    assert_eq!(nice("capture-cam0"), Some(7), "{seen:?}");
    assert_eq!(nice("keeper"), Some(3), "{seen:?}");
    assert_eq!(nice("infer-cam0"), Some(0), "{seen:?}");
}

/// A replayed JPEG whose header claims 20000 × 20000 is refused before anything is
/// allocated for it, counted apart from corrupt frames, and the run goes on.
#[test]
fn replay_refuses_frames_above_the_size_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).expect("mkdir");
    write_jpeg(&frames.join("a.jpg"), 320, 240, 1);
    let mut huge = std::fs::read(frames.join("a.jpg")).expect("read");
    let sof = huge
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("SOF0");
    huge[sof + 5..sof + 9].copy_from_slice(&[0x4E, 0x20, 0x4E, 0x20]); // 20000 x 20000
    std::fs::write(frames.join("b_huge.jpg"), huge).expect("write");
    let out = run_ok(&mut framesift(&[
        "run",
        "--replay",
        frames.to_str().expect("utf8"),
        "--spool-dir",
        dir.path().join("spool").to_str().expect("utf8"),
    ]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("1 acquired, 1 inferred"), "{stdout}");
    assert!(stdout.contains("frame_too_large 1"), "{stdout}");
    assert!(
        stderr.contains("b_huge.jpg") && stderr.contains("20000x20000"),
        "{stderr}"
    );
}

/// Every kept frame's sidecar records every registered signal, the signals that can be
/// recomputed from the sidecar alone (uncertainty, faint, margin, blur, exposure) have
/// the values their documented formulas give for its detections and statistics, the
/// value is the weighted sum with the configured weights, and the decoder keeps
/// detections down to faint's floor and no lower.
#[test]
fn sidecars_record_every_signal_and_the_values_their_formulas_give() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    // Weights of its own, all different, so the value check does not follow the defaults.
    let weights = [
        ("uncertainty", 1.0f32),
        ("faint", 0.8),
        ("margin", 0.25),
        ("blur", 0.5),
        ("exposure", 2.0),
        ("count", 1.5),
        ("flicker", 0.75),
        ("novelty", 0.6),
        ("class", 1.25),
    ];
    let mut text = "[policy]\nmin_value = 0.0\n[keep]\ntarget_rate = 0.0\ndedupe_distance = 0.0\ncapacity = 1024\nwindow_secs = 3600.0\n".to_string();
    for (name, weight) in weights {
        text += &format!("[signals.{name}]\nweight = {weight}\n");
    }
    std::fs::write(&config, text).expect("write");
    let spool = dir.path().join("spool");
    run_frames(&config, 80, &spool);
    let entries = spool_entries(&spool);
    assert_eq!(entries.len(), 80);
    let (mut below, mut deep, mut fired) = (0, 0, std::collections::BTreeSet::new());
    for s in &entries {
        let (mut uncertain, mut faint, mut margin) = (0.0f32, 0.0f32, 0.0f32);
        for d in s["detections"].as_array().expect("detections") {
            let score = d["score"].as_f64().expect("score") as f32;
            let second = d["second_score"].as_f64().expect("second") as f32;
            assert!(
                score >= 0.04 - 1e-6,
                "nothing below faint's floor is kept: {score}"
            );
            below += usize::from(d["below_threshold"] == true);
            deep += usize::from(score < 0.10);
            let distance = (score - 0.25).abs();
            if distance <= 0.15 {
                uncertain += 1.0 - distance / 0.15;
            }
            if score < 0.25 {
                faint += (score - 0.04) / 0.21;
            }
            if score >= 0.25 {
                margin = margin.max((second / score).clamp(0.0, 1.0));
            }
        }
        let stat = |k: &str| s["stats"][k].as_f64().expect("stat") as f32;
        let blur = (1.0 - stat("blur") / 30.0).clamp(0.0, 1.0);
        let luma = stat("luma_mean");
        let exposure = ((40.0 - luma) / 20.0)
            .max((luma - 200.0) / 27.5)
            .max((stat("dark_clip") + stat("bright_clip")) / 0.05 - 1.0)
            .clamp(0.0, 1.0);
        let signals = s["signals"].as_object().expect("signals");
        let mut names: Vec<&str> = signals.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut want: Vec<&str> = weights.iter().map(|(n, _)| *n).collect();
        want.sort_unstable();
        assert_eq!(names, want, "every registered signal, by name");
        for (name, expected) in [
            ("uncertainty", (uncertain / 2.0).min(1.0)),
            ("faint", (faint / 4.0).min(1.0)),
            ("margin", margin),
            ("blur", blur),
            ("exposure", exposure),
        ] {
            let got = signals[name].as_f64().expect("value") as f32;
            assert!((got - expected).abs() < 1e-5, "{name}: {got} vs {expected}");
        }
        let value: f32 = weights
            .iter()
            .map(|(n, w)| w * signals[*n].as_f64().expect("value") as f32)
            .sum();
        let got = s["value"].as_f64().expect("value") as f32;
        assert!((got - value).abs() < 1e-4, "value {got} vs {value}");
        let recorded: Vec<&str> = s["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .map(|r| r.as_str().expect("reason"))
            .collect();
        fired.extend(recorded.iter().map(|r| r.to_string()));
        assert_eq!(
            s["control"], false,
            "no control sample without a target rate"
        );
    }
    assert!(
        below > 0,
        "detections below the threshold were kept for the band"
    );
    assert!(
        deep > 0,
        "candidates below the uncertainty band were kept for faint"
    );
    assert!(fired.contains("uncertain"), "{fired:?}");
}

/// `[keep] context_frames`: a trigger frame is kept with the frames around it, each
/// naming it, within the bound, without crediting the trigger or starving the pool.
#[test]
fn trigger_frames_are_kept_with_their_context() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[keep]\ncontext_frames = 2\nwindow_secs = 3600.0\n\n[[trigger]]\nname = \"unsure\"\nsignal = \"uncertainty\"\nthreshold = 0.5\nweight = 5.0\nper_minute = 3\n\n[[camera]]\nname = \"cam0\"\ntype = \"synthetic\"\nwidth = 640\nheight = 360\nseed = 3\n",
    )
    .expect("write");
    let out = run_frames(&config, 150, &spool);
    let summary = text(&out.stdout);
    assert!(summary.contains("dropped     0"), "{summary}");
    let entries = spool_entries(&spool);
    let by_id: std::collections::HashMap<&str, &Value> = entries
        .iter()
        .map(|s| (s["id"].as_str().expect("id"), s))
        .collect();
    let mut groups: std::collections::HashMap<&str, Vec<u64>> = Default::default();
    for s in &entries {
        let Some(anchor) = s.get("context_of") else {
            continue;
        };
        let anchor = anchor.as_str().expect("an entry id");
        let a = by_id.get(anchor).expect("the anchor was written");
        assert!(
            a.get("context_of").is_none(),
            "an anchor is no context frame"
        );
        assert_eq!(a["triggers"], serde_json::json!(["unsure"]), "{a}");
        assert_eq!(
            s["triggers"],
            serde_json::json!([]),
            "a context frame uses no allowance: {s}"
        );
        let (seq, at) = (
            s["seq"].as_u64().expect("seq"),
            a["seq"].as_u64().expect("seq"),
        );
        assert!(
            seq != at && seq.abs_diff(at) <= 2,
            "frame {seq} is within 2 of {at}"
        );
        groups.entry(anchor).or_default().push(seq);
    }
    assert!(
        !groups.is_empty(),
        "a trigger fired with frames around it: {summary}"
    );
    for (anchor, seqs) in &groups {
        assert!(
            seqs.len() <= 4,
            "{anchor}: at most 2 before and 2 after, got {seqs:?}"
        );
    }
    let credited = entries
        .iter()
        .filter(|s| s["triggers"] != serde_json::json!([]))
        .count();
    assert!(credited <= 3, "per_minute = 3, credited {credited}");
}

#[test]
fn the_control_sample_is_drawn_afresh_each_start_unless_seeded() {
    // All of the budget is control, so about one frame in five is drawn.
    let dir = tempfile::tempdir().expect("tempdir");
    let controls = |name: &str, seed: u64| -> Vec<u64> {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[keep]\ntarget_rate = 0.2\ncontrol_share = 1.0\ncontrol_seed = {seed}\ncapacity = 64\nwindow_secs = 3600.0\ndedupe_distance = 0.0\n\n[[camera]]\nname = \"cam0\"\ntype = \"synthetic\"\nwidth = 320\nheight = 180\nseed = 5\n"
            ),
        )
        .expect("write");
        let spool = dir.path().join(name);
        let out = run_frames(&config, 200, &spool);
        let summary = text(&out.stdout);
        assert!(summary.contains("dropped     0"), "{summary}");
        let mut seqs: Vec<u64> = spool_entries(&spool)
            .iter()
            .filter(|s| s["control"] == true)
            .map(|s| s["seq"].as_u64().expect("seq"))
            .collect();
        seqs.sort_unstable();
        assert!(seqs.len() >= 10, "about 40 of 200 frames: {seqs:?}");
        seqs
    };
    assert_eq!(
        controls("fixed-a", 7),
        controls("fixed-b", 7),
        "a fixed seed repeats its draws"
    );
    assert_ne!(
        controls("run-a", 0),
        controls("run-b", 0),
        "each start draws its own"
    );
}
