//! Gateway conformance against the real Keycloak of the test bed, configured from the very env
//! the operator reconciled into the McpServer's Deployment (resolved by the local pod runner).

mod fakes;
mod harness;
mod support;

use std::time::Duration;

use harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::Client;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use mcp_keycloak_operator::gateway::{spawn, GatewayHandle};
use serde_json::{json, Value};

/// Gateway config from the `gateway` container of the reconciled Deployment, listening on
/// loopback ephemeral ports in front of `upstream`.
async fn gateway_from_deployment(
    client: &Client,
    ns: &str,
    name: &str,
    upstream: &str,
    ttl: u64,
) -> GatewayHandle {
    let mut cfg = gateway_config_from_deployment(client, ns, name, upstream).await;
    cfg.cache_ttl_seconds = ttl;
    cfg.negative_cache_ttl_seconds = 0;
    spawn(cfg).await.expect("gateway starts")
}

struct Bed {
    client: Client,
    ns: String,
    realm: Realm,
    op: Operator,
    issuer: String,
}

/// Policy with `mcp:tools` as an *optional* scope (so a token can lack it), servers `alpha` and
/// `beta` whose canonical URLs are the gateway's future loopback address (port reserved now).
async fn bed(prefix: &str, alpha_url: &str) -> Bed {
    let client = support::kube_client().await;
    let tb = support::testbed().await;
    let ns = support::test_namespace(&client, prefix).await;
    let realm = Realm::new(&support::unique_name(prefix)).await;
    admin_secret(&client, &ns, "keycloak-admin").await;
    let op = Operator::start(&client, &ns).await;
    let mut policy = seed_policy("acme", &realm.name, &tb.keycloak_url);
    policy.spec.scopes[0].r#type = mcp_keycloak_operator::api::ScopeType::Optional;
    create(&client, &ns, &policy).await;
    let mut alpha = server("alpha", "acme", alpha_url);
    alpha.spec.image = "ghcr.io/example/mcp-server:1".into();
    create(&client, &ns, &alpha).await;
    create(
        &client,
        &ns,
        &server("beta", "acme", "http://beta.example.com/mcp"),
    )
    .await;
    wait_condition::<McpAuthPolicy>(&client, &ns, "acme", "Ready", "True").await;
    for n in ["alpha", "beta"] {
        wait_condition::<McpServer>(&client, &ns, n, "Ready", "True").await;
    }
    let p = Api::<McpAuthPolicy>::namespaced(client.clone(), &ns)
        .get("acme")
        .await
        .unwrap();
    let issuer = p.status.unwrap().issuer.unwrap();
    Bed {
        client,
        ns,
        realm,
        op,
        issuer,
    }
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Reserves a loopback port for the gateway's canonical URL (released right away; the gateway
/// binds an ephemeral port, and the URL is only compared as a string).
fn canonical_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://127.0.0.1:{}/mcp", l.local_addr().unwrap().port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_enforces_the_mcp_authorization_spec_with_real_keycloak_tokens() {
    let url = canonical_url();
    let b = bed("gwconf", &url).await;
    let upstream = fakes::FakeUpstream::start().await;
    let gw = gateway_from_deployment(&b.client, &b.ns, "alpha", &upstream.url(), 2).await;
    let http = reqwest::Client::new();
    let aud_scope = format!("mcp:server:{}:alpha", b.ns);
    let path_metadata = format!("{}/.well-known/oauth-protected-resource/mcp", gw.url());

    // RFC 9728 metadata: resource and issuer exactly; the issuer is Keycloak's own.
    for u in [
        path_metadata.clone(),
        format!("{}/.well-known/oauth-protected-resource", gw.url()),
    ] {
        let m: Value = http.get(&u).send().await.unwrap().json().await.unwrap();
        assert_eq!(m["resource"], url.as_str(), "{u}: {m}");
        assert_eq!(m["authorization_servers"], json!([b.issuer]));
        assert_eq!(m["scopes_supported"], json!(["mcp:tools", aud_scope]));
        assert_eq!(m["bearer_methods_supported"], json!(["header"]));
    }
    let discovery: Value = http
        .get(format!("{}/.well-known/openid-configuration", b.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        discovery["issuer"],
        b.issuer.as_str(),
        "PRM issuer differs from Keycloak's"
    );

    // No token: 401 with the exact challenge (metadata URL is the canonical URL's).
    let resp = http
        .post(format!("{}/mcp", gw.url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let canonical_metadata = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp");
    assert_eq!(
        header(&resp, "www-authenticate"),
        format!(
            "Bearer resource_metadata=\"{canonical_metadata}\", scope=\"mcp:tools {aud_scope}\""
        )
    );

    // A real token with both scopes: forwarded, without Authorization, with identity headers.
    let tok = b
        .realm
        .mint_token(&format!("openid mcp:tools {aud_scope}"))
        .await;
    let access = tok["access_token"].as_str().unwrap().to_string();
    let resp = http
        .post(format!("{}/mcp", gw.url()))
        .bearer_auth(&access)
        .header("Mcp-Session-Id", "s-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "mcp-session-id"), "s-1");
    let echo: Value = resp.json().await.unwrap();
    let headers = &echo["headers"];
    assert!(
        headers.get("authorization").is_none(),
        "token passed through: {headers}"
    );
    assert!(
        !echo.to_string().contains(&access),
        "token reached the upstream"
    );
    assert_eq!(headers["x-mcp-auth-client-id"], json!(["test-minter"]));
    assert!(headers["x-mcp-auth-scopes"][0]
        .as_str()
        .unwrap()
        .contains("mcp:tools"));

    // Right audience but no mcp:tools: 403 insufficient_scope naming what is needed.
    let tok = b.realm.mint_token(&format!("openid {aud_scope}")).await;
    let resp = http
        .post(format!("{}/mcp", gw.url()))
        .bearer_auth(tok["access_token"].as_str().unwrap())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let challenge = header(&resp, "www-authenticate");
    assert!(
        challenge.starts_with("Bearer error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!("scope=\"mcp:tools {aud_scope}\"")),
        "{challenge}"
    );

    // A token minted for beta: 401 invalid_token (Keycloak does not even call it active for alpha).
    let tok = b
        .realm
        .mint_token(&format!("openid mcp:tools mcp:server:{}:beta", b.ns))
        .await;
    let resp = http
        .post(format!("{}/mcp", gw.url()))
        .bearer_auth(tok["access_token"].as_str().unwrap())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(header(&resp, "www-authenticate").contains("error=\"invalid_token\""));
    // Garbage: 401, never 500.
    let resp = http
        .post(format!("{}/mcp", gw.url()))
        .bearer_auth("not-a-token")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // SSE through the gateway: the first event arrives before the stream ends.
    let mut resp = http
        .get(format!("{}/sse?delay_ms=3000", gw.url()))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = tokio::time::timeout(Duration::from_millis(1500), resp.chunk())
        .await
        .expect("first SSE event was buffered")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("id: 1"));

    // Revocation: log the user out in Keycloak; within the cache TTL (2 s) the token is refused.
    let users = b.realm.get("/users?username=alice").await;
    let uid = users[0]["id"].as_str().unwrap();
    let (st, _) = b
        .realm
        .kc
        .post(&b.realm.path(&format!("/users/{uid}/logout")), &json!({}))
        .await;
    assert!(st.is_success());
    let refused = support::wait_for("revoked token refused", Duration::from_secs(10), || async {
        let r = http
            .post(format!("{}/mcp", gw.url()))
            .bearer_auth(&access)
            .body("{}")
            .send()
            .await
            .ok()?;
        (r.status() == 401).then_some(())
    });
    refused.await;

    gw.shutdown().await.unwrap();
    teardown(&b.client, &b.ns, b.op).await;
    b.realm.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_is_the_default_and_none_mode_is_flagged() {
    let client = support::kube_client().await;
    let tb = support::testbed().await;
    let ns = support::test_namespace(&client, "modes").await;
    let realm = Realm::new(&support::unique_name("modes")).await;
    admin_secret(&client, &ns, "keycloak-admin").await;
    let op = Operator::start(&client, &ns).await;
    create(
        &client,
        &ns,
        &seed_policy("acme", &realm.name, &tb.keycloak_url),
    )
    .await;
    create(
        &client,
        &ns,
        &server("default", "acme", "http://default.example.com"),
    )
    .await;
    let mut open = server("open", "acme", "http://open.example.com");
    open.spec.auth.mode = mcp_keycloak_operator::api::AuthMode::None;
    open.spec.auth.allow_unauthenticated = Some(true);
    create(&client, &ns, &open).await;
    wait_condition::<McpServer>(&client, &ns, "default", "Ready", "True").await;
    let (reason, message) =
        wait_condition::<McpServer>(&client, &ns, "open", "Unauthenticated", "True").await;
    assert_eq!(reason, "AuthDisabled");
    assert!(message.contains("anyone"), "{message}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let names = |d: Deployment| {
        d.spec
            .template
            .spec
            .unwrap()
            .containers
            .into_iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(deployments.get("default").await.unwrap()),
        vec!["gateway", "mcp"]
    );
    assert_eq!(names(deployments.get("open").await.unwrap()), vec!["mcp"]);
    teardown(&client, &ns, op).await;
    realm.delete().await;
}
