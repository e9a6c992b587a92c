//! `mmcl embed-cmr` end to end: checkpoints in both layouts, numbers equal to the library's, and
//! clear errors (with no output written) for bad files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{DType, Device, Tensor};
use common::{read_npy, stderr};
use mmcl_cmr::checkpoint::released_state_dict;
use mmcl_cmr::{ResNet, ResNetConfig};
use mmcl_nn::ParamStore;

/// Runs `mmcl embed-cmr args…`.
fn mmcl(args: &[&str]) -> Output {
    let mut all = vec!["embed-cmr"];
    all.extend_from_slice(args);
    common::mmcl(&all)
}

/// A float32 `.npy` of `shape` holding `values`, in Fortran (column-major) order when
/// `fortran`.
fn write_npy(path: &Path, values: &[f32], shape: &[u64], fortran: bool) {
    let order = if fortran {
        npyz::Order::Fortran
    } else {
        npyz::Order::C
    };
    common::write_npy(path, shape, order, values.iter().copied());
}

/// A ResNet18 over `channels` channels with moved running statistics, its checkpoint in the
/// released layout, and the images to embed.
struct Setup {
    dir: tempfile::TempDir,
    model: ResNet,
    checkpoint: PathBuf,
    torchvision_checkpoint: PathBuf,
    images: Tensor,
    input: PathBuf,
}

fn setup(channels: usize, n: usize) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ParamStore::new(11);
    let model = ResNet::new(
        &ResNetConfig::resnet18().with_in_channels(channels),
        store.var_builder(DType::F32, &Device::Cpu),
    )
    .expect("model");
    let warm = mmcl_testutil::seeded_randn(1, &[4, channels, 48, 48]);
    model.forward_t(&warm, true).expect("train step");
    let state = store.state_dict().expect("state");
    let checkpoint = dir.path().join("image_encoder.safetensors");
    released_state_dict(&state, "")
        .expect("export")
        .add_prefix("state_dict.")
        .write_safetensors(&checkpoint, None)
        .expect("write");
    let torchvision_checkpoint = dir.path().join("resnet18.safetensors");
    state
        .write_safetensors(&torchvision_checkpoint, None)
        .expect("write");
    let images = mmcl_testutil::seeded_randn(2, &[n, channels, 40, 36]);
    let input = dir.path().join("x.npy");
    let values: Vec<f32> = images
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("values");
    write_npy(&input, &values, &[n as u64, channels as u64, 40, 36], false);
    Setup {
        dir,
        model,
        checkpoint,
        torchvision_checkpoint,
        images,
        input,
    }
}

impl Setup {
    /// The library's embedding of the images.
    fn library_embedding(&self) -> Vec<f32> {
        self.model
            .embed(&self.images)
            .and_then(|t| Ok(t.flatten_all()?.to_vec1()?))
            .expect("library")
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn embeds_like_the_library_in_both_checkpoint_layouts() {
    let s = setup(2, 5);
    let expected = s.library_embedding();
    for (checkpoint, batch) in [(&s.checkpoint, "2"), (&s.torchvision_checkpoint, "16")] {
        let output = s.dir.path().join(format!("z{batch}.npy"));
        let (shape, values) = embed(checkpoint, &s.input, &output, &["--batch-size", batch]);
        assert_eq!(shape, vec![5, 512]);
        assert!(max_diff(&values, &expected) < 1e-4);
    }
}

#[test]
fn fortran_order_and_float64_inputs_are_read() {
    let s = setup(1, 3);
    let expected = s.library_embedding();
    // The same images stored in Fortran order.
    let fortran: Vec<f32> = s
        .images
        .permute((3, 2, 1, 0))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("values");
    let input = s.dir.path().join("f.npy");
    write_npy(&input, &fortran, &[3, 1, 40, 36], true);
    let output = s.dir.path().join("f_out.npy");
    let (_, values) = embed(&s.checkpoint, &input, &output, &[]);
    assert!(max_diff(&values, &expected) < 1e-4);

    let f64_values: Vec<f64> = s
        .images
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("values");
    let input = s.dir.path().join("d.npy");
    common::write_npy(&input, &[3, 1, 40, 36], npyz::Order::C, f64_values);
    let (_, values) = embed(&s.checkpoint, &input, &output, &[]);
    assert!(max_diff(&values, &expected) < 1e-4);
}

/// `embed-cmr` of `input` with the ResNet18 `checkpoint` into `output` (and `extra`
/// arguments), asserted to succeed; returns the embeddings' shape and values.
fn embed(checkpoint: &Path, input: &Path, output: &Path, extra: &[&str]) -> (Vec<u64>, Vec<f32>) {
    let mut args = vec![
        "--checkpoint",
        checkpoint.to_str().expect("utf8"),
        "--arch",
        "resnet18",
        "--input",
        input.to_str().expect("utf8"),
        "--output",
        output.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    let out = mmcl(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    read_npy(output)
}

/// Runs with the given checkpoint, arch and input; expects failure, a message containing every
/// one of `needles`, and no output file.
fn expect_failure(s: &Setup, checkpoint: &Path, arch: &str, input: &Path, needles: &[&str]) {
    let output = s.dir.path().join("never.npy");
    let out = mmcl(&[
        "--checkpoint",
        checkpoint.to_str().expect("utf8"),
        "--arch",
        arch,
        "--input",
        input.to_str().expect("utf8"),
        "--output",
        output.to_str().expect("utf8"),
    ]);
    let message = stderr(&out);
    assert!(!out.status.success(), "unexpected success");
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    assert!(!message.contains("panicked"), "{message}");
    assert!(!output.exists());
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("never"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn bad_inputs_fail_with_a_message_naming_the_file() {
    let s = setup(2, 2);
    let dir = s.dir.path();
    let input = s.input.to_str().expect("utf8").to_string();
    // Wrong architecture for the checkpoint: the mismatching keys are named.
    expect_failure(
        &s,
        &s.checkpoint,
        "resnet34",
        &s.input,
        &["image_encoder.safetensors", "layer1.2.conv1.weight"],
    );
    expect_failure(&s, &s.checkpoint, "resnet49", &s.input, &["resnet49"]);
    // Missing, empty and foreign checkpoint files.
    expect_failure(
        &s,
        &dir.join("absent.pth"),
        "resnet18",
        &s.input,
        &["absent.pth"],
    );
    let empty = dir.join("empty.pth");
    std::fs::write(&empty, b"").expect("write");
    expect_failure(&s, &empty, "resnet18", &s.input, &["empty.pth", "empty"]);
    // The input: wrong channel count, truncated, not npy, NaN, wrong rank, wrong dtype.
    let one_channel = dir.join("one_channel.npy");
    write_npy(
        &one_channel,
        &vec![0.0; 2 * 40 * 36],
        &[2, 1, 40, 36],
        false,
    );
    expect_failure(
        &s,
        &s.checkpoint,
        "resnet18",
        &one_channel,
        &["one_channel.npy", "1 channels"],
    );
    let bytes = std::fs::read(&input).expect("read");
    let truncated = dir.join("truncated.npy");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).expect("write");
    expect_failure(
        &s,
        &s.checkpoint,
        "resnet18",
        &truncated,
        &["truncated.npy", "truncated"],
    );
    let garbage = dir.join("garbage.npy");
    std::fs::write(&garbage, b"this is not an array at all").expect("write");
    expect_failure(
        &s,
        &s.checkpoint,
        "resnet18",
        &garbage,
        &["garbage.npy", "magic"],
    );
    let mut hostile = b"\x93NUMPY\x02\x00\xff\xff\xff\x7f".to_vec();
    hostile.extend_from_slice(&[b' '; 64]);
    let hostile_path = dir.join("hostile.npy");
    std::fs::write(&hostile_path, &hostile).expect("write");
    expect_failure(
        &s,
        &s.checkpoint,
        "resnet18",
        &hostile_path,
        &["hostile.npy", "header"],
    );
    let mut with_nan = vec![0.5f32; 2 * 2 * 40 * 36];
    with_nan[2 * 40 * 36 + 7] = f32::NAN;
    let nan = dir.join("nan.npy");
    write_npy(&nan, &with_nan, &[2, 2, 40, 36], false);
    expect_failure(
        &s,
        &s.checkpoint,
        "resnet18",
        &nan,
        &["nan.npy", "image 1", "non-finite"],
    );
    let flat = dir.join("flat.npy");
    write_npy(&flat, &vec![0.0; 2 * 40 * 36], &[2, 40, 36], false);
    expect_failure(
        &s,
        &s.checkpoint,
        "resnet18",
        &flat,
        &["flat.npy", "(N, C, H, W)"],
    );
    let ints = dir.join("ints.npy");
    common::write_npy(&ints, &[1, 2, 2, 2], npyz::Order::C, [1i32; 8]);
    expect_failure(
        &s,
        &s.checkpoint,
        "resnet18",
        &ints,
        &["ints.npy", "float32"],
    );
    expect_failure(
        &s,
        &s.checkpoint,
        "resnet18",
        &dir.join("nope.npy"),
        &["nope.npy"],
    );
}
