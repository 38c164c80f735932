//! The example catalog of this repository (`catalog/`), built into the binary so that
//! `provisioner demo` runs from any directory: an installed binary has no `./catalog`.

use std::path::Path;

/// Every file of `catalog/`, as (path below the catalog directory, text).
pub const FILES: &[(&str, &str)] = &[
    ("accounts.yaml", include_str!("../../catalog/accounts.yaml")),
    (
        "products/dedicated.yaml",
        include_str!("../../catalog/products/dedicated.yaml"),
    ),
    (
        "products/demo.yaml",
        include_str!("../../catalog/products/demo.yaml"),
    ),
    (
        "products/vps.yaml",
        include_str!("../../catalog/products/vps.yaml"),
    ),
];

/// Writes the example catalog into `dir` (created if needed).
///
/// # Errors
/// When a file cannot be written.
pub fn write_to(dir: &Path) -> std::io::Result<()> {
    for (name, text) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_built_in_catalog_is_every_file_of_the_example() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let rel = path.strip_prefix(&root).unwrap();
                    on_disk.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        on_disk.sort();
        let built_in: Vec<&str> = super::FILES.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            on_disk, built_in,
            "add the new file to catalog::example::FILES"
        );
    }
}
