//! Controllers for McpAuthPolicy and McpServer, and what they share.

pub mod conditions;
mod isolation;
mod policy;
mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::admin::{AdminCredentials, KeycloakAdminClient};
use crate::api::{McpAuthPolicy, McpServer};
use crate::desired::is_subset;
use crate::metrics::Metrics;
use crate::{Error, Result};

pub const MANAGER: &str = "mcp-keycloak-operator";

#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Period of the level-triggered resync that repairs drift made behind our back.
    pub resync: Duration,
    /// Image used for the gateway container when an McpServer does not name one.
    pub operator_image: String,
    /// Reconciles each controller runs at once. Bounds memory and the burst on Keycloak when
    /// many objects change together (kube-runtime's default is unbounded: 500 servers applied at
    /// once peaked at 780 MiB RSS in benches/scale.rs).
    pub concurrency: u16,
    /// Give every McpServer a NetworkPolicy (unless its spec opts out).
    pub server_network_policies: bool,
    /// Who may reach the gateways' admin (metrics) port; `None`: nobody.
    pub metrics_peer: Option<crate::desired::workload::MetricsPeer>,
}

impl OperatorConfig {
    /// Default of [`OperatorConfig::concurrency`] (and of `run --max-concurrent-reconciles`).
    pub const DEFAULT_CONCURRENCY: u16 = 8;
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            resync: Duration::from_secs(300),
            concurrency: Self::DEFAULT_CONCURRENCY,
            server_network_policies: true,
            metrics_peer: None,
            operator_image: format!(
                "ghcr.io/mcp-keycloak-operator/operator:{}",
                env!("CARGO_PKG_VERSION")
            ),
        }
    }
}

/// Shared by both controllers.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub config: OperatorConfig,
    keycloak: Mutex<HashMap<String, Arc<KeycloakAdminClient>>>,
    /// The admin client last used for each policy (by UID), for cleanup after its admin Secret
    /// is gone (see [`Context::keycloak_for_cleanup`]).
    last_admin: std::sync::Mutex<HashMap<String, Arc<KeycloakAdminClient>>>,
    failures: std::sync::Mutex<HashMap<String, u32>>,
    /// Per McpServer UID: a digest of the inputs of its last successful Keycloak check, and when.
    keycloak_checked: std::sync::Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// The server controller's store, once it runs.
    servers: std::sync::OnceLock<kube::runtime::reflector::Store<McpServer>>,
}

impl Context {
    pub fn new(client: kube::Client, metrics: Arc<Metrics>, config: OperatorConfig) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Arc::new(Context {
            client,
            recorder,
            metrics,
            config,
            keycloak: Mutex::new(HashMap::new()),
            last_admin: std::sync::Mutex::new(HashMap::new()),
            failures: std::sync::Mutex::new(HashMap::new()),
            keycloak_checked: std::sync::Mutex::new(HashMap::new()),
            servers: std::sync::OnceLock::new(),
        })
    }

    /// The McpServers of a namespace: from the controller's store when it runs, else listed.
    pub async fn servers_in(&self, ns: &str) -> Result<Vec<Arc<McpServer>>> {
        if let Some(store) = self.servers.get() {
            let ns = Some(ns.to_string());
            return Ok(store
                .state()
                .into_iter()
                .filter(|s| s.namespace() == ns)
                .collect());
        }
        let api: Api<McpServer> = Api::namespaced(self.client.clone(), ns);
        Ok(api
            .list(&Default::default())
            .await?
            .into_iter()
            .map(Arc::new)
            .collect())
    }

    /// One admin client (and so one cached admin token) per Keycloak, realm and credentials.
    pub async fn keycloak_for(&self, policy: &McpAuthPolicy) -> Result<Arc<KeycloakAdminClient>> {
        let ns = policy.namespace().unwrap_or_default();
        let k = &policy.spec.keycloak;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let secret_name = &k.admin_credentials_secret_ref.name;
        let secret = secrets.get_opt(secret_name).await?.ok_or_else(|| {
            Error::invalid(
                "AdminSecretNotFound",
                format!("admin credentials Secret {ns}/{secret_name} not found"),
            )
        })?;
        let data = secret.data.unwrap_or_default();
        let (credentials, auth_realm) = bound_admin_credentials(&data, policy, &ns)?;
        let ca = match &k.ca_bundle_secret_ref {
            None => None,
            Some(r) => {
                let s = secrets.get_opt(&r.name).await?.ok_or_else(|| {
                    Error::invalid(
                        "CABundleNotFound",
                        format!("CA bundle Secret {ns}/{} not found", r.name),
                    )
                })?;
                let pem = s
                    .data
                    .unwrap_or_default()
                    .get(&r.key)
                    .map(|b| b.0.clone())
                    .ok_or_else(|| {
                        Error::invalid(
                            "CABundleNotFound",
                            format!("CA bundle Secret {ns}/{} has no key {}", r.name, r.key),
                        )
                    })?;
                Some(pem)
            }
        };
        // The cache key includes a digest of the credentials, so rotated credentials get a fresh client.
        let cred_digest = match &credentials {
            AdminCredentials::Password { username, password } => {
                crate::desired::digest(&["pw", username, password])
            }
            AdminCredentials::ClientCredentials {
                client_id,
                client_secret,
            } => crate::desired::digest(&["cc", client_id, client_secret]),
        };
        let ca_digest = ca
            .as_ref()
            .map(|c| crate::desired::digest(&[&String::from_utf8_lossy(c)]))
            .unwrap_or_default();
        let key = format!("{}|{}|{}|{}", k.url, auth_realm, cred_digest, ca_digest);
        let mut pool = self.keycloak.lock().await;
        let c = match pool.get(&key) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(KeycloakAdminClient::new(
                    &k.url,
                    &auth_realm,
                    credentials,
                    ca.as_deref(),
                    self.metrics.clone(),
                )?);
                pool.insert(key, c.clone());
                c
            }
        };
        self.last_admin
            .lock()
            .expect("poisoned")
            .insert(policy.metadata.uid.clone().unwrap_or_default(), c.clone());
        Ok(c)
    }

    /// [`Context::keycloak_for`] for cleanup: when the admin Secret is gone, falls back to the
    /// admin client this process last used for the policy. Deleting a namespace deletes the
    /// admin Secret alongside the McpServers whose cleanup still needs it; without the fallback
    /// their Keycloak clients and scopes were left behind (found by tests/crash.rs).
    pub async fn keycloak_for_cleanup(
        &self,
        policy: &McpAuthPolicy,
    ) -> Result<Arc<KeycloakAdminClient>> {
        match self.keycloak_for(policy).await {
            Err(e) if matches!(e.reason(), "AdminSecretNotFound" | "AdminSecretInvalid") => {
                let uid = policy.metadata.uid.clone().unwrap_or_default();
                let last = self.last_admin.lock().expect("poisoned").get(&uid).cloned();
                last.ok_or(e)
            }
            other => other,
        }
    }

    /// How long a successful Keycloak check of a server stands for reconciles with the same
    /// inputs. A server's own status writes and its children's changes each trigger a reconcile
    /// (5.6 per server when 500 are applied at once, benches/scale.rs); within this window they
    /// skip the Keycloak reads. It is at most half the resync period, so every resync still
    /// checks Keycloak and repairs drift.
    fn keycloak_check_window(&self) -> Duration {
        (self.config.resync / 2).min(Duration::from_secs(30))
    }

    /// Whether `key`'s Keycloak objects were checked with these `inputs` within the window.
    pub fn keycloak_recently_checked(&self, key: &str, inputs: &str) -> bool {
        let window = self.keycloak_check_window();
        self.keycloak_checked
            .lock()
            .expect("poisoned")
            .get(key)
            .is_some_and(|(i, at)| i == inputs && at.elapsed() < window)
    }

    pub fn record_keycloak_check(&self, key: &str, inputs: String) {
        self.keycloak_checked
            .lock()
            .expect("poisoned")
            .insert(key.to_string(), (inputs, std::time::Instant::now()));
    }

    pub fn forget_keycloak_check(&self, key: &str) {
        self.keycloak_checked.lock().expect("poisoned").remove(key);
    }

    fn reset_failures(&self, key: &str) {
        self.failures.lock().expect("poisoned").remove(key);
    }

    /// Per-object exponential backoff: 5 s doubling to 5 min (permanent errors start at 30 s).
    fn backoff(&self, key: &str, permanent: bool) -> Duration {
        let mut f = self.failures.lock().expect("poisoned");
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let base: u64 = if permanent { 30 } else { 5 };
        let secs = base.saturating_mul(1u64 << (*n - 1).min(10)).min(300);
        Duration::from_secs(secs)
    }

    pub async fn publish(
        &self,
        obj_ref: &k8s_openapi::api::core::v1::ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, obj_ref).await {
            tracing::warn!(error = %e, "failed to publish event");
        }
    }

    /// Whether the object's namespace is being deleted (cleanup then never blocks it).
    async fn namespace_terminating(&self, ns: &str) -> bool {
        let api: Api<Namespace> = Api::all(self.client.clone());
        matches!(api.get_opt(ns).await, Ok(Some(n)) if n.metadata.deletion_timestamp.is_some())
    }
}

/// Default realm of the admin credentials (the Secret's and the policy's `authRealm`).
pub const DEFAULT_AUTH_REALM: &str = "master";

/// The admin credentials in a Secret's `data`, and the realm they authenticate in — only if the
/// Secret names the very Keycloak (`url`) and realm (`authRealm`) the policy would send them to.
/// Someone who may edit a policy but not read the Secret could otherwise point `keycloak.url` at
/// a host of theirs (or `authRealm` at a realm whose login flow they control) and receive them.
pub fn bound_admin_credentials(
    data: &std::collections::BTreeMap<String, k8s_openapi::ByteString>,
    policy: &McpAuthPolicy,
    ns: &str,
) -> Result<(AdminCredentials, String)> {
    let k = &policy.spec.keycloak;
    let secret_name = &k.admin_credentials_secret_ref.name;
    let get = |key: &str| {
        data.get(key)
            .map(|v| {
                String::from_utf8_lossy(&v.0)
                    .trim_end_matches('\n')
                    .to_string()
            })
            .filter(|v| !v.is_empty())
    };
    let credentials = match (get("username"), get("password"), get("clientId"), get("clientSecret")) {
        (_, _, Some(client_id), Some(client_secret)) => AdminCredentials::ClientCredentials { client_id, client_secret },
        (Some(username), Some(password), _, _) => AdminCredentials::Password { username, password },
        _ => {
            return Err(Error::invalid(
                "AdminSecretInvalid",
                format!("Secret {ns}/{secret_name} must contain either keys username and password, or clientId and clientSecret"),
            ))
        }
    };
    let Some(bound_url) = get("url") else {
        return Err(Error::invalid(
            "AdminSecretInvalid",
            format!("Secret {ns}/{secret_name} must contain key url: the Keycloak base URL these credentials belong to (the operator sends them nowhere else)"),
        ));
    };
    let bound_url = bound_url.trim_end_matches('/');
    if bound_url != k.url.trim_end_matches('/') {
        return Err(Error::invalid(
            "AdminSecretUrlMismatch",
            format!("Secret {ns}/{secret_name} belongs to Keycloak {bound_url}, not to spec.keycloak.url {}: the credentials are not sent", k.url),
        ));
    }
    let bound_realm = get("authRealm").unwrap_or_else(|| DEFAULT_AUTH_REALM.into());
    let auth_realm = k
        .admin_credentials_secret_ref
        .auth_realm
        .clone()
        .unwrap_or_else(|| DEFAULT_AUTH_REALM.into());
    if bound_realm != auth_realm {
        return Err(Error::invalid(
            "AdminSecretUrlMismatch",
            format!("Secret {ns}/{secret_name} belongs to realm {bound_realm} (its authRealm key), not to adminCredentialsSecretRef.authRealm {auth_realm}: the credentials are not sent"),
        ));
    }
    Ok((credentials, auth_realm))
}

/// Server-side applies `desired` unless the live object already matches it (no write at steady
/// state). Refuses to take over an object of the same name that we do not own.
pub async fn apply_if_changed<K>(api: &Api<K>, desired: &K, owner_uid: &str) -> Result<bool>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    if let Some(live) = api.get_opt(&name).await? {
        let owned = live
            .meta()
            .owner_references
            .as_ref()
            .is_some_and(|refs| refs.iter().any(|r| r.uid == owner_uid));
        if !owned {
            return Err(Error::invalid(
                "ResourceConflict",
                format!("{name} already exists and is not owned by this McpServer"),
            ));
        }
        if is_subset(
            &serde_json::to_value(desired)?,
            &serde_json::to_value(&live)?,
        ) {
            return Ok(false);
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await?;
    Ok(true)
}

/// Writes status with server-side apply, only when it differs from what is there.
pub async fn patch_status_if_changed<K, S>(
    api: &Api<K>,
    obj: &K,
    old: Option<&S>,
    new: &S,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if old == Some(new) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": new,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
    controller: &'static str,
) -> Action {
    let key = obj.meta().uid.clone().unwrap_or_default();
    ctx.metrics.record_error(controller, err.reason());
    let delay = ctx.backoff(&key, err.is_permanent());
    tracing::warn!(
        controller,
        name = %obj.meta().name.clone().unwrap_or_default(),
        namespace = %obj.meta().namespace.clone().unwrap_or_default(),
        reason = err.reason(),
        error = %err,
        retry_in_secs = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Succeeds once `api` answers a LIST (limit 1) with the operator's identity, retrying with a
/// capped backoff. Readiness is built from these rather than from the controllers' store
/// readiness: that future keeps a single waker, and a second waiter could take the controller's
/// own wake-up away.
async fn listable<K>(api: &Api<K>, selector: Option<&str>) -> bool
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut lp = kube::api::ListParams::default().limit(1);
    if let Some(sel) = selector {
        lp = lp.labels(sel);
    }
    let mut delay = Duration::from_millis(250);
    loop {
        match api.list_metadata(&lp).await {
            Ok(_) => return true,
            Err(e) => {
                tracing::debug!(kind = std::any::type_name::<K>(), error = %e, "not listable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Backoff of a controller's watch streams: 0.5 s doubling to at most 5 s, back to 0.5 s after
/// any event. kube-runtime backs off the *merged* stream of a controller's watches (its own,
/// `owns`, `watches`) on every error, and its default (0.8 s doubling to 30 s) made the operator
/// deaf for minutes after a kube-apiserver restart: each watch answers one `410 Gone` (its
/// resource version predates the new watch cache) and every one of them cost another 30 s
/// before any watch was polled again (found by tests/apiserver_restart.rs).
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const INITIAL: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff {
            next: Self::INITIAL,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(Self::MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::INITIAL;
    }
}

/// Which McpServer events reconcile the server's policy. Only a policy with metadata documents
/// enabled does anything with its servers (it links their audience scopes to the clients
/// Keycloak created from documents), and only when a server's spec or recorded audience scope
/// changed: every status write of a server used to trigger its policy, which bypassed the
/// policy's error backoff during a Keycloak outage (found by tests/outage.rs: 7 failed attempts
/// in 60 s instead of about 4). Entries go when a server is being deleted, so this stays bounded.
#[derive(Default)]
struct ServerTrigger {
    seen: std::sync::Mutex<HashMap<ObjectRef<McpServer>, ServerState>>,
}

/// What of a server its policy acts on: the generation and the audience scope's Keycloak id
/// (recorded once the scope exists, so the policy's reconcile finds it).
type ServerState = (Option<i64>, Option<String>);

impl ServerTrigger {
    fn policy_to_reconcile(
        &self,
        server: &McpServer,
        policy: impl Fn(&ObjectRef<McpAuthPolicy>) -> Option<Arc<McpAuthPolicy>>,
    ) -> Option<ObjectRef<McpAuthPolicy>> {
        let key = ObjectRef::from_obj(server);
        let mut seen = self.seen.lock().expect("poisoned");
        if server.metadata.deletion_timestamp.is_some() {
            seen.remove(&key);
            return None;
        }
        let policy_ref = ObjectRef::<McpAuthPolicy>::new(&server.spec.policy_ref.name)
            .within(&server.namespace()?);
        let cimd = policy(&policy_ref).is_some_and(|p| {
            p.spec
                .client_id_metadata_documents
                .as_ref()
                .is_some_and(|c| c.enabled)
        });
        let state = (
            server.metadata.generation,
            server
                .status
                .as_ref()
                .and_then(|s| s.audience_scope_id.clone()),
        );
        if !cimd || seen.get(&key) == Some(&state) {
            return None;
        }
        seen.insert(key, state);
        Some(policy_ref)
    }
}

/// Runs both controllers until a shutdown signal. `namespace` restricts them to one namespace.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    run_until_synced(ctx, namespace, |_| {}).await
}

/// Like [`run`], calling `on_synced(true)` once every watched kind can be listed.
pub async fn run_until_synced(
    ctx: Arc<Context>,
    namespace: Option<String>,
    on_synced: impl FnOnce(bool) + Send + 'static,
) {
    let client = ctx.client.clone();
    let (policies, servers): (Api<McpAuthPolicy>, Api<McpServer>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let owned = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        crate::desired::workload::MANAGED_BY
    ));
    let (deployments, secrets, services): (Api<Deployment>, Api<Secret>, Api<Service>) =
        match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };

    let network_policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let probes = (
        servers.clone(),
        policies.clone(),
        deployments.clone(),
        secrets.clone(),
        services.clone(),
        network_policies.clone(),
    );
    let server_controller = Controller::new(servers.clone(), watcher::Config::default());
    let server_store = server_controller.store();
    let _ = ctx.servers.set(server_store.clone());
    let controller_config =
        kube::runtime::controller::Config::default().concurrency(ctx.config.concurrency);
    let server_controller = server_controller
        .with_config(controller_config.clone())
        .trigger_backoff(WatchBackoff::default())
        .owns(deployments, owned.clone())
        .owns(secrets, owned.clone())
        .owns(services, owned.clone())
        .owns(network_policies, owned)
        .watches(
            policies.clone(),
            watcher::Config::default(),
            move |policy: McpAuthPolicy| {
                let ns = policy.namespace();
                let name = policy.name_any();
                server_store
                    .state()
                    .into_iter()
                    .filter(|s| s.namespace() == ns && s.spec.policy_ref.name == name)
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(
            server::reconcile,
            |obj, err, ctx| error_policy(obj, err, ctx, "mcpserver"),
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    let policy_controller = Controller::new(policies, watcher::Config::default());
    tokio::spawn(async move {
        let (servers, policies, deployments, secrets, services, network_policies) = probes;
        let sel = format!(
            "app.kubernetes.io/managed-by={}",
            crate::desired::workload::MANAGED_BY
        );
        let ok = listable(&servers, None).await
            && listable(&policies, None).await
            && listable(&deployments, Some(&sel)).await
            && listable(&secrets, Some(&sel)).await
            && listable(&services, Some(&sel)).await
            && listable(&network_policies, Some(&sel)).await;
        tracing::info!(ok, "every watched kind is listable");
        on_synced(ok);
    });
    let policy_store = policy_controller.store();
    let server_trigger = ServerTrigger::default();
    let policy_controller = policy_controller
        .with_config(controller_config)
        .trigger_backoff(WatchBackoff::default())
        // A server's audience scope must reach the clients Keycloak created from metadata
        // documents (see `policy::apply_cimd`): reconcile its policy when the server changes.
        .watches(
            servers,
            watcher::Config::default(),
            move |server: McpServer| {
                server_trigger.policy_to_reconcile(&server, |r| policy_store.get(r))
            },
        )
        .shutdown_on_signal()
        .run(
            policy::reconcile,
            |obj, err, ctx| error_policy(obj, err, ctx, "mcpauthpolicy"),
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    futures::join!(server_controller, policy_controller);
}

#[cfg(test)]
mod tests {
    use super::{ServerTrigger, WatchBackoff};
    use crate::api::{McpAuthPolicy, McpServer};
    use kube::runtime::reflector::ObjectRef;
    use kube::runtime::utils::Backoff;
    use std::sync::Arc;
    use std::time::Duration;

    fn server(generation: i64, scope: Option<&str>, deleting: bool) -> McpServer {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mcpauth.dev/v1alpha1", "kind": "McpServer",
            "metadata": {
                "name": "weather", "namespace": "team", "generation": generation,
                "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z"),
            },
            "spec": {"image": "img", "policyRef": {"name": "acme"}},
            "status": {"audienceScopeId": scope},
        }))
        .unwrap()
    }

    fn policy(cimd: Option<bool>) -> Arc<McpAuthPolicy> {
        let mut spec = serde_json::json!({
            "keycloak": {"url": "http://kc", "realm": "r", "adminCredentialsSecretRef": {"name": "a"}},
            "scopes": [{"name": "mcp:tools"}],
        });
        if let Some(enabled) = cimd {
            spec["clientIdMetadataDocuments"] =
                serde_json::json!({"enabled": enabled, "trustedDomains": ["example.com"]});
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "mcpauth.dev/v1alpha1", "kind": "McpAuthPolicy",
                "metadata": {"name": "acme", "namespace": "team"},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn server_events_reconcile_a_cimd_policy_only_when_spec_or_audience_scope_change() {
        let t = ServerTrigger::default();
        let cimd = |_: &ObjectRef<McpAuthPolicy>| Some(policy(Some(true)));
        let want = Some(ObjectRef::<McpAuthPolicy>::new("acme").within("team"));
        assert_eq!(t.policy_to_reconcile(&server(1, None, false), cimd), want);
        // A status-only change (conditions) does not trigger it again.
        assert_eq!(t.policy_to_reconcile(&server(1, None, false), cimd), None);
        assert_eq!(
            t.policy_to_reconcile(&server(1, Some("s"), false), cimd),
            want
        );
        assert_eq!(
            t.policy_to_reconcile(&server(1, Some("s"), false), cimd),
            None
        );
        assert_eq!(
            t.policy_to_reconcile(&server(2, Some("s"), false), cimd),
            want
        );
        // Deletion forgets the server (bounded), a recreated one triggers again.
        assert_eq!(
            t.policy_to_reconcile(&server(2, Some("s"), true), cimd),
            None
        );
        assert!(t.seen.lock().unwrap().is_empty());
        assert_eq!(t.policy_to_reconcile(&server(1, None, false), cimd), want);
        // Policies without metadata documents (or not known yet) do nothing with servers.
        let t = ServerTrigger::default();
        for p in [Some(policy(None)), Some(policy(Some(false))), None] {
            assert_eq!(
                t.policy_to_reconcile(&server(1, None, false), |_| p.clone()),
                None
            );
        }
    }

    fn context(resync: Duration) -> Arc<super::Context> {
        // A client that is never used: these tests touch no API server.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        super::Context::new(
            kube::Client::try_from(config).unwrap(),
            Arc::default(),
            super::OperatorConfig {
                resync,
                ..Default::default()
            },
        )
    }

    #[tokio::test]
    async fn a_keycloak_check_stands_only_for_the_same_inputs_within_the_window() {
        let ctx = context(Duration::from_secs(300));
        assert_eq!(ctx.keycloak_check_window(), Duration::from_secs(30));
        assert!(!ctx.keycloak_recently_checked("uid", "a"));
        ctx.record_keycloak_check("uid", "a".into());
        assert!(ctx.keycloak_recently_checked("uid", "a"));
        assert!(!ctx.keycloak_recently_checked("uid", "b"), "other inputs");
        assert!(!ctx.keycloak_recently_checked("other", "a"), "other server");
        ctx.forget_keycloak_check("uid");
        assert!(!ctx.keycloak_recently_checked("uid", "a"));
        // Half the resync at most, so every resync checks Keycloak again.
        let ctx = context(Duration::from_secs(4));
        assert_eq!(ctx.keycloak_check_window(), Duration::from_secs(2));
        let ctx = context(Duration::ZERO);
        ctx.record_keycloak_check("uid", "a".into());
        assert!(!ctx.keycloak_recently_checked("uid", "a"));
    }

    #[test]
    fn watch_backoff_is_capped_at_five_seconds_and_resets() {
        let mut b = WatchBackoff::default();
        let first: Vec<u64> = b.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(first, vec![500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }

    fn secret_data(
        pairs: &[(&str, &str)],
    ) -> std::collections::BTreeMap<String, k8s_openapi::ByteString> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    k8s_openapi::ByteString(v.as_bytes().to_vec()),
                )
            })
            .collect()
    }

    #[test]
    fn admin_credentials_go_only_to_the_keycloak_and_realm_their_secret_names() {
        let p = policy(None); // url http://kc, authRealm default
        let ok = secret_data(&[
            ("username", "admin"),
            ("password", "pw"),
            ("url", "http://kc/"),
        ]);
        let (creds, realm) = super::bound_admin_credentials(&ok, &p, "team").unwrap();
        assert_eq!(realm, "master");
        assert!(matches!(
            creds,
            crate::admin::AdminCredentials::Password { .. }
        ));
        let reason = |pairs: &[(&str, &str)], p: &McpAuthPolicy| {
            super::bound_admin_credentials(&secret_data(pairs), p, "team")
                .unwrap_err()
                .reason()
        };
        assert_eq!(
            reason(&[("username", "admin"), ("password", "pw")], &p),
            "AdminSecretInvalid"
        );
        assert_eq!(
            reason(
                &[
                    ("username", "admin"),
                    ("password", "pw"),
                    ("url", "http://evil")
                ],
                &p
            ),
            "AdminSecretUrlMismatch"
        );
        assert_eq!(
            reason(
                &[
                    ("username", "admin"),
                    ("password", "pw"),
                    ("url", "http://kc"),
                    ("authRealm", "r")
                ],
                &p
            ),
            "AdminSecretUrlMismatch"
        );
        let mut in_realm = (*p).clone();
        in_realm
            .spec
            .keycloak
            .admin_credentials_secret_ref
            .auth_realm = Some("r".into());
        assert_eq!(
            reason(
                &[
                    ("username", "admin"),
                    ("password", "pw"),
                    ("url", "http://kc")
                ],
                &in_realm
            ),
            "AdminSecretUrlMismatch"
        );
        let bound = secret_data(&[
            ("clientId", "svc"),
            ("clientSecret", "s"),
            ("url", "http://kc"),
            ("authRealm", "r"),
        ]);
        let (_, realm) = super::bound_admin_credentials(&bound, &in_realm, "team").unwrap();
        assert_eq!(realm, "r");
    }
}
