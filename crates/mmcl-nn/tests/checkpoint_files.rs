//! Reading checkpoint files into a [`StateDict`] and loading them into a model: what this crate
//! adds to `mmcl-pth`'s archive reader (its own hostile-file tests live there).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use mmcl_nn::batch_norm::{BatchNormConfig, batch_norm};
use mmcl_nn::checkpoint::{KeyRemap, LoadOptions};
use mmcl_nn::{Error, LoadReport, ParamStore, Result, StateDict};

/// A PyTorch archive among `mmcl-pth`'s fixtures (written by `make_pth_fixtures.py`).
fn pth_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mmcl-pth/tests/fixtures")
        .join(name)
}

#[test]
fn floating_tensors_convert_integers_keep_their_dtype() {
    let state = StateDict::read(&pth_fixture("dtypes.pth")).expect("reads");
    let f32 = state.to_dtype(DType::F32).expect("converts");
    let dtype = |n: &str| f32.get(n).map(|t| t.dtype());
    assert_eq!(dtype("bf16"), Some(DType::F32));
    assert_eq!(dtype("f16"), Some(DType::F32));
    assert_eq!(dtype("i64"), Some(DType::I64));
    assert_eq!(dtype("flag"), Some(DType::U8));
}

#[test]
fn archive_errors_keep_their_message() {
    // `StateDict::read` and `mmcl-pth`'s error converted into this crate's say the same thing.
    let dir = tempfile::tempdir().expect("temp dir");
    let truncated = dir.path().join("truncated.ckpt");
    let good = std::fs::read(pth_fixture("lightning.ckpt")).expect("fixture");
    std::fs::write(&truncated, &good[..good.len() / 2]).expect("write");
    for path in [
        pth_fixture("legacy_format.pth"),
        pth_fixture("no_data_pkl.pth"),
        truncated,
        dir.path().join("absent.pth"),
    ] {
        let ours = StateDict::read(&path).expect_err("unreadable");
        let theirs = Error::from(mmcl_pth::read_file(&path).expect_err("unreadable"));
        assert_eq!(ours.to_string(), theirs.to_string());
        assert_eq!(
            matches!(ours, Error::BadCheckpoint { .. }),
            matches!(theirs, Error::BadCheckpoint { .. })
        );
    }
    let legacy = StateDict::read(&pth_fixture("legacy_format.pth")).expect_err("legacy");
    let message = legacy.to_string();
    assert!(
        message.contains("legacy_format.pth: not a readable checkpoint: a legacy (pre-1.6)"),
        "{message}"
    );
}

/// A model with one batch-norm layer of `channels` channels (`bn.weight`, …,
/// `bn.num_batches_tracked`).
fn batch_norm_model(channels: usize) -> ParamStore {
    let store = ParamStore::new(0);
    batch_norm(
        channels,
        BatchNormConfig::default(),
        store.var_builder(DType::F32, &Device::Cpu).pp("bn"),
    )
    .expect("batch norm");
    store
}

fn batch_norm_state(weight: Tensor) -> StateDict {
    let dev = Device::Cpu;
    let f = |v: &[f32]| Tensor::new(v, &dev).expect("tensor");
    [
        ("bn.weight".to_string(), weight),
        ("bn.bias".to_string(), f(&[0.0, 0.0])),
        ("bn.running_mean".to_string(), f(&[0.0, 0.0])),
        ("bn.running_var".to_string(), f(&[1.0, 1.0])),
        (
            "bn.num_batches_tracked".to_string(),
            Tensor::new(7i64, &dev).expect("counter"),
        ),
    ]
    .into_iter()
    .collect()
}

/// Writes [`batch_norm_state`] with `weight` to `dir/name` and loads it strictly into a fresh
/// two-channel model.
fn write_and_load(dir: &Path, name: &str, weight: Tensor) -> (ParamStore, Result<LoadReport>) {
    let path = dir.join(name);
    batch_norm_state(weight)
        .write_safetensors(&path, None)
        .expect("write");
    let store = batch_norm_model(2);
    let result = store.load_file(&path, &LoadOptions::strict());
    (store, result)
}

/// Asserts that `message` names each of `needles`.
fn assert_names(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            message.contains(needle),
            "{needle:?} missing from {message}"
        );
    }
}

#[test]
fn integer_weights_are_refused_integer_counters_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = Device::Cpu;

    // An I64 weight: refused by name and dtype, nothing loaded.
    let weight = Tensor::new(&[3i64, 4], &dev).expect("tensor");
    let (store, result) = write_and_load(dir.path(), "int-weight.safetensors", weight);
    let err = result.expect_err("an integer weight must not load");
    assert!(matches!(err, Error::CheckpointMismatch { .. }), "{err:?}");
    assert_names(
        &err.to_string(),
        &["int-weight.safetensors", "bn.weight", "i64"],
    );
    let weight = store.get("bn.weight").expect("weight");
    assert_eq!(
        weight.as_tensor().to_vec1::<f32>().expect("f32"),
        vec![1.0, 1.0]
    );

    // A float weight beside the I64 counter: accepted, the counter kept as an integer.
    let weight = Tensor::new(&[3f32, 4.0], &dev).expect("tensor");
    let (store, result) = write_and_load(dir.path(), "int-counter.safetensors", weight);
    let report = result.expect("an integer counter loads");
    assert_eq!(report.loaded.len(), 5);
    let counter = store.get("bn.num_batches_tracked").expect("counter");
    assert_eq!(counter.as_tensor().to_scalar::<i64>().expect("i64"), 7);

    // The same rule for PyTorch archives: a LongStorage weight (the `i64` tensor of a file
    // torch.save wrote, under the name of a six-channel batch norm's weight) is refused.
    // Converting the checkpoint to f32 first (as loaders do for f16 files) changes nothing.
    let path = pth_fixture("dtypes.pth");
    let (state, _) = StateDict::read(&path)
        .expect("the archive itself is sound")
        .to_dtype(DType::F32)
        .expect("converts")
        .remap(&KeyRemap::new().rename("i64", "bn.weight").drop_unmatched());
    let err = batch_norm_model(6)
        .load_state_dict(&state, &LoadOptions::strict().allow_missing(["bn.*"]))
        .expect_err("an integer weight must not load");
    assert_names(&err.to_string(), &["dtypes.pth", "bn.weight", "i64"]);
}
