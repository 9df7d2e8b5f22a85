//! Executors of the audience modes ([`crate::desired::audience`]): the feature probe and the
//! servers' audience mappers on the policy's scopes.

use keycloak::types::{ClientScopeRepresentation, ProtocolMapperRepresentation};

use std::time::{Duration, Instant};

use super::KeycloakAdminClient;
use crate::desired::audience;
use crate::desired::plan::plan_named_mapper;
use crate::{Error, Result};

/// How long one feature probe is reused.
const FEATURE_PROBE_TTL: Duration = Duration::from_secs(60);

impl KeycloakAdminClient {
    /// Whether this Keycloak runs `resource-indicators` (see
    /// [`audience::resource_indicators_enabled`]), probed at most once a minute.
    pub async fn resource_indicators(&self) -> Result<bool> {
        let mut last = self.resource_indicators.lock().await;
        if let Some((at, on)) = *last {
            if at.elapsed() < FEATURE_PROBE_TTL {
                return Ok(on);
            }
        }
        let on = audience::resource_indicators_enabled(&self.server_info().await?);
        *last = Some((Instant::now(), on));
        Ok(on)
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
