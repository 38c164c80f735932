//! `Idempotency-Key` on every POST (the IETF httpapi draft): the first response to a key is
//! kept for 24 hours and replayed, marked `Idempotent-Replayed: true`, for a retry of the same
//! request; the key with another request is 422, a retry while the first runs is 409. Keys
//! are scoped to the token. A request without a key simply runs.

use std::future::Future;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::auth::Caller;
use super::problem::Problem;
use super::V1;
use crate::store::idempotency::Begun;

/// A successful answer: its status, JSON body and `Location`.
#[derive(Debug)]
pub struct Reply {
    /// The status (201, 202, …).
    pub status: StatusCode,
    /// The body.
    pub body: serde_json::Value,
    /// Where the created resource is.
    pub location: Option<String>,
}

impl Reply {
    /// `status` with `body` as JSON.
    pub fn new(status: StatusCode, body: &impl Serialize) -> Reply {
        Reply {
            status,
            body: serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
            location: None,
        }
    }
}

fn respond(status: u16, body: String, location: Option<&str>, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(header::LOCATION, l);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// The key a request carries: a structured-field string (`"…"`), or the bare value many
/// clients send; 1 to 255 visible ASCII characters.
///
/// # Errors
/// 400 `invalid_idempotency_key`.
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |why: &str| {
        Problem::invalid(
            "invalid_idempotency_key",
            format!("Idempotency-Key {why}: send one quoted string of 1 to 255 visible characters"),
        )
    };
    if values.next().is_some() {
        return Err(bad("is sent more than once"));
    }
    let text = value.to_str().map_err(|_| bad("is not text"))?.trim();
    let key = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let visible = key
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if key.is_empty() || key.len() > 255 || !visible {
        return Err(bad("is not a valid key"));
    }
    Ok(Some(key.to_owned()))
}

/// Runs `work` once per key: the answer to a retry is the first one.
pub async fn once<F, Fut>(
    api: &V1,
    caller: &Caller,
    headers: &HeaderMap,
    request: &str,
    body: &[u8],
    work: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Reply, Problem>>,
{
    let key = match key_of(headers) {
        Ok(Some(k)) => k,
        Ok(None) => return answer(work().await).0,
        Err(p) => return p.into_response(),
    };
    let fingerprint = {
        let mut bytes = request.as_bytes().to_vec();
        bytes.push(b'\n');
        bytes.extend_from_slice(body);
        crate::secrets::api_token_hash(&String::from_utf8_lossy(&bytes))
    };
    let token = &caller.token.name;
    match api.store.begin_key(token, &key, &fingerprint).await {
        Err(e) => Problem::from(e).into_response(),
        Ok(Begun::Mismatch) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "Idempotency key reused",
            format!("key `{key}` was used for another request: use a new key for a new request"),
        )
        .into_response(),
        Ok(Begun::InFlight) => Problem::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            "Request in progress",
            format!("the first request with key `{key}` is still running: retry later"),
        )
        .into_response(),
        Ok(Begun::Replay {
            status,
            response,
            location,
        }) => respond(status, response, location.as_deref(), true),
        Ok(Begun::Run) => {
            let result = work().await;
            let internal = matches!(&result, Err(p) if p.status >= 500);
            let (response, status, text, location) = answer(result);
            // A failure of provisioner itself is not an answer to keep: the retry runs again.
            let kept = if internal {
                api.store.release_key(token, &key).await
            } else {
                api.store
                    .finish_key(token, &key, status, &text, location.as_deref())
                    .await
            };
            if let Err(e) = kept {
                tracing::warn!(token = %token, error = %e, "cannot keep the idempotent response");
            }
            response
        }
    }
}

/// The response to a result, and what is kept of it.
fn answer(result: Result<Reply, Problem>) -> (Response, u16, String, Option<String>) {
    let (status, text, location) = match result {
        Ok(r) => (r.status.as_u16(), r.body.to_string(), r.location),
        Err(p) => (
            p.status,
            serde_json::to_string(&p).unwrap_or_default(),
            p.existing.clone(),
        ),
    };
    let response = respond(status, text.clone(), location.as_deref(), false);
    (response, status, text, location)
}
