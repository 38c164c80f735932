//! `provisioner demo` (README's main-job command) and `provisioner plan`, as a person runs them.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn the_demo_converges_with_no_duplicates_and_no_credentials() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("demo")
        .current_dir(repo)
        .env_remove("PROVISIONER_SECRET_KEY")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo converged"), "{stdout}");
    assert!(
        stdout.contains("0 instances with a duplicate server, 0 orphans"),
        "{stdout}"
    );
    assert!(stdout.contains("history of instance"), "{stdout}");
    assert!(
        stdout.contains("database /"),
        "the demo names its temporary database: {stdout}"
    );
}

#[test]
fn plan_explains_without_acting() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("p.db").display());
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .args(["--database-url", &db])
            .args(args)
            .arg("--catalog")
            .arg(&catalog)
            .env_remove("HCLOUD_TOKEN")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let o = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["--database-url", &db, "migrate"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Nothing ordered yet: nothing pending, exit 0 even with --detailed-exitcode.
    let o = run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(
            "Plan: 0 to create, 0 to suspend, 0 to unsuspend, 0 to reboot, 0 to resize, 0 to reinstall, 0 to terminate, 0 to claim, 0 in flight, 0 waiting, 0 needing a person, 0 converged."
        ),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let orders: [(&str, &[&str]); 3] = [
        ("sim-vps-small", &[]),
        ("from-the-future", &["--no-catalog-check"]),
        // Its account's token is not in this environment: the daemon holds it back.
        ("vps-starter", &[]),
    ];
    for (product, check) in orders {
        let mut args = vec![
            "instances",
            "create",
            "--customer",
            "c",
            "--product",
            product,
        ];
        args.extend_from_slice(check);
        let o = run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = run(&["plan"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("create the server"), "{out}");
    assert!(
        out.contains("wait: unknown product `from-the-future`: not in the catalog"),
        "{out}"
    );
    assert!(
        out.contains(
            "wait: account `hetzner-main` (module `hetzner`) has no credentials: set HCLOUD_TOKEN"
        ),
        "plan agrees with the daemon: {out}"
    );
    assert!(
        out.contains("Plan: 1 to create, 0 to suspend, 0 to unsuspend, 0 to reboot, 0 to resize, 0 to reinstall, 0 to terminate, 0 to claim, 0 in flight, 2 waiting, 0 needing a person, 0 converged."),
        "{out}"
    );
    let o = run(&["plan", "--format", "json", "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(2), "changes pending: exit 2");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["create"], 1);
    assert_eq!(v["summary"]["waiting"], 2);
    assert_eq!(v["pending"], 3);
    assert_eq!(v["instances"].as_array().unwrap().len(), 3);
    assert_eq!(v["instances"][0]["step"], "create");
    let o = run(&["plan"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("create the server"),
        "plan changed nothing"
    );
    // With --detailed-exitcode an error is 1, as Terraform's.
    let o = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args([
            "--database-url",
            "sqlite:///nonexistent/dir/x.db",
            "plan",
            "--detailed-exitcode",
        ])
        .arg("--catalog")
        .arg(&catalog)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// SIGTERM while steps wait for rate budget and others hang on a slow provider: the daemon
/// drains for its deadline, abandons the rest (their intent is recorded) and exits well
/// within the 10 s a supervisor gives before SIGKILL.
#[test]
fn sigterm_with_a_saturated_backlog_exits_within_the_drain_deadline() {
    use provisioner::store::{ConnectOptions, NewInstance, SqlStore, Store};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let catalog_dir = common::catalog(&[(
        "c.yaml",
        "apiVersion: provisioner/v1
kind: ProviderAccount
id: slow
module: sim
rate_limit: {requests_per_minute: 10}
simulation: {latency_ms: 30000, boot_seconds: 1, action_seconds: 1}
---
apiVersion: provisioner/v1
kind: Product
id: vps
name: VPS
type: vps
specs: {cpu_cores: 1, ram_gb: 1, storage_gb: 20}
pricing: {currency: EUR, monthly: \"4.50\"}
locations: [here]
os_images: [debian-12]
provisioning: {account: slow, config: {}}
",
    )]);
    let catalog = catalog_dir.path().to_owned();
    let db = format!("sqlite://{}", dir.path().join("d.db").display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = SqlStore::open(&db, &ConnectOptions::default())
            .await
            .unwrap();
        for _ in 0..300 {
            store
                .create_instance(&NewInstance {
                    customer_id: "c".into(),
                    product_id: "vps".into(),
                    ..NewInstance::default()
                })
                .await
                .unwrap();
        }
        store.close().await;
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["--database-url", &db, "run", "--listen", "127.0.0.1:0"])
        .arg("--catalog")
        .arg(&catalog)
        .args(["--drain-seconds", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let the workers fill up: ten creates hang on the 30 s provider, the rest wait for budget.
    let store = runtime
        .block_on(SqlStore::open(&db, &ConnectOptions::default()))
        .unwrap();
    let started = Instant::now();
    loop {
        let leased = runtime.block_on(store.queue_stats()).unwrap().leased;
        if leased >= 32 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the daemon never saturated its workers ({leased} leased)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("the daemon did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = signalled.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM (drain deadline 3 s): {stderr}"
    );
    assert!(
        stderr.contains("drain deadline passed"),
        "steps hanging on the provider were abandoned: {stderr}"
    );
    // Nothing was lost, and the abandoned steps gave their leases back: the next daemon
    // takes them up at once instead of after the lease.
    let leftover = runtime.block_on(store.queue_stats()).unwrap();
    assert_eq!(leftover.total, 300);
    assert_eq!(leftover.leased, 0, "{stderr}");
}

/// What an admin sees through the binary while the daemon works: lists with reasons, ages and
/// the rows past --limit, histories with their actor, manual tasks with every fact, refused
/// nonsense, and a task cancelled when billing terminates first.
#[test]
fn an_admins_day_through_the_binary() {
    use serde_json::Value;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let catalog_dir = common::catalog(&[(
        "c.yaml",
        "apiVersion: provisioner/v1
kind: ProviderAccount
id: fast
module: sim
simulation: {boot_seconds: 0.2, action_seconds: 0.1}
---
apiVersion: provisioner/v1
kind: ProviderAccount
id: rack
module: manual
---
apiVersion: provisioner/v1
kind: Product
id: vps
name: VPS
type: vps
specs: {cpu_cores: 1, ram_gb: 1, storage_gb: 20}
pricing: {currency: EUR, monthly: \"4.50\"}
locations: [here]
os_images: [debian-12]
provisioning: {account: fast}
---
apiVersion: provisioner/v1
kind: Product
id: box
name: Box
type: dedicated
specs: {cpu_cores: 8, ram_gb: 64, storage_gb: 2000}
pricing: {currency: EUR, monthly: \"99.00\"}
locations: [dc1]
os_images: [{name: debian-12, image: debian12_64}]
provisioning: {account: rack, config: {instructions: rack it}}
",
    )]);
    let catalog = catalog_dir.path().to_owned();
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let cli = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .args(["--database-url", &db])
            .args(args)
            .env_remove("RUST_LOG")
            .env("USER", "alice")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let json = |args: &[&str]| -> Value {
        let (code, out, err) = cli(args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };
    assert_eq!(cli(&["migrate"]).0, Some(0));
    let catalog_arg = catalog.to_str().unwrap();
    let order = |product: &str, customer: &str| -> i64 {
        json(&[
            "instances",
            "create",
            "--customer",
            customer,
            "--product",
            product,
            "--hostname",
            "web1.example.com",
            "--catalog",
            catalog_arg,
            "--format",
            "json",
        ])["id"]
            .as_i64()
            .unwrap()
    };
    let vps = order("vps", "cust-1");
    let box1 = order("box", "cust-2");
    let box2 = order("box", "cust-3");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args([
            "--database-url",
            &db,
            "run",
            "--listen",
            "127.0.0.1:0",
            "--idle-poll-ms",
            "20",
        ])
        .args(["--catalog", catalog_arg])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |what: &str, check: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let observed = |id: i64| -> String {
        json(&["instances", "show", &id.to_string(), "--format", "json"])["observed_status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    wait_for("the vps is active", &|| observed(vps) == "active");
    let s = json(&[
        "instances",
        "set",
        &vps.to_string(),
        "--desired",
        "suspended",
        "--reason",
        "non-payment",
        "--format",
        "json",
    ]);
    assert_eq!(s["desired_status"], "suspended");
    assert!(s["created_at"].as_str().unwrap().ends_with('Z'));
    wait_for("the vps is suspended", &|| observed(vps) == "suspended");

    // History: a header, millisecond UTC times, and who asked.
    let (_, history, _) = cli(&["instances", "history", &vps.to_string()]);
    let lines: Vec<&str> = history.lines().collect();
    assert!(
        lines[1].starts_with("AT ") && lines[1].contains("ACTOR"),
        "{history}"
    );
    let at = lines[2].split_whitespace().next().unwrap();
    assert!(
        at.len() == 24 && at.ends_with('Z') && at.as_bytes()[19] == b'.',
        "{at}"
    );
    assert!(history.contains("billing (non-payment)"), "{history}");
    let h = json(&["instances", "history", &vps.to_string(), "--format", "json"]);
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .any(|t| t["actor"] == "billing (non-payment)"),
        "{h}"
    );

    // The manual inbox: both provision tasks, with every fact the admin needs.
    wait_for("two provision tasks", &|| {
        json(&["tasks", "list", "--open", "--format", "json"])
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    let tasks = json(&["tasks", "list", "--open", "--format", "json"]);
    let task_of = |id: i64| {
        tasks
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["instance_id"] == id)
            .unwrap()
            .clone()
    };
    let t1 = task_of(box1);
    for (k, v) in [
        ("customer", "cust-2"),
        ("product", "box"),
        ("location", "dc1"),
        ("os_image", "debian-12"),
        ("image", "debian12_64"),
        ("hostname", "web1.example.com"),
        ("instructions", "rack it"),
    ] {
        assert_eq!(t1["details"][k], v, "{t1}");
    }
    let task1 = t1["id"].as_i64().unwrap().to_string();
    for (args, message) in [
        (
            vec!["--ip", "300.1.2.3"],
            "`300.1.2.3` is not an IPv4 address",
        ),
        (vec!["--ipv6", "fe80::zz"], "is not an IPv6 address"),
        (vec!["--note", "done"], "needs the server's address"),
    ] {
        let mut a = vec!["tasks", "complete", task1.as_str()];
        a.extend(args);
        let (code, _, err) = cli(&a);
        assert_eq!(code, Some(1), "{a:?}");
        assert!(err.contains(message), "{err}");
    }
    let done = json(&[
        "tasks",
        "complete",
        &task1,
        "--ip",
        "192.0.2.7",
        "--format",
        "json",
    ]);
    assert_eq!(done["state"], "done");
    assert_eq!(done["completed_by"], "alice");
    wait_for("box 1 is active", &|| observed(box1) == "active");
    assert_eq!(
        json(&["instances", "show", &box1.to_string(), "--format", "json"])["ipv4"],
        "192.0.2.7"
    );

    // Billing cancels box 2 before the admin racked it: the task is cancelled, nothing built.
    let task2 = task_of(box2)["id"].as_i64().unwrap();
    cli(&[
        "instances",
        "set",
        &box2.to_string(),
        "--desired",
        "terminated",
    ]);
    wait_for("box 2 is terminated", &|| observed(box2) == "terminated");
    let all = json(&["tasks", "list", "--format", "json"]);
    let t2 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == task2)
        .unwrap();
    assert_eq!(t2["state"], "cancelled", "{t2}");
    assert!(
        !all.as_array()
            .unwrap()
            .iter()
            .any(|t| t["instance_id"] == box2 && t["kind"] == "terminate"),
        "no terminate task for a server never built: {all}"
    );

    // Lists: reasons, ages, and how many rows lie past --limit.
    let (_, list, _) = cli(&["instances", "list", "--limit", "2"]);
    assert!(
        list.lines().next().unwrap().contains("AGE") && list.contains("REASON"),
        "{list}"
    );
    assert!(
        list.contains("2 of 3 instance(s) shown, 1 more past --limit"),
        "{list}"
    );
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}
