//! The `framesift` binary: parse arguments, hand over to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    match framesift::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
