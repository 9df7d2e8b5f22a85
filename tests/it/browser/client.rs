//! An MCP client that behaves like VS Code, built on the official Rust SDK (`rmcp`, feature
//! `auth`), with a real Chromium for the user's part.
//!
//! [`connect_like_vscode`] takes only the MCP server URL, like a user adding a server to VS Code:
//! 1. `initialize` without a token → 401 and its `WWW-Authenticate` challenge ([`probe_unauthenticated`]);
//! 2. rmcp discovery from that challenge: the RFC 9728 document at `resource_metadata` (rmcp checks
//!    that its `resource` is this URL), then the authorization server's metadata (RFC 8414 / OIDC;
//!    rmcp compares `issuer` exactly);
//! 3. anonymous Dynamic Client Registration with VS Code's own request body
//!    ([`vscode_registration_request`]), sent here rather than by rmcp: rmcp's DCR body has one
//!    redirect URI and no `client_uri`, so it could not carry VS Code's fields. The client id
//!    is then handed to rmcp as a pre-registered client;
//! 4. rmcp's authorization request (code + PKCE S256, `resource` = the server URL, scopes from
//!    the challenge), a loopback listener on `127.0.0.1:<random port>` (Keycloak accepts any port
//!    for the registered `http://127.0.0.1/`, RFC 8252 §7.3), Chromium logs in and consents;
//! 5. rmcp's token exchange (with `resource`, checking RFC 9207 `iss`), then a Streamable HTTP
//!    MCP session through rmcp's `AuthClient`.
//!
//! The same function runs against the operator's auth gateway: only the URL changes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
};
use rmcp::service::RunningService;
use rmcp::transport::auth::{
    AuthClient, AuthorizationManager, AuthorizationMetadataSource, AuthorizationRequest,
    OAuthState, WWWAuthenticateParams,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};

use super::{redact_url, Browser, Error, LoginOutcome, LoopbackCallback, Result};

/// The `client_name` VS Code registers with.
pub const VSCODE_CLIENT_NAME: &str = "Visual Studio Code";
/// The `client_uri` VS Code registers with.
pub const VSCODE_CLIENT_URI: &str = "https://code.visualstudio.com";
/// VS Code's redirect URIs (`src/vs/base/common/oauth.ts`, `fetchDynamicRegistration`).
pub const VSCODE_REDIRECT_URIS: &[&str] = &[
    "https://insiders.vscode.dev/redirect",
    "https://vscode.dev/redirect",
    "http://127.0.0.1/",
    "http://127.0.0.1:33418/",
];
/// Grant types VS Code asks for, filtered by the server's `grant_types_supported`.
pub const VSCODE_GRANT_TYPES: &[&str] = &[
    "authorization_code",
    "refresh_token",
    "urn:ietf:params:oauth:grant-type:device_code",
];
/// The MCP protocol request that starts every session.
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"Visual Studio Code","version":"1.0.0"}}}"#;

/// What an MCP server answered to `initialize` without a token.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub status: u16,
    /// The raw `WWW-Authenticate` header, if any.
    pub www_authenticate: Option<String>,
    /// Its `resource_metadata` parameter (resolved against the MCP URL).
    pub resource_metadata: Option<String>,
    /// Its `scope` parameter.
    pub scope: Option<String>,
    pub error: Option<String>,
}

/// POST `initialize` to `mcp_url` without credentials, as VS Code's first request.
pub async fn probe_unauthenticated(mcp_url: &str) -> Result<Challenge> {
    probe_with_token(mcp_url, None).await
}

/// POST `initialize` with an optional (possibly bogus) bearer token.
pub async fn probe_with_token(mcp_url: &str, token: Option<&str>) -> Result<Challenge> {
    let base = url::Url::parse(mcp_url).map_err(|e| Error::new("probe", e.to_string()))?;
    let mut req = reqwest::Client::new()
        .post(mcp_url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(INITIALIZE);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Error::new("probe", format!("POST {}: {e}", redact_url(mcp_url))))?;
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let params = www
        .as_deref()
        .map(|h| WWWAuthenticateParams::parse(h, &base))
        .unwrap_or_default();
    Ok(Challenge {
        status,
        www_authenticate: www,
        resource_metadata: params.resource_metadata_url.map(|u| u.to_string()),
        scope: params.scope,
        error: params.error,
    })
}

/// VS Code's DCR request body. `grant_types_supported` is the server's list (VS Code keeps the
/// subset it knows); `scope` is what the client will ask for (VS Code sends the scopes it needs).
pub fn vscode_registration_request(
    grant_types_supported: Option<&[String]>,
    scope: Option<&str>,
) -> Value {
    let grant_types: Vec<&str> = match grant_types_supported {
        Some(supported) => VSCODE_GRANT_TYPES
            .iter()
            .copied()
            .filter(|g| supported.iter().any(|s| s == g))
            .collect(),
        None => VSCODE_GRANT_TYPES.to_vec(),
    };
    let mut body = json!({
        "client_name": VSCODE_CLIENT_NAME,
        "client_uri": VSCODE_CLIENT_URI,
        "grant_types": grant_types,
        "response_types": ["code"],
        "redirect_uris": VSCODE_REDIRECT_URIS,
        "token_endpoint_auth_method": "none",
        "application_type": "native",
    });
    if let Some(s) = scope {
        body["scope"] = json!(s);
    }
    body
}

/// A client registered by anonymous DCR.
#[derive(Debug, Clone)]
pub struct Registration {
    pub client_id: String,
    /// The request body that was sent.
    pub request: Value,
    /// The response without `registration_access_token` / `client_secret`.
    pub response: Value,
}

/// The registration endpoint said no.
#[derive(Debug, Clone)]
pub struct RegistrationRefused {
    pub status: u16,
    pub body: Value,
}

impl std::fmt::Display for RegistrationRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "registration refused: HTTP {} {}",
            self.status, self.body
        )
    }
}

/// POST `body` to an RFC 7591 registration endpoint without any credentials.
pub async fn register_anonymously(
    registration_endpoint: &str,
    body: &Value,
) -> std::result::Result<Registration, RegistrationRefused> {
    let resp = reqwest::Client::new()
        .post(registration_endpoint)
        .json(body)
        .send()
        .await
        .map_err(|e| RegistrationRefused {
            status: 0,
            body: Value::String(e.to_string()),
        })?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let mut value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !(200..300).contains(&status) {
        return Err(RegistrationRefused {
            status,
            body: value,
        });
    }
    if let Some(o) = value.as_object_mut() {
        o.remove("registration_access_token");
        o.remove("client_secret");
    }
    let client_id = value["client_id"]
        .as_str()
        .ok_or_else(|| RegistrationRefused {
            status,
            body: json!({"error": "no client_id in the registration response"}),
        })?
        .to_string();
    Ok(Registration {
        client_id,
        request: body.clone(),
        response: value,
    })
}

/// Durations of the steps of [`connect_like_vscode`].
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// 401 probe + PRM + authorization server metadata.
    pub discovery: Duration,
    pub registration: Duration,
    /// Browser: authorization URL opened → redirect with the code received.
    pub browser_login: Duration,
    pub token_exchange: Duration,
    /// MCP `initialize` with the token.
    pub mcp_initialize: Duration,
    pub total: Duration,
}

/// An MCP session authorized like VS Code's, plus what the authorization produced.
pub struct ConnectedClient {
    pub service: RunningService<RoleClient, ClientConfig>,
    /// The client id Keycloak generated at registration.
    pub client_id: String,
    pub registration: Registration,
    /// The 401 challenge that started it all.
    pub challenge: Challenge,
    /// The issuer rmcp discovered (through the PRM) and validated.
    pub issuer: Option<String>,
    /// Query parameters of the authorization request (`state` and `code_challenge` left out).
    pub authorization_params: BTreeMap<String, String>,
    /// The loopback redirect URI used for this authorization.
    pub redirect_uri: String,
    pub login: LoginOutcome,
    /// Scopes rmcp recorded as granted.
    pub granted_scopes: Vec<String>,
    /// Claims of the access token (decoded payload; the token itself is not kept here).
    pub token_claims: Value,
    pub timings: Timings,
}

impl ConnectedClient {
    pub async fn tool_names(&self) -> Result<Vec<String>> {
        let tools = self
            .service
            .list_all_tools()
            .await
            .map_err(|e| Error::new("mcp", format!("tools/list: {e}")))?;
        Ok(tools.into_iter().map(|t| t.name.to_string()).collect())
    }

    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<CallToolResult> {
        let args = arguments
            .as_object()
            .cloned()
            .ok_or_else(|| Error::new("mcp", "tool arguments must be a JSON object"))?;
        self.service
            .call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(args))
            .await
            .map_err(|e| Error::new("mcp", format!("tools/call {name}: {e}")))
    }

    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

/// The text of a tool result's content blocks, joined with newlines.
pub fn result_text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Connect to the protected MCP server at `mcp_url` the way VS Code does, logging in as
/// `user` = (username, password) in `browser` and consenting. See the module docs.
pub async fn connect_like_vscode(
    mcp_url: &str,
    browser: &Browser,
    user: (&str, &str),
) -> Result<ConnectedClient> {
    let t_start = Instant::now();
    let mut timings = Timings::default();

    // 1. The unauthenticated request and its challenge.
    let challenge = probe_unauthenticated(mcp_url).await?;
    if challenge.status != 401 {
        return Err(Error::new(
            "probe",
            format!("expected 401 without a token, got {}", challenge.status),
        ));
    }
    let www = challenge
        .www_authenticate
        .clone()
        .ok_or_else(|| Error::new("probe", "401 without WWW-Authenticate"))?;

    // 2. Discovery by rmcp, seeded from the challenge (PRM first, then the AS metadata).
    let mut manager = AuthorizationManager::new(mcp_url)
        .await
        .map_err(|e| Error::new("discovery", e.to_string()))?;
    let resolution = manager
        .resolve_metadata_from_challenge(Some(&www))
        .await
        .map_err(|e| Error::new("discovery", e.to_string()))?;
    if resolution.source != AuthorizationMetadataSource::ProtectedResourceMetadata {
        return Err(Error::new(
            "discovery",
            format!(
                "authorization server not found through protected resource metadata (source {:?})",
                resolution.source
            ),
        ));
    }
    let metadata = resolution.metadata;
    let issuer = metadata.issuer.clone();
    let registration_endpoint = metadata.registration_endpoint.clone().ok_or_else(|| {
        Error::new(
            "discovery",
            "authorization server advertises no registration_endpoint",
        )
    })?;
    let grant_types_supported: Option<Vec<String>> = metadata
        .additional_fields
        .get("grant_types_supported")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    manager.set_metadata(metadata);
    // The scopes rmcp will request: the challenge's (authoritative), plus offline_access when
    // the server supports it (rmcp adds it for refresh tokens).
    let scopes = manager.select_scopes(None, &[]);
    timings.discovery = t_start.elapsed();

    // 3. Anonymous DCR with VS Code's body; the client will ask for exactly `scopes`.
    let t = Instant::now();
    let scope_string = scopes.join(" ");
    let body = vscode_registration_request(
        grant_types_supported.as_deref(),
        (!scope_string.is_empty()).then_some(scope_string.as_str()),
    );
    let registration = register_anonymously(&registration_endpoint, &body)
        .await
        .map_err(|e| Error::new("registration", e.to_string()))?;
    timings.registration = t.elapsed();

    // 4. Authorization request by rmcp (PKCE S256, resource, scopes), browser, loopback redirect.
    let mut callback = LoopbackCallback::bind().await?;
    let redirect_uri = callback.redirect_uri.clone();
    let mut state = OAuthState::Unauthorized(manager);
    state
        .start_authorization(
            AuthorizationRequest::new(redirect_uri.clone())
                .with_preregistered_client(registration.client_id.clone())
                .with_scopes(scopes.clone())
                .with_challenge(www.clone()),
        )
        .await
        .map_err(|e| Error::new("authorization", e.to_string()))?;
    let auth_url = state
        .get_authorization_url()
        .await
        .map_err(|e| Error::new("authorization", e.to_string()))?;
    let authorization_params: BTreeMap<String, String> = url::Url::parse(&auth_url)
        .map_err(|e| Error::new("authorization", e.to_string()))?
        .query_pairs()
        .filter(|(k, _)| k != "state" && k != "code_challenge")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();

    let (login, callback_url) = tokio::join!(
        browser.login_and_consent(&auth_url, &redirect_uri, user.0, user.1),
        callback.wait(super::LOGIN_TIMEOUT + Duration::from_secs(5)),
    );
    let login = login?;
    let callback_url = callback_url?;
    timings.browser_login = login.elapsed;
    if url::Url::parse(&login.final_url)
        .ok()
        .map(|u| u.query().map(str::to_string))
        != url::Url::parse(&callback_url)
            .ok()
            .map(|u| u.query().map(str::to_string))
    {
        return Err(Error::new(
            "authorization",
            "the browser's final URL and the loopback listener's request differ",
        ));
    }

    // 5. Token exchange by rmcp (PKCE verifier, resource, iss check), then the MCP session.
    let t = Instant::now();
    state
        .handle_callback_url(&callback_url)
        .await
        .map_err(|e| Error::new("token", e.to_string()))?;
    let manager = state
        .into_authorization_manager()
        .ok_or_else(|| Error::new("token", "not authorized after the callback"))?;
    let (_, token) = manager
        .get_credentials()
        .await
        .map_err(|e| Error::new("token", e.to_string()))?;
    // The token response is read through serde: rmcp does not re-export oauth2's traits.
    let token_claims = token
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v["access_token"].as_str().map(jwt_payload))
        .unwrap_or(Value::Null);
    let granted_scopes = manager.get_current_scopes().await;
    timings.token_exchange = t.elapsed();

    let t = Instant::now();
    let transport = StreamableHttpClientTransport::with_client(
        AuthClient::new(reqwest::Client::new(), manager),
        StreamableHttpClientTransportConfig::with_uri(mcp_url.to_string()),
    );
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new(VSCODE_CLIENT_NAME, "1.0.0-e2e"),
    );
    let service = info
        .serve(transport)
        .await
        .map_err(|e| Error::new("mcp", format!("initialize: {e}")))?;
    timings.mcp_initialize = t.elapsed();
    timings.total = t_start.elapsed();

    Ok(ConnectedClient {
        service,
        client_id: registration.client_id.clone(),
        registration,
        challenge,
        issuer,
        authorization_params,
        redirect_uri,
        login,
        granted_scopes,
        token_claims,
        timings,
    })
}

/// The decoded payload of a JWT (no signature check: only for reading claims in tests).
pub fn jwt_payload(token: &str) -> Value {
    let Some(payload) = token.split('.').nth(1) else {
        return Value::Null;
    };
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = vec![];
    let (mut buf, mut bits) = (0u32, 0);
    for c in payload.bytes().filter(|c| *c != b'=') {
        let Some(v) = alphabet.iter().position(|a| *a == c) else {
            return Value::Null;
        };
        buf = (buf << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    serde_json::from_slice(&out).unwrap_or(Value::Null)
}

/// Whether `id` looks like Keycloak's DCR client ids (random UUIDs).
pub fn is_generated_id(id: &str) -> bool {
    id.len() == 36
        && id.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The client a VS Code-like registration left in `realm`, checked through the Admin REST API:
/// generated id, VS Code's metadata, public, consent required, exactly VS Code's redirect URIs.
pub async fn assert_vscode_client_registered(
    realm: &crate::harness::Realm,
    client_id: &str,
) -> Value {
    assert!(is_generated_id(client_id), "client id {client_id:?}");
    let kc = realm
        .client(client_id)
        .await
        .unwrap_or_else(|| panic!("DCR client {client_id} not in the realm"));
    assert_eq!(kc["name"], VSCODE_CLIENT_NAME);
    assert_eq!(kc["baseUrl"], VSCODE_CLIENT_URI);
    assert_eq!(kc["publicClient"], true);
    assert_eq!(kc["consentRequired"], true);
    let mut redirects: Vec<String> =
        serde_json::from_value(kc["redirectUris"].clone()).unwrap_or_default();
    redirects.sort();
    let mut expected: Vec<String> = VSCODE_REDIRECT_URIS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(redirects, expected, "registered redirect URIs");
    kc
}

/// `http://host:port/.well-known/oauth-protected-resource/<path>` for an MCP URL.
pub fn path_metadata_url(mcp_url: &str) -> String {
    let u = url::Url::parse(mcp_url).unwrap();
    format!(
        "{}/.well-known/oauth-protected-resource{}",
        u.origin().ascii_serialization(),
        u.path()
    )
}

/// How a VS Code-like client got authorized for `url`: discovery through the challenge's
/// metadata URL to the realm's exact `issuer`; an authorization request with code + PKCE S256,
/// resource = `url` (RFC 8707) and the challenge's scopes (`mcp:tools`, `audience_scope`); and
/// Keycloak's consent page for "Use MCP tools", accepted.
pub fn assert_authorized_like_vscode(
    conn: &ConnectedClient,
    url: &str,
    issuer: &str,
    audience_scope: &str,
) {
    assert_eq!(
        conn.challenge.resource_metadata.as_deref(),
        Some(path_metadata_url(url).as_str())
    );
    assert_eq!(conn.issuer.as_deref(), Some(issuer));
    let p = &conn.authorization_params;
    assert_eq!(p.get("response_type").map(String::as_str), Some("code"));
    assert_eq!(
        p.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    assert_eq!(p.get("resource").map(String::as_str), Some(url), "RFC 8707");
    let requested: Vec<&str> = p["scope"].split(' ').collect();
    assert!(
        requested.contains(&"mcp:tools") && requested.contains(&audience_scope),
        "requested scopes {requested:?}"
    );
    assert!(conn.login.consent_shown, "no consent page was shown");
    assert!(
        conn.login
            .consent_items
            .iter()
            .any(|i| i == "Use MCP tools"),
        "consent page listed {:?}",
        conn.login.consent_items
    );
}
