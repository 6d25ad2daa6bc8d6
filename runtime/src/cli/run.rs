//! `framesift run`: the daemon. Starts the pipeline, shows progress, feeds the systemd
//! watchdog, and answers signals: SIGINT/SIGTERM stop it in order (a second SIGINT exits
//! at once), SIGHUP reloads the config files.

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;

use super::{Inputs, load_model, mib, plural};
use crate::{
    config::{Loaded, reload},
    ops::{
        metrics::{self, Stage},
        systemd::Notifier,
    },
    pipeline::{Limits, Pipeline, Summary},
};

#[derive(Parser)]
pub(super) struct RunArgs {
    #[command(flatten)]
    inputs: Inputs,
    /// Spool directory, overriding [spool] dir.
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Stop after this many frames.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_frames: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_parser = seconds)]
    duration_secs: Option<Duration>,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

/// The signals the daemon answers, as flags its loop reads.
struct Signals {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Signals {
    fn register() -> anyhow::Result<Signals> {
        use signal_hook::{consts, flag};
        let stop = Arc::new(AtomicBool::new(false));
        let force = Arc::new(AtomicBool::new(false));
        for signal in [consts::SIGINT, consts::SIGTERM] {
            // First: stop in order (flag). Second: exit now.
            flag::register_conditional_shutdown(signal, 130, force.clone())
                .context("signal handler")?;
            flag::register(signal, force.clone()).context("signal handler")?;
            flag::register(signal, stop.clone()).context("signal handler")?;
        }
        let reload = Arc::new(AtomicBool::new(false));
        flag::register(consts::SIGHUP, reload.clone()).context("signal handler")?;
        Ok(Signals { stop, reload })
    }
}

/// How often the daemon rewrites `<spool>/.meta/status.json`.
const STATUS_EVERY: Duration = Duration::from_secs(2);

pub(super) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut running = match args.inputs.load() {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let mut config = running.config.clone();
    args.inputs.apply(&mut config);
    if let Some(dir) = &args.spool_dir {
        config.spool.dir = dir.clone();
    }
    running.config = config.clone();
    // Before the model loads: a SIGHUP or SIGTERM from here on must not kill the process.
    let signals = Signals::register()?;
    let model = load_model(&config)?;
    let limits = Limits {
        max_frames: args.max_frames,
        duration: args.duration_secs,
    };
    let mut pipeline = Pipeline::start(&config, Arc::new(Mutex::new(model)), limits)
        .context("could not start the pipeline")?;
    tracing::info!(
        stages = %pipeline.stage_names().collect::<Vec<_>>().join(", "),
        "running"
    );

    let progress = !args.quiet && std::io::stderr().is_terminal();
    let mut last_log = Instant::now();
    let systemd = Notifier::from_env();
    systemd.ready();
    let mut watchdog = Watchdog::default();
    let mut memory = MemoryWatch::default();
    let mut status_at = Instant::now();
    while !pipeline.is_finished() {
        pipeline.poll(Duration::from_millis(250));
        if status_at.elapsed() >= STATUS_EVERY {
            pipeline.write_status();
            status_at = Instant::now();
        }
        if signals.stop.load(Ordering::Relaxed) {
            pipeline.stop();
        }
        if signals.reload.swap(false, Ordering::Relaxed) {
            running = reload_config(&pipeline, running);
        }
        watchdog.tick(&systemd, &pipeline);
        let m = pipeline.metrics();
        let secs = pipeline.elapsed().as_secs_f64();
        let inferred = m.stage(Stage::Inference).count();
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
            last_log = Instant::now();
        }
    }
    if progress {
        eprintln!();
    }
    systemd.stopping();
    let spool = running.config.spool.dir.clone();
    match pipeline.finish() {
        Ok(summary) => {
            print_summary(&summary, &spool);
            memory.print();
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            print_summary(&failure.summary, &spool);
            eprintln!("error: {failure}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// SIGHUP: read the same files again; on any problem keep the running config and say
/// why; otherwise log every changed key and apply the live ones.
fn reload_config(pipeline: &Pipeline, running: Loaded) -> Loaded {
    let fresh = match running.reread() {
        Ok(fresh) => fresh,
        Err(e) => {
            for d in &e.diagnostics {
                tracing::error!(
                    "config reload: {}",
                    crate::config::ConfigError {
                        diagnostics: vec![d.clone()],
                    }
                );
            }
            tracing::error!(
                "config reload failed ({}); the running config is kept",
                plural(e.diagnostics.len(), "problem")
            );
            return running;
        }
    };
    let reload::Reload {
        running: next,
        changes,
    } = reload::apply(&running, fresh);
    if changes.is_empty() {
        tracing::info!("config reload: nothing changed");
        return next;
    }
    for change in &changes {
        if change.live {
            tracing::info!("config reload: {change}");
        } else {
            tracing::warn!("config reload: {change}");
        }
    }
    if changes.iter().any(|c| c.live) {
        pipeline.reload(Arc::new(next.config.clone()));
    }
    next
}

/// Feeds systemd's watchdog only while every stage is alive and none is stuck on one
/// item for more than half the timeout; a stage waiting (for input, or out a camera's
/// reconnect backoff) is not stuck.
#[derive(Default)]
struct Watchdog {
    last_ping: Option<Instant>,
    stall_logged: bool,
}

impl Watchdog {
    fn tick(&mut self, systemd: &Notifier, pipeline: &Pipeline) {
        let Some(timeout) = systemd.watchdog_timeout() else {
            return;
        };
        if pipeline.failure().is_some() {
            return;
        }
        let stalled = pipeline
            .longest_busy()
            .filter(|(_, busy)| *busy > timeout / 2);
        if let Some((stage, busy)) = stalled {
            if !self.stall_logged {
                tracing::error!(
                    stage,
                    busy_secs = busy.as_secs_f64(),
                    "stage stalled; no longer feeding the watchdog"
                );
            }
            self.stall_logged = true;
        } else if self.last_ping.is_none_or(|t| t.elapsed() >= timeout / 4) {
            systemd.watchdog();
            self.last_ping = Some(Instant::now());
            self.stall_logged = false;
        }
    }
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
        self.record(inferred, metrics::rss_kib())
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
        let peak = metrics::peak_rss_kib() as f64 / 1024.0;
        match self.growth() {
            Some((growth, from, to)) => println!(
                "  memory      peak RSS {peak:.1} MiB; RSS growth {growth:+} KiB from frame {from} \
                 to frame {to} (highest sample minus the level at frame {from})"
            ),
            None => println!("  memory      peak RSS {peak:.1} MiB"),
        }
    }
}

fn print_summary(s: &Summary, spool: &std::path::Path) {
    println!("framesift run summary");
    println!(
        "  frames      {} acquired, {} inferred in {:.1} s ({:.1} fps)",
        s.frames,
        s.inferred,
        s.elapsed.as_secs_f64(),
        s.fps()
    );
    println!(
        "  kept        {} written to {} ({} candidates: {} outranked, {} near-duplicates of better frames)",
        s.kept,
        spool.display(),
        s.candidates,
        s.evicted,
        s.duplicates
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
    if let Some((entries, bytes)) = s.spool {
        println!(
            "  spool       {} ({}) waiting; {} evicted for frames worth more",
            plural(entries, "frame"),
            mib(bytes),
            s.spool_evicted
        );
    }
    if s.uploading {
        println!(
            "  uploaded    {} ({}), {}",
            plural(s.uploaded as usize, "frame"),
            mib(s.uploaded_bytes),
            plural(s.upload_failures as usize, "failed attempt")
        );
    }
    if s.disconnects > 0 {
        println!(
            "  cameras     {}, {}",
            plural(s.disconnects as usize, "disconnect"),
            plural(s.reconnects as usize, "reconnect")
        );
    }
    for d in &s.drift {
        match &d.worst {
            Some(worst) => println!(
                "  drift       {}: {} over its last {} frames (worst {worst}: JS {:.3}, moderate from {:.3}, PSI {:.3}; largest PSI {:.3}; {})",
                d.camera,
                d.band,
                d.frames.min(d.window as u64),
                d.js,
                d.js_moderate,
                d.psi,
                d.max_psi,
                plural(d.band_changes as usize, "band change")
            ),
            None => println!(
                "  drift       {}: no verdict ({} frames, fewer than [drift] min_frames)",
                d.camera, d.frames
            ),
        }
    }
    println!("  stage              count   median ms     p99 ms");
    for (name, count, p50, p99) in &s.stages {
        if *count > 0 {
            println!("  {name:<16} {count:>7} {p50:>11.3} {p99:>10.3}");
        }
    }
}

/// `--duration-secs`: a number of seconds above 0 (fractions allowed).
fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| "write a number of seconds above 0, e.g. 60 or 0.5".to_string())
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
