//! McpAuthPolicy reconciler: realm, MCP client scopes, anonymous registration policies.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keycloak::types::RealmRepresentation;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Resource, ResourceExt};

use super::conditions::{self, Draft, READY};
use super::{patch_status_if_changed, Context};
use crate::admin::{Adopt, KeycloakAdminClient};
use crate::api::{
    DeletionPolicy, MachineGrant, McpAuthPolicy, McpAuthPolicyStatus, McpServer, FINALIZER,
    OWNER_ATTRIBUTE,
};
use crate::desired::cimd::{self, Admission, CimdClientPlan};
use crate::desired::realm::{self as desired, RealmClaim};
use crate::{Error, Result};

pub const KEYCLOAK_REACHABLE: &str = "KeycloakReachable";
pub const REALM_CONFIGURED: &str = "RealmConfigured";
pub const REGISTRATION_POLICY_APPLIED: &str = "RegistrationPolicyApplied";
pub const CIMD_APPLIED: &str = "ClientIdMetadataDocumentsApplied";
/// `True` when Keycloak refuses every grant that mints a token without a user (client
/// credentials, password, device code, token exchange) in the realm; `False` names what is open.
pub const MACHINE_GRANTS_REFUSED: &str = "MachineGrantsRefused";
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
    Grants,
    Cimd,
}

async fn apply(
    policy: Arc<McpAuthPolicy>,
    ctx: &Context,
    api: &Api<McpAuthPolicy>,
) -> Result<Action> {
    let old = policy.status.clone();
    let mut status = old.clone().unwrap_or_default();
    status.observed_generation = policy.metadata.generation;
    status.issuer = Some(policy.issuer());
    let now = Time(jiff::Timestamp::now());
    let mut d = Draft::new(status, policy.metadata.generation, now);

    let outcome = configure(&policy, ctx, api, &mut d).await;
    match &outcome {
        Ok(()) => d.set(READY, true, "Ready", "Keycloak realm configured"),
        Err((stage, e)) => {
            let t = match stage {
                Stage::Connect => KEYCLOAK_REACHABLE,
                Stage::Realm => REALM_CONFIGURED,
                Stage::Registration => REGISTRATION_POLICY_APPLIED,
                Stage::Grants => MACHINE_GRANTS_REFUSED,
                Stage::Cimd => CIMD_APPLIED,
            };
            d.set(t, false, e.reason(), e.to_string());
            d.set(READY, false, e.reason(), e.to_string());
        }
    }
    let status = d.status;
    let ready_of = |s: Option<&McpAuthPolicyStatus>| {
        s.and_then(|s| conditions::find(&s.conditions, READY))
            .cloned()
    };
    let (before, after) = (ready_of(old.as_ref()), ready_of(Some(&status)));
    patch_status_if_changed(api, policy.as_ref(), old.as_ref(), &status).await?;
    let after = after.expect("Ready was just set");
    let is_ready = after.status == "True";
    let flipped = before.as_ref().is_some_and(|c| c.status == "True") != is_ready;
    let new_reason = before.as_ref().map(|c| &c.reason) != Some(&after.reason);
    if flipped || (!is_ready && new_reason) {
        ctx.publish(
            &policy.object_ref(&()),
            !is_ready,
            &after.reason,
            after.message,
        )
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
    api: &Api<McpAuthPolicy>,
    d: &mut Draft<McpAuthPolicyStatus>,
) -> std::result::Result<(), (Stage, Error)> {
    let kc = ctx
        .keycloak_for(policy)
        .await
        .map_err(|e| (Stage::Connect, e))?;
    let realm_id = claim_realm(policy, &kc, api, d).await?;
    configure_scopes(policy, &kc, d)
        .await
        .map_err(|e| (Stage::Realm, e))?;
    configure_registration(policy, &kc, &realm_id, d)
        .await
        .map_err(|e| (Stage::Registration, e))?;
    refuse_machine_grants(policy, &kc, d)
        .await
        .map_err(|e| (Stage::Grants, e))?;
    client_limit_guard(policy, ctx, &kc, d)
        .await
        .map_err(|e| (Stage::Registration, e))?;
    let (reason, message) = apply_cimd(policy, ctx, &kc, false)
        .await
        .map_err(|e| (Stage::Cimd, e))?;
    d.set(CIMD_APPLIED, true, reason, message);
    Ok(())
}

/// Records `realm` in status before the first Keycloak write (realm creation or the claim), so
/// deletion knows whether there is anything to clean up — and that nothing was ever written when
/// it is not there. No write once recorded.
async fn write_ahead(
    policy: &McpAuthPolicy,
    api: &Api<McpAuthPolicy>,
    status: &mut McpAuthPolicyStatus,
) -> Result<()> {
    let realm = &policy.spec.keycloak.realm;
    let recorded = policy
        .status
        .as_ref()
        .and_then(|s| s.keycloak_realm.as_ref());
    if recorded == Some(realm) {
        return Ok(());
    }
    status.keycloak_realm = Some(realm.clone());
    patch_status_if_changed(api, policy, None, &*status).await
}

/// The realm as Keycloak has it, created first if the spec asks for it.
async fn live_realm(
    policy: &McpAuthPolicy,
    kc: &KeycloakAdminClient,
    api: &Api<McpAuthPolicy>,
    d: &mut Draft<McpAuthPolicyStatus>,
) -> std::result::Result<RealmRepresentation, (Stage, Error)> {
    let spec = &policy.spec.keycloak;
    let realm = &spec.realm;
    if let Some(r) = kc.realm(realm).await.map_err(|e| (Stage::Connect, e))? {
        return Ok(r);
    }
    if !spec.create_realm {
        let message = format!("realm {realm} does not exist in Keycloak and createRealm is false");
        return Err((Stage::Realm, Error::invalid("RealmNotFound", message)));
    }
    let created = async {
        write_ahead(policy, api, &mut d.status).await?;
        kc.create_realm(realm).await?;
        kc.realm(realm).await
    };
    Ok(created
        .await
        .map_err(|e| (Stage::Realm, e))?
        .unwrap_or_default())
}

fn realm_owner(r: &RealmRepresentation) -> Option<String> {
    let attributes = r.attributes.as_ref()?;
    attributes.get(OWNER_ATTRIBUTE).map(|v| v.to_string())
}

/// The realm's id, once this policy holds the realm: it claims a free realm (the owner marker
/// as a realm attribute, so every operator replica and every operator agrees), and writes
/// nothing to a realm another policy holds (`RealmClaimed`).
async fn claim_realm(
    policy: &McpAuthPolicy,
    kc: &KeycloakAdminClient,
    api: &Api<McpAuthPolicy>,
    d: &mut Draft<McpAuthPolicyStatus>,
) -> std::result::Result<String, (Stage, Error)> {
    let realm = &policy.spec.keycloak.realm;
    let live = live_realm(policy, kc, api, d).await?;
    let reachable = format!("admin API of {} answers", kc.base_url());
    d.set(KEYCLOAK_REACHABLE, true, "Connected", reachable);
    let me = policy.owner_marker();
    let claimed_by = |other: String| {
        (Stage::Realm, Error::invalid(
            "RealmClaimed",
            format!("realm {realm} is managed by {other}; this policy writes nothing to it (to hand it over, delete that policy: its claim is released)"),
        ))
    };
    match desired::realm_claim(realm_owner(&live).as_deref(), &me) {
        RealmClaim::Ours => {}
        RealmClaim::Other(other) => return Err(claimed_by(other)),
        RealmClaim::Free => {
            let claim = async {
                write_ahead(policy, api, &mut d.status).await?;
                kc.set_realm_attribute(realm, OWNER_ATTRIBUTE, &me).await?;
                // Two claims at once: the last write wins, and the loser finds out here.
                kc.realm(realm).await
            };
            let after = claim.await.map_err(|e| (Stage::Realm, e))?;
            let owner = after.as_ref().and_then(realm_owner);
            if let RealmClaim::Other(other) = desired::realm_claim(owner.as_deref(), &me) {
                return Err(claimed_by(other));
            }
        }
    }
    let no_id = || Error::KeycloakApi {
        operation: "read realm".into(),
        status: 200,
        message: "realm has no id".into(),
    };
    live.id
        .map(|id| id.to_string())
        .ok_or_else(|| (Stage::Realm, no_id()))
}

/// The policy's client scopes, each a realm default or optional scope as the spec says.
async fn configure_scopes(
    policy: &McpAuthPolicy,
    kc: &KeycloakAdminClient,
    d: &mut Draft<McpAuthPolicyStatus>,
) -> Result<()> {
    let realm = &policy.spec.keycloak.realm;
    let existing = kc.client_scopes(realm).await?;
    let assignments = kc.realm_scope_assignments(realm).await?;
    for scope in &policy.spec.scopes {
        let rep = desired::policy_scope(policy, scope);
        let id = kc
            .ensure_client_scope(realm, &existing, &rep, &[], Adopt::PolicyScopes)
            .await?;
        kc.ensure_realm_scope_type(realm, &assignments, &id, scope.r#type)
            .await?;
    }
    let names: Vec<_> = policy.spec.scopes.iter().map(|s| s.name.as_str()).collect();
    let message = format!(
        "realm {realm} is managed by this policy and has client scopes {}",
        names.join(", ")
    );
    d.set(REALM_CONFIGURED, true, "ScopesConfigured", message);
    Ok(())
}

/// Anonymous registration policies, when the spec manages them.
async fn configure_registration(
    policy: &McpAuthPolicy,
    kc: &KeycloakAdminClient,
    realm_id: &str,
    d: &mut Draft<McpAuthPolicyStatus>,
) -> Result<()> {
    let realm = &policy.spec.keycloak.realm;
    let (Some(rp), Some(dcr)) = (
        desired::registration_policies(policy),
        policy.spec.dynamic_client_registration.as_ref(),
    ) else {
        d.status.registration_endpoint = None;
        let message =
            "spec.dynamicClientRegistration is not set; registration policies are left as they are";
        d.set(REGISTRATION_POLICY_APPLIED, true, "Unmanaged", message);
        return Ok(());
    };
    let foreign = kc
        .ensure_registration_policies(realm, realm_id, &rp)
        .await?;
    let also = if foreign.is_empty() {
        String::new()
    } else {
        format!(
            "; further anonymous policies not managed by the operator also apply: {}",
            foreign.join(", ")
        )
    };
    if dcr.enabled {
        d.status.registration_endpoint = Some(policy.registration_endpoint());
        let hosts = desired::trusted_hosts(dcr).join(", ");
        let message = format!("anonymous registration allowed for hosts {hosts}{also}");
        d.set(
            REGISTRATION_POLICY_APPLIED,
            true,
            "RegistrationOpen",
            message,
        );
    } else {
        d.status.registration_endpoint = None;
        let message = format!("anonymous registration is closed{also}");
        d.set(
            REGISTRATION_POLICY_APPLIED,
            true,
            "RegistrationClosed",
            message,
        );
    }
    Ok(())
}

/// The grant the operator's own admin credentials use, when they authenticate in the managed
/// realm itself: the one machine grant the realm cannot refuse.
fn admin_grant(policy: &McpAuthPolicy, kc: &KeycloakAdminClient) -> Option<MachineGrant> {
    let k = &policy.spec.keycloak;
    let auth_realm = k.admin_credentials_secret_ref.auth_realm.as_deref();
    (auth_realm.unwrap_or(super::DEFAULT_AUTH_REALM) == k.realm).then(|| kc.grant())
}

/// Keycloak refuses grants without a user for every client of the realm, but those the spec
/// opens (condition `MachineGrantsRefused` lists what stays open and why).
async fn refuse_machine_grants(
    policy: &McpAuthPolicy,
    kc: &KeycloakAdminClient,
    d: &mut Draft<McpAuthPolicyStatus>,
) -> Result<()> {
    let realm = &policy.spec.keycloak.realm;
    let admin = admin_grant(policy, kc);
    let refused = desired::refused_grants(policy, admin);
    let wanted = desired::user_grants_only(&refused);
    kc.ensure_client_policy_pair(
        realm,
        desired::USER_GRANTS_ONLY,
        wanted.as_ref().map(|(p, q)| (p, q)),
    )
    .await?;
    let names = |gs: &[MachineGrant]| {
        gs.iter()
            .map(|g| g.grant_type())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let open: Vec<MachineGrant> = MachineGrant::ALL
        .into_iter()
        .filter(|g| !refused.contains(g))
        .collect();
    let (ok, reason) = match (open.is_empty(), admin) {
        (true, _) => (true, "AllRefused"),
        (false, Some(g)) if open == [g] => (false, "AdminGrantOpen"),
        (false, _) => (false, "MachineGrantsAllowed"),
    };
    let mut message = format!(
        "Keycloak refuses {} in realm {realm}",
        if refused.is_empty() {
            "nothing".into()
        } else {
            names(&refused)
        }
    );
    if !open.is_empty() {
        message.push_str(&format!(
            "; open: {} (spec.allowedMachineGrants",
            names(&open)
        ));
        if let Some(g) = admin {
            message.push_str(&format!(
                ", and {} because the operator's admin credentials authenticate in this realm",
                g.grant_type()
            ));
        }
        message.push(')');
    }
    d.set(MACHINE_GRANTS_REFUSED, ok, reason, message);
    Ok(())
}

/// DCR guard rail: `status.realmClients` against `maxClients`, the `ClientLimitPressure`
/// condition, and a Warning event when the realm gets close to (>= 90%) or reaches the limit.
/// Counted with paged probes starting at the last count: one small read at steady state.
async fn client_limit_guard(
    policy: &McpAuthPolicy,
    ctx: &Context,
    kc: &KeycloakAdminClient,
    d: &mut Draft<McpAuthPolicyStatus>,
) -> Result<()> {
    let Some(dcr) = &policy.spec.dynamic_client_registration else {
        d.status.realm_clients = None;
        d.status
            .conditions
            .retain(|c| c.type_ != CLIENT_LIMIT_PRESSURE);
        return Ok(());
    };
    let hint = d.status.realm_clients.and_then(|n| usize::try_from(n).ok());
    let count = kc.count_clients(&policy.spec.keycloak.realm, hint).await? as i64;
    d.status.realm_clients = Some(count);
    let (pressure, reason, message) = cimd::client_pressure(count, dcr.max_clients.into());
    let before =
        conditions::find(&d.status.conditions, CLIENT_LIMIT_PRESSURE).map(|c| c.reason.clone());
    if pressure && before.as_deref() != Some(reason) {
        ctx.publish(&policy.object_ref(&()), true, reason, message.clone())
            .await;
    }
    d.set(CLIENT_LIMIT_PRESSURE, pressure, reason, message);
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
        for s in ctx.servers_in(&ns).await? {
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
    if !wrote_to_keycloak(&policy, ctx).await? {
        // Released at once, even when its Keycloak is unreachable: there is nothing to undo.
        return Ok(Action::await_change());
    }
    let result = release_realm(&policy, ctx).await;
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

/// Whether the policy ever wrote to Keycloak (`status.keycloakRealm`, recorded before the first
/// write). The cached object may predate that status write: the API server has the last word.
async fn wrote_to_keycloak(policy: &McpAuthPolicy, ctx: &Context) -> Result<bool> {
    let recorded = |p: &McpAuthPolicy| {
        p.status
            .as_ref()
            .is_some_and(|s| s.keycloak_realm.is_some())
    };
    if recorded(policy) {
        return Ok(true);
    }
    let api: Api<McpAuthPolicy> =
        Api::namespaced(ctx.client.clone(), &policy.namespace().unwrap_or_default());
    Ok(api
        .get_opt(&policy.name_any())
        .await?
        .is_some_and(|p| recorded(&p)))
}

/// Undoes what the policy wrote (with `deletionPolicy: Delete`) and releases its claim — only in
/// a realm it holds: another policy's realm is left exactly as it is.
async fn release_realm(policy: &McpAuthPolicy, ctx: &Context) -> Result<()> {
    let kc = ctx.keycloak_for_cleanup(policy).await?;
    let realm = &policy.spec.keycloak.realm;
    let Some(live) = kc.realm(realm).await? else {
        return Ok(());
    };
    let owner = realm_owner(&live);
    if desired::realm_claim(owner.as_deref(), &policy.owner_marker()) != RealmClaim::Ours {
        return Ok(());
    }
    if policy.spec.deletion_policy == DeletionPolicy::Delete {
        remove_from_realm(policy, ctx, &kc, live.id.as_deref().unwrap_or_default()).await?;
    }
    kc.set_realm_attribute(realm, OWNER_ATTRIBUTE, "").await
}

/// `deletionPolicy: Delete`: the policy's scopes, its CIMD profile, policy and admitted
/// clients, the grant refusal, and anonymous registration closed again (Keycloak's default).
async fn remove_from_realm(
    policy: &McpAuthPolicy,
    ctx: &Context,
    kc: &KeycloakAdminClient,
    realm_id: &str,
) -> Result<()> {
    let realm = &policy.spec.keycloak.realm;
    let assignments = kc.realm_scope_assignments(realm).await?;
    let owner = policy.owner_marker();
    for s in kc.client_scopes(realm).await? {
        let ours = s.attributes.as_ref().and_then(|a| a.get(OWNER_ATTRIBUTE)) == Some(&owner);
        if let (true, Some(id)) = (ours, s.id.as_deref()) {
            kc.remove_realm_scope(realm, &assignments, id).await?;
            kc.delete_client_scope(realm, id).await?;
        }
    }
    apply_cimd(policy, ctx, kc, true).await?;
    kc.ensure_client_policy_pair(realm, desired::USER_GRANTS_ONLY, None)
        .await?;
    if let Some(mut dcr) = policy.spec.dynamic_client_registration.clone() {
        dcr.enabled = false;
        let mut closed = policy.clone();
        closed.spec.dynamic_client_registration = Some(dcr);
        if let Some(rp) = desired::registration_policies(&closed) {
            kc.ensure_registration_policies(realm, realm_id, &rp)
                .await?;
        }
    }
    Ok(())
}
