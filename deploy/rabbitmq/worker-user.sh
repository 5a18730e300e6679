#!/usr/bin/env bash
# Creates (or updates) the least-privilege RabbitMQ user the workers and the
# sms-dispatch commands connect as: it may declare, publish to and read only
# the sms* exchanges and queues (and publish through the default exchange,
# which parks retries and refused jobs), and has no management tags.
#
#   RABBITMQ_WORKER_PASSWORD=... deploy/rabbitmq/worker-user.sh [USER] [VHOST]
#
# USER defaults to sms-dispatch, VHOST to /. Run it where rabbitmqctl reaches
# the broker; the password is read from the environment, not the command line.
set -euo pipefail

user=${1:-sms-dispatch}
vhost=${2:-/}
: "${RABBITMQ_WORKER_PASSWORD:?set RABBITMQ_WORKER_PASSWORD}"

if rabbitmqctl -q list_users | awk '{print $1}' | grep -qx -- "$user"; then
  printf '%s' "$RABBITMQ_WORKER_PASSWORD" | rabbitmqctl -q change_password "$user"
else
  printf '%s' "$RABBITMQ_WORKER_PASSWORD" | rabbitmqctl -q add_user "$user"
fi
rabbitmqctl -q set_user_tags "$user"
# configure: declare the topology; write: publish (sms, sms.dlx, sms.events,
# the default exchange) and bind queues; read: consume and bind.
rabbitmqctl -q set_permissions -p "$vhost" "$user" \
  '^sms(\..+)?$' \
  '^(sms(\..+)?|amq\.default)$' \
  '^sms(\..+)?$'
