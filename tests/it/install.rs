//! README "Install on a cluster", run as written: its shell blocks in order, with bash, against
//! the test bed (kubectl and helm of the test bed, Keycloak's own kcadm.sh), the README's
//! variables set to this test's namespaces, realm and Keycloak. The image build is the one block
//! left out (it needs a container engine and a registry). kwok does not run the chart's operator
//! pods, so the operator runs in this process with the chart's ServiceAccount identity instead.

use crate::harness;
use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use harness::{Operator, Realm};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SKIP_MARK: &str = "<!-- not run by tests/it/install.rs";

/// The ```sh blocks of the README's "Install on a cluster" section: (skipped, text).
fn install_blocks() -> Vec<(bool, String)> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let start = readme
        .find("\n## Install on a cluster\n")
        .expect("README has no 'Install on a cluster' section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut blocks = vec![];
    let mut rest = section;
    while let Some(i) = rest.find("```sh\n") {
        let before = rest[..i].trim_end();
        let skipped = before
            .lines()
            .last()
            .is_some_and(|l| l.starts_with(SKIP_MARK));
        let body = &rest[i + 6..];
        let end = body.find("\n```").expect("unterminated block");
        blocks.push((skipped, body[..end + 1].to_string()));
        rest = &body[end + 4..];
    }
    blocks
}

fn cache_dir() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/mcp-keycloak-operator")
}

/// Keycloak's distribution `bin/` (kcadm.sh), at the version of hack/versions.env.
fn keycloak_bin() -> PathBuf {
    let versions = std::fs::read_to_string(Path::new(ROOT).join("hack/versions.env")).unwrap();
    let v = versions
        .lines()
        .find_map(|l| l.strip_prefix("KEYCLOAK_VERSION="))
        .expect("KEYCLOAK_VERSION");
    cache_dir().join(format!("keycloak/{v}/keycloak-{v}/bin"))
}

struct Shell {
    env: BTreeMap<String, String>,
}

impl Shell {
    /// Runs one block with `bash -euo pipefail`; returns (success, stdout + stderr).
    async fn run(&self, block: &str) -> (bool, String) {
        let mut cmd = tokio::process::Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", block])
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = tokio::time::timeout(Duration::from_secs(400), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("block took more than 400 s:\n{block}"))
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    async fn must(&self, block: &str) -> String {
        let (ok, out) = self.run(block).await;
        assert!(ok, "README block failed:\n{block}\n--- output:\n{out}");
        out
    }
}

/// The README's variables, set for this test; PATH with the test bed's kubectl and helm and
/// Keycloak's kcadm.sh; HOME (kcadm's and helm's config) in a fresh temporary dir.
async fn shell(vars_block: &str) -> Shell {
    let tb = support::testbed().await;
    let home = std::env::temp_dir().join(support::unique_name("install-home"));
    std::fs::create_dir_all(&home).unwrap();
    let path = format!(
        "{}:{}:{}",
        tb.dir.join("bin").display(),
        keycloak_bin().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env: BTreeMap<String, String> = [
        ("OPERATOR_NS", support::unique_name("install-op")),
        ("APP_NS", support::unique_name("install-app")),
        ("REALM", support::unique_name("install")),
        ("KEYCLOAK_URL", tb.keycloak_url.clone()),
        ("KEYCLOAK_ADMIN_URL", tb.keycloak_url.clone()),
        ("KEYCLOAK_ADMIN_PASSWORD", tb.admin_password.clone()),
        (
            "IMAGE_REPO",
            "registry.example.com/mcp-keycloak-operator".into(),
        ),
        ("IMAGE_TAG", "0.1.0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // The README's variable block and this test set the same names.
    let readme_vars: Vec<&str> = vars_block
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let ours: Vec<&str> = env.keys().map(String::as_str).collect();
    let mut sorted = readme_vars.clone();
    sorted.sort();
    assert_eq!(sorted, ours, "README variables vs the test's");
    env.insert("PATH".into(), path);
    env.insert("HOME".into(), home.display().to_string());
    env.insert("KUBECONFIG".into(), tb.kubeconfig.display().to_string());
    Shell { env }
}

/// The chart's operator, in this process, as the chart's ServiceAccount, watching the app
/// namespace only (the test bed is shared with other tests).
async fn operator_as_chart_service_account(sh: &Shell) -> Operator {
    let admin = support::kube_client().await;
    let ns = &sh.env["OPERATOR_NS"];
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let lp = ListParams::default().labels("app.kubernetes.io/instance=mcp-keycloak-operator");
    let sa = sas.list(&lp).await.unwrap().items;
    assert_eq!(sa.len(), 1, "the chart's ServiceAccount in {ns}");
    let name = sa[0].metadata.name.clone().unwrap();
    let client = support::kube_client_as_service_account(ns, &name).await;
    Operator::start(&client, &sh.env["APP_NS"]).await
}

/// Step 2 as written stops at the CRDs that exist and names the flag; with the flag it installs.
/// Then the operator, as the chart's ServiceAccount.
async fn install_operator(sh: &Shell, install: &str) -> Operator {
    assert!(install.contains("helm install") && install.ends_with("--wait --timeout 5m\n"));
    let (ok, out) = sh.run(install).await;
    assert!(!ok && out.contains("--set crds.install=false"), "{out}");
    let fixed = install.replace(
        "--wait --timeout 5m",
        "--set crds.install=false --wait --timeout 5m",
    );
    let out = sh.must(&fixed).await;
    assert!(out.contains("STATUS: deployed"), "{out}");
    operator_as_chart_service_account(sh).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_install_on_a_cluster_runs_as_written() {
    let admin = support::kube_client().await;
    // The test bed's CRDs exist before the install, as for a user who applied crds/ first.
    harness::install_crds(&admin).await;
    let blocks = install_blocks();
    let run: Vec<&String> = blocks.iter().filter(|(s, _)| !*s).map(|(_, b)| b).collect();
    assert_eq!(
        blocks.len() - run.len(),
        1,
        "only the image build is skipped"
    );
    assert!(blocks.iter().any(|(s, b)| *s && b.contains("docker build")));
    let [vars, install, keycloak, first, upgrade] = run[..] else {
        panic!(
            "expected 5 runnable blocks in the README section, got {}",
            run.len()
        );
    };
    let sh = shell(vars).await;
    // The README's blocks create these; they go when the test ends, also on a panic.
    let _namespaces = [&sh.env["APP_NS"], &sh.env["OPERATOR_NS"]]
        .map(|name| support::TestNamespace { name: name.clone() });
    // A failed earlier run against a kept test bed may have left the release's cluster objects.
    sh.run("kubectl delete clusterrole,clusterrolebinding -l app.kubernetes.io/instance=mcp-keycloak-operator")
        .await;

    let op = install_operator(&sh, install).await;
    assert!(keycloak.contains("kcadm.sh add-roles"));
    sh.must(keycloak).await;
    assert!(first.contains("kubectl wait"));
    let out = sh.must(first).await;
    assert!(
        out.contains("mcpserver.mcpauth.dev/weather condition met"),
        "{out}"
    );

    // Step 6 deletes through the operator: the server's Keycloak client goes with it.
    let realm = Realm::new(&sh.env["REALM"]).await;
    let client_id = format!("mcp.{}.weather", sh.env["APP_NS"]);
    assert!(
        realm.client(&client_id).await.is_some(),
        "{client_id} before step 6"
    );
    let out = sh.must(upgrade).await;
    assert!(out.contains("has been upgraded"), "{out}");
    assert!(
        out.contains("release \"mcp-keycloak-operator\" uninstalled"),
        "{out}"
    );
    assert!(out.contains("mcpservers.mcpauth.dev"), "CRDs kept: {out}");
    assert!(
        realm.client(&client_id).await.is_none(),
        "{client_id} after step 6"
    );
    drop(op);
    realm.delete().await;
    let _ = std::fs::remove_dir_all(&sh.env["HOME"]);
}
