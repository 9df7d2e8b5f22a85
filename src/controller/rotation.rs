//! The McpServer stage that rotates the introspection client's secret
//! ([`crate::desired::rotation`] decides; this module does the IO in crash-safe order).

use jiff::Timestamp;
use keycloak::types::ClientRepresentation;
use kube::{Resource, ResourceExt};

use super::server::Run;
use super::ssa::patch_status_if_changed;
use crate::admin::KeycloakAdminClient;
use crate::api::{
    McpAuthPolicy, McpServer, PendingRotation, SecretRotation, SecretRotationStatus,
    ROTATE_SECRET_ANNOTATION,
};
use crate::desired::rotation::{self, Step, CREATION_TIME_ATTRIBUTE, ROTATION_ATTRIBUTE};
use crate::{Error, Result};

fn attribute<'c>(client: &'c ClientRepresentation, key: &str) -> Option<&'c String> {
    client.attributes.as_ref().and_then(|a| a.get(key))
}

/// The step for `server` now, and its rotation status.
fn decide_for(server: &McpServer, spec: &SecretRotation) -> (Step, Option<SecretRotationStatus>) {
    let annotations = server.meta().annotations.as_ref();
    let trigger = annotations.and_then(|a| a.get(ROTATE_SECRET_ANNOTATION));
    let old = server
        .status
        .as_ref()
        .and_then(|s| s.secret_rotation.clone());
    let step = rotation::decide(
        Timestamp::now(),
        spec,
        trigger.map(String::as_str),
        old.as_ref(),
    );
    (step, old)
}

impl Run<'_> {
    /// `SecretRotationUnavailable` when rotation is asked for on a Keycloak without the
    /// feature, decided before anything of rotation is written (the client's marker included).
    pub(super) async fn check_rotation_feature(&self, policy: &McpAuthPolicy) -> Result<()> {
        if self.server.spec.introspection_client.rotation.is_none() {
            return Ok(());
        }
        let kc = self.ctx.keycloak_for(policy).await?;
        if kc.secret_rotation_supported().await? {
            return Ok(());
        }
        Err(Error::invalid(
            "SecretRotationUnavailable",
            format!(
                "spec.introspectionClient.rotation needs Keycloak's client-secret-rotation feature, which {} does not run: start Keycloak with --features=client-secret-rotation (or KC_FEATURES), or remove the rotation; nothing was rotated",
                policy.spec.keycloak.url
            ),
        ))
    }

    /// Rotates the secret when due or triggered and revokes the previous one after its grace
    /// period; returns the secret the server's Secret must hold (Keycloak's current one).
    pub(super) async fn rotate_secret(
        &mut self,
        policy: &McpAuthPolicy,
        client_secret: String,
    ) -> Result<String> {
        let Some(spec) = self.server.spec.introspection_client.rotation.clone() else {
            self.d.status.secret_rotation = None;
            return Ok(client_secret);
        };
        let (step, old) = decide_for(self.server, &spec);
        let (step, old) = match step {
            Step::Idle { .. } => (step, old),
            // Acting on the cache's copy could rotate twice: it may lag behind this operator's
            // own status writes (the Deployment's event can come first). Decide again on a
            // fresh read.
            _ => decide_for(
                &self.api::<McpServer>().get(&self.server.name_any()).await?,
                &spec,
            ),
        };
        let mut status = old.unwrap_or_default();
        if let Step::Idle { next } = step {
            self.d.status.secret_rotation = Some(next);
            return Ok(client_secret);
        }
        let kc = self.ctx.keycloak_for(policy).await?;
        let realm = policy.spec.keycloak.realm.as_str();
        let client_id = self.d.status.client_id.clone().unwrap_or_default();
        let client = kc.rotation_client(realm, &client_id).await?;
        let pending = match step {
            Step::Idle { .. } => unreachable!("handled above"),
            Step::EndGrace => {
                let id = client.id.as_deref().unwrap_or_default();
                kc.revoke_rotated_secret(realm, id).await?;
                status.previous_secret_valid_until = None;
                self.d.status.secret_rotation = Some(status);
                return Ok(client_secret);
            }
            Step::Resume => status.pending.clone().unwrap_or_default(),
            Step::Rotate { trigger } => {
                self.write_ahead_rotation(&client, &mut status, trigger)
                    .await?
            }
        };
        let done_before = self.rotation_done(&client, &pending);
        let secret = self.complete(&kc, realm, &client, &pending).await?;
        // Keycloak's own time of the new secret, so a resumed rotation records the same.
        let now = kc.rotation_client(realm, &client_id).await?;
        let made = rotation::creation_time(now.attributes.as_ref()).unwrap_or_else(Timestamp::now);
        let new = rotation::rotated(&spec, Some(&status), made, pending.trigger.clone());
        if !done_before {
            self.announce(&new).await;
        }
        self.d.status.secret_rotation = Some(new);
        Ok(secret)
    }

    /// Records the rotation in status before Keycloak makes it: a crash after it must not
    /// rotate again (that would revoke the secret the pods still use) nor lose the trigger.
    async fn write_ahead_rotation(
        &mut self,
        client: &ClientRepresentation,
        status: &mut SecretRotationStatus,
        trigger: Option<String>,
    ) -> Result<PendingRotation> {
        let from = attribute(client, CREATION_TIME_ATTRIBUTE).cloned();
        let pending = PendingRotation {
            from: from.unwrap_or_default(),
            trigger,
        };
        status.pending = Some(pending.clone());
        self.d.status.secret_rotation = Some(status.clone());
        let before = self.server.status.as_ref();
        patch_status_if_changed(self.ctx, &self.api(), self.server, before, &self.d.status).await?;
        Ok(pending)
    }

    fn rotation_done(&self, client: &ClientRepresentation, pending: &PendingRotation) -> bool {
        let now = attribute(client, CREATION_TIME_ATTRIBUTE).cloned();
        now.unwrap_or_default() != pending.from
    }

    /// Finishes a recorded rotation: Keycloak's secret if it already rotated (a crash came in
    /// between), else the rotation, made with the executor in place so the old secret lives on.
    async fn complete(
        &self,
        kc: &KeycloakAdminClient,
        realm: &str,
        client: &ClientRepresentation,
        pending: &PendingRotation,
    ) -> Result<String> {
        let id = client.id.as_deref().unwrap_or_default();
        if self.rotation_done(client, pending) {
            let secret = kc.client_secret(realm, id).await?;
            return secret.ok_or_else(|| Error::KeycloakApi {
                operation: "read client secret".into(),
                status: 200,
                message: "client has no secret".into(),
            });
        }
        kc.ensure_rotation_policy(realm).await?;
        if attribute(client, ROTATION_ATTRIBUTE).map(String::as_str) != Some("true") {
            // Someone took the marker off: without it Keycloak would drop the old secret at once.
            let mut attrs = client.attributes.clone().unwrap_or_default();
            attrs.insert(ROTATION_ATTRIBUTE.into(), "true".into());
            let body = ClientRepresentation {
                attributes: Some(attrs),
                default_client_scopes: None,
                optional_client_scopes: None,
                protocol_mappers: None,
                ..client.clone()
            };
            kc.update_client(realm, id, &body).await?;
        }
        kc.rotate_client_secret(realm, id).await
    }

    /// A Normal event per rotation: when, and until when the previous secret works.
    async fn announce(&self, new: &SecretRotationStatus) {
        let message = format!(
            "rotated the secret of client {}; the previous secret stays valid until {}, the next rotation is due at {}",
            self.d.status.client_id.as_deref().unwrap_or_default(),
            new.previous_secret_valid_until.as_deref().unwrap_or_default(),
            new.next_rotation_time.as_deref().unwrap_or_default(),
        );
        let obj = self.server.object_ref(&());
        self.ctx
            .publish(&obj, false, "SecretRotated", message)
            .await;
    }
}

/// When a server with rotation needs its next look: the next rotation or the grace's end,
/// if sooner than `resync`.
pub(super) fn requeue(
    status: Option<&crate::api::McpServerStatus>,
    resync: std::time::Duration,
) -> std::time::Duration {
    let rotation = status.and_then(|s| s.secret_rotation.as_ref());
    let wake = rotation.and_then(|r| rotation::wake_in(Timestamp::now(), r));
    let wake = wake.map(|d| d + std::time::Duration::from_secs(1));
    wake.map_or(resync, |d| d.min(resync))
}
