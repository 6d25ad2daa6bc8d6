//! Thread priorities: inference first, capture and keeper after it.
//!
//! On a 2-core board ONNX Runtime's intra-op threads and the capture thread compete for
//! the same cores. Plain fair scheduling gives every runnable thread an equal share, so
//! a JPEG decode preempts inference mid-run. With capture and keeper 10 nice steps
//! down they run in the gaps ORT leaves between operators (and whenever inference
//! waits for a frame), and inference keeps its cores.

// The defaults below are `[pipeline] capture_nice`, `keeper_nice` and `uploader_nice`.

/// How far below inference the capture thread runs (Linux nice steps). At 10 its CFS
/// weight is a tenth of an inference thread's: it still gets whole cores whenever ORT
/// waits, which is enough to keep the work queue full (`framesift bench`, 2 cores:
/// `pipeline_vs_bare` 0.91–1.03 at nice 0, 0.97–1.03 at nice 10 and 19).
pub const CAPTURE_NICE: i32 = 10;
/// How far below inference the keeper (JPEG encodes, spool writes) runs. Not lower:
/// at 19 a soak run beside a busy compiler starved the keeper's window flush for
/// seconds and the hand-off dropped candidates.
pub const KEEPER_NICE: i32 = 10;
/// How far below inference the uploader runs: as far as Linux goes. Nothing waits on
/// it but the bucket, and a drain at loopback speed otherwise takes frames from a
/// 2-core board's detector (`framesift bench`: `upload_fps_ratio`).
pub const UPLOADER_NICE: i32 = 19;

/// Lower the calling thread's priority by `steps` nice steps (capped at 19). Linux
/// keeps a nice value per thread, so this leaves the rest of the process alone.
/// Lowering never needs privileges; a failure only costs speed, so callers log it.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn lower_current_thread(steps: i32) -> std::io::Result<()> {
    // SAFETY: gettid, getpriority and setpriority take and return plain integers and
    // touch no memory of ours.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // getpriority returns the nice value, -20..=19 (-1 is also its error value; a bogus
    // -1 then only makes the result one step higher than intended).
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    let target = (now + steps).clamp(-20, 19);
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, target) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub fn lower_current_thread(_steps: i32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    fn current_thread_nice() -> i32 {
        // SAFETY: as in `lower_current_thread`.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn lowers_only_the_calling_thread() {
        let before = current_thread_nice();
        let lowered = std::thread::spawn(move || {
            lower_current_thread(3).expect("lowering needs no privileges");
            current_thread_nice()
        })
        .join()
        .expect("thread");
        assert_eq!(lowered, (before + 3).min(19));
        assert_eq!(current_thread_nice(), before, "this thread is untouched");
    }
}
