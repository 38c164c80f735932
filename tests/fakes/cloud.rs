//! Fake Hetzner Cloud (`/v1`) and DigitalOcean (`/v2`) APIs: one server model, two faces.
//!
//! Hetzner: `POST /servers` (201, unique names → 409 `uniqueness_error`, labels, root password
//! when no ssh key), `GET /servers` (`label_selector`, `name`, `page`, `per_page` ≤ 50,
//! `meta.pagination`), `GET|DELETE /servers/{id}`, `POST /servers/{id}/actions/{cmd}` (power,
//! `change_type` refused with `server_not_stopped` unless off, `rebuild` returning a new root
//! password; 423 `locked` while one of those runs), `GET /servers/{id}/actions`,
//! `GET /actions/{id}`, `PUT /servers/{id}` (`labels` replace the whole set; keys and values
//! checked against the documented rules → 400 `invalid_input`), `RateLimit-*` headers, errors
//! as `{"error": {"code", "message"}}`.
//! DigitalOcean: `POST /droplets` (202 + `links.actions`), `GET /droplets` (`tag_name`,
//! `per_page` ≤ 200, `links.pages.next`), `GET|DELETE /droplets/{id}` (204),
//! `POST /droplets/{id}/actions` (`resize` of a powered-off droplet, `rebuild`; 422 "pending
//! event" while one runs, the droplet `locked`), `GET /droplets/{id}/actions`,
//! `GET /actions/{id}`, `POST /tags` (201; name `^[a-zA-Z0-9_\-:]+$` else 422),
//! `POST|DELETE /tags/{tag}/resources` (204; 404 for a tag that does not exist, as the
//! document says), `ratelimit-*` and `retry-after`, errors as `{"id", "message", "request_id"}`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::{kind_of, serve, unix_now, Bucket, Faults, Ledger};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Hetzner,
    DigitalOcean,
}

#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub flavor: Flavor,
    pub token: String,
    pub boot: Duration,
    pub action: Duration,
    /// Bucket capacity and refill per second.
    pub limit: (u32, f64),
    pub faults: Faults,
    /// Soft reboots never finish (the OS ignores ACPI): only a hard reset works.
    pub reboot_hangs: bool,
}

impl CloudConfig {
    pub fn new(flavor: Flavor, token: &str) -> CloudConfig {
        CloudConfig {
            flavor,
            token: token.into(),
            boot: Duration::from_millis(300),
            action: Duration::from_millis(150),
            limit: (10_000, 10_000.0),
            faults: Faults::default(),
            reboot_hangs: false,
        }
    }
}

#[derive(Debug)]
struct FServer {
    id: i64,
    name: String,
    labels: BTreeMap<String, String>,
    tags: Vec<String>,
    status: String,
    next: Option<(Instant, String)>,
    /// Server type or size slug.
    plan: String,
    /// A change of plan or rebuild running until then (the plan it takes at the end).
    busy: Option<(Instant, Option<String>)>,
}

#[derive(Debug)]
struct FAction {
    id: i64,
    command: String,
    done_at: Option<Instant>,
    resource: i64,
    started: chrono::DateTime<chrono::Utc>,
}

struct Inner {
    cfg: CloudConfig,
    /// DigitalOcean tags that exist (made by `POST /tags` or by a droplet created with them).
    tag_names: std::collections::BTreeSet<String>,
    servers: BTreeMap<i64, FServer>,
    actions: HashMap<i64, FAction>,
    next_id: i64,
    ledger: Ledger,
    bucket: Bucket,
    started: Instant,
    mutations: u64,
    creates: u64,
}

/// A running fake cloud.
#[derive(Clone)]
pub struct Cloud {
    inner: Arc<Mutex<Inner>>,
    /// Base URL, as an account's `endpoint` (`http://127.0.0.1:port/v1` or `/v2`).
    pub url: String,
}

struct Answer {
    status: StatusCode,
    body: Option<Value>,
    delay: Duration,
}

fn answer(status: StatusCode, body: Value) -> Answer {
    Answer {
        status,
        body: Some(body),
        delay: Duration::ZERO,
    }
}

impl Cloud {
    pub async fn start(cfg: CloudConfig) -> Cloud {
        let prefix = match cfg.flavor {
            Flavor::Hetzner => "/v1",
            Flavor::DigitalOcean => "/v2",
        };
        let (cap, rate) = cfg.limit;
        let inner = Arc::new(Mutex::new(Inner {
            cfg,
            tag_names: std::collections::BTreeSet::new(),
            servers: BTreeMap::new(),
            actions: HashMap::new(),
            next_id: 1000,
            ledger: Ledger::default(),
            bucket: Bucket::new(cap, rate),
            started: Instant::now(),
            mutations: 0,
            creates: 0,
        }));
        let state = inner.clone();
        let router = axum::Router::new().fallback(move |req: Request<Body>| {
            let state = state.clone();
            async move { handle(state, req).await }
        });
        let addr = serve(router).await;
        Cloud {
            inner,
            url: format!("http://{addr}{prefix}"),
        }
    }

    pub fn ledger(&self) -> Ledger {
        self.inner.lock().unwrap().ledger.clone()
    }

    /// Sets the status of a server as if someone changed it behind our back.
    pub fn set_status(&self, id: &str, status: &str) {
        let mut s = self.inner.lock().unwrap();
        if let Some(server) = s.servers.get_mut(&id.parse().unwrap()) {
            server.status = status.into();
            server.next = None;
        }
    }

    /// Servers that exist now.
    pub fn live(&self) -> usize {
        self.inner.lock().unwrap().servers.len()
    }

    /// Adds `n` servers owned by provisioner (for listing benchmarks).
    pub fn seed(&self, n: usize) {
        let mut s = self.inner.lock().unwrap();
        for k in 0..n {
            let id = s.next_id;
            s.next_id += 1;
            let instance = 1_000_000 + k as i64;
            let mut labels = BTreeMap::new();
            labels.insert("provisioner-instance".to_owned(), instance.to_string());
            s.servers.insert(
                id,
                FServer {
                    id,
                    name: format!("provisioner-{instance}"),
                    labels,
                    tags: vec![
                        "provisioner".into(),
                        format!("provisioner-instance:{instance}"),
                    ],
                    status: "running".into(),
                    next: None,
                    plan: "cx22".into(),
                    busy: None,
                },
            );
        }
    }

    /// A server made by hand in the provider's console (running, on `plan`), with `labels`
    /// (Hetzner) or `tags` (DigitalOcean) of its own; its id.
    pub fn seed_unowned(&self, plan: &str, labels: &[(&str, &str)], tags: &[&str]) -> String {
        let mut s = self.inner.lock().unwrap();
        let running = if s.cfg.flavor == Flavor::Hetzner {
            "running"
        } else {
            "active"
        };
        let id = s.next_id;
        s.next_id += 1;
        for t in tags {
            s.tag_names.insert((*t).to_owned());
        }
        s.servers.insert(
            id,
            FServer {
                id,
                name: format!("by-hand-{id}"),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                status: running.into(),
                next: None,
                plan: plan.into(),
                busy: None,
            },
        );
        id.to_string()
    }

    /// A server's labels, tags and status; `None` when it does not exist.
    pub fn marks(&self, id: &str) -> Option<(BTreeMap<String, String>, Vec<String>, String)> {
        let s = self.inner.lock().unwrap();
        let srv = s.servers.get(&id.parse().ok()?)?;
        Some((srv.labels.clone(), srv.tags.clone(), srv.status.clone()))
    }

    /// Deletes a server behind our back.
    pub fn remove(&self, id: &str) {
        self.inner
            .lock()
            .unwrap()
            .servers
            .remove(&id.parse().unwrap());
    }

    pub fn reset_ledger(&self) {
        let mut s = self.inner.lock().unwrap();
        s.ledger = Ledger::default();
        s.started = Instant::now();
    }
}

async fn handle(state: Arc<Mutex<Inner>>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let (answer, headers) = {
        let mut s = state.lock().unwrap();
        s.process(&parts.method, &parts.uri, &parts.headers, &bytes)
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut b = Response::builder().status(answer.status);
    for (k, v) in headers {
        b = b.header(k, v);
    }
    match answer.body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

fn query(uri: &axum::http::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

impl Inner {
    fn hetzner(&self) -> bool {
        self.cfg.flavor == Flavor::Hetzner
    }

    fn error(&self, status: StatusCode, code: &str, message: &str) -> Answer {
        if self.hetzner() {
            answer(
                status,
                json!({"error": {"code": code, "message": message, "details": null}}),
            )
        } else {
            answer(
                status,
                json!({"id": code, "message": message, "request_id": "fake-req"}),
            )
        }
    }

    fn rate_headers(&mut self) -> Vec<(String, String)> {
        let limit = self.bucket.capacity as u64;
        let remaining = self.bucket.remaining();
        let reset = if self.hetzner() {
            unix_now() + self.bucket.until_full().ceil() as u64
        } else {
            unix_now() + self.bucket.until_one().ceil() as u64
        };
        vec![
            (
                "x-request-id".into(),
                format!("fake-{}", self.ledger.requests),
            ),
            ("RateLimit-Limit".into(), limit.to_string()),
            ("RateLimit-Remaining".into(), remaining.to_string()),
            ("RateLimit-Reset".into(), reset.to_string()),
        ]
    }

    fn advance(&mut self) {
        let now = Instant::now();
        for s in self.servers.values_mut() {
            if let Some((at, status)) = &s.next {
                if now >= *at {
                    s.status = status.clone();
                    s.next = None;
                }
            }
            if let Some((at, plan)) = &s.busy {
                if now >= *at {
                    if let Some(p) = plan {
                        s.plan = p.clone();
                    }
                    s.busy = None;
                }
            }
        }
    }

    fn process(
        &mut self,
        method: &Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (Answer, Vec<(String, String)>) {
        let elapsed = self.started.elapsed();
        self.ledger.requests += 1;
        let path = uri.path().to_owned();
        let kind = kind_of(method.as_str(), &path);
        *self.ledger.by_kind.entry(kind).or_default() += 1;
        let spurious = self
            .cfg
            .faults
            .spurious_429_every
            .is_some_and(|n| self.ledger.requests.is_multiple_of(n));
        if spurious {
            self.ledger.throttled += 1;
            self.ledger.throttled_at.push(elapsed);
            let mut h = self.rate_headers();
            if !self.hetzner() {
                h.push(("retry-after".into(), "1".into()));
            }
            let code = if self.hetzner() {
                "rate_limit_exceeded"
            } else {
                "too_many_requests"
            };
            return (
                self.error(StatusCode::TOO_MANY_REQUESTS, code, "Slow down."),
                h,
            );
        }
        if !self.bucket.take() {
            self.ledger.throttled += 1;
            self.ledger.throttled_at.push(elapsed);
            let mut h = self.rate_headers();
            if !self.hetzner() {
                h.push((
                    "retry-after".into(),
                    (self.bucket.until_one().ceil() as u64).max(1).to_string(),
                ));
            }
            let code = if self.hetzner() {
                "rate_limit_exceeded"
            } else {
                "too_many_requests"
            };
            return (
                self.error(
                    StatusCode::TOO_MANY_REQUESTS,
                    code,
                    "API Rate limit exceeded.",
                ),
                h,
            );
        }
        self.ledger.served_at.push(elapsed);
        let headers_out = self.rate_headers();
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if auth != format!("Bearer {}", self.cfg.token) {
            self.ledger.refused += 1;
            return (
                self.error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "Unable to authenticate you",
                ),
                headers_out,
            );
        }
        if *method != Method::GET {
            self.mutations += 1;
            if let Some(n) = self.cfg.faults.server_error_every {
                if self.mutations.is_multiple_of(n) {
                    let code = if self.hetzner() {
                        "unavailable"
                    } else {
                        "server_error"
                    };
                    return (
                        self.error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            code,
                            "service temporarily unavailable",
                        ),
                        headers_out,
                    );
                }
            }
        }
        self.advance();
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let q = query(uri);
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut a = match (self.cfg.flavor, method.clone(), segments.as_slice()) {
            (Flavor::Hetzner, Method::GET, ["v1", "servers"]) => self.h_list(&q),
            (Flavor::Hetzner, Method::POST, ["v1", "servers"]) => self.h_create(&body),
            (Flavor::Hetzner, Method::GET, ["v1", "servers", id]) => self
                .with_server(id, |s, srv| {
                    answer(StatusCode::OK, json!({"server": s.h_server(srv)}))
                }),
            (Flavor::Hetzner, Method::DELETE, ["v1", "servers", id]) => self.delete(id),
            (Flavor::Hetzner, Method::PUT, ["v1", "servers", id]) => self.h_update(id, &body),
            (Flavor::Hetzner, Method::POST, ["v1", "servers", id, "actions", cmd]) => {
                self.act(id, cmd, &body)
            }
            (Flavor::Hetzner, Method::GET, ["v1", "servers", id, "actions"]) => {
                self.actions_of(id, "actions")
            }
            (Flavor::Hetzner, Method::GET, ["v1", "actions", id]) => self.action(id),
            (Flavor::DigitalOcean, Method::GET, ["v2", "droplets"]) => self.d_list(&q),
            (Flavor::DigitalOcean, Method::POST, ["v2", "droplets"]) => self.d_create(&body),
            (Flavor::DigitalOcean, Method::GET, ["v2", "droplets", id]) => self
                .with_server(id, |s, srv| {
                    answer(StatusCode::OK, json!({"droplet": s.d_droplet(srv)}))
                }),
            (Flavor::DigitalOcean, Method::DELETE, ["v2", "droplets", id]) => self.delete(id),
            (Flavor::DigitalOcean, Method::POST, ["v2", "droplets", id, "actions"]) => {
                let kind = body["type"].as_str().unwrap_or("").to_owned();
                self.act(id, &kind, &body)
            }
            (Flavor::DigitalOcean, Method::GET, ["v2", "droplets", id, "actions"]) => {
                self.actions_of(id, "actions")
            }
            (Flavor::DigitalOcean, Method::GET, ["v2", "actions", id]) => self.action(id),
            (Flavor::DigitalOcean, Method::POST, ["v2", "tags"]) => self.d_tag_create(&body),
            (
                Flavor::DigitalOcean,
                Method::POST | Method::DELETE,
                ["v2", "tags", tag, "resources"],
            ) => {
                let tag = percent_encoding::percent_decode_str(tag)
                    .decode_utf8_lossy()
                    .into_owned();
                self.d_tag_resources(&tag, &body, *method == Method::POST)
            }
            _ => self.error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        };
        if a.delay.is_zero() {
            a.delay = self.cfg.faults.latency;
        }
        (a, headers_out)
    }

    fn with_server(&self, id: &str, f: impl FnOnce(&Self, &FServer) -> Answer) -> Answer {
        match id.parse::<i64>().ok().and_then(|id| self.servers.get(&id)) {
            Some(srv) => f(self, srv),
            None => self.error(StatusCode::NOT_FOUND, "not_found", "server not found"),
        }
    }

    fn h_server(&self, s: &FServer) -> Value {
        json!({
            "id": s.id, "name": s.name, "status": s.status,
            "created": "2026-11-21T10:00:00+00:00",
            "public_net": {
                "ipv4": {"ip": format!("203.0.113.{}", s.id % 250), "blocked": false, "dns_ptr": "x"},
                "ipv6": {"ip": format!("2001:db8:{:x}::/64", s.id), "blocked": false, "dns_ptr": []},
                "floating_ips": []
            },
            "private_net": [], "server_type": {"name": s.plan}, "datacenter": {}, "location": {},
            "image": null, "iso": null, "rescue_enabled": false, "locked": false,
            "backup_window": null, "outgoing_traffic": null, "ingoing_traffic": null,
            "included_traffic": null, "primary_disk_size": 40,
            "protection": {"delete": false, "rebuild": false}, "labels": s.labels
        })
    }

    fn d_droplet(&self, s: &FServer) -> Value {
        let v4 = if s.status == "new" {
            json!([])
        } else {
            json!([{"ip_address": format!("203.0.113.{}", s.id % 250), "netmask": "255.255.255.0", "gateway": "203.0.113.1", "type": "public"}])
        };
        json!({
            "id": s.id, "name": s.name, "memory": 1024, "vcpus": 1, "disk": 25, "locked": s.busy.is_some(),
            "status": s.status, "created_at": "2026-11-21T10:00:00Z", "features": [],
            "backup_ids": [], "next_backup_window": null, "snapshot_ids": [], "image": {},
            "volume_ids": [], "size": {}, "size_slug": s.plan,
            "networks": {"v4": v4, "v6": []}, "region": {}, "tags": s.tags
        })
    }

    fn new_action(&mut self, command: &str, resource: i64, takes: Option<Duration>) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.actions.insert(
            id,
            FAction {
                id,
                command: command.into(),
                done_at: takes.map(|d| Instant::now() + d),
                resource,
                started: chrono::Utc::now(),
            },
        );
        self.action_json(id)
    }

    fn action_json(&self, id: i64) -> Value {
        let a = &self.actions[&id];
        let done = a.done_at.is_some_and(|t| Instant::now() >= t);
        if self.hetzner() {
            json!({"id": a.id, "command": a.command,
                   "status": if done { "success" } else { "running" },
                   "progress": if done { 100 } else { 0 }, "started": a.started.to_rfc3339(),
                   "finished": null, "resources": [{"id": a.resource, "type": "server"}], "error": null})
        } else {
            json!({"id": a.id, "type": a.command,
                   "status": if done { "completed" } else { "in-progress" },
                   "started_at": a.started.to_rfc3339(), "completed_at": null,
                   "resource_id": a.resource, "resource_type": "droplet", "region_slug": "fra1"})
        }
    }

    fn action(&self, id: &str) -> Answer {
        match id
            .parse::<i64>()
            .ok()
            .filter(|id| self.actions.contains_key(id))
        {
            Some(id) => answer(StatusCode::OK, json!({"action": self.action_json(id)})),
            None => self.error(StatusCode::NOT_FOUND, "not_found", "action not found"),
        }
    }

    fn record_create(&mut self, instance: Option<i64>) {
        if let Some(i) = instance {
            *self.ledger.created_for.entry(i).or_default() += 1;
        }
    }

    fn slow_create(&mut self) -> Option<Duration> {
        self.creates += 1;
        let (n, delay) = self.cfg.faults.slow_create_every?;
        self.creates.is_multiple_of(n).then_some(delay)
    }

    fn h_create(&mut self, body: &Value) -> Answer {
        let name = body["name"].as_str().unwrap_or("").to_owned();
        for key in ["server_type", "image", "name"] {
            if body[key].as_str().is_none_or(str::is_empty) {
                return self.error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_input",
                    &format!("invalid input in field '{key}'"),
                );
            }
        }
        if self.servers.values().any(|s| s.name == name) {
            return self.error(
                StatusCode::CONFLICT,
                "uniqueness_error",
                "server name is already used",
            );
        }
        let labels: BTreeMap<String, String> =
            serde_json::from_value(body["labels"].clone()).unwrap_or_default();
        let id = self.next_id;
        self.next_id += 1;
        self.record_create(
            labels
                .get("provisioner-instance")
                .and_then(|v| v.parse().ok()),
        );
        let boot = self.cfg.boot;
        self.servers.insert(
            id,
            FServer {
                id,
                name,
                labels,
                tags: vec![],
                status: "initializing".into(),
                next: Some((Instant::now() + boot, "running".into())),
                plan: body["server_type"].as_str().unwrap_or("").into(),
                busy: None,
            },
        );
        let action = self.new_action("create_server", id, Some(boot));
        let password = if body["ssh_keys"].as_array().is_some_and(|k| !k.is_empty()) {
            Value::Null
        } else {
            json!(format!("fake-root-{id}"))
        };
        let server = self.h_server(&self.servers[&id]);
        let mut a = answer(
            StatusCode::CREATED,
            json!({"server": server, "action": action, "next_actions": [], "root_password": password}),
        );
        if let Some(d) = self.slow_create() {
            a.delay = d;
        }
        a
    }

    fn d_create(&mut self, body: &Value) -> Answer {
        for key in ["size", "image", "name"] {
            if body[key].as_str().is_none_or(str::is_empty) {
                return self.error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_entity",
                    &format!("{key} is required"),
                );
            }
        }
        let tags: Vec<String> = serde_json::from_value(body["tags"].clone()).unwrap_or_default();
        self.tag_names.extend(tags.iter().cloned());
        let id = self.next_id;
        self.next_id += 1;
        self.record_create(
            tags.iter()
                .find_map(|t| t.strip_prefix("provisioner-instance:")?.parse().ok()),
        );
        let boot = self.cfg.boot;
        self.servers.insert(
            id,
            FServer {
                id,
                name: body["name"].as_str().unwrap_or("").into(),
                labels: BTreeMap::new(),
                tags,
                status: "new".into(),
                next: Some((Instant::now() + boot, "active".into())),
                plan: body["size"].as_str().unwrap_or("").into(),
                busy: None,
            },
        );
        let action = self.new_action("create", id, Some(boot));
        let droplet = self.d_droplet(&self.servers[&id]);
        let mut a = answer(
            StatusCode::ACCEPTED,
            json!({"droplet": droplet, "links": {"actions": [{"id": action["id"], "rel": "create", "href": "x"}]}}),
        );
        if let Some(d) = self.slow_create() {
            a.delay = d;
        }
        a
    }

    /// `PUT /servers/{id}`: the labels sent replace the server's whole set.
    fn h_update(&mut self, id: &str, body: &Value) -> Answer {
        let Some(id) = id
            .parse::<i64>()
            .ok()
            .filter(|id| self.servers.contains_key(id))
        else {
            return self.error(StatusCode::NOT_FOUND, "not_found", "server not found");
        };
        if let Some(labels) = body.get("labels") {
            let Ok(labels) = serde_json::from_value::<BTreeMap<String, String>>(labels.clone())
            else {
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "invalid_input",
                    "labels must map strings to strings",
                );
            };
            let word = |s: &str, empty: bool| {
                (empty || !s.is_empty())
                    && s.len() <= 63
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if labels
                .iter()
                .any(|(k, v)| !word(k, false) || !word(v, true))
            {
                return self.error(StatusCode::BAD_REQUEST, "invalid_input", "invalid label");
            }
            self.servers.get_mut(&id).unwrap().labels = labels;
        }
        if let Some(name) = body.get("name").and_then(Value::as_str) {
            self.servers.get_mut(&id).unwrap().name = name.into();
        }
        answer(
            StatusCode::OK,
            json!({"server": self.h_server(&self.servers[&id])}),
        )
    }

    fn d_tag_create(&mut self, body: &Value) -> Answer {
        let name = body["name"].as_str().unwrap_or("");
        let valid = !name.is_empty()
            && name.len() <= 255
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-:".contains(c));
        if !valid {
            return self.error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable_entity",
                "invalid tag name",
            );
        }
        self.tag_names.insert(name.into());
        answer(
            StatusCode::CREATED,
            json!({"tag": {"name": name, "resources": {"count": 0}}}),
        )
    }

    fn d_tag_resources(&mut self, tag: &str, body: &Value, add: bool) -> Answer {
        if !self.tag_names.contains(tag) {
            return self.error(
                StatusCode::NOT_FOUND,
                "not_found",
                "The resource you were accessing could not be found.",
            );
        }
        let resources = body["resources"].as_array().cloned().unwrap_or_default();
        for r in &resources {
            let id = r["resource_id"]
                .as_str()
                .and_then(|id| id.parse::<i64>().ok());
            let (Some(id), Some("droplet")) = (id, r["resource_type"].as_str()) else {
                return self.error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_entity",
                    "resource_id must be a string id of a droplet",
                );
            };
            let Some(srv) = self.servers.get_mut(&id) else {
                return self.error(StatusCode::NOT_FOUND, "not_found", "droplet not found");
            };
            srv.tags.retain(|t| t != tag);
            if add {
                srv.tags.push(tag.to_owned());
            }
        }
        Answer {
            status: StatusCode::NO_CONTENT,
            body: None,
            delay: Duration::ZERO,
        }
    }

    fn delete(&mut self, id: &str) -> Answer {
        let Some(id) = id
            .parse::<i64>()
            .ok()
            .filter(|id| self.servers.contains_key(id))
        else {
            return self.error(StatusCode::NOT_FOUND, "not_found", "server not found");
        };
        self.servers.remove(&id);
        self.ledger.deleted += 1;
        if self.hetzner() {
            let action = self.new_action("delete_server", id, Some(Duration::ZERO));
            answer(StatusCode::OK, json!({"action": action}))
        } else {
            Answer {
                status: StatusCode::NO_CONTENT,
                body: None,
                delay: Duration::ZERO,
            }
        }
    }

    /// A server's actions, newest first (Hetzner `sort=id:desc`; DigitalOcean's order).
    fn actions_of(&self, id: &str, key: &str) -> Answer {
        let Ok(id) = id.parse::<i64>() else {
            return self.error(StatusCode::NOT_FOUND, "not_found", "server not found");
        };
        let mut ids: Vec<i64> = self
            .actions
            .values()
            .filter(|a| a.resource == id)
            .map(|a| a.id)
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let list: Vec<Value> = ids.iter().map(|a| self.action_json(*a)).collect();
        answer(
            StatusCode::OK,
            json!({ key: list, "meta": {"pagination": {"page": 1, "per_page": 25, "previous_page": null, "next_page": null, "last_page": 1, "total_entries": ids.len()}}, "links": {}}),
        )
    }

    /// A change of plan or a rebuild: refused while another runs (Hetzner 423 `locked`,
    /// DigitalOcean 422 "pending event"); a change needs the server off.
    fn busy_action(&mut self, id: i64, command: &str, body: &Value) -> Answer {
        let hetzner = self.hetzner();
        let d = self.cfg.action;
        let srv = &self.servers[&id];
        if srv.busy.is_some() {
            return if hetzner {
                self.error(
                    StatusCode::LOCKED,
                    "locked",
                    "server is locked: another action is running",
                )
            } else {
                self.error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_entity",
                    "Droplet already has a pending event.",
                )
            };
        }
        let (plan_key, resizing) = if hetzner {
            ("server_type", command == "change_type")
        } else {
            ("size", command == "resize")
        };
        if resizing {
            let Some(plan) = body[plan_key].as_str().filter(|p| !p.is_empty()) else {
                return self.error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_input",
                    &format!("invalid input in field '{plan_key}'"),
                );
            };
            if srv.status != "off" {
                return if hetzner {
                    self.error(
                        StatusCode::CONFLICT,
                        "server_not_stopped",
                        "server must be stopped before changing its type",
                    )
                } else {
                    self.error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unprocessable_entity",
                        "Droplet is currently on. Please power it off to run this event.",
                    )
                };
            }
            let plan = plan.to_owned();
            let srv = self.servers.get_mut(&id).unwrap();
            srv.busy = Some((Instant::now() + d * 2, Some(plan)));
            self.ledger.resizes += 1;
            let action = self.new_action(
                if hetzner {
                    "change_server_type"
                } else {
                    "resize"
                },
                id,
                Some(d * 2),
            );
            return answer(StatusCode::CREATED, json!({"action": action}));
        }
        if body["image"].as_str().is_none_or(str::is_empty) {
            return self.error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                "invalid input in field 'image'",
            );
        }
        let srv = self.servers.get_mut(&id).unwrap();
        srv.busy = Some((Instant::now() + d * 2, None));
        if hetzner {
            srv.status = "rebuilding".into();
            srv.next = Some((Instant::now() + d * 2, "running".into()));
        }
        self.ledger.rebuilds += 1;
        let action = self.new_action(
            if hetzner { "rebuild_server" } else { "rebuild" },
            id,
            Some(d * 2),
        );
        if hetzner {
            answer(
                StatusCode::CREATED,
                json!({"action": action, "root_password": format!("fake-rebuilt-{id}-{}", self.ledger.rebuilds)}),
            )
        } else {
            answer(StatusCode::CREATED, json!({"action": action}))
        }
    }

    fn act(&mut self, id: &str, command: &str, body: &Value) -> Answer {
        let Some(id) = id
            .parse::<i64>()
            .ok()
            .filter(|id| self.servers.contains_key(id))
        else {
            return self.error(StatusCode::NOT_FOUND, "not_found", "server not found");
        };
        if matches!(command, "change_type" | "resize" | "rebuild") {
            return self.busy_action(id, command, body);
        }
        let d = self.cfg.action;
        let now = Instant::now();
        let (running, off) = if self.hetzner() {
            ("running", "off")
        } else {
            ("active", "off")
        };
        let (transient, target, takes): (Option<&str>, Option<&str>, Option<Duration>) =
            match command {
                "shutdown" => (Some("stopping"), Some(off), Some(d)),
                "poweroff" | "power_off" => (None, Some(off), Some(d)),
                "poweron" | "power_on" => (Some("starting"), Some(running), Some(d)),
                "reboot" => (
                    None,
                    None,
                    if self.cfg.reboot_hangs { None } else { Some(d) },
                ),
                "reset" | "power_cycle" => (None, Some(running), Some(d)),
                _ => {
                    return self.error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_input",
                        "unknown action",
                    )
                }
            };
        let hetzner = self.hetzner();
        let srv = self.servers.get_mut(&id).unwrap();
        if let Some(target) = target {
            // Hetzner shows the transition in the status; DigitalOcean only when it is done.
            if let (true, Some(t)) = (hetzner, transient) {
                srv.status = t.into();
            }
            srv.next = Some((now + d, target.into()));
        }
        let action = self.new_action(command, id, takes);
        answer(StatusCode::CREATED, json!({"action": action}))
    }

    fn page_params(q: &[(String, String)], max: usize, default: usize) -> (usize, usize) {
        let get = |k: &str| {
            q.iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.parse::<usize>().ok())
        };
        (
            get("page").unwrap_or(1).max(1),
            get("per_page").unwrap_or(default).clamp(1, max),
        )
    }

    fn h_list(&self, q: &[(String, String)]) -> Answer {
        let (page, per_page) = Self::page_params(q, 50, 25);
        let selector = q
            .iter()
            .find(|(k, _)| k == "label_selector")
            .map(|(_, v)| v.clone());
        let name = q.iter().find(|(k, _)| k == "name").map(|(_, v)| v.clone());
        let matching: Vec<&FServer> = self
            .servers
            .values()
            .filter(|s| name.as_ref().is_none_or(|n| &s.name == n))
            .filter(|s| selector.as_ref().is_none_or(|sel| selects(sel, &s.labels)))
            .collect();
        let total = matching.len();
        let last = total.div_ceil(per_page).max(1);
        let servers: Vec<Value> = matching
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|s| self.h_server(s))
            .collect();
        answer(
            StatusCode::OK,
            json!({
                "servers": servers,
                "meta": {"pagination": {
                    "page": page, "per_page": per_page,
                    "previous_page": if page > 1 { json!(page - 1) } else { Value::Null },
                    "next_page": if page < last { json!(page + 1) } else { Value::Null },
                    "last_page": last, "total_entries": total
                }}
            }),
        )
    }

    fn d_list(&self, q: &[(String, String)]) -> Answer {
        let (page, per_page) = Self::page_params(q, 200, 20);
        let tag = q
            .iter()
            .find(|(k, _)| k == "tag_name")
            .map(|(_, v)| v.clone());
        let matching: Vec<&FServer> = self
            .servers
            .values()
            .filter(|s| tag.as_ref().is_none_or(|t| s.tags.contains(t)))
            .collect();
        let total = matching.len();
        let last = total.div_ceil(per_page).max(1);
        let droplets: Vec<Value> = matching
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|s| self.d_droplet(s))
            .collect();
        let mut pages = serde_json::Map::new();
        if page < last {
            pages.insert(
                "next".into(),
                json!(format!(
                    "https://api.digitalocean.com/v2/droplets?page={}&per_page={per_page}",
                    page + 1
                )),
            );
            pages.insert(
                "last".into(),
                json!(format!(
                    "https://api.digitalocean.com/v2/droplets?page={last}&per_page={per_page}"
                )),
            );
        }
        answer(
            StatusCode::OK,
            json!({"droplets": droplets, "links": {"pages": pages}, "meta": {"total": total}}),
        )
    }
}

/// Hetzner's label selector: `k`, `!k`, `k=v`, `k==v`, `k!=v`, comma = AND.
fn selects(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    selector.split(',').all(|term| {
        let term = term.trim();
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k.trim()).is_none_or(|x| x != v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.get(k.trim()).is_some_and(|x| x == v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            !labels.contains_key(k.trim())
        } else {
            labels.contains_key(term)
        }
    })
}
