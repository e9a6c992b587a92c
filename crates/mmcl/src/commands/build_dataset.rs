//! `mmcl build-dataset`: the dataset cache (preprocessed ECGs, CMR images, labels,
//! phenotypes, splits) from a UK-Biobank-style folder, driven by a JSON or TOML configuration.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use mmcl_data::build::{BuildConfig, BuildReport, build_dataset};

use super::common::{OutputKind, ensure_output_not_input};
use super::print_config::documented_toml;

/// Arguments of `mmcl build-dataset`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration (.json or .toml); see `--print-config` for every field. Without it,
    /// the defaults apply (give --root).
    #[arg(long, required_unless_present_any = ["print_config", "root"])]
    config: Option<PathBuf>,
    /// The UK-Biobank-style folder to read instead of the configuration's `root`.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Write the cache here instead of the configuration's `output`.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Replace an existing cache.
    #[arg(long)]
    overwrite: bool,
    /// Skip (and report) subjects with bad files instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Print the default configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    if args.print_config {
        print!("{}", documented_toml(&BuildConfig::default(), &[])?);
        return Ok(());
    }
    let mut cfg = match &args.config {
        Some(path) => BuildConfig::from_file(path)?,
        None if args.root.is_some() => BuildConfig::default(),
        None => bail!("give --config FILE or --root DIR"),
    };
    if let Some(root) = args.root {
        cfg.root = root;
    }
    if let Some(out) = args.output {
        cfg.output = out;
    }
    cfg.overwrite |= args.overwrite;
    cfg.skip_bad |= args.skip_bad;
    // The cache folder is replaced whole: it must not be or hold the configuration or data.
    let mut inputs: Vec<PathBuf> = args.config.iter().cloned().collect();
    inputs.push(cfg.root.clone());
    for dir in [&cfg.ecg_dir, &cfg.cmr_dir, &cfg.phenotypes, &cfg.diagnoses]
        .into_iter()
        .flatten()
    {
        inputs.push(cfg.root.join(dir));
    }
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    ensure_output_not_input(&cfg.output, OutputKind::Directory, &inputs)?;
    let bar = super::common::progress_bar(0, "building");
    let (index, report) = build_dataset(&cfg, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!(
        "cache {}: {} subject(s) in {} shard(s)",
        cfg.output.display(),
        index.subjects.len(),
        index.shards.len()
    );
    for (split, n) in &report.written {
        println!("  {split}: {n}");
    }
    for (modality, eids) in &report.join.missing {
        if !eids.is_empty() {
            println!("  {} subject(s) without {modality}", eids.len());
        }
    }
    print_counts(&report);
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    if !report.skipped.is_empty() {
        eprintln!("{} subject(s) skipped for bad files:", report.skipped.len());
        for s in &report.skipped {
            eprintln!("  {}: {}", s.eid, s.error);
        }
    }
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    Ok(())
}

/// Per-label and per-phenotype counts over the subjects written, so that labels or values lost
/// to a broken table are visible at a glance.
fn print_counts(report: &BuildReport) {
    // One row format per table, for its header and its rows alike, so that they stay aligned.
    let label_row = |name: &dyn Display, a: &dyn Display, b: &dyn Display, c: &dyn Display| {
        println!("  {name:<12} {a:>9} {b:>9} {c:>9}");
    };
    if !report.labels.is_empty() {
        label_row(&"label", &"positive", &"negative", &"unknown");
        for l in &report.labels {
            label_row(&l.name, &l.positive, &l.negative, &l.unknown);
        }
    }
    let phenotype_row =
        |name: &dyn Display, column: &dyn Display, a: &dyn Display, b: &dyn Display| {
            println!("  {name:<12} {column:<12} {a:>9} {b:>9}");
        };
    if !report.phenotypes.is_empty() {
        phenotype_row(&"phenotype", &"column", &"measured", &"missing");
        for p in &report.phenotypes {
            let column = p.column.as_deref().unwrap_or("-");
            phenotype_row(&p.name, &column, &p.measured, &p.missing);
        }
    }
}
