//! The spool: kept frames on disk, waiting for upload.
//!
//! Layout: `<dir>/<name>.jpg` + `<dir>/<name>.json` (the sidecar), with
//! `<name> = <unix-millis>-<camera>-<seq>`. Temporary files live in `<dir>/.tmp/`.
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
use sha2::Digest;

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
}

impl Spool {
    /// Open (creating if needed) and recover the spool.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, Recovery), SpoolError> {
        let tmp = dir.join(".tmp");
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            tmp,
            max_bytes,
            used_bytes: 0,
        };
        let recovery = spool.recover()?;
        Ok((spool, recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

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

    /// Write one entry atomically: the image, then the sidecar built by `sidecar` from
    /// the image record. Returns the entry's sidecar path.
    pub fn write(
        &mut self,
        name: &str,
        image: &[u8],
        encoding: ImageEncoding,
        sidecar: impl FnOnce(&ImageRecord) -> Result<Vec<u8>, serde_json::Error>,
    ) -> Result<PathBuf, SpoolError> {
        let needed = image.len() as u64 + 4096;
        if self.used_bytes + needed > self.max_bytes {
            return Err(SpoolError::Full {
                used: self.used_bytes,
                max: self.max_bytes,
            });
        }
        let image_name = format!("{name}.jpg");
        let record = ImageRecord {
            file: image_name.clone(),
            bytes: image.len() as u64,
            sha256: hex(&sha2::Sha256::digest(image)),
            encoding,
        };
        let json = sidecar(&record).map_err(|e| SpoolError::Io {
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
        && hex(&sha2::Sha256::digest(&bytes)) == parsed.image.sha256)
        .then_some((image, parsed.image.bytes))
}

fn sync_dir(dir: &Path) {
    // Persist the renames; best effort (not every filesystem supports it).
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(record: &ImageRecord) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&serde_json::json!({ "camera": "cam0", "image": record }))
    }

    #[test]
    fn write_creates_image_and_sidecar() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, rec) = Spool::open(dir.path(), 1 << 20).expect("open");
        assert_eq!(rec, Recovery::default());
        let path = spool
            .write("1-cam0-0", b"jpegbytes", ImageEncoding::Original, sidecar)
            .expect("write");
        assert!(path.is_file());
        assert!(dir.path().join("1-cam0-0.jpg").is_file());
        assert_eq!(spool.entries().expect("entries").len(), 1);
        assert!(spool.used_bytes() > 9);
        assert_eq!(
            fs::read_dir(dir.path().join(".tmp")).expect("tmp").count(),
            0
        );
    }

    #[test]
    fn recovery_removes_partial_entries_and_keeps_complete_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut spool, _) = Spool::open(dir.path(), 1 << 20).expect("open");
            spool
                .write("1-cam0-0", b"good", ImageEncoding::Original, sidecar)
                .expect("write");
            spool
                .write(
                    "2-cam0-1",
                    b"corrupted later",
                    ImageEncoding::Original,
                    sidecar,
                )
                .expect("write");
        }
        // A crash mid-write leaves: a temp file, an image with no sidecar, a sidecar whose
        // image was truncated, and a sidecar that is not JSON.
        fs::write(dir.path().join(".tmp/3-cam0-2.jpg"), b"partial").expect("tmp");
        fs::write(dir.path().join("4-cam0-3.jpg"), b"orphan").expect("orphan");
        fs::write(dir.path().join("2-cam0-1.jpg"), b"corr").expect("truncate");
        fs::write(dir.path().join("5-cam0-4.json"), b"{\"image\": ").expect("bad json");

        let (spool, rec) = Spool::open(dir.path(), 1 << 20).expect("reopen");
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
        assert!(entries[0].0.ends_with("1-cam0-0.json"));
        let names: Vec<String> = fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}"); // .tmp, 1-cam0-0.jpg, 1-cam0-0.json
    }

    #[test]
    fn full_spool_refuses_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = Spool::open(dir.path(), 5000).expect("open");
        let err = spool
            .write("1-cam0-0", &[0u8; 2000], ImageEncoding::Encoded, sidecar)
            .expect_err("full");
        assert!(matches!(err, SpoolError::Full { .. }));
        assert!(spool.entries().expect("entries").is_empty());
    }

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).expect("open");
        // A directory where the sidecar should go makes the final rename fail.
        fs::create_dir(dir.path().join("1-cam0-0.json")).expect("blocker");
        let err = spool.write("1-cam0-0", b"img", ImageEncoding::Original, sidecar);
        assert!(err.is_err());
        assert!(!dir.path().join("1-cam0-0.jpg").exists());
        assert_eq!(
            fs::read_dir(dir.path().join(".tmp")).expect("tmp").count(),
            0
        );
    }
}
