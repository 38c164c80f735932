//! The periodic bulk resync: each account's servers are listed (paginated, one listing instead
//! of one request per server) and compared with the store. What it finds on instances nobody
//! is working on — an action that took effect, drift, a server gone — is recorded; servers
//! carrying our mark that no live instance holds are reported as orphans.
//!
//! Memory stays proportional to the account's size, not to a multiple of it: the listing is
//! kept as a compact index (id → state, mark, held), filled page by page as the module streams
//! it, and instances are read a page at a time.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::attach::orphaned;
use super::decide::{resynced, Next};
use crate::metrics::Metrics;
use crate::provider::account::{Account, Accounts};
use crate::provider::{PowerState, Server};
use crate::store::{InstanceFilter, NextCheck, ObservedStatus, SqlStore, Store};

/// Accounts with at most this many servers also hand their listing to the account's view,
/// whose looks then need no request of their own; larger ones keep the compact index only.
const VIEW_MAX: usize = 20_000;

/// What a listing shows of one server, and whether a live instance holds it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    state: PowerState,
    mark: Option<i64>,
    held: bool,
}

/// A listing as a compact index: (server id, what was seen) sorted by id. A sorted vector
/// takes a third of the memory of a hash map of the same entries, and never rehashes.
#[derive(Debug, Default)]
struct Index(Vec<(Box<str>, Seen)>);

impl Index {
    fn push(&mut self, id: &str, seen: Seen) {
        self.0.push((id.into(), seen));
    }

    /// Sorts it for lookups; a server listed twice (a page boundary moving) counts once.
    fn seal(&mut self) {
        self.0.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.0.dedup_by(|a, b| a.0 == b.0);
        self.0.shrink_to_fit();
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Seen> {
        match self.0.binary_search_by(|(k, _)| (**k).cmp(id)) {
            Ok(i) => Some(&mut self.0[i].1),
            Err(_) => None,
        }
    }

    fn get(&self, id: &str) -> Option<&Seen> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(id))
            .ok()
            .map(|i| &self.0[i].1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Lists every account's servers every `every`, within each account's spare rate budget.
pub(super) async fn resync_loop(
    store: SqlStore,
    accounts: Arc<RwLock<Arc<Accounts>>>,
    metrics: Arc<Metrics>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = accounts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        metrics.keep_orphans_of(snapshot.iter().map(|a| a.id.as_str()));
        for account in snapshot.iter() {
            if !account.provider.lists_servers() {
                continue;
            }
            // A module that meters its own requests takes a token per page; others take one
            // for the whole listing.
            let spare = if account.policy.meters_requests {
                account.limiter.has_spare()
            } else {
                account.limiter.try_acquire_background()
            };
            if !spare {
                tracing::debug!(account = %account.id, "resync skipped: the rate budget is kept for mutations");
                continue;
            }
            let resync = tokio::select! {
                () = shutdown.cancelled() => return,
                r = resync_account(&store, account, &metrics) => r,
            };
            match resync {
                Ok(n) => metrics.set_orphans(&account.id, n),
                Err(e) => tracing::warn!(account = %account.id, error = %e, "resync failed"),
            }
        }
    }
}

/// Lists an account's servers and compares them with the store: records what it finds on
/// instances nobody is working on (an action that took effect, drift, a server gone), and
/// reports orphans. Returns the number of orphans.
///
/// # Errors
/// When the provider or the store cannot be read.
pub async fn resync_account(
    store: &SqlStore,
    account: &Account,
    metrics: &Metrics,
) -> anyhow::Result<i64> {
    let started = store.now().await?;
    account.view.forget().await;
    let mut listed = Index::default();
    // The full servers too while the account is small enough to hand them to its view.
    let mut for_view: Option<Vec<Server>> = Some(Vec::new());
    let count = account
        .provider
        .list_owned_each(&mut |s: Server| {
            listed.push(
                &s.id,
                Seen {
                    state: s.state,
                    mark: s.instance_id,
                    held: false,
                },
            );
            match &mut for_view {
                Some(v) if v.len() < VIEW_MAX => v.push(s),
                _ => for_view = None,
            }
        })
        .await?;
    metrics.provider_call(&account.id, "list", "ok");
    listed.seal();
    if let Some(servers) = for_view {
        let cost = account.provider.list_requests(count);
        let listing = crate::provider::view::listing(servers);
        account.view.offer(started, listing, cost).await;
    }
    // Servers created moments ago may not be listed yet; recent changes are left alone.
    let settled_before = started
        - chrono::Duration::from_std(account.policy.poll * 4 + Duration::from_secs(5))
            .unwrap_or_default();
    // Instances are read a page at a time, so a large account never sits in memory whole;
    // the servers live instances hold are marked in the index for the orphan check.
    let mut awaiting = HashSet::new();
    let mut after = None;
    loop {
        let page = store
            .list_instances(&InstanceFilter {
                provider_account: Some(account.id.clone()),
                after_id: after,
                limit: Some(1000),
                ..InstanceFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for i in &page {
            let live = i.observed_status != ObservedStatus::Terminated;
            match i.provider_server_id.as_deref() {
                Some(id) if live => {
                    if let Some(seen) = listed.get_mut(id) {
                        seen.held = true;
                    }
                }
                None if live => {
                    awaiting.insert(i.id);
                }
                _ => {}
            }
            let state = match i.provider_server_id.as_deref() {
                // An attached server carries no mark yet, so the listing cannot show it: it is
                // looked at on its own, with the budget's spare requests only.
                Some(id) if i.claim_pending && live => {
                    let spare = if account.policy.meters_requests {
                        account.limiter.has_spare()
                    } else {
                        account.limiter.try_acquire_background()
                    };
                    if !spare {
                        continue;
                    }
                    match account.provider.inspect(id).await {
                        Ok(found) => found.map(|s| s.state),
                        Err(e) => {
                            tracing::warn!(account = %account.id, instance = i.id, error = %e, "resync: cannot look at an attached server");
                            continue;
                        }
                    }
                }
                Some(id) => listed.get(id).map(|s| s.state),
                None => None,
            };
            if let Some(found) = resynced(i, state, settled_before) {
                record_resynced(store, i, found, metrics).await?;
            }
        }
    }
    let mut orphans = 0;
    for (id, seen) in listed
        .0
        .iter()
        .filter(|(_, s)| orphaned(s.held, s.mark, &awaiting))
    {
        orphans += 1;
        tracing::warn!(
            account = %account.id,
            server = %id,
            label = ?seen.mark,
            "orphan server: it carries our label but belongs to no live instance; delete it at the provider, or take it on with `provisioner instances import --account {} --server-id {id} --customer CUSTOMER --product PRODUCT`",
            account.id,
        );
    }
    tracing::debug!(account = %account.id, servers = count, listed = listed.len(), orphans, "resync done");
    drop(listed);
    crate::memory::give_back();
    Ok(orphans)
}

/// Records what a resync found on one instance, unless someone took it up meanwhile.
async fn record_resynced(
    store: &SqlStore,
    i: &crate::store::Instance,
    found: crate::reconcile::decide::Resynced,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let mut patch = found.patch;
    patch.next_check = Some(match found.next {
        Next::Now => NextCheck::Now,
        Next::After(d) => NextCheck::After(d),
        Next::Backoff(_) | Next::Idle => NextCheck::Never,
    });
    if !store
        .record_drift(i.id, i.observed_status, &patch, &found.transition)
        .await?
    {
        return Ok(());
    }
    let what = &found.what;
    match found.drift {
        None => tracing::info!(instance = i.id, "resync: {what}"),
        Some(kind) => {
            metrics.drift(kind);
            if found.lost {
                tracing::error!(
                    instance = i.id,
                    "drift: {what}; marked lost (not recreated)"
                );
            } else {
                tracing::warn!(instance = i.id, "drift: {what}; reconciling");
            }
        }
    }
    Ok(())
}
