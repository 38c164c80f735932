//! One instance: its facts, holds, the step the reconciler will take next and why, its
//! history as a timeline, and what an admin can do to it.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::{action_form, back, badge, failed, layout, when, Console, Flash, Viewer};
use crate::api::instances::actor;
use crate::reconcile::plan::{plan, product_check};
use crate::store::{Instance, ObservedStatus, Store};

fn not_found(viewer: &Viewer, id: &str) -> Response {
    (
        axum::http::StatusCode::NOT_FOUND,
        layout(
            Some(viewer),
            "No such instance",
            "Instances",
            html! { p.flash.error { "There is no instance " (id) "." } },
        ),
    )
        .into_response()
}

async fn load(c: &Console, viewer: &Viewer, segment: &str) -> Result<Instance, Response> {
    let Some(id) = segment.parse::<i64>().ok().filter(|id| *id > 0) else {
        return Err(not_found(viewer, segment));
    };
    match c.store.instance(id).await {
        Ok(Some(i)) => Ok(i),
        Ok(None) => Err(not_found(viewer, segment)),
        Err(e) => Err(failed(viewer, &e)),
    }
}

pub(super) async fn page(
    State(c): State<Console>,
    viewer: Viewer,
    Path(segment): Path<String>,
    Query(flash): Query<Flash>,
) -> Response {
    let i = match load(&c, &viewer, &segment).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let (holds, history) = match tokio::try_join!(c.store.holds(i.id), c.store.history(i.id)) {
        Ok(both) => both,
        Err(e) => return failed(&viewer, &e),
    };
    let catalog = c.catalog.borrow().clone();
    let step = plan(&i, &product_check(&catalog, &i));
    let base = format!("/ui/instances/{}", i.id);
    let recoverable = matches!(
        i.observed_status,
        ObservedStatus::Failed | ObservedStatus::Lost
    );
    let default_account = i.provider_account.clone().or_else(|| {
        catalog
            .product(&i.product_id)
            .map(|p| p.provisioning.account.clone())
    });
    let fact = |label: &str, value: Option<String>| {
        html! { dt { (label) } dd { @match value { Some(v) => (v), None => span.quiet { "—" } } } }
    };
    let body = html! {
        (flash.render())
        section.facts {
            dl {
                dt { "Observed" } dd { (badge(i.observed_status.as_str())) @if let Some(r) = &i.status_reason { " " (r) } }
                dt { "Desired" } dd { (i.desired_status.as_str()) @if let Some(r) = &i.suspend_reason { " (" (r) ")" } }
                (fact("Customer", Some(i.customer_id.clone())))
                (fact("Billing ref", i.billing_ref.clone()))
                (fact("Order", i.order_id.clone()))
                (fact("Product", Some(match &i.applied_product_id {
                    Some(applied) if *applied != i.product_id => format!("{} (runs {applied})", i.product_id),
                    _ => i.product_id.clone(),
                })))
                (fact("Revision", i.product_revision.clone()))
                (fact("Location", i.location.clone()))
                (fact("OS image", i.os_image.clone()))
                (fact("Hostname", i.hostname.clone()))
                (fact("IPv4", i.ipv4.clone()))
                (fact("IPv6", i.ipv6.clone()))
                (fact("Account", i.provider_account.clone()))
                (fact("Server id", i.provider_server_id.clone()))
                (fact("Last error", i.last_error.clone()))
                (fact("Created", Some(when(i.created_at))))
            }
        }
        section.next {
            h2 { "Next step" }
            p { strong { (step.describe()) } }
        }
        section.holds {
            h2 { "Holds" }
            @if holds.is_empty() { p.quiet { "None: the server follows billing's desired status." } }
            @else {
                ul {
                    @for h in &holds {
                        li {
                            strong { (h.kind) } " by " (h.placed_by) " at " (when(h.placed_at))
                            @if let Some(r) = &h.reason { " — " (r) }
                            (action_form(&viewer, &format!("{base}/release"), html! {
                                input type="hidden" name="kind" value=(h.kind);
                                button type="submit" { "Release " (h.kind) " hold" }
                            }))
                        }
                    }
                }
            }
        }
        @if viewer.admin() {
            section.actions {
                h2 { "Actions" }
                div.buttons {
                    (action_form(&viewer, &format!("{base}/reboot"), html! { button type="submit" { "Reboot" } }))
                    @if i.observed_status == ObservedStatus::Failed {
                        (action_form(&viewer, &format!("{base}/retry"), html! { button type="submit" { "Retry" } }))
                    }
                    @if recoverable {
                        (action_form(&viewer, &format!("{base}/recreate"), html! { button type="submit" data-confirm="Give this instance a new server?" { "Recreate" } }))
                        (action_form(&viewer, &format!("{base}/forget"), html! { button.danger type="submit" data-confirm="Close this instance without calling its provider?" { "Forget" } }))
                    }
                    (action_form(&viewer, &format!("{base}/reveal"), html! { button type="submit" { "Reveal credentials" } }))
                }
                (action_form(&viewer, &format!("{base}/suspend"), html! {
                    fieldset {
                        legend { "Suspend with a hold" }
                        label for="hold-kind" { "Hold kind" }
                        select #hold-kind name="kind" {
                            option value="abuse" { "abuse" }
                            option value="admin" { "admin" }
                            option value="billing" { "billing" }
                        }
                        label for="hold-reason" { "Reason" }
                        input #hold-reason type="text" name="reason" maxlength="500";
                        button type="submit" { "Suspend" }
                    }
                }))
                @if recoverable {
                    (action_form(&viewer, &format!("{base}/adopt"), html! {
                        fieldset {
                            legend { "Adopt an existing server in place of the old one" }
                            label for="adopt-server" { "Server id at the provider" }
                            input #adopt-server type="text" name="server_id" required autocomplete="off";
                            label for="adopt-account" { "Account" }
                            select #adopt-account name="account" {
                                @for a in catalog.accounts.keys() {
                                    option value=(a) selected[Some(a.as_str()) == default_account.as_deref()] { (a) }
                                }
                            }
                            button type="submit" { "Adopt" }
                        }
                    }))
                }
            }
        }
        section.history {
            h2 { "History" }
            ol.timeline {
                @for t in history.iter().rev() {
                    li class={ "outcome-" (t.outcome) } {
                        time datetime=(t.at.to_rfc3339()) { (when(t.at)) }
                        " "
                        strong { (t.action) }
                        " " (t.outcome) " "
                        span.transition { (t.from_status.as_deref().unwrap_or("-")) " → " (t.to_status.as_deref().unwrap_or("-")) }
                        " · " (t.cause) " · " span.actor { (actor(t)) }
                        @if let Some(e) = &t.error { div.error { (e) } }
                        @let ids = request_ids(&t.details);
                        @if !ids.is_empty() { div.ids { (ids) } }
                    }
                }
            }
        }
    };
    layout(
        Some(&viewer),
        &format!("Instance {}", i.id),
        "Instances",
        body,
    )
    .into_response()
}

/// The provider request and action ids a transition recorded, as one line.
fn request_ids(details: &serde_json::Value) -> String {
    let Some(map) = details.as_object() else {
        return String::new();
    };
    map.iter()
        .filter(|(k, _)| k.ends_with("_id") || k.ends_with("request_id") || k.as_str() == "by")
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some(format!("{k}: {s}")),
            serde_json::Value::Number(n) => Some(format!("{k}: {n}")),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Deserialize)]
pub(super) struct ActionForm {
    csrf: Option<String>,
    kind: Option<String>,
    reason: Option<String>,
    server_id: Option<String>,
    account: Option<String>,
}

pub(super) async fn act(
    State(c): State<Console>,
    viewer: Viewer,
    Path((segment, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(r) = viewer.may_submit(form.csrf.as_deref()) {
        return *r;
    }
    let i = match load(&c, &viewer, &segment).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let base = format!("/ui/instances/{}", i.id);
    let by = viewer.by();
    let kind = form
        .kind
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .unwrap_or("admin")
        .to_owned();
    let reason = form
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    let outcome: Result<String, String> = match action.as_str() {
        "reboot" => c
            .store
            .request_reboot(i.id)
            .await
            .map(|_| "Reboot requested.".to_owned())
            .map_err(|e| e.to_string()),
        "suspend" => c
            .store
            .place_hold(i.id, &kind, reason, &by)
            .await
            .map(|h| {
                format!(
                    "Hold `{}` placed: the server is suspended while it stands.",
                    h.kind
                )
            })
            .map_err(|e| e.to_string()),
        "release" => match c.store.release_hold(i.id, &kind).await {
            Ok(true) => Ok(format!("Hold `{kind}` released.")),
            Ok(false) => Err(format!("There is no `{kind}` hold.")),
            Err(e) => Err(e.to_string()),
        },
        "retry" => c
            .store
            .retry(i.id, &by)
            .await
            .map(|_| "Taken up again.".to_owned())
            .map_err(|e| e.to_string()),
        "recreate" => c
            .store
            .recreate(i.id, &by)
            .await
            .map(|_| "A new server will be made.".to_owned())
            .map_err(|e| e.to_string()),
        "forget" => c
            .store
            .forget(i.id, &by)
            .await
            .map(|_| "Closed without a provider call.".to_owned())
            .map_err(|e| e.to_string()),
        "reveal" => return reveal(&c, &viewer, &i).await,
        "adopt" => adopt(&c, &i, &form, &by).await,
        _ => return not_found(&viewer, &format!("{segment}/{action}")),
    };
    back(&base, outcome)
}

/// Shows the credentials once, on their own page (never in a URL), and records the reveal.
async fn reveal(c: &Console, viewer: &Viewer, i: &Instance) -> Response {
    let password = match &i.credentials {
        Some(sealed) => match c.keyring.open(sealed, &i.secret_context()) {
            Ok(p) => Some(p.expose().to_owned()),
            Err(e) => return failed(viewer, &e),
        },
        None => None,
    };
    if let Err(e) = c.store.record_reveal(i.id, &viewer.by()).await {
        return failed(viewer, &e);
    }
    let body = html! {
        p { "This reveal is recorded in the instance's history as " (viewer.by()) "." }
        dl.facts {
            dt { "Hostname" } dd { (i.hostname.as_deref().unwrap_or("—")) }
            dt { "IPv4" } dd { (i.ipv4.as_deref().unwrap_or("—")) }
            dt { "IPv6" } dd { (i.ipv6.as_deref().unwrap_or("—")) }
            dt { "Root password" } dd { @match &password { Some(p) => code.secret { (p) }, None => span.quiet { "none stored" } } }
        }
        p { a href={ "/ui/instances/" (i.id) } { "Back to instance " (i.id) } }
    };
    layout(
        Some(viewer),
        &format!("Credentials of instance {}", i.id),
        "Instances",
        body,
    )
    .into_response()
}

/// Looks at the named server through the daemon's own account (its rate budget) and adopts
/// it, with the checks of `instances adopt`.
async fn adopt(c: &Console, i: &Instance, form: &ActionForm, by: &str) -> Result<String, String> {
    let server_id = form.server_id.as_deref().map(str::trim).unwrap_or("");
    if server_id.is_empty() || server_id.len() > 200 {
        return Err("Give the server's id at the provider.".to_owned());
    }
    let catalog = c.catalog.borrow().clone();
    let account_id = form
        .account
        .clone()
        .filter(|a| !a.is_empty())
        .or_else(|| i.provider_account.clone())
        .unwrap_or_default();
    let driven = c
        .accounts
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&account_id);
    let Some(account) = driven else {
        return Err(format!(
            "Account `{account_id}` is not driven by this daemon (unknown, or its credentials are not set)."
        ));
    };
    match crate::reconcile::adopt::adopt_server(&c.store, &catalog, &account, i.id, server_id, by).await {
        Ok(Ok(after)) => Ok(format!(
            "Server {server_id} of `{account_id}` adopted; the instance is {} and the reconciler marks the server as ours.",
            after.observed_status
        )),
        Ok(Err(why)) => Err(why),
        Err(e) => Err(format!("{e:#}")),
    }
}
