//! Every field of both CRDs is documented: `kubectl explain` shows a description for each
//! property of the generated OpenAPI schemas, objects (`spec.auth`, `status`, …) and list items'
//! fields included, Kubernetes' own types (EnvVar, ResourceRequirements, Condition) too; and
//! `kubectl explain` on the test bed shows them.

use crate::harness;
use crate::support;

use serde_json::{json, Value};

/// Paths (`.spec.auth.mode`, `.spec.env[].name`) of properties without a description.
fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema["properties"].as_object() {
        for (name, prop) in props {
            let p = format!("{path}.{name}");
            let described = prop["description"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                out.push(p.clone());
            }
            undocumented(prop, &p, out);
        }
    }
    if schema["items"].is_object() {
        undocumented(&schema["items"], &format!("{path}[]"), out);
    }
    if schema["additionalProperties"].is_object() {
        undocumented(&schema["additionalProperties"], &format!("{path}{{}}"), out);
    }
    for kw in ["allOf", "anyOf", "oneOf"] {
        for s in schema[kw].as_array().into_iter().flatten() {
            undocumented(s, path, out);
        }
    }
}

#[test]
fn every_crd_property_has_a_description() {
    let mut missing = vec![];
    let mut walked = 0;
    for (file, yaml) in mcp_keycloak_operator::crdgen::manifests() {
        let crd: Value = serde_yaml::from_str(&yaml).expect("CRD yaml");
        for v in crd["spec"]["versions"].as_array().unwrap() {
            let schema = &v["schema"]["openAPIV3Schema"];
            // kube-derive's placeholder unless `#[kube(doc = ...)]` is set: `kubectl explain`
            // shows it for the kind itself.
            let root = schema["description"].as_str().unwrap_or_default();
            if root.is_empty() || root.starts_with("Auto-generated") {
                missing.push(format!("{file}: the kind itself ({root:?})"));
            }
            let mut m = vec![];
            undocumented(schema, "", &mut m);
            missing.extend(m.into_iter().map(|p| format!("{file} {}: {p}", v["name"])));
            walked += 1;
        }
    }
    assert_eq!(walked, 2, "expected one version of each of the two CRDs");
    assert!(
        missing.is_empty(),
        "{} properties without a description (add a doc comment, then `cargo run -- crdgen`):\n{}",
        missing.len(),
        missing.join("\n")
    );
}

/// The walk reaches nested objects, list items and combinators, and reports the objects
/// themselves, so the test above cannot pass by looking only at leaves.
#[test]
fn the_walk_finds_undocumented_objects_items_and_leaves() {
    let schema = json!({"properties": {
        "spec": {"description": "d", "properties": {
            "auth": {"type": "object", "properties": {"mode": {"description": "d"}}},
            "env": {"description": "d", "items": {"properties": {"name": {"type": "string"}}}},
            "x": {"description": "d", "anyOf": [{"properties": {"y": {"description": " "}}}]},
            "m": {"description": "d", "additionalProperties": {"properties": {"z": {}}}}
        }},
        "status": {"properties": {"ok": {"description": "d"}}}
    }});
    let mut m = vec![];
    undocumented(&schema, "", &mut m);
    m.sort();
    assert_eq!(
        m,
        [
            ".spec.auth",
            ".spec.env[].name",
            ".spec.m{}.z",
            ".spec.x.y",
            ".status"
        ]
    );
}

/// What the issue saw empty: `kubectl explain mcpserver.spec.auth` (the API server's published
/// OpenAPI of the installed CRD, which can lag the CRD by a few seconds).
#[tokio::test]
async fn kubectl_explain_shows_the_descriptions() {
    let client = support::kube_client().await;
    harness::install_crds(&client).await;
    let tb = support::testbed().await;
    let kubectl = tb.dir.join("bin/kubectl");
    let cases = [
        ("mcpserver.spec.auth", "Who validates tokens"),
        (
            "mcpauthpolicy.spec.keycloak",
            "How the operator and the MCP pods reach Keycloak",
        ),
        ("mcpserver.status", "What the operator last did"),
    ];
    for (field, want) in cases {
        let what = format!("kubectl explain {field} showing {want:?}");
        support::wait_for(&what, std::time::Duration::from_secs(60), || {
            let out = std::process::Command::new(&kubectl)
                .args(["explain", field])
                .env("KUBECONFIG", &tb.kubeconfig)
                .output()
                .expect("kubectl explain");
            // kubectl wraps descriptions at its own width.
            let text = String::from_utf8_lossy(&out.stdout);
            let words: Vec<&str> = text.split_whitespace().collect();
            let ok = words.join(" ").contains(want);
            async move { ok.then_some(()) }
        })
        .await;
    }
}
