//! Hot reload: keeps a running daemon's catalog in step with the files, never with a bad edit.
//!
//! A `notify` watcher on the catalog directory (recursive) wakes a task; the task waits until the
//! directory has been quiet for the debounce period (an editor's atomic save, a `git pull`
//! touching many files, all end up as one reload), then loads the whole catalog again:
//! - valid and different: the new catalog is published on a `tokio::sync::watch` channel and the
//!   differences are logged;
//! - invalid: every error is logged, the failure is counted in [`ReloadStatus`] (exported as a
//!   metric by the daemon) and the last good catalog keeps serving.
//!
//! File watching can miss changes (the directory replaced wholesale, network file systems,
//! inotify limits), so the task also rescans the directory's file list, sizes and modification
//! times every `rescan_interval` and reloads when they changed. If no watcher can be created at
//! all, that rescan is the only trigger.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::diag::Diagnostic;
use super::diff::diff;
use super::model::Catalog;
use super::source::{is_catalog_file, list};
use super::{load, LoadError};

/// Timing of the watcher.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Quiet time after the last file event before reloading.
    pub debounce: Duration,
    /// How often the directory is rescanned in case an event was missed.
    pub rescan_interval: Duration,
    /// Use file system events; `false` relies on rescans alone (network file systems, where
    /// events do not arrive).
    pub watch_events: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: Duration::from_millis(300),
            rescan_interval: Duration::from_secs(30),
            watch_events: true,
        }
    }
}

/// How reloading has gone since the daemon started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReloadStatus {
    /// Reloads attempted after the initial load.
    pub attempts: u64,
    /// Reloads that published a changed catalog.
    pub reloads: u64,
    /// Reloads that failed (invalid catalog or unreadable files); the last good catalog stayed.
    pub failures: u64,
    /// Why the files on disk are not being served, if they are not: `None` when the current
    /// files are the catalog being served.
    pub last_error: Option<String>,
    /// The diagnostics of the last failed reload, empty when the files are valid.
    pub last_diagnostics: Vec<Diagnostic>,
    /// When the served catalog was last (re)loaded.
    pub loaded_at: Option<SystemTime>,
}

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The initial catalog is invalid or unreadable: the daemon must not start without one.
    #[error("cannot load the initial catalog")]
    Initial(#[source] LoadError),
    /// The blocking load task panicked or was cancelled.
    #[error("the catalog load task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// A running catalog watcher. Dropping it does not stop the task: cancel the token given to
/// [`spawn`] and await [`CatalogWatcher::join`].
pub struct CatalogWatcher {
    catalog: watch::Receiver<Arc<Catalog>>,
    status: watch::Receiver<ReloadStatus>,
    task: JoinHandle<()>,
}

impl CatalogWatcher {
    /// A receiver of the current catalog; `changed()` resolves on every published reload.
    pub fn catalog(&self) -> watch::Receiver<Arc<Catalog>> {
        self.catalog.clone()
    }

    /// The catalog being served now.
    pub fn current(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    /// A receiver of the reload status; `changed()` resolves after every reload attempt.
    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.clone()
    }

    /// Waits for the task to end (after the shutdown token is cancelled).
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "catalog watcher task failed");
        }
    }
}

/// Loads the catalog in `dir` and keeps it current until `shutdown` is cancelled.
///
/// Must be called inside a tokio runtime.
///
/// # Errors
/// [`WatchError::Initial`] when the catalog cannot be loaded now.
pub async fn spawn(
    dir: PathBuf,
    options: WatchOptions,
    shutdown: CancellationToken,
) -> Result<CatalogWatcher, WatchError> {
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    // The watcher starts before the initial load so that no edit in between is missed.
    let watcher = if options.watch_events {
        start_watcher(&dir, event_tx)
    } else {
        None
    };
    let initial = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || (load(&dir), fingerprint(&dir))).await?
    };
    let (catalog, print) = initial;
    let catalog = catalog.map_err(WatchError::Initial)?;
    for w in &catalog.warnings {
        tracing::warn!(diagnostic = %w, "catalog warning");
    }
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(catalog));
    let (status_tx, status_rx) = watch::channel(ReloadStatus {
        loaded_at: Some(SystemTime::now()),
        ..ReloadStatus::default()
    });
    let task = tokio::spawn(run(
        Reloader {
            dir,
            catalog_tx,
            status_tx,
            fingerprint: print,
        },
        watcher,
        event_rx,
        options,
        shutdown,
    ));
    Ok(CatalogWatcher {
        catalog: catalog_rx,
        status: status_rx,
        task,
    })
}

fn start_watcher(dir: &Path, tx: mpsc::UnboundedSender<()>) -> Option<RecommendedWatcher> {
    let handler = move |result: notify::Result<notify::Event>| match result {
        Ok(event) if is_relevant(&event) => {
            let _ = tx.send(());
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "catalog file watcher error; reloading to be safe");
            let _ = tx.send(());
        }
    };
    let started = RecommendedWatcher::new(handler, notify::Config::default())
        .and_then(|mut w| w.watch(dir, RecursiveMode::Recursive).map(|()| w));
    match started {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "cannot watch the catalog directory; falling back to periodic rescans"
            );
            None
        }
    }
}

/// Reads (opening, closing a file read-only) are not changes: the reload itself causes them.
/// Files that are not catalog files (editor swap files) do not matter; directories (no
/// extension) do, since a whole directory can be renamed or removed.
fn is_relevant(event: &notify::Event) -> bool {
    let kind_matters = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    kind_matters
        && (event.paths.is_empty()
            || event
                .paths
                .iter()
                .any(|p| is_catalog_file(p) || p.extension().is_none()))
}

/// A cheap summary of the catalog files' names, sizes and modification times.
fn fingerprint(dir: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    match list(dir) {
        Ok(paths) => {
            for p in paths {
                p.hash(&mut hasher);
                if let Ok(meta) = std::fs::metadata(&p) {
                    meta.len().hash(&mut hasher);
                    meta.modified().ok().hash(&mut hasher);
                }
            }
        }
        Err(e) => e.to_string().hash(&mut hasher),
    }
    hasher.finish()
}

struct Reloader {
    dir: PathBuf,
    catalog_tx: watch::Sender<Arc<Catalog>>,
    status_tx: watch::Sender<ReloadStatus>,
    fingerprint: u64,
}

async fn run(
    mut reloader: Reloader,
    // Kept alive for as long as the task runs: dropping it stops the events.
    _watcher: Option<RecommendedWatcher>,
    mut events: mpsc::UnboundedReceiver<()>,
    options: WatchOptions,
    shutdown: CancellationToken,
) {
    let mut rescan = tokio::time::interval(options.rescan_interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan.tick().await;
    let mut events_open = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.recv(), if events_open => {
                if event.is_none() {
                    events_open = false;
                    continue;
                }
                // Debounce: wait until no event has arrived for the whole period.
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(options.debounce) => break,
                        more = events.recv() => if more.is_none() { events_open = false; break },
                    }
                }
                reloader.reload().await;
            }
            _ = rescan.tick() => {
                let dir = reloader.dir.clone();
                let print = tokio::task::spawn_blocking(move || fingerprint(&dir)).await;
                if print.is_ok_and(|p| p != reloader.fingerprint) {
                    tracing::debug!("catalog rescan found changes");
                    reloader.reload().await;
                }
            }
        }
    }
}

impl Reloader {
    async fn reload(&mut self) {
        let dir = self.dir.clone();
        let loaded = tokio::task::spawn_blocking(move || (load(&dir), fingerprint(&dir))).await;
        let (result, print) = match loaded {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "catalog reload task failed");
                return;
            }
        };
        self.fingerprint = print;
        match result {
            Ok(new) => {
                let current = self.catalog_tx.borrow().clone();
                let changed = *current != new;
                if changed {
                    let d = diff(&current, &new);
                    tracing::info!(
                        dir = %self.dir.display(),
                        products = new.products.len(),
                        accounts = new.accounts.len(),
                        git_commit = new.source.git.as_ref().map_or("", |g| g.commit.as_str()),
                        changes = %d.summary(),
                        "catalog reloaded"
                    );
                    for w in &new.warnings {
                        tracing::warn!(diagnostic = %w, "catalog warning");
                    }
                    self.catalog_tx.send_replace(Arc::new(new));
                }
                self.status_tx.send_modify(|s| {
                    s.attempts += 1;
                    if changed {
                        s.reloads += 1;
                        s.loaded_at = Some(SystemTime::now());
                    }
                    if s.last_error.take().is_some() {
                        tracing::info!("catalog files are valid again");
                    }
                    s.last_diagnostics.clear();
                });
            }
            Err(e) => {
                let diagnostics = e.diagnostics().to_vec();
                for d in diagnostics.iter().filter(|d| d.is_error()) {
                    tracing::error!(diagnostic = %d, "invalid catalog edit");
                }
                let summary = match &e {
                    LoadError::Invalid { .. } => {
                        let (errors, _) = super::diag::count(&diagnostics);
                        format!(
                            "catalog has {}; still serving the last good catalog",
                            super::diag::plural(errors, "error")
                        )
                    }
                    LoadError::Source(s) => {
                        format!("{s}; still serving the last good catalog")
                    }
                };
                tracing::error!(dir = %self.dir.display(), "{summary}");
                self.status_tx.send_modify(|s| {
                    s.attempts += 1;
                    s.failures += 1;
                    s.last_error = Some(summary);
                    s.last_diagnostics = diagnostics;
                });
            }
        }
    }
}
