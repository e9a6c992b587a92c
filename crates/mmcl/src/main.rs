//! `mmcl`: the command-line tool of the workspace (ECG–CMR representation learning).
//!
//! Each subcommand lives in its own module under `commands/`; this file only dispatches.
//! Errors print as `error: …` (with their causes) and exit with status 1; nothing half-written
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version, the compiled-in features and the devices that can be used.
    Info(commands::info::Args),
    /// Embed ECGs (.npy) with a trained ECG encoder.
    EmbedEcg(commands::embed_ecg::Args),
    /// Convert a PyTorch checkpoint (or part of it) to safetensors.
    Convert(commands::convert::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => commands::info::run(args),
        Command::EmbedEcg(args) => commands::embed_ecg::run(args),
        Command::Convert(args) => commands::convert::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
