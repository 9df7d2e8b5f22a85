//! Pure builders: spec in, desired objects out. No IO here, so every builder is tested by
//! asserting the exact object it returns.

pub mod audience;
pub mod cimd;
pub mod plan;
pub mod realm;
pub mod reaping;
pub mod rotation;
pub mod workload;

use serde_json::Value;

/// True when every field of `desired` is present in `live` with the same value (objects compared
/// key by key, arrays element by element and of equal length). Fields the server adds (defaults,
/// ids, other managers' fields) do not count as drift, so an unchanged spec leads to no write.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => is_subset(dv, lv),
            // An empty desired collection or null matches an absent field.
            None => {
                matches!(dv, Value::Null)
                    || dv.as_array().is_some_and(|a| a.is_empty())
                    || dv.as_object().is_some_and(|o| o.is_empty())
            }
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        (Value::Null, _) => true,
        (d, l) => d == l,
    }
}

/// Stable SHA-256 hex digest of the given parts (used for pod-template hash annotations).
pub fn digest(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// A minimal McpAuthPolicy for unit tests: spec defaults but for the required Keycloak fields.
#[cfg(test)]
pub(crate) fn test_policy(namespace: &str, name: &str) -> crate::api::McpAuthPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mcpauth.dev/v1alpha1",
        "kind": "McpAuthPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"keycloak": {"url": "http://kc:8080", "realm": "acme",
                 "adminCredentialsSecretRef": {"name": "admin"}}}
    }))
    .expect("a valid McpAuthPolicy")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_ignores_server_added_fields() {
        let desired = json!({"a": 1, "b": {"c": "x"}, "list": [{"n": 1}]});
        let live = json!({"a": 1, "b": {"c": "x", "d": 2}, "list": [{"n": 1, "m": 2}], "z": true});
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn subset_detects_changed_missing_and_reordered_values() {
        let desired = json!({"a": 1, "list": [1, 2]});
        assert!(!is_subset(&desired, &json!({"a": 2, "list": [1, 2]})));
        assert!(!is_subset(&desired, &json!({"list": [1, 2]})));
        assert!(!is_subset(&desired, &json!({"a": 1, "list": [2, 1]})));
        assert!(!is_subset(&desired, &json!({"a": 1, "list": [1, 2, 3]})));
    }

    #[test]
    fn empty_desired_collections_match_absent_fields() {
        assert!(is_subset(&json!({"env": [], "m": {}}), &json!({})));
        assert!(!is_subset(&json!({"env": [1]}), &json!({})));
    }

    #[test]
    fn digest_separates_parts() {
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
        assert_eq!(digest(&["x"]), digest(&["x"]));
    }
}
