//! Real S3-protocol servers on loopback for the delivery tests, and a fault-injecting
//! HTTP proxy to put in front of one.
//!
//! `moto_server` (PyPI `moto[server]`, no signature checks) and `s3s-fs` (crates.io,
//! checks SigV4 signatures, honours `If-None-Match`) are installed into
//! `target/test-servers` by `scripts/setup-test-servers.sh`, or named by
//! `FRAMESIFT_MOTO_SERVER` / `FRAMESIFT_S3S_FS`. Without them a test says so and passes,
//! unless `FRAMESIFT_REQUIRE_SERVERS=1` (set by scripts/test.sh) makes that a failure.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

pub const BUCKET: &str = "frames";
pub const ACCESS_KEY: &str = "framesift-test-key";
pub const SECRET_KEY: &str = "framesift-test-secret-0123456789";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Moto,
    S3sFs,
}

pub struct Server {
    kind: Kind,
    child: Option<Child>,
    pub port: u16,
    /// s3s-fs: the directory it serves (each subfolder a bucket).
    root: tempfile::TempDir,
}

fn required() -> bool {
    std::env::var("FRAMESIFT_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
}

/// `None` (after saying why) when the server is not installed and not required.
fn program(kind: Kind) -> Option<PathBuf> {
    let (var, installed) = match kind {
        Kind::Moto => (
            "FRAMESIFT_MOTO_SERVER",
            "target/test-servers/venv/bin/moto_server",
        ),
        Kind::S3sFs => ("FRAMESIFT_S3S_FS", "target/test-servers/bin/s3s-fs"),
    };
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace().join(installed));
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "{} not found (set {var} or run scripts/setup-test-servers.sh)",
        path.display()
    );
    assert!(!required(), "FRAMESIFT_REQUIRE_SERVERS=1 but {why}");
    eprintln!("skipped: {why}");
    None
}

/// A loopback port nothing listens on (free when asked).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {port} after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the server of `kind` can be started (says why not, or fails when required).
pub fn installed(kind: Kind) -> bool {
    program(kind).is_some()
}

impl Server {
    /// The server of `kind` with an empty bucket [`BUCKET`], or `None` if not installed.
    pub fn start(kind: Kind) -> Option<Server> {
        Server::start_on(kind, free_port())
    }

    /// As [`Server::start`], on `port`.
    pub fn start_on(kind: Kind, port: u16) -> Option<Server> {
        program(kind)?;
        let mut server = Server {
            kind,
            child: None,
            port,
            root: tempfile::tempdir().expect("tempdir"),
        };
        if kind == Kind::S3sFs {
            std::fs::create_dir(server.root.path().join(BUCKET)).expect("bucket dir");
        }
        server.resume();
        if kind == Kind::Moto {
            server.create_bucket();
        }
        Some(server)
    }

    /// Start the process (again, on the same port and, for s3s-fs, the same data).
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let program = program(self.kind).expect("server program");
        let port = self.port.to_string();
        let mut cmd = Command::new(program);
        match self.kind {
            Kind::Moto => cmd.args(["-H", "127.0.0.1", "-p", &port]),
            Kind::S3sFs => cmd
                .args(["--host", "127.0.0.1", "--port", &port])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(self.root.path()),
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the S3 server");
        wait_listening(self.port, &mut child, &format!("{:?}", self.kind));
        self.child = Some(child);
    }

    /// Kill the process; the port stops answering.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn bucket(&self) -> Bucket {
        Bucket::new(
            self.endpoint().parse().expect("endpoint"),
            UrlStyle::Path,
            BUCKET,
            "us-east-1",
        )
        .expect("bucket")
    }

    fn create_bucket(&self) {
        let bucket = self.bucket();
        let credentials = Credentials::new(ACCESS_KEY, SECRET_KEY);
        let url = bucket
            .create_bucket(&credentials)
            .sign(Duration::from_secs(600));
        let status = ureq::put(url.as_str())
            .send_empty()
            .expect("create bucket")
            .status();
        assert!(status.is_success(), "create bucket: {status}");
    }

    /// Every object in the bucket, key → bytes.
    pub fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        let bucket = self.bucket();
        let credentials = Credentials::new(ACCESS_KEY, SECRET_KEY);
        let mut out = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let mut list = bucket.list_objects_v2(Some(&credentials));
            if let Some(t) = &token {
                list.with_continuation_token(t.clone());
            }
            let url = list.sign(Duration::from_secs(600));
            let body = ureq::get(url.as_str())
                .call()
                .expect("list objects")
                .into_body()
                .read_to_string()
                .expect("list body");
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&body)
                .unwrap_or_else(|e| panic!("listing: {e}: {body}"));
            for object in page.contents {
                let key = object.key.replace("%2F", "/");
                let url = bucket
                    .get_object(Some(&credentials), &key)
                    .sign(Duration::from_secs(600));
                let mut bytes = Vec::new();
                ureq::get(url.as_str())
                    .call()
                    .expect("get object")
                    .into_body()
                    .into_reader()
                    .read_to_end(&mut bytes)
                    .expect("object body");
                out.insert(key, bytes);
            }
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => return out,
            }
        }
    }

    /// How many objects the bucket holds (listing only).
    pub fn object_count(&self) -> usize {
        let bucket = self.bucket();
        let credentials = Credentials::new(ACCESS_KEY, SECRET_KEY);
        let url = bucket
            .list_objects_v2(Some(&credentials))
            .sign(Duration::from_secs(600));
        match ureq::get(url.as_str()).call() {
            Ok(r) => r
                .into_body()
                .read_to_string()
                .ok()
                .and_then(|b| rusty_s3::actions::ListObjectsV2::parse_response(&b).ok())
                .map_or(0, |p| p.contents.len()),
            Err(_) => 0,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the proxy does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Pass it on and the answer back.
    Forward,
    /// Answer 500 without passing it on.
    ServerError,
    /// Read it, answer nothing for `STALL`, then close: the client times out.
    Stall,
    /// Pass it on (the store acts on it), then close without the answer: the client
    /// cannot know it succeeded.
    LoseAnswer,
}

const STALL: Duration = Duration::from_secs(3);

/// An HTTP/1.1 proxy on loopback that applies a seeded mix of faults, one request per
/// connection.
pub struct FaultProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Requests per fault, in [`Fault`] order, and upstream answers of 412.
    pub counts: Arc<[AtomicU64; 5]>,
}

impl FaultProxy {
    /// Faults drawn per request from `seed`: `share` of requests get one, evenly
    /// among the three kinds.
    pub fn start(upstream: u16, seed: u64, share: f64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
        let (stop2, counts2) = (stop.clone(), counts.clone());
        std::thread::spawn(move || {
            let mut rng = seed.max(1);
            while !stop2.load(Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                // xorshift64
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let draw = (rng >> 11) as f64 / (1u64 << 53) as f64;
                let fault = if draw >= share {
                    Fault::Forward
                } else {
                    [Fault::ServerError, Fault::Stall, Fault::LoseAnswer]
                        [((draw / share) * 3.0) as usize % 3]
                };
                counts2[fault as usize].fetch_add(1, Relaxed);
                let counts3 = counts2.clone();
                std::thread::spawn(move || {
                    let _ = serve(client, upstream, fault, &counts3);
                });
            }
        });
        FaultProxy { port, stop, counts }
    }

    pub fn count(&self, fault: Fault) -> u64 {
        self.counts[fault as usize].load(Relaxed)
    }

    /// Upstream answers 412 Precondition Failed: repeats the store refused.
    pub fn repeats_refused(&self) -> u64 {
        self.counts[4].load(Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// One request head + body (Content-Length), with `Connection: close` put in.
fn read_request(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut lines: Vec<&str> = head
        .trim_end()
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&buf[head_end..]);
    Ok(out)
}

fn serve(
    mut client: TcpStream,
    upstream: u16,
    fault: Fault,
    counts: &[AtomicU64; 5],
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let request = read_request(&mut client)?;
    match fault {
        Fault::ServerError => {
            let body = "<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>injected</Message></Error>";
            write!(
                client,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
        }
        Fault::Stall => std::thread::sleep(STALL),
        Fault::Forward | Fault::LoseAnswer => {
            let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
            up.write_all(&request)?;
            let mut answer = Vec::new();
            up.read_to_end(&mut answer)?;
            if answer.starts_with(b"HTTP/1.1 412") {
                counts[4].fetch_add(1, Relaxed);
            }
            if fault == Fault::Forward {
                client.write_all(&answer)?;
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
