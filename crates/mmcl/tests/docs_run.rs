//! Docs that run: the README's walk-through is executed command by command, as written, on a
//! small synthetic cohort, and every `mmcl` command line shown in `README.md` and `docs/*.md`
//! is checked against the binary (the subcommand exists, each of its flags is accepted). The
//! docs cannot drift from the binary again.
//!
//! The only liberty taken is the one the walk-through asks of its reader: the configuration
//! files printed with `--print-config` are then "edited", here replaced with reduced versions
//! (a few epochs, small models) before the command that reads them runs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{mmcl_in, stderr};

/// The workspace root (README.md, docs/).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The lines of the fenced code blocks tagged `sh` (or `text`, `bash` when `all`), with
/// continuation lines joined and comments removed: one command per entry.
fn commands_in(markdown: &str, all: bool) -> Vec<String> {
    let mut commands = Vec::new();
    let mut inside = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if let Some(tag) = trimmed.strip_prefix("```") {
            inside = !inside && (tag == "sh" || (all && (tag == "text" || tag == "bash")));
            continue;
        }
        if !inside {
            continue;
        }
        let code = match trimmed.find(" #") {
            Some(i) => trimmed[..i].trim_end(),
            None => trimmed,
        };
        if code.starts_with('#') || code.is_empty() {
            continue;
        }
        match code.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head.trim_end());
                pending.push(' ');
            }
            None => {
                pending.push_str(code);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}

/// The README's walk-through section.
fn walk_through(readme: &str) -> &str {
    let start = readme
        .find("## Walk-through")
        .expect("the README has a walk-through section");
    let rest = &readme[start + 3..];
    let end = rest.find("\n## ").map_or(readme.len(), |i| start + 3 + i);
    &readme[start..end]
}

/// The `[encoder]` table of the commands that read the walk-through's pretrained ECG encoder.
const WALK_THROUGH_ENCODER: &str = r#"[encoder]
model = "vit_pluto_patchX"
img_size = [1, 12, 500]
patch_size = [1, 100]
global_pool = true
"#;

/// The reduced configurations a reader would have edited the printed ones into.
fn edited_configs() -> BTreeMap<&'static str, String> {
    let (towers, encoder) = (common::SMALL_MMCL_TOWERS_TOML, WALK_THROUGH_ENCODER);
    [
        (
            "dataset.toml",
            r#"root = "ukb"
output = "cache"
ecg_samples = 1000
[cmr]
size = 32
[split]
train = 0.6
val = 0.2
test = 0.2
"#
            .to_string(),
        ),
        (
            "mae.toml",
            format!(
                "max_epochs = 2\nwarmup_epochs = 0\nbatch_size = 8\nlr = 1e-3\n{}",
                common::SMALL_MAE_TOML
            ),
        ),
        (
            "mmcl.toml",
            format!(
                r#"max_epochs = 2
warmup_epochs = 0
batch_size = 8
embedding_dim = 32
projection_dim = 16
[data]
cache = "cache"
threads = 2
{towers}pretrain_checkpoint = "runs/mae"
"#
            ),
        ),
        (
            "finetune.toml",
            format!(
                r#"cache = "cache"
checkpoint = "runs/mmcl"
task = "classification"
targets = ["CAD"]
max_epochs = 2
warmup_epochs = 0
batch_size = 8
threads = 2
output = "runs/finetune-cad"
{encoder}"#
            ),
        ),
        (
            "explain.toml",
            format!(
                r#"model = "runs/mmcl"
image_encoder = "resnet18"
output = "explain/1000001"
{encoder}[ecg]
file = "ukb/ecg/1000001_20205_2_0.xml"
[cmr]
image = "ukb/cmr/1000001/sa.nii.gz"
segmentation = "ukb/cmr/1000001/seg_sa.nii.gz"
[cmr.preprocessing]
size = 32
"#
            ),
        ),
    ]
    .into()
}

/// Runs one documented command line in `dir`: `mmcl …`, optionally `> file`.
fn run_documented(dir: &Path, command: &str) -> Output {
    assert!(
        !command.contains(['"', '\'', '|', '&', ';', '$']),
        "the walk-through's commands are plain argument lists: {command}"
    );
    let (argv, redirect) = match command.split_once('>') {
        Some((head, file)) => (head, Some(file.trim())),
        None => (command, None),
    };
    let words: Vec<&str> = argv.split_whitespace().collect();
    assert_eq!(
        words.first(),
        Some(&"mmcl"),
        "not an mmcl command: {command}"
    );
    let out = mmcl_in(dir, &words[1..]);
    if let Some(file) = redirect {
        std::fs::write(dir.join(file), &out.stdout).expect("write the redirected output");
    }
    out
}

#[test]
fn readme_walk_through_runs_as_written() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let commands = commands_in(walk_through(&readme), false);
    assert!(
        commands.len() >= 10,
        "the walk-through lost its commands: {commands:?}"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let edits = edited_configs();
    for command in &commands {
        // The reader edits a printed configuration before the command that reads it.
        let words: Vec<&str> = command.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "--config")
            && let Some(text) = words.get(i + 1).and_then(|f| edits.get(f))
        {
            std::fs::write(dir.join(words[i + 1]), text).expect("write the edited configuration");
        }
        let out = run_documented(dir, command);
        assert!(out.status.success(), "`{command}` failed: {}", stderr(&out));
    }
    for expected in [
        "cache/index.json",
        "runs/mae/checkpoints/last/ecg_encoder.safetensors",
        "runs/mmcl/checkpoints/last/ecg_encoder.safetensors",
        "probe/diseases/metrics.json",
        "probe/diseases/report.md",
        "probe/phenotypes/scatter.png",
        "embeddings/train/embeddings.npy",
        "embeddings/test/subjects.csv",
        "probe-arrays/report.md",
        "runs/finetune-cad/report.md",
        "explain/1000001",
    ] {
        assert!(
            dir.join(expected).exists(),
            "the walk-through did not write {expected}"
        );
    }
}

/// The flags `mmcl <subcommand> --help` lists.
fn flags_of(subcommand: &str, cache: &mut BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    cache
        .entry(subcommand.to_string())
        .or_insert_with(|| {
            let out = common::mmcl(&[subcommand, "--help"]);
            assert!(
                out.status.success(),
                "the docs name `mmcl {subcommand}`, which does not exist: {}",
                stderr(&out)
            );
            String::from_utf8_lossy(&out.stdout)
                .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().unwrap_or(w).to_string())
                .collect()
        })
        .clone()
}

#[test]
fn every_documented_command_line_parses() {
    let mut files = vec![workspace().join("README.md")];
    let docs = workspace().join("docs");
    for entry in std::fs::read_dir(&docs).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut help = BTreeMap::new();
    let mut checked = 0;
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        for command in commands_in(&text, true) {
            // Synopses wrap optional flags in brackets: `[--device cpu|cuda]`.
            let words: Vec<&str> = command
                .split_whitespace()
                .map(|w| w.trim_matches(['[', ']', '(', ')']))
                .collect();
            if words.first() != Some(&"mmcl") || words.len() < 2 || words[1].starts_with('-') {
                continue;
            }
            let known = flags_of(words[1], &mut help);
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap_or(flag);
                if !known.contains(flag) {
                    problems.push(format!(
                        "{}: `mmcl {}` has no flag {flag} ({command})",
                        file.display(),
                        words[1]
                    ));
                }
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 20,
        "only {checked} documented command lines found"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
