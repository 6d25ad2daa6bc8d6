//! `framesift spool status`: what the spool holds and what the daemon last said about
//! it — read without taking the spool, so it works while the daemon runs.

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use serde::Serialize;

use super::mib;
use crate::{
    config::{Config, NamedFiles},
    store::{DaemonStatus, fs::OsFs, read_status, sidecar::unix_ms, spool::scan},
};

#[derive(Subcommand)]
pub(super) enum SpoolCommand {
    /// Entries, bytes, the oldest entry's age, uploads, failed attempts, evictions and
    /// the upload state.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Config files, as for `run` (for [spool] dir).
        #[arg(long, short)]
        config: Vec<PathBuf>,
        /// Spool directory, overriding [spool] dir.
        #[arg(long)]
        spool_dir: Option<PathBuf>,
    },
}

#[derive(Serialize)]
struct Report {
    dir: String,
    entries: usize,
    bytes: u64,
    oldest_entry_age_secs: Option<f64>,
    half_written: usize,
    corrupt: usize,
    unreadable: usize,
    /// Whether the daemon that wrote the status is still running.
    daemon_running: bool,
    /// The daemon's last status (counts since it started); none if it never wrote one.
    daemon: Option<DaemonStatus>,
}

pub(super) fn spool(command: SpoolCommand) -> anyhow::Result<ExitCode> {
    let SpoolCommand::Status {
        json,
        config,
        spool_dir,
    } = command;
    let mut dir = if config.is_empty() {
        Config::default().spool.dir
    } else {
        // Only [spool] dir is read: a broken drift reference must not hide the spool.
        match Config::load_with(&config, NamedFiles::Skip) {
            Ok(loaded) => loaded.config.spool.dir,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(2));
            }
        }
    };
    if let Some(d) = spool_dir {
        dir = d;
    }
    if !dir.is_dir() {
        eprintln!("error: no spool at {}", dir.display());
        return Ok(ExitCode::FAILURE);
    }
    let scan = scan(&OsFs, &dir)?;
    let now = unix_ms(std::time::SystemTime::now());
    let oldest = scan.complete.iter().map(|e| e.captured_unix_ms).min();
    let daemon = read_status(&dir);
    let report = Report {
        dir: dir.display().to_string(),
        entries: scan.complete.len(),
        bytes: scan.complete.iter().map(|e| e.bytes).sum(),
        oldest_entry_age_secs: oldest.map(|ms| now.saturating_sub(ms) as f64 / 1000.0),
        half_written: scan.partial.len(),
        corrupt: scan.corrupt.len(),
        unreadable: scan.unreadable,
        daemon_running: daemon.is_some() && lock_held(&dir),
        daemon,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("spool {}", report.dir);
    println!(
        "  entries      {} ({}){}",
        report.entries,
        mib(report.bytes),
        match report.oldest_entry_age_secs {
            Some(s) => format!(", the oldest captured {} ago", age(s)),
            None => String::new(),
        }
    );
    if report.half_written + report.corrupt + report.unreadable > 0 {
        println!(
            "  to repair    {} half-written, {} corrupt, {} unreadable (the next start repairs them)",
            report.half_written, report.corrupt, report.unreadable
        );
    }
    match &report.daemon {
        None => println!("  daemon       no status written yet"),
        Some(d) => {
            println!(
                "  daemon       {} (pid {}), status from {} ago",
                if report.daemon_running {
                    "running"
                } else {
                    "not running"
                },
                d.pid,
                age(now.saturating_sub(d.updated_unix_ms) as f64 / 1000.0)
            );
            println!(
                "  uploads      {}: {} frames ({}) delivered, {} failed attempts",
                d.upload_state,
                d.uploaded,
                mib(d.uploaded_bytes),
                d.failed_attempts
            );
            if !d.last_upload_error.is_empty() {
                println!("  last failure {}", d.last_upload_error);
            }
            println!(
                "  budget       {} evicted for better frames, {} dropped (spool full), {} dropped (disk full)",
                d.evicted, d.dropped_spool_full, d.dropped_disk_full
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
/// Whether a process holds the spool's lock (the daemon, or `upload --once`). A pid in
/// the status file may be long dead, or reused by another program.
fn lock_held(dir: &std::path::Path) -> bool {
    std::fs::File::open(dir.join(".meta").join("lock"))
        .is_ok_and(|f| matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)))
}

fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::Fs;

    #[test]
    fn a_daemon_runs_while_it_holds_the_lock_whatever_the_pid_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!lock_held(dir.path()), "no lock file");
        let meta = dir.path().join(".meta");
        std::fs::create_dir(&meta).expect("meta");
        let held = OsFs.lock(&meta.join("lock")).expect("lock");
        assert!(lock_held(dir.path()));
        drop(held);
        // The file stays, with the pid of a process that has gone.
        assert!(!lock_held(dir.path()));
    }
}
