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
