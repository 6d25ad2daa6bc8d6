//! How the daemon behaves when a stage fails, a camera stays gone, or a signal arrives:
//! the real binary, with faults injected at named stages (`FRAMESIFT_FAULTS`, compiled
//! into the test build only; see runtime/src/faults.rs).

use std::{
    io::{BufRead, BufReader},
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{framesift, text};

/// Complete spool entries (sidecars whose image is there).
fn entries(spool: &Path) -> usize {
    std::fs::read_dir(spool)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter(|e| e.path().with_extension("jpg").is_file())
                .count()
        })
        .unwrap_or(0)
}

/// One keep window for the whole run and every frame a candidate: whatever the
/// keeper holds at the end is there only because it was flushed.
const HOLD_EVERYTHING: &str = "[keep]\ntarget_rate = 0.0\ndedupe_distance = 0.0\nwindow_secs = 3600.0\n[policy]\nmin_value = 0.0\n";

fn config(dir: &Path, text: &str) -> String {
    let path = dir.join("c.toml");
    std::fs::write(&path, text).expect("config");
    path.to_str().expect("utf8").to_string()
}

/// Run to completion with `faults`; (exit code, stdout, stderr, seconds taken).
fn run_with_faults(dir: &Path, faults: &str, extra: &[&str]) -> (Option<i32>, String, String, f64) {
    let config = config(dir, HOLD_EVERYTHING);
    let spool = dir.join("spool");
    let mut args = vec![
        "run",
        "--config",
        &config,
        "--spool-dir",
        spool.to_str().expect("utf8"),
        "--max-frames",
        "400",
    ];
    args.extend_from_slice(extra);
    let t0 = Instant::now();
    let out = framesift(&args)
        .env("FRAMESIFT_FAULTS", faults)
        .output()
        .expect("spawn");
    (
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr),
        t0.elapsed().as_secs_f64(),
    )
}

#[test]
fn an_inference_error_ends_the_run_with_the_stage_and_cause_after_flushing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stdout, stderr, secs) = run_with_faults(dir.path(), "infer-cam0=error@30", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("error: stage infer-cam0 failed: injected fault"),
        "{stderr}"
    );
    // The unpaced synthetic camera waited for inference; it was told to stop instead.
    assert!(secs < 30.0, "took {secs:.1} s");
    let kept = entries(&dir.path().join("spool"));
    assert_eq!(
        kept, 16,
        "the keep buffer (capacity 16, 30 candidates) was flushed: {stdout}"
    );
    assert!(stdout.contains("30 inferred"), "{stdout}");
}

#[test]
fn a_keeper_panic_ends_the_run_and_what_it_held_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stdout, stderr, secs) = run_with_faults(dir.path(), "keeper=panic@10", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("error: stage keeper panicked: injected fault"),
        "{stderr}"
    );
    assert!(secs < 30.0, "took {secs:.1} s");
    // The run did not go on with a dead keeper: far fewer than 400 frames.
    let inferred: u64 = stdout
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "inferred")
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no inferred count: {stdout}"));
    assert!(inferred < 400, "{stdout}");
    assert_eq!(
        entries(&dir.path().join("spool")),
        10,
        "the ten candidates the keeper held before it panicked were written: {stderr}"
    );
}

#[test]
fn a_failure_while_starting_the_second_camera_stops_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        dir.path(),
        "[[camera]]\nname = \"front\"\ntype = \"synthetic\"\nfps = 30.0\n\n[[camera]]\nname = \"back\"\ntype = \"v4l2\"\ndevice = \"/dev/video-framesift-missing\"\n",
    );
    let t0 = Instant::now();
    let out = framesift(&[
        "run",
        "--config",
        &config,
        "--spool-dir",
        dir.path().join("spool").to_str().expect("utf8"),
    ])
    .output()
    .expect("spawn");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the first camera's stages stopped"
    );
    assert_eq!(
        stderr
            .matches("camera back: no camera at /dev/video-framesift-missing")
            .count(),
        1,
        "{stderr}"
    );
}

/// A running daemon whose stderr lines arrive on a channel.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Daemon {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = framesift(args);
        cmd.env("FRAMESIFT_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Wait for a log line containing `needle`.
    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                let found = line.contains(needle);
                self.log.push(line);
                if found {
                    return;
                }
            }
        }
        panic!(
            "no log line with {needle:?} in {timeout:?}:\n{}",
            self.log.join("\n")
        );
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Wait for the exit; (code, stdout, whole stderr, seconds waited).
    fn wait(mut self) -> (Option<i32>, String, String, f64) {
        let t0 = Instant::now();
        let status = self.child.wait().expect("wait");
        let secs = t0.elapsed().as_secs_f64();
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut stdout);
        }
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.log.push(line);
        }
        (status.code(), stdout, self.log.join("\n"), secs)
    }
}

#[test]
fn sigterm_during_a_reconnect_backoff_exits_at_once_and_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), HOLD_EVERYTHING);
    let spool = dir.path().join("spool");
    let sock = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock).expect("bind");
    notify.set_nonblocking(true).expect("nonblocking");
    // After 20 frames the camera is gone for good; its backoff is 30 s.
    let mut daemon = Daemon::start(
        &[
            "run",
            "--config",
            &config,
            "--spool-dir",
            spool.to_str().expect("utf8"),
        ],
        &[
            ("FRAMESIFT_FAULTS", "capture-cam0=gone@20"),
            ("NOTIFY_SOCKET", sock.to_str().expect("utf8")),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    daemon.wait_for("camera disconnected", Duration::from_secs(60));
    // Drain the notifications so far, then count the watchdog pings during the wait.
    let mut buf = [0u8; 64];
    while notify.recv(&mut buf).is_ok() {}
    std::thread::sleep(Duration::from_millis(1500));
    let mut pings = 0;
    while let Ok(n) = notify.recv(&mut buf) {
        pings += usize::from(&buf[..n] == b"WATCHDOG=1");
    }
    assert!(
        pings >= 3,
        "a camera waiting out its backoff is not a stalled stage: {pings} pings in 1.5 s"
    );
    daemon.signal("TERM");
    let (code, stdout, stderr, secs) = daemon.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        secs < 2.0,
        "exited {secs:.2} s after SIGTERM, during a 30 s backoff"
    );
    assert_eq!(entries(&spool), 16, "the keep buffer was flushed: {stdout}");
    assert!(stdout.contains("1 disconnect, 0 reconnects"), "{stdout}");
}

#[test]
fn sighup_reloads_live_keys_and_never_kills_the_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        dir.path(),
        &format!("{HOLD_EVERYTHING}[[camera]]\ntype = \"synthetic\"\nfps = 20.0\n"),
    );
    let spool = dir.path().join("spool");
    let mut daemon = Daemon::start(
        &[
            "run",
            "--config",
            &config,
            "--spool-dir",
            spool.to_str().expect("utf8"),
        ],
        &[],
    );
    daemon.wait_for("running", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));

    // A bad edit: reported, the running config kept, the daemon alive.
    std::fs::write(&config, "[keep]\ncapacity = 0\n").expect("write");
    daemon.signal("HUP");
    daemon.wait_for("keep.capacity = 0 is out of range", Duration::from_secs(10));
    daemon.wait_for("the running config is kept", Duration::from_secs(10));

    // A good one: a live key applies, a restart key is reported and kept.
    std::fs::write(
        &config,
        "[keep]\ntarget_rate = 0.0\ndedupe_distance = 0.0\nwindow_secs = 3600.0\ncapacity = 3\n[policy]\nmin_value = 0.0\n[pipeline]\nqueue_depth = 4\n[[camera]]\ntype = \"synthetic\"\nfps = 20.0\n",
    )
    .expect("write");
    daemon.signal("HUP");
    daemon.wait_for(
        "config reload: keep.capacity: 16 -> 3",
        Duration::from_secs(10),
    );
    daemon.wait_for(
        "config reload: pipeline.queue_depth: 2 -> 4 (needs a restart; the running value is kept)",
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(500));
    daemon.signal("TERM");
    let (code, stdout, stderr, _) = daemon.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        entries(&spool),
        3,
        "the flush at shutdown wrote the reloaded capacity's worth: {stdout}"
    );
}
