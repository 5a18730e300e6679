//! Delivery receipts: Twilio's status callbacks, signed, reach the worker's
//! public URL; each final status is counted once per message and told to
//! the job's source; a forged or replayed callback is refused with 403 and
//! changes nothing.

use std::time::Duration;

use crate::support::*;
use fake_twilio::twilio_signature;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

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

#[tokio::test(flavor = "multi_thread")]
async fn each_final_status_is_counted_once_and_told_to_the_source() {
    within(120, async {
        let twilio = FakeTwilio::start().await;
        // Twilio may post a final status twice.
        twilio.set_callback_repeats(2);
        let (bed, _) = bed_with_callbacks(twilio).await;
        let queue = format!("receipts-{:08x}", fastrand::u32(..));
        bed.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        bed.channel
            .queue_bind(
                queue.as_str().into(),
                "sms.events".into(),
                "default.status.*".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
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
        seen.dedup();
        assert_eq!(seen.len(), 4, "one status event per message: {seen:?}");
        assert!(seen.contains(&(lost.id.clone(), "undelivered".to_owned())));
        assert_eq!(ready(&bed.channel, &queue).await, 0, "no repeat");
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
