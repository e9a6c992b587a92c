//! Localisation maps of a multimodal model on synthetic subjects, as the reference's
//! `plot_localization`: which ECG patches resemble the subject's CMR embedding, which CMR
//! regions resemble its ECG embedding, and where the ECG encoder's class token attends.
//!
//! ```sh
//! cargo run --release --example explain                         # randomly initialised model
//! cargo run --release --example explain -- --checkpoint target/reproduce/runs/mae_mmcl
//! ```
//!
//! PNGs go to `--output/<eid>/` (`ecg_importance.png`, `ecg_attention.png`,
//! `cmr_importance.png`).

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use mmcl_suite::cmr::ResNetConfig;
use mmcl_suite::data::tables::Split;
use mmcl_suite::pipeline::reproduce::explain_subjects;
use mmcl_suite::train::checkpoint::find_model_file;
use mmcl_suite::train::{MmclArchitecture, MmclModel};

/// Draw localisation maps of test subjects of the synthetic cohort.
#[derive(Debug, Parser)]
struct Args {
    /// A multimodal model in the reference's layout: an MMCL run directory (its latest complete
    /// checkpoint), a checkpoint directory, or the `model.safetensors` file; without one, a
    /// seeded random initialisation.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Test subjects to draw.
    #[arg(long, default_value_t = 2)]
    subjects: usize,
    /// Output folder.
    #[arg(long, default_value = "target/example-explain")]
    output: PathBuf,
    #[command(flatten)]
    cohort: common::CohortArgs,
}

fn main() -> Result<()> {
    let args: Args = common::start();
    let common::OpenCohort {
        device,
        cfg,
        cache,
        vit,
    } = args.cohort.open()?;
    let model = common::checkpoint_or_random(
        args.checkpoint.as_deref(),
        |path| {
            let file = find_model_file(path)?;
            Ok(MmclModel::from_reference_checkpoint(
                &file, &vit, None, &device,
            )?)
        },
        "no --checkpoint: randomly initialised model (the maps show the mechanics only)",
        || {
            let channels = cache.index().image.map_or(3, |l| l.channels);
            let imaging = ResNetConfig::new(cfg.mmcl.imaging.model, channels);
            let arch = MmclArchitecture::without_classifier(
                &vit,
                &imaging,
                cfg.mmcl.embedding_dim,
                cfg.mmcl.projection_dim,
            );
            Ok(MmclModel::new(&arch, 0, &device)?)
        },
    )?;
    let positions: Vec<usize> = cache
        .split_indices(Split::Test)
        .into_iter()
        .take(args.subjects)
        .collect();
    for s in explain_subjects(&cfg, &cache, &model, &positions, &args.output, &device)? {
        println!(
            "subject {}: cos(ECG, CMR) / τ = {:.3}; {}",
            s.eid,
            s.similarity,
            s.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
