//! The file operations the spool makes, as a trait: [`OsFs`] runs them on the real
//! filesystem; the crash tests run the spool's own code on a simulated filesystem that
//! knows what is durable and what a power cut would lose (`sim.rs`).
//!
//! Every fsync names its [`SyncSite`], so a test can remove one and show the spool's
//! guarantees then fail.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::Path,
};

/// Where in the spool's protocol an fsync happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum SyncSite {
    /// The image's data, before it is renamed into place.
    ImageData,
    /// The sidecar's data, before it is renamed into place (the commit).
    SidecarData,
    /// The spool directory after the renames: the entry's names are durable.
    EntryDir,
    /// A small metadata file (device id, boot counter) and its directory.
    Meta,
}

impl SyncSite {
    #[cfg(test)]
    pub(crate) const ALL: [SyncSite; 4] = [
        SyncSite::ImageData,
        SyncSite::SidecarData,
        SyncSite::EntryDir,
        SyncSite::Meta,
    ];
}

/// The filesystem as the spool uses it. Paths are absolute or relative to the process.
pub(crate) trait Fs: Send + Sync {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Create or truncate `file` and write `bytes` (not durable until [`Fs::sync_file`]).
    fn write(&self, file: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Append to `file`, creating it (not durable).
    fn append(&self, file: &Path, bytes: &[u8]) -> io::Result<()>;
    fn read(&self, file: &Path) -> io::Result<Vec<u8>>;
    fn sync_file(&self, file: &Path, site: SyncSite) -> io::Result<()>;
    fn sync_dir(&self, dir: &Path, site: SyncSite) -> io::Result<()>;
    /// Atomically replace `to` with `from` (same directory or filesystem).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, file: &Path) -> io::Result<()>;
    /// The names of the plain files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Bytes free for an unprivileged writer on the filesystem holding `dir`.
    fn free_bytes(&self, dir: &Path) -> io::Result<u64>;
    /// The size of `file`.
    fn len(&self, file: &Path) -> io::Result<u64>;
    /// Hold an exclusive lock on `file` (created if missing) until the guard drops;
    /// `ErrorKind::WouldBlock` when another process holds it.
    fn lock(&self, file: &Path) -> io::Result<Box<dyn Send>>;
}

/// The real filesystem.
pub(crate) struct OsFs;

impl Fs for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn write(&self, file: &Path, bytes: &[u8]) -> io::Result<()> {
        File::create(file)?.write_all(bytes)
    }

    fn append(&self, file: &Path, bytes: &[u8]) -> io::Result<()> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)?
            .write_all(bytes)
    }

    fn read(&self, file: &Path) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        File::open(file)?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn sync_file(&self, file: &Path, _site: SyncSite) -> io::Result<()> {
        // fsync flushes the inode, whichever descriptor it is called on.
        OpenOptions::new().write(true).open(file)?.sync_all()
    }

    fn sync_dir(&self, dir: &Path, _site: SyncSite) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, file: &Path) -> io::Result<()> {
        fs::remove_file(file)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }

    fn free_bytes(&self, dir: &Path) -> io::Result<u64> {
        statvfs_free(dir)
    }

    fn len(&self, file: &Path) -> io::Result<u64> {
        Ok(fs::metadata(file)?.len())
    }

    fn lock(&self, file: &Path) -> io::Result<Box<dyn Send>> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(file)?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        // Who holds it, for the message another process prints.
        f.set_len(0)?;
        f.write_all(std::process::id().to_string().as_bytes())?;
        Ok(Box::new(f))
    }
}

#[cfg(unix)]
#[allow(unsafe_code)]
fn statvfs_free(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a valid NUL-terminated string and `stat` points to writable
    // memory of the right type; statvfs writes only into it.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    // The fields are 32-bit on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(stat.f_bavail) * u64::from(stat.f_frsize))
}

#[cfg(not(unix))]
fn statvfs_free(_dir: &Path) -> io::Result<u64> {
    Ok(u64::MAX)
}
