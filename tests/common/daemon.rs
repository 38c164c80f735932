//! `provisioner run` as a separate process, for the end-to-end tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use provisioner::store::{Instance, InstanceFilter, SqlStore, Store};

/// The secret key every test daemon runs with.
pub const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// The secret of the test webhook endpoint (in `E2E_WEBHOOK_SECRET`).
pub const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// How long a test waits for progress.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A daemon process; killed when dropped.
pub struct Daemon {
    child: Child,
    log: PathBuf,
    /// Its `--owner`.
    pub owner: String,
}

impl Daemon {
    /// Starts `provisioner run` with 3 s leases and 32 workers.
    pub fn start(url: &str, catalog: &Path, dir: &Path, owner: &str) -> Daemon {
        let extra = ["--lease-seconds", "3", "--workers", "32"];
        Daemon::start_with(url, catalog, dir, owner, &extra)
    }

    /// Starts `provisioner run` with `extra` arguments, logging to `dir/<owner>.log`.
    pub fn start_with(
        url: &str,
        catalog: &Path,
        dir: &Path,
        owner: &str,
        extra: &[&str],
    ) -> Daemon {
        let log = dir.join(format!("{owner}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .args(["--database-url", url, "run", "--listen", "127.0.0.1:0"])
            .args(["--idle-poll-ms", "20", "--resync-seconds", "1"])
            .args(extra)
            .arg("--catalog")
            .arg(catalog)
            .args(["--owner", owner])
            .env("PROVISIONER_SECRET_KEY", KEY)
            .env("E2E_WEBHOOK_SECRET", HOOK_SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start provisioner run");
        Daemon {
            child,
            log,
            owner: owner.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon has started reconciling (its log says so).
    pub async fn ready(&self) {
        let start = Instant::now();
        while !self.log().contains("reconciling") {
            assert!(
                start.elapsed() < PATIENCE,
                "daemon {} never started:\n{}",
                self.owner,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address of the daemon's HTTP endpoints, from its log.
    pub async fn http(&self) -> String {
        let start = Instant::now();
        loop {
            if let Some(addr) = self
                .log()
                .lines()
                .find(|l| l.contains("serving /healthz"))
                .and_then(|l| l.split("address=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
            {
                return addr.to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon {} never served HTTP:\n{}",
                self.owner,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the daemon once `at` of the instances satisfy `done`: in the middle of the
    /// work.
    pub async fn kill9_when(
        &mut self,
        store: &SqlStore,
        at: usize,
        done: impl Fn(&Instance) -> bool,
    ) {
        let start = Instant::now();
        loop {
            let n = store
                .list_instances(&InstanceFilter::default())
                .await
                .unwrap()
                .iter()
                .filter(|i| done(i))
                .count();
            if n >= at {
                break;
            }
            assert!(start.elapsed() < PATIENCE, "no progress:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill9();
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status (a graceful drain exits 0).
    pub async fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon {} did not stop on SIGTERM:\n{}",
                self.owner,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many transitions of `ids` each daemon wrote, after checking that a step's intent and
/// its outcome were written by the same daemon with nobody else's transition in between: no
/// instance was worked on by two daemons at once.
pub async fn steps_by_owner(store: &SqlStore, ids: &[i64]) -> HashMap<String, usize> {
    let mut by_owner: HashMap<String, usize> = HashMap::new();
    for id in ids {
        let history = store.history(*id).await.unwrap();
        let mut open: Option<(&str, String)> = None;
        for t in &history {
            let by = t.details["by"].as_str().unwrap_or("?").to_owned();
            *by_owner.entry(by.clone()).or_default() += 1;
            if let Some((action, owner)) = &open {
                assert_eq!(&by, owner, "instance {id}: {action} started by {owner}, next transition by {by}: {history:#?}");
                if t.action == *action && t.outcome != "started" {
                    open = None;
                }
            }
            if t.outcome == "started" {
                open = Some((t.action.as_str(), by));
            }
        }
    }
    by_owner
}
