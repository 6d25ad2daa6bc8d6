//! Operations: counters and typed events ([`metrics`]), and the systemd protocol
//! ([`systemd`]).

pub mod metrics;
pub(crate) mod systemd;
