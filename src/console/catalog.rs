//! The catalog as the daemon serves it: products with their revision, the instances pinned to
//! each revision and the stock left; accounts with their module, endpoint and whether their
//! credentials are set (never the secret); webhook endpoints and e-mail notifiers.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::{failed, layout, Console, Viewer};
use crate::store::Store;

pub(super) async fn page(State(c): State<Console>, viewer: Viewer) -> Response {
    let catalog = c.catalog.borrow().clone();
    let mut products = Vec::with_capacity(catalog.products.len());
    for p in catalog.products.values() {
        let pinned = match c.store.pinned_revisions(&p.id).await {
            Ok(v) => v,
            Err(e) => return failed(&viewer, &e),
        };
        let left = match p.stock {
            Some(cap) => match c.store.stock_used(&p.id).await {
                Ok(used) => Some((i64::from(cap) - used).max(0)),
                Err(e) => return failed(&viewer, &e),
            },
            None => None,
        };
        products.push((p, pinned, left));
    }
    let set = |env: &str| std::env::var_os(env).is_some_and(|v| !v.is_empty());
    let body = html! {
        p {
            (catalog.source.dir) ", " (catalog.source.files) " files"
            @if let Some(git) = &catalog.source.git { ", git " code { (git.commit.chars().take(12).collect::<String>()) } @if git.dirty { " (uncommitted changes)" } }
        }
        h2 { "Products" }
        div.scroll {
            table {
                thead { tr { th { "Product" } th { "Account" } th { "Revision" } th { "Instances by revision" } th.num { "Stock left" } th { "Sold" } } }
                tbody {
                    @for (p, pinned, left) in &products {
                        tr {
                            td { strong { (p.id) } br; span.quiet { (p.name) } }
                            td { (p.provisioning.account) }
                            td { code { (p.revision.0) } }
                            td {
                                @if pinned.is_empty() { span.quiet { "none" } }
                                @for (rev, n) in pinned {
                                    div { code { (rev.as_deref().unwrap_or("not yet provisioned")) } ": " (n) @if rev.as_deref() != Some(p.revision.0.as_str()) && rev.is_some() { " " span.badge.off { "older" } } }
                                }
                            }
                            td.num { @match left { Some(n) => (n), None => "unlimited" } }
                            td { @if p.active { "yes" } @else { span.badge.off { "inactive" } } }
                        }
                    }
                }
            }
        }
        h2 { "Accounts" }
        div.scroll {
            table {
                thead { tr { th { "Account" } th { "Module" } th { "Endpoint" } th { "Credentials" } } }
                tbody {
                    @for a in catalog.accounts.values() {
                        tr {
                            td { (a.id) }
                            td { (a.module.as_str()) }
                            td { (a.endpoint.as_deref().unwrap_or("module default")) }
                            td {
                                @if a.credentials.is_empty() { span.quiet { "none needed" } }
                                @for cr in &a.credentials {
                                    div { code { (cr.env) } " " @if set(&cr.env) { span.badge.ok { "set" } } @else { span.badge.bad { "not set" } } }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Webhook endpoints" }
        @if catalog.webhooks.is_empty() { p.quiet { "None declared." } }
        @else {
            div.scroll {
                table {
                    thead { tr { th { "Endpoint" } th { "URL" } th { "Secret" } th { "Events" } } }
                    tbody {
                        @for w in catalog.webhooks.values() {
                            tr {
                                td { (w.id) } td { (w.url) }
                                td { code { (w.secret_env) } " " @if set(&w.secret_env) { span.badge.ok { "set" } } @else { span.badge.bad { "not set" } } }
                                td { (w.events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "E-mail notifiers" }
        @if catalog.notifiers.is_empty() { p.quiet { "None declared." } }
        @else {
            div.scroll {
                table {
                    thead { tr { th { "Notifier" } th { "Relay" } th { "To" } th { "Events" } } }
                    tbody {
                        @for n in catalog.notifiers.values() {
                            tr {
                                td { (n.id) }
                                td { (n.smtp.host) ":" (n.smtp.port) " (" (n.smtp.tls.as_str()) ")" }
                                td { (n.to.join(", ")) }
                                td { (n.events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")) }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(Some(&viewer), "Catalog", "Catalog", body).into_response()
}
