//! The billing API through real HTTP against a running daemon, on SQLite and PostgreSQL:
//! tokens and scopes, problem details, products, instances with filters and pages, history,
//! and the OpenAPI document describing what the tests receive.

mod common;

use std::time::Duration;

use provisioner::reconcile::daemon::{start, Running};
use provisioner::store::{NewInstance, Scope, SqlStore, Store};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const CATALOG: &str = "apiVersion: provisioner/v1
kind: ProviderAccount
id: sim-api
module: sim
simulation: {boot_seconds: 0.2, action_seconds: 0.1}
---
apiVersion: provisioner/v1
kind: Product
id: vps-s
name: VPS S
type: vps
specs: {cpu_cores: 1, ram_gb: 0.5, storage_gb: 10}
pricing: {currency: EUR, monthly: \"3.49\", setup_fee: \"1.00\"}
locations: [sim-1, sim-2]
os_images: [debian-12, ubuntu-24.04]
stock: 10
provisioning: {account: sim-api}
---
apiVersion: provisioner/v1
kind: ProviderAccount
id: rack
module: manual
---
apiVersion: provisioner/v1
kind: Product
id: box
name: Box
type: dedicated
specs: {cpu_cores: 8, ram_gb: 64, storage_gb: 1000}
pricing: {currency: EUR, monthly: \"99.00\"}
locations: [dc-1]
os_images: [debian-12]
provisioning: {account: rack}
";

struct Api {
    _dir: tempfile::TempDir,
    running: Option<Running>,
    shutdown: CancellationToken,
    store: SqlStore,
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn start(url: Option<String>) -> Api {
        Api::start_with(url, "").await
    }

    /// Starts the daemon on the test catalog and `more` documents.
    async fn start_with(url: Option<String>, more: &str) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let cat = dir.path().join("catalog");
        std::fs::create_dir(&cat).unwrap();
        std::fs::write(cat.join("c.yaml"), CATALOG).unwrap();
        if !more.is_empty() {
            std::fs::write(cat.join("notify.yaml"), more).unwrap();
        }
        let url =
            url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("api.db").display()));
        if url.starts_with("postgres") {
            std::env::set_var(
                "PROVISIONER_SECRET_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            );
        }
        let mut config = common::quick_daemon(&url, cat, "api-test");
        config.listen = Some("127.0.0.1:0".parse().unwrap());
        let shutdown = CancellationToken::new();
        let running = start(config, shutdown.clone())
            .await
            .expect("daemon starts");
        let base = format!("http://{}", running.http.expect("listening"));
        let store = running.store.clone();
        Api {
            _dir: dir,
            running: Some(running),
            shutdown,
            store,
            base,
            http: reqwest::Client::new(),
        }
    }

    async fn token(&self, name: &str, scope: Scope) -> String {
        let (token, hash) = provisioner::secrets::new_api_token();
        self.store
            .create_token(name, scope, &hash, "test")
            .await
            .unwrap();
        token.expose().to_owned()
    }

    /// GET `path` with `token`: status, content type, body.
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = resp.bytes().await.unwrap();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, kind, json)
    }

    /// POST `body` to `path` with `token` and an optional idempotency key: status, headers,
    /// body.
    async fn post(
        &self,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: &str,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(k) = key {
            req = req.header("idempotency-key", format!("\"{k}\""));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap();
        (
            status,
            headers,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    /// Reads the event feed from `after` until an event of `kind` about `instance` comes;
    /// every event read on the way.
    async fn events_until(
        &self,
        token: &str,
        after: &mut String,
        kind: &str,
        instance: i64,
    ) -> Vec<Value> {
        let mut read = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, _, page) = self
                .get(&format!("/v1/events?after={after}&wait=5"), Some(token))
                .await;
            assert_eq!(status, 200, "{page}");
            *after = page["next_cursor"].as_str().unwrap().to_owned();
            for e in page["events"].as_array().unwrap() {
                read.push(e.clone());
                if e["type"] == kind && e["data"]["instance_id"] == instance {
                    return read;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {kind} for {instance}; read {read:#?}"
            );
        }
    }

    /// `/metrics`, as text.
    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until `/metrics` shows `line` (counters move just after what they count).
    async fn metrics_show(&self, line: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let metrics = self.metrics().await;
            if metrics.contains(line) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{line} never in:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), r.wait())
                .await
                .expect("stops");
        }
    }
}

/// A problem body of `status` and `code`, as RFC 9457 shapes it.
fn is_problem(got: &(u16, String, Value), status: u16, code: &str) {
    let (s, kind, body) = got;
    assert_eq!(*s, status, "{body}");
    assert_eq!(kind, "application/problem+json", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["type"], format!("urn:provisioner:problem:{code}"));
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
}

/// Every member of `value` is a property of the schema `name` of the document, and every
/// required property is present: the document describes what the API sends.
fn matches_schema(doc: &Value, name: &str, value: &Value) {
    let schema = &doc["components"]["schemas"][name];
    let properties = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {name} in the document: {schema}"));
    for key in value.as_object().unwrap().keys() {
        assert!(
            properties.contains_key(key),
            "{name}.{key} is not in the document"
        );
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        assert!(
            value.get(required.as_str().unwrap()).is_some(),
            "{name}.{required} is required but missing from {value}"
        );
    }
}

async fn the_front_door(url: Option<String>) {
    let api = Api::start(url).await;
    let read = api.token("dashboard", Scope::Read).await;

    // The document is public and describes every route.
    let (status, _, doc) = api.get("/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/v1/products",
        "/v1/products/{id}",
        "/v1/instances",
        "/v1/instances/{id}",
        "/v1/instances/{id}/history",
    ] {
        let route = &doc["paths"][path]["get"];
        assert!(route.is_object(), "{path} is in the document");
        assert!(
            route["responses"]["401"].is_object(),
            "{path} documents its 401"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // No token, a wrong one, a revoked one: 401 with the challenge.
    is_problem(&api.get("/v1/products", None).await, 401, "unauthorized");
    is_problem(
        &api.get("/v1/products", Some("pvt_nope")).await,
        401,
        "unauthorized",
    );
    let old = api.token("old", Scope::Admin).await;
    assert_eq!(api.get("/v1/products", Some(&old)).await.0, 200);
    assert!(api.store.revoke_token("old").await.unwrap());
    is_problem(
        &api.get("/v1/products", Some(&old)).await,
        401,
        "unauthorized",
    );
    let resp = api
        .http
        .get(format!("{}/v1/products", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers().get("www-authenticate").unwrap(),
        "Bearer realm=\"provisioner\""
    );

    // Products as customers may order them; stock left counts live servers.
    let (status, _, products) = api.get("/v1/products", Some(&read)).await;
    assert_eq!(status, 200);
    let p = products
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "vps-s")
        .expect("vps-s is listed");
    matches_schema(&doc, "ProductView", p);
    assert_eq!(p["id"], "vps-s");
    assert_eq!(p["specs"]["ram_gb"], "0.5");
    assert_eq!(p["pricing"]["monthly"], "3.49");
    assert_eq!(
        p["os_images"],
        serde_json::json!(["debian-12", "ubuntu-24.04"])
    );
    assert_eq!(
        (p["stock"].as_i64(), p["stock_left"].as_i64()),
        (Some(10), Some(10))
    );
    assert!(
        p.get("provisioning").is_none(),
        "how it is provisioned is not shown"
    );
    is_problem(
        &api.get("/v1/products/nope", Some(&read)).await,
        404,
        "unknown_product",
    );

    // Instances: filters, pages, one, its history.
    let mut ids = Vec::new();
    for k in 0..7 {
        let i = api
            .store
            .create_instance(&NewInstance {
                customer_id: format!("cust-{}", k % 2),
                product_id: "vps-s".into(),
                billing_ref: Some(format!("whmcs-{k}")),
                ..NewInstance::default()
            })
            .await
            .unwrap();
        ids.push(i.id);
    }
    let mut seen = Vec::new();
    let mut path = "/v1/instances?limit=3".to_owned();
    loop {
        let (status, _, page) = api.get(&path, Some(&read)).await;
        assert_eq!(status, 200, "{page}");
        matches_schema(&doc, "InstancePage", &page);
        for i in page["instances"].as_array().unwrap() {
            matches_schema(&doc, "InstanceView", i);
            seen.push(i["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/instances?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every instance once, in order, across pages");
    let (_, _, page) = api
        .get("/v1/instances?customer_id=cust-1", Some(&read))
        .await;
    assert_eq!(page["instances"].as_array().unwrap().len(), 3);
    let (_, _, page) = api
        .get("/v1/instances?billing_ref=whmcs-4", Some(&read))
        .await;
    assert_eq!(page["instances"][0]["id"], ids[4]);
    assert_eq!(page["instances"].as_array().unwrap().len(), 1);
    for bad in [
        "/v1/instances?status=sleeping",
        "/v1/instances?desired_status=gone",
        "/v1/instances?limit=0",
        "/v1/instances?limit=many",
    ] {
        is_problem(&api.get(bad, Some(&read)).await, 400, "invalid_parameter");
    }
    is_problem(
        &api.get("/v1/instances?cursor=xyz", Some(&read)).await,
        400,
        "invalid_cursor",
    );
    let (status, _, one) = api
        .get(&format!("/v1/instances/{}", ids[0]), Some(&read))
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["billing_ref"], "whmcs-0");
    assert!(
        one.get("root_password").is_none(),
        "never a secret in a view"
    );
    is_problem(
        &api.get("/v1/instances/999999", Some(&read)).await,
        404,
        "unknown_instance",
    );
    is_problem(
        &api.get("/v1/instances/abc", Some(&read)).await,
        404,
        "unknown_instance",
    );
    is_problem(
        &api.get("/v1/nothing", Some(&read)).await,
        404,
        "no_such_route",
    );
    // The daemon provisions them meanwhile: the history shows it, and the stock left shrinks.
    let start = std::time::Instant::now();
    loop {
        let (_, _, h) = api
            .get(&format!("/v1/instances/{}/history", ids[0]), Some(&read))
            .await;
        let done = h
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["action"] == "create" && t["outcome"] == "succeeded");
        if done {
            for t in h.as_array().unwrap() {
                matches_schema(&doc, "TransitionView", t);
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never provisioned: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, p) = api.get("/v1/products/vps-s", Some(&read)).await;
    assert!(p["stock_left"].as_i64().unwrap() < 10, "{p}");
    api.stop().await;
}

/// Billing's whole life of a server over HTTP: order (once per key and per `billing_ref`),
/// suspend with a hold that billing's unsuspend does not lift, reboot, reinstall, change of
/// product, credentials for the welcome e-mail (recorded), terminate; scopes and refusals.
async fn billing_over_http(url: Option<String>) {
    let api = Api::start(url).await;
    let read = api.token("ro", Scope::Read).await;
    let billing = api.token("whmcs", Scope::Billing).await;
    let admin = api.token("ops", Scope::Admin).await;
    let (_, _, doc) = api.get("/v1/openapi.json", None).await;
    for (path, method) in [
        ("/v1/instances", "post"),
        ("/v1/instances/{id}/suspend", "post"),
        ("/v1/instances/{id}/unsuspend", "post"),
        ("/v1/instances/{id}/terminate", "post"),
        ("/v1/instances/{id}/reboot", "post"),
        ("/v1/instances/{id}/reinstall", "post"),
        ("/v1/instances/{id}/change-product", "post"),
        ("/v1/instances/{id}/credentials", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is in the document"
        );
    }
    let order = r#"{"customer_id": "cust-7", "product_id": "vps-s", "os_image": "ubuntu-24.04",
                    "billing_ref": "whmcs-77", "ssh_keys": ["ssh-ed25519 AAAAC3Nz a@b"]}"#;

    // A read token cannot order.
    let (status, _, body) = api.post("/v1/instances", &read, None, order).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );

    // Ordered once; the retry with the same key gets the same answer, marked as replayed.
    let (status, headers, created) = api
        .post("/v1/instances", &billing, Some("k-1"), order)
        .await;
    assert_eq!(status, 201, "{created}");
    matches_schema(&doc, "InstanceView", &created);
    let id = created["id"].as_i64().unwrap();
    assert_eq!(headers["location"], format!("/v1/instances/{id}"));
    let (status, headers, again) = api
        .post("/v1/instances", &billing, Some("k-1"), order)
        .await;
    assert_eq!((status, &again), (201, &created));
    assert_eq!(headers["idempotent-replayed"], "true");
    // The same key with another body is refused; the key of another token is its own.
    let other = order.replace("cust-7", "cust-8");
    let (status, _, body) = api
        .post("/v1/instances", &billing, Some("k-1"), &other)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{body}"
    );
    // A key whose first request is still running: 409.
    let fingerprint = provisioner::secrets::api_token_hash(&format!("POST /v1/instances\n{other}"));
    api.store
        .begin_key("whmcs", "k-busy", &fingerprint)
        .await
        .unwrap();
    let (status, _, body) = api
        .post("/v1/instances", &billing, Some("k-busy"), &other)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("idempotency_key_in_use")),
        "{body}"
    );
    // The same order under a new key: its billing_ref is taken, and the answer says where.
    let (status, headers, body) = api
        .post("/v1/instances", &billing, Some("k-2"), order)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("billing_ref_taken")),
        "{body}"
    );
    assert_eq!(headers["location"], format!("/v1/instances/{id}"));
    let (_, _, page) = api
        .get("/v1/instances?customer_id=cust-7", Some(&read))
        .await;
    assert_eq!(
        page["instances"].as_array().unwrap().len(),
        1,
        "one order, one instance"
    );
    for (bad, code) in [
        (
            r#"{"customer_id": "c", "product_id": "nope"}"#,
            "unknown_product",
        ),
        (
            r#"{"customer_id": "c", "product_id": "vps-s", "location": "mars"}"#,
            "location_not_offered",
        ),
        (
            r#"{"customer_id": "c", "product_id": "vps-s", "os_image": "dos-6"}"#,
            "os_not_offered",
        ),
    ] {
        let (status, _, body) = api.post("/v1/instances", &billing, None, bad).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some(code)),
            "{bad}: {body}"
        );
    }
    for bad in [
        r#"{"customer_id": "c"}"#,
        "not json",
        r#"{"customer_id": "c", "product_id": "vps-s", "colour": "red"}"#,
    ] {
        let (status, _, body) = api.post("/v1/instances", &billing, None, bad).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_body")),
            "{bad}: {body}"
        );
    }
    let (status, _, body) = api
        .post("/v1/instances", &billing, None, &"x".repeat(100 * 1024))
        .await;
    assert_eq!(status, 413, "a body over the cap is refused: {body}");

    // Wait for the server, then read its credentials as admin (not as billing).
    let start = std::time::Instant::now();
    loop {
        let (_, _, i) = api.get(&format!("/v1/instances/{id}"), Some(&read)).await;
        if i["observed_status"] == "active" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never active: {i}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let creds = format!("/v1/instances/{id}/credentials");
    assert_eq!(api.get(&creds, Some(&billing)).await.0, 403);
    let (status, _, c) = api.get(&creds, Some(&admin)).await;
    assert_eq!(status, 200, "{c}");
    assert!(
        c["root_password"]
            .as_str()
            .is_some_and(|p| p.starts_with("sim-")),
        "{c}"
    );
    assert!(c["ipv4"].is_string(), "{c}");
    let (_, _, h) = api
        .get(&format!("/v1/instances/{id}/history"), Some(&read))
        .await;
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .any(|t| t["action"] == "reveal" && t["actor"] == "token:ops"),
        "the read is in the history: {h}"
    );

    // An abuse hold outlives billing's unsuspend; lifting it lets the server run.
    let path = |what: &str| format!("/v1/instances/{id}/{what}");
    let (status, _, i) = api
        .post(
            &path("suspend"),
            &billing,
            None,
            r#"{"hold": "abuse", "reason": "phishing"}"#,
        )
        .await;
    assert_eq!(
        (status, &i["holds"]),
        (202, &serde_json::json!(["abuse"])),
        "{i}"
    );
    let (status, _, i) = api.post(&path("unsuspend"), &billing, None, "").await;
    assert_eq!(
        (status, &i["desired_status"], &i["holds"]),
        (202, &Value::from("active"), &serde_json::json!(["abuse"]))
    );
    let (status, _, body) = api
        .post(&path("unsuspend"), &billing, None, r#"{"hold": "billing"}"#)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_hold")),
        "{body}"
    );
    let (status, _, i) = api
        .post(&path("unsuspend"), &billing, None, r#"{"hold": "abuse"}"#)
        .await;
    assert_eq!((status, &i["holds"]), (202, &serde_json::json!([])));
    let (status, _, body) = api
        .post(&path("suspend"), &billing, None, r#"{"hold": "Two Words"}"#)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("refused")),
        "{body}"
    );

    // Reboot, reinstall, change of product: counters and product move; refusals say why.
    let (_, _, i) = api.post(&path("reboot"), &billing, Some("r-1"), "").await;
    assert_eq!(i["reboot_requested"], 1);
    let (_, _, i) = api.post(&path("reboot"), &billing, Some("r-1"), "").await;
    assert_eq!(i["reboot_requested"], 1, "a retried reboot is one reboot");
    let (status, _, body) = api
        .post(
            &path("reinstall"),
            &billing,
            None,
            r#"{"os_image": "dos-6"}"#,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("os_not_offered")),
        "{body}"
    );
    let (_, _, i) = api
        .post(
            &path("reinstall"),
            &billing,
            None,
            r#"{"os_image": "debian-12"}"#,
        )
        .await;
    assert_eq!(
        (&i["reinstall_requested"], &i["os_image"]),
        (&Value::from(1), &Value::from("debian-12"))
    );
    let (status, _, body) = api
        .post(
            &path("change-product"),
            &billing,
            None,
            r#"{"product_id": "nope"}"#,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("unknown_product")),
        "{body}"
    );
    is_problem(
        &(
            404,
            "application/problem+json".into(),
            api.post("/v1/instances/999999/reboot", &billing, None, "")
                .await
                .2,
        ),
        404,
        "unknown_instance",
    );

    // Terminated: final.
    let (status, _, i) = api
        .post(
            &path("terminate"),
            &billing,
            None,
            r#"{"reason": "cancelled"}"#,
        )
        .await;
    assert_eq!(
        (status, &i["desired_status"]),
        (202, &Value::from("terminated"))
    );
    let (status, _, body) = api.post(&path("reboot"), &billing, None, "").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("instance_terminated")),
        "{body}"
    );
    api.stop().await;
}

/// A dedicated server from the manual inbox, over HTTP: ordered, its provision task listed and
/// completed by an admin (with the CLI's checks), the instance active with the password the
/// admin recorded.
async fn the_manual_inbox_over_http(url: Option<String>) {
    let api = Api::start(url).await;
    let billing = api.token("whmcs", Scope::Billing).await;
    let admin = api.token("ops", Scope::Admin).await;
    let (status, _, i) = api
        .post(
            "/v1/instances",
            &billing,
            None,
            r#"{"customer_id": "c", "product_id": "box"}"#,
        )
        .await;
    assert_eq!(status, 201, "{i}");
    let id = i["id"].as_i64().unwrap();
    let start = std::time::Instant::now();
    let task = loop {
        let (status, _, tasks) = api.get("/v1/tasks?state=open", Some(&admin)).await;
        assert_eq!(status, 200, "{tasks}");
        if let Some(t) = tasks
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["instance_id"] == id)
        {
            break t.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no task opened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (&task["kind"], &task["state"]),
        (&Value::from("provision"), &Value::from("open"))
    );
    let (_, _, doc) = api.get("/v1/openapi.json", None).await;
    matches_schema(&doc, "TaskView", &task);
    is_problem(
        &(
            400,
            "application/problem+json".into(),
            api.get("/v1/tasks?state=later", Some(&admin)).await.2,
        ),
        400,
        "invalid_parameter",
    );
    let complete = format!("/v1/tasks/{}/complete", task["id"]);
    let (status, _, body) = api
        .post(&complete, &billing, None, r#"{"ip": "192.0.2.10"}"#)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    for bad in [r#"{"ip": "300.1.2.3"}"#, r#"{"note": "racked"}"#] {
        let (status, _, body) = api.post(&complete, &admin, None, bad).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("invalid_completion")),
            "{bad}: {body}"
        );
    }
    let done = r#"{"ip": "192.0.2.10", "password": "hunter2-but-longer", "note": "rack 4"}"#;
    let (status, _, t) = api.post(&complete, &admin, Some("c-1"), done).await;
    assert_eq!(
        (status, &t["state"], &t["has_password"]),
        (200, &Value::from("done"), &Value::from(true)),
        "{t}"
    );
    assert!(
        !t.to_string().contains("hunter2"),
        "the password is never shown: {t}"
    );
    let (status, headers, again) = api.post(&complete, &admin, Some("c-1"), done).await;
    assert_eq!((status, &again), (200, &t));
    assert_eq!(headers["idempotent-replayed"], "true");
    let (status, _, body) = api.post(&complete, &admin, None, done).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("task_not_open")),
        "{body}"
    );
    let (status, _, body) = api
        .post("/v1/tasks/999999/complete", &admin, None, done)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_task")),
        "{body}"
    );
    let start = std::time::Instant::now();
    loop {
        let (_, _, i) = api.get(&format!("/v1/instances/{id}"), Some(&admin)).await;
        if i["observed_status"] == "active" {
            assert_eq!(i["ipv4"], "192.0.2.10");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never active: {i}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, c) = api
        .get(&format!("/v1/instances/{id}/credentials"), Some(&admin))
        .await;
    assert_eq!(c["root_password"], "hunter2-but-longer");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manual_inbox_over_http_on_sqlite() {
    the_manual_inbox_over_http(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manual_inbox_over_http_on_postgres() {
    let Some(url) = common::fresh_postgres_url().await else {
        return;
    };
    the_manual_inbox_over_http(Some(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_over_http_on_sqlite() {
    billing_over_http(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_over_http_on_postgres() {
    let Some(url) = common::fresh_postgres_url().await else {
        return;
    };
    billing_over_http(Some(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_door_on_sqlite() {
    the_front_door(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_door_on_postgres() {
    let Some(url) = common::fresh_postgres_url().await else {
        return;
    };
    the_front_door(Some(url)).await;
}

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// Waits until `check` holds, for up to a minute; what it returned.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = check() {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn events_webhooks_and_mail(url: Option<String>, env: &str) {
    // The billing receiver fails an event's first delivery with a 500; the other endpoint is
    // gone for good.
    let receiver = common::receiver::Receiver::start(|path, _, before| match path {
        "/billing" if before == 0 => 500,
        "/billing" => 204,
        _ => 410,
    })
    .await;
    let smtp = common::smtp::Smtp::start().await;
    std::env::set_var(env, SECRET);
    let more = format!(
        "apiVersion: provisioner/v1
kind: WebhookEndpoint
id: billing
url: {billing}
secret_env: {env}
---
apiVersion: provisioner/v1
kind: WebhookEndpoint
id: old-panel
url: {gone}
secret_env: {env}
events: [instance.provisioned]
timeout_seconds: 5
---
apiVersion: provisioner/v1
kind: EmailNotifier
id: ops
smtp: {{host: 127.0.0.1, port: {port}, tls: none}}
from: provisioner <provisioner@example.test>
to: [ops@example.test]
",
        billing = receiver.url("/billing"),
        gone = receiver.url("/gone"),
        port = smtp.port,
    );
    let api = Api::start_with(url, &more).await;
    let read = api.token("feed", Scope::Read).await;
    let billing = api.token("panel", Scope::Billing).await;

    // The feed: no token, a strange cursor, a wait too long.
    is_problem(&api.get("/v1/events", None).await, 401, "unauthorized");
    is_problem(
        &api.get("/v1/events?after=bogus", Some(&read)).await,
        400,
        "invalid_cursor",
    );
    is_problem(
        &api.get("/v1/events?wait=3600", Some(&read)).await,
        400,
        "invalid_parameter",
    );
    let (_, _, doc) = api.get("/v1/openapi.json", None).await;
    assert!(
        doc["paths"]["/v1/events"]["get"].is_object(),
        "the feed is documented"
    );

    // An order becomes a server: the feed says so, with its address and no secret.
    let (status, _, created) = api
        .post(
            "/v1/instances",
            &billing,
            Some("o-1"),
            r#"{"customer_id": "cust-1", "product_id": "vps-s", "billing_ref": "inv-1"}"#,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let mut cursor = "0".to_owned();
    let seen = api
        .events_until(&read, &mut cursor, "instance.provisioned", id)
        .await;
    let provisioned = seen.last().unwrap().clone();
    matches_schema(&doc, "EventView", &provisioned);
    assert!(provisioned["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(provisioned["data"]["billing_ref"], "inv-1");
    assert!(provisioned["data"]["ipv4"].is_string(), "{provisioned}");
    assert_eq!(provisioned["data"]["observed_status"], "active");
    let text = provisioned.to_string();
    assert!(
        !text.contains("password") && !text.contains("ssh"),
        "{text}"
    );

    // The metrics an SRE alerts on, in a format a Prometheus parser reads.
    api.metrics_show("provisioner_time_to_converge_seconds_count{action=\"create\"} 1")
        .await;
    // The gauges are refreshed every 2 s.
    api.metrics_show("provisioner_instances{observed_status=\"active\"} 1")
        .await;
    let text = api.metrics().await;
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    let find = |name: &str, label: (&str, &str)| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .unwrap_or_else(|| panic!("{name}{{{}={}}} in:\n{text}", label.0, label.1))
    };
    let converge = find("provisioner_time_to_converge_seconds", ("action", "create"));
    assert!(
        matches!(&converge.value, prometheus_parse::Value::Histogram(b) if !b.is_empty()),
        "{:?}",
        converge.value
    );
    find("provisioner_step_duration_seconds", ("action", "create"));
    find(
        "provisioner_provider_request_duration_seconds",
        ("call", "create"),
    );
    let active = find("provisioner_instances", ("observed_status", "active"));
    assert!(matches!(active.value, prometheus_parse::Value::Gauge(n) if n >= 1.0));
    find("provisioner_instances", ("observed_status", "lost"));
    find(
        "provisioner_build_info",
        ("version", env!("CARGO_PKG_VERSION")),
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "process_resident_memory_bytes"),
        "process metrics"
    );

    // A long poll ends when the next event comes.
    let waiting = {
        let http = api.http.clone();
        let url = format!("{}/v1/events?after={cursor}&wait=20", api.base);
        let read = read.clone();
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(read)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, body) = api
        .post(
            &format!("/v1/instances/{id}/suspend"),
            &billing,
            None,
            r#"{"reason": "non-payment"}"#,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let page = waiting.await.unwrap();
    let first = &page["events"][0];
    assert_eq!(first["type"], "instance.suspended", "{page}");
    assert_eq!(first["data"]["instance_id"], id);
    // Nothing new: an empty page, and the same cursor to ask again with.
    let after = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, _, empty) = api
        .get(&format!("/v1/events?after={after}&wait=1"), Some(&read))
        .await;
    assert_eq!(empty["events"], Value::Array(vec![]), "{empty}");
    assert_eq!(empty["next_cursor"], after.as_str());

    // The webhook: signed, the first attempt answered 500, retried about 5 s later with the
    // same id and a new signature, then delivered.
    let event_id = provisioned["id"].as_str().unwrap().to_owned();
    let tries = eventually("the provisioned event delivered after a 500", || {
        let tries: Vec<_> = receiver
            .seen()
            .into_iter()
            .filter(|r| r.path == "/billing" && r.id == event_id)
            .collect();
        (tries.len() >= 2).then_some(tries)
    })
    .await;
    assert_eq!((tries[0].answered, tries[1].answered), (500, 204));
    let gap = tries[1].at - tries[0].at;
    assert!(gap >= Duration::from_millis(4400), "retried after {gap:?}");
    for t in &tries {
        assert!(common::receiver::verify(SECRET, t), "signature of {t:?}");
        let body: Value = serde_json::from_str(&t.body).unwrap();
        assert_eq!(body["type"], "instance.provisioned");
        assert_eq!(body["data"], provisioned["data"]);
        let ts: i64 = t.timestamp.parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 120, "{ts}");
    }
    // The log records the answer once the daemon has it (just after the receiver sent it).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        let log = api
            .store
            .deliveries(&provisioner::store::events::DeliveryFilter {
                endpoint_id: Some("billing".into()),
                state: None,
                limit: 100,
            })
            .await
            .unwrap();
        let d = log.into_iter().find(|d| d.event_id == event_id).unwrap();
        if d.state != provisioner::store::events::DeliveryState::Pending
            || std::time::Instant::now() > deadline
        {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (delivery.state, delivery.attempts, delivery.last_status),
        (
            provisioner::store::events::DeliveryState::Delivered,
            2,
            Some(204)
        )
    );
    let (_, attempts) = api.store.delivery(delivery.id).await.unwrap().unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![Some(500), Some(204)]
    );

    // The endpoint that answered 410 is disabled after one attempt, and hears nothing more.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let old = loop {
        let consumers = api.store.consumers().await.unwrap();
        let c = consumers
            .into_iter()
            .find(|c| c.name == "webhook:old-panel")
            .unwrap();
        if c.disabled_at.is_some() || std::time::Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(old.disabled_at.is_some(), "{old:?}");
    assert!(
        old.disabled_reason.as_deref().unwrap_or("").contains("410"),
        "{old:?}"
    );
    assert_eq!(
        receiver.seen().iter().filter(|r| r.path == "/gone").count(),
        1
    );

    api.metrics_show(
        "provisioner_webhook_attempts_total{endpoint=\"old-panel\",result=\"disabled\"} 1",
    )
    .await;
    api.metrics_show("provisioner_webhook_attempts_total{endpoint=\"billing\",result=\"retry\"}")
        .await;

    // Redelivery: the same id, signed again.
    let again = api.store.redeliver(delivery.id).await.unwrap();
    assert_eq!(again.event_id, event_id);
    eventually("the redelivery", || {
        (receiver
            .seen()
            .iter()
            .filter(|r| r.path == "/billing" && r.id == event_id)
            .count()
            >= 3)
            .then_some(())
    })
    .await;

    // A manual server: the admin is e-mailed the task.
    let (status, _, boxed) = api
        .post(
            "/v1/instances",
            &billing,
            None,
            r#"{"customer_id": "cust-2", "product_id": "box"}"#,
        )
        .await;
    assert_eq!(status, 201, "{boxed}");
    let box_id = boxed["id"].as_i64().unwrap();
    let mail = eventually("the task e-mail", || {
        smtp.messages()
            .into_iter()
            .find(|m| m.contains(&format!("instance {box_id}")))
    })
    .await;
    assert!(
        mail.contains("Subject: [provisioner] Manual task"),
        "{mail}"
    );
    assert!(mail.contains("To: ops@example.test"), "{mail}");
    assert!(mail.contains("provisioner tasks complete"), "{mail}");
    api.metrics_show("provisioner_emails_total{notifier=\"ops\",result=\"sent\"}")
        .await;
    // Only the events it asked for (the default: tasks, failures, losses).
    assert!(
        smtp.messages()
            .iter()
            .all(|m| !m.contains("instance.provisioned")),
        "{:?}",
        smtp.messages()
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_webhooks_and_mail_on_sqlite() {
    events_webhooks_and_mail(None, "API_TEST_WEBHOOK_SECRET_SQLITE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_webhooks_and_mail_on_postgres() {
    let Some(url) = common::fresh_postgres_url().await else {
        return;
    };
    events_webhooks_and_mail(Some(url), "API_TEST_WEBHOOK_SECRET_PG").await;
}

/// The receiver's own check of signatures agrees with the specification's published vector,
/// so what it accepts from the daemon is signed as Standard Webhooks says.
#[test]
fn the_test_receiver_verifies_the_specification_vector() {
    let mut r = common::receiver::Received {
        path: "/".into(),
        id: "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk".into(),
        timestamp: "1649367553".into(),
        signature: "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=".into(),
        body: r#"{"email":"test@example.com","username":"test_user"}"#.into(),
        at: std::time::Instant::now(),
        answered: 204,
    };
    assert!(common::receiver::verify(SECRET, &r));
    r.body = r#"{"email":"test@example.com","username":"test_user2"}"#.into();
    assert!(!common::receiver::verify(SECRET, &r));
}
