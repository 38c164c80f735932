//! Errors as RFC 9457 problem details (`application/problem+json`), with a stable machine
//! `code` member: integrators match the code, never the wording.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// A problem: what went wrong, for people (`title`, `detail`) and for programs (`code`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:provisioner:problem:<code>`: the problem's kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind; the same for every occurrence.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What happened this time.
    pub detail: String,
    /// The stable machine code (`unauthorized`, `unknown_instance`, …).
    pub code: &'static str,
    /// The resource that already exists (a duplicate `billing_ref`); also the `Location`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing: Option<String>,
}

impl Problem {
    /// A problem of `status`, `code` and `title`, saying `detail`.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            kind: format!("urn:provisioner:problem:{code}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            code,
            existing: None,
        }
    }

    /// No token, or a token that is not (or no longer) valid.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            detail,
        )
    }

    /// The token's scope does not allow the call.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Not allowed for this token",
            detail,
        )
    }

    /// A parameter, path segment or body member is wrong.
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, code, "Invalid request", detail)
    }

    /// Nothing of that kind has that id.
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, code, "Not found", detail)
    }

    /// A failure of provisioner itself (logged; the detail says no more than needed).
    pub fn internal(e: &dyn std::fmt::Display) -> Problem {
        tracing::error!(error = %e, "API request failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the request could not be completed; it is in the daemon's log",
        )
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        match e {
            StoreError::InstanceNotFound(id) => {
                Problem::not_found("unknown_instance", format!("instance {id} does not exist"))
            }
            StoreError::Rejected(reason) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused",
                "Refused by the billing contract",
                reason,
            ),
            other => Problem::internal(&other),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let unauthorized = status == StatusCode::UNAUTHORIZED;
        let existing = self.existing.clone();
        let mut response = (status, axum::Json(self)).into_response();
        let headers = response.headers_mut();
        if let Some(l) = existing.and_then(|l| HeaderValue::from_str(&l).ok()) {
            headers.insert(header::LOCATION, l);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if unauthorized {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"provisioner\""),
            );
        }
        response
    }
}
