//! End-to-end walkthrough, client side (issue 5): a VS Code-like MCP client (rmcp) registers by
//! anonymous DCR in a realm the operator configured, a real headless Chromium logs alice in and
//! consents, and the client lists and calls a tool on a protected MCP server.
//!
//! The protected server is either [`browser::stand_in`] (a minimal resource server written here)
//! or the operator's own auth gateway, configured from the env the operator reconciled into the
//! McpServer's Deployment, in front of an unprotected MCP server. The client
//! ([`browser::client::connect_like_vscode`]) takes only the URL in both cases.
//!
//! Needs the test bed (`eval "$(./hack/testbed up)"`) and Debian's `chromium` + `chromium-driver`.

mod browser;
mod harness;
mod support;

use std::time::Instant;

use browser::client::{
    self, connect_like_vscode, probe_unauthenticated, probe_with_token, register_anonymously,
    result_text, vscode_registration_request, ConnectedClient, VSCODE_CLIENT_URI,
    VSCODE_REDIRECT_URIS,
};
use browser::stand_in::{PlainMcpServer, ProtectedMcpServer, StandInConfig};
use browser::Browser;
use harness::*;
use kube::api::Api;
use kube::Client;
use mcp_auth_gateway::GatewayConfig;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::{json, Value};

const USER: &str = "alice";
const PASSWORD: &str = "alice-e2e-password-1";

/// Operator + seed policy + one Ready McpServer `calc` whose canonical URL is `url`.
struct Base {
    client: Client,
    ns: String,
    realm: Realm,
    op: Operator,
    policy: McpAuthPolicy,
    server: McpServer,
}

async fn base(prefix: &str, url: &str) -> Base {
    let tb = support::testbed().await;
    let client = support::kube_client().await;
    let ns = support::test_namespace(&client, prefix).await;
    let realm = Realm::new(&support::unique_name(prefix)).await;
    admin_secret(&client, &ns, "keycloak-admin").await;
    let op = Operator::start(&client, &ns).await;
    create(
        &client,
        &ns,
        &seed_policy("acme", &realm.name, &tb.keycloak_url),
    )
    .await;
    create(&client, &ns, &server("calc", "acme", url)).await;
    wait_condition::<McpAuthPolicy>(&client, &ns, "acme", "Ready", "True").await;
    wait_condition::<McpServer>(&client, &ns, "calc", "Ready", "True").await;
    let policy = Api::<McpAuthPolicy>::namespaced(client.clone(), &ns)
        .get("acme")
        .await
        .expect("policy");
    let server = Api::<McpServer>::namespaced(client.clone(), &ns)
        .get("calc")
        .await
        .expect("server");
    Base {
        client,
        ns,
        realm,
        op,
        policy,
        server,
    }
}

impl Base {
    fn audience_scope(&self) -> String {
        let status = self.server.status.as_ref().expect("server status");
        status.audience_scope.clone().expect("status.audienceScope")
    }

    /// The stand-in's settings, from the policy, the server's status and its `-oauth` Secret.
    async fn stand_in_config(&self) -> StandInConfig {
        let status = self.server.status.as_ref().expect("server status");
        let secret = status.secret_name.clone().expect("status.secretName");
        let (client, ns) = (&self.client, &self.ns);
        let client_id = support::wait_for("introspection credentials", WAIT, || {
            secret_value(client, ns, &secret, "client-id")
        })
        .await;
        let client_secret = secret_value(client, ns, &secret, "client-secret")
            .await
            .expect("client-secret in the Secret");
        StandInConfig {
            issuer: self.policy.issuer(),
            introspection_endpoint: self.policy.introspection_endpoint(),
            client_id,
            client_secret,
            scopes: vec!["mcp:tools".into(), self.audience_scope()],
        }
    }

    /// The gateway's settings exactly as the operator put them into the `gateway` container of
    /// the server's Deployment (env and Secret refs resolved by the local pod runner).
    async fn gateway_config(&self, upstream: &str) -> GatewayConfig {
        gateway_config_from_deployment(&self.client, &self.ns, "calc", upstream).await
    }

    /// alice, with everything Keycloak's default "update profile" required action would ask for.
    async fn create_user(&self) -> String {
        let (s, v) = self
            .realm
            .kc
            .post(
                &self.realm.path("/users"),
                &json!({
                    "username": USER, "enabled": true, "emailVerified": true,
                    "email": "alice@example.com", "firstName": "Alice", "lastName": "Example",
                    "credentials": [{"type": "password", "value": PASSWORD, "temporary": false}]
                }),
            )
            .await;
        assert!(s.is_success(), "create user: {s} {v}");
        let users = self
            .realm
            .get(&format!("/users?username={USER}&exact=true"))
            .await;
        users[0]["id"].as_str().expect("user id").to_string()
    }

    async fn finish(self) {
        teardown(&self.client, &self.ns, self.op).await;
        self.realm.delete().await;
    }
}

fn is_generated_id(id: &str) -> bool {
    // Keycloak's DCR client ids are random UUIDs.
    id.len() == 36
        && id.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `http://host:port/.well-known/oauth-protected-resource/<path>` for an MCP URL.
fn path_metadata_url(mcp_url: &str) -> String {
    let u = url::Url::parse(mcp_url).unwrap();
    format!(
        "{}/.well-known/oauth-protected-resource{}",
        u.origin().ascii_serialization(),
        u.path()
    )
}

/// Everything the walkthrough must have produced, whatever protects the server.
async fn check_walkthrough(b: &Base, conn: &ConnectedClient, url: &str, user_id: &str) {
    let audience_scope = b.audience_scope();

    // The tool works through the authorized session.
    let tools = conn.tool_names().await.expect("tools/list");
    assert_eq!(tools, vec!["add".to_string()], "tools of the MCP server");
    let result = conn
        .call_tool("add", json!({"a": 2, "b": 40}))
        .await
        .expect("tools/call add");
    assert_ne!(result.is_error, Some(true), "add failed: {result:?}");
    assert_eq!(result_text(&result), "42");

    // Discovery went through the challenge and the PRM to the realm's exact issuer.
    assert_eq!(
        conn.challenge.resource_metadata.as_deref(),
        Some(path_metadata_url(url).as_str())
    );
    assert_eq!(conn.issuer.as_deref(), Some(b.policy.issuer().as_str()));

    // The authorization request: code + PKCE S256, resource = the server URL, challenge scopes.
    let p = &conn.authorization_params;
    assert_eq!(p.get("response_type").map(String::as_str), Some("code"));
    assert_eq!(
        p.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    assert_eq!(p.get("resource").map(String::as_str), Some(url), "RFC 8707");
    assert_eq!(p.get("client_id"), Some(&conn.client_id));
    let requested: Vec<&str> = p["scope"].split(' ').collect();
    assert!(
        requested.contains(&"mcp:tools") && requested.contains(&audience_scope.as_str()),
        "requested scopes {requested:?}"
    );
    assert!(
        conn.redirect_uri.starts_with("http://127.0.0.1:") && conn.redirect_uri.ends_with('/'),
        "loopback redirect {}",
        conn.redirect_uri
    );

    // The person saw Keycloak's consent page for "Use MCP tools" and said yes.
    assert!(conn.login.consent_shown, "no consent page was shown");
    assert!(
        conn.login
            .consent_items
            .iter()
            .any(|i| i == "Use MCP tools"),
        "consent page listed {:?}",
        conn.login.consent_items
    );

    // The token: for this server and its introspection client, issued to the DCR client for alice.
    let claims = &conn.token_claims;
    let aud = audiences(claims);
    assert!(aud.iter().any(|a| a == url), "aud {aud:?} lacks {url}");
    assert!(
        aud.contains(&format!("mcp.{}.calc", b.ns)),
        "aud {aud:?} lacks the introspection client"
    );
    assert_eq!(claims["azp"], conn.client_id.as_str());
    // `sub` only: a DCR request with `scope` gets just `basic` as default scope in Keycloak
    // <= 26.7 (keycloak#50807), so `profile` claims such as preferred_username are absent.
    assert_eq!(claims["sub"], user_id);
    assert_eq!(claims["iss"], b.policy.issuer().as_str());
    let token_scopes: Vec<&str> = claims["scope"].as_str().unwrap_or("").split(' ').collect();
    assert!(
        token_scopes.contains(&"mcp:tools"),
        "token scope {token_scopes:?}"
    );
    assert!(
        conn.granted_scopes.iter().any(|s| s == "mcp:tools"),
        "granted {:?}",
        conn.granted_scopes
    );

    // The registered client, through the Admin REST API: generated id, VS Code's metadata,
    // public, consent required (anonymous DCR policy).
    assert!(
        is_generated_id(&conn.client_id),
        "client id {:?}",
        conn.client_id
    );
    let kc_client = b
        .realm
        .client(&conn.client_id)
        .await
        .unwrap_or_else(|| panic!("DCR client {} not in the realm", conn.client_id));
    assert_eq!(kc_client["name"], client::VSCODE_CLIENT_NAME);
    assert_eq!(kc_client["baseUrl"], VSCODE_CLIENT_URI);
    assert_eq!(kc_client["publicClient"], true);
    assert_eq!(kc_client["consentRequired"], true);
    let mut redirects: Vec<String> =
        serde_json::from_value(kc_client["redirectUris"].clone()).unwrap_or_default();
    redirects.sort();
    let mut expected: Vec<String> = VSCODE_REDIRECT_URIS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(redirects, expected, "registered redirect URIs");

    // Keycloak recorded alice's consent for that client, covering mcp:tools.
    let consents = b.realm.get(&format!("/users/{user_id}/consents")).await;
    let consent = consents
        .as_array()
        .and_then(|a| a.iter().find(|c| c["clientId"] == conn.client_id.as_str()))
        .unwrap_or_else(|| panic!("no consent of alice for the client: {consents}"));
    let granted: Vec<String> =
        serde_json::from_value(consent["grantedClientScopes"].clone()).unwrap_or_default();
    assert!(
        granted.iter().any(|s| s == "mcp:tools"),
        "consent covers {granted:?}"
    );
}

fn report(
    what: &str,
    browser_version: &str,
    conn: &ConnectedClient,
    t_setup: std::time::Duration,
    t_test: Instant,
) {
    let t = &conn.timings;
    eprintln!(
        "e2e [{what}]: Chromium {browser_version}; consented to {:?}; granted {:?}\n\
         e2e [{what}] timings: setup (namespace, realm, operator, Ready) {t_setup:?}; discovery {:?}; \
         registration {:?}; browser login round trip {:?}; token exchange {:?}; MCP initialize {:?}; \
         client total {:?}; test so far {:?}",
        conn.login.consent_items,
        conn.granted_scopes,
        t.discovery,
        t.registration,
        t.browser_login,
        t.token_exchange,
        t.mcp_initialize,
        t.total,
        t_test.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_like_client_registers_logs_in_consents_and_calls_a_tool() {
    let t_test = Instant::now();
    let mut stand_in = ProtectedMcpServer::bind().await.expect("stand-in bind");
    let url = stand_in.url().to_string();
    let b = base("e2e", &url).await;
    stand_in
        .start(b.stand_in_config().await)
        .expect("stand-in start");
    let t_setup = t_test.elapsed();
    let user_id = b.create_user().await;

    let browser = Browser::start().await.expect("headless Chromium");
    let conn = connect_like_vscode(&url, &browser, (USER, PASSWORD))
        .await
        .unwrap_or_else(|e| panic!("connect_like_vscode: {e}"));
    check_walkthrough(&b, &conn, &url, &user_id).await;

    // The stand-in let the token in after introspection, and only that client's, for alice.
    let accepted = stand_in.accepted();
    assert!(!accepted.is_empty(), "the stand-in accepted no token");
    for a in &accepted {
        assert_eq!(a.client_id.as_deref(), Some(conn.client_id.as_str()));
        assert_eq!(a.sub.as_deref(), Some(user_id.as_str()));
    }
    assert!(
        stand_in.rejected().is_empty(),
        "rejections: {:?}",
        stand_in.rejected()
    );

    report("stand-in", &browser.version().await, &conn, t_setup, t_test);
    conn.close().await;
    browser.close().await;
    drop(stand_in);
    b.finish().await;
    eprintln!(
        "e2e [stand-in] whole test incl. teardown: {:?}",
        t_test.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_like_client_through_the_operators_gateway() {
    let t_test = Instant::now();
    // The gateway's listener first: its address is the canonical URL the McpServer declares,
    // so the PRM `resource` and the token audience are the URL the client connects to.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("gateway listener");
    let url = format!(
        "http://127.0.0.1:{}/mcp",
        listener.local_addr().unwrap().port()
    );
    let b = base("e2e-gw", &url).await;
    let upstream = PlainMcpServer::start().await.expect("upstream MCP server");
    let cfg = b.gateway_config(&upstream.base_url).await;
    assert_eq!(
        cfg.resource_url, url,
        "MCP_SERVER_URL of the gateway container"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(mcp_auth_gateway::serve(cfg, listener, async move {
        let _ = stopped.await;
    }));
    let t_setup = t_test.elapsed();
    let user_id = b.create_user().await;

    let browser = Browser::start().await.expect("headless Chromium");
    let conn = connect_like_vscode(&url, &browser, (USER, PASSWORD))
        .await
        .unwrap_or_else(|e| panic!("connect_like_vscode through the gateway: {e}"));
    check_walkthrough(&b, &conn, &url, &user_id).await;

    // The upstream saw no token, only the identity the gateway verified.
    let seen = upstream.seen();
    assert!(!seen.is_empty(), "nothing reached the upstream");
    for r in &seen {
        assert!(!r.had_authorization, "the token was passed through");
        assert_eq!(r.client_id.as_deref(), Some(conn.client_id.as_str()));
        assert_eq!(r.subject.as_deref(), Some(user_id.as_str()));
        assert!(
            r.scopes
                .as_deref()
                .unwrap_or("")
                .split(' ')
                .any(|s| s == "mcp:tools"),
            "forwarded scopes {:?}",
            r.scopes
        );
    }

    report("gateway", &browser.version().await, &conn, t_setup, t_test);
    conn.close().await;
    browser.close().await;
    let _ = stop.send(());
    let _ = gateway.await;
    b.finish().await;
    eprintln!(
        "e2e [gateway] whole test incl. teardown: {:?}",
        t_test.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_challenged_and_untrusted_redirect_hosts_cannot_register() {
    let mut stand_in = ProtectedMcpServer::bind().await.expect("stand-in bind");
    let url = stand_in.url().to_string();
    let b = base("e2e-neg", &url).await;
    stand_in
        .start(b.stand_in_config().await)
        .expect("stand-in start");
    let audience_scope = b.audience_scope();

    // No token: 401 with a Bearer challenge naming the metadata and the scopes.
    let ch = probe_unauthenticated(&url).await.expect("probe");
    assert_eq!(ch.status, 401, "no token must be refused");
    let www = ch
        .www_authenticate
        .clone()
        .expect("WWW-Authenticate on the 401");
    assert!(www.starts_with("Bearer "), "challenge {www:?}");
    let prm_url = ch
        .resource_metadata
        .clone()
        .expect("resource_metadata in the challenge");
    assert_eq!(prm_url, path_metadata_url(&url));
    let scopes: Vec<&str> = ch.scope.as_deref().unwrap_or("").split(' ').collect();
    assert_eq!(scopes, vec!["mcp:tools", audience_scope.as_str()]);

    // The metadata it points to names this exact URL and the realm's issuer.
    let prm: Value = reqwest::get(&prm_url)
        .await
        .expect("GET PRM")
        .json()
        .await
        .expect("PRM JSON");
    assert_eq!(prm["resource"], url.as_str());
    assert_eq!(prm["authorization_servers"], json!([b.policy.issuer()]));

    // A token Keycloak does not know: 401 invalid_token.
    let bogus = probe_with_token(&url, Some("not-a-token"))
        .await
        .expect("probe");
    assert_eq!(bogus.status, 401);
    assert_eq!(bogus.error.as_deref(), Some("invalid_token"));

    // Registration with a redirect host outside the trusted hosts: refused by the policy.
    let endpoint = b.policy.registration_endpoint();
    let mut body = vscode_registration_request(None, Some("mcp:tools"));
    body["client_name"] = json!("e2e untrusted redirect");
    body["redirect_uris"] = json!(["https://evil.example.com/callback"]);
    let refused = register_anonymously(&endpoint, &body)
        .await
        .expect_err("an untrusted redirect host must not register");
    assert_eq!(refused.status, 403, "{refused}");
    let description = refused.body["error_description"].as_str().unwrap_or("");
    assert!(
        description.contains("Trusted Hosts"),
        "refusal does not name the Trusted Hosts policy: {}",
        refused.body
    );

    // Control: the same request with VS Code's redirect URIs registers (so the 403 above is
    // about the host, not the request), and shows up through the Admin API.
    body["redirect_uris"] = json!(VSCODE_REDIRECT_URIS);
    let ok = register_anonymously(&endpoint, &body)
        .await
        .unwrap_or_else(|e| panic!("VS Code's redirect URIs must register: {e}"));
    assert!(
        is_generated_id(&ok.client_id),
        "client id {:?}",
        ok.client_id
    );
    assert!(b.realm.client(&ok.client_id).await.is_some());

    drop(stand_in);
    b.finish().await;
}
