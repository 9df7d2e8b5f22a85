//! Wiring: the two controllers, what each watches, their backoffs and readiness probe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::conditions::READY;
use super::finish::{reconcile, Reconciled};
use super::Context;
use crate::api::{ActiveAudience, McpAuthPolicy, McpServer};
use crate::desired::cimd::requested;
use crate::desired::workload::MANAGED_BY;
use crate::Error;

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
    let apis = Apis::new(&ctx.client, namespace.as_deref());
    tokio::spawn(probe_listable(apis.clone(), on_synced));
    let config = Config::default().concurrency(ctx.config.concurrency);
    let servers = self_triggered(apis.servers.clone(), ctx.clone());
    let server_store = servers.store();
    let _ = ctx.servers.set(server_store.clone());
    // Live verification re-checks servers on its own clock and reconciles those that changed.
    let (verified, changed) = futures::channel::mpsc::unbounded();
    let verifier = super::verify::run_periodic(ctx.clone(), server_store.clone(), verified);
    let servers = servers.reconcile_on(changed);
    let servers = server_controller(servers, &apis, server_store, config.clone(), ctx.clone());
    let policies = policy_controller(&apis, config, ctx);
    // The verifier never ends; it stops with the controllers.
    tokio::select! {
        _ = async { futures::join!(servers, policies) } => {}
        () = verifier => {}
    }
}

/// A controller of `K` whose store holds no `managedFields` (never read, and often the bigger
/// half of an object) and whose own writes do not trigger it again (see
/// [`Context::own_write`]): a status write would otherwise re-run every reconcile once more.
fn self_triggered<K>(api: Api<K>, ctx: Arc<Context>) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
    K: 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .modify(strip_managed_fields)
        .reflect(writer)
        .applied_objects()
        .try_filter(move |obj| futures::future::ready(!ctx.own_write(obj)));
    Controller::for_stream(stream, reader)
}

fn strip_managed_fields(obj: &mut impl Resource) {
    obj.meta_mut().managed_fields = None;
}

/// Triggers from the owned children of one kind, watched by metadata only (the operator reads
/// a child itself when it reconciles); our own writes to them trigger nothing, their deletion
/// and everyone else's changes (a Deployment's status) do.
fn owned<K>(
    api: Api<PartialObjectMeta<K>>,
    ctx: Arc<Context>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
    K: 'static,
{
    let owned = watcher::Config::default().labels(&owned_selector());
    triggers(api, owned, move |o| !ctx.own_write(o), |_| {})
}

/// The policies whose change matters to their servers (see [`PolicyTrigger`]), and deleted ones.
fn policy_changes(
    api: Api<McpAuthPolicy>,
) -> impl futures::Stream<Item = Result<McpAuthPolicy, watcher::Error>> + Send + 'static {
    let trigger = Arc::new(PolicyTrigger::default());
    let forget = trigger.clone();
    let config = watcher::Config::default();
    triggers(
        api,
        config,
        move |p| trigger.changed(p),
        move |p| forget.forget(p),
    )
}

/// A watch as a trigger stream: an object that is applied triggers when `fires` says so, a
/// deleted one always (after `deleted` has seen it); `managedFields` are dropped.
fn triggers<K>(
    api: Api<K>,
    config: watcher::Config,
    fires: impl Fn(&K) -> bool + Send + 'static,
    deleted: impl Fn(&K) + Send + 'static,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config)
        .modify(strip_managed_fields)
        .try_filter_map(move |event| {
            let trigger = match event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => fires(&o).then_some(o),
                watcher::Event::Delete(o) => {
                    deleted(&o);
                    Some(o)
                }
                watcher::Event::Init | watcher::Event::InitDone => None,
            };
            futures::future::ready(Ok(trigger))
        })
}

/// The APIs of every watched kind, in one namespace or cluster-wide.
#[derive(Clone)]
struct Apis {
    servers: Api<McpServer>,
    policies: Api<McpAuthPolicy>,
    deployments: Api<Deployment>,
    secrets: Api<Secret>,
    services: Api<Service>,
    network_policies: Api<NetworkPolicy>,
    client: kube::Client,
    namespace: Option<String>,
}

impl Apis {
    /// The metadata-only API of a kind (its watches and lists carry no spec or data).
    fn meta<K>(&self) -> Api<PartialObjectMeta<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        api(&self.client, self.namespace.as_deref())
    }

    fn new(client: &kube::Client, namespace: Option<&str>) -> Self {
        Apis {
            servers: api(client, namespace),
            policies: api(client, namespace),
            deployments: api(client, namespace),
            secrets: api(client, namespace),
            services: api(client, namespace),
            network_policies: api(client, namespace),
            client: client.clone(),
            namespace: namespace.map(str::to_string),
        }
    }
}

/// The API of a namespaced kind in namespace `ns`, or in all namespaces.
fn api<K>(client: &kube::Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The children the operator made carry this label: only they are watched.
fn owned_selector() -> String {
    format!("app.kubernetes.io/managed-by={MANAGED_BY}")
}

async fn server_controller(
    controller: Controller<McpServer>,
    apis: &Apis,
    server_store: Store<McpServer>,
    config: Config,
    ctx: Arc<Context>,
) {
    // A policy change that servers read reconciles the servers that use it.
    let users_of = move |policy: McpAuthPolicy| {
        let (ns, name) = (policy.namespace(), policy.name_any());
        let users = server_store.state().into_iter();
        let users = users.filter(|s| s.namespace() == ns && s.spec.policy_ref.name == name);
        users.map(|s| ObjectRef::from_obj(&*s)).collect::<Vec<_>>()
    };
    controller
        .with_config(config)
        .trigger_backoff(WatchBackoff::default())
        .owns_stream(owned(apis.meta::<Deployment>(), ctx.clone()))
        .owns_stream(owned(apis.meta::<Secret>(), ctx.clone()))
        .owns_stream(owned(apis.meta::<Service>(), ctx.clone()))
        .owns_stream(owned(apis.meta::<NetworkPolicy>(), ctx.clone()))
        .watches_stream(policy_changes(apis.policies.clone()), users_of)
        .shutdown_on_signal()
        .run(reconcile, error_policy(McpServer::CONTROLLER), ctx)
        .for_each(|_| futures::future::ready(()))
        .await
}

async fn policy_controller(apis: &Apis, config: Config, ctx: Arc<Context>) {
    let controller = self_triggered(apis.policies.clone(), ctx.clone());
    let policy_store = controller.store();
    let server_trigger = ServerTrigger::default();
    // A server's audience scope must reach the clients Keycloak created from metadata
    // documents (see `policy::apply_cimd`): reconcile its policy when the server changes.
    let policy_of = move |server: McpServer| {
        server_trigger.policy_to_reconcile(&server, |r| policy_store.get(r))
    };
    controller
        .with_config(config)
        .trigger_backoff(WatchBackoff::default())
        .watches(apis.servers.clone(), watcher::Config::default(), policy_of)
        .shutdown_on_signal()
        .run(reconcile, error_policy(McpAuthPolicy::CONTROLLER), ctx)
        .for_each(|_| futures::future::ready(()))
        .await
}

/// Logs, counts and backs off a failed reconcile.
fn error_policy<K: Resource<DynamicType = ()>>(
    controller: &'static str,
) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |obj, err, ctx| {
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
}

async fn probe_listable(apis: Apis, on_synced: impl FnOnce(bool)) {
    let sel = owned_selector();
    let ok = listable(&apis.servers, None).await
        && listable(&apis.policies, None).await
        && listable(&apis.deployments, Some(&sel)).await
        && listable(&apis.secrets, Some(&sel)).await
        && listable(&apis.services, Some(&sel)).await
        && listable(&apis.network_policies, Some(&sel)).await;
    tracing::info!(ok, "every watched kind is listable");
    on_synced(ok);
}

/// Succeeds once `api` answers a LIST (limit 1) with the operator's identity, retrying with a
/// capped backoff. Readiness is built from these rather than from the controllers' store
/// readiness: that future keeps a single waker, and a second waiter could take the controller's
/// own wake-up away.
async fn listable<K>(api: &Api<K>, selector: Option<&str>) -> bool
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut lp = ListParams::default().limit(1);
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
/// any event. kube-runtime backs off the *merged* stream of a controller's watches on every
/// error, and its default (up to 30 s per error) left the operator deaf for minutes after a
/// kube-apiserver restart, when every watch answers one `410 Gone`.
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
/// changed: status writes alone must not bypass the policy's error backoff. Entries go when a
/// server is being deleted, so this stays bounded.
#[derive(Default)]
struct ServerTrigger {
    seen: Mutex<HashMap<ObjectRef<McpServer>, ServerState>>,
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
        let cimd = policy(&policy_ref).is_some_and(|p| requested(&p).is_some());
        let scope_id = server
            .status
            .as_ref()
            .and_then(|s| s.audience_scope_id.clone());
        let state = (server.metadata.generation, scope_id);
        if !cimd || seen.get(&key) == Some(&state) {
            return None;
        }
        seen.insert(key, state);
        Some(policy_ref)
    }
}

/// Which McpAuthPolicy events reconcile the policy's servers: only a change of what a server
/// reconcile reads from it — the spec, `Ready` and the generation it describes, the audience
/// mode — or its deletion. The rest of its status (`realmClients` on every sweep, reaping)
/// would re-run every server of the policy, each re-checking Keycloak (the scale bench's cascade).
#[derive(Default)]
struct PolicyTrigger {
    seen: Mutex<HashMap<ObjectRef<McpAuthPolicy>, PolicyView>>,
}

/// What of a policy its servers act on.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PolicyView {
    generation: Option<i64>,
    deleting: bool,
    /// `Ready`'s status, reason and message (a server's `PolicyNotReady` quotes the message).
    ready: Option<(String, String, String)>,
    observed_generation: Option<i64>,
    audience_mode: Option<ActiveAudience>,
}

impl PolicyView {
    fn of(p: &McpAuthPolicy) -> Self {
        let status = p.status.as_ref();
        let ready = status.and_then(|s| super::conditions::find(&s.conditions, READY));
        PolicyView {
            generation: p.metadata.generation,
            deleting: p.metadata.deletion_timestamp.is_some(),
            ready: ready.map(|c| (c.status.clone(), c.reason.clone(), c.message.clone())),
            observed_generation: status.and_then(|s| s.observed_generation),
            audience_mode: status.and_then(|s| s.audience_mode),
        }
    }
}

impl PolicyTrigger {
    /// Whether `policy` differs from what its servers last saw (and remembers it).
    fn changed(&self, policy: &McpAuthPolicy) -> bool {
        let view = PolicyView::of(policy);
        let mut seen = self.seen.lock().expect("poisoned");
        let key = ObjectRef::from_obj(policy);
        if seen.get(&key) == Some(&view) {
            return false;
        }
        seen.insert(key, view);
        true
    }

    fn forget(&self, policy: &McpAuthPolicy) {
        let mut seen = self.seen.lock().expect("poisoned");
        seen.remove(&ObjectRef::from_obj(policy));
    }
}

#[cfg(test)]
mod tests {
    use super::{PolicyTrigger, ServerTrigger, WatchBackoff};
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
        // (generation, audience scope id, being deleted) -> whether the policy is reconciled.
        let steps = [
            ((1, None, false), true),
            ((1, None, false), false), // a status-only change (conditions)
            ((1, Some("s"), false), true),
            ((1, Some("s"), false), false),
            ((2, Some("s"), false), true),
            ((2, Some("s"), true), false), // deletion forgets the server (bounded)
        ];
        for ((generation, scope, deleting), fires) in steps {
            let got = t.policy_to_reconcile(&server(generation, scope, deleting), cimd);
            assert_eq!(got, if fires { want.clone() } else { None });
        }
        assert!(t.seen.lock().unwrap().is_empty());
        assert_eq!(
            t.policy_to_reconcile(&server(1, None, false), cimd),
            want,
            "recreated"
        );
        // Policies without metadata documents (or not known yet) do nothing with servers.
        let t = ServerTrigger::default();
        for p in [Some(policy(None)), Some(policy(Some(false))), None] {
            let got = t.policy_to_reconcile(&server(1, None, false), |_| p.clone());
            assert_eq!(got, None);
        }
    }

    /// A policy at `generation` whose status says `ready` for `observed`, `realm_clients`.
    fn policy_status(generation: i64, ready: &str, observed: i64, clients: i64) -> McpAuthPolicy {
        let mut p = (*policy(None)).clone();
        p.metadata.generation = Some(generation);
        p.status = serde_json::from_value(serde_json::json!({
            "conditions": [{"type": "Ready", "status": ready, "reason": "Ready", "message": "m",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "observedGeneration": observed,
            "realmClients": clients,
        }))
        .unwrap();
        p
    }

    #[test]
    fn policy_events_reconcile_servers_only_when_what_they_read_changes() {
        let t = PolicyTrigger::default();
        // (generation, Ready, observed generation, realmClients) -> whether servers reconcile.
        let steps = [
            ((1, "False", 0, 0), true),
            ((1, "True", 1, 0), true),
            ((1, "True", 1, 7), false), // the registration sweep counted clients
            ((1, "True", 1, 9), false),
            ((2, "True", 1, 9), true), // a spec change, not yet reconciled
            ((2, "True", 2, 9), true),
        ];
        for ((generation, ready, observed, clients), fires) in steps {
            let p = policy_status(generation, ready, observed, clients);
            assert_eq!(
                t.changed(&p),
                fires,
                "{generation} {ready} {observed} {clients}"
            );
        }
        let mut p = policy_status(2, "True", 2, 9);
        p.status.as_mut().unwrap().audience_mode =
            Some(crate::api::ActiveAudience::ResourceIndicator);
        assert!(t.changed(&p), "the audience mode changed");
        p.metadata.deletion_timestamp =
            serde_json::from_value(serde_json::json!("2026-01-02T00:00:00Z")).unwrap();
        assert!(t.changed(&p), "being deleted");
        t.forget(&p);
        assert!(
            t.seen.lock().unwrap().is_empty(),
            "deletion forgets the policy"
        );
    }

    #[test]
    fn watch_backoff_is_capped_at_five_seconds_and_resets() {
        let mut b = WatchBackoff::default();
        let first: Vec<u64> = b.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(first, vec![500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }
}
