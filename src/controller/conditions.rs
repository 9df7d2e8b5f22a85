//! Standard status conditions. `lastTransitionTime` only moves when the status flips, so an
//! unchanged world produces an unchanged status (and no write).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub use crate::api::WithConditions;

pub const READY: &str = "Ready";

// The condition types of both kinds; each stage of a reconcile reports on one of them.
// McpAuthPolicy:
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
/// Which audience mode (`Scope` or `ResourceIndicator`) the policy's servers use, and why;
/// `False` when `spec.audience` asks for one this Keycloak cannot serve.
pub const AUDIENCE_MODE: &str = "AudienceMode";
/// With a `reaping` block: `True` (`Active` or `DryRun`) while abandoned clients are reaped, with
/// how many so far; `False` with the failure's reason.
pub const REAPING: &str = "Reaping";
// McpServer:
pub const POLICY_RESOLVED: &str = "PolicyResolved";
pub const KEYCLOAK_CLIENT_READY: &str = "KeycloakClientReady";
pub const SECRET_READY: &str = "SecretReady";
pub const AVAILABLE: &str = "Available";
pub const UNAUTHENTICATED: &str = "Unauthenticated";
pub const NETWORK_ISOLATED: &str = "NetworkIsolated";
/// Live verification: `True` when the running server answered an MCP handshake, `False` with
/// what failed, `Unknown` while nothing could be asked. Informational: it does not feed `Ready`.
pub const VERIFIED: &str = "Verified";

/// kstatus' "abnormal-true" condition: `True` means the operator cannot make progress until a
/// person changes something. Flux and other kstatus users report such an object as `Failed`
/// instead of waiting for it to become Ready (they read `Ready=False` as still in progress).
pub const STALLED: &str = "Stalled";

/// `Ready=False` reasons that no retry or ordering of applies can fix: they set `Stalled=True`.
/// Reasons that a later apply or a recovering dependency can clear (`AdminSecretNotFound`,
/// `PolicyNotFound`, `PolicyNotReady`, `KeycloakUnreachable`, `Unavailable`, …) are not here, so
/// a GitOps sync that applies a Secret or a policy after its dependents does not fail.
pub const STALLED_REASONS: &[&str] = &[
    "AdminSecretInvalid",
    "AdminSecretUrlMismatch",
    "CimdFeatureDisabled",
    "ClientIdConflict",
    "ExplicitClientIdUnsupported",
    "InsufficientAdminPermissions",
    "InvalidAdminCredentials",
    "InvalidCABundle",
    "RealmClaimed",
    "ResourceConflict",
    "ResourceIndicatorsFeatureDisabled",
    "ScopeBreaksResourceIndicators",
    "ScopeConflict",
    "ScopeNotInPolicy",
    "UrlConflict",
];

/// One condition as a reconcile decides it; generation and time come from the [`Draft`].
#[derive(Clone, Copy)]
struct Verdict<'a> {
    pub type_: &'a str,
    pub ok: bool,
    pub reason: &'a str,
}

/// Sets (or adds) a condition, keeping its transition time unless the status changed. Setting
/// `Ready` also sets or removes `Stalled` (see [`STALLED_REASONS`]).
fn upsert(conditions: &mut Vec<Condition>, v: Verdict, message: String, stamp: &Stamp) {
    if v.type_ == READY {
        // Both controllers set Ready once per reconcile; deriving Stalled here keeps the two in
        // step without a second call at each site.
        if !v.ok && STALLED_REASONS.contains(&v.reason) {
            let stalled = Verdict {
                type_: STALLED,
                ok: true,
                reason: v.reason,
            };
            set(conditions, stalled, message.clone(), stamp);
        } else {
            conditions.retain(|c| c.type_ != STALLED);
        }
    }
    set(conditions, v, message, stamp);
}

/// The generation a reconcile observed and the time it ran: the same for every condition it sets.
struct Stamp {
    generation: Option<i64>,
    now: Time,
}

fn set(conditions: &mut Vec<Condition>, v: Verdict, message: String, stamp: &Stamp) {
    let status = if v.ok { "True" } else { "False" };
    set_status(conditions, v.type_, status, v.reason, message, stamp)
}

fn set_status(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    stamp: &Stamp,
) {
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = stamp.now.clone();
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = stamp.generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: stamp.generation,
            last_transition_time: stamp.now.clone(),
        }),
    }
}

/// A status being built by one reconcile, with its conditions' generation and time fixed once:
/// conditions are set by type, status, reason and message only.
pub struct Draft<S> {
    pub status: S,
    stamp: Stamp,
}

impl<S: WithConditions> Draft<S> {
    /// A draft of the object's next status: its current one, observing `generation` now.
    pub fn begin(current: Option<&S>, generation: Option<i64>) -> Self {
        let mut status = current.cloned().unwrap_or_default();
        status.set_observed_generation(generation);
        Self::new(status, generation, Time(jiff::Timestamp::now()))
    }

    pub fn new(status: S, generation: Option<i64>, now: Time) -> Self {
        Draft {
            status,
            stamp: Stamp { generation, now },
        }
    }

    pub fn set(&mut self, type_: &str, ok: bool, reason: &str, message: impl Into<String>) {
        let v = Verdict { type_, ok, reason };
        upsert(self.status.conditions_mut(), v, message.into(), &self.stamp);
    }

    /// Sets a condition to `Unknown` (nothing to judge by), with the same transition rules.
    pub fn set_unknown(&mut self, type_: &str, reason: &str, message: impl Into<String>) {
        let conditions = self.status.conditions_mut();
        set_status(
            conditions,
            type_,
            "Unknown",
            reason,
            message.into(),
            &self.stamp,
        );
    }

    /// Drops a condition that no longer applies.
    pub fn remove(&mut self, type_: &str) {
        self.status.conditions_mut().retain(|c| c.type_ != type_);
    }

    pub fn get(&self, type_: &str) -> Option<&Condition> {
        find(self.status.conditions(), type_)
    }
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct St(Vec<Condition>);

    impl WithConditions for St {
        fn set_observed_generation(&mut self, _: Option<i64>) {}
        fn keycloak_realm(&self) -> Option<&str> {
            None
        }
        fn conditions(&self) -> &[Condition] {
            &self.0
        }
        fn conditions_mut(&mut self) -> &mut Vec<Condition> {
            &mut self.0
        }
    }

    /// Applies `f` to a draft of `c` made at generation `g`, second `s`.
    fn at(c: Vec<Condition>, g: i64, s: i64, f: impl FnOnce(&mut Draft<St>)) -> Vec<Condition> {
        let now = Time(jiff::Timestamp::from_second(s).unwrap());
        let mut d = Draft::new(St(c), Some(g), now);
        f(&mut d);
        d.status.0
    }

    fn t(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let c = at(vec![], 1, 10, |d| d.set(READY, false, "Pending", "m1"));
        let c = at(c, 2, 20, |d| d.set(READY, false, "StillPending", "m2"));
        assert_eq!(c[0].last_transition_time, t(10));
        assert_eq!(c[0].reason, "StillPending");
        assert_eq!(c[0].observed_generation, Some(2));
        let c = at(c, 2, 30, |d| d.set(READY, true, "Ready", "ok"));
        assert_eq!(c[0].last_transition_time, t(30));
        assert_eq!(c[0].status, "True");
        assert_eq!(c.len(), 1);
        assert!(is_true(&c, READY));
        assert!(at(c, 2, 40, |d| d.remove(READY)).is_empty());
    }

    #[test]
    fn stalled_follows_ready_for_permanent_reasons_only() {
        let c = at(vec![], 1, 10, |d| {
            d.set(READY, false, "KeycloakUnreachable", "m")
        });
        assert!(find(&c, STALLED).is_none());
        let c = at(c, 2, 20, |d| {
            d.set(READY, false, "InvalidAdminCredentials", "bad")
        });
        let s = find(&c, STALLED).expect("Stalled set");
        assert_eq!(
            (s.status.as_str(), s.reason.as_str()),
            ("True", "InvalidAdminCredentials")
        );
        assert_eq!(
            (s.message.as_str(), s.observed_generation),
            ("bad", Some(2))
        );
        let c = at(c, 2, 25, |d| {
            d.set("SecretReady", false, "ScopeConflict", "m")
        });
        assert_eq!(find(&c, STALLED).unwrap().reason, "InvalidAdminCredentials");
        let c = at(c, 2, 30, |d| d.set(READY, true, "Ready", "ok"));
        assert!(find(&c, STALLED).is_none());
        assert_eq!(c.len(), 2);
    }
}
