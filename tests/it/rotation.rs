//! Secret rotation (`spec.introspectionClient.rotation`, issue 17) on the named Keycloak `rot`
//! (26.7.3 with `cimd,client-secret-rotation`; the feature is a preview one, off on the default
//! instance).
//!
//! - `rotation_under_load_fails_no_request`: server-everything behind the gateway, its pod run
//!   by the local pod runner from the reconciled Deployment; two workers send `initialize`
//!   through the McpServer's URL without pause, each request with a token minted just before
//!   (a refresh grant: every token is new, so every request is a cache miss and introspects).
//!   A manual rotation (`mcpauth.dev/rotate-secret`) changes Keycloak's secret, the Secret and
//!   the pod template; the old pod keeps serving with the old secret, the new pod starts from
//!   the updated Deployment with the new one, the "Service" switches to it, the old pod stops.
//!   Not one non-2xx answer. After the grace period the old secret gets 401 from Keycloak's
//!   introspection endpoint, the new one works, and a resync writes nothing.
//! - `scheduled_rotation_and_refusal_without_the_feature`: a short `period` rotates by itself,
//!   twice, on schedule; on the default Keycloak (no feature) rotation is refused with
//!   `SecretRotationUnavailable` and nothing is created in Keycloak.
//!
//! Both pods of the roll-out run at once on this host, as on two nodes: each gets its own ports
//! (the gateway's listen/admin/upstream and the MCP server's `PORT`), which stand in for the
//! pod's own network namespace; nothing else of the planned pod changes.

use crate::harness;
use crate::support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use localpod::images::{
    default_image_map, ensure_server_everything, npm_dir, operator_command, LocalBinaries,
    SERVER_EVERYTHING_IMAGE,
};
use localpod::{plan_pod, ImageMap, ProcessPlan, Readiness, RunningPod};
use mcp_auth_gateway::contract;
use mcp_keycloak_operator::api::{McpServer, SecretRotationStatus};
use serde_json::{json, Value};

const SERVER: &str = "calc";
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"rotation-load","version":"1.0.0"}}}"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn rotating_server(port: u16, url: &str, rotation: Value) -> McpServer {
    resource(
        SERVER,
        json!({"image": SERVER_EVERYTHING_IMAGE, "port": port, "url": url,
               "policyRef": {"name": "acme"}, "scopes": ["mcp:tools"],
               "introspectionClient": {"rotation": rotation}}),
    )
}

async fn images() -> ImageMap {
    let script = tokio::task::spawn_blocking(|| ensure_server_everything(&npm_dir()))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_mcp-keycloak-operator"));
    default_image_map(&LocalBinaries {
        operator: operator.clone(),
        native_example: None,
        server_everything_script: Some(script),
    })
    .with("mcp-keycloak-operator:test", operator_command(&operator))
}

/// A local pod of the server's current Deployment on ports of its own; returns it and the port
/// of its gateway.
async fn start_pod(b: &Scenario, images: &ImageMap, tag: &str) -> (RunningPod, u16) {
    let deployment: Deployment = b.get(SERVER).await;
    let secrets: Api<Secret> = b.api();
    let secrets = secrets.list(&Default::default()).await.unwrap().items;
    let mut plans = plan_pod(&deployment, &secrets, &[], images).expect("plan the pod");
    let log_dir = std::env::temp_dir()
        .join("rotation-logs")
        .join(&b.ns)
        .join(tag);
    let path = std::env::var("PATH").unwrap_or_default();
    // The load's client connections take ephemeral ports too: pick again if one got ours.
    let mut attempts = 0;
    let (mut pod, gateway) = loop {
        let gateway = own_ports(&mut plans);
        match RunningPod::spawn(&plans, &path, &log_dir) {
            Ok(pod) => break (pod, gateway),
            Err(localpod::RunnerError::PortBusy { .. }) if attempts < 5 => attempts += 1,
            Err(e) => panic!("spawn the pod: {e}"),
        }
    };
    pod.wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("pod {tag} not ready: {e}; logs in {}", log_dir.display()));
    (pod, gateway)
}

/// Gives the pod's containers free ports (its own network namespace on a node); returns the
/// gateway's MCP port.
fn own_ports(plans: &mut [ProcessPlan]) -> u16 {
    let (gateway, admin, mcp) = (free_port(), free_port(), free_port());
    let loopback = |p: u16| format!("127.0.0.1:{p}");
    for p in plans.iter_mut() {
        let (ports, readiness) = match p.container.as_str() {
            "gateway" => {
                p.env.insert(contract::LISTEN_ENV.into(), loopback(gateway));
                p.env
                    .insert(contract::ADMIN_LISTEN_ENV.into(), loopback(admin));
                p.env
                    .insert(contract::UPSTREAM_ENV.into(), contract::upstream_url(mcp));
                let health = Readiness::Http {
                    port: admin,
                    path: "/healthz".into(),
                };
                (vec![gateway, admin], health)
            }
            "mcp" => {
                p.env.insert(contract::PORT_ENV.into(), mcp.to_string());
                (vec![mcp], Readiness::Tcp { ports: vec![mcp] })
            }
            other => panic!("unexpected container {other}"),
        };
        p.ports = ports.iter().map(|&n| i32::from(n)).collect();
        p.readiness = readiness;
    }
    gateway
}

/// The Service: the URL's port forwarded to one pod at a time; new connections go to the
/// pod [`Service::route`] names last (kube-proxy switching endpoints).
struct Service {
    target: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    async fn start(port: u16, target: u16) -> Service {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the URL's port");
        let target = Arc::new(AtomicU16::new(target));
        let to = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, peer)) = listener.accept().await {
                let port = to.load(SeqCst);
                tokio::spawn(async move {
                    // From the client's own address: the gateway budgets introspections per
                    // client address, and these are several clients.
                    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                        return;
                    };
                    if socket
                        .bind(std::net::SocketAddr::new(peer.ip(), 0))
                        .is_err()
                    {
                        return;
                    }
                    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    if let Ok(mut out) = socket.connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Service { target, task }
    }

    fn route(&self, port: u16) {
        self.target.store(port, SeqCst);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Requests by phase, and every failed one.
#[derive(Default, Debug)]
struct Tally {
    ok: [usize; 3],
    failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, phase: usize, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.ok[phase] += 1,
            Err(e) => self.failures.push(format!("phase {phase}: {e}")),
        }
    }
}

/// One request per worker at most this often: 4 new tokens a second per client address stay
/// within the gateway's per-client introspection budget (5/s), which would answer 429.
const PACE: Duration = Duration::from_millis(250);

/// Workers sending `initialize` with a new token each through `url` until stopped, each from
/// its own loopback address (127.0.0.10, .11, …) like distinct clients.
struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    tally: Arc<Mutex<Tally>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str, token_endpoint: &str, refresh_token: &str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let workers = (0..workers)
            .map(|i| {
                let (stop, phase, tally) = (stop.clone(), phase.clone(), tally.clone());
                let source = std::net::Ipv4Addr::new(127, 0, 0, 10 + i as u8);
                let (url, te, rt) = (
                    url.to_string(),
                    token_endpoint.to_string(),
                    refresh_token.to_string(),
                );
                tokio::spawn(async move {
                    // A connection per request: a switched Service takes effect at once.
                    let http = reqwest::Client::builder()
                        .pool_max_idle_per_host(0)
                        .local_address(std::net::IpAddr::V4(source))
                        .timeout(Duration::from_secs(20))
                        .build()
                        .unwrap();
                    while !stop.load(SeqCst) {
                        let next = tokio::time::Instant::now() + PACE;
                        let p = phase.load(SeqCst);
                        let outcome = one_request(&http, &url, &te, &rt).await;
                        tally.lock().unwrap().record(p, outcome);
                        tokio::time::sleep_until(next).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            phase,
            tally,
            workers,
        }
    }

    fn enter(&self, phase: usize) {
        self.phase.store(phase, SeqCst);
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, SeqCst);
        for w in self.workers {
            w.await.expect("load worker");
        }
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

/// A fresh token (refresh grant of the minter client), then `initialize` with it.
async fn one_request(
    http: &reqwest::Client,
    url: &str,
    token_endpoint: &str,
    refresh_token: &str,
) -> Result<(), String> {
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", "test-minter"),
        ("refresh_token", refresh_token),
    ];
    let resp = http.post(token_endpoint).form(&form).send().await;
    let tok: Value = match resp {
        Ok(r) if r.status().is_success() => r.json().await.map_err(|e| e.to_string())?,
        Ok(r) => return Err(format!("token endpoint {}", r.status())),
        Err(e) => return Err(format!("token endpoint: {e}")),
    };
    let token = tok["access_token"].as_str().ok_or("no access_token")?;
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(token)
        .body(INITIALIZE)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    Err(format!(
        "{status} {}",
        body.chars().take(200).collect::<String>()
    ))
}

async fn rotation_status(b: &Scenario) -> SecretRotationStatus {
    let s: McpServer = b.get(SERVER).await;
    s.status.and_then(|s| s.secret_rotation).unwrap_or_default()
}

async fn client_secret(b: &Scenario) -> String {
    secret_value(
        &b.client,
        &b.ns,
        &format!("{SERVER}-oauth"),
        "client-secret",
    )
    .await
    .expect("the server's Secret")
}

async fn config_hash(b: &Scenario) -> String {
    let d: Deployment = b.get(SERVER).await;
    let template = d.spec.template.metadata.unwrap();
    template.annotations.unwrap()["mcpauth.dev/config-hash"].clone()
}

/// Sets the manual trigger annotation.
async fn trigger(b: &Scenario, value: &str) {
    let patch = json!({"metadata": {"annotations": {"mcpauth.dev/rotate-secret": value}}});
    b.api::<McpServer>()
        .patch(SERVER, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("annotate");
}

/// Keycloak's verdict on a client's credentials: the introspection endpoint's status.
async fn introspection_status(b: &Scenario, client_id: &str, secret: &str) -> u16 {
    b.realm.introspect(client_id, secret, "not-a-token").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_fails_no_request() {
    let rot = support::keycloak_instance("rot", "cimd,client-secret-rotation").await;
    let mut b = Scenario::on("rot", rot.login()).await;
    b.start_operator().await;
    let (port, url_port) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{url_port}/mcp");
    let grace = Duration::from_secs(45);
    let rotation = json!({"period": "1h", "gracePeriod": "45s"});
    let policy = seed_policy("acme", &b.realm.name, &rot.url);
    b.apply(&policy, &[rotating_server(port, &url, rotation)])
        .await;
    let client_id = format!("mcp.{}.{SERVER}", b.ns);
    let kc_client = b.realm.client(&client_id).await.expect("the client");
    assert_eq!(
        kc_client["attributes"]["mcpauth.dev/secret-rotation"],
        "true"
    );
    let st = rotation_status(&b).await;
    assert!(
        st.next_rotation_time.is_some() && st.last_rotation_time.is_none(),
        "{st:?}"
    );

    let images = images().await;
    let (old_pod, old_port) = start_pod(&b, &images, "old").await;
    let service = Service::start(url_port, old_port).await;
    let scope = format!("openid mcp:tools mcp:server:{}:{SERVER}", b.ns);
    let minted = b.realm.mint_token(&scope).await;
    let refresh = minted["refresh_token"].as_str().expect("refresh_token");
    let token_endpoint = format!("{}/token", realm_protocol(&b));
    let load = Load::start(&url, &token_endpoint, refresh, 4);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Rotate: Keycloak, the Secret and the pod template change; the old pod keeps serving.
    let (old_secret, old_hash) = (client_secret(&b).await, config_hash(&b).await);
    let rotated_at = Instant::now();
    trigger(&b, "r1").await;
    support::wait_until("rotation r1 handled", Duration::from_secs(60), || async {
        rotation_status(&b).await.last_trigger.as_deref() == Some("r1")
            && client_secret(&b).await != old_secret
    })
    .await;
    load.enter(1);
    let new_secret = client_secret(&b).await;
    assert_ne!(config_hash(&b).await, old_hash, "the pods roll");
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Roll-out: the new pod from the updated Deployment, traffic moves, the old pod stops.
    let (new_pod, new_port) = start_pod(&b, &images, "new").await;
    service.route(new_port);
    load.enter(2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    old_pod.stop().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rolled_in = rotated_at.elapsed();
    let tally = load.finish().await;
    support::figure(format!(
        "rotation under load: {} requests before the rotation, {} on the old pod after it, {} on the new pod; {} failed; rotation to roll-out done in {rolled_in:?}",
        tally.ok[0], tally.ok[1], tally.ok[2], tally.failures.len()
    ));
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:#?}",
        tally.failures
    );
    for (phase, n) in tally.ok.iter().enumerate() {
        assert!(*n >= 5, "too few requests in phase {phase}: {tally:?}");
    }
    assert!(
        rolled_in < grace,
        "the roll-out took {rolled_in:?}, beyond the grace period"
    );
    // Still within the grace period: Keycloak accepts both secrets.
    assert_eq!(introspection_status(&b, &client_id, &old_secret).await, 200);
    assert_eq!(introspection_status(&b, &client_id, &new_secret).await, 200);

    // After the grace period: the old secret is refused, the new one works.
    support::wait_until(
        "the previous secret revoked",
        Duration::from_secs(90),
        || async {
            rotation_status(&b)
                .await
                .previous_secret_valid_until
                .is_none()
        },
    )
    .await;
    assert!(
        rotated_at.elapsed() >= grace,
        "revoked before the grace period ended"
    );
    assert_eq!(introspection_status(&b, &client_id, &old_secret).await, 401);
    assert_eq!(introspection_status(&b, &client_id, &new_secret).await, 200);
    assert_rotation_policy(&b).await;
    assert_no_secret_shown(&b, &[&old_secret, &new_secret]).await;

    // Steady state: resyncs (every 3 s) write nothing to Keycloak.
    let writes = b.op().keycloak_writes();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(b.op().keycloak_writes(), writes, "writes at steady state");
    new_pod.stop().await;
    drop(service);
}

/// Status and Events name the rotation (a `SecretRotated` event) but never a secret.
async fn assert_no_secret_shown(b: &Scenario, secrets: &[&str]) {
    let server: McpServer = b.get(SERVER).await;
    let status = serde_json::to_string(&server.status).unwrap();
    let events: Api<k8s_openapi::api::core::v1::Event> = b.api();
    let events = events.list(&Default::default()).await.unwrap().items;
    let rotated = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("SecretRotated"));
    assert_eq!(rotated.count(), 1, "one SecretRotated event");
    let events = serde_json::to_string(&events).unwrap();
    for secret in secrets {
        assert!(!status.contains(secret), "a secret in status: {status}");
        assert!(!events.contains(secret), "a secret in an event");
    }
}

fn realm_protocol(b: &Scenario) -> String {
    format!("{}/protocol/openid-connect", b.realm_url())
}

/// The realm's rotation profile and policy, exactly as the operator wrote them.
async fn assert_rotation_policy(b: &Scenario) {
    let profiles = b.realm.get("/client-policies/profiles").await;
    let profile = profiles["profiles"]
        .as_array()
        .and_then(|p| {
            p.iter()
                .find(|p| p["name"] == "mcp-operator.secret-rotation")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no rotation profile: {profiles}"));
    assert_eq!(
        profile["executors"],
        json!([{"executor": "secret-rotation", "configuration": {
            "expiration-period": "157680000", "rotated-expiration-period": "604800",
            "remaining-rotation-period": "0"}}])
    );
    let policies = b.realm.get("/client-policies/policies").await;
    let policy = policies["policies"]
        .as_array()
        .and_then(|p| {
            p.iter()
                .find(|p| p["name"] == "mcp-operator.secret-rotation")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no rotation policy: {policies}"));
    assert_eq!(policy["conditions"][0]["condition"], "client-attributes");
    assert_eq!(policy["enabled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rotation_and_refusal_without_the_feature() {
    let rot = support::keycloak_instance("rot", "cimd,client-secret-rotation").await;
    let mut b = Scenario::on("rot-sched", rot.login()).await;
    b.start_operator().await;
    let url = format!("http://127.0.0.1:{}/mcp", free_port());
    let rotation = json!({"period": "15s", "gracePeriod": "5s"});
    let policy = seed_policy("acme", &b.realm.name, &rot.url);
    b.apply(&policy, &[rotating_server(free_port(), &url, rotation)])
        .await;
    let first = client_secret(&b).await;
    let scheduled = rotation_status(&b).await;
    let due: jiff::Timestamp = scheduled
        .next_rotation_time
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    // Two rotations, each a period after the previous one.
    let mut secrets = vec![first];
    let mut last: Option<jiff::Timestamp> = None;
    for n in 1..=2 {
        let st = support::wait_for("a scheduled rotation", Duration::from_secs(60), || async {
            let st = rotation_status(&b).await;
            let at = st
                .last_rotation_time
                .as_deref()
                .map(|t| t.parse::<jiff::Timestamp>().unwrap());
            (at != last && at.is_some()).then_some(st)
        })
        .await;
        let at: jiff::Timestamp = st.last_rotation_time.unwrap().parse().unwrap();
        let expected = last.map_or(due, |l| l + jiff::SignedDuration::from_secs(15));
        let late = at.duration_since(expected);
        assert!(
            late > jiff::SignedDuration::from_secs(-1) && late < jiff::SignedDuration::from_secs(8),
            "rotation {n} at {at}, due {expected}"
        );
        support::wait_until("the Secret follows", Duration::from_secs(30), || async {
            !secrets.contains(&client_secret(&b).await)
        })
        .await;
        secrets.push(client_secret(&b).await);
        last = Some(at);
    }
    // The policy's deletion (after its servers') removes the rotation profile and policy.
    assert_rotation_policy(&b).await;
    b.delete::<McpServer>(SERVER).await;
    b.delete::<McpAuthPolicyKind>("acme").await;
    let profiles = b.realm.get("/client-policies/profiles").await.to_string();
    let policies = b.realm.get("/client-policies/policies").await.to_string();
    for list in [profiles, policies] {
        assert!(!list.contains("mcp-operator.secret-rotation"), "{list}");
    }
    drop(b);

    // The default Keycloak has no client-secret-rotation: refused, nothing in Keycloak.
    let b = Scenario::new("rot-off").await;
    let url = format!("http://127.0.0.1:{}/mcp", free_port());
    b.create(&b.seed_policy().await).await;
    b.wait_ready::<McpAuthPolicyKind>("acme").await;
    // Admission first: the default grace period (1h) must be shorter than the period.
    let too_short = rotating_server(free_port(), &url, json!({"period": "1h"}));
    let refused = b
        .api::<McpServer>()
        .create(&Default::default(), &too_short)
        .await;
    let refused = refused
        .expect_err("period 1h with the default grace period")
        .to_string();
    assert!(
        refused.contains("gracePeriod (default 1h) must be shorter than period"),
        "{refused}"
    );
    let rotation = json!({"period": "2h"});
    b.create(&rotating_server(free_port(), &url, rotation))
        .await;
    let message = b
        .wait_reason::<McpServer>(SERVER, "Ready", "SecretRotationUnavailable")
        .await;
    assert!(
        message.contains("--features=client-secret-rotation"),
        "{message}"
    );
    let client_id = format!("mcp.{}.{SERVER}", b.ns);
    assert!(
        b.realm.client(&client_id).await.is_none(),
        "a client was created"
    );
    // Without rotation the server is Ready.
    b.patch_spec::<McpServer>(SERVER, json!({"introspectionClient": {"rotation": null}}))
        .await;
    b.wait_ready::<McpServer>(SERVER).await;
}

type McpAuthPolicyKind = mcp_keycloak_operator::api::McpAuthPolicy;
