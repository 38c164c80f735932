//! Benchmark: validate a generated catalog of 10,000 products across 100 files.
//!
//! `cargo bench --bench catalog_validate` generates the catalog in a temporary directory, then
//! loads it in fresh child processes (so the peak memory measured is the load's alone, not the
//! generator's) and runs the real `provisioner catalog validate` on it. Prints the wall time of
//! each, and the peak resident set size (VmHWM) of the loading process.
//!
//! Environment: `BENCH_PRODUCTS` (default 10000), `BENCH_FILES` (default 100), `BENCH_RUNS`
//! (default 7), `BENCH_DIR` (keep the generated catalog there).
//!
//! `cargo bench --bench catalog_validate -- hostile` instead loads hostile catalogs at the size
//! caps (a 4 MiB mapping of 400,000 keys, duplicated keys, 16 MiB of erroneous documents,
//! aliases across 400 files, a 16 MiB valid catalog) and prints the time and peak memory of
//! each; the goal is at most 2 s and 256 MiB for any of them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "PROVISIONER_BENCH_CHILD_DIR";
const HOSTILE_ENV: &str = "PROVISIONER_BENCH_HOSTILE_DIR";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn generate(dir: &Path, products: usize, files: usize) {
    let accounts = "\
apiVersion: provisioner/v1
kind: ProviderAccount
id: sim-bench
module: sim
---
apiVersion: provisioner/v1
kind: ProviderAccount
id: hetzner-bench
module: hetzner
credentials: {token_env: HCLOUD_TOKEN}
";
    std::fs::write(dir.join("accounts.yaml"), accounts).unwrap();
    let per_file = products.div_ceil(files);
    for f in 0..files {
        let sub = dir.join(format!("group-{:02}", f % 10));
        std::fs::create_dir_all(&sub).unwrap();
        let mut text = String::with_capacity(per_file * 900);
        for i in f * per_file..((f + 1) * per_file).min(products) {
            let (account, config) = if i % 2 == 0 {
                ("sim-bench", format!("{{size: s{}}}", i % 7))
            } else {
                (
                    "hetzner-bench",
                    format!("{{server_type: cx{}}}", 22 + i % 4 * 10),
                )
            };
            text.push_str(&format!(
                "---
# generated product {i}
apiVersion: provisioner/v1
kind: Product
id: product-{i:05}
name: Product {i}
group: group-{g}
type: {kind}
description: Generated product number {i} for the validation benchmark
specs: {{cpu_cores: {cores}, cpu_model: null, ram_gb: {ram}, storage_gb: {disk}, storage_type: nvme, bandwidth_tb: 20, ip_addresses: 1}}
pricing: {{currency: EUR, monthly: \"{m}.99\", quarterly: null, semiannually: null, yearly: \"{y}.90\", setup_fee: \"0\"}}
locations: [fsn1, nbg1, hel1]
os_images: [ubuntu-24.04, debian-12, rocky-9]
features: [ddos-protection, ipv6]
stock: {stock}
active: true
provisioning:
  account: {account}
  config: {config}
",
                g = i % 20,
                kind = if i % 5 == 0 { "dedicated" } else { "vps" },
                cores = 1 + i % 32,
                ram = 2 << (i % 6),
                disk = 40 * (1 + i % 10),
                m = 3 + i % 200,
                y = 30 + i % 2000,
                stock = if i % 3 == 0 { "null".to_owned() } else { (i % 50).to_string() },
            ));
        }
        std::fs::write(sub.join(format!("products-{f:03}.yaml")), text).unwrap();
    }
}

fn child(dir: &str) {
    let start = Instant::now();
    let catalog = provisioner::catalog::load_with_env(Path::new(dir), &|_| true)
        .expect("the generated catalog is valid");
    let elapsed = start.elapsed();
    println!(
        "{} {} {}",
        catalog.products.len(),
        elapsed.as_micros(),
        peak_rss_kib().unwrap_or(0)
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Loads a catalog that may be invalid; prints `<diagnostics> <micros> <peak KiB>`.
fn hostile_child(dir: &str) {
    let start = Instant::now();
    let diagnostics = match provisioner::catalog::load_with_env(Path::new(dir), &|_| true) {
        Ok(c) => c.warnings.len(),
        Err(provisioner::catalog::LoadError::Invalid { diagnostics, .. }) => diagnostics.len(),
        Err(e) => panic!("{e}"),
    };
    println!(
        "{diagnostics} {} {}",
        start.elapsed().as_micros(),
        peak_rss_kib().unwrap_or(0)
    );
}

/// Writes a hostile catalog into a directory.
type Maker = Box<dyn Fn(&Path)>;

fn hostile() {
    const MIB: usize = 1024 * 1024;
    let me = std::env::current_exe().unwrap();
    let cases: Vec<(&str, Maker)> = vec![
        (
            "a 4 MiB mapping of unknown keys",
            Box::new(|dir| {
                let mut t = String::from("apiVersion: provisioner/v1\nkind: Product\nid: x\n");
                let mut i = 0;
                while t.len() < 4 * MIB - 32 {
                    t.push_str(&format!("k{i}: v\n"));
                    i += 1;
                }
                std::fs::write(dir.join("a.yaml"), t).unwrap();
            }),
        ),
        (
            "a 4 MiB mapping of one key repeated",
            Box::new(|dir| {
                let mut t = String::from("apiVersion: provisioner/v1\nkind: Product\nid: x\n");
                while t.len() < 4 * MIB - 32 {
                    t.push_str("name: again\n");
                }
                std::fs::write(dir.join("a.yaml"), t).unwrap();
            }),
        ),
        (
            "16 MiB of erroneous documents in 4 files",
            Box::new(|dir| {
                for f in 0..4 {
                    let mut t = String::new();
                    let mut i = 0;
                    while t.len() < 4 * MIB - 128 {
                        t.push_str(&format!(
                            "apiVersion: provisioner/v1\nkind: Product\nid: p{f}x{i}\nbogus: 1\n---\n"
                        ));
                        i += 1;
                    }
                    std::fs::write(dir.join(format!("e{f}.yaml")), t).unwrap();
                }
            }),
        ),
        (
            "aliases expanding in each of 400 files",
            Box::new(|dir| {
                let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
                for level in 0..5 {
                    let prev = (b'a' + level) as char;
                    let next = (b'a' + level + 1) as char;
                    bomb.push_str(&format!(
                        "{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
                    ));
                }
                for f in 0..400 {
                    std::fs::write(dir.join(format!("b{f:03}.yaml")), &bomb).unwrap();
                }
            }),
        ),
        (
            "a valid catalog of 16 MiB",
            Box::new(|dir| {
                generate(dir, 24_000, 100);
            }),
        ),
    ];
    for (what, make) in cases {
        let temp = tempfile::tempdir().unwrap();
        make(temp.path());
        let bytes = walk_size(temp.path());
        let out = Command::new(&me)
            .env(HOSTILE_ENV, temp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().unwrap());
        let (diagnostics, micros, peak) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        println!(
            "{what} ({:.1} MiB): {:.2} s, peak {:.0} MiB, {diagnostics} diagnostics",
            bytes as f64 / MIB as f64,
            micros as f64 / 1e6,
            peak as f64 / 1024.0
        );
    }
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    if let Ok(dir) = std::env::var(HOSTILE_ENV) {
        hostile_child(&dir);
        return;
    }
    if std::env::args().skip(1).any(|a| a == "hostile") {
        hostile();
        return;
    }
    let products = env_usize("BENCH_PRODUCTS", 10_000);
    let files = env_usize("BENCH_FILES", 100);
    let runs = env_usize("BENCH_RUNS", 7);
    // BENCH_DIR keeps the generated catalog for profiling (`perf record provisioner catalog
    // validate $BENCH_DIR`); by default it lives in a temporary directory.
    let temp = tempfile::tempdir().unwrap();
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => temp.path().to_owned(),
    };
    std::fs::create_dir_all(&dir).unwrap();
    generate(&dir, products, files);
    let bytes: u64 = walk_size(&dir);
    println!(
        "catalog: {products} products in {files} files (+1 accounts file), {:.1} MiB of YAML",
        bytes as f64 / 1_048_576.0
    );

    let me = std::env::current_exe().unwrap();
    let mut load_times = Vec::new();
    let mut peaks = Vec::new();
    for _ in 0..runs {
        let out = Command::new(&me)
            .env(CHILD_ENV, &dir)
            .output()
            .expect("run the benchmark child");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().unwrap());
        let loaded = parts.next().unwrap();
        assert_eq!(loaded as usize, products);
        load_times.push(Duration::from_micros(parts.next().unwrap()));
        peaks.push(parts.next().unwrap());
    }
    let best = load_times.iter().min().copied().unwrap();
    println!(
        "library load+validate: median {:.1} ms, best {:.1} ms over {runs} runs",
        median(load_times).as_secs_f64() * 1e3,
        best.as_secs_f64() * 1e3
    );
    println!(
        "peak RSS of the loading process (VmHWM): max {:.1} MiB",
        *peaks.iter().max().unwrap() as f64 / 1024.0
    );

    let bin = env!("CARGO_BIN_EXE_provisioner");
    let mut cli_times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let out = Command::new(bin)
            .args(["catalog", "validate"])
            .arg(&dir)
            .env("HCLOUD_TOKEN", "x")
            .output()
            .unwrap();
        cli_times.push(start.elapsed());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    println!(
        "`provisioner catalog validate` wall time (process start to exit): median {:.1} ms",
        median(cli_times).as_secs_f64() * 1e3
    );
}

fn walk_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            walk_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}
