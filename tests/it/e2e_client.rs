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

use crate::browser;
use crate::harness;
use crate::support;

use std::time::Instant;

use browser::client::{
    self, connect_like_vscode, probe_unauthenticated, probe_with_token, register_anonymously,
    result_text, vscode_registration_request, ConnectedClient, VSCODE_REDIRECT_URIS,
};
use browser::stand_in::{PlainMcpServer, ProtectedMcpServer, StandInConfig};
use browser::Browser;
use harness::*;
use mcp_auth_gateway::GatewayConfig;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::{json, Value};

const USER: &str = "alice";
const PASSWORD: &str = "alice-e2e-password-1";

/// Operator + seed policy + one Ready McpServer `calc` whose canonical URL is `url`.
/// A scenario with the seed policy `acme` and the server `calc`, both Ready.
struct Base {
    s: Scenario,
    policy: McpAuthPolicy,
    server: McpServer,
}

harness::deref_scenario!(Base, s);

async fn base(prefix: &str, url: &str) -> Base {
    let s = Scenario::new(prefix).await;
    s.seed(&[("calc", url)]).await;
    Base {
        policy: s.get("acme").await,
        server: s.get("calc").await,
        s,
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
}

/// The base scenario for a server that the stand-in protects (its URL, started with the
/// credentials the operator made).
async fn behind_stand_in(prefix: &str) -> (ProtectedMcpServer, String, Base) {
    let mut stand_in = ProtectedMcpServer::bind().await.expect("stand-in bind");
    let url = stand_in.url().to_string();
    let b = base(prefix, &url).await;
    stand_in
        .start(b.stand_in_config().await)
        .expect("stand-in start");
    (stand_in, url, b)
}

/// A headless browser, the VS Code-like client connected to `url` through it, and every check
/// of [`check_walkthrough`]; `what` names the connection in a failure.
async fn walk_through(
    b: &Base,
    url: &str,
    user_id: &str,
    what: &str,
) -> (Browser, ConnectedClient) {
    let browser = Browser::start().await.expect("headless Chromium");
    let conn = connect_like_vscode(url, &browser, (USER, PASSWORD))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    check_walkthrough(b, &conn, url, user_id).await;
    (browser, conn)
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

    // Discovery, the authorization request (code + PKCE S256, RFC 8707 resource, the challenge's
    // scopes) and the consent page for "Use MCP tools".
    client::assert_authorized_like_vscode(conn, url, &b.policy.issuer(), &audience_scope);
    let p = &conn.authorization_params;
    assert_eq!(p.get("client_id"), Some(&conn.client_id));
    assert!(
        conn.redirect_uri.starts_with("http://127.0.0.1:") && conn.redirect_uri.ends_with('/'),
        "loopback redirect {}",
        conn.redirect_uri
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
    client::assert_vscode_client_registered(&b.realm, &conn.client_id).await;

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
    let (stand_in, url, b) = behind_stand_in("e2e").await;
    let t_setup = t_test.elapsed();
    let user_id = b.realm.create_user(USER, PASSWORD).await;

    let (browser, conn) = walk_through(&b, &url, &user_id, "connect_like_vscode").await;

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
    let (listener, url) = support::mcp_listener().await;
    let b = base("e2e-gw", &url).await;
    let upstream = PlainMcpServer::start().await.expect("upstream MCP server");
    let cfg = b.gateway_config(&upstream.base_url).await;
    assert_eq!(
        cfg.resource_url, url,
        "MCP_SERVER_URL of the gateway container"
    );
    let gateway = ServedGateway::start(cfg, listener);
    let t_setup = t_test.elapsed();
    let user_id = b.realm.create_user(USER, PASSWORD).await;

    let (browser, conn) = walk_through(
        &b,
        &url,
        &user_id,
        "connect_like_vscode through the gateway",
    )
    .await;

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
    gateway.stop().await;
    eprintln!(
        "e2e [gateway] whole test incl. teardown: {:?}",
        t_test.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_challenged_and_untrusted_redirect_hosts_cannot_register() {
    let (stand_in, url, b) = behind_stand_in("e2e-neg").await;
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
    assert_eq!(prm_url, client::path_metadata_url(&url));
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
        client::is_generated_id(&ok.client_id),
        "client id {:?}",
        ok.client_id
    );
    assert!(b.realm.client(&ok.client_id).await.is_some());

    drop(stand_in);
}
