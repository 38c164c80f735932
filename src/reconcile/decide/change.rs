//! Decisions of changes of plan and reinstalls.

use serde_json::json;

use super::{accepted_for, done_with, failed, lost, merge, Context, Decision, Next, ObservedPatch};
use crate::provider::{Accepted, CreateRequest, ErrorClass, ProviderError, Rebuilt, Server};
use crate::reconcile::resize::{ResizeMove, ResizeTarget};
use crate::store::{Action, NewTransition, ObservedStatus, Outcome, Pending};

/// The intent recorded before a change of plan's first call.
pub fn resize_intent(cx: &Context<'_>, target: &ResizeTarget) -> (ObservedPatch, NewTransition) {
    let mut t = cx.transition(Action::Resize, Outcome::Started);
    merge(&mut t.details, target.details());
    (
        ObservedPatch {
            observed_status: Some(ObservedStatus::Resizing),
            status_reason: Some(None),
            pending: Some(Some(Pending::new(Action::Resize))),
            ..ObservedPatch::default()
        },
        t,
    )
}

/// What the answer to one call of a change of plan (`call`: a power-off, the change, a
/// power-on) means. The change stays in flight; its accepted change is remembered so that it
/// is never sent twice.
pub fn resize_sent(
    cx: &Context<'_>,
    call: ResizeMove,
    answer: Result<Accepted, ProviderError>,
    target: &ResizeTarget,
) -> Decision {
    let i = cx.instance;
    let before = i
        .pending
        .clone()
        .unwrap_or_else(|| Pending::new(Action::Resize));
    match answer {
        Ok(accepted) => {
            let (name, pending) = match call {
                ResizeMove::PowerOff { hard } => (
                    if hard { "power_off_hard" } else { "shutdown" },
                    Pending {
                        hard: before.hard || hard,
                        ..before
                    },
                ),
                ResizeMove::Change => (
                    "change",
                    Pending {
                        // A provider that gives no action id still has the change: remember it.
                        action_id: Some(
                            accepted.action_id.clone().unwrap_or_else(|| "sent".into()),
                        ),
                        ..before
                    },
                ),
                _ => ("power_on", before),
            };
            let mut t = cx.transition(Action::Resize, Outcome::Succeeded);
            t.details = json!({"call": name, "action_id": accepted.action_id});
            merge(&mut t.details, target.details());
            merge(&mut t.details, accepted.details);
            accepted_for(cx, pending, ObservedPatch::default(), t)
        }
        Err(e) if e.class == ErrorClass::NotFound => lost(
            Action::Resize,
            i.provider_server_id.as_deref().unwrap_or("unknown"),
        ),
        // The change stays in flight: the next look decides again from what the server shows
        // (a change that was applied after all shows the new plan, or a busy server).
        Err(e) => failed(cx, Action::Resize, &e, None),
    }
}

/// The provider's action of a change failed: the change stays in flight and is sent again
/// after the backoff (the error budget still applies).
pub fn resize_failed(cx: &Context<'_>, e: &ProviderError) -> Decision {
    let mut d = failed(cx, Action::Resize, e, None);
    if d.patch.observed_status.is_none() {
        let before = cx
            .instance
            .pending
            .clone()
            .unwrap_or_else(|| Pending::new(Action::Resize));
        d.patch.pending = Some(Some(Pending {
            action_id: None,
            ..before
        }));
    }
    d
}

/// The server is on its new plan and settled in `status`.
pub fn resized(
    cx: &Context<'_>,
    target: &ResizeTarget,
    status: ObservedStatus,
    server: Option<&Server>,
) -> Decision {
    let extra = ObservedPatch {
        applied_product_id: Some(target.request.product_id.clone()),
        product_revision: Some(target.revision.clone()),
        ..ObservedPatch::default()
    };
    let mut d = done_with(cx, Action::Resize, status, server, extra);
    if let Some(t) = &mut d.transition {
        merge(&mut t.details, target.details());
    }
    d
}

/// The intent recorded before a reinstall is sent.
pub fn rebuild_intent(cx: &Context<'_>, request: &CreateRequest) -> (ObservedPatch, NewTransition) {
    let mut t = cx.transition(Action::Reinstall, Outcome::Started);
    merge(
        &mut t.details,
        json!({"os_image": request.os_image, "image": request.image}),
    );
    (
        ObservedPatch {
            observed_status: Some(ObservedStatus::Reinstalling),
            status_reason: Some(None),
            pending: Some(Some(Pending::new(Action::Reinstall))),
            ..ObservedPatch::default()
        },
        t,
    )
}

/// What the answer to a reinstall means. The old root password no longer opens the server:
/// it is replaced by the new one, or cleared when the provider gives none (a person records
/// one for manual work).
pub fn rebuilt(cx: &Context<'_>, answer: Result<Rebuilt, ProviderError>) -> Decision {
    let i = cx.instance;
    match answer {
        Ok(rebuilt) => {
            let mut t = cx.transition(Action::Reinstall, Outcome::Succeeded);
            t.details = json!({"action_id": rebuilt.accepted.action_id});
            merge(&mut t.details, rebuilt.accepted.details);
            let pending = Pending {
                action: Action::Reinstall,
                action_id: Some(rebuilt.accepted.action_id.unwrap_or_else(|| "sent".into())),
                hard: false,
            };
            let patch = ObservedPatch {
                credentials: rebuilt.root_password.is_none().then_some(None),
                ..ObservedPatch::default()
            };
            let mut d = accepted_for(cx, pending, patch, t);
            d.seal = rebuilt.root_password;
            d
        }
        Err(e) if e.class == ErrorClass::NotFound => lost(
            Action::Reinstall,
            i.provider_server_id.as_deref().unwrap_or("unknown"),
        ),
        // The reinstall may have been applied: it stays in flight, so the next step asks the
        // provider for it before sending it again.
        Err(e) if e.class.is_transient() => failed(cx, Action::Reinstall, &e, None),
        // Refused outright: nothing was reinstalled; the planner asks again after the backoff.
        Err(e) => failed(cx, Action::Reinstall, &e, Some(ObservedStatus::Active)),
    }
}

/// A reinstall whose answer was lost was found at the provider: follow it. The new root
/// password was in the lost answer: the old one is cleared (it opens nothing now), and an
/// admin resets the password at the provider.
pub fn rebuild_found(cx: &Context<'_>, action_id: String) -> Decision {
    let mut t = cx.transition(Action::Reinstall, Outcome::Succeeded);
    t.details = json!({"action_id": action_id, "adopted": true,
        "note": "the reinstall's answer was lost; the provider's record of it is followed"});
    let mut d = accepted_for(
        cx,
        Pending {
            action: Action::Reinstall,
            action_id: Some(action_id),
            hard: false,
        },
        ObservedPatch {
            credentials: Some(None),
            ..ObservedPatch::default()
        },
        t,
    );
    d.next = Next::Now;
    d
}
