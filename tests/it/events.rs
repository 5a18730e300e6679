//! Outcome events against a real broker: a service bound to `sms.events`
//! learns each job's outcome once, routed by its source (the job's
//! `app_id`), with the number masked and no code in it.

use std::time::Duration;

use crate::support::*;

const SECS: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn each_outcome_is_one_event_routed_by_its_source() {
    within(120, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        let sent_q = bind_events(&bed.channel, "default.sent").await;
        let dead_q = bind_events(&bed.channel, "default.dead_lettered.*").await;
        let billing_q = bind_events(&bed.channel, "billing.#").await;

        let plain: Vec<TestJob> = (0..3).map(|_| TestJob::new(&number(), "SignIn")).collect();
        for job in &plain {
            bed.publish(job).await;
        }
        let refused = TestJob::new(&number(), "SignIn");
        bed.twilio.script(&refused.to, [Reply::error(400, 21211)]);
        bed.publish(&refused).await;
        // A job from another service names itself in app_id.
        let billing = TestJob::new(&number(), "SignIn");
        publish_from(&bed.channel, &billing, "billing").await;

        let sent = take_at_least(&bed.channel, &sent_q, 3, SECS).await;
        let dead = take_at_least(&bed.channel, &dead_q, 1, SECS).await;
        let theirs = take_at_least(&bed.channel, &billing_q, 1, SECS).await;
        bed.wait_drained(SECS).await;

        let mut ids: Vec<String> = sent
            .iter()
            .map(|e| e.json()["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        let mut expected: Vec<String> = plain.iter().map(|j| j.id.clone()).collect();
        expected.sort();
        assert_eq!(ids, expected, "one sent event per sent job");
        for event in &sent {
            let body = event.json();
            assert_eq!(body["outcome"], "sent");
            assert!(body["message_sid"].as_str().unwrap().starts_with("SM"));
            assert_eq!(body["type"], "SignIn");
            assert!(body["to"].as_str().unwrap().contains('*'), "masked: {body}");
            assert!(body["at"].is_string() && body["attempts"] == 1, "{body}");
        }
        let dead = dead[0].json();
        assert_eq!(dead["id"], refused.id.as_str());
        assert_eq!(dead["outcome"], "dead_lettered");
        assert_eq!(dead["reason"], "rejected");
        assert_eq!(dead["twilio_code"], 21211);
        assert_eq!(theirs.len(), 1);
        assert_eq!(theirs[0].json()["id"], billing.id.as_str());
        // Nothing else was published under those keys, and no event carries
        // a code or a full number (the log scan checks the worker's side).
        assert_eq!(ready(&bed.channel, &sent_q).await, 0);
        for event in sent.iter().chain(theirs.iter()) {
            let text = String::from_utf8_lossy(&event.body).into_owned();
            for job in plain.iter().chain([&billing]) {
                assert!(!text.contains(&job.code), "a code in an event: {text}");
                assert!(!text.contains(&job.to[3..]), "a number in an event: {text}");
            }
        }
        assert_eq!(
            metric(
                &bed.worker.metrics().await,
                "sms_events_published_total",
                "outcome=\"sent\""
            ),
            Some(4.0)
        );
        bed.worker.finish().await;
    })
    .await;
}
