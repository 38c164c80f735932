//! A daemon's leases over time: its owner identity, the heartbeat that renews the leases its
//! steps work under, and the schedule of both.
//!
//! Leases are short (`--lease-seconds`, 10 s by default) and renewed while a step runs
//! (`--lease-renew-seconds`, 3 s): a daemon that dies leaves its instances to others within
//! one lease, however long its steps were. A daemon restarted under the same owner name takes
//! its predecessor's leases back at once: the name is held through a lock that ends with the
//! process (see [`OwnerLock`]), so holding it proves the predecessor gone. A second daemon
//! configured with a name already held runs under a name of its own instead (and says so);
//! epochs fence every write in any case.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::lease::OwnerLock;
use crate::store::{Lease, SqlStore};

/// How long leases last and how often they are renewed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseTiming {
    /// How long a claim (or a renewal) holds an instance.
    pub length: Duration,
    /// How often the leases of running steps are renewed.
    pub renew: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            length: Duration::from_secs(10),
            renew: Duration::from_secs(3),
        }
    }
}

impl LeaseTiming {
    /// Checks a lease length and renewal period given in seconds: both positive and finite, a
    /// lease of at least a second, renewed at least twice within its length (one renewal may
    /// be late, a database being slow, without the lease running out).
    ///
    /// # Errors
    /// A message naming the flag at fault.
    pub fn new(length_seconds: f64, renew_seconds: Option<f64>) -> Result<LeaseTiming, String> {
        if !length_seconds.is_finite() || !(1.0..=86_400.0).contains(&length_seconds) {
            return Err(format!(
                "--lease-seconds must be between 1 and 86400, not {length_seconds}"
            ));
        }
        let renew = renew_seconds.unwrap_or(length_seconds * 0.3);
        if !renew.is_finite() || renew < 0.05 || renew > length_seconds / 2.0 {
            return Err(format!(
                "--lease-renew-seconds must be at least 0.05 and at most half of --lease-seconds ({}), not {renew}",
                length_seconds / 2.0
            ));
        }
        Ok(LeaseTiming {
            length: Duration::from_secs_f64(length_seconds),
            renew: Duration::from_secs_f64(renew),
        })
    }
}

/// The leases this daemon's steps work under: instance id → epoch.
#[derive(Debug, Default)]
pub struct Held(Mutex<HashMap<i64, i64>>);

impl Held {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, i64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A step begins under `lease`.
    pub fn add(&self, lease: &Lease) {
        self.map().insert(lease.instance_id, lease.epoch);
    }

    /// The step under `lease` ended (its lease given back, or lost).
    pub fn remove(&self, lease: &Lease) {
        let mut map = self.map();
        if map.get(&lease.instance_id) == Some(&lease.epoch) {
            map.remove(&lease.instance_id);
        }
    }

    /// (instance id, epoch) of every lease held now, by id.
    pub fn snapshot(&self) -> Vec<(i64, i64)> {
        let mut v: Vec<(i64, i64)> = self.map().iter().map(|(i, e)| (*i, *e)).collect();
        v.sort_unstable();
        v
    }
}

/// Takes this daemon's owner name: `wanted` if no live daemon holds it — then the leases a
/// dead predecessor held under it are taken back — or else a name of its own derived from it.
///
/// # Errors
/// When the database (or, on SQLite, the lock file) cannot be used.
pub async fn identify(store: &SqlStore, wanted: &str) -> anyhow::Result<OwnerLock> {
    if wanted.is_empty() || wanted.len() > 200 || wanted.chars().any(char::is_control) {
        anyhow::bail!(
            "the owner name must be 1 to 200 characters, none of them control characters: {wanted:?}"
        );
    }
    // A survivor may hold the name's lock for a moment while it checks whether its daemon is
    // gone: a few tries before the name counts as taken.
    let mut first = None;
    for _ in 0..5 {
        first = store.lock_owner(wanted).await?;
        if first.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if let Some(lock) = first {
        let taken = store.take_back_leases(&lock).await?;
        if taken > 0 {
            tracing::info!(owner = %wanted, leases = taken, "took back the leases an earlier run under this name held: its instances are worked on now");
        }
        return Ok(lock);
    }
    let pid = std::process::id();
    for n in 0..1000u32 {
        let name = if n == 0 {
            format!("{wanted}:{pid}")
        } else {
            format!("{wanted}:{pid}.{n}")
        };
        if let Some(lock) = store.lock_owner(&name).await? {
            tracing::warn!(
                wanted = %wanted,
                owner = %name,
                "another live daemon runs under this owner name on this database: this one runs as `{name}` (give each daemon its own --owner to keep names stable across restarts)"
            );
            return Ok(lock);
        }
    }
    anyhow::bail!("no free owner name derived from `{wanted}`")
}

/// Renews the leases of running steps every `timing.renew` until `stop`, and keeps the owner
/// name held (re-taking it if its lock is lost). Ends by giving the name up.
pub async fn heartbeat(
    store: SqlStore,
    mut lock: OwnerLock,
    held: Arc<Held>,
    timing: LeaseTiming,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let owner = lock.name().to_owned();
    let mut lost = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(timing.renew) => {}
        }
        let leases = held.snapshot();
        if !leases.is_empty() {
            match store
                .renew_leases(&owner, &leases, timing.length.as_secs_f64())
                .await
            {
                Ok(n) => tracing::trace!(held = leases.len(), renewed = n, "leases renewed"),
                Err(e) => {
                    metrics.lease_renewal_failures.inc();
                    tracing::warn!(error = %e, held = leases.len(), "cannot renew leases: they run out in {:?} unless a renewal gets through", timing.length);
                }
            }
        }
        match store.take_over_dead(&owner).await {
            Ok(taken) => {
                for (dead, n) in taken {
                    tracing::info!(owner = %dead, leases = n, "a daemon is gone (its owner lock is free): its leases are taken back now");
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot look for daemons that are gone"),
        }
        if lock.check().await.is_err() {
            if !lost {
                tracing::warn!(owner = %owner, "the owner lock's connection is lost; taking the name again");
            }
            match store.lock_owner(&owner).await {
                Ok(Some(again)) => {
                    lock = again;
                    lost = false;
                    tracing::info!(owner = %owner, "owner name held again");
                }
                Ok(None) => {
                    if !lost {
                        tracing::error!(owner = %owner, "another daemon took this owner name while its lock was lost: each one's writes stay fenced by their lease epochs, but restart this one to give it a name of its own");
                    }
                    lost = true;
                }
                Err(e) => {
                    if !lost {
                        tracing::warn!(owner = %owner, error = %e, "cannot take the owner name again yet");
                    }
                    lost = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_flags_are_checked() {
        let ok = |l: f64, r: Option<f64>| LeaseTiming::new(l, r).map(|t| (t.length, t.renew));
        assert_eq!(
            ok(10.0, None),
            Ok((Duration::from_secs(10), Duration::from_secs(3)))
        );
        assert_eq!(
            ok(15.0, Some(5.0)),
            Ok((Duration::from_secs(15), Duration::from_secs(5)))
        );
        for (length, renew, flag) in [
            (0.5, None, "--lease-seconds"),
            (f64::NAN, None, "--lease-seconds"),
            (10.0, Some(6.0), "--lease-renew-seconds"),
            (10.0, Some(0.0), "--lease-renew-seconds"),
            (10.0, Some(f64::INFINITY), "--lease-renew-seconds"),
        ] {
            let e = LeaseTiming::new(length, renew).unwrap_err();
            assert!(e.starts_with(flag), "{length}/{renew:?}: {e}");
        }
    }

    #[test]
    fn a_lease_ended_and_claimed_again_is_not_forgotten_by_the_old_step() {
        let lease = |epoch| Lease {
            instance_id: 7,
            owner: "d".into(),
            epoch,
            desired_generation: 1,
        };
        let held = Held::default();
        held.add(&lease(1));
        held.add(&lease(2));
        held.remove(&lease(1));
        assert_eq!(held.snapshot(), vec![(7, 2)]);
        held.remove(&lease(2));
        assert!(held.snapshot().is_empty());
    }
}
