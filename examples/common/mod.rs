//! What the training examples share: default output folders and a small synthetic cohort turned
//! into a dataset cache (`mmcl_synth` + `mmcl_data::build`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use mmcl_suite::data::build::{BuildConfig, build_dataset};
use mmcl_suite::synth::{Cohort, SynthConfig, WriteOptions};

/// Where an example writes when not told: `target/example-runs/<name>` of the workspace.
pub fn default_output(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("example-runs")
        .join(name)
}

/// Generates a cohort of `subjects` synthetic participants under `dir/cohort` and builds its
/// cache at `dir/cache` (70 % train, 20 % validation, 10 % test; 12×5000 ECGs; small CMR
/// images of `image_size`²). Returns the cache.
pub fn synthetic_cache(dir: &Path, subjects: usize, image_size: usize) -> Result<PathBuf> {
    let mut synth = SynthConfig {
        subjects,
        seed: 2022,
        ..SynthConfig::default()
    };
    synth.cmr.image_size = image_size;
    synth.cmr.slices = 6;
    synth.cmr.frames = 4;
    let cohort = dir.join("cohort");
    eprintln!(
        "generating {subjects} synthetic subjects in {}",
        cohort.display()
    );
    Cohort::new(synth)?.write(&cohort, WriteOptions { overwrite: true }, &|| {})?;
    let mut build = BuildConfig {
        root: cohort,
        output: dir.join("cache"),
        overwrite: true,
        ..BuildConfig::default()
    };
    build.cmr.size = image_size;
    build.split.train = 0.7;
    build.split.val = 0.2;
    build.split.test = 0.1;
    let (index, _) = build_dataset(&build, &|_, _| {})?;
    eprintln!(
        "dataset cache {} (ECGs {:?}, images {:?})",
        build.output.display(),
        index.ecg,
        index.image
    );
    Ok(build.output)
}
