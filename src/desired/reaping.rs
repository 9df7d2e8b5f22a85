//! Reaping abandoned clients: which clients of the realm may be deleted, decided from what
//! Keycloak itself records (sessions per client and stored login events), and the realm event
//! settings that make those events exist. Pure: the controller does the reads and deletes.
//!
//! Verified on Keycloak 26.7.3: a client has no creation time in its representation; anonymous
//! registration stores a `CLIENT_REGISTER` login event (its `clientId` = the new client's id),
//! logins store `LOGIN` and `CODE_TO_TOKEN`, refreshes `REFRESH_TOKEN` — the realm's default
//! event types include all but `REFRESH_TOKEN`. `GET /events?client=…&type=…&max=1` returns the
//! newest matching event; `GET /client-session-stats` lists clients with online (`active`) or
//! offline sessions, and an offline session outlives the user's logout.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use keycloak::types::{ClientRepresentation, RealmEventsConfigRepresentation};

use super::cimd::{from_metadata_document, named_by_keycloak};
use crate::api::{parse_duration, Reaping, OWNER_ATTRIBUTE};

/// Events that count as a client being used.
pub const USE_EVENTS: &[&str] = &["LOGIN", "CODE_TO_TOKEN", "REFRESH_TOKEN"];
/// The event anonymous registration stores when it creates a client.
pub const REGISTER_EVENT: &str = "CLIENT_REGISTER";

/// A `reaping` block, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub min_age: Duration,
    pub idle_after: Duration,
    pub max_per_run: usize,
    pub dry_run: bool,
}

impl Settings {
    /// `None` for durations the CRD's CEL rule would have refused.
    pub fn of(r: &Reaping) -> Option<Settings> {
        Some(Settings {
            min_age: parse_duration(&r.min_age)?,
            idle_after: parse_duration(&r.idle_after)?,
            max_per_run: usize::try_from(r.max_per_run.max(1)).unwrap_or(1),
            dry_run: r.dry_run,
        })
    }

    /// How long login events must be kept for both durations to be measurable.
    pub fn retention(&self) -> Duration {
        self.min_age.max(self.idle_after)
    }
}

/// Who created a client, for the two kinds reaping may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Anonymous registration: Keycloak chose the `clientId` (equal to its id), no operator
    /// marker, not made from a metadata document.
    Registered,
    /// Created by Keycloak from a metadata document this policy admitted (and marked).
    MetadataDocument,
}

/// Which kind `client` is, if reaping may ever consider it; `owner` is this policy's marker.
/// Anything else — hand-made clients, the operator's own, other policies' — is `None`.
pub fn origin(client: &ClientRepresentation, owner: &str) -> Option<Origin> {
    let attrs = client.attributes.as_ref();
    let marker = attrs.and_then(|a| a.get(OWNER_ATTRIBUTE));
    let from_document = from_metadata_document(client);
    let oidc = client
        .protocol
        .as_deref()
        .is_none_or(|p| p == "openid-connect");
    match (from_document, marker) {
        (true, Some(m)) if m == owner => Some(Origin::MetadataDocument),
        (false, None) if named_by_keycloak(client) && oidc => Some(Origin::Registered),
        _ => None,
    }
}

/// Online and offline sessions of one client (`GET /client-session-stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sessions {
    pub online: u64,
    pub offline: u64,
}

/// Since when the realm's stored events can be trusted to show every use: from `since` (when the
/// operator last found or made the event settings sufficient) and never further back than the
/// retention. Times are epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coverage {
    pub since_ms: i64,
    pub retention: Duration,
}

impl Coverage {
    /// The oldest moment from which the store holds every event of the watched types.
    fn horizon(&self, now_ms: i64) -> i64 {
        self.since_ms.max(now_ms - millis(self.retention))
    }
}

/// What the stored events say about one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Newest use or registration event (epoch ms), if any is stored.
    pub last_ms: Option<i64>,
    /// Its registration event, if looked up.
    pub registered: Lookup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    NotLookedUp,
    Found(i64),
    /// Looked up, none stored: registered before the coverage horizon.
    Absent,
}

/// The decision on one client without a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Reap,
    /// Idle long enough, but its age is only known from its registration event: look it up.
    LookUpRegistration,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Idle for `idleAfter` and older than `minAge`, both measured conservatively: time the events
/// do not cover counts as use, and a client's age is only what the events prove.
pub fn judge(a: &Activity, c: &Coverage, now_ms: i64, s: &Settings) -> Verdict {
    let horizon = c.horizon(now_ms);
    // The latest moment the client may have been used: its newest event, or the horizon.
    let last_use = a.last_ms.map_or(horizon, |t| t.max(horizon));
    if now_ms - last_use < millis(s.idle_after) {
        return Verdict::Keep;
    }
    // The latest moment the client may have been created.
    let created = match (a.registered, a.last_ms) {
        (Lookup::Found(t), _) => t,
        (Lookup::Absent, _) | (Lookup::NotLookedUp, None) => horizon,
        (Lookup::NotLookedUp, Some(t)) => t,
    };
    if now_ms - created >= millis(s.min_age) {
        Verdict::Reap
    } else if a.registered == Lookup::NotLookedUp && a.last_ms.is_some() {
        Verdict::LookUpRegistration
    } else {
        Verdict::Keep
    }
}

/// Clients reaping may look at (their kind's settings present), without a session, in the
/// realm's listing order. Events are read only for these.
pub fn unsessioned<'a>(
    clients: &'a [ClientRepresentation],
    owner: &str,
    settings: &HashMap<Origin, Settings>,
    sessions: &HashMap<String, Sessions>,
) -> Vec<(&'a ClientRepresentation, Origin)> {
    let idle = |c: &ClientRepresentation| {
        let id = c.id.as_deref().unwrap_or_default();
        sessions
            .get(id)
            .is_none_or(|s| s.online == 0 && s.offline == 0)
    };
    let kinds = clients.iter().filter_map(|c| Some((c, origin(c, owner)?)));
    kinds
        .filter(|(c, o)| settings.contains_key(o) && idle(c))
        .collect()
}

/// The whole decision for tests and callers that have every client's events at hand:
/// the `clientId`s to delete, at most `maxPerRun` per kind.
pub fn candidates(
    clients: &[ClientRepresentation],
    owner: &str,
    settings: &HashMap<Origin, Settings>,
    sessions: &HashMap<String, Sessions>,
    events: &HashMap<String, Activity>,
    coverage: &Coverage,
    now_ms: i64,
) -> Vec<String> {
    let mut taken: HashMap<Origin, usize> = HashMap::new();
    let mut out = vec![];
    for (c, o) in unsessioned(clients, owner, settings, sessions) {
        let s = &settings[&o];
        let client_id = c.client_id.clone().unwrap_or_default();
        let activity = events.get(&client_id).copied().unwrap_or(Activity {
            last_ms: None,
            registered: Lookup::Absent,
        });
        let n = taken.entry(o).or_default();
        if *n < s.max_per_run && judge(&activity, coverage, now_ms, s) == Verdict::Reap {
            *n += 1;
            out.push(client_id);
        }
    }
    out
}

/// The realm's event settings with storage on, kept for at least `retention`, and the watched
/// types enabled — merged into `live`, never narrowing it. `None` when `live` already does.
pub fn events_config(
    live: &RealmEventsConfigRepresentation,
    retention: Duration,
) -> Option<RealmEventsConfigRepresentation> {
    let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    // No expiration (absent or 0) keeps events forever: long enough.
    let kept = live.events_expiration.is_none_or(|e| e <= 0 || e >= secs);
    let types: BTreeSet<&str> = live
        .enabled_event_types
        .iter()
        .flatten()
        .map(|t| t.as_str())
        .collect();
    let watched = USE_EVENTS.iter().chain([&REGISTER_EVENT]);
    let missing: Vec<String> = watched
        .filter(|t| !types.contains(**t))
        .map(|t| t.to_string())
        .collect();
    if live.events_enabled == Some(true) && kept && missing.is_empty() {
        return None;
    }
    let mut next = live.clone();
    next.events_enabled = Some(true);
    if !kept {
        next.events_expiration = Some(secs);
    }
    let mut all = live.enabled_event_types.clone().unwrap_or_default();
    all.extend(missing);
    next.enabled_event_types = Some(all);
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::cimd::CIMD_CLIENT_ATTRIBUTE;

    const OWNER: &str = "McpAuthPolicy/ns/acme";
    const DAY: i64 = 86_400_000;

    fn client(id: &str, client_id: &str, attrs: &[(&str, &str)]) -> ClientRepresentation {
        let attributes = attrs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        ClientRepresentation {
            id: Some(id.into()),
            client_id: Some(client_id.into()),
            protocol: Some("openid-connect".into()),
            attributes: Some(attributes.collect()),
            ..Default::default()
        }
    }

    fn settings(min_age_days: u64, idle_days: u64, max: usize) -> Settings {
        Settings {
            min_age: Duration::from_secs(min_age_days * 86_400),
            idle_after: Duration::from_secs(idle_days * 86_400),
            max_per_run: max,
            dry_run: false,
        }
    }

    /// Events cover the last 100 days.
    fn coverage(now: i64) -> Coverage {
        Coverage {
            since_ms: now - 100 * DAY,
            retention: Duration::from_secs(100 * 86_400),
        }
    }

    #[test]
    fn only_registered_and_our_document_clients_have_an_origin() {
        let registered = client("5bad9d5c", "5bad9d5c", &[]);
        assert_eq!(origin(&registered, OWNER), Some(Origin::Registered));
        // Hand-made (a chosen clientId), the operator's own, a marked one and SAML: never.
        assert_eq!(origin(&client("u1", "my-app", &[]), OWNER), None);
        let marked = client("x1", "x1", &[(OWNER_ATTRIBUTE, "McpServer/ns/s")]);
        assert_eq!(origin(&marked, OWNER), None);
        let mut saml = registered.clone();
        saml.protocol = Some("saml".into());
        assert_eq!(origin(&saml, OWNER), None);
        // Metadata-document clients: only those this policy marked.
        let url = "https://app.example.com/client.json";
        let ours = client(
            "c1",
            url,
            &[(CIMD_CLIENT_ATTRIBUTE, "1"), (OWNER_ATTRIBUTE, OWNER)],
        );
        assert_eq!(origin(&ours, OWNER), Some(Origin::MetadataDocument));
        let theirs = client(
            "c2",
            url,
            &[
                (CIMD_CLIENT_ATTRIBUTE, "1"),
                (OWNER_ATTRIBUTE, "McpAuthPolicy/o/p"),
            ],
        );
        assert_eq!(origin(&theirs, OWNER), None);
        let unmarked = client("c3", url, &[(CIMD_CLIENT_ATTRIBUTE, "1")]);
        assert_eq!(origin(&unmarked, OWNER), None);
    }

    #[test]
    fn judges_idleness_and_age_conservatively() {
        let now = 1_000 * DAY;
        let s = settings(7, 30, 10);
        let c = coverage(now);
        let at = |last: Option<i64>, registered| Activity {
            last_ms: last.map(|d| now - d * DAY),
            registered,
        };
        // Registered 40 days ago, never used: reap. Used 10 days ago: keep.
        let reg40 = Lookup::Found(now - 40 * DAY);
        assert_eq!(judge(&at(Some(40), reg40), &c, now, &s), Verdict::Reap);
        assert_eq!(judge(&at(Some(10), reg40), &c, now, &s), Verdict::Keep);
        // Nothing stored in 100 days of coverage: reap.
        assert_eq!(
            judge(&at(None, Lookup::NotLookedUp), &c, now, &s),
            Verdict::Reap
        );
        // Coverage only 5 days old: nothing is known to be idle for 30 days.
        let young = Coverage {
            since_ms: now - 5 * DAY,
            ..c
        };
        assert_eq!(
            judge(&at(None, Lookup::Absent), &young, now, &s),
            Verdict::Keep
        );
        // minAge above idleAfter: idle 31 days, age from the last event only → look it up.
        let s = settings(60, 30, 10);
        let v = judge(&at(Some(31), Lookup::NotLookedUp), &c, now, &s);
        assert_eq!(v, Verdict::LookUpRegistration);
        assert_eq!(
            judge(&at(Some(31), Lookup::Found(now - 61 * DAY)), &c, now, &s),
            Verdict::Reap
        );
        assert_eq!(
            judge(&at(Some(31), Lookup::Found(now - 59 * DAY)), &c, now, &s),
            Verdict::Keep
        );
        // Not stored: registered before the horizon, 100 days ago at least.
        assert_eq!(
            judge(&at(Some(31), Lookup::Absent), &c, now, &s),
            Verdict::Reap
        );
    }

    #[test]
    fn candidates_skip_sessions_hand_made_clients_and_stop_at_max_per_run() {
        let now = 1_000 * DAY;
        let clients: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|id| client(id, id, &[]))
            .chain([client("f", "hand-made", &[])])
            .collect();
        let settings = HashMap::from([(Origin::Registered, settings(1, 30, 2))]);
        let sessions = HashMap::from([
            (
                "a".to_string(),
                Sessions {
                    online: 1,
                    offline: 0,
                },
            ),
            (
                "b".to_string(),
                Sessions {
                    online: 0,
                    offline: 1,
                },
            ),
        ]);
        let used = Activity {
            last_ms: Some(now - DAY),
            registered: Lookup::NotLookedUp,
        };
        let events = HashMap::from([("c".to_string(), used)]);
        let c = coverage(now);
        let got = candidates(&clients, OWNER, &settings, &sessions, &events, &c, now);
        assert_eq!(got, vec!["d".to_string(), "e".to_string()]);
        let one = HashMap::from([(
            Origin::Registered,
            Settings {
                max_per_run: 1,
                ..settings[&Origin::Registered]
            },
        )]);
        assert_eq!(
            candidates(&clients, OWNER, &one, &sessions, &events, &c, now),
            vec!["d".to_string()]
        );
        // No settings for a kind: none of that kind.
        let none = HashMap::from([(Origin::MetadataDocument, settings[&Origin::Registered])]);
        assert!(candidates(&clients, OWNER, &none, &sessions, &events, &c, now).is_empty());
    }

    #[test]
    fn event_settings_are_widened_never_narrowed() {
        let month = Duration::from_secs(30 * 86_400);
        let live = RealmEventsConfigRepresentation {
            events_enabled: Some(false),
            events_expiration: None,
            enabled_event_types: Some(vec!["LOGIN".into(), "UPDATE_EMAIL".into()]),
            events_listeners: Some(vec!["jboss-logging".into()]),
            ..Default::default()
        };
        let next = events_config(&live, month).expect("a write");
        assert_eq!(next.events_enabled, Some(true));
        // No expiration means forever: left as it is.
        assert_eq!(next.events_expiration, None);
        let types = next.enabled_event_types.clone().unwrap();
        assert_eq!(
            types,
            [
                "LOGIN",
                "UPDATE_EMAIL",
                "CODE_TO_TOKEN",
                "REFRESH_TOKEN",
                "CLIENT_REGISTER"
            ]
        );
        assert_eq!(next.events_listeners, live.events_listeners);
        // In sync: no write. A longer expiration is kept; a shorter one is raised.
        assert_eq!(events_config(&next, month), None);
        let longer = RealmEventsConfigRepresentation {
            events_expiration: Some(90 * 86_400),
            ..next.clone()
        };
        assert_eq!(events_config(&longer, month), None);
        let shorter = RealmEventsConfigRepresentation {
            events_expiration: Some(3600),
            ..next
        };
        let raised = events_config(&shorter, month).expect("a write");
        assert_eq!(raised.events_expiration, Some(30 * 86_400));
    }

    #[test]
    fn durations_parse_in_one_unit() {
        let p = |s| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(p("90s"), Some(90));
        assert_eq!(p("12h"), Some(43_200));
        assert_eq!(p("30d"), Some(2_592_000));
        assert_eq!(p("5m"), Some(300));
        for bad in ["0s", "1w", "1.5h", "h", "", "-1s", "1h30m"] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }
}
