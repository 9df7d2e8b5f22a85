//! Standard status conditions. `lastTransitionTime` only moves when the status flips, so an
//! unchanged world produces an unchanged status (and no write).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";

/// Sets (or adds) a condition, keeping its transition time unless the status changed.
pub fn upsert(
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
}
