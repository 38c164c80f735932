//! Helpers shared by the integration tests: temporary catalogs and the example documents.

#![allow(dead_code)]

pub mod daemon;
pub mod receiver;
pub mod smtp;

use std::path::Path;

use tempfile::TempDir;

/// The account of the example, byte for byte.
pub const ACCOUNT: &str = "\
apiVersion: provisioner/v1
kind: ProviderAccount
id: hetzner-main
module: hetzner                # sim | manual | hetzner | digitalocean | ovh
endpoint: null                 # optional base-URL override
credentials: {token_env: HCLOUD_TOKEN}
rate_limit: {requests_per_hour: 3600}
";

/// The product of the example, byte for byte.
pub const PRODUCT: &str = "\
apiVersion: provisioner/v1
kind: Product
id: vps-starter
name: VPS Starter
group: vps
type: vps                      # vps | dedicated
description: Small cloud server
specs: {cpu_cores: 2, cpu_model: null, ram_gb: 4, storage_gb: 80, storage_type: nvme, bandwidth_tb: 2, ip_addresses: 1}
pricing: {currency: EUR, monthly: \"29.99\", quarterly: null, semiannually: null, yearly: \"299.99\", setup_fee: \"0\"}
locations: [fsn1, nbg1]
os_images: [ubuntu-24.04, debian-12]
features: [ddos-protection]
stock: null                    # absent or null: unlimited
active: true
provisioning:
  account: hetzner-main        # a ProviderAccount id
  config: {server_type: cx22}  # checked by the account's module
";

/// A temporary catalog directory holding `files` (relative path, content).
pub fn catalog(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    write_files(dir.path(), files);
    dir
}

/// Writes `files` below `dir`, creating directories as needed.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create catalog subdirectory");
        }
        std::fs::write(&path, text).expect("write catalog file");
    }
}

/// Replaces `from` by `to` in `text`, failing the test if `from` is not there (so a test never
/// silently checks the unmodified document).
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "test bug: {from:?} is not in the document"
    );
    text.replacen(from, to, 1)
}

/// `line:column` (1-based) of the first `needle` on line `line` of `text`.
pub fn at(text: &str, line: usize, needle: &str) -> String {
    let l = text.lines().nth(line - 1).expect("test bug: no such line");
    let byte = l
        .find(needle)
        .unwrap_or_else(|| panic!("test bug: {needle:?} not on line {line}: {l:?}"));
    format!("{line}:{}", l[..byte].chars().count() + 1)
}

/// The path to the example catalog shipped in the repository.
pub fn example_catalog() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog")
}

fn skip_banner() {
    use std::io::Write;
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        // Written around the test harness's capture, so it shows on a plain `cargo test`.
        let _ = writeln!(
            std::io::stderr(),
            "\n\
             ************************************************************************\n\
             * PostgreSQL half of the tests SKIPPED: TEST_DATABASE_URL is not set.   *\n\
             * Run `bash scripts/test.sh`, which starts a throwaway server.          *\n\
             ************************************************************************\n"
        );
    });
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{name}{query}", &base[..path_start])
}

/// A fresh, empty PostgreSQL database on the server of `TEST_DATABASE_URL`, as a URL; `None`
/// (with a loud banner) when no server is configured. In CI a missing server fails the test.
pub async fn fresh_postgres_url() -> Option<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PostgreSQL half: TEST_DATABASE_URL is not set (scripts/test.sh sets it)"
        );
        skip_banner();
        return None;
    };
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let crate_tag: String = env!("CARGO_CRATE_NAME")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let name = format!(
        "t_{}_{}_{}",
        crate_tag,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let admin = sqlx::PgPool::connect(&admin_url)
        .await
        .expect("connect to TEST_DATABASE_URL");
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await
        .expect("drop old test database");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    Some(with_database(&admin_url, &name))
}

/// A daemon configuration for in-process tests: `catalog` watched without file events, work
/// looked for every 20 ms, waits and retries in fractions of a second, named `owner`.
pub fn quick_daemon(
    url: &str,
    catalog: std::path::PathBuf,
    owner: &str,
) -> provisioner::reconcile::daemon::DaemonConfig {
    use std::time::Duration;
    let mut config = provisioner::reconcile::daemon::DaemonConfig::new(url, catalog);
    config.idle_poll = Duration::from_millis(20);
    config.owner = owner.into();
    config.timing.waiting = Duration::from_millis(300);
    config.timing.backoff_base = Duration::from_millis(100);
    config.timing.backoff_cap = Duration::from_secs(1);
    config.catalog_watch = provisioner::catalog::watch::WatchOptions {
        debounce: Duration::from_millis(50),
        rescan_interval: Duration::from_secs(5),
        watch_events: false,
    };
    config
}
