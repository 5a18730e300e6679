//! What the fleet shares: which jobs were sent, and which are being sent
//! right now, so that no two workers send one job.
//!
//! With `SMS_DISPATCH_REDIS_URL` the record lives in Redis, under the
//! configured prefix: after Twilio's 201 the job id is recorded with its
//! message SID until the job expires (plus a margin); right before each call a
//! short lease on the id is taken, so that two workers holding the same
//! redelivered job (normal right after a `kill -9`) cannot both send it; an
//! attempt marker says that a call may have been made. Each step is one
//! atomic script. When Redis does not answer, the worker falls back to its
//! own memory (the code still has to go out), says so once per outage and
//! shows it in `sms_redis_connected`.

mod redis_store;

pub(crate) use redis_store::{LeaseCheck, Quota, RedisSettings, RedisStore};
