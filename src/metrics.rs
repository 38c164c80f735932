//! The daemon's figures, rendered in Prometheus' text format on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters and gauges of one daemon. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    labelled: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// Instances due now (refreshed periodically).
    pub due_instances: AtomicI64,
    /// Instances leased by some worker (refreshed periodically).
    pub leased_instances: AtomicI64,
    /// All instances (refreshed periodically).
    pub total_instances: AtomicI64,
    /// Steps running in this daemon now.
    pub in_flight: AtomicI64,
    /// Catalog reloads that failed (the last good catalog kept serving).
    pub catalog_reload_failures: AtomicU64,
    /// Successful catalog reloads.
    pub catalog_reloads: AtomicU64,
    /// Whether the files on disk are the catalog being served (1) or not (0).
    pub catalog_valid: AtomicI64,
    /// Servers carrying our label that belong to no live instance, at the last resync.
    pub orphans: AtomicI64,
}

const HELP: &[(&str, &str, &str)] = &[
    (
        "provisioner_reconciles_total",
        "counter",
        "Reconcile steps by outcome.",
    ),
    (
        "provisioner_provider_calls_total",
        "counter",
        "Provider API calls by account, call and result.",
    ),
    (
        "provisioner_rate_limit_waits_total",
        "counter",
        "Provider calls that waited for the account's rate budget.",
    ),
    (
        "provisioner_drift_total",
        "counter",
        "Drift found by resyncs, by kind.",
    ),
    (
        "provisioner_webhook_attempts_total",
        "counter",
        "Webhook delivery attempts by endpoint and what followed (delivered, retry, failed, disabled).",
    ),
    (
        "provisioner_emails_total",
        "counter",
        "Admin e-mails by notifier and result (sent, failed).",
    ),
];

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn add(&self, name: &'static str, labels: String) {
        let mut m = self
            .labelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry((name, labels)).or_default() += 1;
    }

    /// Counts a reconcile step ending in `outcome`.
    pub fn reconcile(&self, outcome: &str) {
        self.add(
            "provisioner_reconciles_total",
            format!("outcome=\"{}\"", escape(outcome)),
        );
    }

    /// Counts a provider call.
    pub fn provider_call(&self, account: &str, call: &str, result: &str) {
        self.add(
            "provisioner_provider_calls_total",
            format!(
                "account=\"{}\",call=\"{}\",result=\"{}\"",
                escape(account),
                escape(call),
                escape(result)
            ),
        );
    }

    /// Counts a call that waited for the rate budget.
    pub fn rate_limit_wait(&self, account: &str) {
        self.add(
            "provisioner_rate_limit_waits_total",
            format!("account=\"{}\"", escape(account)),
        );
    }

    /// Counts drift of `kind` found by a resync.
    pub fn drift(&self, kind: &str) {
        self.add(
            "provisioner_drift_total",
            format!("kind=\"{}\"", escape(kind)),
        );
    }

    /// Counts a webhook attempt of `endpoint` and what followed it.
    pub fn webhook_attempt(&self, endpoint: &str, result: &str) {
        self.add(
            "provisioner_webhook_attempts_total",
            format!(
                "endpoint=\"{}\",result=\"{}\"",
                escape(endpoint),
                escape(result)
            ),
        );
    }

    /// Counts an admin e-mail of `notifier`.
    pub fn email(&self, notifier: &str, result: &str) {
        self.add(
            "provisioner_emails_total",
            format!(
                "notifier=\"{}\",result=\"{}\"",
                escape(notifier),
                escape(result)
            ),
        );
    }

    /// The value of a labelled counter (for tests and the demo's summary).
    pub fn counter(&self, name: &str, labels: &str) -> u64 {
        let m = self
            .labelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.iter()
            .filter(|((n, l), _)| *n == name && l == labels)
            .map(|(_, v)| *v)
            .sum()
    }

    /// Provider calls of `account` that succeeded, and that failed (any error class).
    pub fn account_calls(&self, account: &str) -> (u64, u64) {
        let prefix = format!("account=\"{}\",", escape(account));
        let m = self
            .labelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ok = 0;
        let mut failed = 0;
        for ((name, labels), v) in m.iter() {
            if *name == "provisioner_provider_calls_total" && labels.starts_with(&prefix) {
                if labels.ends_with(",result=\"ok\"") {
                    ok += v;
                } else {
                    failed += v;
                }
            }
        }
        (ok, failed)
    }

    /// The sum of a labelled counter over all its labels.
    pub fn total(&self, name: &str) -> u64 {
        let m = self
            .labelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, v)| *v)
            .sum()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = self
            .labelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, labels), v) in m.iter() {
                if n == name {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
        drop(m);
        let gauges: [(&str, &str, &str, i64); 7] = [
            (
                "provisioner_queue_depth",
                "gauge",
                "Instances due now: the work queue's depth.",
                self.due_instances.load(Ordering::Relaxed),
            ),
            (
                "provisioner_leased_instances",
                "gauge",
                "Instances held by a worker.",
                self.leased_instances.load(Ordering::Relaxed),
            ),
            (
                "provisioner_instances",
                "gauge",
                "All instances in the store.",
                self.total_instances.load(Ordering::Relaxed),
            ),
            (
                "provisioner_steps_in_flight",
                "gauge",
                "Reconcile steps running in this daemon.",
                self.in_flight.load(Ordering::Relaxed),
            ),
            (
                "provisioner_catalog_valid",
                "gauge",
                "1 when the catalog files on disk are the catalog being served.",
                self.catalog_valid.load(Ordering::Relaxed),
            ),
            (
                "provisioner_orphan_servers",
                "gauge",
                "Servers with our label and no live instance, at the last resync.",
                self.orphans.load(Ordering::Relaxed),
            ),
            (
                "provisioner_catalog_reloads_total",
                "counter",
                "Catalog reloads that published a new catalog.",
                i64::try_from(self.catalog_reloads.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let failures = self.catalog_reload_failures.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP provisioner_catalog_reload_failures_total Catalog reloads that failed; the last good catalog kept serving.\n# TYPE provisioner_catalog_reload_failures_total counter\nprovisioner_catalog_reload_failures_total {failures}"
        );
        out
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
        m.due_instances.store(3, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("provisioner_reconciles_total{outcome=\"converged\"} 2"));
        assert!(text.contains(
            "provisioner_provider_calls_total{account=\"sim-eu\",call=\"create\",result=\"ok\"} 1"
        ));
        assert!(text.contains("# TYPE provisioner_queue_depth gauge\nprovisioner_queue_depth 3"));
        assert_eq!(
            m.counter("provisioner_reconciles_total", "outcome=\"converged\""),
            2
        );
        m.reconcile("waiting");
        assert_eq!(m.total("provisioner_reconciles_total"), 3);
    }
}
