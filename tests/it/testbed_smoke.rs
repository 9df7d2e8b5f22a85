//! Smoke tests of the test bed itself: they fail if the local control plane
//! or Keycloak does not behave like a real one in the ways the operator's
//! tests rely on (CRDs, garbage collection, RBAC, Deployments, Keycloak admin API).

use crate::support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::Role;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use serde_json::json;
use support::*;

fn api_error_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test]
async fn crd_can_be_installed_and_custom_resource_round_trips() {
    let client = kube_client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.smoke.test" },
        "spec": {
            "group": "smoke.test",
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "properties": { "size": { "type": "integer" }, "color": { "type": "string" } }
                    }}
                }}
            }]
        }
    }))
    .unwrap();
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(e) if api_error_code(&e) == Some(409) => {}
        Err(e) => panic!("creating CRD: {e}"),
    }
    wait_crd_established(&client, "widgets.smoke.test", Duration::from_secs(30)).await;

    let ns = TestNamespace::new(&client, "smoke-crd").await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("smoke.test", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let name = unique_name("w");
    let mut obj = DynamicObject::new(&name, &ar);
    obj.data = json!({ "spec": { "size": 3, "color": "blue" } });
    // A freshly Established CRD can take a moment to be served.
    wait_for("Widget create", Duration::from_secs(30), || {
        let widgets = widgets.clone();
        let obj = obj.clone();
        async move { widgets.create(&PostParams::default(), &obj).await.ok() }
    })
    .await;
    let got = widgets.get(&name).await.expect("reading Widget back");
    assert_eq!(got.data["spec"]["size"], 3);
    assert_eq!(got.data["spec"]["color"], "blue");
    assert_eq!(got.types.as_ref().unwrap().kind, "Widget");
}

#[tokio::test]
async fn owner_reference_garbage_collection_works() {
    let client = kube_client().await;
    let ns = TestNamespace::new(&client, "smoke-gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let parent: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "parent" }, "data": { "role": "parent" }
    }))
    .unwrap();
    let parent = cms
        .create(&PostParams::default(), &parent)
        .await
        .expect("create parent");
    let mut child: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "child" }, "data": { "role": "child" }
    }))
    .unwrap();
    child.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "parent".into(),
        uid: parent.metadata.uid.clone().unwrap(),
        ..Default::default()
    }]);
    cms.create(&PostParams::default(), &child)
        .await
        .expect("create child");

    cms.delete("parent", &DeleteParams::background())
        .await
        .expect("delete parent");
    wait_for(
        "child ConfigMap to be garbage-collected (kube-controller-manager's garbage collector)",
        Duration::from_secs(60),
        || {
            let cms = cms.clone();
            async move {
                match cms.get_opt("child").await {
                    Ok(None) => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await;
}

#[tokio::test]
async fn rbac_refuses_service_account_without_permissions() {
    let admin = kube_client().await;
    let ns = TestNamespace::new(&admin, "smoke-rbac").await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "nobody" } })).unwrap();
    sas.create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");

    let as_sa = kube_client_as_service_account(&ns, "nobody").await;
    let cms: Api<ConfigMap> = Api::namespaced(as_sa.clone(), &ns);
    let err = cms
        .list(&ListParams::default())
        .await
        .expect_err("a ServiceAccount without any Role must not list ConfigMaps");
    assert_eq!(
        api_error_code(&err),
        Some(403),
        "expected 403 Forbidden, got: {err}"
    );
    if let kube::Error::Api(status) = &err {
        let who = format!("system:serviceaccount:{ns}:nobody");
        assert!(status.message.contains(&who), "{}", status.message);
    }

    // Positive control: once a Role allows it, the same client may list.
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "cm-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"] }]
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("create Role");
    bind_role(&admin, &ns, "cm-reader", "nobody").await;
    wait_for(
        "RoleBinding to take effect",
        Duration::from_secs(30),
        || {
            let cms = cms.clone();
            async move { cms.list(&ListParams::default()).await.ok() }
        },
    )
    .await;
}

#[tokio::test]
async fn deployment_gets_replicaset_and_becomes_available() {
    let client = kube_client().await;
    let ns = TestNamespace::new(&client, "smoke-deploy").await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "example.invalid/web:1" }] }
            }
        }
    }))
    .unwrap();
    deploys
        .create(&PostParams::default(), &d)
        .await
        .expect("create Deployment");

    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let rs = wait_for(
        "a ReplicaSet owned by Deployment web",
        Duration::from_secs(60),
        || {
            let rss = rss.clone();
            async move {
                rss.list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .find(|rs| {
                        rs.metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .any(|o| o.kind == "Deployment" && o.name == "web")
                    })
            }
        },
    )
    .await;
    assert_eq!(rs.spec.replicas, Some(1));

    // kwok's fake node runs the Pod (status only), so the Deployment turns Available.
    wait_for(
        "Deployment web to be Available (scheduler + kwok)",
        Duration::from_secs(90),
        || {
            let deploys = deploys.clone();
            async move {
                let st = deploys.get("web").await.ok()?.status?;
                let available = st.conditions?.iter().any(|c| {
                    c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")
                });
                (available && st.available_replicas == Some(1)).then_some(())
            }
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .remove(0);
    assert!(
        pod.spec.unwrap().node_name.is_some(),
        "pod was not scheduled"
    );
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Running"));
}

#[tokio::test]
async fn keycloak_admin_api_creates_reads_and_deletes_a_realm() {
    let tb = testbed().await;
    let token = keycloak_admin_token(tb).await;
    assert!(
        token.split('.').count() == 3,
        "admin token is not a JWT: {token}"
    );

    let kc = keycloak_admin(tb).await;
    let realm = unique_name("smoke");
    let (st, body) = kc
        .post("/admin/realms", &json!({ "realm": realm, "enabled": true }))
        .await;
    assert_eq!(st.as_u16(), 201, "create realm: {body}");
    let (st, body) = kc.get(&format!("/admin/realms/{realm}")).await;
    assert_eq!(st.as_u16(), 200, "get realm: {body}");
    assert_eq!(body["realm"], realm.as_str());
    assert_eq!(body["enabled"], true);
    let (st, body) = kc.delete(&format!("/admin/realms/{realm}")).await;
    assert_eq!(st.as_u16(), 204, "delete realm: {body}");
    let (st, _) = kc.get(&format!("/admin/realms/{realm}")).await;
    assert_eq!(st.as_u16(), 404, "realm still there after delete");
}

#[tokio::test]
async fn keycloak_default_instance_has_cimd_enabled() {
    let tb = testbed().await;
    let kc = keycloak_admin(tb).await;
    let (st, info) = kc.get("/admin/serverinfo").await;
    assert_eq!(st.as_u16(), 200, "serverinfo: {info}");
    let features = info["features"].as_array().expect("serverinfo.features");
    let cimd = features
        .iter()
        .find(|f| {
            f["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case("cimd"))
        })
        .unwrap_or_else(|| panic!("no CIMD feature in serverinfo: {features:?}"));
    assert_eq!(cimd["enabled"], true, "CIMD not enabled: {cimd}");
}
