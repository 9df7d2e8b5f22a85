//! Client ID Metadata Documents through the Admin API: feature detection, the realm's client
//! profiles and policies (read, merge by name, write only if different), the clients Keycloak
//! creates from metadata documents, and counting the realm's clients cheaply.

use std::future::Future;

use keycloak::types::{
    ClientPolicyRepresentation, ClientProfileRepresentation, ClientRepresentation,
};
use serde::Deserialize;

use super::{ClientSearch, KeycloakAdminClient};
use crate::desired::cimd::{from_metadata_document, registration_candidate};
use crate::desired::plan::{plan_client_policy_pair, ClientPolicyLists, ClientPolicyWrite};
use crate::{Error, Result};

/// Page size when listing clients: the registration sweep reads every client of the realm
/// every 15 s, and a realm of a thousand servers has over a thousand clients. One request per
/// 200, and at most one page of clients the sweep does not keep is in memory.
const PAGE: usize = 200;

/// Counts items with paged probes: `probe(first, max)` returns how many items exist from
/// `first` on, at most `max`. With `hint` = the count seen last time, an unchanged count costs
/// one probe returning one item. Growth pages forward from there, a shrink steps back in
/// doubling strides, and without a hint it pages from 0.
pub async fn count_with<F, Fut>(hint: Option<usize>, page: usize, mut probe: F) -> Result<usize>
where
    F: FnMut(usize, usize) -> Fut,
    Fut: Future<Output = Result<usize>>,
{
    let page = page.max(2);
    // The count is at least `lower` (items seen), and at most any `first` where nothing is.
    let mut lower = 0usize;
    let mut first = hint.map(|h| h.saturating_sub(1)).unwrap_or(0);
    let mut stride = page;
    loop {
        let n = probe(first, page).await?;
        if n == 0 {
            if first <= lower {
                return Ok(first);
            }
            // Fewer items than we thought: step back, in doubling strides, not below `lower`.
            first = first.saturating_sub(stride).max(lower);
            stride = stride.saturating_mul(2);
            continue;
        }
        lower = lower.max(first + n);
        if n < page {
            return Ok(first + n);
        }
        first += page;
    }
}

#[derive(Deserialize)]
struct Discovery {
    client_id_metadata_document_supported: Option<bool>,
}

impl KeycloakAdminClient {
    /// Whether this Keycloak runs with the `cimd` feature: the realm's discovery document then
    /// says `client_id_metadata_document_supported: true` (verified on 26.7.3; without the
    /// feature the field is absent, and so is the `client-id-metadata-document` executor, which
    /// makes a profile naming it fail with 400). A public GET, counted like an admin read.
    pub async fn cimd_supported(&self, realm: &str) -> Result<bool> {
        let url = format!(
            "{}/realms/{realm}/.well-known/openid-configuration",
            self.base_url
        );
        let req = self.tokens.http.get(&url);
        let resp = self.counted_get("read discovery document", req).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::KeycloakApi {
                operation: "read the realm's discovery document".into(),
                status: status.as_u16(),
                message: "unexpected status".into(),
            });
        }
        let d: Discovery = resp.json().await.map_err(|e| Error::KeycloakApi {
            operation: "read the realm's discovery document".into(),
            status: status.as_u16(),
            message: e.to_string(),
        })?;
        Ok(d.client_id_metadata_document_supported == Some(true))
    }

    /// The realm's client profiles and client policies.
    pub async fn client_policy_lists(&self, realm: &str) -> Result<ClientPolicyLists> {
        let profiles = self
            .call("GET", "read client profiles", || {
                self.api.realm_client_policies_profiles_get(realm, None)
            })
            .await?;
        let policies = self
            .call("GET", "read client policies", || {
                self.api.realm_client_policies_policies_get(realm, None)
            })
            .await?;
        Ok(ClientPolicyLists {
            profiles: profiles.profiles.unwrap_or_default(),
            policies: policies.policies.unwrap_or_default(),
        })
    }

    /// One PUT replacing the realm's whole list of profiles or of policies.
    async fn put_client_policy_list(&self, realm: &str, write: &ClientPolicyWrite) -> Result<()> {
        let api = &self.api;
        match write {
            ClientPolicyWrite::Profiles(body) => {
                self.send("PUT", "write client profiles", || {
                    api.realm_client_policies_profiles_put(realm, body.clone())
                })
                .await
            }
            ClientPolicyWrite::Policies(body) => {
                self.send("PUT", "write client policies", || {
                    api.realm_client_policies_policies_put(realm, body.clone())
                })
                .await
            }
        }
    }

    /// Sets our profile and policy named `name` (or removes both when `desired` is `None`; see
    /// [`plan_client_policy_pair`]), leaving every other entry as it is. Returns our policy as
    /// it was before, if any.
    pub async fn ensure_client_policy_pair(
        &self,
        realm: &str,
        name: &str,
        desired: Option<(&ClientProfileRepresentation, &ClientPolicyRepresentation)>,
    ) -> Result<Option<ClientPolicyRepresentation>> {
        let mut lists = self.client_policy_lists(realm).await?;
        self.ensure_client_policy_pair_in(realm, &mut lists, name, desired)
            .await
    }

    /// [`KeycloakAdminClient::ensure_client_policy_pair`] against lists read before (and kept
    /// as written), so one reconcile that sets two pairs reads the lists once. Only the
    /// realm's owning policy writes them, one reconcile at a time.
    pub async fn ensure_client_policy_pair_in(
        &self,
        realm: &str,
        lists: &mut ClientPolicyLists,
        name: &str,
        desired: Option<(&ClientProfileRepresentation, &ClientPolicyRepresentation)>,
    ) -> Result<Option<ClientPolicyRepresentation>> {
        let _one_at_a_time = self.client_policy_lists_lock.lock().await;
        let before = lists
            .policies
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .cloned();
        for write in plan_client_policy_pair(lists, name, desired) {
            self.put_client_policy_list(realm, &write).await?;
            lists.apply(&write);
        }
        Ok(before)
    }

    /// Clients Keycloak created from metadata documents: a URL `client_id` (found with an infix
    /// search for `://`) and Keycloak's CIMD cache attribute.
    pub async fn cimd_clients(&self, realm: &str) -> Result<Vec<ClientRepresentation>> {
        let operation = "search metadata-document clients";
        let (found, _) = self
            .clients_paged(realm, operation, Some("://"), from_metadata_document)
            .await?;
        Ok(found)
    }

    /// The clients of the realm (`client_id`: only those whose id contains it), page by page:
    /// those `keep` accepts, and how many there are in all. Only one page of the others is
    /// ever in memory.
    async fn clients_paged(
        &self,
        realm: &str,
        operation: &str,
        client_id: Option<&str>,
        keep: impl Fn(&ClientRepresentation) -> bool,
    ) -> Result<(Vec<ClientRepresentation>, usize)> {
        let (mut out, mut first) = (vec![], 0usize);
        loop {
            let search = ClientSearch {
                client_id,
                search: client_id.map(|_| true),
                first: Some(first),
                max: Some(PAGE),
            };
            let page = self.clients(realm, operation, search).await?;
            let n = page.len();
            out.extend(page.into_iter().filter(|c| keep(c)));
            if n < PAGE {
                return Ok((out, first + n));
            }
            first += PAGE;
        }
    }

    /// Puts our ownership marker on a client without touching anything else (scopes and mappers
    /// are left out of the PUT, so Keycloak keeps them as they are).
    pub async fn mark_client(
        &self,
        realm: &str,
        live: &ClientRepresentation,
        owner: &str,
    ) -> Result<()> {
        let id = live.id.clone().unwrap_or_default();
        let mut attrs = live.attributes.clone().unwrap_or_default();
        attrs.insert(crate::api::OWNER_ATTRIBUTE.into(), owner.into());
        let body = ClientRepresentation {
            attributes: Some(attrs),
            default_client_scopes: None,
            optional_client_scopes: None,
            protocol_mappers: None,
            ..live.clone()
        };
        self.update_client(realm, &id, &body).await
    }

    /// What the registration sweep and reaping look through (see [`registration_candidate`]),
    /// and the number of clients in the realm: what Keycloak's Max Clients policy counts.
    pub async fn registration_candidates(
        &self,
        realm: &str,
    ) -> Result<(Vec<ClientRepresentation>, usize)> {
        self.clients_paged(realm, "list clients", None, registration_candidate)
            .await
    }

    /// Number of clients in the realm (what Keycloak's Max Clients policy counts), without
    /// listing them all on every resync: see [`count_with`]. `hint` is the last count.
    pub async fn count_clients(&self, realm: &str, hint: Option<usize>) -> Result<usize> {
        count_with(hint, PAGE, |first, max| async move {
            let page = ClientSearch {
                first: Some(first),
                max: Some(max),
                ..Default::default()
            };
            Ok(self.clients(realm, "count clients", page).await?.len())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts with a fake realm of `total` clients; returns (count, probes).
    async fn count(total: usize, hint: Option<usize>, page: usize) -> (usize, usize) {
        let probes = AtomicUsize::new(0);
        let n = count_with(hint, page, |first, max| {
            probes.fetch_add(1, Ordering::Relaxed);
            async move { Ok(total.saturating_sub(first).min(max)) }
        })
        .await
        .unwrap();
        (n, probes.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn counts_exactly_for_every_hint() {
        for total in [0usize, 1, 2, 6, 99, 100, 101, 250, 1000] {
            for hint in [
                None,
                Some(0),
                Some(1),
                Some(total),
                Some(total + 1),
                Some(total.saturating_sub(1)),
                Some(total + 500),
                Some(total / 2),
                Some(5000),
            ] {
                let (n, _) = count(total, hint, 100).await;
                assert_eq!(n, total, "total {total}, hint {hint:?}");
            }
        }
    }

    #[tokio::test]
    async fn unchanged_count_costs_one_probe() {
        assert_eq!(count(5000, Some(5000), 100).await, (5000, 1));
        assert_eq!(count(7, Some(7), 100).await, (7, 1));
        // Small growth or shrink: two probes at most.
        assert_eq!(count(5003, Some(5000), 100).await.1, 1);
        assert!(count(4990, Some(5000), 100).await.1 <= 2);
        // No hint: pages from 0.
        assert_eq!(count(250, None, 100).await, (250, 3));
    }
}
