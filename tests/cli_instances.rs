//! `provisioner migrate` and `provisioner instances …` as an operator runs them: the real binary
//! on a SQLite file, writing through the billing columns.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(args)
        .arg("--catalog-placeholder-never-used")
        .current_dir(dir)
        .output()
        .expect("run provisioner")
}

fn provisioner(dir: &Path, args: &[&str]) -> Output {
    let db = format!("sqlite://{}", dir.join("provisioner.db").display());
    Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(args)
        .env("DATABASE_URL", db)
        .env_remove("PROVISIONER_SECRET_KEY")
        .env_remove("PROVISIONER_SECRET_KEY_FILE")
        .current_dir(dir)
        .output()
        .expect("run provisioner")
}

fn json(o: &Output) -> Value {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON output")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(&catalog)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(copy.success());
    // Only `migrate`, `run` and `demo` create a database; the other commands need one.
    let o = provisioner(dir.path(), &["migrate"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    dir
}

#[test]
fn migrate_creates_the_database_and_a_private_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = provisioner(dir.path(), &["migrate"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("applied migration(s) 1, 2"));
    let key = dir.path().join("provisioner.db.key");
    assert!(
        key.exists(),
        "a key file is generated beside the SQLite database"
    );
    assert!(
        stderr(&o).contains("provisioner.db.key"),
        "a log line says where: {}",
        stderr(&o)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let o = provisioner(dir.path(), &["migrate"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("schema up to date"));
}

#[test]
fn orders_go_through_the_billing_columns() {
    let dir = setup();
    let d = dir.path();
    let created = json(&provisioner(
        d,
        &[
            "instances",
            "create",
            "--customer",
            "cust-7",
            "--product",
            "sim-vps-small",
            "--os",
            "debian-12",
            "--order",
            "o-1",
            "--format",
            "json",
        ],
    ));
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["desired_status"], "active");
    assert_eq!(created["observed_status"], "pending");
    assert_eq!(created["os_image"], "debian-12");

    let o = provisioner(
        d,
        &[
            "instances",
            "set",
            &id.to_string(),
            "--desired",
            "suspended",
            "--reason",
            "non-payment",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("desired suspended (generation 2)"));
    let o = provisioner(d, &["instances", "reboot", &id.to_string()]);
    assert_eq!(o.status.code(), Some(0));
    let shown = json(&provisioner(
        d,
        &["instances", "show", &id.to_string(), "--format", "json"],
    ));
    assert_eq!(shown["desired_status"], "suspended");
    assert_eq!(shown["suspend_reason"], "non-payment");
    assert_eq!(shown["reboot_requested"], 1);
    assert_eq!(shown["desired_generation"], 3);
    assert_eq!(shown["converged"], false);
    assert_eq!(shown["root_password"], Value::Null);

    let listed = json(&provisioner(
        d,
        &[
            "instances",
            "list",
            "--customer",
            "cust-7",
            "--format",
            "json",
        ],
    ));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let listed = json(&provisioner(
        d,
        &[
            "instances",
            "list",
            "--status",
            "active",
            "--format",
            "json",
        ],
    ));
    assert!(listed.as_array().unwrap().is_empty());
    let history = json(&provisioner(
        d,
        &["instances", "history", &id.to_string(), "--format", "json"],
    ));
    assert_eq!(history, Value::Array(vec![]));

    let o = provisioner(
        d,
        &[
            "instances",
            "set",
            &id.to_string(),
            "--desired",
            "terminated",
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    let o = provisioner(
        d,
        &["instances", "set", &id.to_string(), "--desired", "active"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is terminated"), "{}", stderr(&o));
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let dir = setup();
    let d = dir.path();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "instances",
                "create",
                "--customer",
                "c",
                "--product",
                "vps-nope",
            ],
            "unknown product `vps-nope`",
        ),
        (
            &[
                "instances",
                "create",
                "--customer",
                "c",
                "--product",
                "sim-vps-small",
                "--location",
                "mars",
            ],
            "is not sold in `mars`",
        ),
        (
            &[
                "instances",
                "create",
                "--customer",
                "c",
                "--product",
                "sim-vps-small",
                "--os",
                "windows-95",
            ],
            "does not offer `windows-95`",
        ),
        (&["instances", "show", "42"], "instance 42 does not exist"),
        (
            &["instances", "set", "42", "--desired", "suspended"],
            "instance 42 does not exist",
        ),
        (
            &["instances", "set", "1", "--desired", "paused"],
            "unknown desired status `paused`",
        ),
        (
            &["instances", "list", "--status", "running"],
            "unknown observed status `running`",
        ),
    ];
    for (args, message) in cases {
        let o = provisioner(d, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{args:?}: {}", stderr(&o));
    }
    // The database itself accepts products the catalog does not know yet.
    let o = provisioner(
        d,
        &[
            "instances",
            "create",
            "--customer",
            "c",
            "--product",
            "from-the-future",
            "--no-catalog-check",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(d, &["instances", "list"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "unknown arguments are usage errors"
    );
}

#[test]
fn unreachable_databases_fail_fast_without_leaking_the_password() {
    let dir = setup();
    let o = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args([
            "--database-url",
            "postgres://billing:hunter2@127.0.0.1:1/prov",
            "instances",
            "list",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("postgres://billing:***@127.0.0.1:1/prov"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
}

#[test]
fn billing_text_cannot_drive_the_admins_terminal() {
    let dir = setup();
    let d = dir.path();
    let evil = "cust\u{1b}]0;owned\u{7}\u{1b}[2J\rX";
    let created = json(&provisioner(
        d,
        &[
            "instances",
            "create",
            "--customer",
            evil,
            "--product",
            "sim-vps-small",
            "--format",
            "json",
        ],
    ));
    let id = created["id"].as_i64().unwrap().to_string();
    for args in [vec!["instances", "list"], vec!["instances", "show", &id]] {
        let o = provisioner(d, &args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\r'),
            "{args:?} printed control characters raw: {out:?}"
        );
        assert!(
            out.contains("cust\\u{1b}]0;owned"),
            "{args:?}: shown escaped: {out}"
        );
    }
    // JSON output carries the value exactly (JSON escapes it).
    let shown = json(&provisioner(
        d,
        &["instances", "show", &id, "--format", "json"],
    ));
    assert_eq!(shown["customer_id"], evil);
}

/// Holds, order references and recovery from a terminal, refused where they make no sense.
#[test]
fn holds_references_and_recovery_from_the_command_line() {
    let dir = setup();
    let d = dir.path();
    let create = |reference: &str| {
        provisioner(
            d,
            &[
                "instances",
                "create",
                "--customer",
                "c",
                "--product",
                "sim-vps-small",
                "--billing-ref",
                reference,
                "--format",
                "json",
            ],
        )
    };
    let id = json(&create("whmcs-7"))["id"].as_i64().unwrap().to_string();
    let o = create("whmcs-7");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("billing_ref `whmcs-7` is already instance {id}")),
        "{}",
        stderr(&o)
    );
    let held = json(&provisioner(
        d,
        &[
            "instances",
            "hold",
            &id,
            "--kind",
            "abuse",
            "--reason",
            "phishing",
            "--by",
            "desk",
            "--format",
            "json",
        ],
    ));
    assert_eq!(held["holds"], serde_json::json!(["abuse"]));
    let shown = json(&provisioner(
        d,
        &["instances", "show", &id, "--format", "json"],
    ));
    assert_eq!(shown["hold_details"][0]["reason"], "phishing");
    assert_eq!(shown["hold_details"][0]["placed_by"], "desk");
    assert_eq!(shown["billing_ref"], "whmcs-7");
    let text = provisioner(d, &["instances", "show", &id]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("hold        abuse by desk since "));
    for (args, says) in [
        (
            vec!["instances", "hold", &id, "--kind", "Abuse Desk"],
            "lower-case word",
        ),
        (
            vec!["instances", "release", &id, "--kind", "billing"],
            "has no billing hold",
        ),
        (
            vec!["instances", "recreate", &id],
            "only lost or failed instances are recreated",
        ),
        (
            vec!["instances", "forget", &id],
            "only lost or failed instances are forgotten",
        ),
    ] {
        let o = provisioner(d, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    let released = json(&provisioner(
        d,
        &[
            "instances",
            "release",
            &id,
            "--kind",
            "abuse",
            "--format",
            "json",
        ],
    ));
    assert_eq!(released["holds"], serde_json::json!([]));
}

#[test]
fn plan_changes_reinstalls_and_imports_from_the_command_line() {
    let dir = setup();
    let d = dir.path();
    let id = json(&provisioner(
        d,
        &[
            "instances",
            "create",
            "--customer",
            "c",
            "--product",
            "sim-vps-small",
            "--format",
            "json",
        ],
    ))["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let changed = json(&provisioner(
        d,
        &[
            "instances",
            "change-product",
            &id,
            "sim-vps-medium",
            "--format",
            "json",
        ],
    ));
    assert_eq!(changed["product_id"], "sim-vps-medium");
    assert_eq!(
        changed["desired_generation"], 2,
        "billing's change bumps the generation"
    );
    let reinstall = json(&provisioner(
        d,
        &[
            "instances",
            "reinstall",
            &id,
            "--os",
            "rocky-9",
            "--format",
            "json",
        ],
    ));
    assert_eq!(
        (
            &reinstall["os_image"],
            &reinstall["reinstall_requested"],
            &reinstall["reinstall_handled"]
        ),
        (&Value::from("rocky-9"), &Value::from(1), &Value::from(0))
    );
    for (args, says) in [
        (
            vec!["instances", "change-product", &id, "no-such-product"],
            "unknown product `no-such-product`",
        ),
        (
            vec!["instances", "reinstall", &id, "--os", "windows-95"],
            "does not offer `windows-95`",
        ),
        (vec!["instances", "manage", &id], "managed already"),
        (
            vec!["instances", "adopt", &id, "--server-id", "7"],
            "only lost or failed",
        ),
        (
            vec![
                "instances",
                "import",
                "--account",
                "manual-dc",
                "--server-id",
                "rack-4",
                "--customer",
                "c",
                "--product",
                "dedicated-colo-e5",
            ],
            "worked by hand",
        ),
        (
            vec![
                "instances",
                "import",
                "--account",
                "sim-eu",
                "--server-id",
                "7",
                "--customer",
                "c",
                "--product",
                "dedicated-colo-e5",
            ],
            "is sold on account `manual-dc`, not `sim-eu`",
        ),
        (
            vec![
                "instances",
                "import",
                "--account",
                "nowhere",
                "--server-id",
                "7",
                "--customer",
                "c",
                "--product",
                "sim-vps-small",
            ],
            "unknown account `nowhere`",
        ),
        (
            vec![
                "instances",
                "import",
                "--account",
                "sim-eu",
                "--server-id",
                "7",
                "--customer",
                "c",
                "--product",
                "sim-vps-small",
                "--desired",
                "terminated",
            ],
            "an import is active or suspended",
        ),
    ] {
        let o = provisioner(d, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    let unchanged = json(&provisioner(
        d,
        &["instances", "show", &id, "--format", "json"],
    ));
    assert_eq!(
        (&unchanged["product_id"], &unchanged["desired_generation"]),
        (&Value::from("sim-vps-medium"), &Value::from(3)),
        "refusals change nothing"
    );
    let o = provisioner(d, &["orphans", "--account", "sim-eu"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "no orphan servers\n");
}

#[test]
fn api_tokens_are_shown_once_listed_without_their_value_and_revoked() {
    let dir = setup();
    let d = dir.path();
    let made = json(&provisioner(
        d,
        &[
            "tokens", "create", "whmcs", "--scope", "billing", "--by", "ops", "--format", "json",
        ],
    ));
    let token = made["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("pvt_") && token.len() == 47, "{token}");
    assert_eq!(made["scope"], "billing");
    let listed = provisioner(d, &["tokens", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        text.contains("whmcs") && text.contains("billing") && text.contains("ops"),
        "{text}"
    );
    assert!(!text.contains(&token), "the value is never shown again");
    // Neither the database nor its write-ahead log holds the token itself.
    for file in ["provisioner.db", "provisioner.db-wal"] {
        let bytes = std::fs::read(d.join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{file} holds the token"
        );
    }
    let hash = provisioner::secrets::api_token_hash(&token);
    let stored = ["provisioner.db", "provisioner.db-wal"].iter().any(|file| {
        let bytes = std::fs::read(d.join(file)).unwrap_or_default();
        bytes.windows(hash.len()).any(|w| w == hash.as_bytes())
    });
    assert!(stored, "the token's SHA-256 is what is stored");
    for (args, says) in [
        (
            vec!["tokens", "create", "whmcs", "--scope", "read"],
            "exists already",
        ),
        (
            vec!["tokens", "create", "Billing Panel", "--scope", "read"],
            "not a word",
        ),
        (
            vec!["tokens", "create", "x", "--scope", "root"],
            "unknown scope `root`",
        ),
        (
            vec!["tokens", "revoke", "nobody"],
            "no live token named `nobody`",
        ),
    ] {
        let o = provisioner(d, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    let revoked = json(&provisioner(
        d,
        &["tokens", "revoke", "whmcs", "--format", "json"],
    ));
    assert_eq!(revoked["revoked"], true);
    let listed = json(&provisioner(d, &["tokens", "list", "--format", "json"]));
    assert!(listed[0]["revoked_at"].is_string(), "{listed}");
    let o = provisioner(d, &["tokens", "revoke", "whmcs"]);
    assert_eq!(o.status.code(), Some(1), "revoked once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_delivery_log_is_read_and_worked_from_the_cli() {
    use provisioner::store::events::{AfterAttempt, Attempt};
    use provisioner::store::{
        Action, Cause, ConnectOptions, NewTransition, NextCheck, ObservedPatch, ObservedStatus,
        Outcome, SqlStore, Store,
    };
    let dir = setup();
    let db = format!("sqlite://{}", dir.path().join("provisioner.db").display());
    let store = SqlStore::open_existing(&db, &ConnectOptions::default())
        .await
        .unwrap();
    store.consumer("webhook:whmcs").await.unwrap();
    let created = json(&provisioner(
        dir.path(),
        &[
            "instances",
            "create",
            "--customer",
            "c-1",
            "--product",
            "vps-starter",
            "--format",
            "json",
        ],
    ));
    assert!(created["id"].as_i64().is_some(), "{created}");
    // The reconciler's side, as the daemon writes it: the instance becomes active.
    let claim = store.claim_due("test", 10, 30.0).await.unwrap().remove(0);
    store
        .record(
            &claim.lease,
            &ObservedPatch {
                observed_status: Some(ObservedStatus::Active),
                ipv4: Some(Some("192.0.2.7".into())),
                ..ObservedPatch::default()
            },
            Some(&NewTransition::new(
                Action::Create,
                Cause::DesiredChange,
                Outcome::Succeeded,
            )),
        )
        .await
        .unwrap();
    store.release(&claim.lease, NextCheck::Now).await.unwrap();
    store
        .queue_deliveries("whmcs", &|_: &str| true, 10)
        .await
        .unwrap();
    let job = store.claim_deliveries(10).await.unwrap().remove(0);
    store
        .record_attempt(
            job.delivery_id,
            &Attempt {
                at: chrono::Utc::now(),
                status: Some(410),
                error: Some("HTTP 410: \u{1b}[31mgone".into()),
                duration_ms: 12,
            },
            &AfterAttempt::Disable("https://billing.example/h answered 410 Gone".into()),
        )
        .await
        .unwrap();
    store.close().await;

    let log = json(&provisioner(
        dir.path(),
        &["webhooks", "deliveries", "--format", "json"],
    ));
    assert_eq!(log[0]["event_type"], "instance.provisioned");
    assert_eq!(log[0]["state"], "failed");
    assert_eq!(log[0]["last_status"], 410);
    let delivery = log[0]["id"].as_i64().unwrap().to_string();
    let text = provisioner(dir.path(), &["webhooks", "deliveries", "--state", "failed"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("instance.provisioned") && !text.contains('\u{1b}'),
        "{text}"
    );
    let shown = json(&provisioner(
        dir.path(),
        &["webhooks", "show", &delivery, "--format", "json"],
    ));
    assert_eq!(shown["attempt_log"][0]["status"], 410);
    assert_eq!(shown["attempt_log"][0]["duration_ms"], 12);
    assert_eq!(shown["event_id"], log[0]["event_id"]);

    let endpoints = json(&provisioner(
        dir.path(),
        &["webhooks", "endpoints", "--format", "json"],
    ));
    assert_eq!(endpoints[0]["name"], "webhook:whmcs");
    assert!(endpoints[0]["disabled_reason"]
        .as_str()
        .unwrap()
        .contains("410"));
    let again = json(&provisioner(
        dir.path(),
        &["webhooks", "redeliver", &delivery, "--format", "json"],
    ));
    assert_eq!(again["state"], "pending");
    let enabled = provisioner(dir.path(), &["webhooks", "enable", "whmcs"]);
    assert_eq!(enabled.status.code(), Some(0), "{}", stderr(&enabled));
    // Bad input: exit 1 with the reason.
    for (args, says) in [
        (vec!["webhooks", "enable", "whmcs"], "is not disabled"),
        (
            vec!["webhooks", "redeliver", "99999"],
            "there is no delivery 99999",
        ),
        (
            vec!["webhooks", "show", "99999"],
            "there is no delivery 99999",
        ),
        (
            vec!["webhooks", "deliveries", "--state", "lost"],
            "pending, delivered or failed",
        ),
    ] {
        let o = provisioner(dir.path(), &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}
