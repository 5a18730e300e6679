//! `topology --definitions`: prints the exchanges, queues and bindings that
//! every start declares, as a RabbitMQ definitions file (for `rabbitmqctl
//! import_definitions` or the broker's `load_definitions`), built from the
//! same description as the declarations, so the two cannot drift apart.
//! `deploy/rabbitmq/definitions.json` is its output for quorum queues.

use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value, json};

use super::error::CliError;
use super::output::emit;
use crate::amqp::QueueType;
use crate::amqp::topology::{DEAD_LETTER_QUEUE, Topology, topology};

/// The queue type of the work and delay queues (the configuration's `queue_type`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum QueueTypeArg {
    Quorum,
    Classic,
}

impl From<QueueTypeArg> for QueueType {
    fn from(arg: QueueTypeArg) -> QueueType {
        match arg {
            QueueTypeArg::Quorum => QueueType::Quorum,
            QueueTypeArg::Classic => QueueType::Classic,
        }
    }
}

/// The arguments of `topology`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopologyArgs {
    /// Print the topology as a RabbitMQ definitions file (JSON); required,
    /// the only output it has.
    #[arg(long, required = true)]
    definitions: bool,
    /// The type of the work and delay queues.
    #[arg(long, value_enum, default_value = "quorum")]
    queue_type: QueueTypeArg,
}

/// Runs `topology`.
pub(crate) fn topology_command(args: &TopologyArgs) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(&definitions(args.queue_type.into()))
        .map_err(|e| CliError::runtime(format_args!("encoding the definitions: {e}")))?;
    text.push('\n');
    emit(&text)
}

/// The most dead letters `sms.dead` keeps under the definitions' policy;
/// beyond it the oldest are dropped, so a storm of dead letters cannot fill
/// the broker's disk (the queue's own arguments carry no limit, so the worker
/// declares it alike with or without the policy). Only ready messages count:
/// a `dlq` command holding the queue unacked does not trigger it.
pub(crate) const DEAD_LETTER_MAX_LENGTH: i64 = 1_000_000;

/// The definitions file for vhost `/`.
pub(crate) fn definitions(queue_type: QueueType) -> Value {
    let Topology {
        exchanges,
        queues,
        bindings,
    } = topology(queue_type);
    json!({
        "vhosts": [{"name": "/"}],
        "exchanges": exchanges.iter().map(|e| json!({
            "name": e.name,
            "vhost": "/",
            "type": e.kind,
            "durable": true,
            "auto_delete": false,
            "internal": false,
            "arguments": {},
        })).collect::<Vec<_>>(),
        "queues": queues.iter().map(|q| json!({
            "name": q.name,
            "vhost": "/",
            "durable": true,
            "auto_delete": false,
            "arguments": arguments(&q.arguments),
        })).collect::<Vec<_>>(),
        "policies": [{
            "name": "sms-dead-length",
            "vhost": "/",
            "pattern": format!("^{}$", DEAD_LETTER_QUEUE.replace('.', "\\.")),
            "apply-to": "queues",
            "priority": 0,
            "definition": {"max-length": DEAD_LETTER_MAX_LENGTH},
        }],
        "bindings": bindings.iter().map(|b| json!({
            "source": b.exchange,
            "vhost": "/",
            "destination": b.queue,
            "destination_type": "queue",
            "routing_key": b.routing_key,
            "arguments": {},
        })).collect::<Vec<_>>(),
    })
}

/// A queue's `x-` arguments as JSON (strings and integers are all it uses).
fn arguments(table: &FieldTable) -> Value {
    let mut map = Map::new();
    for (key, value) in table.inner() {
        let value = match value {
            AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
            AMQPValue::ShortString(s) => Value::from(s.as_str()),
            AMQPValue::LongLongInt(n) => Value::from(*n),
            AMQPValue::LongInt(n) => Value::from(*n),
            AMQPValue::ShortInt(n) => Value::from(*n),
            AMQPValue::Boolean(b) => Value::from(*b),
            other => Value::from(format!("{other:?}")),
        };
        map.insert(key.as_str().to_owned(), value);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue<'a>(defs: &'a Value, name: &str) -> &'a Value {
        defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("no queue {name}"))
    }

    #[test]
    fn quorum_definitions_name_every_exchange_queue_and_argument() {
        let defs = definitions(QueueType::Quorum);
        let exchanges: Vec<(&str, &str)> = defs["exchanges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["type"].as_str().unwrap()))
            .collect();
        assert_eq!(
            exchanges,
            [
                ("sms", "direct"),
                ("sms.dlx", "fanout"),
                ("sms.events", "topic")
            ]
        );
        let send = &queue(&defs, "sms.send")["arguments"];
        assert_eq!(send["x-queue-type"], "quorum");
        assert_eq!(send["x-dead-letter-exchange"], "sms.dlx");
        assert_eq!(send["x-dead-letter-strategy"], "at-least-once");
        assert_eq!(send["x-overflow"], "reject-publish");
        assert_eq!(send["x-delivery-limit"], 1_000_000);
        assert_eq!(
            queue(&defs, "sms.dead")["arguments"]["x-queue-type"],
            "classic"
        );
        let blocked = &queue(&defs, "sms.blocked")["arguments"];
        assert_eq!(blocked["x-max-length"], 100_000);
        assert_eq!(blocked["x-overflow"], "drop-head");
        for tier in crate::retry::DELAY_TIERS {
            let name = format!("sms.retry.{}s", tier.as_secs());
            let args = &queue(&defs, &name)["arguments"];
            assert_eq!(args["x-message-ttl"], tier.as_millis() as u64);
            assert_eq!(args["x-dead-letter-exchange"], "sms");
            assert_eq!(args["x-dead-letter-routing-key"], "send");
        }
        let bindings: Vec<(&str, &str, &str)> = defs["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["source"].as_str().unwrap(),
                    b["destination"].as_str().unwrap(),
                    b["routing_key"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            bindings,
            [("sms", "sms.send", "send"), ("sms.dlx", "sms.dead", "send")]
        );
    }

    #[test]
    fn a_policy_limits_the_dead_letter_queue_only() {
        let defs = definitions(QueueType::Quorum);
        let policy = &defs["policies"][0];
        assert_eq!(policy["pattern"], "^sms\\.dead$");
        assert_eq!(policy["apply-to"], "queues");
        assert_eq!(policy["definition"]["max-length"], DEAD_LETTER_MAX_LENGTH);
    }

    #[test]
    fn classic_definitions_have_no_quorum_arguments() {
        let defs = definitions(QueueType::Classic);
        let send = &queue(&defs, "sms.send")["arguments"];
        assert_eq!(send["x-queue-type"], "classic");
        assert!(send.get("x-delivery-limit").is_none());
        assert!(send.get("x-dead-letter-strategy").is_none());
    }

    #[test]
    fn the_committed_definitions_file_is_the_commands_output() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/rabbitmq/definitions.json"
        );
        let committed = std::fs::read_to_string(path).expect("deploy/rabbitmq/definitions.json");
        let mut expected = serde_json::to_string_pretty(&definitions(QueueType::Quorum)).unwrap();
        expected.push('\n');
        assert!(
            committed == expected,
            "deploy/rabbitmq/definitions.json differs from `sms-dispatch topology --definitions`: regenerate it with `cargo run -- topology --definitions > deploy/rabbitmq/definitions.json`"
        );
    }
}
