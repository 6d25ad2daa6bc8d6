//! An S3-compatible bucket as a [`Destination`]: requests signed with SigV4 by
//! `rusty-s3` (which does no I/O) and sent by `ureq` (blocking HTTP, TLS through rustls)
//! on the uploader's thread.
//!
//! A PUT carries `If-None-Match: *`, so the store refuses to replace an object that is
//! there (412): the object is then fetched and compared, and the same bytes count as
//! delivered. A PUT whose connection breaks is checked the same way, since a store may
//! answer 412 before reading the body and close on the rest of it. Signed URLs carry a
//! signature and the access key id; no message built here contains one.

use std::{io::Read, path::Path, time::Duration};

use rusty_s3::{
    Bucket, Credentials, S3Action, UrlStyle,
    actions::{GetObject, PutObject},
};

use super::{
    upload::{DeliveryError, Destination, Stored},
    uploader::{Target, UploadConfig},
};

/// How long a signed URL stays valid: long enough for a slow request, short enough to
/// be useless if it leaks.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);

pub(crate) struct S3Destination {
    bucket: Bucket,
    credentials: Credentials,
    agent: ureq::Agent,
    /// `[upload] max_bytes_per_sec` (0: unlimited): bodies go out paced to it.
    max_bytes_per_sec: u64,
    /// `[upload] request_timeout_secs`, plus a paced body's time on the wire for a PUT.
    request_timeout: Duration,
    /// `s3://bucket/prefix at endpoint`, for logs.
    name: String,
}

/// What an error answer means for delivery: a server that is down or busy
/// (`Unavailable`, retried), a store that refuses this cart (`Denied`: credentials,
/// permissions, no bucket), or one that refuses this request (`Refused`).
fn status_error(status: u16, code: &str, message: String) -> DeliveryError {
    if status >= 500 || status == 429 {
        DeliveryError::Unavailable(message)
    } else if matches!(status, 401 | 403)
        || matches!(
            code,
            "SignatureDoesNotMatch" | "InvalidAccessKeyId" | "AccessDenied"
        )
    {
        DeliveryError::Denied(format!(
            "{message}: the store refused the credentials; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the credentials file)"
        ))
    } else if code == "NoSuchBucket" {
        DeliveryError::Denied(format!(
            "{message}: the bucket is not there; check [upload] url (and endpoint_url)"
        ))
    } else {
        DeliveryError::Refused(message)
    }
}

/// Credentials from the environment, else from the AWS credentials file.
fn credentials(file: Option<&Path>, profile: &str) -> Result<Credentials, DeliveryError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(key), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(match env("AWS_SESSION_TOKEN") {
            Some(token) => Credentials::new_with_token(key, secret, token),
            None => Credentials::new(key, secret),
        });
    }
    let Some(file) = file else {
        return Err(DeliveryError::Denied(
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or name an AWS credentials file with [upload] credentials_file".into(),
        ));
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        DeliveryError::Denied(format!(
            "cannot read credentials file {}: {e}",
            file.display()
        ))
    })?;
    let values = ini_section(&text, profile);
    let get = |k: &str| {
        values
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(key), Some(secret)) => Ok(match get("aws_session_token") {
            Some(token) => Credentials::new_with_token(key, secret, token),
            None => Credentials::new(key, secret),
        }),
        _ => Err(DeliveryError::Denied(format!(
            "credentials file {} has no aws_access_key_id and aws_secret_access_key in [{profile}]",
            file.display()
        ))),
    }
}

/// The `key = value` pairs of `[section]` in an INI text.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            inside = name == section || name == format!("profile {section}");
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

/// The S3 error code in a response body (`<Code>SignatureDoesNotMatch</Code>`).
fn error_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let end = body[start..].find("</Code>")? + start;
    Some(&body[start..end])
}

impl S3Destination {
    pub(crate) fn new(
        target: &Target,
        config: &UploadConfig,
    ) -> Result<S3Destination, DeliveryError> {
        let Target::S3 {
            bucket,
            endpoint,
            region,
            path_style,
            credentials_file,
            profile,
            ..
        } = target
        else {
            return Err(DeliveryError::Denied("not an s3:// target".into()));
        };
        let endpoint = super::uploader::endpoint_url(endpoint, region);
        let url = endpoint
            .parse()
            .map_err(|e| DeliveryError::Denied(format!("endpoint {endpoint}: {e}")))?;
        let style = if *path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket_handle = Bucket::new(url, style, bucket.clone(), region.clone())
            .map_err(|e| DeliveryError::Denied(format!("bucket {bucket} at {endpoint}: {e}")))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.request_timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(S3Destination {
            bucket: bucket_handle,
            credentials: credentials(credentials_file.as_deref(), profile)?,
            agent,
            max_bytes_per_sec: config.max_bytes_per_sec,
            request_timeout: config.request_timeout,
            name: super::uploader::describe(target),
        })
    }

    /// A failure of the request for `key`, without the signed URL.
    fn unreachable(&self, key: &str, e: &ureq::Error) -> DeliveryError {
        let what = match e {
            ureq::Error::Timeout(_) => "timed out".to_string(),
            ureq::Error::Io(io) => io.to_string(),
            ureq::Error::HostNotFound => "host not found".to_string(),
            ureq::Error::ConnectionFailed => "connection failed".to_string(),
            other => {
                let text = other.to_string();
                // Keep any URL in the message to its path.
                text.split('?').next().unwrap_or_default().to_string()
            }
        };
        DeliveryError::Unavailable(format!("{key} on {}: {what}", self.name))
    }

    fn refused(&self, key: &str, status: u16, body: &str) -> DeliveryError {
        let code = error_code(body).unwrap_or("");
        status_error(
            status,
            code,
            format!("{key} on {}: HTTP {status} {code}", self.name),
        )
    }

    /// [`Stored::Existing`] if `bytes` are at `key`, `None` if nothing is there, a
    /// conflict if other bytes are.
    fn existing(&self, key: &str, bytes: &[u8]) -> Result<Option<Stored>, DeliveryError> {
        match self.get(key)? {
            Some(existing) if existing == bytes => Ok(Some(Stored::Existing)),
            Some(_) => Err(DeliveryError::Conflict(format!(
                "{key} on {} exists with other contents",
                self.name
            ))),
            None => Ok(None),
        }
    }

    /// The object at `key`, if there is one.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, DeliveryError> {
        let url = GetObject::new(&self.bucket, Some(&self.credentials), key).sign(SIGNED_FOR);
        let response = self
            .agent
            .get(url.as_str())
            .call()
            .map_err(|e| self.unreachable(key, &e))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .read_to_end(&mut body)
            .map_err(|e| DeliveryError::Unavailable(format!("{key} on {}: {e}", self.name)))?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            _ => Err(self.refused(key, status, &String::from_utf8_lossy(&body))),
        }
    }
}

/// A body read out in [`Paced::STEP`]-byte pieces no faster than `max_bytes_per_sec`
/// (0: at once). Sleeping between small pieces spreads the uploader's work — the
/// socket's, TLS's and, on loopback, the server's — evenly over time, where pausing
/// after each whole object would send it in a burst that slows every inference it
/// overlaps.
pub(crate) struct Paced<'a> {
    bytes: &'a [u8],
    sent: usize,
    max_bytes_per_sec: u64,
    start: std::time::Instant,
}

impl<'a> Paced<'a> {
    pub(crate) const STEP: usize = 16 * 1024;

    pub(crate) fn new(bytes: &'a [u8], max_bytes_per_sec: u64) -> Self {
        Paced {
            bytes,
            sent: 0,
            max_bytes_per_sec,
            start: std::time::Instant::now(),
        }
    }
}

impl Read for Paced<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.bytes[self.sent..];
        let mut n = rest.len().min(buf.len());
        if self.max_bytes_per_sec > 0 {
            n = n.min(Self::STEP);
            // Due once what is already sent has had its time at the limit.
            let due = Duration::from_secs_f64(self.sent as f64 / self.max_bytes_per_sec as f64);
            std::thread::sleep(due.saturating_sub(self.start.elapsed()));
        }
        buf[..n].copy_from_slice(&rest[..n]);
        self.sent += n;
        Ok(n)
    }
}

impl Destination for S3Destination {
    fn put(
        &mut self,
        key: &str,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<Stored, DeliveryError> {
        let url = PutObject::new(&self.bucket, Some(&self.credentials), key).sign(SIGNED_FOR);
        let mut body = Paced::new(bytes, self.max_bytes_per_sec);
        // A paced body takes its time on the wire on top of the request's own: a low
        // rate and a large frame must not make every attempt time out.
        let pacing = match self.max_bytes_per_sec {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(bytes.len() as f64 / rate as f64),
        };
        // The length is known: a paced reader must not turn the PUT into a chunked one,
        // which S3 refuses.
        let sent = self
            .agent
            .put(url.as_str())
            .config()
            .timeout_global(Some(self.request_timeout + pacing))
            .build()
            .header("Content-Type", content_type)
            .header("Content-Length", bytes.len())
            .header("If-None-Match", "*")
            .send(ureq::SendBody::from_reader(&mut body));
        let response = match sent {
            Ok(response) => response,
            // A store may answer 412 as soon as it has the headers and close the
            // connection on the rest of the body, so an object that is there shows up
            // here as a broken pipe; so does one stored just before the connection
            // dropped. Either way retrying the PUT cannot succeed: look at the key.
            Err(e @ ureq::Error::Io(_)) => {
                return match self.existing(key, bytes) {
                    Ok(Some(stored)) => Ok(stored),
                    Ok(None) | Err(DeliveryError::Unavailable(_)) => Err(self.unreachable(key, &e)),
                    Err(other) => Err(other),
                };
            }
            Err(e) => return Err(self.unreachable(key, &e)),
        };
        let status = response.status().as_u16();
        let body = response.into_body().read_to_string().unwrap_or_default();
        match status {
            200..=299 => Ok(Stored::New),
            // Something is at the key: ours from an earlier attempt, or a collision.
            412 => self.existing(key, bytes)?.ok_or_else(|| {
                DeliveryError::Unavailable(format!(
                    "{key} on {}: refused as existing, then not found",
                    self.name
                ))
            }),
            _ => Err(self.refused(key, status, &body)),
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_body_comes_out_whole_in_small_pieces_no_faster_than_the_limit() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let rate = 1_000_000;
        let mut body = Paced::new(&bytes, rate);
        let (mut out, mut pieces, mut buf) = (Vec::new(), 0, vec![0u8; 64 * 1024]);
        let t0 = std::time::Instant::now();
        loop {
            let n = body.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            assert!(n <= Paced::STEP, "a piece of {n} bytes");
            out.extend_from_slice(&buf[..n]);
            pieces += 1;
        }
        assert_eq!(out, bytes);
        assert_eq!(pieces, bytes.len().div_ceil(Paced::STEP));
        // The last piece may go at once; everything before it waited its turn.
        let floor = (bytes.len() - Paced::STEP) as f64 / rate as f64;
        assert!(t0.elapsed().as_secs_f64() >= floor, "{:?}", t0.elapsed());
        // Unlimited: one read takes all that fits.
        let mut fast = Paced::new(&bytes, 0);
        assert_eq!(fast.read(&mut buf).expect("read"), buf.len());
    }

    /// How the hand-made store answers a PUT.
    #[derive(Clone, Copy)]
    enum OnPut {
        /// 412 as soon as it has the headers, closing on the body, as s3s does.
        RefuseEarly,
        /// 200 once it has read the whole body.
        Store,
    }

    /// A store on loopback that answers PUTs `on_put` and every GET with `stored`.
    fn store(on_put: OnPut, stored: Vec<u8>) -> u16 {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut head = Vec::new();
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line);
                }
                let answer = if head.first().is_some_and(|l| l.starts_with("PUT")) {
                    if let OnPut::Store = on_put {
                        let length = head
                            .iter()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|n| n.trim().parse::<u64>())
                            })
                            .and_then(Result::ok)
                            .expect("content-length");
                        std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())
                            .expect("body");
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    } else {
                        b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
                    }
                } else {
                    let mut a = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        stored.len()
                    )
                    .into_bytes();
                    a.extend_from_slice(&stored);
                    a
                };
                let _ = stream.write_all(&answer);
                // After a refusal, closing with the body unread resets the connection
                // under the sender.
            }
        });
        port
    }

    /// A destination at `port`, pacing bodies to 1 MB/s with a `timeout` per request.
    fn destination(port: u16, dir: &Path, timeout: Duration) -> S3Destination {
        let credentials = dir.join("credentials");
        std::fs::write(
            &credentials,
            "[default]\naws_access_key_id = AKID\naws_secret_access_key = secret\n",
        )
        .expect("credentials");
        let target = Target::S3 {
            bucket: "frames".into(),
            prefix: String::new(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: "us-east-1".into(),
            path_style: true,
            credentials_file: Some(credentials),
            profile: "default".into(),
        };
        let mut config = crate::config::Config::default().upload;
        config.max_bytes_per_sec = 1_000_000;
        config.request_timeout = timeout;
        S3Destination::new(&target, &config).expect("destination")
    }

    #[test]
    fn an_object_there_is_recognised_when_the_store_refuses_before_the_body() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        // Paced, so the body is still going out when the store has answered.
        let refusing = |stored| {
            destination(
                store(OnPut::RefuseEarly, stored),
                dir.path(),
                Duration::from_secs(10),
            )
        };
        let mut same = refusing(bytes.clone());
        assert_eq!(
            same.put("a.jpg", &bytes, "image/jpeg"),
            Ok(Stored::Existing)
        );
        let mut other = bytes.clone();
        other[0] ^= 1;
        let mut different = refusing(other);
        assert!(
            matches!(
                different.put("a.jpg", &bytes, "image/jpeg"),
                Err(DeliveryError::Conflict(_))
            ),
            "other bytes at the key are a conflict"
        );
    }

    #[test]
    fn answers_are_told_apart_by_whom_they_refuse() {
        let kind = |status, code| match status_error(status, code, "k".into()) {
            DeliveryError::Unavailable(_) => "unavailable",
            DeliveryError::Denied(_) => "denied",
            DeliveryError::Refused(_) => "refused",
            DeliveryError::Conflict(_) => "conflict",
            DeliveryError::Unreadable(_) => "unreadable",
        };
        let cases = [
            (500, "InternalError", "unavailable"),
            (503, "SlowDown", "unavailable"),
            (429, "", "unavailable"),
            (403, "SignatureDoesNotMatch", "denied"),
            (403, "", "denied"),
            (401, "", "denied"),
            (400, "InvalidAccessKeyId", "denied"),
            (404, "NoSuchBucket", "denied"),
            (400, "InvalidRequest", "refused"),
            (413, "EntityTooLarge", "refused"),
        ];
        for (status, code, want) in cases {
            assert_eq!(kind(status, code), want, "HTTP {status} {code}");
        }
        let DeliveryError::Denied(m) = status_error(404, "NoSuchBucket", "k".into()) else {
            unreachable!()
        };
        assert!(m.contains("[upload] url"), "{m}");
    }

    #[test]
    fn credentials_files_are_read_by_profile() {
        let text = "# comment\n[default]\naws_access_key_id = AKID1\naws_secret_access_key = s1\n\n[profile cart]\nAWS_ACCESS_KEY_ID=AKID2\naws_secret_access_key=s2\naws_session_token = t2\n";
        assert_eq!(
            ini_section(text, "default"),
            [
                ("aws_access_key_id".to_string(), "AKID1".to_string()),
                ("aws_secret_access_key".into(), "s1".into())
            ]
        );
        assert_eq!(ini_section(text, "cart").len(), 3);
        assert!(ini_section(text, "other").is_empty());
    }

    #[test]
    fn error_codes_come_from_the_xml_body() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>…</Message></Error>";
        assert_eq!(error_code(body), Some("SignatureDoesNotMatch"));
        assert_eq!(error_code("nothing"), None);
    }

    #[test]
    fn a_paced_body_gets_its_time_on_the_wire_on_top_of_the_request_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 300 kB at 1 MB/s is 0.3 s on the wire, three times the request timeout.
        let bytes = vec![7u8; 300_000];
        let mut slow = destination(
            store(OnPut::Store, Vec::new()),
            dir.path(),
            Duration::from_millis(100),
        );
        assert_eq!(slow.put("a.jpg", &bytes, "image/jpeg"), Ok(Stored::New));
    }
}
