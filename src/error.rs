//! The crate's one error type. Each variant maps to a condition reason and a metric label.

use thiserror::Error;

#[derive(Error, Debug)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),

    #[error("Keycloak at {url} is unreachable: {message}")]
    KeycloakUnreachable { url: String, message: String },

    #[error("Keycloak rejected the admin credentials: {0}")]
    InvalidAdminCredentials(String),

    #[error("the Keycloak admin account lacks permission for {operation}")]
    InsufficientAdminPermissions { operation: String },

    #[error("Keycloak answered {status} to {operation}: {message}")]
    KeycloakApi {
        operation: String,
        status: u16,
        message: String,
    },

    #[error("{reason}: {message}")]
    Invalid {
        /// Condition reason, e.g. `AdminSecretNotFound`.
        reason: &'static str,
        message: String,
    },

    #[error("finalizer error: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    #[error("serialization error: {0}")]
    Serde(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(reason: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            reason,
            message: message.into(),
        }
    }

    /// Condition reason (PascalCase) and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.is_forbidden() => "KubernetesForbidden",
            Error::Kube(_) => "KubernetesError",
            Error::KeycloakUnreachable { .. } => "KeycloakUnreachable",
            Error::InvalidAdminCredentials(_) => "InvalidAdminCredentials",
            Error::InsufficientAdminPermissions { .. } => "InsufficientAdminPermissions",
            Error::KeycloakApi { .. } => "KeycloakError",
            Error::Invalid { reason, .. } => reason,
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "FinalizerError",
            },
            Error::Serde(_) => "SerializationError",
        }
    }

    /// Errors the user must fix (retrying soon will not help): backed off harder.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::Invalid { .. }
                | Error::InvalidAdminCredentials(_)
                | Error::InsufficientAdminPermissions { .. }
        )
    }
}
