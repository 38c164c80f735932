//! `/v1/instances`: billing's instances as the API shows them (the same view the CLI's JSON
//! prints), listed with filters and a cursor, one by one, and their history.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::problem::Problem;
use super::V1;
use crate::cli::output::ts;
use crate::store::{Instance, InstanceFilter, Scope, Store, Transition};

/// An instance: billing's half (what it should be) and the reconciler's (what it is). Never a
/// secret: credentials are read through their own, admin-only call.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct InstanceView {
    pub id: i64,
    pub customer_id: String,
    pub order_id: Option<String>,
    pub billing_ref: Option<String>,
    pub product_id: String,
    pub location: Option<String>,
    pub os_image: Option<String>,
    pub hostname: Option<String>,
    /// `active`, `suspended` or `terminated`.
    pub desired_status: String,
    pub suspend_reason: Option<String>,
    pub reboot_requested: i64,
    pub reinstall_requested: i64,
    pub desired_generation: i64,
    /// RFC 3339, UTC.
    pub desired_changed_at: String,
    /// `pending`, `provisioning`, `active`, `suspending`, `suspended`, `unsuspending`,
    /// `rebooting`, `resizing`, `reinstalling`, `terminating`, `terminated`, `failed`, `lost`.
    pub observed_status: String,
    pub observed_generation: i64,
    pub status_reason: Option<String>,
    /// Whether the server is what billing wants.
    pub converged: bool,
    pub provider_account: Option<String>,
    pub provider_server_id: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub product_revision: Option<String>,
    pub reboot_handled: i64,
    pub reinstall_handled: i64,
    pub applied_product_id: Option<String>,
    pub observe_only: bool,
    pub claim_pending: bool,
    /// Whether a root password is stored (sealed), and with which key.
    pub credentials: Option<SealedWith>,
    pub last_error: Option<String>,
    pub attempts: i64,
    pub pending_action: Option<String>,
    pub pending_action_id: Option<String>,
    pub pending_hard: Option<bool>,
    pub pending_since: Option<String>,
    pub next_check_at: Option<String>,
    pub lease_owner: Option<String>,
    /// The kinds of the suspension holds on it, sorted.
    pub holds: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// The key a stored secret is sealed with (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SealedWith {
    pub sealed_with_key: String,
}

impl From<&Instance> for InstanceView {
    fn from(i: &Instance) -> InstanceView {
        InstanceView {
            id: i.id,
            customer_id: i.customer_id.clone(),
            order_id: i.order_id.clone(),
            billing_ref: i.billing_ref.clone(),
            product_id: i.product_id.clone(),
            location: i.location.clone(),
            os_image: i.os_image.clone(),
            hostname: i.hostname.clone(),
            desired_status: i.desired_status.as_str().to_owned(),
            suspend_reason: i.suspend_reason.clone(),
            reboot_requested: i.reboot_requested,
            reinstall_requested: i.reinstall_requested,
            desired_generation: i.desired_generation,
            desired_changed_at: ts(i.desired_changed_at),
            observed_status: i.observed_status.as_str().to_owned(),
            observed_generation: i.observed_generation,
            status_reason: i.status_reason.clone(),
            converged: i.is_converged(),
            provider_account: i.provider_account.clone(),
            provider_server_id: i.provider_server_id.clone(),
            ipv4: i.ipv4.clone(),
            ipv6: i.ipv6.clone(),
            product_revision: i.product_revision.clone(),
            reboot_handled: i.reboot_handled,
            reinstall_handled: i.reinstall_handled,
            applied_product_id: i.applied_product_id.clone(),
            observe_only: i.observe_only,
            claim_pending: i.claim_pending,
            credentials: i.credentials.as_ref().map(|c| SealedWith {
                sealed_with_key: c.key_id.clone(),
            }),
            last_error: i.last_error.clone(),
            attempts: i.attempts,
            pending_action: i.pending.as_ref().map(|p| p.action.as_str().to_owned()),
            pending_action_id: i.pending.as_ref().and_then(|p| p.action_id.clone()),
            pending_hard: i.pending.as_ref().map(|p| p.hard),
            pending_since: i.pending_since.map(ts),
            next_check_at: i.next_check_at.map(ts),
            lease_owner: i.lease_owner.clone(),
            holds: i.holds.clone(),
            created_at: ts(i.created_at),
            updated_at: ts(i.updated_at),
        }
    }
}

/// One row of an instance's history.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TransitionView {
    pub id: i64,
    pub instance_id: i64,
    /// RFC 3339, UTC.
    pub at: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub action: String,
    pub cause: String,
    pub outcome: String,
    /// Who asked for it: `billing` (with its reason), an admin's or a token's name, or
    /// `reconciler`.
    pub actor: String,
    pub error: Option<String>,
    /// Provider request and action ids and the like; never secrets.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub product_revision: Option<String>,
}

impl From<&Transition> for TransitionView {
    fn from(t: &Transition) -> TransitionView {
        TransitionView {
            id: t.id,
            instance_id: t.instance_id,
            at: ts(t.at),
            from_status: t.from_status.clone(),
            to_status: t.to_status.clone(),
            action: t.action.clone(),
            cause: t.cause.clone(),
            outcome: t.outcome.clone(),
            actor: actor(t),
            error: t.error.clone(),
            details: t.details.clone(),
            product_revision: t.product_revision.clone(),
        }
    }
}

/// Who asked for a transition: billing (with its reason), a person, or the reconciler.
pub fn actor(t: &Transition) -> String {
    let detail = |k: &str| t.details.get(k).and_then(serde_json::Value::as_str);
    match t.cause.as_str() {
        "desired_change" => match detail("reason") {
            Some(r) => format!("billing ({r})"),
            None => "billing".to_owned(),
        },
        "manual" => detail("completed_by")
            .or(detail("by"))
            .unwrap_or("admin")
            .to_owned(),
        _ => "reconciler".to_owned(),
    }
}

/// A page of instances; `next_cursor` fetches the next one (absent on the last page).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct InstancePage {
    pub instances: Vec<InstanceView>,
    pub next_cursor: Option<String>,
}

/// The filters and the page of `GET /v1/instances`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this customer's.
    pub customer_id: Option<String>,
    /// Only this product's.
    pub product_id: Option<String>,
    /// Only this observed status.
    pub status: Option<String>,
    /// Only this desired status.
    pub desired_status: Option<String>,
    /// Only the instance with this billing reference.
    pub billing_ref: Option<String>,
    /// At most this many (1 to 500, default 100).
    pub limit: Option<u32>,
    /// Where the previous page ended (its `next_cursor`).
    pub cursor: Option<String>,
}

fn parse<T: std::str::FromStr>(
    value: Option<&str>,
    name: &str,
    allowed: &str,
) -> Result<Option<T>, Problem> {
    value
        .map(|v| {
            v.parse().map_err(|_| {
                Problem::invalid(
                    "invalid_parameter",
                    format!("`{name}` must be one of {allowed}"),
                )
            })
        })
        .transpose()
}

/// An instance id from a path: a positive integer, or 404 (no instance has any other id).
pub(super) fn instance_id(segment: &str) -> Result<i64, Problem> {
    segment
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Problem::not_found("unknown_instance", "instance ids are positive integers"))
}

/// A cursor is the last id of the page, opaque to clients.
fn cursor_of(id: i64) -> String {
    format!("i{id}")
}

fn after_cursor(cursor: &str) -> Result<i64, Problem> {
    cursor
        .strip_prefix('i')
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| Problem::invalid("invalid_cursor", "`cursor` is not one this API gave"))
}

/// Lists instances, oldest first.
#[utoipa::path(
    get, path = "/v1/instances", tag = "instances",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of instances", body = InstancePage),
        (status = 400, description = "A filter or the cursor is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(api): State<V1>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<InstancePage>, Problem> {
    caller.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| Problem::invalid("invalid_parameter", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Problem::invalid(
            "invalid_parameter",
            "`limit` must be from 1 to 500",
        ));
    }
    let statuses = "the observed statuses (pending, provisioning, active, suspended, …)";
    let filter = InstanceFilter {
        observed_status: parse(q.status.as_deref(), "status", statuses)?,
        desired_status: parse(
            q.desired_status.as_deref(),
            "desired_status",
            "active, suspended, terminated",
        )?,
        customer_id: q.customer_id.clone(),
        product_id: q.product_id.clone(),
        provider_account: None,
        after_id: q.cursor.as_deref().map(after_cursor).transpose()?,
        limit: Some(limit + 1),
        search: None,
    };
    let mut found = match &q.billing_ref {
        // A billing reference names one instance at most.
        Some(r) => api
            .store
            .instance_by_billing_ref(r)
            .await?
            .into_iter()
            .filter(|i| {
                filter.after_id.is_none_or(|a| i.id > a)
                    && filter
                        .customer_id
                        .as_ref()
                        .is_none_or(|c| *c == i.customer_id)
                    && filter
                        .product_id
                        .as_ref()
                        .is_none_or(|p| *p == i.product_id)
                    && filter
                        .observed_status
                        .is_none_or(|s| s == i.observed_status)
                    && filter.desired_status.is_none_or(|s| s == i.desired_status)
            })
            .collect(),
        None => api.store.list_instances(&filter).await?,
    };
    let more = found.len() > limit as usize;
    found.truncate(limit as usize);
    Ok(Json(InstancePage {
        next_cursor: more.then(|| cursor_of(found.last().map_or(0, |i| i.id))),
        instances: found.iter().map(InstanceView::from).collect(),
    }))
}

/// One instance.
#[utoipa::path(
    get, path = "/v1/instances/{id}", tag = "instances",
    params(("id" = i64, Path, description = "Instance id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The instance", body = InstanceView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such instance (`unknown_instance`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_one(
    State(api): State<V1>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<InstanceView>, Problem> {
    caller.require(Scope::Read)?;
    let id = instance_id(&id)?;
    let i = api
        .store
        .instance(id)
        .await?
        .ok_or(crate::store::StoreError::InstanceNotFound(id))?;
    Ok(Json(InstanceView::from(&i)))
}

/// An instance's history, oldest first.
#[utoipa::path(
    get, path = "/v1/instances/{id}/history", tag = "instances",
    params(("id" = i64, Path, description = "Instance id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Its transitions", body = [TransitionView]),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such instance (`unknown_instance`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn history(
    State(api): State<V1>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<TransitionView>>, Problem> {
    caller.require(Scope::Read)?;
    let id = instance_id(&id)?;
    let h = api.store.history(id).await?;
    Ok(Json(h.iter().map(TransitionView::from).collect()))
}
