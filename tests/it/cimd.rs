//! Client ID Metadata Documents (issue 8) and the DCR guard rail, against the test bed's real
//! Keycloak (feature `cimd` on) and a second Keycloak without it.
//!
//! The metadata documents are served on loopback by [`DocServer`]; `allowHttp` with loopback
//! domains lets Keycloak fetch them over http. rmcp insists on an https metadata URL for its own
//! CIMD path, so the client id (the document's URL) is handed to rmcp as a pre-registered client
//! id — exactly what rmcp then sends.
//!
//! Needs the test bed (`eval "$(./hack/testbed up)"`) and Debian's `chromium` + `chromium-driver`.

use crate::browser;
use crate::harness;
use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use browser::client::{jwt_payload, probe_unauthenticated, register_anonymously, result_text};
use browser::client::{vscode_registration_request, VSCODE_CLIENT_NAME};
use browser::stand_in::PlainMcpServer;
use browser::{Browser, LoopbackCallback};
use harness::*;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use rmcp::transport::auth::{
    AuthClient, AuthorizationManager, AuthorizationMetadataSource, AuthorizationRequest, OAuthState,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};

const USER: &str = "alice";
const PASSWORD: &str = "alice-cimd-password-1";
const CIMD_APPLIED: &str = "ClientIdMetadataDocumentsApplied";
const PRESSURE: &str = "ClientLimitPressure";
const CIMD_ATTRIBUTE: &str = "cimd.cache.expiry.time.in.sec";
const OWNER: &str = "mcpauth.dev/owner";

// ---------------------------------------------------------------------------------------------
// A loopback web server for metadata documents.

/// Serves JSON documents by path on `127.0.0.1:<port>` and counts the requests per path.
struct DocServer {
    port: u16,
    docs: Arc<Mutex<HashMap<String, Value>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl DocServer {
    async fn start() -> DocServer {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the document server");
        let port = listener.local_addr().unwrap().port();
        let docs: Arc<Mutex<HashMap<String, Value>>> = Default::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Default::default();
        let (d, h) = (docs.clone(), hits.clone());
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let (d, h) = (d.clone(), h.clone());
            async move {
                let path = uri.path().to_string();
                *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                match d.lock().unwrap().get(&path) {
                    Some(doc) => (
                        axum::http::StatusCode::OK,
                        [("content-type", "application/json")],
                        doc.to_string(),
                    ),
                    None => (
                        axum::http::StatusCode::NOT_FOUND,
                        [("content-type", "text/plain")],
                        String::new(),
                    ),
                }
            }
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        DocServer {
            port,
            docs,
            hits,
            stop: Some(stop),
        }
    }

    /// `http://{host}:{port}{path}`: the client id of the document at `path`.
    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    /// Publishes a document at `path` whose `client_id` is `client_id`.
    fn publish(&self, path: &str, client_id: &str, redirect_uris: &[&str]) {
        self.docs.lock().unwrap().insert(
            path.to_string(),
            json!({
                "client_id": client_id,
                "client_name": "CIMD test client",
                "client_uri": self.url("127.0.0.1", "/"),
                "redirect_uris": redirect_uris,
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
                "application_type": "native"
            }),
        );
    }

    /// Adds `property` = `value` to the document at `path`.
    fn set_property(&self, path: &str, property: &str, value: Value) {
        self.docs.lock().unwrap().get_mut(path).expect("published")[property] = value;
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for DocServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up helpers.

/// A policy with `clientIdMetadataDocuments` = `cimd` (and no DCR section).
/// A realm-wide list of client profiles or policies without the operator's `user-grants-only`
/// entry (a separate feature, tested in tests/it/security.rs).
fn without_grant_refusal(list: &Value) -> Vec<Value> {
    let grants = mcp_keycloak_operator::desired::realm::USER_GRANTS_ONLY;
    let all = list.as_array().cloned().unwrap_or_default();
    all.into_iter().filter(|e| e["name"] != grants).collect()
}

/// The seed policy with CIMD settings `cimd` instead of anonymous DCR.
fn cimd_policy(name: &str, realm: &str, kc: &str, cimd: Value) -> McpAuthPolicy {
    let mut p = serde_json::to_value(seed_policy(name, realm, kc)).unwrap();
    let spec = p["spec"].as_object_mut().unwrap();
    spec.remove("dynamicClientRegistration");
    spec.insert("clientIdMetadataDocuments".into(), cimd);
    serde_json::from_value(p).unwrap()
}

/// Loopback-only CIMD settings used by most tests: `client_id` on 127.0.0.1, redirects there too.
fn loopback_cimd() -> Value {
    json!({"trustedDomains": ["127.0.0.1"], "allowHttp": true})
}

/// CIMD's view of a scenario's realm.
impl Scenario {
    /// The realm's client profiles but the operator's grant refusal (tests/it/security.rs).
    async fn profiles(&self) -> Vec<Value> {
        let v = self.realm.get("/client-policies/profiles").await;
        without_grant_refusal(&v["profiles"])
    }

    /// The realm's client policies but the operator's grant refusal (tests/it/security.rs).
    async fn client_policies(&self) -> Vec<Value> {
        let v = self.realm.get("/client-policies/policies").await;
        without_grant_refusal(&v["policies"])
    }

    fn owned_name(&self, policy: &str) -> String {
        format!("mcp-operator.{}.{policy}", self.ns)
    }

    /// Domains of our client policy's `client-id-uri` condition, once it exists.
    async fn condition_domains(&self, policy: &str) -> Option<Vec<String>> {
        let name = self.owned_name(policy);
        let p = self
            .client_policies()
            .await
            .into_iter()
            .find(|p| p["name"] == name.as_str())?;
        serde_json::from_value(
            p["conditions"][0]["configuration"]["client-id-uri-allow-permitted-domains"].clone(),
        )
        .ok()
    }
}

/// The token is for `url` and the introspection client of `ns/server`, and names no `other`.
fn assert_audiences(claims: &Value, url: &str, ns: &str, server: &str, other: &str) {
    let aud = audiences(claims);
    let client = format!("mcp.{ns}.{server}");
    let client = client.as_str();
    assert!(aud.iter().any(|a| a == url), "aud {aud:?} lacks {url}");
    assert!(
        aud.iter().any(|a| a == client),
        "aud {aud:?} lacks {client}"
    );
    assert!(
        !aud.iter().any(|x| x.contains(other)),
        "aud {aud:?} names {other}"
    );
}

fn pkce() -> (String, String) {
    use base64::Engine;
    use rand::Rng;
    use sha2::Digest;
    let verifier: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(64)
        .map(char::from)
        .collect();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The authorization URL of the realm for `client_id` (code + PKCE S256 + `resource`).
fn authorization_url(
    issuer: &str,
    client_id: &str,
    redirect_uri: &str,
    scope: &str,
    resource: &str,
    challenge: &str,
) -> String {
    let mut u = url::Url::parse(&format!("{issuer}/protocol/openid-connect/auth")).unwrap();
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", scope)
        .append_pair("state", "cimd-test-state")
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("resource", resource);
    u.to_string()
}

/// What Keycloak's authorization endpoint answers to a first request, without a browser:
/// `(status, text of the error page or "")`; a login page is `(200, "login")`.
async fn authorization_answer(issuer: &str, client_id: &str, redirect_uri: &str) -> (u16, String) {
    let (_, challenge) = pkce();
    let url = authorization_url(
        issuer,
        client_id,
        redirect_uri,
        "openid",
        "http://unused.example/mcp",
        &challenge,
    );
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .expect("authorization request");
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    if body.contains("kc-form-login") {
        return (status, "login".into());
    }
    let text = body
        .split("kc-error-message")
        .nth(1)
        .map(|rest| {
            let mut out = String::new();
            let mut in_tag = false;
            for c in rest.chars().skip_while(|c| *c != '>') {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => out.push(c),
                    _ => {}
                }
                if out.len() > 400 {
                    break;
                }
            }
            out.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_default();
    (status, text)
}

/// Outcome of one browser authorization for a metadata-document client.
struct Authorized {
    claims: Value,
    token: String,
    consent_items: Vec<String>,
}

/// Authorization code + PKCE + `resource` for `client_id` in the browser (login if needed,
/// consent), then the token request. `Err` carries the `error` Keycloak redirected with.
async fn authorize(
    browser: &Browser,
    issuer: &str,
    client_id: &str,
    scope: &str,
    resource: &str,
) -> Result<Authorized, String> {
    let (verifier, challenge) = pkce();
    let mut callback = LoopbackCallback::bind().await.expect("callback listener");
    let redirect = callback.redirect_uri.clone();
    let url = authorization_url(issuer, client_id, &redirect, scope, resource, &challenge);
    let (login, cb) = tokio::join!(
        browser.login_and_consent(&url, &redirect, USER, PASSWORD),
        callback.wait(browser::LOGIN_TIMEOUT + Duration::from_secs(5)),
    );
    let login = login.map_err(|e| format!("browser: {e}"))?;
    let cb = cb.map_err(|e| format!("callback: {e}"))?;
    let params: HashMap<String, String> = url::Url::parse(&cb)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some(e) = params.get("error") {
        return Err(e.clone());
    }
    let code = params.get("code").expect("code in the callback");
    let resp = reqwest::Client::new()
        .post(format!("{issuer}/protocol/openid-connect/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &redirect),
            ("client_id", client_id),
            ("code_verifier", &verifier),
            ("resource", resource),
        ])
        .send()
        .await
        .expect("token request");
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("token endpoint {status}: {}", body["error"]));
    }
    let token = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    Ok(Authorized {
        claims: jwt_payload(&token),
        token,
        consent_items: login.consent_items,
    })
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// A client identified by a metadata document on loopback: rmcp discovers Keycloak through the
/// gateway's challenge and metadata (Keycloak advertises CIMD), authorizes with code + PKCE +
/// `resource` using the document URL as its client id, Chromium logs in and consents, and the
/// MCP session runs through the operator's gateway (configured from the reconciled Deployment).
/// The same document under a `client_id` on an untrusted host, or naming an untrusted redirect,
/// is refused by Keycloak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_document_client_authorizes_and_calls_the_server_through_the_gateway() {
    let tb = support::testbed().await;
    let (listener, url) = support::mcp_listener().await;
    let b = Scenario::new("cimd-e2e").await;
    create(
        &b.client,
        &b.ns,
        &cimd_policy("acme", &b.realm.name, &tb.keycloak_url, loopback_cimd()),
    )
    .await;
    create(&b.client, &b.ns, &server("calc", "acme", &url)).await;
    b.wait_condition::<McpAuthPolicy>("acme", "Ready", "True")
        .await;
    b.wait_condition::<McpServer>("calc", "Ready", "True").await;
    let (reason, message) = b
        .wait_condition::<McpAuthPolicy>("acme", CIMD_APPLIED, "True")
        .await;
    assert_eq!(reason, "Applied", "{message}");
    let policy = b.get::<McpAuthPolicy>("acme").await;
    let issuer = policy.issuer();
    let audience_scope = format!("mcp:server:{}:calc", b.ns);

    // Keycloak's profile and policy, exactly.
    let name = b.owned_name("acme");
    let profiles = b.profiles().await;
    assert_eq!(profiles.len(), 1, "{profiles:?}");
    assert_eq!(profiles[0]["name"], name.as_str());
    assert_eq!(
        profiles[0]["executors"],
        json!([{"executor": "client-id-metadata-document", "configuration": {
            "cimd-allow-http-scheme": true,
            "cimd-allow-permitted-domains": ["127.0.0.1"],
            "cimd-restrict-same-domain": false,
            "cimd-required-properties": []
        }}])
    );
    let policies = b.client_policies().await;
    assert_eq!(policies.len(), 1, "{policies:?}");
    assert_eq!(policies[0]["enabled"], true);
    assert_eq!(policies[0]["profiles"], json!([name]));
    assert_eq!(
        policies[0]["conditions"],
        json!([{"condition": "client-id-uri", "configuration": {
            "client-id-uri-scheme": ["http", "https"],
            "client-id-uri-allow-permitted-domains": ["127.0.0.1"]
        }}])
    );

    // The gateway, from the Deployment, in front of an unprotected MCP server.
    let upstream = PlainMcpServer::start().await.expect("upstream MCP server");
    let cfg = gateway_config_from_deployment(&b.client, &b.ns, "calc", &upstream.base_url).await;
    let gateway = ServedGateway::start(cfg, listener);
    let user_id = b.realm.create_user(USER, PASSWORD).await;

    // The client's metadata document, on loopback.
    let docs = DocServer::start().await;
    let client_id = docs.url("127.0.0.1", "/mcp-client.json");
    docs.publish("/mcp-client.json", &client_id, &["http://127.0.0.1/"]);

    // 1. No token: the gateway's challenge; rmcp discovery through the PRM to Keycloak, which
    //    advertises Client ID Metadata Documents.
    let challenge = probe_unauthenticated(&url).await.expect("probe");
    assert_eq!(challenge.status, 401);
    let www = challenge
        .www_authenticate
        .clone()
        .expect("WWW-Authenticate");
    let mut manager = AuthorizationManager::new(url.as_str())
        .await
        .expect("rmcp manager");
    let resolution = manager
        .resolve_metadata_from_challenge(Some(&www))
        .await
        .expect("discovery");
    assert_eq!(
        resolution.source,
        AuthorizationMetadataSource::ProtectedResourceMetadata
    );
    let metadata = resolution.metadata;
    assert_eq!(metadata.issuer.as_deref(), Some(issuer.as_str()));
    assert_eq!(
        metadata
            .additional_fields
            .get("client_id_metadata_document_supported"),
        Some(&json!(true)),
        "Keycloak must advertise CIMD for clients to pick it over DCR"
    );
    manager.set_metadata(metadata);
    let scopes = manager.select_scopes(None, &[]);
    assert!(
        scopes.iter().any(|s| s == "mcp:tools") && scopes.contains(&audience_scope),
        "challenge scopes {scopes:?}"
    );

    // 2. Authorization by rmcp with the document URL as client id; the browser logs in and
    //    consents; Keycloak fetches the document on the way.
    let mut callback = LoopbackCallback::bind().await.expect("callback");
    let redirect_uri = callback.redirect_uri.clone();
    let mut state = OAuthState::Unauthorized(manager);
    state
        .start_authorization(
            AuthorizationRequest::new(redirect_uri.clone())
                .with_preregistered_client(client_id.clone())
                .with_scopes(scopes.clone())
                .with_challenge(www.clone()),
        )
        .await
        .expect("start authorization");
    let auth_url = state
        .get_authorization_url()
        .await
        .expect("authorization url");
    let params: BTreeMap<String, String> = url::Url::parse(&auth_url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(params["client_id"], client_id);
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["resource"], url, "RFC 8707 resource");
    let browser = Browser::start().await.expect("headless Chromium");
    let (login, callback_url) = tokio::join!(
        browser.login_and_consent(&auth_url, &redirect_uri, USER, PASSWORD),
        callback.wait(browser::LOGIN_TIMEOUT + Duration::from_secs(5)),
    );
    let login = login.unwrap_or_else(|e| panic!("login and consent: {e}"));
    let callback_url = callback_url.expect("callback");
    assert!(
        docs.hits("/mcp-client.json") >= 1,
        "Keycloak never fetched the document"
    );
    assert!(login.consent_shown, "no consent page");
    assert!(
        login.consent_items.iter().any(|i| i == "Use MCP tools"),
        "consent listed {:?}",
        login.consent_items
    );

    // 3. Token exchange by rmcp (PKCE verifier, resource, iss check).
    state
        .handle_callback_url(&callback_url)
        .await
        .expect("token exchange");
    let manager = state
        .into_authorization_manager()
        .expect("authorized after the callback");
    let (_, token) = manager.get_credentials().await.expect("credentials");
    let claims = token
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v["access_token"].as_str().map(jwt_payload))
        .expect("an access token");
    let aud = audiences(&claims);
    assert!(aud.contains(&url), "aud {aud:?} lacks {url}");
    assert!(
        aud.contains(&format!("mcp.{}.calc", b.ns)),
        "aud {aud:?} lacks the introspection client"
    );
    assert_eq!(claims["azp"], client_id.as_str());
    assert_eq!(claims["sub"], user_id.as_str());
    assert_eq!(claims["iss"], issuer.as_str());

    // 4. The MCP session through the gateway.
    let transport = StreamableHttpClientTransport::with_client(
        AuthClient::new(reqwest::Client::new(), manager),
        StreamableHttpClientTransportConfig::with_uri(url.clone()),
    );
    let service = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("cimd-test-client", "1.0.0"),
    )
    .serve(transport)
    .await
    .expect("MCP initialize through the gateway");
    let tools = service.list_all_tools().await.expect("tools/list");
    assert_eq!(
        tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>(),
        vec!["add"]
    );
    let result = service
        .call_tool(
            rmcp::model::CallToolRequestParams::new("add")
                .with_arguments(json!({"a": 40, "b": 2}).as_object().cloned().unwrap()),
        )
        .await
        .expect("tools/call add");
    assert_eq!(result_text(&result), "42");
    let seen = upstream.seen();
    assert!(!seen.is_empty(), "nothing reached the upstream");
    for r in &seen {
        assert!(!r.had_authorization, "the token was passed through");
        assert_eq!(r.client_id.as_deref(), Some(client_id.as_str()));
        assert_eq!(r.subject.as_deref(), Some(user_id.as_str()));
    }
    let _ = service.cancel().await;

    // 5. Keycloak created a public, consent-requiring client from the document, and the
    //    operator claimed it.
    let kc_client = b.realm.client(&client_id).await.expect("the CIMD client");
    assert_eq!(kc_client["publicClient"], true);
    assert_eq!(kc_client["consentRequired"], true);
    assert_eq!(kc_client["name"], "CIMD test client");
    assert!(kc_client["attributes"][CIMD_ATTRIBUTE].is_string());
    let owner = format!("McpAuthPolicy/{}/acme", b.ns);
    eventually("the operator marks the CIMD client as its own", || async {
        b.realm
            .client(&client_id)
            .await
            .is_some_and(|c| c["attributes"][OWNER] == owner.as_str())
    })
    .await;

    // 6. The same document with its client_id on a host that is not trusted: Keycloak does not
    //    even fetch it, and no client appears.
    let untrusted = docs.url("localhost", "/untrusted.json");
    docs.publish("/untrusted.json", &untrusted, &["http://127.0.0.1/"]);
    let (status, text) = authorization_answer(&issuer, &untrusted, "http://127.0.0.1:4711/").await;
    assert_eq!((status, text.as_str()), (400, "Client not found."));
    assert_eq!(
        docs.hits("/untrusted.json"),
        0,
        "an untrusted document was fetched"
    );
    assert!(b.realm.client(&untrusted).await.is_none());

    // 7. A document on the trusted host that names a redirect URI elsewhere: refused by the
    //    executor after fetching it.
    let evil = docs.url("127.0.0.1", "/evil.json");
    docs.publish("/evil.json", &evil, &["https://evil.example.com/callback"]);
    let (status, text) =
        authorization_answer(&issuer, &evil, "https://evil.example.com/callback").await;
    assert_eq!(
        (status, text.as_str()),
        (400, "Invalid Client ID: domain not allowed.")
    );
    assert!(docs.hits("/evil.json") >= 1);
    assert!(b.realm.client(&evil).await.is_none());

    browser.close().await;
    gateway.stop().await;
}

/// Audience for metadata-document clients. Keycloak attaches the realm's default and optional
/// scopes to a CIMD client once, when it first sees the document: a realm optional scope created
/// later cannot be requested by that client (`invalid_scope`, pinned here with a hand-made
/// scope). The operator therefore links each server's audience scope to the CIMD clients its
/// policy admits, so a server added later works for a known client, and tokens stay isolated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_document_clients_get_audience_scopes_of_servers_added_later() {
    let tb = support::testbed().await;
    let b = Scenario::new("cimd-aud").await;
    let (alpha_url, beta_url) = (
        "http://alpha.example.com/mcp",
        "http://beta.example.com/mcp",
    );
    create(
        &b.client,
        &b.ns,
        &cimd_policy("acme", &b.realm.name, &tb.keycloak_url, loopback_cimd()),
    )
    .await;
    create(&b.client, &b.ns, &server("alpha", "acme", alpha_url)).await;
    b.wait_condition::<McpAuthPolicy>("acme", "Ready", "True")
        .await;
    b.wait_condition::<McpServer>("alpha", "Ready", "True")
        .await;
    let issuer = b.get::<McpAuthPolicy>("acme").await.issuer();
    b.realm.create_user(USER, PASSWORD).await;
    let docs = DocServer::start().await;
    let client_id = docs.url("127.0.0.1", "/aud-client.json");
    docs.publish("/aud-client.json", &client_id, &["http://127.0.0.1/"]);
    let (alpha_scope, beta_scope) = (
        format!("mcp:server:{}:alpha", b.ns),
        format!("mcp:server:{}:beta", b.ns),
    );
    let browser = Browser::start().await.expect("headless Chromium");

    // First use of the document: alpha's audience (its URL and introspection client) only.
    let a = authorize(
        &browser,
        &issuer,
        &client_id,
        &format!("openid mcp:tools {alpha_scope}"),
        alpha_url,
    )
    .await
    .unwrap_or_else(|e| panic!("alpha authorization: {e}"));
    assert_audiences(&a.claims, alpha_url, &b.ns, "alpha", "beta");
    assert_eq!(a.claims["azp"], client_id.as_str());

    // Keycloak's own behaviour: a realm optional scope made after the client exists cannot be
    // requested by it. (The operator leaves scopes it does not own alone.)
    let (s, v) = b
        .realm
        .kc
        .post(
            &b.realm.path("/client-scopes"),
            &json!({"name": "pin:later", "protocol": "openid-connect",
                    "attributes": {"include.in.token.scope": "true"},
                    "protocolMappers": [{"name": "aud", "protocol": "openid-connect",
                        "protocolMapper": "oidc-audience-mapper",
                        "config": {"included.custom.audience": "http://pin.example.com",
                                   "access.token.claim": "true"}}]}),
        )
        .await;
    assert!(s.is_success(), "hand-made scope: {s} {v}");
    let pin = b.realm.scope("pin:later").await.expect("pin scope");
    let pin_id = pin["id"].as_str().unwrap();
    let (s, _) = b
        .realm
        .kc
        .put(
            &b.realm
                .path(&format!("/default-optional-client-scopes/{pin_id}")),
            &json!({}),
        )
        .await;
    assert!(s.is_success());
    let refused = authorize(
        &browser,
        &issuer,
        &client_id,
        "openid pin:later",
        "http://pin.example.com",
    )
    .await
    .err();
    assert_eq!(refused.as_deref(), Some("invalid_scope"));

    // A server added later: the operator links its audience scope to the known client.
    create(&b.client, &b.ns, &server("beta", "acme", beta_url)).await;
    b.wait_condition::<McpServer>("beta", "Ready", "True").await;
    eventually(
        "beta's audience scope linked to the CIMD client",
        || async {
            b.realm.client(&client_id).await.is_some_and(|c| {
                c["optionalClientScopes"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|n| n == beta_scope.as_str()))
            })
        },
    )
    .await;
    let c = b.realm.client(&client_id).await.unwrap();
    assert!(
        !c["optionalClientScopes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "pin:later"),
        "the operator linked a scope it does not own"
    );
    let bt = authorize(
        &browser,
        &issuer,
        &client_id,
        &format!("openid mcp:tools {beta_scope}"),
        beta_url,
    )
    .await
    .unwrap_or_else(|e| panic!("beta authorization: {e}"));
    assert_audiences(&bt.claims, beta_url, &b.ns, "beta", "alpha");
    assert!(
        bt.consent_items
            .iter()
            .any(|i| i == &format!("Access the MCP server at {beta_url}")),
        "consent for beta listed {:?}",
        bt.consent_items
    );

    // A document that declares `scope`: Keycloak gives the client just those scopes (default
    // `basic`, the declared ones optional) and sets them again from the document at every
    // refresh (cache expiry, at least 5 minutes by default). The operator links alpha's audience
    // scope after the first use, which then works until the next refresh resets it.
    let scoped_id = docs.url("127.0.0.1", "/scoped-client.json");
    docs.publish("/scoped-client.json", &scoped_id, &["http://127.0.0.1/"]);
    docs.set_property("/scoped-client.json", "scope", json!("mcp:tools"));
    let alpha_request = format!("openid mcp:tools {alpha_scope}");
    let first = authorize(&browser, &issuer, &scoped_id, &alpha_request, alpha_url)
        .await
        .err();
    assert_eq!(
        first.as_deref(),
        Some("invalid_scope"),
        "declared scope only"
    );
    let linked = |id: String| {
        let (b, scope) = (&b, alpha_scope.clone());
        async move {
            b.realm.client(&id).await.is_some_and(|c| {
                c["optionalClientScopes"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|n| n == scope.as_str()))
            })
        }
    };
    eventually("alpha's scope linked to the scoped client", || {
        linked(scoped_id.clone())
    })
    .await;
    let ok = authorize(&browser, &issuer, &scoped_id, &alpha_request, alpha_url)
        .await
        .unwrap_or_else(|e| panic!("scoped client after linking: {e}"));
    assert!(audiences(&ok.claims).contains(&alpha_url.to_string()));
    // Force the refresh: the cache expiry attribute in the past.
    let c = b.realm.client(&scoped_id).await.unwrap();
    let mut rep = c.clone();
    rep["attributes"][CIMD_ATTRIBUTE] = json!("1");
    for k in [
        "defaultClientScopes",
        "optionalClientScopes",
        "protocolMappers",
    ] {
        rep.as_object_mut().unwrap().remove(k);
    }
    b.realm.update_client(&rep).await;
    let hits = docs.hits("/scoped-client.json");
    let after_refresh = authorize(&browser, &issuer, &scoped_id, &alpha_request, alpha_url)
        .await
        .err();
    assert!(
        docs.hits("/scoped-client.json") > hits,
        "no refresh happened"
    );
    assert_eq!(
        after_refresh.as_deref(),
        Some("invalid_scope"),
        "the refresh reset the client's scopes to the document's"
    );
    eventually("alpha's scope linked again", || linked(scoped_id.clone())).await;

    // Isolation where it is enforced: alpha's introspection client gets `active: false` for the
    // beta token, beta's gets `active: true`.
    let (_, beta_view) = b.introspect_as("beta", &bt.token).await;
    assert_eq!(beta_view["active"], true, "{beta_view}");
    let (_, alpha_view) = b.introspect_as("alpha", &bt.token).await;
    assert_eq!(alpha_view["active"], false, "{alpha_view}");

    browser.close().await;
}

/// Policy edits converge in Keycloak; the realm's other client profiles and policies (made by
/// hand first) survive every write untouched; a client admitted through a domain that is
/// removed is revoked; no write at steady state; deleting the McpAuthPolicy removes exactly
/// what it created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_edits_converge_and_only_the_operators_entries_change() {
    let tb = support::testbed().await;
    let b = Scenario::new("cimd-edit").await;
    // The realm exists first, with someone else's profile and policy.
    let (s, v) = b
        .realm
        .kc
        .post(
            "/admin/realms",
            &json!({"realm": b.realm.name, "enabled": true}),
        )
        .await;
    assert!(s.is_success(), "create realm: {s} {v}");
    let foreign_profiles = json!({"profiles": [{"name": "corp-pkce", "description": "made by hand",
        "executors": [{"executor": "pkce-enforcer", "configuration": {"auto-configure": "true"}}]}]});
    let foreign_policies = json!({"policies": [{"name": "corp-policy", "description": "made by hand",
        "enabled": false,
        "conditions": [{"condition": "client-access-type", "configuration": {"type": ["confidential"]}}],
        "profiles": ["corp-pkce"]}]});
    let (s, v) = b
        .realm
        .kc
        .put(
            &b.realm.path("/client-policies/profiles"),
            &foreign_profiles,
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let (s, v) = b
        .realm
        .kc
        .put(
            &b.realm.path("/client-policies/policies"),
            &foreign_policies,
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let foreign_profile = foreign_profiles["profiles"][0].clone();
    let foreign_policy = foreign_policies["policies"][0].clone();
    // A metadata-document client another McpAuthPolicy claimed.
    let docs = DocServer::start().await;
    let foreign_client = docs.url("127.0.0.1", "/someone-elses.json");
    let (s, v) = b
        .realm
        .kc
        .post(
            &b.realm.path("/clients"),
            &json!({"clientId": foreign_client, "publicClient": true,
                    "redirectUris": ["http://127.0.0.1/"],
                    "attributes": {CIMD_ATTRIBUTE: "1", OWNER: "McpAuthPolicy/elsewhere/other"}}),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");

    let cimd = json!({"trustedDomains": ["127.0.0.1"], "redirectDomains": ["127.0.0.1"], "allowHttp": true});
    create(
        &b.client,
        &b.ns,
        &cimd_policy("acme", &b.realm.name, &tb.keycloak_url, cimd),
    )
    .await;
    b.wait_condition::<McpAuthPolicy>("acme", CIMD_APPLIED, "True")
        .await;
    let name = b.owned_name("acme");
    let issuer = b.get::<McpAuthPolicy>("acme").await.issuer();
    let check_foreign = |profiles: &[Value], policies: &[Value]| {
        assert_eq!(
            profiles[0], foreign_profile,
            "someone else's profile changed"
        );
        assert_eq!(policies[0], foreign_policy, "someone else's policy changed");
    };
    let (profiles, policies) = (b.profiles().await, b.client_policies().await);
    assert_eq!(profiles.len(), 2);
    assert_eq!(policies.len(), 2);
    check_foreign(&profiles, &policies);
    assert_eq!(profiles[1]["name"], name.as_str());
    assert_eq!(policies[1]["name"], name.as_str());

    // Steady state: no write to Keycloak over several resyncs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes = b.op().keycloak_writes();
    let reads = b.op().ctx.metrics.keycloak_reads();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        b.op().ctx.metrics.keycloak_reads() > reads,
        "no resync happened"
    );
    assert_eq!(
        b.op().keycloak_writes(),
        writes,
        "a resync wrote to Keycloak"
    );

    // Two documents: on 127.0.0.1 (trusted) and on localhost (not yet).
    let on_ip = docs.url("127.0.0.1", "/ip.json");
    let on_name = docs.url("localhost", "/name.json");
    docs.publish("/ip.json", &on_ip, &["http://127.0.0.1/"]);
    docs.publish("/name.json", &on_name, &["http://127.0.0.1/"]);
    let redirect = "http://127.0.0.1:4711/";
    assert_eq!(
        authorization_answer(&issuer, &on_ip, redirect).await,
        (200, "login".to_string())
    );
    assert_eq!(
        authorization_answer(&issuer, &on_name, redirect).await,
        (400, "Client not found.".to_string())
    );
    assert!(b.realm.client(&on_ip).await.is_some());

    // Domain added: Keycloak's policy follows; the localhost document is admitted.
    b.patch_spec::<McpAuthPolicy>(
        "acme",
        json!({"clientIdMetadataDocuments": {"trustedDomains": ["127.0.0.1", "localhost"]}}),
    )
    .await;
    eventually("localhost added to the policy's domains", || async {
        b.condition_domains("acme").await
            == Some(vec!["127.0.0.1".to_string(), "localhost".to_string()])
    })
    .await;
    assert_eq!(
        authorization_answer(&issuer, &on_name, redirect).await,
        (200, "login".to_string())
    );
    let owner = format!("McpAuthPolicy/{}/acme", b.ns);
    for id in [&on_ip, &on_name] {
        eventually(&format!("{id} claimed by the operator"), || async {
            b.realm
                .client(id)
                .await
                .is_some_and(|c| c["attributes"][OWNER] == owner.as_str())
        })
        .await;
    }

    // Domain removed: the policy follows, and the client it had admitted is revoked (Keycloak
    // would otherwise keep it as an ordinary client that still logs users in).
    b.patch_spec::<McpAuthPolicy>(
        "acme",
        json!({"clientIdMetadataDocuments": {"trustedDomains": ["localhost"]}}),
    )
    .await;
    eventually("127.0.0.1 removed and its client revoked", || async {
        b.condition_domains("acme").await == Some(vec!["localhost".to_string()])
            && b.realm.client(&on_ip).await.is_none()
    })
    .await;
    let hits = docs.hits("/ip.json");
    assert_eq!(
        authorization_answer(&issuer, &on_ip, redirect).await,
        (400, "Client not found.".to_string())
    );
    assert_eq!(
        docs.hits("/ip.json"),
        hits,
        "a no longer trusted document was fetched"
    );
    assert!(b.realm.client(&on_name).await.is_some());
    let profile = b
        .profiles()
        .await
        .into_iter()
        .find(|p| p["name"] == name.as_str())
        .unwrap();
    assert_eq!(
        profile["executors"][0]["configuration"]["cimd-allow-permitted-domains"],
        json!(["127.0.0.1", "localhost"]),
        "redirect domain 127.0.0.1 stays permitted for URIs"
    );
    check_foreign(&b.profiles().await, &b.client_policies().await);
    assert!(b.realm.client(&foreign_client).await.is_some());

    // Deleting the policy removes its profile, policy and clients, nothing else.
    b.delete::<McpAuthPolicy>("acme").await;
    let (profiles, policies) = (b.profiles().await, b.client_policies().await);
    assert_eq!(profiles, vec![foreign_profile.clone()]);
    assert_eq!(policies, vec![foreign_policy.clone()]);
    assert!(
        b.realm.client(&on_name).await.is_none(),
        "its client survived"
    );
    assert!(
        b.realm.client(&foreign_client).await.is_some(),
        "another policy's client was deleted"
    );
}

/// A Keycloak without the `cimd` feature: a specific condition that says how to enable it, and
/// nothing written (Keycloak would refuse a profile naming the executor anyway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_without_the_cimd_feature_yields_cimd_feature_disabled() {
    let plain = support::keycloak_instance("plain", "").await;
    let mut b = Scenario::on("cimd-plain", plain.login()).await;
    b.start_operator().await;
    let (client, ns, realm) = (b.client.clone(), b.ns.clone(), b.realm.name.clone());
    create(
        &client,
        &ns,
        &cimd_policy("acme", &realm, &plain.url, loopback_cimd()),
    )
    .await;
    let message =
        wait_reason::<McpAuthPolicy>(&client, &ns, "acme", CIMD_APPLIED, "CimdFeatureDisabled")
            .await;
    assert!(
        message.contains("--features=cimd") && message.contains("KC_FEATURES=cimd"),
        "{message}"
    );
    let ready =
        wait_reason::<McpAuthPolicy>(&client, &ns, "acme", "Ready", "CimdFeatureDisabled").await;
    assert_eq!(ready, message);
    wait_condition::<McpAuthPolicy>(&client, &ns, "acme", "RealmConfigured", "True").await;
    let kc = &b.realm.kc;
    let (_, profiles) = kc
        .get(&format!("/admin/realms/{realm}/client-policies/profiles"))
        .await;
    let (_, policies) = kc
        .get(&format!("/admin/realms/{realm}/client-policies/policies"))
        .await;
    assert_eq!(
        without_grant_refusal(&profiles["profiles"]),
        Vec::<Value>::new(),
        "half-applied"
    );
    assert_eq!(
        without_grant_refusal(&policies["policies"]),
        Vec::<Value>::new(),
        "half-applied"
    );

    // Turning the section off makes the policy Ready again.
    Api::<McpAuthPolicy>::namespaced(client.clone(), &ns)
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"clientIdMetadataDocuments": {"enabled": false}}})),
        )
        .await
        .unwrap();
    let (reason, _) =
        wait_condition::<McpAuthPolicy>(&client, &ns, "acme", CIMD_APPLIED, "True").await;
    assert_eq!(reason, "Disabled");
    wait_condition::<McpAuthPolicy>(&client, &ns, "acme", "Ready", "True").await;
}

/// DCR guard rail: `status.realmClients` is the realm's client count (what Keycloak's Max
/// Clients policy counts), and `ClientLimitPressure` turns True with a Warning event at 90% of
/// `maxClients` and at the limit, where Keycloak refuses registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realm_client_count_and_limit_pressure_are_reported() {
    let tb = support::testbed().await;
    let b = Scenario::new("cimd-cap").await;
    create(
        &b.client,
        &b.ns,
        &seed_policy("acme", &b.realm.name, &tb.keycloak_url),
    )
    .await;
    b.wait_condition::<McpAuthPolicy>("acme", "Ready", "True")
        .await;
    let actual = || async {
        b.realm
            .get("/clients?first=0&max=1000")
            .await
            .as_array()
            .unwrap()
            .len() as i64
    };
    let status_count = || async {
        b.get::<McpAuthPolicy>("acme")
            .await
            .status
            .and_then(|s| s.realm_clients)
    };
    let base = actual().await;
    assert_eq!(status_count().await, Some(base));
    assert!(
        base >= 6,
        "a new realm has Keycloak's built-in clients, got {base}"
    );
    let (pressure, _) = b
        .wait_condition::<McpAuthPolicy>("acme", PRESSURE, "False")
        .await;
    assert_eq!(pressure, "BelowThreshold");

    // Limit = base + 4: three registrations bring it to >= 90%.
    let max = base + 4;
    b.patch_spec::<McpAuthPolicy>(
        "acme",
        json!({"dynamicClientRegistration": {"maxClients": max}}),
    )
    .await;
    let endpoint = b.get::<McpAuthPolicy>("acme").await.registration_endpoint();
    let mut body = vscode_registration_request(None, Some("mcp:tools"));
    body["client_name"] = json!(VSCODE_CLIENT_NAME);
    let mut registered = vec![];
    for _ in 0..3 {
        let r = register_anonymously(&endpoint, &body)
            .await
            .unwrap_or_else(|e| panic!("registration: {e}"));
        registered.push(r.client_id);
    }
    let (reason, message) = b
        .wait_condition::<McpAuthPolicy>("acme", PRESSURE, "True")
        .await;
    assert_eq!(reason, "NearLimit", "{message}");
    assert_eq!(
        message,
        format!(
            "the realm has {} of {max} clients ({}%); registrations stop at {max}",
            base + 3,
            (base + 3) * 100 / max
        )
    );
    assert_eq!(status_count().await, Some(base + 3));
    let events = Api::<Event>::namespaced(b.client.clone(), &b.ns);
    eventually("a Warning event NearLimit", || async {
        events.list(&Default::default()).await.is_ok_and(|l| {
            l.items.iter().any(|e| {
                e.reason.as_deref() == Some("NearLimit") && e.type_.as_deref() == Some("Warning")
            })
        })
    })
    .await;

    // At the limit: Keycloak refuses the next registration, and the condition says so.
    let r = register_anonymously(&endpoint, &body)
        .await
        .unwrap_or_else(|e| panic!("registration up to the limit: {e}"));
    registered.push(r.client_id);
    eventually("LimitReached", || async {
        b.get::<McpAuthPolicy>("acme")
            .await
            .status
            .is_some_and(|s| {
                s.realm_clients == Some(max)
                    && s.conditions.iter().any(|c| {
                        c.type_ == PRESSURE && c.reason == "LimitReached" && c.status == "True"
                    })
            })
    })
    .await;
    let refused = register_anonymously(&endpoint, &body)
        .await
        .expect_err("Keycloak must refuse registration at maxClients");
    assert_eq!(refused.status, 403, "{refused}");
    assert!(
        refused.body.to_string().contains("Max Clients"),
        "{}",
        refused.body
    );

    // Clients deleted: the count follows down, the pressure goes away.
    for id in &registered {
        let c = b.realm.client(id).await.expect("registered client");
        let (s, _) = b
            .realm
            .kc
            .delete(
                &b.realm
                    .path(&format!("/clients/{}", c["id"].as_str().unwrap())),
            )
            .await;
        assert!(s.is_success());
    }
    let (reason, _) = b
        .wait_condition::<McpAuthPolicy>("acme", PRESSURE, "False")
        .await;
    assert_eq!(reason, "BelowThreshold");
    eventually("realmClients back to the base count", || async {
        status_count().await == Some(base)
    })
    .await;
    assert_eq!(actual().await, base);
}

/// Reaping (issue 17): a metadata-document client this policy admitted and marked is deleted
/// once unused; another policy's document client is kept; the counter says which kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_metadata_document_clients_are_reaped_and_others_kept() {
    let tb = support::testbed().await;
    let b = Scenario::new("cimd-reap").await;
    let docs = DocServer::start().await;
    let cimd = json!({"trustedDomains": ["127.0.0.1"], "allowHttp": true,
                      "reaping": {"minAge": "15s", "idleAfter": "15s"}});
    b.apply(
        &cimd_policy("acme", &b.realm.name, &tb.keycloak_url, cimd),
        &[],
    )
    .await;
    let foreign = docs.url("127.0.0.1", "/someone-elses.json");
    let rep = json!({"clientId": foreign, "publicClient": true, "redirectUris": ["http://127.0.0.1/"],
                     "attributes": {CIMD_ATTRIBUTE: "1", OWNER: "McpAuthPolicy/elsewhere/other"}});
    let (s, v) = b.realm.kc.post(&b.realm.path("/clients"), &rep).await;
    assert!(s.is_success(), "{s} {v}");
    let issuer = b.get::<McpAuthPolicy>("acme").await.issuer();
    let ours = docs.url("127.0.0.1", "/abandoned.json");
    docs.publish("/abandoned.json", &ours, &["http://127.0.0.1/"]);
    let answer = authorization_answer(&issuer, &ours, "http://127.0.0.1:4711/").await;
    assert_eq!(answer, (200, "login".to_string()));
    let marker = format!("McpAuthPolicy/{}/acme", b.ns);
    eventually("the document client marked as the policy's", || async {
        let c = b.realm.client(&ours).await;
        c.is_some_and(|c| c["attributes"][OWNER] == marker.as_str())
    })
    .await;
    eventually("the idle document client reaped", || async {
        b.realm.client(&ours).await.is_none()
    })
    .await;
    assert!(
        b.realm.client(&foreign).await.is_some(),
        "another policy's client was reaped"
    );
    // Counted when the pass that deleted it ends.
    let counted = "mcp_operator_reaped_clients_total{kind=\"metadata_document\"} 1";
    eventually("the document client counted", || async {
        b.op().ctx.metrics.encode().contains(counted)
    })
    .await;
    // Keycloak makes the client again from its document at the next authorization request.
    let answer = authorization_answer(&issuer, &ours, "http://127.0.0.1:4711/").await;
    assert_eq!(answer, (200, "login".to_string()));
}

/// Admission: `allowHttp` only with loopback domains and no presets; domain syntax; at least one
/// domain when enabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_rejects_http_beyond_loopback_and_bad_domains() {
    let client = support::kube_client().await;
    let ns = support::TestNamespace::new(&client, "cimd-adm").await;
    install_crds(&client).await;
    let api: Api<McpAuthPolicy> = Api::namespaced(client.clone(), &ns);
    let try_create = |cimd: Value| {
        let api = api.clone();
        async move {
            let p = cimd_policy(
                &support::unique_name("p"),
                "realm",
                "http://127.0.0.1:1",
                cimd,
            );
            api.create(&PostParams::default(), &p)
                .await
                .err()
                .map(|e| e.to_string())
        }
    };
    let http_msg = "allowHttp is for loopback testing only: every trustedDomains and redirectDomains entry must be localhost, 127.0.0.1 or [::1], and trustedClients must be empty";
    for bad in [
        json!({"allowHttp": true, "trustedDomains": ["127.0.0.1", "vscode.dev"]}),
        json!({"allowHttp": true, "trustedDomains": ["localhost"], "redirectDomains": ["example.com"]}),
        json!({"allowHttp": true, "trustedDomains": ["[::1]"], "trustedClients": ["VSCode"]}),
    ] {
        let e = try_create(bad.clone())
            .await
            .unwrap_or_else(|| panic!("{bad} was admitted"));
        assert!(e.contains(http_msg), "{bad}: {e}");
    }
    for bad in [
        json!({"trustedDomains": ["https://vscode.dev"]}),
        json!({"trustedDomains": ["*"]}),
        json!({"trustedDomains": ["VSCode.dev"]}),
        json!({"trustedDomains": ["vscode.dev:443"]}),
    ] {
        let e = try_create(bad.clone())
            .await
            .unwrap_or_else(|| panic!("{bad} was admitted"));
        assert!(
            e.contains("domains must be a lowercase host name"),
            "{bad}: {e}"
        );
    }
    let e = try_create(json!({"trustedDomains": []}))
        .await
        .expect("no domains");
    assert!(e.contains("name at least one trustedDomains entry"), "{e}");
    let e =
        try_create(json!({"trustedDomains": ["vscode.dev"], "requiredProperties": ["Logo URI"]}))
            .await
            .expect("bad property");
    assert!(e.contains("requiredProperties entries"), "{e}");
    for good in [
        json!({"allowHttp": true, "trustedDomains": ["localhost", "127.0.0.1", "[::1]"]}),
        json!({"trustedDomains": ["*.example.com"], "trustedClients": ["VSCode", "Claude"], "requiredProperties": ["client_name"]}),
        json!({"enabled": false}),
    ] {
        assert_eq!(try_create(good.clone()).await, None, "{good} refused");
    }
}
