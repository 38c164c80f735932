//! Telling others what happened: webhook deliveries to the endpoints the catalog declares,
//! and e-mail to admins. Both read the event outbox the store writes in the transaction of
//! each change, so an event is never lost to a crash; both run beside the reconciler and
//! never hold it up (a slow receiver slows only its own deliveries).

pub mod email;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::catalog::notify::{EmailNotifier, WebhookEndpoint};
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::secrets::SecretString;
use crate::store::events::{AfterAttempt, Attempt, DeliveryJob};
use crate::store::{Result, SqlStore};

/// How often the outbox is looked at.
const TICK: Duration = Duration::from_secs(1);
/// Deliveries claimed at once, and sent at once.
const CLAIM_BATCH: u32 = 32;
const IN_FLIGHT: usize = 16;
/// Events queued for an endpoint per look.
const QUEUE_BATCH: u32 = 500;
/// Mails sent per notifier per look.
const MAIL_BATCH: u32 = 20;

/// The consumer name of a webhook endpoint.
pub fn webhook_consumer(id: &str) -> String {
    format!("webhook:{id}")
}

/// The consumer name of an e-mail notifier.
pub fn email_consumer(id: &str) -> String {
    format!("email:{id}")
}

/// Registers the consumers of `catalog`'s endpoints and notifiers before the reconciler
/// starts, so that they hear of everything it does from then on.
///
/// # Errors
/// When the database cannot be written.
pub async fn prepare(store: &SqlStore, catalog: &Catalog) -> Result<()> {
    for id in catalog.webhooks.keys() {
        store.consumer(&webhook_consumer(id)).await?;
    }
    for id in catalog.notifiers.keys() {
        store.consumer(&email_consumer(id)).await?;
    }
    Ok(())
}

/// A secret from the environment, by the name the catalog gives.
fn env_secret(name: &str) -> Option<SecretString> {
    std::env::var(name).ok().map(SecretString::new)
}

/// A number in [-1, 1] to spread retries.
fn jitter() -> f64 {
    f64::from(OsRng.next_u32()) / f64::from(u32::MAX) * 2.0 - 1.0
}

/// Runs the notifiers until `shutdown` is cancelled. Every failure is logged and retried on
/// the next look: nothing here stops.
pub async fn run(
    store: SqlStore,
    catalog: watch::Receiver<Arc<Catalog>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let client = match webhook::client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook deliveries cannot start: no HTTP client");
            return;
        }
    };
    let mut mail_backoff: HashMap<String, (Instant, Duration)> = HashMap::new();
    loop {
        let current = catalog.borrow().clone();
        if let Err(e) = webhooks(&store, &client, &current, &metrics, &shutdown).await {
            tracing::warn!(error = %e, "webhook deliveries: will try again");
        }
        for notifier in current.notifiers.values() {
            if let Some((until, _)) = mail_backoff.get(&notifier.id) {
                if Instant::now() < *until {
                    continue;
                }
            }
            match mails(&store, notifier, &metrics).await {
                Ok(()) => {
                    mail_backoff.remove(&notifier.id);
                }
                Err(e) => {
                    let wait = mail_backoff
                        .get(&notifier.id)
                        .map_or(Duration::from_secs(30), |(_, w)| {
                            (*w * 2).min(Duration::from_secs(900))
                        });
                    tracing::warn!(
                        notifier = %notifier.id, error = %e, retry_in_seconds = wait.as_secs(),
                        "cannot send admin e-mail"
                    );
                    mail_backoff.insert(notifier.id.clone(), (Instant::now() + wait, wait));
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Queues new events for every endpoint, then sends what is due.
async fn webhooks(
    store: &SqlStore,
    client: &reqwest::Client,
    catalog: &Catalog,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<()> {
    for endpoint in catalog.webhooks.values() {
        let wanted = |kind: &str| endpoint.events.iter().any(|e| e.as_str() == kind);
        // Bounded: a large backlog is queued over several looks, between sends.
        for _ in 0..4 {
            let seen = store
                .queue_deliveries(&endpoint.id, &wanted, QUEUE_BATCH)
                .await?;
            if seen < QUEUE_BATCH as usize {
                break;
            }
        }
    }
    loop {
        let jobs = store.claim_deliveries(CLAIM_BATCH).await?;
        let claimed = jobs.len();
        futures::stream::iter(jobs)
            .for_each_concurrent(IN_FLIGHT, |job| async move {
                let endpoint = catalog.webhooks.get(&job.endpoint_id);
                let (attempt, next) = deliver(client, endpoint, &job).await;
                log_attempt(&job, &attempt, &next);
                let result = match next {
                    AfterAttempt::Delivered => "delivered",
                    AfterAttempt::RetryIn(_) => "retry",
                    AfterAttempt::GiveUp => "failed",
                    AfterAttempt::Disable(_) => "disabled",
                };
                metrics.webhook_attempt(&job.endpoint_id, result);
                if let Err(e) = store.record_attempt(job.delivery_id, &attempt, &next).await {
                    // The claim runs out and the delivery is tried again: at least once.
                    tracing::warn!(delivery = job.delivery_id, error = %e, "cannot record a webhook attempt");
                }
            })
            .await;
        if claimed < CLAIM_BATCH as usize || shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    endpoint: Option<&WebhookEndpoint>,
    job: &DeliveryJob,
) -> (Attempt, AfterAttempt) {
    let Some(endpoint) = endpoint else {
        let attempt = Attempt {
            at: chrono::Utc::now(),
            status: None,
            error: Some(format!(
                "endpoint `{}` is no longer in the catalog",
                job.endpoint_id
            )),
            duration_ms: 0,
        };
        return (attempt, AfterAttempt::GiveUp);
    };
    let keys = match env_secret(&endpoint.secret_env) {
        Some(value) => webhook::parse_keys(value.expose()),
        None => Err("not set".to_owned()),
    };
    webhook::attempt(client, endpoint, keys, job, jitter()).await
}

fn log_attempt(job: &DeliveryJob, attempt: &Attempt, next: &AfterAttempt) {
    let status = attempt.status.unwrap_or(0);
    let error = attempt.error.as_deref().unwrap_or("");
    match next {
        AfterAttempt::Delivered => tracing::info!(
            endpoint = %job.endpoint_id, event = %job.event_id, delivery = job.delivery_id,
            status, "webhook delivered"
        ),
        AfterAttempt::RetryIn(s) => tracing::warn!(
            endpoint = %job.endpoint_id, event = %job.event_id, delivery = job.delivery_id,
            status, error, retry_in_seconds = s.round(), "webhook not delivered; will retry"
        ),
        AfterAttempt::GiveUp => tracing::error!(
            endpoint = %job.endpoint_id, event = %job.event_id, delivery = job.delivery_id,
            status, error, "webhook delivery given up"
        ),
        AfterAttempt::Disable(reason) => tracing::error!(
            endpoint = %job.endpoint_id, event = %job.event_id, delivery = job.delivery_id,
            reason = %reason,
            "webhook endpoint disabled; `provisioner webhooks enable` turns it back on"
        ),
    }
}

/// Mails the notifier's events after its position, moving it on after each one sent.
async fn mails(
    store: &SqlStore,
    notifier: &EmailNotifier,
    metrics: &Metrics,
) -> std::result::Result<(), String> {
    let name = email_consumer(&notifier.id);
    let Some(events) = store
        .take_events(&name, MAIL_BATCH)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    let password = notifier.smtp.password_env.as_deref().and_then(env_secret);
    let mut last = None;
    for event in &events {
        if notifier.events.iter().any(|e| e.as_str() == event.kind) {
            if let Err(e) = email::send(notifier, password.clone(), &event.body).await {
                metrics.email(&notifier.id, "failed");
                // Let go of the lease where it stands: this event is tried again later.
                store
                    .advance_consumer(&name, 0, true)
                    .await
                    .map_err(|e| e.to_string())?;
                return Err(e);
            }
            metrics.email(&notifier.id, "sent");
            tracing::info!(notifier = %notifier.id, event = %event.event_id, kind = %event.kind, "admin e-mail sent");
            store
                .advance_consumer(&name, event.seq, false)
                .await
                .map_err(|e| e.to_string())?;
        }
        last = Some(event.seq);
    }
    // Past every event handled (sent, or not one this notifier mails), and the lease let go.
    store
        .advance_consumer(&name, last.unwrap_or(0), true)
        .await
        .map_err(|e| e.to_string())
}
