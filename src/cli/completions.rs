//! `completions SHELL`: prints a completion script, so an operator's shell
//! offers the commands, flags and the values of `--type` and `--reason`.

use clap_complete::Shell;

use super::error::CliError;
use super::output::emit;

/// Prints the completion script of `command` for `shell`.
pub(crate) fn completions(shell: Shell, mut command: clap::Command) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "sms-dispatch", &mut script);
    emit(&String::from_utf8_lossy(&script))
}
