//! Bearer tokens: `Authorization: Bearer <token>` names an API token by its SHA-256 (compared
//! in constant time); its scope decides what the request may do.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::problem::Problem;
use super::V1;
use crate::store::{ApiToken, Scope};

/// The token a request authenticated with.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token (never its value).
    pub token: ApiToken,
}

impl Caller {
    /// Allows the call when the token's scope allows `needed`.
    ///
    /// # Errors
    /// 403 with the scope needed.
    pub fn require(&self, needed: Scope) -> Result<(), Problem> {
        if self.token.scope.allows(needed) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "token `{}` has scope `{}`; this call needs `{needed}`",
                self.token.name, self.token.scope
            )))
        }
    }
}

/// The live token whose SHA-256 is `hash`, the stored hash compared in constant time; `None`
/// when no live token has it. The API and the console's sessions authenticate through this.
///
/// # Errors
/// When the database cannot be read.
pub async fn token_with_hash(
    store: &crate::store::SqlStore,
    hash: &str,
) -> crate::store::Result<Option<ApiToken>> {
    Ok(store
        .token_by_hash(hash)
        .await?
        .filter(|(_, stored)| bool::from(stored.as_bytes().ct_eq(hash.as_bytes())))
        .map(|(token, _)| token))
}

impl FromRequestParts<V1> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &V1) -> Result<Caller, Problem> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            Problem::unauthorized("no Authorization header: send `Authorization: Bearer <token>`")
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header is not `Bearer <token>`")
            })?;
        let hash = crate::secrets::api_token_hash(token);
        let Some(stored) = token_with_hash(&api.store, &hash).await? else {
            return Err(Problem::unauthorized(
                "the token is not known, or was revoked",
            ));
        };
        // At most one write a minute per token: reads stay reads.
        let stale = stored
            .last_used_at
            .is_none_or(|t| chrono::Utc::now() - t > chrono::TimeDelta::seconds(60));
        if stale {
            if let Err(e) = api.store.touch_token(&stored.name).await {
                tracing::warn!(token = %stored.name, error = %e, "cannot record the token's use");
            }
        }
        Ok(Caller { token: stored })
    }
}
