//! McpAuthPolicy reconciler: realm, MCP client scopes, anonymous registration policies.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Resource, ResourceExt};

use super::conditions::{self, READY};
use super::{patch_status_if_changed, Context};
use crate::api::{DeletionPolicy, McpAuthPolicy, McpAuthPolicyStatus, McpServer, FINALIZER};
use crate::desired::keycloak as desired;
use crate::{Error, Result};

pub const KEYCLOAK_REACHABLE: &str = "KeycloakReachable";
pub const REALM_CONFIGURED: &str = "RealmConfigured";
pub const REGISTRATION_POLICY_APPLIED: &str = "RegistrationPolicyApplied";

pub async fn reconcile(policy: Arc<McpAuthPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<McpAuthPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            Finalizer::Apply(p) => apply(p, &ctx, &api).await,
            Finalizer::Cleanup(p) => cleanup(p, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .record_reconcile("mcpauthpolicy", started.elapsed());
    result
}

/// Which condition an error belongs to.
#[derive(Clone, Copy)]
enum Stage {
    Connect,
    Realm,
    Registration,
}

async fn apply(
    policy: Arc<McpAuthPolicy>,
    ctx: &Context,
    api: &Api<McpAuthPolicy>,
) -> Result<Action> {
    let now = Time(jiff::Timestamp::now());
    let generation = policy.metadata.generation;
    let old = policy.status.clone();
    let mut status = old.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.issuer = Some(policy.issuer());

    let outcome = configure(&policy, ctx, &mut status, &now).await;
    let conds = &mut status.conditions;
    match &outcome {
        Ok(()) => {
            conditions::upsert(
                conds,
                READY,
                true,
                "Ready",
                "Keycloak realm configured",
                generation,
                &now,
            );
        }
        Err((stage, e)) => {
            let t = match stage {
                Stage::Connect => KEYCLOAK_REACHABLE,
                Stage::Realm => REALM_CONFIGURED,
                Stage::Registration => REGISTRATION_POLICY_APPLIED,
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
    patch_status_if_changed(api, policy.as_ref(), old.as_ref(), &status).await?;
    if was_ready != is_ready
        || (!is_ready
            && old
                .as_ref()
                .and_then(|s| conditions::find(&s.conditions, READY))
                .map(|c| c.reason.clone())
                != conditions::find(&status.conditions, READY).map(|c| c.reason.clone()))
    {
        let c = conditions::find(&status.conditions, READY)
            .cloned()
            .expect("Ready was just set");
        ctx.publish(&policy.object_ref(&()), !is_ready, &c.reason, c.message)
            .await;
    }
    match outcome {
        Ok(()) => {
            ctx.reset_failures(&policy.metadata.uid.clone().unwrap_or_default());
            Ok(Action::requeue(ctx.config.resync))
        }
        Err((_, e)) => Err(e),
    }
}

async fn configure(
    policy: &McpAuthPolicy,
    ctx: &Context,
    status: &mut McpAuthPolicyStatus,
    now: &Time,
) -> std::result::Result<(), (Stage, Error)> {
    let generation = policy.metadata.generation;
    let spec = &policy.spec;
    let realm = &spec.keycloak.realm;
    let conds = &mut status.conditions;

    let kc = ctx
        .keycloak_for(policy)
        .await
        .map_err(|e| (Stage::Connect, e))?;
    let realm_id = match kc.ensure_realm(realm, spec.keycloak.create_realm).await {
        Ok(id) => id,
        Err(e @ Error::Invalid { .. }) => return Err((Stage::Realm, e)),
        Err(e) => return Err((Stage::Connect, e)),
    };
    conditions::upsert(
        conds,
        KEYCLOAK_REACHABLE,
        true,
        "Connected",
        format!("admin API of {} answers", kc.base_url()),
        generation,
        now,
    );

    let realm_step = async {
        let existing = kc.client_scopes(realm).await?;
        let assignments = kc.realm_scope_assignments(realm).await?;
        for scope in &spec.scopes {
            let rep = desired::policy_scope(policy, scope);
            let id = kc.ensure_client_scope(realm, &existing, &rep, &[]).await?;
            kc.ensure_realm_scope_type(realm, &assignments, &id, scope.r#type)
                .await?;
        }
        Ok::<_, Error>(())
    };
    realm_step.await.map_err(|e| (Stage::Realm, e))?;
    let names: Vec<_> = spec.scopes.iter().map(|s| s.name.as_str()).collect();
    conditions::upsert(
        conds,
        REALM_CONFIGURED,
        true,
        "ScopesConfigured",
        format!("realm {realm} has client scopes {}", names.join(", ")),
        generation,
        now,
    );

    match desired::registration_policies(policy) {
        Some(rp) => {
            kc.ensure_registration_policies(realm, &realm_id, &rp)
                .await
                .map_err(|e| (Stage::Registration, e))?;
            let dcr = spec
                .dynamic_client_registration
                .as_ref()
                .expect("registration_policies implies a section");
            if dcr.enabled {
                status.registration_endpoint = Some(policy.registration_endpoint());
                conditions::upsert(
                    conds,
                    REGISTRATION_POLICY_APPLIED,
                    true,
                    "RegistrationOpen",
                    format!(
                        "anonymous registration allowed for hosts {}",
                        desired::trusted_hosts(dcr).join(", ")
                    ),
                    generation,
                    now,
                );
            } else {
                status.registration_endpoint = None;
                conditions::upsert(
                    conds,
                    REGISTRATION_POLICY_APPLIED,
                    true,
                    "RegistrationClosed",
                    "anonymous registration is closed",
                    generation,
                    now,
                );
            }
        }
        None => {
            status.registration_endpoint = None;
            conditions::upsert(conds, REGISTRATION_POLICY_APPLIED, true, "Unmanaged", "spec.dynamicClientRegistration is not set; registration policies are left as they are", generation, now);
        }
    }
    Ok(())
}

async fn cleanup(policy: Arc<McpAuthPolicy>, ctx: &Context) -> Result<Action> {
    let ns = policy.namespace().unwrap_or_default();
    let servers: Api<McpServer> = Api::namespaced(ctx.client.clone(), &ns);
    let users: Vec<String> = servers
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|s| s.spec.policy_ref.name == policy.name_any())
        .map(|s| s.name_any())
        .collect();
    if !users.is_empty() {
        // A policy is not torn down from under the servers that use it.
        return Err(Error::invalid(
            "PolicyInUse",
            format!("still referenced by McpServer(s) {}", users.join(", ")),
        ));
    }
    if policy.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    let result = async {
        let kc = ctx.keycloak_for(&policy).await?;
        let realm = &policy.spec.keycloak.realm;
        let Some(r) = kc.realm(realm).await? else {
            return Ok(());
        };
        let assignments = kc.realm_scope_assignments(realm).await?;
        let owner = policy.owner_marker();
        for s in kc.client_scopes(realm).await? {
            let ours = s
                .attributes
                .as_ref()
                .and_then(|a| a.get(crate::api::OWNER_ATTRIBUTE))
                == Some(&owner);
            if let (true, Some(id)) = (ours, s.id.as_deref()) {
                if assignments.default_ids.iter().any(|i| i == id) {
                    kc.remove_realm_default_scope(realm, id).await?;
                }
                if assignments.optional_ids.iter().any(|i| i == id) {
                    kc.remove_realm_optional_scope(realm, id).await?;
                }
                kc.delete_client_scope(realm, id).await?;
            }
        }
        if let Some(mut dcr) = policy.spec.dynamic_client_registration.clone() {
            // Close anonymous registration again (Keycloak's own default state).
            dcr.enabled = false;
            let mut closed = (*policy).clone();
            closed.spec.dynamic_client_registration = Some(dcr);
            if let (Some(rp), Some(id)) = (desired::registration_policies(&closed), r.id.as_deref())
            {
                kc.ensure_registration_policies(realm, id, &rp).await?;
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    match result {
        Ok(()) => Ok(Action::await_change()),
        Err(e) if ctx.namespace_terminating(&ns).await => {
            ctx.publish(
                &policy.object_ref(&()),
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
