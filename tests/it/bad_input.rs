//! Bad input gets a clear error: rejected at admission by the CRD's CEL/schema rules on the real
//! API server, or reported at runtime as a condition with a specific reason, with nothing
//! half-applied.

use crate::harness;
use crate::support;

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

/// An McpServer; its default `url` is its own (a realm's servers may not share one).
fn server_json(name: &str, spec_patch: Value) -> Value {
    let mut spec = json!({"image": "example/mcp:1", "policyRef": {"name": "acme"}, "url": format!("http://localhost:3000/{name}")});
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
    let ns = support::TestNamespace::new(&client, "admission").await;
    let hosts = "trustedHosts entries must be a lowercase host name";
    let duration = "durations are a whole number of at most 6 digits and one unit: s, m, h or d (e.g. 90s, 12h, 30d)";
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
            "realm names start with a letter or digit",
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
        // Policy: more malformed hosts and URLs, missing and oversized fields.
        (
            "empty trusted host",
            p(json!({"dynamicClientRegistration": {"trustedHosts": [""]}})),
            hosts,
        ),
        (
            "host with space",
            p(json!({"dynamicClientRegistration": {"trustedHosts": ["local host"]}})),
            hosts,
        ),
        (
            "ip with port as host",
            p(json!({"dynamicClientRegistration": {"trustedHosts": ["127.0.0.1:8080"]}})),
            hosts,
        ),
        (
            "wildcard without dot",
            p(json!({"dynamicClientRegistration": {"trustedHosts": ["*example.com"]}})),
            hosts,
        ),
        (
            "empty host label",
            p(json!({"dynamicClientRegistration": {"trustedHosts": ["example..com"]}})),
            hosts,
        ),
        (
            "nested wildcard",
            p(json!({"dynamicClientRegistration": {"trustedHosts": ["*.*.example.com"]}})),
            hosts,
        ),
        (
            "wildcard over a top-level domain",
            p(json!({"dynamicClientRegistration": {"trustedHosts": ["*.com"]}})),
            "at least two labels after '*.'",
        ),
        (
            "cimd wildcard over a top-level domain",
            p(json!({"clientIdMetadataDocuments": {"trustedDomains": ["*.dev"]}})),
            "at least two labels after '*.'",
        ),
        (
            "built-in scope offline_access",
            p(json!({"scopes": [{"name": "offline_access", "type": "Default"}]})),
            "scope names may not be one of Keycloak's built-in client scopes",
        ),
        (
            "built-in scope profile",
            p(json!({"scopes": [{"name": "profile"}]})),
            "scope names may not be one of Keycloak's built-in client scopes",
        ),
        (
            "audience scope name as a policy scope",
            p(json!({"scopes": [{"name": "mcp:server:other:weather"}]})),
            "reserved for the operator's per-server audience scopes",
        ),
        (
            "auth realm with a path",
            p(
                json!({"keycloak": {"adminCredentialsSecretRef": {"name": "a", "authRealm": "master/../x"}}}),
            ),
            "realm names start with a letter or digit",
        ),
        (
            "unknown machine grant",
            p(json!({"allowedMachineGrants": ["Implicit"]})),
            "Unsupported value",
        ),
        (
            "client id taking the operator's default prefix",
            s(json!({"introspectionClient": {"clientId": "mcp.other-team.weather"}})),
            "that prefix is reserved for the operator's default client ids",
        ),
        (
            "keycloak url without host",
            p(json!({"keycloak": {"url": "http://"}})),
            kc_url,
        ),
        (
            "keycloak url with fragment",
            p(json!({"keycloak": {"url": "http://keycloak#admin"}})),
            kc_url,
        ),
        (
            "public url trailing slash",
            p(json!({"keycloak": {"publicUrl": "https://sso.example.com/"}})),
            kc_url,
        ),
        (
            "empty admin secret name",
            p(json!({"keycloak": {"adminCredentialsSecretRef": {"name": ""}}})),
            "spec.keycloak.adminCredentialsSecretRef.name in body should be at least 1 chars long",
        ),
        (
            "missing admin secret ref",
            p(json!({"keycloak": {"adminCredentialsSecretRef": null}})),
            "spec.keycloak.adminCredentialsSecretRef: Required value",
        ),
        (
            "oversized auth realm",
            p(
                json!({"keycloak": {"adminCredentialsSecretRef": {"name": "a", "authRealm": "r".repeat(65)}}}),
            ),
            "may not be more than 64",
        ),
        (
            "empty scope name",
            p(json!({"scopes": [{"name": ""}]})),
            "spec.scopes[0].name in body should be at least 1 chars long",
        ),
        (
            "scope with backslash",
            p(json!({"scopes": [{"name": "mcp\\tools"}]})),
            "scope names are RFC 6749 scope tokens",
        ),
        (
            "no scopes",
            p(json!({"scopes": []})),
            "should have at least 1 items",
        ),
        (
            "oversized scope name",
            p(json!({"scopes": [{"name": "s".repeat(201)}]})),
            "may not be more than 200",
        ),
        (
            "oversized consent text",
            p(json!({"scopes": [{"name": "mcp:tools", "consentText": "c".repeat(1025)}]})),
            "may not be more than 1024",
        ),
        (
            "unknown policy deletion policy",
            p(json!({"deletionPolicy": "Orphan"})),
            "Unsupported value: \"Orphan\"",
        ),
        // Server: malformed and non-canonical URLs (an MCP client normalises its resource URL,
        // so a non-canonical audience would never match), names, oversized and empty fields.
        (
            "server url without host",
            s(json!({"url": "http://"})),
            srv_url,
        ),
        (
            "server url with query",
            s(json!({"url": "http://localhost:3000/mcp?tenant=a"})),
            srv_url,
        ),
        (
            "server url with user info",
            s(json!({"url": "http://user:secret@localhost:3000/mcp"})),
            "url must not contain user information",
        ),
        (
            "server url uppercase scheme",
            s(json!({"url": "HTTP://localhost:3000/mcp"})),
            "url scheme must be lowercase http or https",
        ),
        (
            "server url default http port",
            s(json!({"url": "http://mcp.example.com:80/mcp"})),
            "url must not name the scheme's default port",
        ),
        (
            "server url default https port",
            s(json!({"url": "https://mcp.example.com:443"})),
            "url must not name the scheme's default port",
        ),
        (
            "server url dot segment",
            s(json!({"url": "http://localhost:3000/a/../mcp"})),
            "url must not contain '.' or '..' path segments or whitespace",
        ),
        (
            "server url trailing space",
            s(json!({"url": "http://localhost:3000/mcp "})),
            "url must not contain '.' or '..' path segments or whitespace",
        ),
        (
            "oversized server url",
            s(json!({"url": format!("http://localhost/{}", "u".repeat(2040))})),
            "may not be more than 2048",
        ),
        (
            "server name longer than a DNS label",
            server_json(&"n".repeat(64), json!({})),
            "McpServer names must be DNS labels",
        ),
        (
            "server name with a dot",
            server_json("team.weather", json!({})),
            "McpServer names must be DNS labels",
        ),
        (
            "server name starting with a digit",
            server_json("1weather", json!({})),
            "McpServer names must be DNS labels",
        ),
        (
            "too many replicas",
            s(json!({"replicas": 1001})),
            "should be less than or equal to 1000",
        ),
        (
            "gateway admin port collision",
            s(json!({"port": 9090})),
            "ports 8080 and 9090 belong to the gateway",
        ),
        (
            "oversized client id",
            s(json!({"introspectionClient": {"clientId": "c".repeat(256)}})),
            "may not be more than 255",
        ),
        (
            "client id starting with dash",
            s(json!({"introspectionClient": {"clientId": "-mine"}})),
            "clientId must start with a letter or digit",
        ),
        (
            "built-in master-realm client id",
            s(json!({"introspectionClient": {"clientId": "master-realm"}})),
            "clientId names one of Keycloak's built-in clients",
        ),
        (
            "oversized secret name",
            s(json!({"introspectionClient": {"secretName": "s".repeat(254)}})),
            "may not be more than 253",
        ),
        (
            "empty service account",
            s(json!({"serviceAccountName": ""})),
            "spec.serviceAccountName in body should be at least 1 chars long",
        ),
        (
            "empty policy name",
            s(json!({"policyRef": {"name": ""}})),
            "spec.policyRef.name in body should be at least 1 chars long",
        ),
        (
            "empty image",
            s(json!({"image": ""})),
            "spec.image in body should be at least 1 chars long",
        ),
        (
            "empty server scope",
            s(json!({"scopes": [""]})),
            "scopes must be scope tokens without spaces",
        ),
        (
            "unauthenticated with explicit false",
            s(json!({"auth": {"mode": "None", "allowUnauthenticated": false}})),
            "set allowUnauthenticated: true to confirm",
        ),
        (
            "empty gateway image",
            s(json!({"auth": {"gatewayImage": ""}})),
            "spec.auth.gatewayImage in body should be at least 1 chars long",
        ),
        (
            "env overrides realm",
            s(json!({"env": [{"name": "AUTH_REALM", "value": "master"}]})),
            "env may not set the operator's contract variables",
        ),
        (
            "unknown server deletion policy",
            s(json!({"deletionPolicy": "Orphan"})),
            "Unsupported value: \"Orphan\"",
        ),
        (
            "tool rule without scopes",
            s(json!({"auth": {"tools": [{"name": "delete_*", "scopes": []}]}})),
            "spec.auth.tools[0].scopes in body should have at least 1 items",
        ),
        (
            "tool rule without a name",
            s(json!({"auth": {"tools": [{"name": "", "scopes": ["mcp:admin"]}]}})),
            "spec.auth.tools[0].name in body should be at least 1 chars long",
        ),
        (
            "tool rule scope with a space",
            s(json!({"auth": {"tools": [{"name": "x", "scopes": ["mcp:a b"]}]}})),
            "scopes must be scope tokens without spaces",
        ),
        (
            "implies a scope the policy lacks",
            p(json!({"scopes": [{"name": "mcp:admin", "implies": ["mcp:tools"]}]})),
            "implies may name only other scopes of this policy",
        ),
        (
            "a scope implies itself",
            p(json!({"scopes": [{"name": "mcp:admin", "implies": ["mcp:admin"]}]})),
            "implies may name only other scopes of this policy",
        ),
        (
            "reaping duration in words",
            p(json!({"dynamicClientRegistration": {"reaping": {"idleAfter": "30 days"}}})),
            duration,
        ),
        (
            "reaping duration with two units",
            p(json!({"dynamicClientRegistration": {"reaping": {"minAge": "1h30m"}}})),
            duration,
        ),
        (
            "reaping duration zero",
            p(json!({"dynamicClientRegistration": {"reaping": {"idleAfter": "0s"}}})),
            duration,
        ),
        (
            "reaping duration in weeks",
            p(json!({"dynamicClientRegistration": {"reaping": {"minAge": "2w"}}})),
            duration,
        ),
        (
            "reaping duration with a fraction",
            p(json!({"dynamicClientRegistration": {"reaping": {"idleAfter": "1.5h"}}})),
            duration,
        ),
        (
            "metadata-document reaping duration negative",
            p(json!({"clientIdMetadataDocuments": {"trustedDomains": ["mcp.example.com"], "reaping": {"idleAfter": "-1d"}}})),
            duration,
        ),
        (
            "reaping maxPerRun zero",
            p(json!({"dynamicClientRegistration": {"reaping": {"maxPerRun": 0}}})),
            "spec.dynamicClientRegistration.reaping.maxPerRun in body should be greater than or equal to 1",
        ),
    ];
    support::figure(format_args!("admission cases: {}", cases.len()));
    assert!(cases.len() >= 80);
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_fields_cannot_change() {
    let client = support::kube_client().await;
    install_crds(&client).await;
    let ns = support::TestNamespace::new(&client, "immutable").await;
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
}

/// A Secret with `data`, bound to the test bed's Keycloak unless `data` names another `url`.
async fn secret(client: &Client, ns: &str, name: &str, mut data: Value) {
    if data.get("url").is_none() {
        data["url"] = json!(support::testbed().await.keycloak_url);
    }
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
    let s = Scenario::new("runtime").await;
    let (ns, realm) = (s.ns.clone(), &s.realm);
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
    secret(
        &client,
        &ns,
        "unreachable-admin",
        json!({"username": tb.admin_user, "password": tb.admin_password, "url": "http://127.0.0.1:1"}),
    )
    .await;
    create_policy(
        &client,
        &ns,
        policy_json(
            "unreachable",
            kcref("unreachable-admin", &realm.name, "http://127.0.0.1:1"),
        ),
    )
    .await;
    // The test bed's credentials for another Keycloak: never sent there.
    create_policy(
        &client,
        &ns,
        policy_json(
            "url-mismatch",
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
        (
            "url-mismatch",
            "KeycloakReachable",
            "AdminSecretUrlMismatch",
        ),
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
    let gated = json!({"auth": {"tools": [{"name": "delete_*", "scopes": ["mcp:admin"]}]}});
    create(&client, &ns, &srv("badtool", gated)).await;
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
        ("badtool", "PolicyResolved", "ScopeNotInPolicy"),
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
    for name in ["orphan", "badscope", "badtool", "waits", "conflict"] {
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
}

/// A master-realm user without any admin role, for the "admin account lacks permissions" case.
async fn unprivileged_master_user(kc: &support::KcAdmin) -> (String, String, String) {
    let username = support::unique_name("noperm");
    let password = mcp_keycloak_operator::admin::generate_secret();
    let (st, v) = kc
        .post(
            "/admin/realms/master/users",
            &json!({"username": username, "enabled": true, "email": format!("{username}@example.com"),
                    "emailVerified": true, "firstName": "No", "lastName": "Perm",
                    "credentials": [{"type": "password", "value": password, "temporary": false}]}),
        )
        .await;
    assert!(st.is_success(), "create user: {st} {v}");
    let (_, users) = kc
        .get(&format!(
            "/admin/realms/master/users?username={username}&exact=true"
        ))
        .await;
    let id = users[0]["id"].as_str().unwrap().to_string();
    (username, password, id)
}

async fn owned_secret_absent(client: &Client, ns: &str, name: &str) -> bool {
    secret_value(client, ns, &format!("{name}-oauth"), "client-secret")
        .await
        .is_none()
        && Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .unwrap()
            .is_none()
}

/// More runtime reasons: missing/wrong admin Secret keys, wrong client secret, unknown auth
/// realm, an admin account without permissions, CA bundle problems, a policy in another
/// namespace, clientId collisions between McpServers (same and other namespace), a foreign
/// audience scope, a foreign Secret; and oversized-but-valid fields that must just work. Each
/// failure has its specific reason with nothing half-applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_runtime_errors_have_specific_reasons_and_nothing_is_half_applied() {
    let client = support::kube_client().await;
    let tb = support::testbed().await;
    let s = Scenario::new("runtime2").await;
    // A second namespace with its own operator (its realm name stays unused).
    let s2 = Scenario::new("runtime2b").await;
    let (ns, ns2, realm) = (s.ns.clone(), s2.ns.clone(), &s.realm);
    let kc = tb.keycloak_url.as_str();
    let (noperm_user, noperm_password, noperm_id) = unprivileged_master_user(&realm.kc).await;
    secret(
        &client,
        &ns,
        "username-only",
        json!({"username": tb.admin_user}),
    )
    .await;
    secret(
        &client,
        &ns,
        "client-id-only",
        json!({"clientId": "admin-cli"}),
    )
    .await;
    secret(
        &client,
        &ns,
        "empty-password",
        json!({"username": tb.admin_user, "password": ""}),
    )
    .await;
    secret(
        &client,
        &ns,
        "wrong-client-secret",
        json!({"clientId": "no-such-service-account", "clientSecret": "not-the-secret"}),
    )
    .await;
    secret(
        &client,
        &ns,
        "noperm",
        json!({"username": noperm_user, "password": noperm_password}),
    )
    .await;
    secret(&client, &ns, "ca-wrong-key", json!({"other.pem": "x"})).await;
    let kcref = |secret: &str| json!({"keycloak": {"url": kc, "realm": realm.name, "adminCredentialsSecretRef": {"name": secret}}, "dynamicClientRegistration": null});
    for (name, secret_name) in [
        ("username-only", "username-only"),
        ("client-id-only", "client-id-only"),
        ("empty-password", "empty-password"),
        ("wrong-client-secret", "wrong-client-secret"),
        ("noperm", "noperm"),
    ] {
        create_policy(&client, &ns, policy_json(name, kcref(secret_name))).await;
    }
    secret(
        &client,
        &ns,
        "unknown-realm-admin",
        json!({"username": tb.admin_user, "password": tb.admin_password, "authRealm": "no-such-auth-realm"}),
    )
    .await;
    let mut unknown_auth_realm = kcref("unknown-realm-admin");
    unknown_auth_realm["keycloak"]["adminCredentialsSecretRef"]["authRealm"] =
        json!("no-such-auth-realm");
    create_policy(
        &client,
        &ns,
        policy_json("unknown-auth-realm", unknown_auth_realm),
    )
    .await;
    let mut ca_missing = kcref("keycloak-admin");
    ca_missing["keycloak"]["caBundleSecretRef"] = json!({"name": "no-such-ca"});
    create_policy(&client, &ns, policy_json("ca-missing", ca_missing)).await;
    let mut ca_key = kcref("keycloak-admin");
    ca_key["keycloak"]["caBundleSecretRef"] = json!({"name": "ca-wrong-key"});
    create_policy(&client, &ns, policy_json("ca-wrong-key", ca_key)).await;
    // The good policy, with a scope description longer than Keycloak's 255-character column.
    let mut good = policy_json("acme", kcref("keycloak-admin"));
    good["spec"]["keycloak"]["createRealm"] = json!(true);
    good["spec"]["scopes"] = json!([{"name": "mcp:tools", "description": "d".repeat(1024)}]);
    create_policy(&client, &ns, good).await;

    let cases = [
        ("username-only", "KeycloakReachable", "AdminSecretInvalid"),
        ("client-id-only", "KeycloakReachable", "AdminSecretInvalid"),
        ("empty-password", "KeycloakReachable", "AdminSecretInvalid"),
        (
            "wrong-client-secret",
            "KeycloakReachable",
            "InvalidAdminCredentials",
        ),
        (
            "unknown-auth-realm",
            "KeycloakReachable",
            "InvalidAdminCredentials",
        ),
        (
            "noperm",
            "KeycloakReachable",
            "InsufficientAdminPermissions",
        ),
        ("ca-missing", "KeycloakReachable", "CABundleNotFound"),
        ("ca-wrong-key", "KeycloakReachable", "CABundleNotFound"),
    ];
    let mut messages = vec![];
    for (name, cond, reason) in cases {
        let msg = wait_reason::<McpAuthPolicy>(&client, &ns, name, cond, reason).await;
        let ready = wait_reason::<McpAuthPolicy>(&client, &ns, name, "Ready", reason).await;
        assert_eq!(msg, ready);
        assert!(
            !msg.contains("not-the-secret")
                && !msg.contains(&noperm_password)
                && !msg.contains(&tb.admin_password),
            "secret in status: {msg}"
        );
        messages.push((name, msg));
    }
    let expect = |name: &str, needle: &str| {
        let m = &messages.iter().find(|(n, _)| *n == name).unwrap().1;
        assert!(m.contains(needle), "{name}: {needle:?} not in {m:?}");
    };
    expect(
        "username-only",
        "must contain either keys username and password, or clientId and clientSecret",
    );
    expect(
        "empty-password",
        "must contain either keys username and password",
    );
    expect(
        "wrong-client-secret",
        "token request to realm master failed",
    );
    expect(
        "unknown-auth-realm",
        "realm no-such-auth-realm for the admin credentials does not exist",
    );
    expect(
        "noperm",
        "the Keycloak admin account lacks permission for read realm",
    );
    expect(
        "ca-missing",
        &format!("CA bundle Secret {ns}/no-such-ca not found"),
    );
    expect("ca-wrong-key", "has no key ca.crt");
    // None of the failing policies touched Keycloak: only the good one's scope exists.
    wait_condition::<McpAuthPolicy>(&client, &ns, "acme", "Ready", "True").await;
    let tools = realm.scope("mcp:tools").await.expect("mcp:tools");
    assert_eq!(
        tools["description"].as_str().unwrap().len(),
        255,
        "the long description is cut to Keycloak's column"
    );
    assert_eq!(
        realm.anonymous_components("trusted-hosts").await.len(),
        1,
        "failing policies must not touch registration policies"
    );

    let srv = |name: &str, patch: Value| -> McpServer {
        serde_json::from_value(server_json(name, patch)).unwrap()
    };
    // Oversized but valid: a 2000-character url (Keycloak's client name is cut, the audience is
    // whole). Before the fix Keycloak answered 500 to the client's 2000-character name, forever.
    let long_url = format!("http://localhost/{}", "u".repeat(1983));
    create(
        &client,
        &ns,
        &srv("longurl", json!({"url": long_url, "replicas": 0})),
    )
    .await;
    // clientId collision between two McpServers of this namespace.
    create(
        &client,
        &ns,
        &srv(
            "first",
            json!({"introspectionClient": {"clientId": "shared-id"}, "replicas": 0}),
        ),
    )
    .await;
    wait_condition::<McpServer>(&client, &ns, "first", "Ready", "True").await;
    create(
        &client,
        &ns,
        &srv(
            "second",
            json!({"introspectionClient": {"clientId": "shared-id"}, "replicas": 0}),
        ),
    )
    .await;
    // A foreign audience scope of the server's name (marked by someone else).
    let (st, v) = realm
        .kc
        .post(
            &realm.path("/client-scopes"),
            &json!({"name": format!("mcp:server:{ns}:scoped"), "protocol": "openid-connect",
                    "attributes": {"mcpauth.dev/owner": "someone/else"}}),
        )
        .await;
    assert!(st.is_success(), "{v}");
    create(&client, &ns, &srv("scoped", json!({"replicas": 0}))).await;
    // A foreign Secret where the credentials Secret goes.
    secret(
        &client,
        &ns,
        "parked-oauth",
        json!({"client-secret": "theirs"}),
    )
    .await;
    create(&client, &ns, &srv("parked", json!({"replicas": 0}))).await;

    // Policy in another namespace: policyRef has no namespace field. Server-side apply refuses
    // one; a plain create (no strict field validation) has it dropped by the API server, and the
    // server looks for the policy in its own namespace.
    let mut cross = server_json(
        "cross",
        json!({"policyRef": {"name": "acme", "namespace": ns}}),
    );
    cross["metadata"]["namespace"] = json!(ns2);
    let o: DynamicObject = serde_json::from_value(cross.clone()).unwrap();
    let api2 = dynamic_api(&client, &ns2, "McpServer");
    match api2
        .patch(
            "cross",
            &PatchParams::apply("bad-input-test"),
            &Patch::Apply(&o),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert!(
            s.message
                .contains(".spec.policyRef.namespace: field not declared in schema"),
            "{}",
            s.message
        ),
        other => panic!("strict apply accepted policyRef.namespace: {other:?}"),
    }
    api2.create(&PostParams::default(), &o).await.unwrap();
    let stored = api2.get("cross").await.unwrap();
    assert_eq!(stored.data["spec"]["policyRef"], json!({"name": "acme"}));
    // Another namespace's policies over the same realm (same scope, or a scope of its own) get
    // nothing of it: the realm is claimed by this namespace's policy.
    create_policy(&client, &ns2, policy_json("dup", kcref("keycloak-admin"))).await;
    let m =
        wait_reason::<McpAuthPolicy>(&client, &ns2, "dup", "RealmConfigured", "RealmClaimed").await;
    assert!(
        m.contains(&format!("is managed by McpAuthPolicy/{ns}/acme")),
        "{m}"
    );
    let mut acme2 = policy_json("acme2", kcref("keycloak-admin"));
    acme2["spec"]["scopes"] = json!([{"name": "mcp:elsewhere"}]);
    create_policy(&client, &ns2, acme2).await;
    wait_reason::<McpAuthPolicy>(&client, &ns2, "acme2", "Ready", "RealmClaimed").await;
    create(
        &client,
        &ns2,
        &srv(
            "elsewhere",
            json!({"policyRef": {"name": "acme2"}, "introspectionClient": {"clientId": "shared-id"}, "replicas": 0}),
        ),
    )
    .await;

    let m =
        wait_reason::<McpServer>(&client, &ns2, "cross", "PolicyResolved", "PolicyNotFound").await;
    assert_eq!(
        m,
        format!("PolicyNotFound: McpAuthPolicy {ns2}/acme not found")
    );
    let m = wait_reason::<McpServer>(
        &client,
        &ns,
        "second",
        "KeycloakClientReady",
        "ClientIdConflict",
    )
    .await;
    assert!(m.contains(&format!("(owner: McpServer/{ns}/first)")), "{m}");
    // Its server cannot reach the realm to collide with this namespace's client id.
    let m = wait_reason::<McpServer>(
        &client,
        &ns2,
        "elsewhere",
        "PolicyResolved",
        "PolicyNotReady",
    )
    .await;
    assert!(m.contains("RealmClaimed"), "{m}");
    let m = wait_reason::<McpServer>(
        &client,
        &ns,
        "scoped",
        "KeycloakClientReady",
        "ScopeConflict",
    )
    .await;
    assert_eq!(
        m,
        format!("ScopeConflict: client scope mcp:server:{ns}:scoped belongs to someone/else")
    );
    let m =
        wait_reason::<McpServer>(&client, &ns, "parked", "SecretReady", "ResourceConflict").await;
    assert!(
        m.contains("parked-oauth already exists and is not owned by this McpServer"),
        "{m}"
    );
    for (n, name) in [
        (&ns, "second"),
        (&ns2, "elsewhere"),
        (&ns, "scoped"),
        (&ns2, "cross"),
    ] {
        wait_reason::<McpServer>(
            &client,
            n,
            name,
            "Ready",
            match name {
                "cross" => "PolicyNotFound",
                "elsewhere" => "PolicyNotReady",
                "scoped" => "ScopeConflict",
                _ => "ClientIdConflict",
            },
        )
        .await;
        assert!(
            owned_secret_absent(&client, n, name).await,
            "{n}/{name} got a Secret or a Deployment"
        );
    }
    // Nothing half-applied in Keycloak: no client, no audience scope for the refused servers.
    for name in ["scoped", "cross"] {
        assert!(realm.client(&format!("mcp.{ns}.{name}")).await.is_none());
        assert!(realm.client(&format!("mcp.{ns2}.{name}")).await.is_none());
    }
    for (n, name) in [(&ns, "second"), (&ns2, "elsewhere"), (&ns2, "cross")] {
        assert!(
            realm
                .scope(&format!("mcp:server:{n}:{name}"))
                .await
                .is_none(),
            "{n}/{name}: audience scope created"
        );
    }
    let foreign = realm
        .scope(&format!("mcp:server:{ns}:scoped"))
        .await
        .unwrap();
    assert_eq!(foreign["attributes"]["mcpauth.dev/owner"], "someone/else");
    assert_eq!(
        foreign["protocolMappers"].as_array().map_or(0, |m| m.len()),
        0,
        "foreign scope was modified"
    );
    assert_eq!(
        secret_value(&client, &ns, "parked-oauth", "client-secret")
            .await
            .as_deref(),
        Some("theirs"),
        "foreign Secret was overwritten"
    );
    // The shared clientId still belongs to the first server, with its secret.
    let shared = realm.client("shared-id").await.unwrap();
    assert_eq!(
        shared["attributes"]["mcpauth.dev/owner"],
        format!("McpServer/{ns}/first").as_str()
    );

    // The oversized url works end to end.
    wait_condition::<McpServer>(&client, &ns, "longurl", "Ready", "True").await;
    let c = realm.client(&format!("mcp.{ns}.longurl")).await.unwrap();
    assert_eq!(c["name"].as_str().unwrap().chars().count(), 255);
    let scope = realm
        .scope(&format!("mcp:server:{ns}:longurl"))
        .await
        .unwrap();
    assert!(scope["protocolMappers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["config"]["included.custom.audience"] == long_url.as_str()));

    // Deleting the refused servers leaves the first server's client and the foreign objects alone.
    let servers: Api<McpServer> = Api::namespaced(client.clone(), &ns);
    for name in ["second", "scoped", "parked"] {
        servers.delete(name, &Default::default()).await.unwrap();
    }
    Api::<McpServer>::namespaced(client.clone(), &ns2)
        .delete("elsewhere", &Default::default())
        .await
        .unwrap();
    support::wait_for("refused servers deleted", WAIT, || async {
        let left = servers.list(&Default::default()).await.ok()?.items.len();
        let left2 = Api::<McpServer>::namespaced(client.clone(), &ns2)
            .get_opt("elsewhere")
            .await
            .ok()?;
        (left == 2 && left2.is_none()).then_some(())
    })
    .await;
    assert!(
        realm.client("shared-id").await.is_some(),
        "first's client was deleted"
    );
    assert!(realm
        .scope(&format!("mcp:server:{ns}:scoped"))
        .await
        .is_some());
    assert!(
        realm.client(&format!("mcp.{ns}.parked")).await.is_none(),
        "parked's Keycloak client outlived it"
    );
    wait_condition::<McpServer>(&client, &ns, "first", "Ready", "True").await;

    realm
        .kc
        .delete(&format!("/admin/realms/master/users/{noperm_id}"))
        .await;
}
