//! Reaping abandoned clients (`reaping` under `dynamicClientRegistration` and
//! `clientIdMetadataDocuments`): the IO around the pure decisions of
//! [`crate::desired::reaping`]. Reads only at steady state: the event settings are written
//! only when they fall short, and a client only when it is deleted.

use std::collections::HashMap;

use keycloak::types::ClientRepresentation;

use crate::admin::KeycloakAdminClient;
use crate::api::{McpAuthPolicy, ReapingStatus};
use crate::desired::cimd;
use crate::desired::reaping::{
    judge, unsessioned, Activity, Coverage, Lookup, Origin, Settings, Verdict, REGISTER_EVENT,
    USE_EVENTS,
};
use crate::Result;

/// Clients whose events one reconcile reads at most: bounds the cost in a realm with many
/// registered clients; the window moves on every run so each client gets its turn.
pub const EVENT_READS_PER_RUN: usize = 100;

/// The reaping settings of the policy by kind; empty when no `reaping` block applies.
pub fn settings(policy: &McpAuthPolicy) -> HashMap<Origin, Settings> {
    let dcr = policy.spec.dynamic_client_registration.as_ref();
    let dcr = dcr.and_then(|d| d.reaping.as_ref()).and_then(Settings::of);
    let docs = cimd::requested(policy).and_then(|c| c.reaping.as_ref());
    let docs = docs.and_then(Settings::of);
    let kinds = [(Origin::Registered, dcr), (Origin::MetadataDocument, docs)];
    kinds
        .into_iter()
        .filter_map(|(o, s)| Some((o, s?)))
        .collect()
}

pub fn kind(o: Origin) -> &'static str {
    match o {
        Origin::Registered => "registered",
        Origin::MetadataDocument => "metadata_document",
    }
}

/// What one reaping pass found: `(clientId, kind)` of the clients that are (or, in `dryRun`,
/// would be) deleted.
#[derive(Default)]
pub struct Pass {
    pub deleted: Vec<(String, Origin)>,
    pub dry_run: Vec<String>,
}

/// One pass over `clients`: sessions first (one read), then events only for clients without a
/// session, at most [`EVENT_READS_PER_RUN`], deleting at most `maxPerRun` per kind.
pub async fn pass(
    kc: &KeycloakAdminClient,
    realm: &str,
    owner: &str,
    settings: &HashMap<Origin, Settings>,
    clients: &[ClientRepresentation],
    coverage: &Coverage,
    now_ms: i64,
) -> Result<Pass> {
    let mut out = Pass::default();
    let any = |c: &ClientRepresentation| {
        crate::desired::reaping::origin(c, owner).is_some_and(|o| settings.contains_key(&o))
    };
    if !clients.iter().any(any) {
        return Ok(out);
    }
    let sessions = kc.client_sessions(realm).await?;
    let idle = unsessioned(clients, owner, settings, &sessions);
    let mut taken: HashMap<Origin, usize> = HashMap::new();
    for (client, o) in window(&idle, now_ms) {
        let s = &settings[&o];
        let n = taken.entry(o).or_default();
        if *n >= s.max_per_run {
            continue;
        }
        let client_id = client.client_id.clone().unwrap_or_default();
        if !reapable(kc, realm, &client_id, coverage, now_ms, s).await? {
            continue;
        }
        *n += 1;
        if s.dry_run {
            out.dry_run.push(client_id);
        } else {
            kc.delete_client(realm, client.id.as_deref().unwrap_or_default())
                .await?;
            out.deleted.push((client_id, o));
        }
    }
    Ok(out)
}

/// At most [`EVENT_READS_PER_RUN`] of `idle`, starting at an offset that moves with the clock.
fn window<'a>(
    idle: &[(&'a ClientRepresentation, Origin)],
    now_ms: i64,
) -> Vec<(&'a ClientRepresentation, Origin)> {
    if idle.len() <= EVENT_READS_PER_RUN {
        return idle.to_vec();
    }
    let turn = usize::try_from(now_ms / 15_000).unwrap_or(0);
    let start = turn.wrapping_mul(EVENT_READS_PER_RUN) % idle.len();
    let ring = idle.iter().cycle().skip(start).take(EVENT_READS_PER_RUN);
    ring.copied().collect()
}

/// Whether the events Keycloak stored show `client_id` unused and old enough: the newest use or
/// registration event, and the registration event when its age needs it.
async fn reapable(
    kc: &KeycloakAdminClient,
    realm: &str,
    client_id: &str,
    coverage: &Coverage,
    now_ms: i64,
    s: &Settings,
) -> Result<bool> {
    let mut types = USE_EVENTS.to_vec();
    types.push(REGISTER_EVENT);
    let newest = kc.newest_event(realm, client_id, &types).await?;
    let registered = match &newest {
        Some((t, ty)) if ty == REGISTER_EVENT => Lookup::Found(*t),
        _ => Lookup::NotLookedUp,
    };
    let mut activity = Activity {
        last_ms: newest.map(|(t, _)| t),
        registered,
    };
    let mut verdict = judge(&activity, coverage, now_ms, s);
    if verdict == Verdict::LookUpRegistration {
        let registration = kc.newest_event(realm, client_id, &[REGISTER_EVENT]).await?;
        activity.registered = registration.map_or(Lookup::Absent, |(t, _)| Lookup::Found(t));
        verdict = judge(&activity, coverage, now_ms, s);
    }
    Ok(verdict == Verdict::Reap)
}

/// The next `status.reaping` after `pass`: totals move only when something was deleted.
pub fn next_status(
    old: Option<&ReapingStatus>,
    events_since: String,
    pass: &Pass,
    now: &str,
) -> ReapingStatus {
    let mut next = old.cloned().unwrap_or_default();
    next.events_since = Some(events_since);
    next.dry_run_candidates = pass.dry_run.clone();
    if !pass.deleted.is_empty() {
        next.reaped_total += pass.deleted.len() as i64;
        next.last_reaped_at = Some(now.to_string());
    }
    next
}
