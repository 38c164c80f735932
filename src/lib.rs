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
//! | [`store`] | instances, the transition log, product revisions, manual tasks, the sim's cloud and the OVH pool on SQLite or PostgreSQL; the billing contract; all SQL lives here |
//! | [`provider`] | the provider trait and each module's policy, error classes, accounts built from the catalog, per-account rate budgets, the shared HTTP client and listing; the `sim`, `manual`, `hetzner`, `digitalocean` and `ovh` modules |
//! | [`reconcile`] | the planner and the decisions after a provider's answer (both pure), the executor that records them, the daemon's work loop, resyncs and shutdown |
//! | [`metrics`] | the daemon's figures, rendered for Prometheus |
//! | [`memory`] | the allocator's arenas bounded, and freed memory given back after large listings |
//! | [`secrets`] | root passwords and panel credentials sealed at rest; keys, the key file beside a SQLite database, rotation |
//! | [`api`] | the daemon's HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, and the billing API under `/v1` with its OpenAPI document |
//! | [`console`] | the ops console at `/ui/`: server-rendered pages, sessions and CSRF, built-in assets |
//! | [`events`] | the event types billing hears of, which change causes which, and what an event carries (pure) |
//! | [`notify`] | webhook deliveries (Standard Webhooks) and admin e-mail, read from the event outbox |
//! | [`cli`] | the `provisioner` command line: arguments, output formats, exit codes |

pub mod api;
pub mod catalog;
pub mod cli;
pub mod console;
pub mod events;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod provider;
pub mod reconcile;
pub mod secrets;
pub mod store;
mod vocab;
