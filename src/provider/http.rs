//! The HTTP layer the cloud modules share: one request at a time through the account's budget.
//!
//! Every request takes a token from the account's [`RateLimiter`] first, carries a timeout and a
//! user-agent naming provisioner and its version, and feeds the provider's rate-limit headers
//! back into the budget. A 429 blocks the whole account: for exactly `Retry-After` when the
//! provider gives one, else until its budget holds one request again, backing off only while
//! 429s keep coming (see [`RateLimiter::too_many`]). A
//! failed response becomes a [`ProviderError`] with the provider's own code and message, its
//! request id, and never a credential: authorization headers are marked sensitive and bodies
//! are never echoed beyond the provider's message.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::limit::{RateLimiter, TooMany};
use super::{ErrorClass, ProviderError, Result};

/// The user-agent of every request: the product and its version (no URL: the project has no
/// public home a provider's support could follow).
pub const USER_AGENT: &str = concat!("provisioner/", env!("CARGO_PKG_VERSION"));

/// The largest answer read from a provider (a page of 200 droplets is a few hundred KiB): a
/// larger one is cut off as an error instead of growing the daemon.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Response headers that carry the provider's request id, in order of preference.
const REQUEST_ID_HEADERS: [&str; 3] = ["x-request-id", "x-correlation-id", "x-ovh-queryid"];

/// What the provider's `RateLimit-Reset` header means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetMeans {
    /// The budget is fully recovered then; it refills evenly until (Hetzner).
    FullRecovery,
    /// The oldest counted request expires then, freeing one (DigitalOcean's sliding hour).
    NextRequest,
    /// The provider sends no rate-limit headers (OVH).
    Nothing,
}

/// Computes the authorization headers of one request from its method, full URL and body.
pub type Authorize =
    Box<dyn Fn(&Method, &str, &str) -> Result<Vec<(HeaderName, HeaderValue)>> + Send + Sync>;

/// Reads a provider's error body into a class and a message.
pub type ReadError = fn(StatusCode, &[u8]) -> (ErrorClass, String);

/// A provider API bound to one account.
pub struct Api {
    client: reqwest::Client,
    base: String,
    module: &'static str,
    limiter: Arc<RateLimiter>,
    timeout: Duration,
    authorize: Authorize,
    read_error: ReadError,
    reset: ResetMeans,
    secrets: Vec<crate::secrets::SecretString>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("module", &self.module)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A successful response.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its body.
    pub body: Vec<u8>,
    /// The provider's request id.
    pub request_id: Option<String>,
}

impl Reply {
    /// The body as JSON of type `T`.
    ///
    /// # Errors
    /// [`ErrorClass::Transient`] when the body is not what the documented API returns.
    pub fn json<T: DeserializeOwned>(&self, module: &str, what: &str) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            let mut err = ProviderError::new(
                ErrorClass::Transient,
                format!("{module}: unexpected answer to {what}: {e}"),
            );
            err.request_id.clone_from(&self.request_id);
            err
        })
    }
}

/// Settings of an [`Api`].
pub struct ApiConfig {
    /// Base URL, without a trailing slash (`https://api.hetzner.cloud/v1`).
    pub base: String,
    /// Module name for messages.
    pub module: &'static str,
    /// The account's budget.
    pub limiter: Arc<RateLimiter>,
    /// Timeout of each request.
    pub timeout: Duration,
    /// Authorization headers per request.
    pub authorize: Authorize,
    /// Error body reader.
    pub read_error: ReadError,
    /// Meaning of the reset header.
    pub reset: ResetMeans,
    /// The account's credentials: scrubbed from any provider text before it is stored or
    /// logged (an endpoint that echoes the request would otherwise write them into history).
    pub secrets: Vec<crate::secrets::SecretString>,
}

impl Api {
    /// An API client.
    ///
    /// # Errors
    /// When the TLS backend cannot be set up.
    pub fn new(config: ApiConfig) -> Result<Api> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            // Signed and authorized headers are for the provider's host only: a redirect is
            // an error, never followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                ProviderError::new(
                    ErrorClass::Invalid,
                    format!("{}: cannot build an HTTP client: {e}", config.module),
                )
            })?;
        Ok(Api {
            client,
            base: config.base,
            module: config.module,
            limiter: config.limiter,
            timeout: config.timeout,
            authorize: config.authorize,
            read_error: config.read_error,
            reset: config.reset,
            secrets: config
                .secrets
                .into_iter()
                .filter(|s| s.expose().len() >= 4)
                .collect(),
        })
    }

    /// The full URL of `path` with `query`, exactly as it is sent (and signed).
    ///
    /// # Errors
    /// [`ErrorClass::Invalid`] when the base URL and path do not make a URL.
    pub fn url(&self, path: &str, query: &[(&str, String)]) -> Result<Url> {
        let raw = format!("{}{}", self.base, path);
        let parsed = if query.is_empty() {
            Url::parse(&raw)
        } else {
            Url::parse_with_params(&raw, query)
        };
        parsed.map_err(|e| {
            ProviderError::new(
                ErrorClass::Invalid,
                format!("{}: bad URL `{raw}`: {e}", self.module),
            )
        })
    }

    /// Sends one request within the budget. Non-2xx answers are errors.
    ///
    /// # Errors
    /// The provider's error, classified; [`ErrorClass::Transient`] on timeouts and network
    /// trouble (the request may have been applied).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<Reply> {
        let url = self.url(path, query)?;
        let body = body.map(serde_json::Value::to_string).unwrap_or_default();
        let what = format!("{method} {path}");
        if !super::limit::take_prepaid() {
            self.limiter.acquire().await;
        }
        let mut request = self.client.request(method.clone(), url.clone());
        for (name, value) in (self.authorize)(&method, url.as_str(), &body)? {
            request = request.header(name, value);
        }
        if !body.is_empty() {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let mut response = request.send().await.map_err(|e| self.transport(&what, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let request_id = request_id(&headers);
        let too_large = || {
            let mut e = ProviderError::new(
                ErrorClass::Transient,
                format!(
                    "{}: {what}: the answer is larger than {} MiB; not read",
                    self.module,
                    MAX_BODY / (1024 * 1024)
                ),
            );
            e.request_id.clone_from(&request_id);
            e
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport(&what, e))?
        {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        self.observe_budget(&headers, status);
        if status != StatusCode::TOO_MANY_REQUESTS {
            self.limiter.answered();
        }
        if status.is_success() {
            return Ok(Reply {
                status,
                body: bytes,
                request_id,
            });
        }
        let (class, message) = (self.read_error)(status, &bytes);
        let message = self.scrub(message);
        let mut err = ProviderError::new(
            class,
            format!("{}: {what}: {} {message}", self.module, status.as_u16()),
        );
        err.request_id = request_id;
        if class == ErrorClass::Throttled {
            let after = self.limiter.too_many(self.read_429(&headers));
            err.retry_after = Some(after);
        }
        Err(err)
    }

    /// Sends a request and reads its JSON answer.
    ///
    /// # Errors
    /// As [`Api::send`], and when the answer is not the documented JSON.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<(T, Option<String>)> {
        let what = format!("{method} {path}");
        let reply = self.send(method, path, query, body).await?;
        Ok((reply.json(self.module, &what)?, reply.request_id))
    }

    /// `text` with the account's credentials cut out.
    fn scrub(&self, mut text: String) -> String {
        for secret in &self.secrets {
            if text.contains(secret.expose()) {
                text = text.replace(secret.expose(), "[redacted]");
            }
        }
        text
    }

    fn transport(&self, what: &str, e: reqwest::Error) -> ProviderError {
        let message = if e.is_timeout() {
            format!(
                "{}: {what}: no answer within {:?}; the request may have been applied",
                self.module, self.timeout
            )
        } else if e.is_connect() {
            format!("{}: {what}: cannot connect to {}", self.module, self.base)
        } else {
            format!("{}: {what}: {}", self.module, e.without_url())
        };
        ProviderError::new(ErrorClass::Transient, message)
    }

    fn observe_budget(&self, headers: &HeaderMap, status: StatusCode) {
        if status == StatusCode::TOO_MANY_REQUESTS {
            return;
        }
        let Some(budget) = Budget::read(headers, self.reset) else {
            return;
        };
        self.limiter
            .correct(budget.limit, budget.remaining, budget.next_in);
    }

    /// What a 429's headers say.
    fn read_429(&self, headers: &HeaderMap) -> TooMany {
        let budget = Budget::read(headers, self.reset);
        TooMany {
            retry_after: header_u64(headers, "retry-after").map(Duration::from_secs),
            refill: budget.map(|b| b.next_in),
            exhausted: budget.is_some_and(|b| b.remaining == 0),
        }
    }
}

/// The provider's rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Budget {
    limit: u32,
    remaining: u32,
    /// When one more request is free.
    next_in: Duration,
}

impl Budget {
    fn read(headers: &HeaderMap, reset: ResetMeans) -> Option<Budget> {
        if reset == ResetMeans::Nothing {
            return None;
        }
        let limit = header_u64(headers, "ratelimit-limit")?;
        let remaining = header_u64(headers, "ratelimit-remaining")?;
        let until_reset =
            header_u64(headers, "ratelimit-reset").map_or(Duration::from_secs(1), seconds_until);
        let next_in = match reset {
            // The budget refills evenly until the reset: one request is free after the
            // reset's share of the requests missing.
            ResetMeans::FullRecovery => {
                until_reset.div_f64(limit.saturating_sub(remaining).max(1) as f64)
            }
            _ => until_reset,
        };
        Some(Budget {
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            next_in,
        })
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    REQUEST_ID_HEADERS.iter().find_map(|name| {
        let v = headers.get(*name)?.to_str().ok()?;
        (!v.is_empty() && v.len() <= 200).then(|| v.to_owned())
    })
}

/// Time from now until the Unix time `at` (zero when past).
fn seconds_until(at: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(at).saturating_sub(now)
}

/// Reads the secret an account's credential `field` names (default variable `default`)
/// through `env`.
///
/// # Errors
/// When the variable is unset or empty; the message names the variable, never a value.
pub fn credential(
    account: &crate::catalog::ProviderAccount,
    field: &str,
    default: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<crate::secrets::SecretString, String> {
    let var = account
        .credentials
        .iter()
        .find(|c| c.field == field)
        .map_or(default, |c| c.env.as_str());
    env(var)
        .filter(|v| !v.is_empty())
        .map(crate::secrets::SecretString::new)
        .ok_or_else(|| format!("environment variable {var} is not set"))
}

/// Authorization by a bearer token (Hetzner Cloud, DigitalOcean).
pub fn bearer(token: &crate::secrets::SecretString) -> Authorize {
    let header = crate::secrets::SecretString::new(format!("Bearer {}", token.expose()));
    Box::new(move |_, _, _| Ok(vec![secret_header("authorization", header.expose())?]))
}

/// Transition details naming the provider's request id, when it sent one.
pub fn request_details(request_id: Option<String>) -> serde_json::Value {
    request_id.map_or(
        serde_json::Value::Null,
        |r| serde_json::json!({ "request_id": r }),
    )
}

/// A header value that `Debug` output and logs never show.
///
/// # Errors
/// [`ErrorClass::Auth`] when the secret cannot be a header (a pasted newline, say); the
/// message names the header, never the value.
pub fn secret_header(name: &'static str, value: &str) -> Result<(HeaderName, HeaderValue)> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        ProviderError::new(
            ErrorClass::Auth,
            format!("the credential for header `{name}` contains characters a header cannot carry"),
        )
    })?;
    v.set_sensitive(true);
    Ok((HeaderName::from_static(name), v))
}

/// How a module's API version sits in its base URL, as the provider's own tools take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionPath {
    /// The version is part of the base (hcloud's `HCLOUD_ENDPOINT`, OVH clients' endpoint
    /// URLs): added only to a bare host (`https://api.hetzner.cloud` → `…/v1`), any other
    /// path is taken as written (a proxy's prefix).
    OnBareHost(&'static str),
    /// The tool adds the version itself (godo, doctl and Terraform take
    /// `https://api.digitalocean.com`): added unless the base already ends with it, so both
    /// forms work.
    Always(&'static str),
}

/// The base URL that request paths are appended to: `given` without trailing slashes, with
/// the API version added as `version` says.
#[must_use]
pub fn versioned_base(given: &str, version: VersionPath) -> String {
    let base = given.trim().trim_end_matches('/');
    let path = base
        .split_once("://")
        .map_or("", |(_, rest)| rest.find('/').map_or("", |i| &rest[i..]));
    match version {
        VersionPath::OnBareHost(v) if path.is_empty() => format!("{base}/{v}"),
        VersionPath::Always(v) if !path.ends_with(&format!("/{v}")) => format!("{base}/{v}"),
        _ => base.to_owned(),
    }
}

/// A provider's numeric id (a Hetzner or DigitalOcean server or action) as read back from
/// the database or an answer: only a positive integer ever goes into a request path.
///
/// # Errors
/// [`ErrorClass::Invalid`] naming the id (escaped) when it is anything else.
pub fn numeric_id(module: &str, what: &str, id: &str) -> Result<u64> {
    id.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ProviderError::new(
            ErrorClass::Invalid,
            format!(
                "{module}: {what} id {:?} is not a positive integer; it is not put into a request",
                excerpt(id.as_bytes())
            ),
        )
    })
}

/// Characters percent-encoded in a path segment: all but RFC 3986's unreserved ones.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `value` as one percent-encoded path segment: a `/`, `?` or `..` in it stays inside it.
pub fn segment(value: &str) -> String {
    let encoded = percent_encoding::utf8_percent_encode(value, SEGMENT).to_string();
    match encoded.as_str() {
        // Dot segments would be resolved away by URL parsing.
        "." => "%2E".to_owned(),
        ".." => "%2E%2E".to_owned(),
        _ => encoded,
    }
}

/// The class an HTTP status means when the body says nothing more specific.
pub fn class_of_status(status: StatusCode) -> ErrorClass {
    match status.as_u16() {
        401 | 403 => ErrorClass::Auth,
        404 => ErrorClass::NotFound,
        408 | 409 | 423 | 425 => ErrorClass::Transient,
        429 => ErrorClass::Throttled,
        500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Invalid,
    }
}

/// A short, single-line excerpt of a body that is not the documented error JSON.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    line.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_classes() {
        assert_eq!(class_of_status(StatusCode::UNAUTHORIZED), ErrorClass::Auth);
        assert_eq!(class_of_status(StatusCode::NOT_FOUND), ErrorClass::NotFound);
        assert_eq!(
            class_of_status(StatusCode::BAD_GATEWAY),
            ErrorClass::Transient
        );
        assert_eq!(
            class_of_status(StatusCode::UNPROCESSABLE_ENTITY),
            ErrorClass::Invalid
        );
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn unix_in(seconds: u64) -> String {
        (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + seconds)
            .to_string()
    }

    #[test]
    fn rate_limit_headers_say_when_one_request_is_free() {
        // Hetzner: the reset is full recovery; at 3,600 an hour one request is free in ~1 s.
        let h = headers(&[
            ("ratelimit-limit", "3600".into()),
            ("ratelimit-remaining", "0".into()),
            ("ratelimit-reset", unix_in(3600)),
        ]);
        let b = Budget::read(&h, ResetMeans::FullRecovery).unwrap();
        assert_eq!(b.remaining, 0);
        assert!(
            b.next_in <= Duration::from_secs(1) && b.next_in > Duration::from_millis(990),
            "{:?}",
            b.next_in
        );
        // DigitalOcean: the reset is when the oldest counted request expires.
        let b = Budget::read(&h, ResetMeans::NextRequest).unwrap();
        assert!(b.next_in > Duration::from_secs(3598), "{:?}", b.next_in);
        // OVH sends none, and a 429 without headers says nothing about the budget.
        assert_eq!(Budget::read(&h, ResetMeans::Nothing), None);
        assert_eq!(
            Budget::read(&HeaderMap::new(), ResetMeans::FullRecovery),
            None
        );
    }

    #[test]
    fn ids_read_back_are_checked_before_they_reach_a_path() {
        assert_eq!(numeric_id("hetzner", "server", "42").unwrap(), 42);
        for bad in [
            "../volumes/7",
            "1?x=",
            "0",
            "-1",
            "",
            "42 ",
            "1/2",
            "9999999999999999999999",
        ] {
            let e = numeric_id("hetzner", "server", bad).unwrap_err();
            assert_eq!(e.class, ErrorClass::Invalid, "{bad:?}");
            assert!(
                e.message.contains("not a positive integer"),
                "{}",
                e.message
            );
        }
        assert_eq!(segment("ns1.ip-1-2-3.eu"), "ns1.ip-1-2-3.eu");
        assert_eq!(segment("../volumes/7"), "..%2Fvolumes%2F7");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("1?x=&y#z"), "1%3Fx%3D%26y%23z");
    }

    /// A provider misbehaving on 127.0.0.1: a redirect to another path, an endless answer,
    /// and an error that echoes the request's authorization header.
    async fn misbehaving() -> (String, Arc<std::sync::atomic::AtomicU32>) {
        use axum::http::HeaderMap as Headers;
        use axum::routing::get;
        let followed = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = followed.clone();
        let app = axum::Router::new()
            .route(
                "/redirect",
                get(|| async {
                    (
                        axum::http::StatusCode::TEMPORARY_REDIRECT,
                        [("location", "/elsewhere")],
                    )
                }),
            )
            .route(
                "/elsewhere",
                get(move || {
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async { "followed" }
                }),
            )
            .route("/huge", get(|| async { vec![b'x'; MAX_BODY + 1] }))
            .route(
                "/echo",
                get(|h: Headers| async move {
                    let auth = h
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    (
                        axum::http::StatusCode::BAD_REQUEST,
                        format!("bad request, you sent {auth}"),
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), followed)
    }

    #[tokio::test]
    async fn answers_are_bounded_redirects_refused_and_credentials_scrubbed() {
        let (base, followed) = misbehaving().await;
        let token = crate::secrets::SecretString::new("s3cr3t-token-value");
        let api = Api::new(ApiConfig {
            base,
            module: "test",
            limiter: Arc::new(RateLimiter::new(&crate::catalog::RateLimit::default())),
            timeout: Duration::from_secs(5),
            authorize: bearer(&token),
            read_error: |status, body| (class_of_status(status), excerpt(body)),
            reset: ResetMeans::Nothing,
            secrets: vec![token.clone()],
        })
        .unwrap();
        let e = api
            .send(Method::GET, "/redirect", &[], None)
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Invalid, "{e}");
        assert_eq!(
            followed.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "the redirect was not followed with our headers"
        );
        let e = api.send(Method::GET, "/huge", &[], None).await.unwrap_err();
        assert!(e.message.contains("larger than 16 MiB"), "{e}");
        let e = api.send(Method::GET, "/echo", &[], None).await.unwrap_err();
        assert!(!e.to_string().contains("s3cr3t-token-value"), "{e}");
        assert!(e.message.contains("[redacted]"), "{e}");
    }

    #[test]
    fn secret_headers_do_not_show_in_debug_output() {
        let (_, v) = secret_header("authorization", "Bearer hunter2").unwrap();
        assert!(!format!("{v:?}").contains("hunter2"));
        let err = secret_header("authorization", "Bearer a\nb").unwrap_err();
        assert!(!err.message.contains("Bearer"));
    }

    #[test]
    fn base_urls_take_the_forms_the_providers_tools_take() {
        use super::VersionPath::{Always, OnBareHost};
        let table = [
            (
                "https://api.digitalocean.com",
                Always("v2"),
                "https://api.digitalocean.com/v2",
            ),
            (
                "https://api.digitalocean.com/",
                Always("v2"),
                "https://api.digitalocean.com/v2",
            ),
            (
                "https://api.digitalocean.com/v2",
                Always("v2"),
                "https://api.digitalocean.com/v2",
            ),
            (
                "https://api.digitalocean.com/v2/",
                Always("v2"),
                "https://api.digitalocean.com/v2",
            ),
            (
                "http://127.0.0.1:8080/do",
                Always("v2"),
                "http://127.0.0.1:8080/do/v2",
            ),
            (
                "https://api.hetzner.cloud/v1",
                OnBareHost("v1"),
                "https://api.hetzner.cloud/v1",
            ),
            (
                "https://api.hetzner.cloud",
                OnBareHost("v1"),
                "https://api.hetzner.cloud/v1",
            ),
            (
                "https://proxy.example/hcloud",
                OnBareHost("v1"),
                "https://proxy.example/hcloud",
            ),
            (
                "https://eu.api.ovh.com/1.0/",
                OnBareHost("1.0"),
                "https://eu.api.ovh.com/1.0",
            ),
            (
                "https://eu.api.ovh.com",
                OnBareHost("1.0"),
                "https://eu.api.ovh.com/1.0",
            ),
        ];
        for (given, version, want) in table {
            assert_eq!(super::versioned_base(given, version), want, "{given}");
        }
    }
}
