//! The store's contract, run against both engines: SQLite in a temporary file and PostgreSQL
//! for real (a fresh database per test on the server named by `TEST_DATABASE_URL`, which
//! `scripts/test.sh` starts). Billing's side is tested the way billing works: raw SQL.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use provisioner::catalog;
use provisioner::secrets::{Keyring, SecretString};
use provisioner::store::{
    Action, Cause, ConnectOptions, DesiredStatus, Engine, InstanceFilter, NewInstance,
    NewTransition, NextCheck, ObservedPatch, ObservedStatus, Outcome, Pending, SqlStore, Store,
    StoreError, TaskCompletion, TaskFilter, TaskKind, TaskState,
};
use serde_json::json;

/// One database for one test; dropped with the test.
struct Db {
    store: SqlStore,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = SqlStore::open(&url, &ConnectOptions::default())
        .await
        .expect("open SQLite store");
    Db {
        store,
        _dir: Some(dir),
    }
}

async fn postgres() -> Option<Db> {
    let url = common::fresh_postgres_url().await?;
    let store = SqlStore::open(&url, &ConnectOptions::default())
        .await
        .expect("open PostgreSQL store");
    Some(Db { store, _dir: None })
}

impl Db {
    /// Runs SQL as the billing system would; returns the database's error message on failure.
    async fn billing(&self, sql: &str) -> Result<(), String> {
        let result = match self.store.engine() {
            Engine::Sqlite => sqlx::raw_sql(sql)
                .execute(self.store.sqlite_pool().unwrap())
                .await
                .map(drop),
            Engine::Postgres => sqlx::raw_sql(sql)
                .execute(self.store.postgres_pool().unwrap())
                .await
                .map(drop),
        };
        result.map_err(|e| {
            e.as_database_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned())
        })
    }

    /// One integer from SQL.
    async fn scalar(&self, sql: &str) -> i64 {
        match self.store.engine() {
            Engine::Sqlite => sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(self.store.sqlite_pool().unwrap())
                .await
                .unwrap(),
            Engine::Postgres => sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(self.store.postgres_pool().unwrap())
                .await
                .unwrap(),
        }
    }

    async fn insert(&self, customer: &str, product: &str) -> i64 {
        self.store
            .create_instance(&NewInstance {
                customer_id: customer.into(),
                product_id: product.into(),
                ..NewInstance::default()
            })
            .await
            .expect("create instance")
            .id
    }

    /// Claims exactly this instance (it must be due) and returns its lease.
    async fn claim(&self, id: i64, owner: &str) -> provisioner::store::Lease {
        let claims = self.store.claim_due(owner, 1000, 30.0).await.unwrap();
        let mut lease = None;
        for c in claims {
            if c.instance.id == id {
                lease = Some(c.lease);
            } else {
                self.store.release(&c.lease, NextCheck::Now).await.unwrap();
            }
        }
        lease.unwrap_or_else(|| panic!("instance {id} was not due"))
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::sqlite().await;
                    tokio::time::timeout(super::PATIENCE, super::$name(&db))
                        .await
                        .expect("the test hung: a lock or a pool starved?");
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::postgres().await else { return };
                    tokio::time::timeout(super::PATIENCE, super::$name(&db))
                        .await
                        .expect("the test hung: a lock or a pool starved?");
                }
            )*
        }
    };
}

const PATIENCE: Duration = Duration::from_secs(60);

contract!(
    billing_insert_gets_defaults_and_is_due,
    desired_changes_bump_the_generation_and_make_the_instance_due,
    unknown_desired_status_is_rejected,
    terminated_is_final,
    reboot_requested_never_decreases,
    reconciler_columns_cannot_be_inserted,
    reconciler_rules_hold,
    instances_are_never_deleted,
    transitions_are_append_only,
    unknown_products_are_accepted,
    claims_are_exclusive_and_writes_fenced,
    expired_leases_are_taken_over_and_the_old_holder_fenced,
    renewed_leases_hold_and_ended_ones_are_not_revived,
    an_owner_name_is_held_by_one_live_daemon_and_taken_back_after_it,
    records_write_state_and_transition_together,
    release_schedules_the_next_check,
    revisions_are_synced_once_and_readable,
    manual_tasks_open_complete_and_cancel,
    credentials_are_stored_sealed,
    concurrent_claimers_never_share_an_instance,
    a_change_during_a_lease_is_not_slept_on,
    a_backlog_is_claimed_batch_after_batch,
    listing_filters_and_queue_stats,
    migrations_are_idempotent,
    missing_things_are_reported,
    one_bad_row_never_blocks_the_others,
    rows_are_never_replaced_nor_renumbered,
    billing_columns_are_typed_and_counters_bounded,
    a_billing_ref_is_inserted_once,
    holds_keep_a_server_off_whatever_billing_says,
    recovery_takes_lost_instances_only,
    reinstalls_are_counted_like_reboots,
    attached_servers_belong_to_one_instance,
    events_are_written_with_their_transition_and_delivered_once_each,
    a_feed_reader_sees_every_event_once_while_writers_race,
    concurrent_step_writes_each_get_their_own_answer,
    concurrent_sim_creates_make_one_server_per_name,
);

/// The simulated cloud takes a burst of creates at once (the store batches them): each name
/// gets one live server per account, whoever asked first; every other create of it is told
/// the name is taken, with nothing made. A name taken before the burst stays taken, and the
/// same name in another account is another server.
async fn concurrent_sim_creates_make_one_server_per_name(db: &Db) {
    use provisioner::store::sim::{NewSimServer, SimCreated, SimSelect};
    let new = |account: &'static str, instance_id: Option<i64>, name: String| async move {
        (
            account,
            instance_id,
            name.clone(),
            db.store
                .sim_create(&NewSimServer {
                    account,
                    instance_id,
                    name: &name,
                    size: Some("cx22"),
                    image: "debian-12",
                    location: "fsn1",
                    boot_seconds: 0.0,
                    capacity: None,
                })
                .await
                .unwrap(),
        )
    };
    // Taken before: by hand (no label), and by an earlier create.
    assert!(matches!(
        new("sim-a", None, "s-0".into()).await.3,
        SimCreated::Made(_)
    ));
    // 30 distinct names, each asked for twice by different instances in the same burst,
    // name 7 also in another account.
    let mut burst = Vec::new();
    for k in 0..60i64 {
        burst.push(new("sim-a", Some(100 + k), format!("s-{}", k % 30)));
    }
    burst.push(new("sim-b", Some(200), "s-7".into()));
    let answers = futures::future::join_all(burst).await;
    let mut made = std::collections::HashMap::new();
    for (account, instance_id, name, answer) in answers {
        match answer {
            SimCreated::Made(server) => {
                assert_eq!(server.name, name);
                assert_eq!(server.instance_id, instance_id);
                assert_eq!(server.state, "running", "no boot time");
                let stored = db
                    .store
                    .sim_servers(account, SimSelect::Id(server.id))
                    .await
                    .unwrap();
                assert_eq!(stored, vec![server.clone()], "as stored");
                assert!(
                    made.insert((account, name.clone()), server.id).is_none(),
                    "a second live server named {name} in {account}"
                );
            }
            SimCreated::NameTaken => {}
            SimCreated::Full => panic!("no capacity limit was set"),
        }
    }
    assert!(
        !made.contains_key(&("sim-a", "s-0".to_owned())),
        "taken before"
    );
    assert_eq!(
        made.len(),
        29 + 1,
        "names s-1 … s-29 in sim-a, s-7 in sim-b"
    );
    let ids: HashSet<i64> = made.values().copied().collect();
    assert_eq!(ids.len(), made.len(), "each its own server");
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM sim_servers WHERE deleted_at IS NULL")
            .await,
        31,
        "nothing made for a name that was taken"
    );
}

/// Steps write at once (the store batches them): each write still stands or falls alone. A
/// stale lease and a write the database refuses fail only themselves; every other one is
/// written with its transition and its event, exactly once.
async fn concurrent_step_writes_each_get_their_own_answer(db: &Db) {
    for k in 0..40 {
        db.insert(&format!("c{k}"), "vps-starter").await;
    }
    let claims = db.store.claim_due("w1", 1000, 60.0).await.unwrap();
    assert_eq!(claims.len(), 40);
    let (stale, refused) = (claims[3].lease.instance_id, claims[7].lease.instance_id);
    // The refused one claims a generation billing never asked for (`desired_generation` is 1).
    let writers: Vec<_> = claims
        .iter()
        .map(|c| {
            let store = db.store.clone();
            let mut lease = c.lease.clone();
            if lease.instance_id == stale {
                lease.epoch += 1;
            }
            let generation = if lease.instance_id == refused { 2 } else { 1 };
            tokio::spawn(async move {
                let patch = ObservedPatch {
                    observed_status: Some(ObservedStatus::Active),
                    provider_server_id: Some(Some(format!("srv-{}", lease.instance_id))),
                    observed_generation: Some(generation),
                    next_check: Some(NextCheck::After(Duration::from_secs(600))),
                    release_lease: true,
                    ..ObservedPatch::default()
                };
                let t =
                    NewTransition::new(Action::Create, Cause::DesiredChange, Outcome::Succeeded);
                (
                    lease.instance_id,
                    store.record(&lease, &patch, Some(&t)).await,
                )
            })
        })
        .collect();
    for w in writers {
        let (id, written) = w.await.unwrap();
        let history = db.store.history(id).await.unwrap();
        if id == stale {
            assert!(
                matches!(written, Err(StoreError::LeaseLost { .. })),
                "{written:?}"
            );
        } else if id == refused {
            assert!(written.is_err(), "a generation going back is refused");
        } else {
            let i = written.unwrap();
            assert_eq!(i.observed_status, ObservedStatus::Active);
            assert_eq!(
                i.provider_server_id.as_deref(),
                Some(format!("srv-{id}").as_str())
            );
            assert_eq!(i.lease_owner, None, "the lease was given back");
            assert_eq!(history.len(), 1, "one transition for instance {id}");
            continue;
        }
        assert!(history.is_empty(), "nothing written for instance {id}");
        let i = db.store.instance(id).await.unwrap().unwrap();
        assert_eq!(i.observed_status, ObservedStatus::Pending);
    }
    let events = db.store.events_after(0, 1000).await.unwrap();
    let mut ids: Vec<i64> = events.iter().filter_map(|e| e.instance_id).collect();
    ids.sort_unstable();
    let mut expected: Vec<i64> = claims
        .iter()
        .map(|c| c.lease.instance_id)
        .filter(|id| *id != stale && *id != refused)
        .collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "one event for each write that was written");
}

async fn a_billing_ref_is_inserted_once(db: &Db) {
    db.billing("INSERT INTO instances (customer_id, product_id, billing_ref) VALUES ('c', 'p', 'whmcs-service-42')")
        .await
        .unwrap();
    let first = db
        .scalar("SELECT id FROM instances WHERE billing_ref = 'whmcs-service-42'")
        .await;
    let err = db
        .billing("INSERT INTO instances (customer_id, product_id, billing_ref) VALUES ('c', 'p', 'whmcs-service-42')")
        .await
        .unwrap_err();
    assert!(
        err.contains("billing_ref") && err.contains("already"),
        "{err}"
    );
    if db.store.engine() == Engine::Postgres {
        assert!(
            err.contains(&format!("instance {first}")),
            "names the instance: {err}"
        );
    }
    let other = db.insert("c", "p").await;
    let err = db
        .billing(&format!(
            "UPDATE instances SET billing_ref = 'whmcs-service-42' WHERE id = {other}"
        ))
        .await
        .unwrap_err();
    assert!(err.contains("already"), "{err}");
    // Many instances without a reference are fine.
    db.insert("c", "p").await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM instances WHERE billing_ref IS NULL")
            .await,
        2
    );
    let err = db
        .billing(
            "INSERT INTO instances (customer_id, product_id, billing_ref) VALUES ('c', 'p', '')",
        )
        .await
        .unwrap_err();
    assert!(err.contains("billing_ref"), "{err}");
}

async fn holds_keep_a_server_off_whatever_billing_says(db: &Db) {
    let id = db.insert("c", "p").await;
    let generation_sql = format!("SELECT desired_generation FROM instances WHERE id = {id}");
    let g0 = db.scalar(&generation_sql).await;
    db.billing(&format!(
        "INSERT INTO instance_holds (instance_id, kind, reason, placed_by) VALUES ({id}, 'abuse', 'phishing reported', 'abuse-desk')"
    ))
    .await
    .unwrap();
    let i = db.store.instance(id).await.unwrap().unwrap();
    assert_eq!(i.holds, ["abuse"]);
    assert_eq!(i.effective_desired(), DesiredStatus::Suspended, "held: off");
    assert!(
        db.scalar(&generation_sql).await > g0,
        "a hold is a desired change"
    );
    db.billing(&format!(
        "INSERT INTO instance_holds (instance_id, kind) VALUES ({id}, 'billing')"
    ))
    .await
    .unwrap();
    assert_eq!(
        db.store.instance(id).await.unwrap().unwrap().holds,
        ["abuse", "billing"]
    );
    // Billing's unsuspend lifts its own hold; the abuse hold stays.
    db.billing(&format!(
        "DELETE FROM instance_holds WHERE instance_id = {id} AND kind = 'billing'; \
         UPDATE instances SET desired_status = 'active' WHERE id = {id}"
    ))
    .await
    .unwrap();
    let i = db.store.instance(id).await.unwrap().unwrap();
    assert_eq!(i.effective_desired(), DesiredStatus::Suspended);
    for (sql, says) in [
        (
            format!("INSERT INTO instance_holds (instance_id, kind) VALUES ({id}, 'Abuse Team')"),
            "lower-case word",
        ),
        (
            format!("INSERT INTO instance_holds (instance_id, kind) VALUES ({id}, '')"),
            "lower-case word",
        ),
        (
            "INSERT INTO instance_holds (instance_id, kind) VALUES (987654, 'admin')".to_owned(),
            "live instance",
        ),
        (
            format!("UPDATE instances SET holds = NULL WHERE id = {id}"),
            "holds",
        ),
    ] {
        let err = db.billing(&sql).await.unwrap_err();
        assert!(err.contains(says), "{sql}: {err}");
    }
    assert!(db.store.release_hold(id, "abuse").await.unwrap());
    assert!(!db.store.release_hold(id, "abuse").await.unwrap());
    let i = db.store.instance(id).await.unwrap().unwrap();
    assert!(i.holds.is_empty());
    assert_eq!(i.effective_desired(), DesiredStatus::Active);
    // A terminated instance cannot be held.
    db.billing(&format!(
        "UPDATE instances SET desired_status = 'terminated' WHERE id = {id}"
    ))
    .await
    .unwrap();
    let err = db
        .store
        .place_hold(id, "admin", None, "ops")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("live instance"), "{err}");
    // The reconciler records holds placed and lifted, fenced by its lease.
    let id = db.insert("c", "p").await;
    db.store
        .place_hold(id, "admin", Some("maintenance"), "ops")
        .await
        .unwrap();
    let lease = db.claim(id, "w").await;
    let i = db.store.instance(id).await.unwrap().unwrap();
    let noted = db.store.note_holds(&lease, &i).await.unwrap();
    assert_eq!(noted.holds_seen, ["admin"]);
    db.store.release_hold(id, "admin").await.unwrap();
    let i = db.store.instance(id).await.unwrap().unwrap();
    db.store.note_holds(&lease, &i).await.unwrap();
    let h = db.store.history(id).await.unwrap();
    let actions: Vec<&str> = h.iter().map(|t| t.action.as_str()).collect();
    assert_eq!(actions, ["hold", "release"]);
    assert_eq!(h[0].details["reason"], "maintenance");
    assert_eq!(h[0].details["by"], "ops");
}

fn attached(server: &str) -> provisioner::store::Attached {
    provisioner::store::Attached {
        account: "acc".into(),
        server_id: server.into(),
        status: ObservedStatus::Active,
        ipv4: Some("192.0.2.7".into()),
        ipv6: None,
        product_revision: "r1".into(),
        details: serde_json::json!({"name": "web-1"}),
    }
}

async fn attached_servers_belong_to_one_instance(db: &Db) {
    let order = |customer: &str, reference: &str| NewInstance {
        customer_id: customer.into(),
        product_id: "p".into(),
        billing_ref: Some(reference.into()),
        ..NewInstance::default()
    };
    let imported = db
        .store
        .import(&order("c1", "svc-1"), &attached("srv-1"), true, "ops")
        .await
        .unwrap();
    assert_eq!(
        (
            imported.observed_status,
            imported.observe_only,
            imported.claim_pending
        ),
        (ObservedStatus::Active, true, true)
    );
    assert_eq!(imported.applied_product_id.as_deref(), Some("p"));
    assert!(
        imported.is_converged(),
        "observe-only and as billing wants it"
    );
    let h = db.store.history(imported.id).await.unwrap();
    assert_eq!(
        (h[0].action.as_str(), h[0].to_status.as_deref()),
        ("import", Some("active"))
    );
    assert_eq!(h[0].details["by"], "ops");
    // The same server again, under another order: refused, and nothing is inserted.
    let before = db.scalar("SELECT COUNT(*) FROM instances").await;
    let err = db
        .store
        .import(&order("c2", "svc-2"), &attached("srv-1"), false, "ops")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("is instance {}'s already", imported.id)),
        "{err}"
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM instances").await, before);
    // A duplicate billing_ref is refused as for any order.
    let err = db
        .store
        .import(&order("c2", "svc-1"), &attached("srv-2"), false, "ops")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("billing_ref"), "{err}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM instances").await, before);

    // Managed: observe-only no more; a second time is refused. A step in flight, planned
    // while it was observe-only, is fenced off (its later next check would delay the change).
    let in_flight = db.claim(imported.id, "w").await;
    let managed = db.store.manage(imported.id, "ops").await.unwrap();
    let err = db
        .store
        .record(
            &in_flight,
            &ObservedPatch {
                next_check: Some(NextCheck::After(Duration::from_secs(60))),
                release_lease: true,
                ..ObservedPatch::default()
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    assert!(!managed.observe_only && managed.claim_pending);
    assert!(!managed.is_converged(), "its server is still to be marked");
    let err = db.store.manage(imported.id, "ops").await.unwrap_err();
    assert!(err.to_string().contains("managed already"), "{err}");

    // Adoption: lost and failed instances only, never a server another one has.
    let err = db
        .store
        .adopt(imported.id, &attached("srv-9"), "ops")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only lost or failed"), "{err}");
    let id = db.insert("c3", "p").await;
    let lease = db.claim(id, "w").await;
    db.store
        .record(
            &lease,
            &ObservedPatch {
                observed_status: Some(ObservedStatus::Lost),
                provider_account: Some(Some("acc".into())),
                provider_server_id: Some(Some("srv-old".into())),
                release_lease: true,
                ..ObservedPatch::default()
            },
            None,
        )
        .await
        .unwrap();
    let err = db
        .store
        .adopt(id, &attached("srv-1"), "ops")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already"), "{err}");
    let adopted = db.store.adopt(id, &attached("srv-3"), "ops").await.unwrap();
    assert_eq!(
        (
            adopted.observed_status,
            adopted.provider_server_id.as_deref(),
            adopted.claim_pending
        ),
        (ObservedStatus::Active, Some("srv-3"), true)
    );
    let last = db.store.history(id).await.unwrap().pop().unwrap();
    assert_eq!(
        (
            last.action.as_str(),
            last.cause.as_str(),
            last.from_status.as_deref()
        ),
        ("adopt", "manual", Some("lost"))
    );
    assert_eq!(last.details["old_server"], "srv-old");
    // Even the reconciler's own writes cannot give one server to two live instances.
    let lease = db.claim(id, "w").await;
    let err = db
        .store
        .record(
            &lease,
            &ObservedPatch {
                provider_server_id: Some(Some("srv-1".into())),
                release_lease: true,
                ..ObservedPatch::default()
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err}");
}

async fn recovery_takes_lost_instances_only(db: &Db) {
    let id = db.insert("c", "p").await;
    let err = db.store.recreate(id, "ops").await.unwrap_err();
    assert!(err.to_string().contains("only lost or failed"), "{err}");
    let err = db.store.forget(id, "ops").await.unwrap_err();
    assert!(err.to_string().contains("only lost or failed"), "{err}");
    // Lost: its server vanished.
    let lease = db.claim(id, "w").await;
    db.store
        .record(
            &lease,
            &ObservedPatch {
                observed_status: Some(ObservedStatus::Lost),
                provider_account: Some(Some("acc".into())),
                provider_server_id: Some(Some("srv-1".into())),
                status_reason: Some(Some("gone".into())),
                release_lease: true,
                ..ObservedPatch::default()
            },
            None,
        )
        .await
        .unwrap();
    let i = db.store.recreate(id, "ops").await.unwrap();
    assert_eq!(i.observed_status, ObservedStatus::Pending);
    assert_eq!(i.provider_server_id, None);
    let h = db.store.history(id).await.unwrap();
    let last = h.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.cause.as_str()),
        ("recreate", "manual")
    );
    assert_eq!(last.details["old_server"], "srv-1");
    assert_eq!(last.details["by"], "ops");
    // Lost again, then forgotten: terminated without a call, billing's wish included.
    let lease = db.claim(id, "w").await;
    db.store
        .record(
            &lease,
            &ObservedPatch {
                observed_status: Some(ObservedStatus::Lost),
                release_lease: true,
                ..ObservedPatch::default()
            },
            None,
        )
        .await
        .unwrap();
    let i = db.store.forget(id, "ops").await.unwrap();
    assert_eq!(i.observed_status, ObservedStatus::Terminated);
    assert_eq!(i.desired_status, DesiredStatus::Terminated);
    assert!(i.desired_met());
}

async fn billing_insert_gets_defaults_and_is_due(db: &Db) {
    db.billing(
        "INSERT INTO instances (customer_id, order_id, product_id) VALUES ('cust-1', 'order-9', 'vps-starter')",
    )
    .await
    .unwrap();
    let id = db.scalar("SELECT MAX(id) FROM instances").await;
    let i = db.store.instance(id).await.unwrap().unwrap();
    assert_eq!(i.customer_id, "cust-1");
    assert_eq!(i.order_id.as_deref(), Some("order-9"));
    assert_eq!(i.desired_status, DesiredStatus::Active);
    assert_eq!(i.observed_status, ObservedStatus::Pending);
    assert_eq!((i.desired_generation, i.observed_generation), (1, 0));
    assert_eq!((i.reboot_requested, i.reboot_handled), (0, 0));
    assert!(i.next_check_at.is_some());
    let claims = db.store.claim_due("w1", 10, 30.0).await.unwrap();
    assert_eq!(claims.len(), 1, "a new order is due at once");
}

async fn desired_changes_bump_the_generation_and_make_the_instance_due(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    let lease = db.claim(id, "w1").await;
    db.store
        .release(&lease, NextCheck::After(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert!(db.store.claim_due("w1", 10, 30.0).await.unwrap().is_empty());

    db.billing(&format!(
        "UPDATE instances SET desired_status = 'suspended', suspend_reason = 'non-payment' WHERE id = {id}"
    ))
    .await
    .unwrap();
    let i = db.store.instance(id).await.unwrap().unwrap();
    assert_eq!(i.desired_generation, 2);
    assert_eq!(i.suspend_reason.as_deref(), Some("non-payment"));
    let claims = db.store.claim_due("w1", 10, 30.0).await.unwrap();
    assert_eq!(claims.len(), 1, "the change makes it due now");

    // Every billing column counts, and a no-op update does not.
    db.store
        .release(
            &claims[0].lease,
            NextCheck::After(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    db.billing(&format!(
        "UPDATE instances SET suspend_reason = 'non-payment' WHERE id = {id}"
    ))
    .await
    .unwrap();
    assert_eq!(
        db.store
            .instance(id)
            .await
            .unwrap()
            .unwrap()
            .desired_generation,
        2
    );
    db.billing(&format!(
        "UPDATE instances SET reboot_requested = reboot_requested + 1 WHERE id = {id}"
    ))
    .await
    .unwrap();
    let i = db.store.instance(id).await.unwrap().unwrap();
    assert_eq!(i.desired_generation, 3);
    assert!(i.next_check_at.is_some());
}

async fn unknown_desired_status_is_rejected(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    let err = db
        .billing(&format!(
            "UPDATE instances SET desired_status = 'paused' WHERE id = {id}"
        ))
        .await
        .unwrap_err();
    assert!(
        err.contains("desired_status must be active, suspended or terminated"),
        "{err}"
    );
    let err = db
        .billing("INSERT INTO instances (customer_id, product_id, desired_status) VALUES ('c', 'p', 'ACTIVE')")
        .await
        .unwrap_err();
    assert!(err.contains("desired_status must be"), "{err}");
    let i = db.store.instance(id).await.unwrap().unwrap();
    assert_eq!(
        (i.desired_status, i.desired_generation),
        (DesiredStatus::Active, 1)
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM instances").await, 1);
}

async fn terminated_is_final(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    db.billing(&format!(
        "UPDATE instances SET desired_status = 'terminated' WHERE id = {id}"
    ))
    .await
    .unwrap();
    for sql in [
        format!("UPDATE instances SET desired_status = 'active' WHERE id = {id}"),
        format!("UPDATE instances SET desired_status = 'suspended', suspend_reason = 'x' WHERE id = {id}"),
        format!("UPDATE instances SET reboot_requested = 1 WHERE id = {id}"),
    ] {
        let err = db.billing(&sql).await.unwrap_err();
        assert!(err.contains("is terminated") && err.contains("new instance"), "{err}");
    }
    let i = db.store.instance(id).await.unwrap().unwrap();
    assert_eq!(i.desired_status, DesiredStatus::Terminated);
    assert_eq!(i.desired_generation, 2);
    let err = db
        .store
        .set_desired(id, DesiredStatus::Active, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Rejected(ref m) if m.contains("terminated")),
        "{err}"
    );
}

async fn reboot_requested_never_decreases(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    db.billing(&format!(
        "UPDATE instances SET reboot_requested = 2 WHERE id = {id}"
    ))
    .await
    .unwrap();
    let err = db
        .billing(&format!(
            "UPDATE instances SET reboot_requested = 1 WHERE id = {id}"
        ))
        .await
        .unwrap_err();
    assert!(err.contains("reboot_requested never decreases"), "{err}");
    assert_eq!(
        db.store
            .instance(id)
            .await
            .unwrap()
            .unwrap()
            .reboot_requested,
        2
    );
    let err = db
        .billing("INSERT INTO instances (customer_id, product_id, reboot_requested) VALUES ('c', 'p', -1)")
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("check"), "{err}");
    let after = db.store.request_reboot(id).await.unwrap();
    assert_eq!(after.reboot_requested, 3);
}

async fn reinstalls_are_counted_like_reboots(db: &Db) {
    let id = db.insert("c", "p").await;
    let before = db.store.instance(id).await.unwrap().unwrap();
    let i = db
        .store
        .request_reinstall(id, Some("debian-12"))
        .await
        .unwrap();
    assert_eq!((i.reinstall_requested, i.reinstall_handled), (1, 0));
    assert_eq!(i.os_image.as_deref(), Some("debian-12"));
    assert!(
        i.desired_generation > before.desired_generation,
        "a reinstall is a change"
    );
    assert!(!i.is_converged());
    let err = db
        .billing(&format!(
            "UPDATE instances SET reinstall_requested = 0 WHERE id = {id}"
        ))
        .await
        .unwrap_err();
    assert!(err.contains("reinstall_requested never decreases"), "{err}");
    let err = db
        .billing("INSERT INTO instances (customer_id, product_id, reinstall_requested) VALUES ('c', 'p', -1)")
        .await
        .unwrap_err();
    assert!(err.contains("reinstall_requested"), "{err}");
    // A change of product is billing's too, and bumps the generation; terminated is final.
    let j = db.store.change_product(id, "p2").await.unwrap();
    assert_eq!(j.product_id, "p2");
    assert!(j.desired_generation > i.desired_generation);
    db.store
        .set_desired(id, DesiredStatus::Terminated, None)
        .await
        .unwrap();
    let err = db.store.request_reinstall(id, None).await.unwrap_err();
    assert!(err.to_string().contains("terminated"), "{err}");
    let err = db.store.change_product(id, "p3").await.unwrap_err();
    assert!(err.to_string().contains("terminated"), "{err}");
}

async fn reconciler_columns_cannot_be_inserted(db: &Db) {
    for column in [
        "observed_status = 'active'",
        "provider_server_id = '42'",
        "lease_owner = 'me'",
    ] {
        let (col, value) = column.split_once(" = ").unwrap();
        let err = db
            .billing(&format!(
                "INSERT INTO instances (customer_id, product_id, {col}) VALUES ('c', 'p', {value})"
            ))
            .await
            .unwrap_err();
        assert!(
            err.contains("reconciler-owned columns cannot be set"),
            "{err}"
        );
    }
    let err = db
        .billing("INSERT INTO instances (customer_id, product_id) VALUES ('', 'p')")
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("check"), "{err}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM instances").await, 0);
}

async fn reconciler_rules_hold(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    let err = db
        .billing(&format!(
            "UPDATE instances SET observed_status = 'running' WHERE id = {id}"
        ))
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("check"), "{err}");
    let err = db
        .billing(&format!(
            "UPDATE instances SET reboot_handled = 1 WHERE id = {id}"
        ))
        .await
        .unwrap_err();
    assert!(
        err.to_lowercase().contains("check"),
        "handled may not exceed requested: {err}"
    );
    db.billing(&format!(
        "UPDATE instances SET observed_status = 'terminated' WHERE id = {id}"
    ))
    .await
    .unwrap();
    let err = db
        .billing(&format!(
            "UPDATE instances SET observed_status = 'active' WHERE id = {id}"
        ))
        .await
        .unwrap_err();
    assert!(err.contains("observed_status terminated is final"), "{err}");
    let err = db
        .billing(&format!(
            "UPDATE instances SET lease_epoch = -1 WHERE id = {id}"
        ))
        .await
        .unwrap_err();
    assert!(err.contains("never decrease"), "{err}");
}

async fn instances_are_never_deleted(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    let err = db
        .billing(&format!("DELETE FROM instances WHERE id = {id}"))
        .await
        .unwrap_err();
    assert!(err.contains("instances are never deleted"), "{err}");
    assert!(db.store.instance(id).await.unwrap().is_some());
}

async fn transitions_are_append_only(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    let lease = db.claim(id, "w1").await;
    db.store
        .record(
            &lease,
            &ObservedPatch::default(),
            Some(&NewTransition::new(
                Action::Observe,
                Cause::Poll,
                Outcome::Succeeded,
            )),
        )
        .await
        .unwrap();
    let err = db
        .billing("UPDATE instance_transitions SET outcome = 'failed'")
        .await
        .unwrap_err();
    assert!(err.contains("append-only"), "{err}");
    let err = db
        .billing("DELETE FROM instance_transitions")
        .await
        .unwrap_err();
    assert!(err.contains("append-only"), "{err}");
    let history = db.store.history(id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].outcome, "succeeded");
}

async fn unknown_products_are_accepted(db: &Db) {
    db.billing(
        "INSERT INTO instances (customer_id, product_id) VALUES ('c', 'product-from-the-future')",
    )
    .await
    .unwrap();
    assert_eq!(db.scalar("SELECT COUNT(*) FROM instances").await, 1);
}

async fn claims_are_exclusive_and_writes_fenced(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    let claims = db.store.claim_due("w1", 10, 30.0).await.unwrap();
    assert_eq!(claims.len(), 1);
    let lease = claims[0].lease.clone();
    assert_eq!(lease.epoch, 1);
    assert_eq!(claims[0].instance.lease_owner.as_deref(), Some("w1"));
    assert!(
        db.store.claim_due("w2", 10, 30.0).await.unwrap().is_empty(),
        "a leased instance is not claimed again"
    );
    let stale = provisioner::store::Lease {
        epoch: lease.epoch - 1,
        ..lease.clone()
    };
    let patch = ObservedPatch {
        observed_status: Some(ObservedStatus::Provisioning),
        ..ObservedPatch::default()
    };
    let err = db
        .store
        .record(
            &stale,
            &patch,
            Some(&NewTransition::new(
                Action::Create,
                Cause::DesiredChange,
                Outcome::Started,
            )),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::LeaseLost { instance_id, .. } if instance_id == id),
        "{err}"
    );
    let i = db.store.instance(id).await.unwrap().unwrap();
    assert_eq!(
        i.observed_status,
        ObservedStatus::Pending,
        "a fenced-out write changes nothing"
    );
    assert!(db.store.history(id).await.unwrap().is_empty());
    db.store.record(&lease, &patch, None).await.unwrap();
}

async fn expired_leases_are_taken_over_and_the_old_holder_fenced(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    let first = db.store.claim_due("dead-daemon", 10, 0.2).await.unwrap();
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = db.store.claim_due("w2", 10, 30.0).await.unwrap();
    assert_eq!(second.len(), 1, "an expired lease is claimable");
    assert_eq!(second[0].instance.id, id);
    assert_eq!(second[0].lease.epoch, first[0].lease.epoch + 1);
    let err = db
        .store
        .release(&first[0].lease, NextCheck::Now)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    db.store
        .release(&second[0].lease, NextCheck::Now)
        .await
        .unwrap();
}

async fn renewed_leases_hold_and_ended_ones_are_not_revived(db: &Db) {
    let a = db.insert("c1", "vps-starter").await;
    let b = db.insert("c2", "vps-starter").await;
    let claims = db.store.claim_due("d1", 10, 0.5).await.unwrap();
    assert_eq!(claims.len(), 2);
    let lease = |id: i64| {
        claims
            .iter()
            .find(|c| c.instance.id == id)
            .unwrap()
            .lease
            .clone()
    };
    let (la, lb) = (lease(a), lease(b));
    // b's step ends; a's goes on and is renewed, with b's stale pair and a pair of a wrong
    // epoch among the renewals.
    db.store
        .release(&lb, NextCheck::After(Duration::from_secs(3600)))
        .await
        .unwrap();
    let held = [(a, la.epoch), (b, lb.epoch), (a, la.epoch + 5)];
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(db.store.renew_leases("d1", &held, 5.0).await.unwrap(), 1);
    }
    // A second past the claim's 0.5 s lease, a is still held: nobody else can claim it.
    assert!(db.store.claim_due("d2", 10, 30.0).await.unwrap().is_empty());
    let row = db.store.instance(b).await.unwrap().unwrap();
    assert_eq!(row.lease_owner, None, "an ended lease is not revived");
    assert!(row.next_check_at > Some(chrono::Utc::now() + chrono::Duration::minutes(50)));
    // Another owner cannot renew a's lease; once renewals stop it runs out and is taken.
    assert_eq!(db.store.renew_leases("d2", &held, 30.0).await.unwrap(), 0);
    assert_eq!(db.store.renew_leases("d1", &held, 0.2).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let taken = db.store.claim_due("d2", 10, 30.0).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].instance.id, a);
    assert_eq!(db.store.renew_leases("d1", &held, 30.0).await.unwrap(), 0);
    let err = db.store.release(&la, NextCheck::Now).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
}

async fn an_owner_name_is_held_by_one_live_daemon_and_taken_back_after_it(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    let first = db
        .store
        .lock_owner("web-1")
        .await
        .unwrap()
        .expect("free name");
    assert!(
        db.store.lock_owner("web-1").await.unwrap().is_none(),
        "a name held by a live daemon is not given twice"
    );
    let other = db
        .store
        .lock_owner("web-2")
        .await
        .unwrap()
        .expect("another name");
    let claimed = db.store.claim_due("web-1", 10, 60.0).await.unwrap();
    assert_eq!(claimed.len(), 1);
    // The holder dies (its lock ends with it); a daemon restarted under the name takes its
    // lease back at once instead of waiting a minute, and the dead holder's writes are fenced.
    drop(first);
    let again = loop {
        // PostgreSQL ends the dead session's lock as soon as it sees the connection close.
        if let Some(lock) = db.store.lock_owner("web-1").await.unwrap() {
            break lock;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(db.store.take_back_leases(&other).await.unwrap(), 0);
    assert_eq!(db.store.take_back_leases(&again).await.unwrap(), 1);
    let reclaimed = db.store.claim_due("web-1", 10, 60.0).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].instance.id, id);
    assert_eq!(reclaimed[0].lease.epoch, claimed[0].lease.epoch + 1);
    let err = db
        .store
        .release(&claimed[0].lease, NextCheck::Now)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    // On PostgreSQL a daemon still running takes a dead one's leases too: it can take the
    // dead one's lock; a live one's it cannot.
    if db.store.engine() == Engine::Postgres {
        db.insert("c3", "vps-starter").await;
        let claimed = db.store.claim_due("web-3", 10, 60.0).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let third = db.store.lock_owner("web-3").await.unwrap().unwrap();
        assert!(db.store.take_over_dead("web-2").await.unwrap().is_empty());
        drop(third);
        let taken = loop {
            let taken = db.store.take_over_dead("web-2").await.unwrap();
            if !taken.is_empty() {
                break taken;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(taken, vec![("web-3".to_owned(), 1)]);
        assert!(
            db.store.lock_owner("web-3").await.unwrap().is_some(),
            "the name is free again"
        );
    } else {
        assert!(db.store.take_over_dead("web-2").await.unwrap().is_empty());
    }
}

async fn records_write_state_and_transition_together(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    let lease = db.claim(id, "w1").await;
    let mut intent = NewTransition::new(Action::Create, Cause::DesiredChange, Outcome::Started);
    intent.details = json!({"server_name": format!("srv-{id}")});
    let i = db
        .store
        .record(
            &lease,
            &ObservedPatch {
                observed_status: Some(ObservedStatus::Provisioning),
                product_revision: Some("0123456789abcdef".into()),
                provider_account: Some(Some("sim-eu".into())),
                pending: Some(Some(Pending::new(Action::Create))),
                ..ObservedPatch::default()
            },
            Some(&intent),
        )
        .await
        .unwrap();
    assert_eq!(i.pending, Some(Pending::new(Action::Create)));
    assert!(i.pending_since.is_some());
    // The provider's action and the hard fallback are typed columns, read back as written.
    let hard = Pending {
        action: Action::Create,
        action_id: Some("act-7".into()),
        hard: true,
    };
    let i = db
        .store
        .record(
            &lease,
            &ObservedPatch {
                pending: Some(Some(hard.clone())),
                ..ObservedPatch::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(i.pending, Some(hard));
    let done = NewTransition {
        details: json!({"provider_action_id": "act-7"}),
        ..NewTransition::new(Action::Create, Cause::DesiredChange, Outcome::Succeeded)
    };
    let i = db
        .store
        .record(
            &lease,
            &ObservedPatch {
                observed_status: Some(ObservedStatus::Active),
                provider_server_id: Some(Some("srv-42".into())),
                ipv4: Some(Some("192.0.2.10".into())),
                observed_generation: Some(1),
                pending: Some(None),
                attempts: Some(0),
                next_check: Some(NextCheck::After(Duration::from_secs(600))),
                ..ObservedPatch::default()
            },
            Some(&done),
        )
        .await
        .unwrap();
    assert_eq!(i.observed_status, ObservedStatus::Active);
    assert_eq!(i.pending, None);
    assert_eq!(i.pending_since, None);
    assert!(i.next_check_at.unwrap() > chrono::Utc::now() + chrono::Duration::seconds(500));
    let h = db.store.history(id).await.unwrap();
    let summary: Vec<(Option<&str>, Option<&str>, &str, &str)> = h
        .iter()
        .map(|t| {
            (
                t.from_status.as_deref(),
                t.to_status.as_deref(),
                t.action.as_str(),
                t.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Some("pending"), Some("provisioning"), "create", "started"),
            (Some("provisioning"), Some("active"), "create", "succeeded"),
        ]
    );
    assert_eq!(h[1].details["provider_action_id"], "act-7");
    assert_eq!(h[1].product_revision.as_deref(), Some("0123456789abcdef"));
    assert_eq!(h[0].details["server_name"], format!("srv-{id}"));
    assert_eq!(
        h[0].details["by"], "w1",
        "every transition names the worker that wrote it"
    );
}

/// Provisions `id` through the store as the reconciler does: the `instance.provisioned`
/// event is written with the transition.
async fn provision(db: &Db, id: i64) {
    let lease = db.claim(id, "w1").await;
    let done = NewTransition::new(Action::Create, Cause::DesiredChange, Outcome::Succeeded);
    db.store
        .record(
            &lease,
            &ObservedPatch {
                observed_status: Some(ObservedStatus::Active),
                provider_server_id: Some(Some(format!("srv-{id}"))),
                ipv4: Some(Some("192.0.2.10".into())),
                ..ObservedPatch::default()
            },
            Some(&done),
        )
        .await
        .unwrap();
    db.store.release(&lease, NextCheck::Now).await.unwrap();
}

async fn a_feed_reader_sees_every_event_once_while_writers_race(db: &Db) {
    for k in 0..60 {
        db.insert(&format!("c{k}"), "vps-starter").await;
    }
    let claims = db.store.claim_due("racer", 1000, 60.0).await.unwrap();
    let expected = claims.len();
    assert_eq!(expected, 60);
    let writers: Vec<_> = claims
        .chunks(15)
        .map(|chunk| {
            let store = db.store.clone();
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                for c in chunk {
                    let patch = ObservedPatch {
                        observed_status: Some(ObservedStatus::Active),
                        ..ObservedPatch::default()
                    };
                    let t = NewTransition::new(
                        Action::Create,
                        Cause::DesiredChange,
                        Outcome::Succeeded,
                    );
                    store.record(&c.lease, &patch, Some(&t)).await.unwrap();
                    store.release(&c.lease, NextCheck::Now).await.unwrap();
                }
            })
        })
        .collect();
    // A reader follows the feed while the writers commit in any order: its cursor never
    // passes an event that becomes visible later.
    let mut seen = Vec::new();
    let mut cursor = 0;
    let start = std::time::Instant::now();
    while seen.len() < expected {
        for e in db.store.events_after(cursor, 7).await.unwrap() {
            assert!(e.seq > cursor, "the feed goes forward");
            cursor = e.seq;
            seen.push(e.instance_id.unwrap());
        }
        assert!(start.elapsed() < Duration::from_secs(60), "saw {seen:?}");
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(db.store.events_after(cursor, 100).await.unwrap().is_empty());
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), expected, "every event once: {seen:?}");
}

async fn events_are_written_with_their_transition_and_delivered_once_each(db: &Db) {
    use provisioner::store::events::{AfterAttempt, Attempt, DeliveryFilter, DeliveryState};
    // An endpoint registered before anything happens hears of everything.
    db.store.consumer("webhook:hook").await.unwrap();
    let a = db.insert("c", "vps-starter").await;
    let b = db.insert("c", "vps-starter").await;
    provision(db, a).await;
    provision(db, b).await;
    let events = db.store.events_after(0, 100).await.unwrap();
    let kinds: Vec<(&str, Option<i64>)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.instance_id))
        .collect();
    assert_eq!(
        kinds,
        [
            ("instance.provisioned", Some(a)),
            ("instance.provisioned", Some(b))
        ]
    );
    assert!(events[0].seq < events[1].seq);
    assert_ne!(events[0].event_id, events[1].event_id);
    let body: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
    assert_eq!(body["data"]["ipv4"], "192.0.2.10");
    assert_eq!(
        db.store
            .events_after(events[0].seq, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    // What was said stays said: events are never rewritten.
    let refused = db
        .billing("UPDATE events SET type = 'instance.lost'")
        .await
        .unwrap_err();
    assert!(refused.contains("append-only"), "{refused}");

    // Queued once, however often the endpoint's position is looked at.
    let all = |_: &str| true;
    assert_eq!(
        db.store.queue_deliveries("hook", &all, 100).await.unwrap(),
        2
    );
    assert_eq!(
        db.store.queue_deliveries("hook", &all, 100).await.unwrap(),
        0
    );
    let jobs = db.store.claim_deliveries(10).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].event_id, events[0].event_id);
    assert_eq!(jobs[0].body, events[0].body);
    // Claimed: not handed out twice.
    assert!(db.store.claim_deliveries(10).await.unwrap().is_empty());
    let attempt = |status| Attempt {
        at: chrono::Utc::now(),
        status: Some(status),
        error: None,
        duration_ms: 3,
    };
    db.store
        .record_attempt(jobs[0].delivery_id, &attempt(204), &AfterAttempt::Delivered)
        .await
        .unwrap();
    db.store
        .record_attempt(
            jobs[1].delivery_id,
            &attempt(500),
            &AfterAttempt::RetryIn(0.0),
        )
        .await
        .unwrap();
    let retry = db.store.claim_deliveries(10).await.unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(
        (retry[0].delivery_id, retry[0].attempts),
        (jobs[1].delivery_id, 1)
    );
    db.store
        .record_attempt(
            retry[0].delivery_id,
            &attempt(410),
            &AfterAttempt::Disable("answered 410 Gone".into()),
        )
        .await
        .unwrap();
    let log = db
        .store
        .deliveries(&DeliveryFilter {
            endpoint_id: Some("hook".into()),
            state: None,
            limit: 10,
        })
        .await
        .unwrap();
    let states: Vec<(DeliveryState, i64, Option<i64>)> = log
        .iter()
        .map(|d| (d.state, d.attempts, d.last_status))
        .collect();
    assert_eq!(
        states,
        [
            (DeliveryState::Failed, 2, Some(410)),
            (DeliveryState::Delivered, 1, Some(204)),
        ]
    );
    let (_, attempts) = db.store.delivery(log[0].id).await.unwrap().unwrap();
    assert_eq!(attempts.len(), 2);
    // Disabled: new events wait, redeliveries are not sent, until it is enabled again.
    let consumer = db.store.consumer("webhook:hook").await.unwrap();
    assert_eq!(
        consumer.disabled_reason.as_deref(),
        Some("answered 410 Gone")
    );
    db.store.redeliver(log[0].id).await.unwrap();
    assert!(db.store.claim_deliveries(10).await.unwrap().is_empty());
    let c = db.insert("c", "vps-starter").await;
    provision(db, c).await;
    assert_eq!(
        db.store.queue_deliveries("hook", &all, 100).await.unwrap(),
        0
    );
    assert!(db.store.enable_consumer("webhook:hook").await.unwrap());
    assert!(!db.store.enable_consumer("webhook:hook").await.unwrap());
    assert_eq!(
        db.store.queue_deliveries("hook", &all, 100).await.unwrap(),
        1
    );
    assert_eq!(db.store.claim_deliveries(10).await.unwrap().len(), 2);
    assert!(matches!(
        db.store.redeliver(999_999).await,
        Err(StoreError::Rejected(_))
    ));

    // A mail consumer takes a batch under a lease, moves on, lets go.
    let new = db
        .store
        .take_events("email:ops", 10)
        .await
        .unwrap()
        .unwrap();
    assert!(new.is_empty(), "a new consumer starts at the newest event");
    db.store
        .advance_consumer("email:ops", 0, true)
        .await
        .unwrap();
    let d = db.insert("c", "vps-starter").await;
    provision(db, d).await;
    let taken = db
        .store
        .take_events("email:ops", 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].instance_id, Some(d));
    assert!(
        db.store
            .take_events("email:ops", 10)
            .await
            .unwrap()
            .is_none(),
        "held by the first taker"
    );
    db.store
        .advance_consumer("email:ops", taken[0].seq, true)
        .await
        .unwrap();
    assert!(db
        .store
        .take_events("email:ops", 10)
        .await
        .unwrap()
        .unwrap()
        .is_empty());
}

async fn release_schedules_the_next_check(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    let lease = db.claim(id, "w1").await;
    db.store
        .release(&lease, NextCheck::After(Duration::from_secs(3600)))
        .await
        .unwrap();
    let i = db.store.instance(id).await.unwrap().unwrap();
    assert_eq!(i.lease_owner, None);
    assert!(db.store.claim_due("w1", 10, 30.0).await.unwrap().is_empty());
    // Sub-second delays are kept: polling an action in flight needs them.
    db.billing(&format!(
        "UPDATE instances SET hostname = 'x' WHERE id = {id}"
    ))
    .await
    .unwrap();
    let lease = db.claim(id, "w1").await;
    db.store
        .release(&lease, NextCheck::After(Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(db.store.claim_due("w1", 10, 30.0).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let lease = db.claim(id, "w1").await;
    if db.store.engine() == Engine::Sqlite {
        // A live instance is always due at some time (a rule billing's SQL cannot bypass on
        // SQLite, where the column has no grant to guard it).
        let err = db
            .store
            .release(&lease, NextCheck::Never)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("next_check_at"), "{err}");
    }
    // Only an instance that needs a person (failed, lost) or is done is never looked at.
    db.store
        .record(
            &lease,
            &ObservedPatch {
                observed_status: Some(ObservedStatus::Failed),
                next_check: Some(NextCheck::Never),
                release_lease: true,
                ..ObservedPatch::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        db.store.instance(id).await.unwrap().unwrap().next_check_at,
        None
    );
}

async fn revisions_are_synced_once_and_readable(db: &Db) {
    let catalog = catalog::load_with_env(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/catalog")),
        &|_| true,
    )
    .unwrap();
    let n = catalog.products.len();
    assert_eq!(db.store.sync_revisions(&catalog).await.unwrap(), n);
    assert_eq!(
        db.store.sync_revisions(&catalog).await.unwrap(),
        0,
        "idempotent"
    );
    let p = catalog.product("sim-vps-small").unwrap();
    let stored = db
        .store
        .product_revision(&p.id, &p.revision.0)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(stored.definition, catalog::revision::normalized(p));
    assert_eq!(
        stored.git_commit,
        catalog.source.git.as_ref().map(|g| g.commit.clone())
    );

    let id = db.insert("c", &p.id).await;
    db.insert("c", &p.id).await;
    let lease = db.claim(id, "w1").await;
    db.store
        .record(
            &lease,
            &ObservedPatch {
                product_revision: Some(p.revision.0.clone()),
                ..ObservedPatch::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        db.store.pinned_revisions(&p.id).await.unwrap(),
        [(None, 1), (Some(p.revision.0.clone()), 1)]
    );
}

async fn manual_tasks_open_complete_and_cancel(db: &Db) {
    let id = db.insert("c", "dedicated-colo-e5").await;
    let lease = db.claim(id, "w1").await;
    let task = db
        .store
        .open_task(
            &lease,
            TaskKind::Provision,
            &json!({"os_image": "debian-12"}),
        )
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::Open);
    let again = db
        .store
        .open_task(&lease, TaskKind::Provision, &json!({}))
        .await
        .unwrap();
    assert_eq!(again.id, task.id, "one open task per kind and instance");
    db.store
        .release(&lease, NextCheck::After(Duration::from_secs(3600)))
        .await
        .unwrap();

    let ring = Keyring::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let sealed = ring.seal(&SecretString::new("r00t-pw"), &task.secret_context());
    let done = db
        .store
        .complete_task(
            task.id,
            &TaskCompletion {
                by: "alice".into(),
                details: json!({"ip": "203.0.113.7", "note": "rack B4"}),
                secret: Some(sealed),
            },
        )
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Done);
    assert_eq!(done.completed_by.as_deref(), Some("alice"));
    assert_eq!(done.details["ip"], "203.0.113.7");
    assert_eq!(
        done.details["os_image"], "debian-12",
        "the request's details are kept"
    );
    assert_eq!(
        ring.open(done.secret.as_ref().unwrap(), &done.secret_context())
            .unwrap()
            .expose(),
        "r00t-pw"
    );
    assert_eq!(
        db.store.claim_due("w1", 10, 30.0).await.unwrap().len(),
        1,
        "completion wakes the instance"
    );
    let err = db
        .store
        .complete_task(task.id, &TaskCompletion::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TaskNotOpen {
                state: TaskState::Done,
                ..
            }
        ),
        "{err}"
    );
    assert!(db
        .store
        .tasks(&TaskFilter {
            open_only: true,
            ..TaskFilter::default()
        })
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        db.store.tasks(&TaskFilter::default()).await.unwrap().len(),
        1
    );
}

async fn credentials_are_stored_sealed(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    let lease = db.claim(id, "w1").await;
    let ring = Keyring::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let context = format!("instance:{id}");
    let sealed = ring.seal(&SecretString::new("correct horse battery staple"), &context);
    let i = db
        .store
        .record(
            &lease,
            &ObservedPatch {
                credentials: Some(Some(sealed)),
                ..ObservedPatch::default()
            },
            None,
        )
        .await
        .unwrap();
    let raw = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM instances WHERE id = {id} AND credentials_sealed LIKE '%horse%'"
        ))
        .await;
    assert_eq!(raw, 0, "the password is not stored in clear");
    let stored = i.credentials.as_ref().unwrap();
    assert_eq!(stored.key_id, ring.primary_id());
    assert_eq!(
        ring.open(stored, &i.secret_context()).unwrap().expose(),
        "correct horse battery staple"
    );
    assert!(!format!("{i:?}").contains("horse"));
}

async fn concurrent_claimers_never_share_an_instance(db: &Db) {
    for n in 0..200 {
        db.insert(&format!("c{n}"), "vps-starter").await;
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let store = db.store.clone();
        let seen = seen.clone();
        workers.push(tokio::spawn(async move {
            let owner = format!("worker-{w}");
            loop {
                let claims = store.claim_due(&owner, 10, 60.0).await.unwrap();
                if claims.is_empty() {
                    break;
                }
                for c in claims {
                    seen.lock().unwrap().push(c.instance.id);
                    store
                        .release(&c.lease, NextCheck::After(Duration::from_secs(3600)))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), 200, "every instance claimed");
    assert_eq!(seen.len(), 200, "no instance claimed twice");
}

async fn a_change_during_a_lease_is_not_slept_on(db: &Db) {
    let id = db.insert("c", "vps-starter").await;
    let lease = db.claim(id, "w1").await;
    // Billing suspends the server while a worker is in the middle of a step…
    db.billing(&format!(
        "UPDATE instances SET desired_status = 'suspended' WHERE id = {id}"
    ))
    .await
    .unwrap();
    // …and the worker, unaware, schedules its next look in an hour.
    db.store
        .record(
            &lease,
            &ObservedPatch {
                next_check: Some(NextCheck::After(Duration::from_secs(3600))),
                ..ObservedPatch::default()
            },
            None,
        )
        .await
        .unwrap();
    db.store
        .release(&lease, NextCheck::After(Duration::from_secs(3600)))
        .await
        .unwrap();
    let claims = db.store.claim_due("w2", 10, 30.0).await.unwrap();
    assert_eq!(claims.len(), 1, "the suspension is due now, not in an hour");
    assert_eq!(claims[0].lease.desired_generation, 2);
}

async fn a_backlog_is_claimed_batch_after_batch(db: &Db) {
    db.billing(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 250)
         INSERT INTO instances (customer_id, product_id) SELECT 'c' || x, 'vps-starter' FROM n",
    )
    .await
    .unwrap();
    let mut seen = HashSet::new();
    for batch in 0..3 {
        let claims = db.store.claim_due("w", 100, 60.0).await.unwrap();
        assert_eq!(claims.len(), if batch < 2 { 100 } else { 50 });
        for c in &claims {
            assert!(seen.insert(c.instance.id));
            assert!(
                c.instance.next_check_at.unwrap() > chrono::Utc::now(),
                "a leased row is not due"
            );
        }
    }
    assert!(db.store.claim_due("w", 100, 60.0).await.unwrap().is_empty());
    assert_eq!(db.store.queue_stats().await.unwrap().due, 0);
}

async fn listing_filters_and_queue_stats(db: &Db) {
    let a = db.insert("alice", "vps-starter").await;
    db.insert("bob", "vps-starter").await;
    db.insert("alice", "vps-pro").await;
    db.store
        .set_desired(a, DesiredStatus::Suspended, Some("abuse"))
        .await
        .unwrap();
    let alice = db
        .store
        .list_instances(&InstanceFilter {
            customer_id: Some("alice".into()),
            ..InstanceFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(alice.len(), 2);
    let suspended = db
        .store
        .list_instances(&InstanceFilter {
            desired_status: Some(DesiredStatus::Suspended),
            ..InstanceFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(suspended.iter().map(|i| i.id).collect::<Vec<_>>(), [a]);
    assert_eq!(suspended[0].suspend_reason.as_deref(), Some("abuse"));
    let page = db
        .store
        .list_instances(&InstanceFilter {
            after_id: Some(a),
            limit: Some(1),
            ..InstanceFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert!(page[0].id > a);
    let pending = db
        .store
        .list_instances(&InstanceFilter {
            observed_status: Some(ObservedStatus::Pending),
            ..InstanceFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.len(), 3);
    let stats = db.store.queue_stats().await.unwrap();
    assert_eq!((stats.due, stats.leased, stats.total), (3, 0, 3));
    let claims = db.store.claim_due("w", 2, 30.0).await.unwrap();
    assert_eq!(claims.len(), 2);
    let stats = db.store.queue_stats().await.unwrap();
    assert_eq!(stats.leased, 2);
    // The daemon's gauges count the same in one pass, with the fleet by status.
    db.store
        .record(
            &claims[0].lease,
            &ObservedPatch {
                observed_status: Some(ObservedStatus::Active),
                next_check: Some(NextCheck::After(Duration::from_secs(600))),
                release_lease: true,
                ..ObservedPatch::default()
            },
            None,
        )
        .await
        .unwrap();
    let fleet = db.store.fleet_stats().await.unwrap();
    assert_eq!(
        fleet.by_status,
        [("pending".to_owned(), 2), ("active".to_owned(), 1)]
    );
    assert_eq!(fleet.queue, db.store.queue_stats().await.unwrap());
    assert_eq!(
        (fleet.queue.due, fleet.queue.leased, fleet.queue.total),
        (1, 1, 3)
    );
}

/// Values billing's SQL can store but the reconciler cannot use: the row is set aside (failed,
/// with the column named) or left unclaimed, and every other instance is still claimed.
async fn one_bad_row_never_blocks_the_others(db: &Db) {
    let good = db.insert("c", "p").await;
    let bad: Vec<(i64, &str, &str)> = match db.store.engine() {
        // SQLite stores whatever a client writes, whatever the column's type. Billing's
        // columns are typed by triggers; the reconciler's are not, so a row can still hold
        // what the reconciler cannot read.
        Engine::Sqlite => vec![
            (
                db.insert("c", "p").await,
                "last_error = X'ff00'",
                "last_error",
            ),
            (db.insert("c", "p").await, "attempts = 'abc'", "attempts"),
        ],
        Engine::Postgres => Vec::new(),
    };
    for (id, set, _) in &bad {
        db.billing(&format!("UPDATE instances SET {set} WHERE id = {id}"))
            .await
            .unwrap();
    }
    // A lease epoch at the 64-bit maximum cannot be claimed again (the next epoch overflows).
    let stuck = db.insert("c", "p").await;
    db.billing(&format!(
        "UPDATE instances SET lease_epoch = 9223372036854775807 WHERE id = {stuck}"
    ))
    .await
    .unwrap();
    let claims = db
        .store
        .claim_due("w", 100, 30.0)
        .await
        .expect("the claim goes through");
    let claimed: Vec<i64> = claims.iter().map(|c| c.instance.id).collect();
    assert_eq!(claimed, vec![good], "only the readable instance is claimed");
    for (id, _, column) in &bad {
        let reason: String = match db.store.engine() {
            Engine::Sqlite => sqlx::query_scalar(&format!(
                "SELECT status_reason FROM instances WHERE id = {id} AND observed_status = 'failed' AND next_check_at IS NULL AND lease_owner IS NULL"
            ))
            .fetch_one(db.store.sqlite_pool().unwrap())
            .await
            .expect("set aside as failed, due never, lease given back"),
            Engine::Postgres => unreachable!(),
        };
        assert!(
            reason.contains(&format!("column `{column}`")) && reason.contains("instances retry"),
            "{reason}"
        );
        let history = db
            .scalar(&format!(
            "SELECT COUNT(*) FROM instance_transitions WHERE instance_id = {id} AND action = 'fail'"
        ))
            .await;
        assert_eq!(history, 1, "the quarantine is in the instance's history");
        let failed = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM events WHERE instance_id = {id} AND type = 'instance.failed'"
            ))
            .await;
        assert_eq!(failed, 1, "billing and the admin hear of it");
    }
    // The next claim finds nothing more: the bad rows are not retried in a loop.
    assert!(db.store.claim_due("w", 100, 30.0).await.unwrap().is_empty());
}

/// SQLite's REPLACE deletes a conflicting row without firing delete triggers: a terminated
/// instance could come back to life, a transition be rewritten. Ids never change either.
async fn rows_are_never_replaced_nor_renumbered(db: &Db) {
    let a = db.insert("c", "p").await;
    let b = db.insert("c", "p").await;
    db.billing(&format!(
        "UPDATE instances SET desired_status = 'terminated' WHERE id = {a}"
    ))
    .await
    .unwrap();
    let err = db
        .billing(&format!(
            "UPDATE instances SET id = {} WHERE id = {b}",
            b + 100
        ))
        .await
        .unwrap_err();
    assert!(err.contains("id never changes"), "{err}");
    if db.store.engine() == Engine::Sqlite {
        for sql in [
            format!("INSERT OR REPLACE INTO instances (id, customer_id, product_id) VALUES ({a}, 'c', 'p')"),
            format!("REPLACE INTO instances (id, customer_id, product_id) VALUES ({b}, 'x', 'p')"),
            format!("UPDATE OR REPLACE instances SET id = {a} WHERE id = {b}"),
        ] {
            let err = db.billing(&sql).await.unwrap_err();
            assert!(
                err.contains("cannot be replaced") || err.contains("id never changes"),
                "{sql}: {err}"
            );
        }
        db.billing(&format!(
            "INSERT INTO instance_transitions (instance_id, action, cause, outcome) VALUES ({a}, 'retry', 'manual', 'succeeded')"
        ))
        .await
        .unwrap();
        let t = db
            .scalar(&format!(
                "SELECT MAX(id) FROM instance_transitions WHERE instance_id = {a}"
            ))
            .await;
        let err = db
            .billing(&format!(
                "INSERT OR REPLACE INTO instance_transitions (id, instance_id, action, cause, outcome) VALUES ({t}, {a}, 'fail', 'manual', 'failed')"
            ))
            .await
            .unwrap_err();
        assert!(err.contains("append-only"), "{err}");
    }
    let a_now = db.store.instance(a).await.unwrap().unwrap();
    assert_eq!(
        a_now.desired_status,
        DesiredStatus::Terminated,
        "still terminated"
    );
    assert!(
        db.store.instance(b).await.unwrap().is_some(),
        "b is still there"
    );
}

/// Billing's columns take their type only (SQLite stores anything anywhere otherwise), and
/// counters stay far from the 64-bit limit so an increment never overflows mid-write.
async fn billing_columns_are_typed_and_counters_bounded(db: &Db) {
    let id = db.insert("c", "p").await;
    let mut refused = vec![(
        "UPDATE instances SET reboot_requested = 9007199254740992 WHERE id = {id}",
        "reboot_requested",
    )];
    if db.store.engine() == Engine::Sqlite {
        // PostgreSQL's columns are typed already (it reads X'ff00' as a bit string whose
        // text is text).
        refused.extend([
            (
                "UPDATE instances SET hostname = X'ff00' WHERE id = {id}",
                "hostname must be text",
            ),
            (
                "UPDATE instances SET reboot_requested = 'abc' WHERE id = {id}",
                "reboot_requested must be an integer",
            ),
            (
                "INSERT INTO instances (customer_id, product_id, hostname) VALUES ('c', 'p', X'00ff')",
                "hostname must be text",
            ),
        ]);
    }
    for (sql, says) in refused {
        let sql = sql.replace("{id}", &id.to_string());
        let Err(err) = db.billing(&sql).await else {
            panic!("{sql} was accepted");
        };
        assert!(err.contains(says), "{sql}: {err}");
    }
    // A generation at its limit: the next billing change is refused, clearly.
    db.billing(&format!(
        "UPDATE instances SET desired_generation = 9007199254740991 WHERE id = {id}"
    ))
    .await
    .unwrap();
    let err = db
        .billing(&format!(
            "UPDATE instances SET desired_status = 'suspended' WHERE id = {id}"
        ))
        .await
        .unwrap_err();
    assert!(err.contains("desired_generation"), "{err}");
}

async fn migrations_are_idempotent(db: &Db) {
    assert!(db.store.migrate().await.unwrap().is_empty());
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM schema_migrations").await,
        16
    );
}

async fn missing_things_are_reported(db: &Db) {
    assert!(db.store.instance(999).await.unwrap().is_none());
    assert!(matches!(
        db.store.history(999).await,
        Err(StoreError::InstanceNotFound(999))
    ));
    assert!(matches!(
        db.store
            .set_desired(999, DesiredStatus::Suspended, None)
            .await,
        Err(StoreError::InstanceNotFound(999))
    ));
    assert!(matches!(
        db.store.request_reboot(999).await,
        Err(StoreError::InstanceNotFound(999))
    ));
    assert!(matches!(
        db.store.complete_task(5, &TaskCompletion::default()).await,
        Err(StoreError::TaskNotFound(5))
    ));
    let lease = provisioner::store::Lease {
        instance_id: 999,
        owner: "w".into(),
        epoch: 1,
        desired_generation: 1,
    };
    assert!(matches!(
        db.store.release(&lease, NextCheck::Now).await,
        Err(StoreError::InstanceNotFound(999))
    ));
}

/// PostgreSQL only: the trigger's NOTIFY reaches a listener with the instance id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notifies_desired_changes() {
    let Some(db) = postgres().await else { return };
    let pool = db.store.postgres_pool().unwrap().clone();
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("provisioner_instances").await.unwrap();
    let id = db.insert("c", "vps-starter").await;
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification for the insert")
        .unwrap();
    assert_eq!(n.payload(), id.to_string());
    db.billing(&format!(
        "UPDATE instances SET desired_status = 'suspended' WHERE id = {id}"
    ))
    .await
    .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification for the update")
        .unwrap();
    assert_eq!(n.payload(), id.to_string());
}

/// PostgreSQL only: billing's login role, made a member of `provisioner_billing`, can order,
/// change and read instances through the billing columns, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_billing_role_holds_exactly_the_billing_columns() {
    let Some(db) = postgres().await else { return };
    let owner = db.store.postgres_pool().unwrap().clone();
    let login = format!("billing_{}", std::process::id());
    sqlx::raw_sql(&format!(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{login}') THEN
                 CREATE ROLE {login} LOGIN;
             END IF;
         END $$;
         GRANT provisioner_billing TO {login};"
    ))
    .execute(&owner)
    .await
    .unwrap();
    let url = std::env::var("TEST_DATABASE_URL").unwrap();
    let database = sqlx::query_scalar::<_, String>("SELECT current_database()")
        .fetch_one(&owner)
        .await
        .unwrap();
    let mut options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    options = options.username(&login).database(&database);
    let billing = sqlx::PgPool::connect_with(options).await.unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO instances (customer_id, product_id, hostname) VALUES ('c', 'p', 'h') RETURNING id",
    )
    .fetch_one(&billing)
    .await
    .expect("billing orders through its columns");
    sqlx::query("UPDATE instances SET desired_status = 'suspended', suspend_reason = 'non-payment', reboot_requested = reboot_requested + 1 WHERE id = $1")
        .bind(id)
        .execute(&billing)
        .await
        .expect("billing changes desired state");
    let status: String = sqlx::query_scalar("SELECT observed_status FROM instances WHERE id = $1")
        .bind(id)
        .fetch_one(&billing)
        .await
        .expect("billing reads back");
    assert_eq!(status, "pending");
    // Holds and order references are billing's (and admins') too.
    for sql in [
        format!(
            "INSERT INTO instance_holds (instance_id, kind, reason) VALUES ({id}, 'abuse', 'spam')"
        ),
        format!("UPDATE instances SET billing_ref = 'svc-{id}' WHERE id = {id}"),
        format!("DELETE FROM instance_holds WHERE instance_id = {id} AND kind = 'abuse'"),
        format!("INSERT INTO instance_holds (instance_id, kind) VALUES ({id}, 'billing')"),
        format!("UPDATE instances SET product_id = 'p2', os_image = 'debian-12', reinstall_requested = reinstall_requested + 1 WHERE id = {id}"),
    ] {
        sqlx::raw_sql(&sql).execute(&billing).await.expect(&sql);
    }
    let holds: Option<String> = sqlx::query_scalar("SELECT holds FROM instances WHERE id = $1")
        .bind(id)
        .fetch_one(&billing)
        .await
        .unwrap();
    assert_eq!(
        holds.as_deref(),
        Some("billing"),
        "the mirror is kept for billing too"
    );
    let refused = [
        format!("UPDATE instances SET holds_seen = 'x' WHERE id = {id}"),
        format!("UPDATE instances SET holds = NULL WHERE id = {id}"),
        format!("UPDATE instances SET observed_status = 'active' WHERE id = {id}"),
        format!("UPDATE instances SET provider_server_id = '7' WHERE id = {id}"),
        format!("UPDATE instances SET next_check_at = NULL WHERE id = {id}"),
        format!("UPDATE instances SET lease_epoch = lease_epoch + 1 WHERE id = {id}"),
        format!("UPDATE instances SET reinstall_handled = 1 WHERE id = {id}"),
        format!("UPDATE instances SET applied_product_id = 'p2' WHERE id = {id}"),
        format!("UPDATE instances SET observe_only = true WHERE id = {id}"),
        format!("UPDATE instances SET claim_pending = true WHERE id = {id}"),
        "INSERT INTO instances (customer_id, product_id, ipv4) VALUES ('c', 'p', '192.0.2.1')".to_owned(),
        "INSERT INTO instances (id, customer_id, product_id) VALUES (999999, 'c', 'p')".to_owned(),
        format!("INSERT INTO instance_transitions (instance_id, action, cause, outcome) VALUES ({id}, 'fail', 'manual', 'failed')"),
        "INSERT INTO product_revisions (product_id, revision, definition) VALUES ('p', 'r', '{}')".to_owned(),
        "UPDATE ovh_pool SET instance_id = NULL".to_owned(),
        "DELETE FROM schema_migrations".to_owned(),
        "SELECT token_hash FROM api_tokens".to_owned(),
        "SELECT response FROM idempotency_keys".to_owned(),
        "INSERT INTO api_tokens (name, scope, token_hash, created_by) VALUES ('x', 'admin', 'h', 'me')".to_owned(),
    ];
    for sql in refused {
        let err = sqlx::raw_sql(&sql).execute(&billing).await.expect_err(&sql);
        let message = err
            .as_database_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert!(message.contains("permission denied"), "{sql}: {message}");
    }
    // Migrating again keeps the grants (the role block runs on every migrate).
    assert!(db.store.migrate().await.unwrap().is_empty());
    billing.close().await;
}

/// SQLite only: a plain client (no provisioner functions, as the `sqlite3` shell or Python's
/// `sqlite3` module) writes billing's columns and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_plain_clients_write_billing_columns_only() {
    let db = sqlite().await;
    let id = db.insert("c", "p").await;
    let path = db
        .store
        .sqlite_pool()
        .unwrap()
        .connect_options()
        .get_filename()
        .to_owned();
    let plain = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let run = |sql: String| {
        let plain = plain.clone();
        async move {
            sqlx::raw_sql(&sql)
                .execute(&plain)
                .await
                .map(drop)
                .map_err(|e| {
                    e.as_database_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
                })
        }
    };
    // Billing's own writes go through.
    run(format!("UPDATE instances SET desired_status = 'suspended', suspend_reason = 'non-payment', reboot_requested = reboot_requested + 1 WHERE id = {id}")).await.unwrap();
    run(format!("UPDATE instances SET os_image = 'debian-12', reinstall_requested = reinstall_requested + 1 WHERE id = {id}")).await.unwrap();
    run("INSERT INTO instances (customer_id, product_id, hostname) VALUES ('c2', 'p', 'h')".into())
        .await
        .unwrap();
    // Holds are billing's to place and lift; the mirror and what the reconciler saw are not.
    run(format!(
        "INSERT INTO instance_holds (instance_id, kind, reason) VALUES ({id}, 'abuse', 'spam')"
    ))
    .await
    .unwrap();
    run(format!(
        "INSERT INTO instance_holds (instance_id, kind) VALUES ({id}, 'billing')"
    ))
    .await
    .unwrap();
    run(format!(
        "DELETE FROM instance_holds WHERE instance_id = {id} AND kind = 'billing'"
    ))
    .await
    .unwrap();
    assert_eq!(
        db.store.instance(id).await.unwrap().unwrap().holds,
        ["abuse"]
    );
    let refused = [
        (format!("UPDATE instances SET holds_seen = 'abuse' WHERE id = {id}"), "provisioner_owns_holds_seen"),
        (format!("UPDATE instances SET holds = NULL WHERE id = {id}"), "holds is kept by the database"),
        (format!("INSERT INTO instance_holds (instance_id, kind) VALUES ({id}, 'two words')"), "lower-case word"),
        (format!("UPDATE instances SET observed_status = 'active' WHERE id = {id}"), "provisioner_owns_observed_status"),
        (format!("UPDATE instances SET provider_server_id = '7' WHERE id = {id}"), "provisioner_owns_provider_server_id"),
        (format!("UPDATE instances SET lease_epoch = lease_epoch + 1 WHERE id = {id}"), "provisioner_owns_lease_epoch"),
        (format!("UPDATE instances SET desired_status = 'active', ipv4 = '192.0.2.9' WHERE id = {id}"), "provisioner_owns_ipv4"),
        (format!("UPDATE instances SET next_check_at = NULL WHERE id = {id}"), "next_check_at"),
        (format!("UPDATE instances SET reinstall_handled = 0 WHERE id = {id}"), "provisioner_owns_reinstall_handled"),
        (format!("UPDATE instances SET applied_product_id = 'p2' WHERE id = {id}"), "provisioner_owns_applied_product_id"),
        (format!("UPDATE instances SET observe_only = 1 WHERE id = {id}"), "provisioner_owns_observe_only"),
        (format!("UPDATE instances SET claim_pending = 1 WHERE id = {id}"), "provisioner_owns_claim_pending"),
        ("INSERT INTO instances (customer_id, product_id, claim_pending) VALUES ('c', 'p', 1)".into(), "reconciler-owned columns"),
        (format!("UPDATE instances SET reinstall_requested = -1 WHERE id = {id}"), "reinstall_requested never decreases"),
        (format!("UPDATE instances SET reinstall_requested = 'twice' WHERE id = {id}"), "reinstall_requested must be an integer"),
        ("INSERT INTO instances (customer_id, product_id, applied_product_id) VALUES ('c', 'p', 'p')".into(), "reconciler-owned columns"),
        ("INSERT INTO instances (customer_id, product_id, ipv4) VALUES ('c', 'p', '192.0.2.1')".into(), "reconciler-owned columns"),
        ("INSERT INTO instances (customer_id, product_id, next_check_at) VALUES ('c', 'p', NULL)".into(), "reconciler-owned columns"),
        ("INSERT INTO instances (id, customer_id, product_id) VALUES (9223372036854775807, 'c', 'p')".into(), "reconciler-owned columns"),
        (format!("INSERT INTO instance_transitions (instance_id, action, cause, outcome) VALUES ({id}, 'fail', 'manual', 'failed')"), "provisioner_owns_instance_transitions"),
        ("INSERT INTO product_revisions (product_id, revision, definition, loaded_at) VALUES ('p', 'r', '{}', 'x')".into(), "provisioner_owns_product_revisions"),
        ("DELETE FROM schema_migrations".into(), "provisioner_owns_schema_migrations"),
        ("UPDATE ovh_pool SET instance_id = NULL".into(), "provisioner_owns_ovh_pool"),
        ("INSERT INTO api_tokens (name, scope, token_hash, created_by) VALUES ('x', 'admin', 'h', 'me')".into(), "provisioner_owns_api_tokens"),
        ("DELETE FROM idempotency_keys".into(), "provisioner_owns_idempotency_keys"),
    ];
    for (sql, says) in refused {
        let err = run(sql.clone()).await.expect_err(&sql);
        assert!(err.contains(says), "{sql}: {err}");
    }
    let i = db.store.instance(id).await.unwrap().unwrap();
    assert_eq!(
        i.observed_status,
        ObservedStatus::Pending,
        "nothing of the reconciler's changed"
    );
    assert_eq!(i.desired_status, DesiredStatus::Suspended);
    plain.close().await;
}
