//! What changed between two catalogs: products and accounts added, removed and changed, with
//! the fields that changed. Used by `catalog diff` and logged by the daemon on every reload.

use serde::Serialize;
use serde_json::{json, Value};

use super::model::{AccountSettings, Catalog, ProviderAccount};
use super::revision::normalized;

/// One field that changed, by dotted path (`pricing.monthly`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// Dotted path of the field.
    pub field: String,
    /// Value before (`null` when absent).
    pub old: Value,
    /// Value after (`null` when absent).
    pub new: Value,
}

/// A product present in both catalogs whose definition changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductChange {
    /// Product id.
    pub id: String,
    /// Revision before.
    pub old_revision: String,
    /// Revision after.
    pub new_revision: String,
    /// The fields that changed.
    pub fields: Vec<FieldChange>,
}

/// A product or account present on one side only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Its id.
    pub id: String,
    /// Its revision (products) or module (accounts).
    pub detail: String,
}

/// An account present in both catalogs whose definition changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountChange {
    /// Account id.
    pub id: String,
    /// The fields that changed.
    pub fields: Vec<FieldChange>,
}

/// The differences between two catalogs.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CatalogDiff {
    /// Products only in the new catalog.
    pub products_added: Vec<Entry>,
    /// Products only in the old catalog.
    pub products_removed: Vec<Entry>,
    /// Products in both whose revision changed.
    pub products_changed: Vec<ProductChange>,
    /// Accounts only in the new catalog.
    pub accounts_added: Vec<Entry>,
    /// Accounts only in the old catalog.
    pub accounts_removed: Vec<Entry>,
    /// Accounts in both whose definition changed.
    pub accounts_changed: Vec<AccountChange>,
}

impl CatalogDiff {
    /// Whether the two catalogs define the same products and accounts.
    pub fn is_empty(&self) -> bool {
        self.products_added.is_empty()
            && self.products_removed.is_empty()
            && self.products_changed.is_empty()
            && self.accounts_added.is_empty()
            && self.accounts_removed.is_empty()
            && self.accounts_changed.is_empty()
    }

    /// One line for logs: "2 products added, 1 changed, 0 removed; 0 accounts changed".
    pub fn summary(&self) -> String {
        format!(
            "products: {} added, {} changed, {} removed; accounts: {} added, {} changed, {} removed",
            self.products_added.len(),
            self.products_changed.len(),
            self.products_removed.len(),
            self.accounts_added.len(),
            self.accounts_changed.len(),
            self.accounts_removed.len()
        )
    }
}

/// The normalised definition of an account (secrets are never in it: only variable names).
pub fn account_json(a: &ProviderAccount) -> Value {
    let settings = match &a.settings {
        AccountSettings::None => Value::Null,
        AccountSettings::Sim(s) => json!({
            "boot_seconds": s.boot_seconds,
            "action_seconds": s.action_seconds,
            "latency_ms": s.latency_ms,
            "fault_rate": s.fault_rate,
            "capacity": s.capacity,
        }),
        AccountSettings::Ovh { pool } => json!({
            "pool": pool.iter().map(|s| json!({
                "service_name": s.service_name,
                "hardware": s.hardware,
                "location": s.location,
            })).collect::<Vec<_>>(),
        }),
    };
    let credentials: serde_json::Map<String, Value> = a
        .credentials
        .iter()
        .map(|c| (c.field.to_owned(), Value::String(c.env.clone())))
        .collect();
    json!({
        "id": a.id,
        "module": a.module.as_str(),
        "endpoint": a.endpoint,
        "credentials": credentials,
        "rate_limit": {
            "requests_per_hour": a.rate_limit.requests_per_hour,
            "requests_per_minute": a.rate_limit.requests_per_minute,
        },
        "settings": settings,
        "poll_seconds": a.poll.map(|d| d.as_secs_f64()),
        "timeout_seconds": a.timeout.map(|d| d.as_secs_f64()),
        "graceful_timeout_seconds": a.graceful_timeout.map(|d| d.as_secs_f64()),
        "stuck_timeout_seconds": a.stuck_timeout.map(|d| d.as_secs_f64()),
    })
}

/// Compares two catalogs.
pub fn diff(old: &Catalog, new: &Catalog) -> CatalogDiff {
    let mut d = CatalogDiff::default();
    for (id, p) in &new.products {
        match old.products.get(id) {
            None => d.products_added.push(Entry {
                id: id.clone(),
                detail: p.revision.0.clone(),
            }),
            Some(o) if o.revision != p.revision => {
                let mut fields = Vec::new();
                changed_fields("", &normalized(o), &normalized(p), &mut fields);
                d.products_changed.push(ProductChange {
                    id: id.clone(),
                    old_revision: o.revision.0.clone(),
                    new_revision: p.revision.0.clone(),
                    fields,
                });
            }
            Some(_) => {}
        }
    }
    for (id, p) in &old.products {
        if !new.products.contains_key(id) {
            d.products_removed.push(Entry {
                id: id.clone(),
                detail: p.revision.0.clone(),
            });
        }
    }
    for (id, a) in &new.accounts {
        match old.accounts.get(id) {
            None => d.accounts_added.push(Entry {
                id: id.clone(),
                detail: a.module.as_str().to_owned(),
            }),
            Some(o) => {
                let mut fields = Vec::new();
                changed_fields("", &account_json(o), &account_json(a), &mut fields);
                if !fields.is_empty() {
                    d.accounts_changed.push(AccountChange {
                        id: id.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for (id, a) in &old.accounts {
        if !new.accounts.contains_key(id) {
            d.accounts_removed.push(Entry {
                id: id.clone(),
                detail: a.module.as_str().to_owned(),
            });
        }
    }
    d
}

/// Collects leaf differences; objects are descended, lists and scalars compared whole.
fn changed_fields(path: &str, old: &Value, new: &Value, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                changed_fields(
                    &sub,
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(FieldChange {
            field: path.to_owned(),
            old: a.clone(),
            new: b.clone(),
        }),
        _ => {}
    }
}
