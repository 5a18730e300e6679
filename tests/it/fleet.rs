//! Workers sharing what they sent through Redis, against the real broker
//! and a real Redis: a job one worker sent is not sent again by another; a
//! redelivered job whose call is still in flight on a killed worker waits
//! for that worker's lease, then finds the message that call created
//! instead of going out twice; with Redis gone,
//! every code still goes out and the outage is logged once.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

const SECS: Duration = Duration::from_secs(60);

/// Options for a worker that shares the fleet's Redis under `prefix`.
fn with_redis<'a>(
    vhost: &'a Vhost,
    config: &'a ConfigFile,
    twilio: &'a FakeTwilio,
    redis_url: &str,
    prefix: &str,
) -> WorkerOptions<'a> {
    let mut options = WorkerOptions::new(&vhost.url, config, twilio);
    options
        .env
        .push(("SMS_DISPATCH_REDIS_URL", redis_url.to_owned()));
    options
        .env
        .push(("SMS_DISPATCH_REDIS_PREFIX", prefix.to_owned()));
    options
}

/// A key prefix of the test's own, so tests sharing the Redis stay apart.
fn prefix() -> String {
    format!("sms-dispatch-test-{}:", uuid_like())
}

fn uuid_like() -> String {
    format!("{:016x}", fastrand::u64(..))
}

const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";

#[tokio::test(flavor = "multi_thread")]
async fn a_job_one_worker_sent_is_not_sent_again_by_another() {
    within(120, async {
        let vhost = Vhost::create();
        let config = ConfigFile::full();
        let twilio = FakeTwilio::start().await;
        let prefix = prefix();
        let job = TestJob::new(&number(), "SignIn");

        let first =
            WorkerProcess::start_ready(with_redis(&vhost, &config, &twilio, SHARED_REDIS, &prefix))
                .await;
        vhost.publish_all(std::slice::from_ref(&job)).await;
        twilio
            .wait_until(SECS, "the job sent", |r| r.iter().any(|r| r.status == 201))
            .await;
        first.finish().await;

        // The same job again (a producer's retry, or a redelivery after a
        // crash), to a worker with an empty memory.
        let second =
            WorkerProcess::start_ready(with_redis(&vhost, &config, &twilio, SHARED_REDIS, &prefix))
                .await;
        vhost.publish_all(std::slice::from_ref(&job)).await;
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        wait_drained(&channel, &second, SECS).await;
        assert_eq!(twilio.accepted().len(), 1, "sent once by the fleet");
        assert_eq!(
            metric(
                &second.metrics().await,
                "sms_duplicates_suppressed_total",
                "store=\"redis\""
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(&second.metrics().await, "sms_redis_connected", ""),
            Some(1.0)
        );
        let logs = second.finish().await;
        let duplicate = logs
            .iter()
            .find(|l| l["outcome"] == "duplicate")
            .expect("a duplicate line");
        assert_eq!(duplicate["store"], "redis");
        assert!(
            duplicate["span"]["message_sid"]
                .as_str()
                .unwrap_or("")
                .starts_with("SM"),
            "{duplicate}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_in_flight_on_a_killed_worker_waits_for_its_lease() {
    within(180, async {
        let vhost = Vhost::create();
        let config = ConfigFile::full();
        let twilio = FakeTwilio::start().await;
        let prefix = prefix();
        let job = TestJob::new(&number(), "SignIn");

        let mut first =
            WorkerProcess::start_ready(with_redis(&vhost, &config, &twilio, SHARED_REDIS, &prefix))
                .await;
        let mut second =
            WorkerProcess::start_ready(with_redis(&vhost, &config, &twilio, SHARED_REDIS, &prefix))
                .await;
        // The call is in flight at Twilio (held at its gate) when its worker
        // is killed: the broker hands the job to the other worker, which
        // must not send it while the dead worker's lease lives.
        twilio.hold();
        vhost.publish_all(std::slice::from_ref(&job)).await;
        twilio.wait_held(1, SECS, "the call in flight").await;
        // Whichever worker took it is killed.
        let took_it_first = metric(&first.metrics().await, "sms_in_flight", "") == Some(1.0);
        let (victim, survivor) = if took_it_first {
            (&mut first, &mut second)
        } else {
            (&mut second, &mut first)
        };
        victim.kill9();
        victim.wait_exit(SECS).await;
        survivor
            .wait_log(SECS, "the survivor to park the leased job", |l| {
                (l["outcome"] == "parked" && l["span"]["job_id"] == job.id.as_str()).then_some(())
            })
            .await;
        assert_eq!(
            twilio.held(),
            1,
            "no second call while the first one's lease lives"
        );
        twilio.release();
        // The dead worker never recorded its send: once its lease has run
        // out, the survivor finds its attempt marker, asks Twilio's message
        // list, finds the message the dead worker's call created, and acks
        // without a second send.
        eventually(
            Duration::from_secs(90),
            "the job reconciled after the lease",
            || async {
                let found = metric(
                    &survivor.metrics().await,
                    "sms_reconciled_total",
                    "result=\"found\"",
                );
                (found == Some(1.0)).then_some(())
            },
        )
        .await;
        assert_eq!(twilio.messages_to(&job.to), 1, "created once");
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        wait_drained(&channel, survivor, SECS).await;
    })
    .await;
}

/// A Redis of the test's own on `port`, killed on drop.
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (.ci/run installs it)");
        let redis = PrivateRedis { child, port };
        let deadline = std::time::Instant::now() + SECS;
        while !redis.answers() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    fn answers(&self) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_killed_mid_run_every_job_still_goes_out_and_the_outage_is_logged_once() {
    within(180, async {
        let mut redis = tokio::task::spawn_blocking(|| PrivateRedis::start(6391))
            .await
            .unwrap();
        let vhost = Vhost::create();
        let config = ConfigFile::full();
        let twilio = FakeTwilio::start().await;
        let worker = WorkerProcess::start_ready(with_redis(
            &vhost,
            &config,
            &twilio,
            &redis.url(),
            "sms-dispatch:",
        ))
        .await;
        let before: Vec<TestJob> = (0..50).map(|_| TestJob::new(&number(), "SignIn")).collect();
        vhost.publish_all(&before).await;
        twilio
            .wait_until(SECS, "the first jobs sent", |r| {
                r.iter().filter(|r| r.status == 201).count() >= 50
            })
            .await;
        assert_eq!(
            metric(&worker.metrics().await, "sms_redis_connected", ""),
            Some(1.0)
        );

        redis.kill();
        let after: Vec<TestJob> = (0..50).map(|_| TestJob::new(&number(), "SignIn")).collect();
        vhost.publish_all(&after).await;
        twilio
            .wait_until(SECS, "every job sent without Redis", |r| {
                r.iter().filter(|r| r.status == 201).count() >= 100
            })
            .await;
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        wait_drained(&channel, &worker, SECS).await;
        assert_eq!(
            metric(&worker.metrics().await, "sms_redis_connected", ""),
            Some(0.0)
        );
        let accepted = twilio.accepted();
        assert_eq!(accepted.len(), 100, "each job once");
        let logs = worker.finish().await;
        let outage_lines = logs
            .iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Redis does not answer"))
            })
            .count();
        assert_eq!(outage_lines, 1, "the outage is logged once, not per job");
    })
    .await;
}
