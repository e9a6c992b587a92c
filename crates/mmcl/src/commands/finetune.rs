//! `mmcl finetune`: fine-tunes the ECG encoder with a classification or regression head on a
//! dataset cache, as the reference's mae `main_finetune.py` (see `mmcl_eval::finetune`).
//!
//! ```text
//! mmcl finetune --config finetune.toml [--output DIR] [--device cpu|cuda] [--overwrite]
//! mmcl finetune --print-config
//! ```
//!
//! The run directory receives `metrics.jsonl` / `metrics.csv` (the run log, one train and one
//! val line per epoch, written as the run goes), and at the end `model.safetensors` (the best
//! validation weights under the reference's keys, the configuration in its metadata),
//! `metrics.json` (test split, per target and averaged, with bootstrap intervals),
//! `predictions.csv`, `roc.png` or `scatter.png`, `training_curves.png` and `report.md`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mmcl_eval::finetune::{FinetuneConfig, FinetuneOutcome, finetune_in_group};
use mmcl_eval::plot::{self, TrainingCurvesFigure};
use mmcl_eval::report::{self, Report};
use mmcl_eval::runlog::{RunLog, RunLogWriter};
use mmcl_nn::precision::Precision;
use mmcl_train::{BarProgress, NoProgress, Progress};

use super::common::{OutputKind, configured_output, ensure_output_not_input};
use super::print_config::documented_toml_omitting;

/// Arguments of `mmcl finetune`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration (.json or .toml); see `--print-config` for every field.
    #[arg(long, required_unless_present = "print_config")]
    config: Option<PathBuf>,
    /// Run directory (overrides the configuration's `output`).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Replace the results of a previous run in the output directory.
    #[arg(long)]
    overwrite: bool,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `f32` or `bf16` (mixed precision: bf16 matrix products, f32 sums, weights and
    /// optimiser); replaces the configuration's `precision`.
    #[arg(long, value_name = "f32|bf16")]
    precision: Option<Precision>,
    /// Print the default configuration (TOML) and exit.
    #[arg(long)]
    print_config: bool,
}

/// The files a run writes into its directory.
const RUN_FILES: [&str; 9] = [
    "metrics.jsonl",
    "metrics.csv",
    "model.safetensors",
    "metrics.json",
    "predictions.csv",
    "roc.png",
    "scatter.png",
    "training_curves.png",
    "report.md",
];

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    if args.print_config {
        let example = FinetuneConfig {
            cache: "cache".into(),
            checkpoint: Some("runs/mmcl".into()),
            targets: vec!["CAD".into()],
            output: Some("runs/finetune-cad".into()),
            ..FinetuneConfig::default()
        };
        let optional = [
            (
                "encoder",
                "{ model = \"vit_tiny_patchX\", img_size = [1, 12, 2500], patch_size = [1, 100] }",
                "the encoder; unset: the one the checkpoint's export carries, else the paper's",
            ),
            (
                "lr",
                "1e-4",
                "absolute learning rate (default: blr × batch / 4)",
            ),
            (
                "monitor",
                "\"auprc\"",
                "validation metric that picks the best weights (default: auroc / r2)",
            ),
            (
                "clip_grad",
                "1.0",
                "clip the gradients' global norm to this value",
            ),
        ];
        // No `encoder` table: a printed one copied into a configuration would override the
        // architecture the checkpoint's export carries.
        print!(
            "{}",
            documented_toml_omitting(&example, &["encoder"], &optional)?
        );
        return Ok(());
    }
    let Some(config_path) = args.config else {
        bail!("--config is required");
    };
    // Under a launcher (`mpirun`) every process is one replica of a data-parallel group; only
    // rank 0 writes the run and reports.
    let (device, comm) = super::common::training_device_and_group(&args.device)?;
    let main = comm.is_main();
    // A run or checkpoint folder names its exported encoder, as everywhere else.
    let mut cfg = FinetuneConfig::from_file(&config_path)?;
    if let Some(precision) = args.precision {
        cfg.precision = precision;
    }
    let output = configured_output(
        args.output,
        cfg.output.as_deref(),
        &config_path,
        "run directory",
    )?;
    // The run's files are replaced: none may be an input, nor the folder itself.
    let mut inputs = vec![config_path.as_path(), cfg.cache.as_path()];
    inputs.extend(cfg.checkpoint.as_deref());
    ensure_output_not_input(&output, OutputKind::File, &inputs)?;
    for file in RUN_FILES {
        ensure_output_not_input(&output.join(file), OutputKind::File, &inputs)?;
    }
    let previous: Vec<PathBuf> = RUN_FILES
        .iter()
        .map(|f| output.join(f))
        .filter(|p| p.exists())
        .collect();
    if !previous.is_empty() {
        if !args.overwrite {
            bail!(
                "{} holds a previous run ({}); choose another output or pass --overwrite",
                output.display(),
                previous[0].display()
            );
        }
        // Every rank checks (and refuses) alike; one removes.
        for p in previous.iter().filter(|_| main) {
            std::fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    mmcl_nn::memory::keep_freed_memory();
    if let Some(warning) = mmcl_train::config::schedule_warning(cfg.warmup_epochs, cfg.epochs)
        && main
    {
        eprintln!("{warning}");
    }
    if !main {
        finetune_in_group(&cfg, &device, None, &mut NoProgress, comm.as_ref())?;
        return Ok(());
    }

    // A run that fails before it trains (a bad cache, an encoder that does not fit) leaves no
    // folder behind it created.
    let created = !output.exists();
    let started = (|| -> Result<_> {
        let mut log = RunLogWriter::open(&output)?;
        let mut progress = BarProgress::new().with_epochs(cfg.epochs);
        if comm.world_size() > 1 {
            progress.message(&format!(
                "data-parallel: rank 0 of {} ({})",
                comm.world_size(),
                comm.backend()
            ));
        }
        let outcome =
            finetune_in_group(&cfg, &device, Some(&mut log), &mut progress, comm.as_ref())?;
        Ok((log, outcome))
    })();
    let (log, outcome) = match started {
        Ok(done) => done,
        Err(e) => {
            if created {
                let _ = std::fs::remove_dir_all(&output);
            }
            return Err(e);
        }
    };
    if let Some(summary) = &outcome.load_summary {
        eprintln!("{summary}");
    }
    eprintln!(
        "best val {} {:.4} at epoch {} of {}{} (before training {:.4})",
        outcome.monitor,
        outcome.best_val_metric,
        outcome.best_epoch + 1,
        outcome.epochs_run,
        if outcome.stopped_early {
            ", stopped early"
        } else {
            ""
        },
        outcome.initial_val_metric
    );
    print!("{}", report::text_table(&outcome.test));
    write_results(&output, &cfg, &outcome, log.path())?;
    eprintln!("results written to {}", output.display());
    Ok(())
}

fn write_results(
    dir: &Path,
    cfg: &FinetuneConfig,
    outcome: &FinetuneOutcome,
    log_path: &Path,
) -> Result<()> {
    let mut metadata = HashMap::new();
    metadata.insert("config".to_string(), serde_json::to_string(cfg)?);
    metadata.insert(
        "targets".to_string(),
        serde_json::to_string(&outcome.target_names)?,
    );
    metadata.insert("best_epoch".to_string(), outcome.best_epoch.to_string());
    outcome
        .model
        .state_dict()?
        .write_safetensors(&dir.join("model.safetensors"), Some(metadata))?;
    report::write_evaluation(&dir.join("metrics.json"), &outcome.test)?;
    write_predictions(&dir.join("predictions.csv"), outcome)?;

    let mut figures = vec![plot::save_evaluation_figure(
        dir,
        &outcome.test,
        &outcome.test_truth,
        &outcome.test_predictions,
        "test split, fine-tuned",
    )?];
    let run_log = RunLog::read(log_path)?;
    let mut curves = TrainingCurvesFigure::new(&run_log);
    curves.title = "Fine-tuning".into();
    curves.save(&dir.join("training_curves.png"))?;
    figures.push((
        "Training curves".to_string(),
        PathBuf::from("training_curves.png"),
    ));

    let mut notes = vec![format!(
        "Fine-tuned {} from {} on the cache `{}`: {} epoch(s) run{}, best validation {} {:.4} at \
         epoch {} (before training {:.4}); the test metrics are those of the best weights.",
        describe_encoder(&cfg.encoder),
        cfg.checkpoint
            .as_ref()
            .map_or("scratch".to_string(), |p| format!("`{}`", p.display())),
        cfg.cache.display(),
        outcome.epochs_run,
        if outcome.stopped_early {
            " (early stopping)"
        } else {
            ""
        },
        outcome.monitor,
        outcome.best_val_metric,
        outcome.best_epoch + 1,
        outcome.initial_val_metric
    )];
    notes.push(format!(
        "AdamW, lr {:.3e} (warm-up {} epochs, cosine to {:.1e}), layer decay {}, weight decay {}, \
         drop-path {}, label smoothing {}, batch {}, {} pooling.",
        cfg.learning_rate(),
        cfg.warmup_epochs,
        cfg.min_lr,
        cfg.layer_decay,
        cfg.weight_decay,
        cfg.encoder.drop_path_rate,
        cfg.smoothing,
        cfg.batch_size,
        cfg.encoder.pooling()
    ));
    if let Some(summary) = &outcome.load_summary {
        notes.push(format!("Pre-trained weights: {summary}."));
    }
    Report {
        title: format!("Fine-tuning: {}", outcome.target_names.join(", ")),
        evaluation: &outcome.test,
        figures,
        notes,
    }
    .save(&dir.join("report.md"))?;
    Ok(())
}

/// `eid,<target>_true,<target>_pred,…` for the test rows (empty cells where the truth is
/// missing).
fn write_predictions(path: &Path, outcome: &FinetuneOutcome) -> Result<()> {
    let mut text = String::from("eid");
    for name in &outcome.target_names {
        let _ = write!(text, ",{name}_true,{name}_pred");
    }
    text.push('\n');
    for (i, eid) in outcome.test_eids.iter().enumerate() {
        let _ = write!(text, "{eid}");
        for j in 0..outcome.target_names.len() {
            let t = outcome.test_truth.get(i, j);
            let p = outcome.test_predictions.get(i, j);
            if t.is_nan() {
                let _ = write!(text, ",,{p}");
            } else {
                let _ = write!(text, ",{t},{p}");
            }
        }
        text.push('\n');
    }
    mmcl_nn::io::write_bytes_atomic(path, text.as_bytes())?;
    Ok(())
}

/// The encoder's name and shape for the report: `vit_tiny_patchX (192 wide, 12 blocks, 3 heads,
/// input 12 × 2500)`.
fn describe_encoder(cfg: &mmcl_ecg::EcgVitConfig) -> String {
    format!(
        "{} ({} wide, {} blocks, {} heads, input {} × {})",
        cfg.model.as_deref().unwrap_or("ECG ViT"),
        cfg.embed_dim,
        cfg.depth,
        cfg.num_heads,
        cfg.img_size[1],
        cfg.img_size[2]
    )
}
