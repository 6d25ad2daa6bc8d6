//! `framesift lift`.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

use crate::{
    config::NamedFiles,
    evaluate::{
        field::{self, FEW_CONTROL_FRAMES, LabelSource, Lift, MIN_TUNING_CONTROL, ModelReport},
        tune::{Lifts, Objective},
    },
};

#[derive(Parser)]
pub(super) struct LiftArgs {
    /// Where the kept frames came back to: their JSON sidecars, searched recursively (a
    /// copy of the bucket, a spool directory).
    dir: PathBuf,
    /// The labeller's YOLO label files, one `<entry id>.txt` per frame, searched
    /// recursively (default: DIR).
    #[arg(long, value_name = "DIR")]
    labels: Option<PathBuf>,
    /// The label class names, one per line in label-id order (default: classes.txt in
    /// the labels directory, else in DIR).
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    /// Label synthetic frames with the ground truth their sidecars carry instead of
    /// label files: the measurement end to end, with a perfect labeller.
    #[arg(long, conflicts_with_all = ["labels", "classes"])]
    truth: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Search the signal weights that rank the labelled control frames with errors
    /// first and write them to FILE as a config overlay (`framesift run -c cart.toml -c
    /// FILE`). Needs 200 or more control frames of one model; it writes nothing when
    /// the weights it finds do not hold on frames they were not searched on.
    #[arg(long, value_name = "FILE", conflicts_with = "json")]
    tune: Option<PathBuf>,
    /// What the tuned weights maximise: `both` (the mean of the misses' and the errors'
    /// lift), `misses` or `errors`.
    #[arg(long, value_enum, default_value_t = Objective::Both, requires = "tune")]
    tune_for: Objective,
    /// The config files the carts ran, as for `run`: the search starts from their signal
    /// weights (default: the built-in ones).
    #[arg(long, short, requires = "tune")]
    config: Vec<PathBuf>,
}

pub(super) fn lift(args: LiftArgs) -> anyhow::Result<ExitCode> {
    let dirs = [
        (
            "DIR",
            Some(&args.dir),
            "the kept frames' sidecars came back to",
        ),
        (
            "--labels",
            args.labels.as_ref(),
            "holding the labeller's .txt files",
        ),
    ];
    for (what, dir, holding) in dirs {
        if let Some(dir) = dir.filter(|d| !d.is_dir()) {
            eprintln!(
                "error: {what} {} is not a directory: give the directory {holding}",
                dir.display()
            );
            return Ok(ExitCode::from(2));
        }
    }
    let source = if args.truth {
        LabelSource::SyntheticTruth
    } else {
        let dir = args.labels.clone().unwrap_or_else(|| args.dir.clone());
        let classes_file = match &args.classes {
            Some(file) => file.clone(),
            None => match [dir.join("classes.txt"), args.dir.join("classes.txt")]
                .into_iter()
                .find(|p| p.is_file())
            {
                Some(file) => file,
                None => {
                    eprintln!(
                        "error: no classes.txt in {}: name the label classes with --classes FILE (one class name per line, in label-id order), or use --truth for synthetic frames",
                        dir.display()
                    );
                    return Ok(ExitCode::from(2));
                }
            },
        };
        match read_classes(&classes_file) {
            Ok(classes) => LabelSource::Files { dir, classes },
            Err(problem) => {
                eprintln!("error: {}: {problem}", classes_file.display());
                return Ok(ExitCode::from(2));
            }
        }
    };
    let returns = match field::read(&args.dir, &source)? {
        Ok(r) => r,
        Err(problems) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!(
                "{}; nothing measured",
                super::plural(problems.len(), "problem")
            );
            return Ok(ExitCode::from(2));
        }
    };
    for (path, why) in &returns.skipped {
        tracing::warn!(file = %path.display(), "skipped: {why}");
    }
    warn_unnamed_classes(&returns, &source);
    if returns.kept == 0 {
        eprintln!(
            "error: no framesift sidecars (*.json) under {}",
            args.dir.display()
        );
        return Ok(ExitCode::from(2));
    }
    if returns.unlabelled.len() == returns.kept {
        print_report(&args, &source, &returns, &[]);
        eprintln!(
            "error: no kept frame has a label{}; nothing measured",
            match &source {
                LabelSource::Files { dir, .. } => format!(
                    " file under {} (each named <entry id>.txt, as the sidecar beside the frame)",
                    dir.display()
                ),
                LabelSource::SyntheticTruth => " (ground truth)".to_string(),
            }
        );
        return Ok(ExitCode::from(2));
    }
    let reports = field::report(&returns);
    if let Some(out) = &args.tune {
        print_report(&args, &source, &returns, &reports);
        println!();
        return tune(&args, &returns, out);
    }
    if args.json {
        let report = serde_json::json!({
            "dir": args.dir,
            "kept": returns.kept,
            "labelled": returns.kept - returns.unlabelled.len(),
            "unlabelled": returns.unlabelled.len(),
            "labels_without_frame": returns.orphan_labels,
            "skipped": returns.skipped.len(),
            "models": reports,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&args, &source, &returns, &reports);
    }
    Ok(ExitCode::SUCCESS)
}

/// A class the model reports that the labels do not name cannot be scored: each of its
/// detections counts as a false positive, and the labelled product as a miss.
fn warn_unnamed_classes(returns: &field::Returns, source: &LabelSource) {
    let list = match source {
        LabelSource::Files { .. } => "the label classes (classes.txt)",
        LabelSource::SyntheticTruth => "the synthetic catalogue",
    };
    for (model, names) in &returns.unnamed_classes {
        let names: Vec<String> = names
            .iter()
            .map(|(n, like)| match like {
                Some(like) => format!("\"{n}\" (the labels write \"{like}\")"),
                None => format!("\"{n}\""),
            })
            .collect();
        tracing::warn!(
            "model {} {} reports {} that {list} do not name: {}; its detections of them count as false positives — name each class as the model does",
            model.id,
            model.version,
            if names.len() == 1 {
                "a class"
            } else {
                "classes"
            },
            names.join(", ")
        );
    }
}

/// `--tune`: search the weights on the control frames of the model with the most of
/// them, check them on held-out halves, report, and write the overlay when they hold.
fn tune(
    args: &LiftArgs,
    returns: &field::Returns,
    out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    // The weights are what matter here, not the drift reference.
    let config = match super::load_files_with(&args.config, NamedFiles::Skip) {
        Ok(loaded) => loaded.config,
        Err(code) => return Ok(code),
    };
    let samples = field::control_samples(returns);
    let Some((model, frames)) = samples.first() else {
        eprintln!(
            "error: no labelled control frames to tune on: they carry \"control\": true in their sidecars ([keep] control_share)"
        );
        return Ok(ExitCode::from(2));
    };
    if frames.len() < MIN_TUNING_CONTROL {
        eprintln!(
            "error: {} of model {} {} came back labelled; tuning needs {MIN_TUNING_CONTROL} or more: pool the returns of more carts and days under DIR, or raise [keep] control_share for a while",
            super::plural(frames.len(), "control frame"),
            model.id,
            model.version
        );
        return Ok(ExitCode::from(2));
    }
    let weights = config.policy.signals.weights();
    let (mismatched, checked) = field::value_mismatches(returns, &weights, config.drift.boost);
    if mismatched > 0 {
        println!(
            "warning: {mismatched} of {checked} frames carry a value the configured signal weights do not give: the carts ran other weights; pass the config they ran with -c, so the search starts from it"
        );
    }
    let sha = model.sha256.get(..8).unwrap_or(&model.sha256);
    let found = field::tune_on_control(weights, frames, args.tune_for);
    let tuned = &found.tuned;
    let lifts = |l: Lifts| format!("misses {:.2}, errors {:.2}", l.misses, l.errors);
    let header = [
        format!(
            "Signal weights from `framesift lift --tune --tune-for {}` for model {} {} (sha256 {sha}…): {} labelled control frames under {}.",
            args.tune_for.name(),
            model.id,
            model.version,
            frames.len(),
            args.dir.display()
        ),
        format!(
            "Lift of the top 5/10/20 % of the control frames by value: {} with the configured weights, {} with these.",
            lifts(tuned.lifts_before),
            lifts(tuned.lifts_after)
        ),
        format!(
            "Held out (each half of the frames ranked by weights searched on the other): {} with the configured weights, {} with such weights.",
            lifts(found.held_out_before),
            lifts(found.held_out_after)
        ),
        "Use it as an overlay: framesift run -c cart.toml -c this.toml".into(),
    ];
    if samples.len() > 1 {
        println!(
            "tuning on model {} {} (sha256 {sha}…), which has the most control frames; the others' errors do not compare",
            model.id, model.version
        );
    }
    super::evaluate::print_weights(tuned);
    for line in &header[1..3] {
        println!("{line}");
    }
    if args.tune_for.of(found.held_out_after) <= args.tune_for.of(found.held_out_before) {
        eprintln!(
            "error: weights searched on half the control frames rank the other half's errors no higher than the configured ones: nothing written; keep the configured weights, or tune again when more frames come back"
        );
        return Ok(ExitCode::FAILURE);
    }
    let text = crate::evaluate::tune::overlay(tuned, &header);
    std::fs::write(out, &text)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// `classes.txt`: one name per line; trailing blank lines are ignored, others are not,
/// nor is a name twice. A byte-order mark (editors on Windows write one) is not part
/// of the first name.
fn read_classes(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let names: Vec<String> = text
        .trim_start_matches('\u{feff}')
        .trim_end()
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    if let Some(n) = names.iter().position(String::is_empty) {
        return Err(format!(
            "line {} is blank; write one class name per line, in label-id order",
            n + 1
        ));
    }
    if names.is_empty() {
        return Err("no class names; write one per line, in label-id order".into());
    }
    for (n, name) in names.iter().enumerate() {
        if let Some(first) = names[..n].iter().position(|earlier| earlier == name) {
            return Err(format!(
                "line {} names \"{name}\" again (line {}); each class once, in label-id order",
                n + 1,
                first + 1
            ));
        }
    }
    Ok(names)
}

fn print_report(
    args: &LiftArgs,
    source: &LabelSource,
    returns: &field::Returns,
    reports: &[ModelReport],
) {
    println!(
        "{} under {}, {} labelled ({} without {}{}); labels from {}",
        super::plural(returns.kept, "kept frame"),
        args.dir.display(),
        returns.kept - returns.unlabelled.len(),
        returns.unlabelled.len(),
        match source {
            LabelSource::Files { .. } => "a label file",
            LabelSource::SyntheticTruth => "ground truth",
        },
        if returns.orphan_labels > 0 {
            format!(
                "; {} for frames not here",
                super::plural(returns.orphan_labels, "label file")
            )
        } else {
            String::new()
        },
        match source {
            LabelSource::Files { dir, .. } => dir.display().to_string(),
            LabelSource::SyntheticTruth => "the sidecars' synthetic ground truth".into(),
        }
    );
    if !returns.skipped.is_empty() {
        println!(
            "{} skipped (see the warnings above)",
            super::plural(returns.skipped.len(), ".json file")
        );
    }
    for r in reports {
        let sha = r.model.sha256.get(..8).unwrap_or(&r.model.sha256);
        println!();
        println!("model {} {} (sha256 {sha}…)", r.model.id, r.model.version);
        println!(
            "{:<10} {:>7} {:>8} {:>8} {:>8} {:>6}",
            "group", "frames", "miss/fr", "fp/fr", "err/fr", "miss%"
        );
        for g in &r.groups {
            let f = &g.figures;
            if f.frames == 0 {
                println!("{:<10} {:>7}", g.name, 0);
                continue;
            }
            println!(
                "{:<10} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>5.0}%",
                g.name,
                f.frames,
                f.misses_per_frame,
                f.false_positives_per_frame,
                f.errors_per_frame,
                100.0 * f.miss_precision
            );
        }
        println!("lift of the chosen frames over the control sample (90 % bootstrap interval):");
        for (name, lift) in [
            ("misses", r.lift_misses),
            ("false positives", r.lift_false_positives),
            ("errors", r.lift_errors),
        ] {
            println!("  {name:<16} {}", show(lift));
        }
        let control = r.groups.iter().find(|g| g.name == "control");
        let n = control.map_or(0, |g| g.figures.frames);
        if n < FEW_CONTROL_FRAMES {
            println!(
                "  only {} came back labelled: read the lift with its interval, which narrows as more come back",
                super::plural(n, "control frame")
            );
        }
        if !r.reasons.is_empty() {
            println!("chosen frames by reason (frames · misses / frame · errors / frame):");
            for reason in &r.reasons {
                println!(
                    "  {:<24} {:>5} · {:.2} · {:.2}",
                    reason.name,
                    reason.figures.frames,
                    reason.figures.misses_per_frame,
                    reason.figures.errors_per_frame
                );
            }
        }
    }
}

fn show(l: Lift) -> String {
    let num = |x: Option<f64>| x.map_or("∞".to_string(), |v| format!("{v:.2}"));
    match (l.lift, l.interval) {
        (None, None) => "— (needs both chosen and control frames)".into(),
        (None, _) => "— (no such errors among the control frames)".into(),
        (Some(v), Some([lo, hi])) => format!("{v:.2}  ({}–{})", num(lo), num(hi)),
        (Some(v), None) => format!("{v:.2}"),
    }
}
