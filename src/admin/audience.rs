//! Executors of the audience modes ([`crate::desired::audience`]): the feature probe and the
//! servers' audience mappers on the policy's scopes.

use keycloak::types::{ClientScopeRepresentation, ProtocolMapperRepresentation};

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::KeycloakAdminClient;
use crate::desired::audience;
use crate::desired::plan::plan_named_mapper;
use crate::{Error, Result};

/// How long one feature probe is reused.
const FEATURE_PROBE_TTL: Duration = Duration::from_secs(60);

impl KeycloakAdminClient {
    /// Whether this Keycloak runs `resource-indicators` (see
    /// [`audience::resource_indicators_enabled`]).
    pub async fn resource_indicators(&self) -> Result<bool> {
        let features = self.server_features().await?;
        Ok(audience::resource_indicators_enabled(&features))
    }

    /// What the feature probes read of `GET /admin/serverinfo` (`profileInfo`,
    /// `systemInfo.version`), kept for a minute: features change only with a Keycloak restart,
    /// so one read of the ~300 KB document serves every feature probe of this client.
    pub async fn server_features(&self) -> Result<Arc<serde_json::Value>> {
        let mut last = self.server_features.lock().await;
        if let Some((at, features)) = &*last {
            if at.elapsed() < FEATURE_PROBE_TTL {
                return Ok(features.clone());
            }
        }
        let info = self.server_info().await?;
        let features = Arc::new(serde_json::json!({
            "profileInfo": info["profileInfo"],
            "systemInfo": {"version": info["systemInfo"]["version"]},
        }));
        *last = Some((Instant::now(), features.clone()));
        Ok(features)
    }

    /// `GET /admin/serverinfo` as JSON (the typed crate lacks it). Answered to a realm's own
    /// `realm-admin` too (verified on 26.7.3: its `profileInfo` and `systemInfo.version` are
    /// there), so least-privilege credentials can read which features Keycloak runs.
    pub async fn server_info(&self) -> Result<serde_json::Value> {
        let url = format!("{}/admin/serverinfo", self.base_url);
        let operation = "read server info";
        let mut retried = false;
        loop {
            let token = self.tokens.token().await?;
            let req = self.tokens.http.get(&url).bearer_auth(token);
            let resp = self.counted_get(operation, req).await?;
            match resp.status().as_u16() {
                200 => {}
                // Keycloak restarted and forgot our token: once more with a fresh one.
                401 if !retried => {
                    retried = true;
                    self.tokens.invalidate().await;
                    continue;
                }
                403 => {
                    return Err(Error::InsufficientAdminPermissions {
                        operation: operation.into(),
                    })
                }
                status => {
                    return Err(Error::KeycloakApi {
                        operation: operation.into(),
                        status,
                        message: "unexpected status".into(),
                    })
                }
            }
            return resp.json().await.map_err(|e| Error::KeycloakApi {
                operation: operation.into(),
                status: 200,
                message: e.to_string(),
            });
        }
    }

    /// Makes the mapper called `name` on each of `scopes` (the realm's scopes of those names that
    /// exist) `desired`, or removes it with `None`; other mappers stay. `existing` is the
    /// realm's scope list with mappers.
    pub async fn ensure_named_mapper(
        &self,
        realm: &str,
        existing: &[ClientScopeRepresentation],
        scopes: &[&str],
        name: &str,
        desired: Option<&ProtocolMapperRepresentation>,
    ) -> Result<()> {
        let wanted = existing
            .iter()
            .filter(|s| s.name.as_deref().is_some_and(|n| scopes.contains(&n)));
        for scope in wanted {
            let live = scope.protocol_mappers.as_deref().unwrap_or_default();
            if let Some(write) = plan_named_mapper(live, name, desired)? {
                let id = scope.id.as_deref().unwrap_or_default();
                self.write_scope_mapper(realm, id, &write).await?;
            }
        }
        Ok(())
    }
}
