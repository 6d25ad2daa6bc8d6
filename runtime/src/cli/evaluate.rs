//! `framesift evaluate`.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::load_model;
use crate::evaluate::{EvaluateOptions, policies::PolicyReport};

#[derive(Parser)]
pub(super) struct EvaluateArgs {
    /// Config file(s) with the policy to evaluate; repeat to overlay, as `run` does.
    #[arg(long, short)]
    config: Vec<PathBuf>,
    /// Model file (.onnx), overriding [model] path.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Synthetic store frames to run.
    #[arg(long, default_value_t = 3000)]
    frames: u64,
    /// The share of frames each policy may keep.
    #[arg(long, default_value_t = 0.02)]
    budget: f64,
    /// Seed of the synthetic store stream (and of the random baseline's draws).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Consecutive frames per scene (default: the config's first synthetic camera, else 8).
    #[arg(long)]
    scene_frames: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write every frame's errors, signals and statistics as CSV here.
    #[arg(long, value_name = "FILE")]
    records: Option<PathBuf>,
    /// Tune the signal weights for this model instead of reporting: score
    /// --tune-streams streams (seeds --seed, --seed + 1, …), search the weights under which
    /// the configured policy keeps the most errors on them, check those on the next
    /// stream, and write them here as a config overlay.
    #[arg(long, value_name = "FILE")]
    tune: Option<PathBuf>,
    /// Streams to tune on (each --frames long).
    #[arg(long, default_value_t = 3, requires = "tune")]
    tune_streams: u64,
    /// What the tuned weights maximise: `both` (the mean of lift_misses and
    /// lift_errors), `misses` or `errors`.
    #[arg(long, value_enum, default_value_t = crate::evaluate::tune::Objective::Both, requires = "tune")]
    tune_for: crate::evaluate::tune::Objective,
}

/// The longest stream `evaluate` scores (its records take about 300 MB).
const MAX_FRAMES: u64 = 1_000_000;

pub(super) fn evaluate(args: EvaluateArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.budget > 0.0 && args.budget <= 1.0,
        "--budget must be above 0 and at most 1, e.g. 0.02"
    );
    // Every frame's record is held for the policies and the oracle (a few hundred bytes).
    anyhow::ensure!(
        (1..=MAX_FRAMES).contains(&args.frames),
        "--frames must be from 1 to {MAX_FRAMES}"
    );
    if let Some(out) = &args.tune {
        anyhow::ensure!(args.tune_streams >= 1, "--tune-streams must be at least 1");
        // The search takes minutes: its result must have somewhere to go.
        super::check_output_file("--tune", out)?;
        anyhow::ensure!(
            args.records.is_none() && !args.json,
            "--tune writes its own report; run evaluate again with -c {} for --json or --records",
            out.display()
        );
    }
    let mut config = match super::load_files(&args.config) {
        Ok(loaded) => loaded.config,
        Err(code) => return Ok(code),
    };
    if let Some(model) = &args.model {
        config.model.path = Some(model.clone());
    }
    // The configured policy keeps the budget.
    config.keep.target_rate = args.budget;
    let mut camera = crate::capture::first_synthetic(&config.cameras);
    if let Some(n) = args.scene_frames {
        anyhow::ensure!(n >= 1, "--scene-frames must be at least 1");
        camera.frames_per_scene = n;
    }
    let fps = if camera.fps > 0.0 {
        f64::from(camera.fps)
    } else {
        30.0
    };
    let opts = EvaluateOptions {
        frames: args.frames,
        budget: args.budget,
        seed: args.seed,
        camera,
        fps,
    };
    let model = std::sync::Arc::new(std::sync::Mutex::new(load_model(&config)?));
    if let Some(out) = &args.tune {
        return tune(&args, &config, &model, &opts, out);
    }
    let mut csv = match &args.records {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
        )),
        None => None,
    };
    let bar = progress_bar(args.frames);
    bar.set_message("frames");
    let stream = crate::evaluate::score_stream(
        &config,
        &model,
        &opts,
        csv.as_mut().map(|w| w as &mut dyn std::io::Write),
        |done| bar.set_position(done),
    );
    bar.finish_and_clear();
    let stream = stream?;
    let records = &stream.records;
    if let Some(mut w) = csv {
        use std::io::Write as _;
        w.flush()?;
    }
    let reports = crate::evaluate::policies::compare(&config, records, args.budget, args.seed);
    let costs: serde_json::Map<String, serde_json::Value> = crate::policy::signals::NAMES
        .iter()
        .zip(stream.signal_us)
        .map(|(name, us)| (name.to_string(), serde_json::json!(us)))
        .collect();
    if args.json {
        let report = serde_json::json!({
            "frames": records.len(),
            "budget": args.budget,
            "seed": args.seed,
            "frames_per_scene": opts.camera.frames_per_scene,
            "signal_cost_us": costs,
            "policies": reports,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(records.len(), &opts, &reports);
        let list: Vec<String> = costs
            .iter()
            .map(|(k, v)| format!("{k} {:.2}", v.as_f64().unwrap_or(0.0)))
            .collect();
        println!(
            "signal cost on the scoring thread, µs a frame: {}",
            list.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--tune`: score the tuning streams and the held-out one, search, report, write.
fn tune(
    args: &EvaluateArgs,
    config: &crate::config::Config,
    model: &crate::infer::SharedModel,
    opts: &EvaluateOptions,
    out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use crate::evaluate::tune;
    let mut streams = Vec::new();
    for seed in args.seed..=args.seed + args.tune_streams {
        let bar = progress_bar(args.frames);
        bar.set_message(format!("frames of stream {seed}"));
        let stream = crate::evaluate::score_stream(
            config,
            model,
            &EvaluateOptions {
                seed,
                ..opts.clone()
            },
            None,
            |done| bar.set_position(done),
        );
        bar.finish_and_clear();
        streams.push((seed, stream?.records));
    }
    let held_out = streams.split_off(args.tune_streams as usize);
    let bar = progress_bar(0);
    bar.set_message("weight trials");
    let tuned = tune::tune(config, &streams, args.tune_for, |step, steps| {
        bar.set_length(steps as u64);
        bar.set_position(step as u64);
    });
    bar.finish_and_clear();
    let check_before = tune::lifts(config, &held_out, &tuned.before);
    let check_after = tune::lifts(config, &held_out, &tuned.after);
    let last = args.seed + args.tune_streams - 1;
    let model_name = config
        .model
        .path
        .as_ref()
        .map_or("the embedded model".to_string(), |p| {
            p.display().to_string()
        });
    let lifts =
        |l: tune::Lifts| format!("lift_misses {:.2}, lift_errors {:.2}", l.misses, l.errors);
    let header = vec![
        format!(
            "Signal weights from `framesift evaluate --tune --tune-for {}` for {model_name}: synthetic store streams {}–{last}, {} frames each, budget {}.",
            args.tune_for.name(),
            args.seed,
            args.frames,
            percent(args.budget)
        ),
        format!(
            "Tuning streams: {} with the configured weights, {} with these.",
            lifts(tuned.lifts_before),
            lifts(tuned.lifts_after)
        ),
        format!(
            "Held-out stream {}: {} with the configured weights, {} with these.",
            last + 1,
            lifts(check_before),
            lifts(check_after)
        ),
        "Use it as an overlay: framesift run -c base.toml -c this.toml".into(),
    ];
    let text = tune::overlay(&tuned, &header);
    // The result is printed before the file is written: a failed write loses nothing.
    print_weights(&tuned);
    for line in &header[1..3] {
        println!("{line}");
    }
    if check_after.misses < check_before.misses && check_after.errors < check_before.errors {
        println!(
            "warning: on the held-out stream these weights find fewer misses and errors than the configured ones: tune on more streams (--tune-streams) or frames before running them"
        );
    }
    std::fs::write(out, &text)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Each signal's configured and tuned weight.
pub(super) fn print_weights(tuned: &crate::evaluate::tune::Tuned) {
    println!("{:<12} {:>10} {:>8}", "signal", "configured", "tuned");
    for (i, name) in crate::policy::signals::NAMES.iter().enumerate() {
        println!("{name:<12} {:>10} {:>8}", tuned.before[i], tuned.after[i]);
    }
}

fn print_table(frames: usize, opts: &EvaluateOptions, reports: &[PolicyReport]) {
    println!(
        "{frames} synthetic store frames (seed {}, {} per scene), budget {} — errors at IoU 0.5 against ground truth",
        opts.seed,
        opts.camera.frames_per_scene,
        percent(opts.budget)
    );
    println!(
        "{:<20} {:>6} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6}",
        "policy",
        "kept",
        "miss/kp",
        "fp/kp",
        "err/kp",
        "lift_m",
        "lift_fp",
        "lift_e",
        "miss%",
        "scenes",
        "dups"
    );
    for r in reports {
        println!(
            "{:<20} {:>6.1} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>7.2} {:>7.2} {:>6.0}% {:>6.0}% {:>6.1}",
            r.name,
            r.kept,
            r.misses_per_kept,
            r.false_positives_per_kept,
            r.errors_per_kept,
            r.lift_misses,
            r.lift_false_positives,
            r.lift_errors,
            100.0 * r.miss_precision,
            100.0 * r.distinct_share,
            r.near_duplicates
        );
    }
    if let Some(ours) = reports.iter().find(|r| r.name == "framesift") {
        let missing = |m: &std::collections::BTreeMap<&str, f64>| {
            let absent: Vec<&str> = m
                .iter()
                .filter(|(_, v)| **v == 0.0)
                .map(|(k, _)| *k)
                .collect();
            if absent.is_empty() {
                "all present".to_string()
            } else {
                format!("none of {}", absent.join(", "))
            }
        };
        let list = |m: &std::collections::BTreeMap<&str, f64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "framesift kept {:.0} control frames; perturbations: {} ({})",
            ours.control,
            list(&ours.coverage.perturbations),
            missing(&ours.coverage.perturbations)
        );
        println!(
            "  products: {} ({})",
            list(&ours.coverage.classes),
            missing(&ours.coverage.classes)
        );
    }
    println!(
        "lift = per-kept figure / random's; miss% = kept frames with a miss; scenes = distinct scenes / kept"
    );
}

/// A share as a percentage with one decimal, or two significant digits below 0.1 %
/// (`2.0 %`, `0.5 %`, `0.025 %`), so a small budget never reads as 0.
fn percent(share: f64) -> String {
    let p = 100.0 * share;
    if p >= 0.1 || p == 0.0 {
        format!("{p:.1} %")
    } else {
        let decimals = (-p.log10().floor()) as usize + 1;
        format!("{p:.decimals$} %")
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template("evaluate {bar:30} {pos}/{len} {msg} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_small_budget_never_prints_as_zero() {
        assert_eq!(super::percent(0.02), "2.0 %");
        assert_eq!(super::percent(0.005), "0.5 %");
        assert_eq!(super::percent(0.00025), "0.025 %");
        assert_eq!(super::percent(0.0001), "0.010 %");
        assert_eq!(super::percent(1.0), "100.0 %");
    }
}
