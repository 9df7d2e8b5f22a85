//! What reaping reads from Keycloak (sessions per client, the newest stored login event of a
//! client) and the one write it may need besides deleting: the realm's event settings.

use std::collections::HashMap;
use std::time::Duration;

use super::KeycloakAdminClient;
use crate::desired::reaping::{events_config, Sessions};
use crate::Result;

impl KeycloakAdminClient {
    /// Online and offline session counts of every client that has any, by client id (uuid).
    pub async fn client_sessions(&self, realm: &str) -> Result<HashMap<String, Sessions>> {
        let stats = self
            .call("GET", "read client session stats", || {
                self.api.realm_client_session_stats_get(realm)
            })
            .await?;
        let count = |m: &HashMap<String, String>, k: &str| {
            // An unreadable count is taken as a session: never reap on doubt.
            m.get(k).map_or(1, |v| v.parse().unwrap_or(1))
        };
        let entries = stats.iter().filter_map(|m| {
            let sessions = Sessions {
                online: count(m, "active"),
                offline: count(m, "offline"),
            };
            Some((m.get("id")?.clone(), sessions))
        });
        Ok(entries.collect())
    }

    /// Time (epoch ms) and type of the newest stored event of `client_id` among `types`.
    pub async fn newest_event(
        &self,
        realm: &str,
        client_id: &str,
        types: &[&str],
    ) -> Result<Option<(i64, String)>> {
        let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        let events = self
            .call("GET", "read login events", || {
                self.api.realm_events_get(
                    realm,
                    Some(client_id.to_string()),
                    None,
                    None,
                    None,
                    Some(0),
                    None,
                    Some(1),
                    Some(types.clone()),
                    None,
                )
            })
            .await?;
        let newest = events.into_iter().next();
        Ok(newest.and_then(|e| Some((e.time?, e.type_.unwrap_or_default()))))
    }

    /// Keycloak stores login events for at least `retention` with the types reaping reads
    /// (merged into the realm's settings, never narrowing them). Returns whether it wrote.
    pub async fn ensure_events_stored(&self, realm: &str, retention: Duration) -> Result<bool> {
        let live = self
            .call("GET", "read event settings", || {
                self.api.realm_events_config_get(realm)
            })
            .await?;
        let Some(next) = events_config(&live, retention) else {
            return Ok(false);
        };
        self.send("PUT", "write event settings", || {
            self.api.realm_events_config_put(realm, next.clone())
        })
        .await?;
        Ok(true)
    }
}
