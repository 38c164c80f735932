//! `provisioner catalog validate | show | diff` as ops and their CI run them: the real binary,
//! its output and its exit codes.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{catalog, edit, example_catalog, write_files, ACCOUNT, PRODUCT};

fn provisioner(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        // The example account's credential is "set" so that only the file's own errors show.
        .env("HCLOUD_TOKEN", "unused-in-tests")
        .output()
        .expect("run the provisioner binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_example_catalog_is_valid() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = provisioner(&["catalog", "validate"], repo);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let summary = out.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("catalog: valid: "),
        "unexpected summary {summary:?}"
    );
    // One account per module, at least six products, some of them on the simulated cloud.
    let json = provisioner(&["catalog", "show", "--format", "json"], repo);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let modules: Vec<&str> = value["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["module"].as_str().unwrap())
        .collect();
    for m in ["sim", "manual", "hetzner", "digitalocean", "ovh"] {
        assert!(modules.contains(&m), "no {m} account in {modules:?}");
    }
    let products = value["products"].as_array().unwrap();
    assert!(products.len() >= 6);
    let sim_accounts: Vec<&str> = value["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["module"] == "sim")
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(products
        .iter()
        .any(|p| sim_accounts.contains(&p["provisioning"]["account"].as_str().unwrap())));
    assert!(products
        .iter()
        .any(|p| p["type"] == "dedicated" && p["provisioning"]["account"] == "ovh-main"));
    assert!(products
        .iter()
        .any(|p| p["type"] == "dedicated" && p["provisioning"]["account"] == "manual-dc"));
}

#[test]
fn validate_exit_codes_and_compiler_style_lines() {
    let good = catalog(&[("a.yaml", ACCOUNT), ("p.yaml", PRODUCT)]);
    let o = provisioner(&["catalog", "validate", "."], good.path());
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));

    let bad_product = edit(PRODUCT, "ram_gb: 4", "ram_gib: 4");
    let bad = catalog(&[("a.yaml", ACCOUNT), ("products/p.yaml", &bad_product)]);
    let o = provisioner(
        &["catalog", "validate", "catalog"],
        bad.path().parent().unwrap(),
    );
    // A directory that does not exist from there: usage/I-O error, exit 2, with a message.
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));

    let o = provisioner(&["catalog", "validate", "."], bad.path());
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let errors: Vec<&str> = out.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(
        errors,
        [
            "./products/p.yaml:8:8: error: missing required field `ram_gb` in `specs`",
            "./products/p.yaml:8:40: error: unknown field `ram_gib` in `specs`; did you mean `ram_gb`?",
        ]
    );
    assert_eq!(out.lines().last(), Some(".: invalid: 2 errors, 0 warnings"));

    let o = provisioner(&["catalog", "validate", "--format", "xml"], bad.path());
    assert_eq!(o.status.code(), Some(2), "bad usage exits 2");
}

/// A product maps the name customers order to the provider's image where they differ, and
/// the mapping is checked like every other field.
#[test]
fn os_images_map_names_to_provider_images() {
    let mapped = edit(
        PRODUCT,
        "os_images: [ubuntu-24.04, debian-12]",
        "os_images: [ubuntu-24.04, {name: debian-12, image: debian-12-custom}]",
    );
    let good = catalog(&[("a.yaml", ACCOUNT), ("p.yaml", &mapped)]);
    let o = provisioner(&["catalog", "validate", "."], good.path());
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let shown = provisioner(&["catalog", "show", ".", "--format", "json"], good.path());
    let value: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        value["products"][0]["os_images"],
        serde_json::json!(["ubuntu-24.04", {"name": "debian-12", "image": "debian-12-custom"}])
    );

    let broken = edit(
        PRODUCT,
        "os_images: [ubuntu-24.04, debian-12]",
        "os_images: [{name: debian-12}, {name: d, image: d1, imgae: x}, \"two words\", {name: d, image: d2}]",
    );
    let bad = catalog(&[("a.yaml", ACCOUNT), ("p.yaml", &broken)]);
    let o = provisioner(&["catalog", "validate", "."], bad.path());
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    for want in [
        "./p.yaml:11:13: error: missing required field `image` in `os_images[0]`",
        "error: unknown field `imgae` in `os_images[1]`",
        "error: `os_images` lists `d` twice",
        "error: `os_images[2]` must be a name without spaces, found `two words`",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

/// OVH installs templates (`debian12_64`); a product offering `debian-12` as the image is
/// flagged with the mapping that fixes it.
#[test]
fn provider_image_names_are_checked_per_module() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for entry in ["accounts.yaml", "products/dedicated.yaml"] {
        let text = std::fs::read_to_string(repo.join("catalog").join(entry)).unwrap();
        let text = text.replace("{name: debian-12, image: debian12_64}", "debian-12");
        write_files(dir.path(), &[(entry, &text)]);
    }
    let o = provisioner(&["catalog", "validate", "."], dir.path());
    assert_eq!(o.status.code(), Some(0), "a warning: {}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.contains("warning: OS image `debian-12` of account `ovh-main` (module ovh) is not a name the provider takes")
            && out.contains("`{name: debian-12, image: …}`"),
        "{out}"
    );
}

#[test]
fn validate_json_is_machine_readable() {
    let bad_product = edit(PRODUCT, "stock: null", "stock: -4");
    let dir = catalog(&[("a.yaml", ACCOUNT), ("p.yaml", &bad_product)]);
    let o = provisioner(
        &["catalog", "validate", ".", "--format", "json"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"], 1);
    let d = &v["diagnostics"][0];
    assert_eq!(d["file"], "./p.yaml");
    assert_eq!(d["line"], 13);
    assert_eq!(d["column"], 8);
    assert_eq!(d["severity"], "error");
    assert_eq!(d["message"], "`stock` must not be negative, found `-4`");
}

#[test]
fn credentials_missing_from_the_environment_are_warnings() {
    let dir = catalog(&[("a.yaml", ACCOUNT), ("p.yaml", PRODUCT)]);
    let o = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["catalog", "validate", "."])
        .current_dir(dir.path())
        .env_remove("HCLOUD_TOKEN")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(out.contains("./a.yaml:6:26: warning: environment variable `HCLOUD_TOKEN`"));
    assert!(out.contains("valid: 1 product, 1 account in 2 files, 1 warning"));

    let o = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["catalog", "validate", "."])
        .current_dir(dir.path())
        .env("HCLOUD_TOKEN", "test-token-value")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(!stdout(&o).contains("warning"));
    assert!(!stdout(&o).contains("test-token-value"));
}

fn revision_of(dir: &Path, id: &str) -> String {
    let o = provisioner(&["catalog", "show", ".", "--format", "json"], dir);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("no product {id}"))["revision"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn revisions_ignore_formatting_and_follow_meaning() {
    let original = catalog(&[("a.yaml", ACCOUNT), ("p.yaml", PRODUCT)]);
    let base = revision_of(original.path(), "vps-starter");

    // Same product: block style, other key order, comments, other quoting, implicit defaults,
    // a price written without its trailing zero, features in another order.
    let reformatted = "\
# VPS Starter, rewritten by someone with other habits
kind: Product
apiVersion: 'provisioner/v1'
id: vps-starter
type: vps
name: \"VPS Starter\"
group: vps
description: Small cloud server
provisioning:
  config:
    server_type: cx22
  account: hetzner-main
pricing:
  setup_fee: 0.00
  yearly: 299.99
  monthly: 29.99
  currency: EUR
specs:
  ip_addresses: 1
  bandwidth_tb: 2
  storage_type: nvme
  storage_gb: 80
  ram_gb: 4.0
  cpu_cores: 2
locations:
  - fsn1
  - nbg1
os_images: [ubuntu-24.04, debian-12]
features: [ddos-protection, ddos-protection]
";
    let same = catalog(&[("a.yaml", ACCOUNT), ("nested/dir/p.yml", reformatted)]);
    assert_eq!(revision_of(same.path(), "vps-starter"), base);

    for (from, to) in [
        ("monthly: \"29.99\"", "monthly: \"31.99\""),
        ("locations: [fsn1, nbg1]", "locations: [nbg1, fsn1]"),
        ("stock: null", "stock: 5"),
        ("server_type: cx22", "server_type: cx32"),
        ("active: true", "active: false"),
        (
            "features: [ddos-protection]",
            "features: [ddos-protection, backups]",
        ),
    ] {
        let changed = catalog(&[("a.yaml", ACCOUNT), ("p.yaml", &edit(PRODUCT, from, to))]);
        assert_ne!(
            revision_of(changed.path(), "vps-starter"),
            base,
            "changing {from:?} to {to:?} must change the revision"
        );
    }
}

#[test]
fn diff_lists_added_removed_and_changed_fields() {
    let second = edit(PRODUCT, "id: vps-starter", "id: vps-old");
    let old = catalog(&[
        ("a.yaml", ACCOUNT),
        ("p.yaml", PRODUCT),
        ("old.yaml", &second),
    ]);
    let changed = edit(
        &edit(PRODUCT, "monthly: \"29.99\"", "monthly: \"31.99\""),
        "locations: [fsn1, nbg1]",
        "locations: [fsn1]",
    );
    let added = edit(PRODUCT, "id: vps-starter", "id: vps-new");
    let new = catalog(&[
        ("a.yaml", &edit(ACCOUNT, "3600", "1800")),
        ("p.yaml", &changed),
        ("new.yaml", &added),
    ]);
    let o = provisioner(
        &[
            "catalog",
            "diff",
            old.path().to_str().unwrap(),
            new.path().to_str().unwrap(),
        ],
        Path::new("/"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("+ product vps-new"), "{out}");
    assert!(out.contains("- product vps-old"), "{out}");
    assert!(out.contains("~ product vps-starter"), "{out}");
    assert!(
        out.contains("      pricing.monthly: \"29.99\" -> \"31.99\""),
        "{out}"
    );
    assert!(
        out.contains("      locations: [\"fsn1\",\"nbg1\"] -> [\"fsn1\"]"),
        "{out}"
    );
    assert!(out.contains("~ account hetzner-main"), "{out}");
    assert!(
        out.contains("rate_limit.requests_per_hour: 3600 -> 1800"),
        "{out}"
    );

    let o = provisioner(
        &[
            "catalog",
            "diff",
            old.path().to_str().unwrap(),
            new.path().to_str().unwrap(),
            "--format",
            "json",
        ],
        Path::new("/"),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["products_added"][0]["id"], "vps-new");
    assert_eq!(v["products_removed"][0]["id"], "vps-old");
    let fields: Vec<&str> = v["products_changed"][0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["locations", "pricing.monthly"]);

    let o = provisioner(
        &[
            "catalog",
            "diff",
            old.path().to_str().unwrap(),
            old.path().to_str().unwrap(),
        ],
        Path::new("/"),
    );
    assert_eq!(stdout(&o).trim(), "no differences");
}

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args([
            "-c",
            "user.email=ops@example.com",
            "-c",
            "user.name=ops",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is installed");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn git_commits_are_recorded_and_revisions_can_be_diffed() {
    let repo = tempfile::tempdir().unwrap();
    write_files(
        repo.path(),
        &[("catalog/a.yaml", ACCOUNT), ("catalog/p.yaml", PRODUCT)],
    );
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "first"]);
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo.path())
        .output()
        .unwrap();
    let head = String::from_utf8(head.stdout).unwrap().trim().to_owned();

    let o = provisioner(&["catalog", "validate", "--format", "json"], repo.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["git_commit"], head.as_str());
    assert_eq!(v["git_dirty"], false);

    write_files(
        repo.path(),
        &[(
            "catalog/p.yaml",
            &edit(PRODUCT, "monthly: \"29.99\"", "monthly: \"24.99\""),
        )],
    );
    let o = provisioner(&["catalog", "validate", "--format", "json"], repo.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["git_dirty"], true, "an uncommitted edit is flagged");

    let o = provisioner(&["catalog", "diff", "HEAD:catalog", "catalog"], repo.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("pricing.monthly: \"29.99\" -> \"24.99\""),
        "{}",
        stdout(&o)
    );

    let o = provisioner(
        &["catalog", "diff", "nosuchrev:catalog", "catalog"],
        repo.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read catalog nosuchrev:catalog from git"));
}

#[test]
fn show_prints_every_product_with_its_revision() {
    let o = provisioner(
        &["catalog", "show", "catalog"],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    assert_eq!(o.status.code(), Some(0));
    let v: serde_yaml::Value = serde_yaml::from_slice(&o.stdout).expect("YAML output");
    let products = v["products"].as_sequence().unwrap();
    assert!(!products.is_empty());
    for p in products {
        let rev = p["revision"].as_str().unwrap();
        assert_eq!(rev.len(), 16);
        assert!(rev.chars().all(|c| c.is_ascii_hexdigit()));
    }
    assert!(example_catalog().is_dir());
}
