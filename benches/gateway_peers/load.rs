//! Load from oha (a separate process; JSON summary) and the bench's own sequential requests
//! for the cold-cache figure.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The MCP request every target gets: a `tools/call` as a client posts it.
pub const MCP_BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}"#;
const ACCEPT: &str = "application/json, text/event-stream";

/// One oha run's figures.
#[derive(Clone, Debug)]
pub struct Run {
    pub rps: f64,
    /// Successful (200) requests.
    pub ok: u64,
    /// Latency percentiles in milliseconds, keyed as oha names them (`p50`, `p99.9`, …).
    pub percentiles: BTreeMap<String, f64>,
}

/// `oha -z secs -c conns` POSTing [`MCP_BODY`] to `url`, with `token` as bearer if given.
/// Panics unless every answer was a 200: a refused or failed request is not a measurement.
pub fn oha(bin: &Path, url: &str, token: Option<&str>, conns: usize, secs: f64) -> Run {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["--no-tui", "--output-format", "json", "-w", "-m", "POST"])
        .args(["-z", &format!("{}ms", (secs * 1000.0) as u64)])
        .args([
            "-c",
            &conns.to_string(),
            "-T",
            "application/json",
            "-d",
            MCP_BODY,
        ])
        .args(["-H", &format!("accept: {ACCEPT}")]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().expect("running oha");
    assert!(
        out.status.success(),
        "oha failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("oha JSON");
    parse_run(&v).unwrap_or_else(|e| panic!("oha against {url}: {e}: {v}"))
}

/// The figures of oha's JSON summary; an error if anything but 200s came back.
pub fn parse_run(v: &Value) -> Result<Run, String> {
    let codes = v["statusCodeDistribution"]
        .as_object()
        .ok_or("no statusCodeDistribution")?;
    let ok = codes.get("200").and_then(Value::as_u64).unwrap_or(0);
    let others: u64 = codes
        .iter()
        .filter(|(k, _)| *k != "200")
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    let errors = v["errorDistribution"].as_object().map_or(0, |e| e.len());
    if ok == 0 || others > 0 || errors > 0 {
        return Err(format!(
            "{ok} OK, {others} other statuses, {errors} kinds of errors"
        ));
    }
    let percentiles = v["latencyPercentiles"]
        .as_object()
        .ok_or("no latencyPercentiles")?
        .iter()
        .filter_map(|(k, s)| Some((k.clone(), s.as_f64()? * 1000.0)))
        .collect();
    Ok(Run {
        rps: v["summary"]["requestsPerSec"]
            .as_f64()
            .ok_or("no requestsPerSec")?,
        ok,
        percentiles,
    })
}

/// POSTs [`MCP_BODY`] once per token, one after the other on one connection; the sorted
/// latencies. Every answer must be a 200.
pub async fn sequential(http: &reqwest::Client, url: &str, tokens: &[String]) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(tokens.len());
    for token in tokens {
        let started = Instant::now();
        let status = post(http, url, Some(token)).await;
        samples.push(started.elapsed());
        assert_eq!(status, 200, "{url}");
    }
    samples.sort_unstable();
    samples
}

/// One POST of [`MCP_BODY`]; the status (the body is read to the end).
pub async fn post(http: &reqwest::Client, url: &str, token: Option<&str>) -> u16 {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", ACCEPT)
        .body(MCP_BODY);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let _ = resp.bytes().await;
    status
}

/// The `p`-quantile (0..=1) of sorted samples, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}
