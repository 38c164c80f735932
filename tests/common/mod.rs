//! Helpers shared by the integration tests: temporary catalogs and the example documents.

#![allow(dead_code)]

use std::path::Path;

use tempfile::TempDir;

/// The account of the example, byte for byte.
pub const ACCOUNT: &str = "\
apiVersion: provisioner/v1
kind: ProviderAccount
id: hetzner-main
module: hetzner                # sim | manual | hetzner | digitalocean | ovh
endpoint: null                 # optional base-URL override
credentials: {token_env: HCLOUD_TOKEN}
rate_limit: {requests_per_hour: 3600}
";

/// The product of the example, byte for byte.
pub const PRODUCT: &str = "\
apiVersion: provisioner/v1
kind: Product
id: vps-starter
name: VPS Starter
group: vps
type: vps                      # vps | dedicated
description: Small cloud server
specs: {cpu_cores: 2, cpu_model: null, ram_gb: 4, storage_gb: 80, storage_type: nvme, bandwidth_tb: 2, ip_addresses: 1}
pricing: {currency: EUR, monthly: \"29.99\", quarterly: null, semiannually: null, yearly: \"299.99\", setup_fee: \"0\"}
locations: [fsn1, nbg1]
os_images: [ubuntu-24.04, debian-12]
features: [ddos-protection]
stock: null                    # absent or null: unlimited
active: true
provisioning:
  account: hetzner-main        # a ProviderAccount id
  config: {server_type: cx22}  # checked by the account's module
";

/// A temporary catalog directory holding `files` (relative path, content).
pub fn catalog(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    write_files(dir.path(), files);
    dir
}

/// Writes `files` below `dir`, creating directories as needed.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create catalog subdirectory");
        }
        std::fs::write(&path, text).expect("write catalog file");
    }
}

/// Replaces `from` by `to` in `text`, failing the test if `from` is not there (so a test never
/// silently checks the unmodified document).
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "test bug: {from:?} is not in the document"
    );
    text.replacen(from, to, 1)
}

/// `line:column` (1-based) of the first `needle` on line `line` of `text`.
pub fn at(text: &str, line: usize, needle: &str) -> String {
    let l = text.lines().nth(line - 1).expect("test bug: no such line");
    let byte = l
        .find(needle)
        .unwrap_or_else(|| panic!("test bug: {needle:?} not on line {line}: {l:?}"));
    format!("{line}:{}", l[..byte].chars().count() + 1)
}

/// The path to the example catalog shipped in the repository.
pub fn example_catalog() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog")
}
