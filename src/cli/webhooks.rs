//! `provisioner webhooks …`: the delivery log, redelivery, and the endpoints reading the
//! event feed.

use std::process::ExitCode;

use serde_json::{json, Value};

use super::instances::invalid;
use super::tokens::with_store;
use super::{output, Format, WebhooksCommand, EXIT_OK};
use crate::notify::webhook_consumer;
use crate::store::events::{Attempt, Delivery, DeliveryFilter, DeliveryState};
use crate::store::SqlStore;

pub(super) async fn run(url: &str, command: WebhooksCommand) -> anyhow::Result<ExitCode> {
    with_store(url, async |store| dispatch(store, command).await).await
}

fn delivery_json(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "endpoint": d.endpoint_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "state": d.state.as_str(),
        "attempts": d.attempts,
        "next_attempt_at": output::ts_json(d.next_attempt_at.filter(|_| d.state == DeliveryState::Pending)),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "created_at": output::ts(d.created_at),
        "finished_at": output::ts_json(d.finished_at),
    })
}

fn attempt_json(a: &Attempt) -> Value {
    json!({
        "at": output::ts(a.at),
        "status": a.status,
        "error": a.error,
        "duration_ms": a.duration_ms,
    })
}

fn status_text(status: Option<i64>) -> String {
    status.map_or_else(|| "-".to_owned(), |s| s.to_string())
}

fn error_text(error: Option<&str>) -> String {
    error.map_or_else(|| "-".to_owned(), |e| output::printable(e).into_owned())
}

async fn dispatch(store: &SqlStore, command: WebhooksCommand) -> anyhow::Result<ExitCode> {
    match command {
        WebhooksCommand::Deliveries {
            endpoint,
            state,
            limit,
            format,
        } => {
            let state = match state.as_deref().map(str::parse::<DeliveryState>) {
                None => None,
                Some(Ok(s)) => Some(s),
                Some(Err(())) => {
                    return invalid("`--state` must be pending, delivered or failed");
                }
            };
            if !(1..=10_000).contains(&limit) {
                return invalid("`--limit` must be from 1 to 10000");
            }
            let found = store
                .deliveries(&DeliveryFilter {
                    endpoint_id: endpoint,
                    state,
                    limit,
                })
                .await?;
            match format {
                Format::Json => {
                    output::json(&json!(found.iter().map(delivery_json).collect::<Vec<_>>()))?
                }
                Format::Text => {
                    let mut table = output::Table::new(&[
                        "ID", "ENDPOINT", "EVENT", "TYPE", "STATE", "ATTEMPTS", "NEXT", "LAST",
                        "ERROR",
                    ]);
                    for d in &found {
                        let next = d
                            .next_attempt_at
                            .filter(|_| d.state == DeliveryState::Pending);
                        table.row(vec![
                            d.id.to_string(),
                            d.endpoint_id.clone(),
                            d.event_id.clone(),
                            d.event_type.clone(),
                            d.state.as_str().to_owned(),
                            d.attempts.to_string(),
                            output::ts_text(next),
                            status_text(d.last_status),
                            error_text(d.last_error.as_deref()),
                        ]);
                    }
                    output::text(&table.render())?;
                }
            }
            Ok(ExitCode::from(EXIT_OK))
        }
        WebhooksCommand::Show { id, format } => {
            let Some((d, attempts)) = store.delivery(id).await? else {
                return invalid(format!("there is no delivery {id}"));
            };
            match format {
                Format::Json => {
                    let mut doc = delivery_json(&d);
                    doc["attempt_log"] =
                        json!(attempts.iter().map(attempt_json).collect::<Vec<_>>());
                    output::json(&doc)?;
                }
                Format::Text => {
                    let mut out = format!(
                        "delivery {} of {} ({}) to `{}`: {}, {} attempt(s)\n\n",
                        d.id,
                        d.event_id,
                        d.event_type,
                        d.endpoint_id,
                        d.state.as_str(),
                        d.attempts
                    );
                    let mut table = output::Table::new(&["AT", "STATUS", "MS", "ERROR"]);
                    for a in &attempts {
                        table.row(vec![
                            output::ts(a.at),
                            status_text(a.status),
                            a.duration_ms.to_string(),
                            error_text(a.error.as_deref()),
                        ]);
                    }
                    out.push_str(&table.render());
                    output::text(&out)?;
                }
            }
            Ok(ExitCode::from(EXIT_OK))
        }
        WebhooksCommand::Redeliver { id, format } => {
            let d = store.redeliver(id).await?;
            match format {
                Format::Json => output::json(&delivery_json(&d))?,
                Format::Text => output::text(&format!(
                    "delivery {} of {} to `{}` queued again: the daemon sends it within a second, signed with the current secret\n",
                    d.id, d.event_id, d.endpoint_id
                ))?,
            }
            Ok(ExitCode::from(EXIT_OK))
        }
        WebhooksCommand::Endpoints { format } => {
            let consumers = store.consumers().await?;
            match format {
                Format::Json => output::json(&json!(consumers
                    .iter()
                    .map(|c| json!({
                        "name": c.name,
                        "after_event": c.after_event,
                        "disabled_at": output::ts_json(c.disabled_at),
                        "disabled_reason": c.disabled_reason,
                    }))
                    .collect::<Vec<_>>()))?,
                Format::Text => {
                    let mut table =
                        output::Table::new(&["CONSUMER", "AFTER EVENT", "DISABLED", "WHY"]);
                    for c in &consumers {
                        table.row(vec![
                            c.name.clone(),
                            c.after_event.to_string(),
                            output::ts_text(c.disabled_at),
                            error_text(c.disabled_reason.as_deref()),
                        ]);
                    }
                    output::text(&table.render())?;
                }
            }
            Ok(ExitCode::from(EXIT_OK))
        }
        WebhooksCommand::Enable { endpoint, format } => {
            if !store.enable_consumer(&webhook_consumer(&endpoint)).await? {
                return invalid(format!(
                    "webhook endpoint `{}` is not disabled",
                    output::printable(&endpoint)
                ));
            }
            match format {
                Format::Json => output::json(&json!({"endpoint": endpoint, "enabled": true}))?,
                Format::Text => output::text(&format!(
                    "webhook endpoint `{endpoint}` enabled: the events since it was disabled are delivered now\n"
                ))?,
            }
            Ok(ExitCode::from(EXIT_OK))
        }
    }
}
