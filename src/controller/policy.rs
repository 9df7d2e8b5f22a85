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
use crate::desired::cimd::{self, Admission, CimdClientPlan};
use crate::desired::keycloak as desired;
use crate::keycloak::KeycloakAdminClient;
use crate::{Error, Result};

pub const KEYCLOAK_REACHABLE: &str = "KeycloakReachable";
pub const REALM_CONFIGURED: &str = "RealmConfigured";
pub const REGISTRATION_POLICY_APPLIED: &str = "RegistrationPolicyApplied";
pub const CIMD_APPLIED: &str = "ClientIdMetadataDocumentsApplied";
/// `True` when the realm's clients are at >= 90% of `maxClients` (Keycloak's Max Clients policy
/// refuses anonymous registration at 100%), like a node's `DiskPressure`.
pub const CLIENT_LIMIT_PRESSURE: &str = "ClientLimitPressure";

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
    Cimd,
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
                Stage::Cimd => CIMD_APPLIED,
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

    client_limit_guard(policy, ctx, &kc, status, now)
        .await
        .map_err(|e| (Stage::Registration, e))?;

    let (reason, message) = apply_cimd(policy, ctx, &kc, false)
        .await
        .map_err(|e| (Stage::Cimd, e))?;
    conditions::upsert(
        &mut status.conditions,
        CIMD_APPLIED,
        true,
        reason,
        message,
        generation,
        now,
    );
    Ok(())
}

/// DCR guard rail: `status.realmClients` against `maxClients`, the `ClientLimitPressure`
/// condition, and a Warning event when the realm gets close to (>= 90%) or reaches the limit.
/// Counted with paged probes starting at the last count: one small read at steady state.
async fn client_limit_guard(
    policy: &McpAuthPolicy,
    ctx: &Context,
    kc: &KeycloakAdminClient,
    status: &mut McpAuthPolicyStatus,
    now: &Time,
) -> Result<()> {
    let Some(dcr) = &policy.spec.dynamic_client_registration else {
        status.realm_clients = None;
        status
            .conditions
            .retain(|c| c.type_ != CLIENT_LIMIT_PRESSURE);
        return Ok(());
    };
    let hint = status.realm_clients.and_then(|n| usize::try_from(n).ok());
    let count = kc.count_clients(&policy.spec.keycloak.realm, hint).await? as i64;
    status.realm_clients = Some(count);
    let (pressure, reason, message) = cimd::client_pressure(count, dcr.max_clients.into());
    let before =
        conditions::find(&status.conditions, CLIENT_LIMIT_PRESSURE).map(|c| c.reason.clone());
    if pressure && before.as_deref() != Some(reason) {
        ctx.publish(&policy.object_ref(&()), true, reason, message.clone())
            .await;
    }
    conditions::upsert(
        &mut status.conditions,
        CLIENT_LIMIT_PRESSURE,
        pressure,
        reason,
        message,
        policy.metadata.generation,
        now,
    );
    Ok(())
}

/// Client ID Metadata Documents: our client profile + policy in the realm (or their removal),
/// then the clients Keycloak created from documents. Admitted ones are marked as ours and get the
/// scopes they lack — Keycloak gives such a client the realm's default and optional scopes once,
/// when it first sees the document, so without this an MCP server added later could never be
/// requested (`invalid_scope`) by a client already known. Ours that are no longer admitted are
/// deleted: Keycloak would keep them as ordinary clients that still log users in.
/// `removing`: the policy is being deleted.
async fn apply_cimd(
    policy: &McpAuthPolicy,
    ctx: &Context,
    kc: &KeycloakAdminClient,
    removing: bool,
) -> Result<(&'static str, String)> {
    let realm = &policy.spec.keycloak.realm;
    let name = cimd::owned_name(policy);
    let owner = policy.owner_marker();
    let wanted = if removing {
        None
    } else {
        cimd::requested(policy)
    };
    if wanted.is_some() && !kc.cimd_supported(realm).await? {
        // Nothing is written: a profile naming the CIMD executor would be refused anyway.
        return Err(Error::invalid(
            "CimdFeatureDisabled",
            format!(
                "Keycloak at {} does not have the cimd feature (realm {realm}'s discovery document lacks client_id_metadata_document_supported): start it with --features=cimd (or KC_FEATURES=cimd), or remove spec.clientIdMetadataDocuments",
                kc.base_url()
            ),
        ));
    }
    let desired = wanted.map(|c| (cimd::profile(policy, c), cimd::client_policy(policy, c)));
    let before = kc
        .ensure_client_policy_pair(realm, &name, desired.as_ref().map(|(p, q)| (p, q)))
        .await?;
    let previously = before.as_ref().map(Admission::of_live);
    let admission = wanted.map(Admission::of);

    // Scopes every admitted client must be able to request: the policy's own, and the audience
    // scope of each server using this policy.
    let mut scopes: Vec<(String, crate::api::ScopeType)> = policy
        .spec
        .scopes
        .iter()
        .map(|s| (s.name.clone(), s.r#type))
        .collect();
    if admission.is_some() {
        let ns = policy.namespace().unwrap_or_default();
        let servers: Api<McpServer> = Api::namespaced(ctx.client.clone(), &ns);
        for s in servers.list(&ListParams::default()).await? {
            if s.spec.policy_ref.name == policy.name_any()
                && s.metadata.deletion_timestamp.is_none()
            {
                scopes.push((s.audience_scope(), crate::api::ScopeType::Optional));
            }
        }
    }

    let mut scope_ids: Option<std::collections::HashMap<String, String>> = None;
    let mut revoked = vec![];
    for client in kc.cimd_clients(realm).await? {
        let uuid = client.id.clone().unwrap_or_default();
        match cimd::plan_cimd_client(
            &client,
            &owner,
            previously.as_ref(),
            admission.as_ref(),
            &scopes,
        ) {
            CimdClientPlan::Ignore => {}
            CimdClientPlan::Revoke => {
                kc.delete_client(realm, &uuid).await?;
                revoked.push(client.client_id.clone().unwrap_or_default());
            }
            CimdClientPlan::Keep {
                mark,
                add_default,
                add_optional,
            } => {
                if mark {
                    kc.mark_client(realm, &client, &owner).await?;
                }
                let adds = add_default
                    .into_iter()
                    .map(|n| (n, crate::api::ScopeType::Default))
                    .chain(
                        add_optional
                            .into_iter()
                            .map(|n| (n, crate::api::ScopeType::Optional)),
                    );
                for (scope, ty) in adds {
                    if scope_ids.is_none() {
                        scope_ids = Some(
                            kc.client_scopes(realm)
                                .await?
                                .into_iter()
                                .filter_map(|s| Some((s.name?.to_string(), s.id?.to_string())))
                                .collect(),
                        );
                    }
                    // A server's scope not created yet: the next reconcile adds it.
                    if let Some(id) = scope_ids.as_ref().and_then(|m| m.get(&scope)) {
                        kc.add_client_scope(realm, &uuid, id, ty).await?;
                    }
                }
            }
        }
    }
    if !revoked.is_empty() {
        ctx.publish(
            &policy.object_ref(&()),
            false,
            "MetadataDocumentClientsRevoked",
            format!(
                "deleted {} client(s) created from metadata documents this policy no longer admits: {}",
                revoked.len(),
                revoked.join(", ")
            ),
        )
        .await;
    }

    Ok(match (wanted, &policy.spec.client_id_metadata_documents) {
        (Some(c), _) => (
            "Applied",
            format!(
                "Keycloak accepts client_id metadata documents ({}) from {}; client profile and policy {name}",
                cimd::schemes(c).join(", "),
                cimd::client_id_domains(c).join(", ")
            ),
        ),
        (None, Some(_)) => (
            "Disabled",
            "clientIdMetadataDocuments.enabled is false: this policy has no client profile or policy in the realm".to_string(),
        ),
        (None, None) => (
            "NotConfigured",
            "spec.clientIdMetadataDocuments is not set: this policy has no client profile or policy in the realm".to_string(),
        ),
    })
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
        // Our CIMD profile and policy, and the clients they admitted.
        apply_cimd(&policy, ctx, &kc, true).await?;
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
