//! GitOps health on the real API server: what Flux (kstatus, through the pinned helper built from
//! hack/kstatus) and Argo CD (the Lua health check of docs/gitops.md, run by a Lua 5.1 runtime)
//! conclude from McpAuthPolicy and McpServer objects — statuses written exactly by a test field
//! manager, and statuses written by the operator itself. Also: examples/gitops parse, the example
//! objects pass the API server's validation, and the shipped copies of the health check agree.

use crate::harness;
use crate::support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use harness::{Kind, Scenario, WAIT};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use mlua::LuaSerdeExt;
use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TEST_MANAGER: &str = "gitops-test";

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn health_script() -> String {
    read("docs/gitops/health.lua")
}

// ---------------------------------------------------------------------------------------------
// The two health computations

/// The kstatus helper: `$KSTATUS`, else the test bed's bin dir (`hack/testbed up` links it).
async fn kstatus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KSTATUS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let p = support::testbed().await.dir.join("bin/kstatus");
    assert!(
        p.is_file(),
        "{} missing: run ./hack/testbed up (it builds hack/kstatus)",
        p.display()
    );
    p
}

/// kstatus' (status, message) for one object, as Flux computes it.
async fn kstatus(obj: &Value) -> (String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(kstatus_bin().await)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kstatus helper");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(obj.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "kstatus helper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("kstatus helper output");
    (
        v["status"].as_str().unwrap().to_string(),
        v["message"].as_str().unwrap().to_string(),
    )
}

/// Argo CD's (status, message) for one object: the script runs with the object as global `obj`
/// (JSON null as nil, as Argo CD's Lua conversion does) and returns a table.
fn argo_health(script: &str, obj: &Value) -> (String, String) {
    let lua = mlua::Lua::new();
    let opts = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let obj = lua.to_value_with(obj, opts).expect("object to Lua");
    lua.globals().set("obj", obj).unwrap();
    let t: mlua::Table = lua
        .load(script)
        .eval()
        .unwrap_or_else(|e| panic!("health script failed: {e}"));
    (t.get("status").unwrap(), t.get("message").unwrap())
}

// ---------------------------------------------------------------------------------------------
// Objects on the API server

async fn live<K: Kind>(client: &Client, ns: &str, name: &str) -> Value {
    let obj = Api::<K>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get {} {ns}/{name}: {e}", K::kind(&())));
    // kstatus needs apiVersion and kind, which a typed GET leaves to the type.
    let mut v = serde_json::to_value(&obj).unwrap();
    v["apiVersion"] = json!(K::api_version(&()));
    v["kind"] = json!(K::kind(&()));
    v
}

/// Both computations for one live object: ((kstatus status, message), (Argo CD status, message)).
async fn health<K: Kind>(
    client: &Client,
    ns: &str,
    name: &str,
) -> ((String, String), (String, String)) {
    let obj = live::<K>(client, ns, name).await;
    (kstatus(&obj).await, argo_health(&health_script(), &obj))
}

/// Waits until kstatus and Argo CD report `want` = (kstatus, Argo CD) for a live object.
async fn wait_health<K: Kind>(client: &Client, ns: &str, name: &str, want: (&str, &str)) {
    let what = format!("{} {ns}/{name} health {want:?}", K::kind(&()));
    support::poll(&what, WAIT, || async {
        let (k, a) = health::<K>(client, ns, name).await;
        if (k.0.as_str(), a.0.as_str()) == want {
            Ok(())
        } else {
            Err((k, a))
        }
    })
    .await
}

/// Writes `status` as the test's field manager (as the operator would, with server-side apply).
async fn set_status<K: Kind>(client: &Client, ns: &str, name: &str, status: Value) {
    let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    Api::<K>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .unwrap_or_else(|e| panic!("status of {ns}/{name}: {e}"));
}

fn condition(type_: &str, status: &str, reason: &str, generation: i64) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason,
        "message": format!("{reason} (test)"),
        "observedGeneration": generation,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    })
}

/// One exactly written status and the health both tools must read from it.
struct Case {
    name: &'static str,
    /// `status.observedGeneration` relative to `metadata.generation`.
    observed_lag: i64,
    /// (type, status, reason) of each condition.
    conditions: &'static [(&'static str, &'static str, &'static str)],
    kstatus: &'static str,
    argo: &'static str,
}

const READY_TRUE: (&str, &str, &str) = ("Ready", "True", "Ready");
const STALLED: &[(&str, &str, &str)] = &[
    ("Ready", "False", "InvalidAdminCredentials"),
    ("Stalled", "True", "InvalidAdminCredentials"),
];

const CASES: &[Case] = &[
    Case {
        name: "Ready for an older generation",
        observed_lag: 1,
        conditions: &[READY_TRUE],
        kstatus: "InProgress",
        argo: "Progressing",
    },
    Case {
        name: "Ready for the current generation",
        observed_lag: 0,
        conditions: &[READY_TRUE],
        kstatus: "Current",
        argo: "Healthy",
    },
    Case {
        name: "not Ready for a reason that clears by itself",
        observed_lag: 0,
        conditions: &[("Ready", "False", "KeycloakUnreachable")],
        kstatus: "InProgress",
        argo: "Progressing",
    },
    Case {
        name: "Stalled for the current generation",
        observed_lag: 0,
        conditions: STALLED,
        kstatus: "Failed",
        argo: "Degraded",
    },
    Case {
        name: "Stalled for an older generation (the new spec may fix it)",
        observed_lag: 1,
        conditions: STALLED,
        kstatus: "InProgress",
        argo: "Progressing",
    },
];

/// Runs every case on one live object (generation 2); returns (case, object) for each.
async fn run_cases<K: Kind>(client: &Client, ns: &str, name: &str) -> Vec<(&'static str, Value)> {
    let kind = K::kind(&()).to_string();
    let mut seen = vec![];
    for case in CASES {
        let generation = live::<K>(client, ns, name).await["metadata"]["generation"]
            .as_i64()
            .unwrap();
        let observed = generation - case.observed_lag;
        let conditions: Vec<Value> = case
            .conditions
            .iter()
            .map(|(t, s, r)| condition(t, s, r, observed))
            .collect();
        set_status::<K>(
            client,
            ns,
            name,
            json!({"observedGeneration": observed, "conditions": conditions}),
        )
        .await;
        let obj = live::<K>(client, ns, name).await;
        let (k, a) = (kstatus(&obj).await, argo_health(&health_script(), &obj));
        assert_eq!(
            (k.0.as_str(), a.0.as_str()),
            (case.kstatus, case.argo),
            "{kind}, {}: kstatus {k:?}, Argo CD {a:?}; object status {}",
            case.name,
            obj["status"]
        );
        seen.push((case.name, obj));
    }
    seen
}

/// Copies of the health check with one rule broken must each misjudge at least one case: the
/// cases really exercise observedGeneration, Ready and Stalled.
fn assert_cases_catch_broken_checks(seen: &[(&'static str, Value)]) {
    let script = health_script();
    let mutants = [
        (
            "ignores observedGeneration",
            "obj.status.observedGeneration ~= generation",
            "false",
        ),
        ("ignores Ready's status", "ready.status == \"True\"", "true"),
        ("ignores Stalled", "stalled.status == \"True\"", "false"),
    ];
    for (what, from, to) in mutants {
        assert!(script.contains(from), "health.lua no longer has `{from}`");
        let broken = script.replace(from, to);
        let misjudged = seen.iter().any(|(name, obj)| {
            let want = CASES.iter().find(|c| c.name == *name).unwrap().argo;
            argo_health(&broken, obj).0 != want
        });
        assert!(misjudged, "a health check that {what} passes every case");
    }
}

#[tokio::test]
async fn exact_statuses_read_as_kstatus_and_argo_cd_health() {
    let client = support::kube_client().await;
    harness::install_crds(&client).await;
    let ns = support::TestNamespace::new(&client, "gitops-exact").await;
    harness::create(
        &client,
        &ns,
        &harness::seed_policy("p", "unused", "http://127.0.0.1:9"),
    )
    .await;
    harness::create(&client, &ns, &harness::server("s", "p", "http://s.example")).await;

    // Before any status: kstatus reads an object without status or conditions as Current (its
    // rule for unknown kinds; docs/gitops.md), the health check waits for the operator.
    let ((k, _), (a, _)) = health::<McpServer>(&client, &ns, "s").await;
    assert_eq!((k.as_str(), a.as_str()), ("Current", "Progressing"));
    let ((k, _), (a, _)) = health::<McpAuthPolicy>(&client, &ns, "p").await;
    assert_eq!((k.as_str(), a.as_str()), ("Current", "Progressing"));

    // Generation 2, so a lagging observedGeneration is a real one.
    merge::<McpServer>(&client, &ns, "s", json!({"spec": {"replicas": 2}})).await;
    let public = json!({"spec": {"keycloak": {"publicUrl": "https://kc.example"}}});
    merge::<McpAuthPolicy>(&client, &ns, "p", public).await;

    let mut seen = run_cases::<McpServer>(&client, &ns, "s").await;
    seen.extend(run_cases::<McpAuthPolicy>(&client, &ns, "p").await);
    assert_cases_catch_broken_checks(&seen);
}

/// An admin Secret for the test bed's Keycloak with `password`.
async fn admin_secret_with(client: &Client, ns: &str, name: &str, password: &str) {
    let tb = support::testbed().await;
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"username": tb.admin_user, "password": password, "url": tb.keycloak_url}
    }))
    .unwrap();
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&s),
    )
    .await
    .expect("admin secret");
}

async fn merge<K: Kind>(client: &Client, ns: &str, name: &str, patch: Value) {
    Api::<K>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("patch {ns}/{name}: {e}"));
}

/// The operator's own statuses: Current/Healthy when Ready, InProgress/Progressing while a spec
/// change waits for it, Current/Healthy again once it has reconciled that generation.
#[tokio::test]
async fn operator_statuses_read_as_current_then_in_progress_until_reconciled() {
    let client = support::kube_client().await;
    let tb = support::testbed().await;
    let mut scenario = Scenario::new("gitops-op").await;
    let ns = scenario.ns.clone();
    harness::create(
        &client,
        &ns,
        &harness::seed_policy("p", &scenario.realm.name, &tb.keycloak_url),
    )
    .await;
    harness::create(&client, &ns, &harness::server("s", "p", "http://s.example")).await;
    wait_health::<McpAuthPolicy>(&client, &ns, "p", ("Current", "Healthy")).await;
    wait_health::<McpServer>(&client, &ns, "s", ("Current", "Healthy")).await;

    // A spec change no operator has seen yet: Ready is still True, but for generation 1.
    scenario.stop_operator();
    merge::<McpServer>(&client, &ns, "s", json!({"spec": {"replicas": 2}})).await;
    let ((k, km), (a, _)) = health::<McpServer>(&client, &ns, "s").await;
    assert_eq!(
        (k.as_str(), a.as_str()),
        ("InProgress", "Progressing"),
        "{km}"
    );
    scenario.start_operator().await;
    wait_health::<McpServer>(&client, &ns, "s", ("Current", "Healthy")).await;
    let s = live::<McpServer>(&client, &ns, "s").await;
    assert_eq!(
        s["status"]["observedGeneration"],
        s["metadata"]["generation"]
    );
}

/// Rejected admin credentials, which only a person can fix: the policy Failed/Degraded, its
/// server InProgress/Progressing (PolicyNotReady clears by itself); both Current/Healthy once
/// the credentials are fixed.
#[tokio::test]
async fn rejected_admin_credentials_read_as_failed_until_fixed() {
    let client = support::kube_client().await;
    let tb = support::testbed().await;
    let scenario = Scenario::new("gitops-bad").await;
    let ns = scenario.ns.clone();
    admin_secret_with(&client, &ns, "bad-admin", "not-the-password").await;
    let mut bad = harness::seed_policy("bad", &scenario.realm.name, &tb.keycloak_url);
    bad.spec.keycloak.admin_credentials_secret_ref.name = "bad-admin".into();
    harness::create(&client, &ns, &bad).await;
    harness::create(
        &client,
        &ns,
        &harness::server("t", "bad", "http://t.example"),
    )
    .await;
    wait_health::<McpAuthPolicy>(&client, &ns, "bad", ("Failed", "Degraded")).await;
    let ((_, km), (_, am)) = health::<McpAuthPolicy>(&client, &ns, "bad").await;
    assert!(km.contains("rejected the admin credentials"), "{km}");
    assert!(am.starts_with("InvalidAdminCredentials: "), "{am}");
    harness::wait_reason::<McpServer>(&client, &ns, "t", "Ready", "PolicyNotReady").await;
    let ((k, _), (a, _)) = health::<McpServer>(&client, &ns, "t").await;
    assert_eq!((k.as_str(), a.as_str()), ("InProgress", "Progressing"));

    // Fixed: the policy's next reconcile (an annotation triggers it) clears Stalled.
    admin_secret_with(&client, &ns, "bad-admin", &tb.admin_password).await;
    let retry = json!({"metadata": {"annotations": {"test/retry": "1"}}});
    merge::<McpAuthPolicy>(&client, &ns, "bad", retry).await;
    wait_health::<McpAuthPolicy>(&client, &ns, "bad", ("Current", "Healthy")).await;
    wait_health::<McpServer>(&client, &ns, "t", ("Current", "Healthy")).await;
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
}

/// Every document of every file under examples/gitops, as (file, document).
fn example_documents() -> Vec<(String, Value)> {
    let mut files = vec![];
    yaml_files(&Path::new(ROOT).join("examples/gitops"), &mut files);
    files.sort();
    let mut docs = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let rel = f.strip_prefix(ROOT).unwrap().display().to_string();
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
            assert!(
                v["apiVersion"].is_string() && v["kind"].is_string(),
                "{rel}: a document without apiVersion and kind"
            );
            docs.push((rel.clone(), v));
        }
    }
    docs
}

#[test]
fn gitops_examples_parse_and_ship_the_tested_health_check() {
    let docs = example_documents();
    let kinds: Vec<&str> = docs
        .iter()
        .map(|(_, d)| d["kind"].as_str().unwrap())
        .collect();
    for k in [
        "Application",
        "GitRepository",
        "HelmRelease",
        "McpAuthPolicy",
        "McpServer",
    ] {
        assert!(kinds.contains(&k), "no {k} in examples/gitops: {kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| **k == "Kustomization").count(), 3);
    // Paths the Argo CD Applications and Flux objects point at exist in this repository.
    for (file, d) in &docs {
        let path = d["spec"]["source"]["path"]
            .as_str()
            .or(d["spec"]["path"].as_str())
            .or(d["spec"]["chart"]["spec"]["chart"].as_str());
        if let Some(p) = path {
            assert!(
                Path::new(ROOT).join(p).is_dir(),
                "{file}: {p} does not exist"
            );
        }
    }
    let kustomization = docs
        .iter()
        .find(|(f, _)| f.ends_with("app/kustomization.yaml"))
        .unwrap();
    for r in kustomization.1["resources"].as_array().unwrap() {
        let p = Path::new(ROOT)
            .join("examples/gitops/app")
            .join(r.as_str().unwrap());
        assert!(p.is_file(), "{} missing", p.display());
    }
    // The shipped copies of the health check are the script these tests run.
    let script = health_script();
    let cm = docs.iter().find(|(_, d)| d["kind"] == "ConfigMap").unwrap();
    for kind in ["McpAuthPolicy", "McpServer"] {
        let key = format!("resource.customizations.health.mcpauth.dev_{kind}");
        assert_eq!(cm.1["data"][&key].as_str(), Some(script.as_str()), "{key}");
    }
    let doc = read("docs/gitops.md");
    assert!(
        doc.contains(&format!("```lua\n{script}```")),
        "docs/gitops.md lacks health.lua"
    );
}

/// The example McpAuthPolicy and McpServer are valid for the real API server (CRD schema and
/// CEL rules), by a server-side dry run.
#[tokio::test]
async fn gitops_example_objects_pass_api_server_validation() {
    let client = support::kube_client().await;
    harness::install_crds(&client).await;
    let ns = support::TestNamespace::new(&client, "gitops-ex").await;
    for (file, d) in example_documents() {
        match d["kind"].as_str().unwrap() {
            "McpAuthPolicy" => dry_run_create::<McpAuthPolicy>(&client, &ns, &file, d).await,
            "McpServer" => dry_run_create::<McpServer>(&client, &ns, &file, d).await,
            _ => {}
        }
    }
}

/// Creates `doc` as a `K` with a server-side dry run; panics naming `file` if it is refused.
async fn dry_run_create<K: Kind>(client: &Client, ns: &str, file: &str, doc: Value) {
    let obj: K = serde_json::from_value(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<K>::namespaced(client.clone(), ns)
        .create(&dry, &obj)
        .await
        .unwrap_or_else(|e| panic!("{file}: {e}"));
}
