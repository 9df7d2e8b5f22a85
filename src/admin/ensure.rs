//! Executors of the pure plans in [`crate::desired::plan`] and [`crate::desired::realm`]: each
//! reads what it needs, asks its plan, and performs exactly the writes the plan returns.

use keycloak::types::{
    ClientRepresentation, ClientScopeRepresentation, ProtocolMapperRepresentation,
};
use rand::Rng;

use super::KeycloakAdminClient;
use crate::api::ScopeType;
use crate::desired::plan::{
    owned_scope_ids, owner_of, plan_introspection_client, plan_realm_scope_type,
    plan_remove_realm_scope, plan_scope, Adopt, RealmScopeAssignments, RealmScopeWrite, ScopeWrite,
    Write,
};
use crate::desired::realm::{plan_registration_components, RegistrationPolicies};
use crate::{Error, Result};

/// The introspection client as ensured: its id, its secret, and whether this call created it.
#[derive(Debug, Clone)]
pub struct EnsuredClient {
    pub uuid: String,
    pub secret: String,
    pub created: bool,
}

/// Generated client secrets: 32 random alphanumeric characters (~190 bits).
pub fn generate_secret() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

impl KeycloakAdminClient {
    /// Ensures a client scope and its mappers (see [`plan_scope`]); returns the scope's id.
    /// `existing` is the realm's scope list read once per reconcile.
    pub async fn ensure_client_scope(
        &self,
        realm: &str,
        existing: &[ClientScopeRepresentation],
        desired: &ClientScopeRepresentation,
        mappers: &[ProtocolMapperRepresentation],
        adopt: Adopt,
    ) -> Result<String> {
        let plan = plan_scope(existing, desired, mappers, adopt)?;
        let mut id = plan.id.unwrap_or_default();
        for write in &plan.writes {
            match write {
                ScopeWrite::Scope(w) => {
                    if let Some(new) = self.write_client_scope(realm, w).await? {
                        id = new;
                    }
                }
                ScopeWrite::Mapper(w) => self.write_scope_mapper(realm, &id, w).await?,
            }
        }
        Ok(id)
    }

    /// Makes the scope a realm default or optional scope (and not the other).
    pub async fn ensure_realm_scope_type(
        &self,
        realm: &str,
        assignments: &RealmScopeAssignments,
        scope_id: &str,
        ty: ScopeType,
    ) -> Result<()> {
        let writes = plan_realm_scope_type(assignments, scope_id, ty);
        self.write_realm_scopes(realm, scope_id, &writes).await
    }

    /// Takes the scope out of the realm's default and optional lists (before deleting it).
    pub async fn remove_realm_scope(
        &self,
        realm: &str,
        assignments: &RealmScopeAssignments,
        scope_id: &str,
    ) -> Result<()> {
        let writes = plan_remove_realm_scope(assignments, scope_id);
        self.write_realm_scopes(realm, scope_id, &writes).await
    }

    async fn write_realm_scopes(
        &self,
        realm: &str,
        scope_id: &str,
        writes: &[RealmScopeWrite],
    ) -> Result<()> {
        for w in writes {
            match *w {
                RealmScopeWrite::Add(ty) => self.add_realm_scope_type(realm, scope_id, ty).await?,
                RealmScopeWrite::Remove(ty) => {
                    self.remove_realm_scope_type(realm, scope_id, ty).await?
                }
            }
        }
        Ok(())
    }

    /// Deletes the scopes marked as `owner`'s (only the one named `name`, when given), each taken
    /// out of the realm's default and optional lists first. Unmarked scopes stay.
    pub async fn delete_owned_scopes(
        &self,
        realm: &str,
        owner: &str,
        name: Option<&str>,
    ) -> Result<()> {
        let assignments = self.realm_scope_assignments(realm).await?;
        let scopes = self.client_scopes(realm).await?;
        for id in owned_scope_ids(&scopes, owner, name) {
            self.remove_realm_scope(realm, &assignments, &id).await?;
            self.delete_client_scope(realm, &id).await?;
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
            self.write_component(realm, write).await?;
        }
        Ok(plan.foreign)
    }

    /// Ensures the confidential introspection client (see [`plan_introspection_client`]).
    /// `known_secret` (from the existing Kubernetes Secret) is used when the client has to be
    /// (re)created, so running pods keep working. With `create_first` (no client recorded
    /// yet) it is created without a read, and read only if Keycloak answers that it exists.
    pub async fn ensure_introspection_client(
        &self,
        realm: &str,
        desired: &ClientRepresentation,
        known_secret: Option<&str>,
        create_first: bool,
    ) -> Result<EnsuredClient> {
        let new_secret = || known_secret.map_or_else(generate_secret, str::to_string);
        if create_first {
            let plan = plan_introspection_client(realm, None, desired, new_secret)?;
            if let Some(made) = self.create_new_client(realm, plan.write).await? {
                return Ok(made);
            }
        }
        let client_id = desired.client_id.as_deref().unwrap_or_default();
        let live = self.client_by_client_id(realm, client_id).await?;
        let plan = plan_introspection_client(realm, live.as_ref(), desired, new_secret)?;
        if plan.id.is_none() {
            // Created by someone else since the read: the next reconcile sees it.
            let raced = || Error::KeycloakApi {
                operation: "create client".into(),
                status: 409,
                message: "the client appeared while it was being created".into(),
            };
            return self
                .create_new_client(realm, plan.write)
                .await?
                .ok_or_else(raced);
        }
        if let Some(write) = &plan.write {
            self.write_client(realm, write).await?;
        }
        let uuid = plan.id.unwrap_or_default();
        // Keycloak hands a confidential client's secret to admins with the client itself;
        // the separate read only if this one did not.
        let secret = match live.and_then(|c| c.secret).map(|s| s.to_string()) {
            Some(secret) => Some(secret),
            None => self.client_secret(realm, &uuid).await?,
        };
        let secret = secret.ok_or_else(|| Error::KeycloakApi {
            operation: "read client secret".into(),
            status: 200,
            message: "client has no secret".into(),
        })?;
        Ok(EnsuredClient {
            uuid,
            secret,
            created: false,
        })
    }

    /// Performs a planned client creation; `None` when Keycloak already has a client of that
    /// `clientId` (409), which the caller then reads.
    async fn create_new_client(
        &self,
        realm: &str,
        write: Option<Write<ClientRepresentation>>,
    ) -> Result<Option<EnsuredClient>> {
        let Some(Write::Create(body)) = write else {
            return Ok(None);
        };
        let secret = body
            .secret
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let write = Write::Create(body);
        match self.write_client(realm, &write).await {
            Ok(uuid) => Ok(Some(EnsuredClient {
                uuid: uuid.unwrap_or_default(),
                secret,
                created: true,
            })),
            Err(Error::KeycloakApi { status: 409, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a client only if it carries our marker; 404 counts as done.
    pub async fn delete_owned_client(
        &self,
        realm: &str,
        client_id: &str,
        owner: &str,
    ) -> Result<()> {
        if let Some(c) = self.client_by_client_id(realm, client_id).await? {
            if owner_of(c.attributes.as_ref()) == Some(owner) {
                if let Some(id) = &c.id {
                    self.delete_client(realm, id).await?;
                }
            }
        }
        Ok(())
    }
}
