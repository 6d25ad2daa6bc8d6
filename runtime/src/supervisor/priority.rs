//! Thread priorities: inference first, capture and keeper after it.
//!
//! On a 2-core board ONNX Runtime's intra-op threads and the capture thread compete for
//! the same cores. Plain fair scheduling gives every runnable thread an equal share, so
//! a JPEG decode preempts inference mid-run. With capture and keeper 10 nice steps
//! down they run in the gaps ORT leaves between operators (and whenever inference
//! waits for a frame), and inference keeps its cores.

// The defaults below are `[pipeline] capture_nice`, `keeper_nice` and `uploader_idle`.

/// How a stage's thread is scheduled relative to inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// This many nice steps below the caller (0: the same).
    Nice(i32),
    /// Linux's idle scheduling and I/O classes: only what nothing else wants.
    Idle,
}

impl Priority {
    /// Apply to the calling thread. Lowering never needs privileges; a failure only
    /// costs speed, so callers log it.
    pub(crate) fn apply(self) -> std::io::Result<()> {
        match self {
            Priority::Nice(0) => Ok(()),
            Priority::Nice(steps) => lower_current_thread(steps),
            Priority::Idle => idle_current_thread(),
        }
    }
}

/// How far below inference the capture thread runs (Linux nice steps). At 10 its CFS
/// weight is a tenth of an inference thread's: it still gets whole cores whenever ORT
/// waits, which is enough to keep the work queue full (`framesift bench`, 2 cores:
/// `pipeline_vs_bare` 0.91–1.03 at nice 0, 0.97–1.03 at nice 10 and 19).
pub const CAPTURE_NICE: i32 = 10;
/// How far below inference the keeper (JPEG encodes, spool writes) runs. Not lower:
/// at 19 a soak run beside a busy compiler starved the keeper's window flush for
/// seconds and the hand-off dropped candidates.
pub const KEEPER_NICE: i32 = 10;
/// The uploader runs in the idle class (`[pipeline] uploader_idle`): nothing waits on
/// it but the bucket, and at nice 19 a drain at loopback speed still took frames from a
/// 2-core board's detector (`framesift bench`, `upload_fps_ratio`; docs/performance.md).
/// Set false, it runs at this nice value.
pub const UPLOADER_NICE: i32 = 19;

/// Lower the calling thread's priority by `steps` nice steps (capped at 19). Linux
/// keeps a nice value per thread, so this leaves the rest of the process alone.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_current_thread(steps: i32) -> std::io::Result<()> {
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

/// Move the calling thread into the idle scheduling class (`SCHED_IDLE`) and the idle
/// I/O class. CFS gives an idle-class thread a weight of 3 against a nice-0 thread's
/// 1024 (nice 19 is 15) and preempts it the moment a normal thread wakes, so it runs in
/// the gaps ORT leaves and never holds a core the detector wants back; the idle I/O
/// class does the same for its disk reads. Per thread, like the nice value.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn idle_current_thread() -> std::io::Result<()> {
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param that the call
    // only reads. ioprio_set takes plain integers.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let io = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
    if io != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn idle_current_thread() -> std::io::Result<()> {
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn lower_current_thread(_steps: i32) -> std::io::Result<()> {
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

    #[test]
    #[allow(unsafe_code)]
    fn idle_moves_only_the_calling_thread_into_the_idle_classes() {
        // SAFETY: plain integer syscalls about the calling thread.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let io_class = || unsafe { libc::syscall(libc::SYS_ioprio_get, 1, 0) } >> 13;
        let (idle_policy, idle_io) = std::thread::spawn(move || {
            Priority::Idle
                .apply()
                .expect("the idle class needs no privileges");
            (policy(), io_class())
        })
        .join()
        .expect("thread");
        assert_eq!(idle_policy, libc::SCHED_IDLE);
        assert_eq!(idle_io, 3, "IOPRIO_CLASS_IDLE");
        assert_ne!(policy(), libc::SCHED_IDLE, "this thread is untouched");
    }
}
