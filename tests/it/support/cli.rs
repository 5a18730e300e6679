//! The binary as an operator runs a command: a clean environment, an exit
//! code, stdout and stderr, and a deadline after which the command is killed.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BIN;

/// How long a command may run before it is killed and the test fails.
const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// What a command reads, and where its stderr goes, beyond the defaults:
/// nothing on stdin (it reads end of file), stderr through a pipe.
#[derive(Default)]
pub(crate) struct Io<'a> {
    /// Bytes on standard input.
    pub stdin: &'a [u8],
    /// Stderr goes to a file instead of a pipe (and is read back from it).
    pub stderr_to_file: bool,
}

/// The binary with `args`, its environment stripped of everything from the
/// developer's shell that would change what it does (`TWILIO_*`,
/// `SMS_DISPATCH_*`, `RUST_LOG`, `OTEL_*`), then given `env`.
pub(crate) fn cli_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if ["TWILIO_", "SMS_DISPATCH_", "OTEL_"]
            .iter()
            .any(|prefix| key.starts_with(prefix))
            || key == "RUST_LOG"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the binary with `args` and `env` and returns (exit code, stdout,
/// stderr). Logs are JSON.
pub(crate) fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut env = env.to_vec();
    env.insert(0, ("SMS_DISPATCH_LOG_FORMAT", "json"));
    run_cli_with(args, &env, Io::default())
}

/// Runs the binary with `args`, `env` and `io` and returns (exit code,
/// stdout, stderr). The log format is the binary's own choice unless `env`
/// sets it.
pub(crate) fn run_cli_with(
    args: &[&str],
    env: &[(&str, &str)],
    io: Io<'_>,
) -> (i32, String, String) {
    let mut cmd = cli_command(args, env);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let stderr_file = io.stderr_to_file.then(|| {
        std::env::temp_dir().join(format!(
            "sms-dispatch-test-stderr-{}.log",
            uuid::Uuid::new_v4().simple()
        ))
    });
    match &stderr_file {
        Some(path) => cmd.stderr(std::fs::File::create(path).expect("the stderr file")),
        None => cmd.stderr(Stdio::piped()),
    };
    let mut child = cmd.spawn().expect("the binary runs");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // A command that does not read its input must not fail the write.
    let _ = stdin.write_all(io.stdin);
    drop(stdin);
    let (code, stdout, stderr) = wait_cli(child, CLI_DEADLINE);
    let stderr = match stderr_file {
        Some(path) => {
            let text = std::fs::read_to_string(&path).expect("the stderr file");
            let _ = std::fs::remove_file(&path);
            text
        }
        None => stderr,
    };
    (code, stdout, stderr)
}

/// [`run_cli_with`] off the async threads, for a tokio test.
pub(crate) async fn run_cli_async(
    args: &[&str],
    env: &[(&str, &str)],
    io: Io<'_>,
) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let stdin = io.stdin.to_vec();
    let stderr_to_file = io.stderr_to_file;
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let io = Io {
            stdin: &stdin,
            stderr_to_file,
        };
        run_cli_with(&args, &env, io)
    })
    .await
    .expect("the command's thread")
}

/// Waits for `child` (its stdout and stderr piped, or stderr elsewhere) and
/// returns (exit code, stdout, stderr); kills it and fails the test when it
/// is still running after `deadline`.
pub(crate) fn wait_cli(mut child: Child, deadline: Duration) -> (i32, String, String) {
    let read = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read(child.stdout.take().map(|s| Box::new(s) as _));
    let stderr = read(child.stderr.take().map(|s| Box::new(s) as _));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("the command can be waited for") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the command ran longer than {deadline:?} and was killed; its output:\n{}\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        stdout.join().expect("stdout read"),
        stderr.join().expect("stderr read"),
    )
}
