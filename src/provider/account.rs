//! The accounts a catalog declares, built into driven provider modules.
//!
//! This is the one place that turns a module name into a module: everything above the
//! provider seam works with an [`Account`] and its [`Policy`]. On a catalog reload an account
//! is rebuilt when anything in its definition changed (credentials, endpoint, rate limit,
//! polls, timeouts, module settings) and kept, with its rate budget and listing, otherwise.

use std::collections::HashMap;
use std::sync::Arc;

use super::digitalocean::DigitalOcean;
use super::hetzner::HetznerCloud;
use super::limit::RateLimiter;
use super::manual::ManualProvider;
use super::ovh::Ovh;
use super::sim::SimCloud;
use super::view::View;
use super::{Policy, Provider};
use crate::catalog::{AccountSettings, Catalog, Module, ProviderAccount};
use crate::secrets::Keyring;
use crate::store::SqlStore;

/// One provider account as the reconciler drives it.
pub struct Account {
    /// Account id.
    pub id: String,
    /// Its module.
    pub provider: Arc<dyn Provider>,
    /// Its request budget, shared by all workers (and by the module's HTTP client).
    pub limiter: Arc<RateLimiter>,
    /// How the module's actions are paced and escalated.
    pub policy: Policy,
    /// The shared listing that answers looks at actions in flight.
    pub view: View,
    /// The catalog definition it was built from.
    definition: ProviderAccount,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("module", &self.provider.module())
            .finish_non_exhaustive()
    }
}

/// Whether two definitions of an account drive it the same way (where they were written
/// does not matter).
fn same_definition(a: &ProviderAccount, b: &ProviderAccount) -> bool {
    let mut b = b.clone();
    b.origin = a.origin.clone();
    *a == b
}

/// Why an account of `catalog` cannot be driven by this daemon (its module's credentials are
/// missing from the environment, say); `None` when it can.
pub fn unavailable(catalog: &Catalog, account_id: &str) -> Option<String> {
    let Some(a) = catalog.account(account_id) else {
        return Some(format!("account `{account_id}` is not in the catalog"));
    };
    let missing: Vec<&str> = a
        .credentials
        .iter()
        .filter(|c| std::env::var(&c.env).map_or(true, |v| v.is_empty()))
        .map(|c| c.env.as_str())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "account `{}` (module `{}`) has no credentials: set {} in the daemon's environment",
            a.id,
            a.module,
            missing.join(", ")
        )
    })
}

/// Builds one account's module.
///
/// # Errors
/// Why it cannot be driven (credentials missing, say); the message names variables, never
/// values.
pub fn build(
    a: &ProviderAccount,
    store: &SqlStore,
    keyring: &Arc<Keyring>,
) -> Result<Account, String> {
    let env = |name: &str| std::env::var(name).ok();
    let limiter = Arc::new(RateLimiter::new(&a.rate_limit));
    let provider: Arc<dyn Provider> = match (&a.module, &a.settings) {
        (Module::Sim, AccountSettings::Sim(settings)) => Arc::new(SimCloud::new(
            &a.id,
            settings.clone(),
            &a.rate_limit,
            store.clone(),
        )),
        (Module::Manual, _) => Arc::new(ManualProvider::new(&a.id, store.clone(), keyring.clone())),
        (Module::Hetzner, _) => Arc::new(HetznerCloud::new(a, limiter.clone(), &env)?),
        (Module::DigitalOcean, _) => Arc::new(DigitalOcean::new(a, limiter.clone(), &env)?),
        (Module::Ovh, AccountSettings::Ovh { pool }) => Arc::new(Ovh::new(
            a,
            pool.clone(),
            limiter.clone(),
            store.clone(),
            &env,
        )?),
        (module, _) => return Err(format!("module `{module}` has no settings here")),
    };
    Ok(Account {
        id: a.id.clone(),
        policy: provider.policy(),
        provider,
        limiter,
        view: View::default(),
        definition: a.clone(),
    })
}

/// The accounts a daemon drives, by id.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    by_id: HashMap<String, Arc<Account>>,
}

impl Accounts {
    /// The account `id`, if it is driven.
    pub fn get(&self, id: &str) -> Option<Arc<Account>> {
        self.by_id.get(id).cloned()
    }

    /// Every driven account.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.by_id.values()
    }

    /// The accounts of `catalog`, keeping those of `self` whose definition is unchanged (and
    /// with them their rate budgets and listings) and building the others. Accounts that
    /// cannot be built are logged and left out; their instances wait with the reason.
    pub fn rebuild(&self, catalog: &Catalog, store: &SqlStore, keyring: &Arc<Keyring>) -> Accounts {
        let mut by_id = HashMap::new();
        for a in catalog.accounts.values() {
            if let Some(kept) = self
                .by_id
                .get(&a.id)
                .filter(|kept| same_definition(&kept.definition, a))
            {
                by_id.insert(a.id.clone(), kept.clone());
                continue;
            }
            match build(a, store, keyring) {
                Ok(account) => {
                    if self.by_id.contains_key(&a.id) {
                        tracing::info!(account = %a.id, "account definition changed: rebuilt");
                    }
                    by_id.insert(a.id.clone(), Arc::new(account));
                }
                Err(reason) => {
                    tracing::warn!(account = %a.id, module = %a.module, "account not driven: {reason}");
                }
            }
        }
        Accounts { by_id }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(yaml: &str) -> Catalog {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), yaml).unwrap();
        crate::catalog::load(dir.path()).expect("valid catalog")
    }

    const SIM: &str = "apiVersion: provisioner/v1
kind: ProviderAccount
id: one
module: sim
---
apiVersion: provisioner/v1
kind: ProviderAccount
id: two
module: sim
";

    #[tokio::test]
    async fn a_reload_rebuilds_only_the_accounts_whose_definition_changed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqlStore::open(&url, &crate::store::ConnectOptions::default())
            .await
            .unwrap();
        let keyring =
            Arc::new(Keyring::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap());
        let first = Accounts::default().rebuild(&catalog(SIM), &store, &keyring);
        // The same definitions moved down a file: nothing is rebuilt.
        let moved = format!("# a comment\n\n{SIM}");
        let same = first.rebuild(&catalog(&moved), &store, &keyring);
        assert!(Arc::ptr_eq(
            &first.get("one").unwrap(),
            &same.get("one").unwrap()
        ));
        assert!(Arc::ptr_eq(
            &first.get("two").unwrap(),
            &same.get("two").unwrap()
        ));
        // One account's simulation settings change: that one only is rebuilt.
        let edited = SIM.replacen(
            "id: two\nmodule: sim\n",
            "id: two\nmodule: sim\nsimulation: {boot_seconds: 9}\n",
            1,
        );
        let next = same.rebuild(&catalog(&edited), &store, &keyring);
        assert!(Arc::ptr_eq(
            &same.get("one").unwrap(),
            &next.get("one").unwrap()
        ));
        assert!(!Arc::ptr_eq(
            &same.get("two").unwrap(),
            &next.get("two").unwrap()
        ));
        // An account removed from the catalog is no longer driven.
        let only_one = SIM.split("---").next().unwrap();
        assert!(next
            .rebuild(&catalog(only_one), &store, &keyring)
            .get("two")
            .is_none());
    }
}
