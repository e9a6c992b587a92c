//! `mmcl preprocess-ecg`: the reference ECG preprocessing of files or folders into float32
//! `.npy` arrays.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mmcl_core::npy::write_npy_f32;
use mmcl_data::ecg::convert::{REPORT_FILE, preprocess_directory, preprocess_file};
use mmcl_data::ecg::preprocess::PreprocessConfig;

use super::common::{OutputKind, ensure_output_not_input};

/// Arguments of `mmcl preprocess-ecg`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A CardioSoft XML, WFDB header (.hea), NPY/NPZ file, or a folder of them.
    #[arg(long)]
    input: PathBuf,
    /// Output `.npy` file (or folder) for a file; output folder for a folder.
    #[arg(long)]
    output: PathBuf,
    /// In a folder, skip bad files (listed in preprocess_report.json) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Sampling rate of NPY/NPZ inputs, which carry none (Hz).
    #[arg(long, default_value_t = 500.0)]
    npy_sample_rate: f64,
    /// The model's sampling rate: recordings at another rate are resampled (Hz).
    #[arg(long, default_value_t = 500.0)]
    sample_rate: f64,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let cfg = PreprocessConfig {
        sample_rate: args.sample_rate,
        ..PreprocessConfig::default()
    };
    if args.input.is_dir() {
        // The folder's files are written beside what is there, so only the folder itself
        // (whose `.npy` inputs would be replaced) is refused.
        ensure_output_not_input(&args.output, OutputKind::File, &[&args.input])?;
        let bar = super::common::progress_bar(0, "preprocessing");
        let report = preprocess_directory(
            &args.input,
            &args.output,
            &cfg,
            args.npy_sample_rate,
            args.skip_bad,
            &|done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            },
        )?;
        bar.finish_and_clear();
        println!(
            "{} file(s) preprocessed into {}",
            report.converted,
            args.output.display()
        );
        if !report.bad.is_empty() {
            eprintln!("{} bad file(s) skipped:", report.bad.len());
            for b in &report.bad {
                eprintln!("  {}", b.error);
            }
        }
        println!("report: {}", args.output.join(REPORT_FILE).display());
        return Ok(());
    }
    if !args.input.exists() {
        bail!("{}: no such file or folder", args.input.display());
    }
    // A WFDB record's samples are in the signal files its header names: inputs too. (A header
    // that cannot be read is reported by the reader below.)
    let is_header = args
        .input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("hea"));
    let signal_files = match is_header {
        true => mmcl_data::ecg::wfdb::signal_files(&args.input).unwrap_or_default(),
        false => Vec::new(),
    };
    let mut inputs = vec![args.input.as_path()];
    inputs.extend(signal_files.iter().map(PathBuf::as_path));
    // Checked before and after the output name is known (`<output>/<id>.npy` for a folder).
    ensure_output_not_input(&args.output, OutputKind::File, &inputs)?;
    let (id, shape, data) = preprocess_file(&args.input, &cfg, args.npy_sample_rate)?;
    let output = single_output(&args.output, &id);
    ensure_output_not_input(&output, OutputKind::File, &inputs)?;
    write_npy_f32(&output, &shape, &data)
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "{} {:?} -> {}",
        args.input.display(),
        shape,
        output.display()
    );
    Ok(())
}

/// The output file for a single input: `--output` itself, or `<output>/<id>.npy` when it is an
/// existing folder.
fn single_output(output: &Path, id: &str) -> PathBuf {
    if output.is_dir() {
        output.join(format!("{id}.npy"))
    } else {
        output.to_path_buf()
    }
}
