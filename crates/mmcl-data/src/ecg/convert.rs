//! Batch conversion of ECG files to preprocessed float32 `.npy` arrays (what
//! `mmcl preprocess-ecg` does).
//!
//! A file becomes one `(12, T)` array per recording (an `(N, 12, T)` input becomes an
//! `(N, 12, T)` output). A directory becomes a directory of `<id>.npy` files plus
//! `preprocess_report.json` listing the bad files. Outputs are written to a temporary folder and
//! moved into place only when the run succeeds, so a failed run writes nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::preprocess::{PreprocessConfig, preprocess};
use super::{EcgFormat, NUM_LEADS, read_any};
use crate::{Error, Result};
use mmcl_core::npy::write_npy_f32;

/// Name of the report written beside the outputs of a directory run.
pub const REPORT_FILE: &str = "preprocess_report.json";

/// A file that could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadFile {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub error: String,
}

/// The outcome of a conversion.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ConvertReport {
    /// Input files converted.
    pub converted: usize,
    /// Arrays written.
    pub written: Vec<PathBuf>,
    /// Files skipped (only with `skip_bad`).
    pub bad: Vec<BadFile>,
}

/// The preprocessed recordings of one file as `(id, shape, values)`; several recordings of an
/// `(N, 12, T)` array come back as one `(N, 12, T)` array named after the file.
///
/// # Errors
/// Whatever reading or preprocessing reports (naming the file).
pub fn preprocess_file(
    path: &Path,
    cfg: &PreprocessConfig,
    array_rate: f64,
) -> Result<(String, Vec<usize>, Vec<f32>)> {
    let records = read_any(path, array_rate)?;
    let stem = super::file_stem(path);
    // An (N, 12, T) array names its recordings `stem_i`; it stays one (N, 12, T) output.
    let batched = records.len() > 1 || records.iter().any(|r| r.id != stem);
    let mut samples = None;
    let mut data = Vec::new();
    for r in &records {
        let p = preprocess(&r.ecg, cfg).map_err(|e| Error::format(path, e.to_string()))?;
        match samples {
            None => samples = Some(p.samples()),
            Some(t) if t != p.samples() => {
                return Err(Error::format(path, "recordings of different lengths"));
            }
            Some(_) => {}
        }
        data.extend_from_slice(p.data());
    }
    let t = samples.unwrap_or(0);
    let shape = if batched {
        vec![records.len(), NUM_LEADS, t]
    } else {
        vec![NUM_LEADS, t]
    };
    Ok((stem, shape, data))
}

/// The ECG files of a directory (not recursive), sorted: `.xml`, `.hea`, `.npy`, `.npz`.
///
/// # Errors
/// An unreadable directory.
pub fn ecg_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && EcgFormat::from_path(p).is_some())
        .collect();
    files.sort();
    Ok(files)
}

/// Converts every ECG file of `input` into `output/<id>.npy`, in parallel, and writes
/// `output/preprocess_report.json`. `progress` is called after each file.
///
/// # Errors
/// Without `skip_bad`, the first bad file (naming it) — and nothing is written. With it, only
/// directory and write errors.
pub fn preprocess_directory(
    input: &Path,
    output: &Path,
    cfg: &PreprocessConfig,
    array_rate: f64,
    skip_bad: bool,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<ConvertReport> {
    let files = ecg_files(input)?;
    if files.is_empty() {
        return Err(Error::format(
            input,
            "no ECG files (.xml, .hea, .npy, .npz) in the directory",
        ));
    }
    let created = !output.exists();
    std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
    // On failure, leave no trace: the staging folder, and the output folder if we made it.
    let clean_up = |staging: &Path| {
        let _ = std::fs::remove_dir_all(staging);
        if created {
            let _ = std::fs::remove_dir(output);
        }
    };
    let staging = output.join(format!(".partial-{}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let done = AtomicUsize::new(0);
    let total = files.len();
    let results: Vec<(PathBuf, Result<(String, PathBuf)>)> = files
        .par_iter()
        .map(|path| {
            let result = preprocess_file(path, cfg, array_rate).and_then(|(id, shape, data)| {
                let out = staging.join(format!("{id}.npy"));
                write_npy_f32(&out, &shape, &data)?;
                Ok((id, out))
            });
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            (path.clone(), result)
        })
        .collect();
    let mut report = ConvertReport::default();
    let mut staged = Vec::new();
    for (path, result) in results {
        match result {
            Ok((id, tmp)) => staged.push((id, tmp)),
            Err(e) if skip_bad => report.bad.push(BadFile {
                path,
                error: e.to_string(),
            }),
            Err(e) => {
                clean_up(&staging);
                return Err(e);
            }
        }
    }
    staged.sort();
    if let Some(w) = staged.windows(2).find(|w| w[0].0 == w[1].0) {
        clean_up(&staging);
        return Err(Error::format(
            input,
            format!("two files give the output name {}.npy", w[0].0),
        ));
    }
    for (id, tmp) in staged {
        let dest = output.join(format!("{id}.npy"));
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
        report.written.push(dest);
        report.converted += 1;
    }
    let _ = std::fs::remove_dir_all(&staging);
    let json =
        serde_json::to_vec_pretty(&report).map_err(|e| Error::json(output.join(REPORT_FILE), e))?;
    mmcl_core::io::write_bytes_atomic(&output.join(REPORT_FILE), &json)?;
    Ok(report)
}
