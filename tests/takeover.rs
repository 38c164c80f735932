//! Leases across crashes, with the real `provisioner run`: a daemon restarted after SIGKILL
//! under its owner name takes back at once what its predecessor held (not after the lease),
//! and a step longer than a lease keeps it through renewals, so a second daemon never takes
//! it over. On the simulated cloud, whose every call here takes seconds.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use provisioner::provider::sim;
use provisioner::store::{ConnectOptions, Instance, InstanceFilter, NewInstance, SqlStore, Store};

/// A catalog whose simulated cloud answers every call after `latency_ms`.
fn slow_catalog(dir: &Path, latency_ms: u64) -> PathBuf {
    let catalog = dir.join("catalog");
    std::fs::create_dir_all(&catalog).unwrap();
    std::fs::write(
        catalog.join("slow.yaml"),
        format!(
            "apiVersion: provisioner/v1
kind: ProviderAccount
id: sim-slow
module: sim
simulation: {{boot_seconds: 0, action_seconds: 0, latency_ms: {latency_ms}, fault_rate: 0}}
---
apiVersion: provisioner/v1
kind: Product
id: slow-vps
name: Slow VPS
type: vps
specs: {{cpu_cores: 1, ram_gb: 1, storage_gb: 10}}
pricing: {{currency: EUR, monthly: \"1.00\"}}
locations: [sim-1]
os_images: [debian-12]
provisioning: {{account: sim-slow}}
"
        ),
    )
    .unwrap();
    catalog
}

async fn order(store: &SqlStore, n: usize) {
    for k in 0..n {
        store
            .create_instance(&NewInstance {
                customer_id: format!("c{k}"),
                product_id: "slow-vps".into(),
                ..NewInstance::default()
            })
            .await
            .unwrap();
    }
}

async fn all(store: &SqlStore) -> Vec<Instance> {
    store
        .list_instances(&InstanceFilter::default())
        .await
        .unwrap()
}

/// Waits until `done` holds for every instance, at most `within`.
async fn wait_all(store: &SqlStore, what: &str, within: Duration, daemons: &[&Daemon]) {
    let start = Instant::now();
    loop {
        let instances = all(store).await;
        if instances.iter().all(Instance::desired_met) {
            return;
        }
        let logs: Vec<String> = daemons.iter().map(|d| d.log()).collect();
        assert!(
            start.elapsed() < within,
            "{what}: not converged in {within:?}:\n{}",
            logs.join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn restart_takes_back_the_leases_at_once(url: &str, dir: &Path) {
    let catalog = slow_catalog(dir, 1500);
    // Leases of five minutes: if the restarted daemon waited for them to run out, nothing it
    // held would move within this test.
    let args = ["--lease-seconds", "300"];
    let mut first = Daemon::start_with(url, &catalog, dir, "web-1", &args);
    let store = SqlStore::open(url, &ConnectOptions::default())
        .await
        .unwrap();
    order(&store, 24).await;
    let start = Instant::now();
    let held: HashMap<i64, i64> = loop {
        let now = chrono::Utc::now();
        let held: HashMap<i64, i64> = all(&store)
            .await
            .iter()
            .filter(|i| i.lease_owner.as_deref() == Some("web-1") && i.lease_expires_at > Some(now))
            .map(|i| (i.id, i.lease_epoch))
            .collect();
        if held.len() >= 4 {
            break held;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no step in flight:\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    first.kill9();
    // The same owner name: the lock the killed process held ended with it.
    let again = Daemon::start_with(url, &catalog, dir, "web-1", &args);
    let start = Instant::now();
    loop {
        let instances = all(&store).await;
        let moved = instances
            .iter()
            .filter(|i| held.get(&i.id).is_some_and(|e| i.lease_epoch > *e))
            .count();
        if moved == held.len() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{moved} of the {} instances the killed daemon held moved on:\n{}",
            held.len(),
            again.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        again.log().contains("took back the leases"),
        "{}",
        again.log()
    );
    wait_all(
        &store,
        "after the restart",
        Duration::from_secs(120),
        &[&again],
    )
    .await;
    let ledger = sim::ledger(&store).await.unwrap();
    assert_eq!(ledger.duplicated_instances, 0, "{ledger:?}");
    assert_eq!(ledger.created, 24, "{ledger:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_takes_back_its_leases_at_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("takeover.db").display());
    restart_takes_back_the_leases_at_once(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_takes_back_its_leases_at_once_on_postgres() {
    let Some(url) = common::fresh_postgres_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    restart_takes_back_the_leases_at_once(&url, dir.path()).await;
}

/// Two daemons, leases of 3 s renewed every 0.25 s, provider calls of 4 s: without renewals
/// each lease would run out mid-call and the other daemon take the instance over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_longer_than_its_lease_keeps_it() {
    let Some(url) = common::fresh_postgres_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let catalog = slow_catalog(dir.path(), 4000);
    // Eight workers each, both running before the orders come: neither can take all 16.
    let args = [
        "--lease-seconds",
        "3",
        "--lease-renew-seconds",
        "0.25",
        "--workers",
        "8",
    ];
    let a = Daemon::start_with(&url, &catalog, dir.path(), "daemon-a", &args);
    let b = Daemon::start_with(&url, &catalog, dir.path(), "daemon-b", &args);
    a.ready().await;
    b.ready().await;
    let store = SqlStore::open(&url, &ConnectOptions::default())
        .await
        .unwrap();
    order(&store, 16).await;
    wait_all(&store, "two daemons", Duration::from_secs(120), &[&a, &b]).await;
    for d in [&a, &b] {
        assert!(
            !d.log().contains("lease lost"),
            "{} lost a lease mid-step:\n{}",
            d.owner,
            d.log()
        );
    }
    let ids: Vec<i64> = all(&store).await.iter().map(|i| i.id).collect();
    let by = common::daemon::steps_by_owner(&store, &ids).await;
    assert_eq!(by.len(), 2, "both daemons worked: {by:?}");
    let ledger = sim::ledger(&store).await.unwrap();
    assert_eq!(
        (ledger.duplicated_instances, ledger.created),
        (0, 16),
        "{ledger:?}"
    );
}
