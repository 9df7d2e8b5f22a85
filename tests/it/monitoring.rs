//! The chart's monitoring add-ons: the PrometheusRule passes `promtool check rules` and its
//! alerts fire exactly as `tests/monitoring/alerts.test.yaml` says (`promtool test rules`, the
//! rule engine of Prometheus itself); the Grafana dashboard is well formed and every query is
//! valid PromQL; every metric the rules and the dashboard name is in the operator's or the
//! gateway's registry, with the right type; and the realm-clients gauges of a real operator
//! process follow the realm on the test bed.

use crate::helm;
use crate::stress::{ChildOperator, OperatorOpts};
use crate::{harness, stress, support};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mcp_keycloak_operator::api::McpAuthPolicy;
use serde_json::{json, Value};

const DASHBOARD: &str =
    include_str!("../../charts/mcp-keycloak-operator/files/grafana-dashboard.json");
const ALERT_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/monitoring/alerts.test.yaml"
);

/// A fresh directory under cargo's test tmp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(support::unique_name(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs promtool; panics with its output unless it succeeds. Returns stdout + stderr.
async fn promtool(args: &[&str]) -> String {
    let out = helm::run("promtool", args, None, false).await;
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(out.ok, "promtool {args:?} failed:\n{text}");
    text
}

#[tokio::test]
async fn alert_rules_pass_promtool_and_fire_exactly_as_documented() {
    let sets = [
        "monitoring.prometheusRule.enabled=true",
        "monitoring.prometheusRule.alertLabels.team=platform",
    ];
    let docs = helm::template("mko", "ops", &sets).await;
    let rule = helm::one(&docs, "PrometheusRule");
    let dir = scratch("alerts");
    let rules = dir.join("rules.json");
    std::fs::write(
        &rules,
        json!({"groups": rule["spec"]["groups"]}).to_string(),
    )
    .unwrap();
    let checked = promtool(&["check", "rules", rules.to_str().unwrap()]).await;
    assert!(checked.contains("SUCCESS: 4 rules found"), "{checked}");
    // Rule files are resolved relative to the test file.
    let tests = dir.join("alerts.test.yaml");
    std::fs::copy(ALERT_TESTS, &tests).unwrap();
    let tested = promtool(&["test", "rules", tests.to_str().unwrap()]).await;
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Off by default: nothing the Prometheus Operator's CRDs are needed for.
    let plain = helm::template("mko", "ops", &[]).await;
    for kind in ["PrometheusRule", "PodMonitor"] {
        assert!(
            plain.iter().all(|d| d["kind"] != kind),
            "{kind} rendered by default"
        );
    }
}

/// `(panel title, query)` of every panel target, Grafana's variables replaced by what a
/// query would see (all namespaces, a 5-minute rate window).
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = vec![];
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$namespace", ".*");
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

/// Panels have unique ids, sit inside the 24-column grid without overlapping, and use the
/// dashboard's data-source variable; every non-row panel has a query.
fn check_layout(dash: &Value) {
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{title} leaves the grid");
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            assert!(
                cells.insert(cell),
                "{title} overlaps another panel at {cell:?}"
            );
        }
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{title} has no query"
            );
        }
    }
}

#[tokio::test]
async fn dashboard_is_well_formed_and_every_query_is_valid_promql() {
    let dash: Value = serde_json::from_str(DASHBOARD).unwrap();
    check_layout(&dash);
    let docs = helm::template("mko", "ops", &["monitoring.dashboard.enabled=true"]).await;
    let cm = helm::one(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(cm["data"]["mcp-keycloak-operator.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        shipped, dash,
        "the ConfigMap carries files/grafana-dashboard.json unchanged"
    );
    // promtool parses each query as a recording rule: a syntax error fails the check.
    let queries = dashboard_queries(&dash);
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| json!({"record": format!("dashboard:query_{i}"), "expr": expr}))
        .collect();
    let file = scratch("dashboard").join("queries.json");
    std::fs::write(
        &file,
        json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .unwrap();
    let checked = promtool(&["check", "rules", file.to_str().unwrap()]).await;
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{checked}"
    );
}

/// Metric names in a PromQL text: `mcp_operator_*` and `mcp_gateway_*` identifiers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in expr.match_indices("mcp_") {
        let rest = &expr[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        out.insert(rest[..end].to_string());
    }
    out
}

/// The `# TYPE` of the family a sample name belongs to in an exposition (`_total` of a
/// counter, `_bucket`/`_sum`/`_count` of a histogram, or a gauge's own name), if any.
fn exposed_type(exposition: &str, sample: &str) -> Option<&'static str> {
    let types: Vec<(&str, &str)> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let has = |name: &str, ty: &str| types.iter().any(|(n, t)| *n == name && *t == ty);
    let suffixed = |suffix: &str, ty: &'static str| {
        sample
            .strip_suffix(suffix)
            .filter(|base| has(base, ty))
            .map(|_| ty)
    };
    suffixed("_total", "counter")
        .or_else(|| suffixed("_bucket", "histogram"))
        .or_else(|| suffixed("_count", "histogram"))
        .or_else(|| suffixed("_sum", "histogram"))
        .or_else(|| has(sample, "gauge").then_some("gauge"))
}

/// The operator's and the gateway's registries with a sample in every family (a family
/// without samples is not exposed at all, so a fresh process would not show them all).
fn expositions() -> (String, String) {
    use mcp_auth_gateway::metrics::Outcome;
    use mcp_keycloak_operator::metrics::{Metrics, RealmLabels};
    let op = Metrics::default();
    op.record_keycloak_request("GET", "find client", "ok");
    op.record_reconcile("mcpserver", Duration::from_millis(3));
    op.record_error("mcpserver", "KeycloakUnreachable");
    op.record_reaped("registered", 1);
    let realm = RealmLabels {
        namespace: "ns".into(),
        policy: "p".into(),
        realm: "r".into(),
    };
    op.record_realm_clients(realm, Some((1, 2)));
    let gw = mcp_auth_gateway::metrics::Metrics::new();
    gw.request(Outcome::Allowed);
    gw.introspection("active", 0.01);
    gw.refusal("expired");
    gw.cache_hit();
    gw.cache_miss();
    gw.stream_cut("expired");
    (op.encode(), gw.encode())
}

/// Every metric of the rules and the dashboard is exposed by the operator or the gateway,
/// with the type its suffix implies.
fn check_names_exposed(rules: &Value) {
    let (operator, gateway) = expositions();
    let dash: Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut exprs: Vec<String> = dashboard_queries(&dash)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    for g in rules["spec"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            exprs.push(r["expr"].as_str().unwrap().to_string());
        }
    }
    let names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert!(names.len() >= 10, "too few metric names found: {names:?}");
    for name in &names {
        let text = if name.starts_with("mcp_operator_") {
            &operator
        } else {
            &gateway
        };
        assert!(
            exposed_type(text, name).is_some(),
            "{name} is not exposed (or has another type)"
        );
    }
}

/// `mcp_operator_<metric>{…, realm="<realm>"}` in an exposition.
fn realm_gauge(text: &str, metric: &str, realm: &str) -> Option<f64> {
    let want = format!("realm=\"{realm}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("mcp_operator_{metric}{{")) && l.contains(&want))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Registers one client anonymously (Keycloak's OIDC registration endpoint).
async fn register_anonymously(realm_url: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{realm_url}/clients-registrations/openid-connect"))
        .json(&json!({"redirect_uris": ["http://127.0.0.1:33418/"], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        201,
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

#[tokio::test]
async fn realm_gauges_of_a_real_operator_follow_the_realm_and_every_named_metric_exists() {
    let seeded = stress::seeded_namespace("mon").await;
    let (client, ns, realm, opts): (_, _, _, OperatorOpts) = seeded.parts();
    let mut op = ChildOperator::spawn(&opts);
    op.wait_ready(Duration::from_secs(60)).await;
    seeded.wait_ready::<McpAuthPolicy>("acme").await;
    let max = seeded
        .get::<McpAuthPolicy>("acme")
        .await
        .spec
        .dynamic_client_registration
        .unwrap()
        .max_clients;
    let scrape = || async { op.metrics(Duration::from_secs(5)).await.unwrap_or_default() };
    let realm_url = format!("{}/realms/{}", seeded.tb.keycloak_url, realm.name);
    let before = support::wait_for("realm gauges", Duration::from_secs(30), || async {
        let text = scrape().await;
        realm_gauge(&text, "realm_clients", &realm.name).zip(realm_gauge(
            &text,
            "realm_max_clients",
            &realm.name,
        ))
    })
    .await;
    let status = seeded
        .get::<McpAuthPolicy>("acme")
        .await
        .status
        .unwrap()
        .realm_clients
        .unwrap();
    assert_eq!(
        before,
        (status as f64, f64::from(max)),
        "gauges = status.realmClients and spec maxClients"
    );
    register_anonymously(&realm_url).await;
    register_anonymously(&realm_url).await;
    // The registration sweep (every 15 s with registration open) counts them.
    support::wait_until("realm_clients + 2", Duration::from_secs(45), || async {
        realm_gauge(&scrape().await, "realm_clients", &realm.name) == Some(before.0 + 2.0)
    })
    .await;
    let rules_docs =
        helm::template("mko", "ops", &["monitoring.prometheusRule.enabled=true"]).await;
    check_names_exposed(helm::one(&rules_docs, "PrometheusRule"));
    // Deleting the policy removes its series.
    harness::delete_and_wait::<McpAuthPolicy>(&client, &ns, "acme").await;
    assert_eq!(
        realm_gauge(&scrape().await, "realm_clients", &realm.name),
        None
    );
}
