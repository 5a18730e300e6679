//! Abuse limits: SMS pumping and per-user floods stopped before they cost
//! money.
//!
//! [`LimitRules`] are the configured rules (sends per destination number and
//! per client IP per window, a country allow or deny list, a budget of
//! segments per country per hour); [`Limiter`] applies them, fleet-wide
//! through Redis when it is configured (one atomic script), per process
//! otherwise. The region of a number comes from libphonenumber's metadata
//! (`phonenumber`), not from a prefix table of our own: +1 alone covers the
//! US, Canada and a score of Caribbean nations.

mod limiter;
mod region;
mod rules;

pub(crate) use limiter::{Limiter, Refusal};
pub(crate) use region::{load_metadata, region_of};
pub(crate) use rules::{CountryRule, LimitRules, Window};
