#!/usr/bin/env python3
"""Learn what became of your service's SMS codes: subscribe to sms-dispatch's
outcome events (docs/receipts-and-events.md).

Publish your jobs with the AMQP property app_id set to your service's name
(e.g. "billing"); this script then receives one event per outcome of each of
them: "sent", "dead_lettered" (with a "reason") and, when the worker gets
Twilio's delivery receipts, "delivered", "undelivered" or "failed" (with
Twilio's "twilio_code"). The number in an event is masked; the code is never
in one.

    python3 -m pip install pika
    python3 subscribe.py --url amqp://user:pass@rabbitmq:5672/%2f --source billing

Copy it and replace handle() with what your service does. sms-dispatch's
tests run this very file against a real worker (tests/it/events.rs).
"""

import argparse
import json
import sys

import pika


def handle(event):
    """What your service does with an outcome: here, print it as one JSON line."""
    print(json.dumps(event, sort_keys=True), flush=True)


def main():
    parser = argparse.ArgumentParser(description="Subscribe to sms-dispatch's outcome events.")
    parser.add_argument("--url", default="amqp://guest:guest@localhost:5672/%2f")
    parser.add_argument("--source", default="default", help="your jobs' app_id")
    parser.add_argument("--queue", help="your queue (default: <source>.sms-outcomes)")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after this many distinct events (default: never)")
    args = parser.parse_args()
    queue = args.queue or f"{args.source}.sms-outcomes"

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    # The exchange as the worker declares it, so either may start first.
    channel.exchange_declare("sms.events", "topic", durable=True)
    # A durable queue of your own: events wait in it while your service is
    # down. Bind only your own source; other services' events never reach you.
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, "sms.events", routing_key=f"{args.source}.#")
    channel.basic_qos(prefetch_count=100)
    print("ready", file=sys.stderr, flush=True)

    # Events may repeat (a redelivery): handle each (id, outcome) once. A
    # real service keeps this in its database (a unique key) or in Redis
    # (SET NX with a day's expiry), so that it survives a restart.
    seen = set()

    def on_event(channel, method, properties, body):
        try:
            event = json.loads(body)
            key = (event["id"], event["outcome"])
        except (ValueError, KeyError, TypeError):
            print(f"not an outcome event: {body[:200]!r}", file=sys.stderr)
            key = None
        if key is not None and key not in seen:
            handle(event)
            seen.add(key)
        # Ack only once handled: if this process dies first, the event comes back.
        channel.basic_ack(method.delivery_tag)
        if args.count and len(seen) >= args.count:
            channel.stop_consuming()

    channel.basic_consume(queue, on_event)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        channel.stop_consuming()
    connection.close()


if __name__ == "__main__":
    main()
