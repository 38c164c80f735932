//! Webhook deliveries with their attempts, and redelivery.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::{action_form, back, badge, failed, layout, when, Console, Flash, Viewer};
use crate::store::events::{DeliveryFilter, DeliveryState};

#[derive(Debug, Default, Deserialize)]
pub(super) struct DeliveryQuery {
    state: Option<String>,
    endpoint: Option<String>,
    #[serde(flatten)]
    flash: Flash,
}

pub(super) async fn page(
    State(c): State<Console>,
    viewer: Viewer,
    Query(q): Query<DeliveryQuery>,
) -> Response {
    let state = q
        .state
        .as_deref()
        .and_then(|s| s.parse::<DeliveryState>().ok());
    let endpoint = q.endpoint.clone().filter(|e| !e.is_empty());
    let filter = DeliveryFilter {
        endpoint_id: endpoint,
        state,
        limit: 100,
    };
    let (list, consumers) = match tokio::try_join!(c.store.deliveries(&filter), c.store.consumers())
    {
        Ok(both) => both,
        Err(e) => return failed(&viewer, &e),
    };
    let mut attempts = Vec::with_capacity(list.len());
    for d in list.iter().take(30) {
        match c.store.delivery(d.id).await {
            Ok(Some((_, a))) => attempts.push(a),
            Ok(None) => attempts.push(Vec::new()),
            Err(e) => return failed(&viewer, &e),
        }
    }
    let body = html! {
        (q.flash.render())
        form.filters method="get" action="/ui/webhooks" {
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for s in ["pending", "delivered", "failed"] { option value=(s) selected[q.state.as_deref() == Some(s)] { (s) } }
                }
            }
            button type="submit" { "Filter" }
        }
        h2 { "Endpoints" }
        @if consumers.is_empty() { p.quiet { "No endpoint or notifier has read the event feed yet." } }
        ul {
            @for cons in &consumers {
                li {
                    strong { (cons.name) } " after event " (cons.after_event)
                    @if let Some(at) = cons.disabled_at { " " span.badge.bad { "disabled" } " " (when(at)) ": " (cons.disabled_reason.as_deref().unwrap_or("")) " — " code { "provisioner webhooks enable " (cons.name.trim_start_matches("webhook:")) } }
                }
            }
        }
        h2 { "Deliveries" }
        @if list.is_empty() { p.quiet { "None." } }
        div.scroll {
            table {
                thead { tr { th { "ID" } th { "Endpoint" } th { "Event" } th { "State" } th.num { "Attempts" } th { "Last answer" } th { "" } } }
                tbody {
                    @for (n, d) in list.iter().enumerate() {
                        tr {
                            td { (d.id) }
                            td { (d.endpoint_id) }
                            td { (d.event_type) br; code.small { (d.event_id) } }
                            td {
                                (badge(match d.state { DeliveryState::Delivered => "active", DeliveryState::Failed => "failed", DeliveryState::Pending => "pending" }))
                                " " (d.state.as_str())
                                @if d.state == DeliveryState::Pending { @if let Some(next) = d.next_attempt_at { br; span.quiet { "next " (when(next)) } } }
                            }
                            td.num { (d.attempts) }
                            td {
                                (d.last_status.map(|s| s.to_string()).unwrap_or_default())
                                @if let Some(e) = &d.last_error { " " span.error { (e) } }
                                @if let Some(list) = attempts.get(n).filter(|a| !a.is_empty()) {
                                    details {
                                        summary { "Attempts" }
                                        ol {
                                            @for a in list {
                                                li { (when(a.at)) " " (a.status.map(|s| s.to_string()).unwrap_or_else(|| "no answer".into())) " in " (a.duration_ms) " ms" @if let Some(e) = &a.error { " — " (e) } }
                                            }
                                        }
                                    }
                                }
                            }
                            td { (action_form(&viewer, &format!("/ui/webhooks/{}/redeliver", d.id), html! { button type="submit" { "Redeliver" } })) }
                        }
                    }
                }
            }
        }
    };
    layout(Some(&viewer), "Webhooks", "Webhooks", body).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct CsrfForm {
    csrf: Option<String>,
}

pub(super) async fn redeliver(
    State(c): State<Console>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = viewer.may_submit(form.csrf.as_deref()) {
        return *r;
    }
    let Some(id) = id.parse::<i64>().ok() else {
        return back("/ui/webhooks", Err(format!("There is no delivery {id}.")));
    };
    back(
        "/ui/webhooks",
        c.store
            .redeliver(id)
            .await
            .map(|d| format!("Delivery {} of {} queued again.", d.id, d.event_id))
            .map_err(|e| e.to_string()),
    )
}
