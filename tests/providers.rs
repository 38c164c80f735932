//! The reconciler against fake Hetzner Cloud, DigitalOcean and OVH APIs on 127.0.0.1 (see
//! `tests/fakes/`): every instance goes through create → active → suspend → unsuspend →
//! reboot → terminate while the fakes inject 5xx answers and ambiguous creates (applied, then
//! answered after the client's timeout). Zero duplicates, zero servers left, every step in the
//! transition log.

mod common;
mod fakes;

use std::time::{Duration, Instant};

use fakes::cloud::{Cloud, CloudConfig, Flavor};
use fakes::ovh::OvhFake;
use fakes::Faults;
use provisioner::reconcile::daemon::{start, Running};
use provisioner::store::{DesiredStatus, Instance, NewInstance, ObservedStatus, SqlStore, Store};
use tokio_util::sync::CancellationToken;

fn product(id: &str, account: &str, location: &str, os: &str, config: &str) -> String {
    format!(
        "apiVersion: provisioner/v1
kind: Product
id: {id}
name: {id}
type: vps
specs: {{cpu_cores: 1, ram_gb: 1, storage_gb: 20}}
pricing: {{currency: EUR, monthly: \"4.50\"}}
locations: [{location}]
os_images: [{os}]
provisioning: {{account: {account}, config: {config}}}
"
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    url: String,
    catalog: std::path::PathBuf,
    running: Option<Running>,
    shutdown: CancellationToken,
    store: SqlStore,
}

impl Setup {
    async fn new(catalog: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let cat = dir.path().join("catalog");
        std::fs::create_dir(&cat).unwrap();
        std::fs::write(cat.join("c.yaml"), catalog).unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let mut config = common::quick_daemon(&url, cat.clone(), "test");
        config.workers = 16;
        config.resync_interval = Duration::from_millis(500);
        let shutdown = CancellationToken::new();
        let running = start(config, shutdown.clone())
            .await
            .expect("daemon starts");
        let store = running.store.clone();
        Setup {
            _dir: dir,
            url,
            catalog: cat,
            running: Some(running),
            shutdown,
            store,
        }
    }

    /// Runs an `instances` command of the binary on this daemon's database and catalog (the
    /// account's token is in this process's environment); its JSON answer, or its refusal.
    fn instances(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_provisioner"));
        command
            .args(["--database-url", &self.url, "instances"])
            .args(args)
            .args(["--format", "json", "--by", "ops-bob"]);
        if matches!(args.first(), Some(&"import" | &"adopt")) {
            command.arg("--catalog").arg(&self.catalog);
        }
        let out = command.output().unwrap();
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    async fn order(&self, product: &str, ssh: Option<&str>) -> i64 {
        let id = self
            .store
            .create_instance(&NewInstance {
                customer_id: "cust".into(),
                product_id: product.into(),
                ssh_keys: ssh.map(str::to_owned),
                ..NewInstance::default()
            })
            .await
            .unwrap()
            .id;
        self.running.as_ref().unwrap().wake.notify_one();
        id
    }

    async fn wait_all(&self, ids: &[i64], what: &str, pred: impl Fn(&Instance) -> bool) {
        let start = Instant::now();
        loop {
            let mut pending = Vec::new();
            for id in ids {
                let i = self.store.instance(*id).await.unwrap().unwrap();
                if !pred(&i) {
                    pending.push(i);
                }
            }
            if pending.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}: {} left, e.g. {:#?}",
                pending.len(),
                pending[0]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), r.wait())
                .await
                .expect("the daemon drains and stops");
        }
    }

    /// Runs every instance through its whole life, asserting each stage converges.
    async fn lifecycle(&self, ids: &[i64]) {
        let observed = |s: ObservedStatus| move |i: &Instance| i.observed_status == s;
        self.wait_all(ids, "active", observed(ObservedStatus::Active))
            .await;
        for id in ids {
            self.store
                .set_desired(*id, DesiredStatus::Suspended, Some("unpaid"))
                .await
                .unwrap();
        }
        self.wait_all(ids, "suspended", observed(ObservedStatus::Suspended))
            .await;
        for id in ids {
            self.store
                .set_desired(*id, DesiredStatus::Active, None)
                .await
                .unwrap();
        }
        self.wait_all(ids, "unsuspended", observed(ObservedStatus::Active))
            .await;
        for id in ids {
            self.store.request_reboot(*id).await.unwrap();
        }
        self.wait_all(ids, "rebooted", |i| {
            i.observed_status == ObservedStatus::Active && i.reboot_handled == i.reboot_requested
        })
        .await;
        for id in ids {
            self.store
                .set_desired(*id, DesiredStatus::Terminated, None)
                .await
                .unwrap();
        }
        self.wait_all(ids, "terminated", observed(ObservedStatus::Terminated))
            .await;
        for id in ids {
            let history = self.store.history(*id).await.unwrap();
            for action in ["create", "suspend", "unsuspend", "reboot", "terminate"] {
                assert!(
                    history
                        .iter()
                        .any(|t| t.action == action && t.outcome == "started"),
                    "instance {id}: the {action} intent is in the log"
                );
                assert!(
                    history
                        .iter()
                        .any(|t| t.action == action && t.outcome == "succeeded"),
                    "instance {id}: the {action} success is in the log"
                );
            }
        }
    }
}

/// Exactly one server was ever made per instance, none is left, and every request carried
/// the token.
fn one_server_each_and_none_left(cloud: &Cloud, ids: &[i64]) -> fakes::Ledger {
    let ledger = cloud.ledger();
    assert!(
        ledger.duplicates().is_empty(),
        "duplicates: {:?}",
        ledger.duplicates()
    );
    for id in ids {
        assert_eq!(
            ledger.servers_for(*id),
            1,
            "instance {id}: exactly one server"
        );
    }
    assert_eq!(cloud.live(), 0, "every server was deleted");
    assert_eq!(ledger.refused, 0, "the token was sent on every request");
    ledger
}

fn faults() -> Faults {
    Faults {
        server_error_every: Some(7),
        // Longer than the account's 1 s timeout: applied, but the client never hears back.
        slow_create_every: Some((4, Duration::from_millis(1500))),
        latency: Duration::ZERO,
        spurious_429_every: None,
    }
}

fn cloud_account(id: &str, module: &str, url: &str, env: &str) -> String {
    format!(
        "apiVersion: provisioner/v1
kind: ProviderAccount
id: {id}
module: {module}
endpoint: {url}
credentials: {{token_env: {env}}}
poll_seconds: 0.1
timeout_seconds: 1
graceful_timeout_seconds: 2
stuck_timeout_seconds: 20
---
"
    )
}

/// The catalog of one account (`hz` or `do`) of `flavor` at `url`, its token in `env`, with one
/// product (`hz-vps` or `do-vps`) on it.
fn catalog_for(flavor: Flavor, url: &str, env: &str) -> String {
    match flavor {
        Flavor::Hetzner => {
            cloud_account("hz", "hetzner", url, env)
                + &product(
                    "hz-vps",
                    "hz",
                    "fsn1",
                    "ubuntu-24.04",
                    "{server_type: cx22}",
                )
        }
        Flavor::DigitalOcean => {
            cloud_account("do", "digitalocean", url, env)
                + &product(
                    "do-vps",
                    "do",
                    "fra1",
                    "ubuntu-24-04-x64",
                    "{size: s-1vcpu-1gb}",
                )
        }
    }
}

/// A fake cloud started with `cfg`, its token in the environment variable `env`, and the
/// catalog of [`catalog_for`].
async fn cloud_with_catalog(cfg: CloudConfig, env: &str) -> (Cloud, String) {
    let (flavor, token) = (cfg.flavor, cfg.token.clone());
    let cloud = Cloud::start(cfg).await;
    std::env::set_var(env, token);
    let catalog = catalog_for(flavor, &cloud.url, env);
    (cloud, catalog)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hetzner_converges_without_duplicates_through_faults() {
    let mut cfg = CloudConfig::new(Flavor::Hetzner, "hz-secret-token");
    cfg.faults = faults();
    let (cloud, catalog) = cloud_with_catalog(cfg, "FAKE_HCLOUD_TOKEN_1").await;
    let s = Setup::new(&catalog).await;
    let mut ids = Vec::new();
    for n in 0..12 {
        let key = (n % 2 == 0).then_some("ssh-ed25519 AAAAC3Nza test@example");
        ids.push(s.order("hz-vps", key).await);
    }
    s.lifecycle(&ids).await;
    let ledger = one_server_each_and_none_left(&cloud, &ids);
    assert!(
        ledger.count("GET /v1/servers") > 0,
        "in-flight work and resyncs list in bulk"
    );
    assert!(
        ledger.count("POST /v1/servers") > ids.len() as u64,
        "the faults struck creates (503s and answers lost to the timeout)"
    );
    let mut adopted = 0;
    for id in &ids {
        let h = s.store.history(*id).await.unwrap();
        adopted += h
            .iter()
            .filter(|t| t.action == "adopt" && t.outcome == "succeeded")
            .count();
    }
    assert!(adopted > 0, "an ambiguous create was adopted, not repeated");
    let h = s.store.history(ids[0]).await.unwrap();
    assert!(
        h.iter()
            .any(|t| t.action == "suspend" && t.details["request_id"].is_string()),
        "the provider's request id is in the transition details"
    );
    // The root password Hetzner returned (no ssh key given) is kept, sealed.
    let i = s.store.instance(ids[1]).await.unwrap().unwrap();
    assert!(
        i.credentials.is_some(),
        "the generated root password is kept"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_server_id_never_reaches_another_customers_server() {
    let cfg = CloudConfig::new(Flavor::Hetzner, "hz-token-own");
    let (cloud, catalog) = cloud_with_catalog(cfg, "FAKE_HCLOUD_TOKEN_OWN").await;
    let s = Setup::new(&catalog).await;
    let (a, b, c) = (
        s.order("hz-vps", None).await,
        s.order("hz-vps", None).await,
        s.order("hz-vps", None).await,
    );
    s.wait_all(&[a, b, c], "active", |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;
    let b_server = s
        .store
        .instance(b)
        .await
        .unwrap()
        .unwrap()
        .provider_server_id
        .unwrap();
    // The database refuses to give A the server B has: a server belongs to one instance.
    let pool = s.store.sqlite_pool().unwrap();
    let refused = sqlx::query("UPDATE instances SET provider_server_id = ?1 WHERE id = ?2")
        .bind(&b_server)
        .bind(a)
        .execute(pool)
        .await
        .expect_err("two live instances cannot have one server");
    assert!(refused.to_string().contains("UNIQUE"), "{refused}");
    // A server carrying B's label that B does not have (someone copied it by hand).
    let b_label = b.to_string();
    let foreign = cloud.seed_unowned("cx22", &[("provisioner-instance", &b_label)], &[]);
    // Raw SQL points A at that server and C at a path, then cancels both.
    for (id, server) in [(a, foreign.as_str()), (c, "../volumes/7")] {
        sqlx::query("UPDATE instances SET provider_server_id = ?1 WHERE id = ?2")
            .bind(server)
            .bind(id)
            .execute(pool)
            .await
            .unwrap();
        s.store
            .set_desired(id, DesiredStatus::Terminated, Some("cancelled"))
            .await
            .unwrap();
    }
    s.running.as_ref().unwrap().wake.notify_one();
    s.wait_all(&[a, c], "stopped for a person", |i| {
        i.observed_status == ObservedStatus::Failed
    })
    .await;
    let a_now = s.store.instance(a).await.unwrap().unwrap();
    let reason = a_now.status_reason.unwrap_or_default();
    assert!(
        reason.contains(&format!("provisioner-instance={b}"))
            && reason.contains("refusing to terminate"),
        "{reason}"
    );
    let c_now = s.store.instance(c).await.unwrap().unwrap();
    assert!(
        c_now
            .last_error
            .unwrap_or_default()
            .contains("not a positive integer"),
        "the malformed id was refused before any request"
    );
    let ledger = cloud.ledger();
    assert_eq!(
        ledger.count("DELETE /v1/servers/{id}"),
        0,
        "nothing was deleted: {:?}",
        ledger.by_kind
    );
    assert!(
        ledger.by_kind.keys().all(|k| !k.contains("volumes")),
        "no request went to another path: {:?}",
        ledger.by_kind
    );
    assert_eq!(cloud.live(), 4, "every server is still there");
    let b_now = s.store.instance(b).await.unwrap().unwrap();
    assert_eq!(b_now.observed_status, ObservedStatus::Active);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_occasional_429_does_not_stall_the_account() {
    // Hetzner's real budget: 3,600 requests refilling one a second, `RateLimit-Reset` the
    // time of full recovery (minutes away once a few hundred requests went out). Every 10th
    // request is answered 429 although requests are left, without `Retry-After`.
    let mut cfg = CloudConfig::new(Flavor::Hetzner, "hz-token-429");
    cfg.limit = (3600, 1.0);
    cfg.faults.spurious_429_every = Some(10);
    let (cloud, catalog) = cloud_with_catalog(cfg, "FAKE_HCLOUD_TOKEN_429").await;
    let s = Setup::new(&catalog).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(s.order("hz-vps", None).await);
    }
    // Blocking the account until the full-recovery reset (up to a minute per 429, as it
    // did) would not converge within wait_all's minute; a second per 429 does.
    s.wait_all(&ids, "active despite 429s", |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;
    let ledger = cloud.ledger();
    assert!(
        ledger.throttled >= 3,
        "the fake answered 429s: {}",
        ledger.throttled
    );
    for id in &ids {
        assert_eq!(ledger.servers_for(*id), 1, "instance {id}: one server");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn digitalocean_converges_without_duplicates_through_faults() {
    let mut cfg = CloudConfig::new(Flavor::DigitalOcean, "do-secret-token");
    cfg.faults = faults();
    let (cloud, catalog) = cloud_with_catalog(cfg, "FAKE_DO_TOKEN_1").await;
    let s = Setup::new(&catalog).await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(s.order("do-vps", None).await);
    }
    s.lifecycle(&ids).await;
    let ledger = one_server_each_and_none_left(&cloud, &ids);
    assert!(
        ledger.count("POST /v2/droplets") > ids.len() as u64,
        "the faults struck creates"
    );
    s.stop().await;
}

/// Terraform, doctl and godo take `https://api.digitalocean.com` without `/v2`, and hcloud a
/// bare host works too: an operator copying their setting gets a working account.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn base_urls_written_as_the_providers_tools_write_them_work() {
    for (flavor, token, env, product) in [
        (
            Flavor::DigitalOcean,
            "do-token-bare",
            "FAKE_DO_TOKEN_BARE",
            "do-vps",
        ),
        (
            Flavor::Hetzner,
            "hz-token-bare",
            "FAKE_HZ_TOKEN_BARE",
            "hz-vps",
        ),
    ] {
        let cloud = Cloud::start(CloudConfig::new(flavor, token)).await;
        std::env::set_var(env, token);
        let bare = cloud
            .url
            .trim_end_matches("/v2")
            .trim_end_matches("/v1")
            .to_owned()
            + "/";
        let s = Setup::new(&catalog_for(flavor, &bare, env)).await;
        let ids = vec![s.order(product, None).await, s.order(product, None).await];
        s.lifecycle(&ids).await;
        one_server_each_and_none_left(&cloud, &ids);
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reboot_the_os_ignores_is_followed_by_a_hard_reset() {
    let mut cfg = CloudConfig::new(Flavor::Hetzner, "hz-token-2");
    cfg.reboot_hangs = true;
    let (cloud, catalog) = cloud_with_catalog(cfg, "FAKE_HCLOUD_TOKEN_2").await;
    let catalog = catalog.replace(
        "graceful_timeout_seconds: 2",
        "graceful_timeout_seconds: 0.8",
    );
    let s = Setup::new(&catalog).await;
    let id = s.order("hz-vps", None).await;
    s.wait_all(&[id], "active", |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;
    s.store.request_reboot(id).await.unwrap();
    s.wait_all(&[id], "rebooted", |i| {
        i.reboot_handled == i.reboot_requested
    })
    .await;
    let ledger = cloud.ledger();
    assert_eq!(ledger.count("POST /v1/servers/{id}/actions/reboot"), 1);
    assert_eq!(
        ledger.count("POST /v1/servers/{id}/actions/reset"),
        1,
        "reset after the timeout"
    );
    let history = s.store.history(id).await.unwrap();
    assert!(history
        .iter()
        .any(|t| t.action == "reboot" && t.details["hard"] == true));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_credentials_make_orders_wait_with_the_variable_named() {
    let cloud = Cloud::start(CloudConfig::new(Flavor::Hetzner, "x")).await;
    let catalog = catalog_for(Flavor::Hetzner, &cloud.url, "FAKE_HCLOUD_TOKEN_UNSET");
    let s = Setup::new(&catalog).await;
    let id = s.order("hz-vps", None).await;
    s.wait_all(&[id], "waiting", |i| {
        i.status_reason
            .as_deref()
            .is_some_and(|r| r.contains("FAKE_HCLOUD_TOKEN_UNSET"))
    })
    .await;
    assert_eq!(
        cloud.ledger().requests,
        0,
        "nothing is sent without credentials"
    );
    s.stop().await;
}

/// A fake OVH API with `pool` (service name, hardware) in location `gra`, and the catalog of
/// account `account` on it with one dedicated product `ded` on hardware `adv-1`.
async fn ovh_with_catalog(account: &str, pool: &[(&str, &str)]) -> (OvhFake, String) {
    let names: Vec<&str> = pool.iter().map(|(n, _)| *n).collect();
    let fake = OvhFake::start(&names, Duration::from_millis(300)).await;
    std::env::set_var("FAKE_OVH_AK", fakes::ovh::APP_KEY);
    std::env::set_var("FAKE_OVH_AS", fakes::ovh::APP_SECRET);
    std::env::set_var("FAKE_OVH_CK", fakes::ovh::CONSUMER_KEY);
    let servers: String = pool
        .iter()
        .map(|(n, h)| format!("  - {{service_name: {n}, hardware: {h}, location: gra}}\n"))
        .collect();
    let catalog = format!(
        "apiVersion: provisioner/v1
kind: ProviderAccount
id: {account}
module: ovh
endpoint: {}
credentials: {{application_key_env: FAKE_OVH_AK, application_secret_env: FAKE_OVH_AS, consumer_key_env: FAKE_OVH_CK}}
poll_seconds: 0.1
timeout_seconds: 2
pool:
{servers}---
",
        fake.url
    ) + &product("ded", account, "gra", "debian12_64", "{hardware: [adv-1]}")
        .replace("type: vps", "type: dedicated");
    (fake, catalog)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ovh_pool_servers_are_allocated_once_wiped_and_freed() {
    let (fake, catalog) = ovh_with_catalog(
        "ovh-t",
        &[
            ("ns1.fake.eu", "adv-1"),
            ("ns2.fake.eu", "adv-1"),
            ("ns3.fake.eu", "rise-2"),
        ],
    )
    .await;
    let s = Setup::new(&catalog).await;
    let a = s.order("ded", Some("ssh-ed25519 AAAAC3Nza a@b")).await;
    let b = s.order("ded", None).await;
    s.wait_all(&[a, b], "active", |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;
    // Ordered once both have their servers: ordered with them, it raced `b` for the second
    // adv-1 server (the steps of three claimed orders run at once) and won now and then.
    let c = s.order("ded", None).await;
    let ia = s.store.instance(a).await.unwrap().unwrap();
    let ib = s.store.instance(b).await.unwrap().unwrap();
    assert_ne!(
        ia.provider_server_id, ib.provider_server_id,
        "two instances, two servers"
    );
    // The third order finds no free adv-1 server (the rise-2 one does not match): it waits.
    s.wait_all(&[c], "retrying for capacity", |i| {
        i.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no free server"))
    })
    .await;
    s.lifecycle(&[a]).await;
    // Terminating `a` wiped its server and gave it back: `c` gets it.
    s.wait_all(&[c], "active on the freed server", |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;
    let ic = s.store.instance(c).await.unwrap().unwrap();
    assert_eq!(ic.provider_server_id, ia.provider_server_id);
    let installs = fake.installs();
    let server_a = ia.provider_server_id.clone().unwrap();
    let on_a: Vec<&String> = installs
        .iter()
        .filter(|(sn, _)| *sn == server_a)
        .map(|(_, h)| h)
        .collect();
    assert_eq!(
        on_a.len(),
        3,
        "installed for a, wiped, installed for c: {installs:?}"
    );
    assert_eq!(fake.ledger().refused, 0, "every signature was right");
    let history = s.store.history(a).await.unwrap();
    assert!(history
        .iter()
        .any(|t| t.details["pool"]["allocated"] == server_a.as_str()));
    assert!(history
        .iter()
        .any(|t| t.details["pool"]["boot"] == "rescue"));
    assert!(history
        .iter()
        .any(|t| t.details["pool"]["wiping"] == server_a.as_str()));
    s.stop().await;
}

/// Upgrade, downgrade while suspended, a reinstall with another OS, and a change to another
/// account refused, against the fake of `flavor`: one change and one rebuild per request.
async fn plans_change_and_servers_reinstall(flavor: Flavor, env: &str) {
    let mut cfg = CloudConfig::new(flavor, &format!("{env}-token"));
    cfg.faults = Faults {
        server_error_every: Some(5),
        ..Faults::default()
    };
    let (cloud, catalog) = cloud_with_catalog(cfg, env).await;
    let (small, large, prefix, os) = match flavor {
        Flavor::Hetzner => ("hz-vps", "hz-large", "v1", "ubuntu-24.04, debian-12"),
        Flavor::DigitalOcean => (
            "do-vps",
            "do-large",
            "v2",
            "ubuntu-24-04-x64, debian-12-x64",
        ),
    };
    let (account, location, large_config) = match flavor {
        Flavor::Hetzner => ("hz", "fsn1", "{server_type: cx32}"),
        Flavor::DigitalOcean => ("do", "fra1", "{size: s-2vcpu-4gb}"),
    };
    let catalog = catalog.replace(
        &format!("os_images: [{}]", os.split(',').next().unwrap()),
        &format!("os_images: [{os}]"),
    ) + "---\n"
        + &product(large, account, location, os, large_config)
        + "---\n"
        + "apiVersion: provisioner/v1\nkind: ProviderAccount\nid: elsewhere\nmodule: sim\n---\n"
        + &product("sim-vps", "elsewhere", location, os, "{}");
    let s = Setup::new(&catalog).await;
    let id = s.order(small, None).await;
    s.wait_all(&[id], "active", |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;
    let first_password = s.store.instance(id).await.unwrap().unwrap().credentials;

    // Upgrade while running: powered off, changed, powered on.
    s.store.change_product(id, large).await.unwrap();
    s.wait_all(&[id], "upgraded", |i| i.is_converged()).await;
    let i = s.store.instance(id).await.unwrap().unwrap();
    assert_eq!(i.applied_product_id.as_deref(), Some(large));
    assert_eq!(i.observed_status, ObservedStatus::Active);
    assert_eq!(cloud.ledger().resizes, 1, "one change for one request");

    // Downgrade while suspended: changed while off, and it stays off.
    s.store
        .set_desired(id, DesiredStatus::Suspended, Some("unpaid"))
        .await
        .unwrap();
    s.wait_all(&[id], "suspended", |i| i.is_converged()).await;
    s.store.change_product(id, small).await.unwrap();
    s.wait_all(&[id], "downgraded", |i| i.is_converged()).await;
    let i = s.store.instance(id).await.unwrap().unwrap();
    assert_eq!(
        (i.applied_product_id.as_deref(), i.observed_status),
        (Some(small), ObservedStatus::Suspended)
    );
    assert_eq!(cloud.ledger().resizes, 2);

    // A reinstall waits while suspended, and runs once the instance is active again.
    s.store
        .request_reinstall(id, Some(os.split(", ").nth(1).unwrap()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cloud.ledger().rebuilds, 0, "no reinstall while suspended");
    let i = s.store.instance(id).await.unwrap().unwrap();
    assert!(
        i.status_reason
            .as_deref()
            .is_some_and(|r| r.contains("waits until the instance is active")),
        "{:?}",
        i.status_reason
    );
    s.store
        .set_desired(id, DesiredStatus::Active, None)
        .await
        .unwrap();
    s.wait_all(&[id], "reinstalled", |i| i.is_converged()).await;
    assert_eq!(cloud.ledger().rebuilds, 1, "one rebuild for one request");
    let i = s.store.instance(id).await.unwrap().unwrap();
    if flavor == Flavor::Hetzner {
        assert!(
            i.credentials.is_some() && i.credentials != first_password,
            "the new root password replaced the old one"
        );
    } else {
        assert!(
            i.credentials.is_none(),
            "the old password no longer opens the server"
        );
    }

    // A change to a product of another account is refused with the reason; nothing is called.
    let before = cloud.ledger();
    s.store.change_product(id, "sim-vps").await.unwrap();
    s.wait_all(&[id], "refused", |i| {
        i.status_reason
            .as_deref()
            .is_some_and(|r| r.contains("a change of provider needs a new server"))
    })
    .await;
    let after = cloud.ledger();
    assert_eq!(
        (after.resizes, after.rebuilds),
        (before.resizes, before.rebuilds)
    );
    assert_eq!(
        after.count(&format!(
            "POST /{prefix}/servers/{{id}}/actions/change_type"
        )) + after.count(&format!("POST /{prefix}/droplets/{{id}}/actions")),
        before.count(&format!(
            "POST /{prefix}/servers/{{id}}/actions/change_type"
        )) + before.count(&format!("POST /{prefix}/droplets/{{id}}/actions")),
        "no call for a refused change"
    );

    let history = s.store.history(id).await.unwrap();
    let resized: Vec<(&str, &str)> = history
        .iter()
        .filter(|t| {
            t.action == "resize" && t.outcome == "succeeded" && t.to_status != t.from_status
        })
        .map(|t| {
            (
                t.details["from_product"].as_str().unwrap_or(""),
                t.details["to_product"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        resized,
        [(small, large), (large, small)],
        "from and to in the log"
    );
    assert!(history
        .iter()
        .any(|t| t.action == "reinstall" && t.outcome == "started"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hetzner_changes_plans_and_reinstalls() {
    plans_change_and_servers_reinstall(Flavor::Hetzner, "FAKE_HCLOUD_TOKEN_PLAN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn digitalocean_changes_plans_and_reinstalls() {
    plans_change_and_servers_reinstall(Flavor::DigitalOcean, "FAKE_DO_TOKEN_PLAN").await;
}

/// A server made by hand is imported observe-only (nothing sent for it, not even the label,
/// while billing's suspension waits), then managed: labelled or tagged in place of the marks it
/// had (its own kept), then suspended. A lost instance adopts another server, whose stale mark
/// of a dead instance is replaced. Both are deleted with their instances.
async fn servers_are_imported_and_adopted(flavor: Flavor, env: &str) {
    let mut cfg = CloudConfig::new(flavor, &format!("{env}-token"));
    cfg.faults = Faults {
        server_error_every: Some(5),
        ..Faults::default()
    };
    let (cloud, catalog) = cloud_with_catalog(cfg, env).await;
    let (account, product, plan, running) = match flavor {
        Flavor::Hetzner => ("hz", "hz-vps", "cx22", "running"),
        Flavor::DigitalOcean => ("do", "do-vps", "s-1vcpu-1gb", "active"),
    };
    let s = Setup::new(&catalog).await;
    let legacy = cloud.seed_unowned(plan, &[("team", "web")], &["web"]);
    let wrong_plan = cloud.seed_unowned("huge-plan", &[], &[]);
    let refused = s
        .instances(&[
            "import",
            "--account",
            account,
            "--server-id",
            &wrong_plan,
            "--customer",
            "c",
            "--product",
            product,
        ])
        .unwrap_err();
    assert!(refused.contains("is on plan `huge-plan`"), "{refused}");
    let i = s
        .instances(&[
            "import",
            "--account",
            account,
            "--server-id",
            &legacy,
            "--customer",
            "cust-1",
            "--product",
            product,
            "--billing-ref",
            "svc-1",
            "--observe-only",
        ])
        .unwrap();
    let id = i["id"].as_i64().unwrap();
    assert_eq!(
        i["ipv4"],
        format!("203.0.113.{}", legacy.parse::<i64>().unwrap() % 250)
    );
    s.store
        .set_desired(id, DesiredStatus::Suspended, Some("unpaid"))
        .await
        .unwrap();
    s.running.as_ref().unwrap().wake.notify_one();
    s.wait_all(&[id], "waiting, observe-only", |i| {
        i.status_reason
            .as_deref()
            .is_some_and(|r| r.contains("observe-only"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ledger = cloud.ledger();
    let mutations: u64 = ledger
        .by_kind
        .iter()
        .filter(|(k, _)| !k.starts_with("GET"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        mutations, 0,
        "nothing sent for an observe-only server: {:?}",
        ledger.by_kind
    );
    let (labels, tags, status) = cloud.marks(&legacy).unwrap();
    assert_eq!(status, running);
    assert!(
        !labels.contains_key("provisioner-instance")
            && !tags.iter().any(|t| t.starts_with("provisioner"))
    );

    s.instances(&["manage", &id.to_string()]).unwrap();
    s.running.as_ref().unwrap().wake.notify_one();
    s.wait_all(&[id], "managed and suspended", |i| i.is_converged())
        .await;
    let (labels, tags, status) = cloud.marks(&legacy).unwrap();
    assert_eq!(status, "off");
    let mark = id.to_string();
    match flavor {
        Flavor::Hetzner => {
            assert_eq!(labels.get("provisioner-instance"), Some(&mark));
            assert_eq!(
                labels.get("team").map(String::as_str),
                Some("web"),
                "its own labels are kept"
            );
        }
        Flavor::DigitalOcean => {
            for t in ["web", "provisioner", &format!("provisioner-instance:{id}")] {
                assert!(tags.iter().any(|x| x == t), "{t} in {tags:?}");
            }
        }
    }

    // A managed instance loses its server; it adopts one carrying a dead instance's mark.
    let other = s.order(product, None).await;
    s.wait_all(&[other], "active", |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;
    let gone = s
        .store
        .instance(other)
        .await
        .unwrap()
        .unwrap()
        .provider_server_id
        .unwrap();
    cloud.remove(&gone);
    s.wait_all(&[other], "lost", |i| {
        i.observed_status == ObservedStatus::Lost
    })
    .await;
    let spare = cloud.seed_unowned(
        plan,
        &[("provisioner-instance", "424242")],
        &["provisioner-instance:424242"],
    );
    let refused = s
        .instances(&["adopt", &other.to_string(), "--server-id", &legacy])
        .unwrap_err();
    assert!(
        refused.contains("a server belongs to one instance"),
        "{refused}"
    );
    s.instances(&["adopt", &other.to_string(), "--server-id", &spare])
        .unwrap();
    s.running.as_ref().unwrap().wake.notify_one();
    s.wait_all(&[other], "adopted", |i| i.is_converged()).await;
    let (labels, tags, _) = cloud.marks(&spare).unwrap();
    match flavor {
        Flavor::Hetzner => assert_eq!(labels.get("provisioner-instance"), Some(&other.to_string())),
        Flavor::DigitalOcean => {
            assert!(
                tags.contains(&format!("provisioner-instance:{other}")),
                "{tags:?}"
            );
            assert!(
                !tags.contains(&"provisioner-instance:424242".to_owned()),
                "the dead instance's tag is gone: {tags:?}"
            );
        }
    }
    let history = s.store.history(other).await.unwrap();
    assert!(history
        .iter()
        .any(|t| t.action == "adopt" && t.cause == "manual" && t.details["by"] == "ops-bob"));

    for id in [id, other] {
        s.store
            .set_desired(id, DesiredStatus::Terminated, None)
            .await
            .unwrap();
    }
    s.running.as_ref().unwrap().wake.notify_one();
    s.wait_all(&[id, other], "terminated", |i| {
        i.observed_status == ObservedStatus::Terminated
    })
    .await;
    assert!(cloud.marks(&legacy).is_none() && cloud.marks(&spare).is_none());
    assert!(
        cloud.marks(&wrong_plan).is_some(),
        "the server not imported is left alone"
    );
    let made: u64 = cloud.ledger().created_for.values().sum();
    assert_eq!(made, 1, "one server made: the ordered one");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hetzner_imports_and_adopts_servers() {
    servers_are_imported_and_adopted(Flavor::Hetzner, "FAKE_HCLOUD_TOKEN_ATTACH").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn digitalocean_imports_and_adopts_servers() {
    servers_are_imported_and_adopted(Flavor::DigitalOcean, "FAKE_DO_TOKEN_ATTACH").await;
}

/// An OVH server is imported observe-only: no order is given it meanwhile (the next order gets
/// another server, the one after waits), nothing is sent to OVH for it; managed, it is
/// allocated to its instance in the pool; terminated, it is wiped and goes to the waiting order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ovh_servers_are_imported_into_the_pool() {
    let (fake, catalog) = ovh_with_catalog(
        "ovh-i",
        &[("ns1.fake.eu", "adv-1"), ("ns2.fake.eu", "adv-1")],
    )
    .await;
    let s = Setup::new(&catalog).await;
    let imported = s
        .instances(&[
            "import",
            "--account",
            "ovh-i",
            "--server-id",
            "ns1.fake.eu",
            "--customer",
            "legacy",
            "--product",
            "ded",
            "--observe-only",
        ])
        .unwrap();
    let x = imported["id"].as_i64().unwrap();
    let b = s.order("ded", None).await;
    s.wait_all(&[b], "active", |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;
    let ib = s.store.instance(b).await.unwrap().unwrap();
    assert_eq!(
        ib.provider_server_id.as_deref(),
        Some("ns2.fake.eu"),
        "the imported server is never given to an order"
    );
    let c = s.order("ded", None).await;
    s.wait_all(&[c], "waiting for capacity", |i| {
        i.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no free server"))
    })
    .await;
    assert!(
        fake.installs().iter().all(|(sn, _)| sn != "ns1.fake.eu"),
        "nothing sent to OVH for the imported server: {:?}",
        fake.installs()
    );

    s.instances(&["manage", &x.to_string()]).unwrap();
    s.running.as_ref().unwrap().wake.notify_one();
    s.wait_all(&[x], "managed", |i| i.is_converged()).await;
    let slot = s
        .store
        .pool_slot("ovh-i", x)
        .await
        .unwrap()
        .expect("allocated");
    assert_eq!(
        (slot.service_name.as_str(), slot.state.as_str()),
        ("ns1.fake.eu", "ready")
    );

    s.store
        .set_desired(x, DesiredStatus::Terminated, None)
        .await
        .unwrap();
    s.running.as_ref().unwrap().wake.notify_one();
    s.wait_all(&[c], "active on the imported server, wiped", |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;
    let ic = s.store.instance(c).await.unwrap().unwrap();
    assert_eq!(ic.provider_server_id.as_deref(), Some("ns1.fake.eu"));
    s.stop().await;
}
