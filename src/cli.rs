//! The command line (contract section 5): parsing, and one function per
//! command. Exit codes: 0 success, 1 runtime failure, 2 usage or
//! configuration error.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use std::fmt::Write as _;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::broker::{self, Publisher, SharedPublisher};
use crate::config::{Config, ConfigError, Sender, TwilioAuth};
use crate::consumer::{self, RunOptions};
use crate::dlq;
use crate::encoding;
use crate::health::Health;
use crate::http;
use crate::job::{Envelope, Job, JobId, Payload, TemplateType, format_rfc3339};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::telemetry;
use crate::topology;

/// Sends SMS verification codes from RabbitMQ jobs through Twilio.
#[derive(Debug, Parser)]
#[command(name = "sms-dispatch", version, about)]
pub struct Cli {
    /// The project's TOML file or Logto's Twilio connector JSON.
    #[arg(long, global = true, env = "SMS_DISPATCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: consume sms.send and send each job through Twilio.
    Run {
        /// Render and log (masked) instead of calling Twilio; needs no Twilio account.
        #[arg(long)]
        dry_run: bool,
    },
    /// Publish one job (with publisher confirms) and print its id.
    Send(SendArgs),
    /// Validate the configuration and show what each template costs.
    CheckConfig,
    /// Inspect, replay or purge dead letters (queue sms.dead).
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
}

/// How a command failed, which decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit code 2.
    #[error("{0}")]
    Usage(String),
    /// Exit code 1.
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Usage(e.to_string())
    }
}

/// Writes command output to stdout. A reader that went away (`| head`) ends
/// the command quietly instead of a panic.
pub fn emit(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Runtime(anyhow::anyhow!("writing to stdout: {e}"))),
    }
}

/// Runs the parsed command.
pub async fn execute(cli: Cli) -> Result<(), CliError> {
    let config = Config::load(cli.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Command::Run { dry_run } = &cli.command {
        // What `run` needs is checked before anything starts.
        config.templates_required()?;
        if !dry_run {
            config.twilio_required()?;
        }
    }
    let target = match cli.command {
        Command::Run { .. } => telemetry::LogTarget::Stdout,
        _ => telemetry::LogTarget::Stderr,
    };
    let telemetry = telemetry::init(config.log_format, target);
    let result = match cli.command {
        Command::Run { dry_run } => run(config, dry_run).await,
        Command::Send(args) => send(config, args).await,
        Command::CheckConfig => check_config(&config),
        Command::Dlq { command } => dlq::execute(&config, command).await,
    };
    // Flushing exported spans blocks; keep it off the async threads.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    result
}

async fn run(config: Config, dry_run: bool) -> Result<(), CliError> {
    let metrics = Metrics::new();
    let health = Health::new(metrics.clone());
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let publisher = SharedPublisher::new();
    let ingest = config.ingest_token.clone().map(|token| http::Ingest {
        token,
        publisher: publisher.clone(),
        default_ttl: config.default_ttl,
    });
    let (_, server) = http::serve(
        config.http_addr,
        http::router(metrics.clone(), health.clone(), ingest),
        shutdown.clone(),
    )
    .await
    .map_err(|e| {
        CliError::Usage(format!(
            "SMS_DISPATCH_HTTP_ADDR {}: cannot listen: {e}",
            config.http_addr
        ))
    })?;
    let result = consumer::run(
        &config,
        RunOptions {
            dry_run,
            metrics,
            health,
            shutdown: shutdown.clone(),
            publisher,
        },
    )
    .await;
    shutdown.trigger();
    let _ = server.await;
    result.map_err(|e| CliError::Runtime(anyhow::Error::new(e)))
}

/// The arguments of `send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The recipient, E.164 (a missing + is added).
    #[arg(long)]
    to: String,
    /// The template type (SignIn, Register, ForgotPassword, Generic, ...).
    #[arg(long = "type", value_name = "TYPE")]
    kind: String,
    /// The verification code.
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

async fn send(config: Config, args: SendArgs) -> Result<(), CliError> {
    let id = match args.id {
        Some(id) => JobId::parse(&id).ok_or_else(|| {
            CliError::Usage("--id: must be 1 to 128 characters of A-Z a-z 0-9 . _ : -".to_owned())
        })?,
        None => JobId::generate(),
    };
    let ttl = args.ttl.map_or(config.default_ttl, Duration::from_secs);
    let mut payload = serde_json::Map::new();
    payload.insert("code".to_owned(), json!(args.code));
    if let Some(locale) = args.locale {
        payload.insert("locale".to_owned(), json!(locale));
    }
    let body = json!({
        "to": args.to,
        "type": args.kind,
        "payload": payload,
        "id": id.as_str(),
        "expires_at": format_rfc3339(SystemTime::now() + ttl),
    });
    let body = serde_json::to_vec(&body).map_err(|e| CliError::Runtime(e.into()))?;
    // The worker's own decoder: a job it would dead-letter is refused here.
    Job::decode(&body, &Envelope::default(), ttl, SystemTime::now())
        .map_err(|e| CliError::Usage(format!("the job would be refused: {e}")))?;

    let (connection, publisher) = connect_for_command(&config, "sms-dispatch send").await?;
    publisher
        .publish_job(id.as_str(), &body, Default::default())
        .await
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("publishing: {e}")))?;
    let _ = connection.close(200, "sent".into()).await;
    emit(&format!("{id}\n"))
}

/// Connects a command to the broker (no automatic recovery: the operator
/// sees a failure at once), opens a confirming publisher and declares the
/// topology.
pub async fn connect_for_command(
    config: &Config,
    name: &str,
) -> Result<(lapin::Connection, Publisher), CliError> {
    let connection = broker::connect(&config.broker, name, broker::Recovery::None)
        .await
        .map_err(|e| {
            CliError::Runtime(anyhow::anyhow!(
                "cannot connect to {}: {e}",
                config.broker.url_for_logs()
            ))
        })?;
    let publisher = Publisher::open(&connection)
        .await
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("opening a channel: {e}")))?;
    topology::declare(publisher.channel(), config.broker.queue_type)
        .await
        .map_err(|e| {
            CliError::Runtime(anyhow::anyhow!(
                "declaring the topology: {}",
                topology::explain(&e)
            ))
        })?;
    Ok((connection, publisher))
}

/// The sample a template is measured with: a six-digit code and a typical
/// invitation link.
fn sample_payload() -> Payload {
    let mut vars = serde_json::Map::new();
    vars.insert("code".to_owned(), json!("123456"));
    vars.insert(
        "link".to_owned(),
        json!("https://example.com/invitation/0123456789abcdef"),
    );
    Payload::new(vars)
}

fn check_config(config: &Config) -> Result<(), CliError> {
    let templates = config.templates_required()?;
    let twilio = config.twilio_required()?;
    let mut out = String::new();
    let _ = writeln!(out, "{}: valid", config.source);
    let sender = match &twilio.sender {
        Sender::MessagingService(sid) => format!("Messaging Service {sid}"),
        Sender::From(from) => format!("From {from}"),
    };
    let auth = match &twilio.auth {
        TwilioAuth::AuthToken(_) => "auth token".to_owned(),
        TwilioAuth::ApiKey { sid, .. } => format!("API key {sid}"),
    };
    let _ = writeln!(
        out,
        "Twilio account {} ({auth}), sending from {sender}, via {}",
        twilio.account_sid, twilio.base_url
    );
    let _ = writeln!(
        out,
        "broker {} (queue type {}, prefetch {})",
        config.broker.url_for_logs(),
        config.broker.queue_type.as_str(),
        config.broker.prefetch
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<26} {:<8} {:<8} {:>5} {:>8}",
        "TYPE", "LOCALE", "ENCODING", "UNITS", "SEGMENTS"
    );
    let sample = sample_payload();
    let mut warnings = Vec::new();
    for template in templates.all() {
        let rendered = template.render(&sample);
        let segments = encoding::segments(&rendered);
        let _ = writeln!(
            out,
            "{:<26} {:<8} {:<8} {:>5} {:>8}",
            template.kind().as_str(),
            template.locale().unwrap_or("-"),
            segments.encoding.as_str(),
            segments.units,
            segments.count
        );
        if segments.count > 1 {
            warnings.push(format!(
                "{} ({}) takes {} segments in {}: every message costs {} times one SMS",
                template.kind(),
                template.locale().unwrap_or("no locale"),
                segments.count,
                segments.encoding,
                segments.count
            ));
        }
    }
    let _ = writeln!(
        out,
        "(units: GSM-7 septets or UTF-16 code units, measured with a 6-digit code and a 47-character invitation link)"
    );
    for kind in TemplateType::FULL_FLOW {
        let own = templates.all().iter().any(|t| t.kind() == kind);
        if !own {
            let some_generic = templates
                .all()
                .iter()
                .any(|t| t.kind() == TemplateType::Generic);
            let fallback = if kind != TemplateType::Generic && templates.covers(kind) {
                "its jobs will use the Generic template"
            } else if kind != TemplateType::Generic && some_generic {
                "its jobs are sent only in the locales Generic has; the rest are dead-lettered no_template"
            } else {
                "its jobs will be dead-lettered no_template"
            };
            warnings.push(format!(
                "no {kind} template, which a full Logto sign-in flow needs: {fallback}"
            ));
        }
    }
    if !warnings.is_empty() {
        out.push('\n');
        for warning in &warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
    }
    emit(&out)
}
