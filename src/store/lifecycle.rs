//! Suspension holds and the admins' recovery of lost and failed instances: store verbs, each
//! one transaction with the transition it records.

use serde_json::json;

use super::engine::Arg;
use super::{
    commit_with, fence_args, fence_failure, insert_transition, instance_from, instance_in, Action,
    Cause, Hold, Instance, Lease, NewTransition, ObservedStatus, Outcome, Result, SqlStore,
    StoreError, FENCE,
};

fn hold_from(r: &super::engine::Row) -> Result<Hold> {
    Ok(Hold {
        instance_id: r.int("instance_id")?,
        kind: r.text("kind")?,
        reason: r.opt_text("reason")?,
        placed_by: r.text("placed_by")?,
        placed_at: r.ts("placed_at")?,
    })
}

/// The database's mirror of a set of kinds: sorted, comma-separated, NULL for none.
fn mirror(kinds: &[String]) -> Option<String> {
    (!kinds.is_empty()).then(|| kinds.join(","))
}

impl SqlStore {
    /// The holds on an instance, by kind.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn holds(&self, instance_id: i64) -> Result<Vec<Hold>> {
        let mut tx = self.pool.read().await?;
        tx.rows(
            "SELECT * FROM instance_holds WHERE instance_id = $1 ORDER BY kind",
            vec![Arg::Int(instance_id)],
        )
        .await?
        .iter()
        .map(hold_from)
        .collect()
    }

    /// The instance whose `billing_ref` is `reference`, if any.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn instance_by_billing_ref(&self, reference: &str) -> Result<Option<Instance>> {
        let mut tx = self.pool.read().await?;
        tx.row(
            "SELECT * FROM instances WHERE billing_ref = $1",
            vec![reference.into()],
        )
        .await?
        .as_ref()
        .map(instance_from)
        .transpose()
    }

    /// Places (or updates the reason of) the hold of `kind` on an instance, as billing's SQL
    /// would: the database checks the kind and that the instance is live.
    ///
    /// # Errors
    /// [`StoreError::Rejected`] with the database's reason (a kind with spaces, a terminated
    /// instance), [`StoreError::InstanceNotFound`].
    pub async fn place_hold(
        &self,
        instance_id: i64,
        kind: &str,
        reason: Option<&str>,
        by: &str,
    ) -> Result<Hold> {
        let mut tx = self.pool.write().await?;
        if tx
            .row(
                "SELECT id FROM instances WHERE id = $1",
                vec![Arg::Int(instance_id)],
            )
            .await?
            .is_none()
        {
            return Err(StoreError::InstanceNotFound(instance_id));
        }
        let row = tx
            .row(
                "INSERT INTO instance_holds (instance_id, kind, reason, placed_by)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (instance_id, kind)
                 DO UPDATE SET reason = excluded.reason, placed_by = excluded.placed_by
                 RETURNING *",
                vec![Arg::Int(instance_id), kind.into(), reason.into(), by.into()],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt("INSERT … RETURNING returned no row".into()))?;
        let hold = hold_from(&row)?;
        tx.commit().await?;
        Ok(hold)
    }

    /// Lifts the hold of `kind`; `false` when there was none.
    ///
    /// # Errors
    /// When the database refuses or cannot be written.
    pub async fn release_hold(&self, instance_id: i64, kind: &str) -> Result<bool> {
        let mut tx = self.pool.write().await?;
        let n = tx
            .execute(
                "DELETE FROM instance_holds WHERE instance_id = $1 AND kind = $2",
                vec![Arg::Int(instance_id), kind.into()],
            )
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Records a transition for every hold placed or lifted since the reconciler last looked
    /// (`holds_seen`), fenced by the lease, and remembers what it saw. Returns the instance as
    /// updated.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when the lease is stale.
    pub async fn note_holds(&self, lease: &Lease, i: &Instance) -> Result<Instance> {
        let mut tx = self.pool.write().await?;
        let holds: Vec<Hold> = tx
            .rows(
                "SELECT * FROM instance_holds WHERE instance_id = $1 ORDER BY kind",
                vec![Arg::Int(i.id)],
            )
            .await?
            .iter()
            .map(hold_from)
            .collect::<Result<_>>()?;
        let kinds: Vec<String> = holds.iter().map(|h| h.kind.clone()).collect();
        let mut args = fence_args(lease);
        args.push(mirror(&kinds).into());
        let Some(row) = tx
            .row(
                &format!("UPDATE instances SET holds_seen = $4 WHERE {FENCE} RETURNING *"),
                args,
            )
            .await?
        else {
            return Err(fence_failure(&mut tx, lease).await);
        };
        let after = instance_from(&row)?;
        let status = i.observed_status;
        for h in holds.iter().filter(|h| !i.holds_seen.contains(&h.kind)) {
            let mut t = NewTransition::new(Action::Hold, Cause::Manual, Outcome::Succeeded);
            t.details = json!({"kind": h.kind, "reason": h.reason, "by": h.placed_by});
            insert_transition(
                &mut tx,
                i.id,
                status,
                status,
                &t,
                i.product_revision.clone(),
                &h.placed_by,
            )
            .await?;
        }
        for kind in i.holds_seen.iter().filter(|k| !kinds.contains(k)) {
            let mut t = NewTransition::new(Action::Release, Cause::Manual, Outcome::Succeeded);
            t.details = json!({"kind": kind});
            insert_transition(
                &mut tx,
                i.id,
                status,
                status,
                &t,
                i.product_revision.clone(),
                "holds",
            )
            .await?;
        }
        tx.commit().await?;
        Ok(after)
    }

    /// Records that `by` read the instance's credentials (a transition of its own, so that
    /// every reading is in the history).
    ///
    /// # Errors
    /// [`StoreError::InstanceNotFound`], or when the database cannot be written.
    pub async fn record_reveal(&self, id: i64, by: &str) -> Result<()> {
        let mut tx = self.pool.write().await?;
        let i = instance_in(&mut tx, id).await?;
        let t = NewTransition::new(Action::Reveal, Cause::Manual, Outcome::Succeeded);
        commit_with(tx, i.observed_status, i.clone(), &t, i.product_revision, by)
            .await
            .map(drop)
    }

    /// Moves an instance to `product` (billing's change of plan, as `UPDATE instances SET
    /// product_id = …` does).
    ///
    /// # Errors
    /// [`StoreError::InstanceNotFound`], or the database's refusal (a terminated instance).
    pub async fn change_product(&self, id: i64, product: &str) -> Result<Instance> {
        self.billing_update(
            id,
            "UPDATE instances SET product_id = $2 WHERE id = $1 RETURNING *",
            vec![Arg::Int(id), product.into()],
        )
        .await
    }

    /// Asks for one more reinstall (`reinstall_requested + 1`), of `os_image` when given.
    ///
    /// # Errors
    /// [`StoreError::InstanceNotFound`], or the database's refusal (a terminated instance).
    pub async fn request_reinstall(&self, id: i64, os_image: Option<&str>) -> Result<Instance> {
        self.billing_update(
            id,
            "UPDATE instances SET reinstall_requested = reinstall_requested + 1,
                    os_image = COALESCE($2, os_image)
              WHERE id = $1 RETURNING *",
            vec![Arg::Int(id), os_image.map(str::to_owned).into()],
        )
        .await
    }

    async fn billing_update(&self, id: i64, sql: &str, args: Vec<Arg>) -> Result<Instance> {
        let mut tx = self.pool.write().await?;
        let row = tx
            .row(sql, args)
            .await?
            .ok_or(StoreError::InstanceNotFound(id))?;
        let instance = super::reread(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(instance)
    }

    /// A fresh server for a `lost` instance (or a `failed` one that has no server): the
    /// instance starts over from `pending` under its current product; the old server's id
    /// stays in the history.
    ///
    /// # Errors
    /// [`StoreError::Rejected`] for any other instance (a failed instance with a server is
    /// taken up by `retry`; a second server would be a duplicate).
    pub async fn recreate(&self, id: i64, by: &str) -> Result<Instance> {
        self.recover(id, by, Action::Recreate).await
    }

    /// Marks a `lost` or `failed` instance whose server is already gone terminated, without
    /// any provider call (billing's desired status becomes `terminated` too).
    ///
    /// # Errors
    /// [`StoreError::Rejected`] for any other instance.
    pub async fn forget(&self, id: i64, by: &str) -> Result<Instance> {
        self.recover(id, by, Action::Forget).await
    }

    /// A person's recovery of an instance the reconciler stopped on: `retry` (failed only),
    /// `recreate` or `forget` (lost or failed), one transaction with its transition.
    pub(super) async fn recover(&self, id: i64, by: &str, action: Action) -> Result<Instance> {
        let mut tx = self.pool.write().await?;
        let before = instance_in(&mut tx, id).await?;
        let (sql, args) = recovery(&before, action)?;
        let row = tx
            .row(sql, args)
            .await?
            .ok_or(StoreError::InstanceNotFound(id))?;
        let after = instance_from(&row)?;
        let mut t = NewTransition::new(action, Cause::Manual, Outcome::Succeeded);
        if action != Action::Retry {
            t.details = json!({
                "old_server": before.provider_server_id,
                "old_account": before.provider_account,
                "was": before.observed_status.as_str(),
            });
        }
        let revision = before.product_revision.clone();
        commit_with(tx, before.observed_status, after, &t, revision, by).await
    }
}

/// The write a recovery makes, or why it is refused.
fn recovery(before: &Instance, action: Action) -> Result<(&'static str, Vec<Arg>)> {
    let id = before.id;
    let refuse = |message: String| Err(StoreError::Rejected(message));
    let stuck = matches!(
        before.observed_status,
        ObservedStatus::Lost | ObservedStatus::Failed
    );
    match action {
        Action::Retry => {
            if before.observed_status != ObservedStatus::Failed {
                return refuse(format!(
                    "instance {id} is {}, not failed: only failed instances are retried",
                    before.observed_status
                ));
            }
            // Without a server there is nothing to look at: start over from pending. With
            // one, look at it first and reconcile from what is there.
            let (status, pending) = match before.provider_server_id {
                None => ("pending", None),
                Some(_) => ("failed", Some(Action::Observe.as_str())),
            };
            Ok((
                "UPDATE instances
                    SET observed_status = $2, status_reason = NULL, last_error = NULL,
                        attempts = 0, pending_action = $3, pending_action_id = NULL,
                        pending_hard = $4,
                        pending_since = CASE WHEN $3 IS NULL THEN NULL ELSE {now} END,
                        next_check_at = {now}, lease_owner = NULL, lease_expires_at = NULL,
                        lease_epoch = lease_epoch + 1, updated_at = {now}
                  WHERE id = $1 RETURNING *",
                vec![Arg::Int(id), status.into(), pending.into(), Arg::Bool(false)],
            ))
        }
        Action::Recreate | Action::Forget if !stuck => refuse(format!(
            "instance {id} is {}: only lost or failed instances are {}",
            before.observed_status,
            if action == Action::Recreate {
                "recreated"
            } else {
                "forgotten"
            }
        )),
        Action::Recreate if before.desired_status == super::DesiredStatus::Terminated => refuse(
            format!("instance {id} is terminated by billing: there is nothing to recreate (`forget` closes it)"),
        ),
        Action::Recreate
            if before.observed_status == ObservedStatus::Failed
                && before.provider_server_id.is_some() =>
        {
            refuse(format!(
                "instance {id} is failed with server {} at the provider: `retry` takes it up again; a recreate would build a second server",
                before.provider_server_id.as_deref().unwrap_or_default()
            ))
        }
        Action::Recreate => Ok((
            "UPDATE instances
                SET observed_status = 'pending', status_reason = NULL, last_error = NULL,
                    attempts = 0, provider_account = NULL, provider_server_id = NULL,
                    ipv4 = NULL, ipv6 = NULL, credentials_sealed = NULL,
                    credentials_key_id = NULL, product_revision = NULL,
                    applied_product_id = NULL, pending_action = NULL, pending_action_id = NULL, pending_hard = $2,
                    pending_since = NULL, next_check_at = {now}, lease_owner = NULL,
                    lease_expires_at = NULL, lease_epoch = lease_epoch + 1, updated_at = {now}
              WHERE id = $1 RETURNING *",
            vec![Arg::Int(id), Arg::Bool(false)],
        )),
        Action::Forget => Ok((
            "UPDATE instances
                SET desired_status = 'terminated', observed_status = 'terminated',
                    status_reason = 'forgotten by an admin: the server was already gone',
                    pending_action = NULL, pending_action_id = NULL, pending_hard = $2,
                    pending_since = NULL, next_check_at = {now}, lease_owner = NULL,
                    lease_expires_at = NULL, lease_epoch = lease_epoch + 1, updated_at = {now}
              WHERE id = $1 RETURNING *",
            vec![Arg::Int(id), Arg::Bool(false)],
        )),
        other => refuse(format!("`{other}` is not a recovery")),
    }
}
