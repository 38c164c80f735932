//! What the store holds: instances, transitions, product revisions and manual tasks, and the
//! vocabulary their text columns take.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::secrets::Sealed;
use crate::vocab::vocabulary;

vocabulary! {
    /// What billing wants a server to be (`instances.desired_status`).
    DesiredStatus {
        /// Running and usable.
        Active => "active",
        /// Kept but not usable (non-payment, abuse).
        Suspended => "suspended",
        /// Gone for good. Final.
        Terminated => "terminated",
    }
}

vocabulary! {
    /// What the reconciler last saw of a server (`instances.observed_status`).
    ObservedStatus {
        /// Nothing done yet.
        Pending => "pending",
        /// Being created.
        Provisioning => "provisioning",
        /// Running.
        Active => "active",
        /// Being powered off for suspension.
        Suspending => "suspending",
        /// Powered off for suspension.
        Suspended => "suspended",
        /// Being powered on again.
        Unsuspending => "unsuspending",
        /// Rebooting on request.
        Rebooting => "rebooting",
        /// Being deleted.
        Terminating => "terminating",
        /// Deleted. Final.
        Terminated => "terminated",
        /// The reconciler gave up; a person must look (reason recorded).
        Failed => "failed",
        /// The server vanished at the provider without being asked to.
        Lost => "lost",
        /// Being moved to another product's plan (billing changed `product_id`).
        Resizing => "resizing",
        /// Its OS being reinstalled (billing incremented `reinstall_requested`).
        Reinstalling => "reinstalling",
    }
}

vocabulary! {
    /// What a transition did.
    Action {
        /// Create a server.
        Create => "create",
        /// Power off for suspension.
        Suspend => "suspend",
        /// Power on after suspension.
        Unsuspend => "unsuspend",
        /// Reboot on request.
        Reboot => "reboot",
        /// Delete the server.
        Terminate => "terminate",
        /// Look at the server.
        Observe => "observe",
        /// Take over a server: one found by its label after an uncertain create, or one an
        /// admin attached (`instances adopt`, `instances import`), marked as ours.
        Adopt => "adopt",
        /// Wait (out of stock, unknown product, …) without calling the provider.
        Wait => "wait",
        /// Give up and hand over to a person.
        Fail => "fail",
        /// A person took a failed instance up again.
        Retry => "retry",
        /// A suspension hold was placed.
        Hold => "hold",
        /// A suspension hold was lifted.
        Release => "release",
        /// A person started a lost instance over with a fresh server.
        Recreate => "recreate",
        /// A person closed an instance whose server was already gone.
        Forget => "forget",
        /// Move the server to another product's plan.
        Resize => "resize",
        /// Reinstall the server's OS.
        Reinstall => "reinstall",
        /// A person took a server made outside provisioner under management.
        Import => "import",
        /// A person let the reconciler act on an instance imported observe-only.
        Manage => "manage",
        /// Someone read the instance's root password (through the API).
        Reveal => "reveal",
    }
}

vocabulary! {
    /// Why a transition happened.
    Cause {
        /// Billing changed the desired state.
        DesiredChange => "desired_change",
        /// The provider's state drifted from what was recorded.
        Drift => "drift",
        /// A retry after an error.
        Retry => "retry",
        /// A person asked (CLI, task inbox).
        Manual => "manual",
        /// The catalog changed.
        Catalog => "catalog",
        /// A periodic check.
        Poll => "poll",
    }
}

vocabulary! {
    /// How a transition ended.
    Outcome {
        /// Intent recorded before a provider call; the call's outcome follows.
        Started => "started",
        /// The call or change succeeded.
        Succeeded => "succeeded",
        /// The call failed (error recorded).
        Failed => "failed",
        /// Nothing was done for now (reason recorded).
        Deferred => "deferred",
    }
}

vocabulary! {
    /// What an admin is asked to do by the manual module.
    TaskKind {
        /// Set up a server and record its address and credentials.
        Provision => "provision",
        /// Make the server unusable.
        Suspend => "suspend",
        /// Make it usable again.
        Unsuspend => "unsuspend",
        /// Reboot it.
        Reboot => "reboot",
        /// Wipe and take it back.
        Terminate => "terminate",
        /// Move it to another product's hardware or plan.
        Resize => "resize",
        /// Reinstall its OS.
        Reinstall => "reinstall",
    }
}

vocabulary! {
    /// Where a manual task stands.
    TaskState {
        /// Waiting for an admin.
        Open => "open",
        /// Done; what the admin recorded is in the task.
        Done => "done",
        /// No longer needed.
        Cancelled => "cancelled",
    }
}

/// One customer server, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Database id.
    pub id: i64,
    /// Billing's customer.
    pub customer_id: String,
    /// Billing's order reference.
    pub order_id: Option<String>,
    /// Billing's own service id, unique when set: an order is inserted once.
    pub billing_ref: Option<String>,
    /// Catalog product id.
    pub product_id: String,
    /// Requested location; `None` means the product's first.
    pub location: Option<String>,
    /// Requested OS image; `None` means the product's first.
    pub os_image: Option<String>,
    /// Requested hostname; `None` means derived from the id.
    pub hostname: Option<String>,
    /// SSH public keys, one per line.
    pub ssh_keys: Option<String>,
    /// What billing wants.
    pub desired_status: DesiredStatus,
    /// Why it is suspended.
    pub suspend_reason: Option<String>,
    /// Reboots asked for, ever.
    pub reboot_requested: i64,
    /// Bumped by the database on every change of a billing column.
    pub desired_generation: i64,
    /// When a billing column last changed.
    pub desired_changed_at: DateTime<Utc>,
    /// The desired generation the reconciler last acted on.
    pub observed_generation: i64,
    /// What the reconciler last saw.
    pub observed_status: ObservedStatus,
    /// Why the instance is in its status (waiting, failed, lost).
    pub status_reason: Option<String>,
    /// Provider account holding the server.
    pub provider_account: Option<String>,
    /// The provider's id of the server.
    pub provider_server_id: Option<String>,
    /// Public IPv4 address.
    pub ipv4: Option<String>,
    /// Public IPv6 address or network.
    pub ipv6: Option<String>,
    /// Product revision the server was sold under, pinned when first taken up.
    pub product_revision: Option<String>,
    /// Reboots carried out; converged when equal to `reboot_requested`.
    pub reboot_handled: i64,
    /// Root password and panel credentials, sealed (see `crate::secrets`).
    pub credentials: Option<Sealed>,
    /// Last error met.
    pub last_error: Option<String>,
    /// Consecutive failed attempts.
    pub attempts: i64,
    /// The action in flight, recorded before the provider call.
    pub pending: Option<Pending>,
    /// When the action in flight started (the database's clock).
    pub pending_since: Option<DateTime<Utc>>,
    /// When the reconciler looks again; `None` never (final).
    pub next_check_at: Option<DateTime<Utc>>,
    /// The worker holding the instance.
    pub lease_owner: Option<String>,
    /// When that lease expires.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Fencing epoch, bumped by every claim.
    pub lease_epoch: i64,
    /// When billing inserted it.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// The kinds of the suspension holds on it (`abuse`, `admin`, …), sorted; kept by the
    /// database from `instance_holds`.
    pub holds: Vec<String>,
    /// The hold kinds the reconciler last recorded transitions for.
    pub holds_seen: Vec<String>,
    /// Reinstalls asked for, ever (billing's counter).
    pub reinstall_requested: i64,
    /// Reinstalls carried out; converged when equal to `reinstall_requested`.
    pub reinstall_handled: i64,
    /// The product the server was built as or last changed to; a different `product_id`
    /// asks for a change of plan.
    pub applied_product_id: Option<String>,
    /// Imported to be watched only: no mutating provider call until `instances manage`.
    pub observe_only: bool,
    /// The server was attached by an admin (import, adopt) and is not yet marked as ours at
    /// the provider (label, tag, pool allocation): the reconciler does that first.
    pub claim_pending: bool,
}

impl Instance {
    /// What the server should be: billing's `desired_status`, except that any hold keeps an
    /// active instance's server off (lifting billing's suspension does not lift an abuse hold).
    pub fn effective_desired(&self) -> DesiredStatus {
        match self.desired_status {
            DesiredStatus::Active if !self.holds.is_empty() => DesiredStatus::Suspended,
            d => d,
        }
    }

    /// The sealing context of this instance's credentials.
    pub fn secret_context(&self) -> String {
        format!("instance:{}", self.id)
    }

    /// Whether billing's wish is met: converged, or terminated as asked (a terminated
    /// instance's pending reboots no longer count).
    pub fn desired_met(&self) -> bool {
        self.is_converged()
            || (self.effective_desired() == DesiredStatus::Terminated
                && self.observed_status == ObservedStatus::Terminated)
    }

    /// Whether observed matches desired, every requested reboot and reinstall was carried
    /// out, the server is on the product billing wants, and an attached server is marked as
    /// ours (unless the instance is observe-only: then it stays unmarked on purpose).
    pub fn is_converged(&self) -> bool {
        let status_matches = matches!(
            (self.effective_desired(), self.observed_status),
            (DesiredStatus::Active, ObservedStatus::Active)
                | (DesiredStatus::Suspended, ObservedStatus::Suspended)
                | (DesiredStatus::Terminated, ObservedStatus::Terminated)
        );
        let terminated = self.observed_status == ObservedStatus::Terminated;
        status_matches
            && self.reboot_handled == self.reboot_requested
            && (terminated
                || (self.reinstall_handled == self.reinstall_requested
                    && !self.plan_change_due()
                    && (!self.claim_pending || self.observe_only)))
    }

    /// Whether billing moved the instance to another product than its server is on.
    pub fn plan_change_due(&self) -> bool {
        self.provider_server_id.is_some()
            && self
                .applied_product_id
                .as_deref()
                .is_some_and(|applied| applied != self.product_id)
    }

    /// Whether billing asked for a reinstall not yet carried out.
    pub fn reinstall_due(&self) -> bool {
        self.reinstall_handled < self.reinstall_requested
    }
}

/// An order, as billing (or `provisioner instances create`) inserts it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewInstance {
    /// Billing's customer.
    pub customer_id: String,
    /// Billing's order reference.
    pub order_id: Option<String>,
    /// Billing's own service id (unique when set).
    pub billing_ref: Option<String>,
    /// Catalog product id.
    pub product_id: String,
    /// Location, or the product's first.
    pub location: Option<String>,
    /// OS image, or the product's first.
    pub os_image: Option<String>,
    /// Hostname, or derived from the id.
    pub hostname: Option<String>,
    /// SSH public keys, one per line.
    pub ssh_keys: Option<String>,
    /// Usually `None` (active).
    pub desired_status: Option<DesiredStatus>,
    /// Why it starts suspended, if it does.
    pub suspend_reason: Option<String>,
}

/// Which instances to list.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    /// Only this observed status.
    pub observed_status: Option<ObservedStatus>,
    /// Only this desired status.
    pub desired_status: Option<DesiredStatus>,
    /// Only this customer's.
    pub customer_id: Option<String>,
    /// Only this product's.
    pub product_id: Option<String>,
    /// Only instances on this provider account.
    pub provider_account: Option<String>,
    /// Only ids greater than this (paging).
    pub after_id: Option<i64>,
    /// At most this many.
    pub limit: Option<u32>,
    /// Only the instances this names exactly: its id, billing reference, hostname, or an
    /// address.
    pub search: Option<String>,
}

/// One row of the transition log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// Database id (orders transitions of one instance).
    pub id: i64,
    /// The instance.
    pub instance_id: i64,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// Observed status before.
    pub from_status: Option<String>,
    /// Observed status after.
    pub to_status: Option<String>,
    /// What was done.
    pub action: String,
    /// Why.
    pub cause: String,
    /// How it ended.
    pub outcome: String,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Provider request and action ids, and anything else worth keeping.
    pub details: Value,
    /// The product revision in force.
    pub product_revision: Option<String>,
}

/// A transition to append, with the state change it records.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTransition {
    /// What was done.
    pub action: Action,
    /// Why.
    pub cause: Cause,
    /// How it ended.
    pub outcome: Outcome,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Provider ids and other facts (never secrets).
    pub details: Value,
}

impl NewTransition {
    /// A transition with empty details and no error.
    pub fn new(action: Action, cause: Cause, outcome: Outcome) -> Self {
        NewTransition {
            action,
            cause,
            outcome,
            error: None,
            details: Value::Object(serde_json::Map::new()),
        }
    }
}

/// An action in flight, as the reconciler recorded it: decoded once from its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// What is under way.
    pub action: Action,
    /// The provider's action or task being followed, if the provider gave one.
    pub action_id: Option<String>,
    /// Whether the hard fallback (a power-off after a graceful shutdown timed out, a reset
    /// after a graceful reboot) was sent already.
    pub hard: bool,
}

impl Pending {
    /// `action` just recorded: no provider id yet, nothing hard sent.
    pub fn new(action: Action) -> Pending {
        Pending {
            action,
            action_id: None,
            hard: false,
        }
    }
}

/// A worker's exclusive right to act on one instance, until another claim bumps the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The instance.
    pub instance_id: i64,
    /// Who holds it.
    pub owner: String,
    /// The fencing epoch every write is checked against.
    pub epoch: i64,
    /// The desired generation when claimed: if billing changes the instance during the lease,
    /// any later schedule the worker writes becomes "now", so the change is never slept on.
    pub desired_generation: i64,
}

/// A claimed instance and the lease to write with.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The instance as claimed.
    pub instance: Instance,
    /// The lease.
    pub lease: Lease,
    /// The database's clock when the claim was made: every decision of the step compares
    /// stored times (`pending_since`, `updated_at`) with this, never with the process clock,
    /// so that skew between daemon hosts does not leak into timeouts.
    pub now: DateTime<Utc>,
}

/// When the reconciler should look at an instance again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NextCheck {
    /// As soon as possible.
    Now,
    /// After this long.
    After(Duration),
    /// Never (the instance is final).
    Never,
}

/// Reconciler-owned columns to change; `None` leaves a column as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedPatch {
    /// New observed status.
    pub observed_status: Option<ObservedStatus>,
    /// New status reason (`Some(None)` clears it).
    pub status_reason: Option<Option<String>>,
    /// Provider account.
    pub provider_account: Option<Option<String>>,
    /// Provider's server id.
    pub provider_server_id: Option<Option<String>>,
    /// Public IPv4.
    pub ipv4: Option<Option<String>>,
    /// Public IPv6.
    pub ipv6: Option<Option<String>>,
    /// Pinned product revision.
    pub product_revision: Option<String>,
    /// Reboots carried out.
    pub reboot_handled: Option<i64>,
    /// The desired generation acted on.
    pub observed_generation: Option<i64>,
    /// Sealed credentials (`Some(None)` clears them).
    pub credentials: Option<Option<Sealed>>,
    /// Last error (`Some(None)` clears it).
    pub last_error: Option<Option<String>>,
    /// Consecutive failed attempts.
    pub attempts: Option<i64>,
    /// Reinstalls carried out.
    pub reinstall_handled: Option<i64>,
    /// The product the server is now on.
    pub applied_product_id: Option<String>,
    /// Whether the instance is watched only.
    pub observe_only: Option<bool>,
    /// Whether its server still waits to be marked as ours.
    pub claim_pending: Option<bool>,
    /// Action in flight (`Some(None)` clears it); setting one also sets its start time.
    pub pending: Option<Option<Pending>>,
    /// Next check.
    pub next_check: Option<NextCheck>,
    /// Give the lease back in the same write (the last write of a step).
    pub release_lease: bool,
}

/// A product revision as stored when the catalog loaded it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRevision {
    /// Product id.
    pub product_id: String,
    /// Revision.
    pub revision: String,
    /// The normalised definition.
    pub definition: Value,
    /// When first loaded.
    pub loaded_at: DateTime<Utc>,
    /// Catalog git commit at that time.
    pub git_commit: Option<String>,
}

/// A manual task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Database id.
    pub id: i64,
    /// The instance.
    pub instance_id: i64,
    /// What to do.
    pub kind: TaskKind,
    /// Where it stands.
    pub state: TaskState,
    /// When opened.
    pub created_at: DateTime<Utc>,
    /// When completed or cancelled.
    pub completed_at: Option<DateTime<Utc>>,
    /// Who completed it.
    pub completed_by: Option<String>,
    /// What the reconciler asked and what the admin recorded (address, note; never secrets).
    pub details: Value,
    /// The password the admin recorded, sealed.
    pub secret: Option<Sealed>,
}

impl Task {
    /// The sealing context of this task's secret.
    pub fn secret_context(&self) -> String {
        format!("task:{}", self.id)
    }
}

/// The addresses an admin gave for completing a task of `kind`, checked: addresses that
/// parse, and an address for a provision task (the customer's server must be reachable).
/// `names` are what the caller calls the two fields (`--ip`, or `ip` in a JSON body).
///
/// # Errors
/// What is wrong, naming the field.
pub fn completion_addresses(
    kind: TaskKind,
    ip: Option<&str>,
    ipv6: Option<&str>,
    names: [&str; 2],
) -> Result<(Option<String>, Option<String>), String> {
    let v4 = ip
        .map(|a| {
            a.trim()
                .parse::<std::net::Ipv4Addr>()
                .map(|a| a.to_string())
                .map_err(|_| {
                    format!(
                        "{} `{}` is not an IPv4 address (e.g. 192.0.2.10)",
                        names[0],
                        a.escape_default()
                    )
                })
        })
        .transpose()?;
    let v6 = ipv6
        .map(|a| {
            a.trim()
                .parse::<std::net::Ipv6Addr>()
                .map(|a| a.to_string())
                .map_err(|_| {
                    format!(
                        "{} `{}` is not an IPv6 address (e.g. 2001:db8::10)",
                        names[1],
                        a.escape_default()
                    )
                })
        })
        .transpose()?;
    if kind == TaskKind::Provision && v4.is_none() && v6.is_none() {
        return Err(format!(
            "a provision task needs the server's address: give {} (and/or {})",
            names[0], names[1]
        ));
    }
    Ok((v4, v6))
}

/// What an admin recorded when completing a task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskCompletion {
    /// Who.
    pub by: String,
    /// Address, note and other non-secret facts, merged into the task's details.
    pub details: Value,
    /// The root password, sealed with the task's context.
    pub secret: Option<Sealed>,
}

/// A suspension hold: one independent reason to keep a server off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The instance held.
    pub instance_id: i64,
    /// `billing`, `abuse`, `admin` or any lower-case word.
    pub kind: String,
    /// Why.
    pub reason: Option<String>,
    /// Who placed it.
    pub placed_by: String,
    /// When.
    pub placed_at: DateTime<Utc>,
}

/// Which tasks to list.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only open tasks.
    pub open_only: bool,
    /// Only this instance's.
    pub instance_id: Option<i64>,
}

/// The size of the work queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Instances due now.
    pub due: i64,
    /// Instances leased by a worker.
    pub leased: i64,
    /// All instances.
    pub total: i64,
}
