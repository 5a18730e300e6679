//! The Redis side of duplicate protection: one small Lua script per step,
//! so no read-then-write race between workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};

use crate::job::JobId;
use crate::observe::metrics::Metrics;

/// Where the fleet's shared state lives.
#[derive(Clone)]
pub(crate) struct RedisSettings {
    /// `redis://host:6379/0` (it may hold a password).
    pub(crate) url: SecretString,
    /// Prepended to every key, so fleets sharing a Redis stay apart.
    pub(crate) prefix: String,
}

impl RedisSettings {
    /// The URL with any password replaced by `***`, for logs.
    pub(crate) fn url_for_logs(&self) -> String {
        crate::amqp::redact_url_password(self.url.expose_secret())
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.url_for_logs())
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// How long one Redis command may take before the worker stops waiting and
/// falls back to its own memory for that job.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a sent record outlives the job's expiry: a redelivery after
/// that is refused as expired anyway.
const RECORD_MARGIN: Duration = Duration::from_secs(300);

/// How long an attempt marker is kept: longer than any job may live.
const MARKER_TTL: Duration = Duration::from_secs(2 * 86_400);

/// Before a call: is the id sent? Else lease it, and mark the attempt (the
/// first marker stays: it dates the oldest attempt that may have sent).
/// KEYS: sent, lease, attempt. ARGV: token, lease ms, marker ms, now ms.
/// Returns {"sent", sid} | {"busy", ""} | {"leased", earlier marker or ""}.
const CHECK_AND_LEASE: &str = r#"
local sid = redis.call('GET', KEYS[1])
if sid then return {'sent', sid} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local earlier = redis.call('GET', KEYS[3])
  if earlier then return {'leased', earlier} end
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3])
  return {'leased', ''}
end
return {'busy', ''}
"#;

/// Before a call that followed a reconciliation: the lease lives on for
/// the call. KEYS: lease. ARGV: token, lease ms.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// After Twilio's 201: record the SID, end our lease.
/// KEYS: sent, lease. ARGV: sid, record ms, token.
const RECORD_SENT: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"#;

/// After a failed call: end our lease (only ours); after a failure that
/// certainly sent nothing, also the attempt marker this attempt wrote.
/// KEYS: lease, attempt. ARGV: token, '1' when nothing was sent, our marker.
const RELEASE: &str = r#"
if ARGV[2] == '1' and ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Takes quotas only when every one of them has room: all or nothing.
/// KEYS: counters. ARGV: for each key, limit, ttl ms, cost.
/// Returns 0 when taken, else the 1-based index of the first full one.
const TAKE_QUOTAS: &str = r#"
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 3
  local limit = tonumber(ARGV[base + 1])
  local cost = tonumber(ARGV[base + 3])
  local used = tonumber(redis.call('GET', key) or '0')
  if used + cost > limit then return i end
end
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 3
  local after = redis.call('INCRBY', key, ARGV[base + 3])
  if after == tonumber(ARGV[base + 3]) then redis.call('PEXPIRE', key, ARGV[base + 2]) end
end
return 0
"#;

/// One counter of a quota: at most `limit` in all, this use costs `cost`,
/// and the counter lives `ttl` from its first use.
#[derive(Debug, Clone)]
pub(crate) struct Quota {
    /// The counter's key, without the fleet's prefix.
    pub(crate) key: String,
    pub(crate) limit: u64,
    pub(crate) cost: u64,
    pub(crate) ttl: Duration,
}

/// What Redis says about an id right before a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseCheck {
    /// Sent already (by any worker), as this message.
    Sent { sid: String },
    /// Another worker's call for it is in flight (its lease is live).
    Busy,
    /// Ours to send: the lease is held until it is recorded or released.
    /// `earlier` dates an earlier attempt that may have sent (its marker
    /// is there, but no sent record): the call must be reconciled first.
    Leased {
        /// The lease.
        lease: Lease,
        /// The first attempt's time, when an earlier attempt left a marker.
        earlier: Option<SystemTime>,
    },
    /// Redis did not answer: decide from this process's memory.
    Unavailable,
}

/// A lease on a job id, held by this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    token: String,
    /// The attempt marker this attempt wrote (empty when one was there).
    marker: String,
}

/// The fleet's record of sends in Redis. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RedisStore {
    /// `None` until the first connection is up; the connection manager
    /// reconnects by itself after that.
    connection: Arc<RwLock<Option<ConnectionManager>>>,
    prefix: Arc<str>,
    /// Whether the last command got an answer (logged once per change).
    up: Arc<AtomicBool>,
    metrics: Metrics,
    check_and_lease: Arc<redis::Script>,
    record_sent: Arc<redis::Script>,
    release: Arc<redis::Script>,
    renew: Arc<redis::Script>,
    take_quotas: Arc<redis::Script>,
}

impl RedisStore {
    /// A store for `settings`. Fails only when the URL is not a Redis URL:
    /// a Redis that does not answer yet is an outage, not a reason to stop
    /// sending codes. The first connection is made in the background,
    /// tried again every 2 s until it is up; the connection manager
    /// reconnects by itself after that.
    pub(crate) fn connect(
        settings: &RedisSettings,
        metrics: Metrics,
    ) -> Result<RedisStore, redis::RedisError> {
        let client = redis::Client::open(settings.url.expose_secret())?;
        metrics.redis_connected.set(0);
        let store = RedisStore {
            connection: Arc::new(RwLock::new(None)),
            prefix: Arc::from(settings.prefix.as_str()),
            up: Arc::new(AtomicBool::new(false)),
            metrics,
            check_and_lease: Arc::new(redis::Script::new(CHECK_AND_LEASE)),
            record_sent: Arc::new(redis::Script::new(RECORD_SENT)),
            release: Arc::new(redis::Script::new(RELEASE)),
            renew: Arc::new(redis::Script::new(RENEW)),
            take_quotas: Arc::new(redis::Script::new(TAKE_QUOTAS)),
        };
        let slot = Arc::clone(&store.connection);
        let shown = settings.url_for_logs();
        tokio::spawn(async move {
            let mut said = false;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(COMMAND_TIMEOUT))
                .set_number_of_retries(1);
            loop {
                match client
                    .get_connection_manager_with_config(config.clone())
                    .await
                {
                    Ok(connection) => {
                        *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(connection);
                        return;
                    }
                    Err(error) => {
                        if !std::mem::replace(&mut said, true) {
                            warn!(
                                redis = shown.as_str(),
                                error = %error,
                                "Redis does not answer yet; each worker protects against duplicates from its own memory until it does"
                            );
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        });
        Ok(store)
    }

    /// The connection, once the first one is up.
    fn connection(&self) -> Result<ConnectionManager, String> {
        self.connection
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| "not connected yet".to_owned())
    }

    /// Runs one script invocation with a deadline.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut connection = self.connection()?;
        tokio::time::timeout(
            COMMAND_TIMEOUT * 2,
            invocation.invoke_async(&mut connection),
        )
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()))
    }

    fn key(&self, kind: &str, id: &JobId) -> String {
        format!("{}{kind}:{}", self.prefix, id.as_str())
    }

    /// Notes whether Redis answered; logs once per change.
    fn answered<T>(&self, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    info!("Redis answers; duplicate protection is fleet-wide");
                    self.metrics.redis_connected.set(1);
                }
                Some(value)
            }
            Err(error) => {
                if self.up.swap(false, Ordering::Relaxed) {
                    warn!(
                        error = error.as_str(),
                        "Redis does not answer; each worker protects against duplicates from its own memory until it is back"
                    );
                    self.metrics.redis_connected.set(0);
                }
                None
            }
        }
    }

    /// Right before a call for `id`: sent already, leased elsewhere, or
    /// leased to us for `lease_for` (and an attempt marker written).
    pub(crate) async fn check_and_lease(&self, id: &JobId, lease_for: Duration) -> LeaseCheck {
        let token = uuid::Uuid::new_v4().to_string();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut invocation = self.check_and_lease.prepare_invoke();
        invocation
            .key(self.key("sent", id))
            .key(self.key("lease", id))
            .key(self.key("attempt", id))
            .arg(&token)
            .arg(millis(lease_for))
            .arg(millis(MARKER_TTL))
            .arg(now.to_string());
        let result: Result<(String, String), String> = self.run(invocation).await;
        match self.answered(result) {
            Some((state, sid)) if state == "sent" => LeaseCheck::Sent { sid },
            Some((state, earlier)) if state == "leased" => {
                let earlier_at = earlier
                    .parse::<u64>()
                    .ok()
                    .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
                LeaseCheck::Leased {
                    lease: Lease {
                        token,
                        marker: if earlier_at.is_some() {
                            String::new()
                        } else {
                            now.to_string()
                        },
                    },
                    earlier: earlier_at,
                }
            }
            Some(_) => LeaseCheck::Busy,
            None => LeaseCheck::Unavailable,
        }
    }

    /// After Twilio's 201: records `sid` for `id` until `until` (plus a
    /// margin) and ends `lease`. A failure is logged by the outage log.
    pub(crate) async fn record_sent(
        &self,
        id: &JobId,
        sid: &str,
        until: SystemTime,
        lease: Option<&Lease>,
    ) {
        let keep = until.duration_since(SystemTime::now()).unwrap_or_default() + RECORD_MARGIN;
        let mut invocation = self.record_sent.prepare_invoke();
        invocation
            .key(self.key("sent", id))
            .key(self.key("lease", id))
            .arg(sid)
            .arg(millis(keep))
            .arg(lease.map_or("", |l| l.token.as_str()));
        let result: Result<i64, String> = self.run(invocation).await;
        self.answered(result);
    }

    /// Takes every quota in `quotas` if all have room. `Some(None)`: taken;
    /// `Some(Some(i))`: `quotas[i]` is full and nothing was taken; `None`:
    /// Redis did not answer.
    pub(crate) async fn take_quotas(&self, quotas: &[Quota]) -> Option<Option<usize>> {
        let mut invocation = self.take_quotas.prepare_invoke();
        for quota in quotas {
            invocation
                .key(format!("{}{}", self.prefix, quota.key))
                .arg(quota.limit)
                .arg(millis(quota.ttl))
                .arg(quota.cost);
        }
        let result: Result<i64, String> = self.run(invocation).await;
        self.answered(result)
            .map(|full| usize::try_from(full).ok().filter(|&i| i > 0).map(|i| i - 1))
    }

    /// Marks `key` (without the prefix) seen for `ttl`: `Some(true)` the
    /// first time, `Some(false)` after that, `None` when Redis did not
    /// answer. One `SET NX`.
    pub(crate) async fn first_time(&self, key: &str, ttl: Duration) -> Option<bool> {
        let result: Result<Option<String>, String> = match self.connection() {
            Err(e) => Err(e),
            Ok(mut connection) => tokio::time::timeout(
                COMMAND_TIMEOUT * 2,
                redis::cmd("SET")
                    .arg(format!("{}{key}", self.prefix))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .query_async(&mut connection),
            )
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string())),
        };
        self.answered(result).map(|set| set.is_some())
    }

    /// Makes `lease` live `lease_for` from now (after a reconciliation,
    /// right before the call).
    pub(crate) async fn renew(&self, id: &JobId, lease: &Lease, lease_for: Duration) {
        let mut invocation = self.renew.prepare_invoke();
        invocation
            .key(self.key("lease", id))
            .arg(&lease.token)
            .arg(millis(lease_for));
        let result: Result<i64, String> = self.run(invocation).await;
        self.answered(result);
    }

    /// After a failed call: ends `lease` so the job's next attempt (here or
    /// on another worker) need not wait for it to expire. `nothing_sent`:
    /// the failure proves no message was created (a 4xx, a refused
    /// connection), so this attempt's marker goes too.
    pub(crate) async fn release(&self, id: &JobId, lease: &Lease, nothing_sent: bool) {
        let mut invocation = self.release.prepare_invoke();
        invocation
            .key(self.key("lease", id))
            .key(self.key("attempt", id))
            .arg(&lease.token)
            .arg(if nothing_sent { "1" } else { "0" })
            .arg(&lease.marker);
        let result: Result<i64, String> = self.run(invocation).await;
        self.answered(result);
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared Redis on this machine, under a prefix of the test's own.
    async fn store() -> Option<RedisStore> {
        let settings = RedisSettings {
            url: SecretString::from("redis://127.0.0.1:6379/0"),
            prefix: format!("sms-dispatch-test-{}:", uuid::Uuid::new_v4()),
        };
        let store = RedisStore::connect(&settings, Metrics::new()).ok()?;
        // Wait (briefly) for the background connection.
        let id = JobId::parse("probe").unwrap();
        for _ in 0..100 {
            if store.check_and_lease(&id, Duration::from_secs(1)).await != LeaseCheck::Unavailable {
                return Some(store);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    #[tokio::test]
    async fn a_sent_id_is_sent_and_a_leased_id_is_busy_for_everyone_else() {
        let store = store()
            .await
            .expect("Redis on 127.0.0.1:6379 (.ci/run starts it)");
        let id = JobId::parse("job-1").unwrap();
        let LeaseCheck::Leased {
            lease,
            earlier: None,
        } = store.check_and_lease(&id, Duration::from_secs(30)).await
        else {
            panic!("a fresh id is ours to send");
        };
        assert_eq!(
            store.check_and_lease(&id, Duration::from_secs(30)).await,
            LeaseCheck::Busy,
            "a second worker must not send it while the first one's call is in flight"
        );
        store
            .record_sent(
                &id,
                "SM123",
                SystemTime::now() + Duration::from_secs(60),
                Some(&lease),
            )
            .await;
        assert_eq!(
            store.check_and_lease(&id, Duration::from_secs(30)).await,
            LeaseCheck::Sent {
                sid: "SM123".to_owned()
            }
        );
    }

    #[tokio::test]
    async fn a_released_lease_frees_the_id_and_only_its_holder_can_release_it() {
        let store = store()
            .await
            .expect("Redis on 127.0.0.1:6379 (.ci/run starts it)");
        let id = JobId::parse("job-2").unwrap();
        let LeaseCheck::Leased {
            lease,
            earlier: None,
        } = store.check_and_lease(&id, Duration::from_secs(30)).await
        else {
            panic!("a fresh id is ours to send");
        };
        let stranger = Lease {
            token: "not-the-holder".to_owned(),
            marker: String::new(),
        };
        store.release(&id, &stranger, true).await;
        assert_eq!(
            store.check_and_lease(&id, Duration::from_secs(30)).await,
            LeaseCheck::Busy
        );
        // A call that may have sent: the next attempt learns when it was.
        store.release(&id, &lease, false).await;
        let LeaseCheck::Leased {
            lease,
            earlier: Some(_),
        } = store.check_and_lease(&id, Duration::from_secs(30)).await
        else {
            panic!("the earlier attempt's marker must show");
        };
        store.release(&id, &lease, true).await;
        // That marker stays, even after a later attempt that certainly sent
        // nothing.
        assert!(matches!(
            store.check_and_lease(&id, Duration::from_secs(30)).await,
            LeaseCheck::Leased {
                earlier: Some(_),
                ..
            }
        ));
    }

    #[tokio::test]
    async fn an_attempt_that_certainly_sent_nothing_leaves_no_marker() {
        let store = store()
            .await
            .expect("Redis on 127.0.0.1:6379 (.ci/run starts it)");
        let id = JobId::parse("job-5").unwrap();
        let LeaseCheck::Leased { lease, .. } =
            store.check_and_lease(&id, Duration::from_secs(30)).await
        else {
            panic!("fresh");
        };
        store.release(&id, &lease, true).await;
        assert!(matches!(
            store.check_and_lease(&id, Duration::from_secs(30)).await,
            LeaseCheck::Leased { earlier: None, .. }
        ));
    }

    #[tokio::test]
    async fn two_fleets_with_other_prefixes_never_see_each_other() {
        let (a, b) = (
            store().await.expect("Redis on 127.0.0.1:6379"),
            store().await.expect("Redis on 127.0.0.1:6379"),
        );
        let id = JobId::parse("job-3").unwrap();
        let LeaseCheck::Leased { lease, .. } =
            a.check_and_lease(&id, Duration::from_secs(30)).await
        else {
            panic!("fresh");
        };
        a.record_sent(&id, "SM1", SystemTime::now(), Some(&lease))
            .await;
        assert!(matches!(
            b.check_and_lease(&id, Duration::from_secs(30)).await,
            LeaseCheck::Leased { earlier: None, .. }
        ));
    }

    #[tokio::test]
    async fn a_redis_that_does_not_answer_is_unavailable_not_an_error() {
        let settings = RedisSettings {
            // Nothing listens there.
            url: SecretString::from("redis://127.0.0.1:1/0"),
            prefix: "sms-dispatch-test:".to_owned(),
        };
        let metrics = Metrics::new();
        let store = RedisStore::connect(&settings, metrics.clone()).expect("a Redis URL");
        let id = JobId::parse("job-4").unwrap();
        assert_eq!(
            store.check_and_lease(&id, Duration::from_secs(1)).await,
            LeaseCheck::Unavailable
        );
        assert_eq!(metrics.redis_connected.get(), 0);
    }
}
