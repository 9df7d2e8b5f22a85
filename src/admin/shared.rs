//! Realm-wide reads shared by every server's check of a realm within a window: each check
//! needs one fact of lists that grow with every server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keycloak::types::ClientScopeRepresentation;

use super::KeycloakAdminClient;
use crate::Result;

/// A realm's client scopes (with their mappers) by id, and when they were read.
pub(super) type ScopesById = (Instant, Arc<HashMap<String, ClientScopeRepresentation>>);

impl KeycloakAdminClient {
    /// Client scope `id` as the realm's scope list showed it within `max_age` (`None`: not in
    /// it). One list read serves every server of the realm, where each would read its own
    /// scope. Only for confirming that nothing changed: callers read a copy that differs
    /// again before planning a write from it. Callers that come while it is read wait.
    pub async fn shared_client_scope(
        &self,
        realm: &str,
        id: &str,
        max_age: Duration,
    ) -> Result<Option<ClientScopeRepresentation>> {
        let mut cache = self.realm_scopes.lock().await;
        if let Some((at, scopes)) = cache.get(realm) {
            if at.elapsed() < max_age {
                return Ok(scopes.get(id).cloned());
            }
        }
        // Realms no check asked for in a while (deleted, handed over) are not kept.
        cache.retain(|_, (at, _)| at.elapsed() < max_age * 4);
        let scopes = self.client_scopes(realm).await?;
        let by_id: HashMap<_, _> = scopes
            .into_iter()
            .filter_map(|s| Some((s.id.clone()?, s)))
            .collect();
        let found = by_id.get(id).cloned();
        cache.insert(realm.to_string(), (Instant::now(), Arc::new(by_id)));
        Ok(found)
    }
}
