//! Gateway conformance against the real Keycloak of the test bed, configured from the very env
//! the operator reconciled into the McpServer's Deployment (resolved by the local pod runner).

use crate::fakes;
use crate::harness;
use crate::support;

use std::time::Duration;

use harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::Client;
use mcp_auth_gateway::{spawn, GatewayHandle};
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::{json, Value};
use support::Fetch;

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
    s: Scenario,
    issuer: String,
}

harness::deref_scenario!(Bed, s);

/// Policy with `mcp:tools` as an *optional* scope (so a token can lack it), servers `alpha` and
/// `beta` whose canonical URLs are the gateway's future loopback address (port reserved now).
async fn bed(prefix: &str, alpha_url: &str) -> Bed {
    bed_with(prefix, alpha_url, |_| {}).await
}

/// [`bed`] with the policy adjusted before it is created.
async fn bed_with(prefix: &str, alpha_url: &str, tweak: impl FnOnce(&mut McpAuthPolicy)) -> Bed {
    let s = Scenario::new(prefix).await;
    let mut policy = s.seed_policy().await;
    policy.spec.scopes[0].r#type = mcp_keycloak_operator::api::ScopeType::Optional;
    tweak(&mut policy);
    let servers = [
        server("alpha", "acme", alpha_url),
        server("beta", "acme", "http://beta.example.com/mcp"),
    ];
    s.apply(&policy, &servers).await;
    let p: McpAuthPolicy = s.get("acme").await;
    let issuer = p.status.unwrap().issuer.unwrap();
    Bed { s, issuer }
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
        .fetch_json()
        .await;
    assert_eq!(
        discovery["issuer"],
        b.issuer.as_str(),
        "PRM issuer differs from Keycloak's"
    );

    // No token: 401 with the exact challenge (metadata URL is the canonical URL's).
    let resp = support::send(http.post(format!("{}/mcp", gw.url())).body("{}")).await;
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
    let resp = support::send(
        http.post(format!("{}/mcp", gw.url()))
            .bearer_auth(&access)
            .header("Mcp-Session-Id", "s-1")
            .body("{}"),
    )
    .await;
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
    let resp = support::post_mcp(&http, &gw.url(), tok["access_token"].as_str().unwrap()).await;
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
    let resp = support::post_mcp(&http, &gw.url(), tok["access_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 401);
    assert!(header(&resp, "www-authenticate").contains("error=\"invalid_token\""));
    // Garbage: 401, never 500.
    let resp = support::post_mcp(&http, &gw.url(), "not-a-token").await;
    assert_eq!(resp.status(), 401);

    // SSE through the gateway: the first event arrives before the stream ends.
    let mut resp = support::send(
        http.get(format!("{}/sse?delay_ms=3000", gw.url()))
            .bearer_auth(&access),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let first = support::first_chunk(
        &mut resp,
        Duration::from_millis(1500),
        "first SSE event was buffered",
    )
    .await;
    assert!(String::from_utf8_lossy(&first).contains("id: 1"));

    // Revocation: log the user out in Keycloak; within the cache TTL (2 s) the token is refused.
    b.realm.logout_user("alice").await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_is_the_default_and_none_mode_is_flagged() {
    let s = Scenario::new("modes").await;
    let (client, ns) = (s.client.clone(), s.ns.clone());
    s.create(&s.seed_policy().await).await;
    s.create(&server("default", "acme", "http://default.example.com"))
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
}

const UNIFORM_INVALID: &str =
    "error_description=\"The access token is not valid for this resource\"";

/// A confidential client with a service account, created by the realm admin after the servers
/// (so, like any new client, it gets their realm-optional audience scopes).
async fn service_account_client(realm: &Realm, client_id: &str) -> String {
    let secret = format!("{client_id}-secret-value-1");
    let (st, v) = realm
        .kc
        .post(
            &realm.path("/clients"),
            &json!({"clientId": client_id, "publicClient": false, "serviceAccountsEnabled": true,
                    "standardFlowEnabled": false, "directAccessGrantsEnabled": false,
                    "secret": secret}),
        )
        .await;
    assert!(st.is_success(), "create {client_id}: {st} {v}");
    secret
}

/// A client-credentials token: no user logged in.
async fn client_credentials_token(
    realm: &Realm,
    client_id: &str,
    secret: &str,
    scope: &str,
) -> String {
    let url = format!(
        "{}/realms/{}/protocol/openid-connect/token",
        realm.kc.base_url, realm.name
    );
    let req = reqwest::Client::new().post(url).form(&[
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", secret),
        ("scope", scope),
    ]);
    let v = support::ok_json(req, "client credentials").await;
    v["access_token"].as_str().unwrap().to_string()
}

async fn post_mcp(gw: &GatewayHandle, token: &str) -> reqwest::Response {
    support::post_mcp(&reqwest::Client::new(), &gw.url(), token).await
}

/// Sets (or with `null` removes) server alpha's `auth.serviceAccountClients` and waits until
/// its reconciled gateway container has (or no longer has) the matching env var.
async fn set_service_account_clients(client: &Client, ns: &str, clients: Value) {
    let present = !clients.is_null();
    let patch = json!({"spec": {"auth": {"serviceAccountClients": clients}}});
    Api::<McpServer>::namespaced(client.clone(), ns)
        .patch(
            "alpha",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    wait_gateway_env(client, ns, "alpha", "MCP_SERVICE_ACCOUNT_CLIENTS", present).await;
}

/// Waits until the reconciled gateway container carries `name` (or no longer does).
async fn wait_gateway_env(client: &Client, ns: &str, server: &str, name: &str, present: bool) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    support::wait_for(
        &format!("{name} on the gateway of {server}"),
        Duration::from_secs(60),
        || async {
            let d = deployments.get(server).await.ok()?;
            let pod = d.spec.template.spec?;
            let gw = pod.containers.into_iter().find(|c| c.name == "gateway")?;
            let has = gw.env.unwrap_or_default().iter().any(|e| e.name == name);
            (has == present).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_refused_unless_the_server_lists_the_client() {
    let url = canonical_url();
    // Keycloak refuses client credentials unless the policy opens them (issue 12, Keycloak
    // side); opened here, so that the gateway is the only line of defence under test.
    let b = bed_with("gwsa", &url, |p| {
        p.spec.allowed_machine_grants =
            vec![mcp_keycloak_operator::api::MachineGrant::ClientCredentials];
    })
    .await;
    let upstream = fakes::FakeUpstream::start().await;
    let scope = format!("mcp:tools mcp:server:{}:alpha", b.ns);
    let robot_secret = service_account_client(&b.realm, "robot").await;
    let other_secret = service_account_client(&b.realm, "other-robot").await;
    let robot = client_credentials_token(&b.realm, "robot", &robot_secret, &scope).await;
    let other = client_credentials_token(&b.realm, "other-robot", &other_secret, &scope).await;
    // What Keycloak hands out: this server's audience and scopes, no user session.
    let claims = jwt_claims(&robot);
    assert!(audiences(&claims).contains(&url), "{claims}");
    assert!(
        claims.get("sid").is_none(),
        "a client-credentials token with a session: {claims}"
    );
    let user = b.realm.mint_token(&format!("openid {scope}")).await;
    let user = user["access_token"].as_str().unwrap().to_string();

    // Default: refused with the uniform invalid_token; a user's token passes.
    let gw = gateway_from_deployment(&b.client, &b.ns, "alpha", &upstream.url(), 30).await;
    let resp = post_mcp(&gw, &robot).await;
    assert_eq!(resp.status(), 401, "a token without a user was accepted");
    assert!(header(&resp, "www-authenticate").contains(UNIFORM_INVALID));
    assert_eq!(post_mcp(&gw, &user).await.status(), 200);
    assert_eq!(upstream.hits(), 1);
    gw.shutdown().await.unwrap();

    // Listed in the McpServer: that client (and only it) may call without a user.
    set_service_account_clients(&b.client, &b.ns, json!(["robot"])).await;
    let gw = gateway_from_deployment(&b.client, &b.ns, "alpha", &upstream.url(), 30).await;
    let resp = post_mcp(&gw, &robot).await;
    assert_eq!(resp.status(), 200, "a listed client was refused");
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["headers"]["x-mcp-auth-client-id"], json!(["robot"]));
    assert_eq!(
        post_mcp(&gw, &other).await.status(),
        401,
        "an unlisted client passed"
    );
    assert_eq!(post_mcp(&gw, &user).await.status(), 200);
    gw.shutdown().await.unwrap();

    // Taken off the list again: refused again.
    set_service_account_clients(&b.client, &b.ns, Value::Null).await;
    let gw = gateway_from_deployment(&b.client, &b.ns, "alpha", &upstream.url(), 30).await;
    assert_eq!(post_mcp(&gw, &robot).await.status(), 401);
    gw.shutdown().await.unwrap();
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_and_a_garbage_flood_against_real_keycloak() {
    const BURST: u32 = 20;
    const RATE: f64 = 10.0;
    let url = canonical_url();
    let b = bed("gwflood", &url).await;
    let upstream = fakes::FakeUpstream::start().await;
    let mut cfg = gateway_config_from_deployment(&b.client, &b.ns, "alpha", &upstream.url()).await;
    cfg.introspection_burst_per_client = BURST;
    cfg.introspection_rate_per_client = RATE;
    let gw = spawn(cfg).await.unwrap();
    let scope = format!("openid mcp:tools mcp:server:{}:alpha", b.ns);
    let tok = b.realm.mint_token(&scope).await;
    let access = tok["access_token"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();

    // Origin: a foreign page gets 403 even with a valid token; the server's own origin and
    // no Origin pass.
    let own = url.trim_end_matches("/mcp").to_string();
    for (origin, want) in [
        (Some("https://evil.example"), 403),
        (Some(own.as_str()), 200),
        (None, 200),
    ] {
        let mut req = http
            .post(format!("{}/mcp", gw.url()))
            .bearer_auth(&access)
            .body("{}");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        assert_eq!(req.send().await.unwrap().status(), want, "{origin:?}");
    }
    let before = metric_sum(
        &gw.gateway.metrics_text(),
        "mcp_gateway_introspection_requests_total",
    );
    // The cached client's latency without a flood, to compare with.
    let good = reqwest::Client::new();
    let mut quiet = Vec::new();
    for _ in 0..50 {
        let t0 = std::time::Instant::now();
        let r = support::send(good.get(format!("{}/small", gw.url())).bearer_auth(&access)).await;
        assert_eq!(r.status(), 200);
        quiet.push(t0.elapsed());
    }

    // 5000 distinct JWT-shaped garbage tokens, 256 at a time, while a client with a cached
    // valid token keeps calling on its own connection.
    let started = std::time::Instant::now();
    let flood = {
        let http = http.clone();
        let target = format!("{}/mcp", gw.url());
        tokio::spawn(async move {
            use futures::StreamExt;
            futures::stream::iter(0..5000)
                .map(|i| {
                    let http = http.clone();
                    let target = target.clone();
                    async move {
                        let t = format!("eyJhbGciOiJSUzI1NiJ9.eyJqdGkiOiJ{i:08}In0.Z2FyYmFnZQ{i}");
                        http.get(&target)
                            .bearer_auth(t)
                            .send()
                            .await
                            .unwrap()
                            .status()
                            .as_u16()
                    }
                })
                .buffer_unordered(256)
                .collect::<Vec<u16>>()
                .await
        })
    };
    let mut latencies = Vec::new();
    while !flood.is_finished() {
        let t0 = std::time::Instant::now();
        let r = support::send(good.get(format!("{}/small", gw.url())).bearer_auth(&access)).await;
        assert_eq!(
            r.status(),
            200,
            "the cached client was refused during the flood"
        );
        latencies.push(t0.elapsed());
    }
    let statuses = flood.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let calls = metric_sum(
        &gw.gateway.metrics_text(),
        "mcp_gateway_introspection_requests_total",
    ) - before;
    let bound = f64::from(BURST) + (RATE * elapsed).ceil() + 1.0;
    assert!(
        calls <= bound,
        "{calls} introspections in {elapsed:.1}s, bound {bound}"
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(!latencies.is_empty());
    support::figure(format!(
        "gateway_flood garbage_tokens=5000 elapsed_s={elapsed:.2} introspections={calls} bound={bound} cached_client_requests={} cached_client_p99_ms={:.2} cached_client_p99_quiet_ms={:.2}",
        latencies.len(),
        p99(latencies).as_secs_f64() * 1000.0,
        p99(quiet).as_secs_f64() * 1000.0
    ));
    gw.shutdown().await.unwrap();
}

/// Reads the stream until it ends (cleanly or cut); the time that took.
async fn until_stream_ends(resp: &mut reqwest::Response, limit: Duration) -> Option<Duration> {
    let t0 = std::time::Instant::now();
    tokio::time::timeout(limit, async {
        while let Ok(Some(_)) = resp.chunk().await {}
    })
    .await
    .ok()
    .map(|()| t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_with_a_revoked_session_and_at_exp_with_real_keycloak() {
    const TTL: u64 = 2;
    let url = canonical_url();
    let b = bed("gwstream", &url).await;
    let upstream = fakes::FakeUpstream::start().await;
    let gw = gateway_from_deployment(&b.client, &b.ns, "alpha", &upstream.url(), TTL).await;
    let scope = format!("openid mcp:tools mcp:server:{}:alpha", b.ns);
    let http = reqwest::Client::new();
    let sse = format!("{}/sse?delay_ms=60000", gw.url());

    // Revocation: log alice's sessions out in Keycloak while her stream is open.
    let tok = b.realm.mint_token(&scope).await;
    let access = tok["access_token"].as_str().unwrap().to_string();
    let mut stream = http.get(&sse).bearer_auth(&access).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.chunk().await.unwrap().is_some(), "first event");
    b.realm.logout_user("alice").await;
    let took = until_stream_ends(&mut stream, Duration::from_secs(20))
        .await
        .expect("the stream outlived its revoked session");
    support::figure(format!(
        "gateway_stream_revoked cache_ttl_s={TTL} ended_after_s={:.2}",
        took.as_secs_f64()
    ));
    assert!(
        took <= Duration::from_secs(TTL) + Duration::from_millis(1500),
        "{took:?}"
    );

    // exp: a 5-second access token lifespan on the minting client.
    let minter = b.realm.client("test-minter").await.unwrap();
    let mut updated = minter.clone();
    updated["attributes"]["access.token.lifespan"] = json!("5");
    b.realm.update_client(&updated).await;
    let tok = b.realm.mint_token(&scope).await;
    let access = tok["access_token"].as_str().unwrap().to_string();
    let exp = jwt_claims(&access)["exp"].as_u64().unwrap();
    let mut stream = http.get(&sse).bearer_auth(&access).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.chunk().await.unwrap().is_some());
    until_stream_ends(&mut stream, Duration::from_secs(20))
        .await
        .expect("the stream outlived its token's exp");
    let now = fakes::unix_now();
    assert!(now >= exp && now <= exp + 1, "cut at {now}, exp {exp}");
    let m = gw.gateway.metrics_text();
    assert!(
        m.contains("mcp_gateway_streams_cut_total{reason=\"revoked\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("mcp_gateway_streams_cut_total{reason=\"expired\"} 1"),
        "{m}"
    );

    gw.shutdown().await.unwrap();
}
