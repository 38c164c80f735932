//! Every class of catalog error, with its exact message and `file:line:column`, and the rule that
//! all errors of a catalog come out of one run.

mod common;

use common::{at, catalog, edit, ACCOUNT, PRODUCT};
use provisioner::catalog::{load_with_env, Catalog, LoadError};

/// Loads files as a catalog with every environment variable "set", and renders diagnostics
/// with file names relative to the catalog directory.
fn check_with_env(
    files: &[(&str, &str)],
    env: &(dyn Fn(&str) -> bool + Sync),
) -> (Option<Catalog>, Vec<String>) {
    let dir = catalog(files);
    let prefix = format!("{}/", dir.path().display());
    let render = |d: &provisioner::catalog::Diagnostic| d.to_string().replace(&prefix, "");
    match load_with_env(dir.path(), env) {
        Ok(c) => {
            let warnings = c.warnings.iter().map(render).collect();
            (Some(c), warnings)
        }
        Err(LoadError::Invalid { diagnostics, .. }) => {
            (None, diagnostics.iter().map(render).collect())
        }
        Err(e) => panic!("unexpected I/O failure: {e}"),
    }
}

fn check(files: &[(&str, &str)]) -> (Option<Catalog>, Vec<String>) {
    check_with_env(files, &|_| true)
}

/// Expects the catalog to be invalid with exactly these diagnostics.
fn expect_errors(files: &[(&str, &str)], expected: &[String]) {
    let (catalog, got) = check(files);
    assert!(catalog.is_none(), "catalog should be invalid");
    assert_eq!(got, expected);
}

fn with_product(product: &str) -> Vec<(&'static str, String)> {
    vec![
        ("a.yaml", ACCOUNT.to_owned()),
        ("p.yaml", product.to_owned()),
    ]
}

fn refs<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(n, t)| (*n, t.as_str())).collect()
}

fn product_errors(product: &str, expected: &[String]) {
    expect_errors(&refs(&with_product(product)), expected);
}

#[test]
fn the_issue_example_is_valid() {
    let (catalog, warnings) = check(&[("a.yaml", ACCOUNT), ("p.yaml", PRODUCT)]);
    let catalog = catalog.expect("the example catalog is valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    let p = catalog.product("vps-starter").expect("product loaded");
    assert_eq!(p.pricing.monthly.to_string(), "29.99");
    assert_eq!(
        p.pricing.yearly.map(|d| d.to_string()).as_deref(),
        Some("299.99")
    );
    assert_eq!(p.locations, ["fsn1", "nbg1"]);
    assert_eq!(p.stock, None);
    assert_eq!(p.origin.line, 1);
    assert_eq!(p.revision.0.len(), 16);
}

#[test]
fn yaml_syntax_errors_are_located() {
    let broken = "apiVersion: provisioner/v1\nkind: Product\nlocations: [fsn1, nbg1\nid: x\n";
    let (catalog, got) = check(&[("a.yaml", ACCOUNT), ("broken.yaml", broken)]);
    assert!(catalog.is_none());
    assert_eq!(
        got,
        ["broken.yaml:4:3: error: YAML syntax error: illegal placement of ':' indicator"]
    );
}

#[test]
fn unknown_api_version_and_kind() {
    let v2 = edit(PRODUCT, "provisioner/v1", "provisioner/v2");
    product_errors(
        &v2,
        &[format!(
            "p.yaml:{}: error: unsupported apiVersion `provisioner/v2`; this provisioner reads `provisioner/v1`",
            at(&v2, 1, "provisioner/v2")
        )],
    );
    let kind = edit(PRODUCT, "kind: Product", "kind: Prodcut");
    product_errors(
        &kind,
        &[format!(
            "p.yaml:{}: error: unknown kind `Prodcut`; expected `Product`, `ProviderAccount`, `WebhookEndpoint` or `EmailNotifier` (did you mean `Product`?)",
            at(&kind, 2, "Prodcut")
        )],
    );
    let none = edit(PRODUCT, "kind: Product\n", "");
    product_errors(
        &none,
        &["p.yaml:1:1: error: missing required field `kind` in catalog document".to_owned()],
    );
}

#[test]
fn unknown_fields_are_caught_with_a_suggestion() {
    let typo = edit(PRODUCT, "ram_gb: 4", "ram_gib: 4");
    product_errors(
        &typo,
        &[
            format!(
                "p.yaml:{}: error: missing required field `ram_gb` in `specs`",
                at(&typo, 8, "{")
            ),
            format!(
                "p.yaml:{}: error: unknown field `ram_gib` in `specs`; did you mean `ram_gb`?",
                at(&typo, 8, "ram_gib")
            ),
        ],
    );
    let top = edit(PRODUCT, "active: true", "active: true\ncolour: blue");
    product_errors(
        &top,
        &["p.yaml:15:1: error: unknown field `colour` in Product `vps-starter`; expected one of: \
           active, apiVersion, description, features, group, id, kind, locations, name, \
           os_images, pricing, provisioning, specs, stock, type"
            .to_owned()],
    );
}

#[test]
fn missing_required_fields_are_named() {
    let no_name = edit(PRODUCT, "name: VPS Starter\n", "");
    product_errors(
        &no_name,
        &["p.yaml:1:1: error: missing required field `name` in Product `vps-starter`".to_owned()],
    );
    let no_monthly = edit(PRODUCT, "monthly: \"29.99\", ", "");
    product_errors(
        &no_monthly,
        &[format!(
            "p.yaml:{}: error: missing required field `monthly` in `pricing`",
            at(&no_monthly, 9, "{")
        )],
    );
}

#[test]
fn wrong_types_say_what_was_found() {
    let cores = edit(PRODUCT, "cpu_cores: 2", "cpu_cores: two");
    product_errors(
        &cores,
        &[format!(
            "p.yaml:{}: error: `specs.cpu_cores` must be a whole number, found the string `two`",
            at(&cores, 8, "two")
        )],
    );
    let active = edit(PRODUCT, "active: true", "active: \"yes\"");
    product_errors(
        &active,
        &[
            "p.yaml:14:9: error: `active` must be `true` or `false`, found the string `yes`"
                .to_owned(),
        ],
    );
    let locations = edit(PRODUCT, "locations: [fsn1, nbg1]", "locations: fsn1");
    product_errors(
        &locations,
        &["p.yaml:10:12: error: `locations` must be a list, found the string `fsn1`".to_owned()],
    );
    let specs = edit(
        PRODUCT,
        "specs: {cpu_cores: 2, cpu_model: null, ram_gb: 4, storage_gb: 80, storage_type: nvme, bandwidth_tb: 2, ip_addresses: 1}",
        "specs: [2, 4, 80]",
    );
    product_errors(
        &specs,
        &["p.yaml:8:8: error: `specs` must be a mapping, found a list".to_owned()],
    );
    let kind = edit(PRODUCT, "type: vps ", "type: vpss");
    product_errors(
        &kind,
        &["p.yaml:6:7: error: `type` must be one of vps, dedicated, found `vpss`; did you mean `vps`?".to_owned()],
    );
}

#[test]
fn duplicate_ids_name_both_places() {
    let (catalog, got) = check(&[
        ("a.yaml", ACCOUNT),
        ("p.yaml", PRODUCT),
        ("sub/q.yaml", PRODUCT),
    ]);
    assert!(catalog.is_none());
    assert_eq!(
        got,
        ["sub/q.yaml:3:5: error: duplicate id `vps-starter`: already defined at p.yaml:3:5"]
    );
}

#[test]
fn ids_are_unique_across_kinds_and_documents() {
    let product_named_like_account = edit(PRODUCT, "id: vps-starter", "id: hetzner-main");
    let two_docs = format!("{ACCOUNT}---\n{product_named_like_account}");
    let (catalog, got) = check(&[("all.yaml", &two_docs)]);
    assert!(catalog.is_none());
    assert_eq!(
        got,
        ["all.yaml:11:5: error: duplicate id `hetzner-main`: already defined at all.yaml:3:5"]
    );
}

#[test]
fn a_product_must_name_an_existing_account() {
    let typo = edit(PRODUCT, "account: hetzner-main", "account: hetzner-mian");
    product_errors(
        &typo,
        &[
            "p.yaml:16:12: error: `provisioning.account` names `hetzner-mian`, which is not a \
           ProviderAccount of this catalog; did you mean `hetzner-main`?"
                .to_owned(),
        ],
    );
}

#[test]
fn module_specific_config_is_checked() {
    let no_type = edit(PRODUCT, "config: {server_type: cx22}", "config: {}");
    product_errors(
        &no_type,
        &[
            "p.yaml:17:11: error: missing required field `server_type` in `provisioning.config`"
                .to_owned(),
        ],
    );
    let no_config = edit(
        PRODUCT,
        "  config: {server_type: cx22}  # checked by the account's module\n",
        "",
    );
    product_errors(
        &no_config,
        &[
            "p.yaml:16:3: error: missing required field `server_type` in `provisioning.config`: \
           account `hetzner-main` uses module `hetzner`"
                .to_owned(),
        ],
    );
    let other_module = edit(
        PRODUCT,
        "config: {server_type: cx22}",
        "config: {server_type: cx22, size: s-1vcpu-1gb}",
    );
    product_errors(
        &other_module,
        &[format!(
            "p.yaml:{}: error: `provisioning.config.size` is a digitalocean setting, but account \
             `hetzner-main` uses module `hetzner`, which expects: server_type, enable_ipv4, enable_ipv6, upgrade_disk",
            at(&other_module, 17, "size")
        )],
    );

    let do_account =
        "apiVersion: provisioner/v1\nkind: ProviderAccount\nid: do\nmodule: digitalocean\n";
    let do_product = edit(
        &edit(
            &edit(PRODUCT, "account: hetzner-main", "account: do"),
            "os_images: [ubuntu-24.04, debian-12]",
            "os_images: [ubuntu-24-04-x64, debian-12-x64]",
        ),
        "config: {server_type: cx22}",
        "config: {ipv6: true}",
    );
    expect_errors(
        &[("a.yaml", do_account), ("p.yaml", &do_product)],
        &[
            "p.yaml:17:11: error: missing required field `size` in `provisioning.config`"
                .to_owned(),
        ],
    );
}

#[test]
fn ovh_accounts_need_a_pool_and_products_pool_hardware() {
    let empty =
        "apiVersion: provisioner/v1\nkind: ProviderAccount\nid: ovh-main\nmodule: ovh\npool: []\n";
    let (_, got) = check(&[("ovh.yaml", empty)]);
    assert_eq!(
        got,
        [
            "ovh.yaml:5:7: error: `pool` must list at least one server: an ovh account allocates \
          from the dedicated servers it owns"
        ]
    );
    let missing = "apiVersion: provisioner/v1\nkind: ProviderAccount\nid: ovh-main\nmodule: ovh\n";
    let (_, got) = check(&[("ovh.yaml", missing)]);
    assert_eq!(
        got,
        ["ovh.yaml:1:1: error: an ovh account needs a non-empty `pool`: the dedicated servers it \
          owns and may give to customers"]
    );

    let account = "apiVersion: provisioner/v1\nkind: ProviderAccount\nid: ovh-main\nmodule: ovh\n\
                   pool:\n  - {service_name: ns1.ip-1-2-3.eu, hardware: adv-1, location: gra}\n\
                   \x20 - {service_name: ns2.ip-1-2-3.eu, hardware: rise-2}\n";
    let product = edit(
        &edit(
            &edit(PRODUCT, "account: hetzner-main", "account: ovh-main"),
            "os_images: [ubuntu-24.04, debian-12]",
            "os_images: [{name: ubuntu-24.04, image: ubuntu2404-server_64}, {name: debian-12, image: debian12_64}]",
        ),
        "config: {server_type: cx22}",
        "config: {hardware: adv-2}",
    );
    expect_errors(
        &[("ovh.yaml", account), ("p.yaml", &product)],
        &[format!(
            "p.yaml:{}: error: `provisioning.config.hardware` names `adv-2`, which no server in the \
             pool of account `ovh-main` has; the pool has: adv-1, rise-2; did you mean `adv-1`?",
            at(&product, 17, "adv-2")
        )],
    );
    let good = edit(&product, "hardware: adv-2", "hardware: [adv-1, rise-2]");
    let (catalog, warnings) = check(&[("ovh.yaml", account), ("p.yaml", &good)]);
    assert!(catalog.is_some(), "{warnings:?}");
}

#[test]
fn empty_locations_and_os_images() {
    let empty = edit(
        &edit(PRODUCT, "locations: [fsn1, nbg1]", "locations: []"),
        "os_images: [ubuntu-24.04, debian-12]",
        "os_images: []",
    );
    product_errors(
        &empty,
        &[
            "p.yaml:10:12: error: `locations` must list at least one location; the first is the default".to_owned(),
            "p.yaml:11:12: error: `os_images` must list at least one OS image; the first is the default".to_owned(),
        ],
    );
}

#[test]
fn prices_are_exact_non_negative_decimals() {
    let bad = edit(
        &edit(PRODUCT, "monthly: \"29.99\"", "monthly: \"-5\""),
        "yearly: \"299.99\"",
        "yearly: \"12,50\"",
    );
    product_errors(
        &bad,
        &[
            format!("p.yaml:{}: error: `pricing.monthly` must not be negative, found `-5`", at(&bad, 9, "\"-5\"")),
            format!(
                "p.yaml:{}: error: `pricing.yearly` must be a decimal amount such as \"29.99\", found `12,50`",
                at(&bad, 9, "\"12,50")
            ),
        ],
    );
    let float = edit(PRODUCT, "monthly: \"29.99\"", "monthly: 29.999");
    product_errors(
        &float,
        &[format!(
            "p.yaml:{}: error: `pricing.monthly` has more than 2 decimal places: `29.999`",
            at(&float, 9, "29.999")
        )],
    );
    // An unquoted price is read from its characters, never through a float.
    let unquoted = edit(PRODUCT, "monthly: \"29.99\"", "monthly: 0.10");
    let (catalog, _) = check(&refs(&with_product(&unquoted)));
    let p = catalog.expect("valid");
    assert_eq!(
        p.product("vps-starter")
            .unwrap()
            .pricing
            .monthly
            .to_string(),
        "0.1"
    );
}

#[test]
fn negative_stock_and_zero_hardware() {
    let stock = edit(PRODUCT, "stock: null", "stock: -1");
    product_errors(
        &stock,
        &["p.yaml:13:8: error: `stock` must not be negative, found `-1`".to_owned()],
    );
    let zero = edit(
        &edit(
            &edit(PRODUCT, "cpu_cores: 2", "cpu_cores: 0"),
            "ram_gb: 4",
            "ram_gb: 0",
        ),
        "storage_gb: 80",
        "storage_gb: 0",
    );
    product_errors(
        &zero,
        &[
            format!(
                "p.yaml:{}: error: `specs.cpu_cores` must be greater than zero, found `0`",
                at(&zero, 8, "0,")
            ),
            format!(
                "p.yaml:{}: error: `specs.ram_gb` must be greater than zero, found `0`",
                at(&zero, 8, "0, storage")
            ),
            format!(
                "p.yaml:{}: error: `specs.storage_gb` must be greater than zero, found `0`",
                at(&zero, 8, "0, storage_type")
            ),
        ],
    );
}

#[test]
fn environment_variable_names_are_checked_and_never_echoed() {
    let pasted = edit(
        ACCOUNT,
        "token_env: HCLOUD_TOKEN",
        "token_env: hc_Secr3tT0kenValue",
    );
    let (catalog, got) = check(&[("a.yaml", &pasted), ("p.yaml", PRODUCT)]);
    assert!(catalog.is_none());
    assert_eq!(
        got,
        [
            "a.yaml:6:26: error: `credentials.token_env` must name an environment variable \
          (upper-case letters, digits and `_`, not starting with a digit); the secret itself \
          belongs in the environment, never in the catalog"
        ]
    );
    assert!(!got[0].contains("Secr3t"), "the value must not be echoed");
    let secret = edit(ACCOUNT, "{token_env: HCLOUD_TOKEN}", "{token: abcdef}");
    let (_, got) = check(&[("a.yaml", &secret), ("p.yaml", PRODUCT)]);
    assert_eq!(
        got,
        [
            "a.yaml:6:15: error: `credentials.token` is not allowed: credentials name environment \
          variables (`token_env: HCLOUD_TOKEN`), never the secret itself"
        ]
    );
}

#[test]
fn missing_credentials_are_warnings_not_errors() {
    let (catalog, warnings) =
        check_with_env(&[("a.yaml", ACCOUNT), ("p.yaml", PRODUCT)], &|_| false);
    assert!(
        catalog.is_some(),
        "a missing credential must not make the catalog invalid"
    );
    assert_eq!(
        warnings,
        ["a.yaml:6:26: warning: environment variable `HCLOUD_TOKEN` (`credentials.token_env` of \
          account `hetzner-main`) is not set; the account cannot authenticate until it is"]
    );
}

#[test]
fn every_error_of_a_catalog_comes_out_of_one_run() {
    let product = edit(
        &edit(
            &edit(PRODUCT, "ram_gb: 4", "ram_gib: 4"),
            "monthly: \"29.99\"",
            "monthly: \"abc\"",
        ),
        "stock: null",
        "stock: -2",
    );
    let second = edit(
        &edit(PRODUCT, "id: vps-starter", "id: vps-two"),
        "account: hetzner-main",
        "account: nowhere",
    );
    let broken = "apiVersion: provisioner/v1\nkind: Product\nspecs: {cpu_cores: 1\n";
    let account = edit(ACCOUNT, "requests_per_hour: 3600", "requests_per_hour: 0");
    let (catalog, got) = check(&[
        ("accounts/a.yaml", &account),
        ("products/p.yaml", &product),
        ("products/two.yml", &second),
        ("products/broken.yaml", broken),
        ("products/dup.yaml", PRODUCT),
    ]);
    assert!(catalog.is_none());
    let files_and_messages: Vec<(&str, &str)> = got
        .iter()
        .map(|line| {
            let (place, message) = line.split_once(": error: ").expect("an error line");
            (place.split(':').next().unwrap(), message)
        })
        .collect();
    let expected_starts = [
        (
            "accounts/a.yaml",
            "`rate_limit.requests_per_hour` must be greater than zero",
        ),
        ("products/broken.yaml", "YAML syntax error"),
        // Files are read in path order: dup.yaml defines the id first, p.yaml repeats it.
        (
            "products/p.yaml",
            "duplicate id `vps-starter`: already defined at products/dup.yaml:3:5",
        ),
        ("products/p.yaml", "missing required field `ram_gb`"),
        ("products/p.yaml", "unknown field `ram_gib`"),
        (
            "products/p.yaml",
            "`pricing.monthly` must be a decimal amount",
        ),
        ("products/p.yaml", "`stock` must not be negative"),
        ("products/two.yml", "`provisioning.account` names `nowhere`"),
    ];
    assert_eq!(got.len(), expected_starts.len(), "{got:#?}");
    for ((file, message), (want_file, want_start)) in files_and_messages.iter().zip(expected_starts)
    {
        assert_eq!(*file, want_file, "{got:#?}");
        assert!(
            message.starts_with(want_start),
            "{message:?} should start with {want_start:?}"
        );
    }
}

#[test]
fn an_empty_catalog_directory_is_an_error() {
    let (catalog, got) = check(&[("README.txt", "not a catalog file")]);
    assert!(catalog.is_none());
    assert_eq!(got.len(), 1);
    assert!(got[0].ends_with(
        ":1:1: error: no catalog files: expected *.yaml or *.yml files in this directory or below it"
    ));
}

#[test]
fn hidden_files_and_other_extensions_are_ignored() {
    let (catalog, got) = check(&[
        ("a.yaml", ACCOUNT),
        ("p.yml", PRODUCT),
        (".p.yaml.swp", "garbage: ["),
        ("p.yaml~", "garbage: ["),
        (".git/config.yaml", "garbage: ["),
    ]);
    assert!(catalog.is_some(), "{got:?}");
}

/// A tiny deterministic generator, so the mutation test needs no extra crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % bound.max(1)
    }
}

#[test]
fn no_mutation_of_a_valid_catalog_panics_the_loader() {
    let original = format!("{ACCOUNT}---\n{PRODUCT}");
    let alphabet: Vec<char> = "{}[]:,-'\"&*!|>#% \n\t0a~\u{e9}".chars().collect();
    let mut rng = Lcg(42);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    for _ in 0..400 {
        let mut chars: Vec<char> = original.chars().collect();
        for _ in 0..1 + rng.next(4) {
            let i = rng.next(chars.len());
            match rng.next(3) {
                0 => {
                    chars.remove(i);
                }
                1 => chars.insert(i, alphabet[rng.next(alphabet.len())]),
                _ => chars[i] = alphabet[rng.next(alphabet.len())],
            }
        }
        let text: String = chars.into_iter().collect();
        std::fs::write(&file, &text).unwrap();
        match load_with_env(dir.path(), &|_| true) {
            Ok(_) => {}
            Err(LoadError::Invalid { diagnostics, .. }) => {
                assert!(diagnostics.iter().any(|d| d.is_error()));
                for d in &diagnostics {
                    assert!(d.line >= 1 && d.column >= 1, "{d} in\n{text}");
                }
            }
            Err(e) => panic!("unexpected I/O error {e}"),
        }
    }
}

#[test]
fn hostile_yaml_is_refused_without_exhausting_anything() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
        .windows(2)
        .map(|w| (w[0], w[1]))
    {
        let refs = vec![format!("*{prev}"); 10].join(", ");
        bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    for text in [
        deep.as_str(),
        bomb.as_str(),
        "\u{feff}",
        "---\n---\n...\n",
        "\t- x",
    ] {
        let (catalog, got) = check(&[("a.yaml", ACCOUNT), ("x.yaml", text)]);
        if catalog.is_none() {
            assert!(!got.is_empty());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bin.yaml"), [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let err = load_with_env(dir.path(), &|_| true).unwrap_err();
    assert!(err.diagnostics()[0]
        .message
        .starts_with("file is not valid UTF-8"));
}

#[test]
fn escalation_timeouts_are_api_account_settings_in_range() {
    let accounts = "apiVersion: provisioner/v1
kind: ProviderAccount
id: hz
module: hetzner
graceful_timeout_seconds: 0
stuck_timeout_seconds: 120
---
apiVersion: provisioner/v1
kind: ProviderAccount
id: s
module: sim
graceful_timeout_seconds: 5
";
    expect_errors(
        &[("a.yaml", accounts)],
        &[
            "a.yaml:5:27: error: `graceful_timeout_seconds` must be between 0.1 and 3600, found `0`".to_owned(),
            "a.yaml:12:27: error: `graceful_timeout_seconds` does not apply to `sim` accounts, which call no API".to_owned(),
        ],
    );
    let (catalog, _) = check(&[(
        "a.yaml",
        "apiVersion: provisioner/v1
kind: ProviderAccount
id: hz
module: hetzner
graceful_timeout_seconds: 90
stuck_timeout_seconds: 600
",
    )]);
    let hz = catalog.expect("valid").account("hz").cloned().unwrap();
    assert_eq!(
        hz.graceful_timeout,
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(hz.stuck_timeout, Some(std::time::Duration::from_secs(600)));
}

#[test]
fn hostile_catalogs_are_bounded() {
    // A file over the size cap is refused whole, with the reason.
    let big = format!("# {}\n", "x".repeat(4 * 1024 * 1024));
    let (catalog, got) = check(&[("a.yaml", ACCOUNT), ("big.yaml", big.as_str())]);
    assert!(catalog.is_none());
    assert_eq!(
        got,
        ["big.yaml:1:1: error: file is larger than 4 MiB; split the catalog into smaller files"]
    );

    // The alias budget is the catalog's, not each file's: three files that each stay under
    // it exceed it together.
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: [*e, *e, *e, *e]
";
    let (catalog, got) = check(&[("b1.yaml", bomb), ("b2.yaml", bomb), ("b3.yaml", bomb)]);
    assert!(catalog.is_none());
    assert!(
        got.iter()
            .any(|d| d.contains("aliases expand to more than 1000000 nodes in this catalog")),
        "{got:?}"
    );

    // A mapping of many unknown fields is reported field by field up to a hundred.
    let mut product = PRODUCT.to_owned();
    for i in 0..150 {
        product.push_str(&format!("junk{i}: 1\n"));
    }
    let (_, got) = check(&[("a.yaml", ACCOUNT), ("p.yaml", product.as_str())]);
    let unknown = got
        .iter()
        .filter(|d| d.contains("unknown field `junk"))
        .count();
    assert_eq!(unknown, 100, "{got:?}");
    assert!(
        got.iter()
            .any(|d| d.contains("50 more unknown fields in Product `vps-starter`")),
        "{got:?}"
    );
}

const HOOK: &str = "apiVersion: provisioner/v1
kind: WebhookEndpoint
id: whmcs
url: https://billing.example.com/hooks
secret_env: WHMCS_WEBHOOK_SECRET
events: [instance.provisioned, instance.suspended]
";

const MAIL: &str = "apiVersion: provisioner/v1
kind: EmailNotifier
id: ops
smtp: {host: smtp.example.com, username: provisioner, password_env: SMTP_PASSWORD}
from: provisioner <provisioner@example.com>
to: [ops@example.com, Night Shift <night@example.com>]
";

#[test]
fn webhook_endpoints_and_notifiers_are_read_with_their_defaults() {
    let (catalog, warnings) = check(&[
        ("a.yaml", ACCOUNT),
        ("p.yaml", PRODUCT),
        ("n.yaml", &format!("{HOOK}---\n{MAIL}")),
    ]);
    let catalog = catalog.expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    let hook = &catalog.webhooks["whmcs"];
    assert_eq!(hook.url, "https://billing.example.com/hooks");
    assert_eq!(hook.secret_env, "WHMCS_WEBHOOK_SECRET");
    assert_eq!(
        hook.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        ["instance.provisioned", "instance.suspended"]
    );
    assert_eq!(hook.timeout, std::time::Duration::from_secs(15));
    let mail = &catalog.notifiers["ops"];
    assert_eq!((mail.smtp.port, mail.smtp.tls.as_str()), (587, "starttls"));
    assert_eq!(
        mail.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        ["instance.failed", "instance.lost", "task.opened"]
    );
    assert_eq!(mail.to.len(), 2);
    // Unset secrets are warnings, as for accounts.
    let (catalog, warnings) = check_with_env(
        &[
            ("a.yaml", ACCOUNT),
            ("n.yaml", &format!("{HOOK}---\n{MAIL}")),
        ],
        &|name| name == "HCLOUD_TOKEN",
    );
    assert!(catalog.is_some());
    assert_eq!(
        warnings,
        [
            format!(
                "n.yaml:{}: warning: environment variable `WHMCS_WEBHOOK_SECRET` (`secret_env` of webhook endpoint `whmcs`) is not set",
                at(HOOK, 5, "WHMCS")
            ),
            "n.yaml:11:69: warning: environment variable `SMTP_PASSWORD` (`smtp.password_env` of e-mail notifier `ops`) is not set".to_owned(),
        ]
    );
}

#[test]
fn webhook_endpoints_and_notifiers_say_what_is_wrong_and_where() {
    let bad_hook = HOOK
        .replace(
            "https://billing.example.com/hooks",
            "https://user:hunter2@billing.example.com/",
        )
        .replace("WHMCS_WEBHOOK_SECRET", "whsec_C2FVsBQIhrscChlQIMV")
        .replace("instance.suspended", "instance.suspend")
        + "timeout_seconds: 90\n";
    let bad_mail = MAIL
        .replace(
            "smtp: {host: smtp.example.com,",
            "smtp: {host: smtp.example.com, tls: none,",
        )
        .replace("ops@example.com,", "not an address,");
    let (catalog, got) = check(&[("n.yaml", &format!("{bad_hook}---\n{bad_mail}"))]);
    assert!(catalog.is_none());
    let text = got.join("\n");
    for expected in [
        "n.yaml:4:6: error: `url` must not carry credentials: webhooks are authenticated by their signature",
        "n.yaml:5:13: error: `secret_env` must name an environment variable",
        "n.yaml:6:32: error: `events`: unknown event type `instance.suspend`; known: instance.provisioned,",
        "did you mean `instance.suspended`?",
        "n.yaml:7:18: error: `timeout_seconds` must be from 1 to 30",
        "n.yaml:12:66: error: a password is never sent over an unencrypted connection",
        "n.yaml:14:6: error: `to[0]` must be an e-mail address, found `not an address`",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // Neither the password in the URL nor the pasted secret is repeated.
    assert!(
        !text.contains("hunter2") && !text.contains("C2FVsBQ"),
        "{text}"
    );
}
