//! `/v1/tasks`: the manual module's inbox over HTTP — listed, and completed with the same
//! checks as `provisioner tasks complete` (admin).

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::idempotent::{once, Reply};
use super::problem::Problem;
use super::V1;
use crate::cli::output::ts;
use crate::secrets::SecretString;
use crate::store::{
    completion_addresses, Scope, Store, StoreError, Task, TaskCompletion, TaskFilter, TaskState,
};

/// A task of the manual module's inbox (never the password an admin recorded).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TaskView {
    pub id: i64,
    pub instance_id: i64,
    /// `provision`, `suspend`, `unsuspend`, `reboot`, `terminate`, `resize`, `reinstall`.
    pub kind: String,
    /// `open`, `done`, `cancelled`.
    pub state: String,
    pub created_at: String,
    pub completed_at: Option<String>,
    pub completed_by: Option<String>,
    /// What the reconciler asked and what the admin recorded (address, note).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Whether a root password was recorded (sealed).
    pub has_password: bool,
}

impl From<&Task> for TaskView {
    fn from(t: &Task) -> TaskView {
        TaskView {
            id: t.id,
            instance_id: t.instance_id,
            kind: t.kind.as_str().to_owned(),
            state: t.state.as_str().to_owned(),
            created_at: ts(t.created_at),
            completed_at: t.completed_at.map(ts),
            completed_by: t.completed_by.clone(),
            details: t.details.clone(),
            has_password: t.secret.is_some(),
        }
    }
}

/// The filter of `GET /v1/tasks`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// Only tasks in this state (`open`, `done`, `cancelled`).
    pub state: Option<String>,
}

/// What an admin did for a task.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    /// The server's IPv4 address (a provision task needs an address).
    pub ip: Option<String>,
    /// Its IPv6 address.
    pub ipv6: Option<String>,
    /// The root password (stored sealed; never shown again but through credentials).
    pub password: Option<String>,
    /// A note for the record.
    pub note: Option<String>,
}

/// The inbox, oldest first.
#[utoipa::path(
    get, path = "/v1/tasks", tag = "tasks",
    params(TaskQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The tasks", body = [TaskView]),
        (status = 400, description = "`invalid_parameter`", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(api): State<V1>,
    caller: Caller,
    query: Result<Query<TaskQuery>, QueryRejection>,
) -> Result<Json<Vec<TaskView>>, Problem> {
    caller.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| Problem::invalid("invalid_parameter", e.body_text()))?;
    let state = q
        .state
        .as_deref()
        .map(|s| {
            s.parse::<TaskState>().map_err(|()| {
                Problem::invalid(
                    "invalid_parameter",
                    "`state` must be open, done or cancelled",
                )
            })
        })
        .transpose()?;
    let tasks = api
        .store
        .tasks(&TaskFilter {
            open_only: state == Some(TaskState::Open),
            instance_id: None,
        })
        .await?;
    Ok(Json(
        tasks
            .iter()
            .filter(|t| state.is_none_or(|s| t.state == s))
            .map(TaskView::from)
            .collect(),
    ))
}

/// Records what the admin did; the reconciler takes it up at once.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/complete", tag = "tasks",
    request_body = Completion,
    params(("id" = i64, Path), ("Idempotency-Key" = Option<String>, Header)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Done", body = TaskView),
        (status = 400, description = "`invalid_body`", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope is not `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_task`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`task_not_open`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_completion` (an address that does not parse, or none for a provision task)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn complete(
    State(api): State<V1>,
    caller: Caller,
    Path(segment): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, Problem> {
    caller.require(Scope::Admin)?;
    let unknown = || Problem::not_found("unknown_task", format!("task `{segment}` does not exist"));
    let id = segment
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(unknown)?;
    let done: Completion = serde_json::from_slice(&bytes).map_err(|e| {
        Problem::invalid(
            "invalid_body",
            format!("the body is not what this call takes: {e}"),
        )
    })?;
    let request = format!("POST /v1/tasks/{id}/complete");
    Ok(once(&api, &caller, &headers, &request, &bytes, || async {
        let by = format!("token:{}", caller.token.name);
        let t = record_completion(&api.store, &api.keyring, id, &by, &done).await?;
        Ok(Reply::new(StatusCode::OK, &TaskView::from(&t)))
    })
    .await)
}

/// Records what an admin did for task `id`, with the checks of `tasks complete`: the task is
/// open, its addresses parse (a provision task has one), the password is sealed. The API and
/// the console both complete tasks through this.
///
/// # Errors
/// A problem with its code (`unknown_task`, `task_not_open`, `invalid_completion`).
pub async fn record_completion(
    store: &crate::store::SqlStore,
    keyring: &crate::secrets::Keyring,
    id: i64,
    by: &str,
    done: &Completion,
) -> Result<Task, Problem> {
    let unknown = || Problem::not_found("unknown_task", format!("task {id} does not exist"));
    let task = store.task(id).await?.ok_or_else(unknown)?;
    if task.state != TaskState::Open {
        return Err(not_open(id, task.state));
    }
    let (ip, ipv6) = completion_addresses(
        task.kind,
        done.ip.as_deref().filter(|s| !s.trim().is_empty()),
        done.ipv6.as_deref().filter(|s| !s.trim().is_empty()),
        ["ip", "ipv6"],
    )
    .map_err(|m| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_completion",
            "Invalid completion",
            m,
        )
    })?;
    let mut details = serde_json::Map::new();
    let note = done.note.clone().filter(|n| !n.trim().is_empty());
    for (key, value) in [("ip", ip), ("ipv6", ipv6), ("note", note)] {
        if let Some(v) = value {
            details.insert(key.to_owned(), v.into());
        }
    }
    details.insert("completed_by".to_owned(), by.into());
    let secret = done
        .password
        .as_ref()
        .filter(|p| !p.is_empty())
        .map(|p| keyring.seal(&SecretString::new(p.clone()), &task.secret_context()));
    let completion = TaskCompletion {
        by: by.to_owned(),
        details: serde_json::Value::Object(details),
        secret,
    };
    match store.complete_task(id, &completion).await {
        Ok(t) => Ok(t),
        Err(StoreError::TaskNotOpen { id, state }) => Err(not_open(id, state)),
        Err(StoreError::TaskNotFound(_)) => Err(unknown()),
        Err(e) => Err(e.into()),
    }
}

fn not_open(id: i64, state: TaskState) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "task_not_open",
        "Task not open",
        format!("task {id} is {}, not open", state.as_str()),
    )
}
