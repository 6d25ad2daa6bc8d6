//! The spool: kept frames on disk, waiting for upload.
//!
//! Layout: `<dir>/<id>.jpg` + `<dir>/<id>.json` (the sidecar). Temporary files live in
//! `<dir>/.tmp/`, the spool's identity in `<dir>/.meta/`.
//!
//! Entry ids are `<device>-<boot>-<seq>`: the device id (configured, or made at random
//! once and kept in `.meta/device-id`), this start's number (`.meta/boot`, counted up
//! and made durable at every open; a new spool starts at a random number, so a wiped
//! spool does not reuse the ids it gave before) in hex, and a sequence within this
//! start. They never depend on the clock or on frame numbers, so an id is unique across
//! restarts and, with distinct device ids, across carts.
//!
//! Invariants:
//! - Only the keeper creates entries; only the uploader (and recovery) deletes them.
//! - An entry is complete or absent. The image is written to `.tmp/`, fsynced and
//!   renamed into place first; the sidecar — which carries the image's sha256 and byte
//!   count — is written the same way last, so a sidecar's presence commits the entry.
//! - Recovery ([`Spool::open`]) runs before anything else touches the spool: it deletes
//!   `.tmp/` leftovers, images without a sidecar, and sidecars whose image is missing or
//!   does not match the recorded checksum. No manual repair is ever needed.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("spool is full ({used} of {max} bytes); the frame was dropped")]
    Full { used: u64, max: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |error| SpoolError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What recovery found and removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub complete: usize,
    pub removed_temp: usize,
    pub removed_orphan_images: usize,
    pub removed_bad_sidecars: usize,
}

/// How the image in an entry was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageEncoding {
    /// The camera's or file's own JPEG bytes, unchanged.
    Original,
    /// Encoded by framesift from raw pixels.
    Encoded,
}

/// The part of a sidecar the spool itself checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub encoding: ImageEncoding,
}

#[derive(Deserialize)]
struct SidecarImage {
    image: ImageRecord,
}

/// A spool directory with its size accounted.
pub struct Spool {
    dir: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    used_bytes: u64,
    device: String,
    boot: u32,
    /// Entries written since this open.
    seq: u64,
}

impl Spool {
    /// Open (creating if needed) and recover the spool, writing as `device_id` (`None`:
    /// the id kept in the spool, made at random the first time).
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        device_id: Option<&str>,
    ) -> Result<(Spool, Recovery), SpoolError> {
        let tmp = dir.join(".tmp");
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let meta = dir.join(".meta");
        fs::create_dir_all(&meta).map_err(io(&meta))?;
        let device = match device_id {
            Some(id) => id.to_string(),
            None => stored_or(&meta.join("device-id"), &tmp, || {
                format!("{:016x}", random_u64())
            })?,
        };
        let boot_file = meta.join("boot");
        let boot = match fs::read_to_string(&boot_file) {
            Ok(text) => text
                .trim()
                .parse::<u32>()
                .map_err(|e| SpoolError::Io {
                    path: boot_file.clone(),
                    error: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                })?
                .wrapping_add(1),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => random_u64() as u32,
            Err(e) => {
                return Err(SpoolError::Io {
                    path: boot_file,
                    error: e,
                });
            }
        };
        write_durably(&boot_file, &tmp, boot.to_string().as_bytes())?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            tmp,
            max_bytes,
            used_bytes: 0,
            device,
            boot,
            seq: 0,
        };
        let recovery = spool.recover()?;
        Ok((spool, recovery))
    }

    /// The id the next entry gets.
    fn next_id(&mut self) -> String {
        let id = format!("{}-{:08x}-{:08}", self.device, self.boot, self.seq);
        self.seq += 1;
        id
    }

    /// A new size limit (a reload); entries already written stay.
    pub fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes;
    }

    #[cfg(test)]
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    fn recover(&mut self) -> Result<Recovery, SpoolError> {
        let mut rec = Recovery::default();
        for entry in fs::read_dir(&self.tmp).map_err(io(&self.tmp))?.flatten() {
            if fs::remove_file(entry.path()).is_ok() {
                rec.removed_temp += 1;
            }
        }
        let mut used = 0u64;
        let entries: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
            .map(|e| e.path())
            .collect();
        // Sidecars first: each one names (and vouches for) its image.
        let mut vouched: Vec<PathBuf> = Vec::new();
        for path in entries
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
        {
            match check_entry(path) {
                Some((image, bytes)) => {
                    used += bytes + fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                    vouched.push(image);
                    rec.complete += 1;
                }
                None => {
                    let _ = fs::remove_file(path);
                    rec.removed_bad_sidecars += 1;
                }
            }
        }
        for path in entries
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        {
            if !vouched.contains(path) && fs::remove_file(path).is_ok() {
                rec.removed_orphan_images += 1;
            }
        }
        self.used_bytes = used;
        if rec.removed_temp + rec.removed_orphan_images + rec.removed_bad_sidecars > 0 {
            sync_dir(&self.dir);
        }
        Ok(rec)
    }

    /// Write one entry atomically under a new id: the image, then the sidecar built by
    /// `sidecar` from the entry id and the image record. Returns the sidecar's path.
    pub fn write(
        &mut self,
        image: &[u8],
        encoding: ImageEncoding,
        sidecar: impl FnOnce(&str, &ImageRecord) -> Result<Vec<u8>, serde_json::Error>,
    ) -> Result<PathBuf, SpoolError> {
        let needed = image.len() as u64 + 4096;
        if self.used_bytes + needed > self.max_bytes {
            return Err(SpoolError::Full {
                used: self.used_bytes,
                max: self.max_bytes,
            });
        }
        let name = self.next_id();
        let image_name = format!("{name}.jpg");
        let record = ImageRecord {
            file: image_name.clone(),
            bytes: image.len() as u64,
            sha256: crate::digest::sha256_hex(image),
            encoding,
        };
        let json = sidecar(&name, &record).map_err(|e| SpoolError::Io {
            path: self.dir.join(format!("{name}.json")),
            error: e.into(),
        })?;

        let image_path = self.dir.join(&image_name);
        let sidecar_path = self.dir.join(format!("{name}.json"));
        let result = self
            .place(&image_name, image, &image_path)
            .and_then(|()| self.place(&format!("{name}.json"), &json, &sidecar_path));
        match result {
            Ok(()) => {
                sync_dir(&self.dir);
                self.used_bytes += image.len() as u64 + json.len() as u64;
                Ok(sidecar_path)
            }
            Err(e) => {
                // Leave nothing half-written: no sidecar means the image must go too.
                let _ = fs::remove_file(&sidecar_path);
                let _ = fs::remove_file(&image_path);
                Err(e)
            }
        }
    }

    /// Write `bytes` to `.tmp/<file>`, fsync, rename to `dest`.
    fn place(&self, file: &str, bytes: &[u8], dest: &Path) -> Result<(), SpoolError> {
        let tmp = self.tmp.join(file);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, dest)
        };
        write().map_err(|error| {
            let _ = fs::remove_file(&tmp);
            SpoolError::Io {
                path: dest.to_path_buf(),
                error,
            }
        })
    }

    /// Complete entries, oldest name first: (sidecar path, image path).
    #[cfg(test)]
    pub fn entries(&self) -> Result<Vec<(PathBuf, PathBuf)>, SpoolError> {
        let mut out: Vec<(PathBuf, PathBuf)> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter_map(|p| {
                let image = p.with_extension("jpg");
                image.is_file().then_some((p, image))
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

/// A sidecar's image, if the sidecar parses and the image matches its record.
fn check_entry(sidecar: &Path) -> Option<(PathBuf, u64)> {
    let text = fs::read(sidecar).ok()?;
    let parsed: SidecarImage = serde_json::from_slice(&text).ok()?;
    let image = sidecar.with_file_name(&parsed.image.file);
    let bytes = fs::read(&image).ok()?;
    (bytes.len() as u64 == parsed.image.bytes
        && crate::digest::sha256_hex(&bytes) == parsed.image.sha256)
        .then_some((image, parsed.image.bytes))
}

/// The first line of `file`, or `make()` written there durably when there is none.
fn stored_or(file: &Path, tmp: &Path, make: impl FnOnce() -> String) -> Result<String, SpoolError> {
    match fs::read_to_string(file) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => {
            let value = make();
            write_durably(file, tmp, value.as_bytes())?;
            Ok(value)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            write_durably(file, tmp, value.as_bytes())?;
            Ok(value)
        }
        Err(e) => Err(SpoolError::Io {
            path: file.to_path_buf(),
            error: e,
        }),
    }
}

/// Replace `file` with `bytes`: a temp file in `tmp`, fsync, rename, fsync of the
/// directory. A crash leaves the old contents or the new, never a mix.
fn write_durably(file: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let name = file.file_name().unwrap_or_default();
    let staged = tmp.join(name);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&staged)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&staged, file)?;
        if let Some(dir) = file.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|error| SpoolError::Io {
        path: file.to_path_buf(),
        error,
    })
}

/// 64 random bits from the kernel (`/dev/urandom`), else from the clock and pid.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok()
    {
        return u64::from_le_bytes(bytes);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

fn sync_dir(dir: &Path) {
    // Persist the renames; best effort (not every filesystem supports it).
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(id: &str, record: &ImageRecord) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&serde_json::json!({ "id": id, "camera": "cam0", "image": record }))
    }

    fn open(dir: &Path, max_bytes: u64) -> Spool {
        Spool::open(dir, max_bytes, Some("cart7")).expect("open").0
    }

    #[test]
    fn write_creates_image_and_sidecar() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, rec) = Spool::open(dir.path(), 1 << 20, Some("cart7")).expect("open");
        assert_eq!(rec, Recovery::default());
        let path = spool
            .write(b"jpegbytes", ImageEncoding::Original, sidecar)
            .expect("write");
        assert!(path.is_file());
        assert!(path.with_extension("jpg").is_file());
        let stem = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        assert!(
            stem.starts_with("cart7-") && stem.ends_with("-00000000"),
            "{stem}"
        );
        let written: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        assert_eq!(written["id"], stem.as_str());
        assert_eq!(spool.entries().expect("entries").len(), 1);
        assert!(spool.used_bytes() > 9);
        assert_eq!(
            fs::read_dir(dir.path().join(".tmp")).expect("tmp").count(),
            0
        );
    }

    #[test]
    fn ids_are_unique_across_opens_and_devices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ids = std::collections::BTreeSet::new();
        for _ in 0..3 {
            // No configured id: the one made at the first open is kept.
            let (mut spool, _) = Spool::open(dir.path(), 1 << 20, None).expect("open");
            for _ in 0..2 {
                let path = spool
                    .write(b"x", ImageEncoding::Original, sidecar)
                    .expect("write");
                ids.insert(
                    path.file_stem()
                        .expect("stem")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        assert_eq!(ids.len(), 6, "{ids:?}");
        let devices: std::collections::BTreeSet<&str> = ids
            .iter()
            .map(|id| id.split('-').next().expect("device"))
            .collect();
        assert_eq!(devices.len(), 1, "one generated device id: {devices:?}");
        // Another spool (a wiped one, or another cart) starts at another boot number.
        let other = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = Spool::open(other.path(), 1 << 20, None).expect("open");
        let path = spool
            .write(b"x", ImageEncoding::Original, sidecar)
            .expect("write");
        let id = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        assert!(!ids.contains(&id), "{id}");
    }

    #[test]
    fn recovery_removes_partial_entries_and_keeps_complete_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (good, corrupted) = {
            let mut spool = open(dir.path(), 1 << 20);
            let good = spool
                .write(b"good", ImageEncoding::Original, sidecar)
                .expect("write");
            let corrupted = spool
                .write(b"corrupted later", ImageEncoding::Original, sidecar)
                .expect("write");
            (good, corrupted)
        };
        // A crash mid-write leaves: a temp file, an image with no sidecar, a sidecar whose
        // image was truncated, and a sidecar that is not JSON.
        fs::write(dir.path().join(".tmp/3-cam0-2.jpg"), b"partial").expect("tmp");
        fs::write(dir.path().join("4-cam0-3.jpg"), b"orphan").expect("orphan");
        fs::write(corrupted.with_extension("jpg"), b"corr").expect("truncate");
        fs::write(dir.path().join("5-cam0-4.json"), b"{\"image\": ").expect("bad json");

        let (spool, rec) = Spool::open(dir.path(), 1 << 20, Some("cart7")).expect("reopen");
        assert_eq!(
            rec,
            Recovery {
                complete: 1,
                removed_temp: 1,
                removed_orphan_images: 2,
                removed_bad_sidecars: 2
            }
        );
        let entries = spool.entries().expect("entries");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, good);
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let stem = good
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        assert_eq!(
            names,
            [
                ".meta".to_string(),
                ".tmp".into(),
                format!("{stem}.jpg"),
                format!("{stem}.json")
            ]
        );
    }

    #[test]
    fn full_spool_refuses_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = open(dir.path(), 5000);
        let err = spool
            .write(&[0u8; 2000], ImageEncoding::Encoded, sidecar)
            .expect_err("full");
        assert!(matches!(err, SpoolError::Full { .. }));
        assert!(spool.entries().expect("entries").is_empty());
    }

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = open(dir.path(), 1 << 20);
        // A directory where the sidecar should go makes the final rename fail.
        let id = format!("cart7-{:08x}-00000000", spool.boot);
        fs::create_dir(dir.path().join(format!("{id}.json"))).expect("blocker");
        let err = spool.write(b"img", ImageEncoding::Original, sidecar);
        assert!(err.is_err());
        assert!(!dir.path().join(format!("{id}.jpg")).exists());
        assert_eq!(
            fs::read_dir(dir.path().join(".tmp")).expect("tmp").count(),
            0
        );
    }
}
