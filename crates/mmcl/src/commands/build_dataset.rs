//! `mmcl build-dataset`: the dataset cache (preprocessed ECGs, CMR images, labels,
//! phenotypes, splits) from a UK-Biobank-style folder, driven by a JSON or TOML configuration.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mmcl_data::build::{BuildConfig, build_dataset};

/// Arguments of `mmcl build-dataset`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration (.json or .toml); see `--print-config` for every field.
    #[arg(long, required_unless_present = "print_config")]
    config: Option<PathBuf>,
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
        let text = toml::to_string_pretty(&BuildConfig::default())
            .context("cannot render the default configuration")?;
        print!("{text}");
        return Ok(());
    }
    let Some(path) = args.config else {
        bail!("--config is required");
    };
    let mut cfg = BuildConfig::from_file(&path)?;
    if let Some(out) = args.output {
        cfg.output = out;
    }
    cfg.overwrite |= args.overwrite;
    cfg.skip_bad |= args.skip_bad;
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
