//! The operator binary as it runs in a cluster: `/readyz` only after its caches synced,
//! `/metrics` counters, `kubectl wait`, and leader election between two replicas.

use crate::harness;
use crate::support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, PostParams};
use mcp_keycloak_operator::api::McpServer;
use serde_json::json;

/// One operator process, killed (by its PID) on drop.
struct OperatorProcess {
    child: tokio::process::Child,
    metrics: String,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl OperatorProcess {
    async fn start(kubeconfig: &std::path::Path, ns: &str, name: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{ns}-{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-keycloak-operator"))
            .args([
                "run",
                "--namespace",
                ns,
                "--resync-seconds",
                "3",
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", ns)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn operator");
        OperatorProcess {
            child,
            metrics: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::get(format!("{}{path}", self.metrics)).await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    /// Sum of a Prometheus counter over the label sets matching `filter`.
    async fn counter(&self, name: &str, filter: &str) -> f64 {
        let (_, text) = self.get("/metrics").await.expect("metrics endpoint");
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A kubeconfig that impersonates ServiceAccount `ns/sa` (the admin cert may impersonate).
fn impersonating_kubeconfig(base: &std::path::Path, ns: &str, sa: &str) -> PathBuf {
    let mut cfg: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(base).unwrap()).unwrap();
    for user in cfg["users"].as_sequence_mut().unwrap() {
        user["user"]["as"] = format!("system:serviceaccount:{ns}:{sa}").into();
        user["user"]["as-groups"] =
            serde_yaml::to_value(["system:serviceaccounts", "system:authenticated"]).unwrap();
    }
    let path = std::env::temp_dir().join(format!("kubeconfig-{ns}-{sa}"));
    std::fs::write(&path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_synced_caches_and_metrics_count_keycloak_requests() {
    let s = Scenario::without_operator("runtime").await;
    let (client, ns) = (s.client.clone(), s.ns.clone());
    let tb = support::testbed().await;

    // The operator runs as a ServiceAccount that may do nothing yet: watches are refused.
    let kubeconfig = impersonating_kubeconfig(&tb.kubeconfig, &ns, "operator");
    let op = OperatorProcess::start(&kubeconfig, &ns, "op-a", &[]).await;
    support::wait_for("healthz", WAIT, || async {
        (op.get("/healthz").await?.0 == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = op.get("/readyz").await.unwrap();
    assert_eq!(status, 503, "ready although no watch can list: {body}");

    // Grant the namespaced permissions the operator uses; it syncs and turns ready.
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "operator"},
        "rules": [
            {"apiGroups": ["mcpauth.dev"], "resources": ["mcpservers", "mcpauthpolicies"], "verbs": ["get", "list", "watch", "patch", "update"]},
            {"apiGroups": ["mcpauth.dev"], "resources": ["mcpservers/status", "mcpauthpolicies/status"], "verbs": ["get", "patch", "update"]},
            {"apiGroups": [""], "resources": ["secrets", "services"], "verbs": ["get", "list", "watch", "create", "patch"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "create", "patch"]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
        ]
    })).unwrap();
    Api::<Role>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    support::bind_role(&client, &ns, "operator", "operator").await;
    support::wait_for("readyz after RBAC granted", WAIT, || async {
        (op.get("/readyz").await?.0 == 200).then_some(())
    })
    .await;

    // Keycloak request counters move while the seed scenario is created...
    let before = writes(&op).await;
    s.create(&s.seed_policy().await).await;
    s.create(&server("weather", "acme", "http://localhost:3000"))
        .await;

    // `kubectl wait` (kstatus-style Ready with observedGeneration) returns for the server.
    let kubectl = tb.dir.join("bin/kubectl");
    let kubectl = if kubectl.exists() {
        kubectl
    } else {
        PathBuf::from("kubectl")
    };
    let out = tokio::process::Command::new(&kubectl)
        .args([
            "wait",
            "--for=condition=Ready",
            "mcpserver/weather",
            "-n",
            &ns,
            "--timeout=90s",
        ])
        .env("KUBECONFIG", &tb.kubeconfig)
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl wait failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after_create = writes(&op).await;
    assert!(
        after_create > before,
        "no Keycloak writes counted while creating ({before} → {after_create})"
    );

    // ... and stay flat at steady state (several 3 s resyncs), while reads go on.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let settled = writes(&op).await;
    let reads = op
        .counter(
            "mcp_operator_keycloak_admin_requests_total",
            "method=\"GET\"",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        writes(&op).await,
        settled,
        "Keycloak writes at steady state"
    );
    assert!(
        op.counter(
            "mcp_operator_keycloak_admin_requests_total",
            "method=\"GET\""
        )
        .await
            > reads,
        "no resync happened"
    );
    assert!(
        op.counter("mcp_operator_reconcile_duration_seconds_count", "mcpserver")
            .await
            > 0.0
    );
    let srv = Api::<McpServer>::namespaced(client.clone(), &ns)
        .get("weather")
        .await
        .unwrap();
    assert_eq!(
        srv.status.unwrap().observed_generation,
        srv.metadata.generation
    );

    // The scenario cleans up with a cluster-admin operator (this one may not read Namespaces).
    op.kill().await;
}

async fn writes(op: &OperatorProcess) -> f64 {
    let mut sum = 0.0;
    for m in ["POST", "PUT", "DELETE"] {
        sum += op
            .counter(
                "mcp_operator_keycloak_admin_requests_total",
                &format!("method=\"{m}\""),
            )
            .await;
    }
    sum
}

async fn lease_holder(client: &kube::Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("mcp-keycloak-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let s = Scenario::without_operator("leader").await;
    let (client, ns) = (s.client.clone(), s.ns.clone());
    let tb = support::testbed().await;
    let args = ["--leader-election", "--lease-seconds", "6"];
    let a = OperatorProcess::start(&tb.kubeconfig, &ns, "op-a", &args).await;
    let b = OperatorProcess::start(&tb.kubeconfig, &ns, "op-b", &args).await;
    let holder = support::wait_for("a lease holder", WAIT, || lease_holder(&client, &ns)).await;
    let (leader, standby) = if holder == "op-a" { (a, b) } else { (b, a) };
    // Both are ready (one synced, one standing by).
    for p in [&leader, &standby] {
        support::wait_for("readyz", WAIT, || async {
            (p.get("/readyz").await?.0 == 200).then_some(())
        })
        .await;
    }

    s.create(&s.seed_policy().await).await;
    s.create(&server("one", "acme", "http://one.example.com"))
        .await;
    wait_condition::<McpServer>(&client, &ns, "one", "Ready", "True").await;
    assert!(leader.counter("mcp_operator_reconciles_total", "").await > 0.0);
    assert_eq!(
        standby.counter("mcp_operator_reconciles_total", "").await,
        0.0,
        "the standby reconciled"
    );
    assert_eq!(
        standby
            .counter("mcp_operator_keycloak_admin_requests_total", "")
            .await,
        0.0
    );

    // Kill the leader without a chance to release the lease: the standby takes over once it expires.
    let killed_at = Instant::now();
    let standby_name = if holder == "op-a" { "op-b" } else { "op-a" };
    leader.kill().await;
    support::wait_for(
        "standby takes the lease",
        Duration::from_secs(60),
        || async { (lease_holder(&client, &ns).await? == standby_name).then_some(()) },
    )
    .await;
    let handover = killed_at.elapsed();
    println!(
        "lease handed over {:.1} s after the leader was killed (lease 6 s)",
        handover.as_secs_f64()
    );
    assert!(
        handover < Duration::from_secs(20),
        "handover took {handover:?}"
    );
    s.create(&server("two", "acme", "http://two.example.com"))
        .await;
    wait_condition::<McpServer>(&client, &ns, "two", "Ready", "True").await;
    assert!(standby.counter("mcp_operator_reconciles_total", "").await > 0.0);

    let log = std::fs::read_to_string(&standby.log).unwrap_or_default();
    assert!(log.contains("acquired leadership"), "{log}");
    drop(standby);
}
