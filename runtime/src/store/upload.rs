//! Delivery: moving spool entries to object storage, highest value first; an entry the
//! store refused waits behind those it refused fewer times (see
//! [`Spool::take_for_upload`](super::Spool::take_for_upload)).
//!
//! Keys are deterministic per entry: `<prefix>/<device>/<yyyy-mm-dd>/<id>.jpg`, then
//! `.json` — the image first, the sidecar last, so a sidecar in the bucket means its
//! image is there too. An entry leaves the spool only after the store has confirmed
//! both objects.
//!
//! Delivery is at-least-once with idempotent keys: a crash between the store's
//! confirmation and the local delete uploads the same entry again to the same keys.
//! Every PUT is conditional (`If-None-Match: *`): the store refuses to replace an
//! object that is there, so a repeat never makes a second object nor a new version
//! of one; an object found there with the same bytes counts as delivered, one with
//! other bytes is an error (a key collision, which ids unique per device make
//! impossible short of a misconfigured fleet).

use std::time::{Duration, SystemTime};

use super::{SharedSpool, SpoolError, sidecar::rfc3339};

/// What a destination did with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// The object was created.
    New,
    /// An object with these bytes was there already (a repeat after a crash).
    Existing,
}

/// Why an object could not be stored. Every failure is retried (with backoff) while
/// the entry is in the spool; the kind decides only how it is reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeliveryError {
    /// The store could not be reached or answered with a server error or not in time.
    #[error("{0}")]
    Unavailable(String),
    /// The store refused this cart: its credentials or permissions, or the bucket is
    /// not there (401, 403, NoSuchBucket), or the destination cannot be made. Nothing
    /// goes until a person acts; it says nothing about the entry.
    #[error("{0}")]
    Denied(String),
    /// The store refused this request (another 4xx): it may still take other entries.
    #[error("{0}")]
    Refused(String),
    /// An object with other bytes is at the key.
    #[error("{0}")]
    Conflict(String),
    /// The entry could not be read from the spool (not corrupt: a permission, an I/O
    /// error). The store was not asked; the entry waits behind the others.
    #[error("{0}")]
    Unreadable(String),
}

impl DeliveryError {
    /// Whether the failure is this entry's (other bytes at its key, a request the store
    /// will not take, files the spool cannot read), rather than the cart's or the
    /// store's: it counts as the entry's refusal, which puts it behind the others.
    pub(crate) fn refuses_the_entry(&self) -> bool {
        matches!(
            self,
            DeliveryError::Refused(_) | DeliveryError::Conflict(_) | DeliveryError::Unreadable(_)
        )
    }
}

/// Where entries go: an S3-compatible bucket, or a directory (a mounted share).
pub(crate) trait Destination: Send {
    /// Store `bytes` at `key` unless an object is there; an existing object with the
    /// same bytes is [`Stored::Existing`].
    fn put(&mut self, key: &str, bytes: &[u8], content_type: &str)
    -> Result<Stored, DeliveryError>;
    /// For logs: `s3://bucket/prefix at http://…`, `file:///mnt/share`.
    fn describe(&self) -> String;
}

/// The object key of an entry's file with extension `ext`.
pub(crate) fn object_key(prefix: &str, id: &str, captured_unix_ms: u64, ext: &str) -> String {
    // The device is the id without its boot and sequence parts.
    let device = id.rsplitn(3, '-').nth(2).unwrap_or(id);
    let date = &rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(captured_unix_ms))[..10];
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{device}/{date}/{id}.{ext}")
    } else {
        format!("{prefix}/{device}/{date}/{id}.{ext}")
    }
}

/// One delivery attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Nothing is waiting.
    Empty,
    /// Both objects are stored and the entry left the spool.
    Delivered { id: String, bytes: u64 },
    /// The entry was corrupt (its image no longer matches its sidecar) and was removed.
    Corrupt { id: String, reason: String },
}

fn lock(s: &SharedSpool) -> std::sync::MutexGuard<'_, super::Spool> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Deliver the highest-value waiting entry. On failure the entry goes back to waiting.
pub(crate) fn deliver_one(
    spool: &SharedSpool,
    destination: &mut dyn Destination,
    prefix: &str,
) -> Result<Delivery, DeliveryError> {
    let Some(entry) = lock(spool).take_for_upload() else {
        return Ok(Delivery::Empty);
    };
    // Read outside the lock (its guard ends with the statement): the entry is in
    // flight, so nothing evicts it meanwhile.
    let files = lock(spool).files(&entry.id);
    let read = files.read();
    let (image, sidecar) = match read {
        Ok(files) => files,
        Err(SpoolError::Corrupt { id, reason }) => {
            lock(spool).remove_corrupt(&id);
            return Ok(Delivery::Corrupt { id, reason });
        }
        Err(e) => {
            // One entry the spool cannot read must not hold up the rest.
            lock(spool).give_back(&entry.id, true);
            return Err(DeliveryError::Unreadable(format!("reading the spool: {e}")));
        }
    };
    let key = |ext| object_key(prefix, &entry.id, entry.captured_unix_ms, ext);
    let stored = destination
        .put(&key("jpg"), &image, "image/jpeg")
        .and_then(|_| destination.put(&key("json"), &sidecar, "application/json"));
    match stored {
        Ok(_) => {
            crate::faults::point("upload-confirmed");
            lock(spool).uploaded(&entry.id);
            Ok(Delivery::Delivered {
                id: entry.id,
                bytes: (image.len() + sidecar.len()) as u64,
            })
        }
        Err(e) => {
            lock(spool).give_back(&entry.id, e.refuses_the_entry());
            Err(e)
        }
    }
}

/// A directory as the destination (`file:///mnt/share`): each object is written to a
/// temporary name, fsynced and renamed into place, so a reader of the share never sees
/// half an object.
pub(crate) struct FileDestination {
    root: std::path::PathBuf,
}

impl FileDestination {
    pub(crate) fn new(root: std::path::PathBuf) -> Self {
        FileDestination { root }
    }
}

impl Destination for FileDestination {
    fn put(
        &mut self,
        key: &str,
        bytes: &[u8],
        _content_type: &str,
    ) -> Result<Stored, DeliveryError> {
        use std::io::Write;
        let unavailable = |what: &str, e: std::io::Error| share_error(what, &self.root, &e);
        // The share is a mounted directory: without it, writing would fill the cart's
        // own disk under the mount point and delete the frames from the spool.
        if !self.root.is_dir() {
            return Err(DeliveryError::Unavailable(format!(
                "{} is not there (is the share mounted?)",
                self.root.display()
            )));
        }
        let path = self.root.join(key);
        match std::fs::read(&path) {
            Ok(existing) if existing == bytes => return Ok(Stored::Existing),
            Ok(_) => {
                return Err(DeliveryError::Conflict(format!(
                    "{} exists with other contents",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unavailable("reading", e)),
        }
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|e| unavailable("creating a directory in", e))?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            unavailable("writing to", e)
        })?;
        Ok(Stored::New)
    }

    fn describe(&self) -> String {
        super::uploader::describe(&super::uploader::Target::Dir(self.root.clone()))
    }
}

/// A share's I/O error: one that refuses this cart (permissions, read-only) is
/// [`DeliveryError::Denied`], since retrying changes nothing until a person acts.
fn share_error(what: &str, root: &std::path::Path, e: &std::io::Error) -> DeliveryError {
    let message = format!("{what} {}: {e}", root.display());
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            DeliveryError::Denied(message)
        }
        _ => DeliveryError::Unavailable(message),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn keys_are_prefix_device_date_and_id() {
        // 2026-11-21T22:05:07Z
        let ms = 1_795_298_707_123;
        assert_eq!(
            object_key("fleet/raw/", "cart-42-0001a2b3-00000007", ms, "jpg"),
            "fleet/raw/cart-42/2026-11-21/cart-42-0001a2b3-00000007.jpg"
        );
        assert_eq!(
            object_key("", "3f9a2c-00000001-00000000", 0, "json"),
            "3f9a2c/1970-01-01/3f9a2c-00000001-00000000.json"
        );
    }

    /// Records what it is given.
    struct Recorder(Vec<String>);

    impl Destination for Recorder {
        fn put(&mut self, key: &str, _: &[u8], _: &str) -> Result<Stored, DeliveryError> {
            self.0.push(key.to_string());
            Ok(Stored::New)
        }
        fn describe(&self) -> String {
            "recorder".into()
        }
    }

    /// A spool in `dir` holding one entry of `image` per value, written in order, the
    /// way the keeper writes them; returns it and the entries' ids.
    pub(crate) fn spool_of(
        dir: &std::path::Path,
        values: &[f32],
        image: &[u8],
    ) -> (SharedSpool, Vec<String>) {
        spool_on(Arc::new(crate::store::fs::OsFs), dir, values, image)
    }

    /// [`spool_of`] on the filesystem `fs`.
    fn spool_on(
        fs: Arc<dyn crate::store::fs::Fs>,
        dir: &std::path::Path,
        values: &[f32],
        image: &[u8],
    ) -> (SharedSpool, Vec<String>) {
        use crate::store::spool::{Budget, ImageEncoding, NewEntry, Spool};
        let budget = Budget {
            max_bytes: 1 << 30,
            min_free_bytes: 0,
        };
        let (spool, _) = Spool::open(fs, dir, budget, Some("cart")).expect("open");
        let spool: SharedSpool = Arc::new(std::sync::Mutex::new(spool));
        let mut ids = Vec::new();
        for (n, &value) in values.iter().enumerate() {
            let ms = 1_795_298_707_123 + n as u64;
            let entry = NewEntry {
                value,
                camera: "cam0",
                captured_unix_ms: ms,
            };
            let written = lock(&spool)
                .write(entry, image, ImageEncoding::Encoded, |id, record| {
                    serde_json::to_vec(&serde_json::json!({
                        "id": id, "camera": "cam0", "value": value,
                        "captured_unix_ms": ms, "image": record,
                    }))
                })
                .expect("write");
            ids.push(written.id);
        }
        (spool, ids)
    }

    #[test]
    fn entries_go_highest_value_first_image_before_sidecar_and_leave_the_spool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, ids) = spool_of(dir.path(), &[0.2, 0.9, 0.5, 0.7], b"jpeg");
        let mut recorder = Recorder(Vec::new());
        let mut delivered = Vec::new();
        while let Delivery::Delivered { id, .. } =
            deliver_one(&spool, &mut recorder, "p").expect("deliver")
        {
            delivered.push(id);
        }
        assert_eq!(
            delivered,
            [
                ids[1].clone(),
                ids[3].clone(),
                ids[2].clone(),
                ids[0].clone()
            ],
            "by value: 0.9, 0.7, 0.5, 0.2"
        );
        let first = &recorder.0[..2];
        assert!(
            first[0].ends_with(&format!("{}.jpg", ids[1]))
                && first[1].ends_with(&format!("{}.json", ids[1])),
            "{first:?}"
        );
        assert_eq!(lock(&spool).len(), 0);
    }

    /// Fails every PUT whose key contains `id`, with `error`, and records the rest.
    struct FailsOne {
        id: String,
        error: DeliveryError,
        stored: Vec<String>,
    }

    impl Destination for FailsOne {
        fn put(&mut self, key: &str, _: &[u8], _: &str) -> Result<Stored, DeliveryError> {
            if key.contains(&self.id) {
                return Err(self.error.clone());
            }
            self.stored.push(key.to_string());
            Ok(Stored::New)
        }
        fn describe(&self) -> String {
            "fails one".into()
        }
    }

    /// What up to `n` delivery attempts did: each delivered id, or `-` for a failure.
    fn attempts(spool: &SharedSpool, destination: &mut dyn Destination, n: usize) -> Vec<String> {
        (0..n)
            .map_while(|_| match deliver_one(spool, destination, "p") {
                Ok(Delivery::Delivered { id, .. }) => Some(id),
                Ok(Delivery::Empty) => None,
                Ok(other) => panic!("{other:?}"),
                Err(_) => Some("-".into()),
            })
            .collect()
    }

    #[test]
    fn an_entry_the_store_refuses_goes_behind_the_rest_and_stays_in_the_spool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, ids) = spool_of(dir.path(), &[0.9, 0.5, 0.2], b"jpeg");
        let conflict = DeliveryError::Conflict("other bytes at the key".into());
        let mut store = FailsOne {
            id: ids[0].clone(),
            error: conflict,
            stored: Vec::new(),
        };
        // Refused once, the most valuable entry waits behind the other two; then it is
        // the only one left and is tried again, and again refused.
        assert_eq!(
            attempts(&spool, &mut store, 6),
            ["-", &ids[1], &ids[2], "-", "-", "-"]
        );
        assert_eq!(store.stored.len(), 4, "two entries, image and sidecar");
        assert_eq!(lock(&spool).len(), 1, "the refused entry stays");
        assert!(lock(&spool).all_refused());
    }

    #[test]
    fn a_store_that_is_down_or_refuses_the_cart_leaves_the_order_by_value_alone() {
        for error in [
            DeliveryError::Unavailable("connection refused".into()),
            DeliveryError::Denied("HTTP 403 AccessDenied".into()),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (spool, ids) = spool_of(dir.path(), &[0.9, 0.5, 0.2], b"jpeg");
            let mut failing = FailsOne {
                id: String::new(), // every key
                error: error.clone(),
                stored: Vec::new(),
            };
            assert_eq!(attempts(&spool, &mut failing, 4), ["-"; 4], "{error:?}");
            assert!(!lock(&spool).all_refused(), "{error:?}");
            let mut recorder = Recorder(Vec::new());
            assert_eq!(attempts(&spool, &mut recorder, 4), ids, "{error:?}");
        }
    }

    #[test]
    fn an_entry_whose_image_changed_is_removed_and_the_next_one_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, ids) = spool_of(dir.path(), &[0.9, 0.5], b"jpeg");
        std::fs::write(dir.path().join(format!("{}.jpg", ids[0])), b"jpex").expect("tamper");
        let mut recorder = Recorder(Vec::new());
        match deliver_one(&spool, &mut recorder, "p").expect("deliver") {
            Delivery::Corrupt { id, reason } => {
                assert_eq!(id, ids[0]);
                assert!(reason.contains("sha256"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(recorder.0.is_empty(), "nothing of it was stored");
        assert!(!dir.path().join(format!("{}.jpg", ids[0])).exists());
        assert_eq!(lock(&spool).counters.removed_corrupt, 1);
        assert!(matches!(
            deliver_one(&spool, &mut recorder, "p").expect("deliver"),
            Delivery::Delivered { id, .. } if id == ids[1]
        ));
    }

    #[test]
    fn the_spool_stays_free_while_the_uploader_reads_an_entry() {
        // A read held open (a slow card) must not hold the spool: the keeper writes on.
        let fs = Arc::new(crate::store::sim::SimFs::new());
        let (spool, ids) = spool_on(fs.clone(), std::path::Path::new("/s"), &[0.9], b"jpeg");
        let (reading, started) = std::sync::mpsc::channel();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Mutex::new(gate);
        fs.before_read(move |path| {
            if path.extension().is_some_and(|e| e == "jpg") {
                let _ = reading.send(());
                let _ = gate.lock().expect("gate").recv();
            }
        });
        let uploader = {
            let spool = spool.clone();
            std::thread::spawn(move || deliver_one(&spool, &mut Recorder(Vec::new()), "p"))
        };
        started
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the uploader reads the image");
        let free = spool.try_lock().map(|mut s| s.take_for_upload().is_none());
        release.send(()).expect("release");
        assert_eq!(
            free.ok(),
            Some(true),
            "the spool was locked during the read"
        );
        assert!(matches!(
            uploader.join().expect("uploader").expect("deliver"),
            Delivery::Delivered { id, .. } if id == ids[0]
        ));
    }

    #[test]
    fn an_entry_the_spool_cannot_read_waits_behind_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, ids) = spool_of(dir.path(), &[0.9, 0.5, 0.2], b"jpeg");
        // Not corrupt, just unreadable (as root, a permission cannot make it so).
        let image = dir.path().join(format!("{}.jpg", ids[0]));
        std::fs::remove_file(&image).expect("remove");
        std::fs::create_dir(&image).expect("a directory in its place");
        let mut recorder = Recorder(Vec::new());
        let first = deliver_one(&spool, &mut recorder, "p");
        assert!(
            matches!(&first, Err(e @ DeliveryError::Unreadable(_)) if e.refuses_the_entry()),
            "{first:?}"
        );
        assert_eq!(
            attempts(&spool, &mut recorder, 2),
            [ids[1].clone(), ids[2].clone()]
        );
        assert!(
            lock(&spool).all_refused(),
            "only the unreadable one is left"
        );
        assert!(image.is_dir(), "it stays in the spool");
    }

    #[test]
    fn a_share_that_is_not_there_or_refuses_writes_keeps_the_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("not-mounted");
        let mut d = FileDestination::new(root.clone());
        let put = d.put("a/b.jpg", b"one", "image/jpeg");
        assert!(
            matches!(&put, Err(DeliveryError::Unavailable(m)) if m.contains("is the share mounted?")),
            "{put:?}"
        );
        assert!(!root.exists(), "nothing made on the cart's own disk");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(matches!(
            share_error("writing to", &root, &denied),
            DeliveryError::Denied(_)
        ));
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(matches!(
            share_error("writing to", &root, &full),
            DeliveryError::Unavailable(_)
        ));
    }

    #[test]
    fn a_directory_destination_stores_once_and_recognises_a_repeat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = FileDestination::new(dir.path().to_path_buf());
        assert_eq!(d.put("a/b/c.jpg", b"one", "image/jpeg"), Ok(Stored::New));
        assert_eq!(
            d.put("a/b/c.jpg", b"one", "image/jpeg"),
            Ok(Stored::Existing)
        );
        assert!(matches!(
            d.put("a/b/c.jpg", b"two", "image/jpeg"),
            Err(DeliveryError::Conflict(_))
        ));
        assert_eq!(
            std::fs::read(dir.path().join("a/b/c.jpg")).expect("read"),
            b"one"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }
}
