//! Changes of plan and reinstalls: what the catalog allows, and where a change in flight
//! stands. Pure decisions, no I/O.
//!
//! A change of plan is one action (`resize`, observed `resizing`) driven by what the provider
//! shows of the server — its power state and its plan — so that it resumes correctly after a
//! crash at any point: a server still on its old plan is powered off when its module needs
//! that (gracefully, then hard after the graceful timeout), then changed; once on the new plan
//! it is powered on again if the instance should run. A change sent twice is refused by the
//! provider while the first runs (`locked`), and never sent once the server shows the new plan.

use std::time::Duration;

use super::plan::{ProductCheck, SettleTiming};
use crate::catalog::Catalog;
use crate::provider::{PowerState, ResizeRequest};
use crate::store::{Instance, ObservedStatus};

/// The reason given for a change no module can make in place.
pub const NEEDS_NEW_SERVER: &str =
    "a change of provider needs a new server: order a new instance and terminate this one";

/// What `catalog` allows for moving `i`'s server to the product billing now wants.
pub fn change_check(catalog: &Catalog, i: &Instance) -> ProductCheck {
    let from = i.applied_product_id.as_deref().unwrap_or("unknown");
    let Some(to) = catalog.product(&i.product_id) else {
        return ProductCheck::Blocked(format!(
            "change of plan to unknown product `{}`: not in the catalog (the server stays on `{from}`)",
            i.product_id
        ));
    };
    if !to.active {
        return ProductCheck::Blocked(format!(
            "change of plan to product `{}`, which is inactive (the server stays on `{from}`)",
            to.id
        ));
    }
    let same_account = i.provider_account.as_deref() == Some(to.provisioning.account.as_str());
    let same_type = catalog
        .product(from)
        .is_none_or(|p| p.product_type == to.product_type);
    if !same_account || !same_type {
        let why = if same_account {
            format!("product `{}` is of another type than `{from}`", to.id)
        } else {
            format!(
                "product `{}` is sold on account `{}`, the server is on `{}`",
                to.id,
                to.provisioning.account,
                i.provider_account.as_deref().unwrap_or("none")
            )
        };
        return ProductCheck::Blocked(format!("{NEEDS_NEW_SERVER} ({why})"));
    }
    if to.provisioning.config.plan(&to.id).is_none() {
        return ProductCheck::Blocked(format!(
            "{NEEDS_NEW_SERVER} (module `{}` cannot change a server's plan in place)",
            catalog
                .account(&to.provisioning.account)
                .map_or_else(|| "unknown".to_owned(), |a| a.module.to_string())
        ));
    }
    if let Some(l) = &i.location {
        if !to.locations.contains(l) {
            return ProductCheck::Blocked(format!(
                "{NEEDS_NEW_SERVER} (product `{}` is not offered in `{l}`, where the server is)",
                to.id
            ));
        }
    }
    ProductCheck::Sellable { stock: to.stock }
}

/// What `catalog` allows for reinstalling `i`: its product must offer the OS asked for.
pub fn reinstall_check(catalog: &Catalog, i: &Instance) -> ProductCheck {
    let Some(p) = catalog.product(&i.product_id) else {
        return ProductCheck::Blocked(format!(
            "reinstall: unknown product `{}`: not in the catalog",
            i.product_id
        ));
    };
    if let Some(o) = &i.os_image {
        if p.os_image(o).is_none() {
            return ProductCheck::Blocked(format!(
                "reinstall: OS image `{o}` is not offered by product `{}` (offered: {})",
                p.id,
                p.os_names().join(", ")
            ));
        }
    }
    ProductCheck::Sellable { stock: None }
}

/// Where a change of plan takes a server, from the catalog: what the module is asked, and
/// the revision pinned when it is done.
#[derive(Debug, Clone, PartialEq)]
pub struct ResizeTarget {
    /// The module's request (plan, product, configuration).
    pub request: ResizeRequest,
    /// The new product's revision.
    pub revision: String,
}

impl ResizeTarget {
    /// Where `catalog` says `i`'s server goes; `None` when the product or its plan is gone.
    pub fn of(catalog: &Catalog, i: &Instance) -> Option<ResizeTarget> {
        let p = catalog.product(&i.product_id)?;
        Some(ResizeTarget {
            request: ResizeRequest {
                plan: p.provisioning.config.plan(&p.id)?,
                config: p.provisioning.config.clone(),
                product_id: p.id.clone(),
                from_product_id: i.applied_product_id.clone().unwrap_or_default(),
            },
            revision: p.revision.0.clone(),
        })
    }

    /// The change as transition details.
    pub fn details(&self) -> serde_json::Value {
        let r = &self.request;
        serde_json::json!({
            "from_product": r.from_product_id, "to_product": r.product_id,
            "plan": r.plan, "product_revision": self.revision,
        })
    }
}

/// The next move of a change of plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMove {
    /// On the new plan and settled; the instance is now in this status.
    Done(ObservedStatus),
    /// Something is under way: look again later.
    Continue,
    /// Power the server off (hard after a graceful shutdown timed out).
    PowerOff {
        /// Whether to cut the power.
        hard: bool,
    },
    /// Ask the provider to change the plan.
    Change,
    /// Power the server on again: it is on the new plan and should run.
    PowerOn,
    /// The server is gone.
    Missing,
}

/// Where a change of plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResizeState<'a> {
    /// The server's power state and plan as the provider shows it (`None`: gone).
    pub server: Option<(PowerState, Option<&'a str>)>,
    /// The plan billing's product asks for.
    pub target: &'a str,
    /// Whether the instance should run afterwards (it is not suspended nor held).
    pub want_running: bool,
    /// Whether the module changes plans only of servers that are off.
    pub needs_off: bool,
    /// Whether the change was sent and accepted already.
    pub change_sent: bool,
    /// Whether a hard power-off was sent already.
    pub hard_sent: bool,
    /// Whether this is the step that recorded the intent (it sends the graceful shutdown).
    pub first: bool,
    /// How long the change has been under way.
    pub elapsed: Duration,
}

/// The next move of a change of plan, from what the provider shows.
pub fn settle_resize(s: &ResizeState<'_>, timing: &SettleTiming) -> ResizeMove {
    use PowerState as P;
    let Some((state, plan)) = s.server else {
        return ResizeMove::Missing;
    };
    if plan == Some(s.target) {
        return match state {
            P::Running => ResizeMove::Done(ObservedStatus::Active),
            P::Off if s.want_running => ResizeMove::PowerOn,
            P::Off => ResizeMove::Done(ObservedStatus::Suspended),
            _ => ResizeMove::Continue,
        };
    }
    match state {
        P::Busy | P::Creating | P::Starting | P::Rebooting | P::Deleting => ResizeMove::Continue,
        _ if s.change_sent => ResizeMove::Continue,
        P::Off => ResizeMove::Change,
        P::Running | P::Stopping if !s.needs_off => ResizeMove::Change,
        P::Running if s.first => ResizeMove::PowerOff { hard: false },
        P::Running | P::Stopping if !s.hard_sent && s.elapsed >= timing.graceful_off => {
            ResizeMove::PowerOff { hard: true }
        }
        P::Running | P::Stopping if s.hard_sent && s.elapsed >= timing.stuck_after => {
            ResizeMove::PowerOff { hard: true }
        }
        P::Running | P::Stopping => ResizeMove::Continue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::plan::tests::instance;
    use crate::store::DesiredStatus;

    fn catalog() -> Catalog {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
        crate::catalog::load_with_env(&dir, &|_| true).unwrap()
    }

    /// An active instance on `from` (its server on `account`) that billing moved to `to`.
    fn moved(catalog: &Catalog, from: &str, to: &str) -> Instance {
        let mut i = instance(DesiredStatus::Active, ObservedStatus::Active);
        i.provider_server_id = Some("1".into());
        i.applied_product_id = Some(from.into());
        i.provider_account = catalog
            .product(from)
            .map(|p| p.provisioning.account.clone());
        i.product_id = to.into();
        i
    }

    #[test]
    fn the_catalog_decides_which_changes_of_plan_are_possible() {
        let c = catalog();
        let products: Vec<(&str, &str, &str)> = c
            .products
            .values()
            .map(|p| {
                (
                    p.id.as_str(),
                    p.provisioning.account.as_str(),
                    p.product_type.as_str(),
                )
            })
            .collect();
        // Every pair of products of the example catalog, judged by the rule in words.
        for (from, from_account, from_type) in &products {
            for (to, to_account, to_type) in &products {
                if from == to {
                    continue;
                }
                let i = moved(&c, from, to);
                let got = change_check(&c, &i);
                let to_p = c.product(to).unwrap();
                let possible = from_account == to_account
                    && from_type == to_type
                    && to_p.provisioning.config.plan(to).is_some()
                    && to_p.active;
                match got {
                    ProductCheck::Sellable { stock } => {
                        assert!(possible, "{from} -> {to} should be refused");
                        assert_eq!(stock, to_p.stock);
                    }
                    ProductCheck::Blocked(reason) => {
                        assert!(!possible, "{from} -> {to} refused: {reason}");
                        if to_p.active {
                            assert!(reason.contains(NEEDS_NEW_SERVER), "{reason}");
                        }
                    }
                }
            }
        }
        let unknown = moved(&c, "vps-starter", "no-such-product");
        assert!(
            matches!(change_check(&c, &unknown), ProductCheck::Blocked(r) if r.contains("unknown product `no-such-product`"))
        );
    }

    #[test]
    fn a_reinstall_needs_an_os_the_product_offers() {
        let c = catalog();
        let mut i = moved(&c, "vps-starter", "vps-starter");
        i.os_image = Some("debian-12".into());
        assert_eq!(
            reinstall_check(&c, &i),
            ProductCheck::Sellable { stock: None }
        );
        i.os_image = Some("windows-95".into());
        assert!(
            matches!(reinstall_check(&c, &i), ProductCheck::Blocked(r) if r.contains("`windows-95` is not offered"))
        );
    }

    #[test]
    fn a_change_in_flight_moves_by_what_the_provider_shows() {
        use PowerState as P;
        let t = SettleTiming {
            create_grace: Duration::from_secs(10),
            graceful_off: Duration::from_secs(60),
            stuck_after: Duration::from_secs(300),
        };
        let base = ResizeState {
            server: Some((P::Running, Some("cx22"))),
            target: "cx32",
            want_running: true,
            needs_off: true,
            change_sent: false,
            hard_sent: false,
            first: false,
            elapsed: Duration::from_secs(5),
        };
        let s = Duration::from_secs;
        let cases: Vec<(&str, ResizeState<'_>, ResizeMove)> = vec![
            (
                "The first step shuts a running server down gracefully.",
                ResizeState {
                    first: true,
                    ..base
                },
                ResizeMove::PowerOff { hard: false },
            ),
            (
                "A shutdown in progress is waited for.",
                base,
                ResizeMove::Continue,
            ),
            (
                "A server ignoring the shutdown is powered off hard.",
                ResizeState {
                    elapsed: s(61),
                    ..base
                },
                ResizeMove::PowerOff { hard: true },
            ),
            (
                "After the hard power-off it is waited for.",
                ResizeState {
                    elapsed: s(61),
                    hard_sent: true,
                    ..base
                },
                ResizeMove::Continue,
            ),
            (
                "A hard power-off that never takes is sent again.",
                ResizeState {
                    elapsed: s(301),
                    hard_sent: true,
                    ..base
                },
                ResizeMove::PowerOff { hard: true },
            ),
            (
                "A server that is off is changed.",
                ResizeState {
                    server: Some((P::Off, Some("cx22"))),
                    ..base
                },
                ResizeMove::Change,
            ),
            (
                "A sent change is waited for, never sent twice.",
                ResizeState {
                    server: Some((P::Off, Some("cx22"))),
                    change_sent: true,
                    ..base
                },
                ResizeMove::Continue,
            ),
            (
                "A server busy with a change whose answer was lost is waited for.",
                ResizeState {
                    server: Some((P::Busy, Some("cx22"))),
                    ..base
                },
                ResizeMove::Continue,
            ),
            (
                "A module that changes running servers changes at once.",
                ResizeState {
                    needs_off: false,
                    first: true,
                    ..base
                },
                ResizeMove::Change,
            ),
            (
                "On the new plan and off, a server that should run is powered on.",
                ResizeState {
                    server: Some((P::Off, Some("cx32"))),
                    ..base
                },
                ResizeMove::PowerOn,
            ),
            (
                "On the new plan and off, a suspended instance stays off.",
                ResizeState {
                    server: Some((P::Off, Some("cx32"))),
                    want_running: false,
                    ..base
                },
                ResizeMove::Done(ObservedStatus::Suspended),
            ),
            (
                "On the new plan and running, the change is done.",
                ResizeState {
                    server: Some((P::Running, Some("cx32"))),
                    ..base
                },
                ResizeMove::Done(ObservedStatus::Active),
            ),
            (
                "Starting on the new plan is waited for.",
                ResizeState {
                    server: Some((P::Starting, Some("cx32"))),
                    ..base
                },
                ResizeMove::Continue,
            ),
            (
                "A server already on the new plan (changed by hand) needs no call.",
                ResizeState {
                    server: Some((P::Running, Some("cx32"))),
                    first: true,
                    ..base
                },
                ResizeMove::Done(ObservedStatus::Active),
            ),
            (
                "A server that reports no plan is changed once it is off.",
                ResizeState {
                    server: Some((P::Off, None)),
                    ..base
                },
                ResizeMove::Change,
            ),
            (
                "A server that vanished is missing.",
                ResizeState {
                    server: None,
                    ..base
                },
                ResizeMove::Missing,
            ),
        ];
        for (says, state, want) in cases {
            assert_eq!(settle_resize(&state, &t), want, "{says}");
        }
    }
}
