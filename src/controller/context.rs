//! What every reconcile of either kind gets: the clients, the configuration, and the few
//! caches that save Keycloak requests — each entry dropped when its object goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::ResourceExt;

use super::admin_secret::AdminConnection;
use super::MANAGER;
use crate::admin::KeycloakAdminClient;
use crate::api::{McpAuthPolicy, McpServer};
use crate::desired::workload::MetricsPeer;
use crate::metrics::Metrics;
use crate::Result;

#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Period of the level-triggered resync that repairs drift made behind our back.
    pub resync: Duration,
    /// Image used for the gateway container when an McpServer does not name one.
    pub operator_image: String,
    /// Reconciles each controller runs at once. Bounds memory and the burst on Keycloak when
    /// many objects change together (kube-runtime's default is unbounded).
    pub concurrency: u16,
    /// Give every McpServer a NetworkPolicy (unless its spec opts out).
    pub server_network_policies: bool,
    /// Who may reach the gateways' admin (metrics) port; `None`: nobody.
    pub metrics_peer: Option<MetricsPeer>,
    /// The operator's own pods, admitted to the gateways' admin port to read `/mcp-status`
    /// (live verification); `None`: not admitted by the NetworkPolicy.
    pub operator_peer: Option<MetricsPeer>,
    /// Period of live verification (see `verify.rs`); zero turns it off.
    pub verify_interval: Duration,
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
            operator_peer: None,
            verify_interval: Duration::from_secs(60),
            operator_image: format!(
                "ghcr.io/mcp-keycloak-operator/operator:{}",
                env!("CARGO_PKG_VERSION")
            ),
        }
    }
}

/// Own writes remembered per object (a reconcile writes an object at most twice).
const OWN_WRITES_KEPT: usize = 4;

/// A successful Keycloak check of a server: a digest of its inputs, the audience scope id it
/// found (empty in `ResourceIndicator` mode), and when.
type KeycloakCheck = (String, String, Instant);

/// An admin client and the key of the connection it was made for.
type AdminEntry = (String, Arc<KeycloakAdminClient>);

/// Shared by both controllers. The maps are keyed by object UID and forgotten when the object's
/// finalizer completes ([`Context::forget`]).
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub config: OperatorConfig,
    /// Per policy: its admin client. Policies with equal connections share one client (and so
    /// one admin token); a client lives as long as a policy uses it.
    admins: Mutex<HashMap<String, AdminEntry>>,
    /// Per object: failed reconciles in a row, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Per McpServer: a digest of the inputs of its last successful Keycloak check, and when.
    keycloak_checked: Mutex<HashMap<String, KeycloakCheck>>,
    /// Per McpServer: the verdict of its last live verification.
    pub(super) verifications: super::verify::Memory,
    /// The server controller's store, once it runs.
    pub(super) servers: OnceLock<Store<McpServer>>,
    /// Per object UID: resourceVersions our own writes produced (see [`Context::own_write`]).
    own_writes: Mutex<HashMap<String, Vec<String>>>,
}

fn uid_of(obj: &impl kube::Resource) -> String {
    obj.meta().uid.clone().unwrap_or_default()
}

impl Context {
    pub fn new(client: kube::Client, metrics: Arc<Metrics>, config: OperatorConfig) -> Arc<Self> {
        let instance = std::env::var("POD_NAME").ok();
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance,
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            config,
            admins: Mutex::default(),
            failures: Mutex::default(),
            keycloak_checked: Mutex::default(),
            verifications: Default::default(),
            servers: OnceLock::new(),
            own_writes: Mutex::default(),
        })
    }

    /// The McpServers of a namespace: from the controller's store when it runs, else listed.
    pub async fn servers_in(&self, ns: &str) -> Result<Vec<Arc<McpServer>>> {
        if let Some(store) = self.servers.get() {
            let ns = Some(ns.to_string());
            let state = store.state().into_iter();
            return Ok(state.filter(|s| s.namespace() == ns).collect());
        }
        let api: Api<McpServer> = Api::namespaced(self.client.clone(), ns);
        let list = api.list(&Default::default()).await?;
        Ok(list.into_iter().map(Arc::new).collect())
    }

    /// The admin client of the policy's Keycloak, realm and credentials (read anew each time,
    /// so rotated credentials or a moved `url` take effect at once).
    pub async fn keycloak_for(&self, policy: &McpAuthPolicy) -> Result<Arc<KeycloakAdminClient>> {
        let conn = AdminConnection::read(&self.client, policy).await?;
        let url = &policy.spec.keycloak.url;
        let key = conn.key(url);
        let mut admins = self.admins.lock().expect("poisoned");
        let shared = admins.values().find(|(k, _)| *k == key);
        let client = match shared {
            Some((_, c)) => c.clone(),
            None => Arc::new(KeycloakAdminClient::new(
                url,
                &conn.auth_realm,
                conn.credentials,
                conn.ca_bundle.as_deref(),
                self.metrics.clone(),
            )?),
        };
        admins.insert(uid_of(policy), (key, client.clone()));
        Ok(client)
    }

    /// [`Context::keycloak_for`] for cleanup: when the admin Secret is gone, falls back to the
    /// admin client this process last used for the policy. Deleting a namespace deletes the
    /// admin Secret alongside the McpServers whose cleanup still needs it.
    pub async fn keycloak_for_cleanup(
        &self,
        policy: &McpAuthPolicy,
    ) -> Result<Arc<KeycloakAdminClient>> {
        match self.keycloak_for(policy).await {
            Err(e) if matches!(e.reason(), "AdminSecretNotFound" | "AdminSecretInvalid") => {
                let admins = self.admins.lock().expect("poisoned");
                let last = admins.get(&uid_of(policy)).map(|(_, c)| c.clone());
                last.ok_or(e)
            }
            other => other,
        }
    }

    /// Records that one of our writes gave `obj` its current resourceVersion.
    pub(super) fn record_own_write(&self, obj: &impl kube::Resource) {
        let (uid, rv) = (uid_of(obj), obj.meta().resource_version.clone());
        let Some(rv) = rv.filter(|_| !uid.is_empty()) else {
            return;
        };
        let mut own = self.own_writes.lock().expect("poisoned");
        let rvs = own.entry(uid).or_default();
        // A reconcile writes a few times; older entries whose event never came are dropped.
        if rvs.len() >= OWN_WRITES_KEPT {
            rvs.remove(0);
        }
        rvs.push(rv);
    }

    /// Whether a watch event shows `obj` exactly as one of our writes left it (consumed: each
    /// write is recognised once). Such an event must not trigger a reconcile: the reconcile that
    /// wrote it already acted on these inputs, and a write by anyone else, or a deletion, has
    /// another resourceVersion or comes as a deletion event.
    pub(super) fn own_write(&self, obj: &impl kube::Resource) -> bool {
        let (uid, rv) = (uid_of(obj), obj.meta().resource_version.as_deref());
        let mut own = self.own_writes.lock().expect("poisoned");
        let Some(rvs) = own.get_mut(&uid) else {
            return false;
        };
        let Some(at) = rvs.iter().position(|r| Some(r.as_str()) == rv) else {
            return false;
        };
        rvs.remove(at);
        if rvs.is_empty() {
            own.remove(&uid);
        }
        true
    }

    /// Drops what the caches hold for an object whose finalizer has completed.
    pub fn forget(&self, obj: &impl kube::Resource) {
        let uid = uid_of(obj);
        self.admins.lock().expect("poisoned").remove(&uid);
        self.failures.lock().expect("poisoned").remove(&uid);
        self.keycloak_checked.lock().expect("poisoned").remove(&uid);
        self.verifications.forget(&uid);
        self.own_writes.lock().expect("poisoned").remove(&uid);
    }

    /// How long a successful Keycloak check of a server stands for reconciles with the same
    /// inputs: a server's own status writes and its children's changes each trigger a
    /// reconcile, and within this window they skip the Keycloak reads. At most half the resync
    /// period, so every resync still checks Keycloak and repairs drift.
    pub(super) fn keycloak_check_window(&self) -> Duration {
        (self.config.resync / 2).min(Duration::from_secs(30))
    }

    /// The audience scope id found when `key`'s Keycloak objects were checked with these
    /// `inputs` within the window, if they were. Kept here rather than read from status: the
    /// reconcile right after the check may see the object before its status write.
    pub fn keycloak_recently_checked(&self, key: &str, inputs: &str) -> Option<String> {
        let window = self.keycloak_check_window();
        let checked = self.keycloak_checked.lock().expect("poisoned");
        let (i, scope_id, at) = checked.get(key)?;
        (i == inputs && at.elapsed() < window).then(|| scope_id.clone())
    }

    pub fn record_keycloak_check(&self, key: &str, inputs: String, scope_id: &str) {
        let mut checked = self.keycloak_checked.lock().expect("poisoned");
        let entry = (inputs, scope_id.to_string(), Instant::now());
        checked.insert(key.to_string(), entry);
    }

    pub(super) fn reset_failures(&self, key: &str) {
        self.failures.lock().expect("poisoned").remove(key);
    }

    /// Per-object exponential backoff. Transient errors (Keycloak or the API server down or
    /// failing): 5 s doubling to 1 min, so a recovered Keycloak is noticed within a minute.
    /// Errors a person must fix: 30 s doubling to 5 min.
    pub(super) fn backoff(&self, key: &str, permanent: bool) -> Duration {
        let mut f = self.failures.lock().expect("poisoned");
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let (base, max): (u64, u64) = if permanent { (30, 300) } else { (5, 60) };
        let secs = base.saturating_mul(1u64 << (*n - 1).min(10)).min(max);
        Duration::from_secs(secs)
    }

    pub async fn publish(
        &self,
        obj_ref: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let type_ = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let ev = Event {
            type_,
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
    pub(super) async fn namespace_terminating(&self, ns: &str) -> bool {
        let api: Api<Namespace> = Api::all(self.client.clone());
        matches!(api.get_opt(ns).await, Ok(Some(n)) if n.metadata.deletion_timestamp.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(resync: Duration) -> Arc<Context> {
        // A client that is never used: these tests touch no API server.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let config = OperatorConfig {
            resync,
            ..Default::default()
        };
        Context::new(client, Arc::default(), config)
    }

    #[tokio::test]
    async fn a_keycloak_check_stands_only_for_the_same_inputs_within_the_window() {
        let ctx = context(Duration::from_secs(300));
        assert_eq!(ctx.keycloak_check_window(), Duration::from_secs(30));
        assert_eq!(ctx.keycloak_recently_checked("uid", "a"), None);
        ctx.record_keycloak_check("uid", "a".into(), "scope-1");
        assert_eq!(
            ctx.keycloak_recently_checked("uid", "a").as_deref(),
            Some("scope-1")
        );
        assert_eq!(
            ctx.keycloak_recently_checked("uid", "b"),
            None,
            "other inputs"
        );
        assert_eq!(
            ctx.keycloak_recently_checked("other", "a"),
            None,
            "other server"
        );
        // Half the resync at most, so every resync checks Keycloak again.
        let ctx = context(Duration::from_secs(4));
        assert_eq!(ctx.keycloak_check_window(), Duration::from_secs(2));
        let ctx = context(Duration::ZERO);
        ctx.record_keycloak_check("uid", "a".into(), "");
        assert_eq!(ctx.keycloak_recently_checked("uid", "a"), None);
    }

    #[tokio::test]
    async fn transient_errors_back_off_to_a_minute_permanent_ones_to_five() {
        let ctx = context(Duration::from_secs(300));
        let delays = |key: &str, permanent: bool| -> Vec<u64> {
            (0..8)
                .map(|_| ctx.backoff(key, permanent).as_secs())
                .collect()
        };
        assert_eq!(delays("t", false), [5, 10, 20, 40, 60, 60, 60, 60]);
        assert_eq!(delays("p", true), [30, 60, 120, 240, 300, 300, 300, 300]);
    }

    #[tokio::test]
    async fn only_the_versions_our_writes_made_are_recognised_each_once() {
        let ctx = context(Duration::from_secs(300));
        let at = |rv: &str| {
            let mut s = McpServer::new(
                "s",
                serde_json::from_value(serde_json::json!({
                "image": "img", "policyRef": {"name": "p"}}))
                .unwrap(),
            );
            s.metadata.uid = Some("uid".into());
            s.metadata.resource_version = Some(rv.into());
            s
        };
        assert!(!ctx.own_write(&at("1")), "nothing written yet");
        ctx.record_own_write(&at("5"));
        ctx.record_own_write(&at("7"));
        assert!(!ctx.own_write(&at("6")), "someone else's version");
        assert!(ctx.own_write(&at("5")));
        assert!(!ctx.own_write(&at("5")), "recognised once");
        assert!(ctx.own_write(&at("7")));
        // Bounded: the oldest versions whose events never came are dropped.
        for rv in 10..20 {
            ctx.record_own_write(&at(&rv.to_string()));
        }
        assert!(!ctx.own_write(&at("10")));
        assert!(ctx.own_write(&at("19")));
        ctx.forget(&at("19"));
        assert!(!ctx.own_write(&at("18")), "forgotten with the object");
    }

    #[tokio::test]
    async fn forgetting_an_object_drops_its_cache_entries() {
        let ctx = context(Duration::from_secs(300));
        let mut server = McpServer::new(
            "s",
            serde_json::from_value(serde_json::json!({
            "image": "img", "policyRef": {"name": "p"}}))
            .unwrap(),
        );
        server.metadata.uid = Some("uid".into());
        ctx.record_keycloak_check("uid", "a".into(), "");
        assert_eq!(ctx.backoff("uid", false), Duration::from_secs(5));
        assert_eq!(ctx.backoff("uid", false), Duration::from_secs(10));
        ctx.forget(&server);
        assert_eq!(ctx.keycloak_recently_checked("uid", "a"), None);
        assert_eq!(
            ctx.backoff("uid", false),
            Duration::from_secs(5),
            "count restarted"
        );
        assert!(ctx.failures.lock().unwrap().len() == 1);
    }
}
