//! Dead-letter tools: `dlq list`, `dlq replay`, `dlq purge`.

use clap::Subcommand;

use crate::cli::CliError;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters without removing them.
    List,
}

pub async fn execute(_config: &Config, _command: DlqCommand) -> Result<(), CliError> {
    Err(CliError::Usage("dlq: not built yet".to_owned()))
}
