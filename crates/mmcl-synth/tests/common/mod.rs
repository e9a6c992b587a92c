//! What the cohort tests share (`mod common;` in each): small cohorts, and running the
//! Python scripts that read the files with other tools.

// Each test binary compiles this module on its own and uses only its part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::process::Command;

use mmcl_synth::SynthConfig;

/// The default cohort of `subjects` drawn with `seed`, its cine `image_size` pixels square
/// with `slices` slices of `frames` frames (small cines keep the tests fast; the hidden state
/// and the ECG do not depend on the cine's size).
pub fn small_cohort(
    subjects: usize,
    seed: u64,
    image_size: usize,
    slices: usize,
    frames: usize,
) -> SynthConfig {
    let mut cfg = SynthConfig {
        subjects,
        seed,
        ..SynthConfig::default()
    };
    cfg.cmr.image_size = image_size;
    cfg.cmr.slices = slices;
    cfg.cmr.frames = frames;
    cfg
}

/// Whether `python3` can import `modules` (as Python lists them: `"numpy, pydicom"`); when it
/// cannot, says on stderr that the test is skipped.
pub fn python_with(modules: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: python3 with {modules} is not available");
    }
    found
}

/// The standard output, as JSON, of the Python `script` run with `args`, after asserting that it
/// succeeded.
pub fn python_json(script: &str, args: &[&OsStr]) -> serde_json::Value {
    let mut python = Command::new("python3");
    python.args(["-c", script]).args(args);
    mmcl_testutil::stdout_json(&mut python, "python")
}
