//! `framesift validate FILE...`.

use std::{path::PathBuf, process::ExitCode};

use super::plural;
use crate::config::{Config, describe_files};

#[derive(clap::Args)]
pub(super) struct ValidateArgs {
    /// The config files to check, base first (as `run --config A --config B` reads them).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub(super) fn validate(args: &ValidateArgs) -> ExitCode {
    let files = describe_files(&args.files);
    match Config::load(&args.files) {
        Ok(loaded) => {
            println!(
                "{files}: ok ({})",
                plural(loaded.config.cameras.len(), "camera")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{files}: {}", plural(e.diagnostics.len(), "problem"));
            ExitCode::from(2)
        }
    }
}
