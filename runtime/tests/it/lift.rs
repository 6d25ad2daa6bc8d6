//! `framesift lift`: the policy's lift measured on kept frames that came back labelled.

use std::path::Path;

use crate::{bbox, framesift, run_frames, run_ok, text};

/// The synthetic catalogue, in the order the synthetic ground truth numbers it: the
/// `classes.txt` a labeller of these frames would use.
const CATALOGUE: &[&str] = framesift::capture::synthetic::PRODUCT_NAMES;

fn sidecars(spool: &Path) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = std::fs::read_dir(spool)
        .expect("spool")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json"))
        .collect();
    out.sort_by_key(|s| s["seq"].as_u64());
    out
}

/// A YOLO label line for a `[x1, y1, x2, y2]` box of catalogue class `name`.
fn yolo(name: &str, b: &[f64], (w, h): (f64, f64)) -> String {
    let class = CATALOGUE
        .iter()
        .position(|c| *c == name)
        .unwrap_or_else(|| panic!("{name} is not in the catalogue"));
    format!(
        "{class} {:.6} {:.6} {:.6} {:.6}\n",
        (b[0] + b[2]) / 2.0 / w,
        (b[1] + b[3]) / 2.0 / h,
        (b[2] - b[0]) / w,
        (b[3] - b[1]) / h
    )
}

fn lift_json(dir: &Path, labels: &Path) -> serde_json::Value {
    let out = run_ok(&mut framesift(&[
        "lift",
        dir.to_str().expect("utf8"),
        "--labels",
        labels.to_str().expect("utf8"),
        "--json",
    ]));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn group<'a>(model: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    model["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no group {name} in {model}"))
}

/// Misses over the control and chosen frames of a model's report.
fn total_misses(m: &serde_json::Value) -> f64 {
    ["control", "chosen"]
        .iter()
        .map(|g| {
            group(m, g)["misses_per_frame"].as_f64().expect("f64")
                * group(m, g)["frames"].as_f64().expect("f64")
        })
        .sum()
}

/// End to end on the real binary: frames kept by `framesift run`, labelled three ways.
/// Labels that say exactly what the model reported leave no error; one more labelled
/// product the model has no class for is exactly one miss; the synthetic ground truth
/// gives every unseen product as a miss. Frames without a label file are counted, not
/// measured, and the control frames are the ones the sidecars say.
#[test]
fn lift_labels_returned_frames_and_groups_them_as_the_sidecars_say() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[[camera]]\nname = \"cam0\"\ntype = \"synthetic\"\nwidth = 640\nheight = 360\nseed = 7\n\n\
         [keep]\ntarget_rate = 0.1\ncontrol_share = 0.5\ncontrol_seed = 3\n",
    )
    .expect("write");
    let spool = dir.path().join("spool");
    run_frames(&config, 400, &spool);
    let kept = sidecars(&spool);
    let control = kept.iter().filter(|s| s["control"] == true).count();
    assert!(
        kept.len() >= 20 && control >= 5 && control < kept.len(),
        "{} kept, {control} control",
        kept.len()
    );

    // The first frame comes back unlabelled unless `all`.
    let write_labels = |name: &str, all: bool, label: &dyn Fn(&serde_json::Value) -> String| {
        let labels = dir.path().join(name);
        std::fs::create_dir_all(&labels).expect("mkdir");
        std::fs::write(labels.join("classes.txt"), CATALOGUE.join("\n") + "\n").expect("write");
        for s in &kept[usize::from(!all)..] {
            let id = s["id"].as_str().expect("id");
            std::fs::write(labels.join(format!("{id}.txt")), label(s)).expect("write");
        }
        labels
    };
    let size = |s: &serde_json::Value| {
        (
            s["frame"]["width"].as_f64().expect("width"),
            s["frame"]["height"].as_f64().expect("height"),
        )
    };
    let reported = |s: &serde_json::Value| -> String {
        s["detections"]
            .as_array()
            .expect("detections")
            .iter()
            .filter(|d| d["below_threshold"] == false)
            .map(|d| yolo(d["class"].as_str().expect("class"), &bbox(d), size(s)))
            .collect()
    };

    let report = lift_json(&spool, &write_labels("as-reported", false, &reported));
    assert_eq!(report["kept"], kept.len());
    assert_eq!(report["labelled"], kept.len() - 1);
    assert_eq!(report["unlabelled"], 1);
    let models = report["models"].as_array().expect("models");
    assert_eq!(models.len(), 1, "{report}");
    let m = &models[0];
    assert_eq!(m["model"]["id"], "framesift-products");
    let labelled_control = kept[1..].iter().filter(|s| s["control"] == true).count();
    assert_eq!(group(m, "control")["frames"], labelled_control);
    assert_eq!(
        group(m, "chosen")["frames"],
        kept.len() - 1 - labelled_control
    );
    for g in ["control", "chosen"] {
        assert_eq!(group(m, g)["errors_per_frame"], 0.0, "{g}: {m}");
    }

    // One banana more on the second frame: one miss among all labelled frames.
    let with_banana = |s: &serde_json::Value| -> String {
        let extra = if s["id"] == kept[1]["id"] {
            yolo("banana", &[10.0, 10.0, 60.0, 40.0], size(s))
        } else {
            String::new()
        };
        reported(s) + &extra
    };
    let report = lift_json(&spool, &write_labels("with-banana", false, &with_banana));
    let m = &report["models"][0];
    let misses = total_misses(m);
    assert!((misses - 1.0).abs() < 1e-9, "{misses} misses in {m}");

    // The synthetic ground truth, as a labeller would draw it.
    let truth = |s: &serde_json::Value| -> String {
        s["truth"]["boxes"]
            .as_array()
            .expect("truth boxes")
            .iter()
            .map(|b| yolo(b["class"].as_str().expect("class"), &bbox(b), size(s)))
            .collect()
    };
    let report = lift_json(&spool, &write_labels("truth", true, &truth));
    let m = &report["models"][0];
    let unseen = kept
        .iter()
        .flat_map(|s| s["truth"]["boxes"].as_array().expect("boxes").iter())
        .filter(|b| ["banana", "detergent_jug"].contains(&b["class"].as_str().expect("class")))
        .count();
    let misses = total_misses(m);
    assert!(
        misses >= unseen as f64 - 1e-9,
        "{misses} misses, {unseen} unseen products"
    );
    for key in ["lift_misses", "lift_errors"] {
        assert!(m[key]["interval"].is_array(), "{key}: {m}");
    }
    // --truth reads the same ground truth straight from the sidecars.
    let out = run_ok(&mut framesift(&[
        "lift",
        spool.to_str().expect("utf8"),
        "--truth",
        "--json",
    ]));
    let direct: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(direct["labelled"], kept.len());
    assert_eq!(direct["models"], report["models"]);
}

/// Sidecars and labels written by hand: the figures and the lifts are exact, the
/// reasons are broken down, and the table says how few control frames there are.
#[test]
fn lift_of_hand_made_returns_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = dir.path().join("bucket/cart-7");
    std::fs::create_dir_all(&frames).expect("mkdir");
    let sidecar = |id: &str, control: bool, reason: &str| {
        let json = format!(
            r#"{{"version": 2, "id": "{id}", "camera": "cam0",
                "model": {{"id": "m", "version": "1", "sha256": "0123456789abcdef"}},
                "frame": {{"width": 200, "height": 100}},
                "detections": [
                  {{"class_id": 0, "class": "can", "score": 0.9, "second_score": 0.0,
                    "bbox": [0, 0, 100, 100], "below_threshold": false}},
                  {{"class_id": 1, "class": "box", "score": 0.2, "second_score": 0.0,
                    "bbox": [100, 0, 200, 100], "below_threshold": true}}
                ],
                "value": 1.0, "reasons": ["{reason}"], "triggers": [], "control": {control}}}"#
        );
        std::fs::write(frames.join(format!("{id}.json")), json).expect("write");
    };
    let labels = dir.path().join("labels");
    std::fs::create_dir_all(&labels).expect("mkdir");
    std::fs::write(labels.join("classes.txt"), "can\nbox\n").expect("write");
    // The can on the left is found; the box on the right was only below the threshold.
    let can = "0 0.25 0.5 0.5 1.0\n";
    let bx = "1 0.75 0.5 0.5 1.0\n";
    // Control frames: one miss each (the box).
    for id in ["c1", "c2"] {
        sidecar(id, true, "uncertain_detections");
        std::fs::write(labels.join(format!("{id}.txt")), format!("{can}{bx}")).expect("write");
    }
    // Chosen frames: the box is missed and the "can" was a wrong call (it is a box):
    // two misses and one false positive.
    for (id, reason) in [("k1", "faint_objects"), ("k2", "uncertain_detections")] {
        sidecar(id, false, reason);
        std::fs::write(
            labels.join(format!("{id}.txt")),
            format!("{bx}1 0.25 0.5 0.5 1.0\n"),
        )
        .expect("write");
    }
    let report = lift_json(dir.path().join("bucket").as_path(), &labels);
    let m = &report["models"][0];
    assert_eq!(group(m, "control")["misses_per_frame"], 1.0, "{m}");
    assert_eq!(group(m, "chosen")["misses_per_frame"], 2.0, "{m}");
    assert_eq!(group(m, "chosen")["false_positives_per_frame"], 1.0, "{m}");
    assert_eq!(m["lift_misses"]["lift"], 2.0, "{m}");
    assert_eq!(m["lift_errors"]["lift"], 3.0, "{m}");
    // No false positive among the control frames: that lift is undefined.
    assert!(m["lift_false_positives"]["lift"].is_null(), "{m}");
    let reasons = m["reasons"].as_array().expect("reasons");
    assert_eq!(reasons.len(), 2, "{m}");
    assert!(reasons.iter().all(|r| r["frames"] == 1), "{m}");

    let out = run_ok(&mut framesift(&[
        "lift",
        dir.path().join("bucket").to_str().expect("utf8"),
        "--labels",
        labels.to_str().expect("utf8"),
    ]));
    let table = text(&out.stdout);
    assert!(table.contains("4 kept frames"), "{table}");
    assert!(table.contains("misses           2.00"), "{table}");
    assert!(table.contains("only 2 control frames came back"), "{table}");
    assert!(table.contains("faint_objects"), "{table}");
    assert!(
        !text(&out.stderr).contains("do not name"),
        "{}",
        text(&out.stderr)
    );

    // Labels that spell a class otherwise than the model score none of it, and say so.
    std::fs::write(labels.join("classes.txt"), "Can\nbox\n").expect("write");
    let out = run_ok(&mut framesift(&[
        "lift",
        dir.path().join("bucket").to_str().expect("utf8"),
        "--labels",
        labels.to_str().expect("utf8"),
    ]));
    let err = text(&out.stderr);
    assert!(
        err.contains(r#"model m 1 reports a class that the label classes (classes.txt) do not name: "can" (the labels write "Can")"#),
        "{err}"
    );
}

/// `lift --tune` on hand-made returns: uncertainty is high exactly on the control
/// frames where the model missed the box, exposure on a random third. The search
/// raises uncertainty over exposure, writes an overlay `run` accepts, and refuses to
/// tune on too few frames or on signals that tell the frames nothing; frames whose
/// values the starting weights do not give are pointed out.
#[test]
fn lift_tunes_the_weights_on_labelled_control_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let returns = |name: &str, frames: u32, informative: bool| {
        let root = dir.path().join(name);
        let (sidecars, labels) = (root.join("bucket"), root.join("labels"));
        std::fs::create_dir_all(&sidecars).expect("mkdir");
        std::fs::create_dir_all(&labels).expect("mkdir");
        std::fs::write(labels.join("classes.txt"), "can\nbox\n").expect("write");
        for i in 0..frames {
            // Every fifth frame the model missed the box (it reported only the can).
            let missed = i % 5 == 0;
            let (uncertainty, exposure) = if informative {
                (
                    if missed { 0.7 } else { 0.1 } + 0.01 * f64::from(i % 7),
                    if (i * 7919) % 3 == 0 { 0.9 } else { 0.0 },
                )
            } else {
                (0.5, 0.5)
            };
            // The value the start weights give, except on the flat returns, whose carts
            // ran other weights.
            let value = if informative {
                0.2 * uncertainty + 2.0 * exposure
            } else {
                1.0
            };
            let id = format!("f{i:04}");
            std::fs::write(
                sidecars.join(format!("{id}.json")),
                format!(
                    r#"{{"version": 2, "id": "{id}", "camera": "cam0",
                "model": {{"id": "m", "version": "1", "sha256": "0123456789abcdef"}},
                "frame": {{"width": 200, "height": 100}},
                "detections": [{{"class_id": 0, "class": "can", "score": 0.9,
                    "second_score": 0.0, "bbox": [0, 0, 100, 100], "below_threshold": false}}],
                "value": {value}, "signals": {{"uncertainty": {uncertainty}, "exposure": {exposure}}},
                "reasons": [], "triggers": [], "control": true}}"#
                ),
            )
            .expect("write");
            let boxes = if missed {
                "0 0.25 0.5 0.5 1.0\n1 0.75 0.5 0.5 1.0\n"
            } else {
                "0 0.25 0.5 0.5 1.0\n"
            };
            std::fs::write(labels.join(format!("{id}.txt")), boxes).expect("write");
        }
        (sidecars, labels)
    };
    let start = dir.path().join("start.toml");
    std::fs::write(
        &start,
        "[signals.uncertainty]\nweight = 0.2\n[signals.exposure]\nweight = 2.0\n",
    )
    .expect("write");
    let tune = |(sidecars, labels): &(std::path::PathBuf, std::path::PathBuf), out: &Path| {
        framesift(&[
            "lift",
            sidecars.to_str().expect("utf8"),
            "--labels",
            labels.to_str().expect("utf8"),
            "--tune",
            out.to_str().expect("utf8"),
            "--tune-for",
            "misses",
            "-c",
            start.to_str().expect("utf8"),
        ])
        .output()
        .expect("lift")
    };

    let out_file = dir.path().join("tuned.toml");
    let out = tune(&returns("good", 400, true), &out_file);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("wrote") && !stdout.contains("warning"),
        "{stdout}"
    );
    let overlay = std::fs::read_to_string(&out_file).expect("the overlay");
    let weight = |name: &str| -> f64 {
        let table = overlay
            .split(&format!("[signals.{name}]\nweight = "))
            .nth(1)
            .expect("the signal's table");
        table[..table.find(' ').expect("a comment")]
            .parse()
            .expect("a weight")
    };
    assert!(
        weight("uncertainty") > weight("exposure"),
        "uncertainty over exposure:\n{overlay}"
    );
    assert!(overlay.contains("400 labelled control frames"), "{overlay}");
    run_ok(&mut framesift(&[
        "validate",
        start.to_str().expect("utf8"),
        out_file.to_str().expect("utf8"),
    ]));

    let few_file = dir.path().join("few.toml");
    let out = tune(&returns("few", 120, true), &few_file);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("120 control frames of model m 1 came back labelled; tuning needs 200"),
        "{}",
        text(&out.stderr)
    );
    assert!(!few_file.exists());

    let flat_file = dir.path().join("flat.toml");
    let out = tune(&returns("flat", 300, false), &flat_file);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains(
            "warning: 300 of 300 frames carry a value the configured signal weights do not give"
        ),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("nothing written"),
        "{}",
        text(&out.stderr)
    );
    assert!(!flat_file.exists());
}

/// Bad labels are all named, with file and line and what to write, and nothing is
/// measured; a missing class list says how to give one.
#[test]
fn lift_names_every_bad_label_and_measures_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = r#"{"version": 2, "id": "e1", "model": {"id": "m", "version": "1", "sha256": "ab"},
        "frame": {"width": 64, "height": 64}, "detections": [], "control": true}"#;
    std::fs::write(dir.path().join("e1.json"), json).expect("write");
    std::fs::write(dir.path().join("e2.json"), json.replace("e1", "e2")).expect("write");
    std::fs::write(dir.path().join("notes.json"), r#"{"hello": 1}"#).expect("write");
    let dir_s = dir.path().to_str().expect("utf8");

    let missing = dir.path().join("nope");
    let missing_s = missing.to_str().expect("utf8");
    for args in [
        vec!["lift", missing_s],
        vec!["lift", dir_s, "--labels", missing_s],
    ] {
        let out = framesift(&args).output().expect("spawn");
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("{missing_s} is not a directory")),
            "{err}"
        );
    }

    let out = framesift(&["lift", dir_s]).output().expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("no classes.txt") && err.contains("--classes"),
        "{err}"
    );

    // A class named twice would make ids ambiguous.
    std::fs::write(dir.path().join("classes.txt"), "can\nbox\ncan\n").expect("write");
    let out = framesift(&["lift", dir_s]).output().expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("line 3 names \"can\" again (line 1)"), "{err}");

    // With a byte-order mark before the first name, and no label files: nothing to
    // measure is an error, not an empty report.
    std::fs::write(dir.path().join("classes.txt"), "\u{feff}can\n").expect("write");
    let out = framesift(&["lift", dir_s]).output().expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("no kept frame has a label file"), "{err}");

    std::fs::write(dir.path().join("e1.txt"), "0 0.5 0.5 0.2\n").expect("write");
    std::fs::write(
        dir.path().join("e2.txt"),
        "0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n",
    )
    .expect("write");
    let out = framesift(&["lift", dir_s]).output().expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("e1.txt: line 1:") && err.contains("x_center"),
        "{err}"
    );
    assert!(err.contains("e2.txt: line 2: class 3"), "{err}");
    assert!(err.contains("2 problems; nothing measured"), "{err}");

    // Fixed, it measures; the stray JSON file is skipped with a warning.
    std::fs::write(dir.path().join("e1.txt"), "").expect("write");
    std::fs::write(dir.path().join("e2.txt"), "0 0.5 0.5 0.2 0.2\n").expect("write");
    let out = run_ok(&mut framesift(&["lift", dir_s, "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["kept"], 2);
    assert_eq!(report["skipped"], 1);
    assert!(
        text(&out.stderr).contains("notes.json"),
        "{}",
        text(&out.stderr)
    );
    let m = &report["models"][0];
    assert_eq!(group(m, "control")["frames"], 2);
    assert_eq!(group(m, "control")["misses_per_frame"], 0.5);
}
