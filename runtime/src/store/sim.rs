//! A filesystem that remembers what a power cut would keep, for the spool's crash tests.
//!
//! Every file has the data the program sees and the data that is durable; every
//! directory has the names the program sees and the durable ones. `sync_file` makes a
//! file's data durable, `sync_dir` a directory's names. [`SimFs::cut`] is the power
//! cut: from then on every call fails, and [`SimFs::after_cut`] is the filesystem as it
//! comes back — each name that was not synced is either kept or lost, each file's
//! unsynced data kept, lost, or torn at a random length, as real filesystems may do.
//! It can also run out of space (ENOSPC) and fail an fsync (EIO).
//! Sites listed in `skipped` have their fsyncs turned into no-ops, as if the code did
//! not make them.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::fs::{Fs, SyncSite};
use crate::capture::synthetic::Rng;

#[derive(Debug, Clone, Default)]
struct File {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct Dir {
    names: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default)]
struct State {
    files: HashMap<u64, File>,
    dirs: BTreeMap<PathBuf, Dir>,
    next: u64,
    skipped: HashSet<SyncSite>,
    /// Mutating calls made; the cut happens when it reaches `cut_at`.
    ops: u64,
    cut_at: Option<u64>,
    cut: bool,
    /// Reads of these files fail with EIO (a transient error).
    unreadable: HashSet<PathBuf>,
    /// Free bytes on the disk; writes beyond fail with ENOSPC.
    free: u64,
    /// The next fsync at this site fails with EIO.
    failing_sync: Option<SyncSite>,
}

type ReadHook = dyn Fn(&Path) + Send + Sync;

pub(crate) struct SimFs {
    state: Mutex<State>,
    /// Runs before every read, outside the state's lock: a test can hold a read open.
    before_read: Mutex<Option<Arc<ReadHook>>>,
}

fn split(path: &Path) -> (PathBuf, String) {
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, name)
}

fn power_cut() -> io::Error {
    io::Error::other("power cut")
}

impl SimFs {
    pub(crate) fn new() -> Self {
        SimFs {
            state: Mutex::new(State {
                free: u64::MAX / 2,
                ..State::default()
            }),
            before_read: Mutex::new(None),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Turn the fsyncs at `site` into no-ops.
    pub(crate) fn skip(&self, site: SyncSite) {
        self.with(|s| s.skipped.insert(site));
    }

    /// Cut the power after `ops` more mutating calls.
    pub(crate) fn cut_after(&self, ops: u64) {
        self.with(|s| s.cut_at = Some(s.ops + ops));
    }

    pub(crate) fn set_unreadable(&self, file: &Path, yes: bool) {
        self.with(|s| {
            if yes {
                s.unreadable.insert(file.to_path_buf());
            } else {
                s.unreadable.remove(file);
            }
        });
    }

    /// Call `hook` with the path before every read.
    pub(crate) fn before_read(&self, hook: impl Fn(&Path) + Send + Sync + 'static) {
        *self.before_read.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
    }

    pub(crate) fn set_free(&self, bytes: u64) {
        self.with(|s| s.free = bytes);
    }

    /// Make the next fsync at `site` fail with EIO (a failing disk).
    pub(crate) fn fail_next_sync(&self, site: SyncSite) {
        self.with(|s| s.failing_sync = Some(site));
    }

    /// The filesystem as it comes back after the cut (or after an abrupt stop that lost
    /// nothing synced), with the unsynced state decided by `rng`.
    pub(crate) fn after_cut(&self, rng: &mut Rng) -> SimFs {
        let mut s = self.with(|s| s.clone());
        for dir in s.dirs.values_mut() {
            let mut names = dir.durable.clone();
            let keys: Vec<String> = dir
                .names
                .keys()
                .chain(dir.durable.keys())
                .cloned()
                .collect();
            for name in keys {
                let (seen, kept) = (dir.names.get(&name), dir.durable.get(&name));
                if seen != kept && rng.below(2) == 0 {
                    match seen {
                        Some(inode) => names.insert(name, *inode),
                        None => names.remove(&name),
                    };
                }
            }
            dir.names = names.clone();
            dir.durable = names;
        }
        for file in s.files.values_mut() {
            if file.data != file.durable {
                file.data = match rng.below(3) {
                    0 => file.durable.clone(),
                    1 => file.data.clone(),
                    _ => {
                        let len = rng.below(file.data.len() as u32 + 1) as usize;
                        file.data[..len].to_vec()
                    }
                };
            }
            file.durable = file.data.clone();
        }
        s.ops = 0;
        s.cut_at = None;
        s.cut = false;
        SimFs {
            state: Mutex::new(s),
            before_read: Mutex::new(None),
        }
    }

    /// Count a mutating call; fail every call from the cut on.
    fn step(s: &mut State) -> io::Result<()> {
        if s.cut {
            return Err(power_cut());
        }
        s.ops += 1;
        if s.cut_at.is_some_and(|at| s.ops > at) {
            s.cut = true;
            return Err(power_cut());
        }
        Ok(())
    }

    /// The common part of an fsync at `site`: counts as a step, fails once with EIO
    /// where told to, and makes nothing durable where the site's fsync is skipped.
    fn sync_takes_effect(s: &mut State, site: SyncSite) -> io::Result<bool> {
        Self::step(s)?;
        if s.failing_sync.take_if(|f| *f == site).is_some() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(!s.skipped.contains(&site))
    }

    fn inode(s: &State, path: &Path) -> io::Result<u64> {
        let (dir, name) = split(path);
        s.dirs
            .get(&dir)
            .and_then(|d| d.names.get(&name))
            .copied()
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    /// Bytes of the files that have a name (an unlinked file's space is free again).
    fn used(s: &State) -> u64 {
        let named: HashSet<u64> = s
            .dirs
            .values()
            .flat_map(|d| d.names.values().copied())
            .collect();
        named
            .iter()
            .filter_map(|inode| s.files.get(inode))
            .map(|f| f.data.len() as u64)
            .sum()
    }
}

impl Fs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.with(|s| {
            if s.cut {
                return Err(power_cut());
            }
            s.dirs.entry(dir.to_path_buf()).or_default();
            Ok(())
        })
    }

    fn write(&self, file: &Path, bytes: &[u8]) -> io::Result<()> {
        self.with(|s| {
            Self::step(s)?;
            if Self::used(s) + bytes.len() as u64 > s.free {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let (dir, name) = split(file);
            let existing = s.dirs.get(&dir).and_then(|d| d.names.get(&name)).copied();
            let inode = match existing {
                Some(inode) => inode,
                None => {
                    s.next += 1;
                    let inode = s.next;
                    s.dirs
                        .get_mut(&dir)
                        .ok_or(io::ErrorKind::NotFound)?
                        .names
                        .insert(name, inode);
                    s.files.insert(inode, File::default());
                    inode
                }
            };
            if let Some(f) = s.files.get_mut(&inode) {
                f.data = bytes.to_vec();
            }
            Ok(())
        })
    }

    fn append(&self, file: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut data = match self.read(file) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        data.extend_from_slice(bytes);
        self.write(file, &data)
    }

    fn read(&self, file: &Path) -> io::Result<Vec<u8>> {
        let hook = self
            .before_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(hook) = hook {
            hook(file);
        }
        self.with(|s| {
            if s.cut {
                return Err(power_cut());
            }
            if s.unreadable.contains(file) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let inode = Self::inode(s, file)?;
            Ok(s.files
                .get(&inode)
                .map(|f| f.data.clone())
                .unwrap_or_default())
        })
    }

    fn sync_file(&self, file: &Path, site: SyncSite) -> io::Result<()> {
        self.with(|s| {
            if !Self::sync_takes_effect(s, site)? {
                return Ok(());
            }
            let inode = Self::inode(s, file)?;
            if let Some(f) = s.files.get_mut(&inode) {
                f.durable = f.data.clone();
            }
            Ok(())
        })
    }

    fn sync_dir(&self, dir: &Path, site: SyncSite) -> io::Result<()> {
        self.with(|s| {
            if !Self::sync_takes_effect(s, site)? {
                return Ok(());
            }
            let d = s.dirs.get_mut(dir).ok_or(io::ErrorKind::NotFound)?;
            d.durable = d.names.clone();
            Ok(())
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.with(|s| {
            Self::step(s)?;
            let (fd, fname) = split(from);
            let (td, tname) = split(to);
            let inode = s
                .dirs
                .get_mut(&fd)
                .and_then(|d| d.names.remove(&fname))
                .ok_or(io::ErrorKind::NotFound)?;
            s.dirs
                .get_mut(&td)
                .ok_or(io::ErrorKind::NotFound)?
                .names
                .insert(tname, inode);
            Ok(())
        })
    }

    fn remove(&self, file: &Path) -> io::Result<()> {
        self.with(|s| {
            Self::step(s)?;
            let (dir, name) = split(file);
            s.dirs
                .get_mut(&dir)
                .and_then(|d| d.names.remove(&name))
                .map(|_| ())
                .ok_or_else(|| io::ErrorKind::NotFound.into())
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.with(|s| {
            if s.cut {
                return Err(power_cut());
            }
            Ok(s.dirs
                .get(dir)
                .map(|d| d.names.keys().cloned().collect())
                .unwrap_or_default())
        })
    }

    fn free_bytes(&self, _dir: &Path) -> io::Result<u64> {
        self.with(|s| Ok(s.free.saturating_sub(Self::used(s))))
    }

    fn len(&self, file: &Path) -> io::Result<u64> {
        self.read(file).map(|d| d.len() as u64)
    }

    fn lock(&self, _file: &Path) -> io::Result<Box<dyn Send>> {
        Ok(Box::new(()))
    }
}
