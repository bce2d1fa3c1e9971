//! Embeds the contract (`fixtures/schemas`) and the pinned plans (`suites`) into the harness binary,
//! so that `mtor-cert` validates and tests with exactly what it was built with, and needs no files at
//! run time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets this"));
    embed(
        &manifest.join("../fixtures/schemas"),
        "json",
        "SCHEMA_FILES",
        "Every schema file of the contract: (path relative to `fixtures/schemas`, text).",
        &out.join("schemas.rs"),
    );
    embed(
        &manifest.join("../suites"),
        "toml",
        "PLAN_FILES",
        "Every pinned test plan: (path relative to `suites`, text).",
        &out.join("plans.rs"),
    );
}

/// Writes `static NAME: &[(&str, &str)]` listing every `*.EXT` file under `root`, sorted.
fn embed(root: &Path, ext: &str, name: &str, doc: &str, out: &Path) {
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(root, ext, &mut files);
    files.sort();
    let mut code = format!("/// {doc}\npub static {name}: &[(&str, &str)] = &[\n");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let rel = file
            .strip_prefix(root)
            .expect("collected under root")
            .to_string_lossy()
            .replace('\\', "/");
        let abs = file.canonicalize().expect("schema file exists");
        writeln!(
            code,
            "    ({rel:?}, include_str!({:?})),",
            abs.display().to_string()
        )
        .expect("write to String");
    }
    code.push_str("];\n");
    std::fs::write(out, code).expect("write generated table");
}
