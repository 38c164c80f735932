//! A webhook receiver on 127.0.0.1 that records what it is sent, answers what the test
//! scripts, and verifies Standard Webhooks signatures with its own HMAC (not provisioner's).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use hmac::Mac;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    pub at: Instant,
    /// The status answered.
    pub answered: u16,
}

type Script = Box<dyn FnMut(&str, &str, usize) -> u16 + Send>;
type Shared = (Arc<Mutex<Vec<Received>>>, Arc<Mutex<Script>>);

/// The receiver; its `url(path)` goes in a catalog.
#[derive(Clone)]
pub struct Receiver {
    pub addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Starts a receiver. `script(path, webhook-id, how many times this id came to this path
    /// before)` gives the status to answer.
    pub async fn start(script: impl FnMut(&str, &str, usize) -> u16 + Send + 'static) -> Receiver {
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(Box::new(script)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = (seen.clone(), script);
        let app = axum::Router::new()
            .route(
                "/{*path}",
                axum::routing::post(
                    |axum::extract::State((seen, script)): axum::extract::State<Shared>,
                     uri: axum::http::Uri,
                     headers: axum::http::HeaderMap,
                     body: String| async move {
                        let h = |k: &str| {
                            headers
                                .get(k)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let path = uri.path().to_owned();
                        let id = h("webhook-id");
                        let mut seen = seen.lock().unwrap();
                        let before = seen.iter().filter(|r| r.path == path && r.id == id).count();
                        let answered = (script.lock().unwrap())(&path, &id, before);
                        seen.push(Received {
                            path,
                            id,
                            timestamp: h("webhook-timestamp"),
                            signature: h("webhook-signature"),
                            body,
                            at: Instant::now(),
                            answered,
                        });
                        axum::http::StatusCode::from_u16(answered).unwrap()
                    },
                ),
            )
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

/// Whether `r` carries a `v1` signature of its id, timestamp and body by `secret`
/// (`whsec_…`), compared in constant time by the MAC library.
pub fn verify(secret: &str, r: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    r.signature.split(' ').any(|sig| {
        let Some(b64) = sig.strip_prefix("v1,") else {
            return false;
        };
        let Ok(given) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return false;
        };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}.{}", r.id, r.timestamp, r.body).as_bytes());
        mac.verify_slice(&given).is_ok()
    })
}
