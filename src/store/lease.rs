//! Leases beyond the claim: renewing the ones a daemon is working under (its heartbeat), and
//! the daemon's owner identity, held for as long as the daemon lives, which lets a restarted
//! daemon take back at once the leases its dead predecessor held.
//!
//! Safety never rests on the identity: every write is fenced by the lease's epoch, and a claim
//! bumps the epoch, so even two daemons with one name never write over each other. The
//! identity only proves that the daemon that held leases under a name is gone, so that its
//! instances need not wait for their leases to run out.

use std::fs::File;
use std::path::PathBuf;

use sqlx::Connection;

use super::engine::{Arg, Engine, Pool, POSTGRES};
use super::{Result, SqlStore, StoreError};

/// Proof that no other live daemon runs under an owner name on this database: a PostgreSQL
/// session advisory lock on a connection of its own, or, on SQLite, a lock on a file beside
/// the database. Both end with the process, however it ends. Dropping it gives the name up.
pub struct OwnerLock {
    name: String,
    held: Held,
}

enum Held {
    Postgres(sqlx::PgConnection),
    File(#[allow(dead_code)] File),
    /// An in-memory database: no other process can share it.
    Nothing,
}

impl std::fmt::Debug for OwnerLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerLock")
            .field("name", &self.name)
            .finish()
    }
}

impl OwnerLock {
    /// The owner name it holds.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that the lock is still held (PostgreSQL: its connection still answers).
    ///
    /// # Errors
    /// When the lock's connection is lost: the name is no longer proven ours.
    pub async fn check(&mut self) -> Result<()> {
        match &mut self.held {
            Held::Postgres(c) => Ok(c.ping().await?),
            Held::File(_) | Held::Nothing => Ok(()),
        }
    }
}

/// Ends now the unexpired leases of owner `$1`, whose daemon is gone: their instances come due
/// at once, ahead of work that came due after their last write (the claim that leased them).
const END_LEASES_OF: &str = "UPDATE instances
                                SET lease_expires_at = {now}, next_check_at = updated_at
                              WHERE lease_owner = $1 AND lease_expires_at > {now}";

/// The advisory lock key of owner `name` (PostgreSQL computes it, so every version of the
/// daemon agrees on it).
const OWNER_KEY: &str = "hashtextextended('provisioner.owner:' || $1, 0)";

/// The lock file of owner `name` beside SQLite database `db`: the name, with anything but
/// letters, digits, `-`, `_` and `.` spelled as its code point, so a name is never a path.
fn lock_path(db: &std::path::Path, name: &str) -> PathBuf {
    let mut safe = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
            safe.push(c);
        } else {
            safe.push_str(&format!("%{:x}", u32::from(c)));
        }
    }
    let mut file = db.as_os_str().to_owned();
    file.push(format!(".owner-{safe}.lock"));
    PathBuf::from(file)
}

impl SqlStore {
    /// Takes owner name `name` for this process, unless a live daemon holds it (`None`).
    ///
    /// # Errors
    /// When the database (or the lock file) cannot be used.
    pub async fn lock_owner(&self, name: &str) -> Result<Option<OwnerLock>> {
        let held = match self.pool() {
            Pool::Postgres(p) => {
                let mut c = p.acquire().await?.detach();
                let got: bool =
                    sqlx::query_scalar(&format!("SELECT pg_try_advisory_lock({OWNER_KEY})"))
                        .bind(name)
                        .fetch_one(&mut c)
                        .await?;
                if !got {
                    drop(c.close().await);
                    return Ok(None);
                }
                sqlx::query(
                    "INSERT INTO daemons (owner) VALUES ($1)
                     ON CONFLICT (owner) DO UPDATE SET started_at = now()",
                )
                .bind(name)
                .execute(&mut c)
                .await?;
                Held::Postgres(c)
            }
            Pool::Sqlite(p, _) => {
                let db = p.connect_options().get_filename().to_owned();
                if db.as_os_str().is_empty() || db.as_os_str() == ":memory:" {
                    Held::Nothing
                } else {
                    let path = lock_path(&db, name);
                    let file = File::options()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                        .map_err(|e| {
                            StoreError::NoDatabase(format!(
                                "cannot open the owner lock file {}: {e}",
                                path.display()
                            ))
                        })?;
                    match file.try_lock() {
                        Ok(()) => Held::File(file),
                        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                        Err(std::fs::TryLockError::Error(e)) => {
                            return Err(StoreError::NoDatabase(format!(
                                "cannot lock the owner lock file {}: {e}",
                                path.display()
                            )))
                        }
                    }
                }
            }
        };
        Ok(Some(OwnerLock {
            name: name.to_owned(),
            held,
        }))
    }

    /// Ends, now, every lease still held under the name `lock` proves ours: they were taken by
    /// an earlier run of this daemon that is gone. Their instances come due at once, ahead of
    /// work that came due after their last write; the next claim bumps their epochs. Returns
    /// how many there were.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn take_back_leases(&self, lock: &OwnerLock) -> Result<u64> {
        let mut tx = self.pool().write().await?;
        let n = tx
            .execute(END_LEASES_OF, vec![lock.name.as_str().into()])
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// On PostgreSQL: the listed daemons other than `me` whose owner lock nobody holds — they
    /// are gone — have their unexpired leases ended now (their instances come due at once;
    /// the next claims bump the epochs) and are struck off the list. Returns (owner, leases
    /// taken back) for each. Nothing on SQLite, where a restart under the name does it.
    ///
    /// # Errors
    /// When the database cannot be used.
    pub async fn take_over_dead(&self, me: &str) -> Result<Vec<(String, u64)>> {
        let Pool::Postgres(p) = self.pool() else {
            return Ok(Vec::new());
        };
        let owners: Vec<String> =
            sqlx::query_scalar("SELECT owner FROM daemons WHERE owner <> $1 ORDER BY owner")
                .bind(me)
                .fetch_all(p)
                .await?;
        let mut taken = Vec::new();
        if owners.is_empty() {
            return Ok(taken);
        }
        let mut c = p.acquire().await?;
        for owner in owners {
            let dead: bool =
                sqlx::query_scalar(&format!("SELECT pg_try_advisory_lock({OWNER_KEY})"))
                    .bind(&owner)
                    .fetch_one(&mut *c)
                    .await?;
            if !dead {
                continue;
            }
            let ended = async {
                let n = sqlx::query(&POSTGRES.sql(END_LEASES_OF))
                    .bind(&owner)
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                sqlx::query("DELETE FROM daemons WHERE owner = $1")
                    .bind(&owner)
                    .execute(&mut *c)
                    .await?;
                Ok::<u64, sqlx::Error>(n)
            }
            .await;
            sqlx::query(&format!("SELECT pg_advisory_unlock({OWNER_KEY})"))
                .bind(&owner)
                .execute(&mut *c)
                .await?;
            taken.push((owner, ended?));
        }
        Ok(taken)
    }

    /// Extends the leases `held` — (instance id, epoch) pairs — of owner `owner` to
    /// `lease_seconds` from now, each only if it is still that lease; moves their next check
    /// along, so that an instance of a daemon that dies comes due when its lease ends.
    /// Returns how many were extended.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn renew_leases(
        &self,
        owner: &str,
        held: &[(i64, i64)],
        lease_seconds: f64,
    ) -> Result<u64> {
        let mut renewed = 0;
        // A bounded number of parameters per statement, on either engine.
        for chunk in held.chunks(200) {
            let mut args = vec![owner.into(), Arg::Float(lease_seconds)];
            let mut pairs = Vec::with_capacity(chunk.len());
            for (id, epoch) in chunk {
                args.push(Arg::Int(*id));
                args.push(Arg::Int(*epoch));
                pairs.push(format!("(${}, ${})", args.len() - 1, args.len()));
            }
            let mut tx = self.pool().single().await?;
            // A row another transaction holds (a batch of step writes, which locks several
            // rows at once) is skipped, never waited for: this renewal and that batch can then
            // never wait for each other in a cycle, and the next renewal, a third of a lease
            // later, renews it.
            let skip_locked = match tx.dialect().engine {
                Engine::Postgres => " FOR UPDATE SKIP LOCKED",
                Engine::Sqlite => "",
            };
            let sql = format!(
                "UPDATE instances
                    SET lease_expires_at = {{later:$2}}, next_check_at = {{later:$2}}
                  WHERE id IN (SELECT id FROM instances
                                WHERE lease_owner = $1 AND (id, lease_epoch) IN (VALUES {})
                                {skip_locked})",
                pairs.join(", ")
            );
            renewed += tx.execute(&sql, args).await?;
            tx.commit().await?;
        }
        Ok(renewed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_file_name_is_never_a_path() {
        let db = std::path::Path::new("/var/lib/provisioner/p.db");
        let table = [
            ("web-1", "/var/lib/provisioner/p.db.owner-web-1.lock"),
            ("host:42", "/var/lib/provisioner/p.db.owner-host%3a42.lock"),
            (
                "../../etc/x",
                "/var/lib/provisioner/p.db.owner-..%2f..%2fetc%2fx.lock",
            ),
        ];
        for (name, want) in table {
            assert_eq!(lock_path(db, name), PathBuf::from(want), "{name}");
        }
    }
}
