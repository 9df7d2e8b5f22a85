//! The Helm chart (charts/mcp-keycloak-operator): its CRDs are the generated ones, it lints
//! (strict, both RBAC scopes), its schema refuses bad values, what it renders is hardened and
//! wired to the operator's flags, the real kube-apiserver accepts it, and it installs, upgrades
//! and uninstalls (keeping the CRDs).

use crate::harness;
use crate::support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mcp-keycloak-operator");
const CRD_NAMES: [&str; 2] = ["mcpauthpolicies.mcpauth.dev", "mcpservers.mcpauth.dev"];

// ---------------------------------------------------------------------------------------------
// helm and kubectl of the test bed

/// A test-bed tool: `$HELM`/`$KUBECTL`, else the test bed's bin dir (what the PATH line of
/// `hack/testbed up` adds), else the versioned cache dir of hack/versions.env, else (after
/// bringing the test bed up, which installs them) its bin dir, else PATH.
pub(crate) async fn tool(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(name.to_uppercase()).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let cache = home.join(".cache/mcp-keycloak-operator");
    let tb_dir = std::env::var_os("TESTBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("testbed"));
    let mut candidates = vec![tb_dir.join("bin").join(name)];
    let versions =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/versions.env"))
            .unwrap_or_default();
    let version = |key: &str| {
        versions.lines().find_map(|l| {
            l.trim()
                .strip_prefix(key)?
                .strip_prefix('=')
                .map(|v| v.trim().to_string())
        })
    };
    match name {
        "helm" => candidates
            .extend(version("HELM_VERSION").map(|v| cache.join(format!("bin/helm-{v}/helm")))),
        "kubectl" => candidates.extend(
            version("KUBERNETES_VERSION")
                .map(|v| cache.join(format!("bin/kubernetes-{v}/kubectl"))),
        ),
        "promtool" => candidates.extend(
            version("PROMETHEUS_MODULE_VERSION")
                .map(|v| cache.join(format!("bin/promtool-{v}/promtool"))),
        ),
        _ => {}
    }
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return p.clone();
    }
    let tb = support::testbed().await;
    let p = tb.dir.join("bin").join(name);
    if p.is_file() {
        p
    } else {
        PathBuf::from(name)
    }
}

pub(crate) struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `helm`/`kubectl` with `args` (and `stdin`), with the test bed's KUBECONFIG when `kube`.
pub(crate) async fn run(name: &str, args: &[&str], stdin: Option<&str>, kube: bool) -> Output {
    let bin = tool(name).await;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    // Helm keeps its own state out of the user's home.
    let helm_home = std::env::temp_dir().join("mcp-keycloak-operator-helm");
    cmd.env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_DATA_HOME", helm_home.join("data"));
    if kube {
        cmd.env("KUBECONFIG", &support::testbed().await.kubeconfig);
    } else {
        cmd.env("KUBECONFIG", "/dev/null");
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut si = child.stdin.take().unwrap();
        si.write_all(input.as_bytes()).await.unwrap();
        drop(si);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} took more than 300 s"))
        .unwrap();
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn must(name: &str, args: &[&str], stdin: Option<&str>, kube: bool) -> String {
    let o = run(name, args, stdin, kube).await;
    assert!(
        o.ok,
        "{name} {} failed:\n{}\n{}",
        args.join(" "),
        o.stdout,
        o.stderr
    );
    o.stdout
}

/// A helm release command (`command` such as `install NAME CHART`) in `ns` with `extra`
/// arguments, waiting up to 180 s for its objects.
async fn helm_release(command: &[&str], ns: &str, extra: &[&str]) -> String {
    let mut args = command.to_vec();
    args.extend(["--namespace", ns]);
    args.extend(extra);
    args.extend(["--wait", "--timeout", "180s"]);
    must("helm", &args, None, true).await
}

/// `helm template` with `--set` values; the rendered documents as JSON.
pub(crate) async fn template(release: &str, ns: &str, sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", release, CHART, "--namespace", ns];
    for s in sets {
        args.extend(["--set", s]);
    }
    documents(&must("helm", &args, None, false).await)
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| {
            let v = <Value as serde::Deserialize>::deserialize(d).ok()?;
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

pub(crate) fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

fn env_of(deployment: &Value) -> Vec<Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn env_value(deployment: &Value, name: &str) -> Option<Value> {
    env_of(deployment).into_iter().find(|e| e["name"] == name)
}

// ---------------------------------------------------------------------------------------------
// Without a cluster

/// The chart's files/crds is a symlink to the repository's crds/ (so it cannot drift); what it
/// reads there and what `helm package` ships are byte for byte the generated CRDs.
#[tokio::test]
async fn chart_crds_are_byte_identical_to_the_generated_ones() {
    let dir = Path::new(CHART).join("files/crds");
    let fix =
        "regenerate with `cargo run -- crdgen --out crds` (the chart's files/crds links to crds/)";
    let mut in_chart: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    in_chart.sort();
    let generated = mcp_keycloak_operator::crdgen::manifests();
    let mut names: Vec<String> = generated.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(
        in_chart, names,
        "the chart's files/crds/ must hold exactly the generated CRDs: {fix}"
    );

    let out = std::env::temp_dir().join(support::unique_name("chart-package"));
    must(
        "helm",
        &["package", CHART, "--destination", out.to_str().unwrap()],
        None,
        false,
    )
    .await;
    let tgz = out.join("mcp-keycloak-operator-0.1.0.tgz");
    for (name, yaml) in generated {
        let linked = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(linked == yaml, "crds/{name} is stale: {fix}");
        let packaged = std::process::Command::new("tar")
            .args([
                "-xzOf",
                tgz.to_str().unwrap(),
                &format!("mcp-keycloak-operator/files/crds/{name}"),
            ])
            .output()
            .expect("tar");
        assert!(
            packaged.status.success(),
            "{name} missing from the packaged chart"
        );
        assert!(
            packaged.stdout == yaml.as_bytes(),
            "the packaged chart's {name} differs from the generated CRD"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[tokio::test]
async fn chart_lints_strict_in_both_rbac_scopes() {
    let sets: [&[&str]; 4] = [
        &[],
        &["rbac.scope=namespace"],
        &["rbac.scope=namespace", "rbac.namespaces={team-a}"],
        &[
            "replicaCount=2",
            "metrics.serviceMonitor.enabled=true",
            "networkPolicy.enabled=true",
            "crds.keep=false",
            "logFormat=text",
            "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ],
    ];
    for set in sets {
        for strict in [false, true] {
            let mut args = vec!["lint", CHART];
            if strict {
                args.push("--strict");
            }
            for s in set {
                args.extend(["--set", s]);
            }
            let out = must("helm", &args, None, false).await;
            assert!(out.contains("0 chart(s) failed"), "helm {args:?}:\n{out}");
        }
    }
}

#[tokio::test]
async fn chart_refuses_bad_values_with_a_clear_message() {
    let cases: [(&[&str], &str); 6] = [
        (&["bogus=1"], "bogus"),
        (&["rbac.scope=everything"], "/rbac/scope"),
        (&["logFormat=xml"], "logFormat"),
        (&["image.pullPolicy=Sometimes"], "pullPolicy"),
        (
            &["rbac.scope=namespace", "rbac.namespaces={team-a,team-b}"],
            "the operator watches one namespace",
        ),
        (
            &["replicaCount=2", "leaderElection.enabled=false"],
            "replicaCount > 1 needs leaderElection.enabled=true",
        ),
    ];
    for (sets, expected) in cases {
        let mut args = vec!["template", "x", CHART];
        for s in sets {
            args.extend(["--set", s]);
        }
        let o = run("helm", &args, None, false).await;
        assert!(!o.ok, "helm template accepted {sets:?}");
        assert!(
            o.stderr.contains(expected),
            "helm template {sets:?} failed without mentioning {expected:?}:\n{}",
            o.stderr
        );
    }
}

#[tokio::test]
async fn rendered_deployment_is_hardened_and_wired_to_the_operator_flags() {
    let docs = template("mko", "ops", &[]).await;
    let d = one(&docs, "Deployment");
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(pod["serviceAccountName"], "mko-mcp-keycloak-operator");
    assert_eq!(c["image"], "ghcr.io/mcp-keycloak-operator/operator:0.1.0");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    for a in [
        "--metrics-addr=0.0.0.0:8080",
        "--leader-election",
        "--lease-name=mko-mcp-keycloak-operator",
        "--resync-seconds=300",
        "--max-concurrent-reconciles=8",
    ] {
        assert!(args.contains(&a), "missing {a} in {args:?}");
    }
    assert_eq!(
        env_value(d, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env_value(d, "POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env_value(d, "OPERATOR_IMAGE").unwrap()["value"],
        "ghcr.io/mcp-keycloak-operator/operator:0.1.0"
    );
    assert_eq!(env_value(d, "LOG_JSON").unwrap()["value"], "true");
    assert_eq!(env_value(d, "RUST_LOG").unwrap()["value"], "info");
    assert!(
        env_value(d, "WATCH_NAMESPACE").is_none(),
        "cluster scope watches every namespace"
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );

    // Metrics Service selects the operator pods; no ServiceMonitor/NetworkPolicy unless asked.
    let svc = one(&docs, "Service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        svc["spec"]["selector"],
        d["spec"]["selector"]["matchLabels"]
    );
    assert!(find(&docs, "ServiceMonitor").is_empty() && find(&docs, "NetworkPolicy").is_empty());
    // Cluster scope: one ClusterRole (+ binding); the Lease Role is in the release namespace.
    assert_eq!(find(&docs, "ClusterRole").len(), 1);
    let binding = one(&docs, "ClusterRoleBinding");
    assert_eq!(
        binding["subjects"][0],
        json!({"kind": "ServiceAccount", "name": "mko-mcp-keycloak-operator", "namespace": "ops"})
    );
    let le = one(&docs, "Role");
    assert_eq!(le["metadata"]["namespace"], "ops");
    assert!(le["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["resourceNames"] == json!(["mko-mcp-keycloak-operator"])));

    // Values reach the pod.
    let docs = template(
        "mko",
        "ops",
        &[
            "logFormat=text",
            "logLevel=debug",
            "gatewayImage=example/gw:1",
            "image.tag=9.9.9",
            "replicaCount=2",
            "resyncSeconds=60",
        ],
    )
    .await;
    let d = one(&docs, "Deployment");
    assert_eq!(env_value(d, "LOG_JSON").unwrap()["value"], "false");
    assert_eq!(env_value(d, "RUST_LOG").unwrap()["value"], "debug");
    assert_eq!(
        env_value(d, "OPERATOR_IMAGE").unwrap()["value"],
        "example/gw:1"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/mcp-keycloak-operator/operator:9.9.9"
    );
    assert_eq!(d["spec"]["replicas"], 2);
    let args = d["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--resync-seconds=60"), "{args}");

    // Without leader election: no --leader-election, no Lease Role.
    let docs = template("mko", "ops", &["leaderElection.enabled=false"]).await;
    assert!(!one(&docs, "Deployment")
        .to_string()
        .contains("--leader-election"));
    assert!(find(&docs, "Role").is_empty());

    // ServiceMonitor and NetworkPolicy when enabled.
    let docs = template(
        "mko",
        "ops",
        &[
            "metrics.serviceMonitor.enabled=true",
            "networkPolicy.enabled=true",
        ],
    )
    .await;
    let sm = one(&docs, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    let np = one(&docs, "NetworkPolicy");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], "metrics");
}

#[tokio::test]
async fn namespace_scope_renders_roles_and_watch_namespace() {
    let docs = template(
        "mko",
        "ops",
        &["rbac.scope=namespace", "rbac.namespaces={team-a}"],
    )
    .await;
    let d = one(&docs, "Deployment");
    assert_eq!(env_value(d, "WATCH_NAMESPACE").unwrap()["value"], "team-a");
    let roles = find(&docs, "Role");
    let watch_role = roles
        .iter()
        .find(|r| r["metadata"]["namespace"] == "team-a")
        .expect("a Role in team-a");
    // Nothing cluster-wide: a tenant's install needs no cluster RBAC (besides the CRDs).
    assert!(find(&docs, "ClusterRole").is_empty() && find(&docs, "ClusterRoleBinding").is_empty());
    // The namespaced Role grants exactly the ClusterRole's rules of cluster scope, minus namespaces.
    let cluster_docs = template("mko", "ops", &[]).await;
    let mut cluster_rules = one(&cluster_docs, "ClusterRole")["rules"]
        .as_array()
        .unwrap()
        .clone();
    cluster_rules.retain(|r| r["resources"] != json!(["namespaces"]));
    assert_eq!(watch_role["rules"], Value::Array(cluster_rules));
    assert!(find(&docs, "RoleBinding")
        .iter()
        .any(|b| b["metadata"]["namespace"] == "team-a" && b["subjects"][0]["namespace"] == "ops"));
    // No rbac.namespaces: the release namespace.
    let docs = template("mko", "ops", &["rbac.scope=namespace"]).await;
    assert_eq!(
        env_value(one(&docs, "Deployment"), "WATCH_NAMESPACE").unwrap()["value"],
        "ops"
    );
}

#[tokio::test]
async fn crds_are_rendered_with_keep_and_can_be_left_out() {
    let generated: Vec<Value> = mcp_keycloak_operator::crdgen::manifests()
        .iter()
        .map(|(_, y)| serde_yaml::from_str(y).unwrap())
        .collect();
    let strip = |crd: &Value| {
        let mut c = crd.clone();
        let m = c["metadata"].as_object_mut().unwrap();
        m.remove("labels");
        m.remove("annotations");
        c
    };
    let docs = template("mko", "ops", &[]).await;
    let crds = find(&docs, "CustomResourceDefinition");
    assert_eq!(crds.len(), 2);
    for crd in &crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "Helm"
        );
        assert!(
            generated.iter().any(|g| *g == strip(crd)),
            "rendered CRD {} differs from the generated one",
            crd["metadata"]["name"]
        );
    }
    let docs = template("mko", "ops", &["crds.keep=false"]).await;
    let crds = find(&docs, "CustomResourceDefinition");
    assert_eq!(crds.len(), 2);
    assert!(crds.iter().all(|c| c["metadata"]["annotations"].is_null()));
    let docs = template("mko", "ops", &["crds.install=false"]).await;
    assert!(find(&docs, "CustomResourceDefinition").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Against the test bed's kube-apiserver

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_chart_is_accepted_by_the_api_server() {
    let client = support::kube_client().await;
    let ns = support::TestNamespace::new(&client, "helm-dry").await;
    let watch = format!("rbac.namespaces={{{ns}}}");
    let variants: [Vec<&str>; 4] = [
        vec![],
        vec!["rbac.scope=namespace", &watch],
        vec![
            "replicaCount=2",
            "networkPolicy.enabled=true",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
            "networkPolicy.egress[0].ports[0].port=443",
            "networkPolicy.egress[0].ports[0].protocol=TCP",
        ],
        vec![
            "crds.install=false",
            "serviceAccount.create=false",
            "serviceAccount.name=default",
            "metrics.service.enabled=false",
        ],
    ];
    for sets in variants {
        let mut args = vec!["template", "mko-dry", CHART, "--namespace", &ns];
        for s in &sets {
            args.extend(["--set", s]);
        }
        let rendered = must("helm", &args, None, false).await;
        let out = must(
            "kubectl",
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&rendered),
            true,
        )
        .await;
        for kind in ["deployment.apps/", "role.rbac.authorization.k8s.io/"] {
            assert!(
                out.contains(kind),
                "kubectl apply --dry-run=server ({sets:?}) did not mention {kind}:\n{out}"
            );
        }
        assert!(out.contains("(server dry run)"), "{out}");
    }
}

/// Hands the CRDs (already on the shared test bed, applied by the test harness) to `release`, the
/// way Helm adopts existing objects. They stay identical, so concurrent tests are not disturbed.
async fn adopt_crds(client: &kube::Client, release: &str, ns: &str) {
    harness::install_crds(client).await;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRD_NAMES {
        let patch = json!({"metadata": {
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": ns}
        }});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_upgrade_uninstall_keeps_the_crds() {
    let client = support::kube_client().await;
    let ns = support::TestNamespace::new(&client, "helm-install").await;
    let release = support::unique_name("mko");
    let full = format!("{release}-mcp-keycloak-operator");
    adopt_crds(&client, &release, &ns).await;

    let out = helm_release(
        &["install", &release, CHART],
        &ns,
        &["--set", "crds.keep=true"],
    )
    .await;
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        out.contains("mcp-keycloak-operator 0.1.0 is installed"),
        "NOTES.txt not shown:\n{out}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = deployments.get(&full).await.expect("operator Deployment");
    assert_eq!(d.spec.replicas, Some(1));
    assert!(Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get(&full)
        .await
        .is_ok());
    assert!(Api::<Service>::namespaced(client.clone(), &ns)
        .get(&format!("{full}-metrics"))
        .await
        .is_ok());
    assert!(Api::<Role>::namespaced(client.clone(), &ns)
        .get(&format!("{full}-leader-election"))
        .await
        .is_ok());
    assert!(Api::<ClusterRole>::all(client.clone())
        .get(&full)
        .await
        .is_ok());
    assert!(Api::<ClusterRoleBinding>::all(client.clone())
        .get(&full)
        .await
        .is_ok());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRD_NAMES {
        let crd = crds.get(name).await.unwrap();
        let ann = crd.metadata.annotations.unwrap_or_default();
        assert_eq!(
            ann.get("meta.helm.sh/release-name"),
            Some(&release),
            "CRD {name} not owned by the release"
        );
        assert_eq!(
            ann.get("helm.sh/resource-policy").map(String::as_str),
            Some("keep")
        );
    }

    let upgrade = ["--reuse-values", "--set", "replicaCount=2"];
    let out = helm_release(&["upgrade", &release, CHART], &ns, &upgrade).await;
    assert!(out.contains("STATUS: deployed"), "{out}");
    let d = deployments.get(&full).await.unwrap();
    assert_eq!(d.spec.replicas, Some(2));
    let status = must(
        "helm",
        &["status", &release, "--namespace", &ns],
        None,
        true,
    )
    .await;
    assert!(status.contains("REVISION: 2"), "{status}");

    let out = helm_release(&["uninstall", &release], &ns, &[]).await;
    assert!(out.contains("uninstalled"), "{out}");
    support::wait_for("release objects deleted", Duration::from_secs(60), || {
        let (client, ns, full) = (client.clone(), ns.clone(), full.clone());
        async move {
            let gone = deployments_gone(&client, &ns, &full).await
                && Api::<ClusterRole>::all(client.clone())
                    .get_opt(&full)
                    .await
                    .ok()?
                    .is_none()
                && Api::<ClusterRoleBinding>::all(client.clone())
                    .get_opt(&full)
                    .await
                    .ok()?
                    .is_none()
                && Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                    .get_opt(&full)
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        }
    })
    .await;
    for name in CRD_NAMES {
        let crd = crds.get_opt(name).await.unwrap();
        assert!(
            crd.is_some_and(|c| c.metadata.deletion_timestamp.is_none()),
            "CRD {name} was deleted by helm uninstall despite crds.keep"
        );
    }
}

async fn deployments_gone(client: &kube::Client, ns: &str, name: &str) -> bool {
    matches!(
        Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await,
        Ok(None)
    )
}
