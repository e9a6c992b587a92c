//! `mmcl embed-ecg` (and `mmcl preprocess-ecg`) on hostile `.npy` inputs, run as a user runs
//! them: a non-zero exit, a message naming the input file, never an abort, no output file.
//! The encoder is the toy checkpoint of `mmcl-ecg/tests/fixtures` (as in `cli_embed_ecg.rs`).

mod common;

use std::path::{Path, PathBuf};

use common::{
    TOY_CONFIG, assert_nothing_written, assert_refused, embed_toy, mmcl, s, write_npy_f32,
};

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.json");
    std::fs::write(&config, TOY_CONFIG).expect("config");
    Setup { dir, config }
}

/// Runs `mmcl embed-ecg` on `input` (batch size 2, so a failure can come after a first batch
/// was written) and expects failure with every one of `needles` in the message, no abort and
/// nothing written.
fn expect_embed_failure(st: &Setup, input: &Path, needles: &[&str]) {
    let output = st.dir.path().join("embeddings.npy");
    let out = embed_toy(&st.config, input, &output, &["--batch-size", "2"]);
    // An exit code of 1 is an error report; an abort or a signal would give none or another.
    assert_refused(&out, needles);
    assert_nothing_written(st.dir.path(), &output);
}

#[test]
fn huge_header_is_refused_without_allocating_it() {
    let st = setup();
    // A 20-byte file announcing a 4 GiB header (npyz alone would try to allocate it).
    let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
    bytes.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    bytes.extend_from_slice(b"{'descr'");
    let input = st.dir.path().join("huge_header.npy");
    std::fs::write(&input, bytes).expect("write");
    expect_embed_failure(&st, &input, &["huge_header.npy", "header announces"]);
    // A shape whose size wraps to zero in 64-bit arithmetic.
    let header =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 2, 2147483648), }\n";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    let input = st.dir.path().join("wrapping_shape.npy");
    std::fs::write(&input, bytes).expect("write");
    expect_embed_failure(&st, &input, &["wrapping_shape.npy", "too large"]);
    // A shape claiming far more data than the file holds.
    let mut bytes = mmcl_core::npy::npy_f32_bytes(&[1_000_000_000, 2, 20], &[]);
    bytes.extend_from_slice(&[0; 160]);
    let input = st.dir.path().join("claims.npy");
    std::fs::write(&input, bytes).expect("write");
    expect_embed_failure(&st, &input, &["claims.npy", "truncated"]);
}

#[test]
fn non_finite_values_are_refused_naming_the_row() {
    let st = setup();
    let mut values = vec![0.25f32; 5 * 2 * 20];
    // ECG 3 (the second batch of two) holds a NaN, after a first batch was embedded.
    values[3 * 40 + 17] = f32::NAN;
    let input = st.dir.path().join("nan_row.npy");
    write_npy_f32(&input, &[5, 2, 20], &values);
    expect_embed_failure(&st, &input, &["nan_row.npy", "row 3", "non-finite"]);
    let mut values = vec![0.25f32; 5 * 2 * 20];
    values[40] = f32::INFINITY;
    let input = st.dir.path().join("inf_row.npy");
    write_npy_f32(&input, &[5, 2, 20], &values);
    expect_embed_failure(&st, &input, &["inf_row.npy", "row 1", "non-finite"]);
}

#[test]
fn zero_recordings_are_refused() {
    let st = setup();
    let input = st.dir.path().join("no_ecgs.npy");
    write_npy_f32(&input, &[0, 2, 20], &[]);
    expect_embed_failure(&st, &input, &["no_ecgs.npy", "no ECGs"]);
    let input = st.dir.path().join("no_ecgs4.npy");
    write_npy_f32(&input, &[0, 1, 2, 20], &[]);
    expect_embed_failure(&st, &input, &["no_ecgs4.npy", "no ECGs"]);

    // preprocess-ecg: (0, 12, T) and (12, 0) arrays end in an error, not an empty output.
    for (name, shape) in [
        ("none.npy", vec![0, 12, 5000]),
        ("flat.npy", vec![12, 0u64]),
    ] {
        let input = st.dir.path().join(name);
        write_npy_f32(&input, &shape, &[]);
        let output = st.dir.path().join("preprocessed.npy");
        let out = mmcl(&[
            "preprocess-ecg",
            "--input",
            s(&input),
            "--output",
            s(&output),
        ]);
        assert_refused(&out, &[name]);
        assert_nothing_written(st.dir.path(), &output);
    }
}
