//! The workspace's crates form layers, and every dependency points down: a crate may use the
//! crates of lower layers (and its own layer's lower neighbours listed below), never one above.
//! `cargo metadata` is read so that a new edge in any `Cargo.toml`, of any kind (normal,
//! build or dev), is checked.

use std::collections::BTreeMap;
use std::process::Command;

/// The layers, lowest first. Within a layer, crates do not depend on each other.
const LAYERS: &[&[&str]] = &[
    // Test support, the foundation (no tensor library underneath) and PyTorch checkpoint import.
    &["mmcl-testutil", "mmcl-core", "mmcl-pth"],
    // Tensor building blocks, and the file readers that need no model.
    &["mmcl-nn", "mmcl-data"],
    // The encoders, and the synthetic cohort (built on the data layer's formats).
    &["mmcl-ecg", "mmcl-cmr", "mmcl-synth"],
    // Training objectives.
    &["mmcl-losses"],
    // Pre-training.
    &["mmcl-train"],
    // Evaluation of trained encoders: probes, fine-tuning, metrics, figures.
    &["mmcl-eval"],
    // Orchestration of whole studies.
    &["mmcl-pipeline"],
    // The command line, and the examples and benchmarks of the whole workspace.
    &["mmcl", "mmcl-suite"],
];

fn layer_of() -> BTreeMap<&'static str, usize> {
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| layer.iter().map(move |name| (*name, i)))
        .collect()
}

#[test]
fn every_dependency_points_down() {
    let metadata = mmcl_testutil::stdout_json(
        Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
        "cargo metadata",
    );
    let layers = layer_of();
    let mut problems = Vec::new();
    let packages = metadata["packages"].as_array().expect("packages");
    for package in packages {
        let name = package["name"].as_str().expect("package name");
        let Some(&own) = layers.get(name) else {
            problems.push(format!("{name} is in no layer of tests/layering.rs"));
            continue;
        };
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let dep_name = dep["name"].as_str().expect("dependency name");
            let Some(&theirs) = layers.get(dep_name) else {
                continue; // an external crate
            };
            let kind = dep["kind"].as_str().unwrap_or("normal");
            if theirs >= own {
                problems.push(format!(
                    "{name} (layer {own}) has a {kind} dependency on {dep_name} (layer {theirs})"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(packages.len() >= 12, "the workspace lost crates");
}

/// The longest a library source file may be: a file longer than this mixes concerns (split it by
/// what it does, not by moving its tests out).
const MAX_SOURCE_LINES: usize = 700;

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_library_source_file_is_over_700_lines() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    let mut files = Vec::new();
    for krate in std::fs::read_dir(&crates).expect("crates/").flatten() {
        rust_files(&krate.path().join("src"), &mut files);
    }
    assert!(files.len() > 100, "found only {} source files", files.len());
    let too_long: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(path).ok()?.lines().count();
            (lines > MAX_SOURCE_LINES).then(|| format!("{}: {lines} lines", path.display()))
        })
        .collect();
    assert!(too_long.is_empty(), "{}", too_long.join("\n"));
}
