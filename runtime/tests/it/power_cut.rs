//! Crash safety of the spool with the real `framesift` binary: however a daemon dies —
//! the power cut under it, or `kill -9` — every entry it reported kept reaches the
//! destination once and intact after the restart's recovery, and the spool is left
//! clean.
//!
//! After each restart (`framesift upload --once`, which recovers the spool and drains
//! it to a `file://` destination) the tests check:
//! 1. every id logged as `kept a frame` before the daemon died is in the destination as
//!    `.jpg` and `.json`, unless it was logged as evicted (the spool logs an eviction
//!    before it unlinks the entry, so none goes without a trace);
//! 2. every sidecar in the destination parses and names its image, whose size and
//!    sha256 match it; every image has its sidecar; no temporary file is left there;
//! 3. the spool holds no entry and its `.tmp/` is empty;
//! 4. no id is in the destination twice.
//!
//! `power_cuts_on_ext4_and_xfs_lose_no_committed_entry` puts the spool on a
//! loop-mounted ext4 image, then an XFS one, and cuts the power with `FS_IOC_SHUTDOWN`
//! (`NOLOGFLUSH`: whatever is not on the disk yet is lost); mounting the image again
//! replays its journal and leaves what a power loss leaves. It cuts at each named
//! protocol point (the daemon stops itself there: `FRAMESIFT_FAULTS=<point>=stop@<n>`)
//! and at random moments. The destination is on the host's filesystem, so what the
//! uploader confirmed survives the cut. It needs root, `/dev/loop-control`,
//! `mkfs.ext4`, `mkfs.xfs`, `unshare` and `mount` (scripts/setup-test-servers.sh
//! installs them); without them it is skipped, or fails when
//! `FRAMESIFT_REQUIRE_SERVERS=1`. Its work runs in a private mount namespace, so no
//! mount is seen outside the test or outlives it.
//!
//! `kill_9_during_capture_and_upload_loses_nothing` needs nothing special: it SIGKILLs
//! the daemon at random moments while the keeper and the uploader are both busy.
//!
//! Random moments come from a seeded generator; each test prints its seed, and
//! `FRAMESIFT_POWER_CUT_SEED=<seed>` runs the same plan with the same delays again.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    env, fmt,
    fs::{self, File},
    io::Write,
    os::unix::{io::AsRawFd, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread::sleep,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sha2::Digest;

use crate::{files_under, framesift, text};

/// Set for the inner power-cut test, run in a private mount namespace.
const INNER: &str = "FRAMESIFT_POWER_CUT_INNER";
/// The inner test's name in the `it` binary.
const INNER_TEST: &str = "power_cut::power_cuts_in_a_private_mount_namespace";
const SEED_VAR: &str = "FRAMESIFT_POWER_CUT_SEED";

/// Logged (at debug) once an entry is committed.
const KEPT: &str = "kept a frame";
/// Logged (at info) for each entry the disk budget evicts.
const EVICTED: &str = "spool: evicted a lower-value entry";
/// Logged (at debug) once the store confirmed an entry and it left the spool.
const UPLOADED: &str = " uploaded id=";

/// The spool and upload protocol points a cut can stop at.
const POINTS: [&str; 7] = [
    "spool-image-synced",
    "spool-image-renamed",
    "spool-sidecar-renamed",
    "spool-committed",
    "spool-evicting",
    "spool-sidecar-removed",
    "upload-confirmed",
];
/// Random cuts per filesystem, besides two at each protocol point.
const RANDOM_CUTS: usize = 12;
/// Rounds of the kill -9 test.
const KILL_ROUNDS: usize = 20;
/// Each filesystem image (sparse; XFS wants at least 300 MiB).
const IMAGE_BYTES: u64 = 512 << 20;
/// Longest wait for a daemon to keep its first frame or to stop at its fault point.
const WAIT: Duration = Duration::from_secs(20);

#[test]
fn power_cuts_on_ext4_and_xfs_lose_no_committed_entry() {
    let tools = match Tools::find() {
        Ok(tools) => tools,
        Err(why) if env::var("FRAMESIFT_REQUIRE_SERVERS").is_ok_and(|v| v == "1") => {
            panic!("FRAMESIFT_REQUIRE_SERVERS=1, but the power-cut test cannot run: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let exe = env::current_exe().expect("the test binary's path");
    let out = Command::new(&tools.unshare)
        .args(["--mount", "--propagation", "private"])
        .arg(&exe)
        .args(["--exact", INNER_TEST, "--nocapture", "--include-ignored"])
        .args(["--test-threads", "1"])
        .env(INNER, "1")
        .output()
        .expect("spawn unshare");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "the power cuts in a private mount namespace failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "{INNER_TEST} did not run:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    eprint!("{stderr}");
}

#[test]
#[ignore = "run by power_cuts_on_ext4_and_xfs_lose_no_committed_entry, as root, in a private mount namespace"]
fn power_cuts_in_a_private_mount_namespace() {
    if env::var_os(INNER).is_none() {
        return;
    }
    let tools = Tools::find().expect("the outer test checked the tools");
    let (mut rng, seed) = Rng::seeded();
    eprintln!("power cuts: seed {seed} ({SEED_VAR}={seed} replays this plan)");
    let work = workdir("power-cut-");
    let started = Instant::now();
    let mut total = Figures::default();
    for kind in [FsKind::Ext4, FsKind::Xfs] {
        let t0 = Instant::now();
        let figures = power_cuts_on(kind, &tools, &mut rng, seed, work.path());
        eprintln!(
            "{}: {} in {:.1} s",
            kind.name(),
            figures,
            t0.elapsed().as_secs_f64()
        );
        total.add(&figures);
    }
    eprintln!(
        "power cuts in total: {} in {:.1} s",
        total,
        started.elapsed().as_secs_f64()
    );
    a_disk_that_fills_up_under_the_daemon(&tools, work.path());
}

/// Another program fills the spool's disk while the daemon keeps frames: the daemon
/// goes on, drops or evicts (each counted in its summary), leaves no half-written
/// entry, and what it kept is delivered intact once there is room again.
fn a_disk_that_fills_up_under_the_daemon(tools: &Tools, work: &Path) {
    let ctx = "full disk";
    let dir = work.join("full-disk");
    fs::create_dir_all(&dir).expect("create the full-disk dir");
    let disk = LoopMount::create_sized(tools, FsKind::Ext4, &dir, 48 << 20);
    let spool = disk.point.join("spool");
    let dest = dir.join("dest");
    fs::create_dir(&dest).expect("create the share");
    let config = dir.join("full.toml");
    fs::write(
        &config,
        "[policy]\nmin_value = 0.0\n[keep]\ntarget_rate = 0.0\ndedupe_distance = 0.0\nwindow_secs = 0.5\ncapacity = 16\n\
         [spool]\nmin_free_bytes = 0\n",
    )
    .expect("write the config");
    let log = dir.join("daemon.log");
    let child = framesift(&[
        "run",
        "--config",
        utf8(&config),
        "--spool-dir",
        utf8(&spool),
        "--max-frames",
        "400",
    ])
    .env("FRAMESIFT_LOG", "warn,framesift=debug")
    .env("NO_COLOR", "1")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(File::create(&log).expect("create the log"))
    .spawn()
    .expect("spawn framesift run");
    let start = Instant::now();
    while ids_logged(&fs::read(&log).unwrap_or_default(), KEPT).is_empty() {
        assert!(start.elapsed() < WAIT, "{ctx}: nothing kept in {WAIT:?}");
        sleep(Duration::from_millis(20));
    }
    // Fill every block that is left, as root (the reserve too).
    let filler = disk.point.join("filler");
    let mut file = File::create(&filler).expect("create the filler");
    let chunk = vec![0x5au8; 64 << 10];
    let mut filled = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => filled += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("{ctx}: filling the disk: {e}"),
        }
    }
    let _ = file.sync_all();
    drop(file);
    let out = child.wait_with_output().expect("wait for framesift run");
    let summary = text(&out.stdout);
    let log_text = text(&fs::read(&log).unwrap_or_default());
    assert!(
        out.status.success(),
        "{ctx}: the daemon did not survive the full disk ({}):\n{summary}\n{}",
        out.status,
        tail(log_text.as_bytes())
    );
    assert!(
        summary.contains("400 acquired, 400 inferred"),
        "{ctx}: {summary}"
    );
    let dropped_line = summary
        .lines()
        .find(|l| l.trim_start().starts_with("dropped"))
        .unwrap_or_else(|| panic!("{ctx}: no dropped line: {summary}"));
    let evicted_line = summary
        .lines()
        .find(|l| l.trim_start().starts_with("spool "))
        .unwrap_or_else(|| panic!("{ctx}: no spool line: {summary}"));
    assert!(
        dropped_line.contains("disk_full"),
        "{ctx}: a disk filled by another program drops frames, counted as disk_full:\n{summary}"
    );
    // Room again: every entry in the spool is whole, and is delivered.
    fs::remove_file(&filler).expect("remove the filler");
    let kept_there = entries_in(&spool);
    assert!(!kept_there.is_empty(), "{ctx}: the spool is empty");
    let drain_config = dir.join("drain.toml");
    fs::write(
        &drain_config,
        format!("[upload]\nurl = \"file://{}\"\n", dest.display()),
    )
    .expect("write the drain config");
    let drained = drain(&drain_config, &spool, ctx);
    assert_eq!(
        drained.recovered.half_written + drained.recovered.corrupt,
        0,
        "{ctx}: a full disk left a half-written or corrupt entry"
    );
    let delivered = ids_in(&dest);
    assert_eq!(
        delivered, kept_there,
        "{ctx}: every entry in the spool was delivered"
    );
    for path in files_under(&dest) {
        if path.extension().is_some_and(|e| e == "json") {
            let id = path
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            check_sidecar(&path, &id, ctx);
        }
    }
    eprintln!(
        "full disk: {} MiB filled by another file while the daemon ran; {}; {}; {} entries delivered intact afterwards",
        filled >> 20,
        dropped_line.trim(),
        evicted_line.trim(),
        delivered.len()
    );
}

#[test]
fn kill_9_during_capture_and_upload_loses_nothing() {
    let (mut rng, seed) = Rng::seeded();
    eprintln!("kill -9: seed {seed} ({SEED_VAR}={seed} replays these delays)");
    let started = Instant::now();
    let work = workdir("kill-9-");
    let (dest, spool) = (work.path().join("dest"), work.path().join("spool"));
    fs::create_dir(&dest).expect("create the share");
    let (daemon_config, drain_config) = write_configs(work.path(), &dest);
    let mut ledger = Ledger::default();
    let mut recovered = Recovered::default();
    let mut committed_per_round = Vec::new();
    for round in 0..KILL_ROUNDS {
        let delay = Duration::from_millis(rng.between(300, 2000));
        let ctx = format!(
            "seed {seed}, round {}/{KILL_ROUNDS}, kill {} ms after the first kept frame",
            round + 1,
            delay.as_millis()
        );
        let log = work.path().join(format!("round-{round:02}.log"));
        let mut daemon = Daemon::start(&daemon_config, &spool, &log, None);
        daemon.wait_for_kept(&ctx);
        sleep(delay);
        assert!(
            daemon.alive(),
            "{ctx}: the daemon ended before it was killed:\n{}",
            tail(&daemon.log())
        );
        let status = daemon.kill();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{ctx}: the daemon was not killed by SIGKILL ({status})"
        );
        // A killed process loses nothing it wrote: its whole log and its spool stand.
        let log = daemon.log();
        recovered.add(&daemon_recovery(&log));
        let at_death = entries_in(&spool);
        committed_per_round.push(ledger.record_death(&log, &log, &at_death, &spool, &dest, &ctx));
    }
    let ctx = format!("seed {seed}, after {KILL_ROUNDS} rounds");
    let drained = drain(&drain_config, &spool, &ctx);
    recovered.add(&drained.recovered);
    ledger.drained();
    let delivered = ledger.check(&dest, &spool, &ctx);
    assert!(
        committed_per_round.iter().all(|&n| n > 0),
        "{ctx}: a round committed nothing before its kill: {committed_per_round:?}"
    );
    assert!(delivered > 0, "{ctx}: the destination is empty");
    eprintln!(
        "kill -9: {KILL_ROUNDS} kills, {} committed ids checked ({} evicted, {} of those delivered anyway, \
         {} in part), recovery removed {recovered}; \
         {delivered} entries delivered (upload --once: {}), {:.1} s",
        ledger.committed.len(),
        ledger.evicted.len(),
        ledger.resurrected,
        ledger.partial,
        drained.delivered,
        started.elapsed().as_secs_f64()
    );
}

/// Cut the power `RANDOM_CUTS + 2 * POINTS.len()` times under daemons writing to a spool
/// on a fresh `kind` image, recovering and checking after each cut.
fn power_cuts_on(kind: FsKind, tools: &Tools, rng: &mut Rng, seed: u64, work: &Path) -> Figures {
    let dir = work.join(kind.name());
    fs::create_dir(&dir).expect("create the filesystem's work dir");
    // On the host's filesystem: a confirmed upload survives the cut.
    let dest = dir.join("dest");
    fs::create_dir(&dest).expect("create the share");
    let (daemon_config, drain_config) = write_configs(&dir, &dest);
    let mut disk = LoopMount::create(tools, kind, &dir);
    let spool = disk.point.join("spool");
    let plan = cut_plan(rng);
    let mut ledger = Ledger::default();
    let mut figures = Figures::default();
    for (i, cut) in plan.iter().enumerate() {
        let ctx = format!(
            "seed {seed}, {}, cut {}/{} ({cut})",
            kind.name(),
            i + 1,
            plan.len()
        );
        let log = dir.join(format!("cut-{i:02}.log"));
        let mut daemon = Daemon::start(&daemon_config, &spool, &log, cut.faults().as_deref());
        let (at_cut, before_cut) = match cut {
            Cut::Stop { .. } => {
                daemon.wait_stopped(&ctx);
                figures.stop_cuts += 1;
                (entries_in(&spool), daemon.log())
            }
            Cut::Random { delay } => {
                daemon.wait_for_kept(&ctx);
                sleep(*delay);
                assert!(
                    daemon.alive(),
                    "{ctx}: the daemon ended before the cut:\n{}",
                    tail(&daemon.log())
                );
                figures.random_cuts += 1;
                (entries_in(&spool), daemon.log())
            }
        };
        disk.cut_power(&ctx);
        let status = daemon.kill();
        if let Cut::Stop { .. } = cut {
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "{ctx}: the stopped daemon was not ended by SIGKILL ({status})"
            );
        }
        let whole = daemon.log();
        disk.remount();
        let committed = ledger.record_death(&before_cut, &whole, &at_cut, &spool, &dest, &ctx);
        if let Cut::Random { .. } = cut {
            figures.committed_before_random += committed;
        }
        let drained = drain(&drain_config, &spool, &ctx);
        ledger.drained();
        figures.recovered.add(&drained.recovered);
        figures.drained += drained.delivered;
        figures.delivered = ledger.check(&dest, &spool, &ctx);
    }
    figures.committed = ledger.committed.len();
    figures.evicted = ledger.evicted.len();
    figures.resurrected = ledger.resurrected;
    let ctx = format!("seed {seed}, {}", kind.name());
    assert!(figures.delivered > 0, "{ctx}: the destination is empty");
    assert!(
        figures.committed_before_random >= figures.random_cuts,
        "{ctx}: the random cuts came before anything was committed: {figures}"
    );
    assert!(
        figures.drained > 0,
        "{ctx}: no cut left an entry in the spool for the restart to deliver: {figures}"
    );
    figures
}

/// Where to cut the power.
enum Cut {
    /// When the daemon passes `point` for the `n`th time (from 0).
    Stop { point: &'static str, n: u64 },
    /// This long after the daemon's first kept frame.
    Random { delay: Duration },
}

impl Cut {
    fn faults(&self) -> Option<String> {
        match self {
            Cut::Stop { point, n } => Some(format!("{point}=stop@{n}")),
            Cut::Random { .. } => None,
        }
    }
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cut::Stop { point, n } => write!(f, "stopped at {point}@{n}"),
            Cut::Random { delay } => write!(
                f,
                "random, {} ms after the first kept frame",
                delay.as_millis()
            ),
        }
    }
}

/// Each protocol point at an early and a late pass, and the random cuts, shuffled.
fn cut_plan(rng: &mut Rng) -> Vec<Cut> {
    let (early, late) = (rng.between(1, 3), rng.between(5, 7));
    let mut plan: Vec<Cut> = POINTS
        .iter()
        .flat_map(|&point| [early, late].map(|n| Cut::Stop { point, n }))
        .collect();
    plan.extend((0..RANDOM_CUTS).map(|_| Cut::Random {
        delay: Duration::from_millis(rng.between(100, 1500)),
    }));
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.between(0, i as u64) as usize);
    }
    plan
}

/// The daemon's config and the restart's (`upload --once`, no bandwidth limit).
///
/// The daemon keeps every frame it sees (five to ten a second, 150–300 KB each) into a
/// 1 MiB spool and uploads at 800 KB/s (three or four entries a second, however busy the
/// detector: `busy_max_bytes_per_sec = 0`), so the keeper
/// and the uploader are always busy, the spool always holds a few entries and the
/// budget evicts a few entries a second.
fn write_configs(dir: &Path, dest: &Path) -> (PathBuf, PathBuf) {
    let url = format!("url = \"file://{}\"\n", dest.display());
    let daemon = dir.join("daemon.toml");
    fs::write(
        &daemon,
        format!(
            "[policy]\nmin_value = 0.0\n\
             [keep]\ntarget_rate = 0.0\ndedupe_distance = 0.0\nwindow_secs = 0.5\ncapacity = 16\n\
             [spool]\nmax_bytes = 1048576\nmin_free_bytes = 0\n\
             [upload]\n{url}max_bytes_per_sec = 800000\nbusy_max_bytes_per_sec = 0\n"
        ),
    )
    .expect("write the daemon's config");
    let drain = dir.join("drain.toml");
    fs::write(&drain, format!("[upload]\n{url}")).expect("write the drain config");
    (daemon, drain)
}

/// `framesift run` with its stderr in a file on the host's filesystem.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, spool: &Path, log: &Path, faults: Option<&str>) -> Daemon {
        let stderr = File::create(log).expect("create the daemon's log");
        let mut cmd = framesift(&[
            "run",
            "--config",
            utf8(config),
            "--spool-dir",
            utf8(spool),
            "--max-frames",
            "1000000",
            "--quiet",
        ]);
        cmd.env("FRAMESIFT_LOG", "warn,framesift=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        match faults {
            Some(faults) => cmd.env("FRAMESIFT_FAULTS", faults),
            None => cmd.env_remove("FRAMESIFT_FAULTS"),
        };
        Daemon {
            child: cmd.spawn().expect("spawn framesift run"),
            log: log.to_path_buf(),
        }
    }

    /// What it has logged so far.
    fn log(&self) -> Vec<u8> {
        fs::read(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait until it has committed an entry.
    fn wait_for_kept(&mut self, ctx: &str) {
        let start = Instant::now();
        while ids_logged(&self.log(), KEPT).is_empty() {
            self.still_waiting(start, ctx, "keep a frame");
            sleep(Duration::from_millis(20));
        }
    }

    /// Wait until it has stopped itself at its fault point.
    fn wait_stopped(&mut self, ctx: &str) {
        let start = Instant::now();
        while process_state(self.child.id()) != Some('T') {
            self.still_waiting(start, ctx, "stop at its fault point");
            sleep(Duration::from_millis(10));
        }
    }

    fn still_waiting(&mut self, start: Instant, ctx: &str, what: &str) {
        assert!(
            self.alive(),
            "{ctx}: the daemon ended before it could {what}:\n{}",
            tail(&self.log())
        );
        assert!(
            start.elapsed() < WAIT,
            "{ctx}: the daemon did not {what} within {WAIT:?}:\n{}",
            tail(&self.log())
        );
    }

    /// SIGKILL (stopped or not) and reap it.
    fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("wait for the daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The state letter of process `pid` (`R`, `S`, `T` for stopped, ...).
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`; comm may hold spaces and parentheses.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The ids of the `event` lines among the complete lines of a log.
fn ids_logged(log: &[u8], event: &str) -> Vec<String> {
    complete_lines(log)
        .lines()
        .filter(|line| line.contains(event))
        .filter_map(|line| field(line, "id"))
        .collect()
}

/// The ids and values of the `kept a frame` lines among the complete lines of a log.
fn kept_logged(log: &[u8]) -> Vec<(String, f32)> {
    complete_lines(log)
        .lines()
        .filter(|line| line.contains(KEPT))
        .filter_map(|line| {
            let value = field(line, "value")?.parse().ok()?;
            Some((field(line, "id")?, value))
        })
        .collect()
}

/// A log up to its last newline.
fn complete_lines(log: &[u8]) -> String {
    let text = String::from_utf8_lossy(log);
    text.rfind('\n')
        .map_or(String::new(), |end| text[..=end].to_string())
}

/// The value of `name=` in a tracing line, without quotes.
fn field(line: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=");
    let start = line.find(&key)? + key.len();
    let value = line[start..].split(' ').next()?;
    Some(value.trim_matches('"').to_string())
}

/// The last lines of a log, for a failure message.
fn tail(log: &[u8]) -> String {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// What recovery removed.
#[derive(Debug, Default, Clone)]
struct Recovered {
    half_written: usize,
    temporary: usize,
    corrupt: usize,
}

impl Recovered {
    fn add(&mut self, other: &Recovered) {
        self.half_written += other.half_written;
        self.temporary += other.temporary;
        self.corrupt += other.corrupt;
    }
}

impl fmt::Display for Recovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} half-written, {} temporary, {} corrupt",
            self.half_written, self.temporary, self.corrupt
        )
    }
}

/// What the daemons' own recoveries removed (`spool ready ... removed_temp=...`).
fn daemon_recovery(log: &[u8]) -> Recovered {
    let text = String::from_utf8_lossy(log);
    let count = |line: &str, name: &str| {
        field(line, name)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let mut out = Recovered::default();
    for line in text.lines().filter(|l| l.contains("spool ready")) {
        out.add(&Recovered {
            half_written: count(line, "removed_partial"),
            temporary: count(line, "removed_temp"),
            corrupt: count(line, "removed_corrupt"),
        });
    }
    out
}

/// What a restart's `upload --once` did.
struct Drained {
    delivered: usize,
    recovered: Recovered,
}

/// The restart: `framesift upload --once` recovers the spool and drains it; exit 0.
fn drain(config: &Path, spool: &Path, ctx: &str) -> Drained {
    let out = framesift(&[
        "upload",
        "--once",
        "--config",
        utf8(config),
        "--spool-dir",
        utf8(spool),
        "--give-up-secs",
        "30",
    ])
    .env("NO_COLOR", "1")
    .output()
    .expect("spawn framesift upload");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{ctx}: framesift upload --once failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let delivered = stdout
        .split_whitespace()
        .skip_while(|w| *w != "uploaded")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{ctx}: no `uploaded N frames` in: {stdout}"));
    // "spool recovered: removed X half-written, Y temporary, Z corrupt"
    let mut recovered = stderr
        .lines()
        .find_map(|line| line.strip_prefix("spool recovered: "))
        .map(|line| {
            let n: Vec<usize> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            assert_eq!(n.len(), 3, "{ctx}: unexpected recovery line: {line}");
            Recovered {
                half_written: n[0],
                temporary: n[1],
                corrupt: n[2],
            }
        })
        .unwrap_or_default();
    recovered.corrupt += stderr.matches("removed corrupt entry").count();
    Drained {
        delivered,
        recovered,
    }
}

/// What the daemons committed and evicted, checked against the destination.
#[derive(Default)]
struct Ledger {
    committed: BTreeSet<String>,
    /// The value each committed id was logged with.
    values: HashMap<String, f32>,
    /// Logged as evicted.
    evicted: BTreeSet<String>,
    /// Evicted entries with part of them in the destination (no sidecar).
    partial: usize,
    /// Committed entries in the spool the next daemon opens.
    spool: BTreeSet<String>,
    /// Evicted ids found in the destination anyway (an eviction is not fsynced: the
    /// entry may come back after a cut and be delivered).
    resurrected: usize,
    /// Destination sidecars already checked against their images (objects never change).
    verified: HashSet<PathBuf>,
}

impl Ledger {
    /// Account for a daemon that died: `before_death` is its log up to its death,
    /// `whole` its whole log, `at_death` the entries in its spool at its death (for a
    /// power cut: just before it), and `spool` and `dest` are as the death left them.
    /// The number of ids it committed.
    ///
    /// An entry that left the spool was delivered or logged as evicted (the spool logs
    /// an eviction before it unlinks the entry); anything else is lost.
    fn record_death(
        &mut self,
        before_death: &[u8],
        whole: &[u8],
        at_death: &BTreeSet<String>,
        spool: &Path,
        dest: &Path,
        ctx: &str,
    ) -> usize {
        let kept = kept_logged(before_death);
        let n = kept.len();
        let uploaded: BTreeSet<String> = ids_logged(whole, UPLOADED).into_iter().collect();
        let evicted: BTreeSet<String> = ids_logged(whole, EVICTED).into_iter().collect();
        let mut waiting = std::mem::take(&mut self.spool);
        for (id, value) in kept {
            self.values.insert(id.clone(), value);
            self.committed.insert(id.clone());
            waiting.insert(id);
        }
        waiting.retain(|id| !uploaded.contains(id) && !evicted.contains(id));
        let on_disk = entries_in(spool);
        let delivered = ids_in(dest);
        let unexplained: Vec<&String> = waiting
            .iter()
            .filter(|id| !on_disk.contains(*id) && !delivered.contains(*id))
            .collect();
        let lost: Vec<&&String> = unexplained
            .iter()
            .filter(|id| at_death.contains(**id))
            .collect();
        assert!(
            lost.is_empty(),
            "{ctx}: {lost:?} were committed and in the spool at the death, and are gone \
             after it without being delivered or logged as evicted"
        );
        assert!(
            unexplained.is_empty(),
            "{ctx}: {unexplained:?} left the spool without being delivered or logged as \
             evicted"
        );
        self.evicted.extend(evicted);
        self.spool = on_disk
            .into_iter()
            .filter(|id| self.values.contains_key(id))
            .collect();
        n
    }

    /// A restart drained the spool.
    fn drained(&mut self) {
        self.spool.clear();
    }

    /// Check invariants (1)–(4) after a restart drained `spool` to `dest`; the number
    /// of entries in the destination.
    fn check(&mut self, dest: &Path, spool: &Path, ctx: &str) -> usize {
        let left: Vec<String> = names_in(spool)
            .into_iter()
            .filter(|n| n.ends_with(".jpg") || n.ends_with(".json"))
            .collect();
        assert!(
            left.is_empty(),
            "{ctx}: the spool still holds {left:?} after upload --once"
        );
        let temporary = names_in(&spool.join(".tmp"));
        assert!(
            temporary.is_empty(),
            "{ctx}: the spool's .tmp/ still holds {temporary:?} after upload --once"
        );
        let mut by_id: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        // A kill between an entry's two objects (or inside one's temporary file) leaves
        // the rest for the next start to deliver, unless the budget evicts the entry
        // first: its image, or a temporary file, then stays without a sidecar. Only an
        // evicted entry may leave that behind; nothing reads an object without its
        // sidecar.
        let mut partial = BTreeSet::new();
        for path in files_under(dest) {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let object = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".tmp"))
                .unwrap_or(&name);
            let id = object
                .strip_suffix(".jpg")
                .or_else(|| object.strip_suffix(".json"))
                .unwrap_or_else(|| panic!("{ctx}: unexpected file {}", path.display()));
            if object != name {
                assert!(
                    self.evicted.contains(id),
                    "{ctx}: a temporary file is left in the destination: {} (its entry was not evicted)",
                    path.display()
                );
                partial.insert(id.to_string());
                continue;
            }
            by_id.entry(id.to_string()).or_default().push(path);
        }
        by_id.retain(|id, paths| {
            let lone_image = paths.len() == 1 && paths[0].extension().is_some_and(|e| e == "jpg");
            let left = lone_image && self.evicted.contains(id);
            if left {
                partial.insert(id.clone());
            }
            !left
        });
        self.partial = partial.len();
        for (id, paths) in &by_id {
            let mut kinds: Vec<String> = paths
                .iter()
                .map(|p| {
                    p.extension()
                        .map_or(String::new(), |e| e.to_string_lossy().into_owned())
                })
                .collect();
            kinds.sort();
            assert!(
                kinds == ["jpg", "json"] && paths[0].parent() == paths[1].parent(),
                "{ctx}: {id} is in the destination as {paths:?}; want one .jpg and one .json side by side"
            );
            let sidecar = dest_sidecar(paths);
            if !self.verified.contains(&sidecar) {
                check_sidecar(&sidecar, id, ctx);
                self.verified.insert(sidecar);
            }
        }
        let missing: Vec<&String> = self
            .committed
            .iter()
            .filter(|id| !self.evicted.contains(*id) && !by_id.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "{ctx}: {} of {} committed entries are not in the destination: {:?}",
            missing.len(),
            self.committed.len(),
            &missing[..missing.len().min(10)]
        );
        self.resurrected = self
            .evicted
            .iter()
            .filter(|id| by_id.contains_key(*id))
            .count();
        by_id.len()
    }
}

fn dest_sidecar(paths: &[PathBuf]) -> PathBuf {
    paths
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .cloned()
        .expect("a sidecar among the paths")
}

/// A delivered sidecar parses, is `id`'s, and matches its image's size and sha256.
fn check_sidecar(sidecar: &Path, id: &str, ctx: &str) {
    let bytes = fs::read(sidecar).expect("read a delivered sidecar");
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{ctx}: {} is not JSON: {e}", sidecar.display()));
    assert_eq!(json["id"], id, "{ctx}: {}", sidecar.display());
    let image = &json["image"];
    let file = image["file"].as_str().unwrap_or_default();
    assert_eq!(file, format!("{id}.jpg"), "{ctx}: {}", sidecar.display());
    let path = sidecar.with_file_name(file);
    let jpeg = fs::read(&path).unwrap_or_else(|e| panic!("{ctx}: {}: {e}", path.display()));
    let sha256: String = sha2::Sha256::digest(&jpeg)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        image["bytes"].as_u64() == Some(jpeg.len() as u64)
            && image["sha256"].as_str() == Some(sha256.as_str()),
        "{ctx}: {} ({} bytes, sha256 {sha256}) does not match its sidecar: {image}",
        path.display(),
        jpeg.len()
    );
}

/// The names in a directory (none if it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The ids of the complete entries (image and sidecar) in a spool.
fn entries_in(spool: &Path) -> BTreeSet<String> {
    let names: BTreeSet<String> = names_in(spool).into_iter().collect();
    names
        .iter()
        .filter_map(|n| n.strip_suffix(".json"))
        .filter(|id| names.contains(&format!("{id}.jpg")))
        .map(str::to_string)
        .collect()
}

/// The ids with a sidecar in the destination.
fn ids_in(dest: &Path) -> BTreeSet<String> {
    files_under(dest)
        .iter()
        .filter_map(|p| {
            p.file_name()?
                .to_str()?
                .strip_suffix(".json")
                .map(str::to_string)
        })
        .collect()
}

/// The figures of one filesystem's cuts.
#[derive(Default)]
struct Figures {
    stop_cuts: usize,
    random_cuts: usize,
    committed: usize,
    committed_before_random: usize,
    evicted: usize,
    resurrected: usize,
    recovered: Recovered,
    /// Entries the restarts delivered (left in the spool by a cut).
    drained: usize,
    /// Entries in the destination.
    delivered: usize,
}

impl Figures {
    fn add(&mut self, other: &Figures) {
        self.stop_cuts += other.stop_cuts;
        self.random_cuts += other.random_cuts;
        self.committed += other.committed;
        self.committed_before_random += other.committed_before_random;
        self.evicted += other.evicted;
        self.resurrected += other.resurrected;
        self.recovered.add(&other.recovered);
        self.drained += other.drained;
        self.delivered += other.delivered;
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cuts ({} at protocol points, {} random, {:.1} ids committed before a random cut on average), \
             {} committed ids checked ({} evicted, {} of those delivered anyway), \
             recovery removed {}; {} entries delivered ({} by the restarts)",
            self.stop_cuts + self.random_cuts,
            self.stop_cuts,
            self.random_cuts,
            self.committed_before_random as f64 / self.random_cuts.max(1) as f64,
            self.committed,
            self.evicted,
            self.resurrected,
            self.recovered,
            self.delivered,
            self.drained
        )
    }
}

/// The programs the power-cut test runs.
struct Tools {
    mkfs_ext4: PathBuf,
    mkfs_xfs: PathBuf,
    unshare: PathBuf,
    mount: PathBuf,
    umount: PathBuf,
}

impl Tools {
    /// The tools, or what is missing.
    fn find() -> Result<Tools, String> {
        let mut tools_missing = Vec::new();
        let mut program = |name: &'static str| {
            find_program(name).unwrap_or_else(|| {
                tools_missing.push(name);
                PathBuf::new()
            })
        };
        let tools = Tools {
            mkfs_ext4: program("mkfs.ext4"),
            mkfs_xfs: program("mkfs.xfs"),
            unshare: program("unshare"),
            mount: program("mount"),
            umount: program("umount"),
        };
        let mut missing = Vec::new();
        if !is_root() {
            missing.push("root".to_string());
        }
        if !Path::new("/dev/loop-control").exists() {
            missing.push("/dev/loop-control".to_string());
        }
        if !tools_missing.is_empty() {
            missing.push(format!(
                "{} (scripts/setup-test-servers.sh installs them)",
                tools_missing.join(", ")
            ));
        }
        if missing.is_empty() {
            Ok(tools)
        } else {
            Err(format!("the power-cut test needs {}", missing.join("; ")))
        }
    }
}

/// `name` in `$PATH` or the sbin directories.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether this process's effective uid is 0.
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            Some(uids.split_whitespace().nth(1)? == "0")
        })
        .unwrap_or(false)
}

#[derive(Clone, Copy)]
enum FsKind {
    Ext4,
    Xfs,
}

impl FsKind {
    fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
        }
    }

    fn mkfs(self, tools: &Tools, image: &Path) -> Command {
        let (program, flags) = match self {
            FsKind::Ext4 => (&tools.mkfs_ext4, ["-q", "-F"]),
            FsKind::Xfs => (&tools.mkfs_xfs, ["-q", "-f"]),
        };
        let mut cmd = Command::new(program);
        cmd.args(flags).arg(image);
        cmd
    }
}

/// A filesystem image mounted through a loop device; unmounted when dropped (also when
/// the test panics), which detaches the loop device.
struct LoopMount {
    image: PathBuf,
    point: PathBuf,
    mount: PathBuf,
    umount: PathBuf,
    mounted: bool,
}

impl LoopMount {
    /// A fresh sparse image of `kind` in `dir`, mounted.
    fn create(tools: &Tools, kind: FsKind, dir: &Path) -> LoopMount {
        LoopMount::create_sized(tools, kind, dir, IMAGE_BYTES)
    }

    /// The same, of `bytes`.
    fn create_sized(tools: &Tools, kind: FsKind, dir: &Path, bytes: u64) -> LoopMount {
        let image = dir.join(format!("{}.img", kind.name()));
        File::create(&image)
            .and_then(|f| f.set_len(bytes))
            .expect("create a sparse image");
        run_tool(&mut kind.mkfs(tools, &image));
        let point = dir.join("mnt");
        fs::create_dir(&point).expect("create the mount point");
        let mut disk = LoopMount {
            image,
            point,
            mount: tools.mount.clone(),
            umount: tools.umount.clone(),
            mounted: false,
        };
        disk.mount();
        disk
    }

    fn mount(&mut self) {
        run_tool(
            Command::new(&self.mount)
                .args(["-o", "loop"])
                .arg(&self.image)
                .arg(&self.point),
        );
        self.mounted = true;
    }

    /// Unmount, retrying a while when the filesystem is busy.
    fn unmount(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..50 {
            let out = Command::new(&self.umount)
                .arg(&self.point)
                .output()
                .map_err(|e| format!("spawn umount: {e}"))?;
            if out.status.success() {
                self.mounted = false;
                return Ok(());
            }
            last = text(&out.stderr);
            sleep(Duration::from_millis(100));
        }
        Err(format!("umount {}: {last}", self.point.display()))
    }

    /// Unmount and mount again: the journal is replayed, leaving what a power loss
    /// leaves.
    fn remount(&mut self) {
        self.unmount().unwrap_or_else(|e| panic!("{e}"));
        self.mount();
    }

    /// Cut the power: shut the filesystem down without flushing its log, so data and
    /// metadata not yet on the disk are lost.
    fn cut_power(&self, ctx: &str) {
        // _IOR('X', 125, __u32), and its flag that skips the log flush.
        const FS_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587D;
        const FS_SHUTDOWN_FLAGS_NOLOGFLUSH: u32 = 2;
        let dir = File::open(&self.point).expect("open the mount point");
        let flags = FS_SHUTDOWN_FLAGS_NOLOGFLUSH;
        #[allow(unsafe_code)]
        // SAFETY: `dir` stays open for the call, and FS_IOC_SHUTDOWN reads one u32
        // through the pointer, which points to `flags`, alive for the call.
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_SHUTDOWN as _, &flags) };
        assert_eq!(
            rc,
            0,
            "{ctx}: FS_IOC_SHUTDOWN on {}: {}",
            self.point.display(),
            std::io::Error::last_os_error()
        );
        assert!(
            File::create(self.point.join("after-the-cut")).is_err(),
            "{ctx}: {} still takes writes after the cut",
            self.point.display()
        );
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = self.unmount();
        }
    }
}

fn run_tool(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A scratch directory in the workspace's target dir (a real disk, not a tmpfs), kept
/// for a post-mortem when the test fails.
struct Workdir(Option<tempfile::TempDir>);

impl Workdir {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("the scratch dir").path()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("the failed test's files are in {}", dir.keep().display());
        }
    }
}

fn workdir(prefix: &str) -> Workdir {
    Workdir(Some(
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("create a scratch dir"),
    ))
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// xorshift64: small and replayable from its seed.
struct Rng(u64);

impl Rng {
    /// From `FRAMESIFT_POWER_CUT_SEED`, else the clock; with the seed.
    fn seeded() -> (Rng, u64) {
        let seed = match env::var(SEED_VAR) {
            Ok(text) => text
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_VAR}={text:?} is not a number")),
            Err(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
        };
        let state = seed ^ 0x9E37_79B9_7F4A_7C15;
        (Rng(if state == 0 { 1 } else { state }), seed)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}
