//! `validate`, `config default` and error messages of the binary.

use crate::{framesift, run_ok, text};

#[test]
fn default_config_prints_and_validates() {
    let out = run_ok(&mut framesift(&["config", "default"]));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("framesift.toml");
    std::fs::write(&file, &out.stdout).expect("write");
    let text_out = text(&out.stdout);
    assert!(text_out.contains("[[camera]]") && text_out.contains("[policy]"));
    let check = run_ok(&mut framesift(&["validate", file.to_str().expect("utf8")]));
    assert!(text(&check.stdout).contains("ok (1 camera)"));
}

#[test]
fn a_report_piped_into_a_closed_reader_ends_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = framesift(&["config", "default"])
        .stdout(writer)
        .output()
        .expect("spawn framesift");
    // Killed by SIGPIPE, as `head` expects of the commands before it, not a panic.
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{out:?}");
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn framesift_log_takes_levels_per_target_and_names_a_bad_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let overlay = dir.path().join("spool.toml");
    std::fs::write(&overlay, format!("[spool]\ndir = {:?}\n", spool)).expect("write");
    let run = |log: &str| {
        let out = run_ok(
            framesift(&[
                "run",
                "--config",
                overlay.to_str().expect("utf8"),
                "--max-frames",
                "3",
            ])
            .env("FRAMESIFT_LOG", log),
        );
        text(&out.stderr)
    };
    let debug = run("warn,framesift=debug");
    assert!(
        debug.contains("DEBUG"),
        "framesift=debug shows debug lines:\n{debug}"
    );
    let quiet = run("error");
    assert!(
        !quiet.contains("INFO") && !quiet.contains("DEBUG"),
        "{quiet}"
    );
    let bad = run("framesift=loud");
    assert!(
        bad.contains("FRAMESIFT_LOG=\"framesift=loud\" is not a log filter")
            && bad.contains("e.g. FRAMESIFT_LOG=framesift=debug,ort=info"),
        "a bad filter is named with what to write:\n{bad}"
    );
    assert!(
        bad.contains("INFO"),
        "and the default level applies:\n{bad}"
    );
}

#[test]
fn validate_reports_every_error_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[policy]\ntreshold = 0.3\nmin_value = \"high\"\n\n[keep]\ncapacity = 0\n",
    )
    .expect("write");
    let out = framesift(&["validate", file.to_str().expect("utf8")])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr).replace(&*file.to_string_lossy(), "bad.toml");
    insta::assert_snapshot!(stderr, @r#"
    error: bad.toml: line 2, column 1: unknown key "treshold" in [policy]; valid keys here: min_value, reason_level
    error: bad.toml: line 3, column 13: policy.min_value must be a number, found string "high"; write e.g. min_value = 0.5
    error: bad.toml: line 6, column 1: keep.capacity = 0 is out of range; write a whole number from 1 to 1024
    bad.toml: 3 problems
    "#);
}

#[test]
fn run_with_a_bad_config_names_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[modle]\n").expect("write");
    let out = framesift(&["run", "--config", file.to_str().expect("utf8")])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains(r#"unknown key "modle" at the top level; did you mean "model"?"#),
        "{}",
        text(&out.stderr)
    );
}

/// A class trigger on a name the model does not have can never fire: the run says so.
#[test]
fn a_class_the_model_does_not_have_is_named_at_the_first_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[[camera]]\nwidth = 320\nheight = 240\n[spool]\ndir = \"{}\"\n[signals.class]\nclasses = [\"soda_can\", \"bananna\"]\n",
            dir.path().join("spool").display()
        ),
    )
    .expect("config");
    let out = run_ok(&mut framesift(&[
        "run",
        "-c",
        config.to_str().expect("utf8"),
        "--max-frames",
        "3",
    ]));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("names a class the model does not have") && stderr.contains("bananna"),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .matches("names a class the model does not have")
            .count(),
        1,
        "soda_can is the model's: {stderr}"
    );
}

#[test]
fn run_limits_that_mean_nothing_are_refused_with_what_to_write() {
    for (arg, value, says) in [
        (
            "--duration-secs",
            "nan",
            "write a number of seconds above 0",
        ),
        (
            "--duration-secs",
            "1e30",
            "write a number of seconds above 0",
        ),
        ("--duration-secs", "0", "write a number of seconds above 0"),
        ("--duration-secs", "-1", "write a number of seconds above 0"),
        ("--max-frames", "0", "0 is not in 1.."),
    ] {
        let out = framesift(&["run", &format!("{arg}={value}")])
            .output()
            .expect("spawn");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{arg} {value}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{value}' for '{arg}"))
                && stderr.contains(says),
            "{arg} {value}: {stderr}"
        );
    }
}

#[test]
fn synth_out_of_bounds_is_refused_and_makes_no_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("set");
    for (args, says) in [
        (&["--frames", "0"][..], "--frames must be at least 1"),
        (
            &["--width", "65535", "--height", "65535"][..],
            "--width and --height must be from 64 to 8192",
        ),
        (
            &["--frames-per-scene", "4294967295"][..],
            "--frames-per-scene must be from 1 to 1000",
        ),
    ] {
        let mut all = vec!["synth", "--out", out_dir.to_str().expect("utf8")];
        all.extend_from_slice(args);
        let out = framesift(&all).output().expect("spawn");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!out_dir.exists());
    }
    // evaluate --tune searches for minutes: a file it cannot write is refused first.
    let out = framesift(&[
        "evaluate",
        "--frames",
        "10",
        "--tune",
        dir.path()
            .join("no/such/dir/w.toml")
            .to_str()
            .expect("utf8"),
    ])
    .output()
    .expect("spawn");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a directory; create it first"),
        "{}",
        text(&out.stderr)
    );
    // evaluate holds a record a frame: a stream it cannot hold is refused up front.
    let out = framesift(&["evaluate", "--frames", "18446744073709551615"])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--frames must be from 1 to 1000000"),
        "{}",
        text(&out.stderr)
    );
}

/// A mistyped spool directory is not an empty spool: `upload --once` says so, exits 1
/// and creates nothing there.
#[test]
fn upload_once_of_a_spool_that_is_not_there_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share");
    let config = dir.path().join("up.toml");
    std::fs::write(
        &config,
        format!("[upload]\nurl = \"file://{}\"\n", share.display()),
    )
    .expect("config");
    let typo = dir.path().join("spoool");
    let out = framesift(&[
        "upload",
        "--once",
        "-c",
        config.to_str().expect("utf8"),
        "--spool-dir",
        typo.to_str().expect("utf8"),
    ])
    .output()
    .expect("spawn");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("no spool at {}", typo.display())),
        "{}",
        text(&out.stderr)
    );
    assert!(!typo.exists());
}

#[test]
fn missing_ort_library_says_how_to_get_it() {
    let out = framesift(&["run", "--max-frames", "1"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: ONNX Runtime library not found"),
        "the message leads, with no empty path before it: {stderr}"
    );
    assert!(stderr.contains("cross/fetch-ort.sh"), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/libonnxruntime.so"),
        "{stderr}"
    );
}

#[test]
fn no_camera_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cam.toml");
    std::fs::write(
        &file,
        "[[camera]]\ntype = \"v4l2\"\ndevice = \"/dev/video-framesift-missing\"\n",
    )
    .expect("write");
    let out = framesift(&[
        "run",
        "--config",
        file.to_str().expect("utf8"),
        "--spool-dir",
        dir.path().join("s").to_str().expect("utf8"),
    ])
    .output()
    .expect("spawn");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr
            .matches("no camera at /dev/video-framesift-missing")
            .count(),
        1,
        "the message, once: {stderr}"
    );
    assert!(stderr.contains("synthetic"), "{stderr}");
}

/// Every error prints each cause once: a cause in its message is not repeated by the
/// chain `main` prints.
#[test]
fn errors_name_their_cause_once() {
    let out = framesift(&["run", "--max-frames", "1", "--model", "/nonexistent/d.onnx"])
        .output()
        .expect("spawn");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    let out = framesift(&["run", "--max-frames", "1", "--spool-dir", "/proc/framesift"])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("/proc/framesift"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}

#[test]
fn a_model_that_does_not_match_its_manifest_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let standin = crate::workspace().join("models/detector");
    std::fs::copy(standin.join("model.onnx"), dir.path().join("model.onnx")).expect("copy");
    let manifest = std::fs::read_to_string(standin.join("model.toml")).expect("manifest");
    let tampered = manifest
        .lines()
        .map(|l| {
            if l.starts_with("sha256") {
                "sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.path().join("model.toml"), tampered).expect("write");
    let model = dir.path().join("model.onnx");
    let out = framesift(&[
        "run",
        "--max-frames",
        "1",
        "--model",
        model.to_str().expect("utf8"),
    ])
    .output()
    .expect("spawn");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("does not match its manifest"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_missing_model_file_is_named() {
    let out = framesift(&[
        "run",
        "--max-frames",
        "1",
        "--model",
        "/nonexistent/detector.onnx",
    ])
    .output()
    .expect("spawn");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot read model /nonexistent/detector.onnx"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bench_reports_ratios_measured_in_one_run() {
    let out = run_ok(&mut framesift(&[
        "bench", "--frames", "8", "--rounds", "2", "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let numbers = |key: &str| -> Vec<f64> {
        report[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} missing: {report}"))
            .iter()
            .map(|v| v.as_f64().expect("a number"))
            .collect()
    };
    // Capture is measured in alternating blocks, at most a round's frames long, and
    // each kind of block recorded frames (so their p99s are above 0).
    for key in [
        "pipeline_fps",
        "bare_fps",
        "pipeline_vs_bare",
        "capture_p99_ratio",
        "capture_1s_p99_ratio",
        "peak_rss_mib",
        "capture_on_inference_p99_ms",
        "capture_off_inference_p99_ms",
        "capture_none_inference_p99_ms",
    ] {
        let v = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    // The ratio is the median of the per-round ratios (two rounds: their mean).
    let rounds = numbers("pipeline_vs_bare_rounds");
    assert_eq!(rounds.len(), 2, "{report}");
    let median = report["pipeline_vs_bare"].as_f64().expect("ratio");
    assert!(
        (median - (rounds[0] + rounds[1]) / 2.0).abs() < 1e-9,
        "{report}"
    );
    assert!(report["pipeline_startup_ms"].as_f64().expect("startup") > 0.0);
    assert_eq!(report["capture_block_frames"], 4, "{report}");
    let interval = numbers("capture_p99_ratio_interval");
    assert!(
        interval.len() == 2 && 0.0 < interval[0] && interval[0] <= interval[1],
        "{report}"
    );
    // May read 0 where /proc/self/stat does not count CPU time (qemu-user).
    let cpu = report["cpu_cores_used"].as_f64().expect("cpu_cores_used");
    assert!(cpu.is_finite() && cpu >= 0.0, "cpu_cores_used = {cpu}");
    assert_eq!(report["board"]["frames_per_phase"], 8);
    // With capture on, every frame is a candidate and the keeper really writes.
    assert!(
        report["capture_1s_written"]
            .as_u64()
            .expect("capture_1s_written")
            >= 2,
        "{report}"
    );
    // The upload phase: an uploader draining a full spool beside runs without one.
    for key in ["upload_fps_ratio", "upload_p99_ratio"] {
        let v = report[key].as_f64().expect(key);
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(numbers("upload_fps_ratio_rounds").len(), 2, "{report}");
    assert!(
        report["upload_destination"]
            .as_str()
            .expect("destination")
            .starts_with("file://"),
        "{report}"
    );
    assert!(
        report["upload_delivered"].as_u64().expect("delivered") >= 1,
        "{report}"
    );
    assert_eq!(report["upload_failures"], 0, "{report}");
    assert_eq!(report["board"]["intra_threads"], 2);
    // An old x86-64 CPU may have none of the listed extensions; aarch64 always NEON.
    let features = report["board"]["cpu_features"]
        .as_array()
        .expect("cpu_features");
    if cfg!(target_arch = "aarch64") {
        assert!(features.iter().any(|f| f == "neon"), "{report}");
    }
    let stages: Vec<&str> = report["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["stage"].as_str().expect("name"))
        .collect();
    for stage in ["acquire", "preprocess", "inference", "decode+nms", "score"] {
        assert!(stages.contains(&stage), "{stage} missing from {stages:?}");
    }
    let table = run_ok(&mut framesift(&["bench", "--frames", "4", "--rounds", "1"]));
    let table = text(&table.stdout);
    assert!(
        table.contains("pipeline_vs_bare")
            && table.contains("capture_p99_ratio")
            && table.contains("p99 ms"),
        "{table}"
    );
}

#[test]
fn overlays_run_and_validate_as_one_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.toml");
    let cart = dir.path().join("cart.toml");
    std::fs::write(
        &base,
        "[policy]\nmin_value = 0.0\n[keep]\ntarget_rate = 0.0\ndedupe_distance = 0.0\nwindow_secs = 3600.0\n\n[[camera]]\nname = \"front\"\nwidth = 640\nheight = 360\n",
    )
    .expect("write");
    std::fs::write(
        &cart,
        "[keep]\ntarget_rate = 0.0\ndedupe_distance = 0.0\ncapacity = 2\n\n[[camera]]\nname = \"front\"\nwidth = 320\nheight = 180\n",
    )
    .expect("write");
    let (base, cart) = (base.to_str().expect("utf8"), cart.to_str().expect("utf8"));
    let check = run_ok(&mut framesift(&["validate", base, cart]));
    assert!(
        text(&check.stdout).contains("ok (1 camera)"),
        "{}",
        text(&check.stdout)
    );
    let spool = dir.path().join("spool");
    let out = run_ok(&mut framesift(&[
        "run",
        "--config",
        base,
        "--config",
        cart,
        "--max-frames",
        "6",
        "--spool-dir",
        spool.to_str().expect("utf8"),
    ]));
    assert!(
        text(&out.stdout).contains("kept        2 written"),
        "{}",
        text(&out.stdout)
    );
    for entry in std::fs::read_dir(&spool).expect("spool").flatten() {
        if entry.path().extension().is_some_and(|e| e == "json") {
            let s: serde_json::Value =
                serde_json::from_slice(&std::fs::read(entry.path()).expect("read")).expect("json");
            assert_eq!(
                (s["camera"].as_str(), s["frame"]["width"].as_u64()),
                (Some("front"), Some(320))
            );
        }
    }
    // An error in the overlay is reported against the overlay.
    std::fs::write(dir.path().join("cart.toml"), "[keep]\ncapacity = 0\n").expect("write");
    let out = framesift(&["validate", base, cart])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr).replace(&format!("{}/", dir.path().display()), "");
    insta::assert_snapshot!(stderr, @r"
    error: cart.toml: line 2, column 1: keep.capacity = 0 is out of range; write a whole number from 1 to 1024
    base.toml + cart.toml: 1 problem
    ");
}

/// `framesift evaluate` on a short store stream: the JSON report has every policy with
/// the documented fields, random is the reference its lifts are measured against, the
/// oracle finds more errors per kept frame than random, the configured policy keeps its
/// budget within 20 % and spreads it over distinct scenes, and the run is repeatable.
#[test]
fn evaluate_reports_every_policy_against_random_and_the_oracle() {
    let run = || {
        let out = run_ok(&mut framesift(&[
            "evaluate", "--frames", "400", "--budget", "0.05", "--seed", "5", "--json",
        ]));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let report = run();
    assert_eq!(report["frames"], 400);
    assert_eq!(report["budget"], 0.05);
    let policies = report["policies"].as_array().expect("policies");
    let by_name = |name: &str| {
        policies
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
    };
    for name in [
        "framesift",
        "random",
        "oracle",
        "oracle:distinct",
        "oracle:policy",
        "signal:exposure",
        "signal:uncertainty",
    ] {
        let p = by_name(name);
        for key in [
            "kept",
            "lift_misses",
            "lift_false_positives",
            "lift_errors",
            "miss_precision",
            "distinct_scenes",
            "near_duplicates",
        ] {
            assert!(p[key].is_number(), "{name}.{key} in {p}");
        }
        assert!(
            p["coverage"]["perturbations"]["lighting"].is_number(),
            "{p}"
        );
        assert!(p["coverage"]["classes"]["banana"].is_number(), "{p}");
    }
    let random = by_name("random");
    assert_eq!(random["lift_errors"], 1.0);
    assert!((random["kept"].as_f64().expect("kept") - 20.0).abs() < 1e-6);
    assert!(by_name("oracle")["lift_errors"].as_f64().expect("lift") > 1.5);
    let ours = by_name("framesift");
    let kept = ours["kept"].as_f64().expect("kept");
    assert!(
        (16.0..=24.0).contains(&kept),
        "the budget of 20 within 20 %: {kept}"
    );
    assert!(
        ours["distinct_scenes"].as_f64().expect("scenes") >= 0.9 * kept,
        "{ours}"
    );
    for name in ["uncertainty", "exposure", "novelty"] {
        assert!(report["signal_cost_us"][name].is_number(), "{report}");
    }
    assert_eq!(
        run()["policies"],
        report["policies"],
        "same seed, same report"
    );
}

/// `evaluate --tune` writes an overlay that `validate` accepts and `run` can stack, with
/// every signal's weight, the lifts it was judged by, and no weight switched off.
#[test]
fn evaluate_tune_writes_a_weight_overlay_that_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("tuned.toml");
    let out_s = out.to_str().expect("utf8");
    let ran = run_ok(&mut framesift(&[
        "evaluate",
        "--frames",
        "300",
        "--budget",
        "0.05",
        "--seed",
        "5",
        "--tune",
        out_s,
        "--tune-streams",
        "1",
        "--tune-for",
        "misses",
    ]));
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(stdout.contains("Held-out stream 6"), "{stdout}");
    let text = std::fs::read_to_string(&out).expect("the overlay");
    assert!(text.contains("streams 5–5"), "{text}");
    assert!(text.contains("--tune-for misses"), "{text}");
    let table: toml::Table = text.parse().expect("toml");
    let signals = table["signals"].as_table().expect("[signals]");
    // Every registered signal, as the default config lists them.
    let default = run_ok(&mut framesift(&["config", "default"]));
    let default: toml::Table = String::from_utf8_lossy(&default.stdout)
        .parse()
        .expect("default toml");
    let registered = default["signals"].as_table().expect("[signals]");
    assert_eq!(
        signals.keys().collect::<Vec<_>>(),
        registered.keys().collect::<Vec<_>>(),
        "{text}"
    );
    for (name, t) in signals {
        let w = t["weight"]
            .as_float()
            .or(t["weight"].as_integer().map(|i| i as f64));
        assert!(w.is_some_and(|w| w >= 0.05), "{name}: {text}");
    }
    run_ok(&mut framesift(&["validate", out_s]));
    // --json and --records describe one stream's report, which --tune does not print.
    let refused = framesift(&["evaluate", "--frames", "10", "--tune", out_s, "--json"])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--tune writes its own report"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
