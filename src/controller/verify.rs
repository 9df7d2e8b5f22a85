//! Live verification of an McpServer: is the running server an MCP server that answers?
//!
//! - `Proxy`: each ready pod's gateway probes its upstream with an MCP handshake and publishes
//!   the outcome at `GET {pod IP}:9090/mcp-status` ([`mcp_auth_gateway::probe`]); the operator
//!   reads that document from the pods it owns.
//! - `None`: the operator does the handshake itself at `{pod IP}:{port}` (no token needed).
//! - `Native`: the server wants a token the operator does not have, so the operator checks what
//!   an unauthenticated client sees — the protected-resource metadata and the 401 challenge —
//!   and leaves the handshake `Unknown` (`HandshakeNotProbed`).
//!
//! Pods are reached at their pod IP (the NetworkPolicy admits the operator to the admin port).
//! Every reconcile that reached the workload verifies (no Keycloak access here), and
//! [`run_periodic`] re-verifies every `--verify-seconds`, triggering a reconcile only when the
//! verdict changed: an unchanged server costs a pod LIST and a few HTTP GETs, and no write.
//! The pure part — which pods, what their answers mean, what status results — is
//! [`targets`], [`judge`], [`check_metadata`], [`check_challenge`] and [`merge`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use mcp_auth_gateway::contract;
use mcp_auth_gateway::probe::{self, McpStatus, ServerFacts};
use serde_json::Value;

use super::conditions::{Draft, VERIFIED};
use super::server::Run;
use super::Context;
use crate::api::{AuthMode, McpAuthPolicy, McpInfo, McpServer, McpServerInfo, McpServerStatus};
use crate::desired::workload::{MANAGED_BY, SERVER_LABEL};

/// Pods asked per server and pass: replicas of one Deployment answer alike, a few find a bad one.
const MAX_PODS: usize = 5;
/// Bound on each request to a pod, and on what is read of its answer.
const TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BODY: usize = 64 * 1024;
/// Bound on a pod's own words in a condition message.
const MAX_MESSAGE: usize = 200;

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    True,
    False,
    Unknown,
}

/// What verification concluded: the `Verified` condition and, when verified, the server's facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: Tri,
    pub reason: &'static str,
    pub message: String,
    pub facts: Option<ServerFacts>,
}

impl Verdict {
    fn new(status: Tri, reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            status,
            reason,
            message: message.into(),
            facts: None,
        }
    }
}

/// A ready pod to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub pod: String,
    pub ip: IpAddr,
}

/// The ready, not terminating pods with an IP, by name, at most [`MAX_PODS`].
pub fn targets(pods: &[Pod]) -> Vec<Target> {
    let ready = |p: &Pod| {
        let conditions = p.status.as_ref().and_then(|s| s.conditions.as_deref());
        conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    };
    let mut out: Vec<Target> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && ready(p))
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            Some(Target {
                pod: p.name_any(),
                ip,
            })
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out.truncate(MAX_PODS);
    out
}

/// One pod's answer: its status document (the gateway's, or built from the operator's own
/// handshake), or none.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Doc(Box<McpStatus>),
    NoAnswer,
}

/// Printable characters only, at most `max`: a pod's words are untrusted.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// The verdict for `url` from its pods' answers. A pod failing its handshake outweighs one that
/// passes (some replica is broken); a document for another resource (a reused pod IP) is no
/// answer; facts come from the first verified pod by name.
pub fn judge(url: &str, answers: &[(String, Answer)]) -> Verdict {
    if answers.is_empty() {
        return Verdict::new(Tri::Unknown, "NoPodsReady", "no ready pod to ask");
    }
    let docs: Vec<(&str, &McpStatus)> = answers
        .iter()
        .filter_map(|(pod, a)| match a {
            Answer::Doc(d) if d.resource == url => Some((pod.as_str(), d.as_ref())),
            _ => None,
        })
        .collect();
    let failed = docs.iter().find(|(_, d)| {
        !d.ok
            && matches!(
                d.reason.as_deref(),
                Some(probe::REASON_UNREACHABLE | probe::REASON_HANDSHAKE)
            )
    });
    if let Some((pod, d)) = failed {
        let reason = match d.reason.as_deref() {
            Some(probe::REASON_UNREACHABLE) => "UpstreamUnreachable",
            _ => "HandshakeFailed",
        };
        let why = clean(
            d.last_error.as_deref().unwrap_or("no reason given"),
            MAX_MESSAGE,
        );
        return Verdict::new(Tri::False, reason, format!("pod {pod}: {why}"));
    }
    let verified = docs.iter().find(|(_, d)| d.ok && d.server.is_some());
    if let Some((pod, d)) = verified {
        let facts = d.server.clone().map(bounded_facts);
        let f = facts.clone().unwrap_or_default();
        let tools = f
            .tool_count
            .map(|n| format!(", {n} tools"))
            .unwrap_or_default();
        let message = format!(
            "pod {pod}: {} {} answered initialize (protocol {}{tools})",
            f.server_info.name, f.server_info.version, f.protocol_version
        );
        return Verdict {
            facts,
            ..Verdict::new(Tri::True, "HandshakeSucceeded", message)
        };
    }
    if docs
        .iter()
        .any(|(_, d)| d.reason.as_deref() == Some(probe::REASON_DISABLED))
    {
        return Verdict::new(
            Tri::Unknown,
            "ProbeDisabled",
            "the gateway's probe is off (--probe-interval 0)",
        );
    }
    if !docs.is_empty() {
        return Verdict::new(
            Tri::Unknown,
            "Pending",
            "the gateway has not finished its first handshake yet",
        );
    }
    let message = format!(
        "no pod's gateway answered GET :{}{} for this server",
        contract::GATEWAY_ADMIN_PORT,
        contract::MCP_STATUS_PATH
    );
    Verdict::new(Tri::Unknown, "StatusUnreachable", message)
}

/// A pod's facts, re-bounded here: the operator writes them into status.
fn bounded_facts(f: ServerFacts) -> ServerFacts {
    ServerFacts {
        protocol_version: clean(&f.protocol_version, 64),
        server_info: probe::ServerInfo {
            name: clean(&f.server_info.name, 128),
            version: clean(&f.server_info.version, 128),
        },
        capabilities: f
            .capabilities
            .iter()
            .take(32)
            .map(|c| clean(c, 64))
            .collect(),
        tool_count: f.tool_count,
    }
}

/// `Native`: the RFC 9728 document names `url` as `resource` and `issuer` among its servers.
pub fn check_metadata(body: &[u8], url: &str, issuer: &str) -> Result<(), String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|_| "the metadata is not JSON".to_string())?;
    if doc.get("resource").and_then(Value::as_str) != Some(url) {
        return Err(format!("the metadata's resource is not {url}"));
    }
    let servers = doc.get("authorization_servers").and_then(Value::as_array);
    if !servers.is_some_and(|s| s.iter().any(|v| v.as_str() == Some(issuer))) {
        return Err(format!(
            "the metadata's authorization_servers lack {issuer}"
        ));
    }
    Ok(())
}

/// `Native`: an unauthenticated MCP request gets 401 with a Bearer challenge that points at the
/// metadata (`resource_metadata`), as MCP clients need to find Keycloak.
pub fn check_challenge(status: u16, www_authenticate: Option<&str>) -> Result<(), String> {
    if status != 401 {
        return Err(format!(
            "an unauthenticated initialize got HTTP {status}, not 401"
        ));
    }
    let challenge = www_authenticate.unwrap_or_default();
    let bearer = challenge
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("bearer "));
    if !bearer || !challenge.contains("resource_metadata=") {
        return Err("the 401 lacks a Bearer challenge with resource_metadata".into());
    }
    Ok(())
}

/// `Native`: one pod's checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NativeCheck {
    Passed,
    Unreachable,
    MetadataInvalid(String),
    ChallengeInvalid(String),
}

/// The verdict of a `Native` server from its pods' checks (the first failure by pod name wins).
pub fn judge_native(checks: &[(String, NativeCheck)]) -> Verdict {
    if checks.is_empty() {
        return Verdict::new(Tri::Unknown, "NoPodsReady", "no ready pod to ask");
    }
    for (pod, check) in checks {
        let (reason, why) = match check {
            NativeCheck::Passed => continue,
            NativeCheck::Unreachable => (
                "UpstreamUnreachable",
                "the server's port does not answer".to_string(),
            ),
            NativeCheck::MetadataInvalid(w) => ("ProtectedResourceMetadataInvalid", w.clone()),
            NativeCheck::ChallengeInvalid(w) => ("ChallengeInvalid", w.clone()),
        };
        return Verdict::new(Tri::False, reason, format!("pod {pod}: {why}"));
    }
    let message = "the protected-resource metadata and the 401 challenge are correct; the MCP handshake needs a token, so it is not probed in Native mode";
    Verdict::new(Tri::Unknown, "HandshakeNotProbed", message)
}

/// The status after `verdict`: the `Verified` condition, and `mcp` from verified facts. The
/// facts' `lastVerified` moves only when they change or verification recovers (`now`), so a
/// re-check of an unchanged server writes nothing; failed checks keep the last facts.
pub fn merge(d: &mut Draft<McpServerStatus>, verdict: &Verdict, now: Time) {
    let was_true = d.get(VERIFIED).is_some_and(|c| c.status == "True");
    match verdict.status {
        Tri::True => d.set(VERIFIED, true, verdict.reason, verdict.message.clone()),
        Tri::False => d.set(VERIFIED, false, verdict.reason, verdict.message.clone()),
        Tri::Unknown => d.set_unknown(VERIFIED, verdict.reason, verdict.message.clone()),
    }
    let Some(facts) = verdict
        .facts
        .as_ref()
        .filter(|_| verdict.status == Tri::True)
    else {
        return;
    };
    let mut info = McpInfo {
        protocol_version: Some(facts.protocol_version.clone()),
        server_info: Some(McpServerInfo {
            name: facts.server_info.name.clone(),
            version: facts.server_info.version.clone(),
        }),
        capabilities: facts.capabilities.clone(),
        tool_count: facts.tool_count.map(i64::from),
        last_verified: None,
    };
    let old = d.status.mcp.as_ref();
    let same = old.is_some_and(|o| {
        McpInfo {
            last_verified: None,
            ..o.clone()
        } == info
    });
    info.last_verified = match (same && was_true, old) {
        (true, Some(o)) => o.last_verified.clone(),
        _ => Some(now),
    };
    d.status.mcp = Some(info);
}

/// The verdict each server's last reconcile wrote, and what [`run_periodic`] needs to re-check
/// it (the issuer, for `Native` servers). Entries go with their server ([`Context::forget`]).
#[derive(Default)]
pub struct Memory {
    verdicts: Mutex<HashMap<String, (Verdict, String)>>,
}

impl Memory {
    fn remember(&self, uid: &str, verdict: Verdict, issuer: String) {
        let mut v = self.verdicts.lock().expect("poisoned");
        v.insert(uid.to_owned(), (verdict, issuer));
    }

    /// The issuer a server was verified with, if its reconcile verified it.
    fn issuer(&self, uid: &str) -> Option<String> {
        let v = self.verdicts.lock().expect("poisoned");
        v.get(uid).map(|(_, issuer)| issuer.clone())
    }

    fn differs(&self, uid: &str, verdict: &Verdict) -> bool {
        let v = self.verdicts.lock().expect("poisoned");
        v.get(uid).is_some_and(|(known, _)| known != verdict)
    }

    pub(super) fn forget(&self, uid: &str) {
        self.verdicts.lock().expect("poisoned").remove(uid);
    }
}

impl Run<'_> {
    /// The verification stage: verdict into `Verified` and `status.mcp`. Never fails the
    /// reconcile (verification does not feed `Ready`).
    pub(super) async fn verify(&mut self, policy: &McpAuthPolicy) {
        if self.ctx.config.verify_interval.is_zero() {
            return;
        }
        let issuer = policy.issuer();
        // No ready replica, no pod to ask: the LIST is skipped (the Deployment's status
        // change when one turns ready triggers the next reconcile).
        let verdict = if self.d.status.ready_replicas.unwrap_or(0) > 0 {
            verdict_of(self.ctx, self.server, &issuer).await
        } else {
            verdict_from(self.server, &issuer, &[]).await
        };
        let now = Time(jiff::Timestamp::now());
        merge(&mut self.d, &verdict, now);
        self.ctx.verifications.remember(&self.uid, verdict, issuer);
    }
}

/// Lists the server's pods and asks them; a failed LIST is a verdict of its own.
async fn verdict_of(ctx: &Context, server: &McpServer, issuer: &str) -> Verdict {
    match list_pods(ctx, server).await {
        Ok(pods) => verdict_from(server, issuer, &pods).await,
        Err(verdict) => verdict,
    }
}

/// Asks the ready ones of `pods` and judges their answers.
async fn verdict_from(server: &McpServer, issuer: &str, pods: &[Pod]) -> Verdict {
    let targets = targets(pods);
    let url = server.canonical_url();
    let http = match http_client() {
        Ok(c) => c,
        Err(_) => return Verdict::new(Tri::Unknown, "PodListFailed", "no HTTP client"),
    };
    match server.spec.auth.mode {
        AuthMode::Proxy => judge(&url, &ask_all(&targets, |t| gateway_status(&http, t)).await),
        AuthMode::None => judge(&url, &ask_all(&targets, |t| handshake(server, t)).await),
        AuthMode::Native => {
            let checks = ask_all(&targets, |t| native_check(&http, server, issuer, t)).await;
            judge_native(&checks)
        }
    }
}

async fn list_pods(ctx: &Context, server: &McpServer) -> Result<Vec<Pod>, Verdict> {
    let ns = server.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!(
        "{SERVER_LABEL}={},app.kubernetes.io/managed-by={MANAGED_BY}",
        server.name_any()
    );
    match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => Ok(list.items),
        Err(e) => {
            tracing::warn!(server = %server.name_any(), error = %e, "cannot list the server's pods");
            let message = format!(
                "cannot list the server's pods: {}",
                clean(&e.to_string(), MAX_MESSAGE)
            );
            Err(Verdict::new(Tri::Unknown, "PodListFailed", message))
        }
    }
}

fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
}

/// Asks every target at once; answers keep the targets' order.
async fn ask_all<'a, T, F, Fut>(targets: &'a [Target], ask: F) -> Vec<(String, T)>
where
    F: Fn(&'a Target) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let answers = futures::future::join_all(targets.iter().map(&ask)).await;
    targets.iter().map(|t| t.pod.clone()).zip(answers).collect()
}

fn pod_url(ip: IpAddr, port: impl std::fmt::Display, path: &str) -> String {
    let host = match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    format!("http://{host}:{port}{path}")
}

/// A body read up to [`MAX_BODY`]; `None` when larger or cut.
async fn bounded_body(mut resp: reqwest::Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        if body.len() + chunk.len() > MAX_BODY {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

async fn gateway_status(http: &reqwest::Client, t: &Target) -> Answer {
    let url = pod_url(
        t.ip,
        contract::GATEWAY_ADMIN_PORT,
        contract::MCP_STATUS_PATH,
    );
    let Ok(resp) = http.get(url).send().await else {
        return Answer::NoAnswer;
    };
    if !resp.status().is_success() {
        return Answer::NoAnswer;
    }
    let doc = bounded_body(resp)
        .await
        .and_then(|b| serde_json::from_slice(&b).ok());
    doc.map_or(Answer::NoAnswer, |d| Answer::Doc(Box::new(d)))
}

/// `None` mode: the operator's own handshake with the pod's server.
async fn handshake(server: &McpServer, t: &Target) -> Answer {
    let url = server.canonical_url();
    let endpoint = pod_url(t.ip, server.spec.port, &contract::mcp_endpoint_path(&url));
    let Some(prober) = endpoint
        .parse()
        .ok()
        .and_then(|e| probe::Prober::new(e).ok())
    else {
        return Answer::NoAnswer;
    };
    let mut doc = McpStatus::initial(&url, true);
    doc.record(prober.handshake().await, String::new());
    Answer::Doc(Box::new(doc))
}

/// `Native` mode: the metadata document, then an unauthenticated `initialize`.
async fn native_check(
    http: &reqwest::Client,
    server: &McpServer,
    issuer: &str,
    t: &Target,
) -> NativeCheck {
    let url = server.canonical_url();
    let path = contract::mcp_endpoint_path(&url);
    let own_path = url::Url::parse(&url).map(|u| u.path().trim_end_matches('/').to_owned());
    let well_known = format!(
        "/.well-known/oauth-protected-resource{}",
        own_path.unwrap_or_default()
    );
    let Ok(resp) = http
        .get(pod_url(t.ip, server.spec.port, &well_known))
        .send()
        .await
    else {
        return NativeCheck::Unreachable;
    };
    let status = resp.status().as_u16();
    let body = bounded_body(resp).await.unwrap_or_default();
    let metadata = match status {
        200 => check_metadata(&body, &url, issuer),
        s => Err(format!("GET {well_known} answered HTTP {s}")),
    };
    if let Err(why) = metadata {
        return NativeCheck::MetadataInvalid(why);
    }
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": probe::PROTOCOL_VERSION, "capabilities": {},
        "clientInfo": {"name": "mcp-keycloak-operator", "version": env!("CARGO_PKG_VERSION")}}});
    let req = http
        .post(pod_url(t.ip, server.spec.port, &path))
        .json(&init);
    let req = req.header("accept", "application/json, text/event-stream");
    let Ok(resp) = req.send().await else {
        return NativeCheck::Unreachable;
    };
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok());
    match check_challenge(resp.status().as_u16(), challenge) {
        Ok(()) => NativeCheck::Passed,
        Err(why) => NativeCheck::ChallengeInvalid(why),
    }
}

/// Every `--verify-seconds`: re-verifies each server its reconciles verified, and triggers a
/// reconcile (through `trigger`) for those whose verdict changed. No Keycloak access, no writes.
pub async fn run_periodic(
    ctx: Arc<Context>,
    store: Store<McpServer>,
    trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<McpServer>>,
) {
    let interval = ctx.config.verify_interval;
    if interval.is_zero() {
        return futures::future::pending().await;
    }
    loop {
        tokio::time::sleep(interval).await;
        let servers = store.state();
        futures::stream::iter(servers)
            .for_each_concurrent(16, |server| {
                let (ctx, trigger) = (ctx.clone(), trigger.clone());
                async move {
                    let uid = server.metadata.uid.clone().unwrap_or_default();
                    let Some(issuer) = ctx.verifications.issuer(&uid) else {
                        return;
                    };
                    // Failing servers reconcile on their own backoff; a trigger would bypass it.
                    let ready = server.status.as_ref().is_some_and(|s| {
                        super::conditions::is_true(&s.conditions, super::conditions::READY)
                    });
                    if server.metadata.deletion_timestamp.is_some() || !ready {
                        return;
                    }
                    let verdict = verdict_of(&ctx, &server, &issuer).await;
                    if ctx.verifications.differs(&uid, &verdict) {
                        let _ = trigger.unbounded_send(ObjectRef::from_obj(&*server));
                    }
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests;
