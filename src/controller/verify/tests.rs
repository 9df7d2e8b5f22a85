use super::*;
use serde_json::json;

const URL: &str = "https://weather.example.com";

fn pod(name: &str, ip: Option<&str>, ready: bool, deleting: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name,
                     "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z")},
        "status": {"podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
    }))
    .unwrap()
}

fn facts(tools: Option<u32>) -> ServerFacts {
    ServerFacts {
        protocol_version: "2025-06-18".into(),
        server_info: probe::ServerInfo {
            name: "everything".into(),
            version: "2.0.0".into(),
        },
        capabilities: vec!["logging".into(), "tools".into()],
        tool_count: tools,
    }
}

fn doc(resource: &str, outcome: Option<Result<ServerFacts, probe::ProbeError>>) -> Answer {
    let mut d = McpStatus::initial(resource, true);
    if let Some(o) = outcome {
        d.record(o, "t".into());
    }
    Answer::Doc(Box::new(d))
}

#[test]
fn only_ready_live_pods_with_an_ip_are_asked_by_name_and_few() {
    let mut pods = vec![
        pod("b", Some("10.0.0.2"), true, false),
        pod("a", Some("fd00::1"), true, false),
        pod("unready", Some("10.0.0.3"), false, false),
        pod("leaving", Some("10.0.0.4"), true, true),
        pod("no-ip", None, true, false),
        pod("garbage-ip", Some("10.0.0"), true, false),
    ];
    let t = targets(&pods);
    assert_eq!(
        t.iter().map(|t| t.pod.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(
        pod_url(t[0].ip, 9090, "/mcp-status"),
        "http://[fd00::1]:9090/mcp-status"
    );
    for i in 0..10 {
        pods.push(pod(&format!("z{i}"), Some("10.0.1.1"), true, false));
    }
    assert_eq!(targets(&pods).len(), MAX_PODS);
}

#[test]
fn the_verdict_follows_the_pods_documents() {
    let ok = |p: &str| (p.to_string(), doc(URL, Some(Ok(facts(Some(11))))));
    let v = judge(URL, &[ok("a"), ok("b")]);
    assert_eq!((v.status, v.reason), (Tri::True, "HandshakeSucceeded"));
    assert_eq!(v.facts, Some(facts(Some(11))));
    assert_eq!(
        v.message,
        "pod a: everything 2.0.0 answered initialize (protocol 2025-06-18, 11 tools)"
    );

    let down = probe::ProbeError::Unreachable("cannot connect to the MCP server".into());
    let v = judge(URL, &[ok("a"), ("b".into(), doc(URL, Some(Err(down))))]);
    assert_eq!((v.status, v.reason), (Tri::False, "UpstreamUnreachable"));
    assert_eq!(v.message, "pod b: cannot connect to the MCP server");
    assert_eq!(v.facts, None);

    let garbage = probe::ProbeError::Handshake("initialize answered HTTP 500".into());
    let v = judge(URL, &[("a".into(), doc(URL, Some(Err(garbage))))]);
    assert_eq!((v.status, v.reason), (Tri::False, "HandshakeFailed"));

    let cases = [
        (vec![], "NoPodsReady"),
        (
            vec![("a".to_string(), Answer::NoAnswer)],
            "StatusUnreachable",
        ),
        (vec![("a".to_string(), doc(URL, None))], "Pending"),
        // A pod IP reused by another server's pod answers for that server: no answer for this one.
        (
            vec![(
                "a".to_string(),
                doc("https://other.example.com", Some(Ok(facts(None)))),
            )],
            "StatusUnreachable",
        ),
        (
            vec![(
                "a".to_string(),
                Answer::Doc(Box::new(McpStatus::initial(URL, false))),
            )],
            "ProbeDisabled",
        ),
    ];
    for (answers, reason) in cases {
        let v = judge(URL, &answers);
        assert_eq!((v.status, v.reason), (Tri::Unknown, reason), "{answers:?}");
    }
}

#[test]
fn a_pods_words_are_bounded_before_they_reach_status() {
    let mut loud = facts(None);
    loud.server_info.name = format!("x\u{7}{}", "y".repeat(10_000));
    loud.capabilities = (0..100).map(|i| format!("c{i}")).collect();
    let v = judge(URL, &[("a".into(), doc(URL, Some(Ok(loud))))]);
    let f = v.facts.unwrap();
    assert_eq!(f.server_info.name.chars().count(), 128);
    assert!(!f.server_info.name.contains('\u{7}'));
    assert_eq!(f.capabilities.len(), 32);
    let mut d = McpStatus::initial(URL, true);
    d.record(
        Err(probe::ProbeError::Handshake("z".repeat(5000))),
        "t".into(),
    );
    let v = judge(URL, &[("a".into(), Answer::Doc(Box::new(d)))]);
    assert!(v.message.len() < 300, "{}", v.message.len());
}

#[test]
fn native_metadata_and_challenge_checks() {
    let issuer = "https://kc.example.com/realms/acme";
    let good = json!({"resource": URL, "authorization_servers": [issuer]}).to_string();
    assert_eq!(check_metadata(good.as_bytes(), URL, issuer), Ok(()));
    let wrong = json!({"resource": "https://evil", "authorization_servers": [issuer]}).to_string();
    assert!(check_metadata(wrong.as_bytes(), URL, issuer).is_err());
    let no_issuer = json!({"resource": URL, "authorization_servers": ["https://x"]}).to_string();
    assert!(check_metadata(no_issuer.as_bytes(), URL, issuer).is_err());
    assert!(check_metadata(b"<html>", URL, issuer).is_err());

    let challenge = r#"Bearer resource_metadata="https://weather.example.com/.well-known/oauth-protected-resource", scope="mcp:tools""#;
    assert_eq!(check_challenge(401, Some(challenge)), Ok(()));
    assert!(
        check_challenge(200, Some(challenge)).is_err(),
        "an open server"
    );
    assert!(check_challenge(401, None).is_err());
    assert!(check_challenge(401, Some("Basic realm=x")).is_err());
    assert!(check_challenge(401, Some("Bearer realm=x")).is_err());

    let v = judge_native(&[("a".into(), NativeCheck::Passed)]);
    assert_eq!((v.status, v.reason), (Tri::Unknown, "HandshakeNotProbed"));
    let v = judge_native(&[
        ("a".into(), NativeCheck::Passed),
        ("b".into(), NativeCheck::ChallengeInvalid("open".into())),
    ]);
    assert_eq!(
        (v.status, v.reason, v.message.as_str()),
        (Tri::False, "ChallengeInvalid", "pod b: open")
    );
    let v = judge_native(&[("a".into(), NativeCheck::MetadataInvalid("m".into()))]);
    assert_eq!(v.reason, "ProtectedResourceMetadataInvalid");
    assert_eq!(judge_native(&[]).reason, "NoPodsReady");
}

fn at(s: i64) -> Time {
    Time(jiff::Timestamp::from_second(s).unwrap())
}

/// Merges `v` into `status` at second `s`.
fn merged(status: McpServerStatus, v: &Verdict, s: i64) -> McpServerStatus {
    let mut d = Draft::new(status, Some(1), at(s));
    merge(&mut d, v, at(s));
    d.status
}

#[test]
fn rechecks_of_an_unchanged_server_change_nothing() {
    let v = judge(URL, &[("a".into(), doc(URL, Some(Ok(facts(Some(11))))))]);
    let first = merged(McpServerStatus::default(), &v, 10);
    let mcp = first.mcp.clone().unwrap();
    assert_eq!(mcp.server_info.as_ref().unwrap().name, "everything");
    assert_eq!(mcp.tool_count, Some(11));
    assert_eq!(mcp.last_verified, Some(at(10)));
    assert_eq!(
        merged(first.clone(), &v, 20),
        first,
        "same answer later: same status"
    );

    // Another answer (a new version with more tools) moves lastVerified.
    let v2 = judge(URL, &[("a".into(), doc(URL, Some(Ok(facts(Some(12))))))]);
    let second = merged(first.clone(), &v2, 30);
    assert_eq!(second.mcp.as_ref().unwrap().last_verified, Some(at(30)));

    // A failure keeps the facts and flips the condition; recovery moves the time again.
    let down = judge(
        URL,
        &[(
            "a".into(),
            doc(URL, Some(Err(probe::ProbeError::Unreachable("x".into())))),
        )],
    );
    let failed = merged(second.clone(), &down, 40);
    assert_eq!(failed.mcp, second.mcp);
    let c = crate::controller::conditions::find(&failed.conditions, VERIFIED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "UpstreamUnreachable")
    );
    assert_eq!(c.last_transition_time, at(40));
    assert_eq!(
        merged(failed.clone(), &down, 50),
        failed,
        "still down: no change"
    );
    let back = merged(failed, &v2, 60);
    assert_eq!(back.mcp.as_ref().unwrap().last_verified, Some(at(60)));

    let unknown = merged(McpServerStatus::default(), &judge(URL, &[]), 70);
    let c = crate::controller::conditions::find(&unknown.conditions, VERIFIED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("Unknown", "NoPodsReady")
    );
    assert_eq!(unknown.mcp, None);
}
