//! The AMQP topology: every exchange, queue and header name, declared in one place.
//!
//! ```text
//! producers ──► exchange `sms` (direct) ──send──► queue `sms.send` ──► workers
//!                    ▲                                 │ (broker-side dead letters)
//!                    │ after the TTL                   ▼
//!   queue `sms.retry.<N>s` (one per delay tier)   exchange `sms.dlx` (fanout) ──► queue `sms.dead`
//!                    ▲                                 ▲
//!                    └── worker parks a retry          └── worker dead-letters with x-sms-* headers
//! ```
//!
//! [`declare`] is idempotent and runs at every start of `run`, `send` and the
//! `dlq` commands, so whichever starts first creates everything. Declaring a
//! queue that exists with other arguments fails; the error names the queue.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::connection::QueueType;
use super::headers::long_string;
use crate::retry::DELAY_TIERS;

/// Producers publish jobs here.
pub(crate) const EXCHANGE: &str = "sms";
/// …with this routing key.
pub(crate) const ROUTING_KEY: &str = "send";
/// Workers consume jobs from here.
pub(crate) const QUEUE: &str = "sms.send";
/// Dead letters are published here.
pub(crate) const DEAD_LETTER_EXCHANGE: &str = "sms.dlx";
/// Operators read dead letters from here.
pub(crate) const DEAD_LETTER_QUEUE: &str = "sms.dead";
/// Outcome events for the services that publish jobs (topic, durable):
/// `<source>.sent`, `<source>.dead_lettered.<reason>`.
pub(crate) const EVENTS_EXCHANGE: &str = "sms.events";
/// Jobs an abuse limit refused: a queue of their own, so a pumping wave
/// never pushes real dead letters out.
pub(crate) const BLOCKED_QUEUE: &str = "sms.blocked";
/// The most jobs `sms.blocked` keeps; beyond it the oldest are dropped.
pub(crate) const BLOCKED_MAX_LENGTH: i64 = 100_000;

/// The delay queue for one tier, e.g. `sms.retry.16s`.
pub(crate) fn delay_queue(tier: Duration) -> String {
    format!("sms.retry.{}s", tier.as_secs())
}

/// What an operator can do when declaring fails because an exchange or
/// queue already exists with other arguments (RabbitMQ's PRECONDITION_FAILED).
pub(crate) const MISMATCH_HINT: &str = "an exchange or queue of that name exists with other arguments (another queue_type, or declared by hand or by an older version): delete it once it is empty, or set queue_type to match";

/// Whether a declaration failed because the queue's home node is down (a
/// classic queue on a cluster node that died): not a configuration fault.
pub(crate) fn home_node_down(error: &lapin::Error) -> bool {
    let text = error.to_string();
    text.contains("home node") && text.contains("down or inaccessible")
}

/// Adds [`MISMATCH_HINT`] to a declaration error when it is a mismatch.
pub(crate) fn explain(error: &lapin::Error) -> String {
    let text = error.to_string();
    if text.contains("PRECONDITION_FAILED") || text.contains("inequivalent arg") {
        format!("{text} ({MISMATCH_HINT})")
    } else {
        text
    }
}

/// One exchange of the topology: its name and kind (all are durable).
pub(crate) struct ExchangeSpec {
    pub name: &'static str,
    /// RabbitMQ's name for the kind: `direct`, `fanout` or `topic`.
    pub kind: &'static str,
}

/// One queue of the topology (all are durable) with its `x-` arguments.
pub(crate) struct QueueSpec {
    pub name: String,
    pub arguments: FieldTable,
}

/// One binding: `queue` bound to `exchange` with `routing_key`.
pub(crate) struct BindingSpec {
    pub exchange: &'static str,
    pub queue: &'static str,
    pub routing_key: &'static str,
}

/// The whole topology as data: what [`declare`] declares and what
/// `topology --definitions` prints, so the two cannot drift apart.
pub(crate) struct Topology {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<BindingSpec>,
}

/// The topology for `queue_type` (the work and delay queues' type).
pub(crate) fn topology(queue_type: QueueType) -> Topology {
    let exchanges = vec![
        ExchangeSpec {
            name: EXCHANGE,
            kind: "direct",
        },
        ExchangeSpec {
            name: DEAD_LETTER_EXCHANGE,
            kind: "fanout",
        },
        ExchangeSpec {
            name: EVENTS_EXCHANGE,
            kind: "topic",
        },
    ];

    let mut work = queue_args(queue_type);
    // Messages the broker itself gives up on (a producer's own TTL, a delivery
    // limit set by policy) land in the dead-letter queue, not nowhere.
    work.insert(
        "x-dead-letter-exchange".into(),
        long_string(DEAD_LETTER_EXCHANGE),
    );
    let mut queues = vec![
        QueueSpec {
            name: QUEUE.to_owned(),
            arguments: work,
        },
        // The dead-letter queue is always a classic (durable) queue: a classic
        // queue puts a returned message back in its place, so `dlq list` keeps
        // the queue's order even when it is killed halfway; a quorum queue
        // returns a closed channel's messages out of order (checked on 3.10).
        QueueSpec {
            name: DEAD_LETTER_QUEUE.to_owned(),
            arguments: base_args(QueueType::Classic),
        },
    ];

    // Refused jobs: durable, classic, length-limited, oldest dropped
    // (contract section 4). Published to directly (default exchange).
    let mut blocked = base_args(QueueType::Classic);
    blocked.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(BLOCKED_MAX_LENGTH),
    );
    blocked.insert("x-overflow".into(), long_string("drop-head"));
    queues.push(QueueSpec {
        name: BLOCKED_QUEUE.to_owned(),
        arguments: blocked,
    });

    for tier in DELAY_TIERS {
        let mut args = queue_args(queue_type);
        let ttl_ms = i64::try_from(tier.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        args.insert("x-dead-letter-exchange".into(), long_string(EXCHANGE));
        args.insert("x-dead-letter-routing-key".into(), long_string(ROUTING_KEY));
        queues.push(QueueSpec {
            name: delay_queue(tier),
            arguments: args,
        });
    }

    let bindings = vec![
        BindingSpec {
            exchange: EXCHANGE,
            queue: QUEUE,
            routing_key: ROUTING_KEY,
        },
        BindingSpec {
            exchange: DEAD_LETTER_EXCHANGE,
            queue: DEAD_LETTER_QUEUE,
            routing_key: ROUTING_KEY,
        },
    ];
    Topology {
        exchanges,
        queues,
        bindings,
    }
}

/// Declares the whole topology.
pub async fn declare(channel: &Channel, queue_type: QueueType) -> Result<(), lapin::Error> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let Topology {
        exchanges,
        queues,
        bindings,
    } = topology(queue_type);
    for exchange in exchanges {
        let kind = match exchange.kind {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            other => ExchangeKind::Custom(other.to_owned()),
        };
        channel
            .exchange_declare(
                exchange.name.into(),
                kind,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
    }
    for queue in queues {
        channel
            .queue_declare(queue.name.as_str().into(), durable_queue, queue.arguments)
            .await?;
    }
    for binding in bindings {
        channel
            .queue_bind(
                binding.queue.into(),
                binding.exchange.into(),
                binding.routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// A quorum queue's delivery limit, set so high that it never triggers:
/// RabbitMQ 4 defaults to 20, after which a message that keeps coming back
/// (a job put back on every pause probe, a dead letter listed by `dlq list`)
/// would be dropped or dead-lettered without our headers. (-1 is no way
/// out: RabbitMQ 3.10 reads it as "drop at the first return".)
pub(crate) const DELIVERY_LIMIT: i64 = 1_000_000;

/// `x-queue-type`, and the delivery limit for quorum queues.
fn base_args(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string(queue_type.as_str()));
    if queue_type == QueueType::Quorum {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
    }
    args
}

/// For queues that dead-letter: quorum queues do it at-least-once (a message
/// on its way from a delay queue back to `sms.send` survives a broker crash),
/// which needs `reject-publish` overflow. Classic queues dead-letter
/// at-most-once; docs/guarantees.md says so.
fn queue_args(queue_type: QueueType) -> FieldTable {
    let mut args = base_args(queue_type);
    if queue_type == QueueType::Quorum {
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        args.insert("x-overflow".into(), long_string("reject-publish"));
    }
    args
}
