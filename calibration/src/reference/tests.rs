use proptest::prelude::*;

use super::*;

fn sample() -> Reference {
    Reference {
        format: FORMAT,
        model: ModelStamp {
            id: "detector-v3".to_string(),
            sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_string(),
        },
        source: "synthetic store, 3000 frames, seed 1".to_string(),
        frames: 3000,
        window_frames: 300,
        bands: Bands {
            psi_moderate: 0.1,
            psi_significant: 0.25,
            js_moderate: 0.15,
            js_significant: 0.225,
        },
        reference_noise: Some(0.1),
        thresholds: BTreeMap::from([("blur".to_string(), 120.5), ("min_value".to_string(), 0.3)]),
        stats: vec![
            StatReference {
                name: "luma".to_string(),
                bins: Bins {
                    lo: 0.0,
                    hi: 255.0,
                    count: 4,
                    scale: Scale::Linear,
                },
                counts: vec![100, 1500, 1300, 100],
                noise: None,
            },
            StatReference {
                name: "blur".to_string(),
                bins: Bins {
                    lo: 0.0,
                    hi: 10_000.0,
                    count: 20,
                    scale: Scale::Log10p1,
                },
                counts: (0..20).map(|i| i * 10).collect(),
                noise: None,
            },
        ],
        novelty: crate::NoveltyReference {
            views: vec!["0a".repeat(192), "ff".repeat(192)],
        },
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match Reference::parse(text) {
        Err(ReferenceError::Invalid {
            path: None,
            problems,
        }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

fn problem(line: usize, column: usize, message: &str) -> Problem {
    Problem {
        line,
        column,
        message: message.to_string(),
    }
}

#[test]
fn writes_readable_toml() {
    let text = sample().to_toml();
    let want =
        r#"# Reference statistics for framesift drift scoring, written by `framesift calibrate`.
format = 2
source = "synthetic store, 3000 frames, seed 1"
frames = 3000
window_frames = 300
reference_noise = 0.1

[model]
id = "detector-v3"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

[bands]
psi_moderate = 0.1
psi_significant = 0.25
js_moderate = 0.15
js_significant = 0.225

[thresholds]
blur = 120.5
min_value = 0.3

[[stats]]
name = "luma"
bins = { lo = 0.0, hi = 255.0, count = 4, scale = "linear" }
counts = [100, 1500, 1300, 100]

[[stats]]
name = "blur"
bins = { lo = 0.0, hi = 10000.0, count = 20, scale = "log10p1" }
counts = [
    0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150,
    160, 170, 180, 190,
]

# Sampled views (16x12 luma thumbnails, hex) for the novelty signal.
[novelty]
views = [
    "A",
    "B",
]
"#
        .replace("A", &"0a".repeat(192))
        .replace("B", &"ff".repeat(192));
    assert_eq!(text, want);
}

#[test]
fn round_trips() {
    let mut r = sample();
    assert_eq!(Reference::parse(&r.to_toml()).expect("parse"), r);

    // Awkward strings and keys, no noise, no thresholds.
    r.source = "dir \"a\\b\"\nline two\ttab \u{1} ünï".to_string();
    r.reference_noise = None;
    r.thresholds = BTreeMap::from([("with space".to_string(), -1.5e-9)]);
    r.stats[0].name = "x.y".to_string();
    assert_eq!(Reference::parse(&r.to_toml()).expect("parse"), r);
    r.thresholds.clear();
    assert_eq!(Reference::parse(&r.to_toml()).expect("parse"), r);
}

#[test]
fn finds_a_stat_by_name() {
    let r = sample();
    assert_eq!(r.stat("blur").map(|s| s.bins.count), Some(20));
    assert_eq!(r.stat("luma").map(|s| s.counts[1]), Some(1500));
    assert!(r.stat("missing").is_none());
}

#[test]
fn syntax_error_has_line_and_column() {
    let text = sample()
        .to_toml()
        .replace("frames = 3000", "frames = = 3000");
    // Line 4 is `frames = = 3000`; the stray `=` is the 10th character.
    assert_eq!(
        problems(&text),
        [problem(4, 10, "extra `=`, expected nothing")]
    );
}

#[test]
fn type_error_has_line_and_column() {
    let text = sample()
        .to_toml()
        .replace("counts = [100, 1500,", "counts = [100, \"x\",");
    let found = problems(&text);
    assert_eq!(
        found,
        [problem(25, 16, "invalid type: string \"x\", expected u64")]
    );
    let error = Reference::parse(&text).expect_err("bad type");
    assert_eq!(
        error.to_string(),
        "25:16: invalid type: string \"x\", expected u64"
    );
}

#[test]
fn unknown_key_is_an_error_at_its_line() {
    let text = sample()
        .to_toml()
        .replace("name = \"blur\"\n", "name = \"blur\"\ncolour = \"red\"\n");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].line, found[0].column), (29, 1));
    assert!(
        found[0].message.starts_with("unknown field `colour`"),
        "{}",
        found[0].message
    );

    let inline = sample()
        .to_toml()
        .replace("scale = \"linear\"", "scal = \"linear\"");
    let found = problems(&inline);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].line, found[0].column), (24, 43));
    assert!(found[0].message.starts_with("unknown field `scal`"));
}

#[test]
fn counts_not_matching_the_bins_are_named() {
    let text = sample().to_toml().replace(
        "counts = [100, 1500, 1300, 100]",
        "counts = [100, 1500, 1300]",
    );
    assert_eq!(
        problems(&text),
        [problem(25, 10, "stat \"luma\" has 3 counts for 4 bins")]
    );
}

#[test]
fn every_semantic_problem_is_reported() {
    let mut r = sample();
    r.stats[1].name = "luma".to_string();
    r.stats[1].bins.hi = -3.0;
    r.stats[1].counts.pop();
    r.bands.js_significant = 0.05;
    r.window_frames = 0;
    r.stats[0].noise = Some(f64::INFINITY);
    let text = r.to_toml();
    let found = problems(&text);
    let messages: Vec<&str> = found.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "window_frames = 0 is not a window (1 to 100000 frames)",
            "bands: js_significant = 0.05 is below js_moderate = 0.15",
            "stat \"luma\": noise = inf is not a distance (0 to 1)",
            "stat \"luma\" appears twice, as [[stats]] 1 and 2",
            "stat \"luma\": bin range [0, -3] is empty: hi must be above lo",
            "stat \"luma\" has 19 counts for 20 bins",
        ]
    );
    let lines: Vec<usize> = found.iter().map(|p| p.line).collect();
    // window_frames, the [bands] header, the first stat's noise, then the second stat's
    // name, bins, counts.
    assert_eq!(lines, [5, 12, 25, 29, 30, 31]);
}

#[test]
fn no_stats_is_an_error() {
    let mut r = sample();
    r.stats.clear();
    let text = r
        .to_toml()
        .replacen("\n[model]", "stats = []\n\n[model]", 1);
    assert_eq!(problems(&text), [problem(7, 9, "no [[stats]]")]);
}

#[test]
fn other_formats_are_refused_naming_both() {
    // A later format may add keys; the version is what matters.
    let text = sample()
        .to_toml()
        .replace("format = 2", "format = 3\nnew_key = true");
    assert_eq!(
        problems(&text),
        [problem(
            2,
            10,
            "format = 3 is not supported: this build reads format = 1 to 2"
        )]
    );
}

#[test]
fn a_format_1_reference_still_loads_and_shares_its_bands() {
    let text = sample().to_toml().replace("format = 2", "format = 1");
    let old = Reference::parse(&text).expect("format 1 loads");
    assert_eq!(old.format, 1);
    assert!(!old.per_statistic_bands());
    assert!(sample().per_statistic_bands());
}

#[test]
fn missing_field_is_reported() {
    let text = sample().to_toml().replace("frames = 3000\n", "");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].message, "missing field `frames`");
}

#[test]
fn missing_file_names_the_path() {
    let path = Path::new("/nonexistent/framesift/calibration.toml");
    let error = Reference::load(path).expect_err("no such file");
    assert!(matches!(&error, ReferenceError::Read { path: p, .. } if p == path));
    let message = error.to_string();
    assert!(
        message.starts_with("/nonexistent/framesift/calibration.toml: "),
        "{message}"
    );
}

#[test]
fn load_reads_the_fixture_and_names_the_path_on_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let good = dir.join("calibration.toml");
    let r = Reference::load(&good).expect("the fixture loads");
    assert_eq!(r.model.id, "detector-v3");
    assert_eq!(r.stat("blur").map(|s| s.bins.scale), Some(Scale::Log10p1));
    // The fixture is what the writer produces, so its format stays current.
    let text = std::fs::read_to_string(&good).expect("read the fixture");
    assert_eq!(r.to_toml(), text);

    let bad = dir.join("bad-calibration.toml");
    let error = Reference::load(&bad).expect_err("the bad fixture fails");
    assert_eq!(
        error.to_string(),
        format!(
            "{}:4:10: invalid type: string \"x\", expected u64",
            bad.display()
        )
    );
}

#[test]
fn line_column_counts_characters() {
    let text = "ab\nüñx\n";
    assert_eq!(line_column(text, 0), (1, 1));
    assert_eq!(line_column(text, 3), (2, 1));
    // 'x' is after two 2-byte characters.
    assert_eq!(line_column(text, 7), (2, 3));
    // Inside a character, and past the end.
    assert_eq!(line_column(text, 4), (2, 1));
    assert_eq!(line_column(text, 100), (3, 1));
}

fn finite() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO
}

fn stat() -> impl Strategy<Value = StatReference> {
    (
        ".*",
        -0.9_f64..1e6,
        1e-3_f64..1e6,
        1_usize..40,
        any::<bool>(),
    )
        .prop_flat_map(|(name, lo, width, count, log)| {
            (
                prop::collection::vec(0_u64..(i64::MAX as u64), count),
                prop::option::of(0.0_f64..1.0),
            )
                .prop_map(move |(counts, noise)| StatReference {
                    name: name.clone(),
                    bins: Bins {
                        lo,
                        hi: lo + width,
                        count,
                        scale: if log { Scale::Log10p1 } else { Scale::Linear },
                    },
                    counts,
                    noise,
                })
        })
}

prop_compose! {
    fn reference()(
        id in ".*",
        sha256 in "[0-9a-f]{64}",
        source in ".*",
        frames in 0_u64..(i64::MAX as u64),
        window_frames in 1_usize..100_000,
        psi in (0.0_f64..10.0, 0.0_f64..10.0),
        js in (0.0_f64..1.0, 0.0_f64..1.0),
        reference_noise in prop::option::of(0.0_f64..1.0),
        thresholds in prop::collection::btree_map(".*", finite(), 0..4),
        stats in prop::collection::vec(stat(), 1..4),
    ) -> Reference {
        let mut stats = stats;
        for (i, s) in stats.iter_mut().enumerate() {
            s.name = format!("{i}{}", s.name);
        }
        Reference {
            format: FORMAT,
            model: ModelStamp { id, sha256 },
            source,
            frames,
            window_frames,
            bands: Bands {
                psi_moderate: psi.0.min(psi.1),
                psi_significant: psi.0.max(psi.1),
                js_moderate: js.0.min(js.1),
                js_significant: js.0.max(js.1),
            },
            reference_noise,
            thresholds,
            stats,
            novelty: Default::default(),
        }
    }
}

proptest! {
    #[test]
    fn any_valid_reference_round_trips(r in reference()) {
        let text = r.to_toml();
        let back = Reference::parse(&text);
        prop_assert!(back.is_ok(), "{:?}\n{}", back, text);
        prop_assert_eq!(back.expect("checked"), r);
    }
}
