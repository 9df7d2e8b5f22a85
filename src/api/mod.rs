//! Custom resource types (`mcpauth.dev/v1alpha1`) and the names derived from them.

// kube-derive repeats `type_ = ...` across printcolumns, which this lint misreads.
#[allow(clippy::duplicated_attributes)]
mod policy;
#[allow(clippy::duplicated_attributes)]
mod server;

pub use policy::*;
pub use server::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;

/// API group of both kinds.
pub const GROUP: &str = "mcpauth.dev";
/// Finalizer guarding the Keycloak objects each kind writes.
pub const FINALIZER: &str = "mcpauth.dev/keycloak-cleanup";
/// Keycloak attribute that marks clients and client scopes the operator owns.
pub const OWNER_ATTRIBUTE: &str = "mcpauth.dev/owner";

impl McpAuthPolicy {
    /// Browser-facing issuer, `{publicUrl or url}/realms/{realm}`: what tokens carry in `iss`.
    pub fn issuer(&self) -> String {
        let k = &self.spec.keycloak;
        format!(
            "{}/realms/{}",
            k.public_url.as_deref().unwrap_or(&k.url),
            k.realm
        )
    }

    /// Realm base as the operator and pods reach it.
    pub fn internal_realm_url(&self) -> String {
        format!(
            "{}/realms/{}",
            self.spec.keycloak.url, self.spec.keycloak.realm
        )
    }

    pub fn introspection_endpoint(&self) -> String {
        format!(
            "{}/protocol/openid-connect/token/introspect",
            self.internal_realm_url()
        )
    }

    pub fn registration_endpoint(&self) -> String {
        format!("{}/clients-registrations/openid-connect", self.issuer())
    }

    /// Ownership marker value written on Keycloak objects this policy creates.
    pub fn owner_marker(&self) -> String {
        format!(
            "McpAuthPolicy/{}/{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        )
    }
}

impl McpServer {
    pub fn client_id(&self) -> String {
        self.spec
            .introspection_client
            .client_id
            .clone()
            .unwrap_or_else(|| {
                format!(
                    "mcp.{}.{}",
                    self.namespace().unwrap_or_default(),
                    self.name_any()
                )
            })
    }

    pub fn secret_name(&self) -> String {
        self.spec
            .introspection_client
            .secret_name
            .clone()
            .unwrap_or_else(|| format!("{}-oauth", self.name_any()))
    }

    /// Canonical URL: the audience tokens must carry and the protected-resource `resource`.
    pub fn canonical_url(&self) -> String {
        self.spec.url.clone().unwrap_or_else(|| {
            format!(
                "http://{}.{}.svc:{}",
                self.name_any(),
                self.namespace().unwrap_or_default(),
                self.spec.port
            )
        })
    }

    /// Per-server client scope carrying the audience mapper. One scope per server keeps tokens
    /// of one server out of every other server's audience (a shared scope would add all URLs).
    pub fn audience_scope(&self) -> String {
        format!(
            "{AUDIENCE_SCOPE_PREFIX}{}:{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        )
    }

    /// Ownership marker value written on the Keycloak objects this server creates.
    pub fn owner_marker(&self) -> String {
        format!(
            "McpServer/{}/{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        )
    }
}

/// Schemas written by hand where the derive cannot express them: CEL rules on the *items* of a
/// string list (with `maxLength`, so the API server's CEL cost estimate stays within budget).
/// A status that carries standard conditions, as both kinds' statuses do.
pub trait WithConditions: Clone + Default {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn set_observed_generation(&mut self, generation: Option<i64>);
    /// The realm recorded before the first Keycloak write.
    fn keycloak_realm(&self) -> Option<&str>;
}

/// What every status starts with: the standard conditions and the generation they describe.
#[derive(
    schemars::JsonSchema, serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq,
)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    /// `Ready`, one condition per reconcile stage (see the kind's status), and `Stalled` while a
    /// person must fix something; a `False` condition's reason says what is wrong (README,
    /// Troubleshooting).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` these conditions describe; behind it, a spec change is still
    /// being reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Implements [`WithConditions`] for a status that flattens an [`Observed`] as `observed` and
/// has `keycloak_realm`, and lets it read as its `Observed` (`status.conditions`).
macro_rules! status_with_conditions {
    ($status:ty) => {
        impl std::ops::Deref for $status {
            type Target = $crate::api::Observed;
            fn deref(&self) -> &Self::Target {
                &self.observed
            }
        }
        impl std::ops::DerefMut for $status {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.observed
            }
        }
        impl $crate::api::WithConditions for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
            fn keycloak_realm(&self) -> Option<&str> {
                self.keycloak_realm.as_deref()
            }
        }
    };
}
use status_with_conditions;

pub(crate) mod schemas {
    use schemars::{json_schema, Schema, SchemaGenerator};

    fn string_list(max_items: u32, max_len: u32, rule: &str, message: &str) -> Schema {
        json_schema!({
            "type": "array",
            "maxItems": max_items,
            "items": {
                "type": "string",
                "maxLength": max_len,
                "x-kubernetes-validations": [{"rule": rule, "message": message}]
            }
        })
    }

    /// A CEL `matches` call for `pattern` (the regex's backslashes escaped for the CEL string).
    pub fn cel_matches(pattern: &str) -> String {
        format!("self.matches('{}')", pattern.replace('\\', "\\\\"))
    }

    pub fn trusted_hosts(_: &mut SchemaGenerator) -> Schema {
        string_list(
            64,
            253,
            &cel_matches(super::HOST_PATTERN),
            "trustedHosts entries must be a lowercase host name, an IP address or '*.domain' with at least two labels after '*.' (no scheme, port, path, bare '*' or '*.tld')",
        )
    }

    pub fn allowed_client_scopes(_: &mut SchemaGenerator) -> Schema {
        string_list(
            64,
            200,
            r"self.matches('^[!#-\\[\\]-~]+$')",
            "allowedClientScopes entries must be scope tokens without spaces",
        )
    }

    pub fn server_scopes(_: &mut SchemaGenerator) -> Schema {
        string_list(
            32,
            200,
            r"self.matches('^[!#-\\[\\]-~]+$')",
            "scopes must be scope tokens without spaces",
        )
    }

    pub fn tool_scopes(g: &mut SchemaGenerator) -> Schema {
        let mut schema = server_scopes(g);
        schema.insert("minItems".into(), 1.into());
        schema
    }

    /// Scopes a policy scope implies (its narrower scopes), checked against the policy's list.
    pub fn implied_scopes(g: &mut SchemaGenerator) -> Schema {
        server_scopes(g)
    }

    pub fn service_account_clients(_: &mut SchemaGenerator) -> Schema {
        string_list(
            32,
            255,
            r"self.matches('^[A-Za-z0-9][A-Za-z0-9._/-]*$')",
            "serviceAccountClients entries must be client ids: a letter or digit, then letters, digits, '.', '_', '/' and '-'",
        )
    }

    pub fn allowed_origins(_: &mut SchemaGenerator) -> Schema {
        string_list(
            32,
            300,
            r"self.matches('^https?://([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*|\\[[0-9a-f:.]+\\])(:[0-9]{1,5})?$')",
            "allowedOrigins entries must be origins: http(s)://host[:port] in lowercase, without path or trailing slash",
        )
    }
}
