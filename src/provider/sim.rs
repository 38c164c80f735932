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
    Accepted, Call, CreateRequest, Created, ErrorClass, Policy, PowerState, Provider,
    ProviderError, Rebuilt, ResizeRequest, Result, Server,
};
use crate::catalog::{Module, RateLimit, SimSettings};
pub use crate::store::sim::Ledger;
use crate::store::sim::{NewSimServer, SimBusy, SimChange, SimCreated, SimSelect, SimServer};
use crate::store::{SqlStore, StoreError};

/// Servers read from the simulated cloud's table per page of a listing.
const LIST_PAGE: u32 = 1000;

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

fn store_error(e: StoreError) -> ProviderError {
    ProviderError::new(
        ErrorClass::Transient,
        format!("simulated cloud storage: {e}"),
    )
}

fn server_from(row: SimServer) -> Result<Server> {
    let state = match row.state.as_str() {
        "creating" => PowerState::Creating,
        "running" => PowerState::Running,
        "stopping" => PowerState::Stopping,
        "off" => PowerState::Off,
        "starting" => PowerState::Starting,
        "rebooting" => PowerState::Rebooting,
        "resizing" | "rebuilding" => PowerState::Busy,
        other => {
            return Err(store_error(StoreError::Corrupt(format!(
                "sim server {} has state `{other}`",
                row.id
            ))));
        }
    };
    Ok(Server {
        id: row.id.to_string(),
        instance_id: row.instance_id,
        name: row.name,
        state,
        ipv4: row.ipv4,
        ipv6: row.ipv6,
        root_password: None,
        plan: row.size,
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

    async fn servers(&self, which: SimSelect) -> Result<Vec<Server>> {
        self.store
            .sim_servers(&self.account, which)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(server_from)
            .collect()
    }

    async fn transition(&self, server_id: &str, state: &str, skip_if: &str) -> Result<Accepted> {
        self.enter().await?;
        let id = parse_id(server_id)?;
        let current = self.servers(SimSelect::Id(id)).await?;
        let Some(server) = current.first() else {
            return Err(ProviderError::new(
                ErrorClass::NotFound,
                format!("no server {server_id}"),
            ));
        };
        let effective = format!("{:?}", server.state).to_lowercase();
        if effective != skip_if {
            self.store
                .sim_transition(&self.account, id, state, self.settings.action_seconds)
                .await
                .map_err(store_error)?;
        }
        self.leave(Accepted::default())
    }

    /// A change of plan or a reinstall: the server is busy for a while, and a second one
    /// while it is busy is refused, as real APIs refuse it (`locked`).
    async fn busy(&self, server_id: &str, change: SimChange<'_>, seconds: f64) -> Result<Accepted> {
        self.enter().await?;
        let id = parse_id(server_id)?;
        let kind = match change {
            SimChange::Resize(_) => "resize",
            SimChange::Rebuild(_) => "rebuild",
        };
        match self
            .store
            .sim_busy(&self.account, id, change, seconds)
            .await
            .map_err(store_error)?
        {
            SimBusy::Started => self.leave(Accepted {
                action_id: Some(format!("sim-{kind}-{id}")),
                ..Accepted::default()
            }),
            SimBusy::Locked => Err(ProviderError::new(
                ErrorClass::Transient,
                format!("server {server_id} is locked: another action is running (simulated)"),
            )),
            SimBusy::Missing => Err(ProviderError::new(
                ErrorClass::NotFound,
                format!("no server {server_id}"),
            )),
        }
    }

    async fn do_create(&self, request: &CreateRequest) -> Result<Created> {
        self.enter().await?;
        let size = request.config.plan(&request.product_id);
        let made = self
            .store
            .sim_create(&NewSimServer {
                account: &self.account,
                instance_id: Some(request.instance_id),
                name: &request.name,
                size: size.as_deref(),
                image: &request.image,
                location: &request.location,
                boot_seconds: self.settings.boot_seconds,
                capacity: self.settings.capacity,
            })
            .await
            .map_err(store_error)?;
        let server = match made {
            SimCreated::Made(server) => server_from(server)?,
            SimCreated::NameTaken => {
                return Err(ProviderError::new(
                    ErrorClass::AlreadyExists,
                    format!(
                        "server name `{}` is already used (uniqueness_error)",
                        request.name
                    ),
                ))
            }
            SimCreated::Full => {
                return Err(ProviderError::new(
                    ErrorClass::Capacity,
                    "no capacity left in the simulated cloud",
                ))
            }
        };
        let created = Created {
            action_id: Some(format!("sim-create-{}", server.id)),
            server,
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

    fn policy(&self) -> Policy {
        // Look again after half the quickest simulated action; the pace stays steady.
        let quickest = self.settings.boot_seconds.min(self.settings.action_seconds);
        let poll = Duration::from_secs_f64((quickest / 2.0).clamp(0.05, 2.0));
        // A simulated shutdown always takes `action_seconds`: one still running after twenty
        // times that was never sent (a crash between the intent and the call), and waiting
        // longer than the default would only slow the demo down.
        let graceful = Duration::from_secs_f64(
            (self.settings.action_seconds * 20.0)
                .clamp(5.0, super::DEFAULT_GRACEFUL_TIMEOUT.as_secs_f64()),
        );
        Policy {
            poll,
            poll_max: poll,
            create_grace: Duration::ZERO,
            graceful_timeout: Some(graceful),
            stuck_timeout: Some(super::DEFAULT_STUCK_TIMEOUT),
            meters_requests: false,
            withdraws_creates: false,
        }
    }

    fn get<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Server>>> {
        self.inspect(server_id)
    }

    fn inspect<'a>(&'a self, server_id: &'a str) -> BoxFuture<'a, Result<Option<Server>>> {
        async move {
            self.enter().await?;
            let id = parse_id(server_id)?;
            Ok(self.servers(SimSelect::Id(id)).await?.into_iter().next())
        }
        .boxed()
    }

    fn claim<'a>(&'a self, call: Call<'a>, server_id: &'a str) -> BoxFuture<'a, Result<Accepted>> {
        async move {
            self.enter().await?;
            let id = parse_id(server_id)?;
            let labelled = self
                .store
                .sim_label(&self.account, id, call.instance.id)
                .await
                .map_err(store_error)?;
            if !labelled {
                return Err(ProviderError::new(
                    ErrorClass::NotFound,
                    format!("no server {server_id}"),
                ));
            }
            self.leave(Accepted::default())
        }
        .boxed()
    }

    fn find<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Vec<Server>>> {
        async move {
            self.enter().await?;
            self.servers(SimSelect::Instance(call.instance.id)).await
        }
        .boxed()
    }

    fn list_owned(&self) -> BoxFuture<'_, Result<Vec<Server>>> {
        async move {
            let mut all = Vec::new();
            self.list_owned_each(&mut |s| all.push(s)).await?;
            Ok(all)
        }
        .boxed()
    }

    fn list_owned_each<'a>(
        &'a self,
        sink: &'a mut (dyn FnMut(Server) + Send),
    ) -> BoxFuture<'a, Result<usize>> {
        async move {
            // One request to the simulated API, read page by page from its table and handed
            // over page by page: a large account is never held whole.
            self.enter().await?;
            let (mut after, mut n) = (0, 0);
            loop {
                let page = self
                    .servers(SimSelect::Labelled {
                        after,
                        limit: LIST_PAGE,
                    })
                    .await?;
                let Some(last) = page.last() else { break };
                after = parse_id(&last.id)?;
                let full = page.len() >= LIST_PAGE as usize;
                n += page.len();
                page.into_iter().for_each(&mut *sink);
                if !full {
                    break;
                }
            }
            Ok(n)
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

    fn resize_needs_off(&self) -> bool {
        false
    }

    fn resize<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        request: &'a ResizeRequest,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.busy(
            server_id,
            SimChange::Resize(&request.plan),
            self.settings.action_seconds,
        )
        .boxed()
    }

    fn rebuild<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        request: &'a CreateRequest,
    ) -> BoxFuture<'a, Result<Rebuilt>> {
        async move {
            let accepted = self
                .busy(
                    server_id,
                    SimChange::Rebuild(&request.image),
                    self.settings.boot_seconds,
                )
                .await?;
            Ok(Rebuilt {
                accepted,
                root_password: Some(crate::secrets::SecretString::new(format!(
                    "sim-{:016x}",
                    (self.roll() * 1e18) as u64
                ))),
            })
        }
        .boxed()
    }

    fn find_rebuild<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        async move {
            self.enter().await?;
            let id = parse_id(server_id)?;
            let rebuilt = self
                .store
                .sim_rebuilt_since(&self.account, id, since)
                .await
                .map_err(store_error)?;
            Ok(rebuilt.then(|| format!("sim-rebuild-{id}")))
        }
        .boxed()
    }

    fn delete<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Accepted>> {
        async move {
            self.enter().await?;
            let id = parse_id(server_id)?;
            self.store
                .sim_delete(&self.account, id)
                .await
                .map_err(store_error)?;
            self.leave(Accepted::default())
        }
        .boxed()
    }
}

/// Reads the sim's ledger (all sim accounts).
///
/// # Errors
/// [`StoreError`] when the database cannot be read.
pub async fn ledger(store: &SqlStore) -> std::result::Result<Ledger, StoreError> {
    store.sim_ledger().await
}
