//! Attack tests against the real test bed (issue 12): what an internet client, a tenant who may
//! create McpAuthPolicies and McpServers in their own namespace, or a pod could try on the
//! Keycloak side. Each fails when the property it names breaks; see docs/security.md.

use crate::harness;
use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::*;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

async fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn token_request(realm_url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{realm_url}/protocol/openid-connect/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Registers anonymously through both of Keycloak's providers a confidential client with a
/// service account, and returns each one's `(client_id, secret)`.
async fn register_machine_clients(realm_url: &str) -> Vec<(String, String)> {
    let (st, oidc) = post_json(
        &format!("{realm_url}/clients-registrations/openid-connect"),
        &json!({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_post"}),
    )
    .await;
    assert_eq!(st, 201, "anonymous OIDC registration: {oidc}");
    let (st, native) = post_json(
        &format!("{realm_url}/clients-registrations/default"),
        &json!({"clientId": support::unique_name("forged"), "publicClient": false,
                "serviceAccountsEnabled": true, "standardFlowEnabled": false,
                "attributes": {"mcpauth.dev/owner": "McpServer/x/y"}}),
    )
    .await;
    assert_eq!(
        st, 201,
        "anonymous registration (default provider): {native}"
    );
    vec![
        (
            oidc["client_id"].as_str().unwrap().to_string(),
            oidc["client_secret"].as_str().unwrap().to_string(),
        ),
        (
            native["clientId"].as_str().unwrap().to_string(),
            native["secret"].as_str().unwrap().to_string(),
        ),
    ]
}

/// Anonymous registration + client credentials (or the password grant) must not yield a token:
/// Keycloak refuses grants without a user for every client of the realm, unless the policy
/// opens one explicitly (then the test shows it really is open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_registration_gets_no_token_without_a_user() {
    let s = Scenario::new("nouser").await;
    s.seed(&[("weather", "http://localhost:3000/mcp")]).await;
    let realm_url = s.realm_url();
    let scope = format!("mcp:tools mcp:server:{}:weather", s.ns);
    let clients = register_machine_clients(&realm_url).await;
    for (id, secret) in &clients {
        let (st, v) = token_request(
            &realm_url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
                ("scope", &scope),
            ],
        )
        .await;
        assert_eq!(st, 400, "client credentials for {id} answered {st}: {v}");
        assert!(
            v.get("access_token").is_none(),
            "a token without a user: {v}"
        );
    }
    // The password grant of an anonymously registered client: refused too.
    let (user_client, user, password) = s.realm.token_minter().await;
    let _ = user_client;
    let (st, pw) = post_json(
        &format!("{realm_url}/clients-registrations/openid-connect"),
        &json!({"grant_types": ["password"], "token_endpoint_auth_method": "none"}),
    )
    .await;
    assert_eq!(st, 201, "{pw}");
    let (st, v) = token_request(
        &realm_url,
        &[
            ("grant_type", "password"),
            ("client_id", pw["client_id"].as_str().unwrap()),
            ("username", &user),
            ("password", &password),
            ("scope", &scope),
        ],
    )
    .await;
    assert_eq!(st, 400, "password grant answered {st}: {v}");
    // Flows with a user still work: the authorization code flow of an admin-made client.
    let token = s.realm.mint_token(&scope).await;
    assert!(token["access_token"].is_string());
    let msg = s
        .wait_condition::<McpAuthPolicy>("acme", "MachineGrantsRefused", "True")
        .await
        .1;
    assert!(msg.contains("client_credentials"), "{msg}");

    // Opened explicitly, visible in status, and then really open (so the 400s above were the
    // policy's doing).
    let patch = json!({"spec": {"allowedMachineGrants": ["ClientCredentials"]}});
    Api::<McpAuthPolicy>::namespaced(s.client.clone(), &s.ns)
        .patch("acme", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let reason = s
        .wait_reason::<McpAuthPolicy>("acme", "MachineGrantsRefused", "MachineGrantsAllowed")
        .await;
    assert!(reason.contains("open: client_credentials"), "{reason}");
    let (id, secret) = &clients[0];
    let (st, v) = token_request(
        &realm_url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ],
    )
    .await;
    assert_eq!(st, 200, "client credentials once allowed: {v}");
}

/// A TCP listener on loopback that records every byte it is sent.
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(vec![]));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Recorder { url, seen, task }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).to_string()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Someone who may edit or create McpAuthPolicies but not read the admin Secret points
/// `keycloak.url` (or `authRealm`) somewhere else: the admin password never arrives there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_credentials_are_never_sent_to_another_url() {
    let s = Scenario::new("exfil").await;
    s.seed(&[("weather", "http://localhost:3000/mcp")]).await;
    let tb = support::testbed().await;
    let trap = Recorder::start().await;
    let policies = Api::<McpAuthPolicy>::namespaced(s.client.clone(), &s.ns);

    // A new policy naming the existing Secret and the trap; the seed policy's url edited to the
    // trap; the right Keycloak, but the credentials sent to log in to another realm.
    let mut stolen = seed_policy("stolen", &support::unique_name("stolen"), &trap.url);
    stolen.spec.dynamic_client_registration = None;
    create(&s.client, &s.ns, &stolen).await;
    let patch = json!({"spec": {"keycloak": {"url": trap.url}}});
    policies
        .patch("acme", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let mut other_realm = seed_policy("other-realm", &s.realm.name, &tb.keycloak_url);
    other_realm
        .spec
        .keycloak
        .admin_credentials_secret_ref
        .auth_realm = Some(s.realm.name.clone());
    create(&s.client, &s.ns, &other_realm).await;
    // Several reconciles later, the trap got nothing (no connection at all).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let got = trap.text();
    assert!(
        !got.contains(&tb.admin_password) && got.is_empty(),
        "the trap received {} bytes: {got}",
        got.len()
    );
    for name in ["stolen", "acme"] {
        s.wait_reason::<McpAuthPolicy>(name, "Ready", "AdminSecretUrlMismatch")
            .await;
    }
    let msg = s
        .wait_reason::<McpAuthPolicy>("other-realm", "Ready", "AdminSecretUrlMismatch")
        .await;
    assert!(msg.contains("authRealm"), "{msg}");
    for name in ["stolen", "other-realm"] {
        policies
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    let patch = json!({"spec": {"keycloak": {"url": tb.keycloak_url}}});
    policies
        .patch("acme", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Everything of a realm a policy can touch, as Keycloak reports it.
async fn realm_snapshot(realm: &Realm) -> Value {
    let r = realm.get("").await;
    let id = r["id"].as_str().unwrap().to_string();
    let mut scopes = realm.get("/client-scopes").await;
    if let Some(a) = scopes.as_array_mut() {
        a.sort_by_key(|s| s["name"].as_str().unwrap_or_default().to_string());
    }
    json!({
        "attributes": r["attributes"],
        "components": realm.get(&format!("/components?parent={id}")).await,
        "scopes": scopes,
        "defaultScopes": realm.get("/default-default-client-scopes").await,
        "optionalScopes": realm.get("/default-optional-client-scopes").await,
        "clientPolicies": realm.get("/client-policies/policies").await,
        "clientProfiles": realm.get("/client-policies/profiles").await,
        "clients": realm.get("/clients?briefRepresentation=true").await,
    })
}

/// A tenant's policy in another namespace naming a realm that is already claimed: it writes
/// nothing to the realm, and its deletion touches nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_realm_is_left_alone_by_another_namespace() {
    let s = Scenario::new("owner").await;
    s.seed(&[("weather", "http://localhost:3000/mcp")]).await;
    let tb = support::testbed().await;
    // Let the owner settle, then snapshot.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = realm_snapshot(&s.realm).await;
    assert_eq!(
        before["attributes"]["mcpauth.dev/owner"],
        json!(format!("McpAuthPolicy/{}/acme", s.ns))
    );

    // Tenant B: its own namespace and operator (its realm name stays unused).
    let b = Scenario::new("tenant-b").await;
    let ns_b = &b.ns;
    let mut intruder = seed_policy("intruder", &s.realm.name, &tb.keycloak_url);
    intruder.spec.scopes[0].name = "tenant-b:tools".into();
    intruder
        .spec
        .dynamic_client_registration
        .as_mut()
        .unwrap()
        .trusted_hosts = vec!["tenant-b.example".into()];
    create(&s.client, ns_b, &intruder).await;
    let msg =
        wait_reason::<McpAuthPolicy>(&s.client, ns_b, "intruder", "Ready", "RealmClaimed").await;
    assert!(
        msg.contains(&format!("McpAuthPolicy/{}/acme", s.ns)),
        "{msg}"
    );
    // Several resyncs of both operators.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = realm_snapshot(&s.realm).await;
    assert_eq!(
        before, during,
        "the realm changed while another policy held it"
    );

    b.delete::<McpAuthPolicy>("intruder").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = realm_snapshot(&s.realm).await;
    assert_eq!(before, after, "deleting the other policy changed the realm");
    s.wait_condition::<McpAuthPolicy>("acme", "Ready", "True")
        .await;
}

/// An anonymous registration policy someone else added (it can only narrow registration) is
/// neither deleted nor rewritten, and the status says it applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_anonymous_components_are_left_alone() {
    let s = Scenario::new("foreign").await;
    let kc = &s.realm.kc;
    let (st, v) = kc
        .post(
            "/admin/realms",
            &json!({"realm": s.realm.name, "enabled": true}),
        )
        .await;
    assert!(st.is_success(), "{st} {v}");
    let realm_id = s.realm.get("").await["id"].as_str().unwrap().to_string();
    let foreign = json!({
        "name": "Extra Trusted Hosts", "providerId": "trusted-hosts", "subType": "anonymous",
        "providerType": "org.keycloak.services.clientregistration.policy.ClientRegistrationPolicy",
        "parentId": realm_id,
        "config": {"trusted-hosts": ["localhost", "127.0.0.1", "vscode.dev", "insiders.vscode.dev", "code.visualstudio.com"],
                   "host-sending-registration-request-must-match": ["false"],
                   "client-uris-must-match": ["true"]}
    });
    let (st, v) = kc.post(&s.realm.path("/components"), &foreign).await;
    assert!(st.is_success(), "{st} {v}");
    let before = s.realm.anonymous_components("trusted-hosts").await;
    let extra_before = before
        .iter()
        .find(|c| c["name"] == "Extra Trusted Hosts")
        .cloned();
    assert!(extra_before.is_some());
    s.seed(&[("weather", "http://localhost:3000/mcp")]).await;
    let msg = s
        .wait_condition::<McpAuthPolicy>("acme", "RegistrationPolicyApplied", "True")
        .await
        .1;
    assert!(msg.contains("Extra Trusted Hosts"), "{msg}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = s.realm.anonymous_components("trusted-hosts").await;
    let extra_after = after
        .iter()
        .find(|c| c["name"] == "Extra Trusted Hosts")
        .cloned();
    assert_eq!(
        extra_before, extra_after,
        "the foreign component was deleted or rewritten"
    );
    assert_eq!(after.len(), 2, "{after:?}");
}

/// Two McpServers of one realm claiming the same url: the second is refused before it writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_url_is_refused() {
    let s = Scenario::new("dupurl").await;
    s.seed(&[("weather", "http://localhost:3000/mcp")]).await;
    let mut twin = server("twin", "acme", "http://localhost:3000/mcp");
    twin.spec.introspection_client.client_id = None;
    create(&s.client, &s.ns, &twin).await;
    let msg = s
        .wait_reason::<McpServer>("twin", "Ready", "UrlConflict")
        .await;
    assert!(msg.contains("weather"), "{msg}");
    assert!(
        s.realm
            .client(&format!("mcp.{}.twin", s.ns))
            .await
            .is_none(),
        "the refused server created a Keycloak client"
    );
    assert!(s
        .realm
        .scope(&format!("mcp:server:{}:twin", s.ns))
        .await
        .is_none());
}

/// A policy that never wrote anything to Keycloak goes at once when deleted, even though its
/// Keycloak is unreachable (it used to keep its finalizer forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_never_wrote_is_released_at_once() {
    let s = Scenario::new("deadkc").await;
    let tb = support::testbed().await;
    let dead = "http://127.0.0.1:1";
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "dead-admin"},
        "stringData": {"username": tb.admin_user, "password": tb.admin_password, "url": dead}
    }))
    .unwrap();
    Api::namespaced(s.client.clone(), &s.ns)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    let mut p = seed_policy("dead", &s.realm.name, dead);
    p.spec.keycloak.admin_credentials_secret_ref.name = "dead-admin".into();
    create(&s.client, &s.ns, &p).await;
    s.wait_reason::<McpAuthPolicy>("dead", "Ready", "KeycloakUnreachable")
        .await;
    let api = Api::<McpAuthPolicy>::namespaced(s.client.clone(), &s.ns);
    api.delete("dead", &DeleteParams::default()).await.unwrap();
    support::wait_for("policy gone", Duration::from_secs(15), || async {
        api.get_opt("dead").await.ok()?.is_none().then_some(())
    })
    .await;
}
