//! The committed `crds/` must equal what the code generates (run `cargo run -- crdgen` to update).

#[test]
fn committed_crds_match_generated() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (name, yaml) in mcp_keycloak_operator::crdgen::manifests() {
        let committed = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("crds/{name} missing ({e}); run `cargo run -- crdgen`"));
        assert!(
            committed == yaml,
            "crds/{name} is stale; run `cargo run -- crdgen` and commit the result"
        );
    }
}

#[test]
fn crds_carry_cel_rules_and_printer_columns() {
    let all: String = mcp_keycloak_operator::crdgen::manifests()
        .into_iter()
        .map(|(_, y)| y)
        .collect();
    for needle in [
        "x-kubernetes-validations",
        "trustedHosts entries must be",
        "x-kubernetes-list-map-keys",
        "policyRef is immutable",
        "set allowUnauthenticated: true",
        "additionalPrinterColumns",
    ] {
        assert!(all.contains(needle), "generated CRDs lack {needle:?}");
    }
}
