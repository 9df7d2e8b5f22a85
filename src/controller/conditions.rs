//! Standard status conditions. `lastTransitionTime` only moves when the status flips, so an
//! unchanged world produces an unchanged status (and no write).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";

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
    "InsufficientAdminPermissions",
    "InvalidAdminCredentials",
    "InvalidCABundle",
    "RealmClaimed",
    "ResourceConflict",
    "ScopeConflict",
    "ScopeNotInPolicy",
    "UrlConflict",
];

/// Sets (or adds) a condition, keeping its transition time unless the status changed. Setting
/// `Ready` also sets or removes `Stalled` (see [`STALLED_REASONS`]).
pub fn upsert(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let message = message.into();
    if type_ == READY {
        // Both controllers set Ready once per reconcile; deriving Stalled here keeps the two in
        // step without a second call at each site.
        let stalled = !status && STALLED_REASONS.contains(&reason);
        if stalled {
            set(conditions, STALLED, true, reason, &message, generation, now);
        } else {
            conditions.retain(|c| c.type_ != STALLED);
        }
    }
    set(conditions, type_, status, reason, message, generation, now);
}

fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" };
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// A status being built by one reconcile, with its conditions' generation and time fixed once:
/// conditions are set by type, status, reason and message only.
pub struct Draft<S> {
    pub status: S,
    generation: Option<i64>,
    now: Time,
}

/// Status types that carry standard conditions.
pub trait WithConditions {
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

impl<S: WithConditions> Draft<S> {
    pub fn new(status: S, generation: Option<i64>, now: Time) -> Self {
        Draft {
            status,
            generation,
            now,
        }
    }

    pub fn set(&mut self, type_: &str, ok: bool, reason: &str, message: impl Into<String>) {
        let (generation, now) = (self.generation, &self.now);
        upsert(
            self.status.conditions_mut(),
            type_,
            ok,
            reason,
            message,
            generation,
            now,
        );
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

    fn t(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let mut c = vec![];
        upsert(&mut c, READY, false, "Pending", "m1", Some(1), &t(10));
        upsert(&mut c, READY, false, "StillPending", "m2", Some(2), &t(20));
        assert_eq!(c[0].last_transition_time, t(10));
        assert_eq!(c[0].reason, "StillPending");
        assert_eq!(c[0].observed_generation, Some(2));
        upsert(&mut c, READY, true, "Ready", "ok", Some(2), &t(30));
        assert_eq!(c[0].last_transition_time, t(30));
        assert_eq!(c[0].status, "True");
        assert_eq!(c.len(), 1);
        assert!(is_true(&c, READY));
    }

    #[test]
    fn stalled_follows_ready_for_permanent_reasons_only() {
        let mut c = vec![];
        upsert(
            &mut c,
            READY,
            false,
            "KeycloakUnreachable",
            "m",
            Some(1),
            &t(10),
        );
        assert!(find(&c, STALLED).is_none());
        upsert(
            &mut c,
            READY,
            false,
            "InvalidAdminCredentials",
            "bad",
            Some(2),
            &t(20),
        );
        let s = find(&c, STALLED).expect("Stalled set");
        assert_eq!(
            (s.status.as_str(), s.reason.as_str()),
            ("True", "InvalidAdminCredentials")
        );
        assert_eq!(
            (s.message.as_str(), s.observed_generation),
            ("bad", Some(2))
        );
        upsert(
            &mut c,
            "SecretReady",
            false,
            "ScopeConflict",
            "m",
            Some(2),
            &t(25),
        );
        assert_eq!(find(&c, STALLED).unwrap().reason, "InvalidAdminCredentials");
        upsert(&mut c, READY, true, "Ready", "ok", Some(2), &t(30));
        assert!(find(&c, STALLED).is_none());
        assert_eq!(c.len(), 2);
    }
}
