//! What the command-line tests share (`mod common;` in each): running the `mmcl` binary, the
//! toy ECG encoder of `mmcl-ecg/tests/fixtures`, `.npy` files in and out, and the checks that a
//! failed command wrote nothing.

// Each test binary compiles this module on its own and uses only its part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use npyz::WriterBuilder;

/// The `mmcl` binary built for these tests.
pub fn mmcl_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mmcl"))
}

/// Runs `mmcl args…` to completion.
pub fn mmcl(args: &[&str]) -> Output {
    mmcl_command()
        .args(args)
        .output()
        .expect("the mmcl binary runs")
}

/// Runs `mmcl args…` to completion in the working directory `dir`.
pub fn mmcl_in(dir: &Path, args: &[&str]) -> Output {
    mmcl_command()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the mmcl binary runs")
}

/// The command's standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command's standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `out`, after asserting that the command succeeded.
pub fn ok(out: Output) -> Output {
    assert!(out.status.success(), "failed: {}", stderr(&out));
    out
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A file of the toy ECG encoder's fixtures (`mmcl-ecg/tests/fixtures`).
pub fn ecg_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mmcl-ecg/tests/fixtures")
        .join(name)
}

/// A file of the data layer's fixtures (`mmcl-data/tests/fixtures`).
pub fn data_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mmcl-data/tests/fixtures")
        .join(name)
}

/// The configuration of the toy encoder whose checkpoints are the ECG fixtures: (N, 2, 20)
/// inputs, 1×5 patches, 8 wide, one block of two heads.
pub const TOY_CONFIG: &str = r#"{"img_size": [1, 2, 20], "patch_size": [1, 5], "embed_dim": 8,
    "depth": 1, "num_heads": 2, "num_classes": 2, "global_pool": true, "attention_pool": true}"#;

/// `mmcl embed-ecg` of `input` into `output` with the toy encoder's checkpoint
/// `tiny_plain.pth` and its configuration file `config`, then `extra` arguments.
pub fn embed_toy(config: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let checkpoint = ecg_fixture("tiny_plain.pth");
    let mut args = vec![
        "embed-ecg",
        "--checkpoint",
        s(&checkpoint),
        "--config",
        s(config),
        "--input",
        s(input),
        "--output",
        s(output),
    ];
    args.extend_from_slice(extra);
    mmcl(&args)
}

/// The `[encoder]` table of a TOML configuration for a small ECG encoder (1×12×2500 inputs,
/// 1×100 patches, 32 wide, two blocks of four heads); its pooling keys are to follow.
pub const SMALL_ENCODER_TOML: &str = "[encoder]\nimg_size = [1, 12, 2500]\npatch_size = [1, 100]\n\
    embed_dim = 32\ndepth = 2\nnum_heads = 4\n";

/// The `[imaging]` and `[ecg]` tables of the small multimodal model the command-line tests
/// pretrain (ResNet18 on 32² images, the ViT on 12×500 ECGs in 1×100 patches). `[ecg]` comes
/// last, so that a test may append keys of its own to it.
pub const SMALL_MMCL_TOWERS_TOML: &str = r#"[imaging]
model = "resnet18"
img_size = 32
augment = { size = 32 }

[ecg]
model = "vit_pluto_patchX"
input_size = [1, 12, 500]
patch_size = [1, 100]
"#;

/// A configuration of one epoch of the small multimodal model (batch 4, no warm-up) reading
/// `cache` beside it, with the extra lines `top` (top-level keys), `data` (of `[data]`) and
/// `ecg` (of `[ecg]`).
pub fn one_epoch_small_mmcl_toml(top: &str, data: &str, ecg: &str) -> String {
    format!(
        "max_epochs = 1\nwarmup_epochs = 0\nbatch_size = 4\nembedding_dim = 32\n\
         projection_dim = 16\n{top}\n[data]\ncache = \"cache\"\n{data}\n\
         {SMALL_MMCL_TOWERS_TOML}{ecg}"
    )
}

/// Writes `text` as the configuration file `root/name`, then runs `mmcl command --config
/// root/name --output root/output` and `extra` arguments; the configuration's path, the
/// output's and the command's output.
pub fn run_with_config(
    root: &Path,
    command: &str,
    name: &str,
    text: &str,
    output: &str,
    extra: &[&str],
) -> (PathBuf, PathBuf, Output) {
    let config = root.join(name);
    std::fs::write(&config, text).expect("write the configuration");
    let run = root.join(output);
    let mut args = vec![command, "--config", s(&config), "--output", s(&run)];
    args.extend_from_slice(extra);
    let out = mmcl(&args);
    (config, run, out)
}

/// The `[model]` and `[data]` tables of the small MAE the command-line tests pretrain (12×500
/// ECGs in 1×100 patches) reading `cache` beside the configuration with two threads.
pub const SMALL_MAE_TOML: &str = r#"[model]
model = "mae_vit_pluto_patchX"
img_size = [1, 12, 500]
patch_size = [1, 100]

[data]
cache = "cache"
threads = 2
"#;

/// Writes an `.npy` of shape `dims` holding `values` (of any element type npyz knows) stored
/// in `order`.
pub fn write_npy<T: npyz::AutoSerialize>(
    path: &Path,
    dims: &[u64],
    order: npyz::Order,
    values: impl IntoIterator<Item = T>,
) {
    let file = std::fs::File::create(path).expect("create npy");
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(dims)
        .order(order)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .expect("npy header");
    w.extend(values).expect("npy data");
    w.finish().expect("npy finish");
}

/// Writes a float32 C-order `.npy` of shape `dims` holding `values`.
pub fn write_npy_f32(path: &Path, dims: &[u64], values: &[f32]) {
    write_npy(path, dims, npyz::Order::C, values.iter().copied());
}

/// The shape and float32 values of an `.npy` file.
pub fn read_npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("output exists");
    let npy = npyz::NpyFile::new(&bytes[..]).expect("valid npy");
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().expect("f32 data"))
}

/// The largest element-wise difference of two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// No temporary sibling (`.name.tmp-…`, `.partial-…`: a hidden file) left in `dir`.
pub fn assert_no_leftovers(dir: &Path) {
    let hidden: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "temporary files left: {hidden:?}");
}

/// Only the files the test put in `dir` remain: no `output`, no temporary sibling.
pub fn assert_nothing_written(dir: &Path, output: &Path) {
    assert!(!output.exists(), "{} was written", output.display());
    assert_no_leftovers(dir);
}

/// Exit status 1 (an error reported by `main`, not a signal or an abort), every one of
/// `needles` in the message, and neither a panic nor an allocation failure.
pub fn assert_refused(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "status {:?}: {err}", out.status);
    assert!(
        !err.contains("memory allocation") && !err.contains("panicked"),
        "{err}"
    );
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

/// `mmcl synth` of a small cohort into `out` (images of 32², 4 slices, 3 frames, 2 threads),
/// asserted to succeed.
pub fn synth_small_cohort(out: &Path, subjects: usize, seed: u64) -> Output {
    let (subjects, seed) = (subjects.to_string(), seed.to_string());
    let run = mmcl(&[
        "synth",
        "--out",
        s(out),
        "--subjects",
        &subjects,
        "--seed",
        &seed,
        "--image-size",
        "32",
        "--slices",
        "4",
        "--frames",
        "3",
        "--threads",
        "2",
    ]);
    assert!(run.status.success(), "synth: {}", stderr(&run));
    run
}

/// [`cohort_and_cache`] in a new temporary folder, returned (and removed when dropped).
pub fn temp_cohort_and_cache(subjects: usize, seed: u64, fractions: [f64; 3]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    cohort_and_cache(tmp.path(), subjects, seed, fractions);
    tmp
}

/// A synthetic cohort of `subjects` (seed `seed`) under `root/cohort` and its dataset cache at
/// `root/cache` (ECGs of 1000 samples, images of 32², the `[train, val, test]` fractions).
pub fn cohort_and_cache(root: &Path, subjects: usize, seed: u64, [train, val, test]: [f64; 3]) {
    synth_small_cohort(&root.join("cohort"), subjects, seed);
    std::fs::write(
        root.join("build.toml"),
        format!(
            "root = \"cohort\"\noutput = \"cache\"\necg_samples = 1000\n\
             [cmr]\nsize = 32\n[split]\ntrain = {train:?}\nval = {val:?}\ntest = {test:?}\n"
        ),
    )
    .expect("write");
    let out = mmcl(&["build-dataset", "--config", s(&root.join("build.toml"))]);
    assert!(out.status.success(), "build-dataset: {}", stderr(&out));
}
