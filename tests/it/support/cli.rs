//! The binary as an operator runs a command.

use std::process::Command;

use super::BIN;

/// Runs the binary with `args` and `env` and returns (exit code, stdout, stderr).
pub(crate) fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SMS_DISPATCH_CONFIG")
        .env("SMS_DISPATCH_LOG_FORMAT", "json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
