//! sms-dispatch's integration tests, one binary (one link): the real worker
//! binary and commands against the real RabbitMQ and a fake Twilio, one
//! module per contract, with the helpers they share in `support`.

mod architecture;
mod broker_faults;
mod broker_restart;
mod cli;
mod cluster;
mod delivery;
mod dlq;
mod events;
mod fake_twilio;
mod fleet;
mod ingest;
mod limits;
mod observability;
mod receipts;
mod reconcile;
mod support;
mod topology;
mod worker;
