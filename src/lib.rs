//! # provisioner
//!
//! A declarative reconciliation controller that sells and runs VPS and dedicated servers.
//! Ops declare products and provider accounts in a versioned YAML catalog; a billing system
//! writes what each customer's server should be; a daemon makes the providers agree.
//!
//! Where things live:
//!
//! | module | what it holds |
//! |---|---|
//! | [`catalog`] | the YAML catalog: located parsing, validation with every error at `file:line:column`, product revisions, diffs, hot reload |
//! | [`store`] | instances, the transition log, product revisions and manual tasks on SQLite or PostgreSQL; the billing contract |
//! | [`provider`] | the provider trait, error classes, per-account rate budgets, and the `sim` and `manual` modules |
//! | [`reconcile`] | the planner (pure), the executor, the daemon's work loop, resyncs, HTTP health and metrics |
//! | [`secrets`] | root passwords and panel credentials sealed at rest; keys and rotation |
//! | [`api`] | the daemon's HTTP endpoints: `/healthz`, `/readyz`, `/metrics` |
//! | [`cli`] | the `provisioner` command line: arguments, output formats, exit codes |
//!
//! Still to come: the hetzner, digitalocean and ovh provider modules.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod provider;
pub mod reconcile;
pub mod secrets;
pub mod store;
mod vocab;
