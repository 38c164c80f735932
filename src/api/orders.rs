//! Billing's writes over HTTP: orders (`POST /v1/instances`) and changes of what an instance
//! should be (suspend, unsuspend, terminate, reboot, reinstall, change of product), each the
//! same store verb and catalog check the CLI and the SQL contract use, each answered once per
//! `Idempotency-Key`; and the admin's read of credentials, recorded in the history.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::idempotent::{once, Reply};
use super::instances::{instance_id, InstanceView};
use super::problem::Problem;
use super::V1;
use crate::catalog::OrderRefusal;
use crate::store::{DesiredStatus, Instance, NewInstance, Scope, Store};

/// An order, as billing sends it when it is paid.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// Billing's customer id.
    pub customer_id: String,
    /// A product of the catalog.
    pub product_id: String,
    /// One of the product's locations (default: its first).
    pub location: Option<String>,
    /// One of the product's OS images (default: its first).
    pub os_image: Option<String>,
    /// The server's hostname (default: derived from the id).
    pub hostname: Option<String>,
    /// SSH public keys (or key names registered at the provider).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Billing's order reference.
    pub order_id: Option<String>,
    /// Billing's own service id: unique, so an order is inserted once.
    pub billing_ref: Option<String>,
}

/// `suspend`'s body.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Suspend {
    /// Why (non-payment, abuse report…).
    pub reason: Option<String>,
    /// A hold kind (`abuse`, `admin`, any lower-case word): the suspension is a hold of its
    /// own, which lifting billing's suspension does not lift. Without it, billing's
    /// `desired_status` becomes `suspended`.
    pub hold: Option<String>,
}

/// `unsuspend`'s body.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Unsuspend {
    /// The hold to lift; without it, billing's `desired_status` becomes `active` (other holds
    /// stay).
    pub hold: Option<String>,
}

/// `terminate`'s body.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Terminate {
    /// Why (cancelled by the customer…).
    pub reason: Option<String>,
}

/// `reinstall`'s body.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reinstall {
    /// The OS to install (one the product offers; default: the one ordered).
    pub os_image: Option<String>,
}

/// `change-product`'s body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeProduct {
    /// The new product.
    pub product_id: String,
}

/// What `credentials` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Credentials {
    pub id: i64,
    pub hostname: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    /// The root password, when one is known (absent until the server is ready, or after a
    /// reinstall on a provider that returns none).
    pub root_password: Option<String>,
}

/// A body of type `T`; an empty body is `T::default()` where `empty` gives one.
fn body<T: DeserializeOwned>(bytes: &[u8], empty: Option<T>) -> Result<T, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if let Some(e) = empty {
            return Ok(e);
        }
    }
    serde_json::from_slice(bytes).map_err(|e| {
        Problem::invalid(
            "invalid_body",
            format!("the body is not what this call takes: {e}"),
        )
    })
}

fn refused(e: OrderRefusal) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        e.code(),
        "Not in the catalog",
        e.to_string(),
    )
}

fn location(id: i64) -> String {
    format!("/v1/instances/{id}")
}

/// The live instance `segment` names: 404 when there is none, 409 when billing terminated it.
async fn live(api: &V1, segment: &str) -> Result<Instance, Problem> {
    let id = instance_id(segment)?;
    let i = api
        .store
        .instance(id)
        .await?
        .ok_or(crate::store::StoreError::InstanceNotFound(id))?;
    if i.desired_status == DesiredStatus::Terminated {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "instance_terminated",
            "Instance terminated",
            format!("instance {id} is terminated: its desired state cannot change any more; a new server is a new instance"),
        ));
    }
    Ok(i)
}

fn accepted(i: &Instance) -> Reply {
    Reply::new(StatusCode::ACCEPTED, &InstanceView::from(i))
}

/// Orders a server.
#[utoipa::path(
    post, path = "/v1/instances", tag = "instances",
    request_body = NewOrder,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key and body gets the first answer (24 h)")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Ordered; `Location` names it", body = InstanceView),
        (status = 400, description = "The body or the key is malformed (`invalid_body`, `invalid_idempotency_key`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope is not `billing` or `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`billing_ref_taken` (`Location` names the existing instance) or `idempotency_key_in_use`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown_product`, `product_inactive`, `location_not_offered`, `os_not_offered`, `refused`, `idempotency_key_reused`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(api): State<V1>,
    caller: Caller,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, Problem> {
    caller.require(Scope::Billing)?;
    let order: NewOrder = body(&bytes, None)?;
    Ok(once(
        &api,
        &caller,
        &headers,
        "POST /v1/instances",
        &bytes,
        || async {
            if order.customer_id.trim().is_empty() {
                return Err(Problem::invalid(
                    "invalid_body",
                    "`customer_id` must not be empty",
                ));
            }
            let catalog = api.catalog.borrow().clone();
            catalog
                .check_order(
                    &order.product_id,
                    order.location.as_deref(),
                    order.os_image.as_deref(),
                )
                .map_err(refused)?;
            if let Some(r) = &order.billing_ref {
                if let Some(existing) = api.store.instance_by_billing_ref(r).await? {
                    let mut p = Problem::new(
                        StatusCode::CONFLICT,
                        "billing_ref_taken",
                        "Already ordered",
                        format!(
                            "billing_ref `{r}` is already instance {}: an order is inserted once",
                            existing.id
                        ),
                    );
                    p.existing = Some(location(existing.id));
                    return Err(p);
                }
            }
            let keys = order.ssh_keys.join("\n");
            let i = api
                .store
                .create_instance(&NewInstance {
                    customer_id: order.customer_id.clone(),
                    order_id: order.order_id.clone(),
                    billing_ref: order.billing_ref.clone(),
                    product_id: order.product_id.clone(),
                    location: order.location.clone(),
                    os_image: order.os_image.clone(),
                    hostname: order.hostname.clone(),
                    ssh_keys: (!keys.is_empty()).then_some(keys),
                    desired_status: None,
                    suspend_reason: None,
                })
                .await?;
            let mut reply = Reply::new(StatusCode::CREATED, &InstanceView::from(&i));
            reply.location = Some(location(i.id));
            Ok(reply)
        },
    )
    .await)
}

macro_rules! desired_change {
    ($(#[$meta:meta])* $name:ident, $path:literal, $body:ty, $empty:expr, |$api:ident, $caller:ident, $i:ident, $b:ident| $work:expr) => {
        $(#[$meta])*
        pub async fn $name(
            State($api): State<V1>,
            $caller: Caller,
            Path(segment): Path<String>,
            headers: HeaderMap,
            bytes: Bytes,
        ) -> Result<Response, Problem> {
            $caller.require(Scope::Billing)?;
            let $b: $body = body(&bytes, $empty)?;
            let request = format!(concat!("POST /v1/instances/{}/", $path), segment);
            Ok(once(&$api, &$caller, &headers, &request, &bytes, || async {
                let $i = live(&$api, &segment).await?;
                let after: Result<Instance, Problem> = $work;
                Ok(accepted(&after?))
            })
            .await)
        }
    };
}

desired_change!(
    /// Suspends: billing's non-payment (`desired_status`), or a hold of its own kind.
    #[utoipa::path(
        post, path = "/v1/instances/{id}/suspend", tag = "instances",
        request_body(content = Suspend, description = "Optional"),
        params(("id" = i64, Path), ("Idempotency-Key" = Option<String>, Header)),
        security(("bearer" = [])),
        responses(
            (status = 202, description = "Desired state recorded; the server is powered off next", body = InstanceView),
            (status = 400, body = Problem, content_type = "application/problem+json"),
            (status = 401, body = Problem, content_type = "application/problem+json"),
            (status = 403, body = Problem, content_type = "application/problem+json"),
            (status = 404, body = Problem, content_type = "application/problem+json"),
            (status = 409, description = "`instance_terminated`, `idempotency_key_in_use`", body = Problem, content_type = "application/problem+json"),
            (status = 422, description = "`refused` (a hold kind that is not a word), `idempotency_key_reused`", body = Problem, content_type = "application/problem+json"),
        )
    )]
    suspend, "suspend", Suspend, Some(Suspend::default()),
    |api, caller, i, b| match &b.hold {
        Some(kind) => {
            api.store.place_hold(i.id, kind, b.reason.as_deref(), &caller.token.name).await?;
            reread(&api, i.id).await
        }
        None => Ok(api.store.set_desired(i.id, DesiredStatus::Suspended, b.reason.as_deref()).await?),
    }
);

desired_change!(
    /// Unsuspends: billing's `desired_status` back to active, or one hold lifted (other holds
    /// keep the server off).
    #[utoipa::path(
        post, path = "/v1/instances/{id}/unsuspend", tag = "instances",
        request_body(content = Unsuspend, description = "Optional"),
        params(("id" = i64, Path), ("Idempotency-Key" = Option<String>, Header)),
        security(("bearer" = [])),
        responses(
            (status = 202, description = "Desired state recorded", body = InstanceView),
            (status = 400, body = Problem, content_type = "application/problem+json"),
            (status = 401, body = Problem, content_type = "application/problem+json"),
            (status = 403, body = Problem, content_type = "application/problem+json"),
            (status = 404, description = "`unknown_instance`, `unknown_hold`", body = Problem, content_type = "application/problem+json"),
            (status = 409, body = Problem, content_type = "application/problem+json"),
            (status = 422, body = Problem, content_type = "application/problem+json"),
        )
    )]
    unsuspend, "unsuspend", Unsuspend, Some(Unsuspend::default()),
    |api, caller, i, b| match &b.hold {
        Some(kind) => {
            let _ = &caller;
            if !api.store.release_hold(i.id, kind).await? {
                return Err(Problem::not_found("unknown_hold", format!("instance {} has no `{kind}` hold", i.id)));
            }
            reread(&api, i.id).await
        }
        None => Ok(api.store.set_desired(i.id, DesiredStatus::Active, None).await?),
    }
);

desired_change!(
    /// Terminates (final): the server is deleted.
    #[utoipa::path(
        post, path = "/v1/instances/{id}/terminate", tag = "instances",
        request_body(content = Terminate, description = "Optional"),
        params(("id" = i64, Path), ("Idempotency-Key" = Option<String>, Header)),
        security(("bearer" = [])),
        responses(
            (status = 202, description = "Desired state recorded; the server is deleted next", body = InstanceView),
            (status = 400, body = Problem, content_type = "application/problem+json"),
            (status = 401, body = Problem, content_type = "application/problem+json"),
            (status = 403, body = Problem, content_type = "application/problem+json"),
            (status = 404, body = Problem, content_type = "application/problem+json"),
            (status = 409, body = Problem, content_type = "application/problem+json"),
        )
    )]
    terminate, "terminate", Terminate, Some(Terminate::default()),
    |api, caller, i, b| {
        let _ = &caller;
        Ok(api.store.set_desired(i.id, DesiredStatus::Terminated, b.reason.as_deref()).await?)
    }
);

desired_change!(
    /// Asks for one reboot.
    #[utoipa::path(
        post, path = "/v1/instances/{id}/reboot", tag = "instances",
        params(("id" = i64, Path), ("Idempotency-Key" = Option<String>, Header)),
        security(("bearer" = [])),
        responses(
            (status = 202, description = "One more reboot asked (`reboot_requested`)", body = InstanceView),
            (status = 401, body = Problem, content_type = "application/problem+json"),
            (status = 403, body = Problem, content_type = "application/problem+json"),
            (status = 404, body = Problem, content_type = "application/problem+json"),
            (status = 409, body = Problem, content_type = "application/problem+json"),
        )
    )]
    reboot, "reboot", serde_json::Value, Some(serde_json::Value::Null),
    |api, caller, i, b| {
        let _ = (&caller, &b);
        Ok(api.store.request_reboot(i.id).await?)
    }
);

desired_change!(
    /// Asks for one reinstall, of another OS the product offers if given.
    #[utoipa::path(
        post, path = "/v1/instances/{id}/reinstall", tag = "instances",
        request_body(content = Reinstall, description = "Optional"),
        params(("id" = i64, Path), ("Idempotency-Key" = Option<String>, Header)),
        security(("bearer" = [])),
        responses(
            (status = 202, description = "One more reinstall asked (`reinstall_requested`)", body = InstanceView),
            (status = 400, body = Problem, content_type = "application/problem+json"),
            (status = 401, body = Problem, content_type = "application/problem+json"),
            (status = 403, body = Problem, content_type = "application/problem+json"),
            (status = 404, body = Problem, content_type = "application/problem+json"),
            (status = 409, body = Problem, content_type = "application/problem+json"),
            (status = 422, description = "`os_not_offered`", body = Problem, content_type = "application/problem+json"),
        )
    )]
    reinstall, "reinstall", Reinstall, Some(Reinstall::default()),
    |api, caller, i, b| {
        let _ = &caller;
        let os = b.os_image.as_deref().or(i.os_image.as_deref());
        let catalog = api.catalog.borrow().clone();
        if let Err(e) = catalog.check_order(&i.product_id, None, os) {
            return Err(refused(e));
        }
        Ok(api.store.request_reinstall(i.id, b.os_image.as_deref()).await?)
    }
);

desired_change!(
    /// Moves the instance to another product (a change of plan; done in place where the
    /// provider can, else the instance waits with the reason).
    #[utoipa::path(
        post, path = "/v1/instances/{id}/change-product", tag = "instances",
        request_body = ChangeProduct,
        params(("id" = i64, Path), ("Idempotency-Key" = Option<String>, Header)),
        security(("bearer" = [])),
        responses(
            (status = 202, description = "Desired product recorded", body = InstanceView),
            (status = 400, body = Problem, content_type = "application/problem+json"),
            (status = 401, body = Problem, content_type = "application/problem+json"),
            (status = 403, body = Problem, content_type = "application/problem+json"),
            (status = 404, body = Problem, content_type = "application/problem+json"),
            (status = 409, body = Problem, content_type = "application/problem+json"),
            (status = 422, description = "`unknown_product`, `product_inactive`, `location_not_offered`, `os_not_offered`", body = Problem, content_type = "application/problem+json"),
        )
    )]
    change_product, "change-product", ChangeProduct, None,
    |api, caller, i, b| {
        let _ = &caller;
        let catalog = api.catalog.borrow().clone();
        if let Err(e) = catalog.check_order(&b.product_id, i.location.as_deref(), i.os_image.as_deref()) {
            return Err(refused(e));
        }
        Ok(api.store.change_product(i.id, &b.product_id).await?)
    }
);

async fn reread(api: &V1, id: i64) -> Result<Instance, Problem> {
    Ok(api
        .store
        .instance(id)
        .await?
        .ok_or(crate::store::StoreError::InstanceNotFound(id))?)
}

/// An instance's addresses and root password, for the welcome e-mail (admin scope). Every
/// read is recorded in the instance's history with the token's name.
#[utoipa::path(
    get, path = "/v1/instances/{id}/credentials", tag = "instances",
    params(("id" = i64, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Addresses and root password", body = Credentials),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope is not `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn credentials(
    State(api): State<V1>,
    caller: Caller,
    Path(segment): Path<String>,
) -> Result<Json<Credentials>, Problem> {
    caller.require(Scope::Admin)?;
    let i = reread(&api, instance_id(&segment)?).await?;
    let root_password = match &i.credentials {
        Some(sealed) => Some(
            api.keyring
                .open(sealed, &i.secret_context())
                .map_err(|e| Problem::internal(&e))?
                .expose()
                .to_owned(),
        ),
        None => None,
    };
    api.store
        .record_reveal(i.id, &format!("token:{}", caller.token.name))
        .await?;
    Ok(Json(Credentials {
        id: i.id,
        hostname: i.hostname,
        ipv4: i.ipv4,
        ipv6: i.ipv6,
        root_password,
    }))
}
