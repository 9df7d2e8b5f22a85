//! Keycloak Admin REST API client: the typed `keycloak` crate underneath, plus what an operator
//! needs on top — one admin token reused until it nearly expires, request counters by method and
//! outcome, error classification into condition reasons, and a retry after a 401 (Keycloak
//! restarted and forgot our token).

mod audience;
pub mod cimd;
mod ensure;
mod gate;
mod reaping;
mod rotation;
mod shared;

pub use ensure::*;

use std::future::Future;

use futures::FutureExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keycloak::types::{
    ClientRepresentation, ClientScopeRepresentation, ComponentRepresentation,
    ProtocolMapperRepresentation, RealmRepresentation,
};
use keycloak::{DefaultResponse, KeycloakError, KeycloakTokenSupplier};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::api::ScopeType;
use crate::desired::plan::Write;
pub use crate::desired::plan::{check_scope_owner, Adopt, RealmScopeAssignments};
use crate::desired::realm::REGISTRATION_POLICY_TYPE;
use crate::metrics::Metrics;
use crate::{Error, Result};

/// How the operator authenticates to Keycloak.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum AdminCredentials {
    /// Password grant of the public `admin-cli` client.
    Password { username: String, password: String },
    /// Client-credentials grant of a service-account client.
    ClientCredentials {
        client_id: String,
        client_secret: String,
    },
}

impl std::fmt::Debug for AdminCredentials {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminCredentials::Password { username, .. } => {
                write!(
                    f,
                    "Password {{ username: {username:?}, password: <redacted> }}"
                )
            }
            AdminCredentials::ClientCredentials { client_id, .. } => write!(
                f,
                "ClientCredentials {{ client_id: {client_id:?}, client_secret: <redacted> }}"
            ),
        }
    }
}

impl AdminCredentials {
    /// The token request's form for this grant.
    fn token_form(&self) -> Vec<(&str, &str)> {
        match self {
            AdminCredentials::Password { username, password } => vec![
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", username),
                ("password", password),
            ],
            AdminCredentials::ClientCredentials {
                client_id,
                client_secret,
            } => vec![
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", client_secret),
            ],
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

struct CachedToken {
    token: String,
    refresh_after: Instant,
}

/// Obtains and caches the admin access token; shared by every request of one client.
struct TokenCache {
    http: reqwest::Client,
    base_url: String,
    auth_realm: String,
    credentials: AdminCredentials,
    current: Mutex<Option<CachedToken>>,
    metrics: Arc<Metrics>,
}

impl TokenCache {
    async fn token(&self) -> Result<String> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref() {
            if Instant::now() < c.refresh_after {
                return Ok(c.token.clone());
            }
        }
        let url = format!(
            "{}/realms/{}/protocol/openid-connect/token",
            self.base_url, self.auth_realm
        );
        let resp = self
            .http
            .post(&url)
            .form(&self.credentials.token_form())
            .send()
            .await
            .map_err(|e| unreachable_error(&self.base_url, &e))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(self.token_error(status, &text));
        }
        let body: TokenResponse = resp.json().await.map_err(|e| Error::KeycloakApi {
            operation: "admin token".into(),
            status: status.as_u16(),
            message: e.to_string(),
        })?;
        self.metrics.admin_token_refreshes.inc();
        // Refresh a little before expiry; never cache for less than a second.
        let lifetime = body.expires_in.unwrap_or(60);
        let margin = (lifetime / 5).clamp(1, 30);
        *current = Some(CachedToken {
            token: body.access_token.clone(),
            refresh_after: Instant::now() + Duration::from_secs(lifetime.saturating_sub(margin)),
        });
        Ok(body.access_token)
    }

    /// A refused token request: bad credentials and a missing auth realm are the user's to fix.
    fn token_error(&self, status: reqwest::StatusCode, text: &str) -> Error {
        let message = oauth_error_message(text);
        match status.as_u16() {
            400 | 401 => Error::InvalidAdminCredentials(format!(
                "token request to realm {} failed ({status}): {message}",
                self.auth_realm
            )),
            404 => Error::InvalidAdminCredentials(format!(
                "realm {} for the admin credentials does not exist",
                self.auth_realm
            )),
            code => Error::KeycloakApi {
                operation: "admin token".into(),
                status: code,
                message,
            },
        }
    }

    async fn invalidate(&self) {
        *self.current.lock().await = None;
    }
}

/// Keep only the OAuth `error`/`error_description`: never echo request data.
fn oauth_error_message(text: &str) -> String {
    #[derive(Deserialize)]
    struct E {
        error: Option<String>,
        error_description: Option<String>,
    }
    match serde_json::from_str::<E>(text) {
        Ok(E {
            error,
            error_description,
        }) => format!(
            "{}{}",
            error.unwrap_or_default(),
            error_description
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        Err(_) => "unexpected response".into(),
    }
}

fn unreachable_error(url: &str, e: &reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    Error::KeycloakUnreachable {
        url: url.to_string(),
        message: kind.to_string(),
    }
}

#[derive(Clone)]
struct SharedTokens(Arc<TokenCache>);

#[async_trait::async_trait]
impl KeycloakTokenSupplier for SharedTokens {
    async fn get(&self, _url: &str) -> Result<String, KeycloakError> {
        // `KeycloakAdminClient::call` fetched (or refreshed) the token just before; this hits the cache.
        self.0
            .token()
            .await
            .map_err(|e| KeycloakError::HttpFailure {
                status: 401,
                body: None,
                text: e.to_string(),
            })
    }
}

/// A connection to one Keycloak with one set of admin credentials.
/// Whose default and optional scope lists: the realm's (given to new clients) or one client's.
#[derive(Clone, Copy)]
pub enum ScopeList<'a> {
    Realm,
    Client(&'a str),
}

impl ScopeList<'_> {
    fn name(self) -> &'static str {
        match self {
            ScopeList::Realm => "realm",
            ScopeList::Client(_) => "client",
        }
    }
}

pub struct KeycloakAdminClient {
    base_url: String,
    api: keycloak::KeycloakAdmin<SharedTokens>,
    tokens: Arc<TokenCache>,
    metrics: Arc<Metrics>,
    /// `client-policies/profiles` and `client-policies/policies` are replaced whole by every
    /// PUT: one read-merge-write at a time through this client. Only a realm's owning policy
    /// writes them, and policies with equal connections share a client.
    client_policy_lists_lock: tokio::sync::Mutex<()>,
    /// The features part of the last `GET /admin/serverinfo` and when it was read (see
    /// [`KeycloakAdminClient::server_features`]).
    server_features: Mutex<Option<(Instant, Arc<serde_json::Value>)>>,
    /// Per realm: its default and optional scope lists as last read, and when (see
    /// [`KeycloakAdminClient::shared_realm_scope_assignments`]); this client's own edits of
    /// those lists are applied to the copy.
    scope_assignments: shared::PerRealm<RealmScopeAssignments>,
    /// Per realm: its client scopes as last read (see
    /// [`KeycloakAdminClient::shared_client_scope`]).
    realm_scopes: shared::PerRealm<shared::ScopesById>,
    /// Per realm: client creations apart from additions to its realm scope lists.
    realm_gates: gate::RealmGates<(String, ScopeType)>,
}

impl std::fmt::Debug for KeycloakAdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeycloakAdminClient")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl KeycloakAdminClient {
    pub fn new(
        base_url: &str,
        auth_realm: &str,
        credentials: AdminCredentials,
        ca_bundle_pem: Option<&[u8]>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca_bundle_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                Error::invalid(
                    "InvalidCABundle",
                    format!("CA bundle is not valid PEM: {e}"),
                )
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Error::invalid("InvalidCABundle", e.to_string()))?;
        let base_url = base_url.trim_end_matches('/').to_string();
        let tokens = Arc::new(TokenCache {
            http: http.clone(),
            base_url: base_url.clone(),
            auth_realm: auth_realm.to_string(),
            credentials,
            current: Mutex::new(None),
            metrics: metrics.clone(),
        });
        let api = keycloak::KeycloakAdmin::new(&base_url, SharedTokens(tokens.clone()), http);
        Ok(KeycloakAdminClient {
            base_url,
            api,
            tokens,
            metrics,
            client_policy_lists_lock: Default::default(),
            server_features: Mutex::new(None),
            scope_assignments: Default::default(),
            realm_scopes: Default::default(),
            realm_gates: Default::default(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The grant these admin credentials log in with.
    pub fn grant(&self) -> crate::api::MachineGrant {
        match self.tokens.credentials {
            AdminCredentials::Password { .. } => crate::api::MachineGrant::Password,
            AdminCredentials::ClientCredentials { .. } => {
                crate::api::MachineGrant::ClientCredentials
            }
        }
    }

    /// Runs one admin request: token first (so credential errors are classified as such), counts
    /// it, and retries once with a fresh token after a 401.
    async fn call<T, F, Fut>(&self, method: &'static str, operation: &str, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, KeycloakError>>,
    {
        let mut retried = false;
        loop {
            self.tokens.token().await?;
            let result = f().await;
            let outcome = match &result {
                Ok(_) => "success",
                Err(KeycloakError::HttpFailure { status, .. }) if *status < 500 => "client_error",
                Err(KeycloakError::HttpFailure { .. }) => "server_error",
                Err(KeycloakError::ReqwestFailure(_)) => "network_error",
            };
            self.metrics
                .record_keycloak_request(method, operation, outcome);
            match result {
                Ok(v) => return Ok(v),
                Err(KeycloakError::HttpFailure { status: 401, .. }) if !retried => {
                    retried = true;
                    self.tokens.invalidate().await;
                }
                Err(e) => return Err(self.classify(operation, e)),
            }
        }
    }

    /// A GET outside the typed API (discovery, server info), counted like the others.
    async fn counted_get(
        &self,
        operation: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let resp = req.send().await;
        let outcome = match &resp {
            Ok(r) if r.status().is_success() => "success",
            Ok(r) if r.status().is_client_error() => "client_error",
            Ok(_) => "server_error",
            Err(_) => "network_error",
        };
        self.metrics
            .record_keycloak_request("GET", operation, outcome);
        resp.map_err(|e| unreachable_error(&self.base_url, &e))
    }

    fn classify(&self, operation: &str, e: KeycloakError) -> Error {
        match e {
            KeycloakError::ReqwestFailure(e) => unreachable_error(&self.base_url, &e),
            KeycloakError::HttpFailure { status: 403, .. } => Error::InsufficientAdminPermissions {
                operation: operation.to_string(),
            },
            KeycloakError::HttpFailure { status: 401, .. } => Error::InvalidAdminCredentials(
                format!("Keycloak refused a fresh admin token for {operation}"),
            ),
            KeycloakError::HttpFailure { status, body, text } => Error::KeycloakApi {
                operation: operation.to_string(),
                status,
                message: body
                    .and_then(|b| b.message().map(|m| m.into_owned()))
                    .unwrap_or_else(|| text.chars().take(200).collect()),
            },
        }
    }

    /// `Ok(None)` on 404.
    async fn call_opt<T, F, Fut>(
        &self,
        method: &'static str,
        operation: &str,
        f: F,
    ) -> Result<Option<T>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, KeycloakError>>,
    {
        match self.call(method, operation, f).await {
            Ok(v) => Ok(Some(v)),
            Err(Error::KeycloakApi { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A request whose response body is not needed.
    async fn send<T, F, Fut>(&self, method: &'static str, operation: &str, f: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, KeycloakError>>,
    {
        self.call(method, operation, f).await.map(drop)
    }

    /// A DELETE: 404 counts as success, the object is gone either way.
    async fn delete<T, F, Fut>(&self, operation: &str, f: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, KeycloakError>>,
    {
        self.call_opt("DELETE", operation, f).await.map(drop)
    }

    /// A POST that creates an object: its id, from the `Location` header.
    async fn create<F, Fut>(&self, operation: &str, f: F) -> Result<String>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<DefaultResponse, KeycloakError>>,
    {
        let resp = self.call("POST", operation, f).await?;
        let id = resp.to_id().map(str::to_string);
        id.ok_or_else(|| Error::KeycloakApi {
            operation: operation.into(),
            status: 201,
            message: "no Location header".into(),
        })
    }

    // ---- realms ----

    pub async fn realm(&self, realm: &str) -> Result<Option<RealmRepresentation>> {
        self.call_opt("GET", "read realm", || self.api.realm_get(realm))
            .await
    }

    pub async fn create_realm(&self, realm: &str) -> Result<()> {
        let rep = RealmRepresentation {
            realm: Some(realm.into()),
            enabled: Some(true),
            ..Default::default()
        };
        self.send("POST", "create realm", || self.api.post(rep.clone()))
            .await
    }

    /// Sets one realm attribute, leaving the realm's other settings and attributes as they are
    /// (a PUT of the realm representation updates only the fields it carries).
    pub async fn set_realm_attribute(&self, realm: &str, key: &str, value: &str) -> Result<()> {
        let rep = RealmRepresentation {
            attributes: Some([(key.to_string(), value.into())].into_iter().collect()),
            ..Default::default()
        };
        self.send("PUT", "update realm attribute", || {
            self.api.realm_put(realm, rep.clone())
        })
        .await
    }

    // ---- clients ----

    pub async fn client_by_client_id(
        &self,
        realm: &str,
        client_id: &str,
    ) -> Result<Option<ClientRepresentation>> {
        let search = ClientSearch {
            client_id: Some(client_id),
            ..Default::default()
        };
        let found = self.clients(realm, "find client", search).await?;
        // The query is exact, but be strict anyway.
        Ok(found
            .into_iter()
            .find(|c| c.client_id.as_deref() == Some(client_id)))
    }

    /// One page of the realm's clients.
    async fn clients(
        &self,
        realm: &str,
        operation: &str,
        q: ClientSearch<'_>,
    ) -> Result<Vec<ClientRepresentation>> {
        let to_i32 = |n: Option<usize>| n.map(|n| n as i32);
        self.call("GET", operation, || {
            self.api.realm_clients_get(
                realm,
                q.client_id.map(str::to_string),
                to_i32(q.first),
                to_i32(q.max),
                None,
                q.search,
                None,
            )
        })
        .await
    }

    /// One write to the realm's clients; returns the id of a created one.
    pub async fn write_client(
        &self,
        realm: &str,
        write: &Write<ClientRepresentation>,
    ) -> Result<Option<String>> {
        match write {
            Write::Create(c) => {
                let create = || self.api.realm_clients_post(realm, c.clone());
                let gate = self.realm_gates.of(realm);
                gate.shared(self.create("create client", create))
                    .await
                    .map(Some)
            }
            Write::Update(id, c) => self.update_client(realm, id, c).await.map(|()| None),
            Write::Delete(id) => self.delete_client(realm, id).await.map(|()| None),
        }
    }

    pub async fn update_client(
        &self,
        realm: &str,
        id: &str,
        rep: &ClientRepresentation,
    ) -> Result<()> {
        self.send("PUT", "update client", || {
            self.api
                .realm_clients_with_client_uuid_put(realm, id, rep.clone())
        })
        .await
    }

    /// 404 counts as success: the client is gone either way.
    pub async fn delete_client(&self, realm: &str, id: &str) -> Result<()> {
        self.delete("delete client", || {
            self.api.realm_clients_with_client_uuid_delete(realm, id)
        })
        .await
    }

    pub async fn client_secret(&self, realm: &str, id: &str) -> Result<Option<String>> {
        let cred = self
            .call("GET", "read client secret", || {
                self.api
                    .realm_clients_with_client_uuid_client_secret_get(realm, id)
            })
            .await?;
        Ok(cred.value.map(|v| v.to_string()))
    }

    // ---- client scopes and mappers ----

    pub async fn client_scopes(&self, realm: &str) -> Result<Vec<ClientScopeRepresentation>> {
        let scopes = self
            .call("GET", "list client scopes", || {
                self.api.realm_client_scopes_get(realm)
            })
            .await?;
        Ok(scopes.into_iter().collect())
    }

    /// One client scope with its mappers; `None` if it does not exist.
    pub async fn client_scope(
        &self,
        realm: &str,
        id: &str,
    ) -> Result<Option<ClientScopeRepresentation>> {
        self.call_opt("GET", "read client scope", || {
            self.api
                .realm_client_scopes_with_client_scope_id_get(realm, id)
        })
        .await
    }

    /// One write to the realm's client scopes; the new scope's id for a create.
    pub async fn write_client_scope(
        &self,
        realm: &str,
        write: &Write<ClientScopeRepresentation>,
    ) -> Result<Option<String>> {
        let api = &self.api;
        match write {
            Write::Create(s) => {
                let create = || api.realm_client_scopes_post(realm, s.clone());
                self.create("create client scope", create).await.map(Some)
            }
            Write::Update(id, s) => {
                let put = || api.realm_client_scopes_with_client_scope_id_put(realm, id, s.clone());
                self.send("PUT", "update client scope", put)
                    .await
                    .map(|()| None)
            }
            Write::Delete(id) => self.delete_client_scope(realm, id).await.map(|()| None),
        }
    }

    /// One write to a client scope's protocol mappers.
    pub async fn write_scope_mapper(
        &self,
        realm: &str,
        scope: &str,
        write: &Write<ProtocolMapperRepresentation>,
    ) -> Result<()> {
        let api = &self.api;
        match write {
            Write::Create(m) => {
                let post = || {
                    api.realm_client_scopes_with_client_scope_id_protocol_mappers_models_post(
                        realm,
                        scope,
                        m.clone(),
                    )
                };
                self.send("POST", "create protocol mapper", post).await
            }
            Write::Update(id, m) => {
                let put = || {
                    api.realm_client_scopes_with_client_scope_id_protocol_mappers_models_with_id_put(
                        realm,
                        scope,
                        id,
                        m.clone(),
                    )
                };
                self.send("PUT", "update protocol mapper", put).await
            }
            Write::Delete(id) => {
                let delete = || {
                    api.realm_client_scopes_with_client_scope_id_protocol_mappers_models_with_id_delete(
                        realm, scope, id,
                    )
                };
                self.delete("delete protocol mapper", delete).await
            }
        }
    }

    pub async fn delete_client_scope(&self, realm: &str, id: &str) -> Result<()> {
        self.delete("delete client scope", || {
            self.api
                .realm_client_scopes_with_client_scope_id_delete(realm, id)
        })
        .await
    }

    /// [`KeycloakAdminClient::realm_scope_assignments`] as read within `max_age`, shared by
    /// every reconcile of the realm: the lists grow with every server, and each server needs
    /// one fact of them. Callers that come while it is read wait for that read.
    pub async fn shared_realm_scope_assignments(
        &self,
        realm: &str,
        max_age: Duration,
    ) -> Result<RealmScopeAssignments> {
        let read = self.read_realm_scope_assignments(realm);
        self.scope_assignments
            .within(realm, Some(max_age), read)
            .await
    }

    /// Ids of the realm's default and optional client scopes, read now (the shared copy
    /// refreshed with them).
    pub async fn realm_scope_assignments(&self, realm: &str) -> Result<RealmScopeAssignments> {
        let read = self.read_realm_scope_assignments(realm);
        self.scope_assignments.within(realm, None, read).await
    }

    async fn read_realm_scope_assignments(&self, realm: &str) -> Result<RealmScopeAssignments> {
        let defaults = self
            .call("GET", "list realm default scopes", || {
                self.api.realm_default_default_client_scopes_get(realm)
            })
            .await?;
        let optionals = self
            .call("GET", "list realm optional scopes", || {
                self.api.realm_default_optional_client_scopes_get(realm)
            })
            .await?;
        let ids = |l: Vec<ClientScopeRepresentation>| l.into_iter().filter_map(|s| s.id).collect();
        Ok(RealmScopeAssignments {
            default_ids: ids(defaults),
            optional_ids: ids(optionals),
        })
    }

    /// Adds the scope to the realm's default or optional scopes, batched with other additions
    /// and never while a client is created (see [`gate`]).
    pub async fn add_realm_scope_type(&self, realm: &str, id: &str, ty: ScopeType) -> Result<()> {
        let add = |(id, ty): (String, ScopeType)| async move {
            self.edit_scope_list(realm, ScopeList::Realm, ty, &id, true)
                .await
        };
        let gate = self.realm_gates.of(realm);
        gate.batched((id.to_string(), ty), add).await
    }

    /// Removes the scope from the realm's default or optional scopes; 404 counts as done.
    pub async fn remove_realm_scope_type(
        &self,
        realm: &str,
        id: &str,
        ty: ScopeType,
    ) -> Result<()> {
        self.edit_scope_list(realm, ScopeList::Realm, ty, id, false)
            .await
    }

    /// Links a client scope to one client, as a default or optional scope.
    pub async fn add_client_scope(
        &self,
        realm: &str,
        client: &str,
        id: &str,
        ty: ScopeType,
    ) -> Result<()> {
        self.edit_scope_list(realm, ScopeList::Client(client), ty, id, true)
            .await
    }

    /// Adds the scope `id` to (`add`) or removes it from one of the four lists of default and
    /// optional scopes; removing what is not there counts as done.
    async fn edit_scope_list(
        &self,
        realm: &str,
        list: ScopeList<'_>,
        ty: ScopeType,
        id: &str,
        add: bool,
    ) -> Result<()> {
        use ScopeList::{Client, Realm};
        use ScopeType::{Default, Optional};
        let api = &self.api;
        // One endpoint per line: the Admin API keeps the four lists apart.
        #[rustfmt::skip]
        let request = || -> futures::future::BoxFuture<'_, Result<DefaultResponse, KeycloakError>> {
            match (list, ty, add) {
                (Realm, Default, true) => api.realm_default_default_client_scopes_with_client_scope_id_put(realm, id).boxed(),
                (Realm, Optional, true) => api.realm_default_optional_client_scopes_with_client_scope_id_put(realm, id).boxed(),
                (Realm, Default, false) => api.realm_default_default_client_scopes_with_client_scope_id_delete(realm, id).boxed(),
                (Realm, Optional, false) => api.realm_default_optional_client_scopes_with_client_scope_id_delete(realm, id).boxed(),
                (Client(c), Default, true) => api.realm_clients_with_client_uuid_default_client_scopes_with_client_scope_id_put(realm, c, id).boxed(),
                (Client(c), Optional, true) => api.realm_clients_with_client_uuid_optional_client_scopes_with_client_scope_id_put(realm, c, id).boxed(),
                (Client(c), Default, false) => api.realm_clients_with_client_uuid_default_client_scopes_with_client_scope_id_delete(realm, c, id).boxed(),
                (Client(c), Optional, false) => api.realm_clients_with_client_uuid_optional_client_scopes_with_client_scope_id_delete(realm, c, id).boxed(),
            }
        };
        let (verb, owner) = (if add { "add" } else { "remove" }, list.name());
        let op = format!("{verb} {owner} {} scope", ty.name());
        match add {
            true => self.send("PUT", &op, request).await?,
            false => self.delete(&op, request).await?,
        }
        if let Realm = list {
            self.note_realm_scope_edit(realm, ty, id, add).await;
        }
        Ok(())
    }

    /// Applies one of our own edits of a realm scope list to the shared copy, so it stays
    /// what Keycloak has (a parallel edit by someone else shows at the next read).
    async fn note_realm_scope_edit(&self, realm: &str, ty: ScopeType, id: &str, add: bool) {
        let edit = |a: &mut RealmScopeAssignments| {
            let ids = match ty {
                ScopeType::Default => &mut a.default_ids,
                ScopeType::Optional => &mut a.optional_ids,
            };
            ids.retain(|i| i != id);
            if add {
                ids.push(id.to_string());
            }
        };
        self.scope_assignments.edit(realm, edit).await
    }

    // ---- client registration policies (components) ----

    pub async fn registration_policies(
        &self,
        realm: &str,
        realm_id: &str,
    ) -> Result<Vec<ComponentRepresentation>> {
        let found = self
            .call("GET", "list client registration policies", || {
                self.api.realm_components_get(
                    realm,
                    None,
                    Some(realm_id.to_string()),
                    None,
                    Some(REGISTRATION_POLICY_TYPE.to_string()),
                )
            })
            .await?;
        Ok(found.into_iter().collect())
    }

    /// One write to the realm's components.
    pub async fn write_component(
        &self,
        realm: &str,
        write: &Write<ComponentRepresentation>,
    ) -> Result<()> {
        let api = &self.api;
        match write {
            Write::Create(c) => {
                let post = || api.realm_components_post(realm, c.clone());
                self.send("POST", "create component", post).await
            }
            Write::Update(id, c) => {
                let put = || api.realm_components_with_id_put(realm, id, c.clone());
                self.send("PUT", "update component", put).await
            }
            Write::Delete(id) => {
                let delete = || api.realm_components_with_id_delete(realm, id);
                self.delete("delete component", delete).await
            }
        }
    }
}

/// Query of [`KeycloakAdminClient::clients`]: an exact `clientId`, or an infix `search`, paged.
#[derive(Default, Clone, Copy)]
struct ClientSearch<'a> {
    client_id: Option<&'a str>,
    search: Option<bool>,
    first: Option<usize>,
    max: Option<usize>,
}
