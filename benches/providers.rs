//! Provider modules against the fake APIs of `tests/fakes/` (real HTTP on 127.0.0.1):
//!
//! 1. provider calls per converged create (200 orders at once, module defaults for polling);
//! 2. calls for a full resync of 1,000 owned servers;
//! 3. with a backlog larger than the budget (fake limit lowered to 60 requests, refilling
//!    1 per second, the catalog's `rate_limit` set to match), the share of the budget used
//!    and the share of requests answered 429;
//! 4. `429s`: 500 orders at Hetzner's real budget (3,600 refilling 1/s) and DigitalOcean's,
//!    with every 20th request answered 429 although requests are left: the time to converge
//!    and the longest the account went without sending;
//! 5. `shutdown`: the daemon binary with a saturated backlog (400 creates against a budget of
//!    60 + 1/s, the fake answering after 20 s), SIGTERM, and the time until it exited.
//!
//! `cargo bench --bench providers [-- creates|resync|budget|429s|shutdown]`

#[path = "../tests/fakes/mod.rs"]
mod fakes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fakes::cloud::{Cloud, CloudConfig, Flavor};
use provisioner::catalog::load as load_dir;
use provisioner::provider::digitalocean::DigitalOcean;
use provisioner::provider::hetzner::HetznerCloud;
use provisioner::provider::limit::RateLimiter;
use provisioner::provider::Provider;
use provisioner::reconcile::daemon::{start, DaemonConfig};
use provisioner::store::{NewInstance, ObservedStatus, Store};
use tokio_util::sync::CancellationToken;

fn catalog(module: &str, url: &str, env: &str, extra: &str) -> String {
    let (location, os, config) = match module {
        "hetzner" => ("fsn1", "ubuntu-24.04", "{server_type: cx22}"),
        _ => ("fra1", "ubuntu-24-04-x64", "{size: s-1vcpu-1gb}"),
    };
    format!(
        "apiVersion: provisioner/v1
kind: ProviderAccount
id: acct
module: {module}
endpoint: {url}
credentials: {{token_env: {env}}}
{extra}
---
apiVersion: provisioner/v1
kind: Product
id: vps
name: VPS
type: vps
specs: {{cpu_cores: 1, ram_gb: 1, storage_gb: 20}}
pricing: {{currency: EUR, monthly: \"4.50\"}}
locations: [{location}]
os_images: [{os}]
provisioning: {{account: acct, config: {config}}}
"
    )
}

/// Runs a daemon on a fresh SQLite file with `catalog`, orders `n` servers, and waits until
/// `done` says so or `limit` passes. Returns the orders' ids and the elapsed time.
async fn run(
    catalog_text: &str,
    n: usize,
    limit: Duration,
    resync: Duration,
) -> (tempfile::TempDir, Duration, usize) {
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("catalog");
    std::fs::create_dir(&cat).unwrap();
    std::fs::write(cat.join("c.yaml"), catalog_text).unwrap();
    let url = format!("sqlite://{}", dir.path().join("b.db").display());
    let mut config = DaemonConfig::new(&url, cat);
    config.workers = 64;
    config.idle_poll = Duration::from_millis(50);
    config.resync_interval = resync;
    let shutdown = CancellationToken::new();
    let running = start(config, shutdown.clone()).await.unwrap();
    let store = running.store.clone();
    let mut ids = Vec::new();
    for _ in 0..n {
        let i = store
            .create_instance(&NewInstance {
                customer_id: "bench".into(),
                product_id: "vps".into(),
                ..NewInstance::default()
            })
            .await
            .unwrap();
        ids.push(i.id);
    }
    running.wake.notify_one();
    let started = Instant::now();
    let mut active = 0;
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
        active = 0;
        for id in &ids {
            let i = store.instance(*id).await.unwrap().unwrap();
            if i.observed_status == ObservedStatus::Active {
                active += 1;
            }
        }
        if active == n {
            break;
        }
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    running.wait().await;
    (dir, elapsed, active)
}

/// Starts a fake cloud with `cfg` and puts its token in a variable named after the bench's
/// `part` and the `module`; returns the cloud and the variable's name.
async fn start_cloud(cfg: CloudConfig, part: &str, module: &str) -> (Cloud, String) {
    let cloud = Cloud::start(cfg).await;
    let env = format!("BENCH_{part}{}_TOKEN", module.to_uppercase());
    std::env::set_var(&env, "bench-token");
    (cloud, env)
}

async fn calls_per_create(flavor: Flavor, module: &str) {
    let mut cfg = CloudConfig::new(flavor, "bench-token");
    // Cloud servers take tens of seconds to boot; the fake takes 8 s.
    cfg.boot = Duration::from_secs(8);
    let (cloud, env) = start_cloud(cfg, "", module).await;
    let n = 200;
    let (_dir, elapsed, active) = run(
        &catalog(module, &cloud.url, &env, ""),
        n,
        Duration::from_secs(120),
        Duration::from_secs(30),
    )
    .await;
    let ledger = cloud.ledger();
    let mut kinds: Vec<_> = ledger.by_kind.iter().collect();
    kinds.sort();
    println!(
        "{module}: {active}/{n} creates converged in {:.1} s with {} requests: {:.2} calls per converged create ({kinds:?})",
        elapsed.as_secs_f64(),
        ledger.requests,
        ledger.requests as f64 / active.max(1) as f64
    );
}

async fn resync_calls() {
    for (flavor, module) in [
        (Flavor::Hetzner, "hetzner"),
        (Flavor::DigitalOcean, "digitalocean"),
    ] {
        let cloud = Cloud::start(CloudConfig::new(flavor, "bench-token")).await;
        cloud.seed(1000);
        cloud.reset_ledger();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("c.yaml"),
            catalog(module, &cloud.url, "BENCH_RESYNC_TOKEN", ""),
        )
        .unwrap();
        std::env::set_var("BENCH_RESYNC_TOKEN", "bench-token");
        let cat = load_dir(dir.path()).expect("catalog");
        let account = cat.account("acct").unwrap();
        let limiter = Arc::new(RateLimiter::new(&account.rate_limit));
        let env = |k: &str| std::env::var(k).ok();
        let provider: Box<dyn Provider> = match flavor {
            Flavor::Hetzner => Box::new(HetznerCloud::new(account, limiter, &env).unwrap()),
            Flavor::DigitalOcean => Box::new(DigitalOcean::new(account, limiter, &env).unwrap()),
        };
        let servers = provider.list_owned().await.unwrap();
        let ledger = cloud.ledger();
        println!(
            "{module}: full resync of {} owned servers took {} requests ({:?})",
            servers.len(),
            ledger.requests,
            ledger.by_kind
        );
    }
}

async fn budget_use(flavor: Flavor, module: &str) {
    let mut cfg = CloudConfig::new(flavor, "bench-token");
    cfg.limit = (60, 1.0);
    cfg.boot = Duration::from_secs(2);
    let (cloud, env) = start_cloud(cfg, "BUDGET_", module).await;
    let window = Duration::from_secs(40);
    let (_dir, _elapsed, active) = run(
        &catalog(
            module,
            &cloud.url,
            &env,
            "rate_limit: {requests_per_minute: 60}",
        ),
        400,
        window,
        Duration::from_secs(10),
    )
    .await;
    let ledger = cloud.ledger();
    let served_in_window = ledger.served_at.iter().filter(|t| **t <= window).count() as f64;
    let budget = 60.0 + window.as_secs_f64() * 1.0;
    println!(
        "{module}: backlog of 400 creates, budget 60 + 1/s over {} s = {budget:.0} requests: {served_in_window:.0} served ({:.1} % of the budget), {} answered 429 ({:.2} % of {} requests); {active} converged",
        window.as_secs(),
        100.0 * served_in_window / budget,
        ledger.throttled,
        100.0 * ledger.throttled as f64 / ledger.requests.max(1) as f64,
        ledger.requests
    );
}

async fn occasional_429s(flavor: Flavor, module: &str) {
    let mut cfg = CloudConfig::new(flavor, "bench-token");
    cfg.limit = match flavor {
        Flavor::Hetzner => (3600, 1.0),
        Flavor::DigitalOcean => (250, 250.0 / 60.0),
    };
    cfg.boot = Duration::from_secs(2);
    cfg.faults.spurious_429_every = Some(20);
    let (cloud, env) = start_cloud(cfg, "429_", module).await;
    let n = 500;
    let (_dir, elapsed, active) = run(
        &catalog(module, &cloud.url, &env, ""),
        n,
        Duration::from_secs(300),
        Duration::from_secs(30),
    )
    .await;
    let ledger = cloud.ledger();
    let mut times: Vec<Duration> = ledger
        .served_at
        .iter()
        .chain(&ledger.throttled_at)
        .copied()
        .collect();
    times.sort();
    let longest_gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "{module}: {active}/{n} creates converged in {:.1} s with every 20th request answered 429 ({} of {} requests); the longest the account went without a request: {:.2} s",
        elapsed.as_secs_f64(),
        ledger.throttled,
        ledger.requests,
        longest_gap.as_secs_f64()
    );
}

async fn shutdown_time() {
    let mut cfg = CloudConfig::new(Flavor::Hetzner, "bench-token");
    cfg.limit = (60, 1.0);
    cfg.faults.latency = Duration::from_secs(20);
    let cloud = Cloud::start(cfg).await;
    let mut took = Vec::new();
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let cat = dir.path().join("catalog");
        std::fs::create_dir(&cat).unwrap();
        std::fs::write(
            cat.join("c.yaml"),
            catalog(
                "hetzner",
                &cloud.url,
                "BENCH_SHUTDOWN_TOKEN",
                "rate_limit: {requests_per_minute: 60}\ntimeout_seconds: 60",
            ),
        )
        .unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = provisioner::store::SqlStore::open(&url, &Default::default())
            .await
            .unwrap();
        for _ in 0..400 {
            store
                .create_instance(&NewInstance {
                    customer_id: "bench".into(),
                    product_id: "vps".into(),
                    ..NewInstance::default()
                })
                .await
                .unwrap();
        }
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .args([
                "--database-url",
                &url,
                "run",
                "--listen",
                "127.0.0.1:0",
                "--catalog",
            ])
            .arg(&cat)
            .env("BENCH_SHUTDOWN_TOKEN", "bench-token")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Saturated: every worker holds a claim (creates hanging on the provider, the rest
        // waiting for budget).
        let waiting = Instant::now();
        while store.queue_stats().await.unwrap().leased < 32
            && waiting.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2 + round)).await;
        let signalled = Instant::now();
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        took.push(signalled.elapsed());
        let left = store.queue_stats().await.unwrap();
        println!(
            "shutdown round {round}: exit {status} {:.2} s after SIGTERM; {} instances still leased afterwards",
            signalled.elapsed().as_secs_f64(),
            left.leased
        );
        store.close().await;
    }
    took.sort();
    println!(
        "shutdown with a saturated backlog (drain deadline 5 s): median {:.2} s, worst {:.2} s from SIGTERM to exit",
        took[took.len() / 2].as_secs_f64(),
        took[took.len() - 1].as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if want("creates") {
        calls_per_create(Flavor::Hetzner, "hetzner").await;
        calls_per_create(Flavor::DigitalOcean, "digitalocean").await;
    }
    if want("resync") {
        resync_calls().await;
    }
    if want("budget") {
        budget_use(Flavor::Hetzner, "hetzner").await;
        budget_use(Flavor::DigitalOcean, "digitalocean").await;
    }
    if want("429s") {
        occasional_429s(Flavor::Hetzner, "hetzner").await;
        occasional_429s(Flavor::DigitalOcean, "digitalocean").await;
    }
    if want("shutdown") {
        shutdown_time().await;
    }
}
