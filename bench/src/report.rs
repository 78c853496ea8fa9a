//! The results: a markdown table with the target ratios, and JSON.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::run::Plan;
use crate::stats::{Summary, summary};

/// Every figure the run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// One channel, caller to endpoint, MB/s.
    Upload,
    /// One channel, endpoint to caller, MB/s.
    Download,
    /// 16 channels downloading at once, MB/s in total.
    Aggregate,
    /// Of those, slowest channel's rate / fastest channel's rate.
    Fairness,
    /// 1 KiB echo round trip, median, microseconds.
    EchoP50,
    /// 1 KiB echo round trip, 99th percentile, microseconds.
    EchoP99,
    /// Short connections per second.
    ConnRate,
    /// Server resident memory once connected and idle, MiB.
    IdleRssServer,
    /// Client resident memory once connected and idle, MiB.
    IdleRssClient,
    /// Server peak resident memory over the run, MiB.
    PeakRssServer,
    /// Client peak resident memory over the run, MiB.
    PeakRssClient,
    /// Server CPU seconds per GiB moved (bulk workloads).
    CpuServer,
    /// Client CPU seconds per GiB moved (bulk workloads).
    CpuClient,
    /// The benchmark process's own CPU seconds per GiB (load generator and
    /// endpoint).
    CpuLoad,
    /// Server plus client CPU microseconds per short connection: what the
    /// tunnel costs, apart from the load generator it shares the CPUs with.
    CpuConnTunnel,
    /// The benchmark process's CPU microseconds per short connection.
    CpuConnLoad,
}

/// Whether more is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

impl Metric {
    const ALL: [Metric; 16] = [
        Metric::Upload,
        Metric::Download,
        Metric::Aggregate,
        Metric::Fairness,
        Metric::EchoP50,
        Metric::EchoP99,
        Metric::ConnRate,
        Metric::IdleRssServer,
        Metric::IdleRssClient,
        Metric::PeakRssServer,
        Metric::PeakRssClient,
        Metric::CpuServer,
        Metric::CpuClient,
        Metric::CpuLoad,
        Metric::CpuConnTunnel,
        Metric::CpuConnLoad,
    ];

    fn key(self) -> &'static str {
        match self {
            Metric::Upload => "upload_mbs",
            Metric::Download => "download_mbs",
            Metric::Aggregate => "aggregate16_mbs",
            Metric::Fairness => "fairness_slowest_over_fastest",
            Metric::EchoP50 => "echo_p50_us",
            Metric::EchoP99 => "echo_p99_us",
            Metric::ConnRate => "connections_per_s",
            Metric::IdleRssServer => "idle_rss_server_mib",
            Metric::IdleRssClient => "idle_rss_client_mib",
            Metric::PeakRssServer => "peak_rss_server_mib",
            Metric::PeakRssClient => "peak_rss_client_mib",
            Metric::CpuServer => "cpu_server_s_per_gib",
            Metric::CpuClient => "cpu_client_s_per_gib",
            Metric::CpuLoad => "cpu_loadgen_s_per_gib",
            Metric::CpuConnTunnel => "cpu_tunnel_us_per_connection",
            Metric::CpuConnLoad => "cpu_loadgen_us_per_connection",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Metric::Upload => "upload, 1 channel (MB/s)",
            Metric::Download => "download, 1 channel (MB/s)",
            Metric::Aggregate => "aggregate, 16 channels (MB/s)",
            Metric::Fairness => "16 channels: slowest / fastest",
            Metric::EchoP50 => "1 KiB echo p50 (µs)",
            Metric::EchoP99 => "1 KiB echo p99 (µs)",
            Metric::ConnRate => "new connections/s (in flight: see above)",
            Metric::IdleRssServer => "server idle RSS (MiB)",
            Metric::IdleRssClient => "client idle RSS (MiB)",
            Metric::PeakRssServer => "server peak RSS (MiB)",
            Metric::PeakRssClient => "client peak RSS (MiB)",
            Metric::CpuServer => "server CPU s per GiB",
            Metric::CpuClient => "client CPU s per GiB",
            Metric::CpuLoad => "load generator + endpoint CPU s per GiB",
            Metric::CpuConnTunnel => "server + client CPU µs per connection",
            Metric::CpuConnLoad => "load generator + endpoint CPU µs per connection",
        }
    }

    fn better(self) -> Better {
        match self {
            Metric::Upload
            | Metric::Download
            | Metric::Aggregate
            | Metric::Fairness
            | Metric::ConnRate => Better::Higher,
            _ => Better::Lower,
        }
    }
}

/// What one topology measured.
#[derive(Debug, Clone)]
pub struct TopologyResult {
    /// Short name.
    pub name: &'static str,
    /// Description.
    pub label: &'static str,
    /// Every repetition of every metric.
    pub samples: BTreeMap<Metric, Vec<f64>>,
}

impl TopologyResult {
    fn summary(&self, metric: Metric) -> Option<Summary> {
        summary(self.samples.get(&metric)?)
    }
}

/// One performance target and whether this run meets it.
struct Target {
    what: &'static str,
    measured: Option<f64>,
    bound: f64,
    at_least: bool,
    /// Unit of `measured` ("x" for a ratio).
    unit: &'static str,
}

impl Target {
    fn holds(&self) -> Option<bool> {
        let m = self.measured?;
        Some(if self.at_least {
            m >= self.bound
        } else {
            m <= self.bound
        })
    }
}

/// A finished run.
pub struct Report {
    plan: Plan,
    results: Vec<TopologyResult>,
    elapsed_s: f64,
}

impl Report {
    /// The report of `results`, measured with `plan` in `elapsed_s`.
    pub fn new(plan: Plan, results: Vec<TopologyResult>, elapsed_s: f64) -> Report {
        Report {
            plan,
            results,
            elapsed_s,
        }
    }

    fn get(&self, name: &str) -> Option<&TopologyResult> {
        self.results.iter().find(|r| r.name == name)
    }

    fn median(&self, name: &str, metric: Metric) -> Option<f64> {
        Some(self.get(name)?.summary(metric)?.median)
    }

    /// Median of ours over median of `other`.
    fn ratio(&self, metric: Metric, other: &str) -> Option<f64> {
        let ours = self.median("ours", metric)?;
        let theirs = self.median(other, metric)?;
        (theirs != 0.0).then(|| ours / theirs)
    }

    fn targets(&self) -> Vec<Target> {
        let t = |what: &'static str, measured, bound, at_least| Target {
            what,
            measured,
            bound,
            at_least,
            unit: if what.contains("MiB") {
                " MiB"
            } else if what.contains("slowest") {
                ""
            } else {
                "x"
            },
        };
        vec![
            t(
                "upload ours/direct >= 0.40",
                self.ratio(Metric::Upload, "direct"),
                0.40,
                true,
            ),
            t(
                "upload ours/reference >= 10",
                self.ratio(Metric::Upload, "reference"),
                10.0,
                true,
            ),
            t(
                "download ours/direct >= 0.40",
                self.ratio(Metric::Download, "direct"),
                0.40,
                true,
            ),
            t(
                "download ours/reference >= 10",
                self.ratio(Metric::Download, "reference"),
                10.0,
                true,
            ),
            t(
                "aggregate 16 ch ours/direct >= 0.40",
                self.ratio(Metric::Aggregate, "direct"),
                0.40,
                true,
            ),
            t(
                "16 ch slowest/fastest (ours) >= 0.5",
                self.median("ours", Metric::Fairness),
                0.5,
                true,
            ),
            t(
                "echo p50 ours/direct <= 4",
                self.ratio(Metric::EchoP50, "direct"),
                4.0,
                false,
            ),
            t(
                "echo p99 ours/direct <= 5",
                self.ratio(Metric::EchoP99, "direct"),
                5.0,
                false,
            ),
            t(
                "connections/s ours/direct >= 0.6",
                self.ratio(Metric::ConnRate, "direct"),
                0.6,
                true,
            ),
            t(
                "connections/s ours/reference >= 5",
                self.ratio(Metric::ConnRate, "reference"),
                5.0,
                true,
            ),
            t(
                "server idle RSS (ours) <= 8 MiB",
                self.median("ours", Metric::IdleRssServer),
                8.0,
                false,
            ),
            t(
                "client idle RSS (ours) <= 8 MiB",
                self.median("ours", Metric::IdleRssClient),
                8.0,
                false,
            ),
            t(
                "server CPU/GiB ours/reference <= 0.1",
                self.ratio(Metric::CpuServer, "reference"),
                0.1,
                false,
            ),
            t(
                "client CPU/GiB ours/reference <= 0.1",
                self.ratio(Metric::CpuClient, "reference"),
                0.1,
                false,
            ),
        ]
    }

    /// The markdown report.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let p = &self.plan;
        out.push_str(&format!(
            "## snitun-bench results\n\n{} rounds, interleaved; each cell: median (min-max). \
             One channel: {} MiB; aggregate: {} channels x {} MiB; echo: {} x {} B; \
             connections: {} (ClientHello + {} B echo + close), {} in flight; cipher {}. \
             {:.0} s of measuring on {} CPUs.\n\n",
            p.reps,
            p.bulk_bytes >> 20,
            p.channels,
            p.channel_bytes >> 20,
            p.echoes,
            p.echo_size,
            p.connections,
            64,
            p.in_flight,
            p.cipher,
            self.elapsed_s,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        ));
        out.push_str("| figure |");
        for r in &self.results {
            out.push_str(&format!(" {} |", r.name));
        }
        let with_ratios = self.get("ours").is_some();
        let ratio_columns: Vec<&str> = ["direct", "relays", "reference", "baseline"]
            .into_iter()
            .filter(|n| with_ratios && self.get(n).is_some())
            .collect();
        for other in &ratio_columns {
            out.push_str(&format!(" ours/{other} |"));
        }
        out.push_str("\n|---|");
        for _ in &self.results {
            out.push_str("---|");
        }
        for _ in &ratio_columns {
            out.push_str("---|");
        }
        out.push('\n');
        for metric in Metric::ALL {
            if self.results.iter().all(|r| r.summary(metric).is_none()) {
                continue;
            }
            out.push_str(&format!("| {} |", metric.label()));
            for r in &self.results {
                match r.summary(metric) {
                    Some(s) if s.min == s.max => out.push_str(&format!(" {} |", num(s.median))),
                    Some(s) => out.push_str(&format!(
                        " {} ({}-{}) |",
                        num(s.median),
                        num(s.min),
                        num(s.max)
                    )),
                    None => out.push_str(" - |"),
                }
            }
            for other in &ratio_columns {
                match self.ratio(metric, other) {
                    Some(r) => out.push_str(&format!(" {} |", ratio(r))),
                    None => out.push_str(" - |"),
                }
            }
            out.push('\n');
        }
        out.push_str("\nTopologies: ");
        let labels: Vec<String> = self
            .results
            .iter()
            .map(|r| format!("`{}` = {}", r.name, r.label))
            .collect();
        out.push_str(&labels.join("; "));
        out.push_str(
            ".\nCPU per GiB: user + system seconds over the upload, download and aggregate \
             workloads divided by the bytes they moved. CPU per connection: user + system \
             microseconds over the connection workload divided by its connections (the load \
             generator shares the CPUs, so this is the tunnel's cost on its own). Higher is better for MB/s, ratios of \
             throughput and connections/s; lower for latency, memory and CPU.\n",
        );
        let targets = self.targets();
        if targets.iter().any(|t| t.measured.is_some()) {
            out.push_str("\n| target | measured | holds |\n|---|---|---|\n");
            for t in targets {
                let measured = t
                    .measured
                    .map_or("-".to_string(), |m| format!("{}{}", num(m), t.unit));
                let holds = match t.holds() {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "not measured",
                };
                out.push_str(&format!("| {} | {} | {} |\n", t.what, measured, holds));
            }
        }
        out
    }

    /// Everything as JSON: the plan, every sample, summaries, targets.
    pub fn json(&self) -> Value {
        let mut topologies = serde_json::Map::new();
        for r in &self.results {
            let mut metrics = serde_json::Map::new();
            for (metric, values) in &r.samples {
                metrics.insert(
                    metric.key().to_string(),
                    json!({
                        "summary": summary(values),
                        "samples": values,
                        "higher_is_better": metric.better() == Better::Higher,
                    }),
                );
            }
            topologies.insert(
                r.name.to_string(),
                json!({ "label": r.label, "metrics": metrics }),
            );
        }
        let mut ratios = serde_json::Map::new();
        for metric in Metric::ALL {
            for other in ["direct", "relays", "reference", "baseline"] {
                if let Some(r) = self.ratio(metric, other) {
                    ratios.insert(format!("{}.ours_over_{other}", metric.key()), json!(r));
                }
            }
        }
        let targets: Vec<Value> = self
            .targets()
            .iter()
            .map(|t| json!({"target": t.what, "measured": t.measured, "holds": t.holds()}))
            .collect();
        json!({
            "plan": self.plan,
            "elapsed_s": self.elapsed_s,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "topologies": topologies,
            "ratios": ratios,
            "targets": targets,
        })
    }
}

/// A figure with about three significant digits.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio(v: f64) -> String {
    format!("{}x", num(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &'static str, upload: &[f64]) -> TopologyResult {
        let mut samples = BTreeMap::new();
        samples.insert(Metric::Upload, upload.to_vec());
        samples.insert(Metric::IdleRssServer, vec![5.0]);
        TopologyResult {
            name,
            label: name,
            samples,
        }
    }

    #[test]
    fn table_has_ratios_and_verdicts() {
        let plan = Plan {
            reps: 3,
            bulk_bytes: 1 << 20,
            channels: 16,
            channel_bytes: 1 << 16,
            echoes: 10,
            echo_size: 1024,
            connections: 10,
            in_flight: 8,
            cipher: "aes-cbc".into(),
        };
        let report = Report::new(
            plan,
            vec![
                result("direct", &[1000.0, 900.0, 1100.0]),
                result("ours", &[500.0, 400.0, 450.0]),
                result("reference", &[50.0, 40.0, 45.0]),
            ],
            1.0,
        );
        let md = report.markdown();
        assert!(md.contains("| upload, 1 channel (MB/s) | 1000 (900-1100) | 450 (400-500) |"));
        assert!(md.contains("| upload ours/direct >= 0.40 | 0.450x | yes |"));
        assert!(md.contains("| upload ours/reference >= 10 | 10.0x | yes |"));
        assert!(md.contains("| server idle RSS (ours) <= 8 MiB | 5.00 MiB | yes |"));
        let json = report.json();
        assert_eq!(json["ratios"]["upload_mbs.ours_over_direct"], 0.45);
    }
}
