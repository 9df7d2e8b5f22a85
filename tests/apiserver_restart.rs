//! kube-apiserver restart mid-run: the operator (a real child process, never restarted) keeps
//! running while the API server is down, does not spin, and its watches recover afterwards —
//! proven with a resync period of 300 s, so servers created, changed and deleted after the
//! restart are only reconciled because the watches came back. Its own test binary: stopping the
//! test bed's API server would disturb any test running beside it.

#[allow(dead_code, unused_imports, unused_macros)] // uses only part of the shared harness
mod common;
use common::{harness, stress, support};

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::*;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use mcp_keycloak_operator::api::McpServer;
use serde_json::json;
use stress::*;

const DOWN: Duration = Duration::from_secs(20);

async fn wait_converged(
    client: &kube::Client,
    ns: &str,
    live: &BTreeMap<String, String>,
    gone: &BTreeSet<String>,
    op: &mut ChildOperator,
) -> Duration {
    let started = Instant::now();
    let names: BTreeSet<String> = live.keys().cloned().collect();
    loop {
        let mut last = not_ready(client, ns, &names).await;
        last.extend(still_present(client, ns, gone).await);
        if last.is_empty() {
            return started.elapsed();
        }
        assert!(op.alive(), "operator exited");
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not converged:\n{}",
            last.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_recover_after_an_apiserver_restart_without_restarting_the_operator() {
    let seeded = seeded_namespace("apirestart").await;
    let (client, ns, realm, mut opts) = seeded.parts();
    // No periodic resync within the test: only watch events can drive reconciles.
    opts.resync_seconds = 300;
    let mut op = ChildOperator::spawn(&opts);
    op.wait_ready(Duration::from_secs(60)).await;
    let pid = op.pid;

    let url = |name: &str, v: u32| format!("http://{name}.{ns}.example/mcp/v{v}");
    let mut live = BTreeMap::new();
    for i in 0..5 {
        let name = format!("before{i}");
        create(&client, &ns, &server(&name, "acme", &url(&name, 0))).await;
        live.insert(name.clone(), url(&name, 0));
    }
    wait_converged(&client, &ns, &live, &BTreeSet::new(), &mut op).await;

    // Down for a while: the operator stays up and backs off instead of spinning.
    let cpu_before = op.cpu_seconds();
    let down = support::Stopped::stop("apiserver").await;
    tokio::time::sleep(DOWN).await;
    let cpu_down = op.cpu_seconds() - cpu_before;
    assert!(op.alive(), "operator died while the API server was down");
    let restart_started = Instant::now();
    down.start().await;
    let restart_took = restart_started.elapsed();

    // After the restart, only watch events can tell the operator about these changes.
    let client = support::kube_client().await;
    let servers: Api<McpServer> = Api::namespaced(client.clone(), &ns);
    let changed_at = Instant::now();
    for i in 0..3 {
        let name = format!("after{i}");
        create(&client, &ns, &server(&name, "acme", &url(&name, 0))).await;
        live.insert(name.clone(), url(&name, 0));
    }
    for name in ["before0", "before1"] {
        servers
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"url": url(name, 1)}})),
            )
            .await
            .unwrap();
        live.insert(name.to_string(), url(name, 1));
    }
    servers
        .delete("before4", &DeleteParams::default())
        .await
        .unwrap();
    live.remove("before4");
    let gone = BTreeSet::from(["before4".to_string()]);
    // First the operator itself: every change observed (status.observedGeneration caught up,
    // the deleted server finalized); then Ready, which also needs the control plane's own
    // controllers (and kwok) to have recovered for the new Deployments.
    loop {
        let api: Api<McpServer> = Api::namespaced(client.clone(), &ns);
        let list = api
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let observed = live.keys().all(|n| {
            list.iter().any(|s| {
                s.metadata.name.as_deref() == Some(n.as_str())
                    && s.status
                        .as_ref()
                        .is_some_and(|st| st.observed_generation == s.metadata.generation)
            })
        }) && !list
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some("before4"));
        if observed {
            break;
        }
        assert!(
            changed_at.elapsed() < Duration::from_secs(120),
            "the operator did not see the changes made after the restart"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let observed_in = changed_at.elapsed();
    wait_converged(&client, &ns, &live, &gone, &mut op).await;
    let converged = changed_at.elapsed();
    assert_eq!(op.pid, pid);
    assert!(op.alive(), "operator was restarted or died");
    let violations = consistency_violations(&client, realm, &ns, &live, true).await;
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    let metrics = op.metrics(Duration::from_secs(2)).await.unwrap_or_default();
    let kube_errors = metric_sum(
        &metrics,
        "mcp_operator_reconcile_errors_total",
        &[("reason", "KubernetesError")],
    );
    support::figure(format_args!(
        "apiserver restart: down {} s (+{:.1} s to start again); operator PID {pid} kept running, used {cpu_down:.2} CPU s while the API server was down; \
         3 creations, 2 url changes and 1 deletion made after the restart were all seen by the operator after {:.1} s and Ready after {:.1} s, with resync at 300 s (watches recovered); reconcile errors KubernetesError: {kube_errors}",
        DOWN.as_secs(),
        restart_took.as_secs_f64(),
        observed_in.as_secs_f64(),
        converged.as_secs_f64()
    ));
    assert!(
        cpu_down < DOWN.as_secs_f64() * 0.25,
        "operator used {cpu_down:.1} CPU s in {DOWN:?} while the API server was down: a tight retry loop"
    );

    delete_namespace_and_wait_finalized(&client, &ns, Duration::from_secs(120)).await;
    op.sigkill();
}
