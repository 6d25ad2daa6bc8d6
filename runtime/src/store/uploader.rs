//! The uploader stage and its `[upload]` table: delivers spool entries, highest value
//! first, whenever uploading is allowed (inside an upload window, while docked), with
//! retries on a capped, jittered exponential backoff and an optional bandwidth limit,
//! and slowed to a trickle while the detector runs flat out (`DetectorLoad`).
//!
//! It runs on its own thread and talks to the spool only: nothing it does — a slow
//! network, a refused credential, a server that is down — reaches the inference path.
//! Credentials come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`) or from the AWS credentials file named by `credentials_file`,
//! never from the config, and never appear in logs, errors or status output.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam_channel::RecvTimeoutError;
use serde::{Deserialize, Serialize};

use super::{
    SharedSpool,
    upload::{Delivery, DeliveryError, Destination, FileDestination, deliver_one},
};
use crate::{
    config::{Checker, Config},
    ops::metrics::{Metrics, Stage, event},
    supervisor::{Command, StageContext, StageFailure},
};

/// `[upload]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawUpload {
    url: String,
    endpoint_url: String,
    region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_style: Option<bool>,
    credentials_file: String,
    profile: String,
    request_timeout_secs: f64,
    max_bytes_per_sec: i64,
    busy_max_bytes_per_sec: i64,
    windows: Vec<String>,
    docked_file: String,
    retry_initial_ms: i64,
    retry_max_ms: i64,
}

impl Default for RawUpload {
    fn default() -> Self {
        RawUpload {
            url: String::new(),
            endpoint_url: String::new(),
            region: "us-east-1".into(),
            path_style: None,
            credentials_file: String::new(),
            profile: "default".into(),
            request_timeout_secs: 30.0,
            max_bytes_per_sec: 0,
            busy_max_bytes_per_sec: 100_000,
            windows: Vec::new(),
            docked_file: String::new(),
            retry_initial_ms: 100,
            retry_max_ms: 15_000,
        }
    }
}

/// `[upload]` keys that apply without a restart.
pub(crate) const LIVE_KEYS: &[&str] = &[
    "request_timeout_secs",
    "max_bytes_per_sec",
    "busy_max_bytes_per_sec",
    "windows",
    "docked_file",
    "retry_initial_ms",
    "retry_max_ms",
];

/// Where kept frames go.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// An S3-compatible bucket, objects under `prefix`.
    S3 {
        bucket: String,
        prefix: String,
        /// `None`: AWS's regional endpoint.
        endpoint: Option<String>,
        region: String,
        path_style: bool,
        credentials_file: Option<PathBuf>,
        profile: String,
    },
    /// A directory, e.g. a mounted share.
    Dir(PathBuf),
}

/// A time-of-day window, in minutes since local midnight; `start > end` wraps midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u16,
    pub end: u16,
}

impl Window {
    fn contains(self, minute: u16) -> bool {
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// The validated `[upload]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadConfig {
    /// `None`: no uploader (`url` empty).
    pub target: Option<Target>,
    pub request_timeout: Duration,
    /// 0: unlimited.
    pub max_bytes_per_sec: u64,
    /// The rate while the detector runs flat out (`DetectorLoad`). 0: no slowdown.
    pub busy_max_bytes_per_sec: u64,
    /// Empty: any time.
    pub windows: Vec<Window>,
    /// Upload only while this file exists.
    pub docked_file: Option<PathBuf>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

fn parse_window(text: &str) -> Option<Window> {
    let minute = |hm: &str| -> Option<u16> {
        let (h, m) = hm.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
    };
    let (a, b) = text.split_once('-')?;
    let window = Window {
        start: minute(a)? % (24 * 60),
        end: minute(b)? % (24 * 60),
    };
    // One that ends where it starts holds no minute: uploads would never run.
    (window.start != window.end).then_some(window)
}

/// A store (or a share's filesystem) resolves `.` and `..` in a key — s3s-fs even
/// into another bucket — so the objects would not be where the url says.
fn check_dots(c: &mut Checker, url: &str, path: &str) {
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        c.fail(
            "url",
            format!("upload.url = \"{url}\" has a '.' or '..' in its prefix"),
            "write a path of plain names, e.g. url = \"s3://my-bucket/frames/store-12\" or \"file:///mnt/share/frames\"".to_string(),
        );
    }
}

impl UploadConfig {
    pub(crate) fn validate(u: &RawUpload, c: &mut Checker) -> Self {
        // `scheme://user:password@host` (or without the scheme): a secret in the config,
        // not to be echoed.
        let has_userinfo = |url: &str| {
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            rest.split('/').next().unwrap_or("").contains('@')
        };
        let mut secret = false;
        for (key, url) in [("url", &u.url), ("endpoint_url", &u.endpoint_url)] {
            if has_userinfo(url) {
                secret = true;
                c.fail(
                    key,
                    format!("upload.{key} holds credentials (user:password@)"),
                    crate::config::diagnostics::SECRET_HINT.to_string(),
                );
            }
        }
        let target = if u.url.is_empty() || secret {
            None
        } else if let Some(rest) = u.url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '.'
                });
            if !bucket_ok {
                c.fail(
                    "url",
                    format!("upload.url = \"{}\" does not name a usable bucket", u.url),
                    "write url = \"s3://my-bucket/some/prefix\" (bucket: 3 to 63 lower-case letters, digits, '-' or '.')".to_string(),
                );
            }
            check_dots(c, &u.url, prefix);
            let endpoint = (!u.endpoint_url.is_empty()).then(|| u.endpoint_url.clone());
            if let Some(e) = &endpoint
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                c.fail(
                    "endpoint_url",
                    format!("upload.endpoint_url = \"{e}\" is not an http(s) URL"),
                    "write e.g. endpoint_url = \"https://s3.example.com\" or \"http://127.0.0.1:9000\"".to_string(),
                );
            }
            Some(Target::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                // An S3-compatible service usually wants path-style requests.
                path_style: u.path_style.unwrap_or(endpoint.is_some()),
                endpoint,
                region: u.region.clone(),
                credentials_file: (!u.credentials_file.is_empty())
                    .then(|| PathBuf::from(&u.credentials_file)),
                profile: u.profile.clone(),
            })
        } else if let Some(path) = u.url.strip_prefix("file://") {
            if !path.starts_with('/') {
                c.fail(
                    "url",
                    format!("upload.url = \"{}\" is not an absolute file URL", u.url),
                    "write url = \"file:///mnt/share/frames\" (three slashes: file:// and an absolute path)".to_string(),
                );
            }
            check_dots(c, &u.url, path);
            Some(Target::Dir(PathBuf::from(path)))
        } else {
            c.fail(
                "url",
                format!("upload.url = \"{}\" is neither s3:// nor file://", u.url),
                "write url = \"s3://bucket/prefix\" for object storage or \"file:///mnt/share\" for a mounted directory".to_string(),
            );
            None
        };
        let windows = u
            .windows
            .iter()
            .filter_map(|w| {
                let parsed = parse_window(w);
                if parsed.is_none() {
                    c.fail(
                        "windows",
                        format!("upload.windows holds \"{w}\", which is not a time window"),
                        "write windows = [\"22:00-06:00\"] (local time, HH:MM-HH:MM, start and end apart; it may wrap midnight)".to_string(),
                    );
                }
                parsed
            })
            .collect();
        let initial = c.int("retry_initial_ms", u.retry_initial_ms, 1, 3_600_000);
        let max = c.int("retry_max_ms", u.retry_max_ms, 1, 3_600_000);
        if max < initial && !c.failed("retry_initial_ms") && !c.failed("retry_max_ms") {
            c.fail(
                "retry_max_ms",
                format!("upload.retry_max_ms ({max}) is less than retry_initial_ms ({initial})"),
                "make retry_max_ms at least retry_initial_ms".to_string(),
            );
        }
        UploadConfig {
            target,
            request_timeout: Duration::from_secs_f64(
                c.float(
                    "request_timeout_secs",
                    u.request_timeout_secs,
                    |v| v > 0.0 && v <= 3600.0,
                    "greater than 0, at most 3600, e.g. 30",
                )
                .max(0.001),
            ),
            max_bytes_per_sec: c.int("max_bytes_per_sec", u.max_bytes_per_sec, 0, i64::MAX) as u64,
            busy_max_bytes_per_sec: c.int(
                "busy_max_bytes_per_sec",
                u.busy_max_bytes_per_sec,
                0,
                i64::MAX,
            ) as u64,
            windows,
            docked_file: (!u.docked_file.is_empty()).then(|| PathBuf::from(&u.docked_file)),
            retry_initial: Duration::from_millis(initial as u64),
            retry_max: Duration::from_millis(max as u64),
        }
    }

    /// The defaults, delivering to the directory `root`.
    pub(crate) fn to_dir(root: PathBuf) -> UploadConfig {
        let mut config = crate::config::Config::default().upload;
        config.target = Some(Target::Dir(root));
        config
    }

    /// This config with the live keys of `new` ([`LIVE_KEYS`]).
    pub(crate) fn with_live_changes(&self, new: &UploadConfig) -> UploadConfig {
        UploadConfig {
            target: self.target.clone(),
            ..new.clone()
        }
    }

    /// Whether uploading is allowed at `minute` (minutes since local midnight).
    fn allowed(&self, minute: u16) -> Result<(), &'static str> {
        if !self.windows.is_empty() && !self.windows.iter().any(|w| w.contains(minute)) {
            return Err("outside the upload windows");
        }
        if let Some(file) = &self.docked_file
            && !file.exists()
        {
            return Err("not docked");
        }
        Ok(())
    }
}

/// Minutes since local midnight.
fn local_minute() -> u16 {
    let now = jiff::Zoned::now();
    (now.hour() as u16) * 60 + now.minute() as u16
}

/// Build the destination of `target` (credentials are read here).
pub(crate) fn destination(
    target: &Target,
    config: &UploadConfig,
) -> Result<Box<dyn Destination>, DeliveryError> {
    match target {
        Target::Dir(root) => Ok(Box::new(FileDestination::new(root.clone()))),
        Target::S3 { .. } => Ok(Box::new(super::s3::S3Destination::new(target, config)?)),
    }
}

/// The endpoint a bucket is reached at: the configured one, else AWS's for the region.
pub(crate) fn endpoint_url(endpoint: &Option<String>, region: &str) -> String {
    endpoint
        .clone()
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"))
}

/// A target for logs and reports, without credentials.
pub(crate) fn describe(target: &Target) -> String {
    match target {
        Target::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            ..
        } => format!(
            "s3://{bucket}/{prefix} at {}",
            endpoint_url(endpoint, region)
        ),
        Target::Dir(root) => format!("file://{}", root.display()),
    }
}

/// The object key prefix of a target.
pub(crate) fn prefix(target: &Target) -> &str {
    match target {
        Target::S3 { prefix, .. } => prefix,
        Target::Dir(_) => "",
    }
}

/// The next wait after a failure: doubling from `initial` to `max`, each with up to
/// ±25 % jitter so a fleet that lost its network together does not retry together.
pub(crate) struct Backoff {
    next: Duration,
    rng: crate::capture::synthetic::Rng,
}

impl Backoff {
    pub(crate) fn new(seed: u64) -> Self {
        Backoff {
            next: Duration::ZERO,
            rng: crate::capture::synthetic::Rng::new(seed),
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Duration::ZERO;
    }

    pub(crate) fn failed(&mut self, config: &UploadConfig) -> Duration {
        self.next = if self.next.is_zero() {
            config.retry_initial
        } else {
            (self.next * 2).min(config.retry_max)
        };
        let jitter = 0.75 + 0.5 * f64::from(self.rng.below(1000)) / 1000.0;
        self.next.mul_f64(jitter)
    }
}

/// Whether the detector runs flat out: in `session.run` for at least
/// [`Self::BUSY_SHARE`] of the last second (cameras share one session, so that is a
/// share of wall time). A detector that waits for its cameras leaves the cores free
/// between frames, and a drain at full speed takes nothing measurable from it. One that
/// never waits loses to any drain, whatever the uploader's scheduling class: the
/// kernel's file, network and journal work on the uploader's behalf is not in that
/// class. Then the uploader slows to `busy_max_bytes_per_sec`.
struct DetectorLoad {
    created: Instant,
    /// The current window's start and the detector's total run time then; `None` until
    /// the first inference (or [`Self::NO_DETECTOR`] without one), so a pipeline's
    /// start-up is not taken for spare time.
    window: Option<(Instant, u64)>,
    busy: bool,
}

impl DetectorLoad {
    const WINDOW: Duration = Duration::from_secs(1);
    const BUSY_SHARE: f64 = 0.8;
    /// With no inference by then, the detector is taken to be idle (a camera that
    /// never came up must not hold the drain back).
    const NO_DETECTOR: Duration = Duration::from_secs(5);

    fn new(now: Instant) -> Self {
        DetectorLoad {
            created: now,
            window: None,
            // Until measured: the detector comes first.
            busy: true,
        }
    }

    /// Whether the detector was busy over the last complete window before `now`.
    fn busy(&mut self, metrics: &Metrics, now: Instant) -> bool {
        let inference = metrics.stage(Stage::Inference);
        let ran = inference.sum_ns();
        match self.window {
            None => {
                if inference.count() > 0 || now - self.created >= Self::NO_DETECTOR {
                    self.window = Some((now, ran));
                }
            }
            Some((start, ran_then)) => {
                let elapsed = now - start;
                if elapsed >= Self::WINDOW {
                    let share = ran.saturating_sub(ran_then) as f64 / elapsed.as_nanos() as f64;
                    let busy = share >= Self::BUSY_SHARE;
                    if busy != self.busy {
                        tracing::debug!(share, busy, "detector load changed");
                    }
                    self.busy = busy;
                    self.window = Some((now, ran));
                }
            }
        }
        self.busy
    }
}

/// The rate limit to keep: `max_bytes_per_sec`, or the lower busy rate while the
/// detector is busy (0: no limit).
fn rate_limit(config: &UploadConfig, busy: bool) -> (u64, bool) {
    let (max, slow) = (config.max_bytes_per_sec, config.busy_max_bytes_per_sec);
    if busy && slow > 0 && (max == 0 || slow < max) {
        (slow, true)
    } else {
        (max, false)
    }
}

/// The uploader stage.
pub(crate) struct Uploader {
    spool: SharedSpool,
    target: Target,
    /// Built at the first attempt and again after a failure to build it (credentials
    /// that are missing now may be there later): capture goes on meanwhile.
    destination: Option<Box<dyn Destination>>,
    config: UploadConfig,
    metrics: Arc<Metrics>,
    load: DetectorLoad,
}

impl Uploader {
    /// The uploader for `config`'s `[upload]`, or `None` when no destination is set.
    pub(crate) fn build(
        config: &Config,
        spool: SharedSpool,
        metrics: Arc<Metrics>,
    ) -> Option<Uploader> {
        let upload = &config.upload;
        Some(Uploader {
            spool,
            target: upload.target.clone()?,
            destination: None,
            config: upload.clone(),
            metrics,
            load: DetectorLoad::new(Instant::now()),
        })
    }

    /// One step: deliver the best waiting entry if uploading is allowed now. Returns
    /// how long to wait before the next step.
    fn step(&mut self, backoff: &mut Backoff, failing: &mut bool) -> Duration {
        if let Err(why) = self.config.allowed(local_minute()) {
            event::upload_paused(&self.metrics, why);
            return Duration::from_secs(1);
        }
        let t0 = Instant::now();
        let delivered = match &mut self.destination {
            Some(d) => deliver_one(&self.spool, d.as_mut(), prefix(&self.target)),
            None => destination(&self.target, &self.config).and_then(|d| {
                tracing::info!(destination = %d.describe(), "uploading");
                deliver_one(
                    &self.spool,
                    self.destination.insert(d).as_mut(),
                    prefix(&self.target),
                )
            }),
        };
        match delivered {
            Ok(Delivery::Delivered { id, bytes }) => {
                if std::mem::take(failing) {
                    event::upload_recovered(&self.metrics);
                }
                backoff.reset();
                let (limit, yielding) =
                    rate_limit(&self.config, self.load.busy(&self.metrics, Instant::now()));
                event::uploaded(&self.metrics, &id, bytes, yielding);
                throttle(bytes, t0.elapsed(), limit)
            }
            Ok(Delivery::Corrupt { id, reason }) => {
                event::upload_corrupt(&self.metrics, &id, &reason);
                Duration::ZERO
            }
            Ok(Delivery::Empty) => {
                event::upload_idle(&self.metrics);
                Duration::from_millis(500)
            }
            Err(e) => {
                if matches!(e, DeliveryError::Denied(_)) {
                    // Rebuilt at the next attempt: credentials are read again.
                    self.destination = None;
                }
                let wait = backoff.failed(&self.config);
                event::upload_failed(&self.metrics, &e, wait, !*failing);
                *failing = true;
                wait
            }
        }
    }

    pub(crate) fn run(mut self, ctx: &StageContext) -> Result<(), StageFailure> {
        let mut backoff = Backoff::new(u64::from(std::process::id()));
        let mut failing = false;
        loop {
            let wait = self.step(&mut backoff, &mut failing);
            if self.wait_out(ctx, wait) {
                return Ok(());
            }
        }
    }

    /// Wait `delay` while answering commands; true on `Shutdown`.
    fn wait_out(&mut self, ctx: &StageContext, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            match ctx
                .commands
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => return true,
                Ok(Command::Reload(new)) => {
                    let next = self.config.with_live_changes(&new.upload);
                    if next.request_timeout != self.config.request_timeout
                        || next.max_bytes_per_sec != self.config.max_bytes_per_sec
                    {
                        // The destination holds both: make a new one.
                        self.destination = None;
                    }
                    self.config = next;
                }
                Ok(Command::Flush { done }) => {
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }
}

/// How long to pause after sending `bytes` in `took` to stay under `max_bytes_per_sec`.
pub(crate) fn throttle(bytes: u64, took: Duration, max_bytes_per_sec: u64) -> Duration {
    if max_bytes_per_sec == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(bytes as f64 / max_bytes_per_sec as f64).saturating_sub(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_wrap_midnight_and_a_docking_file_gates_uploads() {
        let w = parse_window("22:00-06:00").expect("window");
        assert!(w.contains(23 * 60) && w.contains(0) && w.contains(5 * 60 + 59));
        assert!(!w.contains(6 * 60) && !w.contains(12 * 60) && !w.contains(21 * 60 + 59));
        let day = parse_window("09:30-17:00").expect("window");
        assert!(day.contains(9 * 60 + 30) && !day.contains(17 * 60));
        for bad in ["9-17", "25:00-01:00", "10:60-11:00", "noon"] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let docked = dir.path().join("docked");
        let config = UploadConfig {
            target: None,
            request_timeout: Duration::from_secs(1),
            max_bytes_per_sec: 0,
            busy_max_bytes_per_sec: 0,
            windows: vec![w],
            docked_file: Some(docked.clone()),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(15),
        };
        assert_eq!(config.allowed(12 * 60), Err("outside the upload windows"));
        assert_eq!(config.allowed(23 * 60), Err("not docked"));
        std::fs::write(&docked, "").expect("dock");
        assert_eq!(config.allowed(23 * 60), Ok(()));
    }

    #[test]
    fn the_backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let config = UploadConfig {
            target: None,
            request_timeout: Duration::from_secs(1),
            max_bytes_per_sec: 0,
            busy_max_bytes_per_sec: 0,
            windows: Vec::new(),
            docked_file: None,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(15),
        };
        let mut b = Backoff::new(3);
        let waits: Vec<f64> = (0..12).map(|_| b.failed(&config).as_secs_f64()).collect();
        let nominal = [
            0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 15.0, 15.0, 15.0, 15.0,
        ];
        for (w, n) in waits.iter().zip(nominal) {
            assert!(*w >= 0.75 * n && *w <= 1.25 * n, "{waits:?}");
        }
        assert!(waits.windows(2).any(|p| p[0] != p[1]), "jittered");
        b.reset();
        assert!(b.failed(&config) <= Duration::from_millis(125));
    }

    #[test]
    fn the_uploader_slows_while_the_detector_runs_flat_out() {
        let (metrics, t0) = (Metrics::default(), Instant::now());
        let ms = Duration::from_millis;
        let mut load = DetectorLoad::new(t0);
        // Busy until measured: no inference yet, then a window that is not complete.
        assert!(load.busy(&metrics, t0 + ms(200)));
        metrics.record(Stage::Inference, ms(15));
        assert!(load.busy(&metrics, t0 + ms(300)), "the window starts now");
        // 850 ms of session.run in the next second: busy.
        for _ in 0..50 {
            metrics.record(Stage::Inference, ms(17));
        }
        assert!(load.busy(&metrics, t0 + ms(900)), "window not complete");
        assert!(load.busy(&metrics, t0 + ms(1300)));
        // 30 fps of 17 ms runs: half the time waiting for the camera.
        for _ in 0..30 {
            metrics.record(Stage::Inference, ms(17));
        }
        assert!(!load.busy(&metrics, t0 + ms(2300)));
        assert!(
            !load.busy(&metrics, t0 + ms(2500)),
            "holds until the window ends"
        );
        // A detector that never ran is idle after NO_DETECTOR.
        let mut idle = DetectorLoad::new(t0);
        let none = Metrics::default();
        assert!(idle.busy(&none, t0 + ms(4900)));
        assert!(idle.busy(&none, t0 + ms(5000)));
        assert!(!idle.busy(&none, t0 + ms(6000)));

        let mut config = UploadConfig::to_dir("/tmp".into());
        config.busy_max_bytes_per_sec = 100_000;
        assert_eq!(rate_limit(&config, false), (0, false));
        assert_eq!(rate_limit(&config, true), (100_000, true));
        config.max_bytes_per_sec = 50_000;
        assert_eq!(rate_limit(&config, true), (50_000, false), "already slower");
        config.max_bytes_per_sec = 1_000_000;
        assert_eq!(rate_limit(&config, true), (100_000, true));
        config.busy_max_bytes_per_sec = 0;
        assert_eq!(
            rate_limit(&config, true),
            (1_000_000, false),
            "0: no slowdown"
        );
    }

    #[test]
    fn a_busy_detector_spaces_deliveries_to_the_busy_rate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = crate::store::upload::tests::spool_of(
            &dir.path().join("spool"),
            &[0.5, 0.5],
            &[7u8; 50_000],
        );
        std::fs::create_dir(dir.path().join("dest")).expect("create the destination");
        let config = Config {
            upload: UploadConfig {
                busy_max_bytes_per_sec: 100_000,
                ..UploadConfig::to_dir(dir.path().join("dest"))
            },
            ..Config::default()
        };
        let metrics = Arc::new(Metrics::default());
        let mut uploader = Uploader::build(&config, spool.clone(), metrics.clone()).expect("built");
        let (mut backoff, mut failing) = (Backoff::new(1), false);
        // No detector window measured yet: the detector comes first.
        let t0 = Instant::now();
        let wait = uploader.step(&mut backoff, &mut failing);
        let bytes = metrics
            .uploaded_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(bytes > 50_000, "{bytes}");
        let due = Duration::from_secs_f64(bytes as f64 / 100_000.0);
        assert!(
            wait <= due && wait + t0.elapsed() >= due,
            "{wait:?} for {bytes} bytes"
        );
        assert_eq!(metrics.upload_state(), "yielding");
        // With the busy rate off, the next one goes at full speed.
        uploader.config.busy_max_bytes_per_sec = 0;
        assert_eq!(uploader.step(&mut backoff, &mut failing), Duration::ZERO);
        assert_eq!(metrics.upload_state(), "uploading");
        assert_eq!(spool.lock().expect("spool").len(), 0);
    }

    #[test]
    fn the_bandwidth_limit_spaces_uploads() {
        assert_eq!(throttle(100_000, Duration::ZERO, 0), Duration::ZERO);
        assert_eq!(
            throttle(100_000, Duration::from_millis(200), 100_000),
            Duration::from_millis(800)
        );
        assert_eq!(
            throttle(100_000, Duration::from_secs(2), 100_000),
            Duration::ZERO
        );
    }
}
