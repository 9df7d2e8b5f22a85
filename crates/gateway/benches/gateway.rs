//! Gateway overhead benchmark (plain `main`, prints figures; run with
//! `cargo bench -p mcp-auth-gateway --bench gateway`). Everything is in-process on 127.0.0.1: the fake MCP
//! upstream, the fake introspection endpoint, the gateway and the load generator share one
//! 2-worker Tokio runtime, so absolute numbers are pessimistic; the ratios are the point.
//!
//! Phases (bounded: a few thousand requests in total):
//! 1. sequential latency, direct vs. through the gateway with a warm cache;
//! 2. cold-cache latency (every request a new token, so one introspection each);
//! 3. throughput with 16 concurrent clients over 64 tokens, direct vs. gateway, and
//!    introspection calls per token;
//! 4. the hardening's cost on the valid path: the same requests through a gateway with every
//!    configurable check relaxed (no JWT-shape check, no `Origin` sent, limits far away) and
//!    one with all of them engaged (JWT-shape check, an allowed `Origin` with CORS headers,
//!    a service-account list, default connection/in-flight/rate limits), interleaved with
//!    direct calls: added p50/p99 of each, and the difference.
//!
//! Direct and gateway measurements are interleaved in rounds so that load from other
//! processes affects both alike.

#[path = "../../../tests/it/fakes/mod.rs"]
#[allow(dead_code, unused_imports, unused_macros)] // uses only part of the shared test harness
mod fakes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fakes::*;

const SEQUENTIAL: usize = 2000;
const COLD: usize = 200;
const CONCURRENT_TOTAL: usize = 4000;
const CONCURRENCY: usize = 16;
const TOKENS: usize = 64;
const ROUNDS: usize = 4;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `n` GETs one after the other, their latencies sorted. With an `Origin` (a browser client),
/// the CORS answer is checked too.
async fn sequential(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    origin: Option<&str>,
    n: usize,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let mut req = http.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status(), 200);
        if let Some(o) = origin {
            assert_eq!(resp.headers()["access-control-allow-origin"], o);
        }
        resp.bytes().await.expect("body");
        samples.push(started.elapsed());
    }
    samples.sort_unstable();
    samples
}

async fn throughput(http: &reqwest::Client, url: &str, tokens: Option<Arc<Vec<String>>>) -> f64 {
    let started = Instant::now();
    let per_worker = CONCURRENT_TOTAL / ROUNDS / CONCURRENCY;
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let http = http.clone();
        let url = url.to_owned();
        let tokens = tokens.clone();
        workers.push(tokio::spawn(async move {
            for i in 0..per_worker {
                let mut req = http.get(&url);
                if let Some(tokens) = &tokens {
                    req = req.bearer_auth(&tokens[(w * per_worker + i) % tokens.len()]);
                }
                let resp = req.send().await.expect("request");
                assert_eq!(resp.status(), 200);
                resp.bytes().await.expect("body");
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    (per_worker * CONCURRENCY) as f64 / started.elapsed().as_secs_f64()
}

fn report(name: &str, s: &[Duration]) {
    println!(
        "{name:<28} p50 {:>8.1} µs   p99 {:>8.1} µs   mean {:>8.1} µs",
        us(percentile(s, 0.5)),
        us(percentile(s, 0.99)),
        us(s.iter().sum::<Duration>() / s.len() as u32)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let upstream = FakeUpstream::start().await;
        let introspection = FakeIntrospection::start(CLIENT_ID, CLIENT_SECRET).await;
        let mut cfg = config(&upstream.url(), &introspection.endpoint());
        cfg.cache_ttl_seconds = 300;
        // The cold phase measures an introspection's cost, 200 new tokens from one client in a
        // row: far over the default per-client budget (20, then 5/s), which would answer 429.
        cfg.introspection_burst_per_client = 10_000;
        cfg.introspection_burst = 10_000;
        let gw = spawn_gateway(cfg).await;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client");
        let direct = format!("{}/small", upstream.url());
        let via = format!("{}/small", gw.url());

        let warm = "bench-warm-token";
        introspection.set_token(warm, active_claims("openid mcp:tools"));
        sequential(&http, &direct, None, None, 200).await;
        sequential(&http, &via, Some(warm), None, 200).await;

        sequential_phase(&http, &direct, &via, warm).await;
        cold_phase(&http, &via, &introspection).await;
        throughput_phase(&http, &direct, &via, &introspection).await;
        hardening(&http, &upstream, &introspection, &direct).await;
        gw.shutdown().await.expect("shutdown");
    });
}

/// Phase 1: sequential latency, direct vs. through the gateway with a warm cache.
async fn sequential_phase(http: &reqwest::Client, direct: &str, via: &str, warm: &str) {
    // Interleaved rounds, so load from other processes on the machine hits both sides
    // alike.
    println!("== sequential, {SEQUENTIAL} requests each side, warm cache, {ROUNDS} interleaved rounds ==");
    let mut d = Vec::with_capacity(SEQUENTIAL);
    let mut g = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..ROUNDS {
        d.extend(sequential(http, direct, None, None, SEQUENTIAL / ROUNDS).await);
        g.extend(sequential(http, via, Some(warm), None, SEQUENTIAL / ROUNDS).await);
    }
    d.sort_unstable();
    g.sort_unstable();
    report("direct upstream", &d);
    report("through gateway", &g);
    let (d50, g50) = (percentile(&d, 0.5), percentile(&g, 0.5));
    let (d99, g99) = (percentile(&d, 0.99), percentile(&g, 0.99));
    println!(
        "added latency                p50 {:>8.1} µs   p99 {:>8.1} µs   ratio p50 {:.2}x  p99 {:.2}x",
        us(g50.saturating_sub(d50)),
        us(g99.saturating_sub(d99)),
        g50.as_secs_f64() / d50.as_secs_f64(),
        g99.as_secs_f64() / d99.as_secs_f64()
    );
}

/// Phase 2: cold-cache latency, one introspection per request.
async fn cold_phase(http: &reqwest::Client, via: &str, introspection: &FakeIntrospection) {
    println!("== cold cache, {COLD} requests, one new token each ==");
    let before = introspection.calls();
    let mut cold = Vec::with_capacity(COLD);
    for i in 0..COLD {
        let token = format!("bench-cold-{i}");
        introspection.set_token(&token, active_claims("mcp:tools"));
        cold.extend(sequential(http, via, Some(&token), None, 1).await);
    }
    cold.sort_unstable();
    report("gateway, cold (introspect)", &cold);
    println!(
        "introspection calls          {} for {COLD} tokens",
        introspection.calls() - before
    );
}

/// Phase 3: throughput with concurrent clients, and introspection calls per token.
async fn throughput_phase(
    http: &reqwest::Client,
    direct: &str,
    via: &str,
    introspection: &FakeIntrospection,
) {
    println!("== throughput, {CONCURRENT_TOTAL} requests per side, {CONCURRENCY} concurrent, {TOKENS} tokens, best of {ROUNDS} interleaved rounds ==");
    let tokens: Vec<String> = (0..TOKENS).map(|i| format!("bench-tp-{i}")).collect();
    for t in &tokens {
        introspection.set_token(t, active_claims("mcp:tools"));
    }
    let before = introspection.calls();
    let tokens = Arc::new(tokens);
    let (mut direct_rps, mut gw_rps) = (0f64, 0f64);
    for _ in 0..ROUNDS {
        direct_rps = direct_rps.max(throughput(http, direct, None).await);
        gw_rps = gw_rps.max(throughput(http, via, Some(tokens.clone())).await);
    }
    let calls = introspection.calls() - before;
    println!("direct upstream              {direct_rps:>10.0} req/s");
    println!("through gateway              {gw_rps:>10.0} req/s");
    println!("throughput ratio (gw/direct) {:>10.2}", gw_rps / direct_rps);
    println!(
        "introspection calls per token {:>9.2}  ({calls} calls, {TOKENS} tokens, {CONCURRENT_TOTAL} gateway requests)",
        calls as f64 / TOKENS as f64
    );
}

/// Phase 4: added latency with the configurable hardening relaxed vs. engaged.
async fn hardening(
    http: &reqwest::Client,
    upstream: &FakeUpstream,
    introspection: &FakeIntrospection,
    direct: &str,
) {
    let mut relaxed = config(&upstream.url(), &introspection.endpoint());
    relaxed.cache_ttl_seconds = 300;
    relaxed.require_jwt = false;
    relaxed.max_connections = 1 << 20;
    relaxed.max_inflight = 1 << 20;
    relaxed.introspection_burst = u32::MAX;
    relaxed.introspection_burst_per_client = u32::MAX;
    let mut hardened = config(&upstream.url(), &introspection.endpoint());
    hardened.cache_ttl_seconds = 300;
    hardened.require_jwt = true;
    hardened.allowed_origins = "https://app.example.com".into();
    hardened.service_account_clients = "robot,ci-bot".into();
    let relaxed = spawn_gateway(relaxed).await;
    let hardened = spawn_gateway(hardened).await;
    // A JWT-shaped token passes the shape check; the fake introspection knows it.
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";
    introspection.set_token(token, active_claims("openid mcp:tools"));
    let (r_url, h_url) = (
        format!("{}/small", relaxed.url()),
        format!("{}/small", hardened.url()),
    );
    let origin = "https://mcp.example.com";
    sequential(http, &r_url, Some(token), None, 200).await;
    sequential(http, &h_url, Some(token), Some(origin), 200).await;
    println!("== hardening on the valid path, {SEQUENTIAL} requests each side, {ROUNDS} interleaved rounds ==");
    let (mut d, mut r, mut h) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        d.extend(sequential(http, direct, None, None, SEQUENTIAL / ROUNDS).await);
        r.extend(sequential(http, &r_url, Some(token), None, SEQUENTIAL / ROUNDS).await);
        h.extend(sequential(http, &h_url, Some(token), Some(origin), SEQUENTIAL / ROUNDS).await);
    }
    for v in [&mut d, &mut r, &mut h] {
        v.sort_unstable();
    }
    report("direct upstream", &d);
    report("gateway, hardening relaxed", &r);
    report("gateway, hardening engaged", &h);
    let added = |s: &[Duration], p: f64| us(percentile(s, p).saturating_sub(percentile(&d, p)));
    println!(
        "added p50: relaxed {:>7.1} µs, engaged {:>7.1} µs, difference {:>+7.1} µs",
        added(&r, 0.5),
        added(&h, 0.5),
        added(&h, 0.5) - added(&r, 0.5)
    );
    println!(
        "added p99: relaxed {:>7.1} µs, engaged {:>7.1} µs, difference {:>+7.1} µs",
        added(&r, 0.99),
        added(&h, 0.99),
        added(&h, 0.99) - added(&r, 0.99)
    );
    relaxed.shutdown().await.expect("shutdown");
    hardened.shutdown().await.expect("shutdown");
}
