//! The executor: performs one step for one claimed instance.
//!
//! Intent before effect: before every provider call the intent is committed (observed status,
//! action in flight, a `started` transition); then the call; then its outcome with its
//! transition, releasing the lease and setting the next check — soon while something is in
//! flight, a long poll interval when converged, exponential backoff with jitter on errors. A
//! create whose outcome is unknown (crash, timeout, "already exists") is followed by a lookup
//! by label before any second create; two servers for one instance stop it for a person.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio::sync::{watch, Notify};

use super::metrics::Metrics;
use super::plan::{plan, settle, ProductCheck, SettleTiming, Settled, Step};
use super::view::{Look, View};
use crate::catalog::{AccountSettings, Catalog, Module};
use crate::provider::digitalocean::DigitalOcean;
use crate::provider::hetzner::HetznerCloud;
use crate::provider::limit::RateLimiter;
use crate::provider::manual::ManualProvider;
use crate::provider::ovh::Ovh;
use crate::provider::sim::SimCloud;
use crate::provider::{
    server_name, Call, CreateRequest, Created, ErrorClass, Progress, Provider, ProviderError,
    Server,
};
use crate::secrets::Keyring;
use crate::store::{
    Action, Cause, Claim, DesiredStatus, Instance, NewTransition, NextCheck, ObservedPatch,
    ObservedStatus, Outcome, SqlStore, Store, StoreError,
};

/// Marks a hard power-off sent after a graceful shutdown timed out.
const HARD_OFF: &str = "hard-power-off";
/// Prefixes the provider action id of a hard reset sent after a graceful reboot timed out.
const HARD_PREFIX: &str = "hard:";

/// One provider account as the executor uses it.
pub struct Account {
    /// Account id.
    pub id: String,
    /// Its module.
    pub provider: Arc<dyn Provider>,
    /// Its request budget, shared by all workers (and by the module's HTTP client).
    pub limiter: Arc<RateLimiter>,
    /// How soon to look again at an action in flight, at first.
    pub poll: Duration,
    /// The longest wait between two looks at an action in flight (the wait grows with the
    /// action's age, so slow actions cost few requests).
    pub poll_max: Duration,
    /// How long a created server may be missing from the API before counting as gone.
    pub create_grace: Duration,
    /// The shared listing that answers looks at actions in flight.
    pub view: View,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("module", &self.provider.module())
            .finish_non_exhaustive()
    }
}

impl Account {
    /// The wait before the next look at an action that has been in flight for `elapsed`.
    pub fn poll_after(&self, elapsed: Duration) -> Duration {
        (elapsed / 2).clamp(self.poll, self.poll_max.max(self.poll))
    }
}

/// Accounts by id.
pub type Accounts = HashMap<String, Arc<Account>>;

/// Why an account of `catalog` cannot be driven by this daemon (its module's credentials are
/// missing from the environment, say); `None` when it can.
pub fn unavailable(catalog: &Catalog, account_id: &str) -> Option<String> {
    let Some(a) = catalog.account(account_id) else {
        return Some(format!("account `{account_id}` is not in the catalog"));
    };
    let missing: Vec<&str> = a
        .credentials
        .iter()
        .filter(|c| std::env::var(&c.env).map_or(true, |v| v.is_empty()))
        .map(|c| c.env.as_str())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "account `{}` (module `{}`) has no credentials: set {} in the daemon's environment",
            a.id,
            a.module,
            missing.join(", ")
        )
    })
}

/// Builds the accounts of `catalog` that can be driven: every module, provided its
/// credentials are in the environment. Accounts that cannot be built are logged and left out;
/// their instances wait with the reason.
pub fn build_accounts(catalog: &Catalog, store: &SqlStore, keyring: &Arc<Keyring>) -> Accounts {
    let env = |name: &str| std::env::var(name).ok();
    let mut out = Accounts::new();
    for a in catalog.accounts.values() {
        let limiter = Arc::new(RateLimiter::new(&a.rate_limit));
        let built: Result<(Arc<dyn Provider>, Duration, Duration), String> =
            match (&a.module, &a.settings) {
                (Module::Sim, AccountSettings::Sim(settings)) => {
                    let quickest = settings.boot_seconds.min(settings.action_seconds);
                    let poll = Duration::from_secs_f64((quickest / 2.0).clamp(0.05, 2.0));
                    Ok((
                        Arc::new(SimCloud::new(
                            &a.id,
                            settings.clone(),
                            &a.rate_limit,
                            store.clone(),
                        )),
                        poll,
                        Duration::ZERO,
                    ))
                }
                (Module::Manual, _) => Ok((
                    Arc::new(ManualProvider::new(&a.id, store.clone(), keyring.clone())),
                    // Completing a task makes the instance due at once; this is only a safety net.
                    Duration::from_secs(60),
                    Duration::ZERO,
                )),
                (Module::Hetzner, _) => HetznerCloud::new(a, limiter.clone(), &env).map(|p| {
                    let p: Arc<dyn Provider> = Arc::new(p);
                    (p, Duration::from_secs(2), Duration::from_secs(10))
                }),
                (Module::DigitalOcean, _) => DigitalOcean::new(a, limiter.clone(), &env).map(|p| {
                    let p: Arc<dyn Provider> = Arc::new(p);
                    (p, Duration::from_secs(3), Duration::from_secs(10))
                }),
                (Module::Ovh, AccountSettings::Ovh { pool }) => {
                    Ovh::new(a, pool.clone(), limiter.clone(), store.clone(), &env).map(|p| {
                        let p: Arc<dyn Provider> = Arc::new(p);
                        (p, Duration::from_secs(30), Duration::ZERO)
                    })
                }
                (module, _) => Err(format!("module `{module}` has no settings here")),
            };
        let (provider, default_poll, grace) = match built {
            Ok(b) => b,
            Err(reason) => {
                tracing::warn!(account = %a.id, module = %a.module, "account not driven: {reason}");
                continue;
            }
        };
        let poll = a.poll.unwrap_or(default_poll);
        // Cloud actions take seconds to minutes: the wait between looks grows to 8 times
        // the first one. The sim and manual modules keep a steady pace.
        let poll_max = match a.module {
            Module::Sim | Module::Manual => poll,
            _ => poll * 8,
        };
        out.insert(
            a.id.clone(),
            Arc::new(Account {
                id: a.id.clone(),
                provider,
                limiter,
                poll,
                poll_max,
                create_grace: grace,
                view: View::default(),
            }),
        );
    }
    out
}

/// How the executor schedules.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Next look at a converged instance.
    pub converged: Duration,
    /// Next look at an instance waiting (out of stock, unknown product).
    pub waiting: Duration,
    /// First retry delay after an error.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Errors that retrying cannot fix are tried this many times before `failed`.
    pub failure_budget: i64,
    /// Timing of actions in flight.
    pub settle: SettleTiming,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            converged: Duration::from_secs(600),
            waiting: Duration::from_secs(60),
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(600),
            failure_budget: 5,
            settle: SettleTiming {
                create_grace: Duration::from_secs(30),
                graceful_off: Duration::from_secs(60),
                stuck_after: Duration::from_secs(300),
            },
        }
    }
}

/// Performs steps; shared by every worker of a daemon.
pub struct Executor {
    store: SqlStore,
    catalog: watch::Receiver<Arc<Catalog>>,
    accounts: Arc<RwLock<Arc<Accounts>>>,
    keyring: Arc<Keyring>,
    metrics: Arc<Metrics>,
    timing: Timing,
    wake: Arc<Notify>,
    rng: Mutex<u64>,
}

/// The result a step is counted under in metrics.
pub type StepResult = &'static str;

/// What the catalog allows for `i` (before it has a server).
pub fn product_check(catalog: &Catalog, i: &Instance) -> ProductCheck {
    let Some(p) = catalog.product(&i.product_id) else {
        return ProductCheck::Blocked(format!(
            "unknown product `{}`: not in the catalog",
            i.product_id
        ));
    };
    if !p.active {
        return ProductCheck::Blocked(format!(
            "product `{}` is inactive: no new servers are provisioned",
            p.id
        ));
    }
    if let Some(l) = &i.location {
        if !p.locations.contains(l) {
            return ProductCheck::Blocked(format!(
                "location `{l}` is not offered by product `{}` (offered: {})",
                p.id,
                p.locations.join(", ")
            ));
        }
    }
    if let Some(o) = &i.os_image {
        if !p.os_images.contains(o) {
            return ProductCheck::Blocked(format!(
                "OS image `{o}` is not offered by product `{}` (offered: {})",
                p.id,
                p.os_images.join(", ")
            ));
        }
    }
    ProductCheck::Sellable { stock: p.stock }
}

fn cause_of(i: &Instance) -> Cause {
    if i.attempts > 0 {
        Cause::Retry
    } else if i.observed_generation < i.desired_generation {
        Cause::DesiredChange
    } else {
        Cause::Poll
    }
}

fn transition(action: Action, cause: Cause, outcome: Outcome) -> NewTransition {
    NewTransition::new(action, cause, outcome)
}

impl Executor {
    /// An executor over `store`, following `catalog`, calling `accounts`.
    pub fn new(
        store: SqlStore,
        catalog: watch::Receiver<Arc<Catalog>>,
        accounts: Arc<RwLock<Arc<Accounts>>>,
        keyring: Arc<Keyring>,
        metrics: Arc<Metrics>,
        timing: Timing,
        wake: Arc<Notify>,
    ) -> Executor {
        let seed = u64::from(std::process::id()) ^ (Utc::now().timestamp_micros() as u64);
        Executor {
            store,
            catalog,
            accounts,
            keyring,
            metrics,
            timing,
            wake,
            rng: Mutex::new(seed | 1),
        }
    }

    fn account(&self, id: &str) -> Option<Arc<Account>> {
        self.accounts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// A factor in [0.75, 1.25) so that retries of many instances spread out.
    fn jitter(&self) -> f64 {
        let mut s = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        0.75 + 0.5 * ((*s >> 11) as f64 / (1u64 << 53) as f64)
    }

    fn backoff(&self, attempts: i64) -> Duration {
        let exp = u32::try_from(attempts.clamp(1, 30) - 1).unwrap_or(29);
        let base = self.timing.backoff_base.as_secs_f64() * 2f64.powi(exp as i32);
        Duration::from_secs_f64(base.min(self.timing.backoff_cap.as_secs_f64()) * self.jitter())
    }

    /// Performs one step for a claimed instance and gives the lease back. Never panics on bad
    /// data; every failure is recorded on the instance or logged.
    pub async fn step(&self, claim: Claim) -> StepResult {
        let result = match self.run(&claim).await {
            Ok(r) => r,
            Err(StoreError::LeaseLost { .. }) => {
                tracing::warn!(
                    instance = claim.instance.id,
                    "lease lost mid-step; another worker has the instance"
                );
                "lease_lost"
            }
            Err(e) => {
                tracing::error!(instance = claim.instance.id, error = %e, "step failed on the database; retrying later");
                let retry = NextCheck::After(self.backoff(claim.instance.attempts + 1));
                if let Err(e) = self.store.release(&claim.lease, retry).await {
                    tracing::warn!(instance = claim.instance.id, error = %e, "could not give the lease back; it will expire");
                }
                "store_error"
            }
        };
        self.metrics.reconcile(result);
        result
    }

    async fn finish(
        &self,
        claim: &Claim,
        mut patch: ObservedPatch,
        t: Option<NewTransition>,
    ) -> Result<Instance, StoreError> {
        patch.release_lease = true;
        if patch.next_check == Some(NextCheck::Now) {
            self.wake.notify_one();
        }
        self.store.record(&claim.lease, &patch, t.as_ref()).await
    }

    async fn run(&self, claim: &Claim) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let catalog = self.catalog.borrow().clone();
        let check = product_check(&catalog, i);
        let step = plan(i, &check);
        tracing::debug!(step = %step.describe(), "planned");
        let cause = cause_of(i);
        match step {
            Step::Converged => {
                let patch = ObservedPatch {
                    observed_generation: Some(claim.lease.desired_generation),
                    next_check: Some(NextCheck::After(
                        self.timing.converged.mul_f64(self.jitter()),
                    )),
                    ..ObservedPatch::default()
                };
                self.finish(claim, patch, None).await?;
                Ok("converged")
            }
            Step::Idle(_) => {
                let patch = ObservedPatch {
                    next_check: Some(NextCheck::Never),
                    ..ObservedPatch::default()
                };
                self.finish(claim, patch, None).await?;
                Ok("idle")
            }
            Step::Wait(reason) => self.wait(claim, cause, reason).await,
            Step::Forget => {
                let patch = ObservedPatch {
                    observed_status: Some(ObservedStatus::Terminated),
                    status_reason: Some(None),
                    observed_generation: Some(claim.lease.desired_generation),
                    next_check: Some(NextCheck::Never),
                    ..ObservedPatch::default()
                };
                let mut t = transition(Action::Terminate, cause, Outcome::Succeeded);
                t.details = json!({"note": "no server existed: nothing to delete"});
                self.finish(claim, patch, Some(t)).await?;
                Ok("progressed")
            }
            Step::SkipReboot => {
                let patch = ObservedPatch {
                    reboot_handled: Some(i.reboot_requested),
                    next_check: Some(NextCheck::Now),
                    ..ObservedPatch::default()
                };
                let mut t = transition(Action::Reboot, cause, Outcome::Deferred);
                t.error = Some("the server is suspended: the reboot was skipped".into());
                self.finish(claim, patch, Some(t)).await?;
                Ok("progressed")
            }
            Step::Create => {
                let stock = match check {
                    ProductCheck::Sellable { stock } => stock,
                    ProductCheck::Blocked(_) => None,
                };
                self.create(claim, &catalog, stock, cause).await
            }
            Step::Poll(action) => self.poll(claim, action, cause).await,
            Step::Suspend => {
                self.act(claim, Action::Suspend, ObservedStatus::Suspending, cause)
                    .await
            }
            Step::Unsuspend => {
                self.act(
                    claim,
                    Action::Unsuspend,
                    ObservedStatus::Unsuspending,
                    cause,
                )
                .await
            }
            Step::Reboot => {
                self.act(claim, Action::Reboot, ObservedStatus::Rebooting, cause)
                    .await
            }
            Step::Terminate => {
                self.act(claim, Action::Terminate, ObservedStatus::Terminating, cause)
                    .await
            }
        }
    }

    async fn wait(
        &self,
        claim: &Claim,
        cause: Cause,
        reason: String,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let changed = i.status_reason.as_deref() != Some(reason.as_str());
        let t = changed.then(|| {
            tracing::info!(instance = i.id, reason = %reason, "waiting");
            let mut t = transition(Action::Wait, cause, Outcome::Deferred);
            t.error = Some(reason.clone());
            t
        });
        let patch = ObservedPatch {
            status_reason: Some(Some(reason)),
            next_check: Some(NextCheck::After(self.timing.waiting)),
            ..ObservedPatch::default()
        };
        self.finish(claim, patch, t).await?;
        Ok("waiting")
    }

    /// Makes a provider call within the account's budget, counting it.
    async fn call<T>(
        &self,
        account: &Account,
        name: &str,
        fut: impl std::future::Future<Output = crate::provider::Result<T>>,
    ) -> crate::provider::Result<T> {
        if account.provider.meters_requests() {
            // The module's HTTP client takes a token per request; count the wait here.
            if account.limiter.next_slot() > Duration::ZERO {
                self.metrics.rate_limit_wait(&account.id);
            }
        } else if account.limiter.acquire().await {
            self.metrics.rate_limit_wait(&account.id);
        }
        let result = fut.await;
        match &result {
            Ok(_) => self.metrics.provider_call(&account.id, name, "ok"),
            Err(e) => {
                self.metrics
                    .provider_call(&account.id, name, e.class.as_str());
                if e.class == ErrorClass::Throttled && !account.provider.meters_requests() {
                    account
                        .limiter
                        .throttle(e.retry_after.unwrap_or(Duration::from_secs(1)));
                }
            }
        }
        result
    }

    /// Records a failed provider call: retry with backoff, or `failed` once the budget of
    /// attempts is spent on an error that retrying cannot fix.
    async fn provider_failed(
        &self,
        claim: &Claim,
        action: Action,
        cause: Cause,
        e: ProviderError,
        mut patch: ObservedPatch,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let attempts = i.attempts + 1;
        let mut t = transition(action, cause, Outcome::Failed);
        t.error = Some(e.to_string());
        t.details =
            json!({"class": e.class.as_str(), "request_id": e.request_id, "attempt": attempts});
        patch.last_error = Some(Some(e.to_string()));
        patch.attempts = Some(attempts);
        if !e.class.is_transient() && attempts >= self.timing.failure_budget {
            let reason = format!("{action} failed {attempts} times: {e}");
            tracing::error!(instance = i.id, reason = %reason, "giving up: a person must look");
            self.stop(claim, ObservedStatus::Failed, reason, t, patch)
                .await?;
            return Ok("failed");
        }
        let delay = match (e.class, e.retry_after) {
            (ErrorClass::Throttled, Some(after)) => after,
            _ => self.backoff(attempts),
        };
        tracing::warn!(instance = i.id, %action, error = %e, retry_in = ?delay, "provider call failed");
        patch.next_check = Some(NextCheck::After(delay));
        self.finish(claim, patch, Some(t)).await?;
        Ok("error")
    }

    async fn create(
        &self,
        claim: &Claim,
        catalog: &Catalog,
        stock: Option<u32>,
        cause: Cause,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let Some(product) = catalog.product(&i.product_id) else {
            return self
                .wait(claim, cause, format!("unknown product `{}`", i.product_id))
                .await;
        };
        let account_id = &product.provisioning.account;
        let Some(account) = self.account(account_id) else {
            let reason = unavailable(catalog, account_id).unwrap_or_else(|| {
                format!("account `{account_id}` cannot be driven: see the daemon's log")
            });
            return self.wait(claim, cause, reason).await;
        };
        let location = i
            .location
            .clone()
            .unwrap_or_else(|| product.locations[0].clone());
        let os_image = i
            .os_image
            .clone()
            .unwrap_or_else(|| product.os_images[0].clone());
        let name = server_name(i.id);
        let intent = ObservedPatch {
            observed_status: Some(ObservedStatus::Provisioning),
            status_reason: Some(None),
            provider_account: Some(Some(account_id.clone())),
            product_revision: Some(
                i.product_revision
                    .clone()
                    .unwrap_or_else(|| product.revision.0.clone()),
            ),
            pending: Some(Some((Action::Create, None))),
            ..ObservedPatch::default()
        };
        let mut t = transition(Action::Create, cause, Outcome::Started);
        t.details = json!({
            "server_name": name, "account": account_id, "location": location,
            "os_image": os_image, "product_revision": product.revision.0,
        });
        let Some(updated) = self
            .store
            .begin_create(&claim.lease, stock, &intent, &t)
            .await?
        else {
            let stock = stock.unwrap_or(0);
            return self
                .wait(
                    claim,
                    cause,
                    format!(
                        "out of stock: all {stock} servers of product `{}` are taken",
                        product.id
                    ),
                )
                .await;
        };
        let request = CreateRequest {
            instance_id: i.id,
            name: name.clone(),
            hostname: i.hostname.clone().unwrap_or_else(|| name.clone()),
            location,
            os_image,
            ssh_keys: i
                .ssh_keys
                .as_deref()
                .unwrap_or("")
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            config: product.provisioning.config.clone(),
            product_id: product.id.clone(),
        };
        let call = Call {
            instance: &updated,
            lease: &claim.lease,
        };
        match self
            .call(&account, "create", account.provider.create(call, &request))
            .await
        {
            Ok(created) => self.created(claim, &account, &updated, created).await,
            Err(e) if e.class == ErrorClass::AlreadyExists => {
                // A server with this instance's name exists: ours, from an earlier attempt
                // whose answer was lost. Look it up by label and adopt it.
                let mut t = transition(Action::Create, Cause::Retry, Outcome::Failed);
                t.error = Some(format!("{e}; adopting the existing server"));
                let patch = ObservedPatch {
                    next_check: Some(NextCheck::Now),
                    ..ObservedPatch::default()
                };
                self.finish(claim, patch, Some(t)).await?;
                Ok("adopting")
            }
            Err(e) if e.class.is_transient() => {
                // The create may have been applied: keep it in flight, so the next step looks
                // the server up by label before creating again.
                self.provider_failed(claim, Action::Create, cause, e, ObservedPatch::default())
                    .await
            }
            Err(e) => {
                // Refused outright: nothing was created.
                let patch = ObservedPatch {
                    observed_status: Some(ObservedStatus::Pending),
                    pending: Some(None),
                    ..ObservedPatch::default()
                };
                self.provider_failed(claim, Action::Create, cause, e, patch)
                    .await
            }
        }
    }

    async fn created(
        &self,
        claim: &Claim,
        account: &Account,
        i: &Instance,
        created: Created,
    ) -> Result<StepResult, StoreError> {
        let sealed = created
            .root_password
            .as_ref()
            .map(|p| self.keyring.seal(p, &i.secret_context()));
        let patch = ObservedPatch {
            provider_server_id: Some(Some(created.server.id.clone())),
            ipv4: created.server.ipv4.clone().map(Some),
            ipv6: created.server.ipv6.clone().map(Some),
            credentials: sealed.map(Some),
            pending: Some(Some((Action::Create, created.action_id.clone()))),
            attempts: Some(0),
            last_error: Some(None),
            next_check: Some(NextCheck::After(account.poll)),
            ..ObservedPatch::default()
        };
        let mut t = transition(
            Action::Create,
            cause_of(&claim.instance),
            Outcome::Succeeded,
        );
        t.details = json!({"server_id": created.server.id, "action_id": created.action_id});
        merge(&mut t.details, created.details);
        self.finish(claim, patch, Some(t)).await?;
        Ok("progressed")
    }

    async fn poll(
        &self,
        claim: &Claim,
        action: Action,
        cause: Cause,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let Some(account) = i.provider_account.as_deref().and_then(|a| self.account(a)) else {
            if action == Action::Create && i.provider_server_id.is_none() {
                // The intent was recorded for an account that is gone: start over.
                let patch = ObservedPatch {
                    observed_status: Some(ObservedStatus::Pending),
                    pending: Some(None),
                    next_check: Some(NextCheck::After(self.timing.waiting)),
                    ..ObservedPatch::default()
                };
                self.finish(claim, patch, None).await?;
                return Ok("waiting");
            }
            let reason = format!(
                "account `{}` is not in the catalog (or its module is not available): the server cannot be looked at",
                i.provider_account.as_deref().unwrap_or("none")
            );
            return self.wait(claim, cause, reason).await;
        };
        let call = Call {
            instance: i,
            lease: &claim.lease,
        };
        let Some(server_id) = i.provider_server_id.as_deref() else {
            return self.adopt(claim, &account, cause).await;
        };
        let since = i.pending_since.unwrap_or(i.updated_at);
        let elapsed = (Utc::now() - since).to_std().unwrap_or_default();
        let mut timing = self.timing.settle;
        timing.create_grace = account.create_grace;
        if account.provider.module() == Module::Manual {
            // People take their time; a task is never "stuck".
            timing.stuck_after = Duration::MAX;
            timing.graceful_off = Duration::MAX;
        }
        let (hard_sent, followed) = match i.pending_action_id.as_deref() {
            Some(HARD_OFF) => (true, None),
            Some(id) => match id.strip_prefix(HARD_PREFIX) {
                Some(id) => (true, Some(id)),
                None => (false, Some(id)),
            },
            None => (false, None),
        };
        if let Some(action_id) = followed.filter(|_| account.provider.follows(action)) {
            return self
                .follow(
                    claim, &account, action, cause, server_id, action_id, elapsed, hard_sent,
                )
                .await;
        }
        let server = match self.look(claim, &account, server_id, since).await {
            Ok(s) => s,
            Err(e) if e.class == ErrorClass::NotFound => None,
            Err(e) => {
                return self
                    .provider_failed(claim, action, cause, e, ObservedPatch::default())
                    .await
            }
        };
        match settle(
            action,
            server.as_ref().map(|s| s.state),
            elapsed,
            hard_sent,
            &timing,
        ) {
            Settled::Done(status) => self.done(claim, action, cause, status, server).await,
            Settled::Continue => self.in_flight(claim, &account, elapsed).await,
            Settled::HardPowerOff => {
                let result = self
                    .call(
                        &account,
                        "power_off_hard",
                        account.provider.power_off(call, server_id, true),
                    )
                    .await;
                match result {
                    Ok(_) => {
                        let mut t = transition(Action::Suspend, cause, Outcome::Succeeded);
                        t.details = json!({"hard": true, "note": "graceful shutdown timed out"});
                        let patch = ObservedPatch {
                            pending: Some(Some((Action::Suspend, Some(HARD_OFF.into())))),
                            next_check: Some(NextCheck::After(account.poll)),
                            ..ObservedPatch::default()
                        };
                        self.finish(claim, patch, Some(t)).await?;
                        Ok("progressed")
                    }
                    Err(e) => {
                        self.provider_failed(
                            claim,
                            Action::Suspend,
                            cause,
                            e,
                            ObservedPatch::default(),
                        )
                        .await
                    }
                }
            }
            Settled::Resend => {
                self.send(claim, &account, action, cause, server_id, None)
                    .await
            }
            Settled::Missing => self.lost(claim, action, server_id).await,
        }
    }

    /// Looks at a server with an action in flight: through the account's shared listing when
    /// that is cheaper, else by id.
    async fn look(
        &self,
        claim: &Claim,
        account: &Account,
        server_id: &str,
        since: chrono::DateTime<Utc>,
    ) -> crate::provider::Result<Option<Server>> {
        let call = Call {
            instance: &claim.instance,
            lease: &claim.lease,
        };
        let p = &account.provider;
        if p.lists_servers() {
            let list = || self.call(account, "list", p.list_owned());
            let look = account
                .view
                .look(server_id, since, account.poll, list, |n| p.list_requests(n))
                .await?;
            if let Look::Listed(server) = look {
                return Ok(Some(server));
            }
        }
        self.call(account, "get", p.get(call, server_id)).await
    }

    /// Follows the provider action of `action` (a reboot at a cloud; every OVH task).
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        claim: &Claim,
        account: &Account,
        action: Action,
        cause: Cause,
        server_id: &str,
        action_id: &str,
        elapsed: Duration,
        hard_sent: bool,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let call = Call {
            instance: i,
            lease: &claim.lease,
        };
        let p = &account.provider;
        let progress = match self
            .call(account, "follow", p.follow(call, action_id))
            .await
        {
            Ok(progress) => progress,
            Err(e) => {
                return self
                    .provider_failed(claim, action, cause, e, ObservedPatch::default())
                    .await
            }
        };
        match progress {
            Progress::Succeeded => {
                let status = match action {
                    Action::Suspend => ObservedStatus::Suspended,
                    Action::Terminate => ObservedStatus::Terminated,
                    _ => ObservedStatus::Active,
                };
                self.done(claim, action, cause, status, None).await
            }
            Progress::Failed(message) => {
                // The provider gave up on it: go back to where the action started from, so the
                // planner sends it again after the backoff (or gives up after the budget).
                let before = match action {
                    Action::Create => ObservedStatus::Pending,
                    Action::Unsuspend => ObservedStatus::Suspended,
                    _ => ObservedStatus::Active,
                };
                let mut e = ProviderError::new(
                    ErrorClass::Invalid,
                    format!("{} action {action_id} failed: {message}", p.module()),
                );
                e.request_id = None;
                let patch = ObservedPatch {
                    observed_status: Some(before),
                    pending: Some(None),
                    ..ObservedPatch::default()
                };
                self.provider_failed(claim, action, cause, e, patch).await
            }
            Progress::Running
                if action == Action::Reboot
                    && !hard_sent
                    && elapsed >= self.timing.settle.graceful_off =>
            {
                // The graceful reboot did not take: reset.
                match self
                    .call(account, "reboot_hard", p.reboot(call, server_id, true))
                    .await
                {
                    Ok(accepted) => {
                        let mut t = transition(Action::Reboot, cause, Outcome::Succeeded);
                        t.details = json!({"hard": true, "action_id": accepted.action_id,
                            "note": "graceful reboot did not finish in time"});
                        let marked = format!(
                            "{HARD_PREFIX}{}",
                            accepted.action_id.as_deref().unwrap_or(action_id)
                        );
                        let patch = ObservedPatch {
                            pending: Some(Some((Action::Reboot, Some(marked)))),
                            next_check: Some(NextCheck::After(account.poll)),
                            ..ObservedPatch::default()
                        };
                        self.finish(claim, patch, Some(t)).await?;
                        Ok("progressed")
                    }
                    Err(e) => {
                        self.provider_failed(claim, action, cause, e, ObservedPatch::default())
                            .await
                    }
                }
            }
            Progress::Running if elapsed >= self.timing.settle.stuck_after => {
                self.send(claim, account, action, cause, server_id, None)
                    .await
            }
            Progress::Running => self.in_flight(claim, account, elapsed).await,
        }
    }

    /// The action is still under way: look again later, later the older it is.
    async fn in_flight(
        &self,
        claim: &Claim,
        account: &Account,
        elapsed: Duration,
    ) -> Result<StepResult, StoreError> {
        let mut patch = ObservedPatch {
            next_check: Some(NextCheck::After(account.poll_after(elapsed))),
            ..ObservedPatch::default()
        };
        if claim.instance.attempts > 0 {
            // The provider answered: an earlier error streak is over.
            patch.attempts = Some(0);
            patch.last_error = Some(None);
        }
        self.finish(claim, patch, None).await?;
        Ok("in_flight")
    }

    async fn done(
        &self,
        claim: &Claim,
        action: Action,
        cause: Cause,
        status: ObservedStatus,
        server: Option<Server>,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let mut patch = ObservedPatch {
            observed_status: Some(status),
            status_reason: Some(None),
            pending: Some(None),
            attempts: Some(0),
            last_error: Some(None),
            observed_generation: Some(claim.lease.desired_generation),
            ..ObservedPatch::default()
        };
        if action == Action::Reboot {
            patch.reboot_handled = Some(i.reboot_requested);
        }
        if let Some(s) = &server {
            if s.ipv4.is_some() {
                patch.ipv4 = Some(s.ipv4.clone());
            }
            if s.ipv6.is_some() {
                patch.ipv6 = Some(s.ipv6.clone());
            }
            if let (Some(p), None) = (&s.root_password, &i.credentials) {
                patch.credentials = Some(Some(self.keyring.seal(p, &i.secret_context())));
            }
        }
        // Look again at once only if the planner has more to do from the new state.
        let mut next_state = i.clone();
        next_state.observed_status = status;
        next_state.pending_action = None;
        next_state.reboot_handled = patch.reboot_handled.unwrap_or(i.reboot_handled);
        let catalog = self.catalog.borrow().clone();
        let next = match plan(&next_state, &product_check(&catalog, &next_state)) {
            Step::Idle(_) => NextCheck::Never,
            Step::Converged => NextCheck::After(self.timing.converged.mul_f64(self.jitter())),
            _ => NextCheck::Now,
        };
        patch.next_check = Some(next);
        let t = transition(action, cause, Outcome::Succeeded);
        self.finish(claim, patch, Some(t)).await?;
        Ok(if next == NextCheck::Now {
            "progressed"
        } else {
            "converged"
        })
    }

    /// Stops the instance in `status` (failed, lost) with `reason` for a person: nothing more
    /// happens until billing terminates it or someone retries it.
    async fn stop(
        &self,
        claim: &Claim,
        status: ObservedStatus,
        reason: String,
        mut t: NewTransition,
        mut patch: ObservedPatch,
    ) -> Result<Instance, StoreError> {
        if t.error.is_none() {
            t.error = Some(reason.clone());
        }
        patch.observed_status = Some(status);
        patch.status_reason = Some(Some(reason));
        patch.pending = Some(None);
        patch.next_check = Some(NextCheck::Never);
        self.finish(claim, patch, Some(t)).await
    }

    async fn lost(
        &self,
        claim: &Claim,
        action: Action,
        server_id: &str,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let reason =
            format!("server {server_id} vanished at the provider while {action} was in flight");
        tracing::error!(instance = i.id, server = server_id, "server lost: {reason}");
        let t = transition(Action::Observe, Cause::Drift, Outcome::Failed);
        self.stop(
            claim,
            ObservedStatus::Lost,
            reason,
            t,
            ObservedPatch::default(),
        )
        .await?;
        Ok("lost")
    }

    async fn adopt(
        &self,
        claim: &Claim,
        account: &Account,
        cause: Cause,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let call = Call {
            instance: i,
            lease: &claim.lease,
        };
        let found = match self
            .call(account, "find", account.provider.find(call))
            .await
        {
            Ok(f) => f,
            Err(e) => {
                return self
                    .provider_failed(claim, Action::Adopt, cause, e, ObservedPatch::default())
                    .await
            }
        };
        match found.as_slice() {
            [] => {
                let since = i.pending_since.unwrap_or(i.updated_at);
                let elapsed = (Utc::now() - since).to_std().unwrap_or_default();
                if elapsed < account.create_grace {
                    let patch = ObservedPatch {
                        next_check: Some(NextCheck::After(account.poll)),
                        ..ObservedPatch::default()
                    };
                    self.finish(claim, patch, None).await?;
                    return Ok("in_flight");
                }
                // The earlier create never happened: creating again cannot duplicate.
                let mut t = transition(Action::Adopt, cause, Outcome::Failed);
                t.error = Some("no server carries this instance's label: the earlier create did not happen; creating again".into());
                let patch = ObservedPatch {
                    observed_status: Some(ObservedStatus::Pending),
                    pending: Some(None),
                    next_check: Some(NextCheck::Now),
                    ..ObservedPatch::default()
                };
                self.finish(claim, patch, Some(t)).await?;
                Ok("progressed")
            }
            [server] => {
                tracing::info!(instance = i.id, server = %server.id, "adopted the server found by its label");
                let mut t = transition(Action::Adopt, cause, Outcome::Succeeded);
                t.details = json!({"server_id": server.id});
                let patch = ObservedPatch {
                    provider_server_id: Some(Some(server.id.clone())),
                    ipv4: server.ipv4.clone().map(Some),
                    ipv6: server.ipv6.clone().map(Some),
                    next_check: Some(NextCheck::Now),
                    ..ObservedPatch::default()
                };
                self.finish(claim, patch, Some(t)).await?;
                Ok("progressed")
            }
            many => {
                let ids: Vec<&str> = many.iter().map(|s| s.id.as_str()).collect();
                let reason = format!(
                    "found {} servers labelled {}={} ({}): delete all but one at the provider, then `provisioner instances retry {}`",
                    many.len(),
                    crate::provider::INSTANCE_LABEL,
                    i.id,
                    ids.join(", "),
                    i.id
                );
                tracing::error!(instance = i.id, "{reason}");
                let t = transition(Action::Adopt, cause, Outcome::Failed);
                self.stop(
                    claim,
                    ObservedStatus::Failed,
                    reason,
                    t,
                    ObservedPatch::default(),
                )
                .await?;
                Ok("failed")
            }
        }
    }

    async fn act(
        &self,
        claim: &Claim,
        action: Action,
        transitional: ObservedStatus,
        cause: Cause,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let (Some(server_id), Some(account)) = (
            i.provider_server_id.as_deref(),
            i.provider_account.as_deref().and_then(|a| self.account(a)),
        ) else {
            let reason = format!(
                "account `{}` is not in the catalog (or its module is not available): cannot {action}",
                i.provider_account.as_deref().unwrap_or("none")
            );
            return self.wait(claim, cause, reason).await;
        };
        let intent = ObservedPatch {
            observed_status: Some(transitional),
            pending: Some(Some((action, None))),
            ..ObservedPatch::default()
        };
        let t = transition(action, cause, Outcome::Started);
        let before = i.observed_status;
        let updated = self.store.record(&claim.lease, &intent, Some(&t)).await?;
        let claim = Claim {
            instance: updated,
            lease: claim.lease.clone(),
        };
        self.send(&claim, &account, action, cause, server_id, Some(before))
            .await
    }

    /// Sends the provider call of `action` and records the answer. A first send that fails
    /// reverts the instance to `revert` (its status before the intent) so the planner issues
    /// the call again after the backoff; a resend (`revert` = `None`) keeps the action in flight.
    async fn send(
        &self,
        claim: &Claim,
        account: &Account,
        action: Action,
        cause: Cause,
        server_id: &str,
        revert: Option<ObservedStatus>,
    ) -> Result<StepResult, StoreError> {
        let resend = revert.is_none();
        let call = Call {
            instance: &claim.instance,
            lease: &claim.lease,
        };
        let p = &account.provider;
        let result = match action {
            Action::Suspend => {
                self.call(account, "power_off", p.power_off(call, server_id, false))
                    .await
            }
            Action::Unsuspend => {
                self.call(account, "power_on", p.power_on(call, server_id))
                    .await
            }
            Action::Reboot => {
                self.call(account, "reboot", p.reboot(call, server_id, false))
                    .await
            }
            Action::Terminate => {
                self.call(account, "delete", p.delete(call, server_id))
                    .await
            }
            // A create or an observation has nothing to send again: keep looking.
            _ => {
                let patch = ObservedPatch {
                    next_check: Some(NextCheck::After(account.poll)),
                    ..ObservedPatch::default()
                };
                self.finish(claim, patch, None).await?;
                return Ok("in_flight");
            }
        };
        match result {
            Ok(accepted) => {
                let mut t = transition(action, cause, Outcome::Succeeded);
                t.details = json!({"action_id": accepted.action_id, "resent": resend});
                merge(&mut t.details, accepted.details);
                let patch = ObservedPatch {
                    pending: Some(Some((action, accepted.action_id))),
                    attempts: Some(0),
                    last_error: Some(None),
                    next_check: Some(NextCheck::After(account.poll)),
                    ..ObservedPatch::default()
                };
                self.finish(claim, patch, Some(t)).await?;
                Ok("progressed")
            }
            Err(e) if e.class == ErrorClass::NotFound && action == Action::Terminate => {
                self.done(claim, action, cause, ObservedStatus::Terminated, None)
                    .await
            }
            Err(e) if e.class == ErrorClass::NotFound => self.lost(claim, action, server_id).await,
            Err(e) => {
                // Calls are idempotent: if this one was applied after all, sending it again
                // does no harm.
                let patch = match revert {
                    Some(status) => ObservedPatch {
                        observed_status: Some(status),
                        pending: Some(None),
                        ..ObservedPatch::default()
                    },
                    None => ObservedPatch::default(),
                };
                self.provider_failed(claim, action, cause, e, patch).await
            }
        }
    }
}

/// Adds a module's transition details to the executor's.
fn merge(details: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(d), serde_json::Value::Object(extra)) = (details.as_object_mut(), extra) {
        d.extend(extra);
    }
}

/// Whether an instance's desired status is met (used by the demo and tests).
pub fn desired_met(i: &Instance) -> bool {
    i.is_converged()
        || (i.desired_status == DesiredStatus::Terminated
            && i.observed_status == ObservedStatus::Terminated)
}
