//! The one-command demo, run by `./hack/demo [--once]` (which first brings up the test bed and
//! builds): the seed walkthrough on this machine, end to end, with real processes.
//!
//! 1. CRDs, namespace `mcp-demo`, the Keycloak admin Secret;
//! 2. the operator (the built binary, `run --namespace mcp-demo`) as a child process;
//! 3. `examples/demo.yaml` with `${KEYCLOAK_URL}` substituted, applied; both resources `Ready`
//!    (as judged by this operator process);
//! 4. realm user `demo`;
//! 5. the McpServer's pod (auth gateway = the operator binary, MCP container = npm
//!    server-everything) started by the local pod runner, `localhost:3000` forwarded to the gateway;
//! 6. a VS Code-like client: anonymous DCR, headless Chromium login as `demo` + consent to
//!    `mcp:tools`, `tools/list`, `tools/call echo`, result printed;
//! 7. `--once`: stop and exit; otherwise keep serving `http://localhost:3000/mcp` for VS Code
//!    until Ctrl-C, then stop everything this program started, by PID. The test bed stays up for
//!    the next run (`./hack/testbed down` stops it).
//!
//! Children run in their own process groups, so Ctrl-C reaches only this program, which stops
//! them (SIGTERM, then SIGKILL); their PIDs are also recorded in
//! `~/.cache/mcp-keycloak-operator/demo/pids`, so a run that was killed outright is cleaned up
//! by the next one. Logs: `~/.cache/mcp-keycloak-operator/demo/logs/`.

#[path = "../tests/it/browser/mod.rs"]
#[allow(dead_code, unused_imports, unused_macros)] // uses only part of the shared test harness
mod browser;
#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports, unused_macros)] // uses only part of the shared test harness
mod harness;
#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports, unused_macros)] // uses only part of the shared test harness
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use localpod::cluster::{start_server_pod, LocalServer, RunOptions};
use localpod::images::{default_image_map, ensure_server_everything, npm_dir, LocalBinaries};
use localpod::{ProcessPlan, Readiness, RunnerError, RunningPod, SpawnOptions};
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::{json, Value};

const NAMESPACE: &str = "mcp-demo";
const MANIFEST: &str = include_str!("demo.yaml");
const SERVER: &str = "everything";
const USER: &str = "demo";
/// A local demo account in a realm of a Keycloak that listens on 127.0.0.1 only.
const PASSWORD: &str = "demo-password-1";
const FIELD_MANAGER: &str = "mcp-keycloak-operator-demo";
const OWN_GROUP: SpawnOptions = SpawnOptions {
    own_process_group: true,
};

type Result<T, E = String> = std::result::Result<T, E>;

struct Clock {
    started: Instant,
    /// Seconds `./hack/demo` had spent (install, test bed, build) before this program started.
    before: u64,
}

impl Clock {
    fn from_env() -> Clock {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        Clock {
            started: Instant::now(),
            before: std::env::var("DEMO_STARTED_AT")
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .and_then(|t0| now.checked_sub(t0))
                .unwrap_or(0),
        }
    }

    fn say(&self, msg: impl std::fmt::Display) {
        let total = self.before as f64 + self.started.elapsed().as_secs_f64();
        eprintln!("[demo {total:>6.1}s] {msg}");
    }
}

fn cache_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/mcp-keycloak-operator/demo")
}

/// `target/<profile>/` of this example binary (`target/<profile>/examples/demo`).
fn profile_dir() -> Result<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(Path::to_path_buf))
        .ok_or_else(|| "cannot locate the build directory".to_string())
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// What this run started; stopped in one place, whatever happens.
#[derive(Default)]
struct Started {
    operator: Option<RunningPod>,
    pod: Option<LocalServer>,
}

impl Started {
    fn record(&self) {
        let mut pids = vec![];
        if let Some(op) = &self.operator {
            pids.extend(op.pids());
        }
        if let Some(pod) = &self.pod {
            pids.extend(pod.pod.pids());
        }
        let lines: String = pids
            .iter()
            .filter_map(|(_, pid)| {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
                Some(format!("{pid} {}\n", exe.display()))
            })
            .collect();
        let _ = std::fs::create_dir_all(cache_dir());
        let _ = std::fs::write(pid_file(), lines);
    }

    /// The first child that exited by itself.
    fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.pod
            .as_mut()
            .and_then(|p| p.pod.exited())
            .or_else(|| self.operator.as_mut().and_then(|o| o.exited()))
    }

    async fn stop(&mut self, clock: &Clock) {
        let mut pids = vec![];
        if let Some(pod) = self.pod.take() {
            pids.extend(pod.pod.pids());
            pod.stop().await;
        }
        if let Some(op) = self.operator.take() {
            pids.extend(op.pids());
            op.stop().await;
        }
        let _ = std::fs::remove_file(pid_file());
        if !pids.is_empty() {
            let list: Vec<String> = pids.iter().map(|(c, p)| format!("{c} {p}")).collect();
            clock.say(format!("stopped {}", list.join(", ")));
        }
    }
}

/// `pid program` of every process this run started.
fn pid_file() -> PathBuf {
    cache_dir().join("pids")
}

/// Stops what an earlier, killed run left behind: each recorded PID, only if it still runs the
/// recorded program.
async fn stop_leftovers(clock: &Clock) {
    let Ok(text) = std::fs::read_to_string(pid_file()) else {
        return;
    };
    for line in text.lines() {
        let Some((pid, exe)) = line.split_once(' ') else {
            continue;
        };
        let running = std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|p| p.display().to_string() == exe);
        if running {
            clock.say(format!(
                "stopping PID {pid} ({exe}), left by an earlier run"
            ));
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", pid])
                .status()
                .await;
            for _ in 0..50 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let _ = std::fs::remove_file(pid_file());
}

/// Server-side apply of one object into the demo namespace.
async fn apply(client: &Client, obj: &Value) -> Result<()> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let patch = Patch::Apply(obj);
    let r = match kind {
        "McpAuthPolicy" => Api::<McpAuthPolicy>::namespaced(client.clone(), NAMESPACE)
            .patch(name, &pp, &patch)
            .await
            .map(drop),
        "McpServer" => Api::<McpServer>::namespaced(client.clone(), NAMESPACE)
            .patch(name, &pp, &patch)
            .await
            .map(drop),
        "Secret" => Api::<Secret>::namespaced(client.clone(), NAMESPACE)
            .patch(name, &pp, &patch)
            .await
            .map(drop),
        other => return Err(format!("demo.yaml: unexpected kind {other}")),
    };
    r.map_err(|e| format!("applying {kind} {NAMESPACE}/{name}: {e}"))
}

/// The documents of `examples/demo.yaml`, `${KEYCLOAK_URL}` substituted.
fn manifest(keycloak_url: &str) -> Result<Vec<Value>> {
    let text = MANIFEST.replace("${KEYCLOAK_URL}", keycloak_url);
    let mut docs = vec![];
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value =
            serde::Deserialize::deserialize(doc).map_err(|e| format!("demo.yaml: {e}"))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The operator as a child process (through the pod runner's process handling: own log file,
/// PID, readiness on `/readyz`, SIGTERM then SIGKILL on stop). Returns its metrics port.
async fn start_operator(
    clock: &Clock,
    tb: &support::TestBed,
    log_dir: &Path,
    started: &mut Started,
) -> Result<u16> {
    let binary = profile_dir()?.join("mcp-keycloak-operator");
    if !binary.exists() {
        return Err(format!(
            "{} missing: run ./hack/demo (it builds first)",
            binary.display()
        ));
    }
    let port = free_port()?;
    let env: BTreeMap<String, String> = [
        ("KUBECONFIG", tb.kubeconfig.display().to_string()),
        ("RUST_LOG", "info".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let plan = ProcessPlan {
        container: "operator".into(),
        program: binary,
        args: [
            "run",
            "--namespace",
            NAMESPACE,
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ]
        .map(String::from)
        .to_vec(),
        env,
        ports: vec![i32::from(port)],
        readiness: Readiness::Http {
            port,
            path: "/readyz".into(),
        },
    };
    let path = std::env::var("PATH").unwrap_or_default();
    let op = RunningPod::spawn_with(&[plan], &path, log_dir, OWN_GROUP)
        .map_err(|e| format!("starting the operator: {e}"))?;
    let op = started.operator.insert(op);
    op.wait_ready(Duration::from_secs(60))
        .await
        .map_err(|e| format!("the operator did not become ready: {e}"))?;
    clock.say(format!(
        "operator running (PID {}, log {})",
        op.pids()[0].1,
        op.log_file("operator").display()
    ));
    started.record();
    Ok(port)
}

/// Waits until this operator process has reconciled the McpServer, so the `Ready` read next is
/// its verdict, not one left in the status by an earlier run.
async fn wait_first_reconcile(metrics_port: u16) -> Result<()> {
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(&url).await {
            let text = r.text().await.unwrap_or_default();
            if text.lines().any(|l| {
                (l.contains("reconciles_total{") || l.contains("reconcile_errors_total{"))
                    && l.contains("controller=\"mcpserver\"")
            }) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err("the operator did not reconcile the McpServer within 90 s (see its log)".into())
}

/// Realm user `demo` with a known password (created, or reset on later runs).
async fn ensure_user(realm: &harness::Realm) -> Result<()> {
    let body = json!({
        "username": USER, "enabled": true, "emailVerified": true,
        "email": "demo@example.com", "firstName": "Demo", "lastName": "User",
        "credentials": [{"type": "password", "value": PASSWORD, "temporary": false}]
    });
    let (s, v) = realm.kc.post(&realm.path("/users"), &body).await;
    if s.as_u16() == 409 {
        let users = realm
            .get(&format!("/users?username={USER}&exact=true"))
            .await;
        let id = users[0]["id"].as_str().unwrap_or_default().to_string();
        let (s, v) = realm
            .kc
            .put(
                &realm.path(&format!("/users/{id}/reset-password")),
                &json!({"type": "password", "value": PASSWORD, "temporary": false}),
            )
            .await;
        if !s.is_success() {
            return Err(format!("resetting the demo user's password: {s} {v}"));
        }
    } else if !s.is_success() {
        return Err(format!("creating the demo user: {s} {v}"));
    }
    Ok(())
}

async fn start_pod(
    clock: &Clock,
    client: &Client,
    log_dir: &Path,
    started: &mut Started,
) -> Result<()> {
    let script = tokio::task::spawn_blocking(|| ensure_server_everything(&npm_dir()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let images = default_image_map(&LocalBinaries {
        operator: profile_dir()?.join("mcp-keycloak-operator"),
        native_example: None,
        server_everything_script: Some(script),
    });
    let options = RunOptions {
        spawn: OWN_GROUP,
        ..RunOptions::new(log_dir)
    };
    let s = match start_server_pod(client, NAMESPACE, SERVER, &images, &options).await {
        Ok(s) => s,
        Err(e @ RunnerError::PortBusy { .. }) => {
            return Err(format!(
                "{e}\n  Is another demo (or a walkthrough test) running? The demo needs ports \
                 3000, 3001, 8080 and 9090 on this host."
            ))
        }
        Err(e) => return Err(e.to_string()),
    };
    clock.say(format!(
        "pod running: {}; {} (logs {})",
        s.pod
            .pids()
            .iter()
            .map(|(c, p)| format!("{c} PID {p}"))
            .collect::<Vec<_>>()
            .join(", "),
        s.forwards
            .iter()
            .map(|f| format!("forward {} → {}", f.listen, f.target))
            .collect::<Vec<_>>()
            .join(", "),
        log_dir.display()
    ));
    started.pod = Some(s);
    started.record();
    Ok(())
}

/// What the VS Code-like client got.
struct ClientRun {
    client_id: String,
    consented: Vec<String>,
    tools: Vec<String>,
    text: String,
}

async fn vscode_like_client(url: &str) -> Result<ClientRun, browser::Error> {
    let browser = browser::Browser::start().await?;
    let r = async {
        let conn = browser::client::connect_like_vscode(url, &browser, (USER, PASSWORD)).await?;
        let tools = conn.tool_names().await?;
        let result = conn
            .call_tool(
                "echo",
                json!({"message": "Hello from a Keycloak-secured MCP server"}),
            )
            .await?;
        let text = browser::client::result_text(&result);
        let run = ClientRun {
            client_id: conn.client_id.clone(),
            consented: conn.login.consent_items.clone(),
            tools,
            text,
        };
        conn.close().await;
        if result.is_error == Some(true) || !run.text.starts_with("Echo: ") {
            return Err(browser::Error::new(
                "result",
                format!("echo answered {:?}", run.text),
            ));
        }
        Ok(run)
    }
    .await;
    browser.close().await;
    r
}

async fn run(clock: &Clock, once: bool, started: &mut Started) -> Result<()> {
    let log_dir = cache_dir().join("logs");
    stop_leftovers(clock).await;

    // 1. Cluster basics.
    let tb = support::testbed().await;
    let client = support::kube_client().await;
    prepare_cluster(clock, tb, &client).await?;

    // 2. The operator.
    let metrics_port = start_operator(clock, tb, &log_dir, started).await?;

    // 3. The example resources.
    let (url, realm_name) = apply_examples(clock, tb, &client, metrics_port).await?;

    // 4. The user who logs in.
    let realm = harness::Realm::new(&realm_name).await;
    ensure_user(&realm).await?;

    // 5. The pod.
    start_pod(clock, &client, &log_dir, started).await?;

    // 6. The VS Code-like client.
    clock.say(format!(
        "client: {url} → 401 → metadata → Keycloak → DCR → browser login as {USER} → consent"
    ));
    let c = vscode_like_client(&url)
        .await
        .map_err(|e| format!("client flow: {e}"))?;
    clock.say(format!(
        "registered as client {} (anonymous DCR); consented to {:?}; {} tools",
        c.client_id,
        c.consented,
        c.tools.len()
    ));
    println!("\ntools/call echo → {}\n", c.text);
    clock.say("walkthrough done");
    if once {
        return Ok(());
    }
    print_how_to_connect(tb, &url, &realm_name, &log_dir);
    wait_for_stop(started, &log_dir).await?;
    eprintln!();
    clock.say("stopping");
    Ok(())
}

/// The CRDs, the demo namespace and its Keycloak admin Secret.
async fn prepare_cluster(clock: &Clock, tb: &support::TestBed, client: &Client) -> Result<()> {
    harness::install_crds(client).await;
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}
    }))
    .map_err(|e| e.to_string())?;
    Api::<Namespace>::all(client.clone())
        .patch(
            NAMESPACE,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&ns),
        )
        .await
        .map_err(|e| format!("namespace {NAMESPACE}: {e}"))?;
    apply(
        client,
        &json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "keycloak-admin"},
            "stringData": {"username": tb.admin_user, "password": tb.admin_password, "url": tb.keycloak_url}
        }),
    )
    .await?;
    clock.say(format!(
        "test bed: Kubernetes API ({}), Keycloak {}",
        tb.kubeconfig.display(),
        tb.keycloak_url
    ));
    Ok(())
}

/// Applies examples/demo.yaml and waits until both resources are Ready; the server's URL and
/// the realm's name.
async fn apply_examples(
    clock: &Clock,
    tb: &support::TestBed,
    client: &Client,
    metrics_port: u16,
) -> Result<(String, String)> {
    let docs = manifest(&tb.keycloak_url)?;
    for d in &docs {
        apply(client, d).await?;
    }
    clock.say(
        "applied examples/demo.yaml (McpAuthPolicy demo, McpServer everything); waiting for Ready",
    );
    wait_first_reconcile(metrics_port).await?;
    harness::wait_condition::<McpAuthPolicy>(client, NAMESPACE, "demo", "Ready", "True").await;
    harness::wait_condition::<McpServer>(client, NAMESPACE, SERVER, "Ready", "True").await;
    let server = Api::<McpServer>::namespaced(client.clone(), NAMESPACE)
        .get(SERVER)
        .await
        .map_err(|e| e.to_string())?;
    let realm_name = docs
        .iter()
        .find(|d| d["kind"] == "McpAuthPolicy")
        .and_then(|d| d["spec"]["keycloak"]["realm"].as_str())
        .unwrap_or("demo")
        .to_string();
    clock.say(format!(
        "Ready: realm {realm_name} configured; introspection client and its Secret in place"
    ));
    Ok((server.canonical_url(), realm_name))
}

fn print_how_to_connect(tb: &support::TestBed, url: &str, realm_name: &str, log_dir: &Path) {
    println!(
        "The secured MCP server keeps running at {url}\n\
         \n\
         Connect VS Code (on this machine):\n\
         \x20 1. Command Palette → \"MCP: Add Server...\" → HTTP → {url}\n\
         \x20    (or .vscode/mcp.json: {{\"servers\": {{\"everything\": {{\"type\": \"http\", \"url\": \"{url}\"}}}}}})\n\
         \x20 2. VS Code registers itself with Keycloak and opens a browser: log in as\n\
         \x20    user {USER}  password {PASSWORD}  and allow \"Use MCP tools\".\n\
         \x20 3. In Copilot Chat (agent mode) ask it to use the `echo` or `get-sum` tool.\n\
         \n\
         Keycloak: {kc}/admin/master/console/#/{realm_name}  (user {admin}; password: KEYCLOAK_ADMIN_PASSWORD in `./hack/testbed env`)\n\
         Logs:     {logs}\n\
         Ctrl-C stops the operator, the gateway, the MCP server and the port-forward; the test bed\n\
         keeps running for the next run (stop it with ./hack/testbed down).",
        kc = tb.keycloak_url,
        admin = tb.admin_user,
        logs = log_dir.display(),
    );
}

/// Until Ctrl-C, SIGTERM or SIGHUP; an error if one of the started processes exits first.
async fn wait_for_stop(started: &mut Started, log_dir: &Path) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = hup.recv() => return Ok(()),
            _ = tick.tick() => {
                if let Some((container, status)) = started.exited() {
                    return Err(format!("{container} exited ({status}); see {}", log_dir.display()));
                }
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut once = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--once" => once = true,
            _ => {
                eprintln!("usage: ./hack/demo [--once]");
                std::process::exit(2);
            }
        }
    }
    let clock = Clock::from_env();
    let mut started = Started::default();
    let r = run(&clock, once, &mut started).await;
    started.stop(&clock).await;
    if let Err(e) = r {
        eprintln!("[demo] FAILED: {e}");
        std::process::exit(1);
    }
}
