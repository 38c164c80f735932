//! Who hears of events: `WebhookEndpoint` (Standard Webhooks to billing's URL) and
//! `EmailNotifier` (an admin's mailbox, over SMTP). Secrets are named by environment
//! variable, never written in the catalog.
//!
//! ```yaml
//! apiVersion: provisioner/v1
//! kind: WebhookEndpoint
//! id: billing
//! url: https://billing.example.com/hooks/provisioner
//! secret_env: BILLING_WEBHOOK_SECRET   # whsec_… (several, space-separated, while rotating)
//! events: [instance.provisioned, instance.suspended]   # default: every event
//! timeout_seconds: 15                                   # per attempt, 1 to 30
//! ---
//! apiVersion: provisioner/v1
//! kind: EmailNotifier
//! id: ops-mail
//! smtp: {host: smtp.example.com, port: 587, username: provisioner, password_env: SMTP_PASSWORD}
//! from: provisioner <provisioner@example.com>
//! to: [ops@example.com]
//! events: [task.opened, instance.failed, instance.lost]   # the default
//! ```

use std::time::Duration;

use super::fields::{did_you_mean, integer_u32, one_of, string, string_list, Cx, Fields};
use super::model::Origin;
use super::module::is_env_name;
use super::parse::read_id;
use super::yaml::{shorten, Node, Pos};
use crate::events::EventType;
use crate::vocab::vocabulary;

/// A webhook endpoint billing runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Stable slug: deliveries are recorded under it.
    pub id: String,
    /// Where events are POSTed (http or https).
    pub url: String,
    /// The environment variable holding the signing secret(s) (`whsec_…`).
    pub secret_env: String,
    /// The events it receives, in vocabulary order.
    pub events: Vec<EventType>,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Where it was defined.
    pub origin: Origin,
}

vocabulary! {
    /// How the SMTP connection is secured.
    SmtpTls {
        /// Plain connection upgraded with STARTTLS, which is required (port 587).
        Starttls => "starttls",
        /// TLS from the first byte (port 465).
        Tls => "tls",
        /// No encryption: a relay on the same host or network only, without a password.
        None => "none",
    }
}

/// An SMTP relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smtp {
    /// Host name (checked against its certificate).
    pub host: String,
    /// Port; 587 for STARTTLS, 465 for TLS, 25 without encryption by default.
    pub port: u16,
    /// The user to authenticate as, when the relay wants one.
    pub username: Option<String>,
    /// The environment variable holding that user's password.
    pub password_env: Option<String>,
    /// How the connection is secured.
    pub tls: SmtpTls,
}

/// An admin mailbox that hears of the events needing a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailNotifier {
    /// Stable slug.
    pub id: String,
    /// The relay.
    pub smtp: Smtp,
    /// The sender (`Name <address>` or an address).
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// The events mailed, in vocabulary order.
    pub events: Vec<EventType>,
    /// Where it was defined.
    pub origin: Origin,
}

/// Reads an environment variable's name at `path`, warning when it is not set.
fn env_name(
    node: &Node,
    path: &str,
    owner: &str,
    cx: &mut Cx,
    env_is_set: &dyn Fn(&str) -> bool,
) -> Option<String> {
    let Some(name) = node.scalar().map(|s| s.text.clone()) else {
        cx.error(
            node.pos,
            format!(
                "`{path}` must name an environment variable, found {}",
                node.describe()
            ),
        );
        return None;
    };
    if !is_env_name(&name) {
        // Not echoed: it may be the secret itself, pasted in the wrong place.
        cx.error(
            node.pos,
            format!(
                "`{path}` must name an environment variable (upper-case letters, digits and \
                 `_`); the secret itself belongs in the environment, never in the catalog"
            ),
        );
        return None;
    }
    if !env_is_set(&name) {
        cx.warning(
            node.pos,
            format!("environment variable `{name}` (`{path}` of {owner}) is not set"),
        );
    }
    Some(name)
}

/// The `events` list: every event when absent, else known event types, each once.
fn events(node: Option<&Node>, default: &[EventType], cx: &mut Cx) -> Option<Vec<EventType>> {
    let in_order = |mut v: Vec<EventType>| {
        v.sort_by_key(|e| EventType::ALL.iter().position(|x| x == e));
        v
    };
    let Some(node) = node else {
        return Some(in_order(default.to_vec()));
    };
    let items = string_list(node, "events", cx)?;
    if items.is_empty() {
        cx.error(
            node.pos,
            "`events` must list at least one event type; leave it out for the default",
        );
        return None;
    }
    let names: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
    let mut out: Vec<EventType> = Vec::new();
    let mut ok = true;
    for (i, (name, pos)) in items.iter().enumerate() {
        if items[..i].iter().any(|(earlier, _)| earlier == name) {
            cx.error(*pos, format!("`events` lists `{}` twice", shorten(name)));
            ok = false;
            continue;
        }
        let matched = matching(name);
        if matched.is_empty() {
            let mut message = format!(
                "`events`: unknown event type `{}`; known: {} (or `*`, `instance.*`, `task.*`)",
                shorten(name),
                names.join(", ")
            );
            if let Some(close) = did_you_mean(name, &names) {
                message.push_str(&format!("; did you mean `{close}`?"));
            }
            cx.error(*pos, message);
            ok = false;
        }
        for e in matched {
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    ok.then(|| in_order(out))
}

impl WebhookEndpoint {
    /// As `catalog show` prints it (the secret's variable, never the secret).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "url": self.url,
            "secret_env": self.secret_env,
            "events": self.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            "timeout_seconds": self.timeout.as_secs(),
            "defined_at": self.origin.to_string(),
        })
    }
}

impl EmailNotifier {
    /// As `catalog show` prints it (the password's variable, never the password).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "smtp": {
                "host": self.smtp.host,
                "port": self.smtp.port,
                "tls": self.smtp.tls.as_str(),
                "username": self.smtp.username,
                "password_env": self.smtp.password_env,
            },
            "from": self.from,
            "to": self.to,
            "events": self.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            "defined_at": self.origin.to_string(),
        })
    }
}

/// The event types a pattern of `events` names: one type, every type (`*`), or every type
/// of a family (`instance.*`, `task.*`).
pub fn matching(pattern: &str) -> Vec<EventType> {
    let family = pattern.strip_suffix('*');
    EventType::ALL
        .iter()
        .copied()
        .filter(|e| match family {
            Some(prefix) => {
                (prefix.is_empty() || prefix.ends_with('.')) && e.as_str().starts_with(prefix)
            }
            None => e.as_str() == pattern,
        })
        .collect()
}

/// The `events` list, also accepted as `event_types`.
fn events_node<'n>(f: &mut Fields<'n>, cx: &mut Cx) -> Option<&'n Node> {
    let events = f.optional("events");
    let alias_pos = f.key_pos("event_types");
    let alias = f.optional("event_types");
    if let (Some(_), Some(pos)) = (events, alias_pos) {
        cx.error(pos, "give `events` or `event_types`, not both");
    }
    events.or(alias)
}

/// Why a webhook URL is refused, if it is: http(s), a host, no credentials, no fragment.
pub fn url_problem(url: &str) -> Option<String> {
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Some(format!("`url` is not a URL ({e})")),
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return Some(format!(
            "`url` must be http or https, found `{}`",
            shorten(parsed.scheme())
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Some("`url` has no host".to_owned());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Some(
            "`url` must not carry credentials: webhooks are authenticated by their signature"
                .to_owned(),
        );
    }
    if parsed.fragment().is_some() {
        return Some("`url` must not have a `#fragment`".to_owned());
    }
    None
}

/// Reads a `WebhookEndpoint` document (the caller has checked `apiVersion` and `kind`).
pub(super) fn webhook(
    f: &mut Fields,
    origin: Origin,
    cx: &mut Cx,
    env_is_set: &dyn Fn(&str) -> bool,
) -> (Option<(String, Pos)>, Option<WebhookEndpoint>) {
    let id = read_id(f, cx);
    let owner = format!(
        "webhook endpoint `{}`",
        id.as_ref().map_or("?", |(s, _)| s.as_str())
    );
    let url = f.required("url", cx).and_then(|n| {
        let s = string(n, "url", cx)?;
        match url_problem(&s) {
            None => Some(s),
            Some(message) => {
                cx.error(n.pos, message);
                None
            }
        }
    });
    let secret_env = f
        .required("secret_env", cx)
        .and_then(|n| env_name(n, "secret_env", &owner, cx, env_is_set));
    let events_node = events_node(f, cx);
    let events = events(events_node, EventType::ALL, cx);
    let timeout = match f.optional("timeout_seconds") {
        None => Some(15),
        Some(n) => integer_u32(n, "timeout_seconds", 1, cx).and_then(|t| {
            if t > 30 {
                cx.error(n.pos, "`timeout_seconds` must be from 1 to 30");
                return None;
            }
            Some(t)
        }),
    };
    let endpoint = (|| {
        Some(WebhookEndpoint {
            id: id.clone()?.0,
            url: url?,
            secret_env: secret_env?,
            events: events?,
            timeout: Duration::from_secs(u64::from(timeout?)),
            origin,
        })
    })();
    (id, endpoint)
}

fn mailbox(node: &Node, path: &str, cx: &mut Cx) -> Option<String> {
    let s = string(node, path, cx)?;
    match s.parse::<lettre::message::Mailbox>() {
        Ok(_) => Some(s),
        Err(e) => {
            cx.error(
                node.pos,
                format!(
                    "`{path}` must be an e-mail address (`ops@example.com` or `Ops <ops@example.com>`), found `{}` ({e})",
                    shorten(&s)
                ),
            );
            None
        }
    }
}

fn smtp(node: &Node, owner: &str, cx: &mut Cx, env_is_set: &dyn Fn(&str) -> bool) -> Option<Smtp> {
    let mut f = Fields::new(node, "smtp", "EmailNotifier", cx)?;
    let host = f.required("host", cx).and_then(|n| {
        let h = string(n, "smtp.host", cx)?;
        if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c == '/' || c == ':') {
            cx.error(
                n.pos,
                format!("`smtp.host` must be a host name, found `{}`", shorten(&h)),
            );
            return None;
        }
        Some(h)
    });
    let tls = match f.optional("tls") {
        None => Some(SmtpTls::Starttls),
        Some(n) => one_of(n, "smtp.tls", SmtpTls::ALL, SmtpTls::as_str, cx),
    };
    let port = f.optional("port").map(|n| {
        integer_u32(n, "smtp.port", 1, cx).and_then(|p| match u16::try_from(p) {
            Ok(p) => Some(p),
            Err(_) => {
                cx.error(n.pos, "`smtp.port` must be from 1 to 65535");
                None
            }
        })
    });
    let username = f
        .optional("username")
        .map(|n| string(n, "smtp.username", cx));
    let password_key = f.key_pos("password_env");
    let password_env = f
        .optional("password_env")
        .map(|n| env_name(n, "smtp.password_env", owner, cx, env_is_set));
    f.finish(cx);
    let tls = tls?;
    let password_env = password_env.map_or(Some(None), |p| p.map(Some))?;
    if tls == SmtpTls::None && password_env.is_some() {
        cx.error(
            password_key.unwrap_or(node.pos),
            "a password is never sent over an unencrypted connection: use `tls: starttls` or \
             `tls: tls`, or remove `password_env`",
        );
        return None;
    }
    let default_port = match tls {
        SmtpTls::Starttls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    };
    Some(Smtp {
        host: host?,
        port: port.unwrap_or(Some(default_port))?,
        username: username.map_or(Some(None), |u| u.map(Some))?,
        password_env,
        tls,
    })
}

/// Reads an `EmailNotifier` document (the caller has checked `apiVersion` and `kind`).
pub(super) fn email(
    f: &mut Fields,
    origin: Origin,
    cx: &mut Cx,
    env_is_set: &dyn Fn(&str) -> bool,
) -> (Option<(String, Pos)>, Option<EmailNotifier>) {
    let id = read_id(f, cx);
    let owner = format!(
        "e-mail notifier `{}`",
        id.as_ref().map_or("?", |(s, _)| s.as_str())
    );
    let smtp = f
        .required("smtp", cx)
        .and_then(|n| smtp(n, &owner, cx, env_is_set));
    let from = f.required("from", cx).and_then(|n| mailbox(n, "from", cx));
    let to = f.required("to", cx).and_then(|n| {
        let items = string_list(n, "to", cx)?;
        if items.is_empty() {
            cx.error(n.pos, "`to` must list at least one address");
            return None;
        }
        let mut ok = true;
        let mut out = Vec::new();
        for (i, (address, pos)) in items.iter().enumerate() {
            match address.parse::<lettre::message::Mailbox>() {
                Ok(_) => out.push(address.clone()),
                Err(e) => {
                    cx.error(
                        *pos,
                        format!(
                            "`to[{i}]` must be an e-mail address, found `{}` ({e})",
                            shorten(address)
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    });
    let events_node = events_node(f, cx);
    let events = events(events_node, EventType::ADMIN_DEFAULT, cx);
    let notifier = (|| {
        Some(EmailNotifier {
            id: id.clone()?.0,
            smtp: smtp?,
            from: from?,
            to: to?,
            events: events?,
            origin,
        })
    })();
    (id, notifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_patterns_name_types_and_families() {
        let names = |p: &str| matching(p).iter().map(|e| e.as_str()).collect::<Vec<_>>();
        assert_eq!(names("*").len(), EventType::ALL.len());
        assert_eq!(names("task.*"), ["task.opened", "task.completed"]);
        assert_eq!(names("instance.*").len(), 9);
        assert_eq!(names("instance.lost"), ["instance.lost"]);
        for none in [
            "",
            "inst*",
            "instance.",
            "instance.lost.*",
            "Instance.lost",
            "task",
        ] {
            assert!(names(none).is_empty(), "{none}");
        }
    }

    #[test]
    fn webhook_urls_are_checked() {
        for ok in [
            "https://billing.example.com/hooks",
            "http://127.0.0.1:8080/x?y=1",
            "https://[::1]/h",
        ] {
            assert_eq!(url_problem(ok), None, "{ok}");
        }
        for (bad, says) in [
            ("ftp://example.com/", "http or https"),
            ("https://user:pw@example.com/", "credentials"),
            ("https://example.com/#x", "fragment"),
            ("not a url", "not a URL"),
            ("https://", "not a URL"),
        ] {
            let problem = url_problem(bad).unwrap_or_default();
            assert!(problem.contains(says), "{bad}: {problem}");
            assert!(!problem.contains("pw"), "{problem}");
        }
    }
}
