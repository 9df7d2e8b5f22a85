//! Typed `ensure_*` operations: read, compare with the desired representation, write only what
//! differs. At steady state they issue GETs only.

use keycloak::types::{
    ClientRepresentation, ClientScopeRepresentation, ProtocolMapperRepresentation,
};
use rand::Rng;

use super::KeycloakAdminClient;
use crate::api::{ScopeType, OWNER_ATTRIBUTE};
use crate::desired::is_subset;
use crate::desired::keycloak::{
    plan_registration_components, ComponentWrite, RegistrationPolicies,
};
use crate::{Error, Result};

fn owner_of_scope(s: &ClientScopeRepresentation) -> Option<&str> {
    s.attributes
        .as_ref()?
        .get(OWNER_ATTRIBUTE)
        .map(|v| v.as_str())
}

fn owner_of_client(c: &ClientRepresentation) -> Option<&str> {
    c.attributes
        .as_ref()?
        .get(OWNER_ATTRIBUTE)
        .map(|v| v.as_str())
}

/// Generated client secrets: 32 random alphanumeric characters (~190 bits).
pub fn generate_secret() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Longest client `name` and client-scope `description` Keycloak stores: a `VARCHAR(255)`
/// column, and a longer value makes it answer 500 forever (found by tests/it/bad_input.rs with a
/// long but valid `spec.url`, which goes into both). Both are informational: cut, not refused.
pub const MAX_KEYCLOAK_TEXT: usize = 255;

fn fit(text: &mut Option<String>) {
    if let Some(t) = text.as_mut() {
        if t.chars().count() > MAX_KEYCLOAK_TEXT {
            *t = t.chars().take(MAX_KEYCLOAK_TEXT).collect();
        }
    }
}

/// Owner markers of McpAuthPolicies start with this: a policy scope marked by another policy is
/// taken over by the realm's owner (the realm was handed over; see [`Adopt`]).
const POLICY_MARKER_PREFIX: &str = "McpAuthPolicy/";

/// Whose marked scopes a write may take over.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Adopt {
    /// Only unmarked (hand-made) scopes.
    Unmarked,
    /// Also scopes of other McpAuthPolicies: only the realm's owner writes policy scopes, so
    /// such a scope is a former owner's.
    PolicyScopes,
}

/// `ScopeConflict` if the realm (`existing`: its scope list) has a scope of `desired`'s name that
/// carries another owner's marker, or `desired` names a Keycloak built-in scope. Lets a
/// reconcile refuse before it writes anything.
pub fn check_scope_owner(
    existing: &[ClientScopeRepresentation],
    desired: &ClientScopeRepresentation,
    adopt: Adopt,
) -> Result<()> {
    let name = desired.name.as_deref().unwrap_or_default();
    if crate::api::BUILT_IN_SCOPES.contains(&name) {
        return Err(Error::invalid(
            "ScopeConflict",
            format!("client scope {name} is one of Keycloak's built-in scopes; the operator never rewrites it"),
        ));
    }
    let want_owner = desired
        .attributes
        .as_ref()
        .and_then(|a| a.get(OWNER_ATTRIBUTE))
        .map(String::as_str);
    let live_owner = existing
        .iter()
        .find(|s| s.name.as_deref() == Some(name))
        .and_then(owner_of_scope);
    match live_owner {
        Some(o) if adopt == Adopt::PolicyScopes && o.starts_with(POLICY_MARKER_PREFIX) => Ok(()),
        Some(o) if Some(o) != want_owner => Err(Error::invalid(
            "ScopeConflict",
            format!("client scope {name} belongs to {o}"),
        )),
        _ => Ok(()),
    }
}

impl KeycloakAdminClient {
    /// Ensures a client scope with the desired name and attributes exists, and its mappers.
    /// `owner` is our ownership marker: a scope marked by someone else is a conflict; an unmarked
    /// scope (made by hand) is managed but never marked, so cleanup leaves it alone.
    /// `existing` is the realm's scope list read once per reconcile.
    pub async fn ensure_client_scope(
        &self,
        realm: &str,
        existing: &[ClientScopeRepresentation],
        desired: &ClientScopeRepresentation,
        mappers: &[ProtocolMapperRepresentation],
        adopt: Adopt,
    ) -> Result<String> {
        let mut desired = desired.clone();
        fit(&mut desired.description);
        let desired = &desired;
        let name = desired.name.clone().unwrap_or_default();
        let live = existing
            .iter()
            .find(|s| s.name.as_deref() == Some(name.as_str()));
        let (id, live_mappers) = match live {
            None => {
                let id = self.create_client_scope(realm, desired).await?;
                (id, vec![])
            }
            Some(live) => {
                let id = live.id.clone().unwrap_or_default().to_string();
                let live_owner = owner_of_scope(live).map(str::to_string);
                check_scope_owner(existing, desired, adopt)?;
                let mut want = desired.clone();
                if live_owner.is_none() {
                    // Adopt a hand-made scope's settings without claiming it.
                    if let Some(a) = want.attributes.as_mut() {
                        a.remove(OWNER_ATTRIBUTE);
                    }
                }
                let mut live_cmp = live.clone();
                live_cmp.protocol_mappers = None;
                if !is_subset(
                    &serde_json::to_value(&want)?,
                    &serde_json::to_value(&live_cmp)?,
                ) {
                    // PUT replaces attributes: keep the ones Keycloak or users added.
                    let mut attrs = live.attributes.clone().unwrap_or_default();
                    attrs.extend(want.attributes.clone().unwrap_or_default());
                    let body = ClientScopeRepresentation {
                        id: Some(id.clone()),
                        attributes: Some(attrs),
                        protocol_mappers: None,
                        ..want
                    };
                    self.update_client_scope(realm, &id, &body).await?;
                }
                (
                    id,
                    live.protocol_mappers.clone().unwrap_or_default().to_vec(),
                )
            }
        };
        for m in mappers {
            let live = live_mappers.iter().find(|l| l.name == m.name);
            match live {
                None => self.create_scope_mapper(realm, &id, m).await?,
                Some(l) => {
                    if !is_subset(&serde_json::to_value(m)?, &serde_json::to_value(l)?) {
                        let mapper_id = l.id.clone().unwrap_or_default().to_string();
                        let body = ProtocolMapperRepresentation {
                            id: Some(mapper_id.clone()),
                            ..m.clone()
                        };
                        self.update_scope_mapper(realm, &id, &mapper_id, &body)
                            .await?;
                    }
                }
            }
        }
        Ok(id)
    }

    /// Makes the scope a realm default or optional scope (and not the other).
    pub async fn ensure_realm_scope_type(
        &self,
        realm: &str,
        assignments: &super::RealmScopeAssignments,
        scope_id: &str,
        ty: ScopeType,
    ) -> Result<()> {
        let is_default = assignments.default_ids.iter().any(|i| i == scope_id);
        let is_optional = assignments.optional_ids.iter().any(|i| i == scope_id);
        match ty {
            ScopeType::Default => {
                if is_optional {
                    self.remove_realm_optional_scope(realm, scope_id).await?;
                }
                if !is_default {
                    self.add_realm_default_scope(realm, scope_id).await?;
                }
            }
            ScopeType::Optional => {
                if is_default {
                    self.remove_realm_default_scope(realm, scope_id).await?;
                }
                if !is_optional {
                    self.add_realm_optional_scope(realm, scope_id).await?;
                }
            }
        }
        Ok(())
    }

    /// Takes the scope out of the realm's default and optional lists (before deleting it).
    pub async fn remove_realm_scope(
        &self,
        realm: &str,
        assignments: &super::RealmScopeAssignments,
        scope_id: &str,
    ) -> Result<()> {
        if assignments.default_ids.iter().any(|i| i == scope_id) {
            self.remove_realm_default_scope(realm, scope_id).await?;
        }
        if assignments.optional_ids.iter().any(|i| i == scope_id) {
            self.remove_realm_optional_scope(realm, scope_id).await?;
        }
        Ok(())
    }

    /// Brings the realm's managed anonymous registration-policy components to `desired` (see
    /// [`plan_registration_components`]). Returns the names of the foreign ones left alone.
    pub async fn ensure_registration_policies(
        &self,
        realm: &str,
        realm_id: &str,
        desired: &RegistrationPolicies,
    ) -> Result<Vec<String>> {
        let live = self.registration_policies(realm, realm_id).await?;
        let plan = plan_registration_components(&live, desired, realm_id);
        for write in &plan.writes {
            match write {
                ComponentWrite::Create(c) => self.create_component(realm, c).await?,
                ComponentWrite::Update(id, c) => self.update_component(realm, id, c).await?,
                ComponentWrite::Delete(id) => self.delete_component(realm, id).await?,
            }
        }
        Ok(plan.foreign)
    }

    /// Ensures the confidential introspection client and returns `(uuid, secret)`.
    /// `known_secret` (from the existing Kubernetes Secret) is used when the client has to be
    /// (re)created, so running pods keep working; otherwise Keycloak's secret is authoritative.
    pub async fn ensure_introspection_client(
        &self,
        realm: &str,
        desired: &ClientRepresentation,
        known_secret: Option<&str>,
    ) -> Result<(String, String)> {
        let mut desired = desired.clone();
        fit(&mut desired.name);
        fit(&mut desired.description);
        let desired = &desired;
        let client_id = desired.client_id.clone().unwrap_or_default();
        let want_owner = owner_of_client(desired).map(str::to_string);
        let live = self.client_by_client_id(realm, &client_id).await?;
        let uuid = match live {
            None => {
                let secret = known_secret
                    .map(str::to_string)
                    .unwrap_or_else(generate_secret);
                let body = ClientRepresentation {
                    secret: Some(secret),
                    ..desired.clone()
                };
                self.create_client(realm, &body).await?
            }
            Some(live) => {
                let live_owner = owner_of_client(&live).map(str::to_string);
                if live_owner != want_owner {
                    return Err(Error::invalid(
                        "ClientIdConflict",
                        format!(
                            "a Keycloak client {client_id} already exists in realm {realm} and is not managed by this McpServer{}",
                            live_owner.map(|o| format!(" (owner: {o})")).unwrap_or_default()
                        ),
                    ));
                }
                let uuid = live.id.clone().unwrap_or_default().to_string();
                let mut live_cmp = live.clone();
                live_cmp.secret = None;
                if !is_subset(
                    &serde_json::to_value(desired)?,
                    &serde_json::to_value(&live_cmp)?,
                ) {
                    let mut attrs = live.attributes.clone().unwrap_or_default();
                    attrs.extend(desired.attributes.clone().unwrap_or_default());
                    let body = ClientRepresentation {
                        id: Some(uuid.clone()),
                        attributes: Some(attrs),
                        ..desired.clone()
                    };
                    self.update_client(realm, &uuid, &body).await?;
                }
                uuid
            }
        };
        let secret = self
            .client_secret(realm, &uuid)
            .await?
            .ok_or_else(|| Error::KeycloakApi {
                operation: "read client secret".into(),
                status: 200,
                message: "client has no secret".into(),
            })?;
        Ok((uuid, secret))
    }

    /// Deletes a client only if it carries our marker; 404 counts as done.
    pub async fn delete_owned_client(
        &self,
        realm: &str,
        client_id: &str,
        owner: &str,
    ) -> Result<()> {
        if let Some(c) = self.client_by_client_id(realm, client_id).await? {
            if owner_of_client(&c) == Some(owner) {
                if let Some(id) = &c.id {
                    self.delete_client(realm, id).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn long_texts_are_cut_to_keycloak_columns() {
        let mut long = Some("é".repeat(300));
        fit(&mut long);
        assert_eq!(long.unwrap().chars().count(), MAX_KEYCLOAK_TEXT);
        let mut short = Some("MCP server http://localhost:3000".to_string());
        fit(&mut short);
        assert_eq!(short.as_deref(), Some("MCP server http://localhost:3000"));
        let mut none = None;
        fit(&mut none);
        assert_eq!(none, None);
    }

    #[test]
    fn foreign_scope_owner_is_a_conflict() {
        let scope = |owner: Option<&str>| ClientScopeRepresentation {
            name: Some("mcp:server:team:a".into()),
            attributes: owner
                .map(|o| HashMap::from([(OWNER_ATTRIBUTE.to_string(), o.to_string())])),
            ..Default::default()
        };
        let ours = scope(Some("McpServer/team/a"));
        let u = Adopt::Unmarked;
        assert!(check_scope_owner(&[], &ours, u).is_ok());
        assert!(
            check_scope_owner(&[scope(None)], &ours, u).is_ok(),
            "hand-made scopes are adopted"
        );
        assert!(check_scope_owner(std::slice::from_ref(&ours), &ours, u).is_ok());
        let former = scope(Some("McpAuthPolicy/old/acme"));
        assert!(check_scope_owner(std::slice::from_ref(&former), &ours, u).is_err());
        assert!(check_scope_owner(&[former], &ours, Adopt::PolicyScopes).is_ok());
        let e = check_scope_owner(&[scope(Some("someone/else"))], &ours, Adopt::PolicyScopes)
            .unwrap_err();
        assert_eq!(e.reason(), "ScopeConflict");
        assert_eq!(
            e.to_string(),
            "ScopeConflict: client scope mcp:server:team:a belongs to someone/else"
        );
        let builtin = ClientScopeRepresentation {
            name: Some("offline_access".into()),
            ..Default::default()
        };
        let e = check_scope_owner(&[], &builtin, u).unwrap_err();
        assert_eq!(e.reason(), "ScopeConflict");
    }
}
