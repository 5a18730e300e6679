//! `topology --definitions` against the real broker: the printed definitions
//! import into a fresh vhost with `rabbitmqctl import_definitions`, and a
//! worker then starts on that vhost. A worker refuses to start when a queue
//! exists with other arguments (PRECONDITION_FAILED), so its start proves
//! the definitions match what the code declares.

use std::time::Duration;

use crate::support::*;
use serde_json::Value;

/// The definitions with every `"vhost": "/"` moved to `vhost`.
fn for_vhost(mut defs: Value, vhost: &str) -> Value {
    defs.as_object_mut().unwrap().remove("vhosts");
    for kind in ["exchanges", "queues", "bindings", "policies"] {
        for item in defs[kind].as_array_mut().unwrap() {
            assert_eq!(item["vhost"], "/");
            item["vhost"] = Value::from(vhost);
        }
    }
    defs
}

#[tokio::test(flavor = "multi_thread")]
async fn printed_definitions_import_and_a_worker_starts_on_them() {
    import_and_start("quorum").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn classic_definitions_import_and_a_classic_worker_starts_on_them() {
    import_and_start("classic").await;
}

/// A fresh vhost with `topology --definitions --queue-type <queue_type>`
/// imported into it (and checked to be there).
fn imported(queue_type: &str) -> Vhost {
    let (code, out, err) = run_cli(
        &["topology", "--definitions", "--queue-type", queue_type],
        &[],
    );
    assert_eq!(code, 0, "topology --definitions failed: {err}");
    let defs: Value = serde_json::from_str(&out).expect("the output is JSON");

    let vhost = Vhost::create();
    let file = std::env::temp_dir().join(format!("{}.definitions.json", vhost.name));
    std::fs::write(
        &file,
        serde_json::to_vec(&for_vhost(defs.clone(), &vhost.name)).unwrap(),
    )
    .unwrap();
    rabbitmqctl(None, &["import_definitions", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    let listed = rabbitmqctl(None, &["list_queues", "-q", "-p", &vhost.name, "name"]);
    for queue in defs["queues"].as_array().unwrap() {
        let name = queue["name"].as_str().unwrap();
        assert!(
            listed.lines().any(|l| l.trim() == name),
            "{name} was not imported: {listed}"
        );
    }

    let policies = rabbitmqctl(None, &["list_policies", "-q", "-p", &vhost.name]);
    assert!(
        policies.contains("sms-dead-length") && policies.contains("max-length"),
        "the dead-letter length policy was not imported: {policies}"
    );
    vhost
}

/// Imports the definitions for `queue_type` into a fresh vhost and starts a
/// worker with that queue type on it.
async fn import_and_start(queue_type: &str) {
    within(90, async {
        let vhost = imported(queue_type);
        let config = ConfigFile::full();
        let twilio = FakeTwilio::start().await;
        let mut options = WorkerOptions::new(&vhost.url, &config, &twilio);
        options.args = vec!["--dry-run"];
        options
            .env
            .push(("SMS_DISPATCH_QUEUE_TYPE", queue_type.to_owned()));
        let worker = WorkerProcess::start(options).await;
        worker.wait_ready(Duration::from_secs(20)).await;
        let logs = worker.finish().await;
        assert!(
            !logs
                .iter()
                .any(|l| l.to_string().contains("PRECONDITION_FAILED")),
            "the worker met a mismatched declaration"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_least_privilege_user_runs_the_worker() {
    within(90, async {
        let vhost = imported("quorum");
        let user = format!("w-{}", vhost.name);
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/rabbitmq/worker-user.sh"
        );
        let status = std::process::Command::new("bash")
            .args([script, &user, &vhost.name])
            .env("RABBITMQ_WORKER_PASSWORD", "worker-pw")
            .status()
            .expect("worker-user.sh runs");
        assert!(status.success(), "worker-user.sh failed");

        let url = format!("amqp://{user}:worker-pw@127.0.0.1:5672/{}", vhost.name);
        let config = ConfigFile::full();
        let twilio = FakeTwilio::start().await;
        let mut options = WorkerOptions::new(&url, &config, &twilio);
        options.args = vec!["--dry-run"];
        let worker = WorkerProcess::start(options).await;
        worker.wait_ready(Duration::from_secs(20)).await;

        // A job it takes, and one it dead-letters through sms.dlx: the
        // user may consume, publish and confirm where the worker needs to.
        vhost
            .publish_all(&[TestJob::new(&number(), "SignIn")])
            .await;
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        publish_raw(&channel, b"not a job", lapin::BasicProperties::default()).await;
        wait_drained(&channel, &worker, Duration::from_secs(30)).await;
        assert_eq!(
            vhost.ready("sms.dead").await,
            1,
            "the bad job is dead-lettered"
        );
        let _ = conn.close(200, "done".into()).await;
        worker.finish().await;
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_user", &user])
            .status();
    })
    .await;
}
