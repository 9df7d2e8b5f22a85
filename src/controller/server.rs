//! McpServer reconciler: audience scope + introspection client in Keycloak, the credentials
//! Secret, the Deployment and the Service.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use keycloak::types::{ClientScopeRepresentation, ProtocolMapperRepresentation};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::conditions::{self, *};
use super::finish::{cleanup_keycloak, finish, finish_cleanup, At, Reconciled, Staged};
use super::ssa::{apply_if_changed, get_cached, patch_status_if_changed};
use super::Context;
use crate::admin::{Adopt, KeycloakAdminClient, RealmScopeAssignments};
use crate::api::{
    ActiveAudience, AuthMode, DeletionPolicy, McpAuthPolicy, McpServer, McpServerStatus, ScopeType,
};
use crate::desired::audience;
use crate::desired::plan::scope_in_sync;
use crate::desired::realm as kdesired;
use crate::desired::workload::{self, WorkloadInputs, SECRET_KEY_CLIENT_SECRET};
use crate::{Error, Result};

impl Reconciled for McpServer {
    type Status = McpServerStatus;
    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn apply(server: Arc<McpServer>, ctx: &Context, api: &Api<McpServer>) -> Result<Action> {
        let old = server.status.as_ref();
        let mut d = Draft::begin(old, server.metadata.generation);
        let status = &mut d.status;
        status.url = Some(server.canonical_url());
        status.secret_name = Some(server.secret_name());
        status.audience_scope = Some(server.audience_scope());
        let mut run = Run::new(&server, ctx, d);
        let outcome = run.converge().await;
        finish(ctx, api, server.as_ref(), run.d, outcome).await
    }

    async fn cleanup(server: Arc<McpServer>, ctx: &Context) -> Result<Action> {
        if server.spec.deletion_policy == DeletionPolicy::Retain {
            return finish_cleanup(ctx, server.as_ref(), Ok(())).await;
        }
        cleanup_keycloak(ctx, server.as_ref(), remove_from_keycloak(&server, ctx)).await
    }

    /// Sooner than the resync when a secret rotation or the end of a grace period is due.
    fn requeue_after(&self, ctx: &Context) -> std::time::Duration {
        super::rotation::requeue(self.status.as_ref(), ctx.config.resync)
    }

    const CONTROLLER: &'static str = "mcpserver";
}

/// Resolves the referenced policy and checks that it can serve this server.
async fn resolve_policy(server: &McpServer, ctx: &Context) -> Result<McpAuthPolicy> {
    let ns = server.namespace().unwrap_or_default();
    let name = &server.spec.policy_ref.name;
    let api: Api<McpAuthPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    // From the watch cache: a policy's every change re-triggers its servers anyway.
    let policy = get_cached(&api, name).await?.ok_or_else(|| {
        Error::invalid(
            "PolicyNotFound",
            format!("McpAuthPolicy {ns}/{name} not found"),
        )
    })?;
    let known: Vec<&str> = policy.spec.scopes.iter().map(|s| s.name.as_str()).collect();
    let tool_scopes = server.spec.auth.tools.iter().flat_map(|r| &r.scopes);
    if let Some(bad) =
        (server.spec.scopes.iter().chain(tool_scopes)).find(|s| !known.contains(&s.as_str()))
    {
        return Err(Error::invalid(
            "ScopeNotInPolicy",
            format!(
                "scope {bad} is not one of policy {name}'s scopes ({})",
                known.join(", ")
            ),
        ));
    }
    let ready = policy.status.as_ref().is_some_and(|s| {
        conditions::is_true(&s.conditions, READY)
            && s.observed_generation == policy.metadata.generation
    });
    if !ready {
        let why = policy
            .status
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, READY))
            .filter(|c| c.status == "False")
            .map(|c| format!(": {}", c.message))
            .unwrap_or_else(|| " yet".into());
        return Err(Error::invalid(
            "PolicyNotReady",
            format!("McpAuthPolicy {ns}/{name} is not Ready{why}"),
        ));
    }
    Ok(policy)
}

/// One reconcile of a server: what its stages read, and the status they build.
pub(super) struct Run<'a> {
    pub server: &'a McpServer,
    pub ctx: &'a Context,
    pub ns: String,
    pub uid: String,
    pub d: Draft<McpServerStatus>,
}

impl<'a> Run<'a> {
    fn new(server: &'a McpServer, ctx: &'a Context, d: Draft<McpServerStatus>) -> Self {
        let ns = server.namespace().unwrap_or_default();
        let uid = server.metadata.uid.clone().unwrap_or_default();
        Run {
            server,
            ctx,
            ns,
            uid,
            d,
        }
    }

    /// An API of the server's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    /// The stages, in order; each failure is reported on its own condition.
    async fn converge(&mut self) -> Staged<()> {
        let policy = resolve_policy(self.server, self.ctx)
            .await
            .at(POLICY_RESOLVED)?;
        let using = format!("using McpAuthPolicy {}", policy.name_any());
        self.d.set(POLICY_RESOLVED, true, "Resolved", using);
        let realm = &policy.spec.keycloak.realm;
        check_url_free(self.server, self.ctx, realm)
            .await
            .at(POLICY_RESOLVED)?;
        let mode = self.audience_mode(&policy).at(KEYCLOAK_CLIENT_READY)?;
        self.check_rotation_feature(&policy)
            .await
            .at(KEYCLOAK_CLIENT_READY)?;
        // Kubernetes Secret first: its value is reused if the Keycloak client must be recreated.
        let known_secret = self.known_secret().await.at(SECRET_READY)?;
        self.write_ahead(realm).await.at(KEYCLOAK_CLIENT_READY)?;
        let client_secret = self
            .ensure_keycloak(&policy, mode, known_secret)
            .await
            .at(KEYCLOAK_CLIENT_READY)?;
        // After the client is ensured (it carries the rotation marker), before the Secret:
        // the Secret and the pods follow whatever secret Keycloak holds.
        let client_secret = self
            .rotate_secret(&policy, client_secret)
            .await
            .at(KEYCLOAK_CLIENT_READY)?;
        self.ensure_secret(&client_secret).await.at(SECRET_READY)?;
        let available = self
            .ensure_workload(&policy, &client_secret)
            .await
            .at(AVAILABLE)?;
        self.verify(&policy).await;
        self.set_ready(available);
        Ok(())
    }

    /// The policy's audience mode, and what it names in status: the client (its url in
    /// `ResourceIndicator` mode) and the audience scope (none in that mode).
    fn audience_mode(&mut self, policy: &McpAuthPolicy) -> Result<ActiveAudience> {
        let mode = policy_audience(policy);
        audience::check_client_id(self.server, mode)?;
        let status = &mut self.d.status;
        status.client_id = Some(audience::client_id(self.server, mode));
        status.audience_mode = Some(mode);
        if mode == ActiveAudience::ResourceIndicator {
            status.audience_scope = None;
        }
        Ok(mode)
    }

    fn set_ready(&mut self, available: bool) {
        if self.server.spec.auth.mode == AuthMode::None {
            let open = "auth.mode is None: anyone who reaches the Service can call this MCP server";
            self.d.set(UNAUTHENTICATED, true, "AuthDisabled", open);
        } else {
            self.d.remove(UNAUTHENTICATED);
        }
        match available {
            true => self.d.set(
                READY,
                true,
                "Ready",
                "Keycloak client, Secret and workload are ready",
            ),
            false => self.d.set(
                READY,
                false,
                "Unavailable",
                "waiting for an available replica",
            ),
        }
    }

    /// The client secret in the server's own Secret, if there is one it owns.
    async fn known_secret(&self) -> Result<Option<String>> {
        let secrets: Api<Secret> = self.api();
        let Some(secret) = secrets.get_opt(&self.server.secret_name()).await? else {
            return Ok(None);
        };
        let owners = secret
            .metadata
            .owner_references
            .as_deref()
            .unwrap_or_default();
        if !owners.iter().any(|o| o.uid == self.uid) {
            return Ok(None);
        }
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(SECRET_KEY_CLIENT_SECRET));
        Ok(value.map(|b| String::from_utf8_lossy(&b.0).to_string()))
    }

    /// Records the realm in status *before* the first Keycloak write: cleanup only touches
    /// Keycloak when `status.keycloakRealm` is set, so a crash or an error between creating the
    /// client or scope and the status write at the end would otherwise orphan them. No write
    /// once recorded.
    async fn write_ahead(&mut self, realm: &str) -> Result<()> {
        let status = self.server.status.as_ref();
        if status.and_then(|s| s.keycloak_realm.as_deref()) == Some(realm) {
            return Ok(());
        }
        self.d.status.keycloak_realm = Some(realm.to_string());
        patch_status_if_changed(self.ctx, &self.api(), self.server, None, &self.d.status).await
    }

    /// The introspection client and audience scope in Keycloak; returns the client secret.
    /// Skips Keycloak when the same inputs were checked within the window (see
    /// [`Context::keycloak_recently_checked`]).
    async fn ensure_keycloak(
        &mut self,
        policy: &McpAuthPolicy,
        mode: ActiveAudience,
        known_secret: Option<String>,
    ) -> Result<String> {
        let (server, ctx) = (self.server, self.ctx);
        let checked = known_secret.as_deref().and_then(|secret| {
            ctx.keycloak_recently_checked(&self.uid, &check_inputs(server, policy, secret))
        });
        let client_secret = match (checked, known_secret.clone()) {
            (Some(scope_id), Some(secret)) => {
                self.d.status.audience_scope_id = Some(scope_id).filter(|id| !id.is_empty());
                secret
            }
            _ => {
                let previous = Previous::of(server);
                let (secret, scope_id) = keycloak_objects(
                    server,
                    ctx,
                    policy,
                    mode,
                    &previous,
                    known_secret.as_deref(),
                )
                .await?;
                let inputs = check_inputs(server, policy, &secret);
                ctx.record_keycloak_check(&self.uid, inputs, &scope_id);
                self.d.status.audience_scope_id = Some(scope_id).filter(|id| !id.is_empty());
                secret
            }
        };
        let realm = &policy.spec.keycloak.realm;
        self.d.status.keycloak_realm = Some(realm.clone());
        let client = audience::client_id(server, mode);
        let message = match mode {
            ActiveAudience::Scope => format!(
                "client {client} and audience scope {} exist in realm {realm}",
                server.audience_scope()
            ),
            ActiveAudience::ResourceIndicator => format!("client {client} (resource_url = its url) exists in realm {realm}, and every scope of the policy names it as audience"),
        };
        self.d
            .set(KEYCLOAK_CLIENT_READY, true, "ClientReady", message);
        Ok(client_secret)
    }

    async fn ensure_secret(&mut self, client_secret: &str) -> Result<()> {
        let server = self.server;
        let client_id = self.d.status.client_id.clone().unwrap_or_default();
        let desired = workload::secret(server, &client_id, client_secret);
        apply_if_changed(self.ctx, &self.api::<Secret>(), &desired, &self.uid).await?;
        let message = format!(
            "Secret {} holds the client credentials",
            server.secret_name()
        );
        self.d.set(SECRET_READY, true, "SecretReady", message);
        Ok(())
    }

    /// Deployment, Service and NetworkPolicy; returns whether a replica is available.
    async fn ensure_workload(
        &mut self,
        policy: &McpAuthPolicy,
        client_secret: &str,
    ) -> Result<bool> {
        let server = self.server;
        let image = &self.ctx.config.operator_image;
        let inputs = WorkloadInputs::resolve(server, policy, client_secret, image);
        let deployment = apply_if_changed(
            self.ctx,
            &self.api::<Deployment>(),
            &workload::deployment(server, &inputs),
            &self.uid,
        )
        .await?;
        apply_if_changed(
            self.ctx,
            &self.api::<Service>(),
            &workload::service(server),
            &self.uid,
        )
        .await?;
        self.isolate().await?;
        let dstatus = deployment.status.unwrap_or_default();
        let available_replicas = dstatus.available_replicas.unwrap_or(0);
        self.d.status.ready_replicas = Some(dstatus.ready_replicas.unwrap_or(0));
        let available = available_replicas > 0 || server.spec.replicas == 0;
        if available {
            let message = format!("{available_replicas} replica(s) available");
            self.d
                .set(AVAILABLE, true, "MinimumReplicasAvailable", message);
        } else {
            self.d.set(
                AVAILABLE,
                false,
                "NoReplicasAvailable",
                "no replica is available yet",
            );
        }
        Ok(available)
    }
}

/// Everything the Keycloak step depends on (the secret only as part of a digest).
fn check_inputs(server: &McpServer, policy: &McpAuthPolicy, secret: &str) -> String {
    crate::desired::digest(&[
        &server.metadata.generation.unwrap_or_default().to_string(),
        policy.metadata.uid.as_deref().unwrap_or_default(),
        &policy.metadata.generation.unwrap_or_default().to_string(),
        policy_audience(policy).name(),
        // The client id this reconcile wants, not the one in status: the status of a new
        // server only gets it at the end of the first check, and the check would not stand.
        &audience::client_id(server, policy_audience(policy)),
        &policy.spec.keycloak.realm,
        secret,
    ])
}

/// The mode a policy's status says (Scope until it has decided).
fn policy_audience(policy: &McpAuthPolicy) -> ActiveAudience {
    let status = policy.status.as_ref();
    status.and_then(|s| s.audience_mode).unwrap_or_default()
}

/// What the last reconcile set up, from the server's status: what a mode, url or name change
/// leaves behind.
struct Previous {
    client_id: Option<String>,
    scope_id: Option<String>,
    mode: Option<ActiveAudience>,
}

impl Previous {
    fn of(server: &McpServer) -> Self {
        let status = server.status.as_ref();
        Previous {
            client_id: status.and_then(|s| s.client_id.clone()),
            scope_id: status.and_then(|s| s.audience_scope_id.clone()),
            mode: status.and_then(|s| s.audience_mode),
        }
    }
}

/// Writes what differs of the server's Keycloak objects in `mode`, then removes what another
/// mode, url or name left (ours only); returns the client secret and the audience scope's id
/// (empty in `ResourceIndicator` mode).
async fn keycloak_objects(
    server: &McpServer,
    ctx: &Context,
    policy: &McpAuthPolicy,
    mode: ActiveAudience,
    previous: &Previous,
    known_secret: Option<&str>,
) -> Result<(String, String)> {
    let realm = &policy.spec.keycloak.realm;
    let kc = ctx.keycloak_for(policy).await?;
    let owner = server.owner_marker();
    let scope_names: Vec<&str> = policy.spec.scopes.iter().map(|s| s.name.as_str()).collect();
    let mapper = audience::mapper_name(server);
    let window = ctx.keycloak_check_window();
    let done = match mode {
        ActiveAudience::Scope => {
            let done = scope_objects(server, &kc, realm, previous, known_secret, window).await?;
            if previous.mode == Some(ActiveAudience::ResourceIndicator) {
                let scopes = kc.client_scopes(realm).await?;
                kc.ensure_named_mapper(realm, &scopes, &scope_names, &mapper, None)
                    .await?;
            }
            done
        }
        ActiveAudience::ResourceIndicator => {
            let client = audience::resource_client(server);
            let create_first = previous.client_id.is_none();
            let secret = kc
                .ensure_introspection_client(realm, &client, known_secret, create_first)
                .await?
                .secret;
            let scopes = kc.client_scopes(realm).await?;
            let desired = audience::policy_scope_mapper(server);
            kc.ensure_named_mapper(realm, &scopes, &scope_names, &mapper, Some(&desired))
                .await?;
            if previous.scope_id.is_some() {
                // A token asking for the old audience scope would still name the url.
                kc.delete_owned_scopes(realm, &owner, Some(&server.audience_scope()))
                    .await?;
            }
            (secret, String::new())
        }
    };
    let current = audience::client_id(server, mode);
    if let Some(old) = previous.client_id.as_deref().filter(|old| *old != current) {
        // Only after the current client exists: the pods switch to it as they roll.
        kc.delete_owned_client(realm, old, &owner).await?;
    }
    Ok(done)
}

/// `Scope` mode: the introspection client and the server's audience scope; returns the client
/// secret and the scope's id. A server that never recorded either (a new one) creates both
/// without reading first; Keycloak's 409 sends it the long way.
async fn scope_objects(
    server: &McpServer,
    kc: &KeycloakAdminClient,
    realm: &str,
    previous: &Previous,
    known_secret: Option<&str>,
    window: Duration,
) -> Result<(String, String)> {
    let audience_scope = kdesired::audience_scope(server);
    let mappers = kdesired::audience_mappers(server);
    let new = previous.scope_id.is_none() && previous.client_id.is_none();
    let by_id = match previous.scope_id.as_deref() {
        Some(id) => recorded_scope(kc, realm, id, &audience_scope, &mappers, window).await?,
        None => None,
    };
    let scopes = match by_id.filter(|s| s.name == audience_scope.name) {
        Some(scope) => vec![scope],
        None if new => vec![],
        None => kc.client_scopes(realm).await?,
    };
    // A foreign scope of our name is refused before the client is created, so the conflict
    // leaves nothing half-applied in Keycloak.
    crate::admin::check_scope_owner(&scopes, &audience_scope, Adopt::Unmarked)?;
    // Client first: the audience scope's second mapper names it.
    let client = kdesired::introspection_client(server);
    let made = kc
        .ensure_introspection_client(realm, &client, known_secret, new)
        .await?;
    let (desired, mappers) = (&audience_scope, &mappers);
    let ensure = |scopes: Vec<ClientScopeRepresentation>| async move {
        let id = kc
            .ensure_client_scope(realm, &scopes, desired, mappers, Adopt::Unmarked)
            .await?;
        Ok::<_, Error>((id, scopes))
    };
    let (scope_id, scopes) = match ensure(scopes).await {
        Err(Error::KeycloakApi { status: 409, .. }) if new => {
            let scopes = kc.client_scopes(realm).await?;
            let owned = crate::admin::check_scope_owner(&scopes, desired, Adopt::Unmarked);
            if let (Err(e), true) = (owned, made.created) {
                // Undo this reconcile's client: a conflict leaves nothing half-applied.
                kc.delete_client(realm, &made.uuid).await?;
                return Err(e);
            }
            ensure(scopes).await?
        }
        other => other?,
    };
    let assignments = match scopes.iter().any(|s| s.name == desired.name) {
        true => kc.shared_realm_scope_assignments(realm, window).await?,
        // Created just now: in neither list.
        false => RealmScopeAssignments::default(),
    };
    // Optional, never default: a default audience scope would put this URL in every token.
    kc.ensure_realm_scope_type(realm, &assignments, &scope_id, ScopeType::Optional)
        .await?;
    Ok((made.secret, scope_id))
}

/// The audience scope by its recorded id, `None` if there is none. Confirmed from the realm's
/// scope list shared within `window` (no read of its own); read by id when that copy would need
/// a write, so writes are planned from a fresh read. The realm's list, read by each server,
/// would grow with every server; the caller reads it when the id is stale.
async fn recorded_scope(
    kc: &KeycloakAdminClient,
    realm: &str,
    id: &str,
    desired: &ClientScopeRepresentation,
    mappers: &[ProtocolMapperRepresentation],
    window: Duration,
) -> Result<Option<ClientScopeRepresentation>> {
    let shared = kc.shared_client_scope(realm, id, window).await?;
    match shared.filter(|s| scope_in_sync(s, id, desired, mappers)) {
        Some(in_sync) => Ok(Some(in_sync)),
        None => kc.client_scope(realm, id).await,
    }
}

/// `UrlConflict` when another McpServer of the realm holds this server's url.
async fn check_url_free(server: &McpServer, ctx: &Context, realm: &str) -> Result<()> {
    let servers = ctx
        .servers_in(&server.namespace().unwrap_or_default())
        .await?;
    match url_holder(server, &servers) {
        None => Ok(()),
        Some(holder) => Err(Error::invalid(
            "UrlConflict",
            format!(
                "url {} is already the resource of McpServer {holder} in realm {realm}: tokens for one would be accepted by the other",
                server.canonical_url()
            ),
        )),
    }
}

/// The McpServer that holds `server`'s url in its realm, if another one does: the oldest of
/// those naming the same url through the same policy (one policy per realm, so that is every
/// server of the realm). Without this, a token for one would carry the other's audience.
pub fn url_holder(server: &McpServer, all: &[Arc<McpServer>]) -> Option<String> {
    let key = |s: &McpServer| (s.metadata.creation_timestamp.clone(), s.name_any());
    let url = server.canonical_url();
    all.iter()
        .filter(|o| {
            o.metadata.uid != server.metadata.uid
                && o.namespace() == server.namespace()
                && o.spec.policy_ref.name == server.spec.policy_ref.name
                && o.metadata.deletion_timestamp.is_none()
                && o.canonical_url() == url
        })
        .filter(|o| key(o) < key(server))
        .map(|o| o.name_any())
        .min()
}

/// Deletes the server's introspection client and audience scope (ours only).
async fn remove_from_keycloak(server: &McpServer, ctx: &Context) -> Result<()> {
    let ns = server.namespace().unwrap_or_default();
    let name = &server.spec.policy_ref.name;
    let api: Api<McpAuthPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let policy = api.get_opt(name).await?.ok_or_else(|| {
        let message =
            format!("McpAuthPolicy {ns}/{name} is gone; cannot reach Keycloak to clean up");
        Error::invalid("PolicyNotFound", message)
    })?;
    let realm = &policy.spec.keycloak.realm;
    let kc = ctx.keycloak_for_cleanup(&policy).await?;
    let owner = server.owner_marker();
    // Every name the client may have had: either mode's, and the last one in status.
    let recorded = Previous::of(server).client_id;
    let names = [
        Some(server.client_id()),
        Some(server.canonical_url()),
        recorded,
    ];
    for name in names.iter().flatten() {
        kc.delete_owned_client(realm, name, &owner).await?;
    }
    let scope = server.audience_scope();
    kc.delete_owned_scopes(realm, &owner, Some(&scope)).await?;
    let scopes = kc.client_scopes(realm).await?;
    let names: Vec<&str> = policy.spec.scopes.iter().map(|s| s.name.as_str()).collect();
    let mapper = audience::mapper_name(server);
    kc.ensure_named_mapper(realm, &scopes, &names, &mapper, None)
        .await
}

#[cfg(test)]
mod tests {
    use super::url_holder;
    use crate::api::McpServer;
    use std::sync::Arc;

    fn srv(name: &str, ns: &str, policy: &str, url: &str, created: &str) -> Arc<McpServer> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "mcpauth.dev/v1alpha1", "kind": "McpServer",
                "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{name}"),
                             "creationTimestamp": created},
                "spec": {"image": "img", "policyRef": {"name": policy}, "url": url},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_oldest_server_holds_a_url() {
        let a = srv("a", "team", "acme", "http://x/mcp", "2026-01-01T00:00:00Z");
        let b = srv("b", "team", "acme", "http://x/mcp", "2026-01-02T00:00:00Z");
        let other_url = srv("c", "team", "acme", "http://y/mcp", "2025-01-01T00:00:00Z");
        let other_ns = srv("d", "else", "acme", "http://x/mcp", "2025-01-01T00:00:00Z");
        let all = vec![a.clone(), b.clone(), other_url, other_ns];
        assert_eq!(url_holder(&a, &all), None);
        assert_eq!(url_holder(&b, &all), Some("a".into()));
        // Same second: the name decides, so exactly one of the two holds it.
        let b2 = srv("b", "team", "acme", "http://x/mcp", "2026-01-01T00:00:00Z");
        assert_eq!(url_holder(&b2, &[a.clone(), b2.clone()]), Some("a".into()));
        assert_eq!(url_holder(&a, &[a.clone(), b2]), None);
    }
}
