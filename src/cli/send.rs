//! `send`: publishes one job with publisher confirms and prints its id. A job
//! the worker would dead-letter (bad number, unknown type, no template) is
//! refused here, with exit code 2, before anything is published.

use std::io::Read as _;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::error::CliError;
use super::output::emit;
use super::values::TypeArg;
use crate::amqp::connect_for_command;
use crate::config::Config;
use crate::job::{Envelope, Job, JobId, format_rfc3339};

/// The arguments of `send`.
#[derive(Debug, clap::Args)]
pub(super) struct SendArgs {
    /// The recipient, E.164 (a missing + is added).
    #[arg(long)]
    to: String,
    /// The template type.
    #[arg(long = "type", value_name = "TYPE")]
    kind: TypeArg,
    /// The verification code; `-` reads it from standard input, so that it
    /// stays out of the shell's history.
    #[arg(long)]
    code: String,
    /// The locale to choose the template by, e.g. ja-JP.
    #[arg(long)]
    locale: Option<String>,
    /// Seconds until the code expires, 1 to 86400 (default: default_ttl, 600).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    ttl: Option<u64>,
    /// The idempotency key (default: a new UUID).
    #[arg(long)]
    id: Option<String>,
}

/// Reads the code from standard input: the first line, trimmed.
fn code_from_stdin() -> Result<String, CliError> {
    let mut text = String::new();
    std::io::stdin()
        .take(1024)
        .read_to_string(&mut text)
        .map_err(|e| CliError::Usage(format!("--code -: cannot read standard input: {e}")))?;
    let code = text.lines().next().unwrap_or("").trim().to_owned();
    if code.is_empty() {
        return Err(CliError::Usage(
            "--code -: standard input held no code; pipe it in, e.g. `printf 123456 | sms-dispatch send ... --code -`".to_owned(),
        ));
    }
    Ok(code)
}

/// Publishes the job and prints its id once the broker confirmed it.
pub(crate) async fn send(config: Config, args: SendArgs) -> Result<(), CliError> {
    let id = match args.id {
        Some(id) => JobId::parse(&id).ok_or_else(|| {
            CliError::Usage("--id: must be 1 to 128 characters of A-Z a-z 0-9 . _ : -".to_owned())
        })?,
        None => JobId::generate(),
    };
    let code = if args.code == "-" {
        code_from_stdin()?
    } else {
        args.code
    };
    let ttl = args.ttl.map_or(config.default_ttl, Duration::from_secs);
    let mut payload = serde_json::Map::new();
    payload.insert("code".to_owned(), json!(code));
    if let Some(locale) = args.locale {
        payload.insert("locale".to_owned(), json!(locale));
    }
    let body = json!({
        "to": args.to,
        "type": args.kind.0.as_str(),
        "payload": payload,
        "id": id.as_str(),
        "expires_at": format_rfc3339(SystemTime::now() + ttl),
    });
    let body = serde_json::to_vec(&body).map_err(|e| CliError::Runtime(e.into()))?;
    // The worker's own decoder: a job it would dead-letter is refused here.
    let job = Job::decode(&body, &Envelope::default(), ttl, SystemTime::now())
        .map_err(|e| CliError::Usage(format!("the job would be refused: {e}")))?;
    // And its own template choice, when this configuration has templates
    // (with none configured, `send` cannot know the worker's).
    if !config.templates.is_empty()
        && config
            .templates
            .select(job.kind, job.payload.locale())
            .is_none()
    {
        return Err(CliError::Usage(format!(
            "the job would be dead-lettered no_template: no {} template{} and no Generic template in {}",
            job.kind,
            job.payload
                .locale()
                .map(|l| format!(" for locale {l}"))
                .unwrap_or_default(),
            config.source
        )));
    }

    let (connection, publisher) = connect_for_command(&config.broker, "sms-dispatch send").await?;
    publisher
        .publish_job(id.as_str(), &body, Default::default())
        .await
        .map_err(|e| CliError::runtime(format_args!("publishing: {e}")))?;
    let _ = connection.close(200, "sent".into()).await;
    emit(&format!("{id}\n"))
}
