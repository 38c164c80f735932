//! The simulated cloud behind `sim` accounts.
//!
//! Servers live in the `sim_servers` table of the same database, so the cloud survives daemon
//! restarts and several daemons share it. Time-driven states (creating → running after
//! `boot_seconds`, stopping → off after `action_seconds`, …) are resolved by the database clock
//! when read, so every daemon sees the same cloud. Rows are never deleted: the table is the
//! ledger of every server the sim ever created, by instance label, from which duplicates and
//! orphans are counted.
//!
//! Like a real API it adds latency, enforces the account's rate limit (429-style
//! [`ErrorClass::Throttled`] answers), rejects a second server with the same name, runs out of
//! capacity, and fails a share of calls (`fault_rate`) — half of them *after* applying the
//! change, the ambiguous outcome the executor must survive without duplicating a server.

use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::limit::RateLimiter;
use super::{
    Accepted, Call, CreateRequest, Created, ErrorClass, PowerState, Provider, ProviderError,
    Result, Server,
};
use crate::catalog::{Module, ProductConfig, RateLimit, SimSettings};
use crate::store::engine::{Arg, Row};
use crate::store::{SqlStore, StoreError};

/// One simulated account.
pub struct SimCloud {
    account: String,
    settings: SimSettings,
    store: SqlStore,
    server_side_limit: Option<RateLimiter>,
    rng: Mutex<u64>,
}

impl std::fmt::Debug for SimCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCloud")
            .field("account", &self.account)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

const SELECT: &str = "SELECT id, instance_id, name, ipv4, ipv6,
        CASE WHEN state IN ('creating', 'starting', 'rebooting') AND ready_at <= {now} THEN 'running'
             WHEN state = 'stopping' AND ready_at <= {now} THEN 'off'
             ELSE state END AS state
   FROM sim_servers";

fn store_error(e: StoreError) -> ProviderError {
    ProviderError::new(
        ErrorClass::Transient,
        format!("simulated cloud storage: {e}"),
    )
}

fn server_from(row: &Row) -> std::result::Result<Server, StoreError> {
    let state = match row.text("state")?.as_str() {
        "creating" => PowerState::Creating,
        "running" => PowerState::Running,
        "stopping" => PowerState::Stopping,
        "off" => PowerState::Off,
        "starting" => PowerState::Starting,
        "rebooting" => PowerState::Rebooting,
        other => {
            return Err(StoreError::Corrupt(format!("sim server state `{other}`")));
        }
    };
    Ok(Server {
        id: row.int("id")?.to_string(),
        instance_id: row.opt_text("instance_id")?.and_then(|s| s.parse().ok()),
        name: row.text("name")?,
        state,
        ipv4: row.opt_text("ipv4")?,
        ipv6: row.opt_text("ipv6")?,
        root_password: None,
    })
}

fn parse_id(server_id: &str) -> Result<i64> {
    server_id
        .parse()
        .map_err(|_| ProviderError::new(ErrorClass::NotFound, format!("no server `{server_id}`")))
}

impl SimCloud {
    /// The simulated cloud of `account`, stored in `store`'s database.
    pub fn new(
        account: &str,
        settings: SimSettings,
        rate_limit: &RateLimit,
        store: SqlStore,
    ) -> SimCloud {
        let limited =
            rate_limit.requests_per_hour.is_some() || rate_limit.requests_per_minute.is_some();
        let seed = account.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) ^ u64::from(std::process::id());
        SimCloud {
            account: account.to_owned(),
            settings,
            store,
            server_side_limit: limited.then(|| RateLimiter::new(rate_limit)),
            rng: Mutex::new(seed | 1),
        }
    }

    fn roll(&self) -> f64 {
        let mut s = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Latency, the rate limit, and the faults that strike before a request is applied.
    async fn enter(&self) -> Result<()> {
        if self.settings.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.settings.latency_ms)).await;
        }
        if let Some(limit) = &self.server_side_limit {
            if !limit.try_acquire() {
                let mut e = ProviderError::new(
                    ErrorClass::Throttled,
                    "rate limit exceeded (simulated 429)",
                );
                e.retry_after = Some(limit.next_slot().max(Duration::from_millis(100)));
                return Err(e);
            }
        }
        if self.roll() < self.settings.fault_rate / 2.0 {
            return Err(ProviderError::new(
                ErrorClass::Transient,
                "service unavailable (simulated 503)",
            ));
        }
        Ok(())
    }

    /// The faults that strike after a change was applied: the caller cannot know it happened.
    fn leave<T>(&self, value: T) -> Result<T> {
        if self.roll() < self.settings.fault_rate / 2.0 {
            return Err(ProviderError::new(
                ErrorClass::Transient,
                "timeout waiting for the response (simulated; the request was applied)",
            ));
        }
        Ok(value)
    }

    async fn servers(&self, condition: &str, mut args: Vec<Arg>) -> Result<Vec<Server>> {
        let sql = format!(
            "{SELECT} WHERE account = ${} AND deleted_at IS NULL{condition} ORDER BY id",
            args.len() + 1
        );
        args.push(self.account.as_str().into());
        let mut tx = self.store.pool().read().await.map_err(store_error)?;
        tx.rows(&sql, args)
            .await
            .map_err(store_error)?
            .iter()
            .map(server_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(store_error)
    }

    async fn transition(&self, server_id: &str, state: &str, skip_if: &str) -> Result<Accepted> {
        self.enter().await?;
        let id = parse_id(server_id)?;
        let current = self.servers(" AND id = $1", vec![Arg::Int(id)]).await?;
        let Some(server) = current.first() else {
            return Err(ProviderError::new(
                ErrorClass::NotFound,
                format!("no server {server_id}"),
            ));
        };
        let effective = format!("{:?}", server.state).to_lowercase();
        if effective != skip_if {
            let mut tx = self.store.pool().write().await.map_err(store_error)?;
            tx.execute(
                "UPDATE sim_servers SET state = $2, ready_at = {later:$3} WHERE id = $1 AND deleted_at IS NULL",
                vec![Arg::Int(id), state.into(), Arg::Float(self.settings.action_seconds)],
            )
            .await
            .map_err(store_error)?;
            tx.commit().await.map_err(store_error)?;
        }
        self.leave(Accepted::default())
    }

    async fn do_create(&self, request: &CreateRequest) -> Result<Created> {
        self.enter().await?;
        let mut tx = self.store.pool().write().await.map_err(store_error)?;
        let taken = tx
            .row(
                "SELECT id FROM sim_servers WHERE account = $1 AND name = $2 AND deleted_at IS NULL",
                vec![self.account.as_str().into(), request.name.as_str().into()],
            )
            .await
            .map_err(store_error)?;
        if taken.is_some() {
            return Err(ProviderError::new(
                ErrorClass::AlreadyExists,
                format!(
                    "server name `{}` is already used (uniqueness_error)",
                    request.name
                ),
            ));
        }
        if let Some(capacity) = self.settings.capacity {
            let used = tx
                .row(
                    "SELECT COUNT(*) AS n FROM sim_servers WHERE account = $1 AND deleted_at IS NULL",
                    vec![self.account.as_str().into()],
                )
                .await
                .map_err(store_error)?
                .map_or(Ok(0), |r| r.int("n"))
                .map_err(store_error)?;
            if used >= i64::try_from(capacity).unwrap_or(i64::MAX) {
                return Err(ProviderError::new(
                    ErrorClass::Capacity,
                    "no capacity left in the simulated cloud",
                ));
            }
        }
        let size = match &request.config {
            ProductConfig::Sim { size } => size.clone(),
            _ => None,
        };
        let row = tx
            .row(
                "INSERT INTO sim_servers (account, instance_id, name, size, image, location, state, ready_at)
                 VALUES ($1, $2, $3, $4, $5, $6, 'creating', {later:$7})
                 RETURNING id",
                vec![
                    self.account.as_str().into(),
                    Arg::Int(request.instance_id),
                    request.name.as_str().into(),
                    size.into(),
                    request.os_image.as_str().into(),
                    request.location.as_str().into(),
                    Arg::Float(self.settings.boot_seconds),
                ],
            )
            .await
            .map_err(store_error)?
            .ok_or_else(|| ProviderError::new(ErrorClass::Transient, "simulated insert returned nothing"))?;
        let id = row.int("id").map_err(store_error)?;
        // Documentation-only address ranges (RFC 5737 / RFC 3849): the sim reaches nothing.
        let ipv4 = format!("198.51.{}.{}", (id >> 8) & 0xff, id & 0xff);
        let ipv6 = format!("2001:db8:{:x}::/64", id & 0xffff);
        tx.execute(
            "UPDATE sim_servers SET ipv4 = $2, ipv6 = $3 WHERE id = $1",
            vec![Arg::Int(id), ipv4.as_str().into(), ipv6.as_str().into()],
        )
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        let created = Created {
            server: Server {
                id: id.to_string(),
                instance_id: Some(request.instance_id),
                name: request.name.clone(),
                state: PowerState::Creating,
                ipv4: Some(ipv4),
                ipv6: Some(ipv6),
                root_password: None,
            },
            action_id: Some(format!("sim-create-{id}")),
            root_password: Some(crate::secrets::SecretString::new(format!(
                "sim-{:016x}",
                (self.roll() * 1e18) as u64
            ))),
            details: serde_json::Value::Null,
        };
        self.leave(created)
    }
}

impl Provider for SimCloud {
    fn module(&self) -> Module {
        Module::Sim
    }

    fn get<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Server>>> {
        async move {
            self.enter().await?;
            let id = parse_id(server_id)?;
            Ok(self
                .servers(" AND id = $1", vec![Arg::Int(id)])
                .await?
                .into_iter()
                .next())
        }
        .boxed()
    }

    fn find<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Vec<Server>>> {
        async move {
            self.enter().await?;
            self.servers(" AND instance_id = $1", vec![Arg::Int(call.instance.id)])
                .await
        }
        .boxed()
    }

    fn list_owned(&self) -> BoxFuture<'_, Result<Vec<Server>>> {
        async move {
            self.enter().await?;
            self.servers(" AND instance_id IS NOT NULL", vec![]).await
        }
        .boxed()
    }

    fn create<'a>(
        &'a self,
        _call: Call<'a>,
        request: &'a CreateRequest,
    ) -> BoxFuture<'a, Result<Created>> {
        self.do_create(request).boxed()
    }

    fn power_off<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        _hard: bool,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.transition(server_id, "stopping", "off").boxed()
    }

    fn power_on<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.transition(server_id, "starting", "running").boxed()
    }

    fn reboot<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        _hard: bool,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.transition(server_id, "rebooting", "").boxed()
    }

    fn delete<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Accepted>> {
        async move {
            self.enter().await?;
            let id = parse_id(server_id)?;
            let mut tx = self.store.pool().write().await.map_err(store_error)?;
            tx.execute(
                "UPDATE sim_servers SET state = 'deleted', deleted_at = {now}
                  WHERE id = $1 AND account = $2 AND deleted_at IS NULL",
                vec![Arg::Int(id), self.account.as_str().into()],
            )
            .await
            .map_err(store_error)?;
            tx.commit().await.map_err(store_error)?;
            self.leave(Accepted::default())
        }
        .boxed()
    }
}

/// What the sim's ledger says about the servers it ever made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ledger {
    /// Servers ever created.
    pub created: i64,
    /// Servers existing now.
    pub live: i64,
    /// Instances that got more than one server over their life.
    pub duplicated_instances: i64,
    /// Live servers whose instance is terminated, or unknown to the store.
    pub orphans: i64,
}

/// Reads the sim's ledger (all sim accounts).
///
/// # Errors
/// [`StoreError`] when the database cannot be read.
pub async fn ledger(store: &SqlStore) -> std::result::Result<Ledger, StoreError> {
    let mut tx = store.pool().read().await?;
    let row = tx
        .row(
            "SELECT (SELECT COUNT(*) FROM sim_servers) AS created,
                    (SELECT COUNT(*) FROM sim_servers WHERE deleted_at IS NULL) AS live,
                    (SELECT COUNT(*) FROM (SELECT instance_id FROM sim_servers
                                            WHERE instance_id IS NOT NULL
                                            GROUP BY instance_id HAVING COUNT(*) > 1) AS d) AS duplicated,
                    (SELECT COUNT(*) FROM sim_servers s
                      WHERE s.deleted_at IS NULL
                        AND NOT EXISTS (SELECT 1 FROM instances i
                                         WHERE i.id = s.instance_id
                                           AND i.observed_status <> 'terminated')) AS orphans",
            vec![],
        )
        .await?
        .ok_or_else(|| StoreError::Corrupt("ledger query returned no row".into()))?;
    Ok(Ledger {
        created: row.int("created")?,
        live: row.int("live")?,
        duplicated_instances: row.int("duplicated")?,
        orphans: row.int("orphans")?,
    })
}
