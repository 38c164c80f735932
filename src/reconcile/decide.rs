//! What follows a provider's answer: pure decisions, no I/O, no clock reads, no randomness.
//!
//! [`plan`](super::plan::plan) makes the first decision of a step (what to do). Everything
//! decided after that lives here, from the instance, the provider's answer, the database's
//! `now` and the module's [`Policy`]: what a create answer means, what a followed action's
//! outcome means and when to escalate to a hard power-off or reset, adoption by label, "not
//! found" while terminating or otherwise, the error policy and its failure budget, drift found
//! by a resync, and when to look next. Each returns a [`Decision`] — the observed-state patch,
//! the transition to append, the [`Next`] check — that the executor records as it is.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::plan::{plan, settle, ProductCheck, SettleTiming, Settled, Step};
use crate::provider::{
    Accepted, CreateRequest, Created, ErrorClass, Policy, PowerState, Progress, ProviderError,
    Server, INSTANCE_LABEL,
};
use crate::secrets::SecretString;
use crate::store::{
    Action, Cause, DesiredStatus, Instance, NewTransition, ObservedPatch, ObservedStatus, Outcome,
    Pending,
};

/// When to look at an instance next: built only as one of these.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// At once: there is more to do.
    Now,
    /// After this long.
    After(Duration),
    /// After the backoff of the n-th failure in a row (the executor spreads it with jitter).
    Backoff(u32),
    /// Not until something changes it (billing, a person, a catalog reload).
    Idle,
}

/// Daemon-wide scheduling (what modules do not decide).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Next look at a converged instance (spread by ±25 % per instance).
    pub converged: Duration,
    /// Next look at an instance waiting (out of stock, unknown product).
    pub waiting: Duration,
    /// First retry delay after an error.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Errors that retrying cannot fix are tried this many times before `failed`.
    pub failure_budget: i64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            converged: Duration::from_secs(600),
            waiting: Duration::from_secs(60),
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(600),
            failure_budget: 5,
        }
    }
}

impl Timing {
    /// The delay after the `attempt`-th failure in a row, before jitter: doubling from
    /// `backoff_base`, capped at `backoff_cap`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.clamp(1, 30) - 1;
        let delay = self.backoff_base.as_secs_f64() * 2f64.powi(exp as i32);
        Duration::from_secs_f64(delay.min(self.backoff_cap.as_secs_f64()))
    }
}

/// The result a step is counted under in metrics.
pub type StepResult = &'static str;

/// What the executor records after an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The observed-state patch (its `next_check` is set from [`Decision::next`]).
    pub patch: ObservedPatch,
    /// The transition to append, if the step changed or tried something.
    pub transition: Option<NewTransition>,
    /// When to look next.
    pub next: Next,
    /// A root password to seal into the instance's credentials (sealing draws a random
    /// nonce, so the executor does it).
    pub seal: Option<SecretString>,
    /// The metric label.
    pub result: StepResult,
}

impl Decision {
    fn new(
        patch: ObservedPatch,
        transition: Option<NewTransition>,
        next: Next,
        result: StepResult,
    ) -> Decision {
        Decision {
            patch,
            transition,
            next,
            seal: None,
            result,
        }
    }
}

/// What a decision is made from, besides the answer.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The instance as claimed.
    pub instance: &'a Instance,
    /// The desired generation the lease acts on.
    pub generation: i64,
    /// The database's clock at the claim (stored times are compared with this only).
    pub now: DateTime<Utc>,
    /// The module's policy.
    pub policy: Policy,
    /// Daemon-wide scheduling.
    pub timing: Timing,
    /// What the catalog allows for the instance.
    pub product: &'a ProductCheck,
}

impl Context<'_> {
    /// Why this step happens.
    pub fn cause(&self) -> Cause {
        let i = self.instance;
        if i.attempts > 0 {
            Cause::Retry
        } else if i.observed_generation < i.desired_generation {
            Cause::DesiredChange
        } else {
            Cause::Poll
        }
    }

    /// How long the action in flight has been under way.
    pub fn elapsed(&self) -> Duration {
        let i = self.instance;
        let since = i.pending_since.unwrap_or(i.updated_at);
        (self.now - since).to_std().unwrap_or_default()
    }

    /// A transition of this step. One made for billing's change carries what billing asked
    /// for (and its reason), so the log shows who wanted what.
    fn transition(&self, action: Action, outcome: Outcome) -> NewTransition {
        let cause = self.cause();
        let mut t = NewTransition::new(action, cause, outcome);
        if cause == Cause::DesiredChange {
            let i = self.instance;
            if let Value::Object(details) = &mut t.details {
                details.insert("desired".into(), i.effective_desired().as_str().into());
                if let Some(reason) = &i.suspend_reason {
                    details.insert("reason".into(), reason.as_str().into());
                }
                if !i.holds.is_empty() {
                    details.insert("holds".into(), i.holds.clone().into());
                }
            }
        }
        t
    }
}

/// A call for an action: its first send, a resend after the action seemed stuck, or the hard
/// fallback after a graceful one timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The first send; a failure reverts the instance to `before`.
    First {
        /// The observed status before the intent.
        before: ObservedStatus,
    },
    /// The action took too long: send it again (every call is idempotent).
    Resend,
    /// The graceful shutdown or reboot took too long: power off or reset.
    Hard,
}

/// What to do after looking at an action in flight.
#[derive(Debug, Clone, PartialEq)]
pub enum Look {
    /// Record this.
    Decided(Box<Decision>),
    /// Send the action's call again ([`Attempt::Resend`] or [`Attempt::Hard`]), then decide
    /// with [`sent`].
    Send(Attempt),
}

fn decided(d: Decision) -> Look {
    Look::Decided(Box::new(d))
}

/// A spread factor in [0.75, 1.25) fixed per instance, so converged instances do not come due
/// together (deterministic: the same instance always gets the same spread).
fn spread(id: i64) -> f64 {
    let h = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    0.75 + 0.5 * ((h >> 11) as f64 / (1u64 << 53) as f64)
}

fn converged_next(cx: &Context<'_>) -> Next {
    Next::After(cx.timing.converged.mul_f64(spread(cx.instance.id)))
}

/// The decision for a step that calls nothing; `None` for steps that call the provider.
pub fn quiet(cx: &Context<'_>, step: &Step) -> Option<Decision> {
    let i = cx.instance;
    Some(match step {
        Step::Converged => Decision::new(
            ObservedPatch {
                observed_generation: Some(cx.generation),
                // A reason for waiting no longer holds (billing took its change back).
                status_reason: i.status_reason.is_some().then_some(None),
                ..ObservedPatch::default()
            },
            None,
            converged_next(cx),
            "converged",
        ),
        Step::Idle(_) => Decision::new(ObservedPatch::default(), None, Next::Idle, "idle"),
        Step::Wait(reason) => wait(cx, reason.clone()),
        Step::Forget => {
            let mut t = cx.transition(Action::Terminate, Outcome::Succeeded);
            t.details = json!({"note": "no server existed: nothing to delete"});
            Decision::new(
                ObservedPatch {
                    observed_status: Some(ObservedStatus::Terminated),
                    status_reason: Some(None),
                    observed_generation: Some(cx.generation),
                    ..ObservedPatch::default()
                },
                Some(t),
                Next::Idle,
                "progressed",
            )
        }
        Step::SkipReboot => {
            let mut t = cx.transition(Action::Reboot, Outcome::Deferred);
            t.error = Some("the server is suspended: the reboot was skipped".into());
            Decision::new(
                ObservedPatch {
                    reboot_handled: Some(i.reboot_requested),
                    ..ObservedPatch::default()
                },
                Some(t),
                Next::Now,
                "progressed",
            )
        }
        Step::Create
        | Step::Poll(_)
        | Step::Suspend
        | Step::Unsuspend
        | Step::Reboot
        | Step::Terminate
        | Step::Resize
        | Step::Reinstall
        | Step::Claim => return None,
    })
}

/// The instance cannot go on now, for `reason`; a transition is written only when the reason
/// changed, so a long wait does not flood the log.
pub fn wait(cx: &Context<'_>, reason: String) -> Decision {
    let changed = cx.instance.status_reason.as_deref() != Some(reason.as_str());
    let t = changed.then(|| {
        let mut t = cx.transition(Action::Wait, Outcome::Deferred);
        t.error = Some(reason.clone());
        t
    });
    Decision::new(
        ObservedPatch {
            status_reason: Some(Some(reason)),
            ..ObservedPatch::default()
        },
        t,
        Next::After(cx.timing.waiting),
        "waiting",
    )
}

/// The account of the instance's server cannot be driven (gone from the catalog, or its
/// credentials missing): a create recorded for it without a server starts over; anything
/// else waits with `reason`.
pub fn unreachable(cx: &Context<'_>, action: Action, reason: String) -> Decision {
    if action == Action::Create && cx.instance.provider_server_id.is_none() {
        return Decision::new(
            ObservedPatch {
                observed_status: Some(ObservedStatus::Pending),
                pending: Some(None),
                ..ObservedPatch::default()
            },
            None,
            Next::After(cx.timing.waiting),
            "waiting",
        );
    }
    wait(cx, reason)
}

/// The observed status while `action` is under way.
pub fn transitional(action: Action) -> ObservedStatus {
    match action {
        Action::Create => ObservedStatus::Provisioning,
        Action::Suspend => ObservedStatus::Suspending,
        Action::Unsuspend => ObservedStatus::Unsuspending,
        Action::Reboot => ObservedStatus::Rebooting,
        Action::Terminate => ObservedStatus::Terminating,
        Action::Resize => ObservedStatus::Resizing,
        Action::Reinstall => ObservedStatus::Reinstalling,
        _ => ObservedStatus::Pending,
    }
}

/// The intent recorded before the first call of a power or delete `action`.
pub fn intent(cx: &Context<'_>, action: Action) -> (ObservedPatch, NewTransition) {
    (
        ObservedPatch {
            observed_status: Some(transitional(action)),
            pending: Some(Some(Pending::new(action))),
            ..ObservedPatch::default()
        },
        cx.transition(action, Outcome::Started),
    )
}

/// The intent recorded before `request` goes to `account`: the instance pins the product
/// `revision` it is sold under (unless it has one already).
pub fn create_intent(
    cx: &Context<'_>,
    account: &str,
    revision: &str,
    request: &CreateRequest,
) -> (ObservedPatch, NewTransition) {
    let i = cx.instance;
    let mut t = cx.transition(Action::Create, Outcome::Started);
    t.details = json!({
        "server_name": request.name, "account": account, "location": request.location,
        "os_image": request.os_image, "product_revision": revision,
    });
    (
        ObservedPatch {
            observed_status: Some(ObservedStatus::Provisioning),
            status_reason: Some(None),
            provider_account: Some(Some(account.to_owned())),
            applied_product_id: Some(i.product_id.clone()),
            product_revision: Some(
                i.product_revision
                    .clone()
                    .unwrap_or_else(|| revision.to_owned()),
            ),
            pending: Some(Some(Pending::new(Action::Create))),
            ..ObservedPatch::default()
        },
        t,
    )
}

/// Adds a module's transition details to ours.
fn merge(details: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(d), serde_json::Value::Object(extra)) = (details.as_object_mut(), extra) {
        d.extend(extra);
    }
}

/// The provider accepted a call: follow `pending` from the next poll on; an error streak is
/// over.
fn accepted_for(
    cx: &Context<'_>,
    pending: Pending,
    mut patch: ObservedPatch,
    t: NewTransition,
) -> Decision {
    patch.pending = Some(Some(pending));
    patch.attempts = Some(0);
    patch.last_error = Some(None);
    Decision::new(patch, Some(t), Next::After(cx.policy.poll), "progressed")
}

/// What a create's answer means.
pub fn created(cx: &Context<'_>, answer: Result<Created, ProviderError>) -> Decision {
    match answer {
        Ok(created) => {
            let mut t = cx.transition(Action::Create, Outcome::Succeeded);
            t.details = json!({"server_id": created.server.id, "action_id": created.action_id});
            merge(&mut t.details, created.details);
            let patch = ObservedPatch {
                provider_server_id: Some(Some(created.server.id.clone())),
                ipv4: created.server.ipv4.clone().map(Some),
                ipv6: created.server.ipv6.clone().map(Some),
                ..ObservedPatch::default()
            };
            // A server that answers the create already running, with this instance's label,
            // is done: no step to look at it again.
            if created.server.state == PowerState::Running
                && created.server.instance_id == Some(cx.instance.id)
            {
                let mut d = done_with(
                    cx,
                    Action::Create,
                    ObservedStatus::Active,
                    Some(&created.server),
                    patch,
                );
                d.transition = Some(t);
                if created.root_password.is_some() {
                    d.seal = created.root_password;
                }
                return d;
            }
            let pending = Pending {
                action: Action::Create,
                action_id: created.action_id,
                hard: false,
            };
            let mut d = accepted_for(cx, pending, patch, t);
            d.seal = created.root_password;
            d
        }
        Err(e) if e.class == ErrorClass::AlreadyExists => {
            // A server with this instance's name exists: ours, from an earlier attempt whose
            // answer was lost. The create stays in flight without a server id, so the next
            // step looks it up by label and adopts it.
            let mut t = NewTransition::new(Action::Create, Cause::Retry, Outcome::Failed);
            t.error = Some(format!("{e}; adopting the existing server"));
            Decision::new(ObservedPatch::default(), Some(t), Next::Now, "adopting")
        }
        // The create may have been applied: it stays in flight, so the next step looks the
        // server up by label before creating again.
        Err(e) if e.class.is_transient() => failed(cx, Action::Create, &e, None),
        // Refused outright: nothing was created.
        Err(e) => failed(cx, Action::Create, &e, Some(ObservedStatus::Pending)),
    }
}

/// What the lookup by label of a create whose outcome is unknown means.
pub fn found(cx: &Context<'_>, answer: Result<Vec<Server>, ProviderError>) -> Decision {
    let i = cx.instance;
    let servers = match answer {
        Ok(s) => s,
        Err(e) => return failed(cx, Action::Adopt, &e, None),
    };
    match servers.as_slice() {
        [] if cx.elapsed() < cx.policy.create_grace => {
            // The provider may not list a server created moments ago yet.
            Decision::new(
                ObservedPatch::default(),
                None,
                Next::After(cx.policy.poll),
                "in_flight",
            )
        }
        [] => {
            // The earlier create never happened: creating again cannot duplicate.
            let mut t = cx.transition(Action::Adopt, Outcome::Failed);
            t.error = Some(
                "no server carries this instance's label: the earlier create did not happen; creating again"
                    .into(),
            );
            Decision::new(
                ObservedPatch {
                    observed_status: Some(ObservedStatus::Pending),
                    pending: Some(None),
                    ..ObservedPatch::default()
                },
                Some(t),
                Next::Now,
                "progressed",
            )
        }
        [server] => {
            let mut t = cx.transition(Action::Adopt, Outcome::Succeeded);
            t.details = json!({"server_id": server.id});
            Decision::new(
                ObservedPatch {
                    provider_server_id: Some(Some(server.id.clone())),
                    ipv4: server.ipv4.clone().map(Some),
                    ipv6: server.ipv6.clone().map(Some),
                    ..ObservedPatch::default()
                },
                Some(t),
                Next::Now,
                "progressed",
            )
        }
        many => {
            let ids: Vec<&str> = many.iter().map(|s| s.id.as_str()).collect();
            let reason = format!(
                "found {} servers labelled {INSTANCE_LABEL}={} ({}): delete all but one at the provider, then `provisioner instances retry {}`",
                many.len(),
                i.id,
                ids.join(", "),
                i.id
            );
            stop(
                ObservedStatus::Failed,
                reason,
                cx.transition(Action::Adopt, Outcome::Failed),
                ObservedPatch::default(),
                "failed",
            )
        }
    }
}

/// Whether the server about to get `action` is the instance's own, by the provider's answer
/// to a look at it: `None` when it is (go ahead). A server carrying another instance's label,
/// or none, is never touched: the instance stops for a person (its recorded server id is
/// wrong). A server that is gone is terminated already, or lost.
pub fn owned(
    cx: &Context<'_>,
    action: Action,
    answer: Result<Option<Server>, ProviderError>,
    server_id: &str,
) -> Option<Decision> {
    match answer {
        Ok(Some(s)) if s.instance_id == Some(cx.instance.id) => None,
        Ok(Some(s)) => Some(foreign(cx, action, &s)),
        Ok(None) => Some(gone(cx, action, server_id)),
        Err(e) if e.class == ErrorClass::NotFound => Some(gone(cx, action, server_id)),
        Err(e) => Some(failed(cx, action, &e, None)),
    }
}

/// Whether a server an admin attached can be marked as the instance's own, by a look at it:
/// `None` when it can. A server marked for another live instance (`rival`) is never taken
/// over; one that is gone leaves the instance lost.
pub fn claimable(
    cx: &Context<'_>,
    answer: Result<Option<Server>, ProviderError>,
    rival: Option<i64>,
    server_id: &str,
) -> Option<Decision> {
    match (answer, rival) {
        (Ok(Some(s)), Some(other)) => {
            let reason = format!(
                "server {} carries the mark of instance {other}, which is live: refusing to take it over; adopt another server, or terminate instance {other} first, then `provisioner instances retry {}`",
                s.id, cx.instance.id
            );
            Some(stop(
                ObservedStatus::Failed,
                reason,
                cx.transition(Action::Adopt, Outcome::Failed),
                ObservedPatch::default(),
                "failed",
            ))
        }
        (Ok(Some(_)), None) => None,
        (Ok(None), _) => Some(lost(Action::Adopt, server_id)),
        (Err(e), _) if e.class == ErrorClass::NotFound => Some(lost(Action::Adopt, server_id)),
        (Err(e), _) => Some(failed(cx, Action::Adopt, &e, None)),
    }
}

/// What the answer to marking an attached server as the instance's own means: from then on
/// the instance is managed like any other.
pub fn claimed(
    cx: &Context<'_>,
    answer: Result<Accepted, ProviderError>,
    server_id: &str,
) -> Decision {
    match answer {
        Ok(accepted) => {
            let mut t = cx.transition(Action::Adopt, Outcome::Succeeded);
            t.details = json!({"server": server_id, "note": "marked as the instance's own"});
            merge(&mut t.details, accepted.details);
            Decision::new(
                ObservedPatch {
                    claim_pending: Some(false),
                    status_reason: Some(None),
                    attempts: Some(0),
                    last_error: Some(None),
                    ..ObservedPatch::default()
                },
                Some(t),
                Next::Now,
                "progressed",
            )
        }
        Err(e) if e.class == ErrorClass::NotFound => lost(Action::Adopt, server_id),
        Err(e) => failed(cx, Action::Adopt, &e, None),
    }
}

/// The server is not the instance's own: refuse, and say why.
fn foreign(cx: &Context<'_>, action: Action, server: &Server) -> Decision {
    let i = cx.instance;
    let carries = server.instance_id.map_or_else(
        || "no provisioner label".to_owned(),
        |other| format!("the label {INSTANCE_LABEL}={other}"),
    );
    let reason = format!(
        "server {} carries {carries}, not this instance's: refusing to {action} it; the recorded provider_server_id is wrong — correct it, then `provisioner instances retry {}`",
        server.id, i.id
    );
    stop(
        ObservedStatus::Failed,
        reason,
        cx.transition(action, Outcome::Failed),
        ObservedPatch::default(),
        "failed",
    )
}

/// The server of `action` is gone: a terminate is done, anything else lost it.
fn gone(cx: &Context<'_>, action: Action, server_id: &str) -> Decision {
    if action == Action::Terminate {
        done(cx, action, ObservedStatus::Terminated, None)
    } else {
        lost(action, server_id)
    }
}

/// What the answer to a power or delete call of `action` means.
pub fn sent(
    cx: &Context<'_>,
    action: Action,
    attempt: Attempt,
    answer: Result<Accepted, ProviderError>,
    server_id: &str,
) -> Decision {
    match answer {
        Ok(accepted) => {
            let hard = attempt == Attempt::Hard;
            let mut t = cx.transition(action, Outcome::Succeeded);
            t.details =
                json!({"action_id": accepted.action_id, "resent": attempt == Attempt::Resend});
            if hard {
                let note = match action {
                    Action::Reboot => "graceful reboot did not finish in time",
                    _ => "graceful shutdown timed out",
                };
                merge(&mut t.details, json!({"hard": true, "note": note}));
            }
            merge(&mut t.details, accepted.details);
            // A hard fallback that the provider gives no action of its own keeps following
            // the graceful one.
            let followed = cx
                .instance
                .pending
                .as_ref()
                .and_then(|p| p.action_id.clone());
            let action_id = if hard {
                accepted.action_id.or(followed)
            } else {
                accepted.action_id
            };
            let pending = Pending {
                action,
                action_id,
                hard,
            };
            accepted_for(cx, pending, ObservedPatch::default(), t)
        }
        Err(e) if e.class == ErrorClass::NotFound => gone(cx, action, server_id),
        // Calls are idempotent: if this one was applied after all, sending it again does no
        // harm. A first send reverts to where it started, so the planner sends it again.
        Err(e) => {
            let revert = match attempt {
                Attempt::First { before } => Some(before),
                Attempt::Resend | Attempt::Hard => None,
            };
            failed(cx, action, &e, revert)
        }
    }
}

/// What a look at the server of `action` in flight means (the server's power state shows
/// whether the action is done).
pub fn looked(
    cx: &Context<'_>,
    action: Action,
    answer: Result<Option<Server>, ProviderError>,
    server_id: &str,
) -> Look {
    let server = match answer {
        Ok(s) => s,
        Err(e) if e.class == ErrorClass::NotFound => None,
        Err(e) => return decided(failed(cx, action, &e, None)),
    };
    // A server attached by an admin carries no mark of the instance until it is claimed;
    // looking at it is allowed meanwhile.
    let attached = cx.instance.claim_pending && action == Action::Observe;
    if let Some(s) = server
        .as_ref()
        .filter(|s| s.instance_id != Some(cx.instance.id) && !attached)
    {
        return decided(foreign(cx, action, s));
    }
    if action == Action::Create
        && server.is_none()
        && cx.policy.withdraws_creates
        && cx.instance.desired_status == DesiredStatus::Terminated
    {
        // The module withdrew the create billing cancelled: no server was ever built.
        return decided(done(
            cx,
            Action::Terminate,
            ObservedStatus::Terminated,
            None,
        ));
    }
    let hard_sent = cx.instance.pending.as_ref().is_some_and(|p| p.hard);
    let timing = SettleTiming::from(&cx.policy);
    match settle(
        action,
        server.as_ref().map(|s| s.state),
        cx.elapsed(),
        hard_sent,
        &timing,
    ) {
        Settled::Done(status) => decided(done(cx, action, status, server.as_ref())),
        Settled::Continue => decided(in_flight(cx)),
        Settled::HardPowerOff => Look::Send(Attempt::Hard),
        Settled::Resend if resendable(action) => Look::Send(Attempt::Resend),
        // A create or an observation has nothing to send again: keep looking.
        Settled::Resend => decided(in_flight(cx)),
        Settled::Missing => decided(lost(action, server_id)),
    }
}

fn resendable(action: Action) -> bool {
    matches!(
        action,
        Action::Suspend | Action::Unsuspend | Action::Reboot | Action::Terminate
    )
}

/// What the state of the provider's own action (a cloud reboot, an OVH task) means.
pub fn followed(
    cx: &Context<'_>,
    action: Action,
    answer: Result<Progress, ProviderError>,
    action_id: &str,
    module: &str,
) -> Look {
    let progress = match answer {
        Ok(p) => p,
        Err(e) => return decided(failed(cx, action, &e, None)),
    };
    let elapsed = cx.elapsed();
    let hard_sent = cx.instance.pending.as_ref().is_some_and(|p| p.hard);
    let past = |limit: Option<Duration>| limit.is_some_and(|l| elapsed >= l);
    match progress {
        Progress::Succeeded => {
            let status = match action {
                Action::Suspend => ObservedStatus::Suspended,
                Action::Terminate => ObservedStatus::Terminated,
                _ => ObservedStatus::Active,
            };
            decided(done(cx, action, status, None))
        }
        Progress::Failed(message) => {
            // The provider gave up on it: go back to where the action started from, so the
            // planner sends it again after the backoff (or gives up after the budget).
            let before = match action {
                Action::Create => ObservedStatus::Pending,
                Action::Unsuspend => ObservedStatus::Suspended,
                _ => ObservedStatus::Active,
            };
            let e = ProviderError::new(
                ErrorClass::Invalid,
                format!("{module} action {action_id} failed: {message}"),
            );
            decided(failed(cx, action, &e, Some(before)))
        }
        Progress::Running
            if action == Action::Reboot && !hard_sent && past(cx.policy.graceful_timeout) =>
        {
            Look::Send(Attempt::Hard)
        }
        Progress::Running if resendable(action) && past(cx.policy.stuck_timeout) => {
            Look::Send(Attempt::Resend)
        }
        Progress::Running => decided(in_flight(cx)),
    }
}

/// The action is still under way: look again later, the later the older it is.
pub fn in_flight(cx: &Context<'_>) -> Decision {
    let mut patch = ObservedPatch::default();
    if cx.instance.attempts > 0 {
        // The provider answered: an earlier error streak is over.
        patch.attempts = Some(0);
        patch.last_error = Some(None);
    }
    Decision::new(
        patch,
        None,
        Next::After(cx.policy.poll_after(cx.elapsed())),
        "in_flight",
    )
}

/// `action` is done and the instance is now `status`; `server` is what the provider showed.
pub fn done(
    cx: &Context<'_>,
    action: Action,
    status: ObservedStatus,
    server: Option<&Server>,
) -> Decision {
    done_with(cx, action, status, server, ObservedPatch::default())
}

/// [`done`], recording `extra` besides (the product a change of plan moved the server to).
fn done_with(
    cx: &Context<'_>,
    action: Action,
    status: ObservedStatus,
    server: Option<&Server>,
    extra: ObservedPatch,
) -> Decision {
    let i = cx.instance;
    let mut patch = ObservedPatch {
        observed_status: Some(status),
        status_reason: Some(None),
        pending: Some(None),
        attempts: Some(0),
        last_error: Some(None),
        observed_generation: Some(cx.generation),
        ..extra
    };
    if action == Action::Reboot {
        patch.reboot_handled = Some(i.reboot_requested);
    }
    if action == Action::Reinstall {
        patch.reinstall_handled = Some(i.reinstall_requested);
    }
    let mut seal = None;
    if let Some(s) = server {
        if s.ipv4.is_some() {
            patch.ipv4 = Some(s.ipv4.clone());
        }
        if s.ipv6.is_some() {
            patch.ipv6 = Some(s.ipv6.clone());
        }
        if i.credentials.is_none() {
            seal.clone_from(&s.root_password);
        }
    }
    // Look again at once only if the planner has more to do from the new state.
    let mut next_state = i.clone();
    next_state.observed_status = status;
    next_state.pending = None;
    next_state.reboot_handled = patch.reboot_handled.unwrap_or(i.reboot_handled);
    next_state.reinstall_handled = patch.reinstall_handled.unwrap_or(i.reinstall_handled);
    if let Some(p) = &patch.applied_product_id {
        next_state.applied_product_id = Some(p.clone());
    }
    let (next, result) = match plan(&next_state, cx.product) {
        Step::Idle(_) => (Next::Idle, "converged"),
        Step::Converged => (converged_next(cx), "converged"),
        _ => (Next::Now, "progressed"),
    };
    let mut d = Decision::new(
        patch,
        Some(cx.transition(action, Outcome::Succeeded)),
        next,
        result,
    );
    d.seal = seal;
    d
}

/// Stops the instance in `status` (failed, lost) with `reason` for a person: nothing more
/// happens until billing terminates it or someone retries it.
fn stop(
    status: ObservedStatus,
    reason: String,
    mut t: NewTransition,
    mut patch: ObservedPatch,
    result: StepResult,
) -> Decision {
    if t.error.is_none() {
        t.error = Some(reason.clone());
    }
    patch.observed_status = Some(status);
    patch.status_reason = Some(Some(reason));
    patch.pending = Some(None);
    Decision::new(patch, Some(t), Next::Idle, result)
}

/// The server vanished while `action` was in flight: marked lost, never recreated silently.
pub fn lost(action: Action, server_id: &str) -> Decision {
    let reason =
        format!("server {server_id} vanished at the provider while {action} was in flight");
    let t = NewTransition::new(Action::Observe, Cause::Drift, Outcome::Failed);
    stop(
        ObservedStatus::Lost,
        reason,
        t,
        ObservedPatch::default(),
        "lost",
    )
}

/// The error policy: a failed call of `action` is retried after a backoff (or, throttled, at
/// the provider's retry time), and after `failure_budget` failures that retrying cannot fix
/// the instance stops as `failed`. `revert` puts the instance back where a first send
/// started, so the planner sends the call again.
pub fn failed(
    cx: &Context<'_>,
    action: Action,
    e: &ProviderError,
    revert: Option<ObservedStatus>,
) -> Decision {
    let attempts = cx.instance.attempts.saturating_add(1);
    let mut t = cx.transition(action, Outcome::Failed);
    t.error = Some(e.to_string());
    t.details = json!({"class": e.class.as_str(), "request_id": e.request_id, "attempt": attempts});
    let mut patch = ObservedPatch {
        last_error: Some(Some(e.to_string())),
        attempts: Some(attempts),
        ..ObservedPatch::default()
    };
    if let Some(status) = revert {
        patch.observed_status = Some(status);
        patch.pending = Some(None);
    }
    if !e.class.is_transient() && attempts >= cx.timing.failure_budget {
        let reason = format!("{action} failed {attempts} times: {e}");
        return stop(ObservedStatus::Failed, reason, t, patch, "failed");
    }
    let next = match (e.class, e.retry_after) {
        (ErrorClass::Throttled, Some(after)) => Next::After(after),
        _ => Next::Backoff(u32::try_from(attempts).unwrap_or(u32::MAX)),
    };
    Decision::new(patch, Some(t), next, "error")
}

/// What a resync found for one instance that nobody is working on.
#[derive(Debug, Clone, PartialEq)]
pub struct Resynced {
    /// The drift metric's kind; `None` when what was found is an action taking effect
    /// (convergence, not drift).
    pub drift: Option<&'static str>,
    /// Whether the server is gone (the instance is marked lost).
    pub lost: bool,
    /// What was found, for the log.
    pub what: String,
    /// The patch (its `next_check` set from [`Resynced::next`]).
    pub patch: ObservedPatch,
    /// The transition to append.
    pub transition: NewTransition,
    /// When to look next.
    pub next: Next,
}

/// Compares an instance with its server as a bulk listing shows it (`None`: not listed).
/// Drift is a difference from what is *desired*: a server found in the state billing wants
/// is an earlier action taking effect (its answer lost, say) and is recorded as that action
/// succeeding. Instances with work in flight, leased, or changed since `settled_before` (the
/// listing may predate the change) are left alone, and so are instances to be terminated.
pub fn resynced(
    i: &Instance,
    server: Option<PowerState>,
    settled_before: DateTime<Utc>,
) -> Option<Resynced> {
    let server_id = i.provider_server_id.as_deref()?;
    if i.pending.is_some() || i.lease_owner.is_some() || i.updated_at > settled_before {
        return None;
    }
    use DesiredStatus as D;
    use ObservedStatus as O;
    use PowerState as P;
    let took_effect = |action: Action, status: ObservedStatus, what: String| {
        let mut t = NewTransition::new(action, Cause::Poll, Outcome::Succeeded);
        t.details = json!({"note": what, "seen_by": "resync"});
        Resynced {
            drift: None,
            lost: false,
            what,
            patch: ObservedPatch {
                observed_status: Some(status),
                status_reason: Some(None),
                attempts: Some(0),
                last_error: Some(None),
                ..ObservedPatch::default()
            },
            transition: t,
            next: Next::Now,
        }
    };
    let drifted = |kind: &'static str, status: ObservedStatus, what: String| {
        let mut t = NewTransition::new(Action::Observe, Cause::Drift, Outcome::Succeeded);
        t.error = Some(what.clone());
        Resynced {
            drift: Some(kind),
            lost: false,
            what,
            patch: ObservedPatch {
                observed_status: Some(status),
                status_reason: Some(None),
                ..ObservedPatch::default()
            },
            transition: t,
            next: Next::Now,
        }
    };
    Some(match (i.effective_desired(), i.observed_status, server) {
        (D::Terminated, _, _) => return None,
        (_, O::Active | O::Suspended, None) => {
            let what = format!("server {server_id} is gone at the provider");
            let mut t = NewTransition::new(Action::Observe, Cause::Drift, Outcome::Failed);
            t.error = Some(what.clone());
            Resynced {
                drift: Some("gone"),
                lost: true,
                what: what.clone(),
                patch: ObservedPatch {
                    observed_status: Some(O::Lost),
                    status_reason: Some(Some(what)),
                    ..ObservedPatch::default()
                },
                transition: t,
                next: Next::Idle,
            }
        }
        (D::Active, O::Suspended, Some(P::Running)) => took_effect(
            Action::Unsuspend,
            O::Active,
            format!("server {server_id} is running: the unsuspend took effect"),
        ),
        (D::Suspended, O::Active, Some(P::Off)) => took_effect(
            Action::Suspend,
            O::Suspended,
            format!("server {server_id} is off: the suspend took effect"),
        ),
        (D::Suspended, O::Suspended, Some(P::Running | P::Starting)) => drifted(
            "running_while_suspended",
            O::Active,
            format!("suspended server {server_id} found running"),
        ),
        (D::Active, O::Active, Some(P::Off | P::Stopping)) => drifted(
            "off_while_active",
            O::Suspended,
            format!("active server {server_id} found powered off"),
        ),
        _ => return None,
    })
}

mod change;
pub use change::{
    rebuild_found, rebuild_intent, rebuilt, resize_failed, resize_intent, resize_sent, resized,
};

#[cfg(test)]
mod tests;
