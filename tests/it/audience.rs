//! Audience modes (`McpAuthPolicy.spec.audience`) on real Keycloaks: `ResourceIndicator` on the
//! named instance `ri` (Keycloak 26.7.3 with `cimd,resource-indicators`), `Auto` falling back to
//! `Scope` on the test bed's default Keycloak (without `resource-indicators`).

use crate::fakes;
use crate::harness;
use crate::support;

use harness::*;
use mcp_auth_gateway::spawn;
use mcp_keycloak_operator::api::{ActiveAudience, McpAuthPolicy, McpServer};
use serde_json::{json, Value};
use std::time::Duration;

/// A loopback URL for a gateway's canonical URL (compared as a string only).
fn canonical_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://127.0.0.1:{}/mcp", l.local_addr().unwrap().port())
}

fn challenge(resp: &reqwest::Response) -> String {
    let h = resp.headers().get("www-authenticate");
    h.map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Keycloak's side of `ResourceIndicator` mode for one server: a client named after the url
/// with `resource_url` = url, its audience mapper on the policy scope, no per-server scope.
async fn assert_resource_indicator_objects(b: &Scenario, name: &str, url: &str) {
    let client = b
        .realm
        .client(url)
        .await
        .expect("a client named after the url");
    assert_eq!(client["attributes"]["resource_url"], url, "{client}");
    assert_eq!(
        client["attributes"]["mcpauth.dev/owner"],
        format!("McpServer/{}/{name}", b.ns)
    );
    let per_server = format!("mcp:server:{}:{name}", b.ns);
    assert!(
        b.realm.scope(&per_server).await.is_none(),
        "{per_server} exists"
    );
    let tools = b.realm.scope("mcp:tools").await.expect("mcp:tools");
    let mapper_name = format!("audience McpServer/{}/{name}", b.ns);
    let mappers = tools["protocolMappers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mapper = mappers.iter().find(|m| m["name"] == mapper_name.as_str());
    let mapper = mapper.unwrap_or_else(|| panic!("no {mapper_name} on mcp:tools: {tools}"));
    assert_eq!(mapper["config"]["included.client.audience"], url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_indicator_mode_binds_tokens_to_one_server() {
    let ri = support::keycloak_instance("ri", "cimd,resource-indicators").await;
    let mut b = Scenario::on("aud-ri", ri.login()).await;
    b.start_operator().await;
    let (url_a, url_b) = (canonical_url(), canonical_url());
    let policy = seed_policy("acme", &b.realm.name, &ri.url);
    b.apply(
        &policy,
        &[
            server("alpha", "acme", &url_a),
            server("beta", "acme", &url_b),
        ],
    )
    .await;
    let p: McpAuthPolicy = b.get("acme").await;
    let status = p.status.clone().unwrap();
    assert_eq!(
        status.audience_mode,
        Some(ActiveAudience::ResourceIndicator)
    );
    let (reason, message) = b
        .wait_condition::<McpAuthPolicy>("acme", "AudienceMode", "True")
        .await;
    assert_eq!(reason, "ResourceIndicatorsDetected", "{message}");
    let alpha: McpServer = b.get("alpha").await;
    let st = alpha.status.unwrap();
    assert_eq!(st.client_id.as_deref(), Some(url_a.as_str()));
    assert_eq!(st.audience_scope, None);
    assert_resource_indicator_objects(&b, "alpha", &url_a).await;
    assert_resource_indicator_objects(&b, "beta", &url_b).await;

    // Keycloak: resource=A narrows aud to exactly A; an unknown resource is invalid_target.
    let (code, tok) = b
        .realm
        .mint_token_for("openid mcp:tools", Some(&url_a))
        .await;
    assert_eq!(code, 200, "{tok}");
    let for_a = tok["access_token"].as_str().unwrap().to_string();
    assert_eq!(jwt_claims(&for_a)["aud"], json!(url_a));
    let unknown = "http://127.0.0.1:1/unknown";
    let (code, answer) = b
        .realm
        .mint_token_for("openid mcp:tools", Some(unknown))
        .await;
    assert_eq!(
        (code, answer["error"].clone()),
        (400, json!("invalid_target"))
    );
    let (code, tok) = b.realm.mint_token_for("openid mcp:tools", None).await;
    assert_eq!(code, 200, "{tok}");
    let unnarrowed = tok["access_token"].as_str().unwrap().to_string();
    let aud = jwt_claims(&unnarrowed)["aud"].clone();
    assert!(aud.as_array().is_some_and(|a| a.len() > 1), "{aud}");

    // The gateways, configured from the reconciled Deployments.
    let upstream = fakes::FakeUpstream::start().await;
    let gw = |name: &'static str| {
        let (client, ns, up) = (b.client.clone(), b.ns.clone(), upstream.url());
        async move {
            let cfg = gateway_config_from_deployment(&client, &ns, name, &up).await;
            assert_eq!(cfg.audience_mode, "ResourceIndicator");
            spawn(cfg).await.expect("gateway starts")
        }
    };
    let (gw_a, gw_b) = (gw("alpha").await, gw("beta").await);
    let http = reqwest::Client::new();
    let resp = support::send(http.post(format!("{}/mcp", gw_a.url())).body("{}")).await;
    assert_eq!(resp.status(), 401);
    assert!(
        challenge(&resp).ends_with("scope=\"mcp:tools\""),
        "no per-server scope to request: {}",
        challenge(&resp)
    );
    let post = |gw: String, token: String| {
        let http = http.clone();
        async move { support::post_mcp(&http, &gw, &token).await.status() }
    };
    assert_eq!(post(gw_a.url(), for_a.clone()).await, 200, "A's token at A");
    assert_eq!(post(gw_b.url(), for_a.clone()).await, 401, "A's token at B");
    // Without resource the token names every server: neither gateway takes it.
    assert_eq!(
        post(gw_a.url(), unnarrowed.clone()).await,
        401,
        "un-narrowed at A"
    );
    assert_eq!(post(gw_b.url(), unnarrowed).await, 401, "un-narrowed at B");
    // And Keycloak itself keeps B's introspection client out of A's token.
    let secret = secret_value(&b.client, &b.ns, "beta-oauth", "client-secret").await;
    let secret = secret.expect("beta's Secret");
    // RFC 6749 2.3.1: the client id (a URL, with ':') is form-encoded for basic auth.
    let (_, v) = b
        .realm
        .introspect(&urlencode(&url_b), &secret, &for_a)
        .await;
    assert_eq!(v["active"], false, "{v}");
    let secret_a = secret_value(&b.client, &b.ns, "alpha-oauth", "client-secret").await;
    let (_, v) = b
        .realm
        .introspect(&urlencode(&url_a), &secret_a.unwrap(), &for_a)
        .await;
    assert_eq!(v["active"], true, "{v}");
    gw_a.shutdown().await.unwrap();
    gw_b.shutdown().await.unwrap();
}

/// The default Keycloak runs without `resource-indicators`: `Auto` is `Scope` and says why;
/// asking for `ResourceIndicator` there fails with a reason and changes nothing in Keycloak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_scope_without_the_feature() {
    let b = Scenario::new("aud-auto").await;
    let url = "http://weather.example.com/mcp";
    b.apply(&b.seed_policy().await, &[server("weather", "acme", url)])
        .await;
    let (reason, message) = b
        .wait_condition::<McpAuthPolicy>("acme", "AudienceMode", "True")
        .await;
    assert_eq!(reason, "ResourceIndicatorsUnavailable", "{message}");
    assert!(message.contains("mcp:server:"), "{message}");
    let p: McpAuthPolicy = b.get("acme").await;
    assert_eq!(p.status.unwrap().audience_mode, Some(ActiveAudience::Scope));
    let s: McpServer = b.get("weather").await;
    let st = s.status.unwrap();
    let client_id = format!("mcp.{}.weather", b.ns);
    assert_eq!(st.client_id.as_deref(), Some(client_id.as_str()));
    assert_eq!(st.audience_mode, Some(ActiveAudience::Scope));
    let scope = format!("mcp:server:{}:weather", b.ns);
    assert!(b.realm.scope(&scope).await.is_some());

    b.patch_spec::<McpAuthPolicy>("acme", json!({"audience": "ResourceIndicator"}))
        .await;
    let message = b
        .wait_reason::<McpAuthPolicy>("acme", "AudienceMode", "ResourceIndicatorsFeatureDisabled")
        .await;
    assert!(
        message.contains("--features=resource-indicators"),
        "{message}"
    );
    b.wait_reason::<McpAuthPolicy>("acme", "Ready", "ResourceIndicatorsFeatureDisabled")
        .await;
    b.wait_condition::<McpAuthPolicy>("acme", "Stalled", "True")
        .await;
    // Nothing of the other mode was written.
    assert!(
        b.realm.client(url).await.is_none(),
        "a client named after the url"
    );
    assert!(b.realm.client(&client_id).await.is_some());
    let tools = b.realm.scope("mcp:tools").await.unwrap();
    let mappers: Vec<Value> = tools["protocolMappers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        mappers
            .iter()
            .all(|m| !m["name"].as_str().unwrap().starts_with("audience ")),
        "{mappers:?}"
    );

    b.patch_spec::<McpAuthPolicy>("acme", json!({"audience": "Auto"}))
        .await;
    b.wait_ready::<McpAuthPolicy>("acme").await;
    let (reason, _) = b
        .wait_condition::<McpAuthPolicy>("acme", "AudienceMode", "True")
        .await;
    assert_eq!(reason, "ResourceIndicatorsUnavailable");
}

/// The server's state in Keycloak and its Secret once it is in `mode`.
async fn wait_server_in(b: &Scenario, mode: ActiveAudience, client_id: &str) -> McpServer {
    // The operator notices a restarted Keycloak's features at its next probe (reused for a
    // minute) and resync, so this may take a little over a minute.
    let what = format!("weather in {mode:?} mode, Ready, client {client_id}");
    let outcome = support::poll(&what, Duration::from_secs(300), || async {
        let s: McpServer = b.get("weather").await;
        let st = s.status.clone().ok_or_else(|| "no status".to_string())?;
        let ready = st.conditions.iter().any(|c| {
            c.type_ == "Ready"
                && c.status == "True"
                && c.observed_generation == s.metadata.generation
        });
        let there = st.audience_mode == Some(mode) && st.client_id.as_deref() == Some(client_id);
        let p: McpAuthPolicy = b.get("acme").await;
        let seen = format!("server {st:?}; policy {:?}", p.status);
        (ready && there).then_some(s).ok_or(seen)
    });
    outcome.await
}

async fn mapper_names(b: &Scenario) -> Vec<String> {
    let tools = b.realm.scope("mcp:tools").await.expect("mcp:tools");
    let mappers = tools["protocolMappers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    mappers
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

/// A Keycloak restarted with `resource-indicators`, and again without: `Auto` follows, and the
/// server migrates each time — the client of the new name with the same secret, then the old
/// client and the other mode's audience scope or policy-scope mapper removed, the pod env
/// switched. Nothing of the old mode is left to name the url.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_migrate_when_keycloak_gains_or_loses_the_feature() {
    // A fresh instance: a previous run may have left it with the other feature set.
    support::testbed_ctl(&["keycloak-delete", "--name", "audmig"]).await;
    let kc = support::keycloak_instance("audmig", "cimd").await;
    let mut b = Scenario::on("aud-mig", kc.login()).await;
    b.start_operator().await;
    let url = "http://weather.example.com/mcp";
    let policy = seed_policy("acme", &b.realm.name, &kc.url);
    b.apply(&policy, &[server("weather", "acme", url)]).await;
    let scope_client = format!("mcp.{}.weather", b.ns);
    let audience_scope = format!("mcp:server:{}:weather", b.ns);
    wait_server_in(&b, ActiveAudience::Scope, &scope_client).await;
    let secret = secret_value(&b.client, &b.ns, "weather-oauth", "client-secret").await;
    let client_id = || secret_value(&b.client, &b.ns, "weather-oauth", "client-id");
    let env = |name: &'static str| {
        let (client, ns) = (b.client.clone(), b.ns.clone());
        async move {
            let cfg = gateway_config_from_deployment(&client, &ns, "weather", "http://x").await;
            match name {
                "mode" => cfg.audience_mode,
                _ => cfg.required_scopes,
            }
        }
    };

    support::keycloak_refeature("audmig", "cimd,resource-indicators").await;
    wait_server_in(&b, ActiveAudience::ResourceIndicator, url).await;
    assert_resource_indicator_objects(&b, "weather", url).await;
    assert!(
        b.realm.client(&scope_client).await.is_none(),
        "old client left"
    );
    assert_eq!(client_id().await.as_deref(), Some(url));
    let same = secret_value(&b.client, &b.ns, "weather-oauth", "client-secret").await;
    assert_eq!(same, secret, "the secret changed with the client's name");
    assert_eq!(env("mode").await, "ResourceIndicator");
    assert_eq!(env("scopes").await, "mcp:tools");

    support::keycloak_refeature("audmig", "cimd").await;
    wait_server_in(&b, ActiveAudience::Scope, &scope_client).await;
    assert!(b.realm.client(url).await.is_none(), "url-named client left");
    assert!(b.realm.scope(&audience_scope).await.is_some());
    let leftover: Vec<_> = mapper_names(&b)
        .await
        .into_iter()
        .filter(|m| m.starts_with("audience "))
        .collect();
    assert!(leftover.is_empty(), "{leftover:?}");
    assert_eq!(client_id().await.as_deref(), Some(scope_client.as_str()));
    assert_eq!(env("mode").await, "Scope");
    assert_eq!(env("scopes").await, format!("mcp:tools {audience_scope}"));
}
