//! [`Scenario`]: one test's world on the test bed, removed again when the test ends or panics.

use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::Client;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::{json, Value};

use super::{
    admin_secret_for, create, delete_and_wait, install_crds, secret_value, seed_policy, server,
    teardown, wait_condition, wait_reason, Kind, Operator, Realm,
};
use crate::support;

/// The name of the admin credentials Secret every scenario's policies refer to.
pub const ADMIN_SECRET: &str = "keycloak-admin";

/// A fresh namespace with the Keycloak admin Secret, a realm name of its own and an operator
/// watching the namespace. Dropping it (also while a failed assertion unwinds) deletes the
/// namespace with an operator running, so every finalizer releases what it owns in Keycloak,
/// then deletes the realm.
pub struct Scenario {
    pub client: Client,
    pub ns: String,
    pub realm: Realm,
    keycloak: support::KeycloakLogin,
    op: Option<Operator>,
}

impl Scenario {
    pub async fn new(prefix: &str) -> Scenario {
        Self::with_resync(prefix, Duration::from_secs(3)).await
    }

    pub async fn with_resync(prefix: &str, resync: Duration) -> Scenario {
        let mut s = Self::without_operator(prefix).await;
        s.op = Some(Operator::start_with(&s.client, &s.ns, resync).await);
        s
    }

    /// For tests that run the operator themselves (as a child process, or only later).
    pub async fn without_operator(prefix: &str) -> Scenario {
        let tb = support::testbed().await;
        Self::on(prefix, support::KeycloakLogin::of(tb)).await
    }

    /// A scenario whose admin Secret and realm are on another Keycloak; no operator yet.
    pub async fn on(prefix: &str, keycloak: support::KeycloakLogin) -> Scenario {
        let client = support::kube_client().await;
        install_crds(&client).await;
        let ns = support::test_namespace(&client, prefix).await;
        let realm = Realm::on(&keycloak, &support::unique_name(prefix));
        // Built before anything else can fail, so that Drop cleans up from here on.
        let s = Scenario {
            client,
            ns,
            realm,
            keycloak,
            op: None,
        };
        admin_secret_for(&s.client, &s.ns, ADMIN_SECRET, &s.keycloak).await;
        s
    }

    pub async fn start_operator(&mut self) {
        self.op = Some(Operator::start(&self.client, &self.ns).await);
    }

    pub fn op(&self) -> &Operator {
        self.op.as_ref().expect("the scenario's operator runs")
    }

    /// Stops the in-process operator (e.g. to restart it with other settings).
    pub fn stop_operator(&mut self) {
        self.op = None;
    }

    pub fn api<K: Kind>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn create<K: Kind>(&self, obj: &K) -> K {
        create(&self.client, &self.ns, obj).await
    }

    pub async fn get<K: Kind>(&self, name: &str) -> K {
        self.api::<K>()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get {} {name}: {e}", K::kind(&())))
    }

    /// Merge-patches `spec` of a namespaced object.
    pub async fn patch_spec<K: Kind>(&self, name: &str, spec: Value) {
        self.api::<K>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .unwrap_or_else(|e| panic!("patch {} {name}: {e}", K::kind(&())));
    }

    /// Deletes a namespaced object and waits until it is gone (its finalizers have run).
    pub async fn delete<K: Kind>(&self, name: &str) {
        delete_and_wait::<K>(&self.client, &self.ns, name).await
    }

    pub async fn wait_ready<K: Kind>(&self, name: &str) -> (String, String) {
        self.wait_condition::<K>(name, "Ready", "True").await
    }

    /// [`wait_condition`] in this scenario's namespace.
    pub async fn wait_condition<K: Kind>(
        &self,
        name: &str,
        type_: &str,
        status: &str,
    ) -> (String, String) {
        wait_condition::<K>(&self.client, &self.ns, name, type_, status).await
    }

    /// [`wait_reason`] in this scenario's namespace.
    pub async fn wait_reason<K: Kind>(&self, name: &str, type_: &str, reason: &str) -> String {
        wait_reason::<K>(&self.client, &self.ns, name, type_, reason).await
    }

    /// The seed policy `acme` for this scenario's realm, before it is created.
    pub async fn seed_policy(&self) -> McpAuthPolicy {
        let tb = support::testbed().await;
        seed_policy("acme", &self.realm.name, &tb.keycloak_url)
    }

    /// Creates `policy` and `servers`; waits until all are Ready.
    pub async fn apply(&self, policy: &McpAuthPolicy, servers: &[McpServer]) {
        self.create(policy).await;
        for s in servers {
            self.create(s).await;
        }
        let policy = policy.metadata.name.as_deref().expect("policy name");
        self.wait_ready::<McpAuthPolicy>(policy).await;
        for s in servers {
            self.wait_ready::<McpServer>(s.metadata.name.as_deref().expect("server name"))
                .await;
        }
    }

    /// The seed policy `acme` and one server per (name, url), all Ready.
    pub async fn seed(&self, servers: &[(&str, &str)]) {
        let servers: Vec<McpServer> = servers
            .iter()
            .map(|(name, url)| server(name, "acme", url))
            .collect();
        self.apply(&self.seed_policy().await, &servers).await;
    }

    /// RFC 7662 introspection of `token` with the credentials of `server`'s introspection client
    /// (from its `-oauth` Secret).
    pub async fn introspect_as(&self, server: &str, token: &str) -> (u16, Value) {
        let secret = format!("{server}-oauth");
        let secret = secret_value(&self.client, &self.ns, &secret, "client-secret")
            .await
            .expect("introspection secret");
        let client_id = format!("mcp.{}.{server}", self.ns);
        self.realm.introspect(&client_id, &secret, token).await
    }

    pub fn realm_url(&self) -> String {
        format!("{}/realms/{}", self.realm.kc.base_url, self.realm.name)
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // The test's runtime may be a current-thread one that this drop blocks, so its operator
        // could not run the finalizers: stop it, and clean up on a runtime of its own.
        self.op = None;
        let (ns, realm) = (self.ns.clone(), self.realm.name.clone());
        let done = support::on_own_runtime(clean_up(ns, realm, self.keycloak.clone()));
        // A failed clean-up fails a passing test; while a test panics already, its own message
        // is the one to keep (a second panic would abort the test binary).
        if let Err(panic) = done {
            if !std::thread::panicking() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// Deletes namespace `ns` with a fresh operator running, waits until its custom resources are
/// finalized, then deletes `realm` (also when finalizing timed out).
pub async fn clean_up(ns: String, realm: String, keycloak: support::KeycloakLogin) {
    let client = support::kube_client().await;
    let op = Operator::start(&client, &ns).await;
    let finalized = tokio::spawn(async move {
        // The resources go first, while the admin Secret their finalizers log in with still
        // exists (a fresh operator has no cached admin client, and the namespace's deletion
        // removes the Secret); what cannot go then goes with the namespace.
        let first = Duration::from_secs(30);
        let _ = tokio::time::timeout(first, delete_all::<McpServer>(&client, &ns)).await;
        let _ = tokio::time::timeout(first, delete_all::<McpAuthPolicy>(&client, &ns)).await;
        teardown(&client, &ns, op).await
    })
    .await;
    Realm::on(&keycloak, &realm).delete().await;
    if let Err(e) = finalized {
        if let Ok(panic) = e.try_into_panic() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Deletes every `K` of `ns` and waits until they are gone.
async fn delete_all<K: Kind>(client: &Client, ns: &str) {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let _ = api
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    while !matches!(api.list(&ListParams::default()).await, Ok(l) if l.items.is_empty()) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
