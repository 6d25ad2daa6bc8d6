//! Delivery to real S3-protocol servers on loopback (`servers.rs`): every kept frame
//! arrives exactly once as an object — image and sidecar, byte for byte — and the spool
//! ends empty, whether the server is up, down at the start, down in the middle, behind a
//! faulty network, or refusing the credentials.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    files_under, framesift, run_frames, run_ok,
    servers::{ACCESS_KEY, BUCKET, FaultProxy, Kind, SECRET_KEY, Server, free_port},
    text,
};

/// A spool's complete entries: id → (image, sidecar).
type Entries = BTreeMap<String, (Vec<u8>, Vec<u8>)>;

/// A spool of kept frames, made once by `framesift run` and copied for each test.
fn template() -> &'static (PathBuf, Entries) {
    static TEMPLATE: OnceLock<(PathBuf, Entries)> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = crate::workspace().join("target/tmp/delivery-template");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("template dir");
        let config = dir.join("c.toml");
        std::fs::write(
            &config,
            "[policy]\nmin_value = 0.0\n[keep]\ntarget_rate = 0.0\ndedupe_distance = 0.0\ncapacity = 24\nwindow_secs = 3600.0\n",
        )
        .expect("config");
        let spool = dir.join("spool");
        run_frames(&config, 40, &spool);
        let entries = entries(&spool);
        assert!(entries.len() >= 20, "kept {} frames", entries.len());
        (spool, entries)
    })
}

/// The spool's complete entries.
fn entries(spool: &Path) -> Entries {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(spool).expect("spool").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".json") {
            let image = std::fs::read(spool.join(format!("{id}.jpg"))).expect("image");
            let sidecar = std::fs::read(e.path()).expect("sidecar");
            out.insert(id.to_string(), (image, sidecar));
        }
    }
    out
}

/// A copy of the template spool in `dir`.
fn spool_copy(dir: &Path) -> PathBuf {
    let (from, _) = template();
    let to = dir.join("spool");
    copy_dir(from, &to);
    to
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != "lock" {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// An `[upload]` config for `endpoint`, plus `extra` lines in `[upload]`.
fn upload_config(dir: &Path, endpoint: &str, extra: &str) -> PathBuf {
    let path = dir.join("upload.toml");
    std::fs::write(
        &path,
        format!(
            "[upload]\nurl = \"s3://{BUCKET}/fleet/raw\"\nendpoint_url = \"{endpoint}\"\n\
             request_timeout_secs = 1.0\nretry_initial_ms = 50\nretry_max_ms = 400\n{extra}"
        ),
    )
    .expect("config");
    path
}

/// `framesift upload --once` with these credentials.
fn upload_once(config: &Path, spool: &Path, secret: &str) -> Command {
    let mut cmd = framesift(&[
        "upload",
        "--once",
        "--config",
        config.to_str().expect("utf8"),
        "--spool-dir",
        spool.to_str().expect("utf8"),
        "--give-up-secs",
        "60",
    ]);
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env_remove("AWS_SESSION_TOKEN")
        .env("FRAMESIFT_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

/// Every expected entry is in the bucket exactly once, image and sidecar with the
/// spool's bytes, under `fleet/raw/<device>/<date>/<id>`, and nothing else is there.
fn assert_delivered_once(server: &Server, expected: &Entries) {
    let objects = server.objects();
    assert_eq!(
        objects.len(),
        2 * expected.len(),
        "objects: {:?}",
        objects.keys().collect::<Vec<_>>()
    );
    for (id, (image, sidecar)) in expected {
        for (ext, bytes) in [("jpg", image), ("json", sidecar)] {
            let keys: Vec<_> = objects
                .keys()
                .filter(|k| k.ends_with(&format!("/{id}.{ext}")))
                .collect();
            assert_eq!(keys.len(), 1, "{id}.{ext}: {keys:?}");
            let key = keys[0];
            let parts: Vec<&str> = key.split('/').collect();
            assert_eq!(&parts[..2], ["fleet", "raw"], "{key}");
            assert!(id.starts_with(parts[2]), "device in {key}");
            assert_eq!(parts[3].len(), 10, "date in {key}");
            assert!(
                &objects[key] == bytes,
                "{key}: bytes differ from the spool's"
            );
        }
    }
}

fn assert_spool_empty(spool: &Path) {
    let left = entries(spool);
    assert!(left.is_empty(), "left in the spool: {:?}", left.keys());
}

fn ok(out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "upload failed ({}):\nstdout:\n{}\nstderr:\n{stderr}",
        out.status,
        text(&out.stdout)
    );
    stderr
}

fn spool_status(spool: &Path) -> Value {
    let out = run_ok(&mut framesift(&[
        "spool",
        "status",
        "--json",
        "--spool-dir",
        spool.to_str().expect("utf8"),
    ]));
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

#[test]
fn every_kept_frame_reaches_moto_and_a_signature_checking_server_once() {
    let (_, expected) = template();
    for kind in [Kind::Moto, Kind::S3sFs] {
        let Some(server) = Server::start(kind) else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = spool_copy(dir.path());
        let before = spool_status(&spool);
        assert_eq!(before["entries"], expected.len(), "{before}");
        let bytes: u64 = expected
            .values()
            .map(|(i, s)| (i.len() + s.len()) as u64)
            .sum();
        assert_eq!(before["bytes"], bytes, "{before}");
        assert!(before["oldest_entry_age_secs"].as_f64().expect("age") >= 0.0);

        let config = upload_config(dir.path(), &server.endpoint(), "");
        let out = upload_once(&config, &spool, SECRET_KEY)
            .output()
            .expect("upload");
        let stderr = ok(&out);
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains(&format!("uploaded {} frames", expected.len()))
                && stdout.contains("the spool is empty"),
            "{kind:?}: {stdout}"
        );
        assert!(!stderr.contains(SECRET_KEY), "secret in the output");
        assert_delivered_once(&server, expected);
        assert_spool_empty(&spool);

        let after = spool_status(&spool);
        assert_eq!(after["entries"], 0, "{after}");
        assert_eq!(after["daemon"]["uploaded"], expected.len(), "{after}");
        assert_eq!(after["daemon"]["failed_attempts"], 0, "{after}");

        // Again on the empty spool: nothing to do, still success, nothing new.
        let out = upload_once(&config, &spool, SECRET_KEY)
            .output()
            .expect("upload");
        ok(&out);
        assert!(text(&out.stdout).contains("uploaded 0 frames"));
        assert_delivered_once(&server, expected);

        // The spool as it was before the deletes (a crash after the store confirmed),
        // sent again over a paced link: every object is found there, even where the
        // store answers 412 before the body and closes on the rest of it.
        let again = tempfile::tempdir().expect("tempdir");
        let spool = spool_copy(again.path());
        let config = upload_config(
            again.path(),
            &server.endpoint(),
            "max_bytes_per_sec = 1000000\n",
        );
        let out = upload_once(&config, &spool, SECRET_KEY)
            .output()
            .expect("upload");
        ok(&out);
        assert!(
            text(&out.stdout).contains(&format!("uploaded {} frames", expected.len())),
            "{kind:?}: {}",
            text(&out.stdout)
        );
        assert_delivered_once(&server, expected);
        assert_spool_empty(&spool);
    }
}

#[test]
fn a_server_down_at_the_start_gets_everything_once_it_is_up() {
    if !crate::servers::installed(Kind::S3sFs) {
        return;
    }
    let (_, expected) = template();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = spool_copy(dir.path());
    let config = upload_config(dir.path(), &format!("http://127.0.0.1:{port}"), "");
    let child = upload_once(&config, &spool, SECRET_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("upload");
    std::thread::sleep(Duration::from_secs(2));
    let server = Server::start_on(Kind::S3sFs, port).expect("installed");
    let out = child.wait_with_output().expect("wait");
    let stderr = ok(&out);
    assert!(
        stderr.contains("upload failed") && stderr.contains("retrying"),
        "the first attempts failed and were retried: {stderr}"
    );
    assert_delivered_once(&server, expected);
    assert_spool_empty(&spool);
}

#[test]
fn a_server_that_goes_down_in_the_middle_gets_everything_once() {
    let (_, expected) = template();
    let Some(mut server) = Server::start(Kind::S3sFs) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = spool_copy(dir.path());
    // About 1 MB/s: the whole spool takes several seconds.
    let config = upload_config(
        dir.path(),
        &server.endpoint(),
        "max_bytes_per_sec = 1000000\n",
    );
    let child = upload_once(&config, &spool, SECRET_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("upload");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.object_count() < 6 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop();
    std::thread::sleep(Duration::from_secs(2));
    server.resume();
    let out = child.wait_with_output().expect("wait");
    let stderr = ok(&out);
    assert!(stderr.contains("upload failed"), "{stderr}");
    assert_delivered_once(&server, expected);
    assert_spool_empty(&spool);
}

#[test]
fn a_network_that_fails_stalls_and_loses_answers_delivers_everything_once() {
    let (_, expected) = template();
    let Some(server) = Server::start(Kind::S3sFs) else {
        return;
    };
    let seed = std::env::var("FRAMESIFT_PROXY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d);
    let proxy = FaultProxy::start(server.port, seed, 0.4);
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = spool_copy(dir.path());
    let config = upload_config(dir.path(), &format!("http://127.0.0.1:{}", proxy.port), "");
    let out = upload_once(&config, &spool, SECRET_KEY)
        .output()
        .expect("upload");
    let stderr = ok(&out);
    use crate::servers::Fault;
    let counts = [
        Fault::Forward,
        Fault::ServerError,
        Fault::Stall,
        Fault::LoseAnswer,
    ]
    .map(|f| (f, proxy.count(f)));
    eprintln!(
        "proxy seed {seed:#x}: {counts:?}, repeats refused by the store: {}",
        proxy.repeats_refused()
    );
    for (fault, n) in counts {
        assert!(n > 0, "seed {seed:#x}: no {fault:?} happened: {counts:?}");
    }
    // A lost answer to a PUT that the store carried out comes back as a conditional
    // PUT the store refuses (412), then a GET that finds the same bytes.
    assert!(
        proxy.repeats_refused() > 0,
        "seed {seed:#x}: no repeat reached the store: {counts:?}\n{stderr}"
    );
    assert_delivered_once(&server, expected);
    assert_spool_empty(&spool);
}

#[test]
fn refused_credentials_are_a_clear_error_and_the_frames_stay() {
    let (_, expected) = template();
    let Some(server) = Server::start(Kind::S3sFs) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = spool_copy(dir.path());
    let config = upload_config(dir.path(), &server.endpoint(), "");
    let wrong = "not-the-secret-at-all";
    let t0 = Instant::now();
    let out = upload_once(&config, &spool, wrong)
        .output()
        .expect("upload");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "a refusal is not retried"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("refused the credentials")
            && stderr.contains("AWS_SECRET_ACCESS_KEY")
            && stderr.contains(&format!("{} frames stay in the spool", expected.len())),
        "{stderr}"
    );
    assert!(
        !stderr.contains(wrong),
        "the secret is not echoed: {stderr}"
    );
    assert_eq!(server.object_count(), 0);
    assert_eq!(entries(&spool).len(), expected.len(), "frames kept");
    let status = spool_status(&spool);
    let last = status["daemon"]["last_upload_error"]
        .as_str()
        .expect("string");
    assert!(
        last.contains("refused the credentials") && !last.contains(wrong),
        "{status}"
    );
    let text_status = text(
        &run_ok(&mut framesift(&[
            "spool",
            "status",
            "--spool-dir",
            spool.to_str().expect("utf8"),
        ]))
        .stdout,
    );
    assert!(
        text_status.contains(&format!("  last failure {last}\n")),
        "{text_status}"
    );

    let out = upload_once(&config, &spool, SECRET_KEY)
        .output()
        .expect("upload");
    ok(&out);
    assert_delivered_once(&server, expected);
    assert_spool_empty(&spool);
    assert_eq!(spool_status(&spool)["daemon"]["last_upload_error"], "");
}

#[test]
fn a_bucket_that_is_not_there_is_named_at_once_and_the_frames_stay() {
    let (_, expected) = template();
    let Some(server) = Server::start(Kind::Moto) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = spool_copy(dir.path());
    let config = dir.path().join("upload.toml");
    std::fs::write(
        &config,
        format!(
            "[upload]\nurl = \"s3://no-such-bucket/fleet\"\nendpoint_url = \"{}\"\n",
            server.endpoint()
        ),
    )
    .expect("config");
    let out = upload_once(&config, &spool, SECRET_KEY)
        .output()
        .expect("upload");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("NoSuchBucket")
            && stderr.contains("the bucket is not there; check [upload] url")
            && stderr.contains(&format!("{} frames stay in the spool", expected.len())),
        "{stderr}"
    );
    assert_eq!(entries(&spool).len(), expected.len(), "frames kept");
    assert_eq!(server.object_count(), 0);
}

/// A frame whose key holds other bytes (a fleet where two carts share a device id)
/// never goes, and is never overwritten; `upload --once` delivers every other frame,
/// then stops on it at once instead of retrying until `--give-up-secs`.
#[test]
fn upload_once_delivers_the_rest_and_stops_on_a_key_that_holds_other_bytes() {
    let (_, expected) = template();
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("share");
    std::fs::create_dir(&dest).expect("create the share");
    let config = dir.path().join("share.toml");
    std::fs::write(
        &config,
        format!(
            "[upload]\nurl = \"file://{}\"\nretry_initial_ms = 50\nretry_max_ms = 400\n",
            dest.display()
        ),
    )
    .expect("config");
    // One cart delivers its frames, then another object takes one frame's sidecar key
    // in the share, and the same frames are uploaded again.
    let first = tempfile::tempdir().expect("tempdir");
    let drained = spool_copy(first.path());
    ok(&upload_once(&config, &drained, SECRET_KEY)
        .output()
        .expect("upload"));
    assert_eq!(upload_state(&drained), "idle", "drained: nothing waits");
    let clash = expected.keys().nth(expected.len() / 2).expect("an entry");
    let sidecar_name = std::ffi::OsString::from(format!("{clash}.json"));
    let in_share: Vec<_> = files_under(&dest)
        .into_iter()
        .filter(|p| p.file_name() == Some(sidecar_name.as_os_str()))
        .collect();
    assert_eq!(in_share.len(), 1, "{in_share:?}");
    let theirs = br#"{"from": "another cart"}"#;
    std::fs::write(&in_share[0], theirs).expect("replace the object");
    let spool = spool_copy(dir.path());

    let t0 = Instant::now();
    let out = upload_once(&config, &spool, SECRET_KEY)
        .output()
        .expect("upload");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the clash is not retried until --give-up-secs"
    );
    assert!(
        stderr.contains("other bytes")
            && stderr.contains("device_id")
            && stderr.contains(&format!("{clash}.json"))
            && stderr.contains("1 frame stays in the spool"),
        "{stderr}"
    );
    let left = entries(&spool);
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        vec![clash],
        "only the clashing frame stays"
    );
    assert_eq!(left[clash], expected[clash], "the frame stays whole");
    assert_eq!(
        std::fs::read(&in_share[0]).expect("read"),
        theirs,
        "the object there is not overwritten"
    );
    assert_eq!(
        files_under(&dest).len(),
        2 * expected.len(),
        "nothing else is stored"
    );
    assert_eq!(upload_state(&spool), "failing", "a frame is waiting");
}

/// The upload state `upload --once` left in the spool's status file.
fn upload_state(spool: &Path) -> String {
    let status: serde_json::Value = serde_json::from_slice(
        &std::fs::read(spool.join(".meta/status.json")).expect("status file"),
    )
    .expect("status json");
    status["upload_state"]
        .as_str()
        .expect("upload_state")
        .to_string()
}

#[test]
fn run_with_upload_configured_delivers_in_the_background() {
    let Some(server) = Server::start(Kind::Moto) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let config = upload_config(
        dir.path(),
        &server.endpoint(),
        "[policy]\nmin_value = 0.0\n[keep]\ntarget_rate = 0.0\ndedupe_distance = 0.0\nwindow_secs = 0.5\n",
    );
    let out = framesift(&[
        "run",
        "--config",
        config.to_str().expect("utf8"),
        "--max-frames",
        "150",
        "--spool-dir",
        spool.to_str().expect("utf8"),
    ])
    .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    .env("FRAMESIFT_LOG", "info,framesift=debug")
    .env("NO_COLOR", "1")
    .output()
    .expect("run");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let kept: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("kept a frame"))
        .filter_map(|l| {
            let rest = &l[l.find(" id=")? + 4..];
            Some(
                rest.split_whitespace()
                    .next()?
                    .trim_matches('"')
                    .to_string(),
            )
        })
        .collect();
    assert!(kept.len() >= 4, "kept {}: {stderr}", kept.len());
    let in_bucket: Vec<String> = server
        .objects()
        .keys()
        .filter_map(|k| k.strip_suffix(".json"))
        .map(|k| k.rsplit('/').next().expect("id").to_string())
        .collect();
    let in_spool: Vec<String> = entries(&spool).into_keys().collect();
    assert!(
        !in_bucket.is_empty(),
        "the daemon uploaded while it ran: {stdout}"
    );
    let uploaded_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("uploaded"))
        .unwrap_or_else(|| panic!("summary has an uploaded line: {stdout}"));
    assert!(
        uploaded_line.contains(&format!("{} frames", in_bucket.len()))
            || uploaded_line.contains(&format!("{} frame ", in_bucket.len())),
        "{uploaded_line} vs {} in the bucket",
        in_bucket.len()
    );
    let mut all: Vec<String> = in_bucket.iter().chain(&in_spool).cloned().collect();
    all.sort();
    let mut kept_sorted = kept.clone();
    kept_sorted.sort();
    assert_eq!(
        all, kept_sorted,
        "each kept frame in the bucket or the spool, once"
    );

    // What was left, drained by hand.
    let expected = entries(&spool);
    let before = server.objects();
    ok(&upload_once(&config, &spool, SECRET_KEY)
        .output()
        .expect("upload"));
    let after = server.objects();
    assert_eq!(after.len(), before.len() + 2 * expected.len());
    assert_spool_empty(&spool);
}
