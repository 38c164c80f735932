//! What billing hears: the event types, which transition causes which event, and the public
//! facts an event carries. Pure: the store writes events in the transaction of their cause,
//! the API serves them as a feed and the notifiers deliver them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::store::{Instance, ObservedStatus, Task};
use crate::vocab::vocabulary;

vocabulary! {
    /// A change billing hears of (Standard Webhooks' dot-separated event types).
    EventType {
        /// A new server is ready: its addresses are in the event, its credentials are read
        /// through the API (`GET /v1/instances/{id}/credentials`).
        Provisioned => "instance.provisioned",
        /// The server was powered off for suspension.
        Suspended => "instance.suspended",
        /// The server runs again after a suspension.
        Unsuspended => "instance.unsuspended",
        /// The server is deleted, or the instance closed.
        Terminated => "instance.terminated",
        /// A reboot billing asked for is done.
        Rebooted => "instance.rebooted",
        /// A reinstall billing asked for is done.
        Reinstalled => "instance.reinstalled",
        /// A change of plan is done.
        Resized => "instance.resized",
        /// The reconciler gave up on the instance; an admin must look.
        Failed => "instance.failed",
        /// The server vanished at the provider.
        Lost => "instance.lost",
        /// The manual module asked an admin to do something.
        TaskOpened => "task.opened",
        /// An admin completed a manual task.
        TaskCompleted => "task.completed",
    }
}

impl EventType {
    /// The events an admin is e-mailed about when a notifier lists none.
    pub const ADMIN_DEFAULT: &'static [EventType] =
        &[EventType::TaskOpened, EventType::Failed, EventType::Lost];
}

/// The event a change of observed status from `from` to `to` causes, if any. A status that
/// does not change causes none (a retried call, a poll, a hold recorded).
pub fn for_transition(from: ObservedStatus, to: ObservedStatus) -> Option<EventType> {
    use ObservedStatus as O;
    if from == to {
        return None;
    }
    match (from, to) {
        (O::Pending | O::Provisioning, O::Active) => Some(EventType::Provisioned),
        (O::Rebooting, O::Active) => Some(EventType::Rebooted),
        (O::Reinstalling, O::Active | O::Suspended) => Some(EventType::Reinstalled),
        (O::Resizing, O::Active | O::Suspended) => Some(EventType::Resized),
        (O::Suspending | O::Suspended | O::Unsuspending, O::Active) => Some(EventType::Unsuspended),
        (_, O::Suspended) => Some(EventType::Suspended),
        (_, O::Terminated) => Some(EventType::Terminated),
        (_, O::Failed) => Some(EventType::Failed),
        (_, O::Lost) => Some(EventType::Lost),
        _ => None,
    }
}

/// An instance's public facts, as events carry them: what billing wrote, where the server
/// runs and its addresses. Never credentials, SSH keys or provider internals.
pub fn instance_data(i: &Instance) -> Value {
    json!({
        "instance_id": i.id,
        "customer_id": i.customer_id,
        "order_id": i.order_id,
        "billing_ref": i.billing_ref,
        "product_id": i.product_id,
        "product_revision": i.product_revision,
        "location": i.location,
        "os_image": i.os_image,
        "hostname": i.hostname,
        "desired_status": i.desired_status.as_str(),
        "observed_status": i.observed_status.as_str(),
        "status_reason": i.status_reason,
        "holds": i.holds,
        "ipv4": i.ipv4,
        "ipv6": i.ipv6,
    })
}

/// A task event's data: the task (never its recorded secret, nor its free-form details,
/// which hold admins' notes) and its instance's public facts.
pub fn task_data(t: &Task, i: &Instance) -> Value {
    let mut data = instance_data(i);
    if let Value::Object(map) = &mut data {
        map.insert("task".to_owned(), task_facts(t));
    }
    data
}

/// What a task event says of the task.
pub fn task_facts(t: &Task) -> Value {
    json!({
        "id": t.id,
        "kind": t.kind.as_str(),
        "state": t.state.as_str(),
        "created_at": rfc3339(t.created_at),
        "completed_at": t.completed_at.map(rfc3339),
        "completed_by": t.completed_by,
    })
}

/// The body delivered and served for an event: Standard Webhooks' `{type, timestamp, data}`.
pub fn body(kind: EventType, at: DateTime<Utc>, data: Value) -> String {
    json!({
        "type": kind.as_str(),
        "timestamp": rfc3339(at),
        "data": data,
    })
    .to_string()
}

/// RFC 3339 in UTC with milliseconds, as every timestamp provisioner writes.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ObservedStatus as O;

    #[test]
    fn each_change_of_status_causes_its_event() {
        let cases: &[(&str, O, O, Option<EventType>)] = &[
            (
                "A created server that runs is provisioned.",
                O::Provisioning,
                O::Active,
                Some(EventType::Provisioned),
            ),
            (
                "An adopted or imported server found running is provisioned.",
                O::Pending,
                O::Active,
                Some(EventType::Provisioned),
            ),
            (
                "A suspension done.",
                O::Suspending,
                O::Suspended,
                Some(EventType::Suspended),
            ),
            (
                "A server found off while it should run is suspended.",
                O::Active,
                O::Suspended,
                Some(EventType::Suspended),
            ),
            (
                "An unsuspension done.",
                O::Unsuspending,
                O::Active,
                Some(EventType::Unsuspended),
            ),
            (
                "A reboot done.",
                O::Rebooting,
                O::Active,
                Some(EventType::Rebooted),
            ),
            (
                "A reinstall done.",
                O::Reinstalling,
                O::Active,
                Some(EventType::Reinstalled),
            ),
            (
                "A reinstall of a suspended server done.",
                O::Reinstalling,
                O::Suspended,
                Some(EventType::Reinstalled),
            ),
            (
                "A change of plan done.",
                O::Resizing,
                O::Active,
                Some(EventType::Resized),
            ),
            (
                "A deletion done.",
                O::Terminating,
                O::Terminated,
                Some(EventType::Terminated),
            ),
            (
                "An instance closed before it had a server.",
                O::Pending,
                O::Terminated,
                Some(EventType::Terminated),
            ),
            (
                "A create given up.",
                O::Provisioning,
                O::Failed,
                Some(EventType::Failed),
            ),
            (
                "A vanished server.",
                O::Active,
                O::Lost,
                Some(EventType::Lost),
            ),
            (
                "An intent recorded is no event.",
                O::Active,
                O::Rebooting,
                None,
            ),
            (
                "A create started is no event.",
                O::Pending,
                O::Provisioning,
                None,
            ),
            ("A status kept is no event.", O::Active, O::Active, None),
            (
                "A retried failed instance looked at again is no event.",
                O::Failed,
                O::Pending,
                None,
            ),
            (
                "A failed instance found running again is no new server.",
                O::Failed,
                O::Active,
                None,
            ),
        ];
        for (why, from, to, want) in cases {
            assert_eq!(for_transition(*from, *to), *want, "{why}");
        }
    }

    #[test]
    fn the_body_is_standard_webhooks_shaped() {
        let at = DateTime::parse_from_rfc3339("2026-12-04T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let body: Value =
            serde_json::from_str(&body(EventType::Lost, at, json!({"instance_id": 7}))).unwrap();
        assert_eq!(
            body,
            json!({"type": "instance.lost", "timestamp": "2026-12-04T10:00:00.000Z",
                   "data": {"instance_id": 7}})
        );
    }
}
