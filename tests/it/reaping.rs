//! Reaping abandoned registrations on the real test bed (issue 17): clients anonymous
//! registration created are deleted once unused for `idleAfter` and older than `minAge`, as
//! Keycloak's own sessions and stored login events show; used, hand-made and session-holding
//! clients are kept; `dryRun` only lists; a realm at its Max Clients limit registers again.

use crate::harness;
use crate::support;

use std::time::Duration;

use harness::*;
use k8s_openapi::api::core::v1::Event;
use kube::api::Api;
use mcp_keycloak_operator::api::McpAuthPolicy;
use serde_json::{json, Value};

const USER: &str = "reaper-user";
const PASSWORD: &str = "reaper-password-1";

/// The scenario's policy: anonymous registration from loopback, no consent page (so the test
/// logs in without a browser), and `reaping` as given.
async fn policy(s: &Scenario, reaping: Value, max_clients: i64) -> McpAuthPolicy {
    let tb = support::testbed().await;
    resource(
        "acme",
        json!({
            "keycloak": {"url": tb.keycloak_url, "realm": s.realm.name, "createRealm": true,
                         "adminCredentialsSecretRef": {"name": "keycloak-admin"}},
            "scopes": [{"name": "mcp:tools", "type": "Default"}],
            "dynamicClientRegistration": {"trustedHosts": ["127.0.0.1", "localhost"],
                                          "consentRequired": false, "maxClients": max_clients,
                                          "reaping": reaping}
        }),
    )
}

/// Registers a public client anonymously (as an MCP client does); `Err` with Keycloak's answer
/// when refused.
async fn register(s: &Scenario) -> Result<String, String> {
    let url = format!("{}/clients-registrations/openid-connect", s.realm_url());
    let body = json!({"redirect_uris": [MINTER_REDIRECT], "token_endpoint_auth_method": "none",
                      "client_name": "reaping test"});
    let resp = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    match status {
        201 => Ok(v["client_id"].as_str().expect("client_id").to_string()),
        _ => Err(format!("{status} {v}")),
    }
}

/// Logs the test user in with `client_id` (authorization code, as an MCP client does): a
/// `LOGIN` and a `CODE_TO_TOKEN` event, and a session — offline too with `offline_access`.
async fn log_in(s: &Scenario, client_id: &str, scope: &str) {
    let base = format!("{}/protocol/openid-connect", s.realm_url());
    let (status, _) = code_flow_token(&base, client_id, (USER, PASSWORD), scope, None).await;
    assert_eq!(status, 200, "token for {client_id}");
}

async fn exists(s: &Scenario, client_id: &str) -> bool {
    s.realm.client(client_id).await.is_some()
}

async fn reaping_status(s: &Scenario) -> Value {
    let p = s.get::<McpAuthPolicy>("acme").await;
    serde_json::to_value(p.status.and_then(|st| st.reaping)).unwrap()
}

async fn event_note(s: &Scenario, reason: &str, contains: &str) -> bool {
    let events = Api::<Event>::namespaced(s.client.clone(), &s.ns);
    let list = events.list(&Default::default()).await;
    list.is_ok_and(|l| {
        l.items.iter().any(|e| {
            e.reason.as_deref() == Some(reason)
                && e.message.as_deref().is_some_and(|m| m.contains(contains))
        })
    })
}

/// An idle client is reaped; a client used later is kept until it too is idle; a client whose
/// only use is old but that holds an offline session is kept until the session ends; a
/// hand-made client is never touched; nothing is written at steady state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_registered_clients_are_reaped_and_used_ones_kept() {
    let s = Scenario::new("reap").await;
    let reaping = json!({"minAge": "20s", "idleAfter": "20s", "maxPerRun": 5});
    s.apply(&policy(&s, reaping, 200).await, &[]).await;
    s.realm.create_user(USER, PASSWORD).await;
    let hand_made = json!({"clientId": "hand-made-app", "publicClient": true,
                           "redirectUris": [MINTER_REDIRECT]});
    let (st, v) = s.realm.kc.post(&s.realm.path("/clients"), &hand_made).await;
    assert!(st.is_success(), "create a hand-made client: {st} {v}");
    let idle = register(&s).await.unwrap();
    let used = register(&s).await.unwrap();
    let holder = register(&s).await.unwrap();
    // `holder` is used now and keeps an offline session (it outlives the user's logout).
    log_in(&s, &holder, "openid offline_access").await;
    s.realm.logout_user(USER).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    // `used` is used 12 s later: idle 12 s after `idle` and `holder`.
    log_in(&s, &used, "openid").await;
    s.realm.logout_user(USER).await;
    eventually("the idle client reaped", || async {
        !exists(&s, &idle).await
    })
    .await;
    assert!(
        exists(&s, &used).await,
        "a client used within idleAfter was deleted"
    );
    assert!(
        exists(&s, &holder).await,
        "a client with an offline session was deleted"
    );
    eventually("the used client reaped once idle", || async {
        !exists(&s, &used).await
    })
    .await;
    assert!(
        exists(&s, &holder).await,
        "a client with an offline session was deleted"
    );
    assert!(
        exists(&s, "hand-made-app").await,
        "a hand-made client was deleted"
    );
    // The status is written when the reconcile that deleted the client ends.
    eventually("reapedTotal 2 in status", || async {
        reaping_status(&s).await["reapedTotal"] == 2
    })
    .await;
    let st = reaping_status(&s).await;
    assert!(st["lastReapedAt"].is_string(), "{st}");
    assert!(event_note(&s, "ClientsReaped", &idle).await);

    // Steady state: the holder stays, and nothing is written to Keycloak.
    let before = s.op().keycloak_writes();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(s.op().keycloak_writes(), before, "writes at steady state");
    assert!(exists(&s, &holder).await);

    // The session ends (the user revokes the client's offline access): reaped.
    let users = s
        .realm
        .get(&format!("/users?username={USER}&exact=true"))
        .await;
    let uid = users[0]["id"].as_str().unwrap();
    let (st, v) = s
        .realm
        .kc
        .delete(&s.realm.path(&format!("/users/{uid}/consents/{holder}")))
        .await;
    assert!(st.is_success(), "revoke offline session: {st} {v}");
    eventually("the holder reaped after its session", || async {
        !exists(&s, &holder).await
    })
    .await;
    assert!(
        exists(&s, "hand-made-app").await,
        "a hand-made client was deleted"
    );
    // Counted when the pass that deleted it ends.
    let counted = "mcp_operator_reaped_clients_total{kind=\"registered\"} 3";
    eventually("3 registered clients counted", || async {
        s.op().ctx.metrics.encode().contains(counted)
    })
    .await;
}

/// `dryRun` lists the idle client and deletes nothing; switched off, the client is reaped and
/// a realm at its Max Clients limit accepts registrations again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lists_and_reaping_reopens_a_full_realm() {
    let s = Scenario::new("reapdry").await;
    let reaping = json!({"minAge": "10s", "idleAfter": "10s", "dryRun": true});
    s.apply(&policy(&s, reaping.clone(), 200).await, &[]).await;
    let count = || async {
        let p = s.get::<McpAuthPolicy>("acme").await;
        p.status.and_then(|st| st.realm_clients)
    };
    let base = support::wait_for("the realm's client count", WAIT, count).await;
    // Room for exactly one more client.
    let full = json!({"dynamicClientRegistration": {"maxClients": base + 1}});
    s.patch_spec::<McpAuthPolicy>("acme", full).await;
    let limit = (base + 1).to_string();
    eventually("Max Clients at the new limit", || async {
        let c = s.realm.anonymous_components("max-clients").await;
        c.iter()
            .any(|c| c["config"]["max-clients"][0] == limit.as_str())
    })
    .await;
    let idle = support::poll("one registration below the limit", WAIT, || register(&s)).await;
    let refused = register(&s)
        .await
        .expect_err("registration beyond maxClients");
    assert!(
        refused.starts_with("403 ") && refused.contains("max"),
        "{refused}"
    );

    let listed = || async {
        let st = reaping_status(&s).await;
        st["dryRunCandidates"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c == &idle))
    };
    eventually("the idle client listed by dryRun", listed).await;
    assert!(event_note(&s, "ReapingDryRun", &idle).await);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(exists(&s, &idle).await, "dryRun deleted a client");
    assert_eq!(reaping_status(&s).await["reapedTotal"], 0);

    let wet = json!({"dynamicClientRegistration": {"reaping": {"dryRun": false}}});
    s.patch_spec::<McpAuthPolicy>("acme", wet).await;
    eventually("the idle client reaped", || async {
        !exists(&s, &idle).await
    })
    .await;
    let again = support::poll("registration after reaping", WAIT, || register(&s)).await;
    assert!(exists(&s, &again).await);
}
