//! The spool: kept frames on disk, waiting for upload, within a disk budget.
//!
//! Layout:
//! ```text
//! <dir>/<id>.jpg      the frame             <dir>/.meta/device-id   this cart's id
//! <dir>/<id>.json     its sidecar           <dir>/.meta/boot        start counter
//! <dir>/.tmp/         files being written   <dir>/.meta/index       entry log (a cache)
//!                                           <dir>/.meta/lock        held while open
//! ```
//!
//! Entry ids are `<device>-<boot>-<seq>`: the device id (configured, or made at random
//! once and kept in `.meta/device-id`), this start's number (`.meta/boot`, counted up
//! and made durable at every open; a new spool starts at a random number, so a wiped
//! spool does not reuse the ids it gave before) in hex, and a sequence within this
//! start. They never depend on the clock or on frame numbers, so an id is unique across
//! restarts and, with distinct device ids, across carts.
//!
//! Invariants:
//! - Only the keeper creates entries; the uploader (after the store confirmed both
//!   objects), the disk budget (evicting the lowest-value entry not in flight) and
//!   recovery delete them. One process at a time: `open` takes `.meta/lock`.
//! - An entry is committed, or absent after a crash. The image is written to `.tmp/`,
//!   fsynced, renamed into place; the sidecar — which carries the image's sha256 and
//!   byte count — is written the same way; then the directory is fsynced, and only then
//!   does `write` return. A sidecar whose image is missing, or an image without its
//!   sidecar, is a write that never finished.
//! - Removal unlinks the sidecar first (the entry stops being one), then the image. It
//!   is not fsynced: an entry that comes back after a power cut is delivered again to
//!   the same keys (or evicted again), which the delivery semantics allow.
//! - Recovery ([`Spool::open`]) lists the directory once and reads the index log, so it
//!   is O(n) in entries and reads a sidecar only for an entry the log does not know. It
//!   removes `.tmp/` leftovers and half-written entries and counts them; an entry whose
//!   sidecar cannot be read (an I/O error, not corrupt contents) is left alone and
//!   retried at the next open — a transient error never deletes a committed entry.
//!   Image checksums are verified when an entry is read for upload.

use std::{
    collections::{BTreeSet, HashMap},
    io::ErrorKind,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use super::fs::{Fs, SyncSite};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("spool {dir} is in use by another framesift (pid {pid}); one spool, one daemon")]
    Locked { dir: PathBuf, pid: String },
    /// The frame was worth less than every entry that could make room for it, or
    /// nothing could be evicted (all in flight).
    #[error(
        "spool is full ({used} bytes of {max_bytes}, {free} free on the disk, {min_free} kept free); a frame of value {value:.3} was dropped"
    )]
    Full {
        used: u64,
        max_bytes: u64,
        free: u64,
        min_free: u64,
        value: f32,
    },
    /// The disk has no room: less than `min_free_bytes` would be left even after
    /// evicting every entry worth less, or it ran out of space (ENOSPC) while writing
    /// (nothing was left behind).
    #[error(
        "the disk holding spool {dir} is full ({free} bytes free, [spool] min_free_bytes = {min_free} kept free); a frame of value {value:.3} was dropped"
    )]
    DiskFull {
        dir: PathBuf,
        free: u64,
        min_free: u64,
        value: f32,
    },
    #[error("spool entry {id}: {reason}")]
    Corrupt { id: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |error| SpoolError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub complete: usize,
    pub removed_temp: usize,
    /// Entries whose write never finished (an image or a sidecar alone).
    pub removed_partial: usize,
    /// Sidecars that could not be parsed, with their images.
    pub removed_corrupt: usize,
    /// Entries left in place because reading them failed (retried at the next open).
    pub unreadable: usize,
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

/// What the spool reads back from a sidecar when its index does not know the entry.
#[derive(Deserialize)]
struct SidecarMeta {
    image: ImageRecord,
    camera: String,
    value: f32,
    captured_unix_ms: u64,
}

/// How much the spool may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    pub max_bytes: u64,
    /// Bytes that must stay free on the spool's filesystem.
    pub min_free_bytes: u64,
}

/// What a new entry is, for the index.
#[derive(Debug, Clone)]
pub(crate) struct NewEntry<'a> {
    pub value: f32,
    pub camera: &'a str,
    pub captured_unix_ms: u64,
}

/// One committed entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub id: String,
    pub value: f32,
    /// Image and sidecar together.
    pub bytes: u64,
    pub camera: String,
    pub captured_unix_ms: u64,
    /// Handed to the uploader and not yet confirmed or given back.
    pub in_flight: bool,
    /// Times the store refused this entry's objects since the spool was opened.
    pub refusals: u32,
}

/// A total order on values, oldest first among equals, then by id.
type Rank = (u32, u64, String);

fn rank(e: &Entry) -> Rank {
    // f32 → u32 keeping the order (negative values below positive ones).
    let bits = e.value.to_bits();
    let key = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    };
    (key, e.captured_unix_ms, e.id.clone())
}

/// The entries in memory: by id, and by value among those not in flight.
#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    waiting: BTreeSet<Rank>,
}

impl Index {
    fn insert(&mut self, e: Entry) {
        if !e.in_flight {
            self.waiting.insert(rank(&e));
        }
        self.entries.insert(e.id.clone(), e);
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let e = self.entries.remove(id)?;
        self.waiting.remove(&rank(&e));
        Some(e)
    }
}

/// What a write did.
#[derive(Debug)]
pub(crate) struct Written {
    pub id: String,
    pub sidecar: PathBuf,
    /// Entries evicted to make room: (id, value). Each was logged as it went, and
    /// `counters.evicted` counts them (also for a write that then failed).
    #[cfg_attr(not(test), allow(dead_code))]
    pub evicted: Vec<(String, f32)>,
}

/// Counts since the spool was opened.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolCounters {
    pub written: u64,
    pub uploaded: u64,
    pub evicted: u64,
    pub dropped_full: u64,
    pub disk_full: u64,
    pub removed_corrupt: u64,
}

/// A spool directory: its entries, its identity and its budget.
pub(crate) struct Spool {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    tmp: PathBuf,
    meta: PathBuf,
    budget: Budget,
    used_bytes: u64,
    device: String,
    boot: u32,
    /// Entries written since this open.
    seq: u64,
    index: Index,
    pub(crate) counters: SpoolCounters,
    /// Held for the spool's life.
    _lock: Box<dyn Send>,
}

impl Spool {
    /// Open (creating if needed) and recover the spool, writing as `device_id` (`None`:
    /// the id kept in the spool, made at random the first time).
    pub(crate) fn open(
        fs: Arc<dyn Fs>,
        dir: &Path,
        budget: Budget,
        device_id: Option<&str>,
    ) -> Result<(Spool, Recovery), SpoolError> {
        let tmp = dir.join(".tmp");
        let meta = dir.join(".meta");
        for d in [dir, &tmp, &meta] {
            fs.create_dir_all(d).map_err(|error| {
                // What a file in the directory's place gives: "File exists".
                let error = if error.kind() == ErrorKind::AlreadyExists {
                    std::io::Error::new(error.kind(), "a file is there, not a directory")
                } else {
                    error
                };
                io(d)(error)
            })?;
        }
        let lock = fs
            .lock(&meta.join("lock"))
            .map_err(|error| match error.kind() {
                ErrorKind::WouldBlock => SpoolError::Locked {
                    dir: dir.to_path_buf(),
                    pid: fs
                        .read(&meta.join("lock"))
                        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                        .unwrap_or_else(|_| "unknown".into()),
                },
                _ => SpoolError::Io {
                    path: meta.join("lock"),
                    error,
                },
            })?;
        let device = match device_id {
            Some(id) => id.to_string(),
            None => stored_or(fs.as_ref(), &meta.join("device-id"), &tmp, || {
                format!("{:016x}", random_u64())
            })?,
        };
        let boot_file = meta.join("boot");
        let boot = match fs.read(&boot_file) {
            Ok(text) => match String::from_utf8_lossy(&text).trim().parse::<u32>() {
                Ok(boot) => boot.wrapping_add(1),
                // Damaged: a random start keeps ids apart as a new spool's does.
                Err(_) => {
                    tracing::warn!(file = %boot_file.display(), "spool: the boot counter is unreadable; starting it at random");
                    random_u64() as u32
                }
            },
            Err(e) if e.kind() == ErrorKind::NotFound => random_u64() as u32,
            Err(e) => {
                return Err(SpoolError::Io {
                    path: boot_file,
                    error: e,
                });
            }
        };
        let boot = match write_durably(fs.as_ref(), &boot_file, &tmp, boot.to_string().as_bytes()) {
            Ok(()) => boot,
            // A full disk must not stop the daemon: the entries it holds still go out,
            // and a random boot number keeps this run's ids apart as a new spool's do.
            Err(SpoolError::Io { error, .. }) if is_disk_full(&error) => {
                tracing::warn!(file = %boot_file.display(), %error, "spool: the disk is full; the boot counter is not recorded this run (entry ids use a random boot number)");
                random_u64() as u32
            }
            Err(e) => return Err(e),
        };
        let mut spool = Spool {
            fs,
            dir: dir.to_path_buf(),
            tmp,
            meta,
            budget,
            used_bytes: 0,
            device,
            boot,
            seq: 0,
            index: Index::default(),
            counters: SpoolCounters::default(),
            _lock: lock,
        };
        let recovery = spool.recover()?;
        spool.warn_below_floor();
        Ok((spool, recovery))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A seed no other run draws: from the device id and this start's number, the
    /// parts of an entry id that never repeat across carts and restarts.
    pub(crate) fn run_seed(&self) -> u64 {
        let digest =
            crate::digest::sha256_hex(format!("{}-{:08x}", self.device, self.boot).as_bytes());
        u64::from_str_radix(&digest[..16], 16).unwrap_or_default()
    }

    /// The id the next entry gets.
    fn next_id(&mut self) -> String {
        let id = format!("{}-{:08x}-{:08}", self.device, self.boot, self.seq);
        self.seq += 1;
        id
    }

    /// A new budget (a reload); entries already written stay until a write needs room.
    pub(crate) fn set_budget(&mut self, budget: Budget) {
        self.budget = budget;
    }

    pub(crate) fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.index.entries.len()
    }

    /// The entries, in no particular order.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.index.entries.values()
    }

    fn recover(&mut self) -> Result<Recovery, SpoolError> {
        let fs = self.fs.clone();
        let mut rec = Recovery::default();
        for name in fs.list(&self.tmp).map_err(io(&self.tmp))? {
            if fs.remove(&self.tmp.join(&name)).is_ok() {
                rec.removed_temp += 1;
            }
        }
        let scan = scan(fs.as_ref(), &self.dir)?;
        for id in &scan.partial {
            self.remove_files(id);
        }
        for (id, reason) in &scan.corrupt {
            tracing::warn!(
                id,
                reason,
                "spool: removed an entry whose sidecar is corrupt"
            );
            self.remove_files(id);
        }
        rec.removed_partial = scan.partial.len();
        rec.removed_corrupt = scan.corrupt.len();
        rec.unreadable = scan.unreadable;
        rec.complete = scan.complete.len();
        for e in scan.complete {
            self.used_bytes += e.bytes;
            self.index.insert(e);
        }
        self.counters.removed_corrupt = rec.removed_corrupt as u64;
        match self.rewrite_index() {
            Ok(()) => {}
            // The index is a cache of what the directory holds; the old one stays.
            Err(SpoolError::Io { error, .. }) if is_disk_full(&error) => {
                let _ = self.fs.remove(&self.tmp.join("index"));
                tracing::warn!(%error, "spool: the disk is full; the index is not rewritten this start");
            }
            Err(e) => return Err(e),
        }
        Ok(rec)
    }

    /// A disk with less free than the floor keeps frames only in the room of worse
    /// ones, and none while the spool is empty: say so at the start, not frame by frame.
    fn warn_below_floor(&self) {
        let Ok(free) = self.fs.free_bytes(&self.dir) else {
            return;
        };
        let floor = self.budget.min_free_bytes;
        if free < floor {
            tracing::warn!(
                dir = %self.dir.display(),
                free_mib = free >> 20,
                min_free_mib = floor >> 20,
                spool_mib = self.used_bytes >> 20,
                "spool: the disk has less free space than [spool] min_free_bytes keeps free; frames are kept only in place of lower-value entries: free space on that disk, or lower min_free_bytes (it must be well below the disk's size)"
            );
        }
    }

    /// Replace the index log with one line per entry (it is a cache: the directory and
    /// the sidecars are the truth, so it needs no fsync).
    fn rewrite_index(&self) -> Result<(), SpoolError> {
        let mut text = String::new();
        for e in self.index.entries.values() {
            text.push_str(&index_line(e));
        }
        let file = self.meta.join("index");
        let staged = self.tmp.join("index");
        self.fs
            .write(&staged, text.as_bytes())
            .map_err(io(&staged))?;
        self.fs.rename(&staged, &file).map_err(io(&file))
    }

    /// Unlink an entry's sidecar, then its image (each may already be gone).
    fn remove_files(&self, id: &str) {
        let _ = self.fs.remove(&self.path(&format!("{id}.json")));
        crate::faults::point("spool-sidecar-removed");
        let _ = self.fs.remove(&self.path(&format!("{id}.jpg")));
    }

    /// Remove an entry (uploaded, evicted or corrupt) from disk and index.
    fn delete(&mut self, id: &str) -> Option<Entry> {
        let e = self.index.remove(id)?;
        self.remove_files(id);
        self.used_bytes = self.used_bytes.saturating_sub(e.bytes);
        let _ = self
            .fs
            .append(&self.meta.join("index"), format!("-\t{id}\n").as_bytes());
        Some(e)
    }

    /// Write one entry under a new id: the image, then the sidecar built by `sidecar`
    /// from the id and the image record, making room within the budget by evicting
    /// lower-value entries first.
    pub(crate) fn write(
        &mut self,
        entry: NewEntry<'_>,
        image: &[u8],
        encoding: ImageEncoding,
        sidecar: impl FnOnce(&str, &ImageRecord) -> Result<Vec<u8>, serde_json::Error>,
    ) -> Result<Written, SpoolError> {
        let id = self.next_id();
        let image_name = format!("{id}.jpg");
        let record = ImageRecord {
            file: image_name.clone(),
            bytes: image.len() as u64,
            sha256: crate::digest::sha256_hex(image),
            encoding,
        };
        let json = sidecar(&id, &record).map_err(|e| SpoolError::Io {
            path: self.path(&format!("{id}.json")),
            error: e.into(),
        })?;
        let bytes = image.len() as u64 + json.len() as u64;
        let evicted = self.make_room(bytes, entry.value)?;
        match self.place(&id, &image_name, image, &json) {
            Ok(sidecar) => {
                let e = Entry {
                    id: id.clone(),
                    value: entry.value,
                    bytes,
                    camera: entry.camera.to_string(),
                    captured_unix_ms: entry.captured_unix_ms,
                    in_flight: false,
                    refusals: 0,
                };
                let _ = self
                    .fs
                    .append(&self.meta.join("index"), index_line(&e).as_bytes());
                self.used_bytes += bytes;
                self.index.insert(e);
                self.counters.written += 1;
                Ok(Written {
                    id,
                    sidecar,
                    evicted,
                })
            }
            Err(SpoolError::Io { error, .. }) if is_disk_full(&error) => {
                self.counters.disk_full += 1;
                Err(SpoolError::DiskFull {
                    dir: self.dir.clone(),
                    free: self.fs.free_bytes(&self.dir).unwrap_or(0),
                    min_free: self.budget.min_free_bytes,
                    value: entry.value,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Evict the lowest-value entries not in flight (oldest first among equals) until
    /// `bytes` more fit. When evicting every entry worth no more than the new frame
    /// would not make room, nothing is evicted and the new frame is refused.
    fn make_room(&mut self, bytes: u64, value: f32) -> Result<Vec<(String, f32)>, SpoolError> {
        let free = self.fs.free_bytes(&self.dir).unwrap_or(u64::MAX);
        // Bytes to give back for the budget and for the free-space floor.
        let over_budget = (self.used_bytes + bytes).saturating_sub(self.budget.max_bytes);
        let under_floor = bytes
            .saturating_add(self.budget.min_free_bytes)
            .saturating_sub(free);
        let needed = over_budget.max(under_floor);
        let mut victims = Vec::new();
        let mut freed = 0;
        for (_, _, id) in &self.index.waiting {
            if freed >= needed {
                break;
            }
            let Some(e) = self.index.entries.get(id) else {
                continue;
            };
            if e.value > value {
                break;
            }
            freed += e.bytes;
            victims.push((e.id.clone(), e.value));
        }
        if freed < needed {
            if under_floor > over_budget {
                // The disk, not the budget, has no room (another program filled it).
                self.counters.disk_full += 1;
                return Err(SpoolError::DiskFull {
                    dir: self.dir.clone(),
                    free,
                    min_free: self.budget.min_free_bytes,
                    value,
                });
            }
            self.counters.dropped_full += 1;
            return Err(SpoolError::Full {
                used: self.used_bytes,
                max_bytes: self.budget.max_bytes,
                free,
                min_free: self.budget.min_free_bytes,
                value,
            });
        }
        for (id, value) in &victims {
            // Logged before the unlink, so no entry leaves without a trace, even when
            // the process dies in the write that follows.
            tracing::info!(id, value, "spool: evicted a lower-value entry to make room");
            crate::faults::point("spool-evicting");
            self.delete(id);
            self.counters.evicted += 1;
        }
        Ok(victims)
    }

    /// Image to `.tmp/`, fsync, rename; sidecar the same; fsync the directory. On any
    /// error nothing of the entry is left.
    fn place(
        &self,
        id: &str,
        image_name: &str,
        image: &[u8],
        json: &[u8],
    ) -> Result<PathBuf, SpoolError> {
        let fs = self.fs.as_ref();
        let sidecar_name = format!("{id}.json");
        let (image_tmp, sidecar_tmp) = (self.tmp.join(image_name), self.tmp.join(&sidecar_name));
        let (image_path, sidecar_path) = (self.path(image_name), self.path(&sidecar_name));
        let result = (|| -> Result<(), SpoolError> {
            fs.write(&image_tmp, image).map_err(io(&image_tmp))?;
            fs.sync_file(&image_tmp, SyncSite::ImageData)
                .map_err(io(&image_tmp))?;
            crate::faults::point("spool-image-synced");
            fs.rename(&image_tmp, &image_path)
                .map_err(io(&image_path))?;
            crate::faults::point("spool-image-renamed");
            fs.write(&sidecar_tmp, json).map_err(io(&sidecar_tmp))?;
            fs.sync_file(&sidecar_tmp, SyncSite::SidecarData)
                .map_err(io(&sidecar_tmp))?;
            fs.rename(&sidecar_tmp, &sidecar_path)
                .map_err(io(&sidecar_path))?;
            crate::faults::point("spool-sidecar-renamed");
            fs.sync_dir(&self.dir, SyncSite::EntryDir)
                .map_err(io(&self.dir))?;
            crate::faults::point("spool-committed");
            Ok(())
        })();
        if result.is_err() {
            // Leave nothing half-written: without its sidecar the image must go too.
            for p in [&sidecar_path, &image_path, &sidecar_tmp, &image_tmp] {
                let _ = fs.remove(p);
            }
        }
        result.map(|()| sidecar_path)
    }

    /// Hand the uploader the highest-value entry not in flight among those the store
    /// refused the fewest times, so one entry it keeps refusing (other bytes at its key,
    /// say) cannot hold up the rest.
    pub(crate) fn take_for_upload(&mut self) -> Option<Entry> {
        let mut best: Option<(u32, &str)> = None;
        for (_, _, id) in self.index.waiting.iter().rev() {
            let refusals = self.index.entries.get(id).map_or(u32::MAX, |e| e.refusals);
            if best.is_none_or(|(fewest, _)| refusals < fewest) {
                best = Some((refusals, id));
            }
            if refusals == 0 {
                break;
            }
        }
        let id = best?.1.to_string();
        let mut e = self.index.remove(&id)?;
        e.in_flight = true;
        self.index.insert(e.clone());
        Some(e)
    }

    /// An entry the uploader could not deliver goes back to waiting; `refused`: the
    /// store answered and said no (not a network or server failure, which says nothing
    /// about the entry and leaves the order by value alone).
    pub(crate) fn give_back(&mut self, id: &str, refused: bool) {
        if let Some(mut e) = self.index.remove(id) {
            e.in_flight = false;
            e.refusals += u32::from(refused);
            self.index.insert(e);
        }
    }

    /// Whether the store refused every entry at least once since the spool was opened
    /// (true of an empty spool).
    pub(crate) fn all_refused(&self) -> bool {
        self.index.entries.values().all(|e| e.refusals > 0)
    }

    /// The store confirmed both objects: the entry leaves the spool.
    pub(crate) fn uploaded(&mut self, id: &str) {
        if self.delete(id).is_some() {
            self.counters.uploaded += 1;
        }
    }

    /// An entry's files, to read without holding the spool (see [`EntryFiles`]).
    pub(crate) fn files(&self, id: &str) -> EntryFiles {
        EntryFiles {
            fs: self.fs.clone(),
            id: id.to_string(),
            sidecar: self.path(&format!("{id}.json")),
            image: self.path(&format!("{id}.jpg")),
        }
    }

    /// Remove an entry [`EntryFiles::read`] found corrupt: it can never be delivered
    /// intact.
    pub(crate) fn remove_corrupt(&mut self, id: &str) {
        if self.delete(id).is_some() {
            self.counters.removed_corrupt += 1;
        }
    }
}

/// The paths of one entry and the filesystem that holds them. The uploader reads an
/// entry in flight through this outside the spool's lock, so a slow card or a large
/// image never holds up the keeper's writes; eviction skips entries in flight, so the
/// files stay until the uploader confirms or gives the entry back.
pub(crate) struct EntryFiles {
    fs: Arc<dyn Fs>,
    id: String,
    sidecar: PathBuf,
    image: PathBuf,
}

impl EntryFiles {
    /// The image and the sidecar, the image checked against the sidecar's size and
    /// sha256. A mismatch is [`SpoolError::Corrupt`]; the caller removes the entry
    /// ([`Spool::remove_corrupt`]).
    pub(crate) fn read(&self) -> Result<(Vec<u8>, Vec<u8>), SpoolError> {
        let sidecar = self.fs.read(&self.sidecar).map_err(io(&self.sidecar))?;
        let image = self.fs.read(&self.image).map_err(io(&self.image))?;
        let record: Result<ImageRecord, String> = serde_json::from_slice::<SidecarMeta>(&sidecar)
            .map(|m| m.image)
            .map_err(|e| format!("sidecar: {e}"));
        let problem = match record {
            Err(reason) => Some(reason),
            Ok(r)
                if r.bytes != image.len() as u64
                    || r.sha256 != crate::digest::sha256_hex(&image) =>
            {
                Some("the image does not match its sidecar's sha256".to_string())
            }
            Ok(_) => None,
        };
        match problem {
            Some(reason) => Err(SpoolError::Corrupt {
                id: self.id.clone(),
                reason,
            }),
            None => Ok((image, sidecar)),
        }
    }
}

/// What a spool directory holds, read without changing anything.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub complete: Vec<Entry>,
    /// Ids of writes that never finished (an image or a sidecar alone).
    pub partial: Vec<String>,
    /// Ids whose sidecar cannot be parsed, with why.
    pub corrupt: Vec<(String, String)>,
    /// Entries whose sidecar could not be read (an I/O error).
    pub unreadable: usize,
}

/// List `dir` once and read the index log: O(n) in entries; a sidecar is read only for
/// an entry the log does not know.
pub(crate) fn scan(fs: &dyn Fs, dir: &Path) -> Result<Scan, SpoolError> {
    let names = fs.list(dir).map_err(io(dir))?;
    let ids = |ext: &str| -> BTreeSet<String> {
        names
            .iter()
            .filter_map(|n| n.strip_suffix(ext))
            .filter(|id| {
                // Someone else's file in the spool directory is neither an entry nor
                // a half-written one: recovery must not delete it.
                let ours = is_entry_id(id);
                if !ours {
                    tracing::warn!(file = %dir.join(format!("{id}{ext}")).display(), "spool: not a framesift entry; left alone");
                }
                ours
            })
            .map(str::to_string)
            .collect()
    };
    let (sidecars, images) = (ids(".json"), ids(".jpg"));
    let known = read_index(fs, &dir.join(".meta").join("index"));
    let mut out = Scan::default();
    for id in &sidecars {
        if !images.contains(id) {
            // The sidecar's rename reached the disk, the image's did not: the write
            // never returned.
            out.partial.push(id.clone());
            continue;
        }
        let entry = match known.get(id) {
            Some(e) => Ok(e.clone()),
            None => entry_from_sidecar(fs, dir, id),
        };
        match entry {
            Ok(e) => out.complete.push(e),
            Err(SpoolError::Corrupt { id, reason }) => out.corrupt.push((id, reason)),
            Err(e) => {
                tracing::warn!(error = %e, "spool: could not read an entry; leaving it for the next start");
                out.unreadable += 1;
            }
        }
    }
    out.partial.extend(images.difference(&sidecars).cloned());
    Ok(out)
}

/// Whether `id` is an entry id as the spool names them: `<device>-<boot: 8 hex>-<seq:
/// 8 or more digits>`.
fn is_entry_id(id: &str) -> bool {
    let mut parts = id.rsplitn(3, '-');
    let (Some(seq), Some(boot), Some(device)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    seq.len() >= 8
        && seq.bytes().all(|b| b.is_ascii_digit())
        && boot.len() == 8
        && boot.bytes().all(|b| b.is_ascii_hexdigit())
        && !device.is_empty()
}

fn entry_from_sidecar(fs: &dyn Fs, dir: &Path, id: &str) -> Result<Entry, SpoolError> {
    let path = dir.join(format!("{id}.json"));
    let text = fs.read(&path).map_err(io(&path))?;
    let corrupt = |reason: String| SpoolError::Corrupt {
        id: id.to_string(),
        reason,
    };
    let meta: SidecarMeta =
        serde_json::from_slice(&text).map_err(|e| corrupt(format!("sidecar: {e}")))?;
    let image = dir.join(&meta.image.file);
    let len = fs.len(&image).map_err(io(&image))?;
    if len != meta.image.bytes {
        return Err(corrupt(format!(
            "the image holds {len} bytes, its sidecar says {}",
            meta.image.bytes
        )));
    }
    Ok(Entry {
        id: id.to_string(),
        value: meta.value,
        bytes: len + text.len() as u64,
        camera: meta.camera,
        captured_unix_ms: meta.captured_unix_ms,
        in_flight: false,
        refusals: 0,
    })
}

fn index_line(e: &Entry) -> String {
    format!(
        "+\t{}\t{}\t{}\t{}\t{}\n",
        e.id, e.value, e.bytes, e.captured_unix_ms, e.camera
    )
}

/// The entries the index log knows (a torn or garbled line is skipped: the sidecar of
/// such an entry is read instead).
fn read_index(fs: &dyn Fs, file: &Path) -> HashMap<String, Entry> {
    let mut out = HashMap::new();
    let Ok(bytes) = fs.read(file) else {
        return out;
    };
    for line in String::from_utf8_lossy(&bytes).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["+", id, value, bytes, ms, camera] => {
                if let (Ok(value), Ok(bytes), Ok(ms)) = (value.parse(), bytes.parse(), ms.parse()) {
                    out.insert(
                        id.to_string(),
                        Entry {
                            id: id.to_string(),
                            value,
                            bytes,
                            camera: camera.to_string(),
                            captured_unix_ms: ms,
                            in_flight: false,
                            refusals: 0,
                        },
                    );
                }
            }
            ["-", id] => {
                out.remove(*id);
            }
            _ => {}
        }
    }
    out
}

fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
        || e.raw_os_error() == Some(libc::ENOSPC)
}

/// The first line of `file`, or `make()` written there durably when there is none.
fn stored_or(
    fs: &dyn Fs,
    file: &Path,
    tmp: &Path,
    make: impl FnOnce() -> String,
) -> Result<String, SpoolError> {
    match fs.read(file) {
        Ok(text) if !String::from_utf8_lossy(&text).trim().is_empty() => {
            Ok(String::from_utf8_lossy(&text).trim().to_string())
        }
        Ok(_) => {
            let value = make();
            write_durably(fs, file, tmp, value.as_bytes())?;
            Ok(value)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let value = make();
            write_durably(fs, file, tmp, value.as_bytes())?;
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
fn write_durably(fs: &dyn Fs, file: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let staged = tmp.join(file.file_name().unwrap_or_default());
    let result = (|| {
        fs.write(&staged, bytes)?;
        fs.sync_file(&staged, SyncSite::Meta)?;
        fs.rename(&staged, file)?;
        match file.parent() {
            Some(dir) => fs.sync_dir(dir, SyncSite::Meta),
            None => Ok(()),
        }
    })();
    result.map_err(|error| SpoolError::Io {
        path: file.to_path_buf(),
        error,
    })
}

/// 64 random bits from the kernel (`/dev/urandom`), else from the clock and pid.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::store::{fs::OsFs, sim::SimFs};

    const ROOMY: Budget = Budget {
        max_bytes: 1 << 30,
        min_free_bytes: 0,
    };

    fn sidecar(id: &str, record: &ImageRecord) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&serde_json::json!({
            "id": id, "camera": "cam0", "value": 0.5, "captured_unix_ms": 1, "image": record
        }))
    }

    fn open_in(fs: Arc<dyn Fs>, dir: &Path, budget: Budget, device: Option<&str>) -> Spool {
        Spool::open(fs, dir, budget, device).expect("open").0
    }

    /// Write an entry of `bytes` image bytes at `value`, captured at `ms`.
    fn put(spool: &mut Spool, value: f32, ms: u64, bytes: usize) -> Result<Written, SpoolError> {
        let entry = NewEntry {
            value,
            camera: "cam0",
            captured_unix_ms: ms,
        };
        spool.write(entry, &vec![7u8; bytes], ImageEncoding::Encoded, sidecar)
    }

    fn ids(spool: &Spool) -> BTreeSet<String> {
        spool.entries().map(|e| e.id.clone()).collect()
    }

    #[test]
    fn a_write_commits_image_and_sidecar_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = open_in(Arc::new(OsFs), dir.path(), ROOMY, Some("cart7"));
        let w = put(&mut spool, 0.5, 1, 100).expect("write");
        assert!(
            w.id.starts_with("cart7-") && w.id.ends_with("-00000000"),
            "{}",
            w.id
        );
        assert!(dir.path().join(format!("{}.jpg", w.id)).is_file());
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(&w.sidecar).expect("read")).expect("json");
        assert_eq!(json["image"]["bytes"], 100);
        assert_eq!(
            fs::read_dir(dir.path().join(".tmp")).expect("tmp").count(),
            0
        );
        let (image, _) = spool.files(&w.id).read().expect("read back");
        assert_eq!(image, vec![7u8; 100]);
    }

    #[test]
    fn a_second_daemon_cannot_open_a_spool_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = open_in(Arc::new(OsFs), dir.path(), ROOMY, None);
        let Err(e) = Spool::open(Arc::new(OsFs), dir.path(), ROOMY, None) else {
            panic!("opened twice")
        };
        let message = e.to_string();
        assert!(matches!(e, SpoolError::Locked { .. }), "{message}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        open_in(Arc::new(OsFs), dir.path(), ROOMY, None);
    }

    #[test]
    fn ids_are_unique_across_restarts_and_spools() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            // No configured device id: the one made at the first open is kept.
            let mut spool = open_in(Arc::new(OsFs), dir.path(), ROOMY, None);
            for _ in 0..2 {
                assert!(seen.insert(put(&mut spool, 0.5, 1, 10).expect("write").id));
            }
        }
        let devices: BTreeSet<String> = seen
            .iter()
            .map(|id| id.rsplitn(3, '-').nth(2).expect("device").to_string())
            .collect();
        assert_eq!(devices.len(), 1, "{seen:?}");
        // A wiped spool, or another cart's, starts at another boot number.
        let other = tempfile::tempdir().expect("tempdir");
        let mut spool = open_in(Arc::new(OsFs), other.path(), ROOMY, None);
        assert!(!seen.contains(&put(&mut spool, 0.5, 1, 10).expect("write").id));
        // Each start seeds its own random draws.
        let seeds: BTreeSet<u64> = (0..3)
            .map(|_| open_in(Arc::new(OsFs), dir.path(), ROOMY, None).run_seed())
            .chain([spool.run_seed()])
            .collect();
        assert_eq!(seeds.len(), 4, "{seeds:?}");
        // A damaged boot counter starts at random rather than failing or reusing ids.
        drop(spool);
        fs::write(other.path().join(".meta/boot"), "garbage").expect("damage");
        let mut spool = open_in(Arc::new(OsFs), other.path(), ROOMY, None);
        assert!(!seen.contains(&put(&mut spool, 0.5, 1, 10).expect("write").id));
    }

    #[test]
    fn a_file_where_the_spool_goes_is_named_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cart.toml");
        fs::write(&file, "[spool]\n").expect("write");
        let error = Spool::open(Arc::new(OsFs), &file, ROOMY, None)
            .map(|_| ())
            .expect_err("a file is no spool");
        assert!(
            error
                .to_string()
                .contains("a file is there, not a directory"),
            "{error}"
        );
    }

    #[test]
    fn recovery_removes_half_written_entries_and_keeps_committed_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (good, torn) = {
            let mut spool = open_in(Arc::new(OsFs), dir.path(), ROOMY, Some("c"));
            let good = put(&mut spool, 0.5, 1, 10).expect("write").id;
            let torn = put(&mut spool, 0.5, 2, 10).expect("write").id;
            (good, torn)
        };
        let p = |name: &str| dir.path().join(name);
        // What a crash mid-write leaves: a temporary file, an image alone, a sidecar
        // alone; and a sidecar that is not JSON (its index line lost too).
        fs::write(p(".tmp/c-00000009-00000000.jpg"), b"partial").expect("tmp");
        fs::write(p("c-00000009-00000001.jpg"), b"orphan").expect("orphan");
        fs::write(p("c-00000009-00000002.json"), b"{}").expect("lonely sidecar");
        fs::remove_file(p(&format!("{torn}.json"))).expect("tear");
        fs::write(p("c-00000009-00000003.jpg"), b"img").expect("img");
        fs::write(p("c-00000009-00000003.json"), b"{\"image\": ").expect("bad json");
        // Files someone else put there are not entries, whole or half-written.
        fs::write(p("IMG_0001.jpg"), b"a photo").expect("foreign image");
        fs::write(p("settings.json"), b"{}").expect("foreign json");
        fs::write(p("x-0000000g-00000001.json"), b"{}").expect("not hex");
        let (spool, rec) =
            Spool::open(Arc::new(OsFs), dir.path(), ROOMY, Some("c")).expect("reopen");
        assert_eq!(
            rec,
            Recovery {
                complete: 1,
                removed_temp: 1,
                removed_partial: 3,
                removed_corrupt: 1,
                unreadable: 0,
            }
        );
        assert_eq!(ids(&spool), BTreeSet::from([good.clone()]));
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".meta".to_string(),
                ".tmp".into(),
                "IMG_0001.jpg".into(),
                format!("{good}.jpg"),
                format!("{good}.json"),
                "settings.json".into(),
                "x-0000000g-00000001.json".into(),
            ]
        );
    }

    #[test]
    fn the_budget_evicts_the_lowest_value_oldest_first_and_drops_a_frame_worth_less() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = open_in(Arc::new(OsFs), dir.path(), ROOMY, Some("c"));
        let a = put(&mut spool, 0.3, 10, 1000).expect("a").id;
        let b = put(&mut spool, 0.3, 20, 1000).expect("b").id;
        let c = put(&mut spool, 0.9, 5, 1000).expect("c").id;
        let d = put(&mut spool, 0.6, 30, 1000).expect("d").id;
        // Room for three entries from now on.
        let per_entry = spool.used_bytes() / 4;
        spool.set_budget(Budget {
            max_bytes: 3 * per_entry + per_entry / 2,
            min_free_bytes: 0,
        });
        let e = put(&mut spool, 0.5, 40, 1000).expect("e");
        // Two of value 0.3: the older (a) goes first, then b, for e.
        assert_eq!(e.evicted, [(a.clone(), 0.3), (b.clone(), 0.3)]);
        assert_eq!(
            ids(&spool),
            BTreeSet::from([c.clone(), d.clone(), e.id.clone()])
        );
        // A frame worth less than everything is the one dropped; nothing is evicted.
        let Err(SpoolError::Full { value, .. }) = put(&mut spool, 0.1, 50, 1000) else {
            panic!("a low-value frame must be refused")
        };
        assert_eq!(value, 0.1);
        assert_eq!(ids(&spool).len(), 3);
        assert_eq!(
            (spool.counters.evicted, spool.counters.dropped_full),
            (2, 1)
        );
        // An entry in flight to the store is never evicted: c (0.9) is taken, so a
        // frame of 0.95 evicts e (0.5), the lowest of the rest.
        let taken = spool.take_for_upload().expect("take");
        assert_eq!(taken.id, c);
        let f = put(&mut spool, 0.95, 60, 1000).expect("f");
        assert_eq!(f.evicted, [(e.id.clone(), 0.5)]);
        assert!(ids(&spool).contains(&c));
        // A frame that needs the room of two entries when only one (d) is worth less:
        // refused, and d is not evicted for nothing.
        assert!(matches!(
            put(&mut spool, 0.7, 70, 2500),
            Err(SpoolError::Full { .. })
        ));
        assert_eq!(ids(&spool), BTreeSet::from([c, d, f.id]));
    }

    #[test]
    fn the_free_space_floor_evicts_like_the_budget() {
        let fs = Arc::new(SimFs::new());
        let budget = Budget {
            max_bytes: u64::MAX,
            min_free_bytes: 10_000,
        };
        let mut spool = open_in(fs.clone(), Path::new("/s"), budget, Some("c"));
        let low = put(&mut spool, 0.2, 1, 3000).expect("low").id;
        put(&mut spool, 0.8, 2, 3000).expect("high");
        // The disk now has room for about one more entry above the floor.
        let used = u64::MAX / 2 - fs.free_bytes(Path::new("/s")).expect("free");
        fs.set_free(used + 10_000 + 5_000);
        put(&mut spool, 0.5, 3, 3000).expect("fits");
        let w = put(&mut spool, 0.6, 4, 3000).expect("evicts");
        assert_eq!(w.evicted, [(low, 0.2)]);
        // A frame worth less than everything, on a disk at its floor: the disk is full.
        let full = put(&mut spool, 0.1, 5, 3000);
        assert!(matches!(full, Err(SpoolError::DiskFull { .. })), "{full:?}");
        assert_eq!(
            (spool.counters.disk_full, spool.counters.dropped_full),
            (1, 0)
        );
    }

    #[test]
    fn a_spool_on_a_disk_another_program_filled_still_opens_and_makes_room() {
        let fs = Arc::new(SimFs::new());
        let budget = Budget {
            max_bytes: u64::MAX,
            min_free_bytes: 0,
        };
        let mut spool = open_in(fs.clone(), Path::new("/s"), budget, Some("c"));
        let low = put(&mut spool, 0.2, 1, 3000).expect("low").id;
        let high = put(&mut spool, 0.8, 2, 3000).expect("high").id;
        let boot = spool.boot;
        drop(spool);
        // Not a byte left: the boot counter and the index cannot be written.
        let used = u64::MAX / 2 - fs.free_bytes(Path::new("/s")).expect("free");
        fs.set_free(used);
        let (mut spool, _) = Spool::open(fs.clone(), Path::new("/s"), budget, Some("c"))
            .expect("opens on a full disk");
        assert_eq!(ids(&spool), BTreeSet::from([low.clone(), high.clone()]));
        assert_ne!(spool.boot, boot, "a new boot number");
        // A better frame takes the room of a worse one (a little smaller: the index
        // line of the eviction takes a few bytes too).
        let w = put(&mut spool, 0.5, 3, 2900).expect("evicts");
        assert_eq!(w.evicted, [(low, 0.2)]);
        assert_eq!(ids(&spool), BTreeSet::from([high, w.id]));
    }

    #[test]
    fn a_failing_fsync_drops_the_frame_and_leaves_nothing() {
        let fs = Arc::new(SimFs::new());
        let mut spool = open_in(fs.clone(), Path::new("/s"), ROOMY, Some("c"));
        let kept = put(&mut spool, 0.5, 1, 100).expect("write").id;
        let files = |fs: &SimFs| {
            let mut n = fs.list(Path::new("/s")).expect("list");
            n.extend(fs.list(Path::new("/s/.tmp")).expect("list"));
            n.sort();
            n
        };
        let before = files(&fs);
        for site in [
            SyncSite::ImageData,
            SyncSite::SidecarData,
            SyncSite::EntryDir,
        ] {
            fs.fail_next_sync(site);
            let err = put(&mut spool, 0.9, 3, 100).expect_err("EIO");
            assert!(
                err.to_string().contains("Input/output error"),
                "{site:?}: {err}"
            );
            assert_eq!(files(&fs), before, "{site:?}");
        }
        assert_eq!(ids(&spool), BTreeSet::from([kept]));
        put(&mut spool, 0.9, 4, 100).expect("the spool goes on");
    }

    #[test]
    fn enospc_is_its_own_counted_error() {
        // statvfs says there is room; the write still hits ENOSPC.
        struct NoSpace(SimFs);
        impl Fs for NoSpace {
            fn create_dir_all(&self, d: &Path) -> std::io::Result<()> {
                self.0.create_dir_all(d)
            }
            fn write(&self, f: &Path, b: &[u8]) -> std::io::Result<()> {
                if f.extension().is_some_and(|e| e == "json") && f.starts_with("/s/.tmp") {
                    return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
                }
                self.0.write(f, b)
            }
            fn append(&self, f: &Path, b: &[u8]) -> std::io::Result<()> {
                self.0.append(f, b)
            }
            fn read(&self, f: &Path) -> std::io::Result<Vec<u8>> {
                self.0.read(f)
            }
            fn sync_file(&self, f: &Path, s: SyncSite) -> std::io::Result<()> {
                self.0.sync_file(f, s)
            }
            fn sync_dir(&self, d: &Path, s: SyncSite) -> std::io::Result<()> {
                self.0.sync_dir(d, s)
            }
            fn rename(&self, a: &Path, b: &Path) -> std::io::Result<()> {
                self.0.rename(a, b)
            }
            fn remove(&self, f: &Path) -> std::io::Result<()> {
                self.0.remove(f)
            }
            fn list(&self, d: &Path) -> std::io::Result<Vec<String>> {
                self.0.list(d)
            }
            fn free_bytes(&self, d: &Path) -> std::io::Result<u64> {
                self.0.free_bytes(d)
            }
            fn len(&self, f: &Path) -> std::io::Result<u64> {
                self.0.len(f)
            }
            fn lock(&self, f: &Path) -> std::io::Result<Box<dyn Send>> {
                self.0.lock(f)
            }
        }
        let fs = Arc::new(NoSpace(SimFs::new()));
        let mut spool = open_in(fs.clone(), Path::new("/s"), ROOMY, Some("c"));
        let err = put(&mut spool, 0.9, 1, 100).expect_err("disk full");
        assert!(matches!(err, SpoolError::DiskFull { .. }), "{err}");
        assert_eq!(spool.counters.disk_full, 1);
        assert_eq!(spool.len(), 0);
        assert!(
            fs.list(Path::new("/s")).expect("list").is_empty(),
            "the image went too"
        );
    }
}
