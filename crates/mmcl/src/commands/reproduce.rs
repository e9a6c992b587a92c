//! `mmcl reproduce`: the paper's pipeline end to end on a synthetic cohort (`mmcl-pipeline`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use mmcl_pipeline::TerminalProgress;
use mmcl_pipeline::reproduce::{
    load_config_with_seeds, run as run_pipeline, summary, threads_per_stage,
};

use super::common::{OutputKind, ensure_output_not_input};
use super::print_config::documented_toml;

/// Arguments of `mmcl reproduce`.
#[derive(Debug, Parser)]
pub struct Args {
    /// Configuration (JSON or TOML); the keys it gives replace the defaults (or, with
    /// --paper, the paper's configuration).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output directory; stages finished there with the same settings are reused.
    #[arg(long, default_value = "runs/reproduce")]
    pub output: PathBuf,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Start from the paper's full configuration (for a GPU) instead of the reduced one.
    #[arg(long)]
    pub paper: bool,
    /// Print the resolved configuration (TOML, every key) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Training seeds, e.g. `0,1,2`: the training stages and probes run once per seed and
    /// the report gives each seed and their spread (replaces the configuration's `seeds`).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub seeds: Option<Vec<u64>>,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    mmcl_nn::memory::keep_freed_memory();
    let cfg = load_config_with_seeds(args.config.as_deref(), args.paper, args.seeds)?;
    if args.print_config {
        print!("{}", documented_toml(&cfg, &[])?);
        return Ok(());
    }
    if let Some(config) = &args.config {
        // Finished stages are reused, not replaced: only the folder itself must not be the input.
        ensure_output_not_input(&args.output, OutputKind::File, &[config])?;
    }
    let device = super::common::parse_device(&args.device)?;
    // SAFETY: no thread of this program reads or writes the environment yet.
    unsafe { mmcl_nn::threads::share_cores_with_candle(threads_per_stage(&cfg, &device)) };
    let outputs = run_pipeline(&cfg, &args.output, &device, &mut TerminalProgress::new())
        .with_context(|| format!("reproduction into {} failed", args.output.display()))?;
    println!("{}", summary(&outputs));
    Ok(())
}
