//! Test support shared by the crates of the workspace.
//!
//! Parity fixtures are safetensors files computed by the reference PyTorch implementation
//! (see `../shared/parity/README.md`). They live outside the repository; this crate finds them
//! and compares our outputs with theirs under the documented tolerances.
//!
//! Where the fixtures are looked for:
//! 1. the directory in `MMCL_PARITY_DIR`, if set;
//! 2. otherwise `../shared/parity` beside the workspace root.
//!
//! When `MMCL_REQUIRE_PARITY=1` (CI sets it), a missing fixture fails the test; otherwise the
//! test prints why it was skipped and passes, so that a checkout without `../shared` still builds
//! and tests.
//!
//! ```no_run
//! use mmcl_testutil::{Fixture, assert_close, Tolerance};
//! let Some(io) = Fixture::load("ecg_vit_small.io") else { return };
//! let expected = io.tensor("features_global_pool");
//! assert_close("features", &expected, &expected, Tolerance::FORWARD);
//! ```

pub mod alloc;
pub mod mutate;
pub mod zip;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// Environment variable naming the directory of parity fixtures.
pub const PARITY_DIR_ENV: &str = "MMCL_PARITY_DIR";
/// Environment variable that, when `1`, turns a missing fixture into a test failure.
pub const REQUIRE_PARITY_ENV: &str = "MMCL_REQUIRE_PARITY";

/// `mpirun --oversubscribe -np <ranks>`, ready for the program and its arguments: the launcher
/// of the tests that start themselves under MPI (OpenMPI's `openmpi-bin`). Running as root
/// (containers, CI) needs OpenMPI's explicit consent, which the command gives.
pub fn mpirun(ranks: usize) -> std::process::Command {
    let mut cmd = std::process::Command::new("mpirun");
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-np", &ranks.to_string()]);
    cmd
}

/// Asserts that an MPI job one of whose ranks died ended non-zero within 60 s (instead of
/// hanging in a collective), and says how it ended.
pub fn assert_dead_rank_ended_job(
    what: &str,
    status: std::process::ExitStatus,
    elapsed: std::time::Duration,
) {
    assert!(
        !status.success(),
        "{what}: a job whose rank died ended with success"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(60),
        "{what}: a job whose rank died took {elapsed:?} to end"
    );
    println!("{what}: a dead rank ended the job ({status}) after {elapsed:.1?}");
}

/// The standard output, as JSON, of `command` run to completion (`what` names it in the
/// failures), after asserting that it succeeded.
pub fn stdout_json(command: &mut std::process::Command, what: &str) -> serde_json::Value {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what} does not run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what} does not print JSON: {e}"))
}

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file of the data layer's fixtures (`crates/mmcl-data/tests/fixtures`).
pub fn data_fixture(name: &str) -> PathBuf {
    workspace_root()
        .join("crates/mmcl-data/tests/fixtures")
        .join(name)
}

/// Copies the fixture CMR study of subject 1000001 (`sa.nii.gz` and `seg_sa.nii.gz`) into the
/// folder `subject`, created: a subject of a test's UK Biobank–style cohort.
///
/// # Panics
/// When a file cannot be copied.
pub fn copy_fixture_cmr_study(subject: &Path) {
    std::fs::create_dir_all(subject)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", subject.display()));
    for name in ["sa.nii.gz", "seg_sa.nii.gz"] {
        std::fs::copy(
            data_fixture(&format!("cmr/1000001/{name}")),
            subject.join(name),
        )
        .unwrap_or_else(|e| panic!("cannot copy {name} to {}: {e}", subject.display()));
    }
}

/// The directory where parity fixtures are expected.
pub fn parity_dir() -> PathBuf {
    match std::env::var_os(PARITY_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("../shared/parity"),
    }
}

/// Whether missing fixtures must fail the tests.
pub fn parity_required() -> bool {
    std::env::var(REQUIRE_PARITY_ENV).is_ok_and(|v| v == "1")
}

/// The path of a parity fixture `NAME.safetensors`, or `None` (with a note on stderr) when it is
/// absent and not required.
///
/// # Panics
/// When the fixture is absent and [`parity_required`] is true.
pub fn parity_file(name: &str) -> Option<PathBuf> {
    let path = parity_dir().join(format!("{name}.safetensors"));
    if path.is_file() {
        return Some(path);
    }
    if parity_required() {
        panic!(
            "parity fixture {} is missing and {REQUIRE_PARITY_ENV}=1",
            path.display()
        );
    }
    eprintln!(
        "skipping: parity fixture {} not found (set {PARITY_DIR_ENV})",
        path.display()
    );
    None
}

/// A loaded safetensors fixture: tensors (upcast to f32 on the CPU) and metadata.
pub struct Fixture {
    /// Where the fixture was read from.
    pub path: PathBuf,
    /// Every tensor of the file, as f32 on the CPU, by name.
    pub tensors: HashMap<String, Tensor>,
    /// The file's metadata, each value parsed as JSON where it parses, else kept as a string.
    pub metadata: HashMap<String, serde_json::Value>,
}

impl Fixture {
    /// Loads `NAME.safetensors` from the parity directory; `None` when skipped (see
    /// [`parity_file`]).
    pub fn load(name: &str) -> Option<Fixture> {
        let path = parity_file(name)?;
        Some(Fixture::from_path(&path))
    }

    /// Loads any safetensors file as a fixture.
    ///
    /// # Panics
    /// When the file cannot be read or parsed (a broken fixture is a broken test).
    pub fn from_path(path: &Path) -> Fixture {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .unwrap_or_else(|e| panic!("bad safetensors header in {}: {e}", path.display()));
        let metadata = header
            .metadata()
            .as_ref()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let value = serde_json::from_str(v)
                            .unwrap_or_else(|_| serde_json::Value::String(v.clone()));
                        (k.clone(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let raw = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .unwrap_or_else(|e| panic!("cannot load tensors of {}: {e}", path.display()));
        let tensors = raw
            .into_iter()
            .map(|(k, t)| {
                let t = t
                    .to_dtype(DType::F32)
                    .unwrap_or_else(|e| panic!("cannot upcast {k}: {e}"));
                (k, t)
            })
            .collect();
        Fixture {
            path: path.to_path_buf(),
            tensors,
            metadata,
        }
    }

    /// The tensor `name`.
    ///
    /// # Panics
    /// When the fixture has no such tensor.
    pub fn tensor(&self, name: &str) -> Tensor {
        match self.tensors.get(name) {
            Some(t) => t.clone(),
            None => panic!("fixture {} has no tensor {name}", self.path.display()),
        }
    }

    /// The tensor `name` as a flat `Vec<f32>`.
    pub fn values(&self, name: &str) -> Vec<f32> {
        flat(&self.tensor(name))
    }

    /// A metadata value.
    ///
    /// # Panics
    /// When the fixture has no such metadata key.
    pub fn meta(&self, key: &str) -> &serde_json::Value {
        match self.metadata.get(key) {
            Some(v) => v,
            None => panic!("fixture {} has no metadata {key}", self.path.display()),
        }
    }
}

/// The devices a test of the compute paths runs on: the CPU, and the first CUDA device when
/// the build has candle's CUDA backend (`--features cuda`) and a device answers. A CUDA build
/// on a machine without a GPU says so on stderr, so that a log shows what was not run.
///
/// Tolerances: the same on CUDA as on the CPU, with cuBLAS's f32 products in full precision
/// (candle's default; TF32 is off unless a program turns it on).
pub fn devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    if candle_core::utils::cuda_is_available() {
        match Device::new_cuda(0) {
            Ok(cuda) => devices.push(cuda),
            Err(e) => eprintln!("no CUDA device ({e}): the CUDA half of this test is skipped"),
        }
    }
    devices
}

/// A short name of a device for messages: `cpu`, `cuda`, `metal`.
pub fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// A tensor's elements as a flat f32 vector.
pub fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap_or_else(|e| panic!("cannot read tensor values: {e}"))
}

/// A tensor's elements as the bit patterns of their f32 values, for bit-for-bit comparisons
/// (where `==` on floats would let `-0.0` equal `0.0` and fail on equal NaNs).
pub fn bits(t: &Tensor) -> Vec<u32> {
    flat(t).iter().map(|v| v.to_bits()).collect()
}

/// A CPU tensor of `shape` drawn from N(0, 1) by the generator of `seed`. Tests draw their
/// inputs from it rather than from candle's unseeded `Tensor::randn`: the same data on every run,
/// so a tolerance that holds once holds always (an unlucky unseeded draw once failed CI).
pub fn seeded_randn(seed: u64, shape: &[usize]) -> Tensor {
    seeded(seed, shape, rand_distr::StandardNormal)
}

/// A CPU tensor of `shape` drawn uniformly from [0, 1) by the generator of `seed`.
pub fn seeded_rand(seed: u64, shape: &[usize]) -> Tensor {
    seeded(seed, shape, rand_distr::StandardUniform)
}

fn seeded(seed: u64, shape: &[usize], dist: impl rand_distr::Distribution<f32>) -> Tensor {
    use rand::SeedableRng;
    let rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = dist.sample_iter(rng).take(shape.iter().product()).collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot build a tensor of shape {shape:?}: {e}"))
}

/// `f` inside a rayon pool of `threads` threads, whatever the machine has: for tests of results
/// that must not depend on the thread count, or of work that shares its threads.
pub fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap_or_else(|e| panic!("cannot build a pool of {threads} threads: {e}"))
        .install(f)
}

/// A tensor's elements as little-endian bytes, for comparisons to the bit: `i64` elements as
/// stored, every other type as the bits of its `f32` value.
pub fn tensor_bits(t: &Tensor) -> Vec<u8> {
    let t = t
        .flatten_all()
        .unwrap_or_else(|e| panic!("cannot flatten a tensor: {e}"));
    match t.dtype() {
        DType::I64 => t
            .to_vec1::<i64>()
            .unwrap_or_else(|e| panic!("cannot read i64 values: {e}"))
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        _ => flat(&t)
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect(),
    }
}

/// An element-wise tolerance `|actual - expected| <= abs + rel * |expected|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub abs: f64,
    /// Part relative to the magnitude of the expected element.
    pub rel: f64,
}

impl Tolerance {
    /// Forward outputs: `1e-4 * (1 + |ref|)`.
    pub const FORWARD: Tolerance = Tolerance {
        abs: 1e-4,
        rel: 1e-4,
    };
    /// Attention maps: `1e-5` absolute.
    pub const ATTENTION: Tolerance = Tolerance {
        abs: 1e-5,
        rel: 0.0,
    };
    /// Losses: `1e-5` relative.
    pub const LOSS: Tolerance = Tolerance {
        abs: 0.0,
        rel: 1e-5,
    };
    /// Preprocessing: `1e-3` absolute on normalised output.
    pub const PREPROCESSING: Tolerance = Tolerance {
        abs: 1e-3,
        rel: 0.0,
    };
    /// Metrics: `1e-6` absolute.
    pub const METRIC: Tolerance = Tolerance {
        abs: 1e-6,
        rel: 0.0,
    };
}

/// The worst element of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct Worst {
    /// Flat index of the element.
    pub index: usize,
    /// Our value.
    pub actual: f64,
    /// The reference value.
    pub expected: f64,
    /// `|actual - expected| / (abs + rel*|expected|)`: at most 1 passes.
    pub ratio: f64,
    /// Largest absolute difference over all elements.
    pub max_abs_diff: f64,
}

/// Compares two tensors element-wise and returns the worst element.
///
/// # Panics
/// When the shapes differ or an element is NaN on one side only.
pub fn compare(name: &str, actual: &Tensor, expected: &Tensor, tol: Tolerance) -> Worst {
    assert_eq!(
        actual.dims(),
        expected.dims(),
        "{name}: shape {:?} differs from the reference {:?}",
        actual.dims(),
        expected.dims()
    );
    let a = flat(actual);
    let e = flat(expected);
    let mut worst = Worst {
        index: 0,
        actual: 0.0,
        expected: 0.0,
        ratio: 0.0,
        max_abs_diff: 0.0,
    };
    for (i, (&x, &y)) in a.iter().zip(&e).enumerate() {
        let (x, y) = (x as f64, y as f64);
        assert!(
            x.is_nan() == y.is_nan(),
            "{name}[{i}]: {x} vs reference {y} (NaN on one side)"
        );
        if x.is_nan() {
            continue;
        }
        let diff = (x - y).abs();
        let allowed = tol.abs + tol.rel * y.abs();
        let ratio = if allowed > 0.0 {
            diff / allowed
        } else if diff > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        worst.max_abs_diff = worst.max_abs_diff.max(diff);
        if ratio > worst.ratio {
            worst = Worst {
                index: i,
                actual: x,
                expected: y,
                ratio,
                max_abs_diff: worst.max_abs_diff,
            };
        }
    }
    worst
}

/// Asserts that `actual` matches `expected` within `tol` everywhere; prints the maximum error.
///
/// # Panics
/// When an element is out of tolerance (the message names the worst one).
pub fn assert_close(name: &str, actual: &Tensor, expected: &Tensor, tol: Tolerance) -> Worst {
    let worst = compare(name, actual, expected, tol);
    eprintln!(
        "parity {name}: max |diff| = {:.3e} (worst at {} is {:.3} of the tolerance)",
        worst.max_abs_diff, worst.index, worst.ratio
    );
    assert!(
        worst.ratio <= 1.0,
        "{name}: element {} is {} but the reference is {} (|diff| {:.3e} > {:?})",
        worst.index,
        worst.actual,
        worst.expected,
        (worst.actual - worst.expected).abs(),
        tol
    );
    worst
}

/// Asserts a gradient matches: `max |Δ| <= rel * max |expected|` (the README's gradient rule).
///
/// # Panics
/// When out of tolerance.
pub fn assert_grad_close(name: &str, actual: &Tensor, expected: &Tensor, rel: f64) -> f64 {
    let scale = flat(expected)
        .iter()
        .fold(0.0f64, |m, &v| m.max((v as f64).abs()));
    let tol = Tolerance {
        abs: rel * scale.max(f64::MIN_POSITIVE),
        rel: 0.0,
    };
    let worst = compare(name, actual, expected, tol);
    let relative = worst.max_abs_diff / scale.max(f64::MIN_POSITIVE);
    eprintln!("parity grad {name}: max |diff| / max |ref| = {relative:.3e}");
    assert!(
        worst.ratio <= 1.0,
        "{name}: gradient element {} is {} but the reference is {} (relative error {relative:.3e} > {rel})",
        worst.index,
        worst.actual,
        worst.expected
    );
    relative
}
