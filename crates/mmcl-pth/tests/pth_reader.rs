//! The PyTorch archive reader on files written by real `torch.save` (see
//! `fixtures/make_pth_fixtures.py`): every tensor's values are `i * 0.25 - 1` over its logical
//! row-major elements, so they are checked exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use mmcl_pth::{KeyRemap, read_file};

/// Tensors by name.
type Tensors = BTreeMap<String, Tensor>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn ramp(n: usize) -> Vec<f64> {
    (0..n).map(|i| i as f64 * 0.25 - 1.0).collect()
}

/// Reads a fixture, expecting success.
fn read(name: &str) -> Tensors {
    read_file(&fixture(name))
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect()
}

fn values(sd: &Tensors, name: &str) -> Vec<f64> {
    let t = sd
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing; keys: {:?}", sd.keys().collect::<Vec<_>>()));
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("readable tensor")
}

fn dims(sd: &Tensors, name: &str) -> Vec<usize> {
    sd.get(name).map(|t| t.dims().to_vec()).unwrap_or_default()
}

#[test]
fn plain_state_dict() {
    let sd = read("plain_state_dict.pth");
    assert_eq!(sd.keys().collect::<Vec<_>>(), vec!["bias", "weight"]);
    assert_eq!(dims(&sd, "weight"), vec![2, 3]);
    assert_eq!(values(&sd, "weight"), ramp(6));
    assert_eq!(values(&sd, "bias"), ramp(2));
    assert_eq!(sd.get("weight").map(|t| t.dtype()), Some(DType::F32));
}

#[test]
fn model_wrapped_checkpoint_ignores_other_objects() {
    let sd = read("model_wrapped.pth");
    assert_eq!(
        sd.keys().collect::<Vec<_>>(),
        vec![
            "model.blocks.0.norm1.weight",
            "model.cls_token",
            "model.head.weight"
        ]
    );
    assert_eq!(dims(&sd, "model.cls_token"), vec![1, 1, 4]);
    assert_eq!(values(&sd, "model.head.weight"), ramp(12));
}

#[test]
fn lightning_checkpoint_keeps_the_state_dict_and_skips_the_rest() {
    let sd = read("lightning.ckpt");
    let keys: Vec<&str> = sd.keys().map(String::as_str).collect();
    // Optimizer states (integer keys, lists) are skipped; tensors under string keys are kept,
    // including the callback's.
    assert!(keys.iter().all(|k| !k.starts_with("optimizer_states")));
    for k in [
        "state_dict.encoder_ecg.cls_token",
        "state_dict.encoder_ecg.blocks.0.attn.qkv.weight",
        "state_dict.encoder_imaging.0.weight",
        "state_dict.projection_head_ecg.layers.0.weight",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    let enc: Tensors = KeyRemap::new()
        .strip_prefix("state_dict.encoder_ecg.")
        .drop_unmatched()
        .apply_to(sd)
        .kept
        .into_iter()
        .collect();
    assert_eq!(enc.len(), 2);
    assert_eq!(dims(&enc, "blocks.0.attn.qkv.weight"), vec![12, 4]);
    assert_eq!(values(&enc, "blocks.0.attn.qkv.weight"), ramp(48));
}

#[test]
fn every_dtype_loads() {
    let sd = read("dtypes.pth");
    let dtype = |n: &str| sd.get(n).map(|t| t.dtype());
    assert_eq!(dtype("f16"), Some(DType::F16));
    assert_eq!(dtype("bf16"), Some(DType::BF16));
    assert_eq!(dtype("f64"), Some(DType::F64));
    assert_eq!(dtype("i64"), Some(DType::I64));
    // The ramp values are exact in every floating format.
    for n in ["f16", "bf16", "f64"] {
        assert_eq!(values(&sd, n), ramp(6), "{n}");
    }
    assert_eq!(values(&sd, "i64"), vec![-3.0, -2.0, -1.0, 0.0, 1.0, 2.0]);
    assert_eq!(values(&sd, "i8"), vec![-3.0, -2.0, -1.0, 0.0, 1.0, 2.0]);
    assert_eq!(values(&sd, "flag"), vec![1.0, 0.0, 1.0]);
}

#[test]
fn strided_offset_and_shared_views() {
    let sd = read("views.pth");
    // ramp(3, 4).t(): element (i, j) is ramp[j * 4 + i].
    let r = ramp(12);
    let transposed: Vec<f64> = (0..4)
        .flat_map(|i| (0..3).map(move |j| (i, j)))
        .map(|(i, j)| r[j * 4 + i])
        .collect();
    assert_eq!(dims(&sd, "transposed"), vec![4, 3]);
    assert_eq!(values(&sd, "transposed"), transposed);
    // base = ramp(4, 3)
    assert_eq!(values(&sd, "row_slice"), r[3..9].to_vec());
    assert_eq!(values(&sd, "col_slice"), vec![r[1], r[4], r[7], r[10]]);
    assert_eq!(values(&sd, "shared_a"), r);
    assert_eq!(values(&sd, "shared_b"), r[6..9].to_vec());
    assert_eq!(dims(&sd, "scalar"), Vec::<usize>::new());
    assert_eq!(values(&sd, "scalar"), vec![2.5]);
    assert_eq!(dims(&sd, "empty"), vec![0, 3]);
}

fn error_of(path: &Path) -> String {
    match read_file(path) {
        Ok(tensors) => panic!(
            "{} read without error: {:?}",
            path.display(),
            tensors.iter().map(|(k, _)| k).collect::<Vec<_>>()
        ),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_files_give_clear_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = std::fs::read(fixture("lightning.ckpt")).expect("fixture");

    let empty = dir.path().join("empty.pth");
    std::fs::write(&empty, b"").expect("write");
    let e = error_of(&empty);
    assert!(e.contains("empty.pth") && e.contains("empty"), "{e}");

    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"this is a text file, not a checkpoint").expect("write");
    let e = error_of(&junk);
    assert!(e.contains("junk.pth") && e.contains("zip archive"), "{e}");

    // Cut anywhere: never a panic, always an error naming the file.
    for cut in [
        10,
        100,
        good.len() / 3,
        good.len() / 2,
        good.len() - 30,
        good.len() - 1,
    ] {
        let truncated = dir.path().join(format!("truncated-{cut}.ckpt"));
        std::fs::write(&truncated, &good[..cut]).expect("write");
        let e = error_of(&truncated);
        assert!(e.contains(&format!("truncated-{cut}.ckpt")), "{e}");
    }

    let e = error_of(&fixture("no_data_pkl.pth"));
    assert!(
        e.contains("no_data_pkl.pth") && e.contains("data.pkl"),
        "{e}"
    );

    let e = error_of(&fixture("legacy_format.pth"));
    assert!(
        e.contains("legacy_format.pth") && e.contains("legacy"),
        "{e}"
    );

    let missing = dir.path().join("absent.pth");
    let e = error_of(&missing);
    assert!(e.contains("absent.pth"), "{e}");
}

#[test]
fn corrupted_pickle_bytes_are_errors_not_panics() {
    // Flip bytes inside data.pkl of a stored (uncompressed) archive: the zip's CRC may or may not
    // be checked, but the reader must answer with an error or a readable result, never a panic.
    let good = std::fs::read(fixture("model_wrapped.pth")).expect("fixture");
    let start = good
        .windows(8)
        .position(|w| w == b"data.pkl")
        .expect("entry name")
        + 8;
    let dir = tempfile::tempdir().expect("temp dir");
    for offset in (start..start + 400).step_by(7) {
        let mut bad = good.clone();
        bad[offset] ^= 0x5a;
        let path = dir.path().join("flipped.pth");
        std::fs::write(&path, &bad).expect("write");
        let _ = read_file(&path);
    }
}
