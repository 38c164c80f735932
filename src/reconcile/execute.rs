//! The executor: performs one step for one claimed instance, deciding nothing itself.
//!
//! claim → [`plan`] → record the intent → call the provider → [`decide`](super::decide) →
//! record. Intent before effect: before every provider call the intent is committed
//! (observed status, action in flight, a `started` transition); then the call; then the
//! decision about its answer, with its transition, releasing the lease and setting the next
//! check. Every time compared is the database's clock at the claim ([`Claim::now`]).

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::decide::{self, Attempt, Context, Decision, Look, Next, StepResult, Timing};
use super::plan::{plan, product_check, ProductCheck, SettleTiming, Step};
use super::resize::{settle_resize, ResizeMove, ResizeState, ResizeTarget};
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::provider::account::{unavailable, Account, Accounts};
use crate::provider::limit::{Reserved, TooMany};
use crate::provider::view::Look as Listed;
use crate::provider::{
    Accepted, Call, CreateRequest, ErrorClass, Policy, Progress, ProviderError, Server,
};
use crate::secrets::Keyring;
use crate::store::{
    Action, Claim, DesiredStatus, Instance, NextCheck, SqlStore, Store, StoreError,
};

/// Performs steps; shared by every worker of a daemon.
pub struct Executor {
    store: SqlStore,
    catalog: watch::Receiver<Arc<Catalog>>,
    accounts: Arc<RwLock<Arc<Accounts>>>,
    keyring: Arc<Keyring>,
    metrics: Arc<Metrics>,
    timing: Timing,
    wake: Arc<Notify>,
    /// Jitter for backoffs (xorshift), seeded per process so that daemons spread apart.
    rng: Mutex<u64>,
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
        let seed = u64::from(std::process::id()) ^ (chrono::Utc::now().timestamp_micros() as u64);
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

    fn resolve(&self, next: Next) -> NextCheck {
        match next {
            Next::Now => NextCheck::Now,
            Next::After(d) => NextCheck::After(d),
            Next::Backoff(n) => NextCheck::After(self.timing.backoff(n).mul_f64(self.jitter())),
            Next::Idle => NextCheck::Never,
        }
    }

    /// Performs one step for a claimed instance and gives the lease back. Never panics on bad
    /// data; every failure is recorded on the instance or logged.
    pub async fn step(&self, claim: Claim) -> StepResult {
        let started = std::time::Instant::now();
        // The planned step's name, as `run` plans it (none when it stops before planning).
        let mut action = "none";
        let result = match self.run(&claim, &mut action).await {
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
                let attempt =
                    u32::try_from(claim.instance.attempts.saturating_add(1)).unwrap_or(u32::MAX);
                let retry = self.resolve(Next::Backoff(attempt));
                if let Err(e) = self.store.release(&claim.lease, retry).await {
                    tracing::warn!(instance = claim.instance.id, error = %e, "could not give the lease back; it will expire");
                }
                "store_error"
            }
        };
        self.metrics.reconcile(result);
        self.metrics.step(action, started.elapsed().as_secs_f64());
        result
    }

    /// Records a decision as the step's last write, giving the lease back.
    async fn apply(&self, claim: &Claim, d: Decision) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let mut patch = d.patch;
        if let Some(password) = &d.seal {
            patch.credentials = Some(Some(self.keyring.seal(password, &i.secret_context())));
        }
        patch.next_check = Some(self.resolve(d.next));
        patch.release_lease = true;
        if let Some(t) = &d.transition {
            match d.result {
                "failed" | "lost" => {
                    tracing::error!(instance = i.id, action = %t.action, reason = ?patch.status_reason.as_ref().and_then(Option::as_ref), "a person must look")
                }
                "error" => {
                    tracing::warn!(instance = i.id, action = %t.action, error = ?t.error, next = ?d.next, "provider call failed")
                }
                "waiting" => tracing::info!(instance = i.id, reason = ?t.error, "waiting"),
                _ => {
                    tracing::debug!(instance = i.id, action = %t.action, outcome = %t.outcome, "recorded")
                }
            }
        }
        self.store
            .record(&claim.lease, &patch, d.transition.as_ref())
            .await?;
        if let (true, Some(t)) = (d.result == "converged", &d.transition) {
            if t.outcome == crate::store::Outcome::Succeeded {
                let took = (chrono::Utc::now() - i.desired_changed_at).as_seconds_f64();
                self.metrics.converged(t.action.as_str(), took);
            }
        }
        if d.next == Next::Now {
            self.wake.notify_one();
        }
        Ok(d.result)
    }

    /// What the decisions of a step on `claim` are made from: the claim's database clock and
    /// the policy of `account` (if it can be driven).
    fn context<'a>(
        &self,
        claim: &'a Claim,
        account: Option<&Account>,
        product: &'a ProductCheck,
    ) -> Context<'a> {
        Context {
            instance: &claim.instance,
            generation: claim.lease.desired_generation,
            now: claim.now,
            policy: account.map_or_else(Policy::default, |a| a.policy),
            timing: self.timing,
            product,
        }
    }

    async fn run(
        &self,
        claim: &Claim,
        planned: &mut &'static str,
    ) -> Result<StepResult, StoreError> {
        // Holds placed or lifted since the last look are recorded first, each a transition.
        let noted;
        let claim = if claim.instance.holds == claim.instance.holds_seen {
            claim
        } else {
            let instance = self.store.note_holds(&claim.lease, &claim.instance).await?;
            noted = Claim {
                instance,
                ..claim.clone()
            };
            &noted
        };
        let i = &claim.instance;
        let catalog = self.catalog.borrow().clone();
        let product = product_check(&catalog, i);
        let step = plan(i, &product);
        *planned = step.label();
        tracing::debug!(step = %step.describe(), "planned");
        let account = i.provider_account.as_deref().and_then(|a| self.account(a));
        let cx = self.context(claim, account.as_deref(), &product);
        let action = match step {
            Step::Create => return self.create(claim, &catalog, &product).await,
            Step::Claim => return self.claim_server(claim, &cx, account).await,
            Step::Poll(action) => return self.poll(claim, &cx, account, action).await,
            Step::Suspend => Action::Suspend,
            Step::Unsuspend => Action::Unsuspend,
            Step::Reboot => Action::Reboot,
            Step::Terminate => Action::Terminate,
            Step::Resize => Action::Resize,
            Step::Reinstall => Action::Reinstall,
            Step::Converged | Step::Wait(_) | Step::Idle(_) | Step::Forget | Step::SkipReboot => {
                let d = decide::quiet(&cx, &step).unwrap_or_else(|| {
                    decide::wait(&cx, format!("no decision for `{}`", step.describe()))
                });
                return self.apply(claim, d).await;
            }
        };
        let (Some(server_id), Some(account)) = (i.provider_server_id.as_deref(), account) else {
            let reason = format!(
                "account `{}` is not in the catalog (or its module is not available): cannot {action}",
                i.provider_account.as_deref().unwrap_or("none")
            );
            return self.apply(claim, decide::wait(&cx, reason)).await;
        };
        // Never touch a server that is not the instance's own: look at it first.
        let call = Call {
            instance: i,
            lease: &claim.lease,
        };
        let owner = self
            .call(&account, "get", account.provider.get(call, server_id))
            .await;
        let server = owner.as_ref().ok().and_then(Option::clone);
        if let Some(d) = decide::owned(&cx, action, owner, server_id) {
            return self.apply(claim, d).await;
        }
        match (action, server) {
            (Action::Resize, Some(server)) => {
                return self
                    .resize_start(claim, &cx, &catalog, &account, &server)
                    .await
            }
            (Action::Reinstall, _) => {
                return self.reinstall_start(claim, &cx, &catalog, &account).await
            }
            _ => {}
        }
        // Take the budget before the intent: a step that waits is dropped harmlessly at
        // shutdown, and an intent is followed by its call at once.
        let paid = self.budget(&account).await;
        let (intent, t) = decide::intent(&cx, action);
        let updated = self.store.record(&claim.lease, &intent, Some(&t)).await?;
        let answer = self
            .send(&account, &updated, claim, action, false, Some(paid))
            .await;
        let cx = Context {
            instance: &updated,
            ..cx
        };
        let before = i.observed_status;
        let d = decide::sent(&cx, action, Attempt::First { before }, answer, server_id);
        self.apply(claim, d).await
    }

    async fn create(
        &self,
        claim: &Claim,
        catalog: &Catalog,
        product: &ProductCheck,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let p = catalog.product(&i.product_id);
        let account_id = p.map(|p| p.provisioning.account.as_str());
        let account = account_id.and_then(|a| self.account(a));
        let cx = self.context(claim, account.as_deref(), product);
        let (Some(p), Some(account_id)) = (p, account_id) else {
            let reason = format!("unknown product `{}`", i.product_id);
            return self.apply(claim, decide::wait(&cx, reason)).await;
        };
        let Some(account) = account else {
            let reason = unavailable(catalog, account_id).unwrap_or_else(|| {
                format!("account `{account_id}` cannot be driven: see the daemon's log")
            });
            return self.apply(claim, decide::wait(&cx, reason)).await;
        };
        let request = CreateRequest::new(i, p);
        let (intent, t) = decide::create_intent(&cx, account_id, &p.revision.0, &request);
        let stock = match product {
            ProductCheck::Sellable { stock } => *stock,
            ProductCheck::Blocked(_) => None,
        };
        let paid = self.budget(&account).await;
        let Some(updated) = self
            .store
            .begin_create(&claim.lease, stock, &intent, &t)
            .await?
        else {
            let reason = format!(
                "out of stock: all {} servers of product `{}` are taken",
                stock.unwrap_or(0),
                p.id
            );
            return self.apply(claim, decide::wait(&cx, reason)).await;
        };
        let call = Call {
            instance: &updated,
            lease: &claim.lease,
        };
        let answer = self
            .paid_call(
                &account,
                "create",
                paid,
                account.provider.create(call, &request),
            )
            .await;
        let cx = Context {
            instance: &updated,
            ..cx
        };
        self.apply(claim, decide::created(&cx, answer)).await
    }

    /// Marks a server an admin attached (import, adopt) as the instance's own, unless it
    /// carries the mark of another live instance (never taken over).
    async fn claim_server(
        &self,
        claim: &Claim,
        cx: &Context<'_>,
        account: Option<Arc<Account>>,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let (Some(server_id), Some(account)) = (i.provider_server_id.as_deref(), account) else {
            let reason = format!(
                "account `{}` is not in the catalog (or its module is not available): the server cannot be marked as ours",
                i.provider_account.as_deref().unwrap_or("none")
            );
            return self.apply(claim, decide::wait(cx, reason)).await;
        };
        let call = Call {
            instance: i,
            lease: &claim.lease,
        };
        let p = &account.provider;
        let looked = self.call(&account, "get", p.get(call, server_id)).await;
        let marked_for = looked
            .as_ref()
            .ok()
            .and_then(Option::as_ref)
            .and_then(|s| s.instance_id)
            .filter(|other| *other != i.id);
        let rival = match marked_for {
            Some(other) => self
                .store
                .instance(other)
                .await?
                .filter(|o| o.observed_status != crate::store::ObservedStatus::Terminated)
                .map(|o| o.id),
            None => None,
        };
        if let Some(d) = decide::claimable(cx, looked, rival, server_id) {
            return self.apply(claim, d).await;
        }
        let paid = self.budget(&account).await;
        let answer = self
            .paid_call(&account, "claim", paid, p.claim(call, server_id))
            .await;
        self.apply(claim, decide::claimed(cx, answer, server_id))
            .await
    }

    async fn poll(
        &self,
        claim: &Claim,
        cx: &Context<'_>,
        account: Option<Arc<Account>>,
        action: Action,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let Some(account) = account else {
            let reason = format!(
                "account `{}` is not in the catalog (or its module is not available): the server cannot be looked at",
                i.provider_account.as_deref().unwrap_or("none")
            );
            return self
                .apply(claim, decide::unreachable(cx, action, reason))
                .await;
        };
        let call = Call {
            instance: i,
            lease: &claim.lease,
        };
        let p = &account.provider;
        let Some(server_id) = i.provider_server_id.as_deref() else {
            let answer = self.call(&account, "find", p.find(call)).await;
            return self.apply(claim, decide::found(cx, answer)).await;
        };
        let followed = i.pending.as_ref().and_then(|p| p.action_id.as_deref());
        match (action, followed) {
            (Action::Resize, _) => return self.resize_poll(claim, cx, &account, server_id).await,
            (Action::Reinstall, None) => {
                return self.reinstall_recover(claim, cx, &account, server_id).await
            }
            _ => {}
        }
        let look = match followed.filter(|_| p.follows(action)) {
            Some(action_id) => {
                let answer = self
                    .call(&account, "follow", p.follow(call, action_id))
                    .await;
                decide::followed(cx, action, answer, action_id, p.module().as_str())
            }
            None => {
                let answer = self.look(claim, &account, server_id).await;
                decide::looked(cx, action, answer, server_id)
            }
        };
        let d = match look {
            Look::Decided(d) => *d,
            Look::Send(attempt) => {
                let answer = self
                    .send(&account, i, claim, action, attempt == Attempt::Hard, None)
                    .await;
                decide::sent(cx, action, attempt, answer, server_id)
            }
        };
        self.apply(claim, d).await
    }

    /// Starts a change of plan on `server` (the instance's own, just looked at): records the
    /// intent, taking a unit of the new product's stock, then makes the first move.
    async fn resize_start(
        &self,
        claim: &Claim,
        cx: &Context<'_>,
        catalog: &Catalog,
        account: &Account,
        server: &Server,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let Some(target) = ResizeTarget::of(catalog, i) else {
            let reason = format!("product `{}` has no plan to change to", i.product_id);
            return self.apply(claim, decide::wait(cx, reason)).await;
        };
        let stock = match cx.product {
            ProductCheck::Sellable { stock } => *stock,
            ProductCheck::Blocked(_) => None,
        };
        let (intent, t) = decide::resize_intent(cx, &target);
        let Some(updated) = self
            .store
            .begin_create(&claim.lease, stock, &intent, &t)
            .await?
        else {
            let reason = format!(
                "out of stock: all {} servers of product `{}` are taken; the server stays on `{}`",
                stock.unwrap_or(0),
                target.request.product_id,
                target.request.from_product_id
            );
            return self.apply(claim, decide::wait(cx, reason)).await;
        };
        let cx = Context {
            instance: &updated,
            ..*cx
        };
        self.resize_move(claim, &cx, account, &target, Some(server), true)
            .await
    }

    /// Looks at a change of plan in flight and makes its next move.
    async fn resize_poll(
        &self,
        claim: &Claim,
        cx: &Context<'_>,
        account: &Account,
        server_id: &str,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let catalog = self.catalog.borrow().clone();
        let Some(target) = ResizeTarget::of(&catalog, i) else {
            let reason = format!(
                "product `{}` is gone from the catalog (or has no plan) while the server changes to it",
                i.product_id
            );
            return self.apply(claim, decide::wait(cx, reason)).await;
        };
        let p = &account.provider;
        let call = Call {
            instance: i,
            lease: &claim.lease,
        };
        let change = i.pending.as_ref().and_then(|p| p.action_id.as_deref());
        if let Some(action_id) = change.filter(|_| p.follows(Action::Resize)) {
            match self
                .call(account, "follow", p.follow(call, action_id))
                .await
            {
                Ok(Progress::Running) => return self.apply(claim, decide::in_flight(cx)).await,
                Ok(Progress::Failed(message)) => {
                    let e = ProviderError::new(
                        ErrorClass::Invalid,
                        format!("{} action {action_id} failed: {message}", p.module()),
                    );
                    return self.apply(claim, decide::resize_failed(cx, &e)).await;
                }
                Ok(Progress::Succeeded) => {}
                Err(e) => {
                    let d = decide::failed(cx, Action::Resize, &e, None);
                    return self.apply(claim, d).await;
                }
            }
        }
        let server = match self.look(claim, account, server_id).await {
            Ok(s) => s,
            Err(e) if e.class == ErrorClass::NotFound => None,
            Err(e) => {
                let d = decide::failed(cx, Action::Resize, &e, None);
                return self.apply(claim, d).await;
            }
        };
        if let Some(s) = server.as_ref().filter(|s| s.instance_id != Some(i.id)) {
            let d = match decide::owned(cx, Action::Resize, Ok(Some(s.clone())), server_id) {
                Some(d) => d,
                None => decide::in_flight(cx),
            };
            return self.apply(claim, d).await;
        }
        self.resize_move(claim, cx, account, &target, server.as_ref(), false)
            .await
    }

    /// Decides the next move of a change of plan from `server` and makes it.
    async fn resize_move(
        &self,
        claim: &Claim,
        cx: &Context<'_>,
        account: &Account,
        target: &ResizeTarget,
        server: Option<&Server>,
        first: bool,
    ) -> Result<StepResult, StoreError> {
        let i = cx.instance;
        let p = &account.provider;
        let pending = i.pending.as_ref();
        let state = ResizeState {
            server: server.map(|s| (s.state, s.plan.as_deref())),
            target: &target.request.plan,
            want_running: i.effective_desired() == DesiredStatus::Active,
            needs_off: p.resize_needs_off(),
            change_sent: pending.is_some_and(|p| p.action_id.is_some()),
            hard_sent: pending.is_some_and(|p| p.hard),
            first,
            elapsed: cx.elapsed(),
        };
        let server_id = i.provider_server_id.as_deref().unwrap_or_default();
        let mv = settle_resize(&state, &SettleTiming::from(&cx.policy));
        let call = Call {
            instance: i,
            lease: &claim.lease,
        };
        let answer = match mv {
            ResizeMove::Done(status) => {
                let d = decide::resized(cx, target, status, server);
                return self.apply(claim, d).await;
            }
            ResizeMove::Continue => return self.apply(claim, decide::in_flight(cx)).await,
            ResizeMove::Missing => {
                return self
                    .apply(claim, decide::lost(Action::Resize, server_id))
                    .await
            }
            ResizeMove::PowerOff { hard } => {
                let name = if hard { "power_off_hard" } else { "power_off" };
                self.call(account, name, p.power_off(call, server_id, hard))
                    .await
            }
            ResizeMove::PowerOn => {
                self.call(account, "power_on", p.power_on(call, server_id))
                    .await
            }
            ResizeMove::Change => {
                self.call(
                    account,
                    "resize",
                    p.resize(call, server_id, &target.request),
                )
                .await
            }
        };
        let d = decide::resize_sent(cx, mv, answer, target);
        self.apply(claim, d).await
    }

    /// Sends a reinstall: intent first, then the call.
    async fn reinstall_start(
        &self,
        claim: &Claim,
        cx: &Context<'_>,
        catalog: &Catalog,
        account: &Account,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let request = match rebuild_request(catalog, i) {
            Ok(r) => r,
            Err(reason) => return self.apply(claim, decide::wait(cx, reason)).await,
        };
        let paid = self.budget(account).await;
        let (intent, t) = decide::rebuild_intent(cx, &request);
        let updated = self.store.record(&claim.lease, &intent, Some(&t)).await?;
        let call = Call {
            instance: &updated,
            lease: &claim.lease,
        };
        let server_id = i.provider_server_id.as_deref().unwrap_or_default();
        let answer = self
            .paid_call(
                account,
                "rebuild",
                paid,
                account.provider.rebuild(call, server_id, &request),
            )
            .await;
        let cx = Context {
            instance: &updated,
            ..*cx
        };
        self.apply(claim, decide::rebuilt(&cx, answer)).await
    }

    /// A reinstall in flight without the provider's answer (a crash, a timeout): follow the
    /// provider's record of it if it was started, else send it now. Never two reinstalls.
    async fn reinstall_recover(
        &self,
        claim: &Claim,
        cx: &Context<'_>,
        account: &Account,
        server_id: &str,
    ) -> Result<StepResult, StoreError> {
        let i = &claim.instance;
        let p = &account.provider;
        let call = Call {
            instance: i,
            lease: &claim.lease,
        };
        let since = i.pending_since.unwrap_or(i.updated_at);
        match self
            .call(
                account,
                "find_rebuild",
                p.find_rebuild(call, server_id, since),
            )
            .await
        {
            Ok(Some(action_id)) => {
                self.apply(claim, decide::rebuild_found(cx, action_id))
                    .await
            }
            Ok(None) => {
                let catalog = self.catalog.borrow().clone();
                let request = match rebuild_request(&catalog, i) {
                    Ok(r) => r,
                    Err(reason) => return self.apply(claim, decide::wait(cx, reason)).await,
                };
                let answer = self
                    .call(account, "rebuild", p.rebuild(call, server_id, &request))
                    .await;
                self.apply(claim, decide::rebuilt(cx, answer)).await
            }
            Err(e) => {
                let d = decide::failed(cx, Action::Reinstall, &e, None);
                self.apply(claim, d).await
            }
        }
    }

    /// Sends the call of `action` (hard: the fallback after a graceful one timed out), its
    /// first request `paid` for already when the step took the token before its intent.
    async fn send(
        &self,
        account: &Account,
        instance: &Instance,
        claim: &Claim,
        action: Action,
        hard: bool,
        paid: Option<Reserved>,
    ) -> crate::provider::Result<Accepted> {
        let call = Call {
            instance,
            lease: &claim.lease,
        };
        let Some(server_id) = instance.provider_server_id.as_deref() else {
            return Err(ProviderError::new(
                ErrorClass::Invalid,
                "no server recorded",
            ));
        };
        let p = &account.provider;
        let (name, fut) = match (action, hard) {
            (Action::Suspend, false) => ("power_off", p.power_off(call, server_id, false)),
            (Action::Suspend, true) => ("power_off_hard", p.power_off(call, server_id, true)),
            (Action::Unsuspend, _) => ("power_on", p.power_on(call, server_id)),
            (Action::Reboot, false) => ("reboot", p.reboot(call, server_id, false)),
            (Action::Reboot, true) => ("reboot_hard", p.reboot(call, server_id, true)),
            (Action::Terminate, _) => ("delete", p.delete(call, server_id)),
            (other, _) => {
                return Err(ProviderError::new(
                    ErrorClass::Invalid,
                    format!("{other} has no call to send"),
                ))
            }
        };
        match paid {
            Some(paid) => self.paid_call(account, name, paid, fut).await,
            None => self.call(account, name, fut).await,
        }
    }

    /// Looks at a server with an action in flight: through the account's shared listing when
    /// that is cheaper, else by id.
    async fn look(
        &self,
        claim: &Claim,
        account: &Account,
        server_id: &str,
    ) -> crate::provider::Result<Option<Server>> {
        let i = &claim.instance;
        let call = Call {
            instance: i,
            lease: &claim.lease,
        };
        let p = &account.provider;
        if p.lists_servers() {
            let since = i.pending_since.unwrap_or(i.updated_at);
            let list = || self.call(account, "list", p.list_owned());
            let look = account
                .view
                .look(
                    server_id,
                    since,
                    claim.now,
                    account.policy.poll,
                    list,
                    |n| p.list_requests(n),
                )
                .await?;
            if let Listed::Listed(server) = look {
                return Ok(Some(server));
            }
        }
        self.call(account, "get", p.get(call, server_id)).await
    }

    /// Takes the token of the next call's first request: before the intent is recorded, so
    /// that a step waiting for budget has recorded nothing (and is dropped harmlessly at
    /// shutdown), and the intent is followed by its request at once.
    async fn budget(&self, account: &Account) -> Reserved {
        let (reserved, waited) = account.limiter.reserve().await;
        if waited {
            self.metrics.rate_limit_wait(&account.id);
        }
        reserved
    }

    /// Makes a provider call within the account's budget, counting it.
    async fn call<T>(
        &self,
        account: &Account,
        name: &str,
        fut: impl std::future::Future<Output = crate::provider::Result<T>>,
    ) -> crate::provider::Result<T> {
        let started = std::time::Instant::now();
        if account.policy.meters_requests {
            // The module's HTTP client takes a token per request; count the wait here.
            if account.limiter.next_slot() > Duration::ZERO {
                self.metrics.rate_limit_wait(&account.id);
            }
        } else if account.limiter.acquire().await {
            self.metrics.rate_limit_wait(&account.id);
        }
        self.answered(account, name, started, fut.await)
    }

    /// Makes a provider call whose first request `paid` pays for.
    async fn paid_call<T>(
        &self,
        account: &Account,
        name: &str,
        paid: Reserved,
        fut: impl std::future::Future<Output = crate::provider::Result<T>>,
    ) -> crate::provider::Result<T> {
        let started = std::time::Instant::now();
        let result = if account.policy.meters_requests {
            paid.metered(fut).await
        } else {
            paid.spend();
            fut.await
        };
        self.answered(account, name, started, result)
    }

    /// Counts a call's answer and feeds a 429 to the budget of a module that does not meter
    /// its own requests.
    fn answered<T>(
        &self,
        account: &Account,
        name: &str,
        started: std::time::Instant,
        result: crate::provider::Result<T>,
    ) -> crate::provider::Result<T> {
        let metered = account.policy.meters_requests;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.class.as_str(),
        };
        self.metrics
            .provider_request(&account.id, name, outcome, started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => {
                self.metrics.provider_call(&account.id, name, "ok");
                if !metered {
                    account.limiter.answered();
                }
            }
            Err(e) => {
                self.metrics
                    .provider_call(&account.id, name, e.class.as_str());
                if e.class == ErrorClass::Throttled && !metered {
                    account.limiter.too_many(TooMany {
                        retry_after: e.retry_after,
                        ..TooMany::default()
                    });
                }
            }
        }
        result
    }
}

/// What a reinstall of `i` installs (its product's image of the OS asked for), or why nothing
/// can be.
fn rebuild_request(catalog: &Catalog, i: &Instance) -> Result<CreateRequest, String> {
    catalog
        .product(&i.product_id)
        .map(|p| CreateRequest::new(i, p))
        .ok_or_else(|| format!("reinstall: unknown product `{}`", i.product_id))
}
