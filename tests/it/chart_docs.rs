//! The chart's README.md is what helm-docs (pinned in hack/versions.env) generates from
//! values.yaml and README.md.gotmpl, and every value has a description.

use std::path::Path;

#[test]
fn chart_readme_is_generated_from_the_values() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("hack/chart-docs"))
        .arg("--check")
        .output()
        .expect("run hack/chart-docs");
    assert!(
        out.status.success(),
        "hack/chart-docs --check failed (run ./hack/chart-docs):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let readme = std::fs::read_to_string(root.join("charts/mcp-keycloak-operator/README.md"))
        .expect("chart README.md");
    // The table is there, and the flag for CRDs applied beforehand is spelled out.
    assert!(
        readme.contains("| crds.install | bool | `true` |"),
        "{readme}"
    );
    assert!(readme.contains("--set crds.install=false"), "{readme}");
}
