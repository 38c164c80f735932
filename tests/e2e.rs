//! End to end: the real `provisioner run` binary as a separate process, driven the way billing
//! drives it (writes to the database), against the simulated cloud. SQLite and PostgreSQL.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use provisioner::provider::sim;
use provisioner::store::{
    ConnectOptions, DesiredStatus, Instance, InstanceFilter, NewInstance, SqlStore, Store,
};

use common::daemon::{Daemon, HOOK_SECRET, KEY, PATIENCE};

/// A catalog with one fast, slightly faulty simulated account, and billing's webhook
/// endpoint at `hook` if given.
fn write_catalog(dir: &Path, hook: Option<&str>) -> PathBuf {
    let catalog = dir.join("catalog");
    std::fs::create_dir_all(&catalog).unwrap();
    std::fs::write(
        catalog.join("e2e.yaml"),
        "apiVersion: provisioner/v1
kind: ProviderAccount
id: sim-e2e
module: sim
simulation: {boot_seconds: 0.3, action_seconds: 0.2, latency_ms: 1, fault_rate: 0.05}
---
apiVersion: provisioner/v1
kind: Product
id: e2e-vps
name: E2E VPS
type: vps
specs: {cpu_cores: 1, ram_gb: 1, storage_gb: 10}
pricing: {currency: EUR, monthly: \"1.00\"}
locations: [sim-1]
os_images: [debian-12, ubuntu-24.04]
provisioning: {account: sim-e2e}
---
apiVersion: provisioner/v1
kind: Product
id: e2e-vps-large
name: E2E VPS large
type: vps
specs: {cpu_cores: 4, ram_gb: 8, storage_gb: 80}
pricing: {currency: EUR, monthly: \"8.00\"}
locations: [sim-1]
os_images: [debian-12, ubuntu-24.04]
provisioning: {account: sim-e2e, config: {size: large}}
",
    )
    .unwrap();
    if let Some(hook) = hook {
        std::fs::write(
            catalog.join("hooks.yaml"),
            format!(
                "apiVersion: provisioner/v1
kind: WebhookEndpoint
id: billing
url: {hook}
secret_env: E2E_WEBHOOK_SECRET
"
            ),
        )
        .unwrap();
    }
    catalog
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the daemon");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

async fn all_instances(store: &SqlStore) -> Vec<Instance> {
    store
        .list_instances(&InstanceFilter::default())
        .await
        .unwrap()
}

/// Waits until every instance is what billing asked for.
async fn converge(store: &SqlStore, what: &str, daemons: &[&Daemon]) {
    let start = Instant::now();
    loop {
        let all = all_instances(store).await;
        if all.iter().all(Instance::desired_met) {
            return;
        }
        if start.elapsed() > PATIENCE {
            let stuck: Vec<String> = all
                .iter()
                .filter(|i| !i.desired_met())
                .take(5)
                .map(|i| {
                    format!(
                        "{} desired {} observed {} reason {:?} error {:?}",
                        i.id, i.desired_status, i.observed_status, i.status_reason, i.last_error
                    )
                })
                .collect();
            let logs: Vec<String> = daemons
                .iter()
                .map(|d| {
                    d.log()
                        .lines()
                        .rev()
                        .take(20)
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .collect();
            panic!(
                "{what}: not converged after {PATIENCE:?}; e.g. {stuck:#?}\nlogs:\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn order(store: &SqlStore, n: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(n);
    for k in 0..n {
        let i = store
            .create_instance(&NewInstance {
                customer_id: format!("cust-{}", k % 17),
                product_id: "e2e-vps".into(),
                ..NewInstance::default()
            })
            .await
            .unwrap();
        ids.push(i.id);
    }
    ids
}

/// Every instance's log holds each step of the life it went through, in order.
async fn every_step_is_logged(store: &SqlStore, ids: &[i64]) {
    let expected = [
        ("create", "active"),
        ("suspend", "suspended"),
        ("unsuspend", "active"),
        ("resize", "active"),
        ("reinstall", "active"),
        ("reboot", "active"),
        ("terminate", "terminated"),
    ];
    for id in ids {
        let history = store.history(*id).await.unwrap();
        let done: Vec<(&str, &str)> = history
            .iter()
            .filter(|t| t.outcome == "succeeded" && t.from_status != t.to_status)
            .map(|t| (t.action.as_str(), t.to_status.as_deref().unwrap_or("")))
            .filter(|(a, _)| *a != "observe")
            .collect();
        let mut position = 0;
        for step in expected {
            match done[position..].iter().position(|d| *d == step) {
                Some(p) => position += p + 1,
                None => {
                    let all: Vec<String> = history
                        .iter()
                        .map(|t| {
                            format!(
                                "{} {} {:?}->{:?} {:?} {}",
                                t.action, t.outcome, t.from_status, t.to_status, t.error, t.details
                            )
                        })
                        .collect();
                    panic!(
                        "instance {id}: {step:?} missing from its transition log {done:?}\n{}",
                        all.join("\n")
                    )
                }
            }
        }
        assert!(
            history
                .iter()
                .any(|t| t.outcome == "started" && t.action == "create"),
            "instance {id}: the create's intent was recorded before the call"
        );
    }
}

/// Waits until `receiver` has been sent every event of the outbox, each signed.
async fn every_event_is_delivered(
    store: &SqlStore,
    receiver: &common::receiver::Receiver,
    daemon: &Daemon,
) {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_after(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        events.extend(page);
    }
    // 200 servers made, suspended, unsuspended, resized, reinstalled, rebooted, terminated.
    for kind in [
        "instance.provisioned",
        "instance.suspended",
        "instance.unsuspended",
        "instance.resized",
        "instance.reinstalled",
        "instance.rebooted",
        "instance.terminated",
    ] {
        let n = events.iter().filter(|e| e.kind == kind).count();
        assert!(n >= 200, "{n} {kind} events");
    }
    // Deliveries held by a killed daemon wait for their claim to run out (45 s).
    let start = Instant::now();
    loop {
        let seen = receiver.seen();
        let got: std::collections::HashSet<&str> = seen.iter().map(|r| r.id.as_str()).collect();
        let missing: Vec<&str> = events
            .iter()
            .map(|e| e.event_id.as_str())
            .filter(|id| !got.contains(id))
            .collect();
        if missing.is_empty() {
            assert!(
                seen.iter()
                    .all(|r| common::receiver::verify(HOOK_SECRET, r)),
                "every delivery is signed"
            );
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{} events never delivered across the SIGKILLs, e.g. {:?}:\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            daemon
                .log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn lifecycle(url: &str, dir: &Path) {
    let receiver = common::receiver::Receiver::start(|_, _, _| 204).await;
    let catalog = write_catalog(dir, Some(&receiver.url("/hooks/provisioner")));
    let mut first = Daemon::start(url, &catalog, dir, "daemon-a");
    let store = SqlStore::open(url, &ConnectOptions::default())
        .await
        .unwrap();
    let ids = order(&store, 200).await;

    // Kill the daemon with SIGKILL while it is creating servers.
    let start = Instant::now();
    loop {
        let started = all_instances(&store)
            .await
            .iter()
            .filter(|i| i.provider_server_id.is_some())
            .count();
        if started >= 40 {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no progress before the kill:\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill9();
    let mut second = Daemon::start(url, &catalog, dir, "daemon-b");
    converge(&store, "provisioning after a SIGKILL", &[&second]).await;

    let http = second.http().await;
    let health = http_get(&http, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200") || health.starts_with("HTTP/1.0 200"),
        "{health}"
    );
    let metrics = http_get(&http, "/metrics");
    assert!(
        metrics.contains("provisioner_reconciles_total{outcome="),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "provisioner_provider_calls_total{account=\"sim-e2e\",call=\"create\",result=\"ok\"}"
        ),
        "{metrics}"
    );

    for id in &ids {
        store
            .set_desired(*id, DesiredStatus::Suspended, Some("non-payment"))
            .await
            .unwrap();
    }
    converge(&store, "suspension", &[&second]).await;
    for id in &ids {
        store
            .set_desired(*id, DesiredStatus::Active, None)
            .await
            .unwrap();
    }
    converge(&store, "unsuspension", &[&second]).await;

    // Every server moves to the large product, and then gets a new OS, each with a SIGKILL
    // in the middle: never two changes nor two reinstalls for one request.
    for id in &ids {
        store.change_product(*id, "e2e-vps-large").await.unwrap();
    }
    second
        .kill9_when(&store, 20, |i| {
            i.applied_product_id.as_deref() == Some("e2e-vps-large")
        })
        .await;
    let mut third = Daemon::start(url, &catalog, dir, "daemon-c");
    converge(&store, "changes of plan after a SIGKILL", &[&third]).await;
    for id in &ids {
        store
            .request_reinstall(*id, Some("ubuntu-24.04"))
            .await
            .unwrap();
    }
    third
        .kill9_when(&store, 20, |i| i.reinstall_handled == 1)
        .await;
    let mut second = Daemon::start(url, &catalog, dir, "daemon-d");
    converge(&store, "reinstalls after a SIGKILL", &[&second]).await;
    let ledger = sim::ledger(&store).await.unwrap();
    assert_eq!(
        (ledger.resizes, ledger.rebuilds),
        (200, 200),
        "one change of plan and one reinstall per request, across the SIGKILLs: {ledger:?}"
    );
    for i in all_instances(&store).await {
        assert_eq!(i.applied_product_id.as_deref(), Some("e2e-vps-large"));
        // The new root password is sealed, unless the reinstall's answer was lost (it was
        // then followed at the provider, and the stale password cleared).
        let history = store.history(i.id).await.unwrap();
        let adopted = history
            .iter()
            .any(|t| t.action == "reinstall" && t.details["adopted"] == true);
        assert_eq!(i.credentials.is_some(), !adopted, "instance {}", i.id);
    }

    for id in &ids {
        store.request_reboot(*id).await.unwrap();
    }
    converge(&store, "reboots", &[&second]).await;
    assert!(all_instances(&store)
        .await
        .iter()
        .all(|i| i.reboot_handled == 1));
    for id in &ids {
        store
            .set_desired(*id, DesiredStatus::Terminated, Some("cancelled"))
            .await
            .unwrap();
    }
    converge(&store, "termination", &[&second]).await;
    every_event_is_delivered(&store, &receiver, &second).await;

    assert_eq!(
        second.terminate().await,
        Some(0),
        "a graceful stop exits 0:\n{}",
        second.log()
    );
    let ledger = sim::ledger(&store).await.unwrap();
    assert_eq!(
        ledger.duplicated_instances, 0,
        "no instance ever got two servers: {ledger:?}"
    );
    assert_eq!(
        ledger.created, 200,
        "one server per instance, even across the SIGKILL: {ledger:?}"
    );
    assert_eq!((ledger.live, ledger.orphans), (0, 0), "{ledger:?}");
    every_step_is_logged(&store, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_sqlite_survives_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("e2e.db").display());
    lifecycle(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_postgres_survives_a_sigkill() {
    let Some(url) = common::fresh_postgres_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    lifecycle(&url, dir.path()).await;
}

/// Runs the CLI on `url`; its output.
fn cli(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["--database-url", url])
        .args(args)
        .env("PROVISIONER_SECRET_KEY", KEY)
        .env("USER", "ops-alice")
        .output()
        .expect("run provisioner")
}

/// Runs the CLI and expects success; its standard output.
fn cli_ok(url: &str, args: &[&str]) -> String {
    let out = cli(url, args);
    assert!(
        out.status.success(),
        "provisioner {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the CLI and expects a refusal (exit 1) saying `why`.
fn cli_refused(url: &str, args: &[&str], why: &str) {
    let out = cli(url, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "provisioner {args:?}: {stderr}");
    assert!(stderr.contains(why), "provisioner {args:?}: {stderr}");
}

/// A server made by hand in the simulated provider's console (no label, or a stale one),
/// on the plan of product `e2e-vps`.
async fn hand_made(store: &SqlStore, name: &str, label: Option<i64>) -> String {
    let made = store
        .sim_create(&provisioner::store::sim::NewSimServer {
            account: "sim-e2e",
            instance_id: label,
            name,
            size: Some("e2e-vps"),
            image: "debian-12",
            location: "sim-1",
            boot_seconds: 0.0,
            capacity: None,
        })
        .await
        .unwrap();
    match made {
        provisioner::store::sim::SimCreated::Made(s) => s.id.to_string(),
        other => panic!("cannot make server {name}: {other:?}"),
    }
}

/// The sim's view of a server: its label and its state.
async fn sim_server(store: &SqlStore, id: &str) -> (Option<i64>, String) {
    let s = store
        .sim_servers(
            "sim-e2e",
            provisioner::store::sim::SimSelect::Id(id.parse().unwrap()),
        )
        .await
        .unwrap();
    let s = s.first().expect("the server is live");
    (s.instance_id, s.state.clone())
}

/// Waits until every instance of `ids` satisfies `done`.
async fn wait_for(store: &SqlStore, ids: &[i64], what: &str, done: impl Fn(&Instance) -> bool) {
    let start = Instant::now();
    loop {
        let all = all_instances(store).await;
        let pending: Vec<&Instance> = all
            .iter()
            .filter(|i| ids.contains(&i.id) && !done(i))
            .collect();
        if pending.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: {} instances never got there, e.g. {:#?}",
            pending.len(),
            pending.first()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Servers made outside provisioner are imported observe-only (nothing is sent for them, not
/// even a label, while billing's changes wait), then managed (labelled, then converged), with
/// a SIGKILL in the middle; lost instances adopt other servers, again across a SIGKILL; the
/// orphan report offers the command that imports a left-behind server. The refusals hold.
async fn imports_and_adoptions(url: &str, dir: &Path) {
    let catalog = write_catalog(dir, None);
    let cat = catalog.to_str().unwrap();
    let store = SqlStore::open(url, &ConnectOptions::default())
        .await
        .unwrap();
    let mut servers = Vec::new();
    for k in 0..60 {
        servers.push(hand_made(&store, &format!("legacy-{k}"), None).await);
    }
    let left_behind = hand_made(&store, "left-behind", Some(999_999)).await;

    let mut ids = Vec::new();
    for (k, server) in servers[..40].iter().enumerate() {
        let out = cli_ok(
            url,
            &[
                "instances",
                "import",
                "--account",
                "sim-e2e",
                "--server-id",
                server,
                "--customer",
                &format!("cust-{k}"),
                "--product",
                "e2e-vps",
                "--billing-ref",
                &format!("svc-{k}"),
                "--observe-only",
                "--catalog",
                cat,
                "--format",
                "json",
            ],
        );
        let i: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(i["observed_status"], "active", "{i}");
        assert_eq!(i["observe_only"], true, "{i}");
        ids.push(i["id"].as_i64().unwrap());
    }
    cli_refused(
        url,
        &[
            "instances",
            "import",
            "--account",
            "sim-e2e",
            "--server-id",
            &servers[0],
            "--customer",
            "c",
            "--product",
            "e2e-vps",
            "--catalog",
            cat,
        ],
        "already",
    );
    cli_refused(
        url,
        &[
            "instances",
            "import",
            "--account",
            "sim-e2e",
            "--server-id",
            &left_behind,
            "--customer",
            "c",
            "--product",
            "e2e-vps-large",
            "--catalog",
            cat,
        ],
        "is on plan `e2e-vps`",
    );
    cli_refused(
        url,
        &[
            "instances",
            "import",
            "--account",
            "sim-e2e",
            "--server-id",
            "424242",
            "--customer",
            "c",
            "--product",
            "e2e-vps",
            "--catalog",
            cat,
        ],
        "has no server `424242`",
    );

    // Observe-only: billing's suspension waits, and the servers are not touched.
    let mut daemon = Daemon::start(url, &catalog, dir, "attach-a");
    for id in &ids {
        store
            .set_desired(*id, DesiredStatus::Suspended, Some("non-payment"))
            .await
            .unwrap();
    }
    wait_for(&store, &ids, "observe-only waits", |i| {
        i.status_reason
            .as_deref()
            .is_some_and(|r| r.contains("observe-only"))
    })
    .await;
    for server in &servers[..40] {
        assert_eq!(
            sim_server(&store, server).await,
            (None, "running".to_owned()),
            "an observe-only server is neither labelled nor powered off"
        );
    }

    // Managed: labelled, then suspended; a SIGKILL in the middle.
    for id in &ids {
        cli_ok(url, &["instances", "manage", &id.to_string()]);
    }
    cli_refused(
        url,
        &["instances", "manage", &ids[0].to_string()],
        "managed already",
    );
    daemon.kill9_when(&store, 15, |i| !i.claim_pending).await;
    let mut daemon = Daemon::start(url, &catalog, dir, "attach-b");
    converge(
        &store,
        "suspension of managed imports after a SIGKILL",
        &[&daemon],
    )
    .await;
    for (id, server) in ids.iter().zip(&servers) {
        assert_eq!(
            sim_server(&store, server).await,
            (Some(*id), "off".to_owned())
        );
    }
    for id in &ids {
        store
            .set_desired(*id, DesiredStatus::Active, None)
            .await
            .unwrap();
    }
    converge(&store, "unsuspension of imports", &[&daemon]).await;

    // Twenty servers vanish; their instances adopt the spare servers.
    let lost: Vec<i64> = ids[..20].to_vec();
    for server in &servers[..20] {
        store
            .sim_delete("sim-e2e", server.parse().unwrap())
            .await
            .unwrap();
    }
    wait_for(&store, &lost, "lost", |i| {
        i.observed_status == provisioner::store::ObservedStatus::Lost
    })
    .await;
    cli_refused(
        url,
        &[
            "instances",
            "adopt",
            &ids[30].to_string(),
            "--server-id",
            &servers[45],
            "--catalog",
            cat,
        ],
        "only lost or failed",
    );
    cli_refused(
        url,
        &[
            "instances",
            "adopt",
            &lost[0].to_string(),
            "--server-id",
            &servers[30],
            "--catalog",
            cat,
        ],
        "a server belongs to one instance",
    );
    for (id, server) in lost.iter().zip(&servers[40..]) {
        cli_ok(
            url,
            &[
                "instances",
                "adopt",
                &id.to_string(),
                "--server-id",
                server,
                "--catalog",
                cat,
            ],
        );
    }
    daemon
        .kill9_when(&store, 30, |i| {
            !i.claim_pending && i.observed_status == provisioner::store::ObservedStatus::Active
        })
        .await;
    let daemon = Daemon::start(url, &catalog, dir, "attach-c");
    converge(&store, "adoptions after a SIGKILL", &[&daemon]).await;
    for (id, server) in lost.iter().zip(&servers[40..]) {
        assert_eq!(
            sim_server(&store, server).await,
            (Some(*id), "running".to_owned())
        );
        let history = store.history(*id).await.unwrap();
        assert!(
            history
                .iter()
                .any(|t| t.action == "adopt" && t.details["by"] == "ops-alice"),
            "the adoption is in the history with the admin named: {history:#?}"
        );
    }

    // The orphan report offers the command that imports the left-behind server.
    let report = cli_ok(url, &["orphans", "--catalog", cat]);
    let command = report
        .lines()
        .map(str::trim)
        .find(|l| {
            l.starts_with("provisioner instances import")
                && l.contains(&format!("--server-id {left_behind} "))
        })
        .unwrap_or_else(|| panic!("no import command for {left_behind}:\n{report}"));
    assert!(command.contains("--product e2e-vps"), "{command}");
    let args: Vec<String> = command
        .replace("CUSTOMER", "cust-late")
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .chain(["--catalog".to_owned(), cat.to_owned()])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cli_ok(url, &args);
    converge(&store, "the orphan's import", &[&daemon]).await;
    assert_eq!(
        cli_ok(url, &["orphans", "--catalog", cat]),
        "no orphan servers\n"
    );

    for i in all_instances(&store).await {
        store
            .set_desired(i.id, DesiredStatus::Terminated, Some("cancelled"))
            .await
            .unwrap();
    }
    converge(&store, "termination", &[&daemon]).await;
    let ledger = sim::ledger(&store).await.unwrap();
    assert_eq!(
        (
            ledger.created,
            ledger.live,
            ledger.orphans,
            ledger.duplicated_instances
        ),
        (61, 0, 0, 0),
        "nothing made, every attached server deleted with its instance: {ledger:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_and_adoptions_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("attach.db").display());
    imports_and_adoptions(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_and_adoptions_on_postgres() {
    let Some(url) = common::fresh_postgres_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    imports_and_adoptions(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_one_postgres_without_overlap() {
    let Some(url) = common::fresh_postgres_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let catalog = write_catalog(dir.path(), None);
    let a = Daemon::start(&url, &catalog, dir.path(), "daemon-a");
    let b = Daemon::start(&url, &catalog, dir.path(), "daemon-b");
    let store = SqlStore::open(&url, &ConnectOptions::default())
        .await
        .unwrap();
    let ids = order(&store, 200).await;
    converge(&store, "provisioning by two daemons", &[&a, &b]).await;
    for id in &ids {
        store
            .set_desired(*id, DesiredStatus::Suspended, None)
            .await
            .unwrap();
    }
    converge(&store, "suspension by two daemons", &[&a, &b]).await;

    let by_owner = common::daemon::steps_by_owner(&store, &ids).await;
    assert!(
        by_owner.get("daemon-a").copied().unwrap_or(0) > 0,
        "daemon-a did work: {by_owner:?}"
    );
    assert!(
        by_owner.get("daemon-b").copied().unwrap_or(0) > 0,
        "daemon-b did work: {by_owner:?}"
    );
    let ledger = sim::ledger(&store).await.unwrap();
    assert_eq!(ledger.duplicated_instances, 0, "{ledger:?}");
    assert_eq!(ledger.created, 200, "{ledger:?}");
}

/// Billing shares the SQLite file with a busy daemon: with the busy timeout README tells
/// billing to set, none of its writes fails with `database is locked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_writes_to_a_shared_sqlite_never_fail_with_a_busy_timeout() {
    use sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let catalog = write_catalog(dir.path(), None);
    let store = SqlStore::open(&url, &ConnectOptions::default())
        .await
        .unwrap();
    let daemon = Daemon::start(&url, &catalog, dir.path(), "shared");
    // Billing's own driver: no provisioner functions, README's busy timeout.
    let billing = sqlx::SqlitePool::connect_with(
        SqliteConnectOptions::from_str(&url)
            .unwrap()
            .busy_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    for k in 0..60 {
        match sqlx::query_scalar::<_, i64>(
            "INSERT INTO instances (customer_id, order_id, product_id) VALUES ($1, $2, 'e2e-vps') RETURNING id",
        )
        .bind(format!("cust-{k}"))
        .bind(format!("ord-{k}"))
        .fetch_one(&billing)
        .await
        {
            Ok(id) => ids.push(id),
            Err(e) => failures.push(e.to_string()),
        }
    }
    for round in 0..4 {
        for id in &ids {
            let sql = match round {
                0 | 2 => "UPDATE instances SET reboot_requested = reboot_requested + 1 WHERE id = $1",
                1 => "UPDATE instances SET desired_status = 'suspended', suspend_reason = 'non-payment' WHERE id = $1",
                _ => "UPDATE instances SET desired_status = 'active', suspend_reason = NULL WHERE id = $1",
            };
            if let Err(e) = sqlx::query(sql).bind(id).execute(&billing).await {
                failures.push(e.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(failures.is_empty(), "billing's writes failed: {failures:?}");
    converge(&store, "shared SQLite", &[&daemon]).await;
    billing.close().await;
    store.close().await;
}
