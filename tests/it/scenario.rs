//! The harness's own promise: a test that fails still removes its namespace and its realm.

use std::sync::mpsc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};

use crate::harness::{Kind, Realm, Scenario};
use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_still_removes_its_namespace_and_realm() {
    // The failing test runs on a thread of its own (current-thread runtime, as a plain
    // `#[tokio::test]`), so that its panic can be observed here.
    let (tx, rx) = mpsc::channel();
    let failed = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let s = Scenario::new("panics").await;
                s.seed(&[("weather", "http://localhost:3000/mcp")]).await;
                tx.send((s.ns.clone(), s.realm.name.clone())).unwrap();
                panic!("an assertion of the test failed");
            })
    })
    .join();
    assert!(failed.is_err(), "the inner test should have panicked");
    let (ns, realm) = rx.recv().expect("the scenario was set up");

    let client = support::kube_client().await;
    let namespace = Api::<Namespace>::all(client.clone())
        .get_opt(&ns)
        .await
        .unwrap();
    assert!(
        namespace.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "namespace {ns} left behind"
    );
    assert_eq!(count::<McpServer>(&client, &ns).await, 0, "McpServers left");
    assert_eq!(
        count::<McpAuthPolicy>(&client, &ns).await,
        0,
        "policies left"
    );
    let kc = Realm::new(&realm).await.kc;
    let (status, _) = kc.get(&format!("/admin/realms/{realm}")).await;
    assert_eq!(status.as_u16(), 404, "realm {realm} left behind");
}

async fn count<K: Kind>(client: &kube::Client, ns: &str) -> usize {
    let api = Api::<K>::namespaced(client.clone(), ns);
    api.list(&Default::default()).await.unwrap().items.len()
}
