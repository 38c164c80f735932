//! Admin e-mail: a plain, readable message for an event (pure), and sending it through the
//! notifier's SMTP relay (STARTTLS required, over rustls, unless the catalog says otherwise).

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

use crate::catalog::notify::{EmailNotifier, SmtpTls};
use crate::secrets::SecretString;

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// One line of text from a value a database row or a provider gave: control characters
/// (newlines included) become spaces and it is bounded, so that it can sit in a subject.
fn line(value: &str, max: usize) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    match cleaned.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &cleaned[..cut]),
        None => cleaned.to_owned(),
    }
}

/// The subject and text of the mail for an event body (`{type, timestamp, data}`).
pub fn message_text(body: &str) -> (String, String) {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let kind = parsed
        .get("type")
        .and_then(Value::as_str)
        .map_or_else(|| "event".to_owned(), |k| line(k, 40));
    let at = parsed
        .get("timestamp")
        .and_then(Value::as_str)
        .map_or_else(String::new, |t| line(t, 40));
    let data = parsed.get("data").cloned().unwrap_or(Value::Null);
    let text = |key: &str| -> Option<String> {
        match data.get(key)? {
            Value::String(s) => Some(line(s, 200)),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let instance = text("instance_id").unwrap_or_else(|| "?".to_owned());
    let customer = text("customer_id").unwrap_or_else(|| "?".to_owned());
    let task = data.get("task");
    let task_field = |key: &str| {
        task.and_then(|t| t.get(key))
            .map(|v| match v {
                Value::String(s) => line(s, 80),
                other => line(&other.to_string(), 80),
            })
            .unwrap_or_else(|| "?".to_owned())
    };
    let (subject, headline, todo) = match kind.as_str() {
        "task.opened" => (
            format!(
                "Manual task {}: {} instance {instance} (customer {customer})",
                task_field("id"),
                task_field("kind")
            ),
            format!(
                "The manual module needs an admin: {} instance {instance}.",
                task_field("kind")
            ),
            format!(
                "Do it, then record it:\n  provisioner tasks complete {} [--ip ADDRESS] [--password-file FILE] [--note TEXT]\n(a provision task needs the server's address).",
                task_field("id")
            ),
        ),
        "instance.failed" => (
            format!("Instance {instance} failed (customer {customer})"),
            format!("The reconciler gave up on instance {instance}."),
            format!(
                "See what happened and retry:\n  provisioner instances show {instance}\n  provisioner instances retry {instance}"
            ),
        ),
        "instance.lost" => (
            format!("Instance {instance} lost (customer {customer})"),
            format!("The server of instance {instance} is gone at its provider."),
            format!(
                "Recreate, adopt or forget it:\n  provisioner instances show {instance}\n  provisioner instances recreate {instance}"
            ),
        ),
        _ => (
            format!("{kind}: instance {instance} (customer {customer})"),
            format!("{kind} for instance {instance}."),
            format!("  provisioner instances show {instance}"),
        ),
    };
    let mut facts = String::new();
    for (label, key) in [
        ("Instance", "instance_id"),
        ("Customer", "customer_id"),
        ("Order", "order_id"),
        ("Billing ref", "billing_ref"),
        ("Product", "product_id"),
        ("Location", "location"),
        ("OS image", "os_image"),
        ("Hostname", "hostname"),
        ("Desired", "desired_status"),
        ("Observed", "observed_status"),
        ("Reason", "status_reason"),
        ("IPv4", "ipv4"),
        ("IPv6", "ipv6"),
    ] {
        if let Some(v) = text(key) {
            facts.push_str(&format!("  {label:<12} {v}\n"));
        }
    }
    let body = format!(
        "{headline}\n\n{facts}  {:<12} {at}\n\n{todo}\n\n-- \nprovisioner ({kind})\n",
        "When"
    );
    (format!("[provisioner] {}", line(&subject, 180)), body)
}

/// Sends the mail for an event body to the notifier's recipients.
///
/// # Errors
/// What went wrong (never the password).
pub async fn send(
    notifier: &EmailNotifier,
    password: Option<SecretString>,
    body: &str,
) -> Result<(), String> {
    let from: Mailbox = notifier.from.parse().map_err(|e| format!("`from`: {e}"))?;
    let (subject, text) = message_text(body);
    let mut builder = Message::builder().from(from).subject(subject);
    for to in &notifier.to {
        builder = builder.to(to.parse().map_err(|e| format!("`to` {to}: {e}"))?);
    }
    let message = builder
        .header(ContentType::TEXT_PLAIN)
        .body(text)
        .map_err(|e| format!("cannot build the message: {e}"))?;
    let smtp = &notifier.smtp;
    let tls =
        || TlsParameters::new(smtp.host.clone()).map_err(|e| format!("TLS for {}: {e}", smtp.host));
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.clone())
        .port(smtp.port)
        .timeout(Some(SMTP_TIMEOUT))
        .tls(match smtp.tls {
            SmtpTls::Starttls => Tls::Required(tls()?),
            SmtpTls::Tls => Tls::Wrapper(tls()?),
            SmtpTls::None => Tls::None,
        });
    if let Some(user) = &smtp.username {
        let password = password.map(|p| p.expose().to_owned()).unwrap_or_default();
        transport = transport.credentials(Credentials::new(user.clone(), password));
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| format!("{}:{}: {e}", smtp.host, smtp.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_mail_says_what_to_do_and_where() {
        let body = serde_json::json!({
            "type": "task.opened",
            "timestamp": "2026-12-04T10:00:00.000Z",
            "data": {
                "instance_id": 42, "customer_id": "cust-7", "product_id": "dedi-small",
                "location": "fsn1", "hostname": "web1\r\nBcc: evil@example.com",
                "task": {"id": 9, "kind": "provision", "state": "open"}
            }
        })
        .to_string();
        let (subject, text) = message_text(&body);
        assert_eq!(
            subject,
            "[provisioner] Manual task 9: provision instance 42 (customer cust-7)"
        );
        assert!(text.contains("provisioner tasks complete 9"), "{text}");
        assert!(text.contains("  Product      dedi-small\n"), "{text}");
        // A value from the database cannot start a header or a line of its own.
        assert!(text.contains("web1  Bcc: evil@example.com"), "{text}");
    }

    #[test]
    fn failures_and_unknown_bodies_still_make_a_readable_mail() {
        let (subject, text) = message_text(
            r#"{"type":"instance.failed","timestamp":"t","data":{"instance_id":3,"customer_id":"c","status_reason":"quota exceeded"}}"#,
        );
        assert_eq!(subject, "[provisioner] Instance 3 failed (customer c)");
        assert!(text.contains("Reason       quota exceeded"), "{text}");
        assert!(text.contains("instances retry 3"), "{text}");
        let (subject, _) = message_text("not json");
        assert_eq!(subject, "[provisioner] event: instance ? (customer ?)");
        let long = "x".repeat(1000);
        let (subject, _) = message_text(&format!(
            r#"{{"type":"instance.lost","data":{{"instance_id":1,"customer_id":"{long}"}}}}"#
        ));
        assert!(subject.chars().count() < 200, "{subject}");
    }
}
