//! The planner: pure decisions, no I/O.
//!
//! [`plan`] takes an instance (desired and observed halves) and what the catalog says about its
//! product, and returns the next [`Step`]. [`settle`] takes an action in flight and what the
//! provider reports of the server, and says whether the action is done. Neither knows why it
//! was called: the same state always gives the same answer (level-triggered).

use std::time::Duration;

use crate::catalog::Catalog;
use crate::provider::{Policy, PowerState};
use crate::store::{Action, DesiredStatus, Instance, ObservedStatus};

/// What the catalog allows for an instance that has no server yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductCheck {
    /// The product exists, is active, and sells the location and OS asked for.
    Sellable {
        /// The product's stock cap, checked atomically when the create is recorded.
        stock: Option<u32>,
    },
    /// Why nothing can be provisioned (unknown product, inactive, bad location or OS).
    Blocked(String),
}

/// What `catalog` allows for `i`'s next step: a create before it has a server, a change of
/// plan when billing moved it to another product, a reinstall when one is due.
pub fn product_check(catalog: &Catalog, i: &Instance) -> ProductCheck {
    if i.provider_server_id.is_some() {
        if i.plan_change_due() {
            return super::resize::change_check(catalog, i);
        }
        if i.reinstall_due() {
            return super::resize::reinstall_check(catalog, i);
        }
        return ProductCheck::Sellable { stock: None };
    }
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
        if p.os_image(o).is_none() {
            return ProductCheck::Blocked(format!(
                "OS image `{o}` is not offered by product `{}` (offered: {})",
                p.id,
                p.os_names().join(", ")
            ));
        }
    }
    ProductCheck::Sellable { stock: p.stock }
}

/// The next thing to do for an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Observed matches desired: look again after the long poll interval.
    Converged,
    /// Cannot go on now (reason recorded); look again later.
    Wait(String),
    /// Nothing more will happen without a person or a billing change (final, failed, lost).
    Idle(String),
    /// Create the server.
    Create,
    /// An action is in flight: look at the server and settle it.
    Poll(Action),
    /// Power off for suspension.
    Suspend,
    /// Power on after suspension.
    Unsuspend,
    /// Reboot as requested.
    Reboot,
    /// Delete the server.
    Terminate,
    /// A reboot was asked while the server is suspended: count it as handled, call nothing.
    SkipReboot,
    /// Terminated before any server existed: record it terminated, call nothing.
    Forget,
    /// Move the server to its new product's plan (billing changed `product_id`).
    Resize,
    /// Reinstall the server's OS (billing incremented `reinstall_requested`).
    Reinstall,
    /// Mark a server an admin attached (import, adopt) as the instance's own at the provider
    /// (label, tag, pool allocation), before anything else is sent for it.
    Claim,
}

impl Step {
    /// The step's name in metrics (`provisioner_step_duration_seconds{action}`): a few fixed
    /// words, never a reason.
    pub fn label(&self) -> &'static str {
        match self {
            Step::Converged => "observe",
            Step::Wait(_) => "wait",
            Step::Idle(_) => "idle",
            Step::Create => "create",
            Step::Poll(_) => "poll",
            Step::Suspend => "suspend",
            Step::Unsuspend => "unsuspend",
            Step::Reboot | Step::SkipReboot => "reboot",
            Step::Terminate | Step::Forget => "terminate",
            Step::Resize => "resize",
            Step::Reinstall => "reinstall",
            Step::Claim => "claim",
        }
    }

    /// One line for `provisioner plan` and logs.
    pub fn describe(&self) -> String {
        match self {
            Step::Converged => "nothing to do: converged".into(),
            Step::Wait(r) => format!("wait: {r}"),
            Step::Idle(r) => format!("idle: {r}"),
            Step::Create => "create the server".into(),
            Step::Poll(a) => format!("look at the server: {a} in flight"),
            Step::Suspend => "power off (suspend)".into(),
            Step::Unsuspend => "power on (unsuspend)".into(),
            Step::Reboot => "reboot".into(),
            Step::Terminate => "delete the server (terminate)".into(),
            Step::SkipReboot => "skip the reboot: the server is suspended".into(),
            Step::Forget => "mark terminated: no server was ever created".into(),
            Step::Resize => "change the server to its new product's plan".into(),
            Step::Reinstall => "reinstall the server's OS".into(),
            Step::Claim => "mark the server as the instance's own (label, tag or pool)".into(),
        }
    }

    /// Whether the step asks the provider to change something (what an observe-only
    /// instance never does).
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Step::Create
                | Step::Suspend
                | Step::Unsuspend
                | Step::Reboot
                | Step::Terminate
                | Step::Resize
                | Step::Reinstall
                | Step::Claim
        ) || matches!(self, Step::Poll(a) if *a != Action::Observe)
    }
}

/// The action implied by a transitional observed status, when no action is recorded in flight
/// (a crash between two writes leaves the status but not the action).
/// A step that calls the provider waits, as in the daemon, when the instance's account
/// cannot be driven here (`account_problem` says why: its credentials are missing, say);
/// `plan` asks this so that it agrees with the daemon.
pub fn held_back(step: Step, account_problem: impl FnOnce() -> Option<String>) -> Step {
    let calls_provider = matches!(
        step,
        Step::Create
            | Step::Poll(_)
            | Step::Suspend
            | Step::Unsuspend
            | Step::Reboot
            | Step::Terminate
            | Step::Resize
            | Step::Reinstall
            | Step::Claim
    );
    if !calls_provider {
        return step;
    }
    match account_problem() {
        Some(reason) => Step::Wait(reason),
        None => step,
    }
}

fn implied_action(status: ObservedStatus) -> Option<Action> {
    match status {
        ObservedStatus::Provisioning => Some(Action::Create),
        ObservedStatus::Suspending => Some(Action::Suspend),
        ObservedStatus::Unsuspending => Some(Action::Unsuspend),
        ObservedStatus::Rebooting => Some(Action::Reboot),
        ObservedStatus::Terminating => Some(Action::Terminate),
        ObservedStatus::Resizing => Some(Action::Resize),
        ObservedStatus::Reinstalling => Some(Action::Reinstall),
        _ => None,
    }
}

/// Decides the next step for `i` from what the catalog allows for it (see [`product_check`]).
/// An instance imported observe-only waits where any other would call a mutating API.
pub fn plan(i: &Instance, product: &ProductCheck) -> Step {
    let step = plan_managed(i, product);
    if !i.observe_only || !step.mutates() {
        return step;
    }
    // The mark is only the first call a managed instance would make: what billing's change
    // needs is what the admin wants to read (and with nothing to change, it is converged).
    let wanted = if step == Step::Claim {
        let mut marked = i.clone();
        marked.claim_pending = false;
        plan_managed(&marked, product)
    } else {
        step
    };
    if !wanted.mutates() {
        return wanted;
    }
    Step::Wait(format!(
        "observe-only (imported): the reconciler would {}; `provisioner instances manage {}` lets it act",
        wanted.describe(),
        i.id
    ))
}

fn plan_managed(i: &Instance, product: &ProductCheck) -> Step {
    use DesiredStatus as D;
    use ObservedStatus as O;
    if i.observed_status == O::Terminated {
        return Step::Idle("terminated".into());
    }
    if let Some(p) = &i.pending {
        return Step::Poll(p.action);
    }
    if let Some(action) = implied_action(i.observed_status) {
        return Step::Poll(action);
    }
    let has_server = i.provider_server_id.is_some();
    let stopped = matches!(i.observed_status, O::Failed | O::Lost);
    if i.claim_pending && has_server && !stopped {
        // Nothing is sent for a server before it carries the instance's mark: every other
        // call first checks that the server is the instance's own.
        return Step::Claim;
    }
    if i.desired_status == D::Terminated {
        return if has_server {
            Step::Terminate
        } else {
            Step::Forget
        };
    }
    match i.observed_status {
        O::Failed => {
            return Step::Idle(format!(
                "failed: {}; fix the cause, then `provisioner instances retry {}`",
                i.status_reason.as_deref().unwrap_or("no reason recorded"),
                i.id
            ));
        }
        O::Lost => {
            return Step::Idle(
                "lost: the server vanished at the provider; it is not recreated silently".into(),
            );
        }
        _ => {}
    }
    let reboot_due = i.reboot_handled < i.reboot_requested;
    // A change of plan the catalog refuses (another provider, OVH) keeps the instance waiting
    // with the reason where it would otherwise be converged; it blocks nothing else.
    let change = i.plan_change_due().then_some(product);
    let settled = || match change {
        Some(ProductCheck::Blocked(reason)) => Step::Wait(reason.clone()),
        _ => Step::Converged,
    };
    let desired = i.effective_desired();
    if let (Some(ProductCheck::Sellable { .. }), O::Active | O::Suspended) =
        (change, i.observed_status)
    {
        // A server billing wants off is powered off first (it then changes while off).
        if !(desired == D::Suspended && i.observed_status == O::Active) {
            return Step::Resize;
        }
    }
    match (desired, i.observed_status) {
        (D::Active, O::Pending) => match product {
            ProductCheck::Sellable { .. } => Step::Create,
            ProductCheck::Blocked(reason) => Step::Wait(reason.clone()),
        },
        (D::Suspended, O::Pending) if !i.holds.is_empty() => Step::Wait(format!(
            "held ({}) before it was provisioned: nothing is created until every hold is released",
            i.holds.join(", ")
        )),
        (D::Suspended, O::Pending) => Step::Wait(
            "suspended before it was provisioned: nothing is created until it is active".into(),
        ),
        (D::Active, O::Active) if i.reinstall_due() && change.is_none() => match product {
            ProductCheck::Sellable { .. } => Step::Reinstall,
            ProductCheck::Blocked(reason) => Step::Wait(reason.clone()),
        },
        (D::Active, O::Active) if reboot_due => Step::Reboot,
        (D::Active, O::Active) => settled(),
        (D::Active, O::Suspended) => Step::Unsuspend,
        (D::Suspended, O::Active) => Step::Suspend,
        (D::Suspended, O::Suspended) if reboot_due => Step::SkipReboot,
        (D::Suspended, O::Suspended) if i.reinstall_due() => {
            Step::Wait("a reinstall waits until the instance is active: it is suspended".into())
        }
        (D::Suspended, O::Suspended) => settled(),
        // Every other status was handled above (terminated, failed, lost, transitional).
        _ => Step::Poll(Action::Observe),
    }
}

/// Timing of in-flight actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleTiming {
    /// How long a just-created server may be missing from the provider's answers before it
    /// counts as gone (APIs are eventually consistent).
    pub create_grace: Duration,
    /// How long a graceful shutdown may take before a hard power-off.
    pub graceful_off: Duration,
    /// How long an action may take before it is sent again.
    pub stuck_after: Duration,
}

impl From<&Policy> for SettleTiming {
    /// A module's policy as settle timing: what it never does, it does after forever.
    fn from(p: &Policy) -> SettleTiming {
        SettleTiming {
            create_grace: p.create_grace,
            graceful_off: p.graceful_timeout.unwrap_or(Duration::MAX),
            stuck_after: p.stuck_timeout.unwrap_or(Duration::MAX),
        }
    }
}

/// Where an in-flight action stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Done; the instance is now in this observed status.
    Done(ObservedStatus),
    /// Still going: look again soon.
    Continue,
    /// The graceful shutdown took too long: power off hard.
    HardPowerOff,
    /// The action took too long: send it again (every call is idempotent).
    Resend,
    /// The server is gone without being asked to.
    Missing,
}

/// Settles `action`, in flight for `elapsed`, against the server's state (`None`: the provider
/// does not know the server). `hard_sent` says a hard power-off was sent already.
pub fn settle(
    action: Action,
    server: Option<PowerState>,
    elapsed: Duration,
    hard_sent: bool,
    timing: &SettleTiming,
) -> Settled {
    use PowerState as P;
    let late = elapsed >= timing.stuck_after;
    let waiting = if late {
        Settled::Resend
    } else {
        Settled::Continue
    };
    match (action, server) {
        (Action::Terminate, None) => Settled::Done(ObservedStatus::Terminated),
        (Action::Terminate, Some(_)) => waiting,
        (Action::Create, None) if elapsed < timing.create_grace => Settled::Continue,
        (_, None) => Settled::Missing,
        (
            Action::Create | Action::Unsuspend | Action::Reboot | Action::Adopt | Action::Reinstall,
            Some(P::Running),
        ) => Settled::Done(ObservedStatus::Active),
        (Action::Suspend, Some(P::Off)) => Settled::Done(ObservedStatus::Suspended),
        (Action::Suspend, Some(P::Running | P::Stopping))
            if elapsed >= timing.graceful_off && !hard_sent =>
        {
            Settled::HardPowerOff
        }
        (Action::Observe, Some(P::Running)) => Settled::Done(ObservedStatus::Active),
        (Action::Observe, Some(P::Off)) => Settled::Done(ObservedStatus::Suspended),
        (Action::Observe, Some(_)) => Settled::Continue,
        (Action::Create, Some(P::Creating | P::Starting)) => {
            // A create is never "sent again": the provider has the server, it is just slow.
            Settled::Continue
        }
        _ => waiting,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::Utc;

    /// An instance with no server, nothing in flight, generation 1 desired and 0 observed.
    pub(crate) fn instance(desired: DesiredStatus, observed: ObservedStatus) -> Instance {
        let now = Utc::now();
        Instance {
            id: 7,
            customer_id: "c".into(),
            order_id: None,
            billing_ref: None,
            product_id: "vps".into(),
            location: None,
            os_image: None,
            hostname: None,
            ssh_keys: None,
            desired_status: desired,
            suspend_reason: None,
            reboot_requested: 0,
            desired_generation: 1,
            desired_changed_at: now,
            observed_generation: 0,
            observed_status: observed,
            status_reason: None,
            provider_account: None,
            provider_server_id: None,
            ipv4: None,
            ipv6: None,
            product_revision: None,
            reboot_handled: 0,
            credentials: None,
            last_error: None,
            attempts: 0,
            pending: None,
            pending_since: None,
            next_check_at: Some(now),
            lease_owner: None,
            lease_expires_at: None,
            lease_epoch: 1,
            created_at: now,
            updated_at: now,
            holds: Vec::new(),
            holds_seen: Vec::new(),
            reinstall_requested: 0,
            reinstall_handled: 0,
            applied_product_id: None,
            observe_only: false,
            claim_pending: false,
        }
    }

    const OK: ProductCheck = ProductCheck::Sellable { stock: None };

    struct Case {
        says: &'static str,
        desired: DesiredStatus,
        observed: ObservedStatus,
        server: bool,
        reboots: (i64, i64),
        pending: Option<Action>,
        product: ProductCheck,
        holds: &'static [&'static str],
        expect: Step,
    }

    fn case(
        says: &'static str,
        desired: DesiredStatus,
        observed: ObservedStatus,
        expect: Step,
    ) -> Case {
        Case {
            says,
            desired,
            observed,
            server: !matches!(observed, ObservedStatus::Pending),
            reboots: (0, 0),
            pending: None,
            product: OK,
            holds: &[],
            expect,
        }
    }

    #[test]
    fn every_desired_and_observed_combination_has_a_step() {
        use DesiredStatus as D;
        use ObservedStatus as O;
        let blocked = ProductCheck::Blocked("unknown product `x`".into());
        let cases = vec![
            case("A paid order with nothing done yet is created.", D::Active, O::Pending, Step::Create),
            Case { product: blocked.clone(), ..case("An order for an unknown product waits with the reason.", D::Active, O::Pending, Step::Wait("unknown product `x`".into())) },
            case("A running server that should run is converged.", D::Active, O::Active, Step::Converged),
            case("A suspended server that should run is powered on.", D::Active, O::Suspended, Step::Unsuspend),
            case("A running server that should be suspended is powered off.", D::Suspended, O::Active, Step::Suspend),
            case("A suspended server that should be suspended is converged.", D::Suspended, O::Suspended, Step::Converged),
            case("An order suspended before provisioning waits without creating anything.", D::Suspended, O::Pending, Step::Wait("suspended before it was provisioned: nothing is created until it is active".into())),
            case("A running server that should be terminated is deleted.", D::Terminated, O::Active, Step::Terminate),
            case("A suspended server that should be terminated is deleted.", D::Terminated, O::Suspended, Step::Terminate),
            case("An order cancelled before provisioning is marked terminated without a call.", D::Terminated, O::Pending, Step::Forget),
            case("A terminated instance is final whatever billing says.", D::Active, O::Terminated, Step::Idle("terminated".into())),
            case("A terminated instance that should be terminated stays idle.", D::Terminated, O::Terminated, Step::Idle("terminated".into())),
            case("A lost server is not recreated silently.", D::Active, O::Lost, Step::Idle("lost: the server vanished at the provider; it is not recreated silently".into())),
            Case { server: false, ..case("A lost server that should be terminated is marked terminated.", D::Terminated, O::Lost, Step::Forget) },
            case("A failed instance with a server that should be terminated is deleted.", D::Terminated, O::Failed, Step::Terminate),
            case("A failed instance waits for a person.", D::Active, O::Failed, Step::Idle("failed: no reason recorded; fix the cause, then `provisioner instances retry 7`".into())),
            case("A server left provisioning by a crash is looked at.", D::Active, O::Provisioning, Step::Poll(Action::Create)),
            case("A server left suspending by a crash is looked at.", D::Suspended, O::Suspending, Step::Poll(Action::Suspend)),
            case("A server left unsuspending by a crash is looked at.", D::Active, O::Unsuspending, Step::Poll(Action::Unsuspend)),
            case("A server left rebooting by a crash is looked at.", D::Active, O::Rebooting, Step::Poll(Action::Reboot)),
            case("A server left terminating by a crash is looked at.", D::Terminated, O::Terminating, Step::Poll(Action::Terminate)),
            Case { pending: Some(Action::Create), ..case("A create in flight is followed, whatever billing wants now.", D::Terminated, O::Provisioning, Step::Poll(Action::Create)) },
            Case { pending: Some(Action::Suspend), ..case("A suspension in flight is followed before anything else.", D::Active, O::Suspending, Step::Poll(Action::Suspend)) },
            Case { pending: Some(Action::Observe), ..case("A retried failed instance is looked at first.", D::Active, O::Failed, Step::Poll(Action::Observe)) },
            Case { reboots: (1, 0), ..case("A requested reboot of a running server is carried out.", D::Active, O::Active, Step::Reboot) },
            Case { reboots: (3, 3), ..case("Reboots all handled: converged.", D::Active, O::Active, Step::Converged) },
            Case { reboots: (1, 0), ..case("A reboot asked while suspended is skipped, not carried out.", D::Suspended, O::Suspended, Step::SkipReboot) },
            Case { reboots: (2, 1), ..case("Suspension comes before a pending reboot.", D::Suspended, O::Active, Step::Suspend) },
            Case { reboots: (1, 0), ..case("Unsuspension comes before a pending reboot.", D::Active, O::Suspended, Step::Unsuspend) },
            Case { reboots: (1, 0), ..case("Termination beats a pending reboot.", D::Terminated, O::Active, Step::Terminate) },
            // Suspension holds: any hold keeps the server off, whatever billing wants.
            Case { holds: &["abuse"], ..case("A hold powers off a server billing wants running.", D::Active, O::Active, Step::Suspend) },
            Case { holds: &["abuse"], ..case("Billing's unsuspend does not lift an abuse hold.", D::Active, O::Suspended, Step::Converged) },
            Case { holds: &["abuse", "billing"], ..case("Holds and billing's suspension agree.", D::Suspended, O::Suspended, Step::Converged) },
            Case { holds: &["admin"], ..case("A held order is not created.", D::Active, O::Pending, Step::Wait("held (admin) before it was provisioned: nothing is created until every hold is released".into())) },
            Case { holds: &["abuse"], ..case("Termination beats holds.", D::Terminated, O::Suspended, Step::Terminate) },
            Case { holds: &["abuse"], reboots: (1, 0), ..case("A reboot asked while held is skipped.", D::Active, O::Suspended, Step::SkipReboot) },
        ];
        for c in cases {
            let mut i = instance(c.desired, c.observed);
            if c.server {
                i.provider_server_id = Some("srv-1".into());
            }
            i.reboot_requested = c.reboots.0;
            i.reboot_handled = c.reboots.1;
            i.pending = c.pending.map(crate::store::Pending::new);
            i.holds = c.holds.iter().map(|h| (*h).to_owned()).collect();
            assert_eq!(plan(&i, &c.product), c.expect, "{}", c.says);
        }
    }

    #[test]
    fn changes_of_plan_reinstalls_and_observe_only_instances() {
        use DesiredStatus as D;
        use ObservedStatus as O;
        let refused = ProductCheck::Blocked("a change of provider needs a new server".into());
        /// Sentence, desired, observed, applied product (billing wants `vps`), reinstalls
        /// (requested, handled), reboots, observe-only, catalog answer, expected step.
        type Row = (
            &'static str,
            D,
            O,
            &'static str,
            (i64, i64),
            (i64, i64),
            bool,
            ProductCheck,
            Step,
        );
        let rows: Vec<Row> = vec![
            ("A running server moved to another product is changed.", D::Active, O::Active, "small", (0, 0), (0, 0), false, OK, Step::Resize),
            ("A suspended server moved to another product is changed while off.", D::Suspended, O::Suspended, "small", (0, 0), (0, 0), false, OK, Step::Resize),
            ("A server to be suspended is powered off before its change.", D::Suspended, O::Active, "small", (0, 0), (0, 0), false, OK, Step::Suspend),
            ("A server off but wanted running is changed before it is powered on.", D::Active, O::Suspended, "small", (0, 0), (0, 0), false, OK, Step::Resize),
            ("A change the catalog refuses waits with the reason.", D::Active, O::Active, "small", (0, 0), (0, 0), false, refused.clone(), Step::Wait("a change of provider needs a new server".into())),
            ("A refused change does not block a reboot.", D::Active, O::Active, "small", (0, 0), (1, 0), false, refused.clone(), Step::Reboot),
            ("A refused change does not block a suspension.", D::Suspended, O::Active, "small", (0, 0), (0, 0), false, refused.clone(), Step::Suspend),
            ("A change comes before a reinstall.", D::Active, O::Active, "small", (1, 0), (0, 0), false, OK, Step::Resize),
            ("A requested reinstall of a running server is carried out.", D::Active, O::Active, "vps", (1, 0), (0, 0), false, OK, Step::Reinstall),
            ("A reinstall of an OS the product does not offer waits.", D::Active, O::Active, "vps", (1, 0), (0, 0), false, ProductCheck::Blocked("reinstall: OS image `x` is not offered".into()), Step::Wait("reinstall: OS image `x` is not offered".into())),
            ("A reinstall comes before a reboot.", D::Active, O::Active, "vps", (1, 0), (1, 0), false, OK, Step::Reinstall),
            ("A reinstall asked while suspended waits until it is active.", D::Suspended, O::Suspended, "vps", (1, 0), (0, 0), false, OK, Step::Wait("a reinstall waits until the instance is active: it is suspended".into())),
            ("Reinstalls all handled: converged.", D::Active, O::Active, "vps", (2, 2), (0, 0), false, OK, Step::Converged),
            ("An unsuspension comes before a reinstall.", D::Active, O::Suspended, "vps", (1, 0), (0, 0), false, OK, Step::Unsuspend),
            ("A termination beats a change of plan.", D::Terminated, O::Active, "small", (1, 0), (0, 0), false, OK, Step::Terminate),
            ("An observe-only server is never changed.", D::Active, O::Active, "small", (0, 0), (0, 0), true, OK, Step::Wait("observe-only (imported): the reconciler would change the server to its new product's plan; `provisioner instances manage 7` lets it act".into())),
            ("An observe-only server is never powered off.", D::Suspended, O::Active, "vps", (0, 0), (0, 0), true, OK, Step::Wait("observe-only (imported): the reconciler would power off (suspend); `provisioner instances manage 7` lets it act".into())),
            ("An observe-only server is never deleted.", D::Terminated, O::Active, "vps", (0, 0), (0, 0), true, OK, Step::Wait("observe-only (imported): the reconciler would delete the server (terminate); `provisioner instances manage 7` lets it act".into())),
            ("An observe-only server in the state billing wants is converged.", D::Active, O::Active, "vps", (0, 0), (0, 0), true, OK, Step::Converged),
            ("An observe-only server in transition is looked at.", D::Active, O::Provisioning, "vps", (0, 0), (0, 0), true, OK, Step::Wait("observe-only (imported): the reconciler would look at the server: create in flight; `provisioner instances manage 7` lets it act".into())),
            ("A change left in flight by a crash is looked at.", D::Active, O::Resizing, "small", (0, 0), (0, 0), false, OK, Step::Poll(Action::Resize)),
            ("A reinstall left in flight by a crash is looked at.", D::Active, O::Reinstalling, "vps", (1, 0), (0, 0), false, OK, Step::Poll(Action::Reinstall)),
        ];
        for (says, desired, observed, applied, reinstalls, reboots, observe_only, product, want) in
            rows
        {
            let mut i = instance(desired, observed);
            i.provider_server_id = Some("srv-1".into());
            i.applied_product_id = Some(applied.into());
            (i.reinstall_requested, i.reinstall_handled) = reinstalls;
            (i.reboot_requested, i.reboot_handled) = reboots;
            i.observe_only = observe_only;
            assert_eq!(plan(&i, &product), want, "{says}");
        }
    }

    #[test]
    fn attached_servers_are_marked_before_anything_else_is_sent() {
        use DesiredStatus as D;
        use ObservedStatus as O;
        /// Sentence, desired, observed, observe-only, action in flight, expected.
        type ClaimCase = (&'static str, D, O, bool, Option<Action>, fn(&Step) -> bool);
        let cases: [ClaimCase; 7] = [
            (
                "An imported server is marked first.",
                D::Active,
                O::Active,
                false,
                None,
                |s| *s == Step::Claim,
            ),
            (
                "Before a suspension too: every call checks the mark.",
                D::Suspended,
                O::Active,
                false,
                None,
                |s| *s == Step::Claim,
            ),
            (
                "And before a termination.",
                D::Terminated,
                O::Active,
                false,
                None,
                |s| *s == Step::Claim,
            ),
            (
                "Observe-only: not even the mark is sent; the reason says what billing's change needs and how to let it act.",
                D::Suspended,
                O::Active,
                true,
                None,
                |s| matches!(s, Step::Wait(r) if r.contains("observe-only") && r.contains("power off") && r.contains("instances manage 7")),
            ),
            (
                "Observe-only and as billing wants it: converged, unmarked.",
                D::Active,
                O::Active,
                true,
                None,
                |s| *s == Step::Converged,
            ),
            (
                "An action in flight is followed first.",
                D::Active,
                O::Rebooting,
                false,
                Some(Action::Reboot),
                |s| *s == Step::Poll(Action::Reboot),
            ),
            (
                "A lost instance stays for a person.",
                D::Active,
                O::Lost,
                false,
                None,
                |s| matches!(s, Step::Idle(_)),
            ),
        ];
        for (says, desired, observed, observe_only, pending, expect) in cases {
            let mut i = instance(desired, observed);
            i.provider_server_id = Some("42".into());
            i.claim_pending = true;
            i.observe_only = observe_only;
            i.pending = pending.map(crate::store::Pending::new);
            let step = plan(&i, &OK);
            assert!(expect(&step), "{says} got {step:?}");
        }
        let mut i = instance(DesiredStatus::Active, ObservedStatus::Active);
        i.provider_server_id = Some("42".into());
        assert_eq!(
            plan(&i, &OK),
            Step::Converged,
            "a marked server needs nothing"
        );
        assert!(Step::Claim.mutates());
        assert_eq!(
            held_back(Step::Claim, || Some("no credentials".into())),
            Step::Wait("no credentials".into())
        );
    }

    #[test]
    fn steps_that_call_a_provider_wait_for_an_account_that_cannot_be_driven() {
        let no_token = || Some("no credentials".to_owned());
        let table = [
            (
                Step::Create,
                no_token(),
                Step::Wait("no credentials".into()),
            ),
            (
                Step::Suspend,
                no_token(),
                Step::Wait("no credentials".into()),
            ),
            (
                Step::Poll(Action::Reboot),
                no_token(),
                Step::Wait("no credentials".into()),
            ),
            (Step::Create, None, Step::Create),
            (Step::Converged, no_token(), Step::Converged),
            (Step::Forget, no_token(), Step::Forget),
            (
                Step::Wait("out of stock".into()),
                no_token(),
                Step::Wait("out of stock".into()),
            ),
        ];
        for (step, problem, want) in table {
            assert_eq!(
                held_back(step.clone(), || problem.clone()),
                want,
                "{step:?}"
            );
        }
    }

    #[test]
    fn settling_actions_against_what_the_provider_reports() {
        use PowerState as P;
        let t = SettleTiming {
            create_grace: Duration::from_secs(30),
            graceful_off: Duration::from_secs(60),
            stuck_after: Duration::from_secs(300),
        };
        let s = Duration::from_secs;
        /// Sentence, action in flight, server state, time in flight, hard off sent, expected.
        type SettleCase = (
            &'static str,
            Action,
            Option<PowerState>,
            Duration,
            bool,
            Settled,
        );
        let cases: Vec<SettleCase> = vec![
            (
                "A created server that runs is active.",
                Action::Create,
                Some(P::Running),
                s(5),
                false,
                Settled::Done(ObservedStatus::Active),
            ),
            (
                "A server still booting is waited for.",
                Action::Create,
                Some(P::Creating),
                s(5),
                false,
                Settled::Continue,
            ),
            (
                "A slow create is waited for, never sent again.",
                Action::Create,
                Some(P::Creating),
                s(900),
                false,
                Settled::Continue,
            ),
            (
                "A just-created server missing from the API is given a grace period.",
                Action::Create,
                None,
                s(5),
                false,
                Settled::Continue,
            ),
            (
                "A created server still missing after the grace period is gone.",
                Action::Create,
                None,
                s(60),
                false,
                Settled::Missing,
            ),
            (
                "A server that is off is suspended.",
                Action::Suspend,
                Some(P::Off),
                s(5),
                false,
                Settled::Done(ObservedStatus::Suspended),
            ),
            (
                "A graceful shutdown in progress is waited for.",
                Action::Suspend,
                Some(P::Stopping),
                s(10),
                false,
                Settled::Continue,
            ),
            (
                "A server ignoring the shutdown is powered off hard.",
                Action::Suspend,
                Some(P::Running),
                s(61),
                false,
                Settled::HardPowerOff,
            ),
            (
                "After the hard power-off, it is waited for.",
                Action::Suspend,
                Some(P::Running),
                s(61),
                true,
                Settled::Continue,
            ),
            (
                "A hard power-off that does not take is sent again.",
                Action::Suspend,
                Some(P::Running),
                s(301),
                true,
                Settled::Resend,
            ),
            (
                "A server vanishing during suspension is missing.",
                Action::Suspend,
                None,
                s(5),
                false,
                Settled::Missing,
            ),
            (
                "A powered-on server is active again.",
                Action::Unsuspend,
                Some(P::Running),
                s(5),
                false,
                Settled::Done(ObservedStatus::Active),
            ),
            (
                "A server still starting is waited for.",
                Action::Unsuspend,
                Some(P::Starting),
                s(5),
                false,
                Settled::Continue,
            ),
            (
                "A power-on that never takes is sent again.",
                Action::Unsuspend,
                Some(P::Off),
                s(301),
                false,
                Settled::Resend,
            ),
            (
                "A rebooted server that runs again is done.",
                Action::Reboot,
                Some(P::Running),
                s(5),
                false,
                Settled::Done(ObservedStatus::Active),
            ),
            (
                "A reboot in progress is waited for.",
                Action::Reboot,
                Some(P::Rebooting),
                s(5),
                false,
                Settled::Continue,
            ),
            (
                "A deleted server is terminated.",
                Action::Terminate,
                None,
                s(5),
                false,
                Settled::Done(ObservedStatus::Terminated),
            ),
            (
                "A server being deleted is waited for.",
                Action::Terminate,
                Some(P::Deleting),
                s(5),
                false,
                Settled::Continue,
            ),
            (
                "A delete that never takes is sent again.",
                Action::Terminate,
                Some(P::Running),
                s(301),
                false,
                Settled::Resend,
            ),
            (
                "A re-observed running server is active.",
                Action::Observe,
                Some(P::Running),
                s(1),
                false,
                Settled::Done(ObservedStatus::Active),
            ),
            (
                "A re-observed server that is off is suspended.",
                Action::Observe,
                Some(P::Off),
                s(1),
                false,
                Settled::Done(ObservedStatus::Suspended),
            ),
            (
                "A re-observed server in transition is looked at again.",
                Action::Observe,
                Some(P::Starting),
                s(1),
                false,
                Settled::Continue,
            ),
            (
                "A re-observed server that is gone is missing.",
                Action::Observe,
                None,
                s(1),
                false,
                Settled::Missing,
            ),
        ];
        for (says, action, server, elapsed, hard, expect) in cases {
            assert_eq!(settle(action, server, elapsed, hard, &t), expect, "{says}");
        }
    }
}
