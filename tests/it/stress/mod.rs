//! The operator as a real child process (`mcp-keycloak-operator run`), for tests and benchmarks
//! that kill it, measure it or read its logs: spawned with the test bed's kubeconfig, its admin
//! endpoints on a free loopback port, stdout and stderr appended to one log file. Only the child
//! this value spawned is ever signalled (by its own handle), and it is killed when dropped.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start the operator.
#[derive(Clone, Debug)]
pub struct OperatorOpts {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub resync_seconds: u64,
    /// `RUST_LOG` of the child.
    pub rust_log: String,
    /// Appended to by every spawn (one file across restarts).
    pub log_file: PathBuf,
}

impl OperatorOpts {
    pub fn new(binary: &str, kubeconfig: &Path, namespace: &str, log_file: PathBuf) -> Self {
        OperatorOpts {
            binary: binary.into(),
            kubeconfig: kubeconfig.into(),
            namespace: namespace.into(),
            resync_seconds: 5,
            rust_log: "info".into(),
            log_file,
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the child binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub struct ChildOperator {
    child: Child,
    pub pid: u32,
    pub metrics_addr: SocketAddr,
    pub started: Instant,
}

impl ChildOperator {
    pub fn spawn(opts: &OperatorOpts) -> ChildOperator {
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&opts.log_file)
            .unwrap_or_else(|e| panic!("opening {}: {e}", opts.log_file.display()));
        let child = Command::new(&opts.binary)
            .args([
                "run",
                "--namespace",
                &opts.namespace,
                "--resync-seconds",
                &opts.resync_seconds.to_string(),
                "--metrics-addr",
                &metrics_addr.to_string(),
                "--operator-image",
                "mcp-keycloak-operator:test",
            ])
            .env("KUBECONFIG", &opts.kubeconfig)
            .env("RUST_LOG", &opts.rust_log)
            .env("NO_COLOR", "1")
            .env_remove("LOG_JSON")
            .env_remove("WATCH_NAMESPACE")
            .env_remove("LEADER_ELECTION")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", opts.binary.display()));
        let pid = child.id();
        ChildOperator {
            child,
            pid,
            metrics_addr,
            started: Instant::now(),
        }
    }

    /// SIGKILL this child (std's `Child::kill` sends SIGKILL on Unix) and reap it.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Still running (not exited)?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `/metrics` in Prometheus text, if the admin server answers within `timeout`.
    pub async fn metrics(&self, timeout: Duration) -> Option<String> {
        let resp = reqwest::Client::new()
            .get(format!("http://{}/metrics", self.metrics_addr))
            .timeout(timeout)
            .send()
            .await
            .ok()?;
        resp.status().is_success().then_some(())?;
        resp.text().await.ok()
    }

    /// Waits until `/readyz` answers 200 (watch caches synced).
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let http = reqwest::Client::new();
        let start = Instant::now();
        loop {
            assert!(self.alive(), "operator {} exited during start-up", self.pid);
            if let Ok(r) = http
                .get(format!("http://{}/readyz", self.metrics_addr))
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                start.elapsed() < timeout,
                "operator {} not ready after {timeout:?}",
                self.pid
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (VmRSS, VmHWM) in KiB from /proc/PID/status.
    pub fn memory_kib(&self) -> (u64, u64) {
        (self.status_kib("VmRSS:"), self.status_kib("VmHWM:"))
    }

    /// The resident set split: (RssAnon, RssFile) in KiB — the heap against the mapped binary.
    pub fn rss_split_kib(&self) -> (u64, u64) {
        (self.status_kib("RssAnon:"), self.status_kib("RssFile:"))
    }

    fn status_kib(&self, name: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// utime + stime of the process, in seconds (from /proc/PID/stat).
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(self.pid)
    }
}

/// utime + stime of process `pid`, in seconds (from /proc/PID/stat; 0 if it is gone).
pub fn cpu_seconds_of(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / clock_ticks() as f64
}

impl Drop for ChildOperator {
    fn drop(&mut self) {
        self.sigkill();
    }
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Sum of the samples of `metric` (exact name, e.g. `mcp_operator_reconciles_total`) whose
/// label set contains every `label="value"` pair in `labels`.
pub fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let (name, lbls) = match name_labels.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (name_labels, ""),
            };
            if name != metric {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| lbls.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum::<f64>()
        // (an empty float sum is -0.0)
        + 0.0
}

/// Keycloak admin requests that were not GETs (from `/metrics`).
pub fn keycloak_writes(text: &str) -> f64 {
    let all = metric_sum(text, "mcp_operator_keycloak_admin_requests_total", &[]);
    all - metric_sum(
        text,
        "mcp_operator_keycloak_admin_requests_total",
        &[("method", "GET")],
    )
}

pub fn keycloak_reads(text: &str) -> f64 {
    metric_sum(
        text,
        "mcp_operator_keycloak_admin_requests_total",
        &[("method", "GET")],
    )
}

// ---- consistency of Keycloak and Kubernetes after a fault ----

use std::collections::{BTreeMap, BTreeSet};

use kube::api::Api;
use mcp_keycloak_operator::api::McpServer;
use serde_json::Value;

pub const OWNER: &str = "mcpauth.dev/owner";

fn owner(v: &Value) -> Option<&str> {
    v["attributes"][OWNER].as_str()
}

/// McpServers of `names` that are not `Ready=True` for their current generation, with why.
pub async fn not_ready(client: &kube::Client, ns: &str, names: &BTreeSet<String>) -> Vec<String> {
    let api: Api<McpServer> = Api::namespaced(client.clone(), ns);
    let Ok(list) = api.list(&Default::default()).await else {
        return vec!["listing McpServers failed".into()];
    };
    let by_name: BTreeMap<String, McpServer> = list
        .items
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
        .collect();
    let mut out = vec![];
    for name in names {
        let Some(s) = by_name.get(name) else {
            out.push(format!("{name}: missing"));
            continue;
        };
        let generation = s.metadata.generation;
        let st = s.status.as_ref();
        let ready = st.and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"));
        let ok = st.is_some_and(|st| st.observed_generation == generation)
            && ready.is_some_and(|c| c.status == "True" && c.observed_generation == generation);
        if !ok {
            out.push(format!(
                "{name}: {}",
                ready
                    .map(|c| format!("{} {}: {}", c.status, c.reason, c.message))
                    .unwrap_or_else(|| "no Ready condition".into())
            ));
        }
    }
    out
}

/// A [`Scenario`](crate::harness::Scenario) without an in-process operator, with the seed policy
/// `acme`, and the options to run the operator as a child process on it (log `{ns}.log` in
/// cargo's target tmp dir).
pub struct SeededNamespace {
    pub scenario: crate::harness::Scenario,
    pub tb: &'static crate::support::TestBed,
    pub opts: OperatorOpts,
}

crate::harness::deref_scenario!(SeededNamespace, scenario);

impl SeededNamespace {
    /// The client, namespace, realm and operator options, as most of these tests use them.
    pub fn parts(&self) -> (kube::Client, String, &crate::harness::Realm, OperatorOpts) {
        let s = &self.scenario;
        (s.client.clone(), s.ns.clone(), &s.realm, self.opts.clone())
    }
}

pub async fn seeded_namespace(prefix: &str) -> SeededNamespace {
    use crate::{harness, support};
    let tb = support::testbed().await;
    harness::install_crds(&support::kube_client().await).await;
    let scenario = harness::Scenario::without_operator(prefix).await;
    scenario.create(&scenario.seed_policy().await).await;
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.log", scenario.ns));
    let opts = OperatorOpts::new(
        env!("CARGO_BIN_EXE_mcp-keycloak-operator"),
        &tb.kubeconfig,
        &scenario.ns,
        log,
    );
    SeededNamespace { scenario, tb, opts }
}

/// Names in `names` that still exist as McpServers.
pub async fn still_present(
    client: &kube::Client,
    ns: &str,
    names: &BTreeSet<String>,
) -> Vec<String> {
    let api: Api<McpServer> = Api::namespaced(client.clone(), ns);
    let Ok(list) = api.list(&Default::default()).await else {
        return vec!["listing McpServers failed".into()];
    };
    list.items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .filter(|n| names.contains(n))
        .collect()
}

/// Everything Keycloak and the Secrets must look like for the servers of namespace `ns`:
/// `live` maps each surviving server to its current `spec.url`; every other server of the
/// namespace must have left nothing behind. With `policy_objects`, also exactly one `mcp:tools`
/// scope and one anonymous component of each registration policy. Returns the violations
/// (empty: consistent).
pub async fn consistency_violations(
    client: &kube::Client,
    realm: &crate::harness::Realm,
    ns: &str,
    live: &BTreeMap<String, String>,
    policy_objects: bool,
) -> Vec<String> {
    let mut bad = vec![];
    let marker_prefix = format!("McpServer/{ns}/");
    let client_prefix = format!("mcp.{ns}.");
    let scope_prefix = format!("mcp:server:{ns}:");

    // Clients: exactly one per live server, carrying its marker; none for anything else.
    let clients = realm.get("/clients?max=100000").await;
    let clients = clients.as_array().cloned().unwrap_or_default();
    let mut by_marker: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for c in &clients {
        let cid = c["clientId"].as_str().unwrap_or_default();
        match owner(c) {
            Some(m) if m.starts_with(&marker_prefix) => {
                by_marker.entry(m.to_string()).or_default().push(c)
            }
            _ if cid.starts_with(&client_prefix) => {
                bad.push(format!("client {cid} has no ownership marker"))
            }
            _ => {}
        }
    }
    for (marker, cs) in &by_marker {
        let name = &marker[marker_prefix.len()..];
        if !live.contains_key(name) {
            bad.push(format!(
                "orphaned client(s) {:?} of deleted server {name}",
                cs.iter().map(|c| c["clientId"].clone()).collect::<Vec<_>>()
            ));
        } else if cs.len() != 1 {
            bad.push(format!("{} clients carry marker {marker}", cs.len()));
        }
    }
    for (name, url) in live {
        let marker = format!("{marker_prefix}{name}");
        let Some(c) = by_marker.get(&marker).and_then(|cs| cs.first()) else {
            bad.push(format!("{name}: no Keycloak client with its marker"));
            continue;
        };
        let cid = format!("{client_prefix}{name}");
        if c["clientId"] != cid.as_str() {
            bad.push(format!(
                "{name}: client {} carries its marker",
                c["clientId"]
            ));
        }
        if c["name"] != format!("MCP server {url}").as_str() {
            bad.push(format!("{name}: client name {} for url {url}", c["name"]));
        }
        // The Secret holds Keycloak's secret.
        let id = c["id"].as_str().unwrap_or_default();
        let kc_secret = realm.get(&format!("/clients/{id}/client-secret")).await["value"]
            .as_str()
            .map(str::to_string);
        let k8s_secret =
            crate::harness::secret_value(client, ns, &format!("{name}-oauth"), "client-secret")
                .await;
        if kc_secret.is_none() || kc_secret != k8s_secret {
            bad.push(format!(
                "{name}: Secret's client-secret does not equal Keycloak's (secret present in Kubernetes: {}, in Keycloak: {})",
                k8s_secret.is_some(),
                kc_secret.is_some()
            ));
        }
        let k8s_id =
            crate::harness::secret_value(client, ns, &format!("{name}-oauth"), "client-id").await;
        if k8s_id.as_deref() != Some(cid.as_str()) {
            bad.push(format!("{name}: Secret's client-id is {k8s_id:?}"));
        }
    }

    // Audience scopes: one per live server with its two mappers, realm-optional; none else.
    let scopes = realm.get("/client-scopes").await;
    let scopes = scopes.as_array().cloned().unwrap_or_default();
    let mut by_name: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for s in &scopes {
        let n = s["name"].as_str().unwrap_or_default().to_string();
        if n.starts_with(&scope_prefix) || owner(s).is_some_and(|m| m.starts_with(&marker_prefix)) {
            by_name.entry(n).or_default().push(s);
        }
    }
    let optional: BTreeSet<String> = realm
        .get("/default-optional-client-scopes")
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect();
    for (n, ss) in &by_name {
        let server = n.strip_prefix(&scope_prefix).unwrap_or(n);
        if !live.contains_key(server) {
            bad.push(format!("orphaned client scope {n} ({} of them)", ss.len()));
            continue;
        }
        if ss.len() != 1 {
            bad.push(format!("{} client scopes named {n}", ss.len()));
        }
        let s = ss[0];
        if owner(s) != Some(format!("{marker_prefix}{server}").as_str()) {
            bad.push(format!("scope {n} has marker {:?}", owner(s)));
        }
        let url = &live[server];
        let mappers = s["protocolMappers"].as_array().cloned().unwrap_or_default();
        let mut names: Vec<&str> = mappers.iter().filter_map(|m| m["name"].as_str()).collect();
        names.sort();
        if names != ["mcp-audience", "mcp-introspection-audience"] {
            bad.push(format!("scope {n} has mappers {names:?}"));
        }
        for m in &mappers {
            let cfg = &m["config"];
            let ok = match m["name"].as_str() {
                Some("mcp-audience") => cfg["included.custom.audience"] == url.as_str(),
                Some("mcp-introspection-audience") => {
                    cfg["included.client.audience"] == format!("{client_prefix}{server}").as_str()
                }
                _ => true,
            };
            if !ok {
                bad.push(format!(
                    "scope {n}: mapper {} has config {cfg} (url {url})",
                    m["name"]
                ));
            }
        }
        if !optional.contains(s["id"].as_str().unwrap_or_default()) {
            bad.push(format!("scope {n} is not a realm optional scope"));
        }
    }
    for name in live.keys() {
        if !by_name.contains_key(&format!("{scope_prefix}{name}")) {
            bad.push(format!("{name}: no audience scope"));
        }
    }
    if !policy_objects {
        return bad;
    }
    let tools = scopes.iter().filter(|s| s["name"] == "mcp:tools").count();
    if tools != 1 {
        bad.push(format!("{tools} client scopes named mcp:tools"));
    }

    // Registration policies: never a second anonymous component of a kind.
    for provider in ["trusted-hosts", "allowed-client-templates", "max-clients"] {
        let n = realm.anonymous_components(provider).await.len();
        if n != 1 {
            bad.push(format!("{n} anonymous {provider} components"));
        }
    }
    let consent = realm.anonymous_components("consent-required").await.len();
    if consent > 1 {
        bad.push(format!("{consent} anonymous consent-required components"));
    }
    bad
}
