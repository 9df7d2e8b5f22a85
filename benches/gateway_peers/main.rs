//! Our auth gateway side by side with oauth2-proxy and the direct upstream, in one run (plain
//! `main`, prints figures; not run by `./hack/test`):
//!
//! ```sh
//! cargo bench --bench gateway-peers   # PEERS_ROUNDS=5 PEERS_SECONDS=3 PEERS_COLD=200
//! ```
//!
//! Same machine, separate processes, all on 127.0.0.1:
//! - a fixed fast upstream: this bench binary itself as a child (`GATEWAY_PEERS_UPSTREAM`
//!   set), answering every request with the same small JSON-RPC result;
//! - our gateway, `mcp-keycloak-operator proxy` (the bench-profile build of this package), in
//!   front of it, introspecting with a real client of a realm the bench makes on the test bed's
//!   Keycloak (directly through the admin API, no operator);
//! - oauth2-proxy (`./hack/testbed bench-tools-env` builds it from its Go module) in front of
//!   the same upstream, accepting the realm's bearer JWTs (`--skip-jwt-bearer-tokens`), the
//!   audience checked as ours checks it (`--client-id` = our resource URL).
//!
//! Both get the same pool of real access tokens (client credentials, audience and `mcp:tools`
//! as our gateway requires), first checked request by request: every pool token 200 through
//! both, no token and a token without the audience refused by both. oha (also from
//! `bench-tools-env`) then POSTs an MCP `tools/call` for `PEERS_SECONDS` per run at 1 and at 16
//! connections; oha sends one header set per run, so each run takes the next token of the pool.
//! Targets are interleaved, their order rotated each round, `PEERS_ROUNDS` rounds: req/s and
//! latency percentiles are medians over the rounds, CPU (utime+stime of the proxy process) is
//! summed over them. Then a cold-cache figure (a new token per request, one after the other)
//! and the memory of both proxies; the goals of issue 16 as PASS/MISS; the percentile plot
//! into `docs/bench/gateway-peers.png` (or `PEERS_PLOT`).

#[path = "../../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports, unused_macros)] // uses only part of the shared test harness
mod support;

mod keycloak;
mod load;
mod plot;
mod procs;
mod report;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keycloak::BenchRealm;
use procs::Proc;
use report::{Figures, Sample, Target};

/// Set on the bench's own child process: serve the fixed upstream on this address.
const UPSTREAM_ENV: &str = "GATEWAY_PEERS_UPSTREAM";
const POOL: usize = 64;
const CONCURRENCIES: [usize; 2] = [1, 16];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Ok(addr) = std::env::var(UPSTREAM_ENV) {
        procs::serve_upstream(&addr);
        return;
    }
    // `cargo bench` passes `--bench`; nothing else to parse.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}

/// The three processes and where they listen.
struct Lineup {
    upstream: Proc,
    gateway: Proc,
    peer: Proc,
    upstream_addr: SocketAddr,
    gateway_addr: SocketAddr,
    gateway_admin: SocketAddr,
    peer_addr: SocketAddr,
}

impl Lineup {
    fn url(&self, t: Target) -> String {
        let addr = match t {
            Target::Direct => self.upstream_addr,
            Target::Gateway => self.gateway_addr,
            Target::OAuth2Proxy => self.peer_addr,
        };
        format!("http://{addr}/mcp")
    }

    /// The process whose CPU a target's run is charged to (direct: the upstream).
    fn process(&self, t: Target) -> &Proc {
        match t {
            Target::Direct => &self.upstream,
            Target::Gateway => &self.gateway,
            Target::OAuth2Proxy => &self.peer,
        }
    }
}

struct Tools {
    oauth2_proxy: PathBuf,
    oha: PathBuf,
}

/// `OAUTH2_PROXY_BIN` and `OHA_BIN` from the environment, else from `hack/testbed
/// bench-tools-env` (which builds them at the pinned versions on first use).
async fn tools() -> Tools {
    let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let vars = match (from_env("OAUTH2_PROXY_BIN"), from_env("OHA_BIN")) {
        (Some(o), Some(h)) => [("OAUTH2_PROXY_BIN".into(), o), ("OHA_BIN".into(), h)].into(),
        _ => support::parse_exports(&support::run_testbed(&["bench-tools-env"], None).await),
    };
    Tools {
        oauth2_proxy: vars["OAUTH2_PROXY_BIN"].clone().into(),
        oha: vars["OHA_BIN"].clone().into(),
    }
}

async fn run() {
    let load_start = procs::load_average();
    let tools = tools().await;
    let tb = support::testbed().await;
    let kc = support::KcAdmin::new(&tb.keycloak_url, &tb.admin_user, &tb.admin_password);
    let gateway_addr = procs::free_addr();
    let resource = format!("http://{gateway_addr}/mcp");
    let realm = BenchRealm::create(kc, &support::unique_name("peers"), &resource).await;
    let tokens = realm.caller_tokens(POOL).await;
    let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gateway-peers");
    std::fs::create_dir_all(&logs).unwrap();
    let lineup = start(&tools, &realm, gateway_addr, &logs);
    check_auth(&lineup, &realm, &tokens).await;
    let rounds = env_or("PEERS_ROUNDS", 5usize);
    let secs = env_or("PEERS_SECONDS", 3.0f64);
    print_header(&tools, &realm, &logs, &load_start, rounds, secs);
    let figures = measure(&lineup, &tools, &tokens, rounds, secs);
    let cold = cold_cache(&lineup, &realm, &tokens).await;
    print_results(&figures, &lineup, &cold);
    let plot_path = std::env::var("PEERS_PLOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench/gateway-peers.png")
        });
    draw_plot(&plot_path, &figures);
    println!("\nload average at end: {}", procs::load_average());
    realm.delete().await;
}

/// Starts the upstream, our gateway and oauth2-proxy; waits until each listens.
fn start(tools: &Tools, realm: &BenchRealm, gateway_addr: SocketAddr, logs: &Path) -> Lineup {
    let upstream_addr = procs::free_addr();
    let gateway_admin = procs::free_addr();
    let peer_addr = procs::free_addr();
    let mut upstream = Proc::spawn(
        "upstream",
        Command::new(std::env::current_exe().unwrap()).env(UPSTREAM_ENV, upstream_addr.to_string()),
        &logs.join("upstream.log"),
    );
    let mut gateway = Proc::spawn(
        "our gateway",
        &mut gateway_command(realm, gateway_addr, gateway_admin, upstream_addr),
        &logs.join("gateway.log"),
    );
    let mut peer = Proc::spawn(
        "oauth2-proxy",
        &mut peer_command(&tools.oauth2_proxy, realm, peer_addr, upstream_addr),
        &logs.join("oauth2-proxy.log"),
    );
    let wait = Duration::from_secs(30);
    upstream.wait_listening(upstream_addr, wait);
    gateway.wait_listening(gateway_addr, wait);
    peer.wait_listening(peer_addr, wait);
    Lineup {
        upstream,
        gateway,
        peer,
        upstream_addr,
        gateway_addr,
        gateway_admin,
        peer_addr,
    }
}

/// `mcp-keycloak-operator proxy` as an McpServer's pod runs it, with the introspection budget
/// for unknown tokens raised so the cold-cache phase (hundreds of new tokens a second from one
/// address) measures introspection rather than the 429 of the default 5/s per client.
fn gateway_command(
    realm: &BenchRealm,
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-keycloak-operator"));
    cmd.arg("proxy")
        .args([
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .args(["--upstream", &format!("http://{upstream}")])
        .args([
            "--resource-url",
            &realm.resource,
            "--issuer",
            &realm.issuer(),
        ])
        .args(["--introspection-endpoint", &realm.introspection_endpoint()])
        .args(["--client-id", keycloak::INTROSPECTION_CLIENT])
        .args(["--required-scopes", keycloak::SCOPE])
        .args(["--service-account-clients", keycloak::CALLER]);
    for flag in ["introspection-rate", "introspection-burst"] {
        cmd.args([format!("--{flag}"), "10000".into()])
            .args([format!("--{flag}-per-client"), "10000".into()]);
    }
    cmd.env("OAUTH_CLIENT_SECRET", &realm.introspection_secret)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

/// oauth2-proxy as an API gateway for bearer JWTs of the realm: verified against the realm's
/// JWKS, `aud` must contain our resource URL (its `--client-id`, the audience it checks), an
/// invalid token gets 403 at once (no fallback to a browser login). Request logging stays at
/// its default (on), as ours stays at its default (`info`).
fn peer_command(
    bin: &Path,
    realm: &BenchRealm,
    listen: SocketAddr,
    upstream: SocketAddr,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--http-address={listen}"))
        .arg(format!("--upstream=http://{upstream}/"))
        .args([
            "--provider=oidc",
            &format!("--oidc-issuer-url={}", realm.issuer()),
        ])
        .arg(format!("--client-id={}", realm.resource))
        .arg("--client-secret=unused-in-bearer-mode")
        .arg(format!(
            "--cookie-secret={}",
            mcp_keycloak_operator::admin::generate_secret()
        ))
        .args(["--cookie-secure=false", "--email-domain=*"])
        .args([
            "--skip-jwt-bearer-tokens=true",
            "--bearer-token-login-fallback=false",
        ])
        // Machine tokens carry `email_verified: false`; ours does not look at email either.
        .arg("--insecure-oidc-allow-unverified-email=true");
    cmd
}

/// Both proxies really authorize: every pool token passes both, no token and a token without
/// the audience and scope are refused by both, and the direct upstream answers anyone.
async fn check_auth(lineup: &Lineup, realm: &BenchRealm, tokens: &[String]) {
    let http = reqwest::Client::new();
    let outsider = realm.outsider_token().await;
    for t in [Target::Gateway, Target::OAuth2Proxy] {
        let url = lineup.url(t);
        for token in tokens {
            assert_eq!(
                load::post(&http, &url, Some(token)).await,
                200,
                "{}",
                t.label()
            );
        }
        for (what, token) in [
            ("no token", None),
            ("a token without audience", Some(&outsider[..])),
        ] {
            let status = load::post(&http, &url, token).await;
            assert!(
                matches!(status, 401 | 403),
                "{} answered {status} to {what}",
                t.label()
            );
        }
    }
    assert_eq!(
        load::post(&http, &lineup.url(Target::Direct), None).await,
        200
    );
}

fn print_header(
    tools: &Tools,
    realm: &BenchRealm,
    logs: &Path,
    load: &str,
    rounds: usize,
    secs: f64,
) {
    let version = |bin: &Path| {
        Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("# gateway-peers: our gateway vs oauth2-proxy vs direct");
    println!("commit {commit}; {}", machine());
    println!("load average at start: {load}");
    println!("{}; {}", version(&tools.oauth2_proxy), version(&tools.oha));
    println!(
        "realm {} on {}; {POOL} client-credentials tokens; {rounds} rounds of {secs} s per target and concurrency; logs in {}",
        realm.name,
        realm.kc.base_url,
        logs.display()
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu})")
}

/// Warm-up (discarded), then the rounds; figures per (concurrency, target).
fn measure(
    lineup: &Lineup,
    tools: &Tools,
    tokens: &[String],
    rounds: usize,
    secs: f64,
) -> BTreeMap<usize, BTreeMap<Target, Figures>> {
    let mut next = 0;
    let mut one = |t: Target, conns: usize, secs: f64| {
        let token = &tokens[next % tokens.len()];
        next += 1;
        let proc = lineup.process(t);
        let cpu = proc.cpu_seconds();
        let run = load::oha(&tools.oha, &lineup.url(t), Some(token), conns, secs);
        let cpu_seconds = proc.cpu_seconds() - cpu;
        Sample { run, cpu_seconds }
    };
    for t in Target::ALL {
        one(t, 16, 1.0);
    }
    let mut samples: BTreeMap<(usize, Target), Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        for conns in CONCURRENCIES {
            for i in 0..Target::ALL.len() {
                let t = Target::ALL[(i + round) % Target::ALL.len()];
                samples
                    .entry((conns, t))
                    .or_default()
                    .push(one(t, conns, secs));
            }
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    let mut figures: BTreeMap<usize, BTreeMap<Target, Figures>> = BTreeMap::new();
    for ((conns, t), s) in samples {
        figures
            .entry(conns)
            .or_default()
            .insert(t, report::aggregate(&s));
    }
    figures
}

/// Sequential latencies (ms, p50 and p99) with a new token per request.
struct Cold {
    tokens: usize,
    introspections: f64,
    gateway_cold: (f64, f64),
    gateway_warm: (f64, f64),
    peer: (f64, f64),
    direct: (f64, f64),
}

/// Fresh tokens, one request each, one after the other: through our gateway (each a cache
/// miss: one introspection), the same tokens through oauth2-proxy (it has no cache: every
/// request verifies the signature), and for reference pool tokens again through our gateway
/// (warm) and the upstream direct.
async fn cold_cache(lineup: &Lineup, realm: &BenchRealm, pool: &[String]) -> Cold {
    let n = env_or("PEERS_COLD", 200usize);
    let fresh = realm.caller_tokens(n).await;
    let warm: Vec<String> = pool.iter().cycle().take(n).cloned().collect();
    let http = reqwest::Client::new();
    let before = introspections(lineup.gateway_admin).await;
    let gw_cold = load::sequential(&http, &lineup.url(Target::Gateway), &fresh).await;
    let introspections = introspections(lineup.gateway_admin).await - before;
    // The pool's cache entries (30 s) may have lapsed since the load runs: fill them first.
    load::sequential(&http, &lineup.url(Target::Gateway), pool).await;
    let gw_warm = load::sequential(&http, &lineup.url(Target::Gateway), &warm).await;
    let peer = load::sequential(&http, &lineup.url(Target::OAuth2Proxy), &fresh).await;
    let direct = load::sequential(&http, &lineup.url(Target::Direct), &fresh).await;
    let q = |s: &[Duration]| (load::quantile_ms(s, 0.5), load::quantile_ms(s, 0.99));
    Cold {
        tokens: n,
        introspections,
        gateway_cold: q(&gw_cold),
        gateway_warm: q(&gw_warm),
        peer: q(&peer),
        direct: q(&direct),
    }
}

/// Introspection calls our gateway made so far (its `/metrics`).
async fn introspections(admin: SocketAddr) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("gateway /metrics")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("mcp_gateway_introspection_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn print_results(
    figures: &BTreeMap<usize, BTreeMap<Target, Figures>>,
    lineup: &Lineup,
    cold: &Cold,
) {
    for (conns, figs) in figures {
        println!();
        for line in report::table(*conns, figs) {
            println!("{line}");
        }
    }
    println!("\n| goal (issue 16) | connections | measured | verdict |");
    println!("| --- | --- | --- | --- |");
    for (conns, figs) in figures {
        let (d, g, p) = (
            &figs[&Target::Direct],
            &figs[&Target::Gateway],
            &figs[&Target::OAuth2Proxy],
        );
        for goal in report::goals(d, g, p) {
            let verdict = if goal.pass { "PASS" } else { "MISS" };
            println!(
                "| {} | {conns} | {:.2}× | {verdict} |",
                goal.name, goal.measured
            );
        }
    }
    print_memory(lineup);
    print_cold(cold);
}

fn print_memory(lineup: &Lineup) {
    let mib = |k: u64| k as f64 / 1024.0;
    let (g_rss, g_hwm) = lineup.gateway.memory_kib();
    let (p_rss, p_hwm) = lineup.peer.memory_kib();
    println!("\n| memory after the load | VmRSS | VmHWM (peak) |");
    println!("| --- | --- | --- |");
    println!(
        "| our gateway | {:.1} MiB ({:.2}× o2p) | {:.1} MiB ({:.2}× o2p) |",
        mib(g_rss),
        g_rss as f64 / p_rss as f64,
        mib(g_hwm),
        g_hwm as f64 / p_hwm as f64
    );
    println!(
        "| oauth2-proxy | {:.1} MiB | {:.1} MiB |",
        mib(p_rss),
        mib(p_hwm)
    );
}

fn print_cold(c: &Cold) {
    println!(
        "\n| sequential, 1 connection, {} requests | p50 | p99 |",
        c.tokens
    );
    println!("| --- | --- | --- |");
    let row =
        |what: &str, (p50, p99): (f64, f64)| println!("| {what} | {p50:.3} ms | {p99:.3} ms |");
    row(
        "our gateway, cold cache (a new token per request)",
        c.gateway_cold,
    );
    row("our gateway, warm cache (pool tokens)", c.gateway_warm);
    row(
        "oauth2-proxy, the same new tokens (no cache: verifies each)",
        c.peer,
    );
    row("direct", c.direct);
    println!(
        "introspection calls for {} new tokens: {} ({:.2} per token)",
        c.tokens,
        c.introspections,
        c.introspections / c.tokens as f64
    );
}

fn draw_plot(path: &Path, figures: &BTreeMap<usize, BTreeMap<Target, Figures>>) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let panels: Vec<(usize, BTreeMap<Target, Figures>)> =
        figures.iter().map(|(c, f)| (*c, f.clone())).collect();
    let title = "POST tools/call latency percentiles: direct, our gateway, oauth2-proxy (medians of the rounds)";
    plot::draw(path, title, &panels).unwrap_or_else(|e| panic!("plot {}: {e}", path.display()));
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    println!("plot: {} ({} KB)", path.display(), size / 1024);
}
