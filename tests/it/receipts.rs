//! Delivery receipts: Twilio's status callbacks, signed, reach the worker's
//! public URL; each final status is counted once per message and told to
//! the job's source, however late, repeated or out of order the callbacks
//! come; a forged or replayed callback is refused with 403 and changes
//! nothing.

use std::time::Duration;

use crate::support::*;
use fake_twilio::twilio_signature;

const SECS: Duration = Duration::from_secs(60);

/// A worker whose public URL is its own listener, on a port chosen first.
async fn bed_with_callbacks(twilio: FakeTwilio) -> (TestBed, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public = format!("http://127.0.0.1:{port}");
    let bed = TestBed::start_with(ConfigFile::full(), twilio, |o| {
        o.env
            .push(("SMS_DISPATCH_HTTP_ADDR", format!("127.0.0.1:{port}")));
        o.env.push(("SMS_DISPATCH_PUBLIC_URL", public.clone()));
    })
    .await;
    (bed, public)
}

async fn statuses(bed: &TestBed, status: &str, code: &str) -> Option<f64> {
    metric(
        &bed.worker.metrics().await,
        "sms_delivery_status_total",
        &format!("status=\"{status}\",error_code=\"{code}\""),
    )
}

/// Each event's (`id`, `outcome`), sorted.
fn outcomes(events: &[Taken]) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let j = e.json();
            (
                j["id"].as_str().unwrap().to_owned(),
                j["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn each_final_status_is_counted_once_and_told_to_the_source() {
    within(120, async {
        let twilio = FakeTwilio::start().await;
        // Twilio may post a final status twice.
        twilio.set_callback_repeats(2);
        let (bed, _) = bed_with_callbacks(twilio).await;
        let queue = bind_events(&bed.channel, "default.status.*").await;
        let jobs: Vec<TestJob> = (0..3).map(|_| TestJob::new(&number(), "SignIn")).collect();
        let lost = TestJob::new(&number(), "SignIn");
        bed.twilio
            .set_final_status(&lost.to, "undelivered", Some(30007));
        for job in jobs.iter().chain([&lost]) {
            bed.publish(job).await;
        }
        // Each message: `sent`, then its final status twice.
        eventually(SECS, "every callback posted", || {
            std::future::ready((bed.twilio.callbacks_posted() >= 12).then_some(()))
        })
        .await;
        bed.wait_drained(SECS).await;
        assert_eq!(statuses(&bed, "delivered", "none").await, Some(3.0));
        assert_eq!(statuses(&bed, "undelivered", "30007").await, Some(1.0));
        let delivered_latency = metric(
            &bed.worker.metrics().await,
            "sms_delivery_seconds_count",
            "",
        );
        assert_eq!(delivered_latency, Some(3.0));
        let events = take_at_least(&bed.channel, &queue, 4, SECS).await;
        let mut seen = outcomes(&events);
        seen.dedup();
        assert_eq!(seen.len(), 4, "one status event per message: {seen:?}");
        assert!(seen.contains(&(lost.id.clone(), "undelivered".to_owned())));
        assert_eq!(ready(&bed.channel, &queue).await, 0, "no repeat");
        bed.worker.finish().await;
    })
    .await;
}

/// Late callbacks (well after the ack), each final status posted before
/// `sent` and twice more after it: each message's final status is still
/// counted once and told once, and the `sent` that arrives after the final
/// status changes nothing (no count, no event, no `sent` event of its own).
#[tokio::test(flavor = "multi_thread")]
async fn late_repeated_and_out_of_order_callbacks_count_each_final_status_once() {
    within(120, async {
        let twilio = FakeTwilio::start().await;
        let late = Duration::from_millis(1500);
        twilio.set_callback_delay(late);
        twilio.set_callbacks_out_of_order(true);
        twilio.set_callback_repeats(3);
        let (bed, _) = bed_with_callbacks(twilio).await;
        let everything = bind_events(&bed.channel, "default.#").await;
        let delivered_q = bind_events(&bed.channel, "default.status.delivered").await;
        let delivered: Vec<TestJob> = (0..4).map(|_| TestJob::new(&number(), "SignIn")).collect();
        let lost = TestJob::new(&number(), "SignIn");
        bed.twilio
            .set_final_status(&lost.to, "undelivered", Some(30003));
        for job in delivered.iter().chain([&lost]) {
            bed.publish(job).await;
        }
        // Five messages, each: its final status, `sent`, the final status
        // twice more.
        let posts = 5 * 4;
        eventually(SECS, "every callback posted", || {
            std::future::ready((bed.twilio.callbacks_posted() >= posts).then_some(()))
        })
        .await;
        assert_eq!(
            bed.twilio.callback_answers(),
            [(204, posts)].into(),
            "every callback, the repeats and the late `sent` too, is answered 204"
        );
        bed.wait_drained(SECS).await;
        // Every event confirmed: one `sent` and one status per job.
        let published = |text: &str, outcome: &str| {
            metric(
                text,
                "sms_events_published_total",
                &format!("outcome=\"{outcome}\""),
            )
        };
        let text = eventually(SECS, "every event published", || async {
            let text = bed.worker.metrics().await;
            let done = |outcome| published(&text, outcome).unwrap_or(0.0) >= 5.0;
            (done("sent") && done("status")).then_some(text)
        })
        .await;
        assert_eq!(
            published(&text, "sent"),
            Some(5.0),
            "one sent event per job"
        );
        assert_eq!(
            published(&text, "status"),
            Some(5.0),
            "one status event per job"
        );
        assert_eq!(published(&text, "failed").unwrap_or(0.0), 0.0);
        assert_eq!(statuses(&bed, "delivered", "none").await, Some(4.0));
        assert_eq!(statuses(&bed, "undelivered", "30003").await, Some(1.0));
        assert_eq!(
            metric(&text, "sms_delivery_seconds_count", ""),
            Some(4.0),
            "one latency per delivered message"
        );
        // The latency is publish → Twilio's (late) report.
        let waited = metric(&text, "sms_delivery_seconds_sum", "").unwrap();
        assert!(
            waited >= 4.0 * late.as_secs_f64(),
            "4 delivered messages reported {late:?} late waited {waited} s in all"
        );

        // Exactly one `sent` (the worker's) and one final status per job,
        // nothing else for this source.
        let seen = outcomes(&take_all(&bed.channel, &everything).await);
        let mut expected: Vec<(String, String)> = delivered
            .iter()
            .map(|j| (j.id.clone(), "delivered".to_owned()))
            .chain([(lost.id.clone(), "undelivered".to_owned())])
            .chain(
                delivered
                    .iter()
                    .chain([&lost])
                    .map(|j| (j.id.clone(), "sent".to_owned())),
            )
            .collect();
        expected.sort();
        assert_eq!(
            seen, expected,
            "one sent and one final status event per job"
        );
        let mut told: Vec<String> = take_all(&bed.channel, &delivered_q)
            .await
            .iter()
            .map(|e| e.json()["id"].as_str().unwrap().to_owned())
            .collect();
        told.sort();
        let mut ids: Vec<String> = delivered.iter().map(|j| j.id.clone()).collect();
        ids.sort();
        assert_eq!(
            told, ids,
            "one default.status.delivered event per delivered job"
        );
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_or_replayed_callback_is_refused_and_changes_nothing() {
    within(60, async {
        let twilio = FakeTwilio::start().await;
        let (bed, public) = bed_with_callbacks(twilio).await;
        let client = reqwest::Client::new();
        let form: Vec<(String, String)> = [
            ("MessageSid", "SM00000000000000000000000000000001"),
            ("MessageStatus", "delivered"),
            ("To", "+819012345678"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let signed_for = format!("{public}/v1/twilio/status?id=job-a&type=SignIn");
        let good = twilio_signature(TEST_AUTH_TOKEN, &signed_for, &form);
        let cases = [
            // No signature at all.
            (signed_for.clone(), None),
            // Signed with another token.
            (
                signed_for.clone(),
                Some(twilio_signature("not-the-token", &signed_for, &form)),
            ),
            // A real signature replayed to another URL (another job id).
            (
                format!("{public}/v1/twilio/status?id=job-b&type=SignIn"),
                Some(good.clone()),
            ),
        ];
        for (url, signature) in cases {
            let mut request = client.post(&url).form(&form);
            if let Some(signature) = signature {
                request = request.header("X-Twilio-Signature", signature);
            }
            assert_eq!(
                request.send().await.unwrap().status().as_u16(),
                403,
                "{url}"
            );
        }
        assert_eq!(statuses(&bed, "delivered", "none").await, Some(0.0));
        // The genuine one is taken.
        let response = client
            .post(&signed_for)
            .header("X-Twilio-Signature", good)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 204);
        assert_eq!(statuses(&bed, "delivered", "none").await, Some(1.0));
        bed.worker.finish().await;
    })
    .await;
}
