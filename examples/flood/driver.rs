//! The flood itself, shared by `examples/flood` (the long run of `scripts/flood.sh`) and
//! `tests/flood.rs` (the short run CI makes): a million first-time clients, each a distinct
//! address written by a trusted proxy into `X-Forwarded-For`, while one identified client
//! spends its burst a request at a time through the flood.
//!
//! Checked as it goes:
//! * every flooder is a new client, so every one of them is admitted on its first request;
//! * the identified client is answered exactly: `X-RateLimit-Remaining` counts down one per
//!   request from its burst, and the request after the last token is refused;
//! * the server's resident memory is sampled at every tenth of the flood.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to send, and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server, e.g. `http://127.0.0.1:3000`.
    pub base: String,
    /// The path every request asks for (a route of cost 1).
    pub path: String,
    /// Distinct client addresses, one request each.
    pub addresses: u64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// The identified client's API key, and the burst of its tier (a tier that refills so
    /// slowly that nothing comes back during the run, e.g. 1 an hour).
    pub partner: Option<(String, u64)>,
    /// Whose resident memory to sample (the server's process).
    pub pid: u32,
    /// Also GET this path every tenth of the flood, as a metrics scraper would.
    pub scrape: Option<String>,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Flood requests sent and answered.
    pub sent: u64,
    /// Of which admitted (200).
    pub admitted: u64,
    /// Statuses other than 200 seen by flooders, with their counts.
    pub refused: Vec<(u16, u64)>,
    /// The identified client's answers: (status, X-RateLimit-Remaining) in order.
    pub partner: Vec<(u16, Option<u64>)>,
    /// (flood requests answered, resident set in KiB) at each tenth.
    pub rss: Vec<(u64, u64)>,
    /// How long the flood took.
    pub elapsed: Duration,
}

impl Report {
    /// The identified client was answered exactly: remaining burst-1, burst-2 … 0, then a 429.
    pub fn partner_exact(&self, burst: u64) -> bool {
        let admitted = (0..burst).map(|k| (200, Some(burst - 1 - k)));
        let expected: Vec<_> = admitted.chain(std::iter::once((429, Some(0)))).collect();
        self.partner == expected
    }

    /// Growth of the resident set from the first sample at or past `from` (a share of the
    /// flood, after the store has filled) to the last, in KiB.
    pub fn growth_after(&self, from: f64) -> Option<(u64, u64)> {
        let start = (self.sent as f64 * from) as u64;
        let first = self.rss.iter().find(|(n, _)| *n >= start)?.1;
        let last = self.rss.last()?.1;
        Some((first, last))
    }

    /// One line per sample, then the totals.
    pub fn print(&self) {
        for (n, kib) in &self.rss {
            println!("  {n:>9} requests  rss {:>8.1} MiB", *kib as f64 / 1024.0);
        }
        println!(
            "sent {} flood requests in {:.1} s ({:.0}/s): {} admitted, refused {:?}",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.admitted,
            self.refused
        );
        println!("identified client: {:?}", self.partner);
    }
}

/// The `i`th flooder's address: even ones IPv4, odd ones IPv6, each in a /64 of its own (so
/// each is a distinct client under the default `ipv6_prefix = 64`).
pub fn address(i: u64) -> IpAddr {
    if i % 2 == 0 {
        IpAddr::V4(Ipv4Addr::from(0x0b00_0000u32.wrapping_add((i / 2) as u32)))
    } else {
        let n = i / 2;
        IpAddr::V6(Ipv6Addr::new(0x2001, 0x0db8, (n >> 16) as u16, n as u16, 0, 0, 0, 1))
    }
}

/// The resident set of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs the flood.
pub async fn flood(options: &Options) -> Report {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .build()
        .expect("an HTTP client");
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let url = format!("{}{}", options.base, options.path);

    let workers: Vec<_> = (0..options.concurrency)
        .map(|_| {
            let (client, next, done, url) = (client.clone(), next.clone(), done.clone(), url.clone());
            let total = options.addresses;
            tokio::spawn(async move {
                let mut statuses: Vec<(u16, u64)> = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let res = client
                        .get(&url)
                        .header("x-forwarded-for", address(i).to_string())
                        .send()
                        .await
                        .expect("the server answers");
                    let status = res.status().as_u16();
                    let _ = res.bytes().await;
                    match statuses.iter_mut().find(|(s, _)| *s == status) {
                        Some((_, n)) => *n += 1,
                        None => statuses.push((status, 1)),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                statuses
            })
        })
        .collect();

    // The identified client and the samples, at fixed points of the flood.
    let mut report = Report::default();
    let partner_requests = options.partner.as_ref().map_or(0, |(_, burst)| burst + 1);
    let mut partner_sent = 0;
    let mut tenth = 0;
    report.rss.push((0, rss_kib(options.pid)));
    loop {
        let answered = done.load(Ordering::Relaxed);
        // Spread the identified client's requests over the flood, from 5 % to 95 % of it.
        if let Some((key, _)) = &options.partner {
            let due = options.addresses / 20
                + (options.addresses * 9 / 10) * partner_sent / partner_requests.max(1);
            if partner_sent < partner_requests && answered >= due {
                let res = client
                    .get(&url)
                    .header("x-api-key", key)
                    .header("x-forwarded-for", "192.0.2.1")
                    .send()
                    .await
                    .expect("the server answers");
                let remaining =
                    res.headers().get("x-ratelimit-remaining").and_then(|v| v.to_str().ok()?.parse().ok());
                report.partner.push((res.status().as_u16(), remaining));
                partner_sent += 1;
                continue;
            }
        }
        if answered >= options.addresses * (tenth + 1) / 10 {
            tenth += 1;
            if let Some(path) = &options.scrape {
                let _ = client.get(format!("{}{path}", options.base)).send().await.map(|r| r.bytes());
            }
            report.rss.push((answered, rss_kib(options.pid)));
            if tenth == 10 {
                break;
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for worker in workers {
        for (status, n) in worker.await.expect("a flood worker") {
            if status == 200 {
                report.admitted += n;
            } else {
                match report.refused.iter_mut().find(|(s, _)| *s == status) {
                    Some((_, m)) => *m += n,
                    None => report.refused.push((status, n)),
                }
            }
            report.sent += n;
        }
    }
    report.elapsed = started.elapsed();
    report
}
