//! The command line (contract section 5): one enum of commands, one file per
//! command, dispatched by [`execute`]. Exit codes: 0 success, 1 runtime
//! failure, 2 usage or configuration error ([`CliError`]).
//!
//! A command's answer goes to stdout and its logs to stderr, so
//! `sms-dispatch dlq list --json | jq` sees only the list; `run` logs to
//! stdout, which is its output.

mod check_config;
mod completions;
mod dlq;
mod error;
mod output;
mod run;
mod send;
mod topology;
mod values;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

pub use error::CliError;

use crate::config::Config;
use crate::observe::telemetry::{self, LogTarget};

/// Sends SMS verification codes from RabbitMQ jobs through Twilio.
#[derive(Debug, Parser)]
#[command(name = "sms-dispatch", version, about)]
pub struct Cli {
    /// The project's TOML file or Logto's Twilio connector JSON.
    #[arg(long, global = true, env = "SMS_DISPATCH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker: consume sms.send and send each job through Twilio.
    Run {
        /// Render and log (masked) instead of calling Twilio; needs no Twilio account.
        #[arg(long)]
        dry_run: bool,
        /// Run only the consumer (`worker`), only the HTTP side (`http`:
        /// ingest, Twilio's callbacks, metrics), or both.
        #[arg(long, value_enum, default_value_t = values::Role::All)]
        role: values::Role,
    },
    /// Publish one job (with publisher confirms) and print its id.
    Send(send::SendArgs),
    /// Validate the configuration and show what each template costs.
    CheckConfig,
    /// Inspect, replay or purge dead letters (queue sms.dead).
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Print the exchanges, queues and bindings as a RabbitMQ definitions file.
    Topology(topology::TopologyArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// Runs the parsed command.
pub async fn execute(cli: Cli) -> Result<(), CliError> {
    if let Command::Completions { shell } = cli.command {
        // Needs no configuration: it must work before there is one.
        return completions::completions(shell, Cli::command());
    }
    if let Command::Topology(args) = &cli.command {
        // Needs no configuration or broker: it only prints.
        return topology::topology_command(args);
    }
    let config = Config::load(cli.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Command::Run { dry_run, role } = &cli.command {
        // What `run` needs is checked before anything starts.
        config.templates_required()?;
        if role.consumes() && !dry_run {
            config.twilio_required()?;
        }
        if *role == values::Role::Http && config.ingest_token.is_none() && !config.callbacks_on() {
            return Err(CliError::Usage(
                "run --role http serves nothing: set SMS_DISPATCH_INGEST_TOKEN (the ingest) or SMS_DISPATCH_PUBLIC_URL with Twilio's credentials (status callbacks)".to_owned(),
            ));
        }
    }
    let target = match cli.command {
        Command::Run { .. } => LogTarget::Stdout,
        _ => LogTarget::Stderr,
    };
    let telemetry = telemetry::init(config.log_format, target);
    let result = match cli.command {
        Command::Run { dry_run, role } => run::run(config, dry_run, role).await,
        Command::Send(args) => send::send(config, args).await,
        Command::CheckConfig => check_config::check_config(&config),
        Command::Dlq { command } => dlq::execute(&config, command).await,
        Command::Completions { .. } | Command::Topology(_) => Ok(()),
    };
    // Flushing exported spans blocks; keep it off the async threads.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    result
}
