//! Running under systemd (`Type=notify`): readiness, status and the watchdog, through the
//! notify socket (`NOTIFY_SOCKET`). Outside systemd every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Tells the service manager that start-up is done: the catalog is loaded, the database
/// migrated, the HTTP endpoints bound and the work loop running.
pub(super) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager that the daemon is draining.
pub(super) fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining: no new work is claimed"),
    ]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot write to the service manager's notify socket");
    }
}

/// The watchdog interval systemd asks for (`WatchdogSec=`), as libsystemd reads it:
/// `WATCHDOG_USEC`, for this process when `WATCHDOG_PID` names one.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval while the runtime is responsive, until `stop`;
/// a hung daemon stops pinging and systemd restarts it.
pub(super) fn spawn_watchdog(stop: CancellationToken) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tokio::select! {
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
                () = stop.cancelled() => return,
            }
        }
    });
}
