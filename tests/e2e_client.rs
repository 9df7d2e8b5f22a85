//! End-to-end walkthrough, client side (issue 5): a VS Code-like MCP client (rmcp) registers by
//! anonymous DCR in a realm the operator configured, a real headless Chromium logs alice in and
//! consents, and the client lists and calls a tool on a protected MCP server.
//!
//! The protected server is [`browser::stand_in`] until the operator's auth gateway lands; the
//! client code ([`browser::client::connect_like_vscode`]) takes only a URL, so pointing it at the
//! gateway is a one-line change here.
//!
//! Needs the test bed (`eval "$(./hack/testbed up)"`) and Debian's `chromium` + `chromium-driver`.

mod browser;
mod harness;
mod support;

use std::time::{Duration, Instant};

use browser::client::{
    self, connect_like_vscode, probe_unauthenticated, probe_with_token, register_anonymously,
    result_text, vscode_registration_request, VSCODE_CLIENT_URI, VSCODE_REDIRECT_URIS,
};
use browser::stand_in::{ProtectedMcpServer, StandInConfig};
use browser::Browser;
use harness::*;
use kube::api::Api;
use kube::Client;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::{json, Value};

const USER: &str = "alice";
const PASSWORD: &str = "alice-e2e-password-1";

/// Operator + seed policy + one Ready McpServer whose URL is the (not yet started) stand-in.
struct Walkthrough {
    client: Client,
    ns: String,
    realm: Realm,
    op: Operator,
    policy: McpAuthPolicy,
    server: McpServer,
    stand_in: ProtectedMcpServer,
}

async fn walkthrough(prefix: &str) -> Walkthrough {
    let tb = support::testbed().await;
    let client = support::kube_client().await;
    let ns = support::test_namespace(&client, prefix).await;
    let realm = Realm::new(&support::unique_name(prefix)).await;
    admin_secret(&client, &ns, "keycloak-admin").await;
    let op = Operator::start(&client, &ns).await;

    let mut stand_in = ProtectedMcpServer::bind().await.expect("stand-in bind");
    create(
        &client,
        &ns,
        &seed_policy("acme", &realm.name, &tb.keycloak_url),
    )
    .await;
    create(&client, &ns, &server("calc", "acme", stand_in.url())).await;
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
    let status = server.status.clone().expect("server status");
    let secret = status.secret_name.clone().expect("status.secretName");
    let client_id = support::wait_for("introspection credentials", WAIT, || {
        secret_value(&client, &ns, &secret, "client-id")
    })
    .await;
    let client_secret = secret_value(&client, &ns, &secret, "client-secret")
        .await
        .expect("client-secret in the Secret");
    let audience_scope = status.audience_scope.clone().expect("status.audienceScope");
    stand_in
        .start(StandInConfig {
            issuer: policy.issuer(),
            introspection_endpoint: policy.introspection_endpoint(),
            client_id,
            client_secret,
            scopes: vec!["mcp:tools".into(), audience_scope],
        })
        .expect("stand-in start");

    Walkthrough {
        client,
        ns,
        realm,
        op,
        policy,
        server,
        stand_in,
    }
}

impl Walkthrough {
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
        drop(self.stand_in);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_like_client_registers_logs_in_consents_and_calls_a_tool() {
    let t_test = Instant::now();
    let w = walkthrough("e2e").await;
    let t_setup = t_test.elapsed();
    let user_id = w.create_user().await;
    let url = w.stand_in.url().to_string();
    let audience_scope = w
        .server
        .status
        .as_ref()
        .unwrap()
        .audience_scope
        .clone()
        .unwrap();

    let browser = Browser::start().await.expect("headless Chromium");
    let conn = connect_like_vscode(&url, &browser, (USER, PASSWORD))
        .await
        .unwrap_or_else(|e| panic!("connect_like_vscode: {e}"));

    // The tool works through the authorized session.
    let tools = conn.tool_names().await.expect("tools/list");
    assert_eq!(tools, vec!["add".to_string()], "tools of the stand-in");
    let result = conn
        .call_tool("add", json!({"a": 2, "b": 40}))
        .await
        .expect("tools/call add");
    assert_ne!(
        result.is_error,
        Some(true),
        "add returned an error: {result:?}"
    );
    assert_eq!(result_text(&result), "42");

    // Discovery went through the challenge and the PRM to the realm's exact issuer.
    assert_eq!(
        conn.challenge.resource_metadata.as_deref(),
        Some(w.stand_in.resource_metadata_url().as_str())
    );
    assert_eq!(conn.issuer.as_deref(), Some(w.policy.issuer().as_str()));

    // The authorization request: code + PKCE S256, resource = the server URL, challenge scopes.
    let p = &conn.authorization_params;
    assert_eq!(p.get("response_type").map(String::as_str), Some("code"));
    assert_eq!(
        p.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    assert_eq!(p.get("resource"), Some(&url), "RFC 8707 resource");
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
    assert!(aud.contains(&url), "aud {aud:?} lacks {url}");
    assert!(
        aud.contains(&format!("mcp.{}.calc", w.ns)),
        "aud {aud:?} lacks the introspection client"
    );
    assert_eq!(claims["azp"], conn.client_id.as_str());
    // `sub` only: a DCR request with `scope` gets just `basic` as default scope in Keycloak
    // <= 26.7 (keycloak#50807), so `profile` claims such as preferred_username are absent.
    assert_eq!(claims["sub"], user_id.as_str());
    assert_eq!(claims["iss"], w.policy.issuer().as_str());
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

    // The protected server let the token in after introspection, and only that client's.
    let accepted = w.stand_in.accepted();
    assert!(!accepted.is_empty(), "the stand-in accepted no token");
    for a in &accepted {
        assert_eq!(a.client_id.as_deref(), Some(conn.client_id.as_str()));
        assert_eq!(a.sub.as_deref(), Some(user_id.as_str()));
    }
    assert!(
        w.stand_in.rejected().is_empty(),
        "rejections: {:?}",
        w.stand_in.rejected()
    );

    // The registered client, through the Admin REST API: generated id, VS Code's metadata,
    // public, consent required (anonymous DCR policy).
    assert!(
        is_generated_id(&conn.client_id),
        "client id {:?}",
        conn.client_id
    );
    let kc_client = w
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
    let consents = w.realm.get(&format!("/users/{user_id}/consents")).await;
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

    eprintln!(
        "e2e: Chromium {}; client {} consented to {:?}; granted {:?}",
        browser.version().await,
        conn.client_id,
        conn.login.consent_items,
        conn.granted_scopes
    );
    let timings = conn.timings.clone();
    conn.close().await;
    browser.close().await;
    eprintln!(
        "e2e timings: setup (namespace, realm, operator, Ready) {:?}; discovery {:?}; registration {:?}; \
         browser login round trip {:?}; token exchange {:?}; MCP initialize {:?}; client total {:?}; whole test (before teardown) {:?}",
        t_setup,
        timings.discovery,
        timings.registration,
        timings.browser_login,
        timings.token_exchange,
        timings.mcp_initialize,
        timings.total,
        t_test.elapsed()
    );
    w.finish().await;
    eprintln!("e2e whole test incl. teardown: {:?}", t_test.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_challenged_and_untrusted_redirect_hosts_cannot_register() {
    let w = walkthrough("e2e-neg").await;
    let url = w.stand_in.url().to_string();
    let audience_scope = w
        .server
        .status
        .as_ref()
        .unwrap()
        .audience_scope
        .clone()
        .unwrap();

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
    assert_eq!(prm_url, w.stand_in.resource_metadata_url());
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
    assert_eq!(prm["authorization_servers"], json!([w.policy.issuer()]));

    // A token Keycloak does not know: 401 invalid_token.
    let bogus = probe_with_token(&url, Some("not-a-token"))
        .await
        .expect("probe");
    assert_eq!(bogus.status, 401);
    assert_eq!(bogus.error.as_deref(), Some("invalid_token"));

    // Registration with a redirect host outside the trusted hosts: refused by the policy.
    let endpoint = w.policy.registration_endpoint();
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
    assert!(w.realm.client(&ok.client_id).await.is_some());

    tokio::time::sleep(Duration::from_millis(1)).await;
    w.finish().await;
}
