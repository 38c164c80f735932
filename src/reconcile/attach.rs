//! Which servers belong to whom: whether a server an admin names can be attached to an
//! instance (`instances import`, `instances adopt`), and which of an account's marked servers
//! are orphans. Pure: the callers look at the provider and the store.

use crate::catalog::Product;
use crate::provider::{PowerState, Server};
use crate::store::{Holdings, ObservedStatus};

/// What an admin attaches: a server of `account`, to an instance of `product`.
#[derive(Debug, Clone, Copy)]
pub struct AttachRequest<'a> {
    /// The account the server is looked for in.
    pub account: &'a str,
    /// The server's id, as the admin typed it.
    pub server_id: &'a str,
    /// The product the instance is sold as.
    pub product: &'a Product,
    /// The instance adopting the server (`None` for an import: a new instance).
    pub instance: Option<i64>,
}

/// Whether the server `found` at the provider (`None`: the account has none with that id)
/// can be attached as `request` asks, and the status the instance starts from: `active` for a
/// running server, `suspended` for one powered off. `marked_live` is the live instance whose
/// mark (label, tag, pool allocation) the server carries, if any.
///
/// # Errors
/// Why not, saying what to do instead.
pub fn attach_check(
    request: &AttachRequest<'_>,
    found: Option<&Server>,
    marked_live: Option<i64>,
) -> Result<ObservedStatus, String> {
    let AttachRequest {
        account,
        server_id,
        product,
        instance,
    } = *request;
    if product.provisioning.account != account {
        return Err(format!(
            "product `{}` is sold on account `{}`, not `{account}`: attach the server as a product of its own account",
            product.id, product.provisioning.account
        ));
    }
    let Some(server) = found else {
        return Err(format!(
            "account `{account}` has no server `{server_id}`: check the id in the provider's console"
        ));
    };
    if let Some(other) = marked_live.filter(|other| Some(*other) != instance) {
        return Err(format!(
            "server {server_id} carries the mark of instance {other}, which is live: a server belongs to one instance"
        ));
    }
    let status = match server.state {
        PowerState::Running => ObservedStatus::Active,
        PowerState::Off => ObservedStatus::Suspended,
        other => {
            return Err(format!(
                "server {server_id} is {}: attach it once it is running or off",
                format!("{other:?}").to_lowercase()
            ))
        }
    };
    let sold = product.provisioning.config.plan(&product.id);
    if let (Some(sold), Some(actual)) = (sold.as_deref(), server.plan.as_deref()) {
        if sold != actual {
            return Err(format!(
                "server {server_id} is on plan `{actual}` but product `{}` is `{sold}`: attach it as a product on `{actual}` (a change of plan can follow)",
                product.id
            ));
        }
    }
    Ok(status)
}

/// Whether a server carrying our mark is an orphan: no live instance of the account has it,
/// and the instance its mark names is not one still waiting for its server (whose create may
/// be in flight).
pub fn is_orphan(server: &Server, holdings: &Holdings) -> bool {
    orphaned(
        holdings.held.contains(server.id.as_str()),
        server.instance_id,
        &holdings.awaiting,
    )
}

/// [`is_orphan`] from its facts: whether a live instance holds the server, the instance its
/// mark names, and the live instances still waiting for a server.
pub fn orphaned(held: bool, mark: Option<i64>, awaiting: &std::collections::HashSet<i64>) -> bool {
    !held && !mark.is_some_and(|owner| awaiting.contains(&owner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> crate::catalog::Catalog {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
        crate::catalog::load_with_env(&dir, &|_| true).unwrap()
    }

    fn server(state: PowerState, plan: Option<&str>, mark: Option<i64>) -> Server {
        Server {
            id: "42".into(),
            instance_id: mark,
            name: "web-1".into(),
            state,
            ipv4: None,
            ipv6: None,
            root_password: None,
            plan: plan.map(str::to_owned),
        }
    }

    #[test]
    fn attach_table() {
        let catalog = catalog();
        let vps = catalog
            .products
            .values()
            .find(|p| p.provisioning.account == "sim-eu")
            .expect("an example product on sim-eu");
        let plan = vps.provisioning.config.plan(&vps.id).unwrap();
        let running = server(PowerState::Running, Some(&plan), None);
        let off = server(PowerState::Off, None, None);
        let booting = server(PowerState::Creating, Some(&plan), None);
        let other_plan = server(PowerState::Running, Some("cx99"), None);
        let marked = server(PowerState::Running, Some(&plan), Some(9));
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<i64>,
            Option<&'a Server>,
            Option<i64>,
            Result<ObservedStatus, &'a str>,
        );
        let cases: [Case; 9] = [
            (
                "a running server comes in active",
                "sim-eu",
                None,
                Some(&running),
                None,
                Ok(ObservedStatus::Active),
            ),
            (
                "one powered off comes in suspended; no plan shown is no mismatch",
                "sim-eu",
                None,
                Some(&off),
                None,
                Ok(ObservedStatus::Suspended),
            ),
            (
                "no such server",
                "sim-eu",
                None,
                None,
                None,
                Err("has no server `42`"),
            ),
            (
                "the product is sold on another account",
                "hetzner-main",
                None,
                Some(&running),
                None,
                Err("is sold on account `sim-eu`"),
            ),
            (
                "a server in transition waits",
                "sim-eu",
                None,
                Some(&booting),
                None,
                Err("is creating: attach it once"),
            ),
            (
                "the plan must be the product's",
                "sim-eu",
                None,
                Some(&other_plan),
                None,
                Err("is on plan `cx99`"),
            ),
            (
                "another live instance's server is refused",
                "sim-eu",
                None,
                Some(&marked),
                Some(9),
                Err("mark of instance 9"),
            ),
            (
                "the adopting instance's own mark is fine",
                "sim-eu",
                Some(9),
                Some(&marked),
                Some(9),
                Ok(ObservedStatus::Active),
            ),
            (
                "a dead instance's mark is no claim",
                "sim-eu",
                None,
                Some(&marked),
                None,
                Ok(ObservedStatus::Active),
            ),
        ];
        for (says, account, instance, found, live, expect) in cases {
            let request = AttachRequest {
                account,
                server_id: "42",
                product: vps,
                instance,
            };
            let got = attach_check(&request, found, live);
            match (&got, expect) {
                (Ok(s), Ok(e)) => assert_eq!(*s, e, "{says}"),
                (Err(m), Err(e)) => assert!(m.contains(e), "{says}: {m}"),
                _ => panic!("{says}: got {got:?}, expected {expect:?}"),
            }
        }
    }

    #[test]
    fn orphan_table() {
        let h = Holdings {
            held: ["42".to_owned()].into(),
            awaiting: [5].into(),
        };
        let mut s = server(PowerState::Running, None, Some(3));
        assert!(
            !is_orphan(&s, &h),
            "a live instance has it, whatever its mark"
        );
        s.id = "43".into();
        assert!(
            is_orphan(&s, &h),
            "marked for an instance that does not have it"
        );
        s.instance_id = Some(5);
        assert!(!is_orphan(&s, &h), "its instance's create is in flight");
        s.instance_id = None;
        assert!(is_orphan(&s, &h));
    }
}
