//! The ops console in a real browser: Debian's Chromium, headless, driven through ChromeDriver
//! (WebDriver) against the daemon on 127.0.0.1. An admin signs in, watches an order become
//! active without reloading, suspends it with an abuse hold that billing's unsuspend cannot
//! lift, releases it, completes a manual task, retries a failed instance; a read token cannot
//! act and a form without its CSRF token is refused. Each page's screenshot is written to
//! `docs/console/` for README.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use provisioner::reconcile::daemon::start;
use provisioner::store::{ObservedStatus, Scope, SqlStore, Store};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(60);

fn catalog(hetzner: &str, hook: &str) -> String {
    format!(
        "apiVersion: provisioner/v1
kind: ProviderAccount
id: sim-eu
module: sim
simulation: {{boot_seconds: 0.5, action_seconds: 0.3}}
---
apiVersion: provisioner/v1
kind: Product
id: vps-s
name: VPS S
type: vps
specs: {{cpu_cores: 1, ram_gb: 1, storage_gb: 20}}
pricing: {{currency: EUR, monthly: \"4.00\"}}
locations: [sim-1]
os_images: [debian-12]
stock: 50
provisioning: {{account: sim-eu}}
---
apiVersion: provisioner/v1
kind: ProviderAccount
id: rack
module: manual
---
apiVersion: provisioner/v1
kind: Product
id: box
name: Dedicated box
type: dedicated
specs: {{cpu_cores: 8, ram_gb: 64, storage_gb: 1000}}
pricing: {{currency: EUR, monthly: \"99.00\"}}
locations: [dc-1]
os_images: [debian-12]
provisioning: {{account: rack, config: {{instructions: Rack a box in dc-1}}}}
---
apiVersion: provisioner/v1
kind: ProviderAccount
id: hetzner-broken
module: hetzner
endpoint: {hetzner}
credentials: {{token_env: CONSOLE_TEST_HCLOUD_TOKEN}}
---
apiVersion: provisioner/v1
kind: Product
id: cloud-s
name: Cloud S
type: vps
specs: {{cpu_cores: 2, ram_gb: 4, storage_gb: 40}}
pricing: {{currency: EUR, monthly: \"5.00\"}}
locations: [fsn1]
os_images: [debian-12]
provisioning: {{account: hetzner-broken, config: {{server_type: cx22}}}}
---
apiVersion: provisioner/v1
kind: WebhookEndpoint
id: billing
url: {hook}
secret_env: CONSOLE_TEST_WEBHOOK_SECRET
"
    )
}

/// A Hetzner API that refuses every token, as Hetzner does a revoked one.
async fn refusing_hetzner() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            r#"{"error":{"code":"unauthorized","message":"unable to authenticate","details":{}}}"#,
        )
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

/// ChromeDriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Option<PathBuf> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

async fn start_driver(path: &PathBuf) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver { child, url }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    // ChromeDriver is on loopback: plain HTTP, no TLS stack.
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

struct Run {
    base: String,
    store: SqlStore,
    http: reqwest::Client,
    billing: String,
}

impl Run {
    async fn api(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.billing)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    async fn until(&self, what: &str, id: i64, ok: impl Fn(&provisioner::store::Instance) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let i = self.store.instance(id).await.unwrap().unwrap();
            if ok(&i) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: instance {id} is {:?} ({:?})",
                i.observed_status,
                i.status_reason
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until the page shows `text` (the page is not reloaded).
async fn see(b: &Client, text: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        // The page may be navigating: an element gone stale is looked for again.
        let body = match b.find(Locator::Css("body")).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if body.contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "never saw {text:?} in:\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn shot(b: &Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn sign_in(b: &Client, base: &str, token: &str) {
    b.goto(&format!("{base}/ui/signin")).await.unwrap();
    b.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    click(b, "form.signin button").await;
}

/// Posts a form from the page's own session, as a script on the page can: its status.
async fn post_from_page(b: &Client, path: &str, fields: Value) -> u64 {
    b.execute_async(
        "const [path, fields, done] = arguments;
         fetch(path, {method: 'POST', credentials: 'same-origin', redirect: 'manual',
                      body: new URLSearchParams(fields)})
           .then(r => done(r.status), e => done(String(e)));",
        vec![json!(path), fields],
    )
    .await
    .unwrap()
    .as_u64()
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_runs_the_fleet_from_the_console() {
    let Some(driver_path) = chromedriver() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser test: chromedriver is missing (scripts/test.sh installs it)"
        );
        eprintln!("console browser test SKIPPED: chromedriver is not installed (scripts/test.sh installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("catalog");
    std::fs::create_dir(&cat).unwrap();
    let hook = common::receiver::Receiver::start(|_, _, _| 204).await;
    std::fs::write(
        cat.join("c.yaml"),
        catalog(&refusing_hetzner().await, &hook.url("/hooks")),
    )
    .unwrap();
    std::env::set_var("CONSOLE_TEST_HCLOUD_TOKEN", "revoked-token");
    std::env::set_var(
        "CONSOLE_TEST_WEBHOOK_SECRET",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    );
    let url = format!("sqlite://{}", dir.path().join("console.db").display());
    let mut config = common::quick_daemon(&url, cat, "console-test");
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    let shutdown = CancellationToken::new();
    let running = start(config, shutdown.clone())
        .await
        .expect("daemon starts");
    let base = format!("http://{}", running.http.unwrap());
    let store = running.store.clone();
    let token = |name: &'static str, scope| {
        let store = store.clone();
        async move {
            let (t, hash) = provisioner::secrets::new_api_token();
            store
                .create_token(name, scope, &hash, "test")
                .await
                .unwrap();
            t.expose().to_owned()
        }
    };
    let admin = token("ops", Scope::Admin).await;
    let read = token("viewer", Scope::Read).await;
    let run = Run {
        base: base.clone(),
        store: store.clone(),
        http: reqwest::Client::new(),
        billing: token("whmcs", Scope::Billing).await,
    };
    let driver = start_driver(&driver_path).await;
    let profile = tempfile::tempdir().unwrap();
    let b = browser(&driver, profile.path()).await;

    // Signed out, every page leads to the sign-in form; a billing token is not let in.
    b.goto(&format!("{base}/ui/instances")).await.unwrap();
    assert!(b
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/ui/signin"));
    shot(&b, "signin").await;
    sign_in(&b, &base, &run.billing).await;
    see(&b, "the console takes admin or read tokens").await;
    sign_in(&b, &base, &admin).await;
    see(&b, "ops (admin)").await;

    // An order through the API becomes active on the instances page, without a reload.
    b.goto(&format!("{base}/ui/instances")).await.unwrap();
    b.execute("window.__notReloaded = true;", vec![])
        .await
        .unwrap();
    let order = run
        .api(
            "/v1/instances",
            json!({"customer_id": "cust-1", "product_id": "vps-s", "billing_ref": "inv-1"}),
        )
        .await;
    let id = order["id"].as_i64().unwrap();
    let row = format!("#rows tr[data-id='{id}'][data-observed='active']");
    let deadline = Instant::now() + PATIENCE;
    while b.find(Locator::Css(&row)).await.is_err() {
        assert!(Instant::now() < deadline, "the row never became active");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        b.execute("return window.__notReloaded === true;", vec![])
            .await
            .unwrap(),
        json!(true),
        "the page updated in place"
    );
    shot(&b, "instances").await;

    // Suspended with an abuse hold from its page: billing's unsuspend does not lift it.
    b.goto(&format!("{base}/ui/instances/{id}")).await.unwrap();
    b.find(Locator::Id("hold-kind"))
        .await
        .unwrap()
        .select_by_value("abuse")
        .await
        .unwrap();
    b.find(Locator::Id("hold-reason"))
        .await
        .unwrap()
        .send_keys("spam from this server")
        .await
        .unwrap();
    click(&b, "form[action$='/suspend'] button").await;
    see(&b, "Hold `abuse` placed").await;
    run.until("suspended by the hold", id, |i| {
        i.observed_status == ObservedStatus::Suspended
    })
    .await;
    run.api(
        &format!("/v1/instances/{id}/suspend"),
        json!({"reason": "non-payment"}),
    )
    .await;
    run.api(&format!("/v1/instances/{id}/unsuspend"), json!({}))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = store.instance(id).await.unwrap().unwrap();
    assert_eq!(
        held.observed_status,
        ObservedStatus::Suspended,
        "the abuse hold stands"
    );
    assert_eq!(held.holds, vec!["abuse".to_owned()]);
    b.refresh().await.unwrap();
    see(&b, "spam from this server").await;
    shot(&b, "instance").await;
    click(&b, "form[action$='/release'] button").await;
    see(&b, "Hold `abuse` released").await;
    run.until("active once the hold is released", id, |i| {
        i.observed_status == ObservedStatus::Active
    })
    .await;

    // The manual inbox: a dedicated box is racked and its task completed from the page.
    let boxed = run
        .api(
            "/v1/instances",
            json!({"customer_id": "cust-2", "product_id": "box"}),
        )
        .await;
    let box_id = boxed["id"].as_i64().unwrap();
    let deadline = Instant::now() + PATIENCE;
    let task = loop {
        let tasks = store.tasks(&Default::default()).await.unwrap();
        if let Some(t) = tasks.into_iter().find(|t| t.instance_id == box_id) {
            break t;
        }
        assert!(Instant::now() < deadline, "no task opened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    b.goto(&format!("{base}/ui/tasks")).await.unwrap();
    see(&b, "Rack a box in dc-1").await;
    shot(&b, "tasks").await;
    // A completion the CLI would refuse is refused here too, with the reason.
    click(
        &b,
        &format!("form[action='/ui/tasks/{}/complete'] button", task.id),
    )
    .await;
    see(&b, "needs").await;
    b.find(Locator::Id(&format!("ip-{}", task.id)))
        .await
        .unwrap()
        .send_keys("192.0.2.50")
        .await
        .unwrap();
    b.find(Locator::Id(&format!("password-{}", task.id)))
        .await
        .unwrap()
        .send_keys("correct-horse-battery")
        .await
        .unwrap();
    click(
        &b,
        &format!("form[action='/ui/tasks/{}/complete'] button", task.id),
    )
    .await;
    see(&b, &format!("Task {} done", task.id)).await;
    run.until("the box is active", box_id, |i| {
        i.observed_status == ObservedStatus::Active && i.ipv4.as_deref() == Some("192.0.2.50")
    })
    .await;

    // A failed instance (its provider refuses the token) is retried from the failures page.
    let cloud = run
        .api(
            "/v1/instances",
            json!({"customer_id": "cust-3", "product_id": "cloud-s"}),
        )
        .await;
    let cloud_id = cloud["id"].as_i64().unwrap();
    run.until("failed on the refused token", cloud_id, |i| {
        i.observed_status == ObservedStatus::Failed
    })
    .await;
    b.goto(&format!("{base}/ui/failures")).await.unwrap();
    see(&b, "failed:").await;
    shot(&b, "failures").await;
    click(&b, &format!("input[name='id'][value='{cloud_id}']")).await;
    click(&b, "form[action='/ui/failures/retry'] button").await;
    see(&b, &format!("Retrying {cloud_id}")).await;
    let history = store.history(cloud_id).await.unwrap();
    assert!(
        history
            .iter()
            .any(|t| t.action == "retry" && t.details["by"] == "token:ops"),
        "the retry is in the history with who did it"
    );

    // The other pages.
    b.goto(&format!("{base}/ui/webhooks")).await.unwrap();
    see(&b, "instance.provisioned").await;
    shot(&b, "webhooks").await;
    b.goto(&format!("{base}/ui/catalog")).await.unwrap();
    see(&b, "hetzner-broken").await;
    shot(&b, "catalog").await;
    b.goto(&format!("{base}/ui/")).await.unwrap();
    see(&b, "Converging now").await;
    shot(&b, "overview").await;
    b.set_window_size(360, 800).await.unwrap();
    b.goto(&format!("{base}/ui/instances")).await.unwrap();
    shot(&b, "instances-phone").await;
    b.set_window_size(1280, 900).await.unwrap();

    // Reveal is recorded; a form without its CSRF token is refused.
    b.goto(&format!("{base}/ui/instances/{id}")).await.unwrap();
    click(&b, "form[action$='/reveal'] button").await;
    see(&b, "Root password").await;
    assert!(store
        .history(id)
        .await
        .unwrap()
        .iter()
        .any(|t| t.action == "reveal" && t.details["by"] == "token:ops"));
    let reboots = store.instance(id).await.unwrap().unwrap().reboot_requested;
    assert_eq!(
        post_from_page(&b, &format!("/ui/instances/{id}/reboot"), json!({})).await,
        403
    );
    assert_eq!(
        post_from_page(
            &b,
            &format!("/ui/instances/{id}/reboot"),
            json!({"csrf": "forged"})
        )
        .await,
        403
    );
    assert_eq!(
        store.instance(id).await.unwrap().unwrap().reboot_requested,
        reboots
    );

    // A read token sees everything and can submit nothing, even with its session's token.
    click(&b, "form.signout button").await;
    b.goto(&format!("{base}/ui/")).await.unwrap();
    assert!(
        b.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/ui/signin"),
        "signed out"
    );
    sign_in(&b, &base, &read).await;
    see(&b, "viewer (read)").await;
    b.goto(&format!("{base}/ui/instances/{id}")).await.unwrap();
    see(&b, "History").await;
    assert!(
        b.find_all(Locator::Css("main form"))
            .await
            .unwrap()
            .is_empty(),
        "no form is shown to a read token"
    );
    let csrf = b
        .find(Locator::Css("form.signout input[name='csrf']"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    for (path, fields) in [
        (format!("/ui/instances/{id}/reboot"), json!({"csrf": csrf})),
        (
            format!("/ui/instances/{id}/suspend"),
            json!({"csrf": csrf, "kind": "abuse"}),
        ),
        (
            format!("/ui/tasks/{}/complete", task.id),
            json!({"csrf": csrf, "ip": "192.0.2.9"}),
        ),
        (
            "/ui/failures/retry".to_owned(),
            json!({"csrf": csrf, "id": cloud_id.to_string()}),
        ),
        ("/ui/webhooks/1/redeliver".to_owned(), json!({"csrf": csrf})),
    ] {
        assert_eq!(post_from_page(&b, &path, fields).await, 403, "{path}");
    }
    assert_eq!(
        store.instance(id).await.unwrap().unwrap().reboot_requested,
        reboots
    );
    assert!(store.holds(id).await.unwrap().is_empty());

    b.close().await.unwrap();
    drop(driver);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running.wait())
        .await
        .expect("stops");
}
