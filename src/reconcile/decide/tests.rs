//! The decision table: one sentence per case.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::provider::{Accepted, Created, ErrorClass, PowerState, Progress, ProviderError, Server};
use crate::store::{Action as A, DesiredStatus as D, ObservedStatus as O, Outcome as Out, Pending};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
}

fn instance(desired: D, observed: O) -> Instance {
    let mut i = crate::reconcile::plan::tests::instance(desired, observed);
    i.id = 42;
    i.desired_generation = 2;
    i.observed_generation = 1;
    i.provider_account = Some("acct".into());
    i.provider_server_id = Some("100".into());
    i.desired_changed_at = t0();
    i.next_check_at = Some(t0());
    i.created_at = t0();
    i.updated_at = t0();
    i
}

/// `action` in flight since t0, looked at `elapsed` later.
fn in_flight(desired: D, action: A, elapsed: u64) -> (Instance, DateTime<Utc>) {
    let mut i = instance(desired, transitional(action));
    i.pending = Some(Pending {
        action,
        action_id: Some("act-1".into()),
        hard: false,
    });
    i.pending_since = Some(t0());
    (i, t0() + chrono::Duration::seconds(elapsed as i64))
}

const POLICY: Policy = Policy {
    poll: Duration::from_secs(2),
    poll_max: Duration::from_secs(16),
    create_grace: Duration::from_secs(10),
    graceful_timeout: Some(Duration::from_secs(60)),
    stuck_timeout: Some(Duration::from_secs(300)),
    meters_requests: true,
    withdraws_creates: false,
};

const OK: ProductCheck = ProductCheck::Sellable { stock: None };

fn cx<'a>(i: &'a Instance, now: DateTime<Utc>) -> Context<'a> {
    Context {
        instance: i,
        generation: i.desired_generation,
        now,
        policy: POLICY,
        timing: Timing::default(),
        product: &OK,
    }
}

fn err(class: ErrorClass) -> ProviderError {
    ProviderError::new(class, "the provider said no")
}

fn server(state: PowerState) -> Server {
    Server {
        id: "100".into(),
        instance_id: Some(42),
        name: "provisioner-42".into(),
        state,
        ipv4: Some("192.0.2.1".into()),
        ipv6: None,
        root_password: None,
        plan: None,
    }
}

/// What a decision comes to, as the table states it.
#[derive(Debug, Clone, PartialEq)]
struct Is {
    next: Next,
    result: StepResult,
    status: Option<O>,
    logged: Option<(A, Out)>,
}

fn is(next: Next, result: StepResult, status: Option<O>, logged: Option<(A, Out)>) -> Is {
    Is {
        next,
        result,
        status,
        logged,
    }
}

fn of(d: &Decision) -> Is {
    Is {
        next: d.next,
        result: d.result,
        status: d.patch.observed_status,
        logged: d.transition.as_ref().map(|t| (t.action, t.outcome)),
    }
}

fn decided(l: Look) -> Decision {
    match l {
        Look::Decided(d) => *d,
        Look::Send(a) => panic!("expected a decision, got a send ({a:?})"),
    }
}

const CONVERGED: Next = Next::After(Duration::from_secs(600));

/// The converged wait of instance 42 (spread per instance).
fn converged_next() -> Next {
    Next::After(Duration::from_secs(600).mul_f64(spread(42)))
}

#[test]
fn every_answer_has_a_decision() {
    let converged = converged_next();
    assert_ne!(
        converged, CONVERGED,
        "the converged wait is spread per instance"
    );
    let mut pending = instance(D::Active, O::Provisioning);
    pending.provider_server_id = None;
    pending.pending = Some(Pending::new(A::Create));
    pending.pending_since = Some(t0());
    let created = Created {
        server: server(PowerState::Creating),
        action_id: Some("a-9".into()),
        root_password: Some(crate::secrets::SecretString::new("pw")),
        details: serde_json::Value::Null,
    };
    let running = Created {
        server: server(PowerState::Running),
        ..created.clone()
    };
    let running_unlabelled = Created {
        server: Server {
            instance_id: Some(7),
            ..server(PowerState::Running)
        },
        ..created.clone()
    };
    let retrying = Instance {
        attempts: 4,
        ..instance(D::Active, O::Active)
    };
    let throttled = ProviderError {
        retry_after: Some(Duration::from_secs(7)),
        ..err(ErrorClass::Throttled)
    };
    let (suspending, late) = in_flight(D::Suspended, A::Suspend, 61);
    let (rebooting, soon) = in_flight(D::Active, A::Reboot, 5);
    let (unsuspending_stuck, after_stuck) = in_flight(D::Active, A::Unsuspend, 301);
    let (terminating, t_soon) = in_flight(D::Terminated, A::Terminate, 5);
    let (creating, c_soon) = in_flight(D::Active, A::Create, 5);
    let (creating_late, c_late) = in_flight(D::Active, A::Create, 400);
    let (creating_cancelled, _) = in_flight(D::Terminated, A::Create, 400);
    let active = instance(D::Active, O::Active);
    let at = t0();
    let cases: Vec<(&str, Is, Is)> = vec![
        // Creates.
        ("A create accepted is followed after the first poll interval.",
            of(&created_answer(&pending, Ok(created.clone()))),
            is(Next::After(Duration::from_secs(2)), "progressed", None, Some((A::Create, Out::Succeeded)))),
        ("A create answered with the server running, labelled for the instance, is done: no step to look again.",
            of(&created_answer(&pending, Ok(running))),
            is(converged, "converged", Some(O::Active), Some((A::Create, Out::Succeeded)))),
        ("A running server that carries another instance's label is looked at before it counts.",
            of(&created_answer(&pending, Ok(running_unlabelled))),
            is(Next::After(Duration::from_secs(2)), "progressed", None, Some((A::Create, Out::Succeeded)))),
        ("A create answered AlreadyExists is adopted at once, not sent again.",
            of(&created_answer(&pending, Err(err(ErrorClass::AlreadyExists)))),
            is(Next::Now, "adopting", None, Some((A::Create, Out::Failed)))),
        ("A create answered with a transient error stays in flight (it may have been applied) and backs off.",
            of(&created_answer(&pending, Err(err(ErrorClass::Transient)))),
            is(Next::Backoff(1), "error", None, Some((A::Create, Out::Failed)))),
        ("A create refused as invalid goes back to pending and backs off.",
            of(&created_answer(&pending, Err(err(ErrorClass::Invalid)))),
            is(Next::Backoff(1), "error", Some(O::Pending), Some((A::Create, Out::Failed)))),
        // Adoption.
        ("No labelled server within the create grace: look again after a poll.",
            of(&found(&cx(&pending, at + chrono::Duration::seconds(3)), Ok(vec![]))),
            is(Next::After(Duration::from_secs(2)), "in_flight", None, None)),
        ("No labelled server after the create grace: the create never happened, create again now.",
            of(&found(&cx(&pending, at + chrono::Duration::seconds(11)), Ok(vec![]))),
            is(Next::Now, "progressed", Some(O::Pending), Some((A::Adopt, Out::Failed)))),
        ("One labelled server is adopted and looked at now.",
            of(&found(&cx(&pending, at), Ok(vec![server(PowerState::Running)]))),
            is(Next::Now, "progressed", None, Some((A::Adopt, Out::Succeeded)))),
        ("Several labelled servers stop the instance for a person.",
            of(&found(&cx(&pending, at), Ok(vec![server(PowerState::Running), Server { id: "101".into(), ..server(PowerState::Running) }]))),
            is(Next::Idle, "failed", Some(O::Failed), Some((A::Adopt, Out::Failed)))),
        ("A failed lookup backs off.",
            of(&found(&cx(&pending, at), Err(err(ErrorClass::Transient)))),
            is(Next::Backoff(1), "error", None, Some((A::Adopt, Out::Failed)))),
        // Power and delete answers.
        ("A suspend accepted is followed after a poll.",
            of(&sent(&cx(&active, at), A::Suspend, Attempt::First { before: O::Active }, Ok(Accepted::default()), "100")),
            is(Next::After(Duration::from_secs(2)), "progressed", None, Some((A::Suspend, Out::Succeeded)))),
        ("Not found while terminating: the server is gone, terminated.",
            of(&sent(&cx(&terminating, t_soon), A::Terminate, Attempt::First { before: O::Active }, Err(err(ErrorClass::NotFound)), "100")),
            is(Next::Idle, "converged", Some(O::Terminated), Some((A::Terminate, Out::Succeeded)))),
        ("Not found while suspending: the server vanished, lost.",
            of(&sent(&cx(&active, at), A::Suspend, Attempt::First { before: O::Active }, Err(err(ErrorClass::NotFound)), "100")),
            is(Next::Idle, "lost", Some(O::Lost), Some((A::Observe, Out::Failed)))),
        ("A first send that fails reverts to where it started, so the planner sends it again.",
            of(&sent(&cx(&active, at), A::Suspend, Attempt::First { before: O::Active }, Err(err(ErrorClass::Transient)), "100")),
            is(Next::Backoff(1), "error", Some(O::Active), Some((A::Suspend, Out::Failed)))),
        ("A resend that fails keeps the action in flight.",
            of(&sent(&cx(&unsuspending_stuck, after_stuck), A::Unsuspend, Attempt::Resend, Err(err(ErrorClass::Transient)), "100")),
            is(Next::Backoff(1), "error", None, Some((A::Unsuspend, Out::Failed)))),
        // The error policy.
        ("A non-transient error with the failure budget spent stops the instance as failed.",
            of(&failed(&cx(&retrying, at), A::Reboot, &err(ErrorClass::Invalid), None)),
            is(Next::Idle, "failed", Some(O::Failed), Some((A::Reboot, Out::Failed)))),
        ("A transient error never spends the budget: it backs off longer.",
            of(&failed(&cx(&retrying, at), A::Reboot, &err(ErrorClass::Transient), None)),
            is(Next::Backoff(5), "error", None, Some((A::Reboot, Out::Failed)))),
        ("Auth errors spend the budget like invalid ones.",
            of(&failed(&cx(&retrying, at), A::Reboot, &err(ErrorClass::Auth), None)),
            is(Next::Idle, "failed", Some(O::Failed), Some((A::Reboot, Out::Failed)))),
        ("Throttled with a retry time: retried exactly then, not after a backoff.",
            of(&failed(&cx(&active, at), A::Reboot, &throttled, None)),
            is(Next::After(Duration::from_secs(7)), "error", None, Some((A::Reboot, Out::Failed)))),
        ("Out of capacity: retried after a backoff, never failed.",
            of(&failed(&cx(&retrying, at), A::Create, &err(ErrorClass::Capacity), None)),
            is(Next::Backoff(5), "error", None, Some((A::Create, Out::Failed)))),
        // Looks at actions in flight.
        ("A suspend whose server is off is done; the instance is converged.",
            of(&decided(looked(&cx(&suspending, late), A::Suspend, Ok(Some(server(PowerState::Off))), "100"))),
            is(converged, "converged", Some(O::Suspended), Some((A::Suspend, Out::Succeeded)))),
        ("A create whose server runs is done.",
            of(&decided(looked(&cx(&creating, c_soon), A::Create, Ok(Some(server(PowerState::Running))), "100"))),
            is(converged, "converged", Some(O::Active), Some((A::Create, Out::Succeeded)))),
        ("A create still booting is looked at again after half its age (at least a poll).",
            of(&decided(looked(&cx(&creating, c_soon), A::Create, Ok(Some(server(PowerState::Creating))), "100"))),
            is(Next::After(Duration::from_millis(2500)), "in_flight", None, None)),
        ("A create booting for long is never sent again: look again at the longest interval.",
            of(&decided(looked(&cx(&creating_late, c_late), A::Create, Ok(Some(server(PowerState::Creating))), "100"))),
            is(Next::After(Duration::from_secs(16)), "in_flight", None, None)),
        ("A create whose server is not found within the grace is looked at again.",
            of(&decided(looked(&cx(&creating, c_soon), A::Create, Err(err(ErrorClass::NotFound)), "100"))),
            is(Next::After(Duration::from_millis(2500)), "in_flight", None, None)),
        ("A create billing terminated, withdrawn by the module (a cancelled manual task), is done as terminated.",
            of(&decided(looked(&Context { policy: Policy { withdraws_creates: true, ..POLICY }, ..cx(&creating_cancelled, c_late) }, A::Create, Ok(None), "100"))),
            is(Next::Idle, "converged", Some(O::Terminated), Some((A::Terminate, Out::Succeeded)))),
        ("A create billing terminated whose server is missing past the grace is lost where modules do not withdraw creates.",
            of(&decided(looked(&cx(&creating_cancelled, c_late), A::Create, Ok(None), "100"))),
            is(Next::Idle, "lost", Some(O::Lost), Some((A::Observe, Out::Failed)))),
        ("A terminate whose server is not found any more is done.",
            of(&decided(looked(&cx(&terminating, t_soon), A::Terminate, Ok(None), "100"))),
            is(Next::Idle, "converged", Some(O::Terminated), Some((A::Terminate, Out::Succeeded)))),
        ("A suspend whose server vanished marks the instance lost.",
            of(&decided(looked(&cx(&suspending, soon), A::Suspend, Ok(None), "100"))),
            is(Next::Idle, "lost", Some(O::Lost), Some((A::Observe, Out::Failed)))),
        ("A failed look backs off, the action stays in flight.",
            of(&decided(looked(&cx(&suspending, soon), A::Suspend, Err(err(ErrorClass::Transient)), "100"))),
            is(Next::Backoff(1), "error", None, Some((A::Suspend, Out::Failed)))),
        // Followed provider actions.
        ("A followed reboot that succeeded is done and counted.",
            of(&decided(followed(&cx(&rebooting, soon), A::Reboot, Ok(Progress::Succeeded), "act-1", "hetzner"))),
            is(converged, "converged", Some(O::Active), Some((A::Reboot, Out::Succeeded)))),
        ("A followed reboot that failed goes back to active and backs off.",
            of(&decided(followed(&cx(&rebooting, soon), A::Reboot, Ok(Progress::Failed("boom".into())), "act-1", "hetzner"))),
            is(Next::Backoff(1), "error", Some(O::Active), Some((A::Reboot, Out::Failed)))),
        ("A followed reboot still running within the graceful timeout is looked at again.",
            of(&decided(followed(&cx(&rebooting, soon), A::Reboot, Ok(Progress::Running), "act-1", "hetzner"))),
            is(Next::After(Duration::from_millis(2500)), "in_flight", None, None)),
        ("A followed unsuspend that failed goes back to suspended.",
            of(&decided(followed(&cx(&unsuspending_stuck, soon), A::Unsuspend, Ok(Progress::Failed("no".into())), "act-1", "ovh"))),
            is(Next::Backoff(1), "error", Some(O::Suspended), Some((A::Unsuspend, Out::Failed)))),
        // Sends after escalation.
        ("A hard power-off accepted keeps the suspend in flight, marked hard.",
            of(&sent(&cx(&suspending, late), A::Suspend, Attempt::Hard, Ok(Accepted::default()), "100")),
            is(Next::After(Duration::from_secs(2)), "progressed", None, Some((A::Suspend, Out::Succeeded)))),
        // Steps that call nothing.
        ("A converged instance is looked at after the long interval, spread per instance.",
            of(&quiet(&cx(&active, at), &Step::Converged).unwrap()),
            is(converged, "converged", None, None)),
        ("An idle instance is not looked at until something changes.",
            of(&quiet(&cx(&active, at), &Step::Idle("terminated".into())).unwrap()),
            is(Next::Idle, "idle", None, None)),
        ("A waiting instance is looked at after the waiting interval, logging a new reason once.",
            of(&quiet(&cx(&active, at), &Step::Wait("out of stock".into())).unwrap()),
            is(Next::After(Duration::from_secs(60)), "waiting", None, Some((A::Wait, Out::Deferred)))),
        ("An order terminated before anything was made is terminated without a call.",
            of(&quiet(&cx(&instance(D::Terminated, O::Pending), at), &Step::Forget).unwrap()),
            is(Next::Idle, "progressed", Some(O::Terminated), Some((A::Terminate, Out::Succeeded)))),
        ("A reboot of a suspended server is skipped and the planner looks again now.",
            of(&quiet(&cx(&instance(D::Suspended, O::Suspended), at), &Step::SkipReboot).unwrap()),
            is(Next::Now, "progressed", None, Some((A::Reboot, Out::Deferred)))),
        ("An unsuspend done while a reboot is still asked for goes on at once.",
            of(&done(&cx(&Instance { reboot_requested: 1, ..instance(D::Active, O::Unsuspending) }, at), A::Unsuspend, O::Active, None)),
            is(Next::Now, "progressed", Some(O::Active), Some((A::Unsuspend, Out::Succeeded)))),
        ("A create recorded for an account that is gone starts over from pending.",
            of(&unreachable(&cx(&pending, at), A::Create, "gone".into())),
            is(Next::After(Duration::from_secs(60)), "waiting", Some(O::Pending), None)),
        ("Any other action of an account that is gone waits with the reason.",
            of(&unreachable(&cx(&suspending, at), A::Suspend, "gone".into())),
            is(Next::After(Duration::from_secs(60)), "waiting", None, Some((A::Wait, Out::Deferred)))),
    ];
    let mut failures = Vec::new();
    for (says, got, want) in cases {
        if got != want {
            failures.push(format!("{says}\n   got  {got:?}\n   want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn created_answer(i: &Instance, answer: Result<Created, ProviderError>) -> Decision {
    created(&cx(i, t0()), answer)
}

#[test]
fn escalation_and_resends_follow_the_module_policy() {
    let (suspending, late) = in_flight(D::Suspended, A::Suspend, 61);
    let (rebooting, after_graceful) = in_flight(D::Active, A::Reboot, 61);
    let (unsuspending, after_stuck) = in_flight(D::Active, A::Unsuspend, 301);
    let cases: Vec<(&str, Look, Look)> = vec![
        (
            "A graceful shutdown still running past the graceful timeout: power off hard.",
            looked(
                &cx(&suspending, late),
                A::Suspend,
                Ok(Some(server(PowerState::Running))),
                "100",
            ),
            Look::Send(Attempt::Hard),
        ),
        (
            "A followed reboot still running past the graceful timeout: reset.",
            followed(
                &cx(&rebooting, after_graceful),
                A::Reboot,
                Ok(Progress::Running),
                "act-1",
                "hetzner",
            ),
            Look::Send(Attempt::Hard),
        ),
        (
            "An unsuspend still not running past the stuck timeout: sent again.",
            looked(
                &cx(&unsuspending, after_stuck),
                A::Unsuspend,
                Ok(Some(server(PowerState::Off))),
                "100",
            ),
            Look::Send(Attempt::Resend),
        ),
        (
            "A followed action still running past the stuck timeout: sent again.",
            followed(
                &cx(&unsuspending, after_stuck),
                A::Unsuspend,
                Ok(Progress::Running),
                "act-1",
                "ovh",
            ),
            Look::Send(Attempt::Resend),
        ),
    ];
    for (says, got, want) in cases {
        assert_eq!(got, want, "{says}");
    }
    // Once the hard fallback was sent, it is not sent again.
    let mut hard = suspending.clone();
    hard.pending.as_mut().unwrap().hard = true;
    assert!(
        matches!(
            looked(
                &cx(&hard, late),
                A::Suspend,
                Ok(Some(server(PowerState::Running))),
                "100"
            ),
            Look::Decided(_)
        ),
        "a hard power-off already sent is waited for"
    );
    let mut hard_reboot = rebooting.clone();
    hard_reboot.pending.as_mut().unwrap().hard = true;
    assert!(matches!(
        followed(
            &cx(&hard_reboot, after_graceful),
            A::Reboot,
            Ok(Progress::Running),
            "act-1",
            "hetzner"
        ),
        Look::Decided(_)
    ));
    // A module that never escalates (people do the work) only waits.
    let mut manual = cx(&suspending, late + chrono::Duration::days(3));
    manual.policy.graceful_timeout = None;
    manual.policy.stuck_timeout = None;
    assert!(matches!(
        looked(
            &manual,
            A::Suspend,
            Ok(Some(server(PowerState::Running))),
            "100"
        ),
        Look::Decided(d) if d.result == "in_flight"
    ));
    // A hard reset without an action of its own keeps following the graceful one.
    let d = sent(
        &cx(&rebooting, after_graceful),
        A::Reboot,
        Attempt::Hard,
        Ok(Accepted::default()),
        "100",
    );
    assert_eq!(
        d.patch.pending,
        Some(Some(Pending {
            action: A::Reboot,
            action_id: Some("act-1".into()),
            hard: true
        }))
    );
}

#[test]
fn a_server_that_is_not_the_instances_own_is_never_touched() {
    let active = instance(D::Active, O::Active);
    let terminating = instance(D::Terminated, O::Active);
    let at = t0();
    let theirs = Server {
        instance_id: Some(7),
        ..server(PowerState::Running)
    };
    let unlabelled = Server {
        instance_id: None,
        ..server(PowerState::Running)
    };
    let cases: Vec<(&str, Option<Is>)> = vec![
        (
            "The instance's own server: go ahead.",
            owned(
                &cx(&active, at),
                A::Suspend,
                Ok(Some(server(PowerState::Running))),
                "100",
            )
            .as_ref()
            .map(of),
        ),
        (
            "Another instance's server is refused: the instance stops for a person.",
            owned(
                &cx(&terminating, at),
                A::Terminate,
                Ok(Some(theirs.clone())),
                "100",
            )
            .as_ref()
            .map(of),
        ),
        (
            "A server without our label is refused too.",
            owned(&cx(&active, at), A::Reboot, Ok(Some(unlabelled)), "100")
                .as_ref()
                .map(of),
        ),
        (
            "Gone before a terminate: terminated without a call.",
            owned(&cx(&terminating, at), A::Terminate, Ok(None), "100")
                .as_ref()
                .map(of),
        ),
        (
            "Gone before a suspend: lost.",
            owned(
                &cx(&active, at),
                A::Suspend,
                Err(err(ErrorClass::NotFound)),
                "100",
            )
            .as_ref()
            .map(of),
        ),
        (
            "A malformed server id is refused by the module and retried under the error policy.",
            owned(
                &cx(&active, at),
                A::Suspend,
                Err(err(ErrorClass::Invalid)),
                "../volumes/7",
            )
            .as_ref()
            .map(of),
        ),
    ];
    let want = [
        None,
        Some(is(
            Next::Idle,
            "failed",
            Some(O::Failed),
            Some((A::Terminate, Out::Failed)),
        )),
        Some(is(
            Next::Idle,
            "failed",
            Some(O::Failed),
            Some((A::Reboot, Out::Failed)),
        )),
        Some(is(
            Next::Idle,
            "converged",
            Some(O::Terminated),
            Some((A::Terminate, Out::Succeeded)),
        )),
        Some(is(
            Next::Idle,
            "lost",
            Some(O::Lost),
            Some((A::Observe, Out::Failed)),
        )),
        Some(is(
            Next::Backoff(1),
            "error",
            None,
            Some((A::Suspend, Out::Failed)),
        )),
    ];
    for ((says, got), want) in cases.into_iter().zip(want) {
        assert_eq!(got, want, "{says}");
    }
    let d = owned(
        &cx(&terminating, at),
        A::Terminate,
        Ok(Some(theirs.clone())),
        "100",
    )
    .unwrap();
    let reason = d.patch.status_reason.unwrap().unwrap();
    assert!(
        reason.contains("provisioner-instance=7") && reason.contains("refusing to terminate"),
        "{reason}"
    );
    // A look at an action in flight that finds another instance's server stops too.
    let (suspending, soon) = in_flight(D::Suspended, A::Suspend, 5);
    assert_eq!(
        of(&decided(looked(
            &cx(&suspending, soon),
            A::Suspend,
            Ok(Some(theirs)),
            "100"
        ))),
        is(
            Next::Idle,
            "failed",
            Some(O::Failed),
            Some((A::Suspend, Out::Failed))
        )
    );
}

#[test]
fn a_created_server_keeps_its_password_and_addresses() {
    let mut i = instance(D::Active, O::Provisioning);
    i.provider_server_id = None;
    let d = created(
        &cx(&i, t0()),
        Ok(Created {
            server: server(PowerState::Creating),
            action_id: Some("a-1".into()),
            root_password: Some(crate::secrets::SecretString::new("pw")),
            details: serde_json::json!({"pool": "x"}),
        }),
    );
    assert_eq!(
        d.seal.as_ref().map(|s| s.expose().to_owned()),
        Some("pw".into())
    );
    assert_eq!(d.patch.provider_server_id, Some(Some("100".into())));
    assert_eq!(d.patch.ipv4, Some(Some("192.0.2.1".into())));
    let t = d.transition.unwrap();
    assert_eq!(t.details["pool"], "x", "the module's details are kept");
    assert_eq!(t.details["action_id"], "a-1");
}

#[test]
fn a_wait_logs_its_reason_once() {
    let mut i = instance(D::Active, O::Pending);
    assert!(wait(&cx(&i, t0()), "out of stock".into())
        .transition
        .is_some());
    i.status_reason = Some("out of stock".into());
    assert!(wait(&cx(&i, t0()), "out of stock".into())
        .transition
        .is_none());
}

#[test]
fn backoff_doubles_to_its_cap() {
    let t = Timing::default();
    assert_eq!(t.backoff(1), Duration::from_secs(2));
    assert_eq!(t.backoff(2), Duration::from_secs(4));
    assert_eq!(t.backoff(9), Duration::from_secs(512));
    assert_eq!(t.backoff(10), Duration::from_secs(600));
    assert_eq!(t.backoff(u32::MAX), Duration::from_secs(600));
}

#[test]
fn a_resync_records_drift_from_desired_not_from_the_last_observation() {
    let settled = t0() + chrono::Duration::seconds(60);
    let with = |desired: D, observed: O| instance(desired, observed);
    type Case = (
        &'static str,
        Instance,
        Option<PowerState>,
        Option<(Option<&'static str>, O, A, Out, Next)>,
    );
    let leased = Instance {
        lease_owner: Some("w".into()),
        ..with(D::Active, O::Active)
    };
    let busy = Instance {
        pending: Some(Pending::new(A::Reboot)),
        ..with(D::Active, O::Rebooting)
    };
    let recent = Instance {
        updated_at: settled + chrono::Duration::seconds(1),
        ..with(D::Active, O::Active)
    };
    let serverless = Instance {
        provider_server_id: None,
        ..with(D::Active, O::Pending)
    };
    let cases: Vec<Case> = vec![
        ("A server gone from the listing marks the instance lost.",
            with(D::Active, O::Active), None,
            Some((Some("gone"), O::Lost, A::Observe, Out::Failed, Next::Idle))),
        ("A suspended server found running while billing wants it suspended is drift: powered off again.",
            with(D::Suspended, O::Suspended), Some(PowerState::Running),
            Some((Some("running_while_suspended"), O::Active, A::Observe, Out::Succeeded, Next::Now))),
        ("An active server found off while billing wants it active is drift: powered on again.",
            with(D::Active, O::Active), Some(PowerState::Off),
            Some((Some("off_while_active"), O::Suspended, A::Observe, Out::Succeeded, Next::Now))),
        ("A server found running after an unsuspend whose answer was lost: the unsuspend took effect.",
            with(D::Active, O::Suspended), Some(PowerState::Running),
            Some((None, O::Active, A::Unsuspend, Out::Succeeded, Next::Now))),
        ("A server found off after a suspend whose answer was lost: the suspend took effect.",
            with(D::Suspended, O::Active), Some(PowerState::Off),
            Some((None, O::Suspended, A::Suspend, Out::Succeeded, Next::Now))),
        ("A server as billing wants it is nothing to record.",
            with(D::Active, O::Active), Some(PowerState::Running), None),
        ("A server gone while billing terminates it is left to the terminate.",
            with(D::Terminated, O::Active), None, None),
        ("An instance leased by a worker is left alone.", leased, Some(PowerState::Off), None),
        ("An instance with an action in flight is left alone.", busy, Some(PowerState::Off), None),
        ("An instance changed after the listing began is left alone.", recent, Some(PowerState::Off), None),
        ("An instance without a server is left alone.", serverless, None, None),
    ];
    for (says, i, state, want) in cases {
        let got = resynced(&i, state, settled).map(|r| {
            (
                r.drift,
                r.patch.observed_status.unwrap(),
                r.transition.action,
                r.transition.outcome,
                r.next,
            )
        });
        assert_eq!(got, want, "{says}");
    }
}

#[test]
fn attached_servers_are_marked_unless_another_live_instance_has_them() {
    let i = {
        let mut i = instance(D::Active, O::Active);
        i.claim_pending = true;
        i
    };
    let cx = cx(&i, t0());
    let mut unmarked = server(PowerState::Running);
    unmarked.instance_id = None;
    assert_eq!(
        claimable(&cx, Ok(Some(unmarked.clone())), None, "100"),
        None,
        "an unmarked server is marked"
    );
    let mut stale = unmarked.clone();
    stale.instance_id = Some(7);
    assert_eq!(
        claimable(&cx, Ok(Some(stale.clone())), None, "100"),
        None,
        "a dead instance's mark is replaced"
    );
    let d = claimable(&cx, Ok(Some(stale)), Some(7), "100").expect("refused");
    assert_eq!(d.patch.observed_status, Some(O::Failed));
    let reason = d.patch.status_reason.clone().flatten().unwrap_or_default();
    assert!(reason.contains("instance 7, which is live"), "{reason}");
    assert_eq!(d.next, Next::Idle);
    let d = claimable(&cx, Ok(None), None, "100").expect("gone");
    assert_eq!(d.patch.observed_status, Some(O::Lost));
    let e = ProviderError::new(ErrorClass::Transient, "503");
    let d = claimable(&cx, Err(e.clone()), None, "100").expect("error");
    assert_eq!((d.result, d.patch.attempts), ("error", Some(1)));

    let d = claimed(&cx, Ok(Accepted::default()), "100");
    assert_eq!(d.patch.claim_pending, Some(false));
    assert_eq!(d.next, Next::Now, "the next step follows at once");
    let t = d.transition.expect("recorded");
    assert_eq!((t.action, t.outcome), (A::Adopt, Out::Succeeded));
    let d = claimed(&cx, Err(e), "100");
    assert_eq!(
        d.patch.claim_pending, None,
        "still to be marked after an error"
    );
    assert!(matches!(d.next, Next::Backoff(1)));
}

#[test]
fn an_attached_server_is_looked_at_before_it_carries_the_mark() {
    let mut unmarked = server(PowerState::Off);
    unmarked.instance_id = None;
    for (claim_pending, expect) in [(true, O::Suspended), (false, O::Failed)] {
        let mut i = instance(D::Active, O::Active);
        i.claim_pending = claim_pending;
        match looked(&cx(&i, t0()), A::Observe, Ok(Some(unmarked.clone())), "100") {
            Look::Decided(d) => assert_eq!(
                d.patch.observed_status,
                Some(expect),
                "a marked instance's server must carry its mark; an attached one need not yet"
            ),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_converged_instance_drops_a_reason_that_no_longer_holds() {
    let mut i = instance(D::Active, O::Active);
    i.status_reason = Some("observe-only (imported): the reconciler would power off".into());
    let d = quiet(&cx(&i, t0()), &Step::Converged).expect("calls nothing");
    assert_eq!(d.patch.status_reason, Some(None));
    i.status_reason = None;
    let d = quiet(&cx(&i, t0()), &Step::Converged).expect("calls nothing");
    assert_eq!(
        d.patch.status_reason, None,
        "nothing to clear: nothing written"
    );
}
