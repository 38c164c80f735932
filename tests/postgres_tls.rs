//! PostgreSQL over TLS, as managed databases require it: the real binary against the test
//! server that `scripts/with-postgres.sh` starts with `ssl=on` and certificates of a test CA
//! (`TEST_PG_SSL_DIR`), with libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// The test server's certificates and a fresh database on it, or `None` (skipped with the
/// PostgreSQL half, and failing in CI) when there is no TLS-enabled test server.
async fn setup() -> Option<(String, PathBuf)> {
    let url = common::fresh_postgres_url().await?;
    let Some(dir) = std::env::var_os("TEST_PG_SSL_DIR") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the TLS tests: TEST_PG_SSL_DIR is not set (scripts/with-postgres.sh sets it when openssl is installed)"
        );
        eprintln!("TLS tests SKIPPED: TEST_PG_SSL_DIR is not set");
        return None;
    };
    Some((url, PathBuf::from(dir)))
}

fn provisioner(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("PROVISIONER_SECRET_KEY", KEY)
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the provisioner binary")
}

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// How many connections to `database` the server sees encrypted and in plain text.
async fn connections(admin_url: &str, database: &str) -> (i64, i64) {
    let admin = sqlx::PgPool::connect(admin_url).await.unwrap();
    let row: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
           FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_one(&admin)
    .await
    .unwrap();
    admin.close().await;
    row
}

#[tokio::test]
async fn verify_full_with_the_servers_ca_connects_encrypted() {
    let Some((url, ssl)) = setup().await else {
        return;
    };
    let ca = ssl.join("ca.pem");
    let verified = with_params(
        &url,
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let o = provisioner(&verified, &["migrate"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = provisioner(&verified, &["instances", "list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("0 instance(s)"), "{}", text(&o));

    // The store's connections are encrypted, as the server sees them.
    let store = provisioner::store::SqlStore::open(&verified, &Default::default())
        .await
        .unwrap();
    let database = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let admin = url.replace(&format!("/{database}"), "/postgres");
    let (encrypted, plain) = connections(&admin, database).await;
    assert!(
        encrypted >= 1 && plain == 0,
        "{encrypted} encrypted, {plain} plain"
    );
    store.close().await;

    // `require` encrypts without checking the chain; `prefer` (the default) encrypts when
    // the server offers it.
    for mode in ["sslmode=require", "sslmode=prefer"] {
        let o = provisioner(&with_params(&url, mode), &["instances", "list"]);
        assert_eq!(o.status.code(), Some(0), "{mode}: {}", text(&o));
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_or_the_system_store_is_refused() {
    let Some((url, ssl)) = setup().await else {
        return;
    };
    let other = ssl.join("other-ca.pem");
    for params in [
        format!("sslmode=verify-full&sslrootcert={}", other.display()),
        format!("sslmode=verify-ca&sslrootcert={}", other.display()),
        // libpq: `require` with a root certificate given verifies the chain.
        format!("sslmode=require&sslrootcert={}", other.display()),
        // libpq 16: the system's trust store, which does not hold the test CA.
        "sslrootcert=system".to_owned(),
    ] {
        let o = provisioner(&with_params(&url, &params), &["migrate"]);
        assert_eq!(o.status.code(), Some(2), "{params}: {}", text(&o));
        let out = text(&o).to_lowercase();
        assert!(
            out.contains("cannot open database") && out.contains("certificate"),
            "{params}: {out}"
        );
    }
    let o = provisioner(
        &with_params(&url, "sslrootcert=system&sslmode=require"),
        &["migrate"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("sslrootcert=system needs sslmode=verify-full"),
        "{}",
        text(&o)
    );
}

#[tokio::test]
async fn a_client_certificate_authenticates() {
    let Some((url, ssl)) = setup().await else {
        return;
    };
    // The role logs in only over TLS with a certificate (with-postgres.sh's pg_hba.conf).
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let database = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    sqlx::raw_sql(&format!(
        "DO $$ BEGIN CREATE ROLE provisioner_cert LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         ALTER DATABASE {database} OWNER TO provisioner_cert;
         GRANT ALL ON SCHEMA public TO provisioner_cert;"
    ))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let as_cert = url.replacen("postgres://provisioner@", "postgres://provisioner_cert@", 1);
    assert_ne!(as_cert, url);
    let certified = with_params(
        &as_cert,
        &format!(
            "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            ssl.join("ca.pem").display(),
            ssl.join("client.pem").display(),
            ssl.join("client.key").display()
        ),
    );
    let o = provisioner(&certified, &["migrate"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let without = with_params(
        &as_cert,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            ssl.join("ca.pem").display()
        ),
    );
    let o = provisioner(&without, &["instances", "list"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("certificate"),
        "the server's reason is shown: {}",
        text(&o)
    );
}
