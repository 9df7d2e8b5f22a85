//! The per-McpServer NetworkPolicy: applied when on, removed (ours only) when off, and the
//! `NetworkIsolated` condition saying which.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams};
use kube::ResourceExt;

use super::conditions::NETWORK_ISOLATED;
use super::server::Run;
use super::ssa::apply_if_changed;

use crate::desired::workload;
use crate::Result;

/// Brings the server's NetworkPolicy in line and records the outcome as a condition. Writes
/// nothing at steady state (apply only on difference; the prune path only reads).
impl Run<'_> {
    pub(super) async fn isolate(&mut self) -> Result<()> {
        let (server, ctx, uid) = (self.server, self.ctx, self.uid.clone());
        let api: Api<NetworkPolicy> = self.api();
        let operator_on = ctx.config.server_network_policies;
        let (on, reason, message) = if workload::network_policy_enabled(server, operator_on) {
            let peers = [&ctx.config.metrics_peer, &ctx.config.operator_peer];
            let desired = workload::network_policy(server, peers.into_iter().flatten());
            apply_if_changed(self.ctx, &api, &desired, &uid).await?;
            (
                true,
                "NetworkPolicyApplied",
                format!(
                    "NetworkPolicy {} admits only the {} port",
                    server.name_any(),
                    if server.spec.auth.mode == crate::api::AuthMode::Proxy {
                        "gateway (and metrics)"
                    } else {
                        "server"
                    }
                ),
            )
        } else {
            prune(&api, &server.name_any(), &uid).await?;
            if operator_on {
                (
                    false,
                    "OptedOut",
                    "spec.networkPolicy.enabled is false: any pod can reach the server's pods"
                        .to_string(),
                )
            } else {
                (
                    false,
                    "DisabledByOperator",
                    "the operator runs without per-server NetworkPolicies".to_string(),
                )
            }
        };
        self.d.set(NETWORK_ISOLATED, on, reason, message);
        Ok(())
    }
}

/// Deletes the NetworkPolicy of that name if (and only if) this server owns it.
async fn prune(api: &Api<NetworkPolicy>, name: &str, owner_uid: &str) -> Result<()> {
    let Some(live) = api.get_opt(name).await? else {
        return Ok(());
    };
    let ours = live
        .owner_references()
        .iter()
        .any(|r| r.uid == owner_uid && r.controller == Some(true));
    if ours {
        api.delete(name, &DeleteParams::default()).await?;
    }
    Ok(())
}
