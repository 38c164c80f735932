//! Nothing created or lost by accident: the real binary on a mistyped path, a broken catalog,
//! a missing key — what an operator hits in the first hour.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use provisioner::secrets::{Keyring, SecretString};
use provisioner::store::{ConnectOptions, NewInstance, SqlStore, Store, TaskCompletion, TaskKind};

fn provisioner(dir: &Path, db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(args)
        .env("DATABASE_URL", db)
        .env_remove("PROVISIONER_SECRET_KEY")
        .env_remove("PROVISIONER_SECRET_KEY_FILE")
        .env_remove("PROVISIONER_SECRET_KEY_PREVIOUS")
        .env_remove("RUST_LOG")
        .current_dir(dir)
        .output()
        .expect("run provisioner")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sqlite(dir: &Path, name: &str) -> String {
    format!("sqlite://{}", dir.join(name).display())
}

#[test]
fn read_only_commands_never_create_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let catalog = common::example_catalog();
    let catalog = catalog.to_str().unwrap();
    let typo = sqlite(d, "provisoner.db");
    for args in [
        &["instances", "list"][..],
        &["instances", "show", "1"],
        &["instances", "history", "1"],
        &["instances", "set", "1", "--desired", "suspended"],
        &["instances", "reboot", "1"],
        &["instances", "retry", "1"],
        &[
            "instances",
            "create",
            "--customer",
            "c",
            "--product",
            "sim-vps-small",
            "--catalog",
            catalog,
        ],
        &["tasks", "list"],
        &["tasks", "complete", "1", "--ip", "192.0.2.1"],
        &["plan", "--catalog", catalog],
    ] {
        let o = provisioner(d, &typo, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("provisoner.db does not exist"),
            "{args:?} names the file: {}",
            text(&o)
        );
        assert!(
            std::fs::read_dir(d).unwrap().next().is_none(),
            "{args:?} created nothing"
        );
    }
    // An existing file that is not a provisioner database is not migrated by a reader either.
    std::fs::write(d.join("empty.db"), b"").unwrap();
    let o = provisioner(d, &sqlite(d, "empty.db"), &["instances", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("not a provisioner database") && text(&o).contains("provisioner migrate"),
        "{}",
        text(&o)
    );
}

#[test]
fn run_checks_the_catalog_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = sqlite(d, "new.db");
    let o = provisioner(d, &db, &["run", "--catalog", "missing-dir"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("missing-dir"), "{}", text(&o));

    common::write_files(
        d,
        &[(
            "broken/p.yaml",
            &common::edit(common::PRODUCT, "ram_gb: 4", "ram_gb: -4"),
        )],
    );
    let o = provisioner(
        d,
        &db,
        &["run", "--catalog", "broken", "--listen", "127.0.0.1:0"],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "an invalid catalog exits 1: {}",
        text(&o)
    );
    assert!(text(&o).contains("p.yaml:"), "{}", text(&o));
    let left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.iter().any(|f| f.starts_with("new.db")),
        "no database or key was created: {left:?}"
    );
}

#[test]
fn the_database_and_its_key_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = provisioner(d, &sqlite(d, "p.db"), &["migrate"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for file in ["p.db", "p.db.key"] {
        let mode = std::fs::metadata(d.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file} is {mode:o}");
    }
}

/// A database holding sealed secrets whose key file went missing (a restore without it, a
/// typo in the path): a new key would make every stored root password unreadable.
#[tokio::test]
async fn a_missing_key_is_never_silently_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = sqlite(d, "p.db");
    let o = provisioner(d, &db, &["migrate"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let key_file = d.join("p.db.key");
    let key_text = std::fs::read_to_string(&key_file).unwrap();
    let ring = Keyring::from_base64(key_text.trim()).unwrap();

    // An admin recorded a root password for a manual server.
    let store = SqlStore::open_existing(&db, &ConnectOptions::default())
        .await
        .unwrap();
    let i = store
        .create_instance(&NewInstance {
            customer_id: "c".into(),
            product_id: "manual-box".into(),
            ..NewInstance::default()
        })
        .await
        .unwrap();
    let claim = store.claim_due("test", 1, 60.0).await.unwrap().remove(0);
    assert_eq!(claim.instance.id, i.id);
    let task = store
        .open_task(&claim.lease, TaskKind::Provision, &serde_json::json!({}))
        .await
        .unwrap();
    let sealed = ring.seal(&SecretString::new("hunter2"), &task.secret_context());
    store
        .complete_task(
            task.id,
            &TaskCompletion {
                by: "admin".into(),
                details: serde_json::json!({"ip": "192.0.2.10"}),
                secret: Some(sealed),
            },
        )
        .await
        .unwrap();
    store.close().await;

    std::fs::rename(&key_file, d.join("elsewhere.key")).unwrap();
    for args in [
        &["migrate"][..],
        &[
            "run",
            "--catalog",
            common::example_catalog().to_str().unwrap(),
        ],
    ] {
        let o = provisioner(d, &db, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let out = text(&o);
        assert!(
            out.contains("p.db.key does not exist")
                && out.contains(ring.primary_id())
                && out.contains("none is generated"),
            "{args:?} names the missing key: {out}"
        );
        assert!(!key_file.exists(), "{args:?} generated no new key");
    }
}

/// On PostgreSQL the key must be configured; a missing key is found before any migration runs.
#[tokio::test]
async fn migrate_on_postgres_checks_the_key_first() {
    let Some(url) = common::fresh_postgres_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let o = provisioner(dir.path(), &url, &["migrate"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("PROVISIONER_SECRET_KEY"), "{}", text(&o));
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(tables, 0, "no migration was applied");
    pool.close().await;
}
