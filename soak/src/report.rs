//! Samples, the printed table, the verdict and the JSON report.

use std::collections::BTreeMap;

use crate::Args;

/// Growth beyond this share after the warm-up fails the run.
const MAX_RSS_GROWTH: f64 = 0.05;

/// One interval's figures.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub at_s: f64,
    pub mb_per_s: f64,
    pub messages: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub server_rss_kib: u64,
    pub server_fds: u64,
    pub server_tasks: u64,
    pub server_peers: u64,
    pub server_channels: u64,
    pub own_rss_kib: u64,
    pub own_tasks: u64,
    pub peers_connected: u64,
    pub errors: u64,
}

/// The whole run.
pub struct Report {
    pub peers: usize,
    pub callers: usize,
    pub warmup: f64,
    pub samples: Vec<Sample>,
    pub errors: BTreeMap<String, u64>,
    verdicts: Vec<(String, bool)>,
}

/// The `q` quantile of sorted microsecond values, in milliseconds.
pub fn percentile(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    sorted_us
        .get(rank)
        .map_or(0.0, |us| f64::from(*us) / 1000.0)
}

impl Report {
    pub fn new(args: &Args) -> Report {
        println!(
            "{:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>11} {:>7} {:>7} {:>9} {:>10} {:>7} {:>6}",
            "t s",
            "MB/s",
            "msgs",
            "p50 ms",
            "p99 ms",
            "max ms",
            "srv RSS KiB",
            "srv fd",
            "srv tsk",
            "srv chans",
            "me RSS KiB",
            "me tsk",
            "errors"
        );
        Report {
            peers: args.peers,
            callers: args.callers,
            warmup: args.warmup.clamp(0.0, 0.9),
            samples: Vec::new(),
            errors: BTreeMap::new(),
            verdicts: Vec::new(),
        }
    }

    pub fn print(&self, s: &Sample) {
        println!(
            "{:>7.0} {:>9.2} {:>8} {:>8.2} {:>8.2} {:>8.1} {:>11} {:>7} {:>7} {:>9} {:>10} {:>7} {:>6}",
            s.at_s,
            s.mb_per_s,
            s.messages,
            s.p50_ms,
            s.p99_ms,
            s.max_ms,
            s.server_rss_kib,
            s.server_fds,
            s.server_tasks,
            s.server_channels,
            s.own_rss_kib,
            s.own_tasks,
            s.errors
        );
    }

    /// The samples after the warm-up (at least the last one).
    fn steady(&self) -> &[Sample] {
        let skip = ((self.samples.len() as f64) * self.warmup).floor() as usize;
        let skip = skip.min(self.samples.len().saturating_sub(1));
        self.samples.get(skip..).unwrap_or_default()
    }

    fn growth(steady: &[Sample], value: impl Fn(&Sample) -> u64) -> f64 {
        match (steady.first(), steady.last()) {
            (Some(first), Some(last)) if value(first) > 0 => {
                (value(last) as f64 - value(first) as f64) / value(first) as f64
            }
            _ => 0.0,
        }
    }

    /// Judge the run and print the verdicts; true if every check holds.
    pub fn judge(&mut self) -> bool {
        let steady = self.steady().to_vec();
        let errors: u64 = self.errors.values().sum();
        let server_rss = Self::growth(&steady, |s| s.server_rss_kib);
        let own_rss = Self::growth(&steady, |s| s.own_rss_kib);
        let fds = |s: &Sample| s.server_fds;
        let fd_growth = steady.last().map_or(0, fds) as i64 - steady.first().map_or(0, fds) as i64;
        let tasks = |s: &Sample| s.server_tasks;
        let task_growth =
            steady.last().map_or(0, tasks) as i64 - steady.first().map_or(0, tasks) as i64;
        let all_peers = steady
            .iter()
            .all(|s| s.peers_connected == self.peers as u64 && s.server_peers == self.peers as u64);
        self.verdicts = vec![
            (format!("errors: {errors} ({:?})", self.errors), errors == 0),
            (
                format!("every peer connected throughout ({} peers)", self.peers),
                all_peers,
            ),
            (
                format!(
                    "server RSS growth after warm-up {:+.1} %",
                    server_rss * 100.0
                ),
                server_rss < MAX_RSS_GROWTH,
            ),
            (
                format!(
                    "client-side RSS growth after warm-up {:+.1} %",
                    own_rss * 100.0
                ),
                own_rss < MAX_RSS_GROWTH,
            ),
            (
                format!("server descriptors growth {fd_growth:+}"),
                fd_growth <= 0,
            ),
            (
                format!("server tasks growth {task_growth:+}"),
                task_growth <= 0,
            ),
        ];
        for (what, ok) in &self.verdicts {
            println!("{} {what}", if *ok { "PASS" } else { "FAIL" });
        }
        self.verdicts.iter().all(|(_, ok)| *ok)
    }

    pub fn json(&self) -> serde_json::Value {
        let samples: Vec<_> = self
            .samples
            .iter()
            .map(|s| {
                serde_json::json!({
                    "t_s": s.at_s, "mb_per_s": s.mb_per_s, "messages": s.messages,
                    "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "max_ms": s.max_ms,
                    "server_rss_kib": s.server_rss_kib, "server_fds": s.server_fds,
                    "server_tasks": s.server_tasks, "server_peers": s.server_peers,
                    "server_channels": s.server_channels, "own_rss_kib": s.own_rss_kib,
                    "own_tasks": s.own_tasks, "peers_connected": s.peers_connected,
                    "errors": s.errors,
                })
            })
            .collect();
        serde_json::json!({
            "peers": self.peers,
            "callers": self.callers,
            "warmup": self.warmup,
            "errors": self.errors,
            "verdicts": self.verdicts.iter().map(|(what, ok)| serde_json::json!({"check": what, "ok": ok})).collect::<Vec<_>>(),
            "samples": samples,
        })
    }
}
