//! Command-line interface: one file per subcommand.
// The arguments' doc comments are their --help text, which names config tables as
// written in TOML (`[drift]`), not as doc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod bench;
mod calibrate;
mod config;
mod evaluate;
mod lift;
mod run;
mod spool;
mod synth;
mod upload;
mod validate;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    capture::{CameraConfig, SourceConfig, replay::ReplayConfig},
    config::{Config, Loaded, NamedFiles},
    infer::model::{self, Model, ModelFile},
};

#[derive(Parser)]
#[command(
    name = "framesift",
    version,
    about = "Runs a detector on camera streams and keeps the frames worth labelling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline (with no config: the built-in model on a synthetic camera).
    Run(run::RunArgs),
    /// Check config files (later ones overlaid on earlier ones, as `run` reads them);
    /// prints every problem with file, line, column and a fix.
    Validate(validate::ValidateArgs),
    /// Benchmark the real pipeline against bare `session.run` and with capture on/off,
    /// interleaved in one run; prints a table (or JSON).
    Bench(bench::BenchArgs),
    /// Build a drift reference (histograms, alert bands, value thresholds) from a
    /// sample of frames, for [drift] reference.
    Calibrate(calibrate::CalibrateArgs),
    /// Measure the capture policy on the synthetic store stream against ground truth:
    /// errors among kept frames for the policy, random sampling, an oracle and each
    /// signal alone, at one budget.
    Evaluate(evaluate::EvaluateArgs),
    /// Measure the policy's lift on frames that came back labelled: errors per frame of
    /// the chosen frames over the random control sample's, with a bootstrap interval.
    Lift(lift::LiftArgs),
    /// Export a labelled dataset (images, YOLO labels, perturbation tags) from the
    /// synthetic scene source.
    Synth(synth::SynthArgs),
    /// Drain the spool to the configured [upload] destination (the daemon must not be
    /// running); exits 0 once the spool is empty.
    Upload(upload::UploadArgs),
    /// Inspect the spool.
    Spool {
        #[command(subcommand)]
        command: spool::SpoolCommand,
    },
    /// Config helpers.
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
}

/// What to run on: shared by `run` and `bench`.
#[derive(clap::Args)]
struct Inputs {
    /// Config file (TOML); repeat to overlay: later files override earlier ones key by
    /// key, [[camera]] tables merge by name. Without it the built-in defaults are used.
    #[arg(long, short)]
    config: Vec<PathBuf>,
    /// Model file (.onnx), overriding [model] path.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Replace the configured cameras with one replay camera reading this directory.
    #[arg(long)]
    replay: Option<PathBuf>,
}

impl Inputs {
    /// The config files (or the defaults), validated; an invalid config is printed and
    /// becomes exit code 2.
    fn load(&self) -> Result<Loaded, ExitCode> {
        load_files(&self.config)
    }

    /// Apply the command-line overrides.
    fn apply(&self, config: &mut Config) {
        if let Some(model) = &self.model {
            config.model.path = Some(model.clone());
        }
        if let Some(dir) = &self.replay {
            config.cameras = vec![CameraConfig {
                name: "replay".into(),
                source: SourceConfig::Replay(ReplayConfig {
                    dir: dir.clone(),
                    fps: 0.0,
                    looping: false,
                }),
            }];
        }
    }
}

/// Entry point of the binary.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_) | Command::Upload(_)) {
        end_quietly_when_stdout_closes();
    }
    init_logging();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Validate(args) => Ok(validate::validate(&args)),
        Command::Synth(args) => synth::synth(args),
        Command::Bench(args) => bench::bench(args),
        Command::Calibrate(args) => calibrate::calibrate(args),
        Command::Evaluate(args) => evaluate::evaluate(args),
        Command::Lift(args) => lift::lift(args),
        Command::Upload(args) => upload::upload(args),
        Command::Spool { command } => spool::spool(command),
        Command::Config { command } => Ok(config::config(command)),
    }
}

/// Let a report command end as a Unix filter does when its reader goes away (`framesift
/// lift DIR | head`): Rust starts with SIGPIPE ignored, so the next `println!` would
/// panic. `run` and `upload` keep it ignored: a service must outlive a log socket that
/// closes under it (`run` prints its summary to stdout only after its spool is flushed).
#[allow(unsafe_code)]
fn end_quietly_when_stdout_closes() {
    // SAFETY: called from `main` before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The log filter without `FRAMESIFT_LOG`.
const DEFAULT_LOG: &str = "info,ort=warn";

/// `FRAMESIFT_LOG` as a list of `level` and `target=level` directives. (`Targets`, not
/// `EnvFilter`: the same syntax without span and field matching, and without the regex
/// engine EnvFilter links into the board's binary; cross/README.md has the size.)
fn init_logging() {
    use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};
    let asked = std::env::var("FRAMESIFT_LOG").ok();
    let (filter, refused) = match asked.as_deref().map(str::parse::<Targets>) {
        Some(Ok(filter)) => (filter, None),
        Some(Err(error)) => (default_log_filter(), Some(error)),
        None => (default_log_filter(), None),
    };
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .with(filter)
        .try_init();
    if let (Some(asked), Some(error)) = (asked, refused) {
        tracing::warn!(
            "FRAMESIFT_LOG={asked:?} is not a log filter ({error}); logging at {DEFAULT_LOG:?}. \
             Write a level (error, warn, info, debug, trace) or target=level pairs, \
             e.g. FRAMESIFT_LOG=framesift=debug,ort=info"
        );
    }
}

fn default_log_filter() -> tracing_subscriber::filter::Targets {
    DEFAULT_LOG.parse().expect("the default log filter parses")
}

/// The config `files` (or the defaults when there are none), validated; an invalid
/// config is printed and becomes exit code 2.
fn load_files(files: &[PathBuf]) -> Result<Loaded, ExitCode> {
    load_files_with(files, NamedFiles::Check)
}

/// [`load_files`], reading the files the config names only when `named` says so.
fn load_files_with(files: &[PathBuf], named: NamedFiles) -> Result<Loaded, ExitCode> {
    if files.is_empty() {
        return Ok(Loaded::defaults());
    }
    Config::load_with(files, named).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

/// Refuse an output file `flag` names that could not be written — a directory, or in a
/// directory that does not exist — before the work that produces it, not after.
fn check_output_file(flag: &str, out: &std::path::Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        !out.is_dir(),
        "{flag} {} is a directory; name the file to write, e.g. {flag} {}",
        out.display(),
        out.join("out.toml").display()
    );
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    anyhow::ensure!(
        parent.is_dir(),
        "{flag} {}: {} is not a directory; create it first (mkdir -p {})",
        out.display(),
        parent.display(),
        parent.display()
    );
    Ok(())
}

/// Load ONNX Runtime and the model named by the config (or the embedded one).
fn load_model(config: &Config) -> anyhow::Result<Model> {
    let (env, lib) = model::environment(config.model.ort_library.as_deref())?;
    tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
    let file = match &config.model.path {
        Some(path) => ModelFile::read(path)?,
        None => ModelFile::embedded()?,
    };
    let model = Model::load(&env, &file, &config.model)?;
    let info = &model.info;
    tracing::info!(
        model = %info.id,
        version = %info.version,
        origin = %info.origin,
        layout = info.layout.name(),
        input = %format!("{}x{}", info.input_width, info.input_height),
        classes = info.names.len(),
        threads = config.model.intra_threads,
        "model loaded"
    );
    Ok(model)
}

/// `n thing` or `n things`.
fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("{n} {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// Bytes as `12.3 MiB`.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}
