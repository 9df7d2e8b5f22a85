//! Bad input gets a clear error: rejected at admission by the CRD's CEL/schema rules on the real
//! API server, or reported at runtime as a condition with a specific reason, with nothing
//! half-applied.

mod harness;
mod support;

use harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::{json, Value};

fn policy_json(name: &str, spec_patch: Value) -> Value {
    let mut spec = json!({
        "keycloak": {"url": "http://127.0.0.1:8080", "realm": "acme", "adminCredentialsSecretRef": {"name": "keycloak-admin"}},
        "scopes": [{"name": "mcp:tools"}],
        "dynamicClientRegistration": {"trustedHosts": ["localhost"]}
    });
    merge(&mut spec, spec_patch);
    json!({"apiVersion": "mcpauth.dev/v1alpha1", "kind": "McpAuthPolicy", "metadata": {"name": name}, "spec": spec})
}

fn server_json(name: &str, spec_patch: Value) -> Value {
    let mut spec = json!({"image": "example/mcp:1", "policyRef": {"name": "acme"}, "url": "http://localhost:3000"});
    merge(&mut spec, spec_patch);
    json!({"apiVersion": "mcpauth.dev/v1alpha1", "kind": "McpServer", "metadata": {"name": name}, "spec": spec})
}

/// JSON merge patch semantics (null deletes).
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p,
    }
}

fn dynamic_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("mcpauth.dev", "v1alpha1", kind));
    Api::namespaced_with(client.clone(), ns, &ar)
}

async fn rejected(client: &Client, ns: &str, obj: Value) -> String {
    let kind = obj["kind"].as_str().unwrap().to_string();
    let api = dynamic_api(client, ns, &kind);
    let o: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
    match api.create(&PostParams::default(), &o).await {
        Ok(_) => panic!("accepted but should be rejected: {obj}"),
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "expected 422 Invalid, got {s:?}");
            s.message.clone()
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_rejects_bad_specs_with_specific_messages() {
    let client = support::kube_client().await;
    install_crds(&client).await;
    let ns = support::test_namespace(&client, "admission").await;
    let hosts = "trustedHosts entries must be a lowercase host name";
    let kc_url = "must be an absolute http(s) URL without trailing slash, query or fragment";
    let srv_url = "url must be an absolute http(s) URL without trailing slash, query or fragment";
    let p = |patch: Value| policy_json("p", patch);
    let s = |patch: Value| server_json("s", patch);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "bare * host",
            p(json!({"dynamicClientRegistration": {"trustedHosts": ["*"]}})),
            hosts,
        ),
        (
            "redirect wildcard as host",
            p(json!({"dynamicClientRegistration": {"trustedHosts": ["http://localhost:*/*"]}})),
            hosts,
        ),
        (
            "scheme in host",
            p(json!({"dynamicClientRegistration": {"trustedHosts": ["https://vscode.dev"]}})),
            hosts,
        ),
        (
            "port in host",
            p(json!({"dynamicClientRegistration": {"trustedHosts": ["localhost:3000"]}})),
            hosts,
        ),
        (
            "path in host",
            p(json!({"dynamicClientRegistration": {"trustedHosts": ["vscode.dev/redirect"]}})),
            hosts,
        ),
        (
            "uppercase host",
            p(json!({"dynamicClientRegistration": {"trustedHosts": ["VSCode.dev"]}})),
            hosts,
        ),
        (
            "unknown trusted client preset",
            p(json!({"dynamicClientRegistration": {"trustedClients": ["Cursor"]}})),
            "Unsupported value: \"Cursor\"",
        ),
        (
            "max clients zero",
            p(json!({"dynamicClientRegistration": {"maxClients": 0}})),
            "should be greater than or equal to 1",
        ),
        (
            "allowed scope with space",
            p(json!({"dynamicClientRegistration": {"allowedClientScopes": ["mcp tools"]}})),
            "allowedClientScopes entries must be scope tokens",
        ),
        (
            "keycloak url without scheme",
            p(json!({"keycloak": {"url": "keycloak:8080"}})),
            kc_url,
        ),
        (
            "keycloak url trailing slash",
            p(json!({"keycloak": {"url": "http://keycloak:8080/"}})),
            kc_url,
        ),
        (
            "keycloak url ftp",
            p(json!({"keycloak": {"url": "ftp://keycloak"}})),
            kc_url,
        ),
        (
            "keycloak url with query",
            p(json!({"keycloak": {"url": "http://keycloak?x=1"}})),
            kc_url,
        ),
        (
            "public url not a url",
            p(json!({"keycloak": {"publicUrl": "sso example com"}})),
            kc_url,
        ),
        (
            "realm with space",
            p(json!({"keycloak": {"realm": "my realm"}})),
            "realm must start with a letter or digit",
        ),
        (
            "empty realm",
            p(json!({"keycloak": {"realm": ""}})),
            "should be at least 1 chars long",
        ),
        (
            "scope with space",
            p(json!({"scopes": [{"name": "mcp tools"}]})),
            "scope names are RFC 6749 scope tokens",
        ),
        (
            "scope with quote",
            p(json!({"scopes": [{"name": "mcp\"x"}]})),
            "scope names are RFC 6749 scope tokens",
        ),
        (
            "duplicate scopes",
            p(json!({"scopes": [{"name": "mcp:tools"}, {"name": "mcp:tools"}]})),
            "spec.scopes[1]: Duplicate value",
        ),
        (
            "unknown scope type",
            p(json!({"scopes": [{"name": "mcp:tools", "type": "Mandatory"}]})),
            "Unsupported value: \"Mandatory\"",
        ),
        (
            "oversized realm",
            p(json!({"keycloak": {"realm": "r".repeat(65)}})),
            "may not be more than 64",
        ),
        (
            "server url trailing slash",
            s(json!({"url": "http://localhost:3000/"})),
            srv_url,
        ),
        (
            "server url with fragment",
            s(json!({"url": "http://localhost:3000/mcp#x"})),
            srv_url,
        ),
        (
            "server url not http",
            s(json!({"url": "mailto:ops@example.com"})),
            srv_url,
        ),
        (
            "server url uppercase host",
            s(json!({"url": "http://MCP.Example.com/mcp"})),
            "url host must be lowercase",
        ),
        (
            "port zero",
            s(json!({"port": 0})),
            "should be greater than or equal to 1",
        ),
        (
            "port too high",
            s(json!({"port": 70000})),
            "should be less than or equal to 65535",
        ),
        (
            "negative replicas",
            s(json!({"replicas": -1})),
            "should be greater than or equal to 0",
        ),
        (
            "env overrides contract",
            s(json!({"env": [{"name": "OAUTH_CLIENT_SECRET", "value": "x"}]})),
            "env may not set the operator's contract variables",
        ),
        (
            "unauthenticated without opt-out",
            s(json!({"auth": {"mode": "None"}})),
            "set allowUnauthenticated: true to confirm",
        ),
        (
            "gateway port collision",
            s(json!({"port": 8080})),
            "ports 8080 and 9090 belong to the gateway",
        ),
        (
            "unknown auth mode",
            s(json!({"auth": {"mode": "Basic"}})),
            "Unsupported value: \"Basic\"",
        ),
        (
            "built-in client id",
            s(json!({"introspectionClient": {"clientId": "admin-cli"}})),
            "clientId names one of Keycloak's built-in clients",
        ),
        (
            "client id with space",
            s(json!({"introspectionClient": {"clientId": "my client"}})),
            "clientId must start with a letter or digit",
        ),
        (
            "bad secret name",
            s(json!({"introspectionClient": {"secretName": "Bad_Name"}})),
            "secretName must be a DNS subdomain name",
        ),
        (
            "server scope with space",
            s(json!({"scopes": ["mcp tools"]})),
            "scopes must be scope tokens without spaces",
        ),
        (
            "missing image",
            s(json!({"image": null})),
            "spec.image: Required value",
        ),
        (
            "missing policyRef",
            s(json!({"policyRef": null})),
            "spec.policyRef: Required value",
        ),
        (
            "oversized image",
            s(json!({"image": "i".repeat(1025)})),
            "may not be more than 1024",
        ),
    ];
    assert!(cases.len() >= 35);
    let mut failures = vec![];
    for (what, obj, expected) in &cases {
        let msg = rejected(&client, &ns, obj.clone()).await;
        if !msg.contains(expected) {
            failures.push(format!("{what}: expected {expected:?} in {msg:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "wrong rejection messages:\n{}",
        failures.join("\n")
    );
    // Nothing was created by any of them.
    let left = dynamic_api(&client, &ns, "McpServer")
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .len()
        + dynamic_api(&client, &ns, "McpAuthPolicy")
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len();
    assert_eq!(left, 0);
    support::delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_fields_cannot_change() {
    let client = support::kube_client().await;
    install_crds(&client).await;
    let ns = support::test_namespace(&client, "immutable").await;
    let pol = dynamic_api(&client, &ns, "McpAuthPolicy");
    let srv = dynamic_api(&client, &ns, "McpServer");
    pol.create(
        &PostParams::default(),
        &serde_json::from_value(policy_json("p", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    srv.create(
        &PostParams::default(),
        &serde_json::from_value(server_json(
            "s",
            json!({"introspectionClient": {"clientId": "mine"}}),
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    let pp = PatchParams::default();
    let err = |r: kube::Result<DynamicObject>| match r {
        Err(kube::Error::Api(s)) => s.message.clone(),
        other => panic!("update accepted: {other:?}"),
    };
    let m = err(pol
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"spec": {"keycloak": {"realm": "other"}}})),
        )
        .await);
    assert!(m.contains("realm is immutable"), "{m}");
    let m = err(srv
        .patch(
            "s",
            &pp,
            &Patch::Merge(json!({"spec": {"policyRef": {"name": "other"}}})),
        )
        .await);
    assert!(m.contains("policyRef is immutable"), "{m}");
    let m = err(srv
        .patch(
            "s",
            &pp,
            &Patch::Merge(json!({"spec": {"introspectionClient": {"clientId": "theirs"}}})),
        )
        .await);
    assert!(m.contains("clientId is immutable"), "{m}");
    support::delete_namespace(&client, &ns).await;
}

async fn secret(client: &Client, ns: &str, name: &str, data: Value) {
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

async fn create_policy(client: &Client, ns: &str, obj: Value) {
    let p: McpAuthPolicy = serde_json::from_value(obj).unwrap();
    create(client, ns, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_errors_have_specific_reasons_and_nothing_is_half_applied() {
    let client = support::kube_client().await;
    let tb = support::testbed().await;
    let ns = support::test_namespace(&client, "runtime").await;
    let op = Operator::start(&client, &ns).await;
    admin_secret(&client, &ns, "keycloak-admin").await;
    secret(&client, &ns, "no-keys", json!({"user": "x"})).await;
    secret(
        &client,
        &ns,
        "wrong-password",
        json!({"username": tb.admin_user, "password": "not-the-password"}),
    )
    .await;
    let kc = tb.keycloak_url.as_str();
    let missing_realm = support::unique_name("missing");
    let realm = Realm::new(&support::unique_name("rt")).await;
    let kcref = |secret: &str, realm: &str, url: &str| json!({"keycloak": {"url": url, "realm": realm, "adminCredentialsSecretRef": {"name": secret}}});

    create_policy(
        &client,
        &ns,
        policy_json("no-secret", kcref("absent", &realm.name, kc)),
    )
    .await;
    create_policy(
        &client,
        &ns,
        policy_json("no-keys", kcref("no-keys", &realm.name, kc)),
    )
    .await;
    create_policy(
        &client,
        &ns,
        policy_json("wrong-password", kcref("wrong-password", &realm.name, kc)),
    )
    .await;
    create_policy(
        &client,
        &ns,
        policy_json(
            "unreachable",
            kcref("keycloak-admin", &realm.name, "http://127.0.0.1:1"),
        ),
    )
    .await;
    create_policy(
        &client,
        &ns,
        policy_json("no-realm", kcref("keycloak-admin", &missing_realm, kc)),
    )
    .await;
    let mut good = policy_json("acme", kcref("keycloak-admin", &realm.name, kc));
    good["spec"]["keycloak"]["createRealm"] = json!(true);
    create_policy(&client, &ns, good).await;

    let cases = [
        ("no-secret", "KeycloakReachable", "AdminSecretNotFound"),
        ("no-keys", "KeycloakReachable", "AdminSecretInvalid"),
        (
            "wrong-password",
            "KeycloakReachable",
            "InvalidAdminCredentials",
        ),
        ("unreachable", "KeycloakReachable", "KeycloakUnreachable"),
        ("no-realm", "RealmConfigured", "RealmNotFound"),
    ];
    for (name, cond, reason) in cases {
        let msg = wait_reason::<McpAuthPolicy>(&client, &ns, name, cond, reason).await;
        let ready = wait_reason::<McpAuthPolicy>(&client, &ns, name, "Ready", reason).await;
        assert_eq!(msg, ready);
        assert!(
            !msg.contains("not-the-password") && !msg.contains(&tb.admin_password),
            "secret in status: {msg}"
        );
    }
    // RealmNotFound created nothing.
    let (st, _) = realm
        .kc
        .get(&format!("/admin/realms/{missing_realm}"))
        .await;
    assert_eq!(
        st.as_u16(),
        404,
        "realm was created although createRealm is false"
    );
    wait_condition::<McpAuthPolicy>(&client, &ns, "acme", "Ready", "True").await;

    // Server-side reasons.
    let srv = |name: &str, patch: Value| -> McpServer {
        serde_json::from_value(server_json(name, patch)).unwrap()
    };
    create(
        &client,
        &ns,
        &srv("orphan", json!({"policyRef": {"name": "nope"}})),
    )
    .await;
    create(
        &client,
        &ns,
        &srv("badscope", json!({"scopes": ["mcp:admin"]})),
    )
    .await;
    create(
        &client,
        &ns,
        &srv("waits", json!({"policyRef": {"name": "no-secret"}})),
    )
    .await;
    // A client with the same clientId made by someone else in Keycloak.
    let (st, v) = realm
        .kc
        .post(
            &realm.path("/clients"),
            &json!({"clientId": "taken", "publicClient": false}),
        )
        .await;
    assert!(st.is_success(), "{v}");
    create(
        &client,
        &ns,
        &srv(
            "conflict",
            json!({"introspectionClient": {"clientId": "taken"}}),
        ),
    )
    .await;
    // A Deployment of the same name that is not ours.
    let foreign: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "squatter"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "x", "image": "x"}]}}}
    }))
    .unwrap();
    create(&client, &ns, &foreign).await;
    create(&client, &ns, &srv("squatter", json!({}))).await;

    let server_cases = [
        ("orphan", "PolicyResolved", "PolicyNotFound"),
        ("badscope", "PolicyResolved", "ScopeNotInPolicy"),
        ("waits", "PolicyResolved", "PolicyNotReady"),
        ("conflict", "KeycloakClientReady", "ClientIdConflict"),
        ("squatter", "Available", "ResourceConflict"),
    ];
    for (name, cond, reason) in server_cases {
        wait_reason::<McpServer>(&client, &ns, name, cond, reason).await;
        wait_reason::<McpServer>(&client, &ns, name, "Ready", reason).await;
    }
    // Nothing half-applied: no Secret or Deployment for servers that failed before the workload,
    // and the foreign client is untouched (no marker added, not deleted).
    for name in ["orphan", "badscope", "waits", "conflict"] {
        assert!(
            secret_value(&client, &ns, &format!("{name}-oauth"), "client-secret")
                .await
                .is_none(),
            "{name} got a Secret"
        );
        assert!(
            Api::<Deployment>::namespaced(client.clone(), &ns)
                .get_opt(name)
                .await
                .unwrap()
                .is_none(),
            "{name} got a Deployment"
        );
    }
    let taken = realm
        .client("taken")
        .await
        .expect("foreign client still there");
    assert!(
        taken["attributes"].get("mcpauth.dev/owner").is_none(),
        "foreign client was taken over"
    );
    let sq = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("squatter")
        .await
        .unwrap();
    assert!(
        sq.metadata.owner_references.is_none(),
        "foreign Deployment was taken over"
    );

    teardown(&client, &ns, op).await;
    realm.delete().await;
}
