//! `mmcl`: the command-line tool of the workspace (ECG–CMR representation learning).
//!
//! Each subcommand lives in its own module under `commands/`; this file only dispatches.
//! Errors print as `error: …` (with their causes, each once) and exit with status 1; nothing half-written
//! is left behind.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

/// ECG–cardiac-MRI representation learning: pre-train, transfer, embed, evaluate.
#[derive(Debug, Parser)]
#[command(name = "mmcl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Declares the subcommands, each as `Variant(Args) => handler` under its doc comment (its
/// help line), and `Command::run`, which hands each one's arguments to its handler: one list
/// instead of the enum and a match repeating it.
macro_rules! subcommands {
    ($($(#[$doc:meta])* $variant:ident($args:ty) => $run:expr,)+) => {
        #[derive(Debug, Subcommand)]
        enum Command {
            $($(#[$doc])* $variant($args),)+
        }

        impl Command {
            /// Runs the subcommand.
            fn run(self) -> anyhow::Result<()> {
                match self {
                    $(Command::$variant(args) => ($run)(args),)+
                }
            }
        }
    };
}

subcommands! {
    /// Print the version, the compiled-in features and the devices that can be used.
    Info(commands::info::Args) => commands::info::run,
    /// Fit linear probes on frozen embeddings and report test metrics with 95 % intervals.
    Probe(Box<commands::probe::Args>) => |args: Box<_>| commands::probe::run(*args),
    /// Plot every metric of a JSON-lines run log against the epoch.
    PlotCurves(commands::report::PlotCurvesArgs) => commands::report::plot_curves,
    /// Write a Markdown report (metrics table with intervals, figures) from a metrics JSON.
    Report(commands::report::ReportArgs) => commands::report::report,
    /// Generate the synthetic paired ECG–CMR cohort in UK Biobank layout.
    Synth(commands::synth::Args) => commands::synth::run,
    /// Preprocess ECG files (CardioSoft XML, WFDB, NPY) into float32 .npy arrays (reference pipeline).
    PreprocessEcg(commands::preprocess_ecg::Args) => commands::preprocess_ecg::run,
    /// Build the dataset cache from a UK-Biobank-style folder (config-driven, JSON or TOML).
    BuildDataset(commands::build_dataset::Args) => commands::build_dataset::run,
    /// Embed ECGs (.npy) with a trained ECG encoder.
    EmbedEcg(commands::embed_ecg::Args) => commands::embed_ecg::run,
    /// Convert a PyTorch checkpoint (or part of it) to safetensors.
    Convert(commands::convert::Args) => commands::convert::run,
    /// Embed cardiac MRI images with a ResNet encoder checkpoint (N, C, H, W) -> (N, D).
    EmbedCmr(commands::embed_cmr::Args) => commands::embed_cmr::run,
    // The trainers train data-parallel under a launcher (the reproduction refuses to).
    /// Multimodal contrastive pre-training of the ECG and CMR encoders (config-driven, resumable).
    PretrainMmcl(commands::pretrain::Args) => commands::pretrain::run_mmcl,
    /// Masked-autoencoder pre-training of the ECG encoder (config-driven, resumable).
    PretrainMae(commands::pretrain::Args) => commands::pretrain::run_mae,
    /// Localisation maps of one subject's ECG and CMR under a multimodal model (PNG + JSON).
    Explain(commands::explain::Args) => commands::explain::run,
    /// Fine-tune the ECG encoder with a classification or regression head (config-driven).
    Finetune(commands::finetune::Args) => commands::finetune::run,
    /// The paper's pipeline end to end on a synthetic cohort: MAE, MMCL, probes, report.
    Reproduce(commands::reproduce::Args) => |args| {
        commands::common::one_training_process().and_then(|()| commands::reproduce::run(args))
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Reproduce(_)) {
        // SAFETY: no thread of this program reads or writes the environment yet.
        unsafe { mmcl_nn::threads::share_cores_with_candle(rayon::current_num_threads()) };
    }
    let result = cli.command.run();
    if mmcl_nn::census::enabled() {
        // `MMCL_PRODUCT_CENSUS=1`: where the CPU kernels' matrix products went.
        eprintln!("\n{}", mmcl_nn::census::report(40));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: many library errors already include
/// their source in their own message (`<file>: <io error>`), and `{:#}` would repeat it.
fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[derive(Debug)]
    struct WithSource(std::io::Error);

    impl std::fmt::Display for WithSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "x.toml: {}", self.0)
        }
    }

    impl std::error::Error for WithSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_are_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(WithSource(io));
        assert_eq!(describe(&err), "x.toml: no such file");
        let err = anyhow::anyhow!("inner cause").context("cannot read y.npy");
        assert_eq!(describe(&err), "cannot read y.npy: inner cause");
    }
}
