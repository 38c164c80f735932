//! `GET /v1/openapi.json`: the OpenAPI 3.1 document, derived from the handlers and their types
//! (never kept by hand), served without authentication.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "provisioner",
        description = "The billing front door: products, orders, changes of desired state, instances and their history, credentials. Tokens come from `provisioner tokens create NAME --scope read|billing|admin`; errors are RFC 9457 problem details with a stable `code`. Events are delivered as Standard Webhooks to the endpoints the catalog declares, and served as a feed."
    ),
    paths(
        super::products::list,
        super::products::get_one,
        super::instances::list,
        super::instances::get_one,
        super::instances::history,
        super::orders::create,
        super::orders::suspend,
        super::orders::unsuspend,
        super::orders::terminate,
        super::orders::reboot,
        super::orders::reinstall,
        super::orders::change_product,
        super::orders::credentials,
        super::tasks::list,
        super::tasks::complete,
        super::events::feed,
    ),
    components(schemas(super::problem::Problem)),
    modifiers(&Bearer),
    tags(
        (name = "products", description = "The catalog as customers may order it"),
        (name = "instances", description = "Customers' servers: what billing wants, what is"),
        (name = "tasks", description = "The manual module's inbox"),
        (name = "events", description = "What happened, in order: the feed webhooks deliver"),
    )
)]
pub struct Document;

/// The document as JSON.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = Document::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    Json(doc)
}
