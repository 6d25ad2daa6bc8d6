use std::path::Path;

use super::*;
use crate::{capture::SourceConfig, keep::WhenFull};

fn errors(text: &str) -> String {
    match Config::parse(text, "config.toml") {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

/// Write `files` (name, text) into `dir` and load them in order.
fn load(dir: &Path, files: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let paths: Vec<PathBuf> = files
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path
        })
        .collect();
    Config::load(&paths)
}

/// An error message with the temporary directory taken out of file names.
fn errors_in(dir: &Path, files: &[(&str, &str)]) -> String {
    match load(dir, files) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string().replace(&format!("{}/", dir.display()), ""),
    }
}

#[test]
fn empty_file_is_the_defaults() {
    let config = Config::parse("", "empty.toml").expect("empty config");
    assert_eq!(config, Config::default());
    assert_eq!(config.cameras.len(), 1);
    assert!(matches!(
        config.cameras[0].source,
        SourceConfig::Synthetic(_)
    ));
}

#[test]
fn default_file_is_valid_and_equals_builtin_defaults() {
    let config =
        Config::parse(DEFAULT_CONFIG_TOML, "default.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config, Config::default());
}

/// Every `key = value` line of the default file (commented out or not), with the
/// table it is in and the comment lines above it; and each table's own comment.
struct DefaultFile {
    keys: Vec<(String, String, Vec<String>)>,
    tables: Vec<(String, Vec<String>)>,
}

fn default_file() -> DefaultFile {
    let mut out = DefaultFile {
        keys: Vec::new(),
        tables: Vec::new(),
    };
    let mut table = String::new();
    let mut comment: Vec<String> = Vec::new();
    for line in DEFAULT_CONFIG_TOML.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            table = line.trim_matches(['[', ']']).to_string();
            out.tables
                .push((table.clone(), std::mem::take(&mut comment)));
            continue;
        }
        let body = line.trim_start_matches('#').trim();
        // `key = value`, where key is one identifier.
        if let Some((k, _)) = body.split_once(" = ")
            && !k.is_empty()
            && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            out.keys
                .push((table.clone(), k.to_string(), std::mem::take(&mut comment)));
            continue;
        }
        if line.is_empty() {
            comment.clear();
        } else if let Some(text) = line.strip_prefix('#') {
            comment.push(text.trim().to_string());
        }
    }
    out
}

#[test]
fn default_file_documents_every_key() {
    // Every key each stage's table accepts, as serde lists them.
    let mut tables: Vec<(String, Vec<String>)> = vec![
        ("model".into(), accepted_keys::<RawModel>()),
        ("camera".into(), accepted_keys::<RawCamera>()),
        ("pipeline".into(), accepted_keys::<RawPipeline>()),
        ("policy".into(), accepted_keys::<RawPolicy>()),
        ("keep".into(), accepted_keys::<RawKeep>()),
        ("spool".into(), accepted_keys::<RawSpool>()),
    ];
    let signals = accepted_keys::<RawSignals>();
    assert_eq!(signals, crate::policy::signals::NAMES);
    let signal_tables: toml::Table = toml::Value::try_from(RawSignals::default())
        .expect("signals")
        .try_into()
        .expect("table");
    for (name, table) in signal_tables {
        let keys = table
            .as_table()
            .expect("a signal's table")
            .keys()
            .cloned()
            .collect();
        tables.push((format!("signals.{name}"), keys));
    }
    let file = default_file();
    let top: Vec<String> = accepted_keys::<RawConfig>();
    for (table, _) in &file.tables {
        let first = table.split('.').next().unwrap_or_default();
        assert!(top.iter().any(|k| k == first), "[{table}] is not a table");
    }
    for (table, keys) in tables {
        assert!(!keys.is_empty(), "{table}");
        for key in keys {
            let documented = file.keys.iter().find(|(t, k, _)| *t == table && *k == key);
            let Some((_, _, comment)) = documented else {
                panic!("{table}.{key} is not in default-config.toml");
            };
            let table_comment = file
                .tables
                .iter()
                .find(|(t, _)| *t == table)
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            // Keys that explain themselves by name sit under a table comment.
            assert!(
                !comment.is_empty()
                    || !table_comment.is_empty()
                    || key == "type"
                    || key == "weight",
                "{table}.{key} has no comment"
            );
        }
    }
}

#[test]
fn default_file_marks_exactly_the_keys_that_need_a_restart() {
    let file = default_file();
    for (table, key, comment) in &file.keys {
        let table_wide = file
            .tables
            .iter()
            .find(|(t, _)| t == table)
            .is_some_and(|(_, c)| {
                c.iter()
                    .any(|l| l.contains("Every key here needs a restart to change."))
            });
        let marked = table_wide || comment.iter().any(|l| l.contains("Restart to change."));
        let path = format!("{table}.{key}");
        assert_eq!(
            marked,
            !reload::is_live(&path),
            "{path}: marked {marked}, but is_live says {}",
            reload::is_live(&path)
        );
    }
}

#[test]
fn several_cameras() {
    let text = r#"
[[camera]]
name = "front"
type = "synthetic"
seed = 3

[[camera]]
name = "back"
type = "replay"
dir = "/data/frames"
loop = true
"#;
    let config = Config::parse(text, "c.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.cameras.len(), 2);
    assert_eq!(config.cameras[0].name, "front");
    assert!(
        matches!(&config.cameras[1].source, SourceConfig::Replay(r) if r.looping && r.dir == Path::new("/data/frames"))
    );
}

#[test]
fn unknown_key_names_line_column_and_closest_key() {
    insta::assert_snapshot!(errors("[signals.blur]\ntreshold = 12.0\n"), @r#"error: config.toml: line 2, column 1: unknown key "treshold" in [signals.blur]; did you mean "threshold"?"#);
    insta::assert_snapshot!(errors("[signals.blurr]\nthreshold = 12.0\n"), @r#"error: config.toml: line 1, column 10: unknown key "blurr" in [signals]; did you mean "blur"?"#);
}

#[test]
fn all_errors_are_collected() {
    let text = r#"[model]
intra_threads = "two"
confidence_threshold = 1.5

[policy]
treshold = 0.3

[signals.blur]
weight = -1.0

[keep]
when_full = "drop_oldest"

[[camera]]
type = "v4l"

[spool]
max_bytes = 10
"#;
    insta::assert_snapshot!(errors(text), @r#"
    error: config.toml: line 2, column 17: model.intra_threads must be a whole number, found string "two"; write e.g. intra_threads = 2
    error: config.toml: line 3, column 1: model.confidence_threshold = 1.5 is out of range; write a number between 0 and 1, e.g. 0.25
    error: config.toml: line 6, column 1: unknown key "treshold" in [policy]; valid keys here: min_value, reason_level
    error: config.toml: line 9, column 1: signals.blur.weight = -1 is out of range; write a number 0 or more (0 turns the signal off), e.g. 0.5
    error: config.toml: line 12, column 13: unknown value "drop_oldest" for keep.when_full; did you mean "drop_lowest"?
    error: config.toml: line 15, column 8: unknown value "v4l" for camera[0].type; did you mean "v4l2"?
    error: config.toml: line 18, column 1: spool.max_bytes = 10 is out of range; write a whole number of at least 1048576
    "#);
}

#[test]
fn range_errors_are_collected_and_located() {
    let text = "[model]\nconfidence_threshold = 1.5\nintra_threads = 0\n\n[signals.uncertainty]\nband = 1.0\n\n[spool]\nmax_bytes = 10\n";
    insta::assert_snapshot!(errors(text), @r"
    error: config.toml: line 2, column 1: model.confidence_threshold = 1.5 is out of range; write a number between 0 and 1, e.g. 0.25
    error: config.toml: line 3, column 1: model.intra_threads = 0 is out of range; write a whole number from 1 to 64
    error: config.toml: line 6, column 1: signals.uncertainty.band = 1 is out of range; write a number from 0 up to (not including) 1, e.g. 0.15
    error: config.toml: line 9, column 1: spool.max_bytes = 10 is out of range; write a whole number of at least 1048576
    ");
}

#[test]
fn thread_priorities_are_nice_steps_from_0_to_19() {
    let config = Config::parse("[pipeline]\ncapture_nice = 0\nkeeper_nice = 19\n", "c.toml")
        .expect("in range");
    assert_eq!(
        (config.pipeline.capture_nice, config.pipeline.keeper_nice),
        (0, 19)
    );
    insta::assert_snapshot!(errors("[pipeline]\ncapture_nice = 20\nkeeper_nice = -1\n"), @r"
    error: config.toml: line 2, column 1: pipeline.capture_nice = 20 is out of range; write a whole number from 0 to 19
    error: config.toml: line 3, column 1: pipeline.keeper_nice = -1 is out of range; write a whole number from 0 to 19
    ");
}

#[test]
fn camera_keys_must_fit_the_type() {
    let text = "[[camera]]\ntype = \"synthetic\"\ndir = \"/x\"\n\n[[camera]]\nname = \"b\"\ntype = \"replay\"\n";
    insta::assert_snapshot!(errors(text), @r#"
    error: config.toml: line 3, column 1: camera[0].dir does not apply to type = "synthetic"; remove it, or set type = "replay"
    error: config.toml: line 7, column 1: camera[1] has type = "replay" but no dir; add dir = "/path/to/frames" (a directory of .jpg/.png/.bmp/.webp files)
    "#);
}

#[test]
fn cameras_must_fit_the_frame_size_limit() {
    let text = "[pipeline]\nmax_frame_pixels = 100000\n\n[[camera]]\ntype = \"synthetic\"\nwidth = 640\nheight = 360\n";
    insta::assert_snapshot!(errors(text), @"error: config.toml: line 6, column 1: camera[0] is 640x360, more pixels than pipeline.max_frame_pixels = 100000; make the frame smaller, or raise [pipeline] max_frame_pixels to at least 230400");
    // With no camera written, the limit is what is wrong.
    insta::assert_snapshot!(errors("[pipeline]\nmax_frame_pixels = 5000\n"), @"error: config.toml: line 2, column 1: pipeline.max_frame_pixels = 5000 is fewer pixels than the default camera's 1280x720; raise it to at least 921600, or write a [[camera]] with a smaller width and height");
    assert_eq!(errors("[[camera]]\nwidth = 3840\nheight = 2160\n"), "ok");
}

#[test]
fn unknown_table_and_syntax_errors() {
    insta::assert_snapshot!(errors("[polcy]\nx = 1\n\n[keep]\ncapacity = 4\n"), @r#"error: config.toml: line 1, column 2: unknown key "polcy" at the top level; did you mean "policy"?"#);
    insta::assert_snapshot!(errors("[model\npath = 3\n"), @"error: config.toml: line 1, column 7: invalid TOML: unclosed table, expected `]`; see https://toml.io for the syntax; `framesift config default` prints a valid file");
    // A key or a table written twice is named, with what to do.
    insta::assert_snapshot!(errors("[keep]\ntarget_rate = 0.02\n\"target_rate\" = 0.03\n"), @"error: config.toml: line 3, column 1: invalid TOML: target_rate is set twice in one table; keep one target_rate = ... and delete the other");
    insta::assert_snapshot!(errors("[signals.faint]\nweight = 1.0\n[signals.faint]\nfloor = 0.01\n"), @"error: config.toml: line 3, column 10: invalid TOML: [signals.faint] is written twice; merge the two [signals.faint] tables into one");
}

#[test]
fn the_old_scoring_table_says_where_its_keys_went() {
    let message = errors("[scoring]\nmin_value = 0.3\n");
    assert!(
        message.starts_with(r#"error: config.toml: line 1, column 2: unknown key "scoring" at the top level; [scoring] is now [policy]"#),
        "{message}"
    );
    assert!(message.contains("[signals.<name>]"), "{message}");
}

#[test]
fn a_keep_window_fits_a_day() {
    // Beyond that it would not fit a Duration: the keeper panicked at start or reload.
    insta::assert_snapshot!(errors("[keep]\nwindow_secs = 1e308\n"), @"error: config.toml: line 2, column 1: keep.window_secs = 1e308 is out of range; write a number greater than 0, at most 86400 (a day), e.g. 30.0");
    assert_eq!(errors("[keep]\nwindow_secs = 86400.0\n"), "ok");
}

#[test]
fn a_device_id_must_be_usable_in_keys() {
    insta::assert_snapshot!(errors("[spool]\ndevice_id = \"cart 42/a\"\n"), @r#"error: config.toml: line 2, column 1: spool.device_id = "cart 42/a" is not a usable id; write up to 64 letters, digits, '-', '_' or '.', starting with a letter or digit, e.g. device_id = "cart-0042""#);
    // The id is a directory of every object key: these would climb out of the prefix.
    for id in ["..", ".", ".hidden", "-x"] {
        let message = errors(&format!("[spool]\ndevice_id = \"{id}\"\n"));
        assert!(message.contains("is not a usable id"), "{id}: {message}");
    }
    let config = Config::parse("[spool]\ndevice_id = \"cart-42\"\n", "c.toml").expect("valid");
    assert_eq!(config.spool.device_id.as_deref(), Some("cart-42"));
}

#[test]
fn overlays_override_key_by_key_and_merge_cameras_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = "[keep]\ncapacity = 16\nwindow_secs = 5.0\n\n[[camera]]\nname = \"front\"\nseed = 1\n\n[[camera]]\nname = \"back\"\nseed = 2\n";
    let cart = "[keep]\ncapacity = 4\n\n[[camera]]\nname = \"back\"\nseed = 9\n";
    let config = load(dir.path(), &[("base.toml", base), ("cart.toml", cart)])
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    assert_eq!((config.keep.capacity, config.keep.window_secs), (4, 5.0));
    let seeds: Vec<(String, u64)> = config
        .cameras
        .iter()
        .map(|c| match &c.source {
            SourceConfig::Synthetic(s) => (c.name.clone(), s.seed),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seeds, [("front".into(), 1), ("back".into(), 9)]);
}

#[test]
fn every_error_names_the_file_that_set_the_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = "[keep]\ncapacity = 16\n\n[[camera]]\nname = \"front\"\ntype = \"synthetic\"\n";
    let cart = "# cart 42\n[keep]\ncapacity = 0\nwhen_full = \"drop_oldest\"\n\n[[camera]]\nname = \"front\"\ndir = \"/data\"\n";
    insta::assert_snapshot!(errors_in(dir.path(), &[("base.toml", base), ("cart.toml", cart)]), @r#"
    error: cart.toml: line 3, column 1: keep.capacity = 0 is out of range; write a whole number from 1 to 1024
    error: cart.toml: line 4, column 13: unknown value "drop_oldest" for keep.when_full; did you mean "drop_lowest"?
    error: cart.toml: line 8, column 1: camera[0].dir does not apply to type = "synthetic"; remove it, or set type = "replay"
    "#);
    // A value the base file set stays the base file's.
    let bad_base = "[keep]\njpeg_quality = 0\n";
    insta::assert_snapshot!(errors_in(dir.path(), &[("base.toml", bad_base), ("cart.toml", "[keep]\ncapacity = 4\n")]), @"error: base.toml: line 2, column 1: keep.jpeg_quality = 0 is out of range; write a whole number from 1 to 100");
    // A file that cannot be read is named too.
    let missing = Config::load(&[dir.path().join("nope.toml")]).expect_err("missing");
    assert!(
        missing
            .to_string()
            .contains("nope.toml: cannot read the file"),
        "{missing}"
    );
    // A file that is not UTF-8 is located at its first bad byte.
    let latin1 = dir.path().join("latin1.toml");
    std::fs::write(&latin1, b"[keep]\n# caf\xe9\n").expect("write");
    let error = Config::load(&[latin1]).expect_err("not UTF-8").to_string();
    assert!(
        error.contains("latin1.toml: line 2, column 6: the file is not UTF-8 text (byte 0xE9)"),
        "{error}"
    );
}

#[test]
fn a_reload_applies_live_keys_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = load(
        dir.path(),
        &[(
            "c.toml",
            "[keep]\ncapacity = 16\n[model]\nintra_threads = 2\n",
        )],
    )
    .expect("valid");
    let after = load(
        dir.path(),
        &[(
            "c.toml",
            "[keep]\ncapacity = 32\nwhen_full = \"drop_newest\"\n[model]\nintra_threads = 4\nconfidence_threshold = 0.3\n[signals.blur]\nthreshold = 40.0\n",
        )],
    )
    .expect("valid");
    let reload::Reload { running, changes } = reload::apply(&before, after);
    let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
    insta::assert_snapshot!(lines.join("\n"), @r#"
    keep.capacity: 16 -> 32
    keep.when_full: "drop_lowest" -> "drop_newest"
    model.confidence_threshold: 0.25 -> 0.3
    model.intra_threads: 2 -> 4 (needs a restart; the running value is kept)
    signals.blur.threshold: 30.0 -> 40.0
    "#);
    let c = &running.config;
    assert_eq!(c.keep.capacity, 32);
    assert_eq!(c.keep.when_full, WhenFull::DropNewest);
    assert_eq!(c.model.confidence_threshold, 0.3);
    assert_eq!(c.model.intra_threads, 2, "needs a restart: kept");
    // The next reload of the same files reports the restart-only change again, and
    // nothing else.
    let again = running.reread().expect("valid");
    let changes = reload::apply(&running, again).changes;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].key, "model.intra_threads");
}

#[test]
fn a_reload_that_writes_out_defaults_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = load(
        dir.path(),
        &[(
            "c.toml",
            "[[camera]]\nwidth = 640\nheight = 360\n[upload]\nurl = \"s3://b-1/x\"\n",
        )],
    )
    .expect("valid");
    let after = load(
        dir.path(),
        &[(
            "c.toml",
            "[[camera]]\nname = \"cam0\"\nwidth = 640\nheight = 360\nseed = 1\nframes_per_scene = 8\n\
             [upload]\nurl = \"s3://b-1/x\"\npath_style = false\n[keep]\ncapacity = 16\n",
        )],
    )
    .expect("valid");
    let changes = reload::apply(&before, after).changes;
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn live_changes_touch_only_live_keys() {
    // One change per table, each of a live and a restart key: the config a reload
    // produces carries exactly the live ones.
    let base = Config::default();
    let changed = Config::parse(
        "[model]\niou_threshold = 0.6\nintra_threads = 3\n[spool]\nmax_bytes = 2000000\ndir = \"/elsewhere\"\ndevice_id = \"cart-1\"\n[pipeline]\nqueue_depth = 5\n[policy]\nmin_value = 0.9\n[keep]\njpeg_quality = 50\n",
        "c.toml",
    )
    .expect("valid");
    let applied = base.with_live_changes(&changed);
    assert_eq!(applied.model.iou_threshold, 0.6);
    assert_eq!(applied.model.intra_threads, base.model.intra_threads);
    assert_eq!(applied.spool.max_bytes, 2_000_000);
    assert_eq!(applied.spool.dir, base.spool.dir);
    assert_eq!(applied.spool.device_id, None);
    assert_eq!(applied.pipeline, base.pipeline);
    assert_eq!(applied.policy.min_value, 0.9);
    assert_eq!(applied.keep.jpeg_quality, 50);
    for key in [
        "model.iou_threshold",
        "spool.max_bytes",
        "policy.min_value",
        "keep.jpeg_quality",
        "signals.margin.weight",
    ] {
        assert!(reload::is_live(key), "{key}");
    }
    for key in [
        "model.intra_threads",
        "spool.dir",
        "spool.device_id",
        "pipeline.queue_depth",
        "camera[0].fps",
    ] {
        assert!(!reload::is_live(key), "{key}");
    }
}

#[test]
fn upload_destinations_are_checked_and_secrets_refused_without_echoing_them() {
    let config = Config::parse(
        "[upload]\nurl = \"s3://fleet-frames/raw/\"\nendpoint_url = \"http://127.0.0.1:9000\"\nwindows = [\"22:00-06:00\"]\n",
        "c.toml",
    )
    .expect("valid");
    assert_eq!(
        config.upload.target,
        Some(crate::store::uploader::Target::S3 {
            bucket: "fleet-frames".into(),
            prefix: "raw".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: "us-east-1".into(),
            path_style: true,
            credentials_file: None,
            profile: "default".into(),
        })
    );
    let text = "[upload]\nurl = \"s3://fleet-frames\"\naws_secret_access_key = \"wJalrXUtnFEMI\"\n";
    let message = errors(text);
    assert!(!message.contains("wJalrXUtnFEMI"), "{message}");
    insta::assert_snapshot!(message, @r#"error: config.toml: line 3, column 1: unknown key "aws_secret_access_key" in [upload]; credentials never go in the config: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the daemon's environment (systemd: an EnvironmentFile= in a drop-in), or put them in an AWS credentials file and name it with upload.credentials_file"#);
    let text = "[upload]\nurl = \"s3://fleet-frames\"\nendpoint_url = \"https://AKID:wJalrXUtnFEMI@s3.example.com\"\n";
    let message = errors(text);
    assert!(!message.contains("wJalrXUtnFEMI"), "{message}");
    assert!(
        message.contains("line 3, column 1: upload.endpoint_url holds credentials"),
        "{message}"
    );
    // Without a scheme the user:password@ is still a secret.
    for text in [
        "[upload]\nurl = \"s3://b-1\"\nendpoint_url = \"minio:wJalrXUtnFEMI@127.0.0.1:9000\"\n",
        "[upload]\nurl = \"AKID:wJalrXUtnFEMI@my-bucket/raw\"\n",
    ] {
        let message = errors(text);
        assert!(!message.contains("wJalrXUtnFEMI"), "{message}");
        assert!(message.contains("holds credentials"), "{message}");
    }
    // A prefix a store would resolve, and a window of no minutes.
    for (text, says) in [
        (
            "url = \"s3://odd/../esc\"",
            "has a '.' or '..' in its prefix",
        ),
        (
            "url = \"s3://odd/a/./b\"",
            "has a '.' or '..' in its prefix",
        ),
        (
            "url = \"file:///mnt/share/../x\"",
            "has a '.' or '..' in its prefix",
        ),
        ("windows = [\"06:00-06:00\"]", "not a time window"),
        ("windows = [\"24:00-00:00\"]", "not a time window"),
    ] {
        let message = errors(&format!("[upload]\n{text}\n"));
        assert!(message.contains(says), "{text}: {message}");
    }
    let text = "[upload]\nurl = \"ftp://host/x\"\n\n[upload]\n";
    assert!(
        errors(text).contains("line 4"),
        "a duplicate table is located"
    );
    let text = "[upload]\nurl = \"gs://b/x\"\nwindows = [\"22-6\"]\nretry_initial_ms = 500\nretry_max_ms = 100\n";
    insta::assert_snapshot!(errors(text), @r#"
    error: config.toml: line 2, column 1: upload.url = "gs://b/x" is neither s3:// nor file://; write url = "s3://bucket/prefix" for object storage or "file:///mnt/share" for a mounted directory
    error: config.toml: line 3, column 1: upload.windows holds "22-6", which is not a time window; write windows = ["22:00-06:00"] (local time, HH:MM-HH:MM, start and end apart; it may wrap midnight)
    error: config.toml: line 5, column 1: upload.retry_max_ms (100) is less than retry_initial_ms (500); make retry_max_ms at least retry_initial_ms
    "#);
}

#[test]
fn a_table_written_as_a_list_or_a_value_says_what_to_write() {
    insta::assert_snapshot!(errors("[[keep]]\ncapacity = 4\n"), @"error: config.toml: line 1, column 3: [keep] is one table, not a list; write [keep], not [[keep]]");
    insta::assert_snapshot!(errors("[[signals.blur]]\nweight = 1\n"), @"error: config.toml: line 1, column 11: [signals.blur] is one table, not a list; write [signals.blur], not [[signals.blur]]");
    insta::assert_snapshot!(errors("keep = 5\n"), @"error: config.toml: line 1, column 1: keep is a table, found a whole number; write [keep] on a line of its own with its keys below it; `framesift config default` shows them");
    insta::assert_snapshot!(errors("[trigger]\nname = \"x\"\nsignal = \"blur\"\n"), @"error: config.toml: line 1, column 2: trigger is a list of tables, found a table; write [[trigger]] (two brackets) above each one's keys");
    insta::assert_snapshot!(errors("camera = [1]\n"), @"error: config.toml: line 1, column 11: camera[0] must be a [[camera]] table, found integer `1`");
}

#[test]
fn every_problem_is_told_once_even_in_lists() {
    // A misspelled list of tables is one unknown key, and the problems after it are
    // still found.
    insta::assert_snapshot!(errors("[[cameras]]\nname = \"x\"\n[modle]\n"), @r#"
    error: config.toml: line 1, column 3: unknown key "cameras" at the top level; did you mean "camera"?
    error: config.toml: line 3, column 2: unknown key "modle" at the top level; did you mean "model"?
    "#);
    // Each bad value of a list of values, named by its place as written.
    insta::assert_snapshot!(errors("[signals.class]\nclasses = [1, \"apple\", 2]\n"), @r"
    error: config.toml: line 2, column 12: signals.class.classes[0] must be a string in quotes, found integer `1`
    error: config.toml: line 2, column 24: signals.class.classes[2] must be a string in quotes, found integer `2`
    ");
    insta::assert_snapshot!(errors("[upload]\nwindows = \"22:00-06:00\"\n"), @r#"error: config.toml: line 2, column 11: upload.windows must be a list, found string "22:00-06:00"; write windows = ["22:00-06:00"]"#);
}

#[test]
fn whole_numbers_out_of_range_say_so() {
    insta::assert_snapshot!(errors("[[camera]]\nseed = -1\n"), @"error: config.toml: line 2, column 8: camera[0].seed = -1 is out of range: it must be 0 or more; write e.g. seed = 1");
    insta::assert_snapshot!(errors("[keep]\ncapacity = 99999999999999999999\n"), @"error: config.toml: line 2, column 12: keep.capacity = 99999999999999999999 is out of range: too large; write e.g. capacity = 16");
}

#[test]
fn problems_come_in_the_order_of_the_files_then_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let message = errors_in(
        dir.path(),
        &[
            ("z.toml", "[keep]\ncapacity = 0\n[modle]\n"),
            ("a.toml", "[polcy]\n[keep]\njpeg_quality = 0\n"),
        ],
    );
    let files: Vec<&str> = message
        .lines()
        .map(|l| l.split(": ").nth(1).unwrap_or(""))
        .collect();
    let lines: Vec<&str> = message
        .lines()
        .map(|l| &l[..l.find(", column").unwrap_or(0)])
        .collect();
    assert_eq!(files, ["z.toml", "z.toml", "a.toml", "a.toml"], "{message}");
    assert!(
        lines[0].ends_with("line 2") && lines[1].ends_with("line 3"),
        "{message}"
    );
}

#[test]
fn exposure_bounds_in_the_wrong_order_point_at_the_one_written() {
    insta::assert_snapshot!(errors("[signals.exposure]\ndark_luma = 220\n"), @"error: config.toml: line 2, column 1: signals.exposure.bright_luma (200) is not above dark_luma (220); write dark_luma below bright_luma, e.g. dark_luma = 40 and bright_luma = 200");
    insta::assert_snapshot!(errors("[signals.exposure]\nbright_luma = 30\n"), @"error: config.toml: line 2, column 1: signals.exposure.bright_luma (30) is not above dark_luma (40); write dark_luma below bright_luma, e.g. dark_luma = 15 and bright_luma = 200");
}

#[test]
fn a_faint_floor_must_be_below_the_threshold_while_faint_is_used() {
    insta::assert_snapshot!(errors("[model]\nconfidence_threshold = 0.03\n"), @r#"error: config.toml: line 2, column 1: signals.faint.floor = 0.04 is not below [model] confidence_threshold = 0.03; faint counts the candidates between the two: lower the floor, e.g. [signals.faint] floor = 0.005"#);
    insta::assert_snapshot!(errors("[signals.faint]\nfloor = 0.3\n"), @r#"error: config.toml: line 2, column 1: signals.faint.floor = 0.3 is not below [model] confidence_threshold = 0.25; faint counts the candidates between the two: lower the floor, e.g. [signals.faint] floor = 0.04"#);
    assert_eq!(
        errors("[model]\nconfidence_threshold = 0.03\n[signals.faint]\nweight = 0.0\n"),
        "ok",
        "off, its floor does not matter"
    );
    assert_eq!(
        errors("[model]\nconfidence_threshold = 0.03\n[signals.faint]\nfloor = 0.005\n"),
        "ok"
    );
}

#[test]
fn a_wrong_value_is_reported_once_not_again_through_the_checks_that_compare_it() {
    insta::assert_snapshot!(errors("[drift]\nwindow_frames = 5\n"), @r#"error: config.toml: line 2, column 1: drift.window_frames = 5 is out of range; write a whole number from 20 to 100000"#);
    insta::assert_snapshot!(errors("[pipeline]\nmax_frame_pixels = 100\n"), @r#"error: config.toml: line 2, column 1: pipeline.max_frame_pixels = 100 is out of range; write a whole number from 4096 to 67108864"#);
    insta::assert_snapshot!(errors("[[camera]]\ntype = \"v4l2\"\nfps = -1\n"), @r#"error: config.toml: line 3, column 1: camera[0].fps = -1 is out of range; write a number from 1 to 1000, a rate the camera runs at, e.g. 30"#);
    insta::assert_snapshot!(errors("[[trigger]]\nname = 5\nsignal = true\nthreshold = 0.5\nweight = 1.0\n"), @r#"
    error: config.toml: line 2, column 8: trigger[0].name must be a string in quotes, found integer `5`; write e.g. name = "dark_aisle"
    error: config.toml: line 3, column 10: trigger[0].signal must be a string in quotes, found boolean `true`; write e.g. signal = "exposure"
    "#);
}

#[test]
fn a_shortened_key_suggests_the_key_it_shortens() {
    insta::assert_snapshot!(errors("[[camera]]\ndev = \"/dev/video0\"\ntype = \"v4l2\"\n"), @r#"error: config.toml: line 2, column 1: unknown key "dev" in camera[0]; did you mean "device"?"#);
}
