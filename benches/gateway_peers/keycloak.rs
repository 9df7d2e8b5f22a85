//! The bench's own realm on the test bed's Keycloak, made directly through the admin API (no
//! operator): the `mcp:tools` scope with the audience mappers the operator would make, an
//! introspection client for our gateway, a machine client whose client-credentials tokens carry
//! that scope, and one without it (its tokens must be refused by both proxies).

use serde_json::{json, Value};

use super::support::KcAdmin;

/// The introspection client of our gateway (the operator's naming: `mcp.{namespace}.{name}`).
pub const INTROSPECTION_CLIENT: &str = "mcp.bench.peers";
/// The machine client whose tokens both proxies must accept.
pub const CALLER: &str = "bench-caller";
/// A machine client without the `mcp:tools` scope: no audience, no scope.
pub const OUTSIDER: &str = "bench-outsider";
pub const SCOPE: &str = "mcp:tools";

pub struct BenchRealm {
    pub kc: KcAdmin,
    pub name: String,
    /// The audience every token must carry (our gateway's `--resource-url`).
    pub resource: String,
    pub introspection_secret: String,
    caller_secret: String,
    outsider_secret: String,
    http: reqwest::Client,
}

impl BenchRealm {
    /// Creates the realm (access tokens live an hour, so the pool outlives the run) and its
    /// clients and scope.
    pub async fn create(kc: KcAdmin, name: &str, resource: &str) -> BenchRealm {
        let secret = mcp_keycloak_operator::admin::generate_secret;
        let realm = BenchRealm {
            kc,
            name: name.to_string(),
            resource: resource.to_string(),
            introspection_secret: secret(),
            caller_secret: secret(),
            outsider_secret: secret(),
            http: reqwest::Client::new(),
        };
        realm
            .admin_ok(
                "POST",
                "/admin/realms",
                json!({"realm": name, "enabled": true, "accessTokenLifespan": 3600}),
            )
            .await;
        let scope_id = realm.audience_scope().await;
        realm
            .confidential(INTROSPECTION_CLIENT, &realm.introspection_secret, false)
            .await;
        let caller = realm.confidential(CALLER, &realm.caller_secret, true).await;
        realm
            .confidential(OUTSIDER, &realm.outsider_secret, true)
            .await;
        let path = format!("/clients/{caller}/default-client-scopes/{scope_id}");
        realm.admin_ok("PUT", &realm.path(&path), json!({})).await;
        realm
    }

    fn path(&self, p: &str) -> String {
        format!("/admin/realms/{}{}", self.name, p)
    }

    async fn admin_ok(&self, method: &str, path: &str, body: Value) -> Value {
        let method: reqwest::Method = method.parse().unwrap();
        let (status, v) = self.kc.request(method.clone(), path, Some(&body)).await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    async fn get(&self, p: &str) -> Value {
        let (status, v) = self.kc.get(&self.path(p)).await;
        assert!(status.is_success(), "GET {p}: {status} {v}");
        v
    }

    /// `mcp:tools` with the operator's two audience mappers (the resource URL, and the
    /// introspection client); returns its id.
    async fn audience_scope(&self) -> String {
        let scope = json!({"name": SCOPE, "protocol": "openid-connect",
                           "attributes": {"include.in.token.scope": "true"}});
        self.admin_ok("POST", &self.path("/client-scopes"), scope)
            .await;
        let scopes = self.get("/client-scopes").await;
        let id = scopes
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == SCOPE)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        for (mapper, key, value) in [
            (
                "mcp-audience",
                "included.custom.audience",
                &self.resource[..],
            ),
            (
                "mcp-introspection-audience",
                "included.client.audience",
                INTROSPECTION_CLIENT,
            ),
        ] {
            let rep = json!({"name": mapper, "protocol": "openid-connect",
                             "protocolMapper": "oidc-audience-mapper",
                             "config": {key: value, "access.token.claim": "true",
                                        "introspection.token.claim": "true", "id.token.claim": "false"}});
            let path = self.path(&format!("/client-scopes/{id}/protocol-mappers/models"));
            self.admin_ok("POST", &path, rep).await;
        }
        id
    }

    /// A confidential client with `secret`, client credentials on or off; returns its id.
    async fn confidential(&self, client_id: &str, secret: &str, machine: bool) -> String {
        let rep = json!({"clientId": client_id, "protocol": "openid-connect", "enabled": true,
                         "publicClient": false, "secret": secret, "standardFlowEnabled": false,
                         "directAccessGrantsEnabled": false, "serviceAccountsEnabled": machine});
        self.admin_ok("POST", &self.path("/clients"), rep).await;
        let found = self.get(&format!("/clients?clientId={client_id}")).await;
        found[0]["id"].as_str().expect("client id").to_string()
    }

    pub fn issuer(&self) -> String {
        format!("{}/realms/{}", self.kc.base_url, self.name)
    }

    pub fn introspection_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/token/introspect", self.issuer())
    }

    /// `n` fresh access tokens of the caller (client credentials), each checked to carry the
    /// audience and the scope.
    pub async fn caller_tokens(&self, n: usize) -> Vec<String> {
        let mut tokens = Vec::with_capacity(n);
        for _ in 0..n {
            let token = self.token(CALLER, &self.caller_secret).await;
            let claims = jwt_claims(&token);
            assert!(
                claims["aud"].to_string().contains(&self.resource),
                "no audience {} in {claims}",
                self.resource
            );
            assert!(claims["scope"].as_str().unwrap_or("").contains(SCOPE));
            tokens.push(token);
        }
        tokens
    }

    /// A token of the client without `mcp:tools`.
    pub async fn outsider_token(&self) -> String {
        self.token(OUTSIDER, &self.outsider_secret).await
    }

    async fn token(&self, client_id: &str, secret: &str) -> String {
        let url = format!("{}/protocol/openid-connect/token", self.issuer());
        let resp = self
            .http
            .post(&url)
            .basic_auth(client_id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("token request");
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "token for {client_id}: {status} {body}"
        );
        body["access_token"].as_str().unwrap().to_string()
    }

    pub async fn delete(&self) {
        let _ = self
            .kc
            .delete(&format!("/admin/realms/{}", self.name))
            .await;
    }
}

/// The payload of a JWT (unverified: the bench only checks what it asked Keycloak for).
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap_or("");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}
