//! Scale benchmark against the real test bed (plain `main`, prints figures; not run in CI):
//!
//! ```sh
//! cargo bench --bench scale            # uses $KUBECONFIG/$KEYCLOAK_URL, else runs ./hack/testbed up
//! ```
//!
//! The operator runs as a child process (the release build of this package) watching one fresh
//! namespace, so its memory (`/proc/PID/status` VmHWM, VmRSS) and CPU (`/proc/PID/stat`
//! utime+stime) are its own. Phases:
//!
//! 1. apply→`Ready` latency of one McpServer (policy already `Ready`; pods excluded: 0
//!    replicas), `LATENCY_RUNS` (default 100) runs, p50/p99; interleaved with the
//!    same Keycloak work done by a plain admin client making only the minimal calls (create
//!    client with its secret, create scope, two mappers, make it a realm optional scope), and
//!    the ratio of the two;
//! 2. the Keycloak limit: the plain client doing that work for `SCALE_SERVERS` servers at the
//!    operator's default concurrency (servers/s), in the order Keycloak makes cheapest (every
//!    server's client, scope and mappers, then the realm optional scopes), then removing it;
//! 3. `SCALE_SERVERS` (default 500) McpServers applied at once: time until all `Ready` and its
//!    throughput as a ratio to the limit, Keycloak admin requests per server (by operation),
//!    operator peak RSS and CPU seconds;
//! 4. a steady-state resync of all of them: Keycloak writes (must be 0) and reads per server;
//! 5. `REST_SERVERS` (default 1000) McpServers at rest: RSS of the running operator, and of a
//!    freshly started one once it has reconciled them all.
//!
//! Then PASS/MISS for each target of issue 16 (see [`Targets`]), and a plot of phases 1–3 in
//! `SCALE_PLOT` (default `docs/bench/scale.png`). The load average is printed with each phase:
//! the machine is shared.
//!
//! `SCALE_OPERATOR_LOG` sets the operator's `RUST_LOG`. `SCALE_OPERATOR_BIN` runs another build of the operator (e.g. of an earlier commit, for
//! before/after figures); `SCALE_REPLICAS` (default 0) sets the replicas of the bulk servers: 0 keeps the fake node out
//! of phases 2–4 (a server with 0 replicas is `Available` at once), 1 includes 500–1000 kwok
//! pods and so measures the control plane as much as the operator.

#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports, unused_macros)] // uses only part of the shared test harness
mod harness;
#[path = "scale_support/plot.rs"]
mod plot;
#[path = "../tests/it/stress/mod.rs"]
#[allow(dead_code, unused_imports, unused_macros)] // uses only part of the shared test harness
mod stress;
#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports, unused_macros)] // uses only part of the shared test harness
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mcp_keycloak_operator::controller::OperatorConfig;

use harness::*;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::json;
use stress::*;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn bulk_server(ns: &str, name: &str, replicas: i32) -> McpServer {
    let mut s = server(name, "acme", &format!("http://{name}.{ns}.example/mcp"));
    s.spec.replicas = replicas;
    s
}

/// `Ready=True` for the server's current generation.
fn is_ready(s: &McpServer) -> bool {
    let g = s.metadata.generation;
    s.status.as_ref().is_some_and(|st| {
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True" && c.observed_generation == g)
    })
}

/// Polls (every 10 ms) until `name` is `Ready` for its current generation.
async fn wait_ready(api: &Api<McpServer>, name: &str, timeout: Duration) {
    let started = Instant::now();
    loop {
        if api.get(name).await.is_ok_and(|s| is_ready(&s)) {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "{name} not Ready in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Number of McpServers `Ready` for their generation.
async fn count_ready(api: &Api<McpServer>) -> usize {
    let Ok(list) = api.list(&ListParams::default()).await else {
        return 0;
    };
    list.items.iter().filter(|s| is_ready(s)).count()
}

async fn wait_all_ready(api: &Api<McpServer>, n: usize, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let ready = count_ready(api).await;
        if ready >= n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "only {ready} of {n} Ready after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Scrape {
    reads: f64,
    writes: f64,
    server_reconciles: f64,
    policy_reconciles: f64,
    errors: f64,
}

async fn scrape(op: &ChildOperator) -> Scrape {
    let m = op
        .metrics(Duration::from_secs(10))
        .await
        .expect("operator /metrics");
    Scrape {
        reads: keycloak_reads(&m),
        writes: keycloak_writes(&m),
        server_reconciles: metric_sum(
            &m,
            "mcp_operator_reconciles_total",
            &[("controller", "mcpserver")],
        ),
        policy_reconciles: metric_sum(
            &m,
            "mcp_operator_reconciles_total",
            &[("controller", "mcpauthpolicy")],
        ),
        errors: metric_sum(&m, "mcp_operator_reconcile_errors_total", &[]),
    }
}

/// Waits until the operator has been quiet for `quiet`: no Keycloak write, no policy reconcile,
/// and no more server reconciles than the resync of `servers` explains (N servers resyncing
/// every R s make N/R reconciles a second for ever, so "none at all" never comes at scale).
async fn settle(
    op: &ChildOperator,
    quiet: Duration,
    timeout: Duration,
    servers: usize,
    resync: u64,
) {
    let started = Instant::now();
    let background = servers as f64 / resync.max(1) as f64 * quiet.as_secs_f64();
    let allowed = if servers == 0 {
        0.0
    } else {
        1.5 * background + 1.0
    };
    loop {
        let before = scrape(op).await;
        tokio::time::sleep(quiet).await;
        let after = scrape(op).await;
        if after.writes == before.writes
            && after.policy_reconciles == before.policy_reconciles
            && after.server_reconciles - before.server_reconciles <= allowed
        {
            return;
        }
        assert!(started.elapsed() < timeout, "operator never settled");
    }
}

/// A plain Keycloak admin client making only the calls one server needs.
struct Plain {
    http: reqwest::Client,
    tb: &'static support::TestBed,
    realm: String,
    /// The master admin token, fetched anew after a 401 (it lives a minute on the test bed).
    token: tokio::sync::RwLock<String>,
}

impl Plain {
    async fn new(tb: &'static support::TestBed, realm: &str) -> Plain {
        Plain {
            http: reqwest::Client::new(),
            tb,
            realm: realm.to_string(),
            token: tokio::sync::RwLock::new(support::keycloak_admin_token(tb).await),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        for _ in 0..2 {
            let token = self.token.read().await.clone();
            let r = req
                .try_clone()
                .unwrap()
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            if r.status() == reqwest::StatusCode::UNAUTHORIZED {
                *self.token.write().await = support::keycloak_admin_token(self.tb).await;
                continue;
            }
            assert!(r.status().is_success(), "plain client: {}", r.status());
            return r;
        }
        panic!("plain client: a fresh admin token was refused");
    }

    fn admin(&self) -> String {
        format!("{}/admin/realms/{}", self.tb.keycloak_url, self.realm)
    }

    fn location_id(r: &reqwest::Response) -> String {
        let loc = r.headers()["location"].to_str().unwrap();
        loc.rsplit('/').next().unwrap().to_string()
    }

    /// Client with its secret, audience scope, two mappers, realm optional scope.
    async fn one_server(&self, name: &str, url: &str) -> (String, String) {
        let made = self.objects(name, url).await;
        self.make_optional(&made.1).await;
        made
    }

    /// Client with its secret, audience scope and its two mappers: (client id, scope id).
    async fn objects(&self, name: &str, url: &str) -> (String, String) {
        let admin = self.admin();
        let client_id = format!("plain.{name}");
        let r = self
            .send(self.http.post(format!("{admin}/clients")).json(&json!({
                "clientId": client_id, "name": format!("MCP server {url}"), "protocol": "openid-connect",
                "enabled": true, "publicClient": false, "clientAuthenticatorType": "client-secret",
                "secret": mcp_keycloak_operator::admin::generate_secret(),
                "standardFlowEnabled": false, "implicitFlowEnabled": false,
                "directAccessGrantsEnabled": false, "serviceAccountsEnabled": false,
                "defaultClientScopes": [], "optionalClientScopes": [],
                "attributes": {"mcpauth.dev/owner": format!("bench/{name}")}
            })))
            .await;
        let client_uuid = Self::location_id(&r);
        let r = self
            .send(self.http.post(format!("{admin}/client-scopes")).json(&json!({
                "name": format!("plain:{name}"), "protocol": "openid-connect",
                "description": format!("Audience of the MCP server {url}"),
                "attributes": {"include.in.token.scope": "true", "display.on.consent.screen": "true",
                               "consent.screen.text": format!("Access the MCP server at {url}")}
            })))
            .await;
        let scope = Self::location_id(&r);
        for (mapper, key, value) in [
            ("mcp-audience", "included.custom.audience", url.to_string()),
            (
                "mcp-introspection-audience",
                "included.client.audience",
                client_id.clone(),
            ),
        ] {
            self.send(
                self.http
                    .post(format!("{admin}/client-scopes/{scope}/protocol-mappers/models"))
                    .json(&json!({"name": mapper, "protocol": "openid-connect",
                                  "protocolMapper": "oidc-audience-mapper",
                                  "config": {key: value, "access.token.claim": "true",
                                             "introspection.token.claim": "true", "id.token.claim": "false"}})),
            )
            .await;
        }
        (client_uuid, scope)
    }

    async fn make_optional(&self, scope: &str) {
        let admin = self.admin();
        self.send(
            self.http
                .put(format!("{admin}/default-optional-client-scopes/{scope}")),
        )
        .await;
    }

    async fn delete(&self, client_uuid: &str, scope: &str) {
        let admin = self.admin();
        self.send(
            self.http
                .delete(format!("{admin}/default-optional-client-scopes/{scope}")),
        )
        .await;
        self.send(self.http.delete(format!("{admin}/client-scopes/{scope}")))
            .await;
        self.send(self.http.delete(format!("{admin}/clients/{client_uuid}")))
            .await;
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|k| k / 1024 / 1024)
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {mem} GiB RAM")
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows here.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let parts: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("load average {}", parts.join(" "))
}

async fn create_many(client: &Client, ns: &str, names: &[String], replicas: i32) {
    // Eight concurrent creators: "applied at once" without one HTTP/2 stream per object.
    let chunks: Vec<Vec<String>> = names
        .chunks(names.len().div_ceil(8))
        .map(|c| c.to_vec())
        .collect();
    let mut tasks = vec![];
    for chunk in chunks {
        let api: Api<McpServer> = Api::namespaced(client.clone(), ns);
        let ns = ns.to_string();
        tasks.push(tokio::spawn(async move {
            for name in chunk {
                api.create(&PostParams::default(), &bulk_server(&ns, &name, replicas))
                    .await
                    .unwrap_or_else(|e| panic!("create {name}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The benchmark's settings and the namespace every step works in.
struct Bench {
    client: Client,
    ns: String,
    servers: Api<McpServer>,
    opts: OperatorOpts,
    runs: usize,
    scale: usize,
    rest: usize,
    replicas: i32,
    resync: u64,
    /// The test bed's state dir, where its pid files are.
    testbed_dir: std::path::PathBuf,
}

impl Bench {
    /// A fresh operator process on the namespace, ready.
    async fn operator(&self) -> ChildOperator {
        let mut op = ChildOperator::spawn(&self.opts);
        op.wait_ready(Duration::from_secs(60)).await;
        op
    }
}

/// The goals of issue 16, checked against this run's figures.
#[derive(Default)]
struct Targets(Vec<(String, bool)>);

impl Targets {
    fn check(&mut self, what: &str, pass: bool) {
        self.0.push((what.to_string(), pass));
    }

    fn print(&self) {
        println!("\n## targets");
        for (what, pass) in &self.0 {
            println!("{} {what}", if *pass { "PASS" } else { "MISS" });
        }
    }
}

/// What the plot shows, gathered over the phases.
#[derive(Default)]
struct Series {
    operator_ms: Vec<f64>,
    plain_ms: Vec<f64>,
    operator_ready: Vec<(f64, usize)>,
    plain_done: Vec<(f64, usize)>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let runs = env_or("LATENCY_RUNS", 100);
    let scale = env_or("SCALE_SERVERS", 500);
    let rest = env_or("REST_SERVERS", 1000).max(scale);
    let replicas = env_or("SCALE_REPLICAS", 0) as i32;
    let resync = env_or("SCALE_RESYNC_SECONDS", 60) as u64;
    let plot_to = std::env::var("SCALE_PLOT").unwrap_or_else(|_| "docs/bench/scale.png".into());

    let seeded = seeded_namespace("bench").await;
    let (client, ns, realm, mut opts) = seeded.parts();
    let tb = seeded.tb;
    let testbed_dir = tb.dir.clone();
    let log = opts.log_file.clone();
    opts.resync_seconds = resync;
    // e.g. `info,mcp_keycloak_operator::controller::finish=debug`: one line per reconcile, in
    // kube-runtime's span that names its trigger.
    if let Ok(filter) = std::env::var("SCALE_OPERATOR_LOG") {
        opts.rust_log = filter;
    }
    // Another build of the operator (e.g. of an earlier commit) for before/after figures.
    if let Ok(bin) = std::env::var("SCALE_OPERATOR_BIN") {
        opts.binary = bin.into();
    }
    println!("# mcp-keycloak-operator scale benchmark");
    println!("machine: {}; at start: {}", machine(), load_average());
    println!(
        "operator {}, namespace {ns}, realm {}, operator log {}, resync {resync} s, --max-concurrent-reconciles {} (default)",
        opts.binary.display(),
        realm.name,
        log.display(),
        OperatorConfig::DEFAULT_CONCURRENCY
    );
    let servers: Api<McpServer> = Api::namespaced(client.clone(), &ns);
    let b = Bench {
        client,
        ns,
        servers,
        opts,
        runs,
        scale,
        rest,
        replicas,
        resync,
        testbed_dir,
    };
    let mut op = b.operator().await;
    wait_condition::<McpAuthPolicy>(&b.client, &b.ns, "acme", "Ready", "True").await;

    let plain = Arc::new(Plain::new(tb, &realm.name).await);
    let mut targets = Targets::default();
    let mut series = Series::default();
    latency(&b, &op, &plain, &mut series).await;
    op.sigkill();
    let limit = keycloak_limit(&b, &plain, &mut series).await;
    let op = all_at_once(&b, limit, &mut targets, &mut series).await;
    let resync_writes = steady_resync(&b, &op, &mut targets).await;
    let (total, mut fresh) = at_rest(&b, op, &mut targets).await;
    targets.print();
    draw_plot(&plot_to, &series, b.scale);
    clean_up(&b, total).await;
    fresh.sigkill();
    assert_eq!(
        resync_writes, 0.0,
        "a steady-state resync wrote to Keycloak"
    );
}

fn draw_plot(to: &str, s: &Series, scale: usize) {
    let figures = plot::Figures {
        operator_ms: &s.operator_ms,
        plain_ms: &s.plain_ms,
        operator_ready: &s.operator_ready,
        plain_done: &s.plain_done,
        scale,
    };
    let path = std::path::Path::new(to);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match plot::draw(path, &figures) {
        Ok(()) => println!("\nplot: {to}"),
        Err(e) => println!("\nplot not drawn: {e}"),
    }
}

/// Step 1, apply→Ready latency vs. the plain Keycloak calls.
async fn latency(b: &Bench, op: &ChildOperator, plain: &Plain, series: &mut Series) {
    let (runs, ns) = (b.runs, &b.ns);
    println!("\n({} before the latency runs)", load_average());
    let mut operator_lat = vec![];
    let mut plain_lat = vec![];
    let mut plain_made = vec![];
    for i in 0..runs + 2 {
        let name = format!("lat{i:03}");
        let url = format!("http://{name}.{ns}.example/mcp");
        let started = Instant::now();
        // Pods excluded: with 0 replicas the Deployment is Available as soon as it exists.
        create(&b.client, ns, &bulk_server(ns, &name, 0)).await;
        wait_ready(&b.servers, &name, Duration::from_secs(120)).await;
        let op_took = started.elapsed();
        let started = Instant::now();
        let made = plain.one_server(&name, &url).await;
        let plain_took = started.elapsed();
        plain_made.push(made);
        // The first two runs warm up connections and caches.
        if i >= 2 {
            operator_lat.push(op_took);
            plain_lat.push(plain_took);
        }
        settle(
            op,
            Duration::from_millis(1500),
            Duration::from_secs(60),
            0,
            1,
        )
        .await;
    }
    for (c, s) in &plain_made {
        plain.delete(c, s).await;
    }
    series.operator_ms = operator_lat.iter().map(|d| ms(*d)).collect();
    series.plain_ms = plain_lat.iter().map(|d| ms(*d)).collect();
    print_latency(runs, operator_lat, plain_lat);
}

fn print_latency(runs: usize, mut operator_lat: Vec<Duration>, mut plain_lat: Vec<Duration>) {
    operator_lat.sort_unstable();
    plain_lat.sort_unstable();
    // Fewer than 100 runs make the 99th percentile the maximum: say so.
    let (p99, q) = if runs >= 100 {
        ("p99", 0.99)
    } else {
        ("max", 1.0)
    };
    let (op50, op99) = (percentile(&operator_lat, 0.5), percentile(&operator_lat, q));
    let (pl50, pl99) = (percentile(&plain_lat, 0.5), percentile(&plain_lat, q));
    println!("\n## apply→Ready latency, one McpServer (replicas 0: pods excluded), {runs} runs");
    println!(
        "operator:     p50 {:7.1} ms   {p99} {:7.1} ms   (create → Ready=True observed, 10 ms polling)",
        ms(op50),
        ms(op99)
    );
    println!(
        "plain client: p50 {:7.1} ms   {p99} {:7.1} ms   (5 admin calls: client, scope, 2 mappers, optional scope; token reused)",
        ms(pl50),
        ms(pl99)
    );
    println!(
        "ratio operator/plain: p50 {:.1}x   {p99} {:.1}x",
        op50.as_secs_f64() / pl50.as_secs_f64(),
        op99.as_secs_f64() / pl99.as_secs_f64()
    );
}

/// The test bed's processes whose CPU a phase is charged with (pid files of `hack/testbed`).
const TESTBED_PROCESSES: [(&str, &str); 4] = [
    ("Keycloak", "keycloak/default/kc.pid"),
    ("kube-apiserver", "run/kube-apiserver.pid"),
    ("etcd", "run/etcd.pid"),
    ("kube-controller-manager", "run/kube-controller-manager.pid"),
];

/// CPU seconds so far of each test bed process (see [`TESTBED_PROCESSES`]).
fn testbed_cpu(dir: &std::path::Path) -> Vec<(&'static str, f64)> {
    let pid = |file: &str| -> Option<u32> {
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        text.split_whitespace().next()?.parse().ok()
    };
    let cpu = |file: &str| pid(file).map_or(0.0, cpu_of_tree);
    TESTBED_PROCESSES
        .iter()
        .map(|(name, file)| (*name, cpu(file)))
        .collect()
}

/// CPU seconds of `pid` and its descendants (Keycloak's pid file names `kc.sh`, whose child is
/// the JVM).
fn cpu_of_tree(pid: u32) -> f64 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    let children = children.unwrap_or_default();
    let below = children.split_whitespace().filter_map(|c| c.parse().ok());
    cpu_seconds_of(pid) + below.map(cpu_of_tree).sum::<f64>()
}

/// Prints the CPU seconds per server each process spent from `before` to `after` (and `own`,
/// the client's: the operator, or the plain client in this bench process).
fn print_cpu(
    before: &[(&'static str, f64)],
    after: &[(&'static str, f64)],
    own: (&str, f64),
    servers: usize,
) {
    let n = servers.max(1) as f64;
    let mut parts = vec![format!("{} {:.1} ms", own.0, own.1 * 1000.0 / n)];
    let mut total = own.1;
    for ((name, b), (_, a)) in before.iter().zip(after) {
        parts.push(format!("{name} {:.1} ms", (a - b) * 1000.0 / n));
        total += a - b;
    }
    println!(
        "CPU per server: {} (total {:.1} ms)",
        parts.join(", "),
        total * 1000.0 / n
    );
}

/// This bench process's own CPU seconds (the plain client runs in it).
fn own_cpu() -> f64 {
    cpu_seconds_of(std::process::id())
}

/// Step 2, the Keycloak limit: the plain client creates the objects of `scale` servers at the
/// operator's default concurrency, then deletes them. Returns its throughput (servers/s).
/// The realm optional scopes come after every client: Keycloak rebuilds the realm's scope
/// lists after each change to them, and a client created in between pays for it (2.3–2.8× the
/// CPU per server when the two interleave, `BENCHMARKS.md`).
async fn keycloak_limit(b: &Bench, plain: &Arc<Plain>, series: &mut Series) -> f64 {
    let (scale, ns) = (b.scale, &b.ns);
    let concurrency = OperatorConfig::DEFAULT_CONCURRENCY as usize;
    println!("\n({} before the Keycloak limit)", load_average());
    let (cpu_before, own_before) = (testbed_cpu(&b.testbed_dir), own_cpu());
    let started = Instant::now();
    let objects: Vec<(String, String)> = futures::stream::iter(0..scale)
        .map(|i| {
            let plain = plain.clone();
            let name = format!("lim{i:04}");
            let url = format!("http://{name}.{ns}.example/mcp");
            async move { plain.objects(&name, &url).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let made: Vec<((String, String), f64)> = futures::stream::iter(objects)
        .map(|made| {
            let plain = plain.clone();
            async move {
                plain.make_optional(&made.1).await;
                (made, started.elapsed().as_secs_f64())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let took = started.elapsed().as_secs_f64();
    let mut done: Vec<f64> = made.iter().map(|(_, t)| *t).collect();
    done.sort_by(f64::total_cmp);
    series.plain_done = std::iter::once((0.0, 0))
        .chain(done.iter().enumerate().map(|(i, t)| (*t, i + 1)))
        .collect();
    let throughput = scale as f64 / took;
    println!("\n## Keycloak limit: plain admin client, {scale} servers, concurrency {concurrency}");
    println!(
        "done in {took:.1} s ({throughput:.1} servers/s; 5 admin calls each, token reused; the realm optional scopes after all clients)"
    );
    let own = ("plain client", own_cpu() - own_before);
    print_cpu(&cpu_before, &testbed_cpu(&b.testbed_dir), own, scale);
    let removing = Instant::now();
    futures::stream::iter(made)
        .for_each_concurrent(concurrency, |((c, s), _)| {
            let plain = plain.clone();
            async move { plain.delete(&c, &s).await }
        })
        .await;
    println!("removed again in {:.1} s", removing.elapsed().as_secs_f64());
    throughput
}

/// Keycloak requests by (controller, method, operation), from `/metrics`.
fn operations(text: &str) -> BTreeMap<String, f64> {
    let metric = "mcp_operator_keycloak_admin_operations_total{";
    let lines = text.lines().filter_map(|l| l.strip_prefix(metric));
    let parsed = lines.filter_map(|l| {
        let (labels, value) = l.rsplit_once(' ')?;
        Some((
            labels.trim_end_matches('}').to_string(),
            value.parse().ok()?,
        ))
    });
    parsed.collect()
}

/// The requests between two scrapes, per `per`, largest first.
fn print_operations(before: &str, after: &str, per: f64, unit: &str) {
    let (b, a) = (operations(before), operations(after));
    let mut diff: Vec<(f64, &String)> = a
        .iter()
        .map(|(k, v)| (v - b.get(k).copied().unwrap_or(0.0), k))
        .filter(|(d, _)| *d > 0.0)
        .collect();
    diff.sort_by(|x, y| y.0.total_cmp(&x.0));
    println!("Keycloak requests per {unit}, by operation:");
    for (d, k) in diff {
        println!("  {:6.2}  {k}", d / per);
    }
}

/// Step 3, SCALE servers at once (fresh operator process); that operator goes on running.
async fn all_at_once(
    b: &Bench,
    limit: f64,
    targets: &mut Targets,
    series: &mut Series,
) -> ChildOperator {
    let (runs, scale, replicas) = (b.runs, b.scale, b.replicas);
    let op = b.operator().await;
    wait_all_ready(&b.servers, runs + 2, Duration::from_secs(120)).await;
    settle(
        &op,
        Duration::from_secs(3),
        Duration::from_secs(120),
        runs + 2,
        b.resync,
    )
    .await;
    let text_before = op.metrics(Duration::from_secs(10)).await.unwrap();
    let before = scrape(&op).await;
    let (cpu_before, testbed_before) = (op.cpu_seconds(), testbed_cpu(&b.testbed_dir));
    let load = load_average();
    let names: Vec<String> = (0..scale).map(|i| format!("bulk{i:04}")).collect();
    let started = Instant::now();
    let (client, ns) = (b.client.clone(), b.ns.clone());
    let creating = tokio::spawn(async move {
        create_many(&client, &ns, &names, replicas).await;
        started.elapsed()
    });
    series.operator_ready = ready_over_time(&b.servers, runs + 2, scale, started).await;
    let all_ready = started.elapsed();
    let applied_in = creating.await.unwrap();
    let after = scrape(&op).await;
    let text_after = op.metrics(Duration::from_secs(10)).await.unwrap();
    let cpu = op.cpu_seconds() - cpu_before;
    let testbed_after = testbed_cpu(&b.testbed_dir);
    let (_, hwm) = op.memory_kib();
    let throughput = scale as f64 / all_ready.as_secs_f64();
    let requests = (after.reads + after.writes - before.reads - before.writes) / scale as f64;
    println!("\n## {scale} McpServers applied at once (replicas {replicas}; {load} at the start)");
    println!(
        "created in {:.1} s; all Ready after {:.1} s ({throughput:.1} servers/s); ratio to the Keycloak limit {:.2} (goal ≥ 0.8)",
        applied_in.as_secs_f64(),
        all_ready.as_secs_f64(),
        throughput / limit
    );
    println!(
        "Keycloak admin requests per server: {requests:.1} ({:.1} GET + {:.1} writes); reconciles per server {:.1}; policy reconciles {}; reconcile errors {}",
        (after.reads - before.reads) / scale as f64,
        (after.writes - before.writes) / scale as f64,
        (after.server_reconciles - before.server_reconciles) / scale as f64,
        after.policy_reconciles - before.policy_reconciles,
        after.errors - before.errors
    );
    print_operations(&text_before, &text_after, scale as f64, "server");
    print_cpu(&testbed_before, &testbed_after, ("operator", cpu), scale);
    println!(
        "operator: peak RSS (VmHWM) {:.1} MiB, CPU {:.1} s (utime+stime); {} at the end",
        mib(hwm),
        cpu,
        load_average()
    );
    let secs = all_ready.as_secs_f64();
    targets.check(
        &format!("{scale} McpServers at once → all Ready ≤ 40 s: {secs:.1} s"),
        secs <= 40.0,
    );
    targets.check(
        &format!("Keycloak admin requests per new server ≤ 8: {requests:.1}"),
        requests <= 8.0,
    );
    let ratio = throughput / limit;
    targets.check(
        &format!("all-Ready throughput / Keycloak limit ≥ 0.8: {ratio:.2}"),
        ratio >= 0.8,
    );
    op
}

/// Records how many of the `scale` new servers are `Ready` (`base` were before) at every
/// change, until all are: (seconds since `started`, Ready). A watch, not LIST polling: the API
/// server's CPU is part of what this phase measures, and a LIST of every server each 500 ms
/// added to it.
async fn ready_over_time(
    api: &Api<McpServer>,
    base: usize,
    scale: usize,
    started: Instant,
) -> Vec<(f64, usize)> {
    let mut samples = vec![(0.0, 0)];
    let mut ready = std::collections::HashSet::new();
    let events = watcher(api.clone(), watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    let hour = Duration::from_secs(3600);
    loop {
        let left = hour.saturating_sub(started.elapsed());
        let event = tokio::time::timeout(left, events.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {scale} Ready after an hour",
                    samples.last().unwrap().1
                )
            })
            .expect("the McpServer watch ended")
            .expect("the McpServer watch failed");
        match event {
            watcher::Event::Init => ready.clear(),
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) if is_ready(&s) => {
                ready.insert(s.name_any());
            }
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) | watcher::Event::Delete(s) => {
                ready.remove(&s.name_any());
            }
            watcher::Event::InitDone => {}
        }
        let now = ready.len().saturating_sub(base);
        if samples.last().is_some_and(|&(_, n)| n != now) {
            samples.push((started.elapsed().as_secs_f64(), now));
        }
        if now >= scale {
            return samples;
        }
    }
}

/// Step 4, steady-state resync of all of them; the Keycloak writes it made (must be 0).
async fn steady_resync(b: &Bench, op: &ChildOperator, targets: &mut Targets) -> f64 {
    let resync = b.resync;
    let servers = b.scale + b.runs + 2;
    settle(
        op,
        Duration::from_secs(5),
        Duration::from_secs(600),
        servers,
        resync,
    )
    .await;
    let text_before = op.metrics(Duration::from_secs(10)).await.unwrap();
    let before = scrape(op).await;
    let cpu_before = op.cpu_seconds();
    let window = Duration::from_secs(resync + resync / 2);
    tokio::time::sleep(window).await;
    let after = scrape(op).await;
    let text_after = op.metrics(Duration::from_secs(10)).await.unwrap();
    let reconciles = after.server_reconciles - before.server_reconciles;
    let reads = (after.reads - before.reads) / reconciles.max(1.0);
    let server_reads = |t: &str| {
        let ops = operations(t);
        let mine = ops
            .iter()
            .filter(|(k, _)| k.contains("controller=\"mcpserver\",method=\"GET\""));
        mine.map(|(_, v)| v).sum::<f64>()
    };
    let own = (server_reads(&text_after) - server_reads(&text_before)) / reconciles.max(1.0);
    println!(
        "\n## steady-state resync of {} servers ({:.0} s window, resync {resync} s; {} at the end)",
        b.scale + b.runs + 2,
        window.as_secs_f64(),
        load_average()
    );
    println!(
        "server reconciles {reconciles}, policy reconciles {}; Keycloak writes {} (must be 0); reads per server reconcile {reads:.2} (of which the server reconciles' own {own:.2}, the rest the policy's); operator CPU {:.1} s",
        after.policy_reconciles - before.policy_reconciles,
        after.writes - before.writes,
        op.cpu_seconds() - cpu_before
    );
    print_operations(
        &text_before,
        &text_after,
        reconciles.max(1.0),
        "server reconcile",
    );
    targets.check(
        &format!("Keycloak reads per steady-state server reconcile ≤ 2: {reads:.2}"),
        reads <= 2.0,
    );
    after.writes - before.writes
}

/// jemalloc's background thread hands freed pages back over its 10 s decay: RSS read the
/// moment the operator settles still holds part of the start-up peak.
const PURGE: Duration = Duration::from_secs(15);

/// Memory of the operator process, in KiB.
struct Mem {
    rss: u64,
    hwm: u64,
    anon: u64,
    file: u64,
}

impl Mem {
    fn of(op: &ChildOperator) -> Mem {
        let ((rss, hwm), (anon, file)) = (op.memory_kib(), op.rss_split_kib());
        Mem {
            rss,
            hwm,
            anon,
            file,
        }
    }

    /// "RSS at rest (when it settled; peak; anonymous, file-backed)", at rest = `settled` + PURGE.
    fn describe(&self, settled: &Mem) -> String {
        format!(
            "RSS {:.1} MiB {} s after settling ({:.1} MiB when it settled; peak {:.1} MiB; anonymous {:.1}, file-backed {:.1})",
            mib(self.rss),
            PURGE.as_secs(),
            mib(settled.rss),
            mib(self.hwm),
            mib(self.anon),
            mib(self.file)
        )
    }
}

/// Waits until `op` has settled with `servers` resyncing; its memory then and [`PURGE`] later.
async fn memory_at_rest(op: &ChildOperator, servers: usize, resync: u64) -> (Mem, Mem) {
    let (quiet, timeout) = (Duration::from_secs(5), Duration::from_secs(900));
    settle(op, quiet, timeout, servers, resync).await;
    let settled = Mem::of(op);
    tokio::time::sleep(PURGE).await;
    (settled, Mem::of(op))
}

/// Step 5, REST servers at rest: the running operator, then a fresh one after its start-up
/// pass (which goes on running); the number of servers.
async fn at_rest(b: &Bench, op: ChildOperator, targets: &mut Targets) -> (usize, ChildOperator) {
    let extra: Vec<String> = (b.scale..b.rest).map(|i| format!("bulk{i:04}")).collect();
    if !extra.is_empty() {
        create_many(&b.client, &b.ns, &extra, b.replicas).await;
    }
    let total = b.runs + 2 + b.rest;
    wait_all_ready(&b.servers, total, Duration::from_secs(3600)).await;
    let (settled, running) = memory_at_rest(&op, total, b.resync).await;
    let mut op = op;
    op.sigkill();
    let mut fresh = ChildOperator::spawn(&b.opts);
    fresh.wait_ready(Duration::from_secs(120)).await;
    let started = Instant::now();
    // A fresh process reconciles everything once at start; wait for that to finish (its
    // watches may take a moment to list, so quiet alone does not mean done).
    while scrape(&fresh).await.server_reconciles < total as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the fresh operator never reconciled all {total} servers"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fresh_took = started.elapsed();
    let (fresh_settled, fresh_rest) = memory_at_rest(&fresh, total, b.resync).await;
    let s = scrape(&fresh).await;
    println!(
        "\n## {total} McpServers at rest ({} at the end)",
        load_average()
    );
    println!("running operator: {}", running.describe(&settled));
    println!(
        "fresh operator, start-up pass done in {:.0} s ({} server reconciles, {} Keycloak writes, CPU {:.1} s): {}",
        fresh_took.as_secs_f64(),
        s.server_reconciles,
        s.writes,
        fresh.cpu_seconds(),
        fresh_rest.describe(&fresh_settled)
    );
    let worst = mib(running.rss.max(fresh_rest.rss));
    targets.check(
        &format!(
            "RSS at rest with {total} McpServers ≤ 48 MiB (the larger of the two): {worst:.1} MiB"
        ),
        worst <= 48.0,
    );
    (total, fresh)
}

/// Clean up: the operator removes every Keycloak object as the namespace goes.
async fn clean_up(b: &Bench, total: usize) {
    let cleanup = Instant::now();
    support::delete_namespace(&b.client, &b.ns).await;
    let mut left = usize::MAX;
    while cleanup.elapsed() < Duration::from_secs(1800) {
        left = b
            .servers
            .list(&ListParams::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "\ncleanup: namespace deletion finalized {total} servers in {:.0} s ({left} left)",
        cleanup.elapsed().as_secs_f64()
    );
}
