//! The OVH module's pool (`ovh_pool`): which dedicated server of an account's pool is given
//! to which instance. `instance_id` is unique and a server is allocated by a conditional
//! `UPDATE`, so a server is never given to two instances, across restarts and daemons.

use super::engine::{Arg, Row};
use super::{Result, SqlStore};

/// One allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSlot {
    /// The OVH service name of the server.
    pub service_name: String,
    /// `free`, `installing`, `ready` or `wiping`.
    pub state: String,
    /// The OS it was installed with.
    pub os_image: Option<String>,
    /// `harddisk` or `rescue` (suspended).
    pub boot: String,
    /// The OVH task being followed.
    pub task_id: Option<String>,
}

/// A change to an allocation; `None` fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolChange {
    /// New state.
    pub state: Option<&'static str>,
    /// The OS installed.
    pub os_image: Option<String>,
    /// What the server boots.
    pub boot: Option<&'static str>,
    /// The task followed (`Some(None)` clears it).
    pub task_id: Option<Option<String>>,
}

fn slot_from(row: &Row) -> Result<PoolSlot> {
    Ok(PoolSlot {
        service_name: row.text("service_name")?,
        state: row.text("state")?,
        os_image: row.opt_text("os_image")?,
        boot: row.text("boot")?,
        task_id: row.opt_text("task_id")?,
    })
}

impl SqlStore {
    /// The server allocated to `instance_id` in `account`'s pool, if any.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn pool_slot(&self, account: &str, instance_id: i64) -> Result<Option<PoolSlot>> {
        let mut tx = self.pool().read().await?;
        tx.row(
            "SELECT service_name, state, os_image, boot, task_id FROM ovh_pool
              WHERE account = $1 AND instance_id = $2",
            vec![account.into(), Arg::Int(instance_id)],
        )
        .await?
        .as_ref()
        .map(slot_from)
        .transpose()
    }

    /// Gives `instance_id` the first free server among `candidates` (service names), or the
    /// one it has already; `None` when none is free.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn pool_allocate(
        &self,
        account: &str,
        instance_id: i64,
        candidates: &[&str],
    ) -> Result<Option<PoolSlot>> {
        if let Some(s) = self.pool_slot(account, instance_id).await? {
            return Ok(Some(s));
        }
        let mut tx = self.pool().write().await?;
        for name in candidates {
            tx.execute(
                "INSERT INTO ovh_pool (service_name, account) VALUES ($1, $2)
                 ON CONFLICT (service_name) DO NOTHING",
                vec![(*name).into(), account.into()],
            )
            .await?;
        }
        tx.commit().await?;
        // One conditional UPDATE per candidate: of several daemons racing for a server, the
        // first one's UPDATE matches and the others' match nothing and move on.
        for name in candidates {
            let mut tx = self.pool().write().await?;
            let taken = tx
                .execute(
                    "UPDATE ovh_pool SET instance_id = $3, state = 'installing', boot = 'harddisk',
                            task_id = NULL, updated_at = {now}
                      WHERE account = $1 AND service_name = $2 AND state = 'free'
                        AND instance_id IS NULL
                        AND NOT EXISTS (SELECT 1 FROM instances i
                                         WHERE i.provider_account = $1
                                           AND i.provider_server_id = $2
                                           AND i.observed_status <> 'terminated')",
                    vec![account.into(), (*name).into(), Arg::Int(instance_id)],
                )
                .await?;
            tx.commit().await?;
            if taken == 1 {
                return self.pool_slot(account, instance_id).await;
            }
        }
        Ok(None)
    }

    /// Changes `instance_id`'s allocation.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn pool_update(
        &self,
        account: &str,
        instance_id: i64,
        change: &PoolChange,
    ) -> Result<()> {
        let mut args: Vec<Arg> = vec![account.into(), Arg::Int(instance_id)];
        let mut sets = vec!["updated_at = {now}".to_owned()];
        let mut set = |column: &str, value: Arg| {
            args.push(value);
            sets.push(format!("{column} = ${}", args.len()));
        };
        if let Some(v) = change.state {
            set("state", v.into());
        }
        if let Some(v) = &change.os_image {
            set("os_image", v.as_str().into());
        }
        if let Some(v) = change.boot {
            set("boot", v.into());
        }
        if let Some(v) = &change.task_id {
            set("task_id", v.clone().into());
        }
        let mut tx = self.pool().write().await?;
        tx.execute(
            &format!(
                "UPDATE ovh_pool SET {} WHERE account = $1 AND instance_id = $2",
                sets.join(", ")
            ),
            args,
        )
        .await?;
        tx.commit().await
    }

    /// Gives `instance_id`'s server back to the pool, free for the next order.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn pool_release(&self, account: &str, instance_id: i64) -> Result<()> {
        let mut tx = self.pool().write().await?;
        tx.execute(
            "UPDATE ovh_pool SET instance_id = NULL, state = 'free', task_id = NULL,
                    os_image = NULL, boot = 'harddisk', updated_at = {now}
              WHERE account = $1 AND instance_id = $2",
            vec![account.into(), Arg::Int(instance_id)],
        )
        .await?;
        tx.commit().await
    }

    /// The instance `service_name` of `account`'s pool is allocated to, if any.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn pool_owner(&self, account: &str, service_name: &str) -> Result<Option<i64>> {
        let mut tx = self.pool().read().await?;
        let row = tx
            .row(
                "SELECT instance_id FROM ovh_pool
                  WHERE account = $1 AND service_name = $2 AND instance_id IS NOT NULL",
                vec![account.into(), service_name.into()],
            )
            .await?;
        row.map(|r| r.int("instance_id")).transpose()
    }

    /// Allocates `service_name` to `instance_id` as an installed server (an imported or
    /// adopted one), whether or not the catalog lists it in the pool; allocating it again is a
    /// no-op. `false` when the server is another instance's, or another account's.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn pool_claim(
        &self,
        account: &str,
        service_name: &str,
        instance_id: i64,
    ) -> Result<bool> {
        let mut tx = self.pool().write().await?;
        tx.execute(
            "INSERT INTO ovh_pool (service_name, account) VALUES ($1, $2)
             ON CONFLICT (service_name) DO NOTHING",
            vec![service_name.into(), account.into()],
        )
        .await?;
        tx.execute(
            "UPDATE ovh_pool SET instance_id = $3, state = 'ready', boot = 'harddisk',
                    task_id = NULL, updated_at = {now}
              WHERE service_name = $1 AND account = $2 AND instance_id IS NULL AND state = 'free'",
            vec![service_name.into(), account.into(), Arg::Int(instance_id)],
        )
        .await?;
        let owner = tx
            .row(
                "SELECT instance_id FROM ovh_pool WHERE service_name = $1 AND account = $2",
                vec![service_name.into(), account.into()],
            )
            .await?
            .map(|r| r.opt_text("instance_id"))
            .transpose()?
            .flatten();
        tx.commit().await?;
        Ok(owner == Some(instance_id.to_string()))
    }
}
