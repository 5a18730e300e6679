//! The `sms-dispatch` binary: parse the command line, run the command, turn
//! the outcome into an exit code (0 success, 1 runtime failure, 2 usage or
//! configuration error). Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use sms_dispatch::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sms-dispatch: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
