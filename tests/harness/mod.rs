//! Operator-level helpers for integration tests: CRDs installed on the test bed, an in-process
//! operator per test namespace, the seed's resources, and Keycloak token helpers.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use mcp_keycloak_operator::api::*;
use mcp_keycloak_operator::controller::{self, Context, OperatorConfig};
use mcp_keycloak_operator::metrics::Metrics;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::support::{self, wait_for};

pub const WAIT: Duration = Duration::from_secs(90);

static CRDS: OnceCell<()> = OnceCell::const_new();

/// Applies the generated CRDs (server-side apply, idempotent across test binaries).
pub async fn install_crds(client: &Client) {
    CRDS.get_or_init(|| async {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for (_, yaml) in mcp_keycloak_operator::crdgen::manifests() {
            let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).expect("CRD yaml");
            let name = crd.metadata.name.clone().unwrap();
            api.patch(
                &name,
                &PatchParams::apply("mcp-tests").force(),
                &Patch::Apply(&crd),
            )
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
            wait_for(&format!("CRD {name} established"), WAIT, || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let c = api.get(&name).await.ok()?;
                    let established = c
                        .status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    established.then_some(())
                }
            })
            .await;
        }
    })
    .await;
}

/// An operator running in this process, watching one namespace. Stopped on drop.
pub struct Operator {
    pub ctx: Arc<Context>,
    handle: tokio::task::JoinHandle<()>,
}

impl Operator {
    pub async fn start(client: &Client, namespace: &str) -> Operator {
        Self::start_with(client, namespace, Duration::from_secs(3)).await
    }

    pub async fn start_with(client: &Client, namespace: &str, resync: Duration) -> Operator {
        install_crds(client).await;
        let ctx = Context::new(
            client.clone(),
            Arc::new(Metrics::default()),
            OperatorConfig {
                resync,
                operator_image: "mcp-keycloak-operator:test".into(),
                ..Default::default()
            },
        );
        let handle = tokio::spawn(controller::run(ctx.clone(), Some(namespace.to_string())));
        Operator { ctx, handle }
    }

    pub fn keycloak_writes(&self) -> u64 {
        self.ctx.metrics.keycloak_writes()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The admin credentials Secret for the test bed's Keycloak.
pub async fn admin_secret(client: &Client, ns: &str, name: &str) {
    let tb = support::testbed().await;
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"username": tb.admin_user, "password": tb.admin_password, "url": tb.keycloak_url}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create admin secret");
}

/// The seed's policy: realm, `mcp:tools` as realm default, VS Code-ready anonymous DCR.
pub fn seed_policy(name: &str, realm: &str, kc: &str) -> McpAuthPolicy {
    serde_json::from_value(json!({
        "apiVersion": "mcpauth.dev/v1alpha1",
        "kind": "McpAuthPolicy",
        "metadata": {"name": name},
        "spec": {
            "keycloak": {
                "url": kc,
                "realm": realm,
                "createRealm": true,
                "adminCredentialsSecretRef": {"name": "keycloak-admin"}
            },
            "scopes": [{"name": "mcp:tools", "consentText": "Use MCP tools", "type": "Default"}],
            "dynamicClientRegistration": {
                "trustedHosts": ["localhost", "127.0.0.1", "vscode.dev"],
                "trustedClients": ["VSCode"],
                "maxClients": 100
            }
        }
    }))
    .unwrap()
}

pub fn server(name: &str, policy: &str, url: &str) -> McpServer {
    serde_json::from_value(json!({
        "apiVersion": "mcpauth.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": {"name": name},
        "spec": {
            "image": "ghcr.io/example/mcp-server:1",
            "policyRef": {"name": policy},
            "url": url
        }
    }))
    .unwrap()
}

pub async fn create<K>(client: &Client, ns: &str, obj: &K) -> K
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), obj)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", K::kind(&())))
}

fn condition(status: &Value, type_: &str) -> Option<(String, String, String)> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// Waits until condition `type_` has `status`; returns (reason, message).
pub async fn wait_condition<K>(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
) -> (String, String)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut last = Value::Null;
    let what = format!("{} {ns}/{name} condition {type_}={status}", K::kind(&()));
    let r = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(obj) = api.get(name).await {
                let v = serde_json::to_value(&obj).unwrap();
                last = v["status"].clone();
                if let Some((s, reason, message)) = condition(&last, type_) {
                    if s == status {
                        return (reason, message);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("timed out waiting for {what}; last status: {last}"))
}

/// Waits for condition `type_` = False with exactly `reason`; returns the message.
pub async fn wait_reason<K>(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    reason: &str,
) -> String
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut last = Value::Null;
    let r = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(obj) = api.get(name).await {
                last = serde_json::to_value(&obj).unwrap()["status"].clone();
                if let Some((s, r, m)) = condition(&last, type_) {
                    if s == "False" && r == reason {
                        return m;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    r.unwrap_or_else(|_| {
        panic!("timed out waiting for {type_} reason {reason} on {ns}/{name}; last status: {last}")
    })
}

/// Keycloak's view of one realm, through the test's own admin client (not the operator's).
pub struct Realm {
    pub kc: support::KcAdmin,
    pub name: String,
}

impl Realm {
    pub async fn new(name: &str) -> Realm {
        let tb = support::testbed().await;
        Realm {
            kc: support::keycloak_admin(tb).await,
            name: name.to_string(),
        }
    }

    pub fn path(&self, p: &str) -> String {
        format!("/admin/realms/{}{}", self.name, p)
    }

    pub async fn get(&self, p: &str) -> Value {
        let (s, v) = self.kc.get(&self.path(p)).await;
        assert!(s.is_success(), "GET {p}: {s} {v}");
        v
    }

    pub async fn client(&self, client_id: &str) -> Option<Value> {
        let v = self
            .get(&format!("/clients?clientId={}", urlencode(client_id)))
            .await;
        v.as_array()?
            .iter()
            .find(|c| c["clientId"] == client_id)
            .cloned()
    }

    pub async fn scope(&self, name: &str) -> Option<Value> {
        let v = self.get("/client-scopes").await;
        v.as_array()?.iter().find(|c| c["name"] == name).cloned()
    }

    pub async fn anonymous_components(&self, provider: &str) -> Vec<Value> {
        let realm = self.get("").await;
        let id = realm["id"].as_str().unwrap().to_string();
        let v = self
            .get(&format!(
                "/components?parent={id}&type=org.keycloak.services.clientregistration.policy.ClientRegistrationPolicy"
            ))
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .filter(|c| c["providerId"] == provider && c["subType"] == "anonymous")
            .cloned()
            .collect()
    }

    /// A public test client (authorization code) and a user, to mint tokens without a browser.
    /// Created after the servers, so it inherits their (realm optional) audience scopes.
    pub async fn token_minter(&self) -> (String, String, String) {
        let client_id = "test-minter".to_string();
        let (s, v) = self
            .kc
            .post(
                &self.path("/clients"),
                &json!({"clientId": client_id, "publicClient": true, "standardFlowEnabled": true,
                        "directAccessGrantsEnabled": false, "redirectUris": [MINTER_REDIRECT]}),
            )
            .await;
        assert!(
            s.is_success() || s.as_u16() == 409,
            "create test client: {s} {v}"
        );
        let user = "alice".to_string();
        let password = "alice-password-1".to_string();
        let (s, v) = self
            .kc
            .post(
                &self.path("/users"),
                &json!({"username": user, "enabled": true, "email": "alice@example.com", "emailVerified": true,
                        "firstName": "Alice", "lastName": "Example",
                        "credentials": [{"type": "password", "value": password, "temporary": false}]}),
            )
            .await;
        assert!(s.is_success() || s.as_u16() == 409, "create user: {s} {v}");
        (client_id, user, password)
    }

    /// A token for the minter client with the given scope string, by the authorization-code
    /// flow through Keycloak's own login form (the realm refuses the password grant).
    pub async fn mint_token(&self, scope: &str) -> Value {
        let (client_id, user, password) = self.token_minter().await;
        let base = format!(
            "{}/realms/{}/protocol/openid-connect",
            self.kc.base_url, self.name
        );
        let code = login_for_code(&base, &client_id, &user, &password, scope).await;
        let resp = reqwest::Client::new()
            .post(format!("{base}/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("client_id", client_id.as_str()),
                ("code", code.as_str()),
                ("redirect_uri", MINTER_REDIRECT),
            ])
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "token request: {status} {v}");
        v
    }

    /// RFC 7662 introspection with a confidential client's credentials.
    pub async fn introspect(&self, client_id: &str, secret: &str, token: &str) -> (u16, Value) {
        let url = format!(
            "{}/realms/{}/protocol/openid-connect/token/introspect",
            self.kc.base_url, self.name
        );
        let resp = reqwest::Client::new()
            .post(url)
            .basic_auth(client_id, Some(secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self) {
        let _ = self
            .kc
            .delete(&format!("/admin/realms/{}", self.name))
            .await;
    }
}

/// Redirect URI of the minter client; nothing listens there (the code is read off the redirect).
pub const MINTER_REDIRECT: &str = "http://127.0.0.1:9/callback";

/// Logs `user` in on Keycloak's login page (GET the form, POST the credentials with the
/// session cookies) and returns the authorization code from the redirect.
pub async fn login_for_code(
    base: &str,
    client_id: &str,
    user: &str,
    password: &str,
    scope: &str,
) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let auth = format!(
        "{base}/auth?response_type=code&client_id={}&redirect_uri={}&scope={}",
        urlencode(client_id),
        urlencode(MINTER_REDIRECT),
        urlencode(scope)
    );
    let page = http.get(&auth).send().await.unwrap();
    let cookies: Vec<String> = page
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|c| c.to_str().ok()?.split(';').next().map(str::to_string))
        .collect();
    let html = page.text().await.unwrap();
    let action = html
        .split("action=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no login form on {auth}: {html}"))
        .replace("&amp;", "&");
    let resp = http
        .post(&action)
        .header(reqwest::header::COOKIE, cookies.join("; "))
        .form(&[
            ("username", user),
            ("password", password),
            ("credentialId", ""),
        ])
        .send()
        .await
        .unwrap();
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .unwrap_or_else(|| panic!("login answered {} without a redirect", resp.status()))
        .to_string();
    let url = url::Url::parse(&location).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| panic!("no code in the redirect {location}"))
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Decoded JWT payload (no signature check: the test only reads claims).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64_url_decode(payload);
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = vec![];
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = alphabet.iter().position(|a| *a == c).expect("base64url") as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    out
}

/// `aud` as a list (Keycloak writes a string when there is one audience).
pub fn audiences(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    }
}

pub async fn secret_value(client: &Client, ns: &str, name: &str, key: &str) -> Option<String> {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    s.data?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).to_string())
}

/// Deletes the namespace while the operator still runs, and waits until its finalizers have
/// let every McpServer and McpAuthPolicy go (so no namespace is left stuck terminating).
pub async fn teardown(client: &Client, ns: &str, op: Operator) {
    support::delete_namespace(client, ns).await;
    let servers: Api<McpServer> = Api::namespaced(client.clone(), ns);
    let policies: Api<McpAuthPolicy> = Api::namespaced(client.clone(), ns);
    support::wait_for(
        &format!("custom resources of {ns} finalized"),
        WAIT,
        || async {
            let s = servers.list(&Default::default()).await.ok()?.items.len();
            let p = policies.list(&Default::default()).await.ok()?.items.len();
            (s + p == 0).then_some(())
        },
    )
    .await;
    drop(op);
}

/// The gateway's config exactly as the `gateway` container of the reconciled Deployment would
/// get it (env and Secret references resolved by the local pod runner), for an in-process
/// gateway in front of `upstream` on loopback ephemeral ports.
pub async fn gateway_config_from_deployment(
    client: &Client,
    ns: &str,
    name: &str,
    upstream: &str,
) -> mcp_auth_gateway::GatewayConfig {
    use k8s_openapi::api::apps::v1::Deployment;
    use localpod::{plan_pod, ImageMap, LocalCommand};
    use mcp_auth_gateway::{ClientSecret, GatewayConfig};

    let dep = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("the server's Deployment");
    let secrets = Api::<Secret>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("secrets")
        .items;
    // Only the gateway container's resolved env is used (nothing is spawned): both images map to
    // placeholders (`env!(CARGO_BIN_EXE_…)` does not exist for the demo example that includes this).
    let cmd = |program: &str| LocalCommand {
        program: program.into(),
        fixed_args: vec![],
        default_args: vec![],
    };
    let images = ImageMap::default()
        .with("mcp-keycloak-operator:test", cmd("mcp-keycloak-operator"))
        .with("ghcr.io/example/mcp-server", cmd("/bin/false"));
    let plans = plan_pod(&dep, &secrets, &[], &images).expect("plan the pod");
    let gw = plans
        .iter()
        .find(|p| p.container == "gateway")
        .expect("a gateway container (Proxy mode)");
    assert_eq!(gw.args, vec!["proxy"]);
    let env = &gw.env;
    let mut cfg = GatewayConfig::new(
        env["MCP_SERVER_URL"].clone(),
        env["MCP_AUTH_ISSUER"].clone(),
        env["MCP_AUTH_INTROSPECTION_ENDPOINT"].clone(),
        env["OAUTH_CLIENT_ID"].clone(),
        ClientSecret::new(env["OAUTH_CLIENT_SECRET"].clone()),
    );
    cfg.required_scopes = env["MCP_REQUIRED_SCOPES"].clone();
    // Set by the operator only when the McpServer asks for them.
    use mcp_auth_gateway::contract::{ALLOWED_ORIGINS_ENV, SERVICE_ACCOUNT_CLIENTS_ENV};
    if let Some(clients) = env.get(SERVICE_ACCOUNT_CLIENTS_ENV) {
        cfg.service_account_clients = clients.clone();
    }
    if let Some(origins) = env.get(ALLOWED_ORIGINS_ENV) {
        cfg.allowed_origins = origins.clone();
    }
    cfg.upstream = upstream.to_string();
    cfg
}
