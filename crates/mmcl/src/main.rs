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
    /// Embed cardiac MRI images with a ResNet encoder checkpoint (N, C, H, W) -> (N, D).
    EmbedCmr(commands::embed_cmr::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => commands::info::run(args),
        Command::EmbedCmr(args) => commands::embed_cmr::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
