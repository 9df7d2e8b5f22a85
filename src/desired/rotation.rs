//! Scheduled rotation of an introspection client's secret (`spec.introspectionClient.rotation`):
//! Keycloak's `secret-rotation` client-policy executor, and when the operator rotates.
//!
//! Keycloak 26.7.3 (feature `client-secret-rotation`, a preview feature, off by default): with
//! the executor applying to a client, `POST /clients/{id}/client-secret` keeps the previous
//! secret as the client's *rotated* secret, accepted for client authentication (introspection
//! included) until `rotated-expiration-period` has passed; `DELETE …/client-secret/rotated`
//! revokes it at once. The executor also gives the current secret an expiry
//! (`expiration-period` after each rotation) after which Keycloak refuses it.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use keycloak::types::{
    ClientPolicyConditionRepresentation, ClientPolicyExecutorRepresentation,
    ClientPolicyRepresentation, ClientProfileRepresentation,
};
use serde_json::{json, Value};

use crate::api::{SecretRotation, SecretRotationStatus};

/// Client attribute that puts an introspection client under [`POLICY_NAME`].
pub const ROTATION_ATTRIBUTE: &str = "mcpauth.dev/secret-rotation";
/// Name of the realm's client profile and client policy holding the executor.
pub const POLICY_NAME: &str = "mcp-operator.secret-rotation";
/// Keycloak's client attribute: when the current secret was made (epoch seconds, as a string),
/// set by the executor on each rotation.
pub const CREATION_TIME_ATTRIBUTE: &str = "client.secret.creation.time";
/// The feature's name in `GET /admin/serverinfo` `profileInfo`.
const FEATURE: &str = "CLIENT_SECRET_ROTATION";
/// Default `gracePeriod`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// The longest `gracePeriod` admission allows: Keycloak's own limit on the rotated secret, a
/// backstop should the operator not revoke it in time (it revokes each at its server's grace).
pub const MAX_GRACE: Duration = Duration::from_secs(168 * 3600);
/// Keycloak's expiry of the current secret after each rotation (the executor requires one):
/// five years, far beyond the longest `period` (8760h), and small enough that Keycloak's
/// 32-bit epoch seconds do not overflow.
const SECRET_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// Whether Keycloak runs `client-secret-rotation` (from `GET /admin/serverinfo`).
pub fn feature_enabled(server_info: &Value) -> bool {
    let profile = &server_info["profileInfo"];
    let listed = |key: &str| {
        profile[key]
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f == FEATURE))
    };
    let known = listed("previewFeatures") || listed("experimentalFeatures");
    known && !listed("disabledFeatures")
}

/// A duration of whole hours, minutes and seconds (`720h`, `1h30m`, `45s`), as admission checks it.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut digits = String::new();
    for c in s.chars() {
        match c {
            '0'..='9' => digits.push(c),
            'h' | 'm' | 's' if !digits.is_empty() => {
                let unit = match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                let n: u64 = digits.parse().ok()?;
                total = total.checked_add(n.checked_mul(unit)?)?;
                digits.clear();
            }
            _ => return None,
        }
    }
    (digits.is_empty() && !s.is_empty()).then(|| Duration::from_secs(total))
}

/// `period` and `gracePeriod` of a rotation spec (admission guarantees they parse).
pub fn periods(spec: &SecretRotation) -> (Duration, Duration) {
    let period = parse_duration(&spec.period).unwrap_or(Duration::from_secs(8760 * 3600));
    let grace = spec.grace_period.as_deref().and_then(parse_duration);
    (period, grace.unwrap_or(DEFAULT_GRACE))
}

/// The realm's profile and policy: the `secret-rotation` executor for clients carrying
/// [`ROTATION_ATTRIBUTE`] = `true` (Keycloak's `client-attributes` condition).
pub fn client_policy_pair() -> (ClientProfileRepresentation, ClientPolicyRepresentation) {
    let description = "Keeps an introspection client's previous secret valid after a rotation; managed by mcp-keycloak-operator (McpServer spec.introspectionClient.rotation)".to_string();
    let secs = |d: Duration| json!(d.as_secs().to_string());
    let profile = ClientProfileRepresentation {
        name: Some(POLICY_NAME.into()),
        description: Some(description.clone()),
        executors: Some(vec![ClientPolicyExecutorRepresentation {
            executor: Some("secret-rotation".into()),
            configuration: Some(HashMap::from([
                ("expiration-period".to_string(), secs(SECRET_LIFETIME)),
                ("rotated-expiration-period".to_string(), secs(MAX_GRACE)),
                // Only for dynamic-registration updates, which these clients never get.
                ("remaining-rotation-period".to_string(), json!("0")),
            ])),
        }]),
    };
    let attributes = json!([{"key": ROTATION_ATTRIBUTE, "value": "true"}]).to_string();
    let policy = ClientPolicyRepresentation {
        name: Some(POLICY_NAME.into()),
        description: Some(description),
        enabled: Some(true),
        mode: None,
        conditions: Some(vec![ClientPolicyConditionRepresentation {
            condition: Some("client-attributes".into()),
            configuration: Some(HashMap::from([(
                "attributes".to_string(),
                json!(attributes),
            )])),
        }]),
        profiles: Some(vec![POLICY_NAME.into()]),
    };
    (profile, policy)
}

/// What a reconcile does about the secret.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing now; `next` is the status to keep (first sight: the schedule recorded).
    Idle { next: SecretRotationStatus },
    /// Rotate (record `pending` first); `trigger` is the annotation value that asks for it.
    Rotate { trigger: Option<String> },
    /// A recorded rotation may or may not have happened: check Keycloak, finish it.
    Resume,
    /// The grace period is over: revoke the previous secret.
    EndGrace,
}

fn at(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

fn parsed(s: Option<&str>) -> Option<Timestamp> {
    s.and_then(|s| s.parse().ok())
}

/// The step for `status` at `now`, with the annotation's value `trigger`.
pub fn decide(
    now: Timestamp,
    spec: &SecretRotation,
    trigger: Option<&str>,
    status: Option<&SecretRotationStatus>,
) -> Step {
    let status = status.cloned().unwrap_or_default();
    if status.pending.is_some() {
        return Step::Resume;
    }
    let fresh_trigger = trigger.filter(|t| Some(*t) != status.last_trigger.as_deref());
    if let Some(t) = fresh_trigger {
        return Step::Rotate {
            trigger: Some(t.to_string()),
        };
    }
    if parsed(status.previous_secret_valid_until.as_deref()).is_some_and(|until| now >= until) {
        return Step::EndGrace;
    }
    let (period, _) = periods(spec);
    let next = match parsed(status.last_rotation_time.as_deref()) {
        Some(last) => at(last, period),
        None => parsed(status.next_rotation_time.as_deref()).unwrap_or_else(|| at(now, period)),
    };
    if now >= next {
        return Step::Rotate { trigger: None };
    }
    let next = SecretRotationStatus {
        next_rotation_time: Some(next.to_string()),
        ..status
    };
    Step::Idle { next }
}

/// Status after a rotation made at `at` (Keycloak's time of the new secret).
pub fn rotated(
    spec: &SecretRotation,
    old: Option<&SecretRotationStatus>,
    made: Timestamp,
    trigger: Option<String>,
) -> SecretRotationStatus {
    let (period, grace) = periods(spec);
    let old = old.cloned().unwrap_or_default();
    SecretRotationStatus {
        last_rotation_time: Some(made.to_string()),
        next_rotation_time: Some(at(made, period).to_string()),
        previous_secret_valid_until: Some(at(made, grace).to_string()),
        last_trigger: trigger.or(old.last_trigger),
        pending: None,
    }
}

/// How long until the status needs another look (the next rotation or the grace's end).
pub fn wake_in(now: Timestamp, status: &SecretRotationStatus) -> Option<Duration> {
    let times = [
        status.next_rotation_time.as_deref(),
        status.previous_secret_valid_until.as_deref(),
    ];
    let soonest = times.into_iter().filter_map(|t| parsed(t)).min()?;
    let left = soonest.duration_since(now);
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

/// Keycloak's creation time of the current secret, as a timestamp.
pub fn creation_time(attributes: Option<&HashMap<String, String>>) -> Option<Timestamp> {
    let secs: i64 = attributes?.get(CREATION_TIME_ATTRIBUTE)?.parse().ok()?;
    Timestamp::from_second(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PendingRotation;

    fn spec(period: &str, grace: Option<&str>) -> SecretRotation {
        SecretRotation {
            period: period.into(),
            grace_period: grace.map(str::to_string),
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn durations_parse_like_admission_checks_them() {
        let ok = [
            ("720h", 720 * 3600),
            ("1h30m", 5400),
            ("45s", 45),
            ("10s", 10),
            ("1h1m1s", 3661),
        ];
        for (s, secs) in ok {
            assert_eq!(parse_duration(s), Some(Duration::from_secs(secs)), "{s}");
        }
        for bad in ["", "h", "10", "1d", "1.5h", "-1h", "1h 2m", "30ms"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(periods(&spec("2h", None)).1, DEFAULT_GRACE);
        assert_eq!(periods(&spec("2h", Some("90s"))).1, Duration::from_secs(90));
    }

    #[test]
    fn the_feature_is_read_from_server_info() {
        let info = |disabled: &[&str]| {
            json!({"profileInfo": {"previewFeatures": [FEATURE, "SCRIPTS"],
                                   "disabledFeatures": disabled}})
        };
        assert!(feature_enabled(&info(&["SCRIPTS"])));
        assert!(!feature_enabled(&info(&[FEATURE])));
        assert!(!feature_enabled(&json!({})));
    }

    /// What a 1 h period (10 min grace) schedules on first sight at noon.
    fn scheduled() -> SecretRotationStatus {
        SecretRotationStatus {
            next_rotation_time: Some("2026-12-01T13:00:00Z".into()),
            ..Default::default()
        }
    }

    /// After the trigger `a` rotated at noon, once the operator revoked the previous secret.
    fn revoked() -> SecretRotationStatus {
        let after = rotated(
            &spec("1h", Some("10m")),
            Some(&scheduled()),
            t("2026-12-01T12:00:00Z"),
            Some("a".into()),
        );
        SecretRotationStatus {
            previous_secret_valid_until: None,
            ..after
        }
    }

    #[test]
    fn rotation_is_scheduled_one_period_out_and_due_then() {
        let s = spec("1h", Some("10m"));
        let now = t("2026-12-01T12:00:00Z");
        let scheduled = scheduled();
        // First sight: schedule one period out, nothing rotated.
        let first = decide(now, &s, None, None);
        assert_eq!(
            first,
            Step::Idle {
                next: scheduled.clone()
            }
        );
        // Same status later, before due: idle and unchanged (no write at steady state).
        let later = t("2026-12-01T12:30:00Z");
        let idle = decide(later, &s, None, Some(&scheduled));
        assert_eq!(
            idle,
            Step::Idle {
                next: scheduled.clone()
            }
        );
        // Due.
        let due = t("2026-12-01T13:00:00Z");
        assert_eq!(
            decide(due, &s, None, Some(&scheduled)),
            Step::Rotate { trigger: None }
        );
    }

    #[test]
    fn a_trigger_rotates_once_and_the_grace_ends_with_a_revoke() {
        let s = spec("1h", Some("10m"));
        let now = t("2026-12-01T12:00:00Z");
        let scheduled = scheduled();
        // A new trigger value rotates at once; the handled one does not again.
        let want = Step::Rotate {
            trigger: Some("a".into()),
        };
        assert_eq!(decide(now, &s, Some("a"), Some(&scheduled)), want);
        let after = rotated(&s, Some(&scheduled), now, Some("a".into()));
        assert_eq!(
            after.next_rotation_time.as_deref(),
            Some("2026-12-01T13:00:00Z")
        );
        assert_eq!(
            after.previous_secret_valid_until.as_deref(),
            Some("2026-12-01T12:10:00Z")
        );
        let idle = decide(t("2026-12-01T12:05:00Z"), &s, Some("a"), Some(&after));
        assert!(matches!(idle, Step::Idle { .. }), "{idle:?}");
        // Grace over: revoke; revoked (cleared): idle until due.
        let grace_end = t("2026-12-01T12:10:00Z");
        assert_eq!(
            decide(grace_end, &s, Some("a"), Some(&after)),
            Step::EndGrace
        );
        let revoked = revoked();
        let idle = decide(grace_end, &s, Some("a"), Some(&revoked));
        assert_eq!(
            idle,
            Step::Idle {
                next: revoked.clone()
            }
        );
        assert_eq!(
            wake_in(grace_end, &revoked),
            Some(Duration::from_secs(50 * 60))
        );
    }

    #[test]
    fn a_shorter_period_counts_from_the_last_rotation_and_a_pending_one_resumes_first() {
        let revoked = revoked();
        // A shorter period applies from the last rotation.
        let shorter = spec("20m", Some("10m"));
        let at = t("2026-12-01T12:20:00Z");
        let rotate = Step::Rotate { trigger: None };
        assert_eq!(decide(at, &shorter, Some("a"), Some(&revoked)), rotate);
        // A rotation recorded but not known to be done is resumed before anything else.
        let pending = SecretRotationStatus {
            pending: Some(PendingRotation {
                from: String::new(),
                trigger: Some("b".into()),
            }),
            ..revoked
        };
        let s = spec("1h", Some("10m"));
        let due = t("2026-12-01T13:00:00Z");
        assert_eq!(decide(due, &s, Some("c"), Some(&pending)), Step::Resume);
    }

    #[test]
    fn the_pair_is_what_keycloak_stores() {
        let (profile, policy) = client_policy_pair();
        let v = serde_json::to_value(&profile).unwrap();
        assert_eq!(v["executors"][0]["executor"], "secret-rotation");
        assert_eq!(
            v["executors"][0]["configuration"],
            json!({"expiration-period": "157680000", "rotated-expiration-period": "604800",
                   "remaining-rotation-period": "0"})
        );
        let v = serde_json::to_value(&policy).unwrap();
        assert_eq!(
            v["conditions"],
            json!([{"condition": "client-attributes", "configuration":
                    {"attributes": "[{\"key\":\"mcpauth.dev/secret-rotation\",\"value\":\"true\"}]"}}])
        );
        assert_eq!(v["profiles"], json!([POLICY_NAME]));
        let made = creation_time(Some(&HashMap::from([(
            CREATION_TIME_ATTRIBUTE.to_string(),
            "1796157839".to_string(),
        )])));
        assert_eq!(made, Some(Timestamp::from_second(1796157839).unwrap()));
    }
}
