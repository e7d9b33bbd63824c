//! The pacer's queue under tokio's paused clock, and a multi-threaded stress test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::*;
use crate::client::RateLimitSignal;

const HOST: &str = "api.test:443";

fn signal(pairs: &[(&'static str, &str)]) -> RateLimitSignal {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(*name, value.parse().unwrap());
    }
    RateLimitSignal::parse(StatusCode::OK, &headers, SystemTime::now())
}

/// `q` per `w` seconds, `r` left, more in `t`.
fn rate(r: u64, t: u64, q: u64, w: u64) -> RateLimitSignal {
    signal(&[("ratelimit", &format!("p;r={r};t={t}")), ("ratelimit-policy", &format!("p;q={q};w={w}"))])
}

/// Spawns a caller that records when it was released (ms since `start`) and holds its permit.
fn caller(pacer: &Pacer, start: Instant) -> tokio::task::JoinHandle<(u128, Permit)> {
    let pacer = pacer.clone();
    tokio::spawn(async move {
        let permit = pacer.acquire(HOST).await.unwrap();
        (start.elapsed().as_millis(), permit)
    })
}

/// Lets spawned tasks run until they are all parked.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_leave_one_at_a_time() {
    let pacer = Pacer::new();
    let start = Instant::now();
    let probe = pacer.acquire(HOST).await.unwrap();
    let callers: Vec<_> = (0..6).map(|_| caller(&pacer, start)).collect();
    settle().await;
    // Waiting for the probe's answer: nobody else went.
    assert_eq!(pacer.queued(HOST), 6);
    assert_eq!(pacer.in_flight(HOST), 1);
    tokio::time::advance(Duration::from_millis(100)).await;
    // 1 left of 2 per 2 s (one a second), the next in 1 s.
    probe.answer(&rate(1, 1, 2, 2), None);
    let mut released = Vec::new();
    for caller in callers {
        released.push(caller.await.unwrap().0);
    }
    assert_eq!(released, [100, 1100, 2100, 3100, 4100, 5100], "in order, one a second");
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_queued_gives_up_its_place() {
    let pacer = Pacer::new();
    let start = Instant::now();
    let probe = pacer.acquire(HOST).await.unwrap();
    let a = caller(&pacer, start);
    settle().await;
    let b = caller(&pacer, start);
    settle().await;
    let c = caller(&pacer, start);
    settle().await;
    assert_eq!(pacer.queued(HOST), 3);
    // Nothing left of 1 per second, the next in a second.
    probe.answer(&rate(0, 1, 1, 1), None);
    b.abort();
    assert!(b.await.unwrap_err().is_cancelled());
    assert_eq!(pacer.queued(HOST), 2);
    assert_eq!(a.await.unwrap().0, 1000);
    // `c` takes the slot `b` gave up.
    assert_eq!(c.await.unwrap().0, 2000);
    assert_eq!(pacer.queued(HOST), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_head_wakes_the_next() {
    let pacer = Pacer::new();
    let start = Instant::now();
    let probe = pacer.acquire(HOST).await.unwrap();
    let head = caller(&pacer, start);
    settle().await;
    let next = caller(&pacer, start);
    settle().await;
    drop(probe); // unanswered: the head becomes the next probe...
    settle().await;
    head.abort(); // ... unless it has already gone: either way `next` must not hang.
    let _ = head.await;
    let (at, _) = next.await.unwrap();
    assert!(at <= 2000, "{at}");
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_bounded() {
    let pacer = Pacer::new().max_queue(2);
    let start = Instant::now();
    let probe = pacer.acquire(HOST).await.unwrap();
    let waiting: Vec<_> = (0..2).map(|_| caller(&pacer, start)).collect();
    settle().await;
    assert_eq!(pacer.acquire(HOST).await.unwrap_err(), AcquireError::QueueFull);
    assert_eq!(pacer.acquire("other.test:443").await.map(drop), Ok(()), "another host has its own queue");
    probe.answer(&signal(&[]), None);
    for caller in waiting {
        caller.await.unwrap();
    }
    assert!(pacer.acquire(HOST).await.is_ok(), "room again");
    let none = Pacer::new().max_queue(0);
    assert_eq!(none.acquire(HOST).await.unwrap_err(), AcquireError::QueueFull);
}

#[tokio::test(start_paused = true)]
async fn a_retry_keeps_its_place_ahead_of_later_arrivals() {
    let pacer = Pacer::new();
    let start = Instant::now();
    let first = pacer.acquire(HOST).await.unwrap();
    let id = first.id();
    // A later arrival queues while the first request's answer is a refusal.
    let later = caller(&pacer, start);
    settle().await;
    first.answer(&rate(0, 1, 1, 1), Some(Duration::from_secs(1)));
    // The retry comes back with the id of its first attempt.
    let retry = {
        let pacer = pacer.clone();
        tokio::spawn(async move {
            let permit = pacer.acquire(HOST).priority(Some(id)).await.unwrap();
            (start.elapsed().as_millis(), permit)
        })
    };
    settle().await;
    assert_eq!(retry.await.unwrap().0, 1000);
    assert_eq!(later.await.unwrap().0, 2000);
}

#[tokio::test(start_paused = true)]
async fn a_turn_beyond_the_deadline_fails_at_once_and_a_queued_one_at_the_deadline() {
    let pacer = Pacer::new();
    let start = Instant::now();
    let probe = pacer.acquire(HOST).await.unwrap();
    probe.answer(&signal(&[]), Some(Duration::from_secs(60)));
    // The head knows its turn is in 60 s: past a 10 s deadline, it fails now.
    let err = pacer.acquire(HOST).deadline(start + Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(err, AcquireError::Deadline);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(pacer.queued(HOST), 0, "it left the queue");
    // Behind a head that waits, a request fails when its own deadline comes.
    let head = caller(&pacer, start);
    settle().await;
    let err = pacer.acquire(HOST).deadline(start + Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(err, AcquireError::Deadline);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(head.await.unwrap().0, 60_000);
    // Waiting for a probe's answer is not a known wait: it waits until its deadline.
    let pacer = Pacer::new();
    let start = Instant::now();
    let _probe = pacer.acquire(HOST).await.unwrap();
    let err = pacer.acquire(HOST).deadline(start + Duration::from_millis(500)).await.unwrap_err();
    assert_eq!(err, AcquireError::Deadline);
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_never_answers_lets_the_others_go_after_the_timeout() {
    let pacer = Pacer::new().probe_timeout(Duration::from_millis(300));
    let start = Instant::now();
    let _slow = pacer.acquire(HOST).await.unwrap();
    let others: Vec<_> = (0..3).map(|_| caller(&pacer, start)).collect();
    for other in others {
        assert_eq!(other.await.unwrap().0, 300);
    }
}

#[tokio::test(start_paused = true)]
async fn hosts_are_bounded_and_busy_ones_are_kept() {
    let pacer = Pacer::new().max_hosts(2);
    for host in ["a:1", "b:1"] {
        pacer.acquire(host).await.unwrap().answer(&signal(&[]), None);
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(pacer.tracked_hosts(), 2);
    // "a" is idle and seen longest ago: it makes room for "c".
    let c = pacer.acquire("c:1").await.unwrap();
    assert_eq!(pacer.tracked_hosts(), 2);
    assert_eq!(pacer.in_flight("a:1"), 0);
    assert_eq!(pacer.in_flight("c:1"), 1);
    // "b" and "c" both busy: a new host goes unpaced, untracked.
    let b = pacer.acquire("b:1").await.unwrap();
    let d = pacer.acquire("d:1").await.unwrap();
    assert_eq!(pacer.tracked_hosts(), 2);
    assert_eq!(pacer.in_flight("d:1"), 0);
    d.answer(&signal(&[]), None);
    drop((b, c));
    for i in 0..1000 {
        pacer.acquire(format!("host-{i}:1")).await.unwrap().answer(&signal(&[]), None);
    }
    assert_eq!(pacer.tracked_hosts(), 2);
}

#[test]
fn futures_and_permits_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Acquire>();
    send_sync::<Permit>();
    send_sync::<Pacer>();
}

/// Many threads take, answer, abandon and cancel turns on a few hosts paced at one request per
/// millisecond: every caller finishes, and the queues end empty.
#[test]
fn stress_many_threads() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let pacer = Pacer::new().max_queue(10_000);
    let hosts = ["a:1", "b:1", "c:1", "d:1"];
    let done = std::sync::Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        let tasks: Vec<_> = (0..2000)
            .map(|i| {
                let (pacer, done) = (pacer.clone(), std::sync::Arc::clone(&done));
                let host = hosts[i % hosts.len()];
                tokio::spawn(async move {
                    match i % 5 {
                        // Gives up while queued (or right after its turn).
                        0 => {
                            let _ =
                                tokio::time::timeout(Duration::from_micros(200), pacer.acquire(host)).await;
                        }
                        // Never answered.
                        1 => drop(pacer.acquire(host).await.unwrap()),
                        // 1000 per second, plenty left.
                        _ => {
                            let permit = pacer.acquire(host).await.unwrap();
                            tokio::task::yield_now().await;
                            permit.answer(&rate(100, 0, 1000, 1), None);
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        let all = async {
            for task in tasks {
                task.await.unwrap();
            }
        };
        // A liveness guard, far above the ~0.5 s this takes: a lost wake-up would hang here.
        tokio::time::timeout(Duration::from_secs(120), all).await.expect("every caller finishes");
    });
    assert_eq!(done.load(Ordering::Relaxed), 2000);
    for host in hosts {
        assert_eq!(pacer.queued(host), 0, "{host}");
        assert_eq!(pacer.in_flight(host), 0, "{host}");
    }
}
