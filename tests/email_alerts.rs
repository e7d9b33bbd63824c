//! `EmailAlerts` against a real SMTP listener (tests/smtp_support.rs) and the real Redis:
//! what arrives, to whom, how often, and that a dead relay costs the caller nothing.

#[path = "smtp_support.rs"]
mod smtp;

use std::time::{Duration, Instant};

use smtp::{DeadRelay, SmtpSink};
use tollgate::clock::ManualClock;
use tollgate::key::Key;
use tollgate::observe::{EmailAlerts, EmailStats, Notice};

fn notice() -> Notice {
    Notice::new("ops@acme.example", "pro", "pro-daily", 10_000, 2_000, 1_700_003_600, 1_700_000_000)
        .name("Acme Corp")
        .upgrade_url("https://example.com/pricing?tier=pro")
}

/// Polls `alerts` until `done(stats)` (at most 10 s).
async fn settle(alerts: &EmailAlerts, done: impl Fn(&EmailStats) -> bool) -> EmailStats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = alerts.stats();
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_email_reaches_the_relay_with_recipient_subject_and_both_parts() {
    let sink = SmtpSink::start().await;
    let alerts = EmailAlerts::builder(sink.url(), "Limits <limits@example.com>").start().unwrap();
    alerts.notify(&Key::new("acme-key"), notice());
    let got = sink.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{:?}", alerts.stats());
    let mail = &got[0];
    assert_eq!(mail.from, "limits@example.com");
    assert_eq!(mail.to, ["ops@acme.example"]);
    assert_eq!(mail.header("To").unwrap(), "\"Acme Corp\" <ops@acme.example>");
    assert_eq!(mail.header("Subject").unwrap(), "You have used 80% of your \"pro-daily\" API limit");
    let text = mail.part("text/plain").expect("a plain-text part");
    assert!(text.contains("Hello Acme Corp,"), "{text}");
    assert!(text.contains("used 80% of the \"pro-daily\" limit"), "{text}");
    assert!(text.contains("(tier \"pro\")"), "{text}");
    assert!(text.contains("8000 of the 10000 requests"), "{text}");
    assert!(text.contains("full again on Tue, 14 Nov 2023 23:13:20 GMT (in 1 h)"), "{text}");
    assert!(text.contains("https://example.com/pricing?tier=pro"), "{text}");
    let html = mail.part("text/html").expect("an HTML part");
    assert!(html.contains("<a href=\"https://example.com/pricing?tier=pro\">"), "{html}");
    assert!(!mail.data.contains("acme-key"), "the API key never appears in an email");
    let stats = settle(&alerts, |s| s.sent == 1).await;
    assert_eq!((stats.sent, stats.failed, stats.dropped, stats.deduplicated), (1, 0, 0, 0));
}

#[tokio::test]
async fn one_email_per_client_and_policy_per_interval() {
    let sink = SmtpSink::start().await;
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    let alerts = EmailAlerts::builder(sink.url(), "limits@example.com")
        .min_interval(Duration::from_secs(3_600))
        .clock(clock.clone())
        .start()
        .unwrap();
    let (acme, other) = (Key::new("acme-key"), Key::new("other-key"));
    for _ in 0..3 {
        alerts.notify(&acme, notice());
    }
    let stats = settle(&alerts, |s| s.sent + s.deduplicated == 3).await;
    assert_eq!((stats.sent, stats.deduplicated), (1, 2));
    // Another client, or another policy of the same client: its own email.
    alerts.notify(&other, notice());
    let mut daily = notice();
    daily.policy = "pro".into();
    alerts.notify(&acme, daily);
    let stats = settle(&alerts, |s| s.sent + s.deduplicated == 5).await;
    assert_eq!((stats.sent, stats.deduplicated), (3, 2));
    // Still within the hour: held back. An hour later: sent again.
    clock.advance(Duration::from_secs(3_599));
    alerts.notify(&acme, notice());
    let stats = settle(&alerts, |s| s.sent + s.deduplicated == 6).await;
    assert_eq!((stats.sent, stats.deduplicated), (3, 3));
    clock.advance(Duration::from_secs(1));
    alerts.notify(&acme, notice());
    let stats = settle(&alerts, |s| s.sent + s.deduplicated == 7).await;
    assert_eq!((stats.sent, stats.deduplicated), (4, 3));
    assert_eq!(sink.wait_for(4, Duration::from_secs(5)).await.len(), 4);
}

#[tokio::test]
async fn a_failed_send_is_counted_and_does_not_use_up_the_interval() {
    // A port with nothing listening: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let alerts = EmailAlerts::builder(format!("smtp://{closed}"), "limits@example.com").start().unwrap();
    let key = Key::new("acme-key");
    alerts.notify(&key, notice());
    let stats = settle(&alerts, |s| s.failed == 1).await;
    assert_eq!((stats.sent, stats.failed, stats.deduplicated), (0, 1, 0));
    // The claim was released: the next crossing tries again (and fails again), not deduplicated.
    alerts.notify(&key, notice());
    let stats = settle(&alerts, |s| s.failed == 2).await;
    assert_eq!((stats.failed, stats.deduplicated), (2, 0));
}

#[tokio::test]
async fn a_dead_relay_never_delays_the_caller() {
    let dead = DeadRelay::start().await;
    let alerts = EmailAlerts::builder(dead.url(), "limits@example.com")
        .queue(8)
        .timeout(Duration::from_secs(30))
        .start()
        .unwrap();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for i in 0..2_000 {
        let key = Key::new(format!("client-{i}"));
        let t = Instant::now();
        alerts.notify(&key, notice());
        slowest = slowest.max(t.elapsed());
    }
    let total = started.elapsed();
    // Generous bounds: a queue push is well under a microsecond; a relay wait is 30 s.
    assert!(slowest < Duration::from_millis(50), "slowest notify took {slowest:?}");
    assert!(total < Duration::from_millis(500), "2000 notifies took {total:?}");
    let stats = alerts.stats();
    assert_eq!(stats.sent, 0);
    assert!(stats.dropped >= 2_000 - 9, "the queue (8) overflowed and counted drops: {stats:?}");
}

#[tokio::test]
async fn two_instances_on_one_redis_send_one_email() {
    let redis_url = "redis://127.0.0.1:6379";
    if redis::Client::open(redis_url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .is_err()
    {
        assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "CI=true and Redis is down");
        eprintln!("SKIPPED: Redis at {redis_url} is unreachable");
        return;
    }
    let prefix = format!(
        "tollgate-test-email-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let sink = SmtpSink::start().await;
    let instances: Vec<EmailAlerts> = (0..2)
        .map(|_| {
            EmailAlerts::builder(sink.url(), "limits@example.com")
                .redis(redis_url, prefix.clone())
                .start()
                .unwrap()
        })
        .collect();
    let key = Key::new("acme-key");
    // Both instances see the same crossing (each request that crosses is decided once, but a
    // client can cross on one instance and again, after refilling, on the other).
    for alerts in &instances {
        alerts.notify(&key, notice());
    }
    for alerts in &instances {
        settle(alerts, |s| s.sent + s.deduplicated + s.failed == 1).await;
    }
    let stats: Vec<EmailStats> = instances.iter().map(EmailAlerts::stats).collect();
    assert_eq!(stats.iter().map(|s| s.sent).sum::<u64>(), 1, "{stats:?}");
    assert_eq!(stats.iter().map(|s| s.deduplicated).sum::<u64>(), 1, "{stats:?}");
    assert_eq!(stats.iter().map(|s| s.dedupe_errors).sum::<u64>(), 0, "{stats:?}");
    assert_eq!(sink.wait_for(1, Duration::from_secs(5)).await.len(), 1);
    // The Redis key holds no API key and expires by itself (one day by default).
    let mut conn = redis::Client::open(redis_url).unwrap().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut conn).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].starts_with(&format!("{prefix}:mail:{{")) && keys[0].ends_with("}:pro-daily"),
        "{keys:?}"
    );
    assert!(!keys[0].contains("acme-key"));
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut conn).unwrap();
    assert!(ttl > 86_000_000 && ttl <= 86_400_000, "{ttl}");
    let _: () = redis::cmd("DEL").arg(&keys[0]).query(&mut conn).unwrap();
}
