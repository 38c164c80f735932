//! The daemon: where work comes from, who does it, and how it stops.
//!
//! Work sources: due rows in the store (polled, and on PostgreSQL woken by the trigger's
//! NOTIFY), catalog reloads (waiting instances are woken, revisions recorded), a periodic bulk
//! resync per account (drift and orphans), and each instance's own timer. Claimed instances are
//! worked by at most `workers` concurrent steps; the store's leases make sure no instance is
//! worked on twice at once, also across daemons.
//!
//! Shutdown: cancelling the token stops claiming; steps in flight get `drain` to finish and
//! give their leases back, after which they are abandoned (a step waiting for rate budget has
//! sent nothing; a request already sent has its intent recorded, and adoption or the next
//! look resolves it once the lease expires); then every task ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::decide::{resynced, Next, Timing};
use super::execute::Executor;
use super::lease::{self, Held, LeaseTiming};
use crate::api;
use crate::catalog::watch::{spawn as watch_catalog, ReloadStatus, WatchOptions};
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::provider::account::{Account, Accounts};
use crate::secrets::Keyring;
use crate::store::{ConnectOptions, InstanceFilter, NextCheck, ObservedStatus, SqlStore, Store};

/// How a daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The database.
    pub database_url: String,
    /// The catalog directory.
    pub catalog_dir: PathBuf,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`; `None` serves nothing.
    pub listen: Option<SocketAddr>,
    /// Most steps running at once.
    pub workers: usize,
    /// Most instances claimed per query.
    pub batch: u32,
    /// How long a claim holds an instance before another daemon may take it, and how often
    /// the leases of running steps are renewed.
    pub lease: LeaseTiming,
    /// How often to look for due work when nothing wakes the daemon.
    pub idle_poll: Duration,
    /// How often each account's servers are listed in bulk.
    pub resync_interval: Duration,
    /// This daemon's name in leases: the host name by default, stable across restarts, so a
    /// restarted daemon takes back at once what it held (see [`super::lease`]).
    pub owner: String,
    /// Scheduling of steps.
    pub timing: Timing,
    /// Catalog reload timing.
    pub catalog_watch: WatchOptions,
    /// Database pool size.
    pub max_connections: u32,
    /// How long steps in flight may finish after shutdown begins before they are abandoned.
    pub drain: Duration,
}

impl DaemonConfig {
    /// Defaults for `database_url` and `catalog_dir`.
    pub fn new(database_url: &str, catalog_dir: PathBuf) -> DaemonConfig {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        DaemonConfig {
            database_url: database_url.to_owned(),
            catalog_dir,
            listen: None,
            workers: 32,
            batch: 64,
            lease: LeaseTiming::default(),
            idle_poll: Duration::from_millis(100),
            resync_interval: Duration::from_secs(60),
            owner: host,
            timing: Timing::default(),
            catalog_watch: WatchOptions::default(),
            max_connections: 16,
            drain: Duration::from_secs(5),
        }
    }
}

/// A started daemon.
pub struct Running {
    /// Its store.
    pub store: SqlStore,
    /// Its figures.
    pub metrics: Arc<Metrics>,
    /// The catalog it serves.
    pub catalog: watch::Receiver<Arc<Catalog>>,
    /// Where the HTTP endpoints listen, if they do.
    pub http: Option<SocketAddr>,
    /// Wakes the work loop (a hint: the store is the truth).
    pub wake: Arc<Notify>,
    /// The name its leases are taken under (the configured one, unless a live daemon held
    /// it).
    pub owner: String,
    tracker: TaskTracker,
}

impl Running {
    /// Waits until every task has ended (after the shutdown token was cancelled).
    pub async fn wait(self) {
        self.tracker.close();
        self.tracker.wait().await;
        self.store.close().await;
    }
}

/// Starts the daemon's tasks; they run until `shutdown` is cancelled.
///
/// # Errors
/// When the database cannot be opened or migrated, the key cannot be loaded, the catalog is
/// invalid, or the HTTP address cannot be bound.
pub async fn start(config: DaemonConfig, shutdown: CancellationToken) -> anyhow::Result<Running> {
    // Everything that can be checked is checked before anything is created: the key's
    // configuration, then the catalog, then the database (created, for SQLite, only now).
    let key = Keyring::prepare(&config.database_url)?;
    let watcher = watch_catalog(
        config.catalog_dir.clone(),
        config.catalog_watch,
        shutdown.child_token(),
    )
    .await
    .with_context(|| format!("catalog {}", config.catalog_dir.display()))?;
    let store = SqlStore::connect(
        &config.database_url,
        &ConnectOptions {
            max_connections: config.max_connections,
            ..ConnectOptions::default()
        },
    )
    .await
    .with_context(|| {
        format!(
            "cannot use database {}",
            crate::store::redact_url(&config.database_url)
        )
    })?;
    let keyring = key.finish(&store.sealed_key_ids().await?)?;
    store.migrate().await?;
    let owner_lock = lease::identify(&store, &config.owner).await?;
    let owner = owner_lock.name().to_owned();
    let catalog_rx = watcher.catalog();
    let initial = watcher.current();
    let new = store.sync_revisions(&initial).await?;
    tracing::info!(
        products = initial.products.len(),
        accounts = initial.accounts.len(),
        new_revisions = new,
        "catalog loaded"
    );
    let accounts = Arc::new(RwLock::new(Arc::new(
        Accounts::default().rebuild(&initial, &store, &keyring),
    )));
    let metrics = Arc::new(Metrics::default());
    metrics.catalog_valid.set(1);
    let wake = Arc::new(Notify::new());
    let executor = Arc::new(Executor::new(
        store.clone(),
        catalog_rx.clone(),
        accounts.clone(),
        keyring.clone(),
        metrics.clone(),
        config.timing,
        wake.clone(),
    ));
    crate::notify::prepare(&store, &initial).await?;
    let tracker = TaskTracker::new();
    let ready = Arc::new(api::Readiness::default());

    let http = match config.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let bound = listener.local_addr()?;
            let (feed, keep_feed) = api::events::FeedHead::new(store.clone(), shutdown.clone());
            tracker.spawn(keep_feed);
            tracker.spawn(api::serve(
                listener,
                metrics.clone(),
                ready.clone(),
                Some(api::V1 {
                    store: store.clone(),
                    catalog: catalog_rx.clone(),
                    keyring: keyring.clone(),
                    feed,
                }),
                Some(crate::console::Console {
                    store: store.clone(),
                    catalog: catalog_rx.clone(),
                    reload: watcher.status(),
                    keyring: keyring.clone(),
                    metrics: metrics.clone(),
                    sessions: Arc::default(),
                    accounts: accounts.clone(),
                }),
                api::Limits::default(),
                shutdown.clone(),
            ));
            tracing::info!(address = %bound, "serving /healthz, /readyz and /metrics, the API under /v1 and the console under /ui/");
            Some(bound)
        }
        None => None,
    };

    tracker.spawn(work_loop(
        Worker {
            executor,
            store: store.clone(),
            config: config.clone(),
            owner: owner_lock,
            wake: wake.clone(),
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
        shutdown.clone(),
    ));
    tracker.spawn(follow_catalog(
        CatalogFollower {
            catalog: catalog_rx.clone(),
            status: watcher.status(),
            store: store.clone(),
            keyring,
            accounts: accounts.clone(),
            wake: wake.clone(),
            metrics: metrics.clone(),
        },
        shutdown.clone(),
    ));
    tracker.spawn(resync_loop(
        store.clone(),
        accounts,
        metrics.clone(),
        config.resync_interval,
        shutdown.clone(),
    ));
    tracker.spawn(stats_loop(
        store.clone(),
        metrics.clone(),
        ready,
        shutdown.clone(),
    ));
    tracker.spawn(listen_loop(store.clone(), wake.clone(), shutdown.clone()));
    tracker.spawn(crate::notify::run(
        store.clone(),
        catalog_rx.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(async move { watcher.join().await });
    Ok(Running {
        store,
        metrics,
        catalog: catalog_rx,
        http,
        wake,
        owner,
        tracker,
    })
}

/// What the work loop works with.
struct Worker {
    executor: Arc<Executor>,
    store: SqlStore,
    config: DaemonConfig,
    /// The owner name the daemon holds, kept by the heartbeat until the last step ended.
    owner: crate::store::lease::OwnerLock,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Told when claiming keeps failing.
    ready: Arc<api::Readiness>,
}

/// Claims failing this many times in a row make `/readyz` report not ready.
const CLAIM_FAILURES_NOT_READY: u32 = 3;

async fn work_loop(w: Worker, shutdown: CancellationToken) {
    let Worker {
        executor,
        store,
        config,
        owner: owner_lock,
        wake,
        metrics,
        ready,
    } = w;
    let workers = Arc::new(Semaphore::new(config.workers.max(1)));
    let steps = TaskTracker::new();
    // Cancelled when the drain deadline passes: steps still running are abandoned.
    let abandon = CancellationToken::new();
    let mut failures = 0u32;
    let owner = owner_lock.name().to_owned();
    let held = Arc::new(Held::default());
    let stop_heartbeat = CancellationToken::new();
    let heartbeat = tokio::spawn(lease::heartbeat(
        store.clone(),
        owner_lock,
        held.clone(),
        config.lease,
        metrics.clone(),
        stop_heartbeat.clone(),
    ));
    while !shutdown.is_cancelled() {
        let free = workers.available_permits();
        if free == 0 {
            tokio::select! {
                () = shutdown.cancelled() => break,
                permit = workers.clone().acquire_owned() => drop(permit),
            }
            continue;
        }
        let want = u32::try_from(free).unwrap_or(u32::MAX).min(config.batch);
        let claimed = tokio::select! {
            () = shutdown.cancelled() => break,
            c = store.claim_due(&owner, want, config.lease.length.as_secs_f64()) => c,
        };
        let claims = match claimed {
            Ok(c) => {
                if failures > 0 {
                    ready.set_claims(None);
                }
                failures = 0;
                c
            }
            Err(e) => {
                failures += 1;
                if failures >= CLAIM_FAILURES_NOT_READY {
                    ready.set_claims(Some(e.to_string()));
                }
                let pause = Duration::from_millis(200 * u64::from(failures.min(25)));
                tracing::error!(error = %e, failures, retry_in = ?pause, "cannot claim work");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        if claims.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(config.idle_poll) => {}
            }
            continue;
        }
        for claim in &claims {
            held.add(&claim.lease);
        }
        for claim in claims {
            let Ok(permit) = workers.clone().acquire_owned().await else {
                break;
            };
            let executor = executor.clone();
            let metrics = metrics.clone();
            let abandon = abandon.clone();
            let store = store.clone();
            let lease = claim.lease.clone();
            let held = held.clone();
            let span = tracing::info_span!("step", instance = claim.instance.id);
            metrics.in_flight.inc();
            steps.spawn(
                async move {
                    tokio::select! {
                        () = abandon.cancelled() => {
                            // Its intent, if any, is recorded: the next daemon takes it up
                            // at once (looking the server up before any second create).
                            // A database that does not answer leaves the lease to expire.
                            let released = tokio::time::timeout(
                                Duration::from_millis(500),
                                store.release(&lease, NextCheck::Now),
                            )
                            .await;
                            tracing::warn!(released = matches!(released, Ok(Ok(()))), "abandoned at shutdown");
                        }
                        _ = executor.step(claim) => {}
                    }
                    held.remove(&lease);
                    metrics.in_flight.dec();
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
    tracing::info!(
        in_flight = steps.len(),
        drain = ?config.drain,
        "stopped claiming; finishing the steps in flight"
    );
    steps.close();
    if tokio::time::timeout(config.drain, steps.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            abandoned = steps.len(),
            "drain deadline passed: abandoning the steps still in flight"
        );
        abandon.cancel();
        steps.wait().await;
    } else {
        tracing::info!("all steps finished; leases given back");
    }
    stop_heartbeat.cancel();
    if let Err(e) = heartbeat.await {
        tracing::error!(error = %e, "the lease heartbeat ended abnormally");
    }
}

struct CatalogFollower {
    catalog: watch::Receiver<Arc<Catalog>>,
    status: watch::Receiver<ReloadStatus>,
    store: SqlStore,
    keyring: Arc<Keyring>,
    accounts: Arc<RwLock<Arc<Accounts>>>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

async fn follow_catalog(mut f: CatalogFollower, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = f.catalog.changed() => {
                if changed.is_err() {
                    return;
                }
                let catalog = f.catalog.borrow_and_update().clone();
                match f.store.sync_revisions(&catalog).await {
                    Ok(n) if n > 0 => tracing::info!(new_revisions = n, "recorded new product revisions"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "cannot record product revisions"),
                }
                let current = f.accounts.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                let next = current.rebuild(&catalog, &f.store, &f.keyring);
                *f.accounts.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
                match f.store.wake_waiting().await {
                    Ok(n) if n > 0 => tracing::info!(instances = n, "catalog changed: waiting instances are looked at again"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "cannot wake waiting instances"),
                }
                f.metrics.catalog_reloads.inc();
                f.wake.notify_one();
            }
            changed = f.status.changed() => {
                if changed.is_err() {
                    return;
                }
                let s = f.status.borrow_and_update().clone();
                f.metrics.set_reload_failures(s.failures);
                f.metrics.catalog_valid.set(i64::from(s.last_error.is_none()));
            }
        }
    }
}

/// Wakes the work loop on the store's change notifications (PostgreSQL's NOTIFY), if the
/// engine has them; reconnects after a lost connection.
async fn listen_loop(store: SqlStore, wake: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            ended = store.listen_for_changes(&wake) => match ended {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "cannot listen for desired-state changes; polling only until it reconnects"),
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn stats_loop(
    store: SqlStore,
    metrics: Arc<Metrics>,
    ready: Arc<api::Readiness>,
    shutdown: CancellationToken,
) {
    loop {
        let (stats, counts) = tokio::select! {
            () = shutdown.cancelled() => return,
            s = async { tokio::join!(store.queue_stats(), store.status_counts()) } => s,
        };
        if let Ok(counts) = counts {
            metrics.set_instances(&counts);
        }
        match stats {
            Ok(s) => {
                metrics.due_instances.set(s.due);
                metrics.leased_instances.set(s.leased);
                ready.set_database(None);
            }
            Err(e) => ready.set_database(Some(e.to_string())),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

async fn resync_loop(
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
    let servers = account.provider.list_owned().await?;
    metrics.provider_call(&account.id, "list", "ok");
    account
        .view
        .offer(
            started,
            &servers,
            account.provider.list_requests(servers.len()),
        )
        .await;
    let by_id: HashMap<&str, &crate::provider::Server> =
        servers.iter().map(|s| (s.id.as_str(), s)).collect();
    // Servers created moments ago may not be listed yet; recent changes are left alone.
    let settled_before = started
        - chrono::Duration::from_std(account.policy.poll * 4 + Duration::from_secs(5))
            .unwrap_or_default();
    // Instances are read a page at a time, so a large account never sits in memory whole;
    // the servers its live instances hold are kept for the orphan check.
    let mut holdings = crate::store::Holdings::default();
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
            holdings.note(i);
            let state = match i.provider_server_id.as_deref() {
                // An attached server carries no mark yet, so the listing cannot show it: it is
                // looked at on its own, with the budget's spare requests only.
                Some(id) if i.claim_pending && i.observed_status != ObservedStatus::Terminated => {
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
                Some(id) => by_id.get(id).map(|s| s.state),
                None => None,
            };
            if let Some(found) = resynced(i, state, settled_before) {
                record_resynced(store, i, found, metrics).await?;
            }
        }
    }
    let mut orphans = 0;
    for s in servers
        .iter()
        .filter(|s| crate::reconcile::attach::is_orphan(s, &holdings))
    {
        orphans += 1;
        tracing::warn!(
            account = %account.id,
            server = %s.id,
            name = %s.name,
            label = ?s.instance_id,
            "orphan server: it carries our label but belongs to no live instance; delete it at the provider, or take it on with `provisioner instances import --account {} --server-id {} --customer CUSTOMER --product PRODUCT`",
            account.id,
            s.id
        );
    }
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
