//! Hot reload in a temporary directory, through real file system events: write, break (the last
//! good catalog keeps serving), fix, save atomically, rename, delete.

mod common;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{catalog, edit, ACCOUNT, PRODUCT};
use provisioner::catalog::watch::{spawn, CatalogWatcher, ReloadStatus, WatchOptions};
use provisioner::catalog::Catalog;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(15);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?} waiting for {what}; the watcher probably missed the change"))
}

/// Waits until the watched value satisfies `pred`, and returns it.
async fn wait_for<T: Clone>(
    rx: &mut watch::Receiver<T>,
    what: &str,
    pred: impl Fn(&T) -> bool,
) -> T {
    within(what, async {
        loop {
            if pred(&rx.borrow_and_update()) {
                return rx.borrow().clone();
            }
            rx.changed().await.expect("watcher alive");
        }
    })
    .await
}

async fn next_catalog(
    rx: &mut watch::Receiver<Arc<Catalog>>,
    what: &str,
    pred: impl Fn(&Catalog) -> bool,
) -> Arc<Catalog> {
    wait_for(rx, what, |c| pred(c)).await
}

async fn next_status(
    rx: &mut watch::Receiver<ReloadStatus>,
    what: &str,
    pred: impl Fn(&ReloadStatus) -> bool,
) -> ReloadStatus {
    wait_for(rx, what, pred).await
}

fn monthly(c: &Catalog, id: &str) -> Option<String> {
    c.product(id).map(|p| p.pricing.monthly.to_string())
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write catalog file");
}

async fn start(dir: &Path, options: WatchOptions) -> (CatalogWatcher, CancellationToken) {
    let shutdown = CancellationToken::new();
    let watcher = spawn(dir.to_owned(), options, shutdown.clone())
        .await
        .expect("initial catalog loads");
    (watcher, shutdown)
}

fn fast() -> WatchOptions {
    WatchOptions {
        debounce: Duration::from_millis(50),
        // Long enough that only file events can explain a reload within the test.
        rescan_interval: Duration::from_secs(3600),
        watch_events: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_are_picked_up_and_bad_edits_never_served() {
    let dir = catalog(&[("accounts.yaml", ACCOUNT), ("vps.yaml", PRODUCT)]);
    let (watcher, shutdown) = start(dir.path(), fast()).await;
    let mut catalog = watcher.catalog();
    let mut status = watcher.status();
    assert_eq!(
        monthly(&watcher.current(), "vps-starter").as_deref(),
        Some("29.99")
    );
    let first_revision = watcher
        .current()
        .product("vps-starter")
        .unwrap()
        .revision
        .clone();

    // 1. A valid edit is published with a new revision.
    write(
        dir.path(),
        "vps.yaml",
        &edit(PRODUCT, "\"29.99\"", "\"31.99\""),
    );
    let c = next_catalog(&mut catalog, "the price edit", |c| {
        monthly(c, "vps-starter").as_deref() == Some("31.99")
    })
    .await;
    assert_ne!(c.product("vps-starter").unwrap().revision, first_revision);

    // 2. A broken edit: counted, reported with file:line, and the last good catalog stays.
    write(
        dir.path(),
        "vps.yaml",
        &edit(PRODUCT, "ram_gb: 4", "ram_gib: 4"),
    );
    let s = next_status(&mut status, "the failed reload", |s| s.failures == 1).await;
    assert!(s
        .last_error
        .as_deref()
        .unwrap()
        .contains("still serving the last good catalog"));
    let unknown = s
        .last_diagnostics
        .iter()
        .find(|d| d.message.starts_with("unknown field `ram_gib`"))
        .expect("the typo is reported");
    assert!(unknown.file.ends_with("vps.yaml"));
    assert_eq!((unknown.line, unknown.column), (8, 40));
    assert_eq!(
        monthly(&watcher.current(), "vps-starter").as_deref(),
        Some("31.99")
    );

    // 3. Fixed: served again, error cleared.
    write(
        dir.path(),
        "vps.yaml",
        &edit(PRODUCT, "\"29.99\"", "\"19.99\""),
    );
    next_catalog(&mut catalog, "the fixed file", |c| {
        monthly(c, "vps-starter").as_deref() == Some("19.99")
    })
    .await;
    let s = next_status(&mut status, "the error to clear", |s| {
        s.last_error.is_none()
    })
    .await;
    assert_eq!(s.failures, 1);

    // 4. An editor's atomic save: write a temporary file, rename it over the original.
    write(
        dir.path(),
        ".vps.yaml.tmp",
        &edit(PRODUCT, "\"29.99\"", "\"17.99\""),
    );
    std::fs::rename(
        dir.path().join(".vps.yaml.tmp"),
        dir.path().join("vps.yaml"),
    )
    .unwrap();
    next_catalog(&mut catalog, "the atomic save", |c| {
        monthly(c, "vps-starter").as_deref() == Some("17.99")
    })
    .await;

    // 5. A new file, then a rename into a subdirectory: the product follows its file.
    let second = edit(PRODUCT, "id: vps-starter", "id: vps-second");
    write(dir.path(), "second.yaml", &second);
    next_catalog(&mut catalog, "the new file", |c| {
        c.product("vps-second").is_some()
    })
    .await;
    std::fs::create_dir(dir.path().join("more")).unwrap();
    std::fs::rename(
        dir.path().join("second.yaml"),
        dir.path().join("more/second.yml"),
    )
    .unwrap();
    let c = next_catalog(&mut catalog, "the rename", |c| {
        c.product("vps-second")
            .is_some_and(|p| p.origin.file.ends_with("more/second.yml"))
    })
    .await;
    assert!(c.product("vps-starter").is_some());

    // 6. Deleting a file removes its products.
    std::fs::remove_file(dir.path().join("more/second.yml")).unwrap();
    next_catalog(&mut catalog, "the deletion", |c| {
        c.product("vps-second").is_none()
    })
    .await;

    // 7. Deleting the account file makes the catalog invalid: nothing is lost.
    let failures_before = status.borrow().failures;
    std::fs::remove_file(dir.path().join("accounts.yaml")).unwrap();
    let s = next_status(&mut status, "the invalid deletion", |s| {
        s.failures > failures_before
    })
    .await;
    assert!(s.last_diagnostics.iter().any(|d| d
        .message
        .contains("names `hetzner-main`, which is not a ProviderAccount")));
    assert!(watcher.current().account("hetzner-main").is_some());
    assert!(watcher.current().product("vps-starter").is_some());

    shutdown.cancel();
    within("the watcher to stop", watcher.join()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescans_catch_changes_without_file_events() {
    let dir = catalog(&[("accounts.yaml", ACCOUNT), ("vps.yaml", PRODUCT)]);
    let (watcher, shutdown) = start(
        dir.path(),
        WatchOptions {
            debounce: Duration::from_millis(50),
            rescan_interval: Duration::from_millis(100),
            watch_events: false,
        },
    )
    .await;
    let mut catalog = watcher.catalog();
    // A different length guarantees the fingerprint changes even within one mtime tick.
    write(
        dir.path(),
        "vps.yaml",
        &edit(PRODUCT, "\"29.99\"", "\"129.99\""),
    );
    next_catalog(&mut catalog, "the rescan", |c| {
        monthly(c, "vps-starter").as_deref() == Some("129.99")
    })
    .await;
    shutdown.cancel();
    within("the watcher to stop", watcher.join()).await;
}

#[tokio::test]
async fn an_invalid_catalog_at_start_is_refused() {
    let dir = catalog(&[("vps.yaml", PRODUCT)]);
    let err = spawn(dir.path().to_owned(), fast(), CancellationToken::new())
        .await
        .err()
        .expect("no account: the initial load fails");
    let source = std::error::Error::source(&err).expect("cause").to_string();
    assert!(
        source.contains("names `hetzner-main`, which is not a ProviderAccount"),
        "{source}"
    );
}
