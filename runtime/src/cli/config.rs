//! `framesift config default`.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::DEFAULT_CONFIG_TOML;

#[derive(Subcommand)]
pub(super) enum ConfigCommand {
    /// Print the complete, commented default config.
    Default,
}

pub(super) fn config(command: ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Default => {
            print!("{DEFAULT_CONFIG_TOML}");
            ExitCode::SUCCESS
        }
    }
}
