//! The MCP conformance suite (npm `@modelcontextprotocol/conformance`, its server scenarios) run
//! against the reference server `@modelcontextprotocol/server-everything`, once directly and once
//! through our gateway configured from the reconciled Deployment with the test bed's Keycloak
//! (issue 14). Every check that passes directly must pass through the gateway too.
//!
//! The suite cannot send an `Authorization` header, so on the gateway side it talks to a loopback
//! [`forwarder`] that adds `Authorization: Bearer <token>` (a real Keycloak token, minted by the
//! authorization-code flow) and changes nothing else. The forwarder's URL is the McpServer's
//! canonical `url`, so the gateway sees the origin the suite uses as its own. The token never
//! reaches the suite, its output or a log.
//!
//! Node >= 22 and the suite come from `hack/testbed conformance-env` (pinned in
//! `hack/versions.env`). Results of the last run: `target/<profile>/conformance/{direct,gateway}/`
//! (one `checks.json` per scenario) and `{direct,gateway}.log`.

use crate::harness;
use crate::support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use harness::Scenario;
use http::header::{HeaderValue, AUTHORIZATION};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use localpod::images::{ensure_server_everything, npm_dir, SERVER_EVERYTHING_VERSION};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// The McpServer in front of server-everything.
const SERVER: &str = "everything";
/// `all`: the active scenarios and the pending ones (SSE polling among them).
const SUITE: &str = "all";

/// Node and the suite's entry script, from `hack/testbed conformance-env`.
struct Suite {
    node: PathBuf,
    js: PathBuf,
}

async fn suite() -> Suite {
    let out = support::run_testbed(&["conformance-env"], None).await;
    let vars = support::parse_exports(&out);
    let path = |k: &str| PathBuf::from(vars.get(k).unwrap_or_else(|| panic!("{k} in {out}")));
    Suite {
        node: path("CONFORMANCE_NODE"),
        js: path("CONFORMANCE_JS"),
    }
}

/// Every check of one run: (scenario, check id) → the statuses of its occurrences, in order.
#[derive(Default)]
struct Results {
    checks: BTreeMap<(String, String), Vec<String>>,
}

impl Results {
    fn count(&self, status: &str) -> usize {
        self.checks
            .values()
            .flatten()
            .filter(|s| *s == status)
            .count()
    }

    /// Scenario → passed (no check failed), as the suite's own summary counts it.
    fn scenarios(&self) -> BTreeMap<&str, bool> {
        let mut out = BTreeMap::new();
        for ((scenario, _), statuses) in &self.checks {
            let ok = out.entry(scenario.as_str()).or_insert(true);
            *ok &= !statuses.iter().any(|s| s == "FAILURE");
        }
        out
    }

    fn passes(&self, key: &(String, String)) -> usize {
        self.checks
            .get(key)
            .map_or(0, |v| v.iter().filter(|s| *s == "SUCCESS").count())
    }
}

/// `server-<scenario>-<timestamp>`, the timestamp ISO 8601 with `:` and `.` as `-` (25 chars
/// with its dash: `-2026-12-01T17-14-47-450Z`).
fn scenario_of(dir_name: &str) -> String {
    let s = dir_name.strip_prefix("server-").unwrap_or(dir_name);
    assert!(
        s.len() > 25 && s.ends_with('Z') && s.as_bytes()[s.len() - 25] == b'-',
        "unexpected result dir {dir_name}"
    );
    s[..s.len() - 25].to_string()
}

fn read_results(dir: &Path) -> Results {
    let mut results = Results::default();
    for entry in std::fs::read_dir(dir).expect("the suite's output dir") {
        let entry = entry.unwrap();
        let scenario = scenario_of(&entry.file_name().to_string_lossy());
        let text = std::fs::read_to_string(entry.path().join("checks.json")).expect("checks.json");
        let checks: Vec<serde_json::Value> = serde_json::from_str(&text).expect("checks JSON");
        for c in checks {
            let id = c["id"].as_str().expect("check id").to_string();
            let status = c["status"].as_str().expect("check status").to_string();
            results
                .checks
                .entry((scenario.clone(), id))
                .or_default()
                .push(status);
        }
    }
    results
}

/// Runs the suite's server scenarios against `url`; results in `out/<side>/`, its output in
/// `out/<side>.log`. The suite exits 1 when a check fails, which is expected here.
async fn run_suite(suite: &Suite, url: &str, out: &Path, side: &str) -> Results {
    let dir = out.join(side);
    let _ = std::fs::remove_dir_all(&dir);
    let log_path = out.join(format!("{side}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(&suite.node);
    cmd.arg(&suite.js)
        .args(["server", "--suite", SUITE, "--url", url, "--output-dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true);
    let status = tokio::time::timeout(Duration::from_secs(300), cmd.status())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{side}: the suite ran over 5 min; see {}",
                log_path.display()
            )
        })
        .expect("run the conformance suite");
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "{side}: the suite exited with {status}; see {}",
        log_path.display()
    );
    read_results(&dir)
}

/// server-everything in `streamableHttp` mode on a free port (its `PORT`), until dropped.
async fn server_everything() -> (Child, String) {
    let script = tokio::task::spawn_blocking(|| ensure_server_everything(&npm_dir()))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = Command::new("node")
        .arg(script)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start server-everything (node on PATH)");
    let addr = format!("127.0.0.1:{port}");
    support::wait_until("server-everything listens", Duration::from_secs(30), || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
    })
    .await;
    (child, format!("http://{addr}"))
}

/// Serves `listener`, forwarding every request to `target` with `Authorization: Bearer <token>`
/// added; method, path, every other header (`Host` too) and both bodies pass unchanged and
/// streamed. Stops when the returned task is aborted.
fn forwarder(
    listener: TcpListener,
    target: SocketAddr,
    token: &str,
) -> tokio::task::JoinHandle<()> {
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).expect("token header");
    auth.set_sensitive(true);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (client, auth) = (client.clone(), auth.clone());
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let (client, auth) = (client.clone(), auth.clone());
                async move {
                    let (mut parts, body) = req.into_parts();
                    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    parts.uri = format!("http://{target}{path}").parse().unwrap();
                    parts.headers.insert(AUTHORIZATION, auth);
                    client.request(http::Request::from_parts(parts, body)).await
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    })
}

fn status_of(r: &Results, key: &(String, String)) -> String {
    r.checks.get(key).map_or("-".into(), |v| v.join(","))
}

/// Prints the figures; returns the checks that pass directly but not through the gateway.
fn compare(direct: &Results, gateway: &Results) -> Vec<String> {
    support::figure(format!(
        "conformance: @modelcontextprotocol/conformance (suite {SUITE}) against server-everything {SERVER_EVERYTHING_VERSION}"
    ));
    support::figure(format!(
        "{:<8} {:>9} {:>7} {:>7} | {:>6} {:>7} {:>7} {:>8}",
        "side", "scenarios", "passed", "failed", "checks", "passed", "failed", "warnings"
    ));
    for (side, r) in [("direct", direct), ("gateway", gateway)] {
        let sc = r.scenarios();
        let ok = sc.values().filter(|p| **p).count();
        support::figure(format!(
            "{side:<8} {:>9} {ok:>7} {:>7} | {:>6} {:>7} {:>7} {:>8}",
            sc.len(),
            sc.len() - ok,
            r.checks.values().map(Vec::len).sum::<usize>(),
            r.count("SUCCESS"),
            r.count("FAILURE"),
            r.count("WARNING"),
        ));
    }
    let mut keys: Vec<&(String, String)> = direct.checks.keys().collect();
    keys.extend(
        gateway
            .checks
            .keys()
            .filter(|k| !direct.checks.contains_key(*k)),
    );
    keys.sort();
    let mut regressions = vec![];
    for key in keys {
        let (d, g) = (status_of(direct, key), status_of(gateway, key));
        if d != g {
            support::figure(format!(
                "differs: {}/{}: direct {d}, gateway {g}",
                key.0, key.1
            ));
        }
        if gateway.passes(key) < direct.passes(key) {
            regressions.push(format!("{}/{} (direct {d}, gateway {g})", key.0, key.1));
        }
    }
    regressions
}

/// The suite never saw the token: not in its output nor in any result file.
fn assert_token_absent(out: &Path, token: &str) {
    for side in ["direct", "gateway"] {
        let mut files = vec![out.join(format!("{side}.log"))];
        for entry in std::fs::read_dir(out.join(side)).unwrap() {
            files.push(entry.unwrap().path().join("checks.json"));
        }
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(!text.contains(token), "the token is in {}", f.display());
        }
    }
}

/// A directory of this test's results under `target/<profile>/`.
fn out_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps/<exe>");
    let dir = profile.join("conformance");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_the_gateway_is_no_worse_than_direct() {
    let suite = suite().await;
    let (_server, upstream) = server_everything().await;
    let (listener, url) = support::mcp_listener().await;
    let s = Scenario::new("conf").await;
    s.seed(&[(SERVER, &url)]).await;
    let cfg = harness::gateway_config_from_deployment(&s.client, &s.ns, SERVER, &upstream).await;
    let gw = mcp_auth_gateway::spawn(cfg).await.expect("gateway starts");
    // The gateway really guards the forwarder's target: no token, no entry.
    let http = reqwest::Client::new();
    let resp = support::send(http.post(format!("{}/mcp", gw.url())).body("{}")).await;
    assert_eq!(
        resp.status(),
        401,
        "the gateway let a request without a token in"
    );

    let scope = format!("openid mcp:tools mcp:server:{}:{SERVER}", s.ns);
    let token = s.realm.mint_token(&scope).await["access_token"]
        .as_str()
        .expect("an access token")
        .to_string();
    let forward = forwarder(listener, gw.addr, &token);

    let out = out_dir();
    let direct = run_suite(&suite, &format!("{upstream}/mcp"), &out, "direct").await;
    let gateway = run_suite(&suite, &url, &out, "gateway").await;
    forward.abort();
    let regressions = compare(&direct, &gateway);

    assert!(
        direct.count("SUCCESS") >= 10,
        "server-everything passes only {} checks directly; see {}",
        direct.count("SUCCESS"),
        out.join("direct.log").display()
    );
    assert_token_absent(&out, &token);
    assert!(
        regressions.is_empty(),
        "{} check(s) pass directly but not through the gateway: {regressions:#?}; see {}",
        regressions.len(),
        out.display()
    );
}
