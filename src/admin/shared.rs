//! Realm-wide reads shared by every server's check of a realm within a window: each check
//! needs one fact of lists that grow with every server.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keycloak::types::ClientScopeRepresentation;
use tokio::sync::Mutex;

use super::KeycloakAdminClient;
use crate::Result;

/// Per realm: a value read from Keycloak, and when.
pub(super) struct PerRealm<T>(Mutex<HashMap<String, (Instant, T)>>);

impl<T> Default for PerRealm<T> {
    fn default() -> Self {
        PerRealm(Mutex::default())
    }
}

impl<T: Clone> PerRealm<T> {
    /// The copy read within `max_age`, else what `read` returns, kept as the new copy
    /// (`max_age` `None`: read now). Callers that come while it is read wait for that read.
    pub async fn within(
        &self,
        realm: &str,
        max_age: Option<Duration>,
        read: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let mut copies = self.0.lock().await;
        if let (Some((at, copy)), Some(max_age)) = (copies.get(realm), max_age) {
            if at.elapsed() < max_age {
                return Ok(copy.clone());
            }
            // Realms no check asked for in a while (deleted, handed over) are not kept.
            copies.retain(|_, (at, _)| at.elapsed() < max_age * 4);
        }
        let value = read.await?;
        copies.insert(realm.to_string(), (Instant::now(), value.clone()));
        Ok(value)
    }

    /// Applies `edit` to the realm's copy, if there is one.
    pub async fn edit(&self, realm: &str, edit: impl FnOnce(&mut T)) {
        if let Some((_, copy)) = self.0.lock().await.get_mut(realm) {
            edit(copy);
        }
    }
}

/// A realm's client scopes (with their mappers) by id.
pub(super) type ScopesById = Arc<HashMap<String, ClientScopeRepresentation>>;

impl KeycloakAdminClient {
    /// Client scope `id` as the realm's scope list showed it within `max_age` (`None`: not in
    /// it). One list read serves every server of the realm, where each would read its own
    /// scope. Only for confirming that nothing changed: callers read a copy that differs
    /// again before planning a write from it.
    pub async fn shared_client_scope(
        &self,
        realm: &str,
        id: &str,
        max_age: Duration,
    ) -> Result<Option<ClientScopeRepresentation>> {
        let read = async {
            let scopes = self.client_scopes(realm).await?;
            let by_id = scopes.into_iter().filter_map(|s| Some((s.id.clone()?, s)));
            Ok(Arc::new(by_id.collect()))
        };
        let scopes = self.realm_scopes.within(realm, Some(max_age), read).await?;
        Ok(scopes.get(id).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_copy_serves_within_its_window_and_is_read_again_after() {
        let copies = PerRealm::<u32>::default();
        let read = |v: u32| async move { Ok(v) };
        let window = Some(Duration::from_millis(200));
        assert_eq!(copies.within("r", window, read(1)).await.unwrap(), 1);
        assert_eq!(
            copies.within("r", window, read(2)).await.unwrap(),
            1,
            "within"
        );
        assert_eq!(copies.within("other", window, read(7)).await.unwrap(), 7);
        copies.edit("r", |v| *v += 10).await;
        assert_eq!(
            copies.within("r", window, read(3)).await.unwrap(),
            11,
            "edited"
        );
        assert_eq!(
            copies.within("r", None, read(4)).await.unwrap(),
            4,
            "read now"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            copies.within("r", window, read(5)).await.unwrap(),
            5,
            "expired"
        );
        let failed = copies.within("r", None, async { Err(crate::Error::invalid("X", "x")) });
        assert!(failed.await.is_err());
        assert_eq!(
            copies.within("r", window, read(6)).await.unwrap(),
            5,
            "kept"
        );
    }
}
