//! `provisioner run`, `provisioner demo` and `provisioner plan`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{RunArgs, EXIT_INVALID, EXIT_OK};
use crate::catalog::{self, Module};
use crate::provider::sim;
use crate::reconcile::daemon::{start, DaemonConfig};
use crate::reconcile::plan::{held_back, plan as plan_step, product_check, Step};
use crate::store::{
    ConnectOptions, DesiredStatus, Instance, InstanceFilter, NewInstance, SqlStore, Store,
};

/// First SIGINT/SIGTERM: drain and stop. Second: exit at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: no new work is claimed, steps in flight finish; signal again to exit at once");
    shutdown.cancel();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::warn!("second signal: exiting now; leases held will expire");
    std::process::exit(130);
}

pub(super) async fn run(url: &str, args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut config = DaemonConfig::new(url, args.catalog);
    config.listen = Some(args.listen);
    config.workers = args.workers.max(1);
    config.resync_interval = Duration::from_secs_f64(args.resync_seconds.max(0.1));
    config.idle_poll = Duration::from_millis(args.idle_poll_ms.max(1));
    config.lease =
        crate::reconcile::lease::LeaseTiming::new(args.lease_seconds, args.lease_renew_seconds)
            .map_err(anyhow::Error::msg)?;
    config.drain = Duration::from_secs_f64(args.drain_seconds.clamp(0.0, 3600.0));
    if let Some(owner) = args.owner {
        config.owner = owner;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    tracing::info!(database = %crate::store::redact_url(url), "starting");
    let drain = config.drain;
    let running = tokio::select! {
        r = start(config, shutdown.clone()) => match r {
            Ok(running) => running,
            // The daemon loads its catalog before it creates anything: an invalid one is a
            // verdict on the input (exit 1), every error printed.
            Err(e) => return match invalid_catalog(&e) {
                Some(invalid) => {
                    super::report_invalid(invalid);
                    Ok(ExitCode::from(EXIT_INVALID))
                }
                None => Err(e),
            },
        },
        () = shutdown.cancelled() => {
            tracing::info!("stopped before start-up finished");
            return Ok(ExitCode::from(EXIT_OK));
        }
    };
    tracing::info!(owner = %running.owner, "reconciling");
    super::service::spawn_watchdog(shutdown.clone());
    super::service::ready(&match running.http {
        Some(addr) => format!("reconciling; /healthz, /readyz and /metrics on {addr}"),
        None => "reconciling".to_owned(),
    });
    shutdown.cancelled().await;
    super::service::stopping();
    // The drain deadline bounds the steps; a second more for the other tasks, whatever the
    // database is doing.
    if tokio::time::timeout(drain + Duration::from_secs(1), running.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks did not end in time; exiting (leases held will expire)");
    }
    tracing::info!("stopped");
    Ok(ExitCode::from(EXIT_OK))
}

/// The invalid catalog an error comes from, if it does.
fn invalid_catalog(e: &anyhow::Error) -> Option<&catalog::LoadError> {
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<catalog::LoadError>())
        .find(|l| matches!(l, catalog::LoadError::Invalid { .. }))
}

/// The catalog at `dir`, or, when it has errors, the exit code after printing them (exit 1);
/// an unreadable directory is an error (exit 2).
fn checked_catalog(dir: &Path) -> anyhow::Result<Result<catalog::Catalog, ExitCode>> {
    match catalog::load(dir) {
        Ok(c) => Ok(Ok(c)),
        Err(e @ catalog::LoadError::Invalid { .. }) => {
            super::report_invalid(&e);
            Ok(Err(ExitCode::from(EXIT_INVALID)))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("catalog {}", dir.display()))),
    }
}

fn tally(instances: &[Instance]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for i in instances {
        *counts.entry(i.observed_status.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn wait_until(
    store: &SqlStore,
    ids: &[i64],
    what: &str,
    start: Instant,
    limit: Duration,
) -> anyhow::Result<bool> {
    let mut last_print = Instant::now() - Duration::from_secs(1);
    loop {
        let mut all = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let first = chunk[0];
            let list = store
                .list_instances(&InstanceFilter {
                    after_id: Some(first - 1),
                    limit: Some(u32::try_from(chunk.len()).unwrap_or(u32::MAX)),
                    ..InstanceFilter::default()
                })
                .await?;
            all.extend(list.into_iter().filter(|i| chunk.contains(&i.id)));
        }
        let done = all.iter().filter(|i| i.desired_met()).count();
        if last_print.elapsed() >= Duration::from_millis(500) || done == ids.len() {
            println!(
                "  {:>5.1}s  {what}: {done}/{} converged  ({})",
                start.elapsed().as_secs_f64(),
                ids.len(),
                tally(&all)
            );
            last_print = Instant::now();
        }
        if done == ids.len() {
            return Ok(true);
        }
        if start.elapsed() > limit {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) async fn demo(
    catalog_dir: Option<&Path>,
    servers: usize,
    database_url: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let catalog_dir = match catalog_dir {
        Some(d) => d.to_owned(),
        None => {
            let d = dir.path().join("catalog");
            catalog::example::write_to(&d).context("cannot write the example catalog")?;
            d
        }
    };
    let catalog =
        catalog::load(&catalog_dir).context("the demo sells the catalog's sim products")?;
    let products: Vec<&catalog::Product> = catalog
        .products
        .values()
        .filter(|p| {
            p.active
                && catalog
                    .account_of(p)
                    .is_some_and(|a| a.module == Module::Sim)
        })
        .collect();
    if products.is_empty() {
        anyhow::bail!(
            "catalog {} has no active product on a `sim` account",
            catalog_dir.display()
        );
    }
    let (url, shown) = match database_url {
        Some(u) => (u.to_owned(), crate::store::redact_url(u)),
        None => {
            let path = dir.path().join("demo.db");
            (
                format!("sqlite://{}", path.display()),
                path.display().to_string(),
            )
        }
    };
    if database_url.is_some() {
        let store = SqlStore::open(&url, &ConnectOptions::default())
            .await
            .with_context(|| format!("cannot use database {shown}"))?;
        let some = store.count_instances(&InstanceFilter::default()).await?;
        store.close().await;
        if some > 0 {
            anyhow::bail!(
                "the demo needs a database without instances, and {shown} has some; \
                 leave --database-url out to run it on a temporary one"
            );
        }
    }
    println!("provisioner demo: {servers} servers on the simulated cloud, database {shown}");
    println!(
        "  catalog: {}",
        if catalog_dir.starts_with(dir.path()) {
            "the example catalog built into this binary".to_owned()
        } else {
            catalog_dir.display().to_string()
        }
    );
    println!(
        "  products: {}",
        products
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut config = DaemonConfig::new(&url, catalog_dir.clone());
    config.workers = 64;
    config.idle_poll = Duration::from_millis(50);
    config.resync_interval = Duration::from_secs(3);
    config.owner = "demo".into();
    let shutdown = CancellationToken::new();
    let running = start(config, shutdown.clone()).await?;
    let store = running.store.clone();
    let started = Instant::now();
    let limit = Duration::from_secs(28);

    // Orders, spread over the sim products, within each product's stock.
    let mut sold: BTreeMap<&str, u32> = BTreeMap::new();
    let mut ids = Vec::new();
    let mut n = 0usize;
    while ids.len() < servers && n < servers * 4 {
        let p = products[n % products.len()];
        n += 1;
        let used = sold.entry(p.id.as_str()).or_default();
        if p.stock.is_some_and(|s| *used >= s) {
            continue;
        }
        *used += 1;
        let i = store
            .create_instance(&NewInstance {
                customer_id: format!("demo-customer-{}", ids.len() % 7 + 1),
                order_id: Some(format!("demo-order-{}", ids.len() + 1)),
                product_id: p.id.clone(),
                ..NewInstance::default()
            })
            .await?;
        ids.push(i.id);
    }
    running.wake.notify_one();
    println!(
        "ordered {} servers (as billing does when orders are paid)",
        ids.len()
    );
    let mut ok = wait_until(&store, &ids, "provisioning", started, limit).await?;

    let third = ids.len() / 4;
    let suspend: Vec<i64> = ids.iter().copied().take(third).collect();
    let reboot: Vec<i64> = ids.iter().copied().skip(third).take(third).collect();
    let terminate: Vec<i64> = ids.iter().copied().skip(2 * third).take(third).collect();
    if ok {
        println!(
            "suspending {} (non-payment), rebooting {}, terminating {} (cancelled)",
            suspend.len(),
            reboot.len(),
            terminate.len()
        );
        for id in &suspend {
            store
                .set_desired(*id, DesiredStatus::Suspended, Some("non-payment"))
                .await?;
        }
        for id in &reboot {
            store.request_reboot(*id).await?;
        }
        for id in &terminate {
            store
                .set_desired(
                    *id,
                    DesiredStatus::Terminated,
                    Some("cancelled by customer"),
                )
                .await?;
        }
        running.wake.notify_one();
        ok = wait_until(&store, &ids, "changes", started, limit).await?;
    }
    if ok {
        println!("payment received: unsuspending {}", suspend.len());
        for id in &suspend {
            store.set_desired(*id, DesiredStatus::Active, None).await?;
        }
        running.wake.notify_one();
        ok = wait_until(&store, &ids, "unsuspending", started, limit).await?;
    }

    let ledger = sim::ledger(&store).await?;
    let all = store.list_instances(&InstanceFilter::default()).await?;
    let mut transitions = 0;
    for id in &ids {
        transitions += store.history(*id).await?.len();
    }
    let provider_calls = running.metrics.total("provisioner_provider_calls_total");
    println!();
    println!("summary after {:.1}s:", started.elapsed().as_secs_f64());
    println!("  instances:   {}", tally(&all));
    println!("  transitions: {transitions} recorded, provider calls: {provider_calls}");
    println!(
        "  sim ledger:  {} servers ever created, {} live, {} instances with a duplicate server, {} orphans",
        ledger.created, ledger.live, ledger.duplicated_instances, ledger.orphans
    );
    if let Some(id) = suspend.first().or(ids.first()) {
        println!();
        println!("history of instance {id} (ordered, suspended for non-payment, unsuspended):");
        for t in store.history(*id).await? {
            println!(
                "  {}  {:<12} -> {:<12} {:<9} {:<15} {:<9}{}",
                super::output::ts(t.at),
                t.from_status.as_deref().unwrap_or("-"),
                t.to_status.as_deref().unwrap_or("-"),
                t.action,
                t.cause,
                t.outcome,
                t.error.map(|e| format!(" ({e})")).unwrap_or_default()
            );
        }
    }
    shutdown.cancel();
    running.wait().await;
    let clean = ok && ledger.duplicated_instances == 0 && ledger.orphans == 0;
    println!();
    if clean {
        println!("demo converged: every server is what billing asked for, none created twice, none orphaned");
        Ok(ExitCode::from(EXIT_OK))
    } else {
        println!(
            "demo did NOT converge cleanly within {}s (see above)",
            limit.as_secs()
        );
        Ok(ExitCode::from(EXIT_INVALID))
    }
}

/// The summary buckets of `plan`, in the order printed.
const BUCKETS: [&str; 12] = [
    "create",
    "suspend",
    "unsuspend",
    "reboot",
    "resize",
    "reinstall",
    "terminate",
    "claim",
    "in flight",
    "waiting",
    "needing a person",
    "converged",
];

fn bucket(step: &Step) -> &'static str {
    match step {
        Step::Claim => "claim",
        Step::Create => "create",
        Step::Suspend => "suspend",
        Step::Unsuspend | Step::SkipReboot => "unsuspend",
        Step::Reboot => "reboot",
        Step::Resize => "resize",
        Step::Reinstall => "reinstall",
        Step::Terminate | Step::Forget => "terminate",
        Step::Poll(_) => "in flight",
        Step::Wait(_) => "waiting",
        Step::Idle(_) => "needing a person",
        Step::Converged => "converged",
    }
}

/// `plan`: exit 0, or with `detailed` 2 when some instance is not converged (Terraform's
/// convention); an invalid catalog exits 1.
pub(super) async fn plan(
    url: &str,
    catalog_dir: &Path,
    all: bool,
    format: super::Format,
    detailed: bool,
) -> anyhow::Result<ExitCode> {
    let catalog = match checked_catalog(catalog_dir)? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = SqlStore::open_existing(url, &ConnectOptions::default()).await?;
    let mut after = None;
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut table = super::output::Table::new(&[">ID", "PRODUCT", "DESIRED", "OBSERVED", "STEP"]);
    loop {
        let page = store
            .list_instances(&InstanceFilter {
                after_id: after,
                limit: Some(1000),
                ..InstanceFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for i in &page {
            // The daemon's answer: the plan, held back where the account cannot be driven
            // here (its credentials are not in this environment).
            let step = held_back(plan_step(i, &product_check(&catalog, i)), || {
                i.provider_account
                    .clone()
                    .or_else(|| {
                        catalog
                            .product(&i.product_id)
                            .map(|p| p.provisioning.account.clone())
                    })
                    .and_then(|a| crate::provider::account::unavailable(&catalog, &a))
            });
            let quiet = matches!(step, Step::Converged)
                || (matches!(step, Step::Idle(_)) && i.desired_met());
            let b = if quiet { "converged" } else { bucket(&step) };
            *counts.entry(b).or_default() += 1;
            if quiet && !all {
                continue;
            }
            if format == super::Format::Json {
                rows.push(serde_json::json!({
                    "id": i.id,
                    "product_id": i.product_id,
                    "desired_status": i.desired_status.as_str(),
                    "observed_status": i.observed_status.as_str(),
                    "step": b,
                    "description": step.describe(),
                }));
            } else {
                table.row(vec![
                    i.id.to_string(),
                    i.product_id.clone(),
                    i.desired_status.as_str().to_owned(),
                    i.observed_status.as_str().to_owned(),
                    step.describe(),
                ]);
            }
        }
    }
    store.close().await;
    let pending: usize = counts
        .iter()
        .filter(|(k, _)| **k != "converged")
        .map(|(_, v)| *v)
        .sum();
    let count = |b: &str| counts.get(b).copied().unwrap_or(0);
    let summary = BUCKETS
        .iter()
        .map(|b| match *b {
            "in flight" | "waiting" | "needing a person" | "converged" => {
                format!("{} {b}", count(b))
            }
            _ => format!("{} to {b}", count(b)),
        })
        .collect::<Vec<_>>()
        .join(", ");
    if format == super::Format::Json {
        let mut totals = serde_json::Map::new();
        for b in BUCKETS {
            totals.insert(b.replace(' ', "_"), count(b).into());
        }
        super::output::json(&serde_json::json!({
            "instances": rows,
            "summary": totals,
            "pending": pending,
        }))?;
    } else {
        let mut s = table.render();
        s.push_str(&format!("Plan: {summary}.\n"));
        super::output::text(&s)?;
    }
    Ok(ExitCode::from(if detailed && pending > 0 {
        super::EXIT_USAGE
    } else {
        EXIT_OK
    }))
}
