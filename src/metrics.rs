//! The daemon's figures, kept in a Prometheus registry (the `prometheus` crate) and rendered
//! in the text exposition format on `/metrics`: counters of what happened, gauges of how the
//! fleet stands, histograms of how long steps, provider requests and convergence take, the
//! build, and the process (CPU, memory, file descriptors).

use std::collections::BTreeMap;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Buckets of `provisioner_time_to_converge_seconds`: from a second (a sim reboot) to a day
/// (a dedicated server racked by hand).
const CONVERGE_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
    86400.0,
];

/// Buckets of the step and provider request histograms: a millisecond to a minute.
const CALL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Counters, gauges and histograms of one daemon. Cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    provider_calls: IntCounterVec,
    rate_limit_waits: IntCounterVec,
    drift: IntCounterVec,
    webhook_attempts: IntCounterVec,
    emails: IntCounterVec,
    step_duration: HistogramVec,
    provider_duration: HistogramVec,
    time_to_converge: HistogramVec,
    instances: IntGaugeVec,
    orphan_servers: IntGaugeVec,
    /// Instances due now (refreshed periodically): `provisioner_queue_depth`.
    pub due_instances: IntGauge,
    /// Instances leased by some worker (refreshed periodically).
    pub leased_instances: IntGauge,
    /// Steps running in this daemon now.
    pub in_flight: IntGauge,
    /// Catalog reloads that failed (the last good catalog kept serving).
    pub catalog_reload_failures: IntCounter,
    /// Successful catalog reloads.
    pub catalog_reloads: IntCounter,
    /// Lease renewals that failed (the leases of running steps at risk of running out).
    pub lease_renewal_failures: IntCounter,
    /// How long claiming a batch of due work takes.
    pub claim_duration: prometheus::Histogram,
    /// Whether the files on disk are the catalog being served (1) or not (0).
    pub catalog_valid: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(r, Box::new(c.clone()));
    c
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(r, Box::new(h.clone()));
    h
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(r, Box::new(g.clone()));
    g
}

fn register(r: &Registry, c: Box<dyn Collector>) {
    // Names are fixed above and unique: registering cannot fail.
    if let Err(e) = r.register(c) {
        unreachable!("metric registered twice: {e}");
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        let reconciles = counter_vec(
            &r,
            "provisioner_reconciles_total",
            "Reconcile steps by outcome.",
            &["outcome"],
        );
        let provider_calls = counter_vec(
            &r,
            "provisioner_provider_calls_total",
            "Provider API calls by account, call and result.",
            &["account", "call", "result"],
        );
        let rate_limit_waits = counter_vec(
            &r,
            "provisioner_rate_limit_waits_total",
            "Provider calls that waited for the account's rate budget.",
            &["account"],
        );
        let drift = counter_vec(
            &r,
            "provisioner_drift_total",
            "Drift found by resyncs, by kind.",
            &["kind"],
        );
        let webhook_attempts = counter_vec(
            &r,
            "provisioner_webhook_attempts_total",
            "Webhook delivery attempts by endpoint and what followed (delivered, retry, failed, disabled).",
            &["endpoint", "result"],
        );
        let emails = counter_vec(
            &r,
            "provisioner_emails_total",
            "Admin e-mails by notifier and result (sent, failed).",
            &["notifier", "result"],
        );
        let step_duration = histogram_vec(
            &r,
            "provisioner_step_duration_seconds",
            "Reconcile steps by the action planned, from claim to the last write.",
            &["action"],
            CALL_BUCKETS,
        );
        let provider_duration = histogram_vec(
            &r,
            "provisioner_provider_request_duration_seconds",
            "Provider API requests by account, call and result, including waits for the rate budget.",
            &["account", "call", "result"],
            CALL_BUCKETS,
        );
        let time_to_converge = histogram_vec(
            &r,
            "provisioner_time_to_converge_seconds",
            "From billing's change (desired_changed_at) to the server being what billing asked, by the action that got it there; for create, payment to running.",
            &["action"],
            CONVERGE_BUCKETS,
        );
        let instances = IntGaugeVec::new(
            Opts::new(
                "provisioner_instances",
                "Instances in the store by observed status (failed and lost included).",
            ),
            &["observed_status"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        register(&r, Box::new(instances.clone()));
        let orphan_servers = IntGaugeVec::new(
            Opts::new(
                "provisioner_orphan_servers",
                "Servers with our mark and no live instance, per account, at its last resync.",
            ),
            &["account"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        register(&r, Box::new(orphan_servers.clone()));
        let build = IntGaugeVec::new(
            Opts::new("provisioner_build_info", "The running build; always 1."),
            &["version"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        register(&r, Box::new(build));
        let catalog_reloads = IntCounter::new(
            "provisioner_catalog_reloads_total",
            "Catalog reloads that published a new catalog.",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        register(&r, Box::new(catalog_reloads.clone()));
        let catalog_reload_failures = IntCounter::new(
            "provisioner_catalog_reload_failures_total",
            "Catalog reloads that failed; the last good catalog kept serving.",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        register(&r, Box::new(catalog_reload_failures.clone()));
        let claim_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "provisioner_claim_duration_seconds",
                "Claims of a batch of due instances: the queue's own latency.",
            )
            .buckets(CALL_BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        register(&r, Box::new(claim_duration.clone()));
        let lease_renewal_failures = IntCounter::new(
            "provisioner_lease_renewal_failures_total",
            "Renewals of the leases of running steps that failed; leases not renewed run out.",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        register(&r, Box::new(lease_renewal_failures.clone()));
        #[cfg(target_os = "linux")]
        register(
            &r,
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        );
        Metrics {
            reconciles,
            provider_calls,
            rate_limit_waits,
            drift,
            webhook_attempts,
            emails,
            step_duration,
            provider_duration,
            time_to_converge,
            instances,
            orphan_servers,
            due_instances: gauge(
                &r,
                "provisioner_queue_depth",
                "Instances due now: the work queue's depth.",
            ),
            leased_instances: gauge(
                &r,
                "provisioner_leased_instances",
                "Instances held by a worker.",
            ),
            in_flight: gauge(
                &r,
                "provisioner_steps_in_flight",
                "Reconcile steps running in this daemon.",
            ),
            catalog_reload_failures,
            lease_renewal_failures,
            claim_duration,
            catalog_reloads,
            catalog_valid: gauge(
                &r,
                "provisioner_catalog_valid",
                "1 when the catalog files on disk are the catalog being served.",
            ),
            registry: r,
        }
    }
}

impl Metrics {
    /// Counts a reconcile step ending in `outcome`.
    pub fn reconcile(&self, outcome: &str) {
        self.reconciles.with_label_values(&[outcome]).inc();
    }

    /// Times a reconcile step whose planned action was `action`.
    pub fn step(&self, action: &str, seconds: f64) {
        self.step_duration
            .with_label_values(&[action])
            .observe(seconds);
    }

    /// Counts a provider call.
    pub fn provider_call(&self, account: &str, call: &str, result: &str) {
        self.provider_calls
            .with_label_values(&[account, call, result])
            .inc();
    }

    /// Times a provider request (waits for the rate budget included).
    pub fn provider_request(&self, account: &str, call: &str, result: &str, seconds: f64) {
        self.provider_duration
            .with_label_values(&[account, call, result])
            .observe(seconds);
    }

    /// Records how long an instance took from billing's change to converged, by `action`.
    pub fn converged(&self, action: &str, seconds: f64) {
        self.time_to_converge
            .with_label_values(&[action])
            .observe(seconds.max(0.0));
    }

    /// Counts a call that waited for the rate budget.
    pub fn rate_limit_wait(&self, account: &str) {
        self.rate_limit_waits.with_label_values(&[account]).inc();
    }

    /// Counts drift of `kind` found by a resync.
    pub fn drift(&self, kind: &str) {
        self.drift.with_label_values(&[kind]).inc();
    }

    /// Counts a webhook attempt of `endpoint` and what followed it.
    pub fn webhook_attempt(&self, endpoint: &str, result: &str) {
        self.webhook_attempts
            .with_label_values(&[endpoint, result])
            .inc();
    }

    /// Counts an admin e-mail of `notifier`.
    pub fn email(&self, notifier: &str, result: &str) {
        self.emails.with_label_values(&[notifier, result]).inc();
    }

    /// Sets the instances by observed status; statuses not listed are 0. Every series is
    /// overwritten in place (a scrape never sees the gauge empty halfway through), and one
    /// no longer counted is removed.
    pub fn set_instances(&self, counts: &[(String, i64)]) {
        let mut all: BTreeMap<&str, i64> = crate::store::ObservedStatus::ALL
            .iter()
            .map(|s| (s.as_str(), 0))
            .collect();
        for (status, n) in counts {
            *all.entry(status.as_str()).or_default() += n;
        }
        for (status, n) in &all {
            self.instances.with_label_values(&[*status]).set(*n);
        }
        drop_series_except(&self.instances, |status| all.contains_key(status));
    }

    /// Sets the orphans found at an account's resync.
    pub fn set_orphans(&self, account: &str, n: i64) {
        self.orphan_servers.with_label_values(&[account]).set(n);
    }

    /// Drops the orphan counts of accounts no longer in the catalog, so a removed account
    /// does not alert on its last count forever.
    pub fn keep_orphans_of<'a>(&self, accounts: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::BTreeSet<&str> = accounts.into_iter().collect();
        drop_series_except(&self.orphan_servers, |account| keep.contains(account));
    }

    /// Orphan servers over every account, at their last resyncs.
    pub fn orphans(&self) -> i64 {
        self.sum_where("provisioner_orphan_servers", |_| true) as i64
    }

    /// Sets the failed reloads to `n` (the watcher's count); it only grows.
    pub fn set_reload_failures(&self, n: u64) {
        let now = self.catalog_reload_failures.get();
        if n > now {
            self.catalog_reload_failures.inc_by(n - now);
        }
    }

    /// The sum of series of `name` whose labels pass `keep` (for tests, the demo and the
    /// console).
    fn sum_where(&self, name: &str, keep: impl Fn(&BTreeMap<&str, &str>) -> bool) -> f64 {
        let mut sum = 0.0;
        for family in self.registry.gather() {
            if family.name() != name {
                continue;
            }
            for m in family.get_metric() {
                let labels: BTreeMap<&str, &str> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if keep(&labels) {
                    sum += match family.get_field_type() {
                        prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                        _ => m.get_gauge().get_value(),
                    };
                }
            }
        }
        sum
    }

    /// The value of a labelled counter, its labels written as in the exposition
    /// (`account="a",call="create"`, in any order).
    pub fn counter(&self, name: &str, labels: &str) -> u64 {
        let wanted: BTreeMap<String, String> = labels
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            })
            .collect();
        self.sum_where(name, |got| {
            got.len() == wanted.len()
                && wanted
                    .iter()
                    .all(|(k, v)| got.get(k.as_str()) == Some(&v.as_str()))
        }) as u64
    }

    /// The sum of a labelled counter over all its labels.
    pub fn total(&self, name: &str) -> u64 {
        self.sum_where(name, |_| true) as u64
    }

    /// Provider calls of `account` that succeeded, and that failed (any error class).
    pub fn account_calls(&self, account: &str) -> (u64, u64) {
        let of = |ok: bool| {
            self.sum_where("provisioner_provider_calls_total", |l| {
                l.get("account") == Some(&account) && (l.get("result") == Some(&"ok")) == ok
            }) as u64
        };
        (of(true), of(false))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot render the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Removes the series of a one-label gauge whose label `keep` rejects.
fn drop_series_except(gauge: &IntGaugeVec, keep: impl Fn(&str) -> bool) {
    let gone: Vec<String> = gauge
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .filter_map(|m| m.get_label().first().map(|l| l.value().to_owned()))
        .filter(|label| !keep(label))
        .collect();
    for label in gone {
        // Already removed only if another update raced this one; nothing to undo.
        let _ = gauge.remove_label_values(&[&label]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.reconcile("converged");
        m.reconcile("converged");
        m.provider_call("sim-eu", "create", "ok");
        m.provider_call("sim-eu", "create", "transient");
        m.due_instances.set(3);
        m.set_instances(&[("active".into(), 5), ("failed".into(), 1)]);
        m.set_orphans("sim-eu", 2);
        m.converged("create", 42.0);
        let text = m.render();
        assert!(text.contains("provisioner_reconciles_total{outcome=\"converged\"} 2"));
        assert!(text.contains(
            "provisioner_provider_calls_total{account=\"sim-eu\",call=\"create\",result=\"ok\"} 1"
        ));
        assert!(text.contains("# TYPE provisioner_queue_depth gauge\nprovisioner_queue_depth 3"));
        assert!(text.contains("provisioner_instances{observed_status=\"failed\"} 1"));
        assert!(text.contains("provisioner_instances{observed_status=\"lost\"} 0"));
        m.set_instances(&[("active".into(), 4), ("retired".into(), 7)]);
        let text = m.render();
        assert!(text.contains("provisioner_instances{observed_status=\"failed\"} 0"));
        assert!(text.contains("provisioner_instances{observed_status=\"retired\"} 7"));
        m.set_instances(&[("active".into(), 5), ("failed".into(), 1)]);
        let text = m.render();
        assert!(
            !text.contains("retired"),
            "a status no longer counted is dropped"
        );
        assert!(text.contains("provisioner_orphan_servers{account=\"sim-eu\"} 2"));
        assert!(text.contains(&format!(
            "provisioner_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains(
            "provisioner_time_to_converge_seconds_bucket{action=\"create\",le=\"60\"} 1"
        ));
        assert_eq!(
            m.counter("provisioner_reconciles_total", "outcome=\"converged\""),
            2
        );
        assert_eq!(m.account_calls("sim-eu"), (1, 1));
        assert_eq!(m.orphans(), 2);
        m.set_orphans("hz-old", 3);
        m.keep_orphans_of(["sim-eu"]);
        assert_eq!(m.orphans(), 2, "the removed account's count is dropped");
        assert!(m
            .render()
            .contains("provisioner_orphan_servers{account=\"sim-eu\"} 2"));
        m.reconcile("waiting");
        assert_eq!(m.total("provisioner_reconciles_total"), 3);
        m.set_reload_failures(2);
        m.set_reload_failures(1);
        assert_eq!(m.catalog_reload_failures.get(), 2);
    }

    #[test]
    fn the_example_alerts_name_only_metrics_that_exist() {
        let m = Metrics::default();
        m.reconcile("converged");
        m.provider_call("a", "create", "ok");
        m.provider_request("a", "create", "ok", 0.1);
        m.step("create", 0.1);
        m.converged("create", 1.0);
        m.rate_limit_wait("a");
        m.webhook_attempt("e", "delivered");
        m.email("n", "sent");
        m.drift("gone");
        m.set_orphans("a", 0);
        m.set_instances(&[]);
        let exposed: std::collections::BTreeSet<String> = m
            .render()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_owned())
            .collect();
        let rules: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../deploy/prometheus/alerts.yml")).unwrap();
        let mut checked = 0;
        for group in rules["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                let expr = rule["expr"].as_str().unwrap();
                assert!(rule["alert"].as_str().is_some_and(|a| !a.is_empty()));
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("provisioner_") {
                        assert!(exposed.contains(word), "{word} in {expr:?} is not exposed");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 8, "{checked}");
    }
}
