//! `provisioner demo` (README's main-job command) and `provisioner plan`, as a person runs them.

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
            .output()
            .unwrap()
    };
    let orders: [(&str, &[&str]); 2] = [
        ("sim-vps-small", &[]),
        ("from-the-future", &["--no-catalog-check"]),
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
    assert!(out.contains("2 instance(s) not converged"), "{out}");
    let o = run(&["plan"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("create the server"),
        "plan changed nothing"
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
    let catalog = dir.path().join("catalog");
    std::fs::create_dir(&catalog).unwrap();
    std::fs::write(
        catalog.join("c.yaml"),
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
    )
    .unwrap();
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
