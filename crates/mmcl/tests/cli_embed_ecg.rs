//! `mmcl embed-ecg` and `mmcl convert` run as a user runs them: results equal the library's, and
//! every bad input ends with a non-zero exit, a message naming the file and the problem, and no
//! output file. Checkpoints are the toy encoder of `mmcl-ecg/tests/fixtures`.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{
    TOY_CONFIG, assert_nothing_written, ecg_fixture as fixture, embed_toy, max_diff, mmcl,
    read_npy, s, stderr, write_npy, write_npy_f32,
};
use mmcl_ecg::{EcgVit, EcgVitConfig, Pooling};

fn ecg_values(n: usize) -> Vec<f32> {
    (0..n * 2 * 20)
        .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.1)
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    input: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.json");
    std::fs::write(&config, TOY_CONFIG).expect("config");
    let input = dir.path().join("ecgs.npy");
    write_npy_f32(&input, &[5, 2, 20], &ecg_values(5));
    Setup { dir, config, input }
}

fn library_embedding(pooling: Pooling) -> Vec<f32> {
    let cfg: EcgVitConfig = serde_json::from_str(TOY_CONFIG).expect("config");
    let (model, _, _) =
        EcgVit::from_checkpoint(&cfg, &fixture("tiny_plain.pth"), pooling, &Device::Cpu)
            .expect("loads");
    let x = Tensor::from_vec(ecg_values(5), (5, 1, 2, 20), &Device::Cpu).expect("input");
    model
        .embed(&x, pooling)
        .and_then(|y| Ok(y.flatten_all()?.to_vec1::<f32>()?))
        .expect("embeds")
}

#[test]
fn embeddings_equal_the_librarys() {
    let st = setup();
    for (pooling, extra, shape) in [
        (Pooling::Attention, vec![], vec![5, 8]),
        (
            Pooling::Global,
            vec!["--pooling", "global", "--batch-size", "2"],
            vec![5, 8],
        ),
        (
            Pooling::Cls,
            vec!["--pooling", "cls", "--batch-size", "3"],
            vec![5, 8],
        ),
        (Pooling::Tokens, vec!["--pooling", "tokens"], vec![5, 8, 8]),
    ] {
        let output = st.dir.path().join(format!("out-{pooling}.npy"));
        let out = embed_toy(&st.config, &st.input, &output, &extra);
        assert!(out.status.success(), "{pooling}: {}", stderr(&out));
        let (got_shape, values) = read_npy(&output);
        assert_eq!(got_shape, shape, "{pooling}");
        let diff = max_diff(&values, &library_embedding(pooling));
        assert!(diff <= 1e-6, "{pooling}: {diff}");
    }
    // A column-major (Fortran-order) array is read in its logical order.
    let fortran = st.dir.path().join("fortran.npy");
    {
        let values = ecg_values(5);
        // Element (n, l, t) of the logical array sits at t*10 + l*5 + n in column-major order.
        let mut col_major = vec![0f32; values.len()];
        for n in 0..5 {
            for l in 0..2 {
                for t in 0..20 {
                    col_major[t * 10 + l * 5 + n] = values[(n * 2 + l) * 20 + t];
                }
            }
        }
        write_npy(&fortran, &[5, 2, 20], npyz::Order::Fortran, col_major);
    }
    let embedded = embed_global(&st, &fortran, "out-fortran.npy");
    assert!(max_diff(&embedded, &library_embedding(Pooling::Global)) <= 1e-6);

    // (N, 1, 12, T) inputs are accepted as well.
    let input4 = st.dir.path().join("ecgs4.npy");
    write_npy_f32(&input4, &[5, 1, 2, 20], &ecg_values(5));
    let embedded = embed_global(&st, &input4, "out4.npy");
    assert!(max_diff(&embedded, &library_embedding(Pooling::Global)) <= 1e-6);
}

/// Runs embed-ecg with global pooling on `input` into `output` (in the test's folder), asserts
/// success and returns the embeddings.
fn embed_global(st: &Setup, input: &Path, output: &str) -> Vec<f32> {
    let output = st.dir.path().join(output);
    let out = embed_toy(&st.config, input, &output, &["--pooling", "global"]);
    assert!(out.status.success(), "{}", stderr(&out));
    read_npy(&output).1
}

/// Runs embed-ecg with one argument replaced and checks the failure.
fn expect_failure(st: &Setup, replace: (&str, &str), must_contain: &[&str]) {
    let output = st.dir.path().join("out.npy");
    let ckpt = fixture("tiny_plain.pth");
    let mut args = vec![
        ("--checkpoint", s(&ckpt).to_string()),
        ("--config", s(&st.config).to_string()),
        ("--input", s(&st.input).to_string()),
        ("--output", s(&output).to_string()),
    ];
    let mut found = false;
    for (flag, value) in args.iter_mut() {
        if *flag == replace.0 {
            *value = replace.1.to_string();
            found = true;
        }
    }
    if !found {
        args.push((replace.0, replace.1.to_string()));
    }
    let mut argv = vec!["embed-ecg".to_string()];
    for (flag, value) in args {
        argv.push(flag.to_string());
        argv.push(value);
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = mmcl(&argv);
    let err = stderr(&out);
    assert!(!out.status.success(), "{replace:?} succeeded: {err}");
    assert_eq!(out.status.code(), Some(1), "{replace:?}: {err}");
    for needle in must_contain {
        assert!(
            err.contains(needle),
            "{replace:?}: {needle:?} not in {err:?}"
        );
    }
    assert!(!err.contains("panicked"), "{err}");
    assert_nothing_written(st.dir.path(), &output);
}

#[test]
fn bad_inputs_fail_cleanly() {
    let st = setup();
    let dir = st.dir.path();

    // Shape that does not match the configuration.
    let wrong = dir.join("wrong_shape.npy");
    write_npy_f32(&wrong, &[5, 3, 20], &vec![0.0; 5 * 3 * 20]);
    expect_failure(
        &st,
        ("--input", s(&wrong)),
        &["wrong_shape.npy", "[5, 3, 20]", "(N, 2, 20)"],
    );
    let short = dir.join("short.npy");
    write_npy_f32(&short, &[5, 2, 10], &vec![0.0; 5 * 2 * 10]);
    expect_failure(
        &st,
        ("--input", s(&short)),
        &["short.npy", "does not match"],
    );

    // Not an .npy file, a truncated one, integers, a missing one, an empty array.
    let junk = dir.join("junk.npy");
    std::fs::write(&junk, b"definitely not numpy").expect("write");
    expect_failure(
        &st,
        ("--input", s(&junk)),
        &["junk.npy", "not a readable .npy"],
    );
    let good = std::fs::read(&st.input).expect("input");
    let truncated = dir.join("truncated.npy");
    std::fs::write(&truncated, &good[..good.len() - 40]).expect("write");
    expect_failure(
        &st,
        ("--input", s(&truncated)),
        &["truncated.npy", "truncated"],
    );
    let ints = dir.join("ints.npy");
    write_npy(
        &ints,
        &[5, 2, 20],
        npyz::Order::C,
        std::iter::repeat_n(1i32, 200),
    );
    expect_failure(&st, ("--input", s(&ints)), &["ints.npy", "float32"]);
    let absent = dir.join("absent.npy");
    expect_failure(&st, ("--input", s(&absent)), &["absent.npy"]);
    let empty = dir.join("empty.npy");
    write_npy_f32(&empty, &[0, 2, 20], &[]);
    expect_failure(&st, ("--input", s(&empty)), &["empty.npy", "no ECGs"]);

    // Checkpoints: truncated, not a checkpoint, missing keys, absent.
    let ckpt = std::fs::read(fixture("tiny_lightning.ckpt")).expect("fixture");
    let cut = dir.join("cut.ckpt");
    std::fs::write(&cut, &ckpt[..ckpt.len() / 2]).expect("write");
    expect_failure(&st, ("--checkpoint", s(&cut)), &["cut.ckpt", "truncated"]);
    expect_failure(
        &st,
        ("--checkpoint", s(&junk)),
        &["junk.npy", "not a readable checkpoint"],
    );
    let missing_keys = fixture("tiny_missing_block.pth");
    expect_failure(
        &st,
        ("--checkpoint", s(&missing_keys)),
        &[
            "tiny_missing_block.pth",
            "missing keys",
            "blocks.0.mlp.fc2.weight",
        ],
    );
    expect_failure(
        &st,
        ("--checkpoint", s(&dir.join("nope.pth"))),
        &["nope.pth"],
    );

    // Configurations: absent, invalid, and a pooling the configuration cannot do.
    expect_failure(&st, ("--config", s(&dir.join("nope.json"))), &["nope.json"]);
    let bad_cfg = dir.join("bad_config.json");
    std::fs::write(&bad_cfg, r#"{"img_size": [1, 2, 20], "patch_size": [1, 5], "embed_dim": 8, "depth": 1, "num_heads": 3}"#)
        .expect("write");
    expect_failure(
        &st,
        ("--config", s(&bad_cfg)),
        &["bad_config.json", "divisible"],
    );
    let cls_cfg = dir.join("cls_config.json");
    std::fs::write(&cls_cfg, r#"{"img_size": [1, 2, 20], "patch_size": [1, 5], "embed_dim": 8, "depth": 1, "num_heads": 2}"#)
        .expect("write");
    let cls_st = Setup {
        dir: tempfile::tempdir().expect("temp dir"),
        config: cls_cfg.clone(),
        input: st.input.clone(),
    };
    expect_failure(
        &cls_st,
        ("--pooling", "attention"),
        &["cls_config.json", "attention_pool"],
    );
    expect_failure(&st, ("--pooling", "mean"), &["unknown pooling"]);
    expect_failure(&st, ("--batch-size", "0"), &["--batch-size"]);
}

#[test]
fn convert_writes_the_encoder_as_safetensors() {
    let dir = tempfile::tempdir().expect("temp dir");
    // `mmcl convert` of the Lightning checkpoint fixture into `output`, then `extra`.
    let lightning = fixture("tiny_lightning.ckpt");
    let convert = |output: &Path, extra: &[&str]| {
        let mut args = vec!["convert", "--input", s(&lightning), "--output", s(output)];
        args.extend_from_slice(extra);
        mmcl(&args)
    };
    let out = dir.path().join("encoder.safetensors");
    let run = convert(&out, &["--ecg-encoder"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let st = mmcl_nn::StateDict::read(&out).expect("safetensors");
    assert_eq!(st.len(), 26);
    assert!(st.contains("blocks.0.attn.qkv.weight") && !st.keys().any(|k| k.contains("imaging")));
    let plain = mmcl_nn::StateDict::read(&fixture("tiny_plain.pth")).expect("fixture");
    for (k, t) in plain.iter() {
        let a: Vec<f32> = t.flatten_all().and_then(|t| t.to_vec1()).expect("values");
        let b: Vec<f32> = st
            .get(k)
            .expect("key converted")
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("values");
        assert_eq!(a, b, "{k}");
    }

    // The same through --key-prefix, in f16.
    let out16 = dir.path().join("prefixed.safetensors");
    let run = convert(
        &out16,
        &[
            "--key-prefix",
            "state_dict.encoder_imaging.",
            "--dtype",
            "f16",
        ],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let st = mmcl_nn::StateDict::read(&out16).expect("safetensors");
    assert_eq!(
        st.get("0.weight").map(|t| t.dtype()),
        Some(candle_core::DType::F16)
    );
    assert_eq!(
        st.get("1.running_mean").map(|t| t.dtype()),
        Some(candle_core::DType::F16)
    );

    // Failures: unknown prefix, truncated input; nothing written.
    let bad_out = dir.path().join("bad.safetensors");
    let run = convert(&bad_out, &["--key-prefix", "nothing."]);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("tiny_lightning.ckpt") && stderr(&run).contains("nothing."));
    let bytes = std::fs::read(fixture("tiny_plain.pth")).expect("fixture");
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
    let run = mmcl(&["convert", "--input", s(&cut), "--output", s(&bad_out)]);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("cut.pth"), "{}", stderr(&run));
    assert_nothing_written(dir.path(), &bad_out);
}
