//! The reconciler: plan, execute, converge.
//!
//! - [`plan`]: pure decisions (the next step; whether an action in flight is done);
//! - [`execute`]: one step for one claimed instance, intent before effect;
//! - [`daemon`]: work sources (due rows, NOTIFY, catalog reloads, resyncs), bounded workers,
//!   graceful shutdown, and the HTTP endpoints;
//! - [`metrics`]: the figures on `/metrics`.

pub mod daemon;
pub mod execute;
pub mod metrics;
pub mod plan;
pub mod view;
