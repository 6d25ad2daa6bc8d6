//! systemd service notifications (`Type=notify`, `WatchdogSec=`), without libsystemd.
//!
//! The daemon says `READY=1` once the pipeline runs and `STOPPING=1` when it shuts down.
//! It sends `WATCHDOG=1` only while every pipeline thread makes progress, so systemd
//! restarts a daemon whose inference (or capture) loop has stalled.

use std::{os::unix::net::UnixDatagram, time::Duration};

/// A handle on `$NOTIFY_SOCKET`; every method is a no-op when not run by systemd.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                std::os::unix::net::SocketAddr::from_pathname(&path).ok()?
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        // WATCHDOG_PID, when set, must be ours.
        let for_us =
            std::env::var("WATCHDOG_PID").map_or(true, |pid| pid == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// The watchdog timeout systemd enforces, if any.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
        {
            tracing::debug!(error = %e, message, "sd_notify failed");
        }
    }

    pub fn ready(&self) {
        self.send("READY=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_the_notify_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier {
            socket: Some((
                UnixDatagram::unbound().expect("socket"),
                std::os::unix::net::SocketAddr::from_pathname(&path).expect("addr"),
            )),
            watchdog: Some(Duration::from_secs(30)),
        };
        notifier.ready();
        notifier.watchdog();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn without_systemd_nothing_happens() {
        let n = Notifier {
            socket: None,
            watchdog: None,
        };
        n.ready();
        n.watchdog();
        assert_eq!(n.watchdog_timeout(), None);
    }
}
