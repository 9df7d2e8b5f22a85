//! Isolation per McpServer on the real API server: the operator-owned NetworkPolicy's exact
//! shape (Proxy, Native, opt-out), its pruning and repair, no writes at steady state, and the
//! MCP container's hardening.

use crate::harness;
use crate::support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Client;
use mcp_keycloak_operator::api::{AuthMode, McpServer};
use mcp_keycloak_operator::controller::{self, Context, OperatorConfig};
use mcp_keycloak_operator::desired::workload::MetricsPeer;
use mcp_keycloak_operator::metrics::Metrics;
use serde_json::{json, Value};

/// An operator configured like `run --metrics-namespace-selector … --metrics-pod-selector …`,
/// with a long resync: everything after the first convergence comes from its watches.
fn start_operator(client: &Client, ns: &str) -> tokio::task::JoinHandle<()> {
    let ctx = Context::new(
        client.clone(),
        Arc::new(Metrics::default()),
        OperatorConfig {
            resync: Duration::from_secs(600),
            operator_image: "mcp-keycloak-operator:test".into(),
            metrics_peer: Some(MetricsPeer {
                namespace_selector: BTreeMap::from([(
                    "kubernetes.io/metadata.name".into(),
                    "monitoring".into(),
                )]),
                pod_selector: BTreeMap::from([(
                    "app.kubernetes.io/name".into(),
                    "prometheus".into(),
                )]),
            }),
            ..Default::default()
        },
    );
    tokio::spawn(controller::run(ctx, Some(ns.to_string())))
}

async fn np_spec(api: &Api<NetworkPolicy>, name: &str) -> Option<Value> {
    let np = api.get_opt(name).await.unwrap()?;
    Some(serde_json::to_value(np.spec).unwrap())
}

fn pod_selector(name: &str) -> Value {
    json!({"matchLabels": {"mcpauth.dev/server": name}})
}

async fn set_network_policy(client: &Client, ns: &str, name: &str, enabled: bool) {
    let patch = json!({"spec": {"networkPolicy": {"enabled": enabled}}});
    Api::<McpServer>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_pod_hardening_and_opt_out_on_the_real_api_server() {
    let s = Scenario::without_operator("isolation").await;
    let tb = support::testbed().await;
    let (client, ns, realm) = (s.client.clone(), s.ns.clone(), &s.realm);
    install_crds(&client).await;
    let op = start_operator(&client, &ns);
    create(
        &client,
        &ns,
        &seed_policy("acme", &realm.name, &tb.keycloak_url),
    )
    .await;
    create(&client, &ns, &server("gw", "acme", "http://gw.example.com")).await;
    let mut native = server("native", "acme", "http://native.example.com/mcp");
    native.spec.auth.mode = AuthMode::Native;
    native.spec.port = 3001;
    create(&client, &ns, &native).await;
    let mut open = server("open", "acme", "http://open.example.com");
    open.spec.network_policy =
        Some(mcp_keycloak_operator::api::NetworkPolicySpec { enabled: false });
    create(&client, &ns, &open).await;
    for n in ["gw", "native", "open"] {
        wait_condition::<McpServer>(&client, &ns, n, "Ready", "True").await;
    }
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);

    // Proxy: the gateway port from anywhere, the metrics port from Prometheus only; nothing
    // reaches the MCP container's port 3000.
    let gw_spec = json!({
        "podSelector": pod_selector("gw"),
        "policyTypes": ["Ingress"],
        "ingress": [
            {"ports": [{"port": 8080, "protocol": "TCP"}]},
            {"ports": [{"port": 9090, "protocol": "TCP"}],
             "from": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
             }]}
        ]
    });
    assert_eq!(np_spec(&nps, "gw").await, Some(gw_spec.clone()));
    // Native: the server's own port only.
    assert_eq!(
        np_spec(&nps, "native").await,
        Some(json!({
            "podSelector": pod_selector("native"),
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": 3001, "protocol": "TCP"}]}]
        }))
    );
    // Opt-out: none, and the status says so.
    assert_eq!(np_spec(&nps, "open").await, None);
    let (reason, message) =
        wait_condition::<McpServer>(&client, &ns, "open", "NetworkIsolated", "False").await;
    assert_eq!(reason, "OptedOut");
    assert!(message.contains("any pod"), "{message}");
    let (reason, _) =
        wait_condition::<McpServer>(&client, &ns, "gw", "NetworkIsolated", "True").await;
    assert_eq!(reason, "NetworkPolicyApplied");
    let owner = nps
        .get("gw")
        .await
        .unwrap()
        .metadata
        .owner_references
        .unwrap();
    assert_eq!(owner[0].kind, "McpServer");
    assert_eq!(owner[0].controller, Some(true));

    // The MCP container is locked down; no service-account token is mounted.
    let d = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("gw")
        .await
        .unwrap();
    let pod = d.spec.template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let mcp = pod.containers.iter().find(|c| c.name == "mcp").unwrap();
    assert_eq!(
        serde_json::to_value(&mcp.security_context).unwrap(),
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
               "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})
    );

    // Steady state: no write to the NetworkPolicies.
    let versions = |nps: Api<NetworkPolicy>| async move {
        let mut v = Vec::new();
        for n in ["gw", "native"] {
            v.push(nps.get(n).await.unwrap().metadata.resource_version);
        }
        v
    };
    let before = versions(nps.clone()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        versions(nps.clone()).await,
        before,
        "NetworkPolicy rewritten at steady state"
    );

    // Deleted behind the operator's back: the watch brings it back (resync is 10 minutes).
    nps.delete("native", &DeleteParams::default())
        .await
        .unwrap();
    support::wait_for(
        "NetworkPolicy native recreated",
        Duration::from_secs(30),
        || async { np_spec(&nps, "native").await.map(|_| ()) },
    )
    .await;

    // Opting out prunes it; opting back in restores it.
    set_network_policy(&client, &ns, "gw", false).await;
    support::wait_for(
        "NetworkPolicy gw pruned",
        Duration::from_secs(30),
        || async { np_spec(&nps, "gw").await.is_none().then_some(()) },
    )
    .await;
    wait_condition::<McpServer>(&client, &ns, "gw", "NetworkIsolated", "False").await;
    set_network_policy(&client, &ns, "gw", true).await;
    support::wait_for(
        "NetworkPolicy gw restored",
        Duration::from_secs(30),
        || async { (np_spec(&nps, "gw").await? == gw_spec).then_some(()) },
    )
    .await;
    wait_condition::<McpServer>(&client, &ns, "gw", "NetworkIsolated", "True").await;

    // The scenario's clean-up runs an operator of its own.
    op.abort();
}

/// `spec.auth.serviceAccountClients` and `allowedOrigins` are checked at admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_lists_are_validated_at_admission() {
    let client = support::kube_client().await;
    install_crds(&client).await;
    let ns = support::TestNamespace::new(&client, "admission").await;
    let api: Api<McpServer> = Api::namespaced(client.clone(), &ns);
    let dry = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let with = |auth: Value| -> McpServer {
        let mut s = server("weather", "acme", "http://weather.example.com");
        let mut v = serde_json::to_value(&s.spec.auth).unwrap();
        for (k, val) in auth.as_object().unwrap() {
            v[k] = val.clone();
        }
        s.spec.auth = serde_json::from_value(v).unwrap();
        s
    };
    let ok = with(json!({"serviceAccountClients": ["robot", "ci.bot/2"],
                        "allowedOrigins": ["https://app.example.com", "http://localhost:6274", "http://[::1]:8080"]}));
    api.create(&dry, &ok).await.expect("valid lists refused");
    let too_many: Vec<String> = (0..33).map(|i| format!("c{i}")).collect();
    for (bad, needle) in [
        (
            json!({"serviceAccountClients": ["has space"]}),
            "serviceAccountClients entries must be client ids",
        ),
        (
            json!({"serviceAccountClients": ["-leading"]}),
            "serviceAccountClients entries must be client ids",
        ),
        (
            json!({"serviceAccountClients": too_many}),
            "must have at most 32 items",
        ),
        (
            json!({"allowedOrigins": ["https://app.example.com/"]}),
            "allowedOrigins entries must be origins",
        ),
        (
            json!({"allowedOrigins": ["https://App.example.com"]}),
            "allowedOrigins entries must be origins",
        ),
        (
            json!({"allowedOrigins": ["*"]}),
            "allowedOrigins entries must be origins",
        ),
        (
            json!({"allowedOrigins": ["null"]}),
            "allowedOrigins entries must be origins",
        ),
    ] {
        let err = api
            .create(&dry, &with(bad.clone()))
            .await
            .expect_err(&bad.to_string());
        assert!(err.to_string().contains(needle), "{bad}: {err}");
    }
    let mut env_override = ok.clone();
    env_override.spec.env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: "MCP_SERVICE_ACCOUNT_CLIENTS".into(),
        value: Some("attacker".into()),
        ..Default::default()
    }];
    let err = api
        .create(&dry, &env_override)
        .await
        .expect_err("env override");
    assert!(err.to_string().contains("contract variables"), "{err}");
}
