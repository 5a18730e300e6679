//! The command line: `check-config` reports what each template costs and
//! refuses bad configs with one line and exit code 2; `send` publishes a job
//! the worker accepts, confirmed by the real broker, takes the code from
//! standard input, and refuses what the worker would dead-letter; clap
//! refuses a value outside the list with the list; `completions` offers the
//! commands and the values.

use std::time::Duration;

use crate::support::*;
use serde_json::json;

#[test]
fn check_config_shows_encoding_and_segments_and_warns() {
    let config = ConfigFile::logto(&[
        ("SignIn", None, "Your code is {{code}}"),
        ("SignIn", Some("ja"), "認証コードは {{code}} です。"),
        (
            "Register",
            None,
            "Welcome to Example! Your verification code is {{code}}. It expires in 10 minutes. If you did not ask for it, ignore this message. Never share it with anyone {ok}.",
        ),
        ("Generic", None, "Code {{code}}"),
    ]);
    let path = config.0.to_str().unwrap();
    let (code, out, err) = run_cli(&["check-config", "--config", path], &[]);
    assert_eq!(code, 0, "{err}");
    let row = |kind: &str, locale: &str| {
        out.lines()
            .find(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&kind) && f.get(1) == Some(&locale)
            })
            .unwrap_or_else(|| panic!("no row for {kind} {locale} in:\n{out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("SignIn", "-"), ["SignIn", "-", "GSM-7", "19", "1"]);
    assert_eq!(row("SignIn", "ja"), ["SignIn", "ja", "UCS-2", "17", "1"]);
    // 160 characters, the two braces counted twice: 162 septets, two segments.
    assert_eq!(row("Register", "-"), ["Register", "-", "GSM-7", "162", "2"]);
    assert!(
        out.contains("warning: Register (no locale) takes 2 segments"),
        "{out}"
    );
    assert!(
        out.contains("warning: no ForgotPassword template") && out.contains("Generic template"),
        "{out}"
    );
    assert!(!out.contains(TEST_AUTH_TOKEN), "the token is never printed");
}

#[test]
fn check_config_warns_when_a_flow_type_would_be_dead_lettered() {
    let config = ConfigFile::logto(&[("SignIn", None, "Your code is {{code}}")]);
    let (code, out, _) = run_cli(
        &["check-config", "--config", config.0.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0);
    for kind in ["Register", "ForgotPassword", "Generic"] {
        assert!(
            out.contains(&format!("warning: no {kind} template")),
            "{out}"
        );
    }
    assert!(out.contains("dead-lettered no_template"), "{out}");
}

#[test]
fn a_bad_config_stops_with_one_line_and_exit_code_2() {
    let no_code = ConfigFile::logto(&[("SignIn", None, "Hello there")]);
    let bad_sid = ConfigFile::write(
        "json",
        &json!({"accountSID": "AC123", "authToken": "t", "fromMessagingServiceSID": TEST_MESSAGING_SERVICE_SID,
                "templates": [{"usageType": "SignIn", "content": "{{code}}"}]})
        .to_string(),
    );
    let typo = ConfigFile::write("toml", "[amqp]\nprefech = 10\n");
    /// (arguments, environment, what the error line must mention)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["run", "--config", no_code.0.to_str().unwrap()],
            vec![],
            "{{code}}",
        ),
        (
            vec!["run", "--config", bad_sid.0.to_str().unwrap()],
            vec![],
            "accountSID",
        ),
        (
            vec!["check-config", "--config", typo.0.to_str().unwrap()],
            vec![],
            "line 2",
        ),
        (
            vec!["run", "--config", "/nonexistent/connector.json"],
            vec![],
            "cannot be read",
        ),
        (vec!["run", "--dry-run"], vec![], "no templates"),
        (
            vec!["run", "--config", no_code.0.to_str().unwrap()],
            vec![("SMS_DISPATCH_PREFETCH", "lots")],
            "SMS_DISPATCH_PREFETCH",
        ),
    ];
    for (args, env, expected) in cases {
        let (code, out, err) = run_cli(&args, &env);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed {out}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(
            err.contains(expected),
            "{args:?}: {err:?} lacks {expected:?}"
        );
    }
    // Credentials are checked for `run` but not for `run --dry-run`.
    let no_creds = ConfigFile::write(
        "toml",
        "[[templates]]\ntype = \"SignIn\"\ncontent = \"Code {{code}}\"\n",
    );
    let (code, _, err) = run_cli(&["run", "--config", no_creds.0.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("no Twilio credentials"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn send_publishes_a_job_the_worker_accepts() {
    within(60, async {
        let vhost = Vhost::create();
        let to = number();
        let code = crate::support::code();
        let (exit, out, err) = tokio::task::spawn_blocking({
            let url = vhost.url.clone();
            let to = to.clone();
            let code = code.clone();
            move || {
                run_cli(
                    &[
                        "send", "--to", &to, "--type", "SignIn", "--code", &code, "--locale",
                        "ja-JP", "--ttl", "120",
                    ],
                    &[("SMS_DISPATCH_AMQP_URL", &url)],
                )
            }
        })
        .await
        .unwrap();
        assert_eq!(exit, 0, "{err}");
        let id = out.trim();
        assert!(!id.is_empty());
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        let jobs = take_at_least(&channel, "sms.send", 1, Duration::from_secs(10)).await;
        let job = jobs[0].json();
        assert_eq!(job["id"], id);
        assert_eq!(job["to"], to);
        assert_eq!(job["type"], "SignIn");
        assert_eq!(job["payload"]["code"], code);
        assert_eq!(job["payload"]["locale"], "ja-JP");
        let expires =
            sms_dispatch::wire::parse_rfc3339(job["expires_at"].as_str().unwrap()).unwrap();
        let left = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(left <= Duration::from_secs(120) && left > Duration::from_secs(100));
        assert_eq!(
            jobs[0].properties.message_id().as_ref().unwrap().as_str(),
            id
        );
        assert_eq!(*jobs[0].properties.delivery_mode(), Some(2));
    })
    .await;
}

#[test]
fn send_refuses_a_job_the_worker_would_dead_letter() {
    let (exit, out, err) = run_cli(
        &["send", "--to", "12", "--type", "SignIn", "--code", "1"],
        &[(
            "SMS_DISPATCH_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:1/none",
        )],
    );
    assert_eq!(exit, 2, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("`to`"), "{err}");
}

#[test]
fn send_fails_with_exit_code_1_when_the_broker_is_unreachable() {
    let (exit, _, err) = run_cli(
        &[
            "send",
            "--to",
            "+15005550006",
            "--type",
            "SignIn",
            "--code",
            "1",
        ],
        &[(
            "SMS_DISPATCH_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        )],
    );
    assert_eq!(exit, 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(
        !err.contains("guest:guest"),
        "the password is not printed: {err}"
    );
}

#[test]
fn the_log_scan_catches_codes_tokens_and_numbers() {
    let code = crate::support::code();
    let lines = |l: &str| vec![l.to_owned()];
    assert!(scan_logs(&lines(r#"{"message":"sent","to":"+81********78"}"#), true).is_empty());
    assert!(
        !scan_logs(
            &lines(&format!(r#"{{"body":"Your code is {code}"}}"#)),
            true
        )
        .is_empty()
    );
    assert!(!scan_logs(&lines(&format!(r#"{{"t":"{TEST_AUTH_TOKEN}"}}"#)), true).is_empty());
    assert!(
        !scan_logs(
            &lines(&format!(r#"{{"t":"{}"}}"#, fake_twilio::TEST_API_SECRET)),
            true
        )
        .is_empty()
    );
    // An ingest token, once the test that uses it has registered it (a
    // worker's `SMS_DISPATCH_INGEST_TOKEN` is registered when it starts).
    let token = secret(&format!("ingest-token-{}", uuid::Uuid::new_v4().simple()));
    let leak = format!(r#"{{"authorization":"Bearer {token}"}}"#);
    assert!(!scan_logs(&lines(&leak), true).is_empty());
    assert!(!scan_logs(&lines(r#"{"to":"+819012345678"}"#), true).is_empty());
    assert!(!scan_logs(&lines("not json"), true).is_empty());
    // The code's digits inside a timestamp's fraction or a UUID are not the code.
    let ts = format!(r#"{{"timestamp":"2026-11-23T15:38:35.{code}Z"}}"#);
    assert!(scan_logs(&lines(&ts), true).is_empty());
    let id = format!(r#"{{"job_id":"job-a{code}b-4a1b"}}"#);
    assert!(scan_logs(&lines(&id), true).is_empty());

    // A line that is not UTF-8 does not end the capture: the lines after it
    // are read and scanned too.
    let mut output = br#"{"message":"http listening"}"#.to_vec();
    output.extend_from_slice(b"\n{\"body\":\"\xff\xfe\"}\n");
    output.extend_from_slice(format!(r#"{{"body":"Your code is {code}"}}"#).as_bytes());
    output.push(b'\n');
    let captured = std::sync::Mutex::new(Vec::new());
    read_lines(output.as_slice(), &captured);
    let captured = captured.into_inner().unwrap();
    assert_eq!(captured.len(), 3, "{captured:?}");
    let problems = scan_logs(&captured, true);
    assert!(
        problems.iter().any(|p| p.contains(&code)),
        "the code after the non-UTF-8 line was not caught: {problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_declared_otherwise_is_named_with_what_to_do() {
    within(60, async {
        let vhost = Vhost::create();
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        // sms.send as someone declared it by hand: classic, no arguments.
        channel
            .queue_declare(
                "sms.send".into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
        let url = vhost.url.clone();
        let (exit, _, err) = tokio::task::spawn_blocking(move || {
            run_cli(
                &[
                    "send",
                    "--to",
                    "+15005550006",
                    "--type",
                    "SignIn",
                    "--code",
                    "1",
                ],
                &[("SMS_DISPATCH_AMQP_URL", &url)],
            )
        })
        .await
        .unwrap();
        assert_eq!(exit, 1, "{err}");
        assert!(err.contains("sms.send"), "{err}");
        assert!(err.contains("exists with other arguments"), "{err}");
    })
    .await;
}

/// The nine template types, as `--type` takes them.
const TYPES: [&str; 9] = [
    "SignIn",
    "Register",
    "ForgotPassword",
    "Generic",
    "OrganizationInvitation",
    "UserPermissionValidation",
    "BindNewIdentifier",
    "MfaVerification",
    "BindMfa",
];

#[test]
fn completions_offer_the_commands_and_the_values() {
    let (exit, script, err) = run_cli(&["completions", "bash"], &[]);
    assert_eq!(exit, 0, "{err}");
    assert!(
        script.contains("complete "),
        "not a bash completion script:\n{script}"
    );
    for command in [
        "run",
        "send",
        "check-config",
        "dlq",
        "list",
        "replay",
        "purge",
        "completions",
    ] {
        assert!(script.contains(command), "no {command} in the script");
    }
    for value in TYPES
        .iter()
        .chain(&["no_template", "retries_exhausted", "broker:delivery_limit"])
    {
        assert!(script.contains(value), "no {value} in the script");
    }
}

#[test]
fn a_value_outside_the_list_is_refused_with_the_list() {
    let unreachable = [(
        "SMS_DISPATCH_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:1/none",
    )];
    let (exit, out, err) = run_cli(
        &[
            "send",
            "--to",
            "+15005550006",
            "--type",
            "Login",
            "--code",
            "1",
        ],
        &unreachable,
    );
    assert_eq!(exit, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("'Login'") && err.contains("--type"), "{err}");
    let accepted = format!("[possible values: {}]", TYPES.join(", "));
    assert!(err.contains(&accepted), "{err:?} lacks {accepted:?}");

    let (exit, out, err) = run_cli(&["dlq", "list", "--reason", "bogus"], &unreachable);
    assert_eq!(exit, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("'bogus'") && err.contains("--reason"), "{err}");
    for reason in [
        "invalid_job",
        "no_template",
        "expired",
        "rejected",
        "retries_exhausted",
        "blocked",
        "broker:rejected",
        "broker:expired",
        "broker:maxlen",
        "broker:delivery_limit",
    ] {
        assert!(
            err.contains(reason),
            "{reason} not among the accepted values: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn send_reads_the_code_from_standard_input() {
    within(60, async {
        let vhost = Vhost::create();
        let to = number();
        let code = crate::support::code();
        let env = [("SMS_DISPATCH_AMQP_URL", vhost.url.as_str())];
        let args = ["send", "--to", &to, "--type", "SignIn", "--code", "-"];

        // Nothing on standard input: refused before anything is published.
        let (exit, out, err) = run_cli_async(&args, &env, Io::default()).await;
        assert_eq!(exit, 2, "{err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains("--code -") && err.contains("standard input"),
            "{err}"
        );

        let stdin = format!("{code}\n");
        let io = Io {
            stdin: stdin.as_bytes(),
            ..Io::default()
        };
        let (exit, out, err) = run_cli_async(&args, &env, io).await;
        assert_eq!(exit, 0, "{err}");
        assert!(!err.contains(&code), "the code is never logged: {err}");
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        let jobs = take_at_least(&channel, "sms.send", 1, Duration::from_secs(10)).await;
        assert_eq!(jobs.len(), 1, "one job: the refused send published nothing");
        let job = jobs[0].json();
        assert_eq!(job["id"], out.trim());
        assert_eq!(job["to"], to);
        assert_eq!(job["payload"]["code"], code, "the code read from stdin");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn send_refuses_a_type_without_template_or_generic() {
    within(60, async {
        let vhost = Vhost::create();
        let conn = vhost.connect().await;
        // The topology is there, so a publish would land in sms.send.
        vhost.publisher(&conn).await;
        let config = ConfigFile::logto(&[("SignIn", None, "Your code is {{code}}")]);
        let to = number();
        let code = crate::support::code();
        let (exit, out, err) = run_cli_async(
            &[
                "send",
                "--config",
                config.0.to_str().unwrap(),
                "--to",
                &to,
                "--type",
                "Register",
                "--code",
                &code,
            ],
            &[("SMS_DISPATCH_AMQP_URL", &vhost.url)],
            Io::default(),
        )
        .await;
        assert_eq!(exit, 2, "{err}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("no_template"), "{err}");
        assert!(err.contains("Register"), "{err}");
        assert_eq!(vhost.ready("sms.send").await, 0, "nothing published");
    })
    .await;
}
