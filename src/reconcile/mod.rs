//! The reconciler: plan, decide, execute, converge. It names no provider module: each module
//! states its [`Policy`](crate::provider::Policy) behind the provider seam.
//!
//! - [`attach`]: which servers belong to whom (imports, adoptions, orphans); pure;
//! - [`plan`]: the first decision of a step (what to do), and whether an action in flight is
//!   done by the server's power state; pure;
//! - [`decide`]: everything decided after a provider answered (create answers, followed
//!   actions and hard escalation, adoption, not-found, the error policy, drift, the next
//!   check); pure;
//! - [`execute`]: one step for one claimed instance: intent, call, decision, record;
//! - [`resync`]: the periodic bulk listing of each account: drift, servers gone, orphans;
//! - [`lease`]: the daemon's owner name, and the heartbeat renewing its steps' leases;
//! - [`daemon`]: work sources (due rows, NOTIFY, catalog reloads, resyncs), bounded workers,
//!   graceful shutdown with a drain deadline, and the HTTP endpoints.

pub mod adopt;
pub mod attach;
pub mod daemon;
pub mod decide;
pub mod execute;
pub mod lease;
pub mod plan;
pub mod resize;
pub mod resync;
