//! How a command failed, which decides the exit code (contract section 5):
//! 0 success, 1 runtime failure, 2 usage or configuration error.

use crate::amqp::CommandConnectError;
use crate::config::ConfigError;

/// How a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit code 2: the operator must change what they typed or configured.
    #[error("{0}")]
    Usage(String),
    /// Exit code 1: something failed at run time.
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }

    /// A run-time failure with this text.
    pub(crate) fn runtime(text: impl std::fmt::Display) -> CliError {
        CliError::Runtime(anyhow::anyhow!("{text}"))
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Usage(e.to_string())
    }
}

impl From<CommandConnectError> for CliError {
    fn from(e: CommandConnectError) -> Self {
        CliError::Runtime(anyhow::Error::new(e))
    }
}
