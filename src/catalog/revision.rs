//! Product revisions: a stable hash of a product's normalised definition.
//!
//! The normalised definition is built from the checked [`Product`], not from the YAML text, so
//! formatting, comments, key order, quoting, `29.9` versus `"29.90"` and defaults written out or
//! left implicit do not change it. Every field a customer or the provisioning depends on is in
//! it, so any meaningful edit does. Order is kept where it means something (the first location
//! and OS image are the defaults) and dropped where it does not (features are a set).
//!
//! The same JSON is what the store records beside each revision and what `catalog diff`
//! compares.

use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::model::{Product, ProductConfig, Revision};

/// Hex digits of SHA-256 kept in a revision: 64 bits, ample for the handful of revisions a
/// product ever has, short enough to read in a table.
const REVISION_HEX_LEN: usize = 16;

fn money(d: Decimal) -> Value {
    Value::String(d.normalize().to_string())
}

fn opt_money(d: Option<Decimal>) -> Value {
    d.map_or(Value::Null, money)
}

/// The normalised definition of a product, as canonical JSON (object keys sorted).
pub fn normalized(p: &Product) -> Value {
    let config = match &p.provisioning.config {
        ProductConfig::Sim { size } => json!({ "size": size }),
        ProductConfig::Manual { instructions } => json!({ "instructions": instructions }),
        ProductConfig::Hetzner {
            server_type,
            enable_ipv4,
            enable_ipv6,
            upgrade_disk,
        } => {
            let mut c = json!({
                "server_type": server_type,
                "enable_ipv4": enable_ipv4,
                "enable_ipv6": enable_ipv6,
            });
            // Written only when set, so that revisions made before the setting existed stay.
            if *upgrade_disk {
                c["upgrade_disk"] = json!(true);
            }
            c
        }
        ProductConfig::DigitalOcean {
            size,
            ipv6,
            monitoring,
            backups,
            resize_disk,
        } => {
            let mut c = json!({
                "size": size,
                "ipv6": ipv6,
                "monitoring": monitoring,
                "backups": backups,
            });
            if *resize_disk {
                c["resize_disk"] = json!(true);
            }
            c
        }
        ProductConfig::Ovh { hardware } => {
            let mut hw = hardware.clone();
            hw.sort();
            hw.dedup();
            json!({ "hardware": hw })
        }
    };
    let mut features = p.features.clone();
    features.sort();
    features.dedup();
    json!({
        "id": p.id,
        "name": p.name,
        "group": p.group,
        "type": p.product_type.as_str(),
        "description": p.description,
        "specs": {
            "cpu_cores": p.specs.cpu_cores,
            "cpu_model": p.specs.cpu_model,
            "ram_gb": money(p.specs.ram_gb),
            "storage_gb": p.specs.storage_gb,
            "storage_type": p.specs.storage_type.map(|s| s.as_str()),
            "bandwidth_tb": opt_money(p.specs.bandwidth_tb),
            "ip_addresses": p.specs.ip_addresses,
        },
        "pricing": {
            "currency": p.pricing.currency,
            "monthly": money(p.pricing.monthly),
            "quarterly": opt_money(p.pricing.quarterly),
            "semiannually": opt_money(p.pricing.semiannually),
            "yearly": opt_money(p.pricing.yearly),
            "setup_fee": money(p.pricing.setup_fee),
        },
        "locations": p.locations,
        "os_images": p.os_images,
        "features": features,
        "stock": p.stock,
        "active": p.active,
        "provisioning": {
            "account": p.provisioning.account,
            "config": config,
        },
    })
}

/// Canonical bytes of a JSON value: keys sorted at every level, no whitespace.
pub fn canonical_bytes(value: &Value) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    // serde_json's map is sorted unless `preserve_order` is on somewhere in the build; sorting
    // here keeps revisions stable either way.
    serde_json::to_vec(&sort(value)).unwrap_or_default()
}

/// The revision of a product: the first hex digits of SHA-256 over its canonical definition.
pub fn of(p: &Product) -> Revision {
    let digest = Sha256::digest(canonical_bytes(&normalized(p)));
    let mut hex = String::with_capacity(REVISION_HEX_LEN);
    for byte in digest.iter().take(REVISION_HEX_LEN / 2) {
        hex.push_str(&format!("{byte:02x}"));
    }
    Revision(hex)
}
