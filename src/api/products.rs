//! `/v1/products`: the catalog as customers may order it — never how it is provisioned.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::problem::Problem;
use super::V1;
use crate::catalog::Product;
use crate::store::Scope;

/// Hardware as advertised. Decimals are strings, exact.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SpecsView {
    pub cpu_cores: u32,
    pub cpu_model: Option<String>,
    pub ram_gb: String,
    pub storage_gb: u32,
    pub storage_type: Option<String>,
    /// Included monthly traffic in TB; absent: unmetered.
    pub bandwidth_tb: Option<String>,
    pub ip_addresses: u32,
}

/// Prices, exact decimals as strings.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PricingView {
    /// ISO 4217.
    pub currency: String,
    pub monthly: String,
    pub quarterly: Option<String>,
    pub semiannually: Option<String>,
    pub yearly: Option<String>,
    pub setup_fee: String,
}

/// A product as customers may order it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ProductView {
    pub id: String,
    pub name: String,
    pub group: String,
    /// `vps` or `dedicated`.
    #[serde(rename = "type")]
    pub product_type: String,
    pub description: String,
    /// The revision new orders are sold under.
    pub revision: String,
    pub specs: SpecsView,
    pub pricing: PricingView,
    /// Locations, the default first.
    pub locations: Vec<String>,
    /// OS images as ordered (`os_image`), the default first.
    pub os_images: Vec<String>,
    pub features: Vec<String>,
    /// Its stock cap; absent: unlimited.
    pub stock: Option<u32>,
    /// Servers that can still be ordered under the cap; absent: unlimited.
    pub stock_left: Option<i64>,
    /// Whether new servers are provisioned.
    pub active: bool,
}

async fn view(api: &V1, p: &Product) -> Result<ProductView, Problem> {
    let stock_left = match p.stock {
        Some(cap) => Some((i64::from(cap) - api.store.stock_used(&p.id).await?).max(0)),
        None => None,
    };
    let s = &p.specs;
    let money = |d: &rust_decimal::Decimal| d.to_string();
    Ok(ProductView {
        id: p.id.clone(),
        name: p.name.clone(),
        group: p.group.clone(),
        product_type: p.product_type.as_str().to_owned(),
        description: p.description.clone(),
        revision: p.revision.0.clone(),
        specs: SpecsView {
            cpu_cores: s.cpu_cores,
            cpu_model: s.cpu_model.clone(),
            ram_gb: s.ram_gb.to_string(),
            storage_gb: s.storage_gb,
            storage_type: s.storage_type.map(|t| t.as_str().to_owned()),
            bandwidth_tb: s.bandwidth_tb.as_ref().map(money),
            ip_addresses: s.ip_addresses,
        },
        pricing: PricingView {
            currency: p.pricing.currency.clone(),
            monthly: money(&p.pricing.monthly),
            quarterly: p.pricing.quarterly.as_ref().map(money),
            semiannually: p.pricing.semiannually.as_ref().map(money),
            yearly: p.pricing.yearly.as_ref().map(money),
            setup_fee: money(&p.pricing.setup_fee),
        },
        locations: p.locations.clone(),
        os_images: p.os_names().iter().map(|s| (*s).to_owned()).collect(),
        features: p.features.clone(),
        stock: p.stock,
        stock_left,
        active: p.active,
    })
}

/// Every product of the catalog the daemon runs, by id.
#[utoipa::path(
    get, path = "/v1/products", tag = "products",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The products", body = [ProductView]),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(api): State<V1>,
    caller: Caller,
) -> Result<Json<Vec<ProductView>>, Problem> {
    caller.require(Scope::Read)?;
    let catalog = api.catalog.borrow().clone();
    let mut out = Vec::with_capacity(catalog.products.len());
    for p in catalog.products.values() {
        out.push(view(&api, p).await?);
    }
    Ok(Json(out))
}

/// One product.
#[utoipa::path(
    get, path = "/v1/products/{id}", tag = "products",
    params(("id" = String, Path, description = "Product id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The product", body = ProductView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product (`unknown_product`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_one(
    State(api): State<V1>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProductView>, Problem> {
    caller.require(Scope::Read)?;
    let catalog = api.catalog.borrow().clone();
    let p = catalog.product(&id).ok_or_else(|| {
        Problem::not_found(
            "unknown_product",
            format!("no product `{id}` in the catalog"),
        )
    })?;
    Ok(Json(view(&api, p).await?))
}
