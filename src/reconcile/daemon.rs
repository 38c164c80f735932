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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::decide::Timing;
use super::execute::Executor;
use super::lease::{self, Held, LeaseTiming};
use super::resync::resync_loop;
use crate::api;
use crate::catalog::watch::{spawn as watch_catalog, ReloadStatus, WatchOptions};
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::provider::account::Accounts;
use crate::secrets::Keyring;
use crate::store::{ConnectOptions, NextCheck, SqlStore, Store};

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
    if store.engine() == crate::store::Engine::Postgres {
        tracker.spawn(sequence_loop(store.clone(), shutdown.clone()));
    }
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

/// With a backlog, how long the loop waits for a quarter of the workers to be free before it
/// claims for fewer: claims of a few rows each would cost a statement (and on SQLite a write
/// transaction) per few steps; a short wait makes them several times larger.
const GATHER: Duration = Duration::from_millis(5);

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
    // A claim for a quarter of the workers (at most a batch) when work is waiting.
    let gather = u32::try_from((config.workers / 4).max(1))
        .unwrap_or(u32::MAX)
        .min(config.batch.max(1));
    // Whether the last claim got all it asked for: more is probably due.
    let mut backlog = false;
    while !shutdown.is_cancelled() {
        let free = workers.available_permits();
        if free == 0 {
            tokio::select! {
                () = shutdown.cancelled() => break,
                permit = workers.clone().acquire_owned() => drop(permit),
            }
            continue;
        }
        if backlog && u32::try_from(free).unwrap_or(u32::MAX) < gather {
            tokio::select! {
                () = shutdown.cancelled() => break,
                permits = workers.clone().acquire_many_owned(gather) => drop(permits),
                () = tokio::time::sleep(GATHER) => {}
            }
        }
        let free = workers.available_permits();
        let want = u32::try_from(free).unwrap_or(u32::MAX).min(config.batch);
        let claiming = std::time::Instant::now();
        let claimed = tokio::select! {
            () = shutdown.cancelled() => break,
            c = store.claim_due(&owner, want, config.lease.length.as_secs_f64()) => c,
        };
        metrics
            .claim_duration
            .observe(claiming.elapsed().as_secs_f64());
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
        backlog = !claims.is_empty() && claims.len() >= usize::try_from(want).unwrap_or(usize::MAX);
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

/// Moves PostgreSQL's committed events into the feed every [`SEQUENCE_EVERY`], so that the
/// `events` table billing may read directly stays current even when nobody reads the feed
/// through the API.
async fn sequence_loop(store: SqlStore, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SEQUENCE_EVERY) => {}
        }
        match store.sequence_events().await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot move events into the feed; retrying");
            }
            Err(_) => {}
        }
    }
}

/// How often events are moved into the feed (PostgreSQL).
const SEQUENCE_EVERY: Duration = Duration::from_millis(100);

async fn stats_loop(
    store: SqlStore,
    metrics: Arc<Metrics>,
    ready: Arc<api::Readiness>,
    shutdown: CancellationToken,
) {
    loop {
        let started = std::time::Instant::now();
        let stats = tokio::select! {
            () = shutdown.cancelled() => return,
            s = store.fleet_stats() => s,
        };
        let pause = match stats {
            Ok(s) => {
                metrics.set_instances(&s.by_status);
                metrics.due_instances.set(s.queue.due);
                metrics.leased_instances.set(s.queue.leased);
                ready.set_database(None);
                stats_pause(started.elapsed())
            }
            Err(e) => {
                ready.set_database(Some(e.to_string()));
                STATS_EVERY
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// How often the gauges count the fleet (and `/readyz` learns whether the database answers).
const STATS_EVERY: Duration = Duration::from_secs(2);

/// The longest pause between counts: the gauges and `/readyz` are never older than this.
const STATS_EVERY_MOST: Duration = Duration::from_secs(30);

/// How long the gauges wait after a count that took `took`: [`STATS_EVERY`], or twenty times
/// the count if that is longer (at most [`STATS_EVERY_MOST`]). The count scans every instance
/// (~0.3 s at 1,000,000 on this machine), so it takes at most a twentieth of a database core
/// from the work, whose claims slowed down behind it.
fn stats_pause(took: Duration) -> Duration {
    (took * 20).clamp(STATS_EVERY, STATS_EVERY_MOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauges_take_at_most_a_twentieth_of_the_database() {
        for (took_ms, pause_ms) in [
            (0, 2000),
            (5, 2000),
            (100, 2000),
            (300, 6000),
            (1000, 20_000),
            (2000, 30_000),
            (60_000, 30_000),
        ] {
            assert_eq!(
                stats_pause(Duration::from_millis(took_ms)),
                Duration::from_millis(pause_ms),
                "after a count of {took_ms} ms"
            );
        }
    }
}
