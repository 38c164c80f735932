//! The manual module's inbox: open tasks with the completion form (checked as the CLI and
//! the API check it), and the latest completed ones.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::{action_form, back, failed, layout, when, Console, Flash, Viewer};
use crate::api::tasks::{record_completion, Completion};
use crate::store::{Store, TaskFilter, TaskKind, TaskState};

pub(super) async fn page(
    State(c): State<Console>,
    viewer: Viewer,
    Query(flash): Query<Flash>,
) -> Response {
    let tasks = match c.store.tasks(&TaskFilter::default()).await {
        Ok(t) => t,
        Err(e) => return failed(&viewer, &e),
    };
    let open: Vec<_> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Open)
        .collect();
    let mut closed: Vec<_> = tasks
        .iter()
        .filter(|t| t.state != TaskState::Open)
        .collect();
    closed.sort_by_key(|t| std::cmp::Reverse(t.completed_at));
    closed.truncate(50);
    let body = html! {
        (flash.render())
        h2 { "Open" }
        @if open.is_empty() { p.quiet { "Nothing waits for an admin." } }
        @for t in &open {
            article.task id={ "task-" (t.id) } {
                h3 { "Task " (t.id) ": " (t.kind.as_str()) " " a href={ "/ui/instances/" (t.instance_id) } { "instance " (t.instance_id) } }
                p.quiet { "Opened " (when(t.created_at)) }
                @if let Some(instructions) = t.details.get("instructions").and_then(|v| v.as_str()) {
                    p.instructions { (instructions) }
                }
                @if let Some(obj) = t.details.as_object() {
                    dl.details {
                        @for (k, v) in obj.iter().filter(|(k, _)| k.as_str() != "instructions") {
                            dt { (k) } dd { (match v { serde_json::Value::String(s) => s.clone(), other => other.to_string() }) }
                        }
                    }
                }
                (action_form(&viewer, &format!("/ui/tasks/{}/complete", t.id), html! {
                    fieldset {
                        legend { "Record what you did" }
                        label for={ "ip-" (t.id) } { "IPv4 address" @if t.kind == TaskKind::Provision { " (required)" } }
                        input id={ "ip-" (t.id) } type="text" name="ip" inputmode="decimal" autocomplete="off";
                        label for={ "ipv6-" (t.id) } { "IPv6 address" }
                        input id={ "ipv6-" (t.id) } type="text" name="ipv6" autocomplete="off";
                        label for={ "password-" (t.id) } { "Root password (stored sealed)" }
                        input id={ "password-" (t.id) } type="password" name="password" autocomplete="new-password";
                        label for={ "note-" (t.id) } { "Note" }
                        input id={ "note-" (t.id) } type="text" name="note" maxlength="1000";
                        button type="submit" { "Complete task " (t.id) }
                    }
                }))
            }
        }
        h2 { "Recently done" }
        @if closed.is_empty() { p.quiet { "None yet." } }
        @else {
            div.scroll {
                table {
                    thead { tr { th { "Task" } th { "Kind" } th { "Instance" } th { "State" } th { "Completed" } th { "By" } } }
                    tbody {
                        @for t in &closed {
                            tr {
                                td { (t.id) } td { (t.kind.as_str()) }
                                td { a href={ "/ui/instances/" (t.instance_id) } { (t.instance_id) } }
                                td { (t.state.as_str()) }
                                td { (t.completed_at.map(when).unwrap_or_default()) }
                                td { (t.completed_by.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(Some(&viewer), "Tasks", "Tasks", body).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct CompleteForm {
    csrf: Option<String>,
    ip: Option<String>,
    ipv6: Option<String>,
    password: Option<String>,
    note: Option<String>,
}

pub(super) async fn complete(
    State(c): State<Console>,
    viewer: Viewer,
    Path(segment): Path<String>,
    Form(form): Form<CompleteForm>,
) -> Response {
    if let Err(r) = viewer.may_submit(form.csrf.as_deref()) {
        return *r;
    }
    let Some(id) = segment.parse::<i64>().ok().filter(|id| *id > 0) else {
        return back("/ui/tasks", Err(format!("There is no task {segment}.")));
    };
    let done = Completion {
        ip: form.ip.map(|s| s.trim().to_owned()),
        ipv6: form.ipv6.map(|s| s.trim().to_owned()),
        password: form.password,
        note: form.note,
    };
    match record_completion(&c.store, &c.keyring, id, &viewer.by(), &done).await {
        Ok(t) => back(
            "/ui/tasks",
            Ok(format!(
                "Task {} done; the reconciler takes instance {} up now.",
                t.id, t.instance_id
            )),
        ),
        Err(p) => back("/ui/tasks", Err(format!("Task {id}: {}", p.detail))),
    }
}
