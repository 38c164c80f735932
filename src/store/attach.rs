//! Servers an admin attaches to instances: imported (`instances import`), adopted for a lost
//! or failed instance (`instances adopt`), and observe-only imports let go (`instances
//! manage`). Each verb is one transaction with its transition; the reconciler then marks the
//! server as ours at the provider (`claim_pending`).

use serde_json::json;

use super::engine::{Arg, Tx};
use super::{
    commit_with, insert_instance, instance_from, instance_in, Action, Cause, Instance, NewInstance,
    NewTransition, ObservedStatus, Outcome, Result, SqlStore, StoreError,
};

/// A server at the provider, as an admin attaches it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attached {
    /// The account holding it.
    pub account: String,
    /// The provider's id.
    pub server_id: String,
    /// What it is now: `active` (running) or `suspended` (powered off).
    pub status: ObservedStatus,
    /// Public IPv4.
    pub ipv4: Option<String>,
    /// Public IPv6.
    pub ipv6: Option<String>,
    /// The product revision it is sold under.
    pub product_revision: String,
    /// What the provider said of it, for the history (name, plan).
    pub details: serde_json::Value,
}

/// Whether `i` may adopt a server: lost or failed, and not terminated by billing.
///
/// # Errors
/// Why not.
pub fn adoptable(i: &Instance) -> std::result::Result<(), String> {
    if !matches!(
        i.observed_status,
        ObservedStatus::Lost | ObservedStatus::Failed
    ) {
        return Err(format!(
            "instance {} is {}: only lost or failed instances adopt a server",
            i.id, i.observed_status
        ));
    }
    if i.desired_status == super::DesiredStatus::Terminated {
        return Err(format!(
            "instance {} is terminated by billing: there is nothing to adopt a server for (`forget` closes it)",
            i.id
        ));
    }
    Ok(())
}

/// The live instance that has `server_id` of `account` already, if any.
async fn holder(tx: &mut Tx, account: &str, server_id: &str) -> Result<Option<i64>> {
    tx.row(
        "SELECT id FROM instances
          WHERE provider_account = $1 AND provider_server_id = $2
            AND observed_status <> 'terminated'",
        vec![account.into(), server_id.into()],
    )
    .await?
    .map(|r| r.int("id"))
    .transpose()
}

fn taken(server: &Attached, other: i64) -> StoreError {
    StoreError::Rejected(format!(
        "server {} of account `{}` is instance {other}'s already: a server belongs to one instance",
        server.server_id, server.account
    ))
}

/// The reconciler's half of an attached server: where it is, what it is, and that it is
/// still to be marked as ours.
async fn attach(tx: &mut Tx, id: i64, server: &Attached, observe_only: bool) -> Result<Instance> {
    let row = tx
        .row(
            "UPDATE instances
                SET observed_status = $2, status_reason = NULL, last_error = NULL, attempts = 0,
                    provider_account = $3, provider_server_id = $4, ipv4 = $5, ipv6 = $6,
                    product_revision = COALESCE(product_revision, $7),
                    applied_product_id = product_id, observe_only = $8, claim_pending = $9,
                    credentials_sealed = CASE WHEN provider_server_id = $4
                                              THEN credentials_sealed END,
                    credentials_key_id = CASE WHEN provider_server_id = $4
                                              THEN credentials_key_id END,
                    pending_action = NULL, pending_action_id = NULL, pending_hard = $10,
                    pending_since = NULL, next_check_at = {now}, lease_owner = NULL,
                    lease_expires_at = NULL, lease_epoch = lease_epoch + 1, updated_at = {now}
              WHERE id = $1 RETURNING *",
            vec![
                Arg::Int(id),
                server.status.as_str().into(),
                server.account.as_str().into(),
                server.server_id.as_str().into(),
                server.ipv4.clone().into(),
                server.ipv6.clone().into(),
                server.product_revision.as_str().into(),
                Arg::Bool(observe_only),
                Arg::Bool(true),
                Arg::Bool(false),
            ],
        )
        .await?
        .ok_or(StoreError::InstanceNotFound(id))?;
    instance_from(&row)
}

/// Which servers of an account its live instances hold, for the orphan check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    /// The server ids live instances have.
    pub held: std::collections::HashSet<String>,
    /// Live instances with no server yet (their create may be in flight).
    pub awaiting: std::collections::HashSet<i64>,
}

impl Holdings {
    /// Counts `i` in, if it is live.
    pub fn note(&mut self, i: &Instance) {
        if i.observed_status == ObservedStatus::Terminated {
            return;
        }
        match &i.provider_server_id {
            Some(server) => self.held.insert(server.clone()),
            None => self.awaiting.insert(i.id),
        };
    }
}

impl SqlStore {
    /// The servers `account`'s live instances hold, and those still waiting for one.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn holdings(&self, account: &str) -> Result<Holdings> {
        let mut tx = self.pool.read().await?;
        let rows = tx
            .rows(
                "SELECT id, provider_server_id FROM instances
                  WHERE provider_account = $1 AND observed_status <> 'terminated'",
                vec![account.into()],
            )
            .await?;
        let mut out = Holdings::default();
        for r in &rows {
            match r.opt_text("provider_server_id")? {
                Some(server) => out.held.insert(server),
                None => out.awaiting.insert(r.int("id")?),
            };
        }
        Ok(out)
    }

    /// Creates an instance for a server that exists at the provider (made before
    /// provisioner, or by hand): billing's columns from `new`, the server's facts from
    /// `server`. With `observe_only` the reconciler calls no mutating API for it until
    /// [`SqlStore::manage`].
    ///
    /// # Errors
    /// [`StoreError::Rejected`] when the server is another live instance's, or the database
    /// refuses billing's columns (a duplicate `billing_ref`, say).
    pub async fn import(
        &self,
        new: &NewInstance,
        server: &Attached,
        observe_only: bool,
        by: &str,
    ) -> Result<Instance> {
        let mut tx = self.pool.write().await?;
        if let Some(other) = holder(&mut tx, &server.account, &server.server_id).await? {
            return Err(taken(server, other));
        }
        let inserted = insert_instance(&mut tx, new).await?;
        let after = attach(&mut tx, inserted.id, server, observe_only).await?;
        let mut t = NewTransition::new(Action::Import, Cause::Manual, Outcome::Succeeded);
        t.details = json!({
            "server": server.server_id,
            "account": server.account,
            "observe_only": observe_only,
            "found": server.details,
        });
        let revision = after.product_revision.clone();
        commit_with(tx, ObservedStatus::Pending, after, &t, revision, by).await
    }

    /// Attaches an existing server to a `lost` or `failed` instance in place of the one it
    /// had (kept in its history); the reconciler marks it as ours and goes on from what it is.
    ///
    /// # Errors
    /// [`StoreError::Rejected`] for any other instance, one billing terminated, or a server
    /// another live instance has.
    pub async fn adopt(&self, id: i64, server: &Attached, by: &str) -> Result<Instance> {
        let mut tx = self.pool.write().await?;
        let before = instance_in(&mut tx, id).await?;
        adoptable(&before).map_err(StoreError::Rejected)?;
        if let Some(other) = holder(&mut tx, &server.account, &server.server_id)
            .await?
            .filter(|other| *other != id)
        {
            return Err(taken(server, other));
        }
        let after = attach(&mut tx, id, server, before.observe_only).await?;
        let mut t = NewTransition::new(Action::Adopt, Cause::Manual, Outcome::Succeeded);
        t.details = json!({
            "server": server.server_id,
            "account": server.account,
            "old_server": before.provider_server_id,
            "old_account": before.provider_account,
            "was": before.observed_status.as_str(),
            "found": server.details,
        });
        let revision = after.product_revision.clone();
        commit_with(tx, before.observed_status, after, &t, revision, by).await
    }

    /// Lets the reconciler act on an instance imported observe-only: from now on it is
    /// managed like any other (its server is marked as ours first). A step in flight, planned
    /// while the instance was observe-only, is fenced off: its writes (a later next check)
    /// would otherwise delay the change.
    ///
    /// # Errors
    /// [`StoreError::Rejected`] when the instance is not observe-only.
    pub async fn manage(&self, id: i64, by: &str) -> Result<Instance> {
        let mut tx = self.pool.write().await?;
        let before = instance_in(&mut tx, id).await?;
        if !before.observe_only {
            return Err(StoreError::Rejected(format!(
                "instance {id} is managed already: only instances imported with --observe-only are let go"
            )));
        }
        let row = tx
            .row(
                "UPDATE instances
                    SET observe_only = $2, status_reason = NULL, next_check_at = {now},
                        lease_owner = NULL, lease_expires_at = NULL,
                        lease_epoch = lease_epoch + 1, updated_at = {now}
                  WHERE id = $1 RETURNING *",
                vec![Arg::Int(id), Arg::Bool(false)],
            )
            .await?
            .ok_or(StoreError::InstanceNotFound(id))?;
        let after = instance_from(&row)?;
        let t = NewTransition::new(Action::Manage, Cause::Manual, Outcome::Succeeded);
        let revision = after.product_revision.clone();
        commit_with(tx, before.observed_status, after, &t, revision, by).await
    }
}
