//! Keycloak outage: the gateway fails closed, conditions say why, retries back off, everything
//! converges after Keycloak returns. Its own test binary (cargo runs binaries one at a time), so
//! stopping the test bed's Keycloak disturbs no other test.

#[allow(dead_code, unused_imports, unused_macros)] // uses only part of the shared harness
mod common;
use common::{harness, support};

use std::time::Duration;

use harness::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use mcp_auth_gateway::spawn;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::json;
use support::Fetch;

/// The tests of this binary each stop the shared Keycloak: one at a time.
static KEYCLOAK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long Keycloak stays down (the 60 s).
const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_outage_fails_closed_backs_off_and_converges() {
    let _serial = KEYCLOAK.lock().await;
    let s = Scenario::new("outage").await;
    let tb = support::testbed().await;
    let (client, ns, realm) = (s.client.clone(), s.ns.clone(), &s.realm);
    let op = s.op();
    create(
        &client,
        &ns,
        &seed_policy("acme", &realm.name, &tb.keycloak_url),
    )
    .await;
    let url = "http://127.0.0.1:1/mcp";
    create(&client, &ns, &server("alpha", "acme", url)).await;
    wait_condition::<McpServer>(&client, &ns, "alpha", "Ready", "True").await;

    // The gateway, configured from the reconciled Deployment.
    let mut cfg = gateway_config_from_deployment(&client, &ns, "alpha", "http://127.0.0.1:1").await;
    // Upstream: a closed port — a 502 proves the request got past auth, a 503 that it did not.
    cfg.cache_ttl_seconds = 0;
    let gw = spawn(cfg).await.unwrap();
    let http = reqwest::Client::new();
    let tok = realm
        .mint_token(&format!("openid mcp:tools mcp:server:{ns}:alpha"))
        .await;
    let access = tok["access_token"].as_str().unwrap().to_string();
    let call = || {
        http.post(format!("{}/mcp", gw.url()))
            .bearer_auth(&access)
            .body("{}")
            .send()
    };
    assert_eq!(
        call().await.unwrap().status(),
        502,
        "valid token should pass auth"
    );

    // Keycloak down.
    let errors_before = policy_errors(op, "KeycloakUnreachable");
    let keycloak = support::Stopped::stop("keycloak").await;
    let down_at = std::time::Instant::now();
    let resp = call().await.unwrap();
    assert_eq!(
        resp.status(),
        503,
        "gateway must fail closed while Keycloak is down"
    );
    let msg = wait_reason::<McpAuthPolicy>(
        &client,
        &ns,
        "acme",
        "KeycloakReachable",
        "KeycloakUnreachable",
    )
    .await;
    assert!(msg.contains("unreachable"), "{msg}");
    // Servers wait for their policy and say why.
    let msg = wait_reason::<McpServer>(&client, &ns, "alpha", "Ready", "PolicyNotReady").await;
    assert!(msg.contains("unreachable"), "{msg}");
    // Work that arrives during the outage waits and says why, with nothing half-applied.
    s.create(&server("beta", "acme", "http://127.0.0.1:1/beta"))
        .await;
    let msg = wait_reason::<McpServer>(&client, &ns, "beta", "Ready", "PolicyNotReady").await;
    assert!(msg.contains("unreachable"), "{msg}");
    // Stay down for a while and count the retries: they must back off, not spin.
    let remaining = OUTAGE.saturating_sub(down_at.elapsed());
    tokio::time::sleep(remaining).await;
    let retries = policy_errors(op, "KeycloakUnreachable") - errors_before;
    support::figure(format_args!(
        "policy reconcile attempts failing during a {} s Keycloak outage: {retries} (backoff 5, 10, 20, 40 s)",
        OUTAGE.as_secs()
    ));
    assert!(
        retries >= 3,
        "too few retries while Keycloak was down ({retries})"
    );
    assert!(
        retries <= 6,
        "{retries} failed attempts in {} s: no exponential backoff (about 4 expected)",
        OUTAGE.as_secs()
    );

    // Back: everything converges, nothing duplicated, new tokens pass again.
    keycloak.start().await;
    wait_condition::<McpAuthPolicy>(&client, &ns, "acme", "Ready", "True").await;
    wait_condition::<McpServer>(&client, &ns, "alpha", "Ready", "True").await;
    assert_eq!(realm.anonymous_components("trusted-hosts").await.len(), 1);
    let clients = realm
        .get(&format!("/clients?clientId=mcp.{ns}.alpha"))
        .await;
    assert_eq!(clients.as_array().unwrap().len(), 1);
    wait_condition::<McpServer>(&client, &ns, "beta", "Ready", "True").await;
    let clients = realm.get(&format!("/clients?clientId=mcp.{ns}.beta")).await;
    assert_eq!(clients.as_array().unwrap().len(), 1);
    let scopes = realm.get("/client-scopes").await;
    for name in ["alpha", "beta"] {
        let want = format!("mcp:server:{ns}:{name}");
        let n = scopes
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == want.as_str())
            .count();
        assert_eq!(n, 1, "{want} exists {n} times");
    }
    let tok = realm
        .mint_token(&format!("openid mcp:tools mcp:server:{ns}:alpha"))
        .await;
    let resp = support::post_mcp(&http, &gw.url(), tok["access_token"].as_str().unwrap()).await;
    assert_eq!(
        resp.status(),
        502,
        "after recovery a fresh token passes auth again"
    );

    gw.shutdown().await.unwrap();
}

fn kc_requests(op: &Operator, method: &'static str, outcome: &'static str) -> u64 {
    let labels = mcp_keycloak_operator::metrics::KeycloakRequestLabels { method, outcome };
    op.ctx
        .metrics
        .keycloak_requests
        .get_or_create(&labels)
        .get()
}

/// Reconcile errors with `reason`, summed over `controllers`.
fn reconcile_errors(op: &Operator, controllers: &[&'static str], reason: &'static str) -> u64 {
    let errors = &op.ctx.metrics.reconcile_errors;
    controllers
        .iter()
        .map(|&controller| {
            let labels = mcp_keycloak_operator::metrics::ErrorLabels { controller, reason };
            errors.get_or_create(&labels).get()
        })
        .sum()
}

fn policy_errors(op: &Operator, reason: &'static str) -> u64 {
    reconcile_errors(op, &["mcpauthpolicy"], reason)
}

fn kc_errors(op: &Operator, reason: &'static str) -> u64 {
    reconcile_errors(op, &["mcpauthpolicy", "mcpserver"], reason)
}

/// A Keycloak restart that loses the sessions behind the operator's cached admin token: the
/// next admin request answers 401, the client fetches a fresh token and retries once, and the
/// reconcile succeeds without ever reporting bad credentials.
///
/// The operator authenticates in the managed realm itself (`authRealm`) as a realm admin whose
/// access tokens live 10 minutes, so its cached token is still valid by the clock when Keycloak
/// comes back: only the 401 can make it fetch a new one. The test bed's Keycloak (26.x) persists
/// user sessions across restarts, so after the restart the test drops the realm's sessions
/// (`logout-all`), which is what a restart of a Keycloak with in-memory sessions (or a failover
/// to a node that never saw them) does; a token minted before is checked to be refused after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_restart_invalidating_the_admin_token_is_retried_with_a_fresh_token() {
    let _serial = KEYCLOAK.lock().await;
    let client = support::kube_client().await;
    let tb = support::testbed().await;
    let mut scenario = Scenario::without_operator("kcrestart").await;
    let ns = scenario.ns.clone();
    let realm = Realm::new(&scenario.realm.name).await;
    let kc = &realm.kc;

    // The realm, a realm admin in it with 10-minute access tokens.
    let (st, v) = kc
        .post(
            "/admin/realms",
            &json!({"realm": realm.name, "enabled": true, "accessTokenLifespan": 600}),
        )
        .await;
    assert!(st.is_success(), "create realm: {st} {v}");
    let password = mcp_keycloak_operator::admin::generate_secret();
    let (st, v) = kc
        .post(
            &realm.path("/users"),
            &json!({"username": "operator", "enabled": true, "email": "operator@example.com",
                    "emailVerified": true, "firstName": "Op", "lastName": "Erator",
                    "credentials": [{"type": "password", "value": password, "temporary": false}]}),
        )
        .await;
    assert!(st.is_success(), "create user: {st} {v}");
    let uid = realm.get("/users?username=operator&exact=true").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rm = realm.get("/clients?clientId=realm-management").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let role = realm.get(&format!("/clients/{rm}/roles/realm-admin")).await;
    let (st, v) = kc
        .post(
            &realm.path(&format!("/users/{uid}/role-mappings/clients/{rm}")),
            &json!([role]),
        )
        .await;
    assert!(st.is_success(), "grant realm-admin: {st} {v}");
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "realm-admin"},
        "stringData": {"username": "operator", "password": password, "url": tb.keycloak_url, "authRealm": realm.name}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&Default::default(), &s)
        .await
        .unwrap();
    let mut policy = seed_policy("acme", &realm.name, &tb.keycloak_url);
    policy.spec.keycloak.create_realm = false;
    policy.spec.keycloak.admin_credentials_secret_ref.name = "realm-admin".into();
    policy.spec.keycloak.admin_credentials_secret_ref.auth_realm = Some(realm.name.clone());

    scenario.start_operator().await;
    let op = scenario.op();
    create(&client, &ns, &policy).await;
    scenario
        .create(&server("alpha", "acme", "http://alpha.example/mcp"))
        .await;
    wait_condition::<McpServer>(&client, &ns, "alpha", "Ready", "True").await;
    let refreshes_before = op.ctx.metrics.admin_token_refreshes.get();
    let rejected_before = kc_requests(op, "GET", "client_error");
    let bad_credentials_before = kc_errors(op, "InvalidAdminCredentials");

    // A token of the same account minted before the restart, to show the restart killed it.
    let token_url = format!(
        "{}/realms/{}/protocol/openid-connect/token",
        tb.keycloak_url, realm.name
    );
    let http = reqwest::Client::new();
    let old: serde_json::Value = http
        .post(&token_url)
        .form(&[
            ("grant_type", "password"),
            ("client_id", "admin-cli"),
            ("username", "operator"),
            ("password", &password),
        ])
        .fetch_json()
        .await;
    let old = old["access_token"].as_str().unwrap().to_string();
    let realm_url = format!("{}/admin/realms/{}", tb.keycloak_url, realm.name);
    let status_with_old = || async {
        http.get(&realm_url)
            .bearer_auth(&old)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status_with_old().await, 200);

    support::Stopped::stop("keycloak").await.start().await;
    let (st, v) = kc.post(&realm.path("/logout-all"), &json!({})).await;
    assert!(st.is_success(), "logout-all: {st} {v}");
    assert_eq!(
        status_with_old().await,
        401,
        "tokens from before the restart must be dead"
    );

    // The operator must talk to Keycloak again: a new url updates the audience mapper.
    Api::<McpServer>::namespaced(client.clone(), &ns)
        .patch(
            "alpha",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"url": "http://alpha.example/mcp/v2"}})),
        )
        .await
        .unwrap();
    let scope = format!("mcp:server:{ns}:alpha");
    support::wait_for("audience mapper updated", WAIT, || async {
        let s = realm.scope(&scope).await?;
        let ok = s["protocolMappers"]
            .as_array()?
            .iter()
            .any(|m| m["config"]["included.custom.audience"] == "http://alpha.example/mcp/v2");
        ok.then_some(())
    })
    .await;
    wait_condition::<McpServer>(&client, &ns, "alpha", "Ready", "True").await;
    let refreshes = op.ctx.metrics.admin_token_refreshes.get() - refreshes_before;
    let rejected = kc_requests(op, "GET", "client_error") - rejected_before;
    let bad_credentials = kc_errors(op, "InvalidAdminCredentials") - bad_credentials_before;
    support::figure(format_args!(
        "Keycloak restart with sessions lost: {rejected} admin request(s) answered 401 and retried, \
         admin token refreshes {refreshes_before} before, +{refreshes} after; InvalidAdminCredentials errors: {bad_credentials}"
    ));
    assert_eq!(
        refreshes_before, 1,
        "one admin token served everything before the restart"
    );
    assert!(rejected >= 1, "no request was answered 401");
    assert!(refreshes >= 1, "no fresh admin token after the 401");
    assert!(
        refreshes <= rejected,
        "{refreshes} refreshes for {rejected} 401s: refreshing without need"
    );
    assert_eq!(
        bad_credentials, 0,
        "a 401 retried with a fresh token must not surface as bad credentials"
    );
}
