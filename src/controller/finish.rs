//! How every reconcile of either kind ends: the failed stage's condition and `Ready`, one status
//! write if anything changed, an event when `Ready` flips or fails for a new reason, and the
//! requeue or the error for the backoff. Cleanup ends alike: never blocked by a namespace that
//! is being deleted.

use std::fmt::Debug;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::conditions::{find, Draft, WithConditions, READY};
use super::ssa::patch_status_if_changed;
use super::Context;
use crate::{Error, Result};

/// A stage that failed: the condition it reports on, and the error.
pub type Failed = (&'static str, Error);

/// The result of a reconcile stage.
pub type Staged<T> = std::result::Result<T, Failed>;

/// Attributes an error to the condition of the stage it happened in.
pub trait At<T> {
    fn at(self, condition: &'static str) -> Staged<T>;
}

impl<T, E: Into<Error>> At<T> for std::result::Result<T, E> {
    fn at(self, condition: &'static str) -> Staged<T> {
        self.map_err(|e| (condition, e.into()))
    }
}

/// `Ready=False` reasons that mean progress, not a problem: their events are `Normal`.
const PROGRESS_REASONS: &[&str] = &["Unavailable"];

/// Ends an apply: on success the stages have set every condition including `Ready`.
pub async fn finish<K, S>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    old: Option<&S>,
    mut d: Draft<S>,
    outcome: Staged<()>,
) -> Result<Action>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
    S: WithConditions + Serialize + PartialEq,
{
    if let Err((condition, e)) = &outcome {
        d.set(condition, false, e.reason(), e.to_string());
        d.set(READY, false, e.reason(), e.to_string());
    }
    patch_status_if_changed(api, obj, old, &d.status).await?;
    let before = old.and_then(|s| find(s.conditions(), READY));
    let after = d.get(READY).expect("every reconcile sets Ready");
    if let Some(warning) = ready_event(
        before.map(|c| (c.status == "True", c.reason.as_str())),
        (after.status == "True", &after.reason),
    ) {
        let message = after.message.clone();
        ctx.publish(&obj.object_ref(&()), warning, &after.reason, message)
            .await;
    }
    match outcome {
        Ok(()) => {
            ctx.reset_failures(&obj.meta().uid.clone().unwrap_or_default());
            Ok(Action::requeue(ctx.config.resync))
        }
        Err((_, e)) => Err(e),
    }
}

/// Whether `Ready`'s change from `before` to `after` (status, reason) is worth an event, and if
/// so whether it is a warning: on a flip, or a failure with a new reason.
fn ready_event(before: Option<(bool, &str)>, after: (bool, &str)) -> Option<bool> {
    let (ready, reason) = after;
    let flipped = before.is_some_and(|(r, _)| r) != ready;
    let new_reason = before.map(|(_, r)| r) != Some(reason);
    let warning = !ready && !PROGRESS_REASONS.contains(&reason);
    (flipped || (!ready && new_reason)).then_some(warning)
}

/// Ends a cleanup. Its failure in a namespace being deleted becomes a warning event instead of
/// an error, so the namespace is never held up by what cannot be reached any more.
pub async fn finish_cleanup<K>(ctx: &Context, obj: &K, result: Result<()>) -> Result<Action>
where
    K: Resource<DynamicType = ()>,
{
    let ns = obj.namespace().unwrap_or_default();
    match result {
        Ok(()) => {}
        Err(e) if ctx.namespace_terminating(&ns).await => {
            let note = format!("namespace is being deleted; Keycloak cleanup failed: {e}");
            ctx.publish(&obj.object_ref(&()), true, "CleanupSkipped", note)
                .await;
        }
        Err(e) => return Err(e),
    }
    ctx.forget(obj);
    Ok(Action::await_change())
}

/// Whether `recorded` holds for the object — the cached one, else as the API server has it now:
/// the cache may predate the write-ahead status patch of a reconcile that ran just before.
pub async fn recorded_live<K>(ctx: &Context, obj: &K, recorded: impl Fn(&K) -> bool) -> Result<bool>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    if recorded(obj) {
        return Ok(true);
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let live = api.get_opt(&obj.name_any()).await?;
    Ok(live.is_some_and(|o| recorded(&o)))
}

#[cfg(test)]
mod tests {
    use super::ready_event;

    #[test]
    fn events_on_flips_and_new_failure_reasons_only() {
        let cases = [
            (None, (true, "Ready"), Some(false)),
            (None, (false, "PolicyNotFound"), Some(true)),
            (None, (false, "Unavailable"), Some(false)),
            (Some((true, "Ready")), (true, "Ready"), None),
            (Some((false, "Unavailable")), (true, "Ready"), Some(false)),
            (
                Some((true, "Ready")),
                (false, "KeycloakUnreachable"),
                Some(true),
            ),
            (
                Some((false, "KeycloakUnreachable")),
                (false, "KeycloakUnreachable"),
                None,
            ),
            (
                Some((false, "KeycloakUnreachable")),
                (false, "ScopeConflict"),
                Some(true),
            ),
            (
                Some((false, "ScopeConflict")),
                (false, "Unavailable"),
                Some(false),
            ),
        ];
        for (before, after, want) in cases {
            assert_eq!(ready_event(before, after), want, "{before:?} -> {after:?}");
        }
    }
}
