//! Connected peers, found by host name.
//!
//! Every peer is registered under its hostname and each of its aliases. The
//! newest peer for a name wins: the peer that held the new peer's primary
//! hostname (as its own hostname or as an alias) is shut down, as in the
//! reference (it is most likely the same device reconnecting over a link
//! that died silently), and so is any older peer left without a single
//! name. A peer's removal only removes the names that still point to
//! it, identified by a per-peer id, so a replaced peer that ends late never
//! unregisters its successor.
//!
//! The lock is a plain mutex held for map operations only, never across an
//! await; events and metrics are emitted after it is released.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::crypto::Cipher;
use crate::mux::Multiplexer;
use crate::token::PeerToken;

/// How many events a slow [`subscribe`](super::ServerHandle::subscribe)r may
/// fall behind before it misses some (it then sees
/// [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged)).
const EVENT_BUFFER: usize = 1024;

/// The gauge of connected peers (total, and by protocol version).
const PEER_GAUGE: &str = "snitun.worker.peer_connections";

/// A snapshot of one connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The primary hostname of the peer's token.
    pub hostname: String,
    /// The extra hostnames (token field `alias`) the peer also serves.
    pub aliases: Vec<String>,
    /// The protocol version the link runs.
    pub protocol_version: u8,
    /// The cipher of the link.
    pub cipher: Cipher,
    /// Where the peer connected from.
    pub remote_addr: SocketAddr,
    /// Bytes read from the peer's link (framing included).
    pub bytes_in: u64,
    /// Bytes written to the peer's link (framing included).
    pub bytes_out: u64,
    /// Of `bytes_in`, DATA payload that moved on to callers through a pipe
    /// instead of memory (Linux; see
    /// [`LinkStats::bytes_spliced`](crate::mux::LinkStats::bytes_spliced)).
    pub bytes_spliced: u64,
    /// Channels (callers) open on the link now.
    pub channels: usize,
    /// When the handshake completed.
    pub connected_at: SystemTime,
}

/// A change in the set of connected peers, from
/// [`ServerHandle::subscribe`](super::ServerHandle::subscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A peer completed its handshake and is registered.
    Connected(PeerInfo),
    /// A registered peer is gone.
    Disconnected {
        /// Its primary hostname.
        hostname: String,
        /// Why: "closed by the peer", "replaced by a newer connection",
        /// "token expired", "server shutting down", ...
        reason: String,
    },
}

/// One registered peer: what its token said, and its link.
pub(crate) struct PeerEntry {
    id: u64,
    hostname: String,
    aliases: Vec<String>,
    protocol_version: u8,
    cipher: Cipher,
    remote_addr: SocketAddr,
    connected_at: SystemTime,
    /// Why the server ended this peer, when it did (set before the shutdown).
    end_reason: Mutex<Option<&'static str>>,
    mux: Multiplexer,
}

impl PeerEntry {
    /// An entry for a peer that passed the handshake with `token`.
    pub(crate) fn new(
        id: u64,
        token: &PeerToken,
        remote_addr: SocketAddr,
        mux: Multiplexer,
    ) -> PeerEntry {
        PeerEntry {
            id,
            hostname: token.hostname.clone(),
            aliases: token.aliases.clone(),
            protocol_version: token.protocol_version,
            cipher: token.cipher,
            remote_addr,
            connected_at: SystemTime::now(),
            end_reason: Mutex::new(None),
            mux,
        }
    }

    /// The primary hostname.
    pub(crate) fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The peer's link.
    pub(crate) fn mux(&self) -> &Multiplexer {
        &self.mux
    }

    /// Every name the peer serves: the hostname, then the aliases.
    fn names(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.hostname).chain(self.aliases.iter())
    }

    /// Shut the link down, remembering why (the first reason sticks).
    pub(crate) fn end(&self, reason: &'static str) {
        {
            let mut slot = self.end_reason.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(reason);
        }
        self.mux.shutdown();
    }

    /// The reason given to [`end`](Self::end), if the server ended the peer.
    pub(crate) fn end_reason(&self) -> Option<&'static str> {
        *self.end_reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot with the link's current counters.
    pub(crate) fn info(&self) -> PeerInfo {
        let stats = self.mux.stats();
        PeerInfo {
            hostname: self.hostname.clone(),
            aliases: self.aliases.clone(),
            protocol_version: self.protocol_version,
            cipher: self.cipher,
            remote_addr: self.remote_addr,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            bytes_spliced: stats.bytes_spliced,
            channels: stats.channels,
            connected_at: self.connected_at,
        }
    }
}

#[derive(Default)]
struct State {
    /// Hostname or alias -> the peer serving it.
    names: HashMap<String, Arc<PeerEntry>>,
    /// Every registered peer by id.
    peers: HashMap<u64, Arc<PeerEntry>>,
    /// Registered peers by protocol version (for the gauge).
    by_version: BTreeMap<u8, usize>,
}

impl State {
    /// Does any name still point to the peer `id`?
    fn has_names(&self, entry: &PeerEntry) -> bool {
        entry
            .names()
            .any(|name| self.names.get(name).is_some_and(|p| p.id == entry.id))
    }

    /// The gauge values: total and per protocol version (0 and 1 always
    /// present, as in the reference).
    fn gauge_values(&self) -> (usize, Vec<(u8, usize)>) {
        let mut versions: BTreeMap<u8, usize> = [(0, 0), (1, 0), (2, 0)].into();
        for (version, count) in &self.by_version {
            versions.insert(*version, *count);
        }
        (self.peers.len(), versions.into_iter().collect())
    }
}

/// The registry of connected peers.
pub(crate) struct Registry {
    state: Mutex<State>,
    events: broadcast::Sender<PeerEvent>,
    next_id: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            state: Mutex::new(State::default()),
            events: broadcast::channel(EVENT_BUFFER).0,
            next_id: AtomicU64::new(1),
        }
    }
}

impl Registry {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh peer id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Receive future peer events.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }

    /// Register `entry` under all its names, shutting down the peers it
    /// replaces.
    pub(crate) fn register(&self, entry: &Arc<PeerEntry>) {
        let (replaced, gauge) = {
            let mut state = self.state();
            // (peer, whether it held our primary hostname)
            let mut overwritten: Vec<(Arc<PeerEntry>, bool)> = Vec::new();
            for name in entry.names() {
                let Some(old) = state.names.insert(name.clone(), entry.clone()) else {
                    continue;
                };
                let primary = *name == entry.hostname;
                if old.id == entry.id {
                    continue;
                }
                match overwritten.iter_mut().find(|(o, _)| o.id == old.id) {
                    Some((_, held_primary)) => *held_primary |= primary,
                    None => overwritten.push((old, primary)),
                }
            }
            if state.peers.insert(entry.id, entry.clone()).is_none() {
                *state.by_version.entry(entry.protocol_version).or_default() += 1;
            }
            // The peer that held our primary hostname is replaced (as in the
            // reference); so is one left without any name.
            let replaced: Vec<Arc<PeerEntry>> = overwritten
                .into_iter()
                .filter(|(old, held_primary)| *held_primary || !state.has_names(old))
                .map(|(old, _)| old)
                .collect();
            (replaced, state.gauge_values())
        };
        set_gauge(gauge);
        // Announced before the replaced peers end, so their Disconnected
        // events always follow.
        let _ = self.events.send(PeerEvent::Connected(entry.info()));
        for old in replaced {
            tracing::warn!(
                hostname = %old.hostname,
                remote = %old.remote_addr,
                "found a stale connection for this hostname: replacing it with the new one"
            );
            old.end("replaced by a newer connection");
        }
    }

    /// Remove `entry` (only the names still pointing to it) and announce its
    /// end. Does nothing if it is not registered.
    pub(crate) fn remove(&self, entry: &PeerEntry, reason: String) {
        let gauge = {
            let mut state = self.state();
            if state.peers.remove(&entry.id).is_none() {
                return;
            }
            for name in entry.names() {
                if state.names.get(name).is_some_and(|p| p.id == entry.id) {
                    state.names.remove(name);
                }
            }
            if let Some(count) = state.by_version.get_mut(&entry.protocol_version) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    state.by_version.remove(&entry.protocol_version);
                }
            }
            state.gauge_values()
        };
        set_gauge(gauge);
        let _ = self.events.send(PeerEvent::Disconnected {
            hostname: entry.hostname.clone(),
            reason,
        });
    }

    /// The peer serving `hostname`, if it is connected.
    pub(crate) fn lookup(&self, hostname: &str) -> Option<Arc<PeerEntry>> {
        let entry = self.state().names.get(hostname).cloned()?;
        entry.mux.is_connected().then_some(entry)
    }

    /// Every registered peer, by hostname.
    pub(crate) fn entries(&self) -> Vec<Arc<PeerEntry>> {
        let mut entries: Vec<Arc<PeerEntry>> = self.state().peers.values().cloned().collect();
        entries.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
        entries
    }

    /// Number of registered peers.
    pub(crate) fn len(&self) -> usize {
        self.state().peers.len()
    }

    /// Every registered hostname and alias, sorted.
    pub(crate) fn hostnames(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state().names.keys().cloned().collect();
        names.sort();
        names
    }

    /// Shut every registered peer down.
    pub(crate) fn end_all(&self, reason: &'static str) {
        for entry in self.entries() {
            entry.end(reason);
        }
    }
}

fn set_gauge((total, versions): (usize, Vec<(u8, usize)>)) {
    metrics::gauge!(PEER_GAUGE).set(total as f64);
    for (version, count) in versions {
        metrics::gauge!(PEER_GAUGE, "protocol_version" => version.to_string()).set(count as f64);
    }
}
