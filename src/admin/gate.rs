//! Keeps a realm's client creations and the additions to its realm scope lists apart.
//!
//! Keycloak 26.7 links the realm's default and optional scopes to every new client (and then
//! strips them from ours). After each change to those lists it rebuilds them, and a client
//! created in between pays for that: in a burst of new servers, interleaving the two cost
//! Keycloak 2.3–2.8× the CPU per server (`BENCHMARKS.md`, scale section).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify, RwLock};

use crate::Result;

/// Per realm: client creations share it; list additions wait until no creation runs or waits,
/// take it alone, and the first to get it makes every addition waiting by then. Creations never
/// wait for waiting additions. In a burst of 300 new servers this made the additions in 94
/// batches, where each server alone would alternate with the creations 300 times.
pub(super) struct RealmGates<K>(Mutex<HashMap<String, Arc<Gate<K>>>>);

impl<K> Default for RealmGates<K> {
    fn default() -> Self {
        RealmGates(Mutex::default())
    }
}

impl<K> RealmGates<K> {
    pub fn of(&self, realm: &str) -> Arc<Gate<K>> {
        let mut gates = self.0.lock().expect("gates poisoned");
        gates.entry(realm.to_string()).or_default().clone()
    }
}

pub(super) struct Gate<K> {
    lock: RwLock<()>,
    /// Shared work running or queued, and a wake-up when there is none.
    sharing: AtomicUsize,
    idle: Notify,
    waiting: Mutex<Vec<Waiting<K>>>,
}

/// An item to write, and where its result goes.
type Waiting<K> = (K, oneshot::Sender<Result<()>>);

impl<K> Default for Gate<K> {
    fn default() -> Self {
        Gate {
            lock: RwLock::default(),
            sharing: AtomicUsize::new(0),
            idle: Notify::new(),
            waiting: Mutex::default(),
        }
    }
}

/// Counts one shared work while it lives (also when its future is dropped).
struct Sharing<'a, K>(&'a Gate<K>);

impl<K> Drop for Sharing<'_, K> {
    fn drop(&mut self) {
        if self.0.sharing.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl<K: Clone> Gate<K> {
    /// Runs `work` beside other shared work, never during a batch of `write`s.
    pub async fn shared<T>(&self, work: impl Future<Output = T>) -> T {
        self.sharing.fetch_add(1, Ordering::AcqRel);
        let _counted = Sharing(self);
        let _shared = self.lock.read().await;
        work.await
    }

    /// Returns once no shared work runs or waits (new shared work may start right after).
    async fn until_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.sharing.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// `write(item)`, alone, together with every item waiting when this caller's turn comes;
    /// returns this item's result, whichever caller made it.
    pub async fn batched<F, Fut>(&self, item: K, write: F) -> Result<()>
    where
        F: Fn(K) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let (done, result) = oneshot::channel();
        self.waiting().push((item.clone(), done));
        {
            self.until_idle().await;
            let _alone = self.lock.write().await;
            let batch = std::mem::take(&mut *self.waiting());
            if !batch.is_empty() {
                tracing::debug!(
                    additions = batch.len(),
                    "realm scope list additions at once"
                );
            }
            for (next, done) in batch {
                let _ = done.send(write(next).await);
            }
        }
        match result.await {
            Ok(r) => r,
            // The caller making it was cancelled before it got to this item.
            Err(_) => {
                let _alone = self.lock.write().await;
                write(item).await
            }
        }
    }

    fn waiting(&self) -> MutexGuard<'_, Vec<Waiting<K>>> {
        self.waiting.lock().expect("gate poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type Log = Arc<Mutex<Vec<String>>>;

    fn note(log: &Log, line: String) {
        log.lock().unwrap().push(line);
    }

    #[tokio::test]
    async fn additions_wait_for_creations_and_the_first_makes_them_all() {
        let gates = Arc::new(RealmGates::<u32>::default());
        let log: Log = Arc::default();
        let (release, released) = oneshot::channel::<()>();
        let creating = tokio::spawn({
            let (gate, log) = (gates.of("r"), log.clone());
            async move {
                gate.shared(async {
                    note(&log, "create begins".into());
                    released.await.unwrap();
                    note(&log, "create ends".into());
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let adding: Vec<_> = (0..5u32)
            .map(|caller| {
                let (gate, log) = (gates.of("r"), log.clone());
                tokio::spawn(async move {
                    let write = |item: u32| {
                        note(&log, format!("caller {caller} adds {item}"));
                        async { Ok(()) }
                    };
                    gate.batched(caller, write).await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Another realm is not held up.
        let other_realm = gates.of("other");
        let other = other_realm.batched(9, |_| async { Ok(()) });
        tokio::time::timeout(Duration::from_secs(1), other)
            .await
            .expect("another realm waited")
            .unwrap();
        // Nor is another creation: waiting additions never hold creations up.
        let gate = gates.of("r");
        let second = gate.shared(async { note(&log, "second create".into()) });
        tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .expect("a creation waited for additions");
        let before = ["create begins", "second create"];
        assert_eq!(*log.lock().unwrap(), before, "added during a create");
        release.send(()).unwrap();
        creating.await.unwrap();
        for a in adding {
            a.await.unwrap().unwrap();
        }
        let log = log.lock().unwrap();
        assert_eq!(log[..3], ["create begins", "second create", "create ends"]);
        let first = log[3].split(' ').nth(1).unwrap().to_string();
        let mut items: Vec<_> = log[3..]
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        items.sort_unstable();
        assert_eq!(items, ["0", "1", "2", "3", "4"], "{log:?}");
        assert!(
            log[3..]
                .iter()
                .all(|l| l.starts_with(&format!("caller {first} "))),
            "more than one batch: {log:?}"
        );
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_items_result() {
        let gate = Gate::<u32>::default();
        let write = |item: u32| async move {
            match item {
                2 => Err(crate::Error::invalid("Two", "two")),
                _ => Ok(()),
            }
        };
        let (a, b) = tokio::join!(gate.batched(1, write), gate.batched(2, write));
        assert!(a.is_ok());
        assert_eq!(b.unwrap_err().reason(), "Two");
    }
}
