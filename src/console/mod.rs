//! The ops console: server-rendered pages under `/ui/` for the fleet, its failures, the manual
//! inbox, the catalog and webhook deliveries. Signed in with an API token (`read` sees,
//! `admin` also acts); sessions in an `HttpOnly`, `SameSite=Strict` cookie; a CSRF token on
//! every form. Pages are rendered with maud (escaped by construction); the stylesheet and the
//! one small script are built into the binary. It calls the same store verbs as the CLI and
//! the API, so the three can never disagree.

mod catalog;
mod fleet;
mod inbox;
mod instance;
pub mod session;
mod webhooks;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use tokio::sync::watch;

use self::session::{Sessions, COOKIE, SIGNIN_COOKIE};
use crate::api::auth::token_with_hash;
use crate::catalog::watch::ReloadStatus;
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::secrets::Keyring;
use crate::store::{Scope, SqlStore};

/// What the console works with.
#[derive(Clone)]
pub struct Console {
    /// The store, as the CLI uses it.
    pub store: SqlStore,
    /// The catalog the daemon runs.
    pub catalog: watch::Receiver<Arc<Catalog>>,
    /// How catalog reloads went.
    pub reload: watch::Receiver<ReloadStatus>,
    /// Opens root passwords for an admin's reveal.
    pub keyring: Arc<Keyring>,
    /// The daemon's figures (provider calls, rate-limit waits, orphans).
    pub metrics: Arc<Metrics>,
    /// Who is signed in.
    pub sessions: Arc<Sessions>,
    /// The accounts the daemon drives, with their rate budgets.
    pub accounts: Arc<std::sync::RwLock<Arc<crate::provider::account::Accounts>>>,
}

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The router of `/ui/`.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(fleet::overview))
        .route("/ui/signin", get(signin_page).post(signin))
        .route("/ui/signout", post(signout))
        .route("/ui/instances", get(fleet::instances))
        .route("/ui/instances/{id}", get(instance::page))
        .route("/ui/instances/{id}/{action}", post(instance::act))
        .route("/ui/failures", get(fleet::failures))
        .route("/ui/failures/retry", post(fleet::retry_many))
        .route("/ui/tasks", get(inbox::page))
        .route("/ui/tasks/{id}/complete", post(inbox::complete))
        .route("/ui/catalog", get(catalog::page))
        .route("/ui/webhooks", get(webhooks::page))
        .route("/ui/webhooks/{id}/redeliver", post(webhooks::redeliver))
        .route("/ui/assets/{name}", get(asset))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(console)
}

/// Pages are never cached (they hold fleet data) nor framed; scripts come from here only.
async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    response
}

/// A short hash of an asset, for its cache-busting URL.
fn version(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// Who is looking: a signed-in token's name and scope, and the session's CSRF token.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The token's name.
    pub name: String,
    /// Its scope (`read` or `admin`).
    pub scope: Scope,
    /// What this session's forms carry.
    pub csrf: String,
}

impl Viewer {
    /// Whether this viewer may act (the forms are shown to admins only).
    pub fn admin(&self) -> bool {
        self.scope.allows(Scope::Admin)
    }

    /// Who the store records as having acted.
    pub fn by(&self) -> String {
        format!("token:{}", self.name)
    }

    /// Allows a form: the viewer is an admin and the form carries this session's token.
    ///
    /// # Errors
    /// A 403 page saying which.
    pub fn may_submit(&self, csrf: Option<&str>) -> Result<(), Box<Response>> {
        if !session::csrf_matches(&self.csrf, csrf) {
            return Err(Box::new(refused(
                self,
                "This form is not from this session (its CSRF token is missing or wrong). Reload the page and try again.",
            )));
        }
        if !self.admin() {
            return Err(Box::new(refused(
                self,
                &format!(
                    "Token `{}` has scope `{}`: it can look, not act. Sign in with an admin token.",
                    self.name, self.scope
                ),
            )));
        }
        Ok(())
    }
}

fn refused(viewer: &Viewer, why: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        layout(
            Some(viewer),
            "Refused",
            "",
            html! { p.flash.error { (why) } },
        ),
    )
        .into_response()
}

impl FromRequestParts<Console> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Console) -> Result<Viewer, Response> {
        let to_signin = || Redirect::to("/ui/signin").into_response();
        let cookies = parts
            .headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok());
        let Some(id) = session::cookie_value(cookies, COOKIE) else {
            return Err(to_signin());
        };
        let Some(s) = c.sessions.get(&id) else {
            return Err(to_signin());
        };
        // The token is looked up again: a revoked token ends its sessions at once.
        let token = match token_with_hash(&c.store, &s.token_hash).await {
            Ok(Some(token)) => token,
            Ok(None) => {
                c.sessions.end(&id);
                return Err(to_signin());
            }
            Err(e) => {
                tracing::warn!(error = %e, "console: cannot check a session's token");
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is not answering; try again",
                )
                    .into_response());
            }
        };
        Ok(Viewer {
            name: token.name,
            scope: token.scope,
            csrf: s.csrf,
        })
    }
}

/// Whether the browser reached us over TLS (directly or through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// The page around every view: navigation, who is signed in, sign-out.
pub(crate) fn layout(viewer: Option<&Viewer>, title: &str, active: &str, body: Markup) -> Markup {
    let nav = [
        ("/ui/", "Overview"),
        ("/ui/instances", "Instances"),
        ("/ui/failures", "Failures"),
        ("/ui/tasks", "Tasks"),
        ("/ui/catalog", "Catalog"),
        ("/ui/webhooks", "Webhooks"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · provisioner" }
                link rel="stylesheet" href={ "/ui/assets/console.css?v=" (version(CSS)) };
                script src={ "/ui/assets/console.js?v=" (version(JS)) } defer {}
            }
            body {
                header.top {
                    a.brand href="/ui/" { "provisioner" }
                    @if let Some(v) = viewer {
                        nav {
                            @for (href, label) in nav {
                                a href=(href) aria-current=[(label == active).then_some("page")] { (label) }
                            }
                        }
                        form.signout method="post" action="/ui/signout" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            span.who { (v.name) " (" (v.scope) ")" }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A message carried to the next page after a form (`?msg=` or `?err=`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Flash {
    msg: Option<String>,
    err: Option<String>,
}

impl Flash {
    fn render(&self) -> Markup {
        html! {
            @if let Some(m) = &self.msg { p.flash role="status" { (m) } }
            @if let Some(e) = &self.err { p.flash.error role="alert" { (e) } }
        }
    }
}

/// A redirect after a form, with its outcome for the next page.
pub(crate) fn back(to: &str, outcome: Result<String, String>) -> Response {
    let (key, text) = match outcome {
        Ok(m) => ("msg", m),
        Err(e) => ("err", e),
    };
    let sep = if to.contains('?') { '&' } else { '?' };
    let encoded = percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC);
    Redirect::to(&format!("{to}{sep}{key}={encoded}")).into_response()
}

/// A CSRF field and the admin-only form around `inner`; nothing for a read-only viewer.
pub(crate) fn action_form(viewer: &Viewer, action: &str, inner: Markup) -> Markup {
    html! {
        @if viewer.admin() {
            form.action method="post" action=(action) {
                input type="hidden" name="csrf" value=(viewer.csrf);
                (inner)
            }
        }
    }
}

/// A timestamp as people read it in a table: RFC 3339 to the second, UTC.
pub(crate) fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// How long ago, shortly (`45s`, `12m`, `3h`, `9d`).
pub(crate) fn age(t: chrono::DateTime<chrono::Utc>) -> String {
    crate::cli::output::age(t, chrono::Utc::now())
}

/// A status as a badge whose class says how it fares.
pub(crate) fn badge(status: &str) -> Markup {
    let class = match status {
        "active" => "ok",
        "failed" | "lost" => "bad",
        "suspended" | "terminated" => "off",
        _ => "busy",
    };
    html! { span class={ "badge " (class) } { (status) } }
}

#[derive(Debug, Deserialize)]
struct SignIn {
    token: Option<String>,
    csrf: Option<String>,
}

async fn signin_page(headers: HeaderMap) -> Response {
    let csrf = session::random_token();
    signin_form(&csrf, None, over_tls(&headers), StatusCode::OK)
}

fn signin_form(csrf: &str, error: Option<&str>, secure: bool, status: StatusCode) -> Response {
    let page = layout(
        None,
        "Sign in",
        "",
        html! {
            @if let Some(e) = error { p.flash.error role="alert" { (e) } }
            form.signin method="post" action="/ui/signin" {
                input type="hidden" name="csrf" value=(csrf);
                label for="token" { "API token (scope admin or read)" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint { "Make one with " code { "provisioner tokens create NAME --scope admin" } "." }
        },
    );
    (
        status,
        [(
            header::SET_COOKIE,
            session::set_cookie(SIGNIN_COOKIE, Some(csrf), secure),
        )],
        page,
    )
        .into_response()
}

async fn signin(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    let secure = over_tls(&headers);
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    let expected = session::cookie_value(cookies, SIGNIN_COOKIE).unwrap_or_default();
    let retry =
        |why: &str, status| signin_form(&session::random_token(), Some(why), secure, status);
    if expected.is_empty() || !session::csrf_matches(&expected, form.csrf.as_deref()) {
        return retry(
            "The sign-in form expired; try again.",
            StatusCode::FORBIDDEN,
        );
    }
    let token = form.token.unwrap_or_default();
    let token = token.trim();
    if token.is_empty() || token.len() > 256 {
        return retry("Paste an API token.", StatusCode::UNAUTHORIZED);
    }
    let hash = crate::secrets::api_token_hash(token);
    let found = match token_with_hash(&c.store, &hash).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "console: cannot check a token");
            return retry(
                "The database is not answering; try again.",
                StatusCode::SERVICE_UNAVAILABLE,
            );
        }
    };
    let Some(stored) = found else {
        return retry(
            "That token is not known, or was revoked.",
            StatusCode::UNAUTHORIZED,
        );
    };
    if !matches!(stored.scope, Scope::Read | Scope::Admin) {
        return retry(
            &format!(
                "Token `{}` has scope `{}`; the console takes admin or read tokens.",
                stored.name, stored.scope
            ),
            StatusCode::FORBIDDEN,
        );
    }
    tracing::info!(token = %stored.name, "console: signed in");
    let id = c.sessions.start(hash);
    let mut response = Redirect::to("/ui/").into_response();
    let h = response.headers_mut();
    for value in [
        session::set_cookie(COOKIE, Some(&id), secure),
        session::set_cookie(SIGNIN_COOKIE, None, secure),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.append(header::SET_COOKIE, v);
        }
    }
    response
}

#[derive(Debug, Deserialize)]
struct CsrfOnly {
    csrf: Option<String>,
}

async fn signout(
    State(c): State<Console>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if !session::csrf_matches(&viewer.csrf, form.csrf.as_deref()) {
        return refused(&viewer, "This sign-out is not from this session.");
    }
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    if let Some(id) = session::cookie_value(cookies, COOKIE) {
        c.sessions.end(&id);
    }
    let mut response = Redirect::to("/ui/signin").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(COOKIE, None, over_tls(&headers))) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// A page that could not be built: the reason, on a page.
pub(crate) fn failed(viewer: &Viewer, e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "console: a page failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        layout(
            Some(viewer),
            "Something failed",
            "",
            html! { p.flash.error { "The page could not be built: " (e.to_string()) } },
        ),
    )
        .into_response()
}
