//! Console sessions: a random id in an `HttpOnly`, `SameSite=Strict` cookie names a session
//! held in the daemon's memory, which keeps the SHA-256 of the token signed in with (never the
//! token) and the CSRF token its forms carry. Every request authenticates the token again, so
//! revoking it ends its sessions at once. A restarted daemon forgets sessions: sign in again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "provisioner_session";
/// The sign-in form's CSRF cookie (there is no session yet to hold the token).
pub const SIGNIN_COOKIE: &str = "provisioner_signin";
/// A session ends this long after it was last used.
pub const IDLE: Duration = Duration::from_secs(8 * 3600);
/// At most this many sessions are kept; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;

/// 256 random bits, URL-safe.
pub fn random_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether a form's CSRF value is the session's, compared in constant time.
pub fn csrf_matches(expected: &str, given: Option<&str>) -> bool {
    given.is_some_and(|g| !g.is_empty() && bool::from(g.as_bytes().ct_eq(expected.as_bytes())))
}

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The SHA-256 of the token it signed in with.
    pub token_hash: String,
    /// What its forms must carry.
    pub csrf: String,
    last_used: Instant,
}

/// The sessions of this daemon.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a session for a token; its id (the cookie's value).
    pub fn start(&self, token_hash: String) -> String {
        let id = random_token();
        let mut map = self.map();
        let now = Instant::now();
        map.retain(|_, s| now.duration_since(s.last_used) < IDLE);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Session {
                token_hash,
                csrf: random_token(),
                last_used: now,
            },
        );
        id
    }

    /// The live session `id` names, marked used.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map();
        let now = Instant::now();
        let session = map.get_mut(id)?;
        if now.duration_since(session.last_used) >= IDLE {
            map.remove(id);
            return None;
        }
        session.last_used = now;
        Some(session.clone())
    }

    /// Ends session `id`.
    pub fn end(&self, id: &str) {
        self.map().remove(id);
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value(header: Option<&str>, name: &str) -> Option<String> {
    cookie::Cookie::split_parse(header?)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// A `Set-Cookie` value for the console: `HttpOnly`, `SameSite=Strict`, path `/ui`, `Secure`
/// when the page was served over TLS; `None` as the value clears it.
pub fn set_cookie(name: &str, value: Option<&str>, secure: bool) -> String {
    let mut c = cookie::Cookie::new(name.to_owned(), value.unwrap_or("").to_owned());
    c.set_http_only(true);
    c.set_same_site(cookie::SameSite::Strict);
    c.set_path("/ui");
    c.set_secure(secure);
    match value {
        Some(_) => {
            c.set_max_age(cookie::time::Duration::seconds(
                i64::try_from(IDLE.as_secs()).unwrap_or(i64::MAX),
            ));
        }
        None => c.set_max_age(cookie::time::Duration::ZERO),
    }
    c.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_strict_and_http_only() {
        let c = set_cookie(COOKIE, Some("abc"), false);
        assert!(c.starts_with("provisioner_session=abc;"), "{c}");
        for part in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!c.contains("Secure"), "{c}");
        assert!(set_cookie(COOKIE, Some("abc"), true).contains("Secure"));
        assert!(set_cookie(COOKIE, None, false).contains("Max-Age=0"));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = Some("a=1; provisioner_session=xyz; b=2");
        assert_eq!(cookie_value(h, COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie_value(h, "c"), None);
        assert_eq!(cookie_value(None, COOKIE), None);
        assert_eq!(cookie_value(Some("garbage"), COOKIE), None);
    }

    #[test]
    fn csrf_must_match_exactly() {
        assert!(csrf_matches("tok", Some("tok")));
        for bad in [None, Some(""), Some("to"), Some("tok2"), Some("TOK")] {
            assert!(!csrf_matches("tok", bad), "{bad:?}");
        }
    }

    #[test]
    fn sessions_start_are_found_and_end() {
        let s = Sessions::default();
        let id = s.start("hash".into());
        let got = s.get(&id).unwrap();
        assert_eq!(got.token_hash, "hash");
        assert_eq!(got.csrf.len(), 43);
        assert!(s.get("other").is_none());
        s.end(&id);
        assert!(s.get(&id).is_none());
        assert_ne!(random_token(), random_token());
    }
}
