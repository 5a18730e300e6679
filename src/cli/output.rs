//! A command's answer goes to stdout, and only its answer: logs go to stderr.

use super::error::CliError;

/// Writes command output to stdout. A reader that went away (`| head`) ends
/// the command quietly instead of a panic.
pub(crate) fn emit(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::runtime(format_args!("writing to stdout: {e}"))),
    }
}
