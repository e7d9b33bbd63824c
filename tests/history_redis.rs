//! The Redis usage history on the real Redis: two instances' batches add up, the operator's
//! view is sorted and never holds an API key, and a dead Redis costs `record` nothing.

#[path = "redis_support.rs"]
mod support;

use std::time::{Duration, Instant};

use tollgate::history::{History, Visit};
use tollgate::key::Key;

#[tokio::test]
async fn two_instances_share_one_history_and_the_sums_match() {
    let Some(mut conn) = support::shared_redis() else { return };
    let prefix = support::unique_prefix("history");
    let (a, b) = (
        History::redis(support::SHARED_URL, &prefix).unwrap(),
        History::redis(support::SHARED_URL, &prefix).unwrap(),
    );
    let acme = Key::new("sk_live_acme_0123456789");
    let globex = Key::new("sk_live_globex_0123456789");
    let stranger = Key::from_ip("192.0.2.7".parse().unwrap());
    let hour = 1_700_000_000 / 3_600 * 3_600;
    // Acme: 30 admitted (5 tokens each) and 4 rejected, over two minutes and two instances.
    for i in 0..30u64 {
        let history = if i % 2 == 0 { &a } else { &b };
        history
            .record(&Visit::new(&acme, "pro", "/api/search", hour + 60 + i * 3, true, 5).name("Acme Corp"));
    }
    for i in 0..4u64 {
        a.record(&Visit::new(&acme, "pro", "/api/search", hour + 150 + i, false, 0).name("Acme Corp"));
    }
    // Globex (no name): 10 admitted, 1 token each. The stranger: 3 rejected.
    for i in 0..10u64 {
        b.record(&Visit::new(&globex, "free", "/api/simple", hour + 200 + i, true, 1));
    }
    for i in 0..3u64 {
        b.record(&Visit::new(&stranger, "anonymous", "/api/simple", hour + 300 + i, false, 0));
    }
    a.flush().await.unwrap();
    b.flush().await.unwrap();

    let now = hour + 400;
    let mine = a.client(&acme, now).await.unwrap();
    assert_eq!(mine.minutes.iter().map(|p| p.admitted).sum::<u64>(), 30);
    assert_eq!(mine.minutes.iter().map(|p| p.rejected).sum::<u64>(), 4);
    assert_eq!(mine.minutes.iter().map(|p| p.tokens).sum::<u64>(), 150);
    assert_eq!(mine.minutes.iter().map(|p| p.start).collect::<Vec<_>>(), [hour + 60, hour + 120]);
    assert_eq!(mine.hours.len(), 1);
    assert_eq!((mine.hours[0].start, mine.hours[0].admitted, mine.hours[0].tokens), (hour, 30, 150));
    assert_eq!(b.client(&acme, now).await.unwrap(), mine, "both instances read the same history");
    assert!(a.client(&stranger, now).await.unwrap().minutes.is_empty(), "no history by address");

    let report = b.report(now, 10).await.unwrap();
    assert_eq!(report.window_s, 3_600);
    let clients: Vec<(&str, &str, u64, u64, u64)> = report
        .clients
        .iter()
        .map(|c| (c.client.as_str(), c.tier.as_str(), c.admitted, c.rejected, c.tokens))
        .collect();
    assert_eq!(
        clients,
        [("Acme Corp", "pro", 30, 4, 150), ("sk_l…", "free", 10, 0, 10), ("192.0.2.7", "anonymous", 0, 3, 0)]
    );
    assert_eq!(
        report.rejected_by_tier.iter().map(|c| (c.name.as_str(), c.rejected)).collect::<Vec<_>>(),
        [("pro", 4), ("anonymous", 3)]
    );
    assert_eq!(
        report.rejected_by_route.iter().map(|c| (c.name.as_str(), c.rejected)).collect::<Vec<_>>(),
        [("/api/search", 4), ("/api/simple", 3)]
    );
    assert_eq!(report.minutes.iter().map(|p| p.admitted + p.rejected).sum::<u64>(), 47);
    // No API key anywhere in Redis, and everything expires.
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut conn).unwrap();
    assert!(keys.len() > 5, "{keys:?}");
    for key in &keys {
        assert!(!key.contains("sk_live"), "{key}");
        let ttl: i64 = redis::cmd("TTL").arg(key).query(&mut conn).unwrap();
        assert!(ttl > 0 && ttl <= 90_000, "{key} expires: {ttl}");
        let dump: Vec<String> = match redis::cmd("TYPE").arg(key).query::<String>(&mut conn).unwrap().as_str()
        {
            "hash" => redis::cmd("HGETALL").arg(key).query(&mut conn).unwrap(),
            _ => redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).query(&mut conn).unwrap(),
        };
        assert!(!dump.iter().any(|v| v.contains("sk_live_")), "{key}: {dump:?}");
    }
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut conn).unwrap();
}

#[tokio::test]
async fn a_dead_redis_costs_record_nothing_and_is_counted() {
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let history = History::redis(&format!("redis://{closed}"), "dead").unwrap();
    let key = Key::new("acme-key");
    let started = Instant::now();
    for i in 0..10_000u64 {
        history.record(&Visit::new(&key, "pro", "/api", 1_700_000_000 + i / 100, true, 1));
    }
    let spent = started.elapsed();
    assert!(spent < Duration::from_millis(500), "10 000 records took {spent:?}");
    // The background task may have tried already; either way every batch fails and is counted.
    let _ = history.flush().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while history.stats().lost < 10_000 && Instant::now() < deadline {
        let _ = history.flush().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = history.stats();
    assert!(stats.failed_flushes >= 1, "{stats:?}");
    assert_eq!((stats.flushes, stats.lost), (0, 10_000), "{stats:?}");
    assert!(history.client(&key, 1_700_000_100).await.is_err(), "a read says Redis is down");
}
