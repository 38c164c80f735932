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
//! | [`cli`] | the `provisioner` command line: arguments, output formats, exit codes |
//!
//! Still to come, each in its own module: `store` (instances, transitions, billing contract;
//! SQLite and PostgreSQL), `provider` (sim, manual, hetzner, digitalocean, ovh), `reconcile`
//! (planner and executor) and `api` (health, metrics).

pub mod catalog;
pub mod cli;
