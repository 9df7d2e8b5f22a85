//! Operator-level helpers for integration tests: CRDs installed on the test bed, an in-process
//! operator per test namespace, the seed's resources, and Keycloak token helpers.

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

mod scenario;
pub use scenario::*;

/// `Deref` from a test's world `$ty` to the [`Scenario`] in its field `$field`.
macro_rules! deref_scenario {
    ($ty:ty, $field:ident) => {
        impl std::ops::Deref for $ty {
            type Target = crate::harness::Scenario;
            fn deref(&self) -> &Self::Target {
                &self.$field
            }
        }
    };
}
pub(crate) use deref_scenario;

pub const WAIT: Duration = Duration::from_secs(90);

/// Held while a local pod with a gateway container (fixed ports 8080 and 9090) runs, by every
/// test module of this binary that starts one (walkthrough, sdk_clients).
pub static GATEWAY_PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
            support::wait_crd_established(client, &name, WAIT).await;
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
    let login = support::KeycloakLogin::of(tb);
    admin_secret_for(client, ns, name, &login).await
}

/// The admin credentials Secret for any Keycloak.
pub async fn admin_secret_for(client: &Client, ns: &str, name: &str, kc: &support::KeycloakLogin) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"username": kc.user, "password": kc.password, "url": kc.url}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create admin secret");
}

/// A custom resource of kind `K` called `name` with `spec`.
pub fn resource<K: Kind>(name: &str, spec: Value) -> K {
    let doc = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()),
                     "metadata": {"name": name}, "spec": spec});
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{} {name}: {e}", K::kind(&())))
}

/// The seed's policy: realm, `mcp:tools` as realm default, VS Code-ready anonymous DCR.
pub fn seed_policy(name: &str, realm: &str, kc: &str) -> McpAuthPolicy {
    resource(
        name,
        json!({
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
        }),
    )
}

pub fn server(name: &str, policy: &str, url: &str) -> McpServer {
    let spec =
        json!({"image": "ghcr.io/example/mcp-server:1", "policyRef": {"name": policy}, "url": url});
    resource(name, spec)
}

pub async fn create<K: Kind>(client: &Client, ns: &str, obj: &K) -> K {
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), obj)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", K::kind(&())))
}

/// Waits until `f` holds, for up to [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    support::wait_until(what, WAIT, f).await
}

/// Deletes a namespaced object and waits until it is gone (its finalizers have run).
pub async fn delete_and_wait<K: Kind>(client: &Client, ns: &str, name: &str) {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.delete(name, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("delete {} {ns}/{name}: {e}", K::kind(&())));
    let what = format!("{} {ns}/{name} gone", K::kind(&()));
    wait_for(&what, WAIT, || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await
}

/// A namespaced custom resource or built-in kind the helpers below can read.
pub trait Kind:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::Serialize
    + DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Kind for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + DeserializeOwned
        + std::fmt::Debug
{
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

/// Polls `ns/name` until `done` accepts condition `type_` as (status, reason, message); the
/// timeout message shows the last status seen.
async fn wait_on_condition<K: Kind, T>(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    what: &str,
    done: impl Fn(String, String, String) -> Option<T>,
) -> T {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let what = format!("{} {ns}/{name} {what}", K::kind(&()));
    support::poll(&what, WAIT, || async {
        let obj = api
            .get(name)
            .await
            .map_err(|e| Value::String(e.to_string()))?;
        let status = serde_json::to_value(&obj).unwrap()["status"].clone();
        condition(&status, type_)
            .and_then(|(s, r, m)| done(s, r, m))
            .ok_or(status)
    })
    .await
}

/// Waits until condition `type_` has `status`; returns (reason, message).
pub async fn wait_condition<K: Kind>(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
) -> (String, String) {
    let what = format!("condition {type_}={status}");
    wait_on_condition::<K, _>(client, ns, name, type_, &what, |s, r, m| {
        (s == status).then_some((r, m))
    })
    .await
}

/// Waits for condition `type_` = False with exactly `reason`; returns the message.
pub async fn wait_reason<K: Kind>(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    reason: &str,
) -> String {
    let what = format!("condition {type_} reason {reason}");
    wait_on_condition::<K, _>(client, ns, name, type_, &what, |s, r, m| {
        (s == "False" && r == reason).then_some(m)
    })
    .await
}

/// Keycloak's view of one realm, through the test's own admin client (not the operator's).
pub struct Realm {
    pub kc: support::KcAdmin,
    pub name: String,
}

impl Realm {
    pub async fn new(name: &str) -> Realm {
        let tb = support::testbed().await;
        Self::on(&support::KeycloakLogin::of(tb), name)
    }

    pub fn on(kc: &support::KeycloakLogin, name: &str) -> Realm {
        Realm {
            kc: kc.admin(),
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
        let (user, password) = ("alice", "alice-password-1");
        let (s, v) = self
            .kc
            .post(&self.path("/users"), &user_rep(user, password))
            .await;
        assert!(s.is_success() || s.as_u16() == 409, "create user: {s} {v}");
        (client_id, user.to_string(), password.to_string())
    }

    /// A token for the minter client with the given scope string, by the authorization-code
    /// flow through Keycloak's own login form (the realm refuses the password grant).
    pub async fn mint_token(&self, scope: &str) -> Value {
        let (status, v) = self.mint_token_for(scope, None).await;
        assert_eq!(status, 200, "token request: {v}");
        v
    }

    /// [`mint_token`] with RFC 8707 `resource` (on the authorization and the token request, as
    /// MCP clients send it) when given; returns the token endpoint's status and answer.
    pub async fn mint_token_for(&self, scope: &str, resource: Option<&str>) -> (u16, Value) {
        let (client_id, user, password) = self.token_minter().await;
        let base = format!(
            "{}/realms/{}/protocol/openid-connect",
            self.kc.base_url, self.name
        );
        code_flow_token(&base, &client_id, (&user, &password), scope, resource).await
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

    /// A user with everything Keycloak's default "update profile" required action would ask
    /// for, so a browser login goes straight to consent; returns the user's id.
    pub async fn create_user(&self, user: &str, password: &str) -> String {
        let (s, v) = self
            .kc
            .post(&self.path("/users"), &user_rep(user, password))
            .await;
        assert!(s.is_success(), "create user: {s} {v}");
        let users = self
            .get(&format!("/users?username={user}&exact=true"))
            .await;
        users[0]["id"].as_str().expect("user id").to_string()
    }

    /// Replaces the client with Keycloak id `rep.id` by `rep`.
    pub async fn update_client(&self, rep: &Value) {
        let id = rep["id"].as_str().expect("client id");
        let (s, v) = self
            .kc
            .put(&self.path(&format!("/clients/{id}")), rep)
            .await;
        assert!(s.is_success(), "update client {id}: {s} {v}");
    }

    /// Ends every session of `username` (Keycloak's admin "log out" of a user).
    pub async fn logout_user(&self, username: &str) {
        let users = self.get(&format!("/users?username={username}")).await;
        let uid = users[0]["id"].as_str().expect("user id");
        let (st, v) = self
            .kc
            .post(&self.path(&format!("/users/{uid}/logout")), &json!({}))
            .await;
        assert!(st.is_success(), "logout {username}: {st} {v}");
    }

    pub async fn delete(&self) {
        let _ = self
            .kc
            .delete(&format!("/admin/realms/{}", self.name))
            .await;
    }
}

/// `user`@example.com, first name `User`, last name Example, a permanent password.
fn user_rep(user: &str, password: &str) -> Value {
    let mut first = user.to_string();
    first[..1].make_ascii_uppercase();
    json!({"username": user, "enabled": true, "emailVerified": true,
           "email": format!("{user}@example.com"), "firstName": first, "lastName": "Example",
           "credentials": [{"type": "password", "value": password, "temporary": false}]})
}

/// Redirect URI of the minter client; nothing listens there (the code is read off the redirect).
pub const MINTER_REDIRECT: &str = "http://127.0.0.1:9/callback";

/// The authorization-code flow of `client_id` (public, redirect [`MINTER_REDIRECT`]) for a
/// user, with RFC 8707 `resource` when given: the token endpoint's status and answer.
pub async fn code_flow_token(
    base: &str,
    client_id: &str,
    (user, password): (&str, &str),
    scope: &str,
    resource: Option<&str>,
) -> (u16, Value) {
    let code = login_for_code_with(base, client_id, user, password, scope, resource).await;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("client_id", client_id),
        ("code", code.as_str()),
        ("redirect_uri", MINTER_REDIRECT),
    ];
    form.extend(resource.map(|r| ("resource", r)));
    let resp = reqwest::Client::new()
        .post(format!("{base}/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Logs `user` in on Keycloak's login page (GET the form, POST the credentials with the
/// session cookies) and returns the authorization code from the redirect.
pub async fn login_for_code(
    base: &str,
    client_id: &str,
    user: &str,
    password: &str,
    scope: &str,
) -> String {
    login_for_code_with(base, client_id, user, password, scope, None).await
}

/// [`login_for_code`] with RFC 8707 `resource` on the authorization request when given.
pub async fn login_for_code_with(
    base: &str,
    client_id: &str,
    user: &str,
    password: &str,
    scope: &str,
    resource: Option<&str>,
) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resource = resource.map(|r| format!("&resource={}", urlencode(r)));
    let resource = resource.unwrap_or_default();
    let auth = format!(
        "{base}/auth?response_type=code&client_id={}&redirect_uri={}&scope={}{resource}",
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
    delete_namespace_and_wait_finalized(client, ns, WAIT).await;
    drop(op);
}

/// Deletes namespace `ns` and waits (up to `timeout`) until its McpServers and McpAuthPolicies
/// are gone, i.e. the operator's Keycloak cleanup has run for all of them.
pub async fn delete_namespace_and_wait_finalized(client: &Client, ns: &str, timeout: Duration) {
    support::delete_namespace(client, ns).await;
    let servers: Api<McpServer> = Api::namespaced(client.clone(), ns);
    let policies: Api<McpAuthPolicy> = Api::namespaced(client.clone(), ns);
    let what = format!("custom resources of {ns} finalized");
    support::poll(&what, timeout, || async {
        let s = servers
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let p = policies
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        match s.items.len() + p.items.len() {
            0 => Ok(()),
            left => Err(format!("{left} left")),
        }
    })
    .await;
}

/// The gateway serving on `listener` in this process, until [`ServedGateway::stop`].
pub struct ServedGateway {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), mcp_auth_gateway::GatewayError>>,
}

impl ServedGateway {
    pub fn start(cfg: mcp_auth_gateway::GatewayConfig, listener: tokio::net::TcpListener) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(mcp_auth_gateway::serve(cfg, listener, async move {
            let _ = stopped.await;
        }));
        ServedGateway { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
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
    use mcp_auth_gateway::GatewayConfig;

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
    let mut cfg = GatewayConfig::from_env_vars(&gw.env).expect("the pod's gateway env");
    cfg.upstream = upstream.to_string();
    cfg
}
