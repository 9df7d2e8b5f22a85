//! Writes to Kubernetes, each only when what is there differs (no write at steady state).

use kube::api::{Api, GetParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Context, MANAGER};
use crate::desired::is_subset;
use crate::{Error, Result};

/// Server-side applies `desired` unless the live object already matches it, and returns the
/// object as it now is. Refuses to take over an object of the same name that we do not own.
/// The write is recorded as ours (see [`Context::own_write`]).
pub async fn apply_if_changed<K>(
    ctx: &Context,
    api: &Api<K>,
    desired: &K,
    owner_uid: &str,
) -> Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    if let Some(live) = get_cached(api, &name).await? {
        let refs = live.meta().owner_references.as_deref().unwrap_or_default();
        if !refs.iter().any(|r| r.uid == owner_uid) {
            return Err(Error::invalid(
                "ResourceConflict",
                format!("{name} already exists and is not owned by this McpServer"),
            ));
        }
        if is_subset(
            &serde_json::to_value(desired)?,
            &serde_json::to_value(&live)?,
        ) {
            return Ok(live);
        }
    }
    let params = PatchParams::apply(MANAGER).force();
    let written = api.patch(&name, &params, &Patch::Apply(desired)).await?;
    ctx.record_own_write(&written);
    Ok(written)
}

/// Reads `name` from the API server's watch cache (`resourceVersion=0`), not from etcd. A
/// stale answer costs at most one needless write: every change to the object reaches the
/// cache before its watch event triggers the reconcile that reads it.
pub async fn get_cached<K>(api: &Api<K>, name: &str) -> Result<Option<K>>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.get_with(name, &GetParams::any()).await {
        Ok(obj) => Ok(Some(obj)),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes status with server-side apply, only when it differs from `old`; recorded as ours.
pub async fn patch_status_if_changed<K, S>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    old: Option<&S>,
    new: &S,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if old == Some(new) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": new,
    });
    let params = PatchParams::apply(MANAGER).force();
    let written = api
        .patch_status(&obj.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    ctx.record_own_write(&written);
    Ok(())
}
