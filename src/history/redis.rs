//! The history shared through Redis: requests are batched in process and written about once
//! a second, so a request never waits on Redis for its history.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use redis::Pipeline;

use super::memory::Names;
use super::ring::{periods, Counts};
use super::{client_label, AdminReport, ClientUsage, HistoryError, NamedCount, UsageHistory, Visit};
use crate::key::Key;
use crate::side_redis::{client_tag, SideRedis};

const SHARDS: usize = 16;
/// How often the batches are written.
pub(super) const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long one write or read may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Minute keys live a little over an hour, hour keys a little over a day.
const MINUTE_TTL_S: u64 = 3_720;
const HOUR_TTL_S: u64 = 90_000;
/// Anonymous clients batched per shard and minute; beyond, only the totals count them.
const ANONYMOUS_PER_SHARD: usize = 256;
/// Anonymous clients written to the operator's view per flush: the busiest.
const ANONYMOUS_PER_FLUSH: usize = 100;

#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    admitted: u64,
    rejected: u64,
    tokens: u64,
}

impl Sums {
    fn add(&mut self, admitted: bool, tokens: u64) {
        if admitted {
            self.admitted += 1;
        } else {
            self.rejected += 1;
        }
        self.tokens = self.tokens.saturating_add(tokens);
    }

    fn merge(&mut self, other: Sums) {
        self.admitted += other.admitted;
        self.rejected += other.rejected;
        self.tokens = self.tokens.saturating_add(other.tokens);
    }
}

#[derive(Debug)]
struct Pending {
    name: Option<Box<str>>,
    tier: Arc<str>,
    identified: bool,
    sums: Sums,
}

#[derive(Debug, Default)]
struct MinuteBatch {
    clients: HashMap<Key, Pending, foldhash::fast::RandomState>,
    anonymous: usize,
    totals: Sums,
    rejected_by_tier: HashMap<Arc<str>, u64>,
    rejected_by_route: HashMap<Arc<str>, u64>,
}

impl MinuteBatch {
    fn merge(&mut self, other: MinuteBatch) {
        for (key, pending) in other.clients {
            match self.clients.get_mut(&key) {
                Some(mine) => mine.sums.merge(pending.sums),
                None => {
                    self.clients.insert(key, pending);
                }
            }
        }
        self.totals.merge(other.totals);
        for (tier, n) in other.rejected_by_tier {
            *self.rejected_by_tier.entry(tier).or_default() += n;
        }
        for (route, n) in other.rejected_by_route {
            *self.rejected_by_route.entry(route).or_default() += n;
        }
    }
}

/// Minute index → its batch (usually one entry; two across a minute boundary).
type Batch = HashMap<u32, MinuteBatch>;

#[derive(Debug, Default)]
struct Counters {
    flushes: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    redis: SideRedis,
    prefix: String,
    hasher: foldhash::fast::RandomState,
    shards: Box<[Mutex<Batch>]>,
    names: Names,
    flushing: tokio::sync::Mutex<()>,
    counters: Counters,
    last_warning: Mutex<Option<std::time::Instant>>,
}

/// The Redis form of [`History`](super::History).
#[derive(Debug)]
pub(super) struct RedisHistory {
    inner: Arc<Inner>,
    task: OnceLock<()>,
}

impl RedisHistory {
    pub(super) fn new(redis: SideRedis, prefix: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis,
                prefix,
                hasher: foldhash::fast::RandomState::default(),
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                names: Names::default(),
                flushing: tokio::sync::Mutex::new(()),
                counters: Counters::default(),
                last_warning: Mutex::new(None),
            }),
            task: OnceLock::new(),
        }
    }

    /// `(flushes, failed flushes, requests lost with them)`.
    pub(super) fn stats(&self) -> (u64, u64, u64) {
        let c = &self.inner.counters;
        (c.flushes.load(Ordering::Relaxed), c.errors.load(Ordering::Relaxed), c.lost.load(Ordering::Relaxed))
    }

    pub(super) fn record(&self, visit: &Visit<'_>) {
        self.start_flushing();
        let inner = &self.inner;
        let minute = (visit.at / 60) as u32;
        let shard = inner.hasher.hash_one(visit.key) as usize % SHARDS;
        let rejected = (!visit.admitted).then(|| (inner.names.get(visit.tier), inner.names.get(visit.route)));
        let mut batch = inner.shards[shard].lock().unwrap_or_else(PoisonError::into_inner);
        let batch = batch.entry(minute).or_default();
        batch.totals.add(visit.admitted, visit.tokens);
        if let Some((tier, route)) = rejected {
            *batch.rejected_by_tier.entry(tier).or_default() += 1;
            *batch.rejected_by_route.entry(route).or_default() += 1;
        }
        if let Some(pending) = batch.clients.get_mut(visit.key) {
            pending.sums.add(visit.admitted, visit.tokens);
            return;
        }
        if !visit.identified {
            if batch.anonymous >= ANONYMOUS_PER_SHARD {
                return;
            }
            batch.anonymous += 1;
        }
        let mut sums = Sums::default();
        sums.add(visit.admitted, visit.tokens);
        batch.clients.insert(
            visit.key.clone(),
            Pending {
                name: visit.name.map(Box::from),
                tier: inner.names.get(visit.tier),
                identified: visit.identified,
                sums,
            },
        );
    }

    /// Spawns the flushing task on the first record (inside the runtime serving requests).
    fn start_flushing(&self) {
        if self.task.get().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        self.task.get_or_init(|| {
            let weak: Weak<Inner> = Arc::downgrade(&self.inner);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(FLUSH_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let _ = inner.flush().await;
                }
            });
        });
    }

    pub(super) async fn flush(&self) -> Result<(), HistoryError> {
        self.inner.flush().await
    }

    pub(super) async fn client(&self, key: &Key, now: u64) -> Result<UsageHistory, HistoryError> {
        if key.ip().is_some() {
            return Ok(UsageHistory::default());
        }
        let _ = self.flush().await;
        let inner = &self.inner;
        let base = format!("{}:hist:{}", inner.prefix, client_tag(key));
        let (minute, hour) = ((now / 60) as u32, (now / 3_600) as u32);
        let mut pipe = redis::pipe();
        for m in minute.saturating_sub(59)..=minute {
            pipe.cmd("HMGET").arg(format!("{base}:m:{m}")).arg(&["a", "r", "t"]);
        }
        for h in hour.saturating_sub(23)..=hour {
            pipe.cmd("HMGET").arg(format!("{base}:h:{h}")).arg(&["a", "r", "t"]);
        }
        let rows: Vec<Vec<Option<u64>>> = inner.query(&pipe).await?;
        let counts = |row: &Vec<Option<u64>>| row_counts(row);
        let minutes: [Counts; 60] = std::array::from_fn(|i| rows.get(i).map(counts).unwrap_or_default());
        let hours: [Counts; 24] = std::array::from_fn(|i| rows.get(60 + i).map(counts).unwrap_or_default());
        Ok(UsageHistory { minutes: periods(&minutes, minute, 60), hours: periods(&hours, hour, 3_600) })
    }

    pub(super) async fn report(&self, now: u64, limit: usize) -> Result<AdminReport, HistoryError> {
        let _ = self.flush().await;
        let inner = &self.inner;
        let minute = (now / 60) as u32;
        let first = minute.saturating_sub(59);
        let admin = inner.admin_base();
        let keys = |kind: &str| (first..=minute).map(|m| format!("{admin}:{kind}:{m}")).collect::<Vec<_>>();
        let mut pipe = redis::pipe();
        for kind in ["t", "a", "r"] {
            pipe.cmd("ZUNION").arg(60).arg(keys(kind)).arg("WITHSCORES");
        }
        for kind in ["w", "rt", "rr"] {
            for key in keys(kind) {
                pipe.cmd("HGETALL").arg(key);
            }
        }
        for key in keys("tot") {
            pipe.cmd("HMGET").arg(key).arg(&["a", "r", "t"]);
        }
        let values: Vec<redis::Value> = inner.query(&pipe).await?;
        let parse = |e: redis::ParsingError| HistoryError::Redis(e.to_string());
        let mut values = values.into_iter();
        let mut next = || values.next().ok_or_else(|| HistoryError::Redis("short answer".into()));
        let scores = |v: redis::Value| -> Result<HashMap<String, f64>, HistoryError> {
            redis::from_redis_value(v).map_err(|e| HistoryError::Redis(e.to_string()))
        };
        let (tokens, admitted, rejected) = (scores(next()?)?, scores(next()?)?, scores(next()?)?);
        let mut who: HashMap<String, String> = HashMap::new();
        for _ in 0..60 {
            let minute_who: HashMap<String, String> = redis::from_redis_value(next()?).map_err(parse)?;
            who.extend(minute_who);
        }
        let mut by_tier: HashMap<String, u64> = HashMap::new();
        let mut by_route: HashMap<String, u64> = HashMap::new();
        for into in [&mut by_tier, &mut by_route] {
            for _ in 0..60 {
                let counts: HashMap<String, u64> = redis::from_redis_value(next()?).map_err(parse)?;
                for (name, n) in counts {
                    *into.entry(name).or_default() += n;
                }
            }
        }
        let mut totals = [Counts::default(); 60];
        for slot in &mut totals {
            let row: Vec<Option<u64>> = redis::from_redis_value(next()?).map_err(parse)?;
            *slot = row_counts(&row);
        }
        let score = |map: &HashMap<String, f64>, member: &str| map.get(member).map_or(0, |s| *s as u64);
        let clients = tokens
            .keys()
            .map(|member| {
                let (tier, label) = who
                    .get(member)
                    .and_then(|w| w.split_once('\n'))
                    .map_or(("?", "?"), |(tier, label)| (tier, label));
                ClientUsage {
                    client: label.to_owned(),
                    tier: tier.to_owned(),
                    admitted: score(&admitted, member),
                    rejected: score(&rejected, member),
                    tokens: score(&tokens, member),
                }
            })
            .collect();
        Ok(AdminReport::assemble(
            clients,
            limit,
            NamedCount::sorted(by_tier),
            NamedCount::sorted(by_route),
            periods(&totals, minute, 60),
        ))
    }
}

/// An `HMGET key a r t` answer as counts (missing fields are 0).
fn row_counts(row: &[Option<u64>]) -> Counts {
    let field = |i: usize| u32::try_from(row.get(i).copied().flatten().unwrap_or(0)).unwrap_or(u32::MAX);
    Counts { admitted: field(0), rejected: field(1), tokens: field(2) }
}

impl Inner {
    /// `<prefix>:{adm}`: every key of the operator's view shares one Cluster slot, so that
    /// `ZUNION` can read an hour of them at once.
    fn admin_base(&self) -> String {
        format!("{}:{{adm}}", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, HistoryError> {
        let mut conn = self.redis.get().map_err(|e| HistoryError::Redis(e.to_string()))?;
        match tokio::time::timeout(CALL_TIMEOUT, pipe.query_async(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(HistoryError::Redis(error.to_string())),
            Err(_) => Err(HistoryError::Redis(format!("no answer within {CALL_TIMEOUT:?}"))),
        }
    }

    fn take(&self) -> Batch {
        let mut all = Batch::new();
        for shard in self.shards.iter() {
            let batch = std::mem::take(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner));
            for (minute, minute_batch) in batch {
                all.entry(minute).or_default().merge(minute_batch);
            }
        }
        all
    }

    async fn flush(&self) -> Result<(), HistoryError> {
        let _one_at_a_time = self.flushing.lock().await;
        let batch = self.take();
        if batch.is_empty() {
            return Ok(());
        }
        let requests: u64 = batch.values().map(|b| b.totals.admitted + b.totals.rejected).sum();
        let pipelines = self.commands(batch);
        let result = if self.redis.is_cluster() {
            let calls = pipelines.iter().map(|pipe| self.query::<()>(pipe));
            futures_util::future::join_all(calls).await.into_iter().collect::<Result<Vec<()>, _>>().map(drop)
        } else {
            let mut one = redis::pipe();
            for pipe in &pipelines {
                for cmd in pipe.cmd_iter() {
                    one.add_command(cmd.clone()).ignore();
                }
            }
            self.query::<()>(&one).await
        };
        match &result {
            Ok(()) => {
                self.counters.flushes.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.counters.lost.fetch_add(requests, Ordering::Relaxed);
                self.warn(error);
            }
        }
        result
    }

    /// One warning a minute at most: a Redis outage must not flood the log.
    fn warn(&self, error: &HistoryError) {
        let mut last = self.last_warning.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        if last.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60)) {
            *last = Some(now);
            tracing::warn!(target: "tollgate::history", %error, "tollgate: usage history not written; these requests are left out of it");
        }
    }

    /// The writes of `batch`, one pipeline per Cluster slot: one per identified client, and
    /// one for the operator's view.
    fn commands(&self, batch: Batch) -> Vec<Pipeline> {
        let admin = self.admin_base();
        let mut pipelines = Vec::new();
        let mut view = redis::pipe();
        for (minute, mut batch) in batch {
            let hour = minute / 60;
            // The operator sees every identified client and the busiest anonymous ones.
            let mut anonymous: Vec<(Key, Pending)> = Vec::new();
            let mut shown: Vec<(String, String, Sums)> = Vec::new();
            for (key, pending) in batch.clients.drain() {
                if !pending.identified {
                    anonymous.push((key, pending));
                    continue;
                }
                let tag = client_tag(&key);
                let mut pipe = redis::pipe();
                let base = format!("{}:hist:{tag}", self.prefix);
                hincr(&mut pipe, &format!("{base}:m:{minute}"), pending.sums, MINUTE_TTL_S);
                hincr(&mut pipe, &format!("{base}:h:{hour}"), pending.sums, HOUR_TTL_S);
                pipelines.push(pipe);
                let label = client_label(&key, pending.name.as_deref());
                shown.push((tag, format!("{}\n{label}", pending.tier), pending.sums));
            }
            anonymous.sort_by_key(|(_, p)| std::cmp::Reverse(p.sums.tokens));
            for (key, pending) in anonymous.into_iter().take(ANONYMOUS_PER_FLUSH) {
                let label = client_label(&key, pending.name.as_deref());
                shown.push((client_tag(&key), format!("{}\n{label}", pending.tier), pending.sums));
            }
            let (t, a, r, w) = (
                format!("{admin}:t:{minute}"),
                format!("{admin}:a:{minute}"),
                format!("{admin}:r:{minute}"),
                format!("{admin}:w:{minute}"),
            );
            for (tag, who, sums) in &shown {
                let member = &tag[1..tag.len() - 1];
                view.cmd("ZINCRBY").arg(&t).arg(sums.tokens).arg(member).ignore();
                if sums.admitted > 0 {
                    view.cmd("ZINCRBY").arg(&a).arg(sums.admitted).arg(member).ignore();
                }
                if sums.rejected > 0 {
                    view.cmd("ZINCRBY").arg(&r).arg(sums.rejected).arg(member).ignore();
                }
                view.cmd("HSET").arg(&w).arg(member).arg(who).ignore();
            }
            if !shown.is_empty() {
                for key in [&t, &a, &r, &w] {
                    view.cmd("EXPIRE").arg(key).arg(MINUTE_TTL_S).ignore();
                }
            }
            for (kind, counts) in [("rt", &batch.rejected_by_tier), ("rr", &batch.rejected_by_route)] {
                if counts.is_empty() {
                    continue;
                }
                let key = format!("{admin}:{kind}:{minute}");
                for (name, n) in counts {
                    view.cmd("HINCRBY").arg(&key).arg(&**name).arg(*n).ignore();
                }
                view.cmd("EXPIRE").arg(&key).arg(MINUTE_TTL_S).ignore();
            }
            hincr(&mut view, &format!("{admin}:tot:{minute}"), batch.totals, MINUTE_TTL_S);
        }
        pipelines.push(view);
        pipelines
    }
}

/// `HINCRBY key a|r|t n` for each non-zero count, then `EXPIRE key ttl`.
fn hincr(pipe: &mut Pipeline, key: &str, sums: Sums, ttl: u64) {
    for (field, n) in [("a", sums.admitted), ("r", sums.rejected), ("t", sums.tokens)] {
        if n > 0 {
            pipe.cmd("HINCRBY").arg(key).arg(field).arg(n).ignore();
        }
    }
    pipe.cmd("EXPIRE").arg(key).arg(ttl).ignore();
}
