//! Crash consistency: the operator runs as a real child process and is SIGKILLed at random
//! moments (during start-up, mid-reconcile, between a Keycloak write and the status write) while
//! 50 McpServers are created, updated and deleted and the policy's registration settings change.
//! After a final, uninterrupted run: every surviving server is Ready, each has exactly one
//! Keycloak client with its ownership marker, its Secret holds Keycloak's secret, its audience
//! scope and mappers match its current url, nothing is left in Keycloak for deleted servers, and
//! no registration-policy component is duplicated.
//!
//! Bounded: kills stop at `CRASH_KILLS` (default 200) or after `CRASH_SECONDS` (default 180 s),
//! whichever comes first; e.g. `CRASH_KILLS=2000 CRASH_SECONDS=1800` for a long local run.
//! Its own test binary: the kill loop loads the machine.

#[allow(dead_code, unused_imports, unused_macros)] // uses only part of the shared harness
mod common;
use common::{harness, stress, support};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::*;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use rand::{Rng, SeedableRng};
use serde_json::json;
use stress::*;

const SERVERS: usize = 50;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn url_of(ns: &str, name: &str, version: u32) -> String {
    format!("http://{name}.{ns}.example/mcp/v{version}")
}

/// The workload's bookkeeping: live servers with their current url, and deleted ones.
#[derive(Default)]
struct World {
    live: BTreeMap<String, String>,
    deleted: BTreeSet<String>,
    versions: BTreeMap<String, u32>,
    created: usize,
    updates: usize,
    policy_updates: usize,
}

fn server_obj(ns: &str, name: &str, url: &str, replicas: i32) -> McpServer {
    let mut s = server(name, "acme", url);
    s.spec.replicas = replicas;
    s.spec.env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: "NAMESPACE_HINT".into(),
        value: Some(ns.into()),
        ..Default::default()
    }];
    s
}

/// Creates, updates and deletes servers (and now and then edits the policy) until `stop`.
async fn churn(client: Client, ns: String, world: Arc<Mutex<World>>, stop: Arc<AtomicBool>) {
    let servers: Api<McpServer> = Api::namespaced(client.clone(), &ns);
    let policies: Api<McpAuthPolicy> = Api::namespaced(client.clone(), &ns);
    let mut next = 0usize;
    let mut last_policy_edit = Instant::now();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    while !stop.load(Ordering::Relaxed) {
        let (live_count, pick) = {
            let w = world.lock().unwrap();
            let names: Vec<String> = w.live.keys().cloned().collect();
            let pick = (!names.is_empty()).then(|| names[rng.random_range(0..names.len())].clone());
            (names.len(), pick)
        };
        let roll: f64 = rng.random();
        if live_count < SERVERS {
            // Create (the first 50 in a burst, later ones to replace deleted servers).
            let name = format!("s{next:03}");
            next += 1;
            let url = url_of(&ns, &name, 0);
            let replicas = if rng.random_bool(0.5) { 1 } else { 0 };
            if servers
                .create(
                    &PostParams::default(),
                    &server_obj(&ns, &name, &url, replicas),
                )
                .await
                .is_ok()
            {
                let mut w = world.lock().unwrap();
                w.live.insert(name.clone(), url);
                w.versions.insert(name, 0);
                w.created += 1;
            }
            if next <= SERVERS {
                continue;
            }
        } else if let (Some(name), true) = (pick.clone(), roll < 0.75) {
            // Update: the url (audience mapper, client name, Deployment env) or replicas.
            let version = world.lock().unwrap().versions[&name] + 1;
            let url = url_of(&ns, &name, version);
            let patch = if rng.random_bool(0.7) {
                json!({"spec": {"url": url}})
            } else {
                json!({"spec": {"replicas": rng.random_range(0..2)}})
            };
            let is_url = patch["spec"].get("url").is_some();
            if servers
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                let mut w = world.lock().unwrap();
                if is_url {
                    w.live.insert(name.clone(), url);
                    w.versions.insert(name, version);
                }
                w.updates += 1;
            }
        } else if let Some(name) = pick {
            if servers
                .delete(&name, &DeleteParams::default())
                .await
                .is_ok()
            {
                let mut w = world.lock().unwrap();
                w.live.remove(&name);
                w.deleted.insert(name);
            }
        }
        if last_policy_edit.elapsed() > Duration::from_secs(15) {
            // Registration settings change: the anonymous components are updated in place.
            last_policy_edit = Instant::now();
            let hosts = if rng.random_bool(0.5) {
                json!(["localhost", "127.0.0.1", "vscode.dev"])
            } else {
                json!(["localhost", "127.0.0.1", "vscode.dev", "example.com"])
            };
            let patch = json!({"spec": {"dynamicClientRegistration": {
                "trustedHosts": hosts, "maxClients": rng.random_range(100..200)}}});
            if policies
                .patch("acme", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                world.lock().unwrap().policy_updates += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..250))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_leaves_keycloak_and_secrets_consistent() {
    let max_kills = env_or("CRASH_KILLS", 200);
    let budget = Duration::from_secs(env_or("CRASH_SECONDS", 180));
    let seeded = seeded_namespace("crash").await;
    let (client, ns, realm, opts) = seeded.parts();
    let log = opts.log_file.clone();
    eprintln!("operator log: {}", log.display());

    let world = Arc::new(Mutex::new(World::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let churner = tokio::spawn(churn(
        client.clone(),
        ns.clone(),
        world.clone(),
        stop.clone(),
    ));

    // Kill loop: 45% of the lives end during start-up / the first reconciles, the rest later.
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let started = Instant::now();
    let (mut kills, mut lives_with_writes, mut writes_cut) = (0u64, 0u64, 0f64);
    while kills < max_kills && started.elapsed() < budget {
        let mut op = ChildOperator::spawn(&opts);
        let life = if rng.random_bool(0.45) {
            rng.random_range(30..400)
        } else {
            rng.random_range(400..1600)
        };
        tokio::time::sleep(Duration::from_millis(life)).await;
        // How much Keycloak writing this life did (scraped right before the kill).
        if let Some(m) = op.metrics(Duration::from_millis(150)).await {
            let w = keycloak_writes(&m);
            if w > 0.0 {
                lives_with_writes += 1;
                writes_cut += w;
            }
        }
        assert!(
            op.alive(),
            "operator exited on its own; see {}",
            log.display()
        );
        op.sigkill();
        kills += 1;
    }
    stop.store(true, Ordering::Relaxed);
    churner.await.unwrap();
    let kill_phase = started.elapsed();

    // A final run without interruption must converge.
    let mut op = ChildOperator::spawn(&opts);
    let (live, deleted, created, updates, policy_updates) = {
        let w = world.lock().unwrap();
        (
            w.live.clone(),
            w.deleted.clone(),
            w.created,
            w.updates,
            w.policy_updates,
        )
    };
    let converge_started = Instant::now();
    let live_names: BTreeSet<String> = live.keys().cloned().collect();
    let mut last = vec![];
    while converge_started.elapsed() < Duration::from_secs(180) {
        last = not_ready(&client, &ns, &live_names).await;
        last.extend(
            still_present(&client, &ns, &deleted)
                .await
                .into_iter()
                .map(|n| format!("{n}: deleted but still present")),
        );
        if last.is_empty() {
            break;
        }
        assert!(op.alive(), "operator exited; see {}", log.display());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converged_in = converge_started.elapsed();
    support::figure(format_args!(
        "crash consistency: {kills} SIGKILLs in {:.0} s ({lives_with_writes} lives had written to Keycloak, {writes_cut} Keycloak writes in killed lives); \
         workload: {created} servers created, {updates} updates, {} deleted, {policy_updates} policy edits; {} servers left; converged {:.1} s after the last kill",
        kill_phase.as_secs_f64(),
        deleted.len(),
        live.len(),
        converged_in.as_secs_f64()
    ));
    assert!(
        last.is_empty(),
        "not converged after the kills (log {}):\n{}",
        log.display(),
        last.join("\n")
    );
    assert!(kills >= 20, "only {kills} kills");
    let violations = consistency_violations(&client, realm, &ns, &live, true).await;
    assert!(
        violations.is_empty(),
        "inconsistent after {kills} kills:\n{}",
        violations.join("\n")
    );

    // Deleting the namespace (operator still running) removes every server's Keycloak objects.
    delete_namespace_and_wait_finalized(&client, &ns, Duration::from_secs(180)).await;
    assert_nothing_left(&client, realm, &ns, "deleting the namespace").await;
    op.sigkill();
}

/// Regression test of the write-ahead of `status.keycloakRealm`: the operator is SIGKILLed the
/// moment the server's Keycloak client appears (before the reconcile could write its status),
/// the server is deleted while no operator runs, and a fresh operator must still remove the
/// client and the audience scope. Before the fix cleanup believed nothing had been written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_the_client_is_created_then_delete_leaves_nothing() {
    // (Also: a namespace deletion that removes the admin Secret first leaves nothing behind.)
    let seeded = seeded_namespace("crashpoint").await;
    let (client, ns, realm, opts) = seeded.parts();
    let mut op = ChildOperator::spawn(&opts);
    wait_condition::<McpAuthPolicy>(&client, &ns, "acme", "Ready", "True").await;
    let servers: Api<McpServer> = Api::namespaced(client.clone(), &ns);
    let mut recorded_before_kill = 0;
    for i in 0..3 {
        let name = format!("victim{i}");
        create(&client, &ns, &server(&name, "acme", &url_of(&ns, &name, 0))).await;
        let started = Instant::now();
        while realm.client(&format!("mcp.{ns}.{name}")).await.is_none() {
            assert!(started.elapsed() < WAIT, "client of {name} never appeared");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        op.sigkill();
        let s = servers.get(&name).await.unwrap();
        if s.status.and_then(|s| s.keycloak_realm).is_some() {
            recorded_before_kill += 1;
        }
        servers
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap();
        op = ChildOperator::spawn(&opts);
        support::wait_for(&format!("{name} finalized"), WAIT, || async {
            servers.get_opt(&name).await.ok()?.is_none().then_some(())
        })
        .await;
        assert!(
            realm.client(&format!("mcp.{ns}.{name}")).await.is_none(),
            "{name}'s Keycloak client outlived it"
        );
        assert!(
            realm
                .scope(&format!("mcp:server:{ns}:{name}"))
                .await
                .is_none(),
            "{name}'s audience scope outlived it"
        );
    }
    support::figure(format_args!("killed 3 times right after the Keycloak client appeared; keycloakRealm already recorded each time: {recorded_before_kill}/3; nothing left behind"));
    assert_eq!(
        recorded_before_kill, 3,
        "status.keycloakRealm must be written before Keycloak is"
    );

    // Deleting the namespace deletes the admin Secret too, possibly before the servers' cleanup
    // ran: the operator still removes their Keycloak objects (with the admin client it used).
    let mut live = BTreeMap::new();
    for name in ["keep0", "keep1"] {
        create(&client, &ns, &server(name, "acme", &url_of(&ns, name, 0))).await;
        live.insert(name.to_string(), url_of(&ns, name, 0));
    }
    for name in live.keys() {
        wait_condition::<McpServer>(&client, &ns, name, "Ready", "True").await;
    }
    let v = consistency_violations(&client, realm, &ns, &live, true).await;
    assert!(v.is_empty(), "{}", v.join("\n"));
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
        .delete("keycloak-admin", &DeleteParams::default())
        .await
        .unwrap();
    delete_namespace_and_wait_finalized(&client, &ns, WAIT).await;
    assert_nothing_left(
        &client,
        realm,
        &ns,
        "the namespace (and its admin Secret) was deleted",
    )
    .await;
    op.sigkill();
}

/// Nothing of namespace `ns` is left in Keycloak after `what`.
async fn assert_nothing_left(client: &Client, realm: &Realm, ns: &str, what: &str) {
    let left = consistency_violations(client, realm, ns, &BTreeMap::new(), false).await;
    assert!(
        left.is_empty(),
        "left behind after {what}:\n{}",
        left.join("\n")
    );
}
