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
//! | [`secrets`] | root passwords and panel credentials sealed at rest; keys and rotation |
//! | [`cli`] | the `provisioner` command line: arguments, output formats, exit codes |
//!
//! Still to come, each in its own module: `provider` (sim, manual, hetzner, digitalocean, ovh),
//! `reconcile` (planner and executor) and `api` (health, metrics).

pub mod catalog;
pub mod cli;
pub mod secrets;
pub mod store;
mod vocab;
