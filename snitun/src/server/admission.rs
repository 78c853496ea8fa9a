//! Admission limits: how much work strangers can make the server hold at
//! once. Beyond a limit new work is refused (the connection is closed, or
//! the new peer turned away) while everything already admitted goes on; each
//! refusal is counted (in [`Refusals`] and the `snitun.limits.refused`
//! metric) and logged at most once per [`LOG_INTERVAL`] per limit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Refusals of one limit are logged at most this often.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

const REFUSED_METRIC: &str = "snitun.limits.refused";

/// The limits admission enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Peer connections between accept and the end of the handshake.
    Handshakes,
    /// Registered peers.
    Peers,
    /// Open channels on one peer's link.
    ChannelsPerPeer,
    /// Caller connections whose ClientHello has not been routed yet.
    PendingHellos,
    /// Bytes a caller may send before its ClientHello is complete.
    HelloBytes,
}

impl Limit {
    const ALL: [Limit; 5] = [
        Limit::Handshakes,
        Limit::Peers,
        Limit::ChannelsPerPeer,
        Limit::PendingHellos,
        Limit::HelloBytes,
    ];

    fn index(self) -> usize {
        match self {
            Limit::Handshakes => 0,
            Limit::Peers => 1,
            Limit::ChannelsPerPeer => 2,
            Limit::PendingHellos => 3,
            Limit::HelloBytes => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Limit::Handshakes => "handshakes",
            Limit::Peers => "peers",
            Limit::ChannelsPerPeer => "channels_per_peer",
            Limit::PendingHellos => "pending_hellos",
            Limit::HelloBytes => "hello_bytes",
        }
    }
}

/// How often each limit turned work away since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Peer connections closed because `max_handshakes` were in progress.
    pub handshakes: u64,
    /// Authenticated peers turned away because `max_peers` were connected.
    pub peers: u64,
    /// Callers closed because their peer had `max_channels_per_peer` open.
    pub channels_per_peer: u64,
    /// Callers closed because `max_pending_hellos` were waiting.
    pub pending_hellos: u64,
    /// Callers closed for sending more than `max_hello_bytes` before their
    /// ClientHello was complete.
    pub hello_bytes: u64,
}

/// Gauges and refusal counters shared by the server's tasks.
#[derive(Debug)]
pub(crate) struct Admission {
    handshakes: AtomicUsize,
    hellos: AtomicUsize,
    refused: [AtomicU64; 5],
    /// Milliseconds after `started` of each limit's last log line (+1, so
    /// 0 means never).
    last_log: [AtomicU64; 5],
    started: Instant,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            handshakes: AtomicUsize::new(0),
            hellos: AtomicUsize::new(0),
            refused: Default::default(),
            last_log: Default::default(),
            started: Instant::now(),
        }
    }
}

/// A slot of a gauge, given back on drop.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    gauge: &'a AtomicUsize,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// Take a slot of a gauged limit (handshakes or pending hellos) if
    /// fewer than `max` are taken; otherwise count a refusal.
    pub(crate) fn enter(&self, limit: Limit, max: usize, remote: SocketAddr) -> Option<Permit<'_>> {
        let gauge = match limit {
            Limit::Handshakes => &self.handshakes,
            Limit::PendingHellos => &self.hellos,
            other => {
                debug_assert!(false, "{} is not a gauged limit", other.name());
                return None;
            }
        };
        let admitted = gauge
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < max).then_some(taken + 1)
            })
            .is_ok();
        if admitted {
            Some(Permit { gauge })
        } else {
            self.refuse(limit, max, remote);
            None
        }
    }

    /// Count (and maybe log) a refusal by `limit`.
    pub(crate) fn refuse(&self, limit: Limit, max: usize, remote: SocketAddr) {
        let i = limit.index();
        if let Some(counter) = self.refused.get(i) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!(REFUSED_METRIC, "limit" => limit.name()).increment(1);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let Some(last) = self.last_log.get(i) else {
            return;
        };
        let previous = last.load(Ordering::Relaxed);
        let due = previous == 0 || now.saturating_sub(previous) >= LOG_INTERVAL.as_millis() as u64;
        if due
            && last
                .compare_exchange(previous, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit = limit.name(),
                max,
                %remote,
                refused_so_far = self.refused.get(i).map_or(0, |c| c.load(Ordering::Relaxed)),
                "limit reached: refusing new work (logged at most every {} s)",
                LOG_INTERVAL.as_secs()
            );
        }
    }

    /// The refusal counts so far.
    pub(crate) fn refusals(&self) -> Refusals {
        let count = |limit: Limit| {
            self.refused
                .get(limit.index())
                .map_or(0, |c| c.load(Ordering::Relaxed))
        };
        let mut refusals = Refusals::default();
        for limit in Limit::ALL {
            let slot = match limit {
                Limit::Handshakes => &mut refusals.handshakes,
                Limit::Peers => &mut refusals.peers,
                Limit::ChannelsPerPeer => &mut refusals.channels_per_peer,
                Limit::PendingHellos => &mut refusals.pending_hellos,
                Limit::HelloBytes => &mut refusals.hello_bytes,
            };
            *slot = count(limit);
        }
        refusals
    }

    /// Connections in the handshake and callers waiting for routing now.
    pub(crate) fn in_progress(&self) -> (usize, usize) {
        (
            self.handshakes.load(Ordering::Acquire),
            self.hellos.load(Ordering::Acquire),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[test]
    fn gauge_admits_up_to_max_and_frees_on_drop() {
        let admission = Admission::default();
        let first = admission.enter(Limit::Handshakes, 2, remote());
        let second = admission.enter(Limit::Handshakes, 2, remote());
        assert!(first.is_some() && second.is_some());
        assert!(admission.enter(Limit::Handshakes, 2, remote()).is_none());
        assert_eq!(admission.refusals().handshakes, 1);
        drop(first);
        assert!(admission.enter(Limit::Handshakes, 2, remote()).is_some());
        assert_eq!(admission.in_progress(), (1, 0));
        assert!(admission.enter(Limit::PendingHellos, 0, remote()).is_none());
        assert_eq!(admission.refusals().pending_hellos, 1);
    }

    #[test]
    fn every_refusal_is_counted_per_limit() {
        let admission = Admission::default();
        for _ in 0..3 {
            admission.refuse(Limit::Peers, 1, remote());
        }
        admission.refuse(Limit::ChannelsPerPeer, 1, remote());
        admission.refuse(Limit::HelloBytes, 1, remote());
        let refusals = admission.refusals();
        assert_eq!(refusals.peers, 3);
        assert_eq!(refusals.channels_per_peer, 1);
        assert_eq!(refusals.hello_bytes, 1);
        assert_eq!(refusals.handshakes, 0);
    }
}
