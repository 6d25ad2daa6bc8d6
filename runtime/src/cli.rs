//! Command-line interface: `run`, `validate`, `config default`.

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::Ordering,
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{
    config::{CameraConfig, Config, DEFAULT_CONFIG_TOML, SourceConfig},
    model::{self, Model, ModelFile},
    pipeline::{Limits, Pipeline, Summary},
    source::replay::ReplayConfig,
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
    Run(RunArgs),
    /// Check a config file; prints every problem with line, column and a fix.
    Validate {
        /// The config file to check.
        file: PathBuf,
    },
    /// Benchmark the real pipeline against bare `session.run` and with capture on/off,
    /// interleaved in one run; prints a table (or JSON).
    Bench(BenchArgs),
    /// Export a labelled dataset (images, YOLO labels, perturbation tags) from the
    /// synthetic scene source.
    Synth(SynthArgs),
    /// Config helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the complete, commented default config.
    Default,
}

/// What to run on: shared by `run` and `bench`.
#[derive(clap::Args)]
struct Inputs {
    /// Config file (TOML). Without it the built-in defaults are used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Model file (.onnx), overriding [model] path.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Replace the configured cameras with one replay camera reading this directory.
    #[arg(long)]
    replay: Option<PathBuf>,
}

#[derive(Parser)]
struct BenchArgs {
    #[command(flatten)]
    inputs: Inputs,
    /// Frames per phase (pipeline, bare run, each capture condition). Use 3000 or more
    /// for capture_p99_ratio: its p99 of 900 frames is the 9th-slowest frame.
    #[arg(long, default_value_t = 300)]
    frames: u64,
    /// Interleaved rounds the frames are split over; `pipeline_vs_bare` is the median
    /// of the per-round ratios.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Parser)]
struct SynthArgs {
    /// Output directory (created; must be empty).
    #[arg(long)]
    out: PathBuf,
    /// Number of frames.
    #[arg(long, default_value_t = 1000)]
    frames: u64,
    /// `studio` (clean, known products only) or `store` (perturbations, unseen products).
    #[arg(long, value_parser = ["studio", "store"], default_value = "store")]
    split: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 640)]
    width: u32,
    #[arg(long, default_value_t = 360)]
    height: u32,
    /// Consecutive frames per scene (1 = every frame a new scene).
    #[arg(long, default_value_t = 1)]
    frames_per_scene: u32,
}

#[derive(Parser)]
struct RunArgs {
    #[command(flatten)]
    inputs: Inputs,
    /// Spool directory, overriding [spool] dir.
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Stop after this many frames.
    #[arg(long)]
    max_frames: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

/// Entry point of the binary.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Run(args) => run_pipeline(args),
        Command::Validate { file } => Ok(validate(&file)),
        Command::Synth(args) => synth(args),
        Command::Bench(args) => bench(args),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FRAMESIFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn validate(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            println!(
                "{}: ok ({} camera{})",
                file.display(),
                config.cameras.len(),
                if config.cameras.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "{}: {} problem{}",
                file.display(),
                e.diagnostics.len(),
                if e.diagnostics.len() == 1 { "" } else { "s" }
            );
            ExitCode::from(2)
        }
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let replay = args.inputs.replay.is_some();
    let run_args = RunArgs {
        inputs: args.inputs,
        spool_dir: None,
        max_frames: None,
        duration_secs: None,
        quiet: true,
    };
    let mut config = match run_config(&run_args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if replay
        && let Some(SourceConfig::Replay(r)) = config.cameras.first_mut().map(|c| &mut c.source)
    {
        // Frames are split over rounds and phases: loop so every phase gets its share.
        r.looping = true;
    }
    config.cameras.truncate(1);
    let model = std::sync::Arc::new(std::sync::Mutex::new(load_model(&config)?));
    let opts = crate::bench::BenchOptions {
        frames: args.frames,
        rounds: args.rounds,
    };
    let report = crate::bench::run(&config, model, &opts, |phase| {
        tracing::info!("bench: {phase}")
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}

fn synth(args: SynthArgs) -> anyhow::Result<ExitCode> {
    use crate::source::synthetic::Split;
    anyhow::ensure!(
        args.width >= 64 && args.height >= 64,
        "--width and --height must be at least 64"
    );
    anyhow::ensure!(
        args.frames_per_scene >= 1,
        "--frames-per-scene must be at least 1"
    );
    let opts = crate::dataset::ExportOptions {
        out: args.out.clone(),
        frames: args.frames,
        split: if args.split == "studio" {
            Split::Studio
        } else {
            Split::Store
        },
        seed: args.seed,
        width: args.width,
        height: args.height,
        frames_per_scene: args.frames_per_scene,
    };
    let tty = std::io::stderr().is_terminal();
    let mut last = 0;
    let stats = crate::dataset::export(&opts, |done, total| {
        let pct = done * 100 / total.max(1);
        if pct != last && (tty || pct % 10 == 0) {
            last = pct;
            if tty {
                eprint!("\rsynth: {done}/{total} frames ({pct}%)");
            } else {
                eprintln!("synth: {done}/{total} frames ({pct}%)");
            }
        }
    })?;
    if tty {
        eprintln!();
    }
    println!(
        "wrote {} {} frames to {} ({} labelled objects, {} objects of unseen types, {} perturbed frames)",
        stats.frames,
        args.split,
        args.out.display(),
        stats.labelled_objects,
        stats.unseen_objects,
        stats.perturbed_frames
    );
    Ok(ExitCode::SUCCESS)
}

/// The config for a run: the file (or defaults) with command-line overrides applied.
fn run_config(args: &RunArgs) -> Result<Config, ExitCode> {
    let mut config = match &args.inputs.config {
        Some(path) => Config::load(path).map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(2)
        })?,
        None => Config::default(),
    };
    if let Some(model) = &args.inputs.model {
        config.model.path = Some(model.clone());
    }
    if let Some(dir) = &args.spool_dir {
        config.spool.dir = dir.clone();
    }
    if let Some(dir) = &args.inputs.replay {
        config.cameras = vec![CameraConfig {
            name: "replay".into(),
            source: SourceConfig::Replay(ReplayConfig {
                dir: dir.clone(),
                fps: 0.0,
                looping: false,
            }),
        }];
    }
    Ok(config)
}

/// Load ONNX Runtime and the model named by the config (or the embedded one).
pub fn load_model(config: &Config) -> anyhow::Result<Model> {
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

fn run_pipeline(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = match run_config(&args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let model = load_model(&config)?;
    let limits = Limits {
        max_frames: args.max_frames,
        duration: args.duration_secs.map(Duration::from_secs_f64),
    };
    let pipeline = Pipeline::start(
        &config,
        std::sync::Arc::new(std::sync::Mutex::new(model)),
        limits,
    )
    .context("could not start the pipeline")?;

    // First Ctrl-C / SIGTERM: stop capturing, flush, exit 0. A second Ctrl-C: exit now.
    let stop = pipeline.stop_flag();
    let force = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, force.clone())
            .context("signal handler")?;
        signal_hook::flag::register(signal, force.clone()).context("signal handler")?;
        signal_hook::flag::register(signal, stop.clone()).context("signal handler")?;
    }

    let progress = !args.quiet && std::io::stderr().is_terminal();
    let mut last_log = std::time::Instant::now();
    let systemd = crate::systemd::Notifier::from_env();
    systemd.ready();
    let mut last_ping = std::time::Instant::now();
    let mut stall_logged = false;
    let mut memory = MemoryWatch::default();
    while !pipeline.is_finished() {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(timeout) = systemd.watchdog_timeout() {
            // Feed the watchdog only while no thread is stuck on one frame for longer
            // than half the timeout; a stalled loop gets the daemon restarted.
            let stalled = pipeline
                .longest_busy()
                .filter(|(_, busy)| *busy > timeout / 2);
            if let Some((thread, busy)) = stalled {
                if !stall_logged {
                    tracing::error!(
                        thread,
                        busy_secs = busy.as_secs_f64(),
                        "pipeline thread stalled; no longer feeding the watchdog"
                    );
                }
                stall_logged = true;
            } else if last_ping.elapsed() >= timeout / 4 {
                systemd.watchdog();
                last_ping = std::time::Instant::now();
                stall_logged = false;
            }
        }
        let m = pipeline.metrics();
        let secs = pipeline.elapsed().as_secs_f64();
        let inferred = m.stage(crate::metrics::Stage::Inference).count();
        let rss = memory.sample(inferred);
        let line = format!(
            "{secs:7.1} s  frames {:>7}  {:6.1} fps  kept {:>5}  dropped {:>5}  rss {:>4} MiB",
            m.frames.load(Ordering::Relaxed),
            inferred as f64 / secs.max(1e-9),
            m.kept.load(Ordering::Relaxed),
            m.total_drops(),
            rss / 1024
        );
        if progress {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else if !args.quiet && last_log.elapsed() >= Duration::from_secs(10) {
            tracing::info!("{}", line.trim());
            last_log = std::time::Instant::now();
        }
        if stop.load(Ordering::Relaxed) {
            pipeline.stop();
        }
    }
    if progress {
        eprintln!();
    }
    systemd.stopping();
    let summary = pipeline.join()?;
    print_summary(&summary, &config);
    memory.print();
    Ok(ExitCode::SUCCESS)
}

/// Resident memory while the pipeline runs: the level once warmed up and the highest
/// sample after it, so a long run shows whether memory creeps (a leak) or stays flat.
/// The highest sample, not the last: the last can fall in the teardown, after the
/// pipeline freed its pools, and would hide growth.
#[derive(Default)]
struct MemoryWatch {
    /// (frames inferred, RSS KiB) when the warm-up ended.
    warm: Option<(u64, i64)>,
    /// Highest RSS KiB sampled after the warm-up.
    highest: i64,
    /// Frames inferred at the last sample.
    last_frames: u64,
}

impl MemoryWatch {
    /// Frames after which buffers, pools and ORT's arena have reached their working size.
    const WARM_UP_FRAMES: u64 = 1000;

    fn sample(&mut self, inferred: u64) -> i64 {
        self.record(inferred, crate::metrics::rss_kib())
    }

    fn record(&mut self, inferred: u64, rss: i64) -> i64 {
        match self.warm {
            None if inferred >= Self::WARM_UP_FRAMES => {
                self.warm = Some((inferred, rss));
                self.highest = rss;
            }
            Some(_) => self.highest = self.highest.max(rss),
            None => {}
        }
        self.last_frames = inferred;
        rss
    }

    /// KiB the highest sample after warm-up lies above the warm-up level, with the
    /// frame range it covers; `None` before a sample after the warm-up.
    fn growth(&self) -> Option<(i64, u64, u64)> {
        match self.warm {
            Some((from, warm)) if self.last_frames > from => {
                Some((self.highest - warm, from, self.last_frames))
            }
            _ => None,
        }
    }

    fn print(&self) {
        let peak = crate::metrics::peak_rss_kib() as f64 / 1024.0;
        match self.growth() {
            Some((growth, from, to)) => println!(
                "  memory      peak RSS {peak:.1} MiB; RSS growth {growth:+} KiB from frame {from} \
                 to frame {to} (highest sample minus the level at frame {from})"
            ),
            None => println!("  memory      peak RSS {peak:.1} MiB"),
        }
    }
}

fn print_summary(s: &Summary, config: &Config) {
    println!("framesift run summary");
    println!(
        "  frames      {} acquired, {} inferred in {:.1} s ({:.1} fps)",
        s.frames,
        s.inferred,
        s.elapsed.as_secs_f64(),
        s.fps()
    );
    println!(
        "  kept        {} written to {} ({} candidates, {} evicted from the keep buffer)",
        s.kept,
        config.spool.dir.display(),
        s.candidates,
        s.evicted
    );
    let drops: Vec<String> = s
        .drops
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    println!(
        "  dropped     {}{}",
        s.total_drops(),
        if drops.is_empty() {
            String::new()
        } else {
            format!(" ({})", drops.join(", "))
        }
    );
    if s.disconnects > 0 {
        println!(
            "  cameras     {} disconnect{}, {} reconnect{}",
            s.disconnects,
            if s.disconnects == 1 { "" } else { "s" },
            s.reconnects,
            if s.reconnects == 1 { "" } else { "s" }
        );
    }
    println!("  stage              count   median ms     p99 ms");
    for (name, count, p50, p99) in &s.stages {
        if *count > 0 {
            println!("  {name:<16} {count:>7} {p50:>11.3} {p99:>10.3}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryWatch;

    #[test]
    fn memory_growth_is_the_highest_sample_above_the_warm_level() {
        let mut m = MemoryWatch::default();
        // Warm-up: growth of the pools and arena before frame 1000 is not a leak.
        m.record(10, 50_000);
        m.record(900, 170_000);
        assert_eq!(m.growth(), None);
        m.record(1_000, 176_000);
        assert_eq!(m.growth(), None, "one sample is no range");
        m.record(50_000, 176_400);
        m.record(99_000, 176_900);
        // Teardown: the pools are freed before the loop sees the pipeline finish.
        m.record(100_000, 71_000);
        assert_eq!(m.growth(), Some((900, 1_000, 100_000)));
    }

    #[test]
    fn memory_that_only_shrinks_after_warm_up_has_no_growth() {
        let mut m = MemoryWatch::default();
        m.record(1_200, 180_000);
        m.record(5_000, 120_000);
        assert_eq!(m.growth(), Some((0, 1_200, 5_000)));
    }
}
