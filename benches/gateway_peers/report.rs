//! Aggregation of the rounds, the goals of issue 16, and the printed tables (Markdown, so a
//! run's output goes into BENCHMARKS.md as printed).

use std::collections::BTreeMap;

use super::load::Run;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Direct,
    Gateway,
    OAuth2Proxy,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Direct, Target::Gateway, Target::OAuth2Proxy];

    pub fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Gateway => "our gateway",
            Target::OAuth2Proxy => "oauth2-proxy",
        }
    }
}

/// One oha run against one target, with the CPU seconds its proxy (for `Direct`: the upstream)
/// used meanwhile.
#[derive(Clone, Debug)]
pub struct Sample {
    pub run: Run,
    pub cpu_seconds: f64,
}

/// A target's figures over all rounds at one concurrency: medians of req/s and of each latency
/// percentile (robust to one disturbed round), CPU summed over every round.
#[derive(Clone, Debug)]
pub struct Figures {
    pub rps: f64,
    pub percentiles: BTreeMap<String, f64>,
    pub cpu_per_10k: f64,
    pub requests: u64,
}

impl Figures {
    pub fn p(&self, key: &str) -> f64 {
        self.percentiles.get(key).copied().unwrap_or(f64::NAN)
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

pub fn aggregate(samples: &[Sample]) -> Figures {
    let requests: u64 = samples.iter().map(|s| s.run.ok).sum();
    let cpu: f64 = samples.iter().map(|s| s.cpu_seconds).sum();
    let keys = samples
        .first()
        .map(|s| s.run.percentiles.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    let percentiles = keys
        .into_iter()
        .map(|k| {
            let values = samples
                .iter()
                .filter_map(|s| s.run.percentiles.get(&k).copied())
                .collect();
            (k, median(values))
        })
        .collect();
    Figures {
        rps: median(samples.iter().map(|s| s.run.rps).collect()),
        percentiles,
        cpu_per_10k: cpu / requests.max(1) as f64 * 10_000.0,
        requests,
    }
}

/// One goal of issue 16 at one concurrency: the measured ratio and whether it is met.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    pub name: &'static str,
    pub measured: f64,
    pub pass: bool,
}

/// The three goals: req/s ≥ 1.5× oauth2-proxy's; added p50 ≤ 0.5× oauth2-proxy's added p50;
/// req/s ≥ 0.5× direct.
pub fn goals(direct: &Figures, gateway: &Figures, peer: &Figures) -> Vec<Goal> {
    let vs_peer = gateway.rps / peer.rps;
    let added = |f: &Figures| f.p("p50") - direct.p("p50");
    let added_ratio = added(gateway) / added(peer);
    let vs_direct = gateway.rps / direct.rps;
    vec![
        Goal {
            name: "req/s ≥ 1.5× oauth2-proxy",
            measured: vs_peer,
            pass: vs_peer >= 1.5,
        },
        Goal {
            name: "added p50 ≤ 0.5× oauth2-proxy's",
            measured: added_ratio,
            pass: added_ratio <= 0.5,
        },
        Goal {
            name: "req/s ≥ 0.5× direct",
            measured: vs_direct,
            pass: vs_direct >= 0.5,
        },
    ]
}

/// ` (1.23× oauth2-proxy, 0.45× direct)`, leaving out a comparison with itself or a missing one.
fn ratios(value: f64, peer: Option<f64>, direct: Option<f64>) -> String {
    let mut parts = vec![];
    if let Some(p) = peer.filter(|p| p.is_finite() && *p != 0.0) {
        parts.push(format!("{:.2}× o2p", value / p));
    }
    if let Some(d) = direct.filter(|d| d.is_finite() && *d != 0.0) {
        parts.push(format!("{:.2}× direct", value / d));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// A cell: the value with its ratios to oauth2-proxy's and direct's (where the row is neither).
fn cell(t: Target, value: f64, peer: f64, direct: f64, unit: &str, digits: usize) -> String {
    let (p, d) = match t {
        Target::Direct => (None, None),
        Target::Gateway => (Some(peer), Some(direct)),
        Target::OAuth2Proxy => (None, Some(direct)),
    };
    format!("{value:.digits$}{unit}{}", ratios(value, p, d))
}

/// The table of one concurrency, rows in [`Target::ALL`] order.
pub fn table(conns: usize, figs: &BTreeMap<Target, Figures>) -> Vec<String> {
    let (d, peer) = (&figs[&Target::Direct], &figs[&Target::OAuth2Proxy]);
    let mut lines = vec![
        format!("| {conns} connection(s) | req/s | p50 | p99 | added p50 | added p99 | proxy CPU s / 10k req | requests |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- |".to_string(),
    ];
    for t in Target::ALL {
        let f = &figs[&t];
        let add = |k: &str, x: &Figures| x.p(k) - d.p(k);
        let added = |k: &str| match t {
            Target::Direct => "—".to_string(),
            _ => cell(t, add(k, f), add(k, peer), f64::NAN, " ms", 3),
        };
        let cpu = match t {
            Target::Direct => format!("(upstream {:.2})", f.cpu_per_10k),
            _ => cell(t, f.cpu_per_10k, peer.cpu_per_10k, f64::NAN, "", 2),
        };
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {} | {cpu} | {} |",
            t.label(),
            cell(t, f.rps, peer.rps, d.rps, "", 0),
            cell(t, f.p("p50"), peer.p("p50"), d.p("p50"), " ms", 3),
            cell(t, f.p("p99"), peer.p("p99"), d.p("p99"), " ms", 3),
            added("p50"),
            added("p99"),
            f.requests,
        ));
    }
    lines
}
