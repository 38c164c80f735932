//! Benchmarks of the reconciler.
//!
//! `cargo bench --bench reconcile` measures, on SQLite and (when `BENCH_DATABASE_URL` or
//! `TEST_DATABASE_URL` names a PostgreSQL server) on PostgreSQL:
//!
//! 1. steps per second: a daemon in this process converges `BENCH_INSTANCES` (default 5000)
//!    new orders on a simulated cloud with no latency, no boot time, no faults, no rate limit;
//! 2. reaction latency: with everything converged, billing suspends one instance at a time;
//!    the time from the `UPDATE` (the trigger's `desired_changed_at`) to the intent the
//!    executor commits right before the provider call (the transition's `at`), p50 and p99;
//! 3. (SQLite) peak resident memory of the real `provisioner run` process with 100,000
//!    converged instances in the database, through start-up, claims and bulk resyncs;
//!    (`-- rss`: only this);
//! 5. (`-- recovery`, only that) crash recovery: 500 orders mid-provisioning on a sim with a
//!    boot time, the daemon SIGKILLed; the time from the kill until every instance it held
//!    is claimed again, by the daemon restarted under its owner name, and (on PostgreSQL) by
//!    a second daemon that was running beside it;
//! 6. (`-- million`, only that, on PostgreSQL) peak resident memory of `provisioner run` with
//!    1,000,000 converged instances (one in a hundred due), resyncing every 3 s, and the
//!    latency of claims of 32 due instances made meanwhile, p50 and p99;
//! 4. (`-- billing`, only that) billing sharing the SQLite file with a daemon converging
//!    `BENCH_INSTANCES` orders: the latency of billing's own writes with README's 5 s busy
//!    timeout, and how many fail with no busy timeout (SQLite's default).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use provisioner::catalog::watch::WatchOptions;
use provisioner::reconcile::daemon::{start, DaemonConfig};
use provisioner::store::{
    ConnectOptions, Engine, InstanceFilter, NextCheck, ObservedStatus, SqlStore, Store,
};
use tokio_util::sync::CancellationToken;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn catalog(dir: &Path) -> std::path::PathBuf {
    let c = dir.join("catalog");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(
        c.join("bench.yaml"),
        "apiVersion: provisioner/v1
kind: ProviderAccount
id: sim-bench
module: sim
simulation: {boot_seconds: 0, action_seconds: 0, latency_ms: 0, fault_rate: 0}
---
apiVersion: provisioner/v1
kind: Product
id: bench-vps
name: Bench VPS
type: vps
specs: {cpu_cores: 1, ram_gb: 1, storage_gb: 10}
pricing: {currency: EUR, monthly: \"1\"}
locations: [sim]
os_images: [debian-12]
provisioning: {account: sim-bench}
",
    )
    .unwrap();
    c
}

async fn raw(store: &SqlStore, sql: &str) {
    match store.engine() {
        Engine::Sqlite => sqlx::raw_sql(sql)
            .execute(store.sqlite_pool().unwrap())
            .await
            .map(drop),
        Engine::Postgres => sqlx::raw_sql(sql)
            .execute(store.postgres_pool().unwrap())
            .await
            .map(drop),
    }
    .expect("bench SQL");
}

async fn seconds_between(store: &SqlStore, id: i64) -> Option<f64> {
    let sql = match store.engine() {
        Engine::Sqlite => format!(
            "SELECT (julianday(t.at) - julianday(i.desired_changed_at)) * 86400.0
               FROM instance_transitions t JOIN instances i ON i.id = t.instance_id
              WHERE t.instance_id = {id} AND t.action = 'suspend' AND t.outcome = 'started'"
        ),
        Engine::Postgres => format!(
            "SELECT EXTRACT(EPOCH FROM (t.at - i.desired_changed_at))::float8
               FROM instance_transitions t JOIN instances i ON i.id = t.instance_id
              WHERE t.instance_id = {id} AND t.action = 'suspend' AND t.outcome = 'started'"
        ),
    };
    match store.engine() {
        Engine::Sqlite => sqlx::query_scalar::<_, f64>(&sql)
            .fetch_optional(store.sqlite_pool().unwrap())
            .await
            .ok()
            .flatten(),
        Engine::Postgres => sqlx::query_scalar::<_, f64>(&sql)
            .fetch_optional(store.postgres_pool().unwrap())
            .await
            .ok()
            .flatten(),
    }
}

/// How many instances are active.
async fn active(store: &SqlStore) -> usize {
    let filter = InstanceFilter {
        observed_status: Some(ObservedStatus::Active),
        ..InstanceFilter::default()
    };
    usize::try_from(store.count_instances(&filter).await.unwrap()).unwrap_or(usize::MAX)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn steps_and_latency(label: &str, url: &str, dir: &Path, n: usize) {
    let mut config = DaemonConfig::new(url, catalog(dir));
    config.workers = 64;
    config.batch = 128;
    config.resync_interval = Duration::from_secs(3600);
    config.max_connections = 24;
    config.owner = "bench".into();
    config.catalog_watch = WatchOptions::default();
    let shutdown = CancellationToken::new();
    let running = start(config, shutdown.clone()).await.expect("daemon");
    let store = running.store.clone();
    raw(
        &store,
        &format!(
            "WITH RECURSIVE seq(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM seq WHERE x < {n})
             INSERT INTO instances (customer_id, product_id) SELECT 'c' || x, 'bench-vps' FROM seq"
        ),
    )
    .await;
    let t0 = Instant::now();
    running.wake.notify_one();
    while active(&store).await < n {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "{label}: did not converge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let steps = running.metrics.total("provisioner_reconciles_total");
    println!(
        "{label}: {n} orders converged in {elapsed:.2} s: {:.0} steps/s ({steps} steps, {:.1} per instance), {:.0} instances/s",
        steps as f64 / elapsed,
        steps as f64 / n as f64,
        n as f64 / elapsed
    );

    // Reaction latency: one billing change at a time, the daemon otherwise idle.
    let mut latencies = Vec::new();
    for id in 1..=200i64 {
        raw(
            &store,
            &format!("UPDATE instances SET desired_status = 'suspended' WHERE id = {id}"),
        )
        .await;
        let t = Instant::now();
        loop {
            if let Some(s) = seconds_between(&store, id).await {
                latencies.push(s * 1e3);
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{label}: no reaction to instance {id}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "{label}: reaction latency from billing UPDATE to the provider call: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (200 changes)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    shutdown.cancel();
    running.wait().await;
}

/// Billing's writes to a SQLite file the daemon is busy with: two billing connections (one
/// with a 5 s busy timeout, one with none), each writing as fast as it can.
async fn billing_on_shared_sqlite(dir: &Path, n: usize) {
    use sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;
    let url = format!("sqlite://{}", dir.join("shared.db").display());
    let mut config = DaemonConfig::new(&url, catalog(dir));
    config.workers = 64;
    config.resync_interval = Duration::from_secs(3600);
    config.owner = "bench".into();
    config.catalog_watch = WatchOptions::default();
    let shutdown = CancellationToken::new();
    let running = start(config, shutdown.clone()).await.expect("daemon");
    let store = running.store.clone();
    let billing = |timeout: Duration| {
        let url = url.clone();
        async move {
            sqlx::SqlitePool::connect_with(
                SqliteConnectOptions::from_str(&url)
                    .unwrap()
                    .busy_timeout(timeout),
            )
            .await
            .unwrap()
        }
    };
    let patient = billing(Duration::from_secs(5)).await;
    let hasty = billing(Duration::ZERO).await;
    for k in 0..n {
        sqlx::query("INSERT INTO instances (customer_id, product_id) VALUES ($1, 'bench-vps')")
            .bind(format!("c{k}"))
            .execute(&patient)
            .await
            .unwrap();
    }
    running.wake.notify_one();
    let t0 = Instant::now();
    let (mut latencies, mut patient_failed, mut hasty_failed, mut hasty_total) =
        (Vec::new(), 0usize, 0usize, 0usize);
    let mut id = 0i64;
    while active(&store).await < n && t0.elapsed() < Duration::from_secs(600) {
        for _ in 0..20 {
            id = id % n as i64 + 1;
            let sql = "UPDATE instances SET reboot_requested = reboot_requested + 1 WHERE id = $1";
            let t = Instant::now();
            if sqlx::query(sql).bind(id).execute(&patient).await.is_err() {
                patient_failed += 1;
            }
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
            hasty_total += 1;
            if sqlx::query(sql).bind(id).execute(&hasty).await.is_err() {
                hasty_failed += 1;
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "sqlite shared with billing: {n} orders converged in {:.1} s while billing wrote {} times: \
         with a 5 s busy timeout p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {patient_failed} failed; \
         with none {hasty_failed} of {hasty_total} failed with `database is locked`",
        t0.elapsed().as_secs_f64(),
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    patient.close().await;
    hasty.close().await;
    shutdown.cancel();
    running.wait().await;
}

/// The peak resident memory (`VmHWM`) in a `/proc/PID/status` file, in KiB (0 once gone).
fn high_water_kib(status: &str) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// Peak RSS of `provisioner run` over a database of converged instances.
async fn daemon_memory(dir: &Path, n: usize) {
    let url = format!("sqlite://{}", dir.join("rss.db").display());
    let catalog = catalog(dir);
    let store = SqlStore::open(&url, &ConnectOptions::default())
        .await
        .unwrap();
    raw(
        &store,
        &format!(
            "WITH RECURSIVE seq(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM seq WHERE x < {n})
             INSERT INTO instances (customer_id, product_id) SELECT 'c' || x, 'bench-vps' FROM seq;
             INSERT INTO sim_servers (account, instance_id, name, state, ipv4)
                  SELECT 'sim-bench', id, 'provisioner-' || id, 'running', '198.51.100.7' FROM instances;
             UPDATE instances
                SET observed_status = 'active', provider_account = 'sim-bench',
                    provider_server_id = (SELECT CAST(s.id AS TEXT) FROM sim_servers s WHERE s.instance_id = instances.id),
                    observed_generation = 1, product_revision = 'bench',
                    next_check_at = '2999-01-01T00:00:00.000Z',
                    updated_at = '2000-01-01T00:00:00.000Z';"
        ),
    )
    .await;
    // A tenth comes due, so the run also claims and steps.
    raw(&store, &format!("UPDATE instances SET next_check_at = '2000-01-01T00:00:00.000Z', updated_at = '2000-01-01T00:00:00.000Z' WHERE id % 10 = 0 AND id <= {n}")).await;
    store.close().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args([
            "--database-url",
            &url,
            "run",
            "--listen",
            "127.0.0.1:0",
            "--resync-seconds",
            "3",
        ])
        .arg("--catalog")
        .arg(&catalog)
        .env("PROVISIONER_SECRET_KEY", KEY)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("rss.log")).unwrap())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        peak = peak.max(high_water_kib(&status));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon ended early:\n{}",
        std::fs::read_to_string(dir.join("rss.log")).unwrap_or_default()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("rss.log")).unwrap_or_default();
    assert!(
        !log.contains("resync failed"),
        "the resyncs failed, the figure would mean nothing:\n{log}"
    );
    if std::env::var("BENCH_LOG").is_ok() {
        print!(
            "{}",
            std::fs::read_to_string(dir.join("rss.log")).unwrap_or_default()
        );
    }
    println!(
        "sqlite: peak RSS of `provisioner run` with {n} converged instances (15 s: start, claims, 4 bulk resyncs): {:.1} MiB",
        peak as f64 / 1024.0
    );
}

/// `provisioner run` on `url` as `owner`, with the default leases (10 s, renewed every 3 s).
fn daemon(url: &str, catalog: &Path, owner: &str, log: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["--database-url", url, "run", "--listen", "127.0.0.1:0"])
        .args(["--owner", owner, "--idle-poll-ms", "100"])
        .arg("--catalog")
        .arg(catalog)
        .env("PROVISIONER_SECRET_KEY", KEY)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// (instance id, lease epoch) of the unexpired leases `owner` holds.
async fn held_by(store: &SqlStore, owner: &str) -> Vec<(i64, i64)> {
    let now = store.now().await.unwrap();
    store
        .list_instances(&InstanceFilter::default())
        .await
        .unwrap()
        .iter()
        .filter(|i| i.lease_owner.as_deref() == Some(owner) && i.lease_expires_at > Some(now))
        .map(|i| (i.id, i.lease_epoch))
        .collect()
}

/// 500 orders mid-provisioning (30 s boot, 50 ms per call), the daemon SIGKILLed with steps
/// in flight: how long until every instance it held is claimed again, by itself restarted or
/// (`survivor`) by a second daemon already running.
async fn recovery(url: &str, dir: &Path, label: &str, survivor: bool) {
    let c = dir.join("catalog");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(
        c.join("bench.yaml"),
        std::fs::read_to_string(catalog(dir).join("bench.yaml"))
            .unwrap()
            .replace(
                "simulation: {boot_seconds: 0, action_seconds: 0, latency_ms: 0, fault_rate: 0}",
                "simulation: {boot_seconds: 30, action_seconds: 0, latency_ms: 50, fault_rate: 0}",
            ),
    )
    .unwrap();
    let store = SqlStore::open(url, &ConnectOptions::default())
        .await
        .unwrap();
    raw(
        &store,
        "WITH RECURSIVE seq(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM seq WHERE x < 500)
         INSERT INTO instances (customer_id, product_id) SELECT 'c' || x, 'bench-vps' FROM seq",
    )
    .await;
    let mut first = daemon(url, &c, "web-1", &dir.join("first.log"));
    let mut other = survivor.then(|| daemon(url, &c, "web-2", &dir.join("other.log")));
    // Mid-provisioning: most servers made and booting, steps in flight.
    let t = Instant::now();
    let held = loop {
        let made = store
            .count_instances(&InstanceFilter {
                observed_status: Some(ObservedStatus::Provisioning),
                ..InstanceFilter::default()
            })
            .await
            .unwrap();
        let held = held_by(&store, "web-1").await;
        if made >= 250 && held.len() >= 10 {
            break held;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{label}: no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    first.kill().unwrap();
    let killed = Instant::now();
    first.wait().unwrap();
    let mut restarted = (!survivor).then(|| daemon(url, &c, "web-1", &dir.join("second.log")));
    loop {
        let instances = store
            .list_instances(&InstanceFilter::default())
            .await
            .unwrap();
        let moved = held
            .iter()
            .filter(|(id, epoch)| {
                instances
                    .iter()
                    .any(|i| i.id == *id && i.lease_epoch > *epoch)
            })
            .count();
        if moved == held.len() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "{label}: {moved} of {} moved",
            held.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{label}: {} instances held by a SIGKILLed daemon (500 mid-provisioning) claimed again {:.2} s after the kill, by {}",
        held.len(),
        killed.elapsed().as_secs_f64(),
        if survivor {
            "the daemon running beside it"
        } else {
            "the daemon restarted under its owner name"
        }
    );
    for child in [other.as_mut(), restarted.as_mut()].into_iter().flatten() {
        let _ = child.kill();
        let _ = child.wait();
    }
    store.close().await;
}

/// Peak RSS of `provisioner run` over a million converged instances in PostgreSQL with
/// resyncs every 3 s, and the latency of claims made meanwhile.
async fn million_on_postgres(admin: &str, dir: &Path) {
    const N: i64 = 1_000_000;
    std::env::set_var("PROVISIONER_SECRET_KEY", KEY);
    let a = sqlx::PgPool::connect(admin).await.unwrap();
    for sql in [
        "DROP DATABASE IF EXISTS provisioner_bench_million",
        "CREATE DATABASE provisioner_bench_million",
    ] {
        sqlx::raw_sql(sql).execute(&a).await.unwrap();
    }
    a.close().await;
    let (base, _) = admin.rsplit_once('/').unwrap();
    let url = format!("{base}/provisioner_bench_million");
    let store = SqlStore::open(&url, &ConnectOptions::default())
        .await
        .unwrap();
    let t = Instant::now();
    raw(
        &store,
        &format!(
            "BEGIN;
             -- A fixture loaded in bulk: the guard triggers (billing's boundary) are skipped.
             SET LOCAL session_replication_role = replica;
             INSERT INTO sim_servers (id, account, instance_id, made_for, name, state, ipv4)
                  SELECT x, 'sim-bench', x, x, 'provisioner-' || x, 'running', '198.51.100.7'
                    FROM generate_series(1, {N}) AS x;
             INSERT INTO instances (id, customer_id, product_id, observed_status, provider_account,
                                    provider_server_id, observed_generation, product_revision,
                                    next_check_at)
                  SELECT x, 'c' || x, 'bench-vps', 'active', 'sim-bench', x::text, 1, 'bench',
                         CASE WHEN x % 100 = 0 THEN now() ELSE now() + interval '1 day' END
                    FROM generate_series(1, {N}) AS x;
             SELECT setval(pg_get_serial_sequence('instances', 'id'), {N});
             SELECT setval(pg_get_serial_sequence('sim_servers', 'id'), {N});
             COMMIT;
             ANALYZE;"
        ),
    )
    .await;
    println!(
        "postgres: {N} converged instances written in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let catalog = catalog(dir);
    let log = dir.join("million.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["--database-url", &url, "run", "--listen", "127.0.0.1:0"])
        .args(["--resync-seconds", "3"])
        .arg("--catalog")
        .arg(&catalog)
        .env("PROVISIONER_SECRET_KEY", KEY)
        .env("RUST_LOG", "warn,provisioner::reconcile::resync=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let mut claims = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(40) {
        peak = peak.max(high_water_kib(&status));
        // A claim of due work, as a second daemon makes it, while the first one works and
        // resyncs.
        let t = Instant::now();
        let got = store.claim_due("bench-claims", 32, 30.0).await.unwrap();
        claims.push(t.elapsed().as_secs_f64() * 1e3);
        for c in got {
            store
                .release(&c.lease, NextCheck::After(Duration::from_secs(86_400)))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon ended early:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("resync failed"), "{log}");
    let resyncs = log.matches("resync done").count();
    claims.sort_by(f64::total_cmp);
    println!(
        "postgres: peak RSS of `provisioner run` with {N} converged instances (40 s, {resyncs} bulk resyncs of {N} servers): {:.1} MiB; claims of 32 meanwhile: p50 {:.1} ms, p99 {:.1} ms ({} claims)",
        peak as f64 / 1024.0,
        percentile(&claims, 0.5),
        percentile(&claims, 0.99),
        claims.len()
    );
    store.close().await;
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir().unwrap();
    if std::env::args().any(|a| a == "billing") {
        std::env::set_var("PROVISIONER_SECRET_KEY", KEY);
        billing_on_shared_sqlite(dir.path(), n).await;
        return;
    }
    if std::env::args().any(|a| a == "million") {
        let admin = std::env::var("BENCH_DATABASE_URL")
            .or_else(|_| std::env::var("TEST_DATABASE_URL"))
            .expect("-- million needs BENCH_DATABASE_URL or TEST_DATABASE_URL (PostgreSQL)");
        million_on_postgres(&admin, dir.path()).await;
        return;
    }
    if std::env::args().any(|a| a == "recovery") {
        std::env::set_var("PROVISIONER_SECRET_KEY", KEY);
        let sqlite = format!("sqlite://{}", dir.path().join("recovery.db").display());
        recovery(&sqlite, dir.path(), "sqlite", false).await;
        if let Ok(admin) =
            std::env::var("BENCH_DATABASE_URL").or_else(|_| std::env::var("TEST_DATABASE_URL"))
        {
            for (name, survivor) in [("restart", false), ("survivor", true)] {
                let db = format!("provisioner_bench_recovery_{name}");
                let a = sqlx::PgPool::connect(&admin).await.unwrap();
                for sql in [
                    format!("DROP DATABASE IF EXISTS {db}"),
                    format!("CREATE DATABASE {db}"),
                ] {
                    sqlx::raw_sql(&sql).execute(&a).await.unwrap();
                }
                a.close().await;
                let (base, _) = admin.rsplit_once('/').unwrap();
                let d = dir.path().join(name);
                std::fs::create_dir_all(&d).unwrap();
                recovery(&format!("{base}/{db}"), &d, "postgres", survivor).await;
            }
        }
        return;
    }
    if std::env::args().any(|a| a == "rss") {
        daemon_memory(dir.path(), 100_000).await;
        return;
    }
    let sqlite = format!("sqlite://{}", dir.path().join("steps.db").display());
    steps_and_latency("sqlite", &sqlite, dir.path(), n).await;
    if let Some(admin) = std::env::var("BENCH_DATABASE_URL")
        .ok()
        .or_else(|| std::env::var("TEST_DATABASE_URL").ok())
    {
        std::env::set_var("PROVISIONER_SECRET_KEY", KEY);
        let a = sqlx::PgPool::connect(&admin).await.unwrap();
        sqlx::raw_sql("DROP DATABASE IF EXISTS provisioner_bench_steps")
            .execute(&a)
            .await
            .unwrap();
        sqlx::raw_sql("CREATE DATABASE provisioner_bench_steps")
            .execute(&a)
            .await
            .unwrap();
        a.close().await;
        let (base, _) = admin.rsplit_once('/').unwrap();
        let pg_dir = dir.path().join("pg");
        std::fs::create_dir_all(&pg_dir).unwrap();
        steps_and_latency(
            "postgres",
            &format!("{base}/provisioner_bench_steps"),
            &pg_dir,
            n,
        )
        .await;
    } else {
        println!("postgres: skipped (set BENCH_DATABASE_URL or TEST_DATABASE_URL)");
    }
    let rss_dir = dir.path().join("rss");
    std::fs::create_dir_all(&rss_dir).unwrap();
    daemon_memory(&rss_dir, 100_000).await;
}
