//! The reconciler's promises, each shown with a daemon running in-process on a SQLite file:
//! manual work through the task inbox, stock, blocked orders, drift, lost servers, duplicate
//! servers, retry, and catalog reloads.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use provisioner::catalog::watch::WatchOptions;
use provisioner::provider::sim;
use provisioner::reconcile::daemon::{start, DaemonConfig, Running};
use provisioner::secrets::Keyring;
use provisioner::store::{
    DesiredStatus, Instance, NewInstance, ObservedStatus, SqlStore, Store, TaskFilter, TaskKind,
};
use tokio_util::sync::CancellationToken;

const CATALOG: &str = "apiVersion: provisioner/v1
kind: ProviderAccount
id: sim-t
module: sim
simulation: {boot_seconds: 0.1, action_seconds: 0.05, latency_ms: 0, fault_rate: 0}
---
apiVersion: provisioner/v1
kind: ProviderAccount
id: manual-t
module: manual
---
apiVersion: provisioner/v1
kind: Product
id: t-vps
name: T VPS
type: vps
specs: {cpu_cores: 1, ram_gb: 1, storage_gb: 10}
pricing: {currency: EUR, monthly: \"1\"}
locations: [here, there]
os_images: [debian-12]
provisioning: {account: sim-t}
---
apiVersion: provisioner/v1
kind: Product
id: t-limited
name: T Limited
type: dedicated
specs: {cpu_cores: 8, ram_gb: 64, storage_gb: 1000}
pricing: {currency: EUR, monthly: \"99\"}
locations: [here]
os_images: [debian-12]
stock: 2
provisioning: {account: sim-t}
---
apiVersion: provisioner/v1
kind: Product
id: t-inactive
name: T Inactive
type: vps
specs: {cpu_cores: 1, ram_gb: 1, storage_gb: 10}
pricing: {currency: EUR, monthly: \"1\"}
locations: [here]
os_images: [debian-12]
active: false
provisioning: {account: sim-t}
---
apiVersion: provisioner/v1
kind: Product
id: t-manual
name: T Manual
type: dedicated
specs: {cpu_cores: 24, ram_gb: 256, storage_gb: 4000}
pricing: {currency: EUR, monthly: \"189\"}
locations: [dc1]
os_images: [debian-12]
provisioning:
  account: manual-t
  config: {instructions: Rack one from shelf B}
";

struct Setup {
    dir: tempfile::TempDir,
    url: String,
    running: Option<Running>,
    shutdown: CancellationToken,
    store: SqlStore,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let catalog = dir.path().join("catalog");
        std::fs::create_dir(&catalog).unwrap();
        std::fs::write(catalog.join("c.yaml"), CATALOG).unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let mut config = DaemonConfig::new(&url, catalog);
        config.workers = 16;
        config.idle_poll = Duration::from_millis(20);
        config.resync_interval = Duration::from_millis(300);
        config.owner = "test".into();
        config.timing.waiting = Duration::from_millis(300);
        config.catalog_watch = WatchOptions {
            debounce: Duration::from_millis(50),
            rescan_interval: Duration::from_millis(500),
            watch_events: true,
        };
        let shutdown = CancellationToken::new();
        let running = start(config, shutdown.clone())
            .await
            .expect("daemon starts");
        let store = running.store.clone();
        Setup {
            dir,
            url,
            running: Some(running),
            shutdown,
            store,
        }
    }

    async fn order(&self, product: &str, location: Option<&str>) -> i64 {
        let id = self
            .store
            .create_instance(&NewInstance {
                customer_id: "cust".into(),
                product_id: product.into(),
                location: location.map(str::to_owned),
                ..NewInstance::default()
            })
            .await
            .unwrap()
            .id;
        self.running.as_ref().unwrap().wake.notify_one();
        id
    }

    async fn instance(&self, id: i64) -> Instance {
        self.store.instance(id).await.unwrap().unwrap()
    }

    async fn wait(&self, id: i64, what: &str, pred: impl Fn(&Instance) -> bool) -> Instance {
        let start = Instant::now();
        loop {
            let i = self.instance(id).await;
            if pred(&i) {
                return i;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "instance {id}: timed out waiting for {what}; now {i:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn sql(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(self.store.sqlite_pool().unwrap())
            .await
            .unwrap();
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(self.store.sqlite_pool().unwrap())
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), r.wait())
                .await
                .expect("the daemon drains and stops");
        }
    }
}

fn active(i: &Instance) -> bool {
    i.observed_status == ObservedStatus::Active
}

async fn open_task(s: &Setup, id: i64, kind: TaskKind) -> i64 {
    let start = Instant::now();
    loop {
        let tasks = s
            .store
            .tasks(&TaskFilter {
                open_only: true,
                instance_id: Some(id),
            })
            .await
            .unwrap();
        if let Some(t) = tasks.iter().find(|t| t.kind == kind) {
            return t.id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no open {kind} task for {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn complete(url: &str, dir: &Path, task: i64, extra: &[&str]) {
    complete_with_stdin(url, dir, task, extra, "");
}

fn complete_with_stdin(url: &str, dir: &Path, task: i64, extra: &[&str], stdin: &str) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args([
            "--database-url",
            url,
            "tasks",
            "complete",
            &task.to_string(),
            "--by",
            "alice",
        ])
        .args(extra)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tasks complete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_servers_are_provisioned_through_the_task_inbox() {
    let s = Setup::new().await;
    let id = s.order("t-manual", None).await;
    let task = open_task(&s, id, TaskKind::Provision).await;
    let t = s.store.task(task).await.unwrap().unwrap();
    assert_eq!(t.details["instructions"], "Rack one from shelf B");
    assert_eq!(
        s.instance(id).await.observed_status,
        ObservedStatus::Provisioning
    );

    // The password comes on standard input: never in the process list.
    complete_with_stdin(
        &s.url,
        s.dir.path(),
        task,
        &["--ip", "203.0.113.9", "--password-file", "-"],
        "s3cret-r00t\n",
    );
    let i = s.wait(id, "the admin's work to be observed", active).await;
    assert_eq!(i.ipv4.as_deref(), Some("203.0.113.9"));
    let ring = Keyring::prepare(&s.url).unwrap().finish(&[]).unwrap();
    let sealed = i
        .credentials
        .as_ref()
        .expect("the password is kept, sealed");
    assert_eq!(
        ring.open(sealed, &i.secret_context()).unwrap().expose(),
        "s3cret-r00t"
    );

    s.store
        .set_desired(id, DesiredStatus::Suspended, Some("non-payment"))
        .await
        .unwrap();
    let task = open_task(&s, id, TaskKind::Suspend).await;
    assert_eq!(
        s.instance(id).await.observed_status,
        ObservedStatus::Suspending
    );
    complete(&s.url, s.dir.path(), task, &["--note", "unplugged"]);
    s.wait(id, "the suspension", |i| {
        i.observed_status == ObservedStatus::Suspended
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_caps_orders_and_frees_up() {
    let s = Setup::new().await;
    let a = s.order("t-limited", None).await;
    let b = s.order("t-limited", None).await;
    s.wait(a, "first", active).await;
    s.wait(b, "second", active).await;
    let c = s.order("t-limited", None).await;
    let waiting = s
        .wait(c, "out of stock", |i| {
            i.status_reason
                .as_deref()
                .is_some_and(|r| r.contains("out of stock"))
        })
        .await;
    assert_eq!(waiting.observed_status, ObservedStatus::Pending);
    assert!(waiting.provider_server_id.is_none());
    s.store
        .set_desired(a, DesiredStatus::Terminated, None)
        .await
        .unwrap();
    s.wait(c, "the freed server", active).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_raising_stock_provisions_waiting_orders() {
    let s = Setup::new().await;
    let ids = [
        s.order("t-limited", None).await,
        s.order("t-limited", None).await,
        s.order("t-limited", None).await,
    ];
    // Claimed together, any one of the three may be the one left waiting: exactly one is.
    let start = Instant::now();
    loop {
        let mut states = Vec::new();
        for id in ids {
            states.push(s.instance(id).await);
        }
        let running = states.iter().filter(|i| active(i)).count();
        let waiting = states
            .iter()
            .filter(|i| {
                i.status_reason
                    .as_deref()
                    .is_some_and(|r| r.contains("out of stock"))
            })
            .count();
        assert!(running <= 2, "stock 2 was oversold: {states:#?}");
        if running == 2 && waiting == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "expected 2 active and 1 waiting: {states:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let raised = CATALOG.replace("stock: 2", "stock: 3");
    std::fs::write(s.dir.path().join("catalog/c.yaml"), raised).unwrap();
    for id in ids {
        s.wait(id, "all three", active).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_orders_record_why_and_provision_nothing() {
    let s = Setup::new().await;
    let cases = [
        (
            s.order("t-unknown", None).await,
            "unknown product `t-unknown`",
        ),
        (
            s.order("t-inactive", None).await,
            "product `t-inactive` is inactive",
        ),
        (
            s.order("t-vps", Some("mars")).await,
            "location `mars` is not offered by product `t-vps`",
        ),
    ];
    for (id, reason) in cases {
        let i = s
            .wait(id, reason, |i| {
                i.status_reason
                    .as_deref()
                    .is_some_and(|r| r.contains(reason))
            })
            .await;
        assert_eq!(i.observed_status, ObservedStatus::Pending);
        let history = s.store.history(id).await.unwrap();
        assert!(history
            .iter()
            .any(|t| t.action == "wait" && t.error.as_deref().is_some_and(|e| e.contains(reason))));
    }
    assert_eq!(
        sim::ledger(&s.store).await.unwrap().created,
        0,
        "nothing was provisioned"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_server_found_running_is_powered_off_again() {
    let s = Setup::new().await;
    let id = s.order("t-vps", None).await;
    s.wait(id, "active", active).await;
    s.store
        .set_desired(id, DesiredStatus::Suspended, None)
        .await
        .unwrap();
    let i = s
        .wait(id, "suspended", |i| {
            i.observed_status == ObservedStatus::Suspended
        })
        .await;
    let server = i.provider_server_id.unwrap();
    // Someone powers it on behind our back.
    s.sql(&format!(
        "UPDATE sim_servers SET state = 'running' WHERE id = {server}"
    ))
    .await;
    let start = Instant::now();
    loop {
        let drift = s
            .store
            .history(id)
            .await
            .unwrap()
            .into_iter()
            .any(|t| t.cause == "drift" && t.to_status.as_deref() == Some("active"));
        let i = s.instance(id).await;
        let off = s.count(&format!("SELECT COUNT(*) FROM sim_servers WHERE id = {server} AND state IN ('stopping', 'off')")).await;
        if drift && i.observed_status == ObservedStatus::Suspended && off == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "suspension not enforced again: {i:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_server_is_lost_not_recreated() {
    let s = Setup::new().await;
    let id = s.order("t-vps", None).await;
    let i = s.wait(id, "active", active).await;
    let server = i.provider_server_id.unwrap();
    s.sql(&format!("UPDATE sim_servers SET state = 'deleted', deleted_at = '2000-01-01T00:00:00.000Z' WHERE id = {server}")).await;
    let i = s
        .wait(id, "lost", |i| i.observed_status == ObservedStatus::Lost)
        .await;
    assert!(i.status_reason.unwrap().contains("gone"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        sim::ledger(&s.store).await.unwrap().created,
        1,
        "no second server"
    );
    assert_eq!(s.instance(id).await.observed_status, ObservedStatus::Lost);

    // An admin gives it a fresh server; the old one's id stays in the history.
    s.store.recreate(id, "ops").await.unwrap();
    s.running.as_ref().unwrap().wake.notify_one();
    let i = s.wait(id, "active again", active).await;
    assert_ne!(i.provider_server_id.as_deref(), Some(server.as_str()));
    assert_eq!(
        sim::ledger(&s.store).await.unwrap().created,
        2,
        "one fresh server"
    );
    let h = s.store.history(id).await.unwrap();
    assert!(h
        .iter()
        .any(|t| t.action == "recreate" && t.details["old_server"] == server.as_str()));

    // Lost again, and this time closed: terminated without any call.
    let server = i.provider_server_id.unwrap();
    s.sql(&format!("UPDATE sim_servers SET state = 'deleted', deleted_at = '2000-01-01T00:00:00.000Z' WHERE id = {server}")).await;
    s.wait(id, "lost again", |i| {
        i.observed_status == ObservedStatus::Lost
    })
    .await;
    let i = s.store.forget(id, "ops").await.unwrap();
    assert!(i.desired_met());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sim::ledger(&s.store).await.unwrap().created,
        2,
        "no third server"
    );
    assert_eq!(
        s.instance(id).await.observed_status,
        ObservedStatus::Terminated
    );
    s.stop().await;
}

/// An abuse hold keeps the server off through billing's suspension and unsuspension; lifting
/// it brings the server back. Each hold placed or lifted is in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abuse_hold_outlasts_billings_unsuspend() {
    let s = Setup::new().await;
    let id = s.order("t-vps", None).await;
    s.wait(id, "active", active).await;
    s.store
        .place_hold(id, "abuse", Some("phishing site reported"), "abuse-desk")
        .await
        .unwrap();
    s.running.as_ref().unwrap().wake.notify_one();
    let settled = |i: &Instance| i.observed_generation == i.desired_generation && i.desired_met();
    let i = s.wait(id, "held off", settled).await;
    assert_eq!(i.observed_status, ObservedStatus::Suspended);
    // Billing suspends for non-payment, then the customer pays: billing unsuspends.
    s.store
        .set_desired(id, DesiredStatus::Suspended, Some("non-payment"))
        .await
        .unwrap();
    s.store
        .set_desired(id, DesiredStatus::Active, None)
        .await
        .unwrap();
    let i = s.wait(id, "billing's changes acted on", settled).await;
    assert_eq!(
        i.observed_status,
        ObservedStatus::Suspended,
        "the abuse hold stays"
    );
    assert!(s.store.release_hold(id, "abuse").await.unwrap());
    s.running.as_ref().unwrap().wake.notify_one();
    let i = s
        .wait(id, "running again", |i| {
            i.observed_status == ObservedStatus::Active && settled(i)
        })
        .await;
    assert!(i.holds.is_empty());
    let h = s.store.history(id).await.unwrap();
    let hold = h
        .iter()
        .find(|t| t.action == "hold")
        .expect("the hold is recorded");
    assert_eq!(hold.details["kind"], "abuse");
    assert_eq!(hold.details["by"], "abuse-desk");
    assert!(h
        .iter()
        .any(|t| t.action == "release" && t.details["kind"] == "abuse"));
    let unsuspends = h
        .iter()
        .filter(|t| t.action == "unsuspend" && t.outcome == "started")
        .count();
    let log: Vec<String> = h
        .iter()
        .map(|t| format!("{} {} {} {}", t.action, t.cause, t.outcome, t.details))
        .collect();
    assert_eq!(
        unsuspends, 1,
        "powered on once, after the release: {log:#?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_for_one_instance_stop_it_until_a_person_retries() {
    let s = Setup::new().await;
    let id = s
        .store
        .create_instance(&NewInstance {
            customer_id: "c".into(),
            product_id: "t-vps".into(),
            desired_status: Some(DesiredStatus::Suspended),
            ..NewInstance::default()
        })
        .await
        .unwrap()
        .id;
    // Leftovers of some earlier mishap: two servers carrying this instance's label, one with
    // the name its create asks for (so the create is refused and the step looks).
    for name in [format!("provisioner-{id}"), format!("provisioner-{id}-old")] {
        s.sql(&format!(
            "INSERT INTO sim_servers (account, instance_id, name, state) VALUES ('sim-t', {id}, '{name}', 'running')"
        ))
        .await;
    }
    s.store
        .set_desired(id, DesiredStatus::Active, None)
        .await
        .unwrap();
    let i = s
        .wait(id, "failed", |i| {
            i.observed_status == ObservedStatus::Failed
        })
        .await;
    let reason = i.status_reason.unwrap();
    assert!(
        reason.contains(&format!(
            "found 2 servers labelled provisioner-instance={id}"
        )),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("provisioner instances retry {id}")),
        "{reason}"
    );

    // A person deletes one of them and retries.
    s.sql(&format!("UPDATE sim_servers SET state = 'deleted', deleted_at = '2000-01-01T00:00:00.000Z' WHERE name = 'provisioner-{id}-old'")).await;
    s.store.retry(id, "admin").await.unwrap();
    s.running.as_ref().unwrap().wake.notify_one();
    let i = s.wait(id, "adopted and active", active).await;
    let kept = s
        .count(&format!(
            "SELECT MAX(id) FROM sim_servers WHERE instance_id = {id} AND deleted_at IS NULL"
        ))
        .await;
    assert_eq!(
        i.provider_server_id,
        Some(kept.to_string()),
        "the remaining server was adopted"
    );
    assert_eq!(
        sim::ledger(&s.store).await.unwrap().created,
        2,
        "nothing new was created"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_billing_garbled_is_set_aside_and_the_others_go_on() {
    let s = Setup::new().await;
    let bad = s.order("t-vps", None).await;
    s.wait(bad, "active", |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;
    // SQLite stores binary data in a text column the reconciler reads (billing's columns are
    // typed by the database; the reconciler's own are not); the row is made due now.
    s.sql(&format!(
        "UPDATE instances SET last_error = X'ff00', next_check_at = '2000-01-01T00:00:00.000Z'
          WHERE id = {bad}"
    ))
    .await;
    let good = s.order("t-vps", None).await;
    s.wait(good, "active", |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;
    let start = Instant::now();
    let quarantined = format!(
        "SELECT COUNT(*) FROM instances WHERE id = {bad} AND observed_status = 'failed'
            AND status_reason LIKE '%column `last_error`%' AND next_check_at IS NULL"
    );
    while s.count(&quarantined).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the garbled row was not set aside"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The daemon keeps working: a later order converges too.
    let later = s.order("t-vps", None).await;
    s.wait(later, "active", |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;
    s.stop().await;
}
