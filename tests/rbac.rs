//! Least privilege, proven: the chart's RBAC is enough, and every single verb in it is needed.
//!
//! The operator runs in-process (controllers plus Lease leader election, as `run
//! --leader-election` does) with a client that acts as a ServiceAccount of a "release" namespace,
//! bound to the RBAC objects `helm template` renders from charts/mcp-keycloak-operator, and
//! watches another namespace. One scenario exercises everything it does with the Kubernetes API:
//!
//! 1. the seed McpAuthPolicy and McpServer become Ready;
//! 2. the server's Secret, Service and Deployment, each deleted behind the operator's back, come
//!    back (its watches; the resync is 10 min, so nothing else would bring them back);
//! 3. its Events are recorded; the policy loses its admin credentials and gets them back, and its
//!    second `Ready` is counted in the first one's series (a patch);
//! 4. deleting the server runs the Keycloak cleanup and removes the finalizer;
//! 5. (cluster scope) the namespace is deleted while Keycloak cleanup cannot work (no admin
//!    credentials) and the policy still lets go: the operator saw the namespace terminating.
//!
//! * With the chart's RBAC (cluster and namespace scope) the scenario passes and the API server
//!   refuses nothing.
//! * With any one (group, resource, verb) of the ClusterRole or the Lease Role removed, the
//!   scenario fails, and the API server refused a request needing exactly that permission (seen in
//!   the kube client's `HTTP` tracing spans: method, url, status 403).
//!
//! A permission whose removal changes nothing is reported as not needed, and fails the test.
//! `RBAC_TEST_ONLY=<text>[,<text>..]` runs only the cases whose label contains one; `RBAC_TEST_VERBOSE=1`
//! prints each step; `RBAC_TEST_PARALLELISM` (default 6) bounds concurrent scenarios.
//!
//! Its own test binary: it installs the process-wide tracing subscriber that records the 403s
//! (in a shared binary it would see every other test's requests, and the first global
//! subscriber wins), and its concurrent scenarios load the machine.

#[allow(dead_code, unused_imports, unused_macros)] // uses only part of the shared harness
mod common;
use common::{harness, support};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use harness::{admin_secret, create, server, Realm};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use mcp_keycloak_operator::controller::{Context, OperatorConfig};
use mcp_keycloak_operator::metrics::Metrics;
use mcp_keycloak_operator::runtime::{self, Health, LeaderElection};
use serde_json::{json, Value};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mcp-keycloak-operator");
const SA: &str = "operator";
/// Bound of each step while nothing was refused (a healthy step takes well under 10 s).
const STEP: Duration = Duration::from_secs(90);
/// Once the API server has refused something, how long a step may still take to succeed.
const GRACE: Duration = Duration::from_secs(30);
/// No reconcile for this long: the operator is idle (its trigger backoff is about 1 s).
const QUIET: Duration = Duration::from_secs(3);

/// Permissions the test bed cannot exercise, with why the chart keeps them.
const CONDITIONAL: &[(&str, &str, &str, &str)] = &[
    (
        "mcpauth.dev",
        "mcpservers/finalizers",
        "update",
        "owned objects carry blockOwnerDeletion; only the OwnerReferencesPermissionEnforcement \
         admission plugin (on in OpenShift, off on the test bed) checks this permission",
    ),
    (
        "",
        "namespaces",
        "get",
        "read only when Keycloak cleanup fails in a terminating namespace (Keycloak unreachable); \
         here cleanup succeeds through the admin client the operator last used",
    ),
];

// ---------------------------------------------------------------------------------------------
// Requests the API server refused, from the kube client's `HTTP` spans.

mod refusals {
    use super::*;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::Subscriber;
    use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::Layer;

    #[derive(Clone, Debug)]
    pub struct Refusal {
        pub at: Instant,
        pub method: String,
        pub url: String,
    }

    impl Refusal {
        /// The (group, resource[/subresource], verb)s the refused request may have lacked, from
        /// its method and path as the API server's RequestInfo derives them. A PATCH may be a
        /// server-side apply that creates the object, which is authorized as `create` too.
        pub fn needs(&self) -> Vec<(String, String, String)> {
            self.needs_one()
                .map(|(g, r, v)| {
                    let mut out = vec![(g.clone(), r.clone(), v.clone())];
                    if v == "patch" {
                        out.push((g, r, "create".to_string()));
                    }
                    out
                })
                .unwrap_or_default()
        }

        fn needs_one(&self) -> Option<(String, String, String)> {
            let (path, query) = self.url.split_once('?').unwrap_or((&self.url, ""));
            let path = path.find("/api").map(|i| &path[i..])?;
            let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
            let (group, rest) = match *segs.first()? {
                "api" => ("", segs.get(2..)?),
                "apis" => (*segs.get(1)?, segs.get(3..)?),
                _ => return None,
            };
            let rest = match rest {
                ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
                _ => rest,
            };
            let (resource, name, sub) = (rest.first()?, rest.get(1), rest.get(2));
            let resource = match sub {
                Some(s) => format!("{resource}/{s}"),
                None => resource.to_string(),
            };
            let watch = query
                .split('&')
                .any(|kv| kv == "watch=true" || kv == "watch=1");
            let verb = match (self.method.as_str(), name) {
                ("GET", Some(_)) => "get",
                ("GET", None) if watch => "watch",
                ("GET", None) => "list",
                ("POST", _) => "create",
                ("PATCH", _) => "patch",
                ("PUT", _) => "update",
                ("DELETE", Some(_)) => "delete",
                ("DELETE", None) => "deletecollection",
                _ => return None,
            };
            Some((group.to_string(), resource, verb.to_string()))
        }

        pub fn short(&self) -> String {
            let path = self.url.split('?').next().unwrap_or_default();
            let path = path.find("/api").map(|i| &path[i..]).unwrap_or(path);
            let watch = if self.url.contains("watch=true") {
                "?watch"
            } else {
                ""
            };
            format!("{} {path}{watch}", self.method)
        }
    }

    static REFUSED: Mutex<Vec<Refusal>> = Mutex::new(Vec::new());

    struct Request {
        method: String,
        url: String,
    }

    #[derive(Default)]
    struct Fields {
        method: Option<String>,
        url: Option<String>,
        status: Option<u64>,
    }

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            match field.name() {
                "http.method" => self.method = Some(format!("{value:?}")),
                "http.url" => self.url = Some(format!("{value:?}")),
                _ => {}
            }
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            if field.name() == "http.status_code" {
                self.status = Some(value);
            }
        }
        fn record_i64(&mut self, field: &Field, value: i64) {
            self.record_u64(field, value as u64);
        }
    }

    struct Capture;

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
            let mut f = Fields::default();
            attrs.record(&mut f);
            if let (Some(span), Some(method), Some(url)) = (ctx.span(id), f.method, f.url) {
                span.extensions_mut().insert(Request { method, url });
            }
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
            let mut f = Fields::default();
            values.record(&mut f);
            if f.status != Some(403) {
                return;
            }
            if let Some(span) = ctx.span(id) {
                if let Some(r) = span.extensions().get::<Request>() {
                    REFUSED.lock().unwrap().push(Refusal {
                        at: Instant::now(),
                        method: r.method.clone(),
                        url: r.url.clone(),
                    });
                }
            }
        }
    }

    /// Installs the capture once per test binary (plus a log, when RUST_LOG is set).
    pub fn install() {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            let capture = Capture.with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.name() == "HTTP" && m.target().starts_with("kube_client")
            }));
            let log = std::env::var("RUST_LOG").ok().map(|f| {
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(tracing_subscriber::EnvFilter::new(f))
            });
            let subscriber = tracing_subscriber::registry().with(capture).with(log);
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in this test binary");
        });
    }

    /// Whether `url` addresses namespace `ns` (objects in it, or the Namespace itself).
    fn in_namespace(url: &str, ns: &str) -> bool {
        let path = url.split('?').next().unwrap_or_default();
        let segs: Vec<&str> = path.split('/').collect();
        segs.windows(2).any(|w| w[0] == "namespaces" && w[1] == ns)
    }

    /// Refusals of requests about any of `namespaces`, since `since`.
    pub fn about(namespaces: &[&str], since: Instant) -> Vec<Refusal> {
        REFUSED
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.at >= since && namespaces.iter().any(|ns| in_namespace(&r.url, ns)))
            .cloned()
            .collect()
    }
}

use refusals::Refusal;

// ---------------------------------------------------------------------------------------------
// The chart's rules

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Holder {
    /// The cluster-scope ClusterRole (templates/rbac.yaml).
    ClusterRole,
    /// The leader-election Role in the release namespace (templates/leader-election-rbac.yaml).
    LeaseRole,
}

/// One (group, resource, verb), with its rule's resourceNames: the unit the test removes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Permission {
    holder: Holder,
    group: String,
    resource: String,
    verb: String,
    names: Vec<String>,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{g} {} {}", self.resource, self.verb)?;
        if !self.names.is_empty() {
            write!(f, " (by name)")?;
        }
        Ok(())
    }
}

impl Permission {
    fn rule(&self) -> PolicyRule {
        PolicyRule {
            api_groups: Some(vec![self.group.clone()]),
            resources: Some(vec![self.resource.clone()]),
            verbs: vec![self.verb.clone()],
            resource_names: (!self.names.is_empty()).then(|| self.names.clone()),
            ..Default::default()
        }
    }

    fn same(&self, other: &Permission) -> bool {
        (self.holder, &self.group, &self.resource, &self.verb)
            == (other.holder, &other.group, &other.resource, &other.verb)
    }

    fn matches(&self, needs: &(String, String, String)) -> bool {
        (&self.group, &self.resource, &self.verb) == (&needs.0, &needs.1, &needs.2)
    }

    fn conditional(&self) -> Option<&'static str> {
        CONDITIONAL
            .iter()
            .find(|(g, r, v, _)| *g == self.group && *r == self.resource && *v == self.verb)
            .map(|c| c.3)
    }
}

fn explode(holder: Holder, rules: &[PolicyRule]) -> Vec<Permission> {
    let mut out = vec![];
    for r in rules {
        assert!(
            r.non_resource_urls.is_none(),
            "unexpected nonResourceURLs rule {r:?}"
        );
        for g in r.api_groups.clone().unwrap_or_default() {
            for res in r.resources.clone().unwrap_or_default() {
                for v in &r.verbs {
                    assert!(
                        g != "*" && res != "*" && v != "*",
                        "wildcard in the chart's RBAC: {r:?}"
                    );
                    out.push(Permission {
                        holder,
                        group: g.clone(),
                        resource: res.clone(),
                        verb: v.clone(),
                        names: r.resource_names.clone().unwrap_or_default(),
                    });
                }
            }
        }
    }
    out
}

/// `$HELM`, else the test bed's bin dir (its PATH export), else the cache dir of
/// hack/versions.env, else PATH.
async fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("HELM").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let tb = support::testbed().await;
    let p = tb.dir.join("bin/helm");
    if p.is_file() {
        return p;
    }
    let versions =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/versions.env"))
            .unwrap_or_default();
    let v = versions.lines().find_map(|l| {
        l.trim()
            .strip_prefix("HELM_VERSION=")
            .map(|v| v.trim().to_string())
    });
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    match v.map(|v| home.join(format!(".cache/mcp-keycloak-operator/bin/helm-{v}/helm"))) {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from("helm"),
    }
}

/// The RBAC objects the chart renders for a release in `rel` (ServiceAccount `SA`) watching
/// `ns`; names carry `ns`, so that concurrent runs share no cluster-scoped object.
async fn render(rel: &str, ns: &str, scope: &str) -> Vec<Value> {
    let tmp = std::env::temp_dir().join("mcp-keycloak-operator-helm");
    let out = tokio::process::Command::new(helm().await)
        .args(["template", "rbac", CHART, "--namespace", rel])
        .args(["--set", &format!("fullnameOverride=rbac-{ns}")])
        .args(["--set", &format!("serviceAccount.name={SA}")])
        .args(["--set", &format!("rbac.scope={scope}")])
        .args(["--set", &format!("rbac.namespaces={{{ns}}}")])
        .args(["--show-only", "templates/rbac.yaml"])
        .args(["--show-only", "templates/leader-election-rbac.yaml"])
        .env("KUBECONFIG", "/dev/null")
        .env("HELM_CACHE_HOME", tmp.join("cache"))
        .env("HELM_CONFIG_HOME", tmp.join("config"))
        .env("HELM_DATA_HOME", tmp.join("data"))
        .output()
        .await
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
        .filter_map(|d| {
            <Value as serde::Deserialize>::deserialize(d)
                .ok()
                .filter(|v| !v.is_null())
        })
        .collect()
}

fn of_kind(docs: &[Value], kind: &str) -> Vec<Value> {
    docs.iter().filter(|d| d["kind"] == kind).cloned().collect()
}

fn rules_of(doc: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(doc["rules"].clone()).unwrap()
}

/// The permissions of the cluster-scope ClusterRole and of the Lease Role.
async fn chart_permissions() -> Vec<Permission> {
    let docs = render("release", "watched", "cluster").await;
    let cluster = of_kind(&docs, "ClusterRole");
    assert_eq!(cluster.len(), 1, "cluster scope renders one ClusterRole");
    let roles = of_kind(&docs, "Role");
    assert_eq!(roles.len(), 1, "leader election renders one Role");
    let mut p = explode(Holder::ClusterRole, &rules_of(&cluster[0]));
    p.extend(explode(Holder::LeaseRole, &rules_of(&roles[0])));
    let unique: BTreeSet<_> = p
        .iter()
        .map(|q| {
            (
                q.holder,
                q.group.clone(),
                q.resource.clone(),
                q.verb.clone(),
            )
        })
        .collect();
    assert_eq!(unique.len(), p.len(), "a permission is granted twice");
    p
}

// ---------------------------------------------------------------------------------------------
// One run of the scenario

#[derive(Clone, Debug)]
enum Grant {
    /// The chart's RBAC as rendered (cluster or namespace scope).
    Chart(&'static str),
    /// The cluster-scope RBAC without one permission.
    Without(Permission),
}

fn label(g: &Grant) -> String {
    match g {
        Grant::Chart(scope) => format!("chart, {scope} scope"),
        Grant::Without(p) => format!("without {p}"),
    }
}

#[derive(Debug)]
struct Outcome {
    grant: Grant,
    /// The step that failed, with why; None when the whole scenario passed.
    failed: Option<String>,
    refused: Vec<Refusal>,
    forbidden_reconcile_errors: u64,
    took: Duration,
}

impl Outcome {
    fn refused_summary(&self) -> String {
        let set: BTreeSet<String> = self.refused.iter().map(Refusal::short).collect();
        let n = set.len();
        let mut s: Vec<String> = set.into_iter().take(3).collect();
        if n > 3 {
            s.push(format!("and {} more", n - 3));
        }
        s.join("; ")
    }
}

struct Run {
    admin: Client,
    /// Watched namespace.
    ns: String,
    /// Release namespace: the ServiceAccount and the Lease.
    rel: String,
    started: Instant,
    /// The operator's metrics (set once it runs).
    metrics: OnceLock<Arc<Metrics>>,
    /// Events refused after this instant are expected (the NamespaceLifecycle admission refuses
    /// new objects in a terminating namespace).
    terminating_since: Mutex<Option<Instant>>,
}

impl Run {
    fn refused(&self) -> Vec<Refusal> {
        let term = *self.terminating_since.lock().unwrap();
        refusals::about(&[&self.ns, &self.rel], self.started)
            .into_iter()
            .filter(|r| {
                let expected = term.is_some_and(|t| r.at >= t)
                    && r.method == "POST"
                    && r.url.contains("/events");
                !expected
            })
            .collect()
    }

    fn reconciles(&self) -> u64 {
        let Some(m) = self.metrics.get() else {
            return 0;
        };
        m.encode()
            .lines()
            .filter(|l| l.starts_with("mcp_operator_reconciles_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Waits until the operator has not reconciled anything for QUIET: no reconcile already
    /// triggered (say by its own status write, held back while a refused watch backs the
    /// trigger stream off) can then repair what the next step breaks.
    async fn quiet(&self) -> Result<(), String> {
        let start = Instant::now();
        let (mut last, mut since) = (self.reconciles(), Instant::now());
        while since.elapsed() < QUIET {
            if start.elapsed() > STEP {
                return Err("operator quiet (it keeps reconciling)".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.reconciles();
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        Ok(())
    }

    /// Polls `check` until it answers Some: for at most STEP, and at most GRACE once the API
    /// server has refused something (a crippled operator cannot hide behind being slow).
    async fn step<T, F, Fut>(&self, what: &str, mut check: F) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(v) = check().await {
                if std::env::var_os("RBAC_TEST_VERBOSE").is_some() {
                    println!(
                        "[{} +{:5.1}s] {what} after {:.1}s",
                        self.ns,
                        self.started.elapsed().as_secs_f64(),
                        start.elapsed().as_secs_f64()
                    );
                }
                return Ok(v);
            }
            let deadline = match self.refused().first() {
                Some(r) => (start + STEP).min(r.at.max(start) + GRACE),
                None => start + STEP,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "{what} (gave up after {:.0} s)",
                    start.elapsed().as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn condition_true<K>(client: &Client, ns: &str, name: &str, type_: &str) -> bool
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let Ok(Some(obj)) = Api::<K>::namespaced(client.clone(), ns).get_opt(name).await else {
        return false;
    };
    let v = serde_json::to_value(&obj).unwrap_or_default();
    v["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == type_ && c["status"] == "True")
    })
}

async fn uid_of<K>(client: &Client, ns: &str, name: &str) -> Option<String>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??
        .meta()
        .uid
        .clone()
}

async fn gone<K>(client: &Client, ns: &str, name: &str) -> bool
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    matches!(
        Api::<K>::namespaced(client.clone(), ns).get_opt(name).await,
        Ok(None)
    )
}

/// Creates the rendered RBAC objects, without `grant`'s removed permission. Returns the names of
/// the cluster-scoped ones (ClusterRoles, ClusterRoleBindings).
async fn apply_rbac(
    admin: &Client,
    rel: &str,
    ns: &str,
    grant: &Grant,
) -> (Vec<String>, Vec<String>) {
    let scope = match grant {
        Grant::Chart(s) => s,
        Grant::Without(_) => "cluster",
    };
    let pp = PostParams::default();
    let (mut roles, mut bindings) = (vec![], vec![]);
    for mut d in render(rel, ns, scope).await {
        if let Grant::Without(p) = grant {
            let holder = match d["kind"].as_str() {
                Some("ClusterRole") => Some(Holder::ClusterRole),
                Some("Role") => Some(Holder::LeaseRole),
                _ => None,
            };
            if let Some(h) = holder {
                let all = explode(h, &rules_of(&d));
                let kept: Vec<PolicyRule> = all
                    .iter()
                    .filter(|q| !q.same(p))
                    .map(Permission::rule)
                    .collect();
                if h == p.holder {
                    assert_eq!(
                        kept.len() + 1,
                        all.len(),
                        "{p} is not in the rendered {h:?}"
                    );
                }
                d["rules"] = serde_json::to_value(kept).unwrap();
            }
        }
        match d["kind"].as_str().unwrap() {
            "ClusterRole" => {
                let o: ClusterRole = serde_json::from_value(d).unwrap();
                roles.push(o.name_any());
                Api::<ClusterRole>::all(admin.clone())
                    .create(&pp, &o)
                    .await
                    .expect("create ClusterRole");
            }
            "ClusterRoleBinding" => {
                let o: ClusterRoleBinding = serde_json::from_value(d).unwrap();
                bindings.push(o.name_any());
                Api::<ClusterRoleBinding>::all(admin.clone())
                    .create(&pp, &o)
                    .await
                    .expect("create ClusterRoleBinding");
            }
            "Role" => {
                let o: Role = serde_json::from_value(d).unwrap();
                let n = o.namespace().unwrap();
                Api::<Role>::namespaced(admin.clone(), &n)
                    .create(&pp, &o)
                    .await
                    .expect("create Role");
            }
            "RoleBinding" => {
                let o: RoleBinding = serde_json::from_value(d).unwrap();
                let n = o.namespace().unwrap();
                Api::<RoleBinding>::namespaced(admin.clone(), &n)
                    .create(&pp, &o)
                    .await
                    .expect("create RoleBinding");
            }
            k => panic!("unexpected {k} in the chart's RBAC templates"),
        }
    }
    (roles, bindings)
}

/// Whether the ServiceAccount may do `p` (in the watched namespace, or the release namespace for
/// the Lease), asked as the admin through a SubjectAccessReview.
async fn allowed(run: &Run, p: &Permission) -> bool {
    let (resource, sub) = match p.resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (p.resource.clone(), None),
    };
    let ns = if p.holder == Holder::LeaseRole {
        &run.rel
    } else {
        &run.ns
    };
    let name = p
        .names
        .first()
        .cloned()
        .or_else(|| (resource == "namespaces").then(|| run.ns.clone()));
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{}:{SA}", run.rel)),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", run.rel),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some(p.group.clone()),
                resource: Some(resource.clone()),
                subresource: sub,
                verb: Some(p.verb.clone()),
                namespace: (resource != "namespaces").then(|| ns.clone()),
                name,
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = Api::<SubjectAccessReview>::all(run.admin.clone())
        .create(&PostParams::default(), &sar)
        .await
        .expect("SubjectAccessReview");
    r.status.is_some_and(|s| s.allowed)
}

async fn scenario(grant: Grant, all: Arc<Vec<Permission>>) -> Outcome {
    let admin = support::kube_client().await;
    // A realm per scenario: a realm has one owning policy.
    let realm = Realm::new(&support::unique_name("rbac")).await;
    let (status, body) = realm
        .kc
        .post(
            "/admin/realms",
            &json!({"realm": realm.name, "enabled": true}),
        )
        .await;
    assert!(
        status.is_success(),
        "creating realm {}: {status} {body}",
        realm.name
    );
    let ns = support::test_namespace(&admin, "rbac").await;
    let rel = support::test_namespace(&admin, "rbac-op").await;
    let run = Run {
        admin: admin.clone(),
        ns: ns.clone(),
        rel: rel.clone(),
        started: Instant::now(),
        metrics: OnceLock::new(),
        terminating_since: Mutex::new(None),
    };
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": SA}})).unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), &rel)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let (cluster_roles, cluster_bindings) = apply_rbac(&admin, &rel, &ns, &grant).await;

    // The API server's RBAC caches have caught up: exactly the intended permissions hold.
    let lease_name = format!("rbac-{ns}");
    let expected: Vec<(Permission, bool)> = all
        .iter()
        .map(|p| {
            let mut p = p.clone();
            if p.holder == Holder::LeaseRole && !p.names.is_empty() {
                p.names = vec![lease_name.clone()];
            }
            let removed = matches!(&grant, Grant::Without(q) if q.same(&p));
            // Namespace scope has no cluster-wide rule: its namespace check is refused.
            let namespace_scoped_out =
                matches!(grant, Grant::Chart("namespace")) && p.resource == "namespaces";
            (p, !removed && !namespace_scoped_out)
        })
        .collect();
    let mut in_effect = false;
    for _ in 0..120 {
        let mut all_as_expected = true;
        for (p, want) in &expected {
            if allowed(&run, p).await != *want {
                all_as_expected = false;
                break;
            }
        }
        if all_as_expected {
            in_effect = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        in_effect,
        "RBAC of {} not in effect after 30 s",
        label(&grant)
    );

    // The operator as `run --leader-election --namespace <ns>`, with a long resync: everything
    // after the first convergence comes from its watches.
    let sa_client = support::kube_client_as_service_account(&rel, SA).await;
    let metrics = Arc::new(Metrics::default());
    let _ = run.metrics.set(metrics.clone());
    let ctx = Context::new(
        sa_client,
        metrics,
        OperatorConfig {
            resync: Duration::from_secs(600),
            operator_image: "mcp-keycloak-operator:test".into(),
            ..Default::default()
        },
    );
    let leader = LeaderElection {
        lease_name,
        namespace: rel.clone(),
        identity: format!("rbac-test-{ns}"),
        lease_seconds: 15,
    };
    let op = tokio::spawn(runtime::run(
        ctx.clone(),
        Some(ns.clone()),
        Arc::new(Health::default()),
        Some(leader),
    ));

    let ticker = std::env::var_os("RBAC_TEST_VERBOSE").map(|_| {
        let (ctx, ns) = (ctx.clone(), ns.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            loop {
                let m = ctx.metrics.encode();
                let n: Vec<&str> = m
                    .lines()
                    .filter(|l| l.starts_with("mcp_operator_reconciles_total"))
                    .collect();
                println!(
                    "[{ns} {:5.1}s] {}",
                    t0.elapsed().as_secs_f64(),
                    n.join(" | ")
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    });
    let cluster_scope = !matches!(grant, Grant::Chart("namespace"));
    let failed = exercise(&run, &realm.name, cluster_scope).await.err();

    let took = run.started.elapsed();
    let refused = run.refused();
    op.abort();
    if let Some(t) = ticker {
        t.abort();
    }
    let forbidden_reconcile_errors = forbidden_errors(&ctx);
    cleanup(&admin, &[&ns, &rel], &cluster_roles, &cluster_bindings).await;
    realm.delete().await;
    Outcome {
        grant,
        failed,
        refused,
        forbidden_reconcile_errors,
        took,
    }
}

/// Sum of `reconcile_errors{reason="KubernetesForbidden"}` over both controllers.
fn forbidden_errors(ctx: &Context) -> u64 {
    ctx.metrics
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with("mcp_operator_reconcile_errors")
                && l.contains("reason=\"KubernetesForbidden\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A policy for the scenario's realm (created by the test), with a scope of its own and without
/// registration policies.
fn policy(realm: &str, kc: &str, scope: &str) -> McpAuthPolicy {
    serde_json::from_value(json!({
        "apiVersion": "mcpauth.dev/v1alpha1",
        "kind": "McpAuthPolicy",
        "metadata": {"name": "acme"},
        "spec": {
            "keycloak": {
                "url": kc,
                "realm": realm,
                "createRealm": false,
                "adminCredentialsSecretRef": {"name": "keycloak-admin"}
            },
            "scopes": [{"name": scope, "type": "Optional"}]
        }
    }))
    .unwrap()
}

async fn exercise(run: &Run, realm: &str, cluster_scope: bool) -> Result<(), String> {
    let (c, ns) = (&run.admin, run.ns.as_str());
    let dp = DeleteParams::default();
    let err = |e: kube::Error| e.to_string();
    admin_secret(c, ns, "keycloak-admin").await;

    // 1. The seed policy and server become Ready.
    let tb = support::testbed().await;
    create(
        c,
        ns,
        &policy(realm, &tb.keycloak_url, &format!("mcp:tools:{ns}")),
    )
    .await;
    create(c, ns, &server("weather", "acme", "http://localhost:3000")).await;
    run.step("McpAuthPolicy Ready", || async {
        condition_true::<McpAuthPolicy>(c, ns, "acme", "Ready")
            .await
            .then_some(())
    })
    .await?;
    run.step("McpServer Ready", || async {
        condition_true::<McpServer>(c, ns, "weather", "Ready")
            .await
            .then_some(())
    })
    .await?;
    // Live verification lists the server's pods once one is ready (kwok's pod IP answers
    // nothing: still a verdict); the same reconcile writes readyReplicas and Verified.
    run.step("McpServer's pods listed for live verification", || async {
        let s = Api::<McpServer>::namespaced(c.clone(), ns)
            .get("weather")
            .await
            .ok()?;
        let status = s.status?;
        if status.ready_replicas.unwrap_or(0) < 1 {
            return None;
        }
        let conditions = status.conditions.clone();
        let verified = conditions.into_iter().find(|c| c.type_ == "Verified")?;
        (verified.reason != "PodListFailed").then_some(())
    })
    .await?;

    // 2. Owned objects deleted behind the operator's back come back, one kind at a time (any one
    //    coming back would repair the others too).
    run.quiet().await?;
    let old = uid_of::<Secret>(c, ns, "weather-oauth").await;
    Api::<Secret>::namespaced(c.clone(), ns)
        .delete("weather-oauth", &dp)
        .await
        .map_err(err)?;
    run.step("deleted Secret recreated", || async {
        let now = uid_of::<Secret>(c, ns, "weather-oauth").await;
        (now.is_some() && now != old).then_some(())
    })
    .await?;
    run.quiet().await?;
    let old = uid_of::<Service>(c, ns, "weather").await;
    Api::<Service>::namespaced(c.clone(), ns)
        .delete("weather", &dp)
        .await
        .map_err(err)?;
    run.step("deleted Service recreated", || async {
        let now = uid_of::<Service>(c, ns, "weather").await;
        (now.is_some() && now != old).then_some(())
    })
    .await?;
    run.quiet().await?;
    let old = uid_of::<Deployment>(c, ns, "weather").await;
    Api::<Deployment>::namespaced(c.clone(), ns)
        .delete("weather", &dp)
        .await
        .map_err(err)?;
    run.step("deleted Deployment recreated", || async {
        let now = uid_of::<Deployment>(c, ns, "weather").await;
        (now.is_some() && now != old).then_some(())
    })
    .await?;
    run.quiet().await?;
    let old = uid_of::<NetworkPolicy>(c, ns, "weather").await;
    Api::<NetworkPolicy>::namespaced(c.clone(), ns)
        .delete("weather", &dp)
        .await
        .map_err(err)?;
    run.step("deleted NetworkPolicy recreated", || async {
        let now = uid_of::<NetworkPolicy>(c, ns, "weather").await;
        (now.is_some() && now != old).then_some(())
    })
    .await?;
    // An McpServer opting out of its NetworkPolicy: the operator deletes it.
    run.quiet().await?;
    Api::<McpServer>::namespaced(c.clone(), ns)
        .patch(
            "weather",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"networkPolicy": {"enabled": false}}})),
        )
        .await
        .map_err(err)?;
    run.step("opted-out NetworkPolicy deleted", || async {
        gone::<NetworkPolicy>(c, ns, "weather").await.then_some(())
    })
    .await?;
    // Unavailable while the new Deployment has no replica, then Ready again (its status, watched).
    run.step("McpServer Ready again", || async {
        let d = Api::<Deployment>::namespaced(c.clone(), ns)
            .get_opt("weather")
            .await
            .ok()??;
        let available = d.status?.available_replicas.unwrap_or(0) > 0;
        (available && condition_true::<McpServer>(c, ns, "weather", "Ready").await).then_some(())
    })
    .await?;

    // 3. Events, one per transition. The policy loses its admin credentials and gets them back
    //    (each time poked by an annotation, as nothing else would reconcile it before the
    //    resync): its second Ready is the same event again, counted in a series (a patch).
    let policies: Api<McpAuthPolicy> = Api::namespaced(c.clone(), ns);
    let poke = |n: u32| {
        Patch::Merge(json!({"metadata": {"annotations": {"rbac-test/poke": n.to_string()}}}))
    };
    run.quiet().await?;
    Api::<Secret>::namespaced(c.clone(), ns)
        .delete("keycloak-admin", &dp)
        .await
        .map_err(err)?;
    policies
        .patch("acme", &PatchParams::default(), &poke(1))
        .await
        .map_err(err)?;
    run.step(
        "McpAuthPolicy not Ready without admin credentials",
        || async {
            let p = policies.get_opt("acme").await.ok()??;
            let conds = p.status?.observed.conditions;
            conds
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False")
                .then_some(())
        },
    )
    .await?;
    admin_secret(c, ns, "keycloak-admin").await;
    policies
        .patch("acme", &PatchParams::default(), &poke(2))
        .await
        .map_err(err)?;
    run.step("McpAuthPolicy Ready again", || async {
        condition_true::<McpAuthPolicy>(c, ns, "acme", "Ready")
            .await
            .then_some(())
    })
    .await?;
    run.step("Events recorded, a repeated one as a series", || async {
        let events = Api::<K8sEvent>::namespaced(c.clone(), ns)
            .list(&ListParams::default())
            .await
            .ok()?;
        let ours = |kind: &str, reason: &str| {
            events.items.iter().find(|e| {
                e.reporting_controller.as_deref() == Some("mcp-keycloak-operator")
                    && e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some(kind)
            })
        };
        ours("McpServer", "Ready")?;
        ours("McpAuthPolicy", "AdminSecretNotFound")?;
        let ready = ours("McpAuthPolicy", "Ready")?;
        (ready.series.as_ref()?.count >= 2).then_some(())
    })
    .await?;

    // 4. Deleting the server: Keycloak cleanup, then the finalizer goes.
    Api::<McpServer>::namespaced(c.clone(), ns)
        .delete("weather", &dp)
        .await
        .map_err(err)?;
    run.step("McpServer finalized", || async {
        gone::<McpServer>(c, ns, "weather").await.then_some(())
    })
    .await?;

    if !cluster_scope {
        // Namespace scope: deleting the namespace deletes the operator's Role first, so the
        // policy goes before its namespace.
        Api::<McpAuthPolicy>::namespaced(c.clone(), ns)
            .delete("acme", &dp)
            .await
            .map_err(err)?;
        run.step("McpAuthPolicy finalized", || async {
            gone::<McpAuthPolicy>(c, ns, "acme").await.then_some(())
        })
        .await?;
        return Ok(());
    }
    // 5. The namespace goes with the admin Secret deleted first: the policy's cleanup falls back
    //    to the admin client it last used, releases its realm and lets the policy go.
    Api::<Secret>::namespaced(c.clone(), ns)
        .delete("keycloak-admin", &dp)
        .await
        .map_err(err)?;
    *run.terminating_since.lock().unwrap() = Some(Instant::now());
    support::delete_namespace(c, ns).await;
    run.step(
        "McpAuthPolicy let go in a terminating namespace",
        || async { gone::<McpAuthPolicy>(c, ns, "acme").await.then_some(()) },
    )
    .await?;
    Ok(())
}

/// Leaves nothing behind: finalizers a crippled operator could not remove, the namespaces, the
/// cluster-scoped RBAC objects.
async fn cleanup(
    admin: &Client,
    namespaces: &[&str],
    cluster_roles: &[String],
    cluster_bindings: &[String],
) {
    let unfinalize = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    let pp = PatchParams::default();
    for ns in namespaces {
        let servers: Api<McpServer> = Api::namespaced(admin.clone(), ns);
        for s in servers
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let _ = servers.patch(&s.name_any(), &pp, &unfinalize).await;
        }
        let policies: Api<McpAuthPolicy> = Api::namespaced(admin.clone(), ns);
        for p in policies
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let _ = policies.patch(&p.name_any(), &pp, &unfinalize).await;
        }
        support::delete_namespace(admin, ns).await;
    }
    for n in cluster_bindings {
        let _ = Api::<ClusterRoleBinding>::all(admin.clone())
            .delete(n, &DeleteParams::default())
            .await;
    }
    for n in cluster_roles {
        let _ = Api::<ClusterRole>::all(admin.clone())
            .delete(n, &DeleteParams::default())
            .await;
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chart_rbac_is_sufficient_and_every_verb_is_needed() {
    refusals::install();
    let admin = support::kube_client().await;
    harness::install_crds(&admin).await;
    let all = Arc::new(chart_permissions().await);
    let parallel: usize = std::env::var("RBAC_TEST_PARALLELISM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let limit = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let started = Instant::now();

    let mut grants = vec![Grant::Chart("cluster"), Grant::Chart("namespace")];
    grants.extend(all.iter().cloned().map(Grant::Without));
    if let Ok(only) = std::env::var("RBAC_TEST_ONLY") {
        grants.retain(|g| only.split(',').any(|o| label(g).contains(o)));
    }
    let tasks: Vec<_> = grants
        .into_iter()
        .map(|g| {
            let (limit, all) = (limit.clone(), all.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.unwrap();
                scenario(g, all).await
            })
        })
        .collect();
    let mut outcomes = vec![];
    for t in tasks {
        outcomes.push(t.await.expect("scenario task"));
    }

    let mut problems = vec![];
    println!("\n{:<52} {:>5}  result", "RBAC", "secs");
    for o in &outcomes {
        let result = match &o.failed {
            None => "scenario passed".to_string(),
            Some(f) => format!("failed: {f}"),
        };
        println!(
            "{:<52} {:>5.0}  {result}",
            label(&o.grant),
            o.took.as_secs_f64()
        );
        if !o.refused.is_empty() {
            println!(
                "{:<59}refused: {} ({} reconcile errors KubernetesForbidden)",
                "",
                o.refused_summary(),
                o.forbidden_reconcile_errors
            );
        }
        match &o.grant {
            Grant::Chart(scope) => {
                if let Some(f) = &o.failed {
                    problems.push(format!(
                        "the chart's RBAC ({scope} scope) is not enough: {f}; refused: {}",
                        o.refused_summary()
                    ));
                } else if !o.refused.is_empty() {
                    problems.push(format!(
                        "with the chart's RBAC ({scope} scope) the API server refused {}",
                        o.refused_summary()
                    ));
                }
            }
            Grant::Without(p) => {
                let exact = o
                    .refused
                    .iter()
                    .any(|r| r.needs().iter().any(|n| p.matches(n)));
                match (&o.failed, p.conditional()) {
                    (Some(_), _) if exact => {}
                    (Some(f), _) => problems.push(format!(
                        "without {p} the scenario failed ({f}) but no request needing {p} was refused (refused: {})",
                        o.refused_summary()
                    )),
                    (None, Some(why)) => println!("{:<59}kept: {why}", ""),
                    (None, None) => problems.push(format!("{p} is not needed: remove it from the chart")),
                }
            }
        }
    }
    println!(
        "total {:.0} s, {parallel} scenarios at a time",
        started.elapsed().as_secs_f64()
    );
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn refused_requests_map_to_the_permission_they_need() {
    let r = |method: &str, url: &str| {
        Refusal {
            at: Instant::now(),
            method: method.into(),
            url: url.into(),
        }
        .needs()[0]
            .clone()
    };
    let t = |g: &str, res: &str, v: &str| (g.to_string(), res.to_string(), v.to_string());
    let base = "https://127.0.0.1:6443";
    assert_eq!(
        r("GET", &format!("{base}/api/v1/namespaces/a/secrets/s")),
        t("", "secrets", "get")
    );
    assert_eq!(
        r(
            "GET",
            &format!("{base}/api/v1/namespaces/a/secrets?labelSelector=x")
        ),
        t("", "secrets", "list")
    );
    assert_eq!(
        r(
            "GET",
            &format!("{base}/api/v1/namespaces/a/secrets?&watch=true&timeoutSeconds=290")
        ),
        t("", "secrets", "watch")
    );
    assert_eq!(
        r("GET", &format!("{base}/api/v1/namespaces/a")),
        t("", "namespaces", "get")
    );
    assert_eq!(
        r(
            "PATCH",
            &format!(
                "{base}/apis/mcpauth.dev/v1alpha1/namespaces/a/mcpservers/w/status?fieldManager=x"
            )
        ),
        t("mcpauth.dev", "mcpservers/status", "patch")
    );
    assert_eq!(
        r(
            "POST",
            &format!("{base}/apis/events.k8s.io/v1/namespaces/a/events")
        ),
        t("events.k8s.io", "events", "create")
    );
    assert_eq!(
        r("GET", "/apis/apps/v1/deployments?watch=1"),
        t("apps", "deployments", "watch")
    );
}
