//! Standard Webhooks delivery: signing (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`),
//! what an answer means (delivered, retry when, give up, disable), and the one HTTP call,
//! which never follows a redirect and never reaches link-local or cloud-metadata addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::catalog::notify::WebhookEndpoint;
use crate::store::events::{AfterAttempt, Attempt, DeliveryJob};

/// Waits before attempts 2, 3, …, 10 (Standard Webhooks' schedule after the immediate first
/// attempt): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h. Then it gives up.
pub const SCHEDULE: [u64; 9] = [5, 300, 1800, 7200, 18_000, 36_000, 50_400, 72_000, 86_400];

/// At most this much of a receiver's answer is kept in the delivery log.
const ERROR_EXCERPT: usize = 200;

/// A signing key: the bytes of a `whsec_…` secret. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

/// Reads the keys of a secret variable: one `whsec_…` secret, or several separated by spaces
/// while a secret is rotated (each attempt is signed with all of them).
///
/// # Errors
/// What is wrong, without the secret.
pub fn parse_keys(value: &str) -> Result<Vec<SigningKey>, String> {
    let mut keys = Vec::new();
    for (i, secret) in value.split_whitespace().enumerate() {
        let n = i + 1;
        let Some(encoded) = secret.strip_prefix("whsec_") else {
            return Err(format!("secret {n} does not start with `whsec_`"));
        };
        let bytes = B64
            .decode(encoded)
            .map_err(|_| format!("secret {n} is not base64 after `whsec_`"))?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(format!(
                "secret {n} is {} bytes; Standard Webhooks secrets are 24 to 64",
                bytes.len()
            ));
        }
        keys.push(SigningKey(bytes));
    }
    if keys.is_empty() {
        return Err("the secret is empty".to_owned());
    }
    Ok(keys)
}

/// The `webhook-signature` header: `v1,<base64>` per key, space-separated.
pub fn signature(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| {
            // HMAC takes keys of any length: this cannot fail.
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&k.0)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What an attempt ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered with this status (and, for 429/502/504, a `Retry-After` in
    /// seconds).
    Status {
        /// The HTTP status.
        code: u16,
        /// `Retry-After`, in seconds, when it was given and parsed.
        retry_after: Option<u64>,
    },
    /// No answer: connection refused, timeout, refused address, missing secret.
    Failed,
}

/// What follows an attempt, the `attempts`-th (1 for the first). `jitter` in [-1, 1] spreads
/// retries by up to a tenth of their wait.
pub fn after(attempts: u32, outcome: &Outcome, jitter: f64, url: &str) -> AfterAttempt {
    let (code, retry_after) = match outcome {
        Outcome::Status { code, retry_after } => (Some(*code), *retry_after),
        Outcome::Failed => (None, None),
    };
    match code {
        Some(200..=299) => return AfterAttempt::Delivered,
        Some(410) => {
            return AfterAttempt::Disable(format!("{url} answered 410 Gone"));
        }
        _ => {}
    }
    let Some(wait) = usize::try_from(attempts)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| SCHEDULE.get(i))
    else {
        return AfterAttempt::GiveUp;
    };
    let jittered = *wait as f64 * (1.0 + 0.1 * jitter.clamp(-1.0, 1.0));
    let slow_down = matches!(code, Some(429 | 502 | 504));
    let asked = retry_after
        .filter(|_| slow_down)
        .map_or(0.0, |s| s.min(86_400) as f64);
    AfterAttempt::RetryIn(jittered.max(asked))
}

/// Whether deliveries to `ip` are refused: addresses that are never a billing system and
/// are where cloud metadata (and its credentials) lives — unspecified, link-local (including
/// 169.254.169.254 and fd00:ec2::254), multicast and broadcast. Loopback and private networks
/// are allowed: billing often runs beside provisioner.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// Resolves host names, leaving out forbidden addresses (a name that resolves only to them
/// fails to connect).
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !forbidden(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "`{host}` resolves to no address deliveries may go to (link-local and \
                     metadata addresses are refused)"
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// The HTTP client deliveries use: no redirects, no proxies from the environment, the
/// guarded resolver.
///
/// # Errors
/// When the TLS backend cannot start.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("provisioner/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Why `url` may not be delivered to before any lookup: an address literal that is
/// forbidden.
fn literal_problem(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    forbidden(ip).then(|| format!("{ip} is a link-local or metadata address; refused"))
}

/// Sends one attempt of `job` to `endpoint`, signed with `keys`, and says what follows.
pub async fn attempt(
    client: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    keys: Result<Vec<SigningKey>, String>,
    job: &DeliveryJob,
    jitter: f64,
) -> (Attempt, AfterAttempt) {
    let started = Instant::now();
    let at = chrono::Utc::now();
    let (outcome, error) = match keys {
        Err(e) => (
            Outcome::Failed,
            Some(format!("not sent: `{}`: {e}", endpoint.secret_env)),
        ),
        Ok(keys) => send(client, endpoint, &keys, job).await,
    };
    let status = match &outcome {
        Outcome::Status { code, .. } => Some(i64::from(*code)),
        Outcome::Failed => None,
    };
    let attempts = u32::try_from(job.attempts.saturating_add(1)).unwrap_or(u32::MAX);
    let next = after(attempts, &outcome, jitter, &endpoint.url);
    let attempt = Attempt {
        at,
        status,
        error,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
    };
    (attempt, next)
}

async fn send(
    client: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    keys: &[SigningKey],
    job: &DeliveryJob,
) -> (Outcome, Option<String>) {
    let url = match reqwest::Url::parse(&endpoint.url) {
        Ok(u) => u,
        Err(e) => return (Outcome::Failed, Some(format!("bad url: {e}"))),
    };
    if let Some(problem) = literal_problem(&url) {
        return (Outcome::Failed, Some(problem));
    }
    // The timestamp is the attempt's, not the event's: receivers reject old ones.
    let timestamp = chrono::Utc::now().timestamp();
    let request = client
        .post(url)
        .timeout(endpoint.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &job.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature(keys, &job.event_id, timestamp, job.body.as_bytes()),
        )
        .body(job.body.clone());
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) => return (Outcome::Failed, Some(describe(&e))),
    };
    let code = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let error = if response.status().is_success() {
        None
    } else {
        let mut excerpt = Vec::new();
        while excerpt.len() < ERROR_EXCERPT {
            match tokio::time::timeout(Duration::from_secs(2), response.chunk()).await {
                Ok(Ok(Some(chunk))) => excerpt.extend_from_slice(&chunk),
                _ => break,
            }
        }
        excerpt.truncate(ERROR_EXCERPT);
        let text: String = String::from_utf8_lossy(&excerpt)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Some(format!("HTTP {code}: {}", text.trim()))
    };
    (Outcome::Status { code, retry_after }, error)
}

/// A transport error, said plainly (the URL is the catalog's, never a secret).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut message = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specification_test_vector_signs_as_published() {
        let keys = parse_keys("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            signature(
                &keys,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let keys = parse_keys(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD  whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .unwrap();
        let sig = signature(&keys, "msg_1", 1, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
    }

    #[test]
    fn bad_secrets_are_refused_without_being_echoed() {
        for (value, says) in [
            ("", "empty"),
            ("C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "whsec_"),
            ("whsec_!!!notbase64!!!", "base64"),
            ("whsec_AAAA", "3 bytes"),
        ] {
            let e = parse_keys(value).unwrap_err();
            assert!(e.contains(says), "{value}: {e}");
            if value.len() > 6 {
                assert!(!e.contains(&value[6..]), "{e}");
            }
        }
        assert_eq!(
            format!("{:?}", parse_keys("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")),
            "Ok([SigningKey([redacted])])"
        );
    }

    #[test]
    fn answers_decide_what_follows() {
        let url = "https://billing.example/h";
        let status = |code, retry_after| Outcome::Status { code, retry_after };
        let cases: Vec<(u32, Outcome, AfterAttempt)> = vec![
            (1, status(200, None), AfterAttempt::Delivered),
            (3, status(204, None), AfterAttempt::Delivered),
            (
                1,
                status(410, None),
                AfterAttempt::Disable(format!("{url} answered 410 Gone")),
            ),
            (1, status(500, None), AfterAttempt::RetryIn(5.0)),
            (1, Outcome::Failed, AfterAttempt::RetryIn(5.0)),
            // A redirect is a failure: it is not followed.
            (2, status(301, None), AfterAttempt::RetryIn(300.0)),
            (9, status(500, None), AfterAttempt::RetryIn(86_400.0)),
            (10, status(500, None), AfterAttempt::GiveUp),
            // Slow down: Retry-After is honoured when longer than the schedule…
            (1, status(429, Some(60)), AfterAttempt::RetryIn(60.0)),
            (2, status(503, Some(600)), AfterAttempt::RetryIn(300.0)),
            (1, status(502, Some(1)), AfterAttempt::RetryIn(5.0)),
            // …and bounded.
            (
                1,
                status(504, Some(u64::MAX)),
                AfterAttempt::RetryIn(86_400.0),
            ),
        ];
        for (attempts, outcome, expected) in cases {
            assert_eq!(
                after(attempts, &outcome, 0.0, url),
                expected,
                "{attempts} {outcome:?}"
            );
        }
    }

    #[test]
    fn jitter_spreads_retries_by_a_tenth_at_most() {
        let five = |j| match after(1, &Outcome::Failed, j, "u") {
            AfterAttempt::RetryIn(s) => s,
            other => panic!("{other:?}"),
        };
        assert!((five(1.0) - 5.5).abs() < 1e-9);
        assert!((five(-1.0) - 4.5).abs() < 1e-9);
        assert!((five(7.0) - 5.5).abs() < 1e-9);
    }

    #[test]
    fn metadata_and_link_local_addresses_are_refused() {
        for (ip, refused) in [
            ("169.254.169.254", true),
            ("169.254.1.1", true),
            ("0.0.0.0", true),
            ("255.255.255.255", true),
            ("224.0.0.1", true),
            ("fe80::1", true),
            ("fd00:ec2::254", true),
            ("::ffff:169.254.169.254", true),
            ("::", true),
            ("ff02::1", true),
            ("127.0.0.1", false),
            ("10.0.0.5", false),
            ("192.168.1.10", false),
            ("::1", false),
            ("203.0.113.7", false),
            ("2001:db8::1", false),
        ] {
            assert_eq!(forbidden(ip.parse().unwrap()), refused, "{ip}");
        }
    }
}
