//! Benchmark: claiming due work from a backlog of 100,000 instances in batches of 100.
//!
//! `cargo bench --bench store_claim` measures SQLite (a temporary file) and, when
//! `BENCH_DATABASE_URL` or `TEST_DATABASE_URL` names a PostgreSQL server, PostgreSQL with one
//! and with two concurrent claimers (a fresh database each run). Reports instances claimed per
//! second and the p50 / p99 latency of one `claim_due` call of 100.
//!
//! Environment: `BENCH_INSTANCES` (default 100000), `BENCH_BATCH` (default 100).

use std::sync::Arc;
use std::time::{Duration, Instant};

use provisioner::store::{ConnectOptions, Engine, SqlStore, Store};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn fill(store: &SqlStore, n: usize) {
    let sql = format!(
        "WITH RECURSIVE seq(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM seq WHERE x < {n})
         INSERT INTO instances (customer_id, product_id) SELECT 'c' || x, 'sim-vps-small' FROM seq"
    );
    match store.engine() {
        Engine::Sqlite => sqlx::raw_sql(&sql)
            .execute(store.sqlite_pool().unwrap())
            .await
            .map(drop),
        Engine::Postgres => sqlx::raw_sql(&sql)
            .execute(store.postgres_pool().unwrap())
            .await
            .map(drop),
    }
    .expect("insert the backlog");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn measure(label: &str, store: SqlStore, claimers: usize, batch: u32, total: usize) {
    let store = Arc::new(store);
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..claimers {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let owner = format!("bench-{c}");
            let mut latencies = Vec::new();
            let mut claimed = 0usize;
            loop {
                let t = Instant::now();
                let claims = store.claim_due(&owner, batch, 3600.0).await.expect("claim");
                latencies.push(t.elapsed());
                if claims.is_empty() {
                    break;
                }
                claimed += claims.len();
            }
            (claimed, latencies)
        }));
    }
    let mut claimed = 0;
    let mut latencies = Vec::new();
    for h in handles {
        let (n, l) = h.await.unwrap();
        claimed += n;
        latencies.extend(l);
    }
    let elapsed = start.elapsed();
    assert_eq!(claimed, total, "every instance claimed exactly once");
    latencies.sort();
    println!(
        "{label:<34} {:>9.0} instances/s  ({:>6.1} claims of {batch}/s)  p50 {:>6.2} ms  p99 {:>6.2} ms  total {:.2} s",
        claimed as f64 / elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        elapsed.as_secs_f64()
    );
}

async fn postgres_store(admin_url: &str, name: &str) -> SqlStore {
    let admin = sqlx::PgPool::connect(admin_url).await.expect("connect");
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let (base, _) = admin_url.rsplit_once('/').expect("a URL with a database");
    SqlStore::open(&format!("{base}/{name}"), &ConnectOptions::default())
        .await
        .expect("open")
}

#[tokio::main]
async fn main() {
    let total = env_usize("BENCH_INSTANCES", 100_000);
    let batch = env_usize("BENCH_BATCH", 100) as u32;
    println!("backlog: {total} due instances, claimed in batches of {batch}");

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = SqlStore::open(&url, &ConnectOptions::default())
        .await
        .unwrap();
    let t = Instant::now();
    fill(&store, total).await;
    println!(
        "sqlite: inserted {total} instances in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    measure("sqlite, 1 claimer", store, 1, batch, total).await;

    let Some(admin) = std::env::var("BENCH_DATABASE_URL")
        .ok()
        .or_else(|| std::env::var("TEST_DATABASE_URL").ok())
    else {
        println!("postgres: skipped (set BENCH_DATABASE_URL or TEST_DATABASE_URL)");
        return;
    };
    for claimers in [1, 2] {
        let store = postgres_store(&admin, &format!("provisioner_bench_{claimers}")).await;
        let t = Instant::now();
        fill(&store, total).await;
        println!(
            "postgres: inserted {total} instances in {:.2} s",
            t.elapsed().as_secs_f64()
        );
        measure(
            &format!("postgres, {claimers} claimer(s)"),
            store,
            claimers,
            batch,
            total,
        )
        .await;
    }
}
