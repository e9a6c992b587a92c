//! What the data-layer tests share (`mod common;` in each): the fixture files, writing test
//! files, and the checks that an error is a format error naming its file.

// Each test binary compiles this module on its own and uses only its part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use mmcl_data::Error;

/// A file of `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test file");
    p
}

/// Writes `bytes` as `name` in a fresh temporary folder; returns the folder's guard (the file
/// lives as long as it) and the file's path.
pub fn write_temp(name: &str, bytes: impl AsRef<[u8]>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(dir.path(), name, bytes);
    (dir, path)
}

/// Asserts that `msg` names the file of `path`.
pub fn assert_names_file(msg: &str, path: &Path) {
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(msg.contains(name), "error does not name {name}: {msg}");
}

/// Asserts that `err` is a format error ([`mmcl_core::Error::Format`]) about `path` whose message names the file;
/// returns the message.
pub fn assert_format_error(err: &Error, path: &Path) -> String {
    assert!(
        matches!(err, Error::Core(mmcl_core::Error::Format { .. })),
        "not a format error: {err:?}"
    );
    assert_eq!(err.path(), Some(path), "{err}");
    let msg = err.to_string();
    assert_names_file(&msg, path);
    msg
}

/// The message of `result`'s error, after checking it is a format error naming `path`.
pub fn format_error(result: mmcl_data::Result<impl std::fmt::Debug>, path: &Path) -> String {
    assert_format_error(&result.expect_err("a bad file must be refused"), path)
}

/// The largest element-wise difference of two equally long slices; NaN in either is no
/// difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() && y.is_nan() {
                0.0
            } else {
                (*x as f64 - *y as f64).abs()
            }
        })
        .fold(0.0, f64::max)
}
