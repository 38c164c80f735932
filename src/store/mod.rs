//! The store: instances, their transition log, product revisions and manual tasks, on SQLite
//! (embedded default) or PostgreSQL (production, several daemons).
//!
//! The billing system writes the contract columns of `instances` directly; the database itself
//! enforces the contract (triggers in `migrations/<engine>/`). Everything else goes through the
//! [`Store`] trait: domain verbs, each one transaction, every reconciler write fenced by the
//! writer's [`Lease`].
//!
//! - [`engine`]: connections, migrations and each engine's SQL dialect;
//! - [`model`]: the rows and the vocabulary of their text columns;
//! - [`SqlStore`]: the verbs, written once over both engines.

mod attach;
mod combine;
pub(crate) mod connect;
pub(crate) mod engine;
pub mod events;
pub mod fleet;
pub mod idempotency;
pub mod lease;
mod lifecycle;
pub mod model;
pub mod pool;
pub mod sim;
mod tokens;

use std::future::Future;

use serde_json::Value;

pub use attach::{adoptable, Attached, Holdings};
pub use connect::ConnectOptions;
pub use engine::{redact_url, Engine};
pub use model::*;
pub use tokens::{ApiToken, Scope};

use crate::catalog::revision::normalized;
use crate::catalog::Catalog;
use crate::secrets::Sealed;
use engine::{Arg, Pool, Row, Tx};

/// The default database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://provisioner.db";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported engine.
    #[error("{0}")]
    Url(String),
    /// The database cannot be reached or opened (the URL is shown without its password).
    #[error("cannot open database {url}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The database does not exist (and may not be created here), or cannot be created.
    #[error("{0}")]
    NoDatabase(String),
    /// Migrations could not be applied.
    #[error("{0}")]
    Migration(String),
    /// The database's schema is not the one this binary works with.
    #[error("{0}")]
    Schema(String),
    /// No such instance.
    #[error("instance {0} does not exist")]
    InstanceNotFound(i64),
    /// No such task.
    #[error("task {0} does not exist")]
    TaskNotFound(i64),
    /// The task is already done or cancelled.
    #[error("task {id} is {state}, not open")]
    TaskNotOpen {
        /// The task.
        id: i64,
        /// Its state.
        state: TaskState,
    },
    /// Another worker claimed the instance since this lease was granted; nothing was written.
    #[error("lease on instance {instance_id} lost (epoch {epoch} is stale): another worker holds it; nothing was written")]
    LeaseLost {
        /// The instance.
        instance_id: i64,
        /// The stale epoch.
        epoch: i64,
    },
    /// A write queued for the writer was dropped before it committed (shutdown).
    #[error("the write of instance {0} was abandoned before it committed; nothing was written")]
    Abandoned(i64),
    /// The database refused the change: a constraint or trigger of the billing contract.
    #[error("the database refused the change: {0}")]
    Rejected(String),
    /// A stored value does not decode (a bug or manual tampering).
    #[error("stored data is not what provisioner wrote: {0}")]
    Corrupt(String),
    /// Any other database failure.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// Whether retrying later may succeed (connection trouble, lock timeouts).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                ) || e
                    .as_database_error()
                    .is_some_and(|d| d.message().contains("database is locked"))
            }
            StoreError::Connect { .. } => true,
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let Some(db) = e.as_database_error() {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: class 23 (integrity) and P0001 (RAISE). SQLite: the CONSTRAINT
            // family (19, extended codes ending in it), which includes RAISE(ABORT) in triggers.
            let rejected = code.starts_with("23")
                || code == "P0001"
                || code.parse::<i64>().is_ok_and(|c| c & 0xff == 19);
            if rejected {
                return StoreError::Rejected(db.message().to_owned());
            }
        }
        StoreError::Database(e)
    }
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The domain verbs of the store. Each is one transaction.
pub trait Store: Send + Sync {
    /// Which engine this store runs on.
    fn engine(&self) -> Engine;

    /// Inserts an order through the billing columns, as billing would.
    fn create_instance(&self, new: &NewInstance) -> impl Future<Output = Result<Instance>> + Send;

    /// Reads one instance.
    fn instance(&self, id: i64) -> impl Future<Output = Result<Option<Instance>>> + Send;

    /// Lists instances by id.
    fn list_instances(
        &self,
        filter: &InstanceFilter,
    ) -> impl Future<Output = Result<Vec<Instance>>> + Send;

    /// Sets `desired_status` and `suspend_reason` through the billing columns.
    fn set_desired(
        &self,
        id: i64,
        status: DesiredStatus,
        reason: Option<&str>,
    ) -> impl Future<Output = Result<Instance>> + Send;

    /// Asks for one more reboot (`reboot_requested + 1`).
    fn request_reboot(&self, id: i64) -> impl Future<Output = Result<Instance>> + Send;

    /// The transition log of an instance, oldest first.
    fn history(&self, id: i64) -> impl Future<Output = Result<Vec<Transition>>> + Send;

    /// Claims up to `limit` due instances for `owner` for `lease_seconds`, each with a new
    /// fencing epoch. Instances leased by someone else are skipped until their lease expires.
    fn claim_due(
        &self,
        owner: &str,
        limit: u32,
        lease_seconds: f64,
    ) -> impl Future<Output = Result<Vec<Claim>>> + Send;

    /// Applies a patch of reconciler-owned columns and appends its transition, in one
    /// transaction, if and only if `lease` is still current.
    fn record(
        &self,
        lease: &Lease,
        patch: &ObservedPatch,
        transition: Option<&NewTransition>,
    ) -> impl Future<Output = Result<Instance>> + Send;

    /// Records the intent to create a server, if the product's `stock` (when given) has room:
    /// the stock check and the write are one atomic step, so concurrent workers never oversell.
    /// Returns `None`, writing nothing, when the product is sold out.
    fn begin_create(
        &self,
        lease: &Lease,
        stock: Option<u32>,
        patch: &ObservedPatch,
        transition: &NewTransition,
    ) -> impl Future<Output = Result<Option<Instance>>> + Send;

    /// Records drift found by a resync on an instance nobody holds: applies `patch` and appends
    /// the transition only if the instance is not leased and still has `expected` as observed
    /// status. Returns whether it applied.
    fn record_drift(
        &self,
        id: i64,
        expected: ObservedStatus,
        patch: &ObservedPatch,
        transition: &NewTransition,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Makes every instance waiting in `pending` with a reason (out of stock, unknown product)
    /// due now, after a catalog change. Returns how many.
    fn wake_waiting(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Takes a `failed` instance up again (a person's decision): it is re-observed at the
    /// provider and reconciled from what is found. Recorded as a manual transition by `by`
    /// (the admin's name).
    fn retry(&self, id: i64, by: &str) -> impl Future<Output = Result<Instance>> + Send;

    /// Gives the instance back, to be looked at again as `next` says.
    fn release(&self, lease: &Lease, next: NextCheck) -> impl Future<Output = Result<()>> + Send;

    /// Records every product revision of `catalog` not stored yet; returns how many were new.
    fn sync_revisions(&self, catalog: &Catalog) -> impl Future<Output = Result<usize>> + Send;

    /// A stored product revision.
    fn product_revision(
        &self,
        product_id: &str,
        revision: &str,
    ) -> impl Future<Output = Result<Option<StoredRevision>>> + Send;

    /// Live (not terminated) instances of a product, by pinned revision (`None`: not pinned yet).
    fn pinned_revisions(
        &self,
        product_id: &str,
    ) -> impl Future<Output = Result<Vec<(Option<String>, i64)>>> + Send;

    /// Opens a task for the instance (fenced by `lease`), or returns the open one of that kind.
    fn open_task(
        &self,
        lease: &Lease,
        kind: TaskKind,
        details: &Value,
    ) -> impl Future<Output = Result<Task>> + Send;

    /// Lists tasks, oldest first.
    fn tasks(&self, filter: &TaskFilter) -> impl Future<Output = Result<Vec<Task>>> + Send;

    /// Reads one task.
    fn task(&self, id: i64) -> impl Future<Output = Result<Option<Task>>> + Send;

    /// Marks an open task done with what the admin recorded, and makes its instance due now.
    fn complete_task(
        &self,
        id: i64,
        completion: &TaskCompletion,
    ) -> impl Future<Output = Result<Task>> + Send;

    /// Cancels an open task (fenced by `lease` of its instance).
    fn cancel_task(&self, lease: &Lease, id: i64) -> impl Future<Output = Result<Task>> + Send;

    /// Counts due, leased and all instances.
    fn queue_stats(&self) -> impl Future<Output = Result<QueueStats>> + Send;
}

/// The store on either engine.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: Pool,
    queues: std::sync::Arc<combine::Queues>,
}

impl SqlStore {
    /// Sets aside a claimed row that does not decode: `failed` with the decode error as its
    /// reason, due never, lease given back, the failure in its history. Nothing more happens
    /// to it until a person repairs the row and retries it.
    async fn quarantine(&self, row: &Row, e: &StoreError) -> Result<()> {
        let Ok(id) = row.int("id") else {
            return Err(StoreError::Corrupt(format!(
                "a claimed row has no readable id: {e}"
            )));
        };
        let reason = format!(
            "instance {id} cannot be read: {e}; repair the row, then `provisioner instances retry {id}`"
        );
        tracing::error!(instance = id, error = %e, "quarantined a row that does not decode");
        let mut tx = self.pool.write().await?;
        let from = row
            .parse::<ObservedStatus>("observed_status")
            .unwrap_or(ObservedStatus::Failed);
        let updated = tx
            .execute(
                "UPDATE instances
                    SET observed_status = CASE WHEN observed_status = 'terminated'
                                               THEN observed_status ELSE 'failed' END,
                        status_reason = $2, last_error = $2,
                        next_check_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
                        updated_at = {now}
                  WHERE id = $1",
                vec![Arg::Int(id), reason.as_str().into()],
            )
            .await?;
        if updated == 1 && from != ObservedStatus::Terminated {
            let mut t = NewTransition::new(Action::Fail, Cause::Poll, Outcome::Failed);
            t.error = Some(reason);
            insert_transition(
                &mut tx,
                id,
                from,
                ObservedStatus::Failed,
                &t,
                None,
                "quarantine",
            )
            .await?;
        }
        tx.commit().await
    }

    /// Opens the database at `url` (creating a SQLite file if needed) and applies migrations.
    ///
    /// # Errors
    /// [`StoreError`] when the URL is unsupported, the database unreachable or a migration
    /// fails.
    pub async fn open(url: &str, options: &ConnectOptions) -> Result<SqlStore> {
        let store = SqlStore::connect(url, options).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens a database that exists and is migrated to this binary's schema, changing nothing:
    /// for commands that read or change instances, so that a mistyped path or an old schema is
    /// an error instead of a new, empty database.
    ///
    /// # Errors
    /// [`StoreError::NoDatabase`] when the SQLite file does not exist, [`StoreError::Schema`]
    /// when the schema is missing, behind or ahead, as [`SqlStore::open`] otherwise.
    pub async fn open_existing(url: &str, options: &ConnectOptions) -> Result<SqlStore> {
        let options = ConnectOptions {
            create: false,
            ..options.clone()
        };
        let store = SqlStore::connect(url, &options).await?;
        if let Err(e) = store.pool.check_schema(url).await {
            store.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// The ids of the keys that sealed the secrets this database holds (none on a new
    /// database), so that a missing key is noticed before a new one would replace it.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn sealed_key_ids(&self) -> Result<Vec<String>> {
        if self.pool.applied_migrations().await?.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.read().await?;
        let rows = tx
            .rows(
                "SELECT credentials_key_id AS k FROM instances WHERE credentials_key_id IS NOT NULL
                 UNION
                 SELECT secret_key_id AS k FROM manual_tasks WHERE secret_key_id IS NOT NULL
                 ORDER BY k",
                vec![],
            )
            .await?;
        rows.iter().map(|r| r.text("k")).collect()
    }

    /// How many instances match `filter` (its `limit` ignored).
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn count_instances(&self, filter: &InstanceFilter) -> Result<i64> {
        let (conditions, args) = filter_sql(filter);
        let mut sql = String::from("SELECT count(*) AS n FROM instances");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        let mut tx = self.pool.read().await?;
        match tx.row(&sql, args).await? {
            Some(r) => r.int("n"),
            None => Ok(0),
        }
    }

    /// Opens the database without migrating.
    ///
    /// # Errors
    /// As [`SqlStore::open`].
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<SqlStore> {
        Ok(SqlStore {
            pool: Pool::connect(url, options).await?,
            queues: std::sync::Arc::default(),
        })
    }

    /// Applies pending migrations; returns the versions applied.
    ///
    /// # Errors
    /// [`StoreError::Migration`] when one fails or the database is newer than this binary.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        self.pool.migrate().await
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The underlying SQLite pool, if on SQLite (for tests and benchmarks that write raw SQL as
    /// billing does).
    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match &self.pool {
            Pool::Sqlite(p, _) => Some(p),
            Pool::Postgres(_) => None,
        }
    }

    /// The underlying PostgreSQL pool, if on PostgreSQL.
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.pool {
            Pool::Postgres(p) => Some(p),
            Pool::Sqlite(..) => None,
        }
    }

    /// The database's clock: the one clock every stored time is written with.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub async fn now(&self) -> Result<chrono::DateTime<chrono::Utc>> {
        let mut tx = self.pool.read().await?;
        tx.row("SELECT {now} AS now", vec![])
            .await?
            .ok_or_else(|| StoreError::Corrupt("SELECT now returned no row".into()))?
            .ts("now")
    }

    /// Calls `wake` whenever billing changes an instance (PostgreSQL's `NOTIFY
    /// provisioner_instances`), until the connection is lost. On SQLite, which has no
    /// notifications, it never returns: the work loop polls.
    ///
    /// # Errors
    /// When the listening connection cannot be made or is lost.
    pub async fn listen_for_changes(&self, wake: &tokio::sync::Notify) -> Result<()> {
        let Pool::Postgres(pool) = &self.pool else {
            return std::future::pending().await;
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen("provisioner_instances").await?;
        loop {
            listener.recv().await?;
            wake.notify_one();
        }
    }
}

fn sealed(row: &Row, text: &str, key: &str) -> Result<Option<Sealed>> {
    Ok(match (row.opt_text(text)?, row.opt_text(key)?) {
        (Some(ciphertext), Some(key_id)) => Some(Sealed { key_id, ciphertext }),
        _ => None,
    })
}

fn instance_from(r: &Row) -> Result<Instance> {
    Ok(Instance {
        id: r.int("id")?,
        customer_id: r.text("customer_id")?,
        order_id: r.opt_text("order_id")?,
        billing_ref: r.opt_text("billing_ref")?,
        product_id: r.text("product_id")?,
        location: r.opt_text("location")?,
        os_image: r.opt_text("os_image")?,
        hostname: r.opt_text("hostname")?,
        ssh_keys: r.opt_text("ssh_keys")?,
        desired_status: r.parse("desired_status")?,
        suspend_reason: r.opt_text("suspend_reason")?,
        reboot_requested: r.int("reboot_requested")?,
        desired_generation: r.int("desired_generation")?,
        desired_changed_at: r.ts("desired_changed_at")?,
        observed_generation: r.int("observed_generation")?,
        observed_status: r.parse("observed_status")?,
        status_reason: r.opt_text("status_reason")?,
        provider_account: r.opt_text("provider_account")?,
        provider_server_id: r.opt_text("provider_server_id")?,
        ipv4: r.opt_text("ipv4")?,
        ipv6: r.opt_text("ipv6")?,
        product_revision: r.opt_text("product_revision")?,
        reboot_handled: r.int("reboot_handled")?,
        credentials: sealed(r, "credentials_sealed", "credentials_key_id")?,
        last_error: r.opt_text("last_error")?,
        attempts: r.int("attempts")?,
        pending: match r.opt_text("pending_action")? {
            None => None,
            Some(_) => Some(Pending {
                action: r.parse("pending_action")?,
                action_id: r.opt_text("pending_action_id")?,
                hard: r.int("pending_hard")? != 0,
            }),
        },
        pending_since: r.opt_ts("pending_since")?,
        next_check_at: r.opt_ts("next_check_at")?,
        lease_owner: r.opt_text("lease_owner")?,
        lease_expires_at: r.opt_ts("lease_expires_at")?,
        lease_epoch: r.int("lease_epoch")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
        holds: kinds(r.opt_text("holds")?),
        holds_seen: kinds(r.opt_text("holds_seen")?),
        reinstall_requested: r.int("reinstall_requested")?,
        reinstall_handled: r.int("reinstall_handled")?,
        applied_product_id: r.opt_text("applied_product_id")?,
        observe_only: r.int("observe_only")? != 0,
        claim_pending: r.int("claim_pending")? != 0,
    })
}

/// Hold kinds as the database mirrors them: sorted, comma-separated, NULL for none.
fn kinds(list: Option<String>) -> Vec<String> {
    list.map(|l| {
        l.split(',')
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

fn transition_from(r: &Row) -> Result<Transition> {
    Ok(Transition {
        id: r.int("id")?,
        instance_id: r.int("instance_id")?,
        at: r.ts("at")?,
        from_status: r.opt_text("from_status")?,
        to_status: r.opt_text("to_status")?,
        action: r.text("action")?,
        cause: r.text("cause")?,
        outcome: r.text("outcome")?,
        error: r.opt_text("error")?,
        details: r.json("details")?,
        product_revision: r.opt_text("product_revision")?,
    })
}

fn task_from(r: &Row) -> Result<Task> {
    Ok(Task {
        id: r.int("id")?,
        instance_id: r.int("instance_id")?,
        kind: r.parse("kind")?,
        state: r.parse("state")?,
        created_at: r.ts("created_at")?,
        completed_at: r.opt_ts("completed_at")?,
        completed_by: r.opt_text("completed_by")?,
        details: r.json("details")?,
        secret: sealed(r, "secret_sealed", "secret_key_id")?,
    })
}

fn claim_from(r: &Row, owner: &str) -> Result<Claim> {
    let instance = instance_from(r)?;
    let lease = Lease {
        instance_id: instance.id,
        owner: owner.to_owned(),
        epoch: instance.lease_epoch,
        desired_generation: instance.desired_generation,
    };
    Ok(Claim {
        instance,
        lease,
        now: r.ts("claimed_at")?,
    })
}

/// Reads an updated instance again inside the transaction: SQLite's `RETURNING` shows the row
/// before its AFTER triggers ran (the desired generation bump), PostgreSQL's after them.
async fn reread(tx: &mut Tx, updated: &Row) -> Result<Instance> {
    instance_in(tx, updated.int("id")?).await
}

/// The servers of product `$1` that count against its stock, instance `$2` left out: every
/// instance that has or is getting a server.
const STOCK_USED: &str = "SELECT COUNT(*) AS n FROM instances
                            WHERE product_id = $1 AND id <> $2
                              AND observed_status NOT IN ('pending', 'terminated', 'lost', 'failed')";

impl SqlStore {
    /// How many servers of `product_id` count against its stock now.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn stock_used(&self, product_id: &str) -> Result<i64> {
        let mut tx = self.pool.read().await?;
        tx.row(STOCK_USED, vec![product_id.into(), Arg::Int(0)])
            .await?
            .map_or(Ok(0), |r| r.int("n"))
    }
}

/// `WHERE` clause fencing a write by its lease: `$1` id, `$2` owner, `$3` epoch.
const FENCE: &str = "id = $1 AND lease_owner = $2 AND lease_epoch = $3";

fn fence_args(lease: &Lease) -> Vec<Arg> {
    vec![
        Arg::Int(lease.instance_id),
        lease.owner.as_str().into(),
        Arg::Int(lease.epoch),
    ]
}

/// Reports a fenced write that matched nothing: the instance is gone or the lease is stale.
async fn fence_failure(tx: &mut Tx, lease: &Lease) -> StoreError {
    match tx
        .row(
            "SELECT id FROM instances WHERE id = $1",
            vec![Arg::Int(lease.instance_id)],
        )
        .await
    {
        Ok(None) => StoreError::InstanceNotFound(lease.instance_id),
        Ok(Some(_)) => StoreError::LeaseLost {
            instance_id: lease.instance_id,
            epoch: lease.epoch,
        },
        Err(e) => e,
    }
}

/// The `next_check_at` expression for `next`, overridden to "now" when billing changed the
/// instance since the lease was granted.
fn next_check_sql(next: NextCheck, lease: &Lease, args: &mut Vec<Arg>) -> String {
    let expr = match next {
        NextCheck::Now => return "{now}".to_owned(),
        NextCheck::Never => "NULL".to_owned(),
        NextCheck::After(d) => {
            args.push(Arg::Float(d.as_secs_f64()));
            format!("{{later:${}}}", args.len())
        }
    };
    args.push(Arg::Int(lease.desired_generation));
    format!(
        "CASE WHEN desired_generation <> ${} THEN {{now}} ELSE {expr} END",
        args.len()
    )
}

/// Builds the `SET` list of a patch; parameters continue after the fence's three.
fn patch_sql(patch: &ObservedPatch, lease: &Lease, args: &mut Vec<Arg>) -> Vec<String> {
    let mut sets = Vec::new();
    let mut set = |column: &str, value: Arg, args: &mut Vec<Arg>| {
        args.push(value);
        sets.push(format!("{column} = ${}", args.len()));
    };
    if let Some(s) = patch.observed_status {
        set("observed_status", s.as_str().into(), args);
    }
    if let Some(v) = &patch.status_reason {
        set("status_reason", v.clone().into(), args);
    }
    if let Some(v) = &patch.provider_account {
        set("provider_account", v.clone().into(), args);
    }
    if let Some(v) = &patch.provider_server_id {
        set("provider_server_id", v.clone().into(), args);
    }
    if let Some(v) = &patch.ipv4 {
        set("ipv4", v.clone().into(), args);
    }
    if let Some(v) = &patch.ipv6 {
        set("ipv6", v.clone().into(), args);
    }
    if let Some(v) = &patch.product_revision {
        set("product_revision", v.clone().into(), args);
    }
    if let Some(v) = patch.reboot_handled {
        set("reboot_handled", Arg::Int(v), args);
    }
    if let Some(v) = patch.observed_generation {
        set("observed_generation", Arg::Int(v), args);
    }
    if let Some(c) = &patch.credentials {
        set(
            "credentials_sealed",
            c.as_ref().map(|s| s.ciphertext.clone()).into(),
            args,
        );
        set(
            "credentials_key_id",
            c.as_ref().map(|s| s.key_id.clone()).into(),
            args,
        );
    }
    if let Some(v) = &patch.last_error {
        set("last_error", v.clone().into(), args);
    }
    if let Some(v) = patch.attempts {
        set("attempts", Arg::Int(v), args);
    }
    if let Some(v) = patch.reinstall_handled {
        set("reinstall_handled", Arg::Int(v), args);
    }
    if let Some(v) = &patch.applied_product_id {
        set("applied_product_id", v.as_str().into(), args);
    }
    if let Some(v) = patch.observe_only {
        set("observe_only", Arg::Bool(v), args);
    }
    if let Some(v) = patch.claim_pending {
        set("claim_pending", Arg::Bool(v), args);
    }
    if let Some(p) = &patch.pending {
        let started = p.is_some();
        set(
            "pending_action",
            p.as_ref().map(|p| p.action.as_str().to_owned()).into(),
            args,
        );
        set(
            "pending_action_id",
            p.as_ref().and_then(|p| p.action_id.clone()).into(),
            args,
        );
        set(
            "pending_hard",
            Arg::Bool(p.as_ref().is_some_and(|p| p.hard)),
            args,
        );
        sets.push(format!(
            "pending_since = {}",
            if started { "{now}" } else { "NULL" }
        ));
    }
    if let Some(next) = patch.next_check {
        let expr = next_check_sql(next, lease, args);
        sets.push(format!("next_check_at = {expr}"));
    }
    if patch.release_lease {
        sets.push("lease_owner = NULL".to_owned());
        sets.push("lease_expires_at = NULL".to_owned());
    }
    sets.push("updated_at = {now}".to_owned());
    sets
}

/// The WHERE conditions (joined by AND, empty for none) and arguments of a listing.
fn filter_sql(filter: &InstanceFilter) -> (Vec<String>, Vec<Arg>) {
    let mut args = Vec::new();
    let mut conditions = Vec::new();
    let mut condition = |sql: &str, value: Arg, args: &mut Vec<Arg>| {
        args.push(value);
        conditions.push(format!("{sql} ${}", args.len()));
    };
    if let Some(s) = filter.observed_status {
        condition("observed_status =", s.as_str().into(), &mut args);
    }
    if let Some(s) = filter.desired_status {
        condition("desired_status =", s.as_str().into(), &mut args);
    }
    if let Some(c) = &filter.customer_id {
        condition("customer_id =", c.as_str().into(), &mut args);
    }
    if let Some(p) = &filter.product_id {
        condition("product_id =", p.as_str().into(), &mut args);
    }
    if let Some(a) = &filter.provider_account {
        condition("provider_account =", a.as_str().into(), &mut args);
    }
    if let Some(after) = filter.after_id {
        condition("id >", Arg::Int(after), &mut args);
    }
    if let Some(q) = filter
        .search
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
    {
        args.push(q.into());
        let n = args.len();
        let by_id = match q.parse::<i64>() {
            Ok(id) => {
                args.push(Arg::Int(id));
                format!(" OR id = ${}", args.len())
            }
            Err(_) => String::new(),
        };
        conditions.push(format!(
            "(billing_ref = ${n} OR hostname = ${n} OR ipv4 = ${n} OR ipv6 = ${n}{by_id})"
        ));
    }
    (conditions, args)
}

impl SqlStore {
    /// A step's fenced write in a transaction of its own.
    async fn record_alone(
        &self,
        lease: &Lease,
        patch: &ObservedPatch,
        transition: Option<&NewTransition>,
    ) -> Result<Instance> {
        let mut tx = self.pool.write().await?;
        let after = fenced_write(&mut tx, lease, patch, transition).await?;
        tx.commit().await?;
        Ok(after)
    }
}

/// The write of a step under `lease`: the transition (if any), from the status the row has
/// now, then the patch, then the event the change of status causes. The transition's
/// `INSERT … SELECT` reads the status it starts from and checks the fence in one statement,
/// so a step's write is two statements on SQLite, one on PostgreSQL (a data-modifying `WITH`),
/// and one without a transition, besides its event.
async fn fenced_write(
    tx: &mut Tx,
    lease: &Lease,
    patch: &ObservedPatch,
    transition: Option<&NewTransition>,
) -> Result<Instance> {
    let mut args = fence_args(lease);
    let insert = transition.map(|t| transition_sql(t, patch, lease, &mut args));
    let (after, from) = match (insert, tx.dialect().engine) {
        // PostgreSQL: one statement; both parts see the row as it was before.
        (Some(insert), Engine::Postgres) => {
            let sets = patch_sql(patch, lease, &mut args);
            let sql = format!(
                "WITH t AS ({insert} RETURNING from_status)
                 UPDATE instances SET {} WHERE {FENCE} AND EXISTS (SELECT 1 FROM t)
                 RETURNING *, (SELECT from_status FROM t) AS transition_from",
                sets.join(", ")
            );
            let Some(row) = tx.row(&sql, args).await? else {
                return Err(fence_failure(tx, lease).await);
            };
            let from = row.parse::<ObservedStatus>("transition_from")?;
            (instance_from(&row)?, Some(from))
        }
        (Some(insert), Engine::Sqlite) => {
            let sql = format!("{insert} RETURNING from_status");
            let Some(row) = tx.row(&sql, args).await? else {
                return Err(fence_failure(tx, lease).await);
            };
            let from = row.parse::<ObservedStatus>("from_status")?;
            let mut args = fence_args(lease);
            let update = fenced_update(patch, lease, &mut args);
            let row = tx
                .row(&update, args)
                .await?
                .ok_or_else(|| StoreError::Corrupt("fenced UPDATE lost its row".into()))?;
            (instance_from(&row)?, Some(from))
        }
        (None, _) => {
            let update = fenced_update(patch, lease, &mut args);
            let Some(row) = tx.row(&update, args).await? else {
                return Err(fence_failure(tx, lease).await);
            };
            (instance_from(&row)?, None)
        }
    };
    // The row as updated: no AFTER trigger changes a reconciler write, on either engine.
    if let Some(from) = from {
        events::on_transition_of(tx, &after, from).await?;
    }
    Ok(after)
}

/// The `UPDATE … RETURNING *` writing `patch` to the row `lease` fences; its parameters
/// continue after the fence's three in `args`.
fn fenced_update(patch: &ObservedPatch, lease: &Lease, args: &mut Vec<Arg>) -> String {
    let sets = patch_sql(patch, lease, args);
    format!(
        "UPDATE instances SET {} WHERE {FENCE} RETURNING *",
        sets.join(", ")
    )
}

/// The `INSERT … SELECT` of transition `t` of the row `lease` fences, from the status the row
/// has to the one `patch` gives it; its parameters continue after the fence's three.
fn transition_sql(
    t: &NewTransition,
    patch: &ObservedPatch,
    lease: &Lease,
    args: &mut Vec<Arg>,
) -> String {
    format!(
        "{} FROM instances WHERE {FENCE}",
        transition_select(t, patch, lease, args)
    )
}

/// [`transition_sql`] up to its `FROM`: the `INSERT … SELECT` list over a row of `instances`.
fn transition_select(
    t: &NewTransition,
    patch: &ObservedPatch,
    lease: &Lease,
    args: &mut Vec<Arg>,
) -> String {
    let param = |value: Arg, args: &mut Vec<Arg>| {
        args.push(value);
        format!("${}", args.len())
    };
    let to = match patch.observed_status {
        Some(s) => param(s.as_str().into(), args),
        None => "observed_status".to_owned(),
    };
    let revision = match &patch.product_revision {
        Some(r) => param(r.as_str().into(), args),
        None => "product_revision".to_owned(),
    };
    let action = param(t.action.as_str().into(), args);
    let cause = param(t.cause.as_str().into(), args);
    let outcome = param(t.outcome.as_str().into(), args);
    let error = param(t.error.clone().into(), args);
    let details = param(Arg::Json(with_actor(&t.details, &lease.owner)), args);
    format!(
        "INSERT INTO instance_transitions
             (instance_id, at, from_status, to_status, action, cause, outcome, error, details,
              product_revision)
         SELECT id, {{now}}, observed_status, {to}, {action}, {cause}, {outcome}, {error},
                {details}, {revision}"
    )
}

/// `details` with `by` (the worker holding the lease, `resync`, `manual`) added, so the log
/// shows who did what.
fn with_actor(details: &Value, by: &str) -> Value {
    let mut details = details.clone();
    if let Value::Object(map) = &mut details {
        map.entry("by")
            .or_insert_with(|| Value::String(by.to_owned()));
    }
    details
}

/// Appends a transition; `by` (the worker holding the lease, `resync`, `manual`) is added to
/// its details, so the log shows who did what.
async fn insert_transition(
    tx: &mut Tx,
    instance_id: i64,
    from: ObservedStatus,
    to: ObservedStatus,
    t: &NewTransition,
    revision: Option<String>,
    by: &str,
) -> Result<()> {
    let details = with_actor(&t.details, by);
    tx.execute(
        "INSERT INTO instance_transitions
             (instance_id, at, from_status, to_status, action, cause, outcome, error, details,
              product_revision)
         VALUES ($1, {now}, $2, $3, $4, $5, $6, $7, $8, $9)",
        vec![
            Arg::Int(instance_id),
            from.as_str().into(),
            to.as_str().into(),
            t.action.as_str().into(),
            t.cause.as_str().into(),
            t.outcome.as_str().into(),
            t.error.clone().into(),
            Arg::Json(details),
            revision.into(),
        ],
    )
    .await?;
    events::on_transition(tx, instance_id, from, to).await
}

/// Instance `id`, read in `tx`.
async fn instance_in(tx: &mut Tx, id: i64) -> Result<Instance> {
    let row = tx
        .row("SELECT * FROM instances WHERE id = $1", vec![Arg::Int(id)])
        .await?
        .ok_or(StoreError::InstanceNotFound(id))?;
    instance_from(&row)
}

/// The last writes of an admin's verb: the transition `t` from `from` to `after` by `by`, then
/// the commit.
async fn commit_with(
    mut tx: Tx,
    from: ObservedStatus,
    after: Instance,
    t: &NewTransition,
    revision: Option<String>,
    by: &str,
) -> Result<Instance> {
    insert_transition(
        &mut tx,
        after.id,
        from,
        after.observed_status,
        t,
        revision,
        by,
    )
    .await?;
    tx.commit().await?;
    Ok(after)
}

/// Inserts an order's billing columns, as billing does.
async fn insert_instance(tx: &mut Tx, new: &NewInstance) -> Result<Instance> {
    let row = tx
        .row(
            "INSERT INTO instances (customer_id, order_id, product_id, location, os_image,
                                    hostname, ssh_keys, desired_status, suspend_reason,
                                    billing_ref)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             RETURNING *",
            vec![
                new.customer_id.as_str().into(),
                new.order_id.clone().into(),
                new.product_id.as_str().into(),
                new.location.clone().into(),
                new.os_image.clone().into(),
                new.hostname.clone().into(),
                new.ssh_keys.clone().into(),
                new.desired_status
                    .unwrap_or(DesiredStatus::Active)
                    .as_str()
                    .into(),
                new.suspend_reason.clone().into(),
                new.billing_ref.clone().into(),
            ],
        )
        .await?
        .ok_or_else(|| StoreError::Corrupt("INSERT … RETURNING returned no row".into()))?;
    instance_from(&row)
}

impl Store for SqlStore {
    fn engine(&self) -> Engine {
        self.pool.engine()
    }

    async fn create_instance(&self, new: &NewInstance) -> Result<Instance> {
        let mut tx = self.pool.write().await?;
        let instance = insert_instance(&mut tx, new).await?;
        tx.commit().await?;
        Ok(instance)
    }

    async fn instance(&self, id: i64) -> Result<Option<Instance>> {
        let mut tx = self.pool.read().await?;
        let row = tx
            .row("SELECT * FROM instances WHERE id = $1", vec![Arg::Int(id)])
            .await?;
        row.as_ref().map(instance_from).transpose()
    }

    async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>> {
        let (conditions, mut args) = filter_sql(filter);
        let mut sql = String::from("SELECT * FROM instances");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY id");
        if let Some(limit) = filter.limit {
            args.push(Arg::Int(i64::from(limit)));
            sql.push_str(&format!(" LIMIT ${}", args.len()));
        }
        let mut tx = self.pool.read().await?;
        // A row that does not decode is skipped, said in the log, rather than failing the
        // listing of every other instance (a resync, `instances list`).
        Ok(tx
            .rows(&sql, args)
            .await?
            .iter()
            .filter_map(|r| match instance_from(r) {
                Ok(i) => Some(i),
                Err(e) => {
                    tracing::warn!(instance = ?r.int("id").ok(), error = %e, "skipped an instance that cannot be read");
                    None
                }
            })
            .collect())
    }

    async fn set_desired(
        &self,
        id: i64,
        status: DesiredStatus,
        reason: Option<&str>,
    ) -> Result<Instance> {
        let mut tx = self.pool.write().await?;
        let row = tx
            .row(
                "UPDATE instances SET desired_status = $2, suspend_reason = $3
                  WHERE id = $1 RETURNING *",
                vec![Arg::Int(id), status.as_str().into(), reason.into()],
            )
            .await?
            .ok_or(StoreError::InstanceNotFound(id))?;
        let instance = reread(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(instance)
    }

    async fn request_reboot(&self, id: i64) -> Result<Instance> {
        let mut tx = self.pool.write().await?;
        let row = tx
            .row(
                "UPDATE instances SET reboot_requested = reboot_requested + 1
                  WHERE id = $1 RETURNING *",
                vec![Arg::Int(id)],
            )
            .await?
            .ok_or(StoreError::InstanceNotFound(id))?;
        let instance = reread(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(instance)
    }

    async fn history(&self, id: i64) -> Result<Vec<Transition>> {
        let mut tx = self.pool.read().await?;
        if tx
            .row("SELECT id FROM instances WHERE id = $1", vec![Arg::Int(id)])
            .await?
            .is_none()
        {
            return Err(StoreError::InstanceNotFound(id));
        }
        tx.rows(
            "SELECT * FROM instance_transitions WHERE instance_id = $1 ORDER BY id",
            vec![Arg::Int(id)],
        )
        .await?
        .iter()
        .map(transition_from)
        .collect()
    }

    async fn claim_due(&self, owner: &str, limit: u32, lease_seconds: f64) -> Result<Vec<Claim>> {
        let mut tx = self.pool.single().await?;
        let claim = tx.dialect().claim;
        let rows = tx
            .rows(
                claim,
                vec![
                    owner.into(),
                    Arg::Float(lease_seconds),
                    Arg::Int(i64::from(limit)),
                ],
            )
            .await?;
        tx.commit().await?;
        let mut claims = Vec::with_capacity(rows.len());
        for r in &rows {
            match claim_from(r, owner) {
                Ok(c) => claims.push(c),
                // One row that does not decode never blocks the others: it is set aside for
                // a person, with the reason, and the batch goes on.
                Err(e) => self.quarantine(r, &e).await?,
            }
        }
        claims.sort_by_key(|c| (c.instance.next_check_at, c.instance.id));
        Ok(claims)
    }

    async fn record(
        &self,
        lease: &Lease,
        patch: &ObservedPatch,
        transition: Option<&NewTransition>,
    ) -> Result<Instance> {
        self.combined(combine::StepWrite {
            lease: lease.clone(),
            patch: patch.clone(),
            transition: transition.cloned(),
        })
        .await
    }

    async fn begin_create(
        &self,
        lease: &Lease,
        stock: Option<u32>,
        patch: &ObservedPatch,
        transition: &NewTransition,
    ) -> Result<Option<Instance>> {
        let Some(stock) = stock else {
            return self.record(lease, patch, Some(transition)).await.map(Some);
        };
        let mut tx = self.pool.write().await?;
        let select = format!(
            "SELECT product_id FROM instances WHERE {FENCE}{}",
            tx.dialect().for_update
        );
        let Some(before) = tx.row(&select, fence_args(lease)).await? else {
            return Err(fence_failure(&mut tx, lease).await);
        };
        let product_id = before.text("product_id")?;
        if let Tx::Postgres(t) = &mut tx {
            // Serialises creates of one product across daemons for the count below.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(&product_id)
                .execute(t.conn())
                .await?;
        }
        let used = tx
            .row(
                STOCK_USED,
                vec![product_id.as_str().into(), Arg::Int(lease.instance_id)],
            )
            .await?
            .map_or(Ok(0), |r| r.int("n"))?;
        if used >= i64::from(stock) {
            tx.commit().await?;
            return Ok(None);
        }
        let after = fenced_write(&mut tx, lease, patch, Some(transition)).await?;
        tx.commit().await?;
        Ok(Some(after))
    }

    async fn record_drift(
        &self,
        id: i64,
        expected: ObservedStatus,
        patch: &ObservedPatch,
        transition: &NewTransition,
    ) -> Result<bool> {
        let mut tx = self.pool.write().await?;
        // A lease that cannot match anything: the patch builder's generation guard needs one.
        let nobody = Lease {
            instance_id: id,
            owner: String::new(),
            epoch: -1,
            desired_generation: -1,
        };
        let mut args = vec![Arg::Int(id), expected.as_str().into()];
        let sets = patch_sql(patch, &nobody, &mut args);
        let update = format!(
            "UPDATE instances SET {} WHERE id = $1 AND observed_status = $2
                AND (lease_owner IS NULL OR lease_expires_at <= {{now}}) RETURNING *",
            sets.join(", ")
        );
        let Some(row) = tx.row(&update, args).await? else {
            return Ok(false);
        };
        let after = instance_from(&row)?;
        insert_transition(
            &mut tx,
            id,
            expected,
            after.observed_status,
            transition,
            after.product_revision.clone(),
            "resync",
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn wake_waiting(&self) -> Result<u64> {
        let mut tx = self.pool.write().await?;
        let n = tx
            .execute(
                "UPDATE instances SET next_check_at = {now}
                  WHERE observed_status = 'pending' AND status_reason IS NOT NULL
                    AND lease_owner IS NULL",
                vec![],
            )
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn retry(&self, id: i64, by: &str) -> Result<Instance> {
        self.recover(id, by, Action::Retry).await
    }

    async fn release(&self, lease: &Lease, next: NextCheck) -> Result<()> {
        let mut tx = self.pool.single().await?;
        let mut args = fence_args(lease);
        let expr = next_check_sql(next, lease, &mut args);
        let sql = format!(
            "UPDATE instances SET lease_owner = NULL, lease_expires_at = NULL,
                                  next_check_at = {expr}, updated_at = {{now}}
              WHERE {FENCE}"
        );
        if tx.execute(&sql, args).await? == 0 {
            return Err(fence_failure(&mut tx, lease).await);
        }
        tx.commit().await
    }

    async fn sync_revisions(&self, catalog: &Catalog) -> Result<usize> {
        let commit = catalog.source.git.as_ref().map(|g| g.commit.clone());
        let mut tx = self.pool.write().await?;
        let mut inserted = 0;
        for p in catalog.products.values() {
            inserted += tx
                .execute(
                    "INSERT INTO product_revisions (product_id, revision, definition, loaded_at,
                                                    git_commit)
                     VALUES ($1, $2, $3, {now}, $4)
                     ON CONFLICT (product_id, revision) DO NOTHING",
                    vec![
                        p.id.as_str().into(),
                        p.revision.0.as_str().into(),
                        Arg::Json(normalized(p)),
                        commit.clone().into(),
                    ],
                )
                .await?;
        }
        tx.commit().await?;
        Ok(usize::try_from(inserted).unwrap_or(usize::MAX))
    }

    async fn product_revision(
        &self,
        product_id: &str,
        revision: &str,
    ) -> Result<Option<StoredRevision>> {
        let mut tx = self.pool.read().await?;
        let row = tx
            .row(
                "SELECT * FROM product_revisions WHERE product_id = $1 AND revision = $2",
                vec![product_id.into(), revision.into()],
            )
            .await?;
        row.map(|r| {
            Ok(StoredRevision {
                product_id: r.text("product_id")?,
                revision: r.text("revision")?,
                definition: r.json("definition")?,
                loaded_at: r.ts("loaded_at")?,
                git_commit: r.opt_text("git_commit")?,
            })
        })
        .transpose()
    }

    async fn pinned_revisions(&self, product_id: &str) -> Result<Vec<(Option<String>, i64)>> {
        let mut tx = self.pool.read().await?;
        tx.rows(
            "SELECT product_revision, COUNT(*) AS n FROM instances
              WHERE product_id = $1 AND observed_status <> 'terminated'
              GROUP BY product_revision ORDER BY product_revision NULLS FIRST",
            vec![product_id.into()],
        )
        .await?
        .iter()
        .map(|r| Ok((r.opt_text("product_revision")?, r.int("n")?)))
        .collect()
    }

    async fn open_task(&self, lease: &Lease, kind: TaskKind, details: &Value) -> Result<Task> {
        let mut tx = self.pool.write().await?;
        let fenced = format!("SELECT id FROM instances WHERE {FENCE}");
        if tx.row(&fenced, fence_args(lease)).await?.is_none() {
            return Err(fence_failure(&mut tx, lease).await);
        }
        let opened = tx
            .execute(
                "INSERT INTO manual_tasks (instance_id, kind, state, created_at, details)
                 VALUES ($1, $2, 'open', {now}, $3)
                 ON CONFLICT (instance_id, kind) WHERE state = 'open' DO NOTHING",
                vec![
                    Arg::Int(lease.instance_id),
                    kind.as_str().into(),
                    Arg::Json(details.clone()),
                ],
            )
            .await?
            == 1;
        let row = tx
            .row(
                "SELECT * FROM manual_tasks WHERE instance_id = $1 AND kind = $2 AND state = 'open'",
                vec![Arg::Int(lease.instance_id), kind.as_str().into()],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt("the open task vanished".into()))?;
        let task = task_from(&row)?;
        if opened {
            events::on_task(&mut tx, crate::events::EventType::TaskOpened, &task).await?;
        }
        tx.commit().await?;
        Ok(task)
    }

    async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let mut sql = String::from("SELECT * FROM manual_tasks WHERE 1 = 1");
        let mut args = Vec::new();
        if filter.open_only {
            sql.push_str(" AND state = 'open'");
        }
        if let Some(id) = filter.instance_id {
            args.push(Arg::Int(id));
            sql.push_str(" AND instance_id = $1");
        }
        sql.push_str(" ORDER BY id");
        let mut tx = self.pool.read().await?;
        tx.rows(&sql, args).await?.iter().map(task_from).collect()
    }

    async fn task(&self, id: i64) -> Result<Option<Task>> {
        let mut tx = self.pool.read().await?;
        let row = tx
            .row(
                "SELECT * FROM manual_tasks WHERE id = $1",
                vec![Arg::Int(id)],
            )
            .await?;
        row.as_ref().map(task_from).transpose()
    }

    async fn complete_task(&self, id: i64, completion: &TaskCompletion) -> Result<Task> {
        let mut tx = self.pool.write().await?;
        let current = tx
            .row(
                "SELECT * FROM manual_tasks WHERE id = $1",
                vec![Arg::Int(id)],
            )
            .await?
            .ok_or(StoreError::TaskNotFound(id))?;
        let current = task_from(&current)?;
        if current.state != TaskState::Open {
            return Err(StoreError::TaskNotOpen {
                id,
                state: current.state,
            });
        }
        let mut details = current.details.clone();
        if let (Value::Object(into), Value::Object(from)) = (&mut details, &completion.details) {
            for (k, v) in from {
                into.insert(k.clone(), v.clone());
            }
        }
        let row = tx
            .row(
                "UPDATE manual_tasks
                    SET state = 'done', completed_at = {now}, completed_by = $2, details = $3,
                        secret_sealed = $4, secret_key_id = $5
                  WHERE id = $1 AND state = 'open' RETURNING *",
                vec![
                    Arg::Int(id),
                    completion.by.as_str().into(),
                    Arg::Json(details),
                    completion
                        .secret
                        .as_ref()
                        .map(|s| s.ciphertext.clone())
                        .into(),
                    completion.secret.as_ref().map(|s| s.key_id.clone()).into(),
                ],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt("the open task vanished".into()))?;
        let task = task_from(&row)?;
        events::on_task(&mut tx, crate::events::EventType::TaskCompleted, &task).await?;
        // The reconciler observes manual work through the task: look at the instance now.
        tx.execute(
            "UPDATE instances SET next_check_at = {now}
              WHERE id = $1 AND next_check_at IS NOT NULL",
            vec![Arg::Int(task.instance_id)],
        )
        .await?;
        tx.commit().await?;
        Ok(task)
    }

    async fn cancel_task(&self, lease: &Lease, id: i64) -> Result<Task> {
        let mut tx = self.pool.write().await?;
        let fenced = format!("SELECT id FROM instances WHERE {FENCE}");
        if tx.row(&fenced, fence_args(lease)).await?.is_none() {
            return Err(fence_failure(&mut tx, lease).await);
        }
        let row = tx
            .row(
                "UPDATE manual_tasks SET state = 'cancelled', completed_at = {now},
                                         completed_by = 'provisioner'
                  WHERE id = $1 AND instance_id = $2 AND state = 'open' RETURNING *",
                vec![Arg::Int(id), Arg::Int(lease.instance_id)],
            )
            .await?;
        let Some(row) = row else {
            return match tx
                .row(
                    "SELECT * FROM manual_tasks WHERE id = $1",
                    vec![Arg::Int(id)],
                )
                .await?
            {
                None => Err(StoreError::TaskNotFound(id)),
                Some(r) => Err(StoreError::TaskNotOpen {
                    id,
                    state: r.parse("state")?,
                }),
            };
        };
        let task = task_from(&row)?;
        tx.commit().await?;
        Ok(task)
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        let mut tx = self.pool.read().await?;
        let row = tx
            .row(
                "SELECT CAST(COALESCE(SUM(CASE WHEN next_check_at <= {now} THEN 1 ELSE 0 END), 0) AS BIGINT) AS due,
                        CAST(COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS leased,
                        COUNT(*) AS total
                   FROM instances",
                vec![],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt("an aggregate returned no row".into()))?;
        Ok(QueueStats {
            due: row.int("due")?,
            leased: row.int("leased")?,
            total: row.int("total")?,
        })
    }
}
