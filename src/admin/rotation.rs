//! Executors of secret rotation ([`crate::desired::rotation`]): the feature probe, the realm's
//! rotation profile and policy, rotating and revoking through Keycloak's client-secret endpoints.

use keycloak::types::ClientRepresentation;

use super::KeycloakAdminClient;
use crate::desired::rotation;
use crate::{Error, Result};

impl KeycloakAdminClient {
    /// Whether this Keycloak runs `client-secret-rotation` (see [`rotation::feature_enabled`]).
    pub async fn secret_rotation_supported(&self) -> Result<bool> {
        Ok(rotation::feature_enabled(&*self.server_features().await?))
    }

    /// The realm's secret-rotation profile and policy, written only if they differ.
    pub async fn ensure_rotation_policy(&self, realm: &str) -> Result<()> {
        let (profile, policy) = rotation::client_policy_pair();
        let name = rotation::POLICY_NAME;
        self.ensure_client_policy_pair(realm, name, Some((&profile, &policy)))
            .await
            .map(drop)
    }

    /// The introspection client `client_id` as Keycloak holds it (its attributes tell when its
    /// secret was made); an error if it is missing, since the client was just ensured.
    pub async fn rotation_client(
        &self,
        realm: &str,
        client_id: &str,
    ) -> Result<ClientRepresentation> {
        let client = self.client_by_client_id(realm, client_id).await?;
        client.ok_or_else(|| Error::KeycloakApi {
            operation: "read the client to rotate".into(),
            status: 404,
            message: format!("client {client_id} not found"),
        })
    }

    /// `POST /clients/{id}/client-secret`: a new secret; with the rotation policy applying,
    /// Keycloak keeps the previous one as the rotated secret. Returns the new secret.
    pub async fn rotate_client_secret(&self, realm: &str, id: &str) -> Result<String> {
        let cred = self
            .call("POST", "rotate client secret", || {
                self.api
                    .realm_clients_with_client_uuid_client_secret_post(realm, id)
            })
            .await?;
        cred.value
            .map(|v| v.to_string())
            .ok_or_else(|| Error::KeycloakApi {
                operation: "rotate client secret".into(),
                status: 200,
                message: "no secret in the answer".into(),
            })
    }

    /// `DELETE /clients/{id}/client-secret/rotated`: the previous secret stops working now.
    pub async fn revoke_rotated_secret(&self, realm: &str, id: &str) -> Result<()> {
        self.delete("revoke rotated client secret", || {
            self.api
                .realm_clients_with_client_uuid_client_secret_rotated_delete(realm, id)
        })
        .await
    }
}
