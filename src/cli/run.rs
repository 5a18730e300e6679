//! `run`: the worker. Starts the HTTP listener (metrics, health, ingest,
//! callbacks), then consumes until SIGTERM or SIGINT. `--role` runs one
//! half only: `worker` serves no ingest or callbacks, `http` consumes
//! nothing (it still keeps the broker connections the ingest and the
//! callbacks' events publish on).

use super::error::CliError;
use super::values::Role;
use crate::amqp::SharedPublisher;
use crate::config::Config;
use crate::fleet::RedisStore;
use crate::http;
use crate::limits::Limiter;
use crate::observe::health::Health;
use crate::observe::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::twilio::TwilioClient;
use crate::worker::Gateway;
use crate::worker::consumer::{self, RunOptions};
use std::sync::Arc;
use tracing::info;

/// Runs the worker until it is stopped; `dry_run` logs instead of sending.
pub(crate) async fn run(config: Config, dry_run: bool, role: Role) -> Result<(), CliError> {
    let settings = config.worker_settings()?;
    let gateway = if dry_run || !role.consumes() {
        Gateway::DryRun
    } else {
        let twilio = config.twilio_required()?;
        Gateway::Twilio(Box::new(
            TwilioClient::new(twilio).map_err(CliError::runtime)?,
        ))
    };
    // Numbers' regions (abuse limits, the segments' country label) come
    // from libphonenumber's metadata: loaded now, not on the first job.
    crate::limits::load_metadata();
    let metrics = Metrics::new();
    let health = Health::new(metrics.clone(), role.consumes());
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let publisher = SharedPublisher::new();
    let fleet = match &config.redis {
        None => None,
        Some(redis) => {
            info!(redis = %redis.url_for_logs(), prefix = redis.prefix.as_str(), "duplicate protection is fleet-wide (Redis)");
            Some(
                RedisStore::connect(redis, metrics.clone())
                    .map_err(|e| CliError::Usage(format!("SMS_DISPATCH_REDIS_URL: {e}")))?,
            )
        }
    };
    let limiter = Arc::new(Limiter::new(
        config.limits.clone(),
        fleet.clone(),
        metrics.clone(),
    ));
    let ingest = config
        .ingest_token
        .clone()
        .filter(|_| role.serves_http())
        .map(|token| http::Ingest {
            token,
            publisher: publisher.clone(),
            default_ttl: config.default_ttl,
            limiter: Arc::clone(&limiter),
            templates: config.templates.clone(),
        });
    // Status callbacks, when Twilio can reach this worker (a public URL).
    let callbacks = config
        .twilio
        .as_ref()
        .filter(|_| role.serves_http())
        .and_then(|twilio| {
            twilio
                .status_callback
                .clone()
                .map(|url| http::StatusCallbacks {
                    url,
                    tokens: twilio.callback_tokens.clone(),
                    metrics: metrics.clone(),
                    publisher: publisher.clone(),
                    fleet: fleet.clone(),
                    seen: Default::default(),
                })
        });
    let (_, server) = http::serve(
        config.http_addr,
        http::router(metrics.clone(), health.clone(), ingest, callbacks),
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
        settings,
        RunOptions {
            gateway,
            metrics,
            health,
            shutdown: shutdown.clone(),
            publisher,
            fleet,
            limiter,
            consume: role.consumes(),
        },
    )
    .await;
    shutdown.trigger();
    let _ = server.await;
    result.map_err(|e| CliError::Runtime(anyhow::Error::new(e)))
}
