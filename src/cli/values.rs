//! The closed sets an operator types at the command line, as clap value
//! enums: help and shell completions list them, and a typo is refused by
//! clap with the list of what is accepted.

use clap::ValueEnum;
use clap::builder::PossibleValue;

use crate::amqp::dead_letter::Reason;
use crate::job::TemplateType;

/// `run --role`: which half of the worker a process runs (contract section
/// 5). A fleet paused on a Twilio account fault is not ready; running the
/// HTTP side apart keeps the ingest and Twilio's callbacks served meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(super) enum Role {
    /// Both: consume `sms.send` and serve the ingest and callbacks.
    #[default]
    All,
    /// Only consume `sms.send` (the HTTP listener serves metrics and health).
    Worker,
    /// Only the HTTP side: ingest, Twilio's callbacks, metrics and health.
    Http,
}

impl Role {
    /// Whether this role consumes `sms.send`.
    pub(super) fn consumes(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }

    /// Whether this role serves the ingest and Twilio's callbacks.
    pub(super) fn serves_http(self) -> bool {
        matches!(self, Role::All | Role::Http)
    }
}

/// `--type`: one of Logto's template types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TypeArg(pub(crate) TemplateType);

static TYPES: [TypeArg; 9] = [
    TypeArg(TemplateType::SignIn),
    TypeArg(TemplateType::Register),
    TypeArg(TemplateType::ForgotPassword),
    TypeArg(TemplateType::Generic),
    TypeArg(TemplateType::OrganizationInvitation),
    TypeArg(TemplateType::UserPermissionValidation),
    TypeArg(TemplateType::BindNewIdentifier),
    TypeArg(TemplateType::MfaVerification),
    TypeArg(TemplateType::BindMfa),
];

impl ValueEnum for TypeArg {
    fn value_variants<'a>() -> &'a [Self] {
        &TYPES
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.as_str()))
    }
}

/// `--reason`: why a message is in the dead-letter queue. Ours (the
/// contract's `x-sms-reason`), or the broker's own for a message RabbitMQ
/// dead-lettered itself (`x-death`), written `broker:<reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReasonArg {
    /// A reason the worker wrote.
    Ours(Reason),
    /// A reason the broker wrote.
    Broker(&'static str),
}

static REASONS: [ReasonArg; 10] = [
    ReasonArg::Ours(Reason::InvalidJob),
    ReasonArg::Ours(Reason::NoTemplate),
    ReasonArg::Ours(Reason::Expired),
    ReasonArg::Ours(Reason::Rejected),
    ReasonArg::Ours(Reason::RetriesExhausted),
    ReasonArg::Ours(Reason::Blocked),
    ReasonArg::Broker("broker:rejected"),
    ReasonArg::Broker("broker:expired"),
    ReasonArg::Broker("broker:maxlen"),
    ReasonArg::Broker("broker:delivery_limit"),
];

impl ReasonArg {
    /// The spelling in the dead letter's headers (and `dlq list`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ReasonArg::Ours(reason) => reason.as_str(),
            ReasonArg::Broker(text) => text,
        }
    }
}

impl ValueEnum for ReasonArg {
    fn value_variants<'a>() -> &'a [Self] {
        &REASONS
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_and_reason_is_offered() {
        for kind in TemplateType::ALL {
            assert!(TYPES.contains(&TypeArg(kind)), "{kind} missing");
        }
        for reason in Reason::ALL {
            assert!(
                REASONS.contains(&ReasonArg::Ours(reason)),
                "{reason} missing"
            );
        }
    }
}
