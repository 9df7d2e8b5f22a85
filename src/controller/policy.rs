//! McpAuthPolicy reconciler: realm, MCP client scopes, anonymous registration policies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keycloak::types::{ClientRepresentation, RealmRepresentation};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::conditions::*;
use super::finish::{cleanup_keycloak, finish, At, Reconciled, Staged};
use super::reaping;
use super::ssa::patch_status_if_changed;
use super::Context;
use crate::admin::{Adopt, KeycloakAdminClient};
use crate::api::{
    ActiveAudience, DeletionPolicy, MachineGrant, McpAuthPolicy, McpAuthPolicyStatus, McpServer,
    ReapingStatus, ScopeType, OWNER_ATTRIBUTE,
};
use crate::desired::audience;
use crate::desired::cimd::{self, Admission, CimdClientPlan};
use crate::desired::plan::ClientPolicyLists;
use crate::desired::realm::{self as desired, RealmClaim};
use crate::desired::reaping::{Coverage, Origin, Settings};
use crate::metrics::RealmLabels;
use crate::{Error, Result};

/// How soon clients registered anonymously can request every MCP scope (see
/// [`Run::open_registered_clients`]): Keycloak gives them only the scopes they registered with.
pub const REGISTRATION_SWEEP: Duration = Duration::from_secs(15);

impl Reconciled for McpAuthPolicy {
    type Status = McpAuthPolicyStatus;
    const CONTROLLER: &'static str = "mcpauthpolicy";

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn apply(
        policy: Arc<McpAuthPolicy>,
        ctx: &Context,
        api: &Api<McpAuthPolicy>,
    ) -> Result<Action> {
        let old = policy.status.as_ref();
        let mut d = Draft::begin(old, policy.metadata.generation);
        d.status.issuer = Some(policy.issuer());
        let (d, outcome) = match ctx.keycloak_for(&policy).await {
            Err(e) => (d, Err((KEYCLOAK_REACHABLE, e))),
            Ok(kc) => {
                let realm = &policy.spec.keycloak.realm;
                let mut run = Run {
                    policy: &policy,
                    realm,
                    ctx,
                    api,
                    kc,
                    d,
                    client_policies: None,
                };
                let outcome = run.configure().await;
                (run.d, outcome)
            }
        };
        finish(ctx, api, policy.as_ref(), d, outcome).await
    }

    /// With anonymous registration open, newly registered clients are given the scopes they
    /// lack (step-up) within [`REGISTRATION_SWEEP`], not only at the resync.
    fn requeue_after(&self, ctx: &Context) -> Duration {
        let dcr = self.spec.dynamic_client_registration.as_ref();
        let reaping = !reaping::settings(self).is_empty();
        match dcr.is_some_and(|d| d.enabled) || reaping {
            true => ctx.config.resync.min(REGISTRATION_SWEEP),
            false => ctx.config.resync,
        }
    }

    async fn cleanup(policy: Arc<McpAuthPolicy>, ctx: &Context) -> Result<Action> {
        ctx.metrics
            .record_realm_clients(realm_labels(&policy), None);
        let ns = policy.namespace().unwrap_or_default();
        // Listed, not from the store: a server created a moment ago must hold the policy too.
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
        cleanup_keycloak(ctx, policy.as_ref(), release_realm(&policy, ctx)).await
    }
}

/// One reconcile of a policy: what its stages read, and the status they build.
struct Run<'a> {
    policy: &'a McpAuthPolicy,
    realm: &'a str,
    ctx: &'a Context,
    api: &'a Api<McpAuthPolicy>,
    kc: Arc<KeycloakAdminClient>,
    d: Draft<McpAuthPolicyStatus>,
    /// The realm's client profiles and policies, read once for both pairs this reconcile
    /// sets (the grant refusal, metadata documents), kept as written.
    client_policies: Option<ClientPolicyLists>,
}

impl Run<'_> {
    /// The stages, in order; each failure is reported on its own condition.
    async fn configure(&mut self) -> Staged<()> {
        let realm_id = self.claim_realm().await?;
        let mode = self.choose_audience().await.at(AUDIENCE_MODE)?;
        self.configure_scopes().await.at(REALM_CONFIGURED)?;
        self.configure_registration(&realm_id)
            .await
            .at(REGISTRATION_POLICY_APPLIED)?;
        self.refuse_machine_grants()
            .await
            .at(MACHINE_GRANTS_REFUSED)?;
        // The scopes admitted clients need: computed once for the sweep and for CIMD.
        let wanted = admitted_scopes(self.policy, self.ctx, mode)
            .await
            .at(REGISTRATION_POLICY_APPLIED)?;
        let listed = self
            .open_registered_clients(&wanted)
            .await
            .at(REGISTRATION_POLICY_APPLIED)?;
        let candidates = listed.as_ref().map(|(l, _)| l.as_slice());
        let reaped = self.reap_abandoned(candidates).await.at(REAPING)?;
        let count = listed.map(|(_, total)| total.saturating_sub(reaped));
        self.client_limit_guard(count)
            .await
            .at(REGISTRATION_POLICY_APPLIED)?;
        let (policy, ctx, kc) = (self.policy, self.ctx, self.kc.clone());
        let lists = self.client_policy_lists().await.at(CIMD_APPLIED)?;
        let (reason, message) = apply_cimd(policy, ctx, &kc, &wanted, lists)
            .await
            .at(CIMD_APPLIED)?;
        self.d.set(CIMD_APPLIED, true, reason, message);
        self.d
            .set(READY, true, "Ready", "Keycloak realm configured");
        Ok(())
    }

    /// Records `realm` in status before the first Keycloak write (realm creation or the
    /// claim), so deletion knows whether there is anything to clean up — and that nothing was
    /// ever written when it is not there. No write once recorded.
    async fn write_ahead(&mut self) -> Result<()> {
        let status = self.policy.status.as_ref();
        if status.and_then(|s| s.keycloak_realm.as_deref()) == Some(self.realm) {
            return Ok(());
        }
        self.d.status.keycloak_realm = Some(self.realm.to_string());
        patch_status_if_changed(self.ctx, self.api, self.policy, None, &self.d.status).await
    }

    /// The realm as Keycloak has it, created first if the spec asks for it.
    async fn live_realm(&mut self) -> Staged<RealmRepresentation> {
        let (realm, kc) = (self.realm, self.kc.clone());
        if let Some(r) = kc.realm(realm).await.at(KEYCLOAK_REACHABLE)? {
            return Ok(r);
        }
        if !self.policy.spec.keycloak.create_realm {
            let message =
                format!("realm {realm} does not exist in Keycloak and createRealm is false");
            return Err((REALM_CONFIGURED, Error::invalid("RealmNotFound", message)));
        }
        let created = async {
            self.write_ahead().await?;
            kc.create_realm(realm).await?;
            kc.realm(realm).await
        };
        Ok(created.await.at(REALM_CONFIGURED)?.unwrap_or_default())
    }

    /// The realm's id, once this policy holds the realm: it claims a free realm (the owner
    /// marker as a realm attribute, so every operator replica and every operator agrees), and
    /// writes nothing to a realm another policy holds (`RealmClaimed`).
    async fn claim_realm(&mut self) -> Staged<String> {
        let (realm, kc) = (self.realm, self.kc.clone());
        let live = self.live_realm().await?;
        let reachable = format!("admin API of {} answers", kc.base_url());
        self.d.set(KEYCLOAK_REACHABLE, true, "Connected", reachable);
        let me = self.policy.owner_marker();
        let claimed_by = |other: String| {
            (REALM_CONFIGURED, Error::invalid(
                "RealmClaimed",
                format!("realm {realm} is managed by {other}; this policy writes nothing to it (to hand it over, delete that policy: its claim is released)"),
            ))
        };
        match desired::realm_claim(realm_owner(&live).as_deref(), &me) {
            RealmClaim::Ours => {}
            RealmClaim::Other(other) => return Err(claimed_by(other)),
            RealmClaim::Free => {
                let claim = async {
                    self.write_ahead().await?;
                    kc.set_realm_attribute(realm, OWNER_ATTRIBUTE, &me).await?;
                    // Two claims at once: the last write wins, and the loser finds out here.
                    kc.realm(realm).await
                };
                let after = claim.await.at(REALM_CONFIGURED)?;
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
            .ok_or_else(|| (REALM_CONFIGURED, no_id()))
    }

    /// The audience mode for the policy's servers: `spec.audience` against the features of
    /// this Keycloak, decided before anything mode-specific is written (a mode Keycloak cannot
    /// serve fails here, and the servers wait with `PolicyNotReady`).
    async fn choose_audience(&mut self) -> Result<ActiveAudience> {
        let feature = self.kc.resource_indicators().await?;
        let requested = self.policy.spec.audience;
        let choice = audience::choose(requested, feature, self.kc.base_url());
        let choice = choice.inspect_err(|_| self.d.status.audience_mode = None)?;
        self.d.status.audience_mode = Some(choice.mode);
        self.d
            .set(AUDIENCE_MODE, true, choice.reason, choice.message);
        Ok(choice.mode)
    }

    /// The policy's client scopes, each a realm default or optional scope as the spec says.
    async fn configure_scopes(&mut self) -> Result<()> {
        let (policy, realm, kc) = (self.policy, self.realm, &self.kc);
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
        let names = names.join(", ");
        let message =
            format!("realm {realm} is managed by this policy and has client scopes {names}");
        self.d
            .set(REALM_CONFIGURED, true, "ScopesConfigured", message);
        Ok(())
    }

    /// Anonymous registration policies, when the spec manages them.
    async fn configure_registration(&mut self, realm_id: &str) -> Result<()> {
        let policy = self.policy;
        let (Some(rp), Some(dcr)) = (
            desired::registration_policies(policy),
            policy.spec.dynamic_client_registration.as_ref(),
        ) else {
            self.d.status.registration_endpoint = None;
            let message =
                "spec.dynamicClientRegistration is not set; registration policies are left as they are";
            self.d
                .set(REGISTRATION_POLICY_APPLIED, true, "Unmanaged", message);
            return Ok(());
        };
        let kc = &self.kc;
        let foreign = kc
            .ensure_registration_policies(self.realm, realm_id, &rp)
            .await?;
        let also = match foreign.is_empty() {
            true => String::new(),
            false => format!(
                "; further anonymous policies not managed by the operator also apply: {}",
                foreign.join(", ")
            ),
        };
        let (reason, message) = if dcr.enabled {
            self.d.status.registration_endpoint = Some(policy.registration_endpoint());
            let hosts = desired::trusted_hosts(dcr).join(", ");
            (
                "RegistrationOpen",
                format!("anonymous registration allowed for hosts {hosts}{also}"),
            )
        } else {
            self.d.status.registration_endpoint = None;
            (
                "RegistrationClosed",
                format!("anonymous registration is closed{also}"),
            )
        };
        self.d
            .set(REGISTRATION_POLICY_APPLIED, true, reason, message);
        Ok(())
    }

    /// Keycloak refuses grants without a user for every client of the realm, but those the
    /// spec opens (condition `MachineGrantsRefused` lists what stays open and why).
    async fn refuse_machine_grants(&mut self) -> Result<()> {
        let admin = admin_grant(self.policy, &self.kc);
        let refused = desired::refused_grants(self.policy, admin);
        let wanted = desired::user_grants_only(&refused);
        let wanted = wanted.as_ref().map(|(p, q)| (p, q));
        let (kc, realm) = (self.kc.clone(), self.realm);
        let lists = self.client_policy_lists().await?;
        kc.ensure_client_policy_pair_in(realm, lists, desired::USER_GRANTS_ONLY, wanted)
            .await?;
        let (ok, reason, message) = grants_verdict(self.realm, &refused, admin);
        self.d.set(MACHINE_GRANTS_REFUSED, ok, reason, message);
        Ok(())
    }

    /// The realm's client profiles and policies as this reconcile last read or wrote them.
    async fn client_policy_lists(&mut self) -> Result<&mut ClientPolicyLists> {
        if self.client_policies.is_none() {
            self.client_policies = Some(self.kc.client_policy_lists(self.realm).await?);
        }
        Ok(self.client_policies.as_mut().expect("read above"))
    }

    /// DCR guard rail: `status.realmClients` against `maxClients`, the `ClientLimitPressure`
    /// condition, and a Warning event when the realm gets close to (>= 90%) or reaches the
    /// limit. `listed` is the count when the registration sweep just read every client;
    /// otherwise counted with paged probes starting at the last count (one small read at
    /// steady state).
    async fn client_limit_guard(&mut self, listed: Option<usize>) -> Result<()> {
        let d = &mut self.d;
        let Some(dcr) = &self.policy.spec.dynamic_client_registration else {
            d.status.realm_clients = None;
            d.remove(CLIENT_LIMIT_PRESSURE);
            self.ctx
                .metrics
                .record_realm_clients(realm_labels(self.policy), None);
            return Ok(());
        };
        let count = match listed {
            Some(n) => n,
            None => {
                let hint = d.status.realm_clients.and_then(|n| usize::try_from(n).ok());
                self.kc.count_clients(self.realm, hint).await?
            }
        } as i64;
        d.status.realm_clients = Some(count);
        let counts = Some((count, dcr.max_clients.into()));
        self.ctx
            .metrics
            .record_realm_clients(realm_labels(self.policy), counts);
        let (pressure, reason, message) = cimd::client_pressure(count, dcr.max_clients.into());
        let before = d.get(CLIENT_LIMIT_PRESSURE).map(|c| c.reason.clone());
        if pressure && before.as_deref() != Some(reason) {
            let note = message.clone();
            self.ctx
                .publish(&self.policy.object_ref(&()), true, reason, note)
                .await;
        }
        d.set(CLIENT_LIMIT_PRESSURE, pressure, reason, message);
        Ok(())
    }
}

fn realm_labels(policy: &McpAuthPolicy) -> RealmLabels {
    RealmLabels {
        namespace: policy.namespace().unwrap_or_default(),
        policy: policy.name_any(),
        realm: policy.spec.keycloak.realm.clone(),
    }
}

impl Run<'_> {
    /// Clients registered anonymously get every MCP scope they lack (see
    /// [`cimd::registered_client_scopes`]), so step-up to a per-tool scope, or a second server,
    /// works for them. Nothing is written for clients already in sync. Returns the realm's
    /// [`cimd::registration_candidate`]s and its number of clients (read anyway), or `None`
    /// when registration is closed and nothing was read.
    async fn open_registered_clients(
        &mut self,
        wanted: &[(String, ScopeType)],
    ) -> Result<Option<(Vec<ClientRepresentation>, usize)>> {
        let enabled = self.policy.spec.dynamic_client_registration.as_ref();
        if !enabled.is_some_and(|d| d.enabled) {
            return Ok(None);
        }
        let mut scope_ids = ScopeIds::default();
        let (clients, total) = self.kc.registration_candidates(self.realm).await?;
        for client in &clients {
            let adds = cimd::registered_client_scopes(client, wanted);
            let adds = adds.into_iter().map(|n| (n, ScopeType::Optional));
            add_scopes(&self.kc, self.realm, client, adds, &mut scope_ids).await?;
        }
        Ok(Some((clients, total)))
    }

    /// Deletes abandoned clients (see [`reaping`]); `listed` are the realm's registration
    /// candidates when already read. Returns how many were deleted.
    async fn reap_abandoned(&mut self, listed: Option<&[ClientRepresentation]>) -> Result<usize> {
        let settings = reaping::settings(self.policy);
        if settings.is_empty() {
            self.d.status.reaping = None;
            self.d.remove(REAPING);
            return Ok(0);
        }
        let now = jiff::Timestamp::now();
        let coverage = self.event_coverage(&settings, now).await?;
        let read;
        let clients = match listed {
            Some(l) => l,
            None if !settings.contains_key(&Origin::Registered) => {
                read = self.kc.cimd_clients(self.realm).await?;
                &read
            }
            None => {
                read = self.kc.registration_candidates(self.realm).await?.0;
                &read
            }
        };
        let owner = self.policy.owner_marker();
        let now_ms = now.as_millisecond();
        let pass = reaping::pass(
            &self.kc, self.realm, &owner, &settings, clients, &coverage, now_ms,
        );
        let pass = pass.await?;
        self.report_reaping(&settings, &pass, &coverage, now).await;
        Ok(pass.deleted.len())
    }

    /// Makes Keycloak store the events reaping reads, for long enough, and returns since when
    /// they cover every use: the recorded time, or now when the settings had to be written (or
    /// nothing was recorded) — events from before are not trusted to be complete.
    async fn event_coverage(
        &mut self,
        settings: &HashMap<Origin, Settings>,
        now: jiff::Timestamp,
    ) -> Result<Coverage> {
        let retention = settings
            .values()
            .map(Settings::retention)
            .max()
            .unwrap_or_default();
        let written = self.kc.ensure_events_stored(self.realm, retention).await?;
        let old = self.d.status.reaping.as_ref();
        let recorded = old.and_then(|r| r.events_since.as_deref());
        let recorded = recorded.and_then(|s| s.parse::<jiff::Timestamp>().ok());
        let since = match recorded {
            Some(t) if !written => t,
            _ => now,
        };
        // Recorded now, not after the pass: if the pass fails, the next reconcile must still
        // know that coverage restarted here.
        let mut status = self.d.status.reaping.clone().unwrap_or_default();
        status.events_since = Some(since.to_string());
        self.d.status.reaping = Some(status);
        Ok(Coverage {
            since_ms: since.as_millisecond(),
            retention,
        })
    }

    /// Status, condition, metric and events for one reaping pass.
    async fn report_reaping(
        &mut self,
        settings: &HashMap<Origin, Settings>,
        pass: &reaping::Pass,
        coverage: &Coverage,
        now: jiff::Timestamp,
    ) {
        let old = self.d.status.reaping.clone();
        let since = coverage_since(coverage);
        let next = reaping::next_status(old.as_ref(), since.clone(), pass, &now.to_string());
        let obj = self.policy.object_ref(&());
        for (_, o) in &pass.deleted {
            self.ctx.metrics.record_reaped(reaping::kind(*o), 1);
        }
        if !pass.deleted.is_empty() {
            let ids: Vec<_> = pass.deleted.iter().map(|(id, _)| id.as_str()).collect();
            let note = format!(
                "deleted {} abandoned client(s): {}",
                ids.len(),
                ids.join(", ")
            );
            self.ctx.publish(&obj, false, "ClientsReaped", note).await;
        }
        let dry_changed =
            old.map(|o| o.dry_run_candidates) != Some(next.dry_run_candidates.clone());
        if !next.dry_run_candidates.is_empty() && dry_changed {
            let ids = next.dry_run_candidates.join(", ");
            let note = format!(
                "dryRun: would delete {} abandoned client(s): {ids}",
                next.dry_run_candidates.len()
            );
            self.ctx.publish(&obj, false, "ReapingDryRun", note).await;
        }
        let dry = settings.values().any(|s| s.dry_run);
        let (reason, message) = reaping_verdict(dry, &since, &next);
        self.d.status.reaping = Some(next);
        self.d.set(REAPING, true, reason, message);
    }
}

fn coverage_since(c: &Coverage) -> String {
    jiff::Timestamp::from_millisecond(c.since_ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The `Reaping` condition's reason and message; stable while nothing is reaped.
fn reaping_verdict(dry: bool, since: &str, s: &ReapingStatus) -> (&'static str, String) {
    let reason = if dry { "DryRun" } else { "Active" };
    let last = s.last_reaped_at.as_deref().unwrap_or("never");
    let message = format!(
        "clients unused (no session, no stored login, code-to-token or refresh event) for idleAfter are deleted once older than minAge; Keycloak's login events cover use since {since}; {} reaped in total, last {last}",
        s.reaped_total
    );
    (reason, message)
}

fn realm_owner(r: &RealmRepresentation) -> Option<String> {
    let attributes = r.attributes.as_ref()?;
    attributes.get(OWNER_ATTRIBUTE).map(|v| v.to_string())
}

/// The grant the operator's own admin credentials use, when they authenticate in the managed
/// realm itself: the one machine grant the realm cannot refuse.
fn admin_grant(policy: &McpAuthPolicy, kc: &KeycloakAdminClient) -> Option<MachineGrant> {
    let k = &policy.spec.keycloak;
    let auth_realm = k.admin_credentials_secret_ref.auth_realm.as_deref();
    (auth_realm.unwrap_or(super::DEFAULT_AUTH_REALM) == k.realm).then(|| kc.grant())
}

/// The `MachineGrantsRefused` condition for what the realm refuses (`refused`), given the grant
/// of the admin credentials when they authenticate in this realm (`admin`).
fn grants_verdict(
    realm: &str,
    refused: &[MachineGrant],
    admin: Option<MachineGrant>,
) -> (bool, &'static str, String) {
    let names = |gs: &[MachineGrant]| {
        let names: Vec<_> = gs.iter().map(|g| g.grant_type()).collect();
        names.join(", ")
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
    let refused = if refused.is_empty() {
        "nothing".into()
    } else {
        names(refused)
    };
    let mut message = format!("Keycloak refuses {refused} in realm {realm}");
    if !open.is_empty() {
        let why_admin = admin.map(|g| {
            let g = g.grant_type();
            format!(", and {g} because the operator's admin credentials authenticate in this realm")
        });
        let why_admin = why_admin.unwrap_or_default();
        message.push_str(&format!(
            "; open: {} (spec.allowedMachineGrants{why_admin})",
            names(&open)
        ));
    }
    (ok, reason, message)
}

/// Client ID Metadata Documents: our client profile + policy in the realm (or their removal),
/// then the clients Keycloak created from documents (see [`settle_cimd_clients`]).
async fn apply_cimd(
    policy: &McpAuthPolicy,
    ctx: &Context,
    kc: &KeycloakAdminClient,
    admitted: &[(String, ScopeType)],
    lists: &mut ClientPolicyLists,
) -> Result<(&'static str, String)> {
    let wanted = cimd::requested(policy);
    if wanted.is_some() {
        check_cimd_feature(policy, kc).await?;
    }
    let scopes = match wanted {
        Some(_) => admitted,
        None => &[],
    };
    settle_cimd(policy, ctx, kc, wanted, scopes, lists).await?;
    Ok(cimd_verdict(policy, wanted))
}

/// `CimdFeatureDisabled` unless the realm's Keycloak runs with the cimd feature. Checked before
/// anything is written: a profile naming the CIMD executor would be refused anyway.
async fn check_cimd_feature(policy: &McpAuthPolicy, kc: &KeycloakAdminClient) -> Result<()> {
    let realm = &policy.spec.keycloak.realm;
    if kc.cimd_supported(realm).await? {
        return Ok(());
    }
    Err(Error::invalid(
        "CimdFeatureDisabled",
        format!(
            "Keycloak at {} does not have the cimd feature (realm {realm}'s discovery document lacks client_id_metadata_document_supported): start it with --features=cimd (or KC_FEATURES=cimd), or remove spec.clientIdMetadataDocuments",
            kc.base_url()
        ),
    ))
}

/// Scopes every admitted client must be able to request: the policy's own, and (in `Scope`
/// mode; `ResourceIndicator` mode has none) the audience scope of each server using this policy.
async fn admitted_scopes(
    policy: &McpAuthPolicy,
    ctx: &Context,
    mode: ActiveAudience,
) -> Result<Vec<(String, ScopeType)>> {
    let own = policy
        .spec
        .scopes
        .iter()
        .map(|s| (s.name.clone(), s.r#type));
    let mut scopes: Vec<_> = own.collect();
    if mode == ActiveAudience::ResourceIndicator {
        return Ok(scopes);
    }
    let ns = policy.namespace().unwrap_or_default();
    for s in ctx.servers_in(&ns).await? {
        if s.spec.policy_ref.name == policy.name_any() && s.metadata.deletion_timestamp.is_none() {
            scopes.push((s.audience_scope(), ScopeType::Optional));
        }
    }
    Ok(scopes)
}

/// Writes (or, with `wanted: None`, removes) the policy's CIMD profile and policy, then settles
/// the clients Keycloak created from documents against what is admitted now.
async fn settle_cimd(
    policy: &McpAuthPolicy,
    ctx: &Context,
    kc: &KeycloakAdminClient,
    wanted: Option<&crate::api::ClientIdMetadataDocuments>,
    scopes: &[(String, ScopeType)],
    lists: &mut ClientPolicyLists,
) -> Result<()> {
    let realm = &policy.spec.keycloak.realm;
    let name = cimd::owned_name(policy);
    let desired = wanted.map(|c| (cimd::profile(policy, c), cimd::client_policy(policy, c)));
    let desired = desired.as_ref().map(|(p, q)| (p, q));
    let before = kc
        .ensure_client_policy_pair_in(realm, lists, &name, desired)
        .await?;
    let previously = before.as_ref().map(Admission::of_live);
    let admission = wanted.map(Admission::of);
    let admitted = Admitted {
        owner: policy.owner_marker(),
        previously,
        now: admission,
        scopes,
    };
    let revoked = settle_cimd_clients(kc, realm, &admitted).await?;
    if !revoked.is_empty() {
        let note = format!(
            "deleted {} client(s) created from metadata documents this policy no longer admits: {}",
            revoked.len(),
            revoked.join(", ")
        );
        let reason = "MetadataDocumentClientsRevoked";
        ctx.publish(&policy.object_ref(&()), false, reason, note)
            .await;
    }
    Ok(())
}

/// Who the CIMD clients of a realm are measured against.
struct Admitted<'a> {
    owner: String,
    previously: Option<Admission>,
    now: Option<Admission>,
    scopes: &'a [(String, ScopeType)],
}

/// Admitted clients are marked as ours and get the scopes they lack — Keycloak gives such a
/// client the realm's scopes once, when it first sees the document, so an MCP server added later
/// could never be requested by a client already known. Ours that are no longer admitted are
/// deleted: Keycloak would keep them as ordinary clients that still log users in. Returns the
/// revoked clientIds.
async fn settle_cimd_clients(
    kc: &KeycloakAdminClient,
    realm: &str,
    a: &Admitted<'_>,
) -> Result<Vec<String>> {
    let mut scope_ids = ScopeIds::default();
    let mut revoked = vec![];
    for client in kc.cimd_clients(realm).await? {
        let plan = cimd::plan_cimd_client(
            &client,
            &a.owner,
            a.previously.as_ref(),
            a.now.as_ref(),
            a.scopes,
        );
        let uuid = client.id.clone().unwrap_or_default();
        match plan {
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
                    kc.mark_client(realm, &client, &a.owner).await?;
                }
                let adds = (add_default.into_iter().map(|n| (n, ScopeType::Default)))
                    .chain(add_optional.into_iter().map(|n| (n, ScopeType::Optional)));
                add_scopes(kc, realm, &client, adds, &mut scope_ids).await?;
            }
        }
    }
    Ok(revoked)
}

/// The realm's scope ids by name, read once per reconcile and only if a client needs one.
#[derive(Default)]
struct ScopeIds(Option<HashMap<String, String>>);

impl ScopeIds {
    async fn get(
        &mut self,
        kc: &KeycloakAdminClient,
        realm: &str,
        name: &str,
    ) -> Result<Option<String>> {
        if self.0.is_none() {
            let scopes = kc.client_scopes(realm).await?.into_iter();
            let ids = scopes.filter_map(|s| Some((s.name?.to_string(), s.id?.to_string())));
            self.0 = Some(ids.collect());
        }
        Ok(self.0.as_ref().and_then(|m| m.get(name).cloned()))
    }
}

async fn add_scopes(
    kc: &KeycloakAdminClient,
    realm: &str,
    client: &ClientRepresentation,
    adds: impl Iterator<Item = (String, ScopeType)>,
    scope_ids: &mut ScopeIds,
) -> Result<()> {
    let uuid = client.id.clone().unwrap_or_default();
    for (scope, ty) in adds {
        // A server's scope not created yet: the next reconcile adds it.
        if let Some(id) = scope_ids.get(kc, realm, &scope).await? {
            kc.add_client_scope(realm, &uuid, &id, ty).await?;
        }
    }
    Ok(())
}

/// The `ClientIdMetadataDocumentsApplied` condition's reason and message.
fn cimd_verdict(
    policy: &McpAuthPolicy,
    wanted: Option<&crate::api::ClientIdMetadataDocuments>,
) -> (&'static str, String) {
    match (wanted, &policy.spec.client_id_metadata_documents) {
        (Some(c), _) => (
            "Applied",
            format!(
                "Keycloak accepts client_id metadata documents ({}) from {}; client profile and policy {}",
                cimd::schemes(c).join(", "),
                cimd::client_id_domains(c).join(", "),
                cimd::owned_name(policy),
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
    }
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
/// clients, the grant refusal, the servers' secret-rotation pair, and anonymous registration
/// closed again (Keycloak's default).
async fn remove_from_realm(
    policy: &McpAuthPolicy,
    ctx: &Context,
    kc: &KeycloakAdminClient,
    realm_id: &str,
) -> Result<()> {
    let realm = &policy.spec.keycloak.realm;
    kc.delete_owned_scopes(realm, &policy.owner_marker(), None)
        .await?;
    let mut lists = kc.client_policy_lists(realm).await?;
    settle_cimd(policy, ctx, kc, None, &[], &mut lists).await?;
    kc.ensure_client_policy_pair_in(realm, &mut lists, desired::USER_GRANTS_ONLY, None)
        .await?;
    // The servers' secret-rotation pair: none of them is left (`PolicyInUse` otherwise).
    let rotation = crate::desired::rotation::POLICY_NAME;
    kc.ensure_client_policy_pair(realm, rotation, None).await?;
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

#[cfg(test)]
mod tests {
    use super::grants_verdict;
    use crate::api::MachineGrant::{self, *};

    #[test]
    fn the_grants_condition_names_what_stays_open_and_why() {
        let all = MachineGrant::ALL;
        let (ok, reason, message) = grants_verdict("r", &all, None);
        assert!(ok);
        assert_eq!(reason, "AllRefused");
        assert!(message.starts_with("Keycloak refuses "), "{message}");
        assert!(!message.contains("open:"), "{message}");
        let but = |g: MachineGrant| all.into_iter().filter(move |x| *x != g).collect::<Vec<_>>();
        let (ok, reason, message) = grants_verdict("r", &but(Password), Some(Password));
        assert_eq!((ok, reason), (false, "AdminGrantOpen"));
        assert!(message.ends_with("; open: password (spec.allowedMachineGrants, and password because the operator's admin credentials authenticate in this realm)"), "{message}");
        let (ok, reason, message) = grants_verdict("r", &but(DeviceCode), None);
        assert_eq!((ok, reason), (false, "MachineGrantsAllowed"));
        assert!(
            message.ends_with("(spec.allowedMachineGrants)"),
            "{message}"
        );
        let (_, _, message) = grants_verdict("r", &[], None);
        assert!(
            message.starts_with("Keycloak refuses nothing in realm r; open: "),
            "{message}"
        );
    }
}
