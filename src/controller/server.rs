//! McpServer reconciler: audience scope + introspection client in Keycloak, the credentials
//! Secret, the Deployment and the Service.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Resource, ResourceExt};

use super::conditions::{self, READY};
use super::{apply_if_changed, patch_status_if_changed, Context};
use crate::admin::Adopt;
use crate::api::{
    AuthMode, DeletionPolicy, McpAuthPolicy, McpServer, McpServerStatus, ScopeType, FINALIZER,
};
use crate::desired::realm as kdesired;
use crate::desired::workload::{self, WorkloadInputs, SECRET_KEY_CLIENT_SECRET};
use crate::{Error, Result};

pub const POLICY_RESOLVED: &str = "PolicyResolved";
pub const KEYCLOAK_CLIENT_READY: &str = "KeycloakClientReady";
pub const SECRET_READY: &str = "SecretReady";
pub const AVAILABLE: &str = "Available";
pub const UNAUTHENTICATED: &str = "Unauthenticated";

pub async fn reconcile(server: Arc<McpServer>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let ns = server.namespace().unwrap_or_default();
    let api: Api<McpServer> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, server, |event| async {
        match event {
            Finalizer::Apply(s) => apply(s, &ctx, &api).await,
            Finalizer::Cleanup(s) => cleanup(s, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.record_reconcile("mcpserver", started.elapsed());
    result
}

#[derive(Clone, Copy)]
enum Stage {
    Policy,
    Keycloak,
    Secret,
    Workload,
}

/// Resolves the referenced policy and checks that it can serve this server.
async fn resolve_policy(server: &McpServer, ctx: &Context) -> Result<McpAuthPolicy> {
    let ns = server.namespace().unwrap_or_default();
    let name = &server.spec.policy_ref.name;
    let api: Api<McpAuthPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let policy = api.get_opt(name).await?.ok_or_else(|| {
        Error::invalid(
            "PolicyNotFound",
            format!("McpAuthPolicy {ns}/{name} not found"),
        )
    })?;
    let known: Vec<&str> = policy.spec.scopes.iter().map(|s| s.name.as_str()).collect();
    if let Some(bad) = server
        .spec
        .scopes
        .iter()
        .find(|s| !known.contains(&s.as_str()))
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

async fn apply(server: Arc<McpServer>, ctx: &Context, api: &Api<McpServer>) -> Result<Action> {
    let now = Time(jiff::Timestamp::now());
    let generation = server.metadata.generation;
    let old = server.status.clone();
    let mut status = old.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.url = Some(server.canonical_url());
    status.client_id = Some(server.client_id());
    status.secret_name = Some(server.secret_name());
    status.audience_scope = Some(server.audience_scope());

    let outcome = converge(&server, ctx, &mut status, &now).await;
    let conds = &mut status.conditions;
    match &outcome {
        Ok(available) => {
            if server.spec.auth.mode == AuthMode::None {
                conditions::upsert(
                    conds,
                    UNAUTHENTICATED,
                    true,
                    "AuthDisabled",
                    "auth.mode is None: anyone who reaches the Service can call this MCP server",
                    generation,
                    &now,
                );
            } else {
                conds.retain(|c| c.type_ != UNAUTHENTICATED);
            }
            if *available {
                conditions::upsert(
                    conds,
                    READY,
                    true,
                    "Ready",
                    "Keycloak client, Secret and workload are ready",
                    generation,
                    &now,
                );
            } else {
                conditions::upsert(
                    conds,
                    READY,
                    false,
                    "Unavailable",
                    "waiting for an available replica",
                    generation,
                    &now,
                );
            }
        }
        Err((stage, e)) => {
            let t = match stage {
                Stage::Policy => POLICY_RESOLVED,
                Stage::Keycloak => KEYCLOAK_CLIENT_READY,
                Stage::Secret => SECRET_READY,
                Stage::Workload => AVAILABLE,
            };
            conditions::upsert(conds, t, false, e.reason(), e.to_string(), generation, &now);
            conditions::upsert(
                conds,
                READY,
                false,
                e.reason(),
                e.to_string(),
                generation,
                &now,
            );
        }
    }
    let was_ready = old
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, READY));
    let is_ready = conditions::is_true(&status.conditions, READY);
    let old_reason = old
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, READY))
        .map(|c| c.reason.clone());
    patch_status_if_changed(api, server.as_ref(), old.as_ref(), &status).await?;
    let new_ready = conditions::find(&status.conditions, READY)
        .cloned()
        .expect("Ready was just set");
    if was_ready != is_ready
        || (!is_ready && old_reason.as_deref() != Some(new_ready.reason.as_str()))
    {
        ctx.publish(
            &server.object_ref(&()),
            !is_ready && new_ready.reason != "Unavailable",
            &new_ready.reason,
            new_ready.message,
        )
        .await;
    }
    match outcome {
        Ok(_) => {
            ctx.reset_failures(&server.metadata.uid.clone().unwrap_or_default());
            Ok(Action::requeue(ctx.config.resync))
        }
        Err((_, e)) => Err(e),
    }
}

/// Returns whether the Deployment has an available replica.
async fn converge(
    server: &McpServer,
    ctx: &Context,
    status: &mut McpServerStatus,
    now: &Time,
) -> std::result::Result<bool, (Stage, Error)> {
    let generation = server.metadata.generation;
    let ns = server.namespace().unwrap_or_default();
    let uid = server.metadata.uid.clone().unwrap_or_default();

    let policy = resolve_policy(server, ctx)
        .await
        .map_err(|e| (Stage::Policy, e))?;
    conditions::upsert(
        &mut status.conditions,
        POLICY_RESOLVED,
        true,
        "Resolved",
        format!("using McpAuthPolicy {}", policy.name_any()),
        generation,
        now,
    );
    let realm = policy.spec.keycloak.realm.clone();
    check_url_free(server, ctx, &realm)
        .await
        .map_err(|e| (Stage::Policy, e))?;

    // Kubernetes Secret first: its value is reused if the Keycloak client must be recreated.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing_secret = secrets
        .get_opt(&server.secret_name())
        .await
        .map_err(|e| (Stage::Secret, e.into()))?;
    let known_secret = existing_secret
        .as_ref()
        .filter(|s| {
            s.metadata
                .owner_references
                .as_ref()
                .is_some_and(|r| r.iter().any(|o| o.uid == uid))
        })
        .and_then(|s| {
            s.data
                .as_ref()?
                .get(SECRET_KEY_CLIENT_SECRET)
                .map(|b| String::from_utf8_lossy(&b.0).to_string())
        });

    // Write-ahead: record the realm in status *before* the first Keycloak write. Cleanup only
    // touches Keycloak when `status.keycloakRealm` is set, so a crash (SIGKILL, found by
    // tests/crash.rs) or an error between creating the client/scope and the status write at the
    // end of this reconcile would otherwise leave them orphaned when the server is deleted.
    // One extra status write on a server's first reconcile; none at steady state.
    if server
        .status
        .as_ref()
        .and_then(|s| s.keycloak_realm.as_deref())
        != Some(realm.as_str())
    {
        status.keycloak_realm = Some(realm.clone());
        let api: Api<McpServer> = Api::namespaced(ctx.client.clone(), &ns);
        patch_status_if_changed(&api, server, None, &*status)
            .await
            .map_err(|e| (Stage::Keycloak, e))?;
    }

    let recorded_scope_id = status.audience_scope_id.clone();
    let keycloak_step = async {
        let kc = ctx.keycloak_for(&policy).await?;
        let audience_scope = kdesired::audience_scope(server);
        // The scope by its recorded id: one small read, where the realm's list grows with every
        // server. The list when the id is unknown or stale (deleted, or a scope of another name).
        let by_id = match recorded_scope_id.as_deref() {
            Some(id) => kc
                .client_scope(&realm, id)
                .await?
                .filter(|s| s.name == audience_scope.name),
            None => None,
        };
        let scopes = match by_id {
            Some(scope) => vec![scope],
            None => kc.client_scopes(&realm).await?,
        };
        // A foreign scope of our name is refused before the client is created, so the conflict
        // leaves nothing half-applied in Keycloak (tests/bad_input.rs).
        crate::admin::check_scope_owner(&scopes, &audience_scope, Adopt::Unmarked)?;
        // Client first: the audience scope's second mapper names it.
        let client = kc
            .ensure_introspection_client(
                &realm,
                &kdesired::introspection_client(server),
                known_secret.as_deref(),
            )
            .await?;
        let scope_id = kc
            .ensure_client_scope(
                &realm,
                &scopes,
                &audience_scope,
                &kdesired::audience_mappers(server),
                Adopt::Unmarked,
            )
            .await?;
        let assignments = kc.realm_scope_assignments(&realm).await?;
        // Optional, never default: a default audience scope would put this URL in every token.
        kc.ensure_realm_scope_type(&realm, &assignments, &scope_id, ScopeType::Optional)
            .await?;
        Ok::<_, Error>((client, scope_id))
    };
    // Everything the Keycloak step depends on (the secret only as part of a digest).
    let policy_generation = policy.metadata.generation.unwrap_or_default().to_string();
    let inputs = |scope_id: &str, secret: &str| {
        crate::desired::digest(&[
            &generation.unwrap_or_default().to_string(),
            policy.metadata.uid.as_deref().unwrap_or_default(),
            &policy_generation,
            &realm,
            scope_id,
            secret,
        ])
    };
    let recently_checked = match (&recorded_scope_id, &known_secret) {
        (Some(scope_id), Some(secret))
            if ctx.keycloak_recently_checked(&uid, &inputs(scope_id, secret)) =>
        {
            Some(secret.clone())
        }
        _ => None,
    };
    let client_secret = match recently_checked {
        Some(secret) => secret,
        None => {
            let ((_uuid, client_secret), scope_id) =
                keycloak_step.await.map_err(|e| (Stage::Keycloak, e))?;
            ctx.record_keycloak_check(&uid, inputs(&scope_id, &client_secret));
            status.audience_scope_id = Some(scope_id);
            client_secret
        }
    };
    status.keycloak_realm = Some(realm.clone());
    conditions::upsert(
        &mut status.conditions,
        KEYCLOAK_CLIENT_READY,
        true,
        "ClientReady",
        format!(
            "client {} and audience scope {} exist in realm {realm}",
            server.client_id(),
            server.audience_scope()
        ),
        generation,
        now,
    );

    let desired_secret = workload::secret(server, &server.client_id(), &client_secret);
    apply_if_changed(&secrets, &desired_secret, &uid)
        .await
        .map_err(|e| (Stage::Secret, e))?;
    conditions::upsert(
        &mut status.conditions,
        SECRET_READY,
        true,
        "SecretReady",
        format!(
            "Secret {} holds the client credentials",
            server.secret_name()
        ),
        generation,
        now,
    );

    let inputs =
        WorkloadInputs::resolve(server, &policy, &client_secret, &ctx.config.operator_image);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let workload_step = async {
        apply_if_changed(&deployments, &workload::deployment(server, &inputs), &uid).await?;
        apply_if_changed(&services, &workload::service(server), &uid).await?;
        super::isolation::ensure(server, ctx, status, now).await?;
        Ok::<_, Error>(deployments.get_opt(&server.name_any()).await?)
    };
    let deployment = workload_step.await.map_err(|e| (Stage::Workload, e))?;
    let dstatus = deployment.and_then(|d| d.status);
    let ready_replicas = dstatus.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
    let available_replicas = dstatus
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    status.ready_replicas = Some(ready_replicas);
    let available = available_replicas > 0 || server.spec.replicas == 0;
    if available {
        conditions::upsert(
            &mut status.conditions,
            AVAILABLE,
            true,
            "MinimumReplicasAvailable",
            format!("{available_replicas} replica(s) available"),
            generation,
            now,
        );
    } else {
        conditions::upsert(
            &mut status.conditions,
            AVAILABLE,
            false,
            "NoReplicasAvailable",
            "no replica is available yet",
            generation,
            now,
        );
    }
    Ok(available)
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

async fn cleanup(server: Arc<McpServer>, ctx: &Context) -> Result<Action> {
    ctx.forget_keycloak_check(&server.metadata.uid.clone().unwrap_or_default());
    if server.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    let ns = server.namespace().unwrap_or_default();
    let recorded = |s: &McpServer| {
        s.status
            .as_ref()
            .is_some_and(|s| s.keycloak_realm.is_some())
    };
    // The cached object may predate the write-ahead status patch of a reconcile that ran just
    // before the deletion; ask the API server before concluding nothing was written.
    if !recorded(&server) {
        let api: Api<McpServer> = Api::namespaced(ctx.client.clone(), &ns);
        if !api
            .get_opt(&server.name_any())
            .await?
            .is_some_and(|s| recorded(&s))
        {
            // Nothing was ever written to Keycloak.
            return Ok(Action::await_change());
        }
    }
    let result = async {
        let api: Api<McpAuthPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        let policy = api
            .get_opt(&server.spec.policy_ref.name)
            .await?
            .ok_or_else(|| {
                Error::invalid(
                    "PolicyNotFound",
                    format!(
                        "McpAuthPolicy {ns}/{} is gone; cannot reach Keycloak to clean up",
                        server.spec.policy_ref.name
                    ),
                )
            })?;
        let realm = &policy.spec.keycloak.realm;
        let kc = ctx.keycloak_for_cleanup(&policy).await?;
        kc.delete_owned_client(realm, &server.client_id(), &server.owner_marker())
            .await?;
        let assignments = kc.realm_scope_assignments(realm).await?;
        for s in kc.client_scopes(realm).await? {
            let ours = s.name.as_deref() == Some(server.audience_scope().as_str())
                && s.attributes
                    .as_ref()
                    .and_then(|a| a.get(crate::api::OWNER_ATTRIBUTE))
                    == Some(&server.owner_marker());
            if let (true, Some(id)) = (ours, s.id.as_deref()) {
                kc.remove_realm_scope(realm, &assignments, id).await?;
                kc.delete_client_scope(realm, id).await?;
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    match result {
        Ok(()) => Ok(Action::await_change()),
        Err(e) if ctx.namespace_terminating(&ns).await => {
            ctx.publish(
                &server.object_ref(&()),
                true,
                "CleanupSkipped",
                format!("namespace is being deleted; Keycloak cleanup failed: {e}"),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) => Err(e),
    }
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
