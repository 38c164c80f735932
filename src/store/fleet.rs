//! What the ops console's overview reads: the fleet by status, the last provider error of
//! each account, and how webhook deliveries fare. Read-only.

use chrono::{DateTime, Utc};

use super::engine::Arg;
use super::{QueueStats, Result, SqlStore};

/// The last error the reconciler recorded on an instance of an account.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountError {
    /// The account.
    pub account: String,
    /// The error.
    pub error: String,
    /// The instance it was recorded on.
    pub instance_id: i64,
    /// When.
    pub at: DateTime<Utc>,
}

/// How webhook deliveries fare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryHealth {
    /// Pending deliveries that failed at least once (being retried).
    pub retrying: i64,
    /// Deliveries given up.
    pub failed: i64,
    /// Endpoints disabled (a `410 Gone`).
    pub disabled_endpoints: i64,
}

/// The fleet by status and the work queue's size, counted in one pass over the instances.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FleetStats {
    /// Instances by observed status, most first.
    pub by_status: Vec<(String, i64)>,
    /// The work queue.
    pub queue: QueueStats,
}

impl SqlStore {
    /// [`FleetStats`], in one scan of the instances (at 1,000,000 instances a scan is ~0.3 s
    /// of a database core).
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn fleet_stats(&self) -> Result<FleetStats> {
        let mut tx = self.pool().read().await?;
        let rows = tx
            .rows(
                "SELECT observed_status, COUNT(*) AS n,
                        CAST(SUM(CASE WHEN next_check_at <= {now} THEN 1 ELSE 0 END) AS BIGINT) AS due,
                        CAST(SUM(CASE WHEN lease_owner IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT) AS leased
                   FROM instances GROUP BY observed_status",
                vec![],
            )
            .await?;
        let mut stats = FleetStats::default();
        for r in &rows {
            let n = r.int("n")?;
            stats.by_status.push((r.text("observed_status")?, n));
            stats.queue.total += n;
            stats.queue.due += r.int("due")?;
            stats.queue.leased += r.int("leased")?;
        }
        stats
            .by_status
            .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(stats)
    }

    /// The most recent error recorded on an instance of each account.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn last_errors_by_account(&self) -> Result<Vec<AccountError>> {
        let mut tx = self.pool().read().await?;
        let rows = tx
            .rows(
                "SELECT id, provider_account, last_error, updated_at FROM instances
                  WHERE last_error IS NOT NULL AND provider_account IS NOT NULL
                  ORDER BY updated_at DESC LIMIT $1",
                vec![Arg::Int(500)],
            )
            .await?;
        let mut out: Vec<AccountError> = Vec::new();
        for r in &rows {
            let account = r.text("provider_account")?;
            if out.iter().any(|e| e.account == account) {
                continue;
            }
            out.push(AccountError {
                account,
                error: r.text("last_error")?,
                instance_id: r.int("id")?,
                at: r.ts("updated_at")?,
            });
        }
        Ok(out)
    }

    /// How webhook deliveries fare now.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn delivery_health(&self) -> Result<DeliveryHealth> {
        let mut tx = self.pool().read().await?;
        let row = tx
            .row(
                "SELECT
                   (SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending' AND attempts > 0) AS retrying,
                   (SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'failed') AS failed,
                   (SELECT COUNT(*) FROM event_consumers WHERE disabled_at IS NOT NULL) AS disabled",
                vec![],
            )
            .await?;
        Ok(match row {
            Some(r) => DeliveryHealth {
                retrying: r.int("retrying")?,
                failed: r.int("failed")?,
                disabled_endpoints: r.int("disabled")?,
            },
            None => DeliveryHealth::default(),
        })
    }
}
