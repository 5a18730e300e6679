//! The dead-letter tools against a real broker: `dlq list` leaves the queue
//! as it was (count and order), even when killed halfway; `dlq replay` moves
//! exactly what was selected, refuses expired jobs and never moves a message
//! twice, even with two replays at once, since one command works on the
//! queue at a time; `dlq purge` needs --yes; logs go to stderr, as JSON
//! without colour when it is not a terminal.
//!
//! A command that must stay mid-run while the test acts is held by its own
//! output: `dlq list` writes its listing while it holds the dead letters, and
//! a listing larger than a pipe's buffer, unread, keeps it there.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use crate::support::*;
use lapin::BasicProperties;
use sms_dispatch::wire::Publisher;
use sms_dispatch::wire::{DeadLetter, Reason};

const SECS: Duration = Duration::from_secs(30);

/// Puts a dead letter in sms.dead the way the worker does.
async fn seed(p: &Publisher, job: &TestJob, reason: Reason, code: Option<u32>, attempts: u32) {
    let original = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(job.id.as_str().into())
        .with_timestamp(sms_dispatch::wire::unix_seconds(SystemTime::now()) - 90);
    let error = match code {
        Some(c) => format!("Twilio {c} (HTTP 400): refused for +1********01"),
        None => format!("{reason} happened"),
    };
    let properties = DeadLetter {
        reason,
        error: &error,
        attempts,
        twilio_code: code,
        first_seen: SystemTime::now(),
    }
    .properties(&original);
    p.publish("sms.dlx", "send", &job.body(), properties)
        .await
        .unwrap();
}

/// A vhost whose `sms.dead` holds `n` dead letters rejected with Twilio's
/// `code`, the connection they were published on, and their jobs in order.
async fn dead_letters(n: usize, code: u32) -> (Vhost, lapin::Connection, Vec<TestJob>) {
    let vhost = Vhost::create();
    let conn = vhost.connect().await;
    let p = vhost.publisher(&conn).await;
    let jobs: Vec<TestJob> = (0..n).map(|_| TestJob::new(&number(), "SignIn")).collect();
    for job in &jobs {
        seed(&p, job, Reason::Rejected, Some(code), 1).await;
    }
    (vhost, conn, jobs)
}

/// The ids of the messages in `queue`, in order (taking them: tests call
/// this last).
async fn ids_in(channel: &lapin::Channel, queue: &str) -> Vec<String> {
    take_all(channel, queue)
        .await
        .iter()
        .map(|m| m.json()["id"].as_str().unwrap_or("?").to_owned())
        .collect()
}

async fn dlq_async(vhost: &Vhost, args: &[&str]) -> (i32, String, String) {
    let url = vhost.url.clone();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut all = vec!["dlq"];
        all.extend(args.iter().map(String::as_str));
        run_cli(&all, &[("SMS_DISPATCH_AMQP_URL", &url)])
    })
    .await
    .unwrap()
}

/// What a dlq command says when another one is working on the queue.
const BUSY: &str = "another dlq command is working on sms.dead";

/// Starts `dlq list` with its output unread: once it has taken the dead
/// letters it writes its listing, and with more of them than a pipe holds it
/// stays there, holding them, until the test reads it ([`wait_cli`]) or kills
/// it.
fn hold_the_queue(vhost: &Vhost) -> std::process::Child {
    cli_command(&["dlq", "list"], &[("SMS_DISPATCH_AMQP_URL", &vhost.url)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_every_dead_letter_masked_and_leaves_the_queue_as_it_was() {
    within(60, async {
        let vhost = Vhost::create();
        let conn = vhost.connect().await;
        let p = vhost.publisher(&conn).await;
        let jobs: Vec<TestJob> = (0..6).map(|_| TestJob::new(&number(), "SignIn")).collect();
        let reasons = [
            (Reason::Rejected, Some(21408)),
            (Reason::Expired, None),
            (Reason::Rejected, Some(21610)),
            (Reason::RetriesExhausted, Some(20503)),
            (Reason::NoTemplate, None),
            (Reason::Rejected, Some(21408)),
        ];
        for (job, (reason, code)) in jobs.iter().zip(reasons) {
            seed(&p, job, reason, code, 1).await;
        }

        let (code, out, err) = dlq_async(&vhost, &["list"]).await;
        assert_eq!(code, 0, "{err}");
        println!("{out}");
        for line in out.lines() {
            assert!(line.chars().count() <= 80, "wider than 80 columns: {line}");
        }
        for job in &jobs {
            assert!(
                !out.contains(job.to.trim_start_matches('+')),
                "unmasked number:\n{out}"
            );
            assert!(!out.contains(&job.code), "a code in the listing:\n{out}");
        }
        assert!(out.contains("+81"), "{out}");
        assert!(out.contains("21408"), "{out}");
        assert!(
            out.contains("geo permissions"),
            "the code's meaning:\n{out}"
        );
        assert!(out.contains("6 dead letters; 6 match, 6 shown"), "{out}");
        assert!(
            out.contains("by reason: expired 1, no_template 1, rejected 3, retries_exhausted 1"),
            "{out}"
        );

        let (code, out, _) = dlq_async(&vhost, &["list", "--json", "--reason", "rejected"]).await;
        assert_eq!(code, 0);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["id"], jobs[0].id.as_str());
        assert_eq!(lines[0]["twilio_code"], 21408);
        assert_eq!(lines[0]["attempts"], 1);
        assert_eq!(lines[0]["body"]["payload"]["code"], "***");
        assert!(lines[0]["body"]["to"].as_str().unwrap().contains("****"));
        assert!(lines[0]["age_secs"].as_u64().unwrap() >= 90);

        let (_, out, _) =
            dlq_async(&vhost, &["list", "--twilio-code", "21408", "--limit", "1"]).await;
        assert!(out.contains("2 match, 1 shown"), "{out}");

        // "Why did +81…78 not get a code?": the operator knows the number.
        let (code, out, _) = dlq_async(&vhost, &["list", "--json", "--to", &jobs[2].to]).await;
        assert_eq!(code, 0);
        let found: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0]["id"], jobs[2].id.as_str());
        assert_eq!(found[0]["twilio_code"], 21610);
        let (code, _, err) = dlq_async(&vhost, &["list", "--to", "nobody"]).await;
        assert_eq!(code, 2, "{err}");

        let channel = conn.create_channel().await.unwrap();
        let ids = ids_in(&channel, "sms.dead").await;
        let expected: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        assert_eq!(ids, expected, "the same messages, in the same order");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_logs_json_without_colour_to_a_redirected_stderr_and_only_the_list_to_stdout() {
    within(60, async {
        let vhost = Vhost::create();
        let conn = vhost.connect().await;
        let p = vhost.publisher(&conn).await;
        let job = TestJob::new(&number(), "SignIn");
        seed(&p, &job, Reason::Rejected, Some(21610), 1).await;
        // No log format set: the command decides from where stderr goes.
        // RUST_LOG=debug makes the broker client log a few lines.
        let (code, out, err) = run_cli_async(
            &["dlq", "list"],
            &[("SMS_DISPATCH_AMQP_URL", &vhost.url), ("RUST_LOG", "debug")],
            Io {
                stderr_to_file: true,
                ..Io::default()
            },
        )
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(
            !err.contains("\x1b["),
            "colour codes in a redirected stderr: {err:?}"
        );
        assert!(!err.trim().is_empty(), "no log lines on stderr");
        for line in err.lines() {
            let log: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
            assert!(
                log["level"].is_string() && log["timestamp"].is_string(),
                "{line}"
            );
        }
        assert!(!out.contains("\x1b["), "{out:?}");
        assert!(out.starts_with("ID "), "the list's header first:\n{out}");
        assert!(out.contains(&job.id), "{out}");
        assert!(out.contains("1 dead letters; 1 match, 1 shown"), "{out}");
        for line in out.lines() {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_err(),
                "a log line on stdout: {line}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_moves_exactly_the_selected_dead_letters_and_refuses_expired_ones() {
    within(60, async {
        let vhost = Vhost::create();
        let conn = vhost.connect().await;
        let p = vhost.publisher(&conn).await;
        let a = TestJob::new(&number(), "SignIn");
        let b = TestJob::new(&number(), "SignIn");
        let c = TestJob::new(&number(), "Register");
        let d = TestJob::new(&number(), "SignIn");
        let stale = TestJob::new(&number(), "SignIn").expired();
        seed(&p, &a, Reason::Rejected, Some(20003), 1).await;
        seed(&p, &b, Reason::Rejected, Some(21610), 1).await;
        seed(&p, &c, Reason::NoTemplate, None, 0).await;
        seed(&p, &d, Reason::RetriesExhausted, Some(20503), 8).await;
        seed(&p, &stale, Reason::Rejected, Some(20003), 1).await;
        let channel = conn.create_channel().await.unwrap();

        let (code, out, err) = dlq_async(&vhost, &["replay", "--id", &b.id, "no-such-job"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("replayed 1 to sms/send"), "{out}");

        let (_, out, _) = dlq_async(&vhost, &["replay", "--all", "--reason", "no_template"]).await;
        assert!(out.contains("replayed 1 to sms/send"), "{out}");

        // "Resend everything that failed with 20003": the stale one is refused.
        let (code, out, _) =
            dlq_async(&vhost, &["replay", "--all", "--twilio-code", "20003"]).await;
        assert_eq!(code, 0);
        assert!(
            out.contains("replayed 1 to sms/send; refused: 1 expired, 0 invalid"),
            "{out}"
        );

        let (_, out, _) = dlq_async(&vhost, &["replay", "--all", "--dry-run"]).await;
        assert!(out.contains("dry run: would replay 1"), "{out}");
        for line in out.lines() {
            assert!(line.chars().count() <= 80, "wider than 80 columns: {line}");
        }
        assert!(out.contains(&d.id), "{out}");

        let moved = take_all(&channel, "sms.send").await;
        let moved_ids: Vec<String> = moved
            .iter()
            .map(|m| m.json()["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(moved_ids, [b.id.clone(), c.id.clone(), a.id.clone()]);
        for m in &moved {
            assert_eq!(
                m.header_str("x-sms-reason"),
                None,
                "dead-letter headers dropped"
            );
            assert_eq!(m.header_i64("x-sms-attempts"), None, "attempts start again");
            let original = [&a, &b, &c]
                .into_iter()
                .find(|j| m.json()["id"] == j.id.as_str())
                .unwrap();
            assert_eq!(m.body, original.body(), "the body is unchanged");
        }
        assert_eq!(
            ids_in(&channel, "sms.dead").await,
            [d.id.clone(), stale.id.clone()]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_needs_yes_and_deletes_only_the_selection() {
    within(60, async {
        let vhost = Vhost::create();
        let conn = vhost.connect().await;
        let p = vhost.publisher(&conn).await;
        let keep = TestJob::new(&number(), "SignIn");
        let gone = TestJob::new(&number(), "SignIn");
        seed(&p, &keep, Reason::Rejected, Some(21610), 1).await;
        seed(&p, &gone, Reason::Expired, None, 0).await;

        let (code, out, err) = dlq_async(&vhost, &["purge", "--all"]).await;
        assert_eq!(code, 2, "without --yes: {out}");
        assert!(err.contains("--yes"), "{err}");
        assert_eq!(vhost.ready("sms.dead").await, 2, "nothing deleted");

        let (code, out, err) =
            dlq_async(&vhost, &["purge", "--all", "--reason", "expired", "--yes"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("deleted 1 dead letters"), "{out}");
        assert!(out.contains(&gone.id), "it prints what it deleted:\n{out}");
        let channel = conn.create_channel().await.unwrap();
        assert_eq!(
            ids_in(&channel, "sms.dead").await,
            std::slice::from_ref(&keep.id)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_list_loses_nothing_and_keeps_the_order() {
    within(120, async {
        let (vhost, conn, jobs) = dead_letters(3000, 21610).await;
        let mut child = hold_the_queue(&vhost);
        let channel = conn.create_channel().await.unwrap();
        // Kill it while it holds the queue: its unread listing keeps it there.
        eventually(SECS, "the listing to hold dead letters", || async {
            let n = ready(&channel, "sms.dead").await;
            (n < 3000).then_some(())
        })
        .await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the listing is still running"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        eventually(SECS, "every dead letter back", || async {
            (ready(&channel, "sms.dead").await == 3000).then_some(())
        })
        .await;
        let ids = ids_in(&channel, "sms.dead").await;
        let expected: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        assert_eq!(ids.len(), expected.len());
        assert!(ids == expected, "the order changed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replays_at_once_move_each_dead_letter_once() {
    within(120, async {
        let (vhost, conn, jobs) = dead_letters(2000, 20003).await;
        let spawn = || {
            cli_command(
                &["dlq", "replay", "--all"],
                &[("SMS_DISPATCH_AMQP_URL", &vhost.url)],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        };
        let (first, second) = (spawn(), spawn());
        let (first, second) = tokio::task::spawn_blocking(move || {
            (
                wait_cli(first, Duration::from_secs(90)),
                wait_cli(second, Duration::from_secs(90)),
            )
        })
        .await
        .unwrap();
        // Each replayed, or found the other at work and stopped (exit 1)
        // having moved nothing.
        let moved_by = |(code, out, err): &(i32, String, String)| -> usize {
            if *code == 1 && err.contains(BUSY) {
                return 0;
            }
            assert_eq!(*code, 0, "{err}");
            let last = out.lines().last().unwrap_or("").to_owned();
            last.strip_prefix("replayed ")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no count in {last:?}"))
        };
        let (a, b) = (moved_by(&first), moved_by(&second));
        println!("the two replays moved {a} and {b}");
        // One command works on the queue at a time: they never split it.
        assert!(a == 0 || b == 0, "the replays split the queue: {a} and {b}");
        assert_eq!(a + b, jobs.len());
        let channel = conn.create_channel().await.unwrap();
        let mut moved = ids_in(&channel, "sms.send").await;
        assert_eq!(
            moved.len(),
            jobs.len(),
            "each dead letter moved exactly once"
        );
        moved.sort();
        moved.dedup();
        assert_eq!(moved.len(), jobs.len(), "no job moved twice");
        assert_eq!(ready(&channel, "sms.dead").await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_dlq_command_stops_while_one_holds_the_queue() {
    within(120, async {
        let (vhost, conn, jobs) = dead_letters(2000, 21610).await;
        let holder = hold_the_queue(&vhost);
        let channel = conn.create_channel().await.unwrap();
        eventually(SECS, "the listing to hold every dead letter", || async {
            (ready(&channel, "sms.dead").await == 0).then_some(())
        })
        .await;
        for args in [&["dlq", "list"][..], &["dlq", "replay", "--all"]] {
            let (code, out, err) = run_cli_async(
                args,
                &[("SMS_DISPATCH_AMQP_URL", &vhost.url)],
                Io::default(),
            )
            .await;
            assert_eq!(code, 1, "{args:?} while another holds sms.dead: {out}");
            assert!(out.is_empty(), "{args:?} reported part of the queue: {out}");
            assert!(err.contains(BUSY), "{args:?}: {err}");
        }
        assert_eq!(ready(&channel, "sms.send").await, 0, "nothing moved");
        // The first one, read at last, lists everything and hands it back.
        let (code, out, err) =
            tokio::task::spawn_blocking(move || wait_cli(holder, Duration::from_secs(60)))
                .await
                .unwrap();
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("2000 dead letters; 2000 match, 2000 shown"),
            "{err}"
        );
        let ids = ids_in(&channel, "sms.dead").await;
        let expected: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        assert!(ids == expected, "the queue changed");
    })
    .await;
}
