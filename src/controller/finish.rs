//! How every reconcile of either kind ends: the failed stage's condition and `Ready`, one status
//! write if anything changed, an event when `Ready` flips or fails for a new reason, and the
//! requeue or the error for the backoff. Cleanup ends alike: never blocked by a namespace that
//! is being deleted.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::conditions::{find, Draft, WithConditions, READY};
use super::ssa::patch_status_if_changed;
use super::Context;
use crate::api::FINALIZER;
use crate::{Error, Result};

/// A kind the operator reconciles: what it does while the object lives, and when it goes.
pub trait Reconciled:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The controller's name in metrics and logs.
    const CONTROLLER: &'static str;

    type Status: WithConditions + Serialize + PartialEq + Send + Sync;

    fn status(&self) -> Option<&Self::Status>;

    /// Whether the object recorded (in status, before its first Keycloak write) that it may
    /// have written to Keycloak.
    fn wrote_to_keycloak(&self) -> bool {
        self.status().is_some_and(|s| s.keycloak_realm().is_some())
    }

    fn apply(
        obj: Arc<Self>,
        ctx: &Context,
        api: &Api<Self>,
    ) -> impl Future<Output = Result<Action>> + Send;

    fn cleanup(obj: Arc<Self>, ctx: &Context) -> impl Future<Output = Result<Action>> + Send;

    /// When a reconcile that succeeded runs again: the resync, unless the kind needs sooner.
    fn requeue_after(&self, ctx: &Context) -> std::time::Duration {
        ctx.config.resync
    }
}

/// One reconcile of either kind, behind the finalizer that guarantees its cleanup.
pub async fn reconcile<K: Reconciled>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let run = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(o) => K::apply(o, &ctx, &api).await,
            Finalizer::Cleanup(o) => K::cleanup(o, &ctx).await,
        }
    });
    // Keycloak requests are counted per controller (metrics::CONTROLLER).
    let result = crate::metrics::CONTROLLER
        .scope(K::CONTROLLER, run)
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .record_reconcile(K::CONTROLLER, started.elapsed());
    // In kube-runtime's span, which names what triggered this reconcile.
    tracing::debug!(
        controller = K::CONTROLLER,
        ok = result.is_ok(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "reconciled"
    );
    result
}

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
pub async fn finish<K: Reconciled>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    mut d: Draft<K::Status>,
    outcome: Staged<()>,
) -> Result<Action> {
    let old = obj.status();
    if let Err((condition, e)) = &outcome {
        d.set(condition, false, e.reason(), e.to_string());
        d.set(READY, false, e.reason(), e.to_string());
    }
    patch_status_if_changed(ctx, api, obj, old, &d.status).await?;
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
            Ok(Action::requeue(obj.requeue_after(ctx)))
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

/// Ends a cleanup that must undo Keycloak writes: `undo` runs only if the object recorded one —
/// in the cached object, else as the API server has it now (the cache may predate the
/// write-ahead status patch of a reconcile that ran just before). Without the record the object
/// goes at once, even when its Keycloak is unreachable: there is nothing to undo.
pub async fn cleanup_keycloak<K, F>(ctx: &Context, obj: &K, undo: F) -> Result<Action>
where
    K: Reconciled,
    F: Future<Output = Result<()>>,
{
    let written = obj.wrote_to_keycloak() || {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
        let live = api.get_opt(&obj.name_any()).await?;
        live.is_some_and(|o| o.wrote_to_keycloak())
    };
    let result = match written {
        true => undo.await,
        false => Ok(()),
    };
    finish_cleanup(ctx, obj, result).await
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
