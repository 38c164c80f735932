//! The fleet at a glance (overview), every instance (filters, search, pages, live rows) and
//! the failures (grouped by error, retried in bulk).

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::{age, back, badge, failed, layout, Console, Flash, Viewer};
use crate::store::{DesiredStatus, Instance, InstanceFilter, ObservedStatus, Store};

/// Rows per page of the instances table.
const PAGE: u32 = 50;

pub(super) async fn overview(
    State(c): State<Console>,
    viewer: Viewer,
    Query(flash): Query<Flash>,
) -> Response {
    let store = &c.store;
    let (fleet, troubled, errors, deliveries) = match tokio::try_join!(
        store.fleet_stats(),
        troubled(&c),
        store.last_errors_by_account(),
        store.delivery_health(),
    ) {
        Ok(all) => all,
        Err(e) => return failed(&viewer, &e),
    };
    let catalog = c.catalog.borrow().clone();
    let reload = c.reload.borrow().clone();
    let orphans = c.metrics.orphans();
    let driven = c
        .accounts
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let body = html! {
        (flash.render())
        section.cards {
            div.card {
                h2 { "Instances" }
                table.compact {
                    tbody {
                        @for (status, n) in &fleet.by_status {
                            tr {
                                td { a href={ "/ui/instances?status=" (status) } { (badge(status)) } }
                                td.num { (n) }
                            }
                        }
                    }
                }
                p { (fleet.queue.total) " in all" }
            }
            div.card {
                h2 { "Converging now" }
                p { strong { (fleet.queue.due) } " due now, " strong { (fleet.queue.leased) } " being worked on" }
                p { a href="/ui/tasks" { "Manual inbox" } }
            }
            div.card {
                h2 { "Catalog" }
                @match &reload.last_error {
                    None => p { span.badge.ok { "valid" } " " (catalog.products.len()) " products, " (catalog.accounts.len()) " accounts" }
                    Some(e) => {
                        p { span.badge.bad { "invalid on disk" } " the last good catalog is served" }
                        p.error { (e) }
                        @if !reload.last_diagnostics.is_empty() {
                            ul.diagnostics {
                                @for d in reload.last_diagnostics.iter().take(20) { li { code { (d.to_string()) } } }
                            }
                        }
                    }
                }
                @if let Some(git) = &catalog.source.git {
                    p { "git " code { (git.commit.chars().take(12).collect::<String>()) } @if git.dirty { " (uncommitted changes)" } }
                }
                p { (reload.reloads) " reloads, " (reload.failures) " failed" }
            }
            div.card {
                h2 { "Webhooks" }
                p {
                    strong { (deliveries.retrying) } " retrying, "
                    strong { (deliveries.failed) } " given up, "
                    strong { (deliveries.disabled_endpoints) } " endpoints disabled"
                }
                p { a href="/ui/webhooks?state=failed" { "Failed deliveries" } }
            }
        }
        h2 { "Failed and lost" }
        @if troubled.is_empty() {
            p.quiet { "None." }
        } @else {
            (instance_table(&troubled, false))
            p { a href="/ui/failures" { "All failures, by error" } }
        }
        h2 { "Accounts" }
        div.scroll {
            table {
                thead { tr { th { "Account" } th { "Module" } th.num { "Calls ok" } th.num { "Calls failed" } th.num { "Rate budget used" } th.num { "Rate-limit waits" } th { "Last error" } } }
                tbody {
                    @for a in catalog.accounts.values() {
                        tr {
                            td { (a.id) }
                            td { (a.module.as_str()) }
                            @let (ok, failed) = c.metrics.account_calls(&a.id);
                            td.num { (ok) }
                            td.num { (failed) }
                            td.num {
                                @match driven.get(&a.id) {
                                    None => span.quiet { "not driven" },
                                    Some(acc) => @match acc.limiter.used() {
                                        Some(u) => { (format!("{:.0} %", u * 100.0)) },
                                        None => "no limit",
                                    },
                                }
                            }
                            td.num { (c.metrics.counter("provisioner_rate_limit_waits_total", &format!("account=\"{}\"", a.id))) }
                            td {
                                @match errors.iter().find(|e| e.account == a.id) {
                                    Some(e) => { a href={ "/ui/instances/" (e.instance_id) } { (age(e.at)) " ago" } " " span.error { (e.error) } }
                                    None => span.quiet { "none" }
                                }
                            }
                        }
                    }
                }
            }
        }
        p { "Orphan servers (ours, with no live instance) at the last resync: " strong { (orphans) } " — " code { "provisioner orphans" } " lists them with the command that imports each." }
    };
    layout(Some(&viewer), "Overview", "Overview", body).into_response()
}

/// Failed and lost instances, newest first (at most 200).
async fn troubled(c: &Console) -> crate::store::Result<Vec<Instance>> {
    let mut out = Vec::new();
    for status in [ObservedStatus::Failed, ObservedStatus::Lost] {
        out.extend(
            c.store
                .list_instances(&InstanceFilter {
                    observed_status: Some(status),
                    limit: Some(200),
                    ..InstanceFilter::default()
                })
                .await?,
        );
    }
    out.sort_by_key(|i| std::cmp::Reverse(i.updated_at));
    out.truncate(200);
    Ok(out)
}

/// What an instance row shows as its reason: the status reason, else the last error.
fn reason(i: &Instance) -> String {
    i.status_reason
        .clone()
        .or_else(|| i.last_error.clone())
        .unwrap_or_default()
}

/// The instances table; `select` adds a checkbox per row (bulk actions).
fn instance_table(list: &[Instance], select: bool) -> Markup {
    html! {
        div.scroll {
            table.instances {
                thead {
                    tr {
                        @if select { th.pick { span.visually-hidden { "Select" } } }
                        th.id { "ID" } th { "Customer" } th { "Product" } th { "Desired" } th { "Observed" } th { "Reason" } th { "Age" }
                    }
                }
                tbody { (rows(list, select)) }
            }
        }
    }
}

fn rows(list: &[Instance], select: bool) -> Markup {
    html! {
        @for i in list {
            tr data-id=(i.id) data-observed=(i.observed_status.as_str()) {
                @if select {
                    td.pick { input type="checkbox" name="id" value=(i.id) aria-label={ "Select instance " (i.id) }; }
                }
                td.id { a href={ "/ui/instances/" (i.id) } { (i.id) } }
                td { (i.customer_id) }
                td { (i.product_id) }
                td { (i.desired_status.as_str()) @if !i.holds.is_empty() { " " span.hold title="suspension holds" { (i.holds.join(", ")) } } }
                td { (badge(i.observed_status.as_str())) }
                td.reason { (reason(i)) }
                td { (age(i.created_at)) }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    desired: Option<String>,
    product: Option<String>,
    account: Option<String>,
    customer: Option<String>,
    q: Option<String>,
    after: Option<i64>,
    /// `rows`: only the table's rows (the live update).
    fragment: Option<String>,
    #[serde(flatten)]
    flash: Flash,
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

pub(super) async fn instances(
    State(c): State<Console>,
    viewer: Viewer,
    Query(q): Query<ListQuery>,
) -> Response {
    let observed = non_empty(&q.status).and_then(|s| s.parse::<ObservedStatus>().ok());
    let desired = non_empty(&q.desired).and_then(|s| s.parse::<DesiredStatus>().ok());
    let filter = InstanceFilter {
        observed_status: observed,
        desired_status: desired,
        customer_id: non_empty(&q.customer),
        product_id: non_empty(&q.product),
        provider_account: non_empty(&q.account),
        after_id: q.after.filter(|a| *a > 0),
        limit: Some(PAGE + 1),
        search: non_empty(&q.q),
    };
    let mut list = match c.store.list_instances(&filter).await {
        Ok(l) => l,
        Err(e) => return failed(&viewer, &e),
    };
    let more = list.len() > PAGE as usize;
    list.truncate(PAGE as usize);
    if q.fragment.as_deref() == Some("rows") {
        return rows(&list, false).into_response();
    }
    let catalog = c.catalog.borrow().clone();
    let mut live = form_urlencoded_query(&q);
    live.push_str("&fragment=rows");
    let next = list.last().filter(|_| more).map(|last| {
        let mut query = form_urlencoded_query(&q);
        query.push_str(&format!("&after={}", last.id));
        format!("/ui/instances?{query}")
    });
    let selected = |value: &str, current: &Option<String>| current.as_deref() == Some(value);
    let body = html! {
        (q.flash.render())
        form.filters method="get" action="/ui/instances" {
            label { "Search " input type="search" name="q" value=[q.q.as_deref()] placeholder="id, billing ref, hostname or IP"; }
            label { "Observed "
                select name="status" {
                    option value="" { "any" }
                    @for s in ObservedStatus::ALL { option value=(s.as_str()) selected[selected(s.as_str(), &q.status)] { (s.as_str()) } }
                }
            }
            label { "Desired "
                select name="desired" {
                    option value="" { "any" }
                    @for s in DesiredStatus::ALL { option value=(s.as_str()) selected[selected(s.as_str(), &q.desired)] { (s.as_str()) } }
                }
            }
            label { "Product "
                select name="product" {
                    option value="" { "any" }
                    @for p in catalog.products.keys() { option value=(p) selected[selected(p, &q.product)] { (p) } }
                }
            }
            label { "Account "
                select name="account" {
                    option value="" { "any" }
                    @for a in catalog.accounts.keys() { option value=(a) selected[selected(a, &q.account)] { (a) } }
                }
            }
            label { "Customer " input type="text" name="customer" value=[q.customer.as_deref()]; }
            button type="submit" { "Filter" }
        }
        div.scroll {
            table.instances {
                thead { tr { th.id { "ID" } th { "Customer" } th { "Product" } th { "Desired" } th { "Observed" } th { "Reason" } th { "Age" } } }
                tbody #rows data-live={ "/ui/instances?" (live) } { (rows(&list, false)) }
            }
        }
        @if list.is_empty() { p.quiet { "No instance matches." } }
        nav.pages {
            @if q.after.is_some() { a href={ "/ui/instances?" (form_urlencoded_query(&q)) } { "First page" } }
            @if let Some(n) = next { a href=(n) rel="next" { "Next page" } }
        }
        p.quiet { "The rows refresh every 2 seconds." }
    };
    layout(Some(&viewer), "Instances", "Instances", body).into_response()
}

/// The filters of a list query, as a query string (no page, no fragment).
fn form_urlencoded_query(q: &ListQuery) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("status", &q.status),
        ("desired", &q.desired),
        ("product", &q.product),
        ("account", &q.account),
        ("customer", &q.customer),
        ("q", &q.q),
    ] {
        if let Some(v) = non_empty(v) {
            let v = percent_encoding::utf8_percent_encode(&v, percent_encoding::NON_ALPHANUMERIC);
            parts.push(format!("{k}={v}"));
        }
    }
    parts.join("&")
}

pub(super) async fn failures(
    State(c): State<Console>,
    viewer: Viewer,
    Query(flash): Query<Flash>,
) -> Response {
    let list = match troubled(&c).await {
        Ok(l) => l,
        Err(e) => return failed(&viewer, &e),
    };
    let mut groups: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
    for i in list {
        let key = format!("{}: {}", i.observed_status.as_str(), reason(&i));
        groups.entry(key).or_default().push(i);
    }
    let body = html! {
        (flash.render())
        @if groups.is_empty() { p.quiet { "Nothing has failed or been lost." } }
        @for (error, members) in &groups {
            section.group {
                h2 { (error) " " span.count { "(" (members.len()) ")" } }
                @if viewer.admin() && members.iter().any(|i| i.observed_status == ObservedStatus::Failed) {
                    form.action method="post" action="/ui/failures/retry" {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        (instance_table(members, true))
                        button type="submit" { "Retry the selected" }
                    }
                } @else {
                    (instance_table(members, false))
                }
                p.quiet { "Lost instances are recovered one by one from their page: recreate, adopt or forget." }
            }
        }
    };
    layout(Some(&viewer), "Failures", "Failures", body).into_response()
}

pub(super) async fn retry_many(
    State(c): State<Console>,
    viewer: Viewer,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let csrf = form
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    if let Err(r) = viewer.may_submit(csrf) {
        return *r;
    }
    let ids: Vec<i64> = form
        .iter()
        .filter(|(k, _)| k == "id")
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    if ids.is_empty() {
        return back("/ui/failures", Err("Select the instances to retry.".into()));
    }
    let mut done = Vec::new();
    let mut refused = Vec::new();
    for id in ids {
        match c.store.retry(id, &viewer.by()).await {
            Ok(_) => done.push(id.to_string()),
            Err(e) => refused.push(format!("{id}: {e}")),
        }
    }
    let mut text = format!(
        "Retrying {}.",
        if done.is_empty() {
            "none".to_owned()
        } else {
            done.join(", ")
        }
    );
    if !refused.is_empty() {
        text.push_str(&format!(" Refused: {}", refused.join("; ")));
    }
    back(
        "/ui/failures",
        if refused.is_empty() {
            Ok(text)
        } else {
            Err(text)
        },
    )
}
