//! The paper's pipeline end to end on a synthetic cohort, on the CPU in minutes with the
//! reduced defaults: cohort → cache → MAE → MMCL (from scratch and from MAE) → linear probes of
//! five encoders → `results.json`, `report.md`, figures. Same as `mmcl reproduce`.
//!
//! ```sh
//! cargo run --release --example reproduce                       # reduced, CPU
//! cargo run --release --example reproduce -- --print-config > r.toml
//! cargo run --release --features cuda --example reproduce -- --paper --device cuda
//! ```

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use mmcl_suite::nn::device::parse_device;
use mmcl_suite::nn::threads::share_cores_with_candle;
use mmcl_suite::pipeline::TerminalProgress;
use mmcl_suite::pipeline::reproduce::{load_config_with_seeds, run, summary, threads_per_stage};

/// Reproduce the paper's comparison (random init, MAE, MMCL, MAE + MMCL, CMR upper bound).
#[derive(Debug, Parser)]
struct Args {
    /// Configuration (JSON or TOML) written over the defaults (or over --paper's).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory; finished stages there are reused when their settings are unchanged.
    #[arg(long, default_value = "target/reproduce")]
    output: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The paper's full configuration (for a GPU).
    #[arg(long)]
    paper: bool,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Training seeds, e.g. `0,1,2`: the training stages and probes run once per seed and
    /// the report gives each seed and their spread (replaces the configuration's `seeds`).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    seeds: Option<Vec<u64>>,
}

fn main() -> Result<()> {
    mmcl_suite::nn::memory::keep_freed_memory();
    let args = Args::parse();
    let cfg = load_config_with_seeds(args.config.as_deref(), args.paper, args.seeds)?;
    if args.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let device = parse_device(&args.device)?;
    // SAFETY: no thread of this program reads or writes the environment yet.
    unsafe { share_cores_with_candle(threads_per_stage(&cfg, &device)) };
    let outputs = run(&cfg, &args.output, &device, &mut TerminalProgress::new())?;
    println!("{}", summary(&outputs));
    Ok(())
}
