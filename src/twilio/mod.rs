//! Twilio: the Messages API client, its settings, and the table that says
//! what each Twilio error means for the job (retry, give up, or pause).
//!
//! The client only reports what Twilio answered ([`SendError`]); deciding what
//! an answer means is [`classify`]'s table, one row per Twilio code.

pub(crate) mod classify;
mod client;
mod list;
mod settings;
pub(crate) mod signature;

pub(crate) use classify::Class;
pub(crate) use client::{Accepted, Outgoing, SendError, TwilioClient};
pub(crate) use list::Listed;
pub(crate) use settings::{DEFAULT_TWILIO_BASE_URL, Sender, TwilioAuth, TwilioSettings};
