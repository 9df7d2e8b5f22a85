//! Keycloak outage: the gateway fails closed, conditions say why, retries back off, everything
//! converges after Keycloak returns. Its own test binary (cargo runs binaries one at a time), so
//! stopping the test bed's Keycloak disturbs no other test.

mod harness;
mod support;

use std::time::Duration;

use harness::*;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use mcp_keycloak_operator::gateway::spawn;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_outage_fails_closed_backs_off_and_converges() {
    let client = support::kube_client().await;
    let tb = support::testbed().await;
    let ns = support::test_namespace(&client, "outage").await;
    let realm = Realm::new(&support::unique_name("outage")).await;
    admin_secret(&client, &ns, "keycloak-admin").await;
    let op = Operator::start(&client, &ns).await;
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
    let errors_before = op
        .ctx
        .metrics
        .reconcile_errors
        .get_or_create(&mcp_keycloak_operator::metrics::ErrorLabels {
            controller: "mcpauthpolicy",
            reason: "KeycloakUnreachable",
        })
        .get();
    let keycloak = KeycloakDown::stop().await;
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
    // Stay down for a while and count the retries: they must back off, not spin.
    let remaining = Duration::from_secs(30).saturating_sub(down_at.elapsed());
    tokio::time::sleep(remaining).await;
    let retries = op
        .ctx
        .metrics
        .reconcile_errors
        .get_or_create(&mcp_keycloak_operator::metrics::ErrorLabels {
            controller: "mcpauthpolicy",
            reason: "KeycloakUnreachable",
        })
        .get()
        - errors_before;
    println!("policy reconcile retries during a 30 s Keycloak outage: {retries}");
    assert!(
        retries >= 2,
        "no retries while Keycloak was down ({retries})"
    );
    assert!(
        retries <= 6,
        "{retries} retries in 30 s: no exponential backoff (5, 10, 20 s expected)"
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
    let tok = realm
        .mint_token(&format!("openid mcp:tools mcp:server:{ns}:alpha"))
        .await;
    let resp = http
        .post(format!("{}/mcp", gw.url()))
        .bearer_auth(tok["access_token"].as_str().unwrap())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        502,
        "after recovery a fresh token passes auth again"
    );

    gw.shutdown().await.unwrap();
    teardown(&client, &ns, op).await;
    realm.delete().await;
}

/// Stops the test bed's Keycloak; starts it again when dropped, even if the test panics.
struct KeycloakDown {
    started: bool,
}

impl KeycloakDown {
    async fn stop() -> Self {
        support::testbed_ctl(&["keycloak-stop"]).await;
        KeycloakDown { started: false }
    }

    async fn start(mut self) {
        support::testbed_ctl(&["keycloak-start"]).await;
        self.started = true;
    }
}

impl Drop for KeycloakDown {
    fn drop(&mut self) {
        if !self.started {
            let _ = std::process::Command::new(support::testbed_script())
                .arg("keycloak-start")
                .status();
        }
    }
}
