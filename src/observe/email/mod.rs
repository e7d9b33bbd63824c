//! Near-quota emails, sent off the request's path through an SMTP relay (lettre).

mod dedupe;
mod message;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentTransferEncoding;
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::mpsc;

pub use message::Notice;

use super::near_quota::{NearQuotaEvent, OnNearQuota};
use crate::clock::{Clock, SystemClock};
use crate::key::Key;
use dedupe::MemoryDedupe;

/// Why [`EmailAlerts`] could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum EmailError {
    /// The relay URL is not `smtp://HOST[:PORT]`, `smtp://HOST[:PORT]?tls=required` or
    /// `smtps://HOST[:PORT]` (with optional `USER:PASSWORD@`).
    BadRelay(String),
    /// The sender is not an email address.
    BadFrom(String),
    /// The Redis URL of the shared dedupe is invalid.
    BadRedis(String),
    /// Not called inside a Tokio runtime: the sender task has nowhere to run.
    NoRuntime,
}

impl fmt::Display for EmailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRelay(why) => write!(
                f,
                "not an SMTP relay URL ({why}): write smtp://HOST:PORT (plain), \
                 smtp://HOST:PORT?tls=required (STARTTLS) or smtps://HOST:PORT (TLS)"
            ),
            Self::BadFrom(from) => write!(f, "`{from}` is not an email address"),
            Self::BadRedis(why) => write!(f, "invalid Redis address for the email dedupe: {why}"),
            Self::NoRuntime => f.write_str("email alerts must be started inside a Tokio runtime"),
        }
    }
}

impl std::error::Error for EmailError {}

/// What [`EmailAlerts`] has done so far; each count only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmailStats {
    /// Emails the relay accepted.
    pub sent: u64,
    /// Emails that could not be sent: no connection, a timeout, a refusal, a bad address.
    pub failed: u64,
    /// Emails not sent because one went to the same client for the same policy less than
    /// `min_interval` ago (on this instance, or on any instance sharing the Redis dedupe).
    pub deduplicated: u64,
    /// Emails dropped because the queue was full (the relay is slower than the alerts).
    pub dropped: u64,
    /// Redis dedupe calls that failed (the in-process dedupe decided instead).
    pub dedupe_errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    deduplicated: AtomicU64,
    dropped: AtomicU64,
    dedupe_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Sends near-quota emails through an SMTP relay, never on a request's path.
///
/// [`notify`](Self::notify) only puts the email on a bounded queue (`try_send`): when the queue
/// is full the email is dropped and counted, so a slow or dead relay never delays a request. A
/// background Tokio task takes the queue in order: it claims the dedupe (at most one email per
/// client and policy per [`min_interval`](EmailAlertsBuilder::min_interval), one day by
/// default), builds the message ([`Notice`]: plain text and HTML), and hands it to lettre's
/// async SMTP transport with a timeout. A failure is counted ([`stats`](Self::stats)), logged
/// (at most one warning a minute), and releases the dedupe claim so that a later crossing may
/// try again. No retries. The task ends when every clone of the `EmailAlerts` is dropped.
///
/// With [`redis`](EmailAlertsBuilder::redis) the dedupe is shared by every instance through a
/// Redis key set with `SET … NX PX`, so `n` instances that see the same crossing send one
/// email, not `n`. If Redis cannot answer, this instance's own record decides.
///
/// ```
/// use std::time::Duration;
/// use tollgate::key::Key;
/// use tollgate::observe::{EmailAlerts, Notice};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let alerts = EmailAlerts::builder("smtp://127.0.0.1:2525", "limits@example.com")
///     .min_interval(Duration::from_secs(86_400))
///     .queue(64)
///     .start()
///     .unwrap();
/// alerts.notify(&Key::new("acme-key"), Notice::new("ops@acme.example", "pro", "pro", 100, 20, 1_700_000_060, 1_700_000_000));
/// assert_eq!(alerts.stats().dropped, 0);
/// assert!(EmailAlerts::builder("http://example.com", "a@b.example").start().is_err());
/// assert!(EmailAlerts::builder("smtp://127.0.0.1:2525", "not an address").start().is_err());
/// # }
/// ```
#[derive(Clone)]
pub struct EmailAlerts {
    queue: mpsc::Sender<(Key, Notice)>,
    counters: Arc<Counters>,
}

impl fmt::Debug for EmailAlerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailAlerts").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// Settings of [`EmailAlerts`]; made by [`EmailAlerts::builder`].
pub struct EmailAlertsBuilder {
    relay: String,
    from: String,
    min_interval: Duration,
    queue: usize,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    /// The Redis of the shared dedupe: a node's URL or a Cluster's nodes, and the prefix.
    #[cfg(feature = "redis")]
    redis: Option<(Result<String, Vec<String>>, String)>,
}

impl fmt::Debug for EmailAlertsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The relay URL may hold a password: not shown.
        f.debug_struct("EmailAlertsBuilder")
            .field("from", &self.from)
            .field("min_interval", &self.min_interval)
            .field("queue", &self.queue)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EmailAlertsBuilder {
    /// Sends at most one email per client and policy in `interval` (one day by default; at
    /// least one millisecond).
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Holds at most `emails` waiting emails (256 by default; at least 1).
    pub fn queue(mut self, emails: usize) -> Self {
        self.queue = emails.max(1);
        self
    }

    /// Gives each email at most `timeout` (10 s by default), connection included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Reads time for the in-process dedupe from `clock` (the system clock by default).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Shares the dedupe with every instance through the Redis at `url`, under keys
    /// `<prefix>:mail:{<client digest>}:<policy>` (the client digest of the Redis store: no
    /// API key appears in Redis).
    #[cfg(feature = "redis")]
    pub fn redis(mut self, url: impl Into<String>, prefix: impl Into<String>) -> Self {
        self.redis = Some((Ok(url.into()), prefix.into()));
        self
    }

    /// Like [`redis`](Self::redis), on the Redis Cluster that `nodes` belong to.
    #[cfg(feature = "redis")]
    pub fn redis_cluster(mut self, nodes: &[String], prefix: impl Into<String>) -> Self {
        self.redis = Some((Err(nodes.to_vec()), prefix.into()));
        self
    }

    /// Checks the relay URL and the sender, and starts the sender task on the current Tokio
    /// runtime. Connects to nothing: the first email does.
    pub fn start(self) -> Result<EmailAlerts, EmailError> {
        let from: Mailbox = self.from.parse().map_err(|_| EmailError::BadFrom(self.from.clone()))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&self.relay)
            .map_err(|e| EmailError::BadRelay(e.to_string()))?
            .timeout(Some(self.timeout))
            .build();
        #[cfg(feature = "redis")]
        let shared = match &self.redis {
            Some((target, prefix)) => Some(dedupe::RedisDedupe {
                redis: match target {
                    Ok(url) => crate::side_redis::SideRedis::node(url),
                    Err(nodes) => crate::side_redis::SideRedis::cluster(nodes),
                }
                .map_err(|e| EmailError::BadRedis(e.to_string()))?,
                prefix: prefix.clone(),
            }),
            None => None,
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| EmailError::NoRuntime)?;
        let (queue, emails) = mpsc::channel(self.queue);
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            transport,
            from,
            timeout: self.timeout,
            min_interval: self.min_interval,
            memory: MemoryDedupe::new(self.clock),
            #[cfg(feature = "redis")]
            shared,
            counters: counters.clone(),
            last_warning: None,
        };
        runtime.spawn(worker.run(emails));
        Ok(EmailAlerts { queue, counters })
    }
}

impl EmailAlerts {
    /// Checks a relay URL and a sender address without starting anything (what a
    /// configuration checks at load).
    ///
    /// ```
    /// use tollgate::observe::EmailAlerts;
    /// assert!(EmailAlerts::check("smtps://mail.example.com:465", "Limits <limits@example.com>").is_ok());
    /// assert!(EmailAlerts::check("http://mail.example.com", "limits@example.com").is_err());
    /// assert!(EmailAlerts::check("smtp://127.0.0.1:2525", "limits").is_err());
    /// ```
    pub fn check(relay: &str, from: &str) -> Result<(), EmailError> {
        from.parse::<Mailbox>().map_err(|_| EmailError::BadFrom(from.to_owned()))?;
        AsyncSmtpTransport::<Tokio1Executor>::from_url(relay)
            .map_err(|e| EmailError::BadRelay(e.to_string()))?;
        Ok(())
    }

    /// True when `text` is one email address (`user@example.com`, no display name).
    ///
    /// ```
    /// use tollgate::observe::EmailAlerts;
    /// assert!(EmailAlerts::is_address("ops@acme.example"));
    /// assert!(!EmailAlerts::is_address("ops at acme"));
    /// assert!(!EmailAlerts::is_address("Ops <ops@acme.example>"));
    /// ```
    pub fn is_address(text: &str) -> bool {
        text.parse::<lettre::Address>().is_ok()
    }

    /// Settings for emails sent through `relay` (`smtp://HOST:PORT`, `smtps://HOST:PORT`, …)
    /// from the address `from`.
    pub fn builder(relay: impl Into<String>, from: impl Into<String>) -> EmailAlertsBuilder {
        EmailAlertsBuilder {
            relay: relay.into(),
            from: from.into(),
            min_interval: Duration::from_secs(86_400),
            queue: 256,
            timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock::new()),
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// Queues `notice` for the client `key` (the dedupe's identity of the client). Returns at
    /// once; when the queue is full the email is dropped and counted.
    pub fn notify(&self, key: &Key, notice: Notice) {
        if self.queue.try_send((key.clone(), notice)).is_err() {
            bump(&self.counters.dropped);
        }
    }

    /// What has been sent, failed, deduplicated and dropped so far.
    pub fn stats(&self) -> EmailStats {
        let c = &self.counters;
        EmailStats {
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            deduplicated: c.deduplicated.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            dedupe_errors: c.dedupe_errors.load(Ordering::Relaxed),
        }
    }
}

/// Emails the client of each near-quota event that has an address (`email` in the long form
/// of `[api_keys]`, or an authentication layer's
/// [`Client::with_email`](crate::key::Client::with_email)); events of clients without one are
/// left to the other hooks.
impl OnNearQuota for EmailAlerts {
    fn on_near_quota(&self, event: &NearQuotaEvent) {
        let Some(to) = &event.email else { return };
        let mut notice = Notice::new(
            to.clone(),
            &event.tier,
            &event.policy,
            event.limit,
            event.remaining,
            event.reset,
            event.at,
        );
        notice.name = event.name.clone();
        notice.upgrade_url = event.upgrade_url.clone();
        self.notify(&event.key, notice);
    }
}

struct Worker {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
    min_interval: Duration,
    memory: MemoryDedupe,
    #[cfg(feature = "redis")]
    shared: Option<dedupe::RedisDedupe>,
    counters: Arc<Counters>,
    last_warning: Option<tokio::time::Instant>,
}

impl Worker {
    async fn run(mut self, mut emails: mpsc::Receiver<(Key, Notice)>) {
        while let Some((key, notice)) = emails.recv().await {
            if !self.claim(&key, &notice.policy).await {
                bump(&self.counters.deduplicated);
                continue;
            }
            match self.send(&notice).await {
                Ok(()) => bump(&self.counters.sent),
                Err(error) => {
                    bump(&self.counters.failed);
                    self.release(&key, &notice.policy).await;
                    self.warn(&format!("cannot send a near-quota email: {error}"));
                }
            }
        }
    }

    async fn claim(&mut self, key: &Key, policy: &str) -> bool {
        let interval = self.min_interval;
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            let millis = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
            match tokio::time::timeout(self.timeout, shared.claim(key, policy, millis)).await {
                Ok(Ok(claimed)) => return claimed,
                Ok(Err(error)) => {
                    bump(&self.counters.dedupe_errors);
                    self.warn(&format!("email dedupe: Redis failed ({error}); deciding locally"));
                }
                Err(_) => {
                    bump(&self.counters.dedupe_errors);
                    self.warn("email dedupe: Redis did not answer in time; deciding locally");
                }
            }
        }
        self.memory.claim(key, policy, interval.into())
    }

    async fn release(&mut self, key: &Key, policy: &str) {
        self.memory.release(key, policy);
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            let _ = tokio::time::timeout(self.timeout, shared.release(key, policy)).await;
        }
    }

    async fn send(&self, notice: &Notice) -> Result<(), String> {
        let message = message(&self.from, notice)?;
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("the relay did not answer within {:?}", self.timeout)),
        }
    }

    /// One warning a minute at most: a dead relay must not flood the log.
    fn warn(&mut self, message: &str) {
        let now = tokio::time::Instant::now();
        if self.last_warning.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60)) {
            self.last_warning = Some(now);
            tracing::warn!(target: "tollgate::email", "tollgate: {message}");
        }
    }
}

/// The email of `notice`, from `from`: a `multipart/alternative` of the plain text and the
/// HTML, both quoted-printable (safe for any relay, 7-bit, short lines).
fn message(from: &Mailbox, notice: &Notice) -> Result<Message, String> {
    let address = notice.to.parse().map_err(|_| format!("`{}` is not an email address", notice.to))?;
    let to = Mailbox::new(notice.name.clone(), address);
    let part = |kind: ContentType, body: String| {
        SinglePart::builder().header(kind).header(ContentTransferEncoding::QuotedPrintable).body(body)
    };
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(notice.subject())
        .multipart(
            MultiPart::alternative()
                .singlepart(part(ContentType::TEXT_PLAIN, notice.text()))
                .singlepart(part(ContentType::TEXT_HTML, notice.html())),
        )
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_has_both_parts_the_subject_and_the_recipient() {
        let from: Mailbox = "Limits <limits@example.com>".parse().unwrap();
        let notice = Notice::new("ops@acme.example", "pro", "pro", 100, 20, 1_700_000_060, 1_700_000_000)
            .name("Acme Corp");
        let raw = String::from_utf8(message(&from, &notice).unwrap().formatted()).unwrap();
        assert!(raw.contains("To: \"Acme Corp\" <ops@acme.example>"), "{raw}");
        assert!(raw.contains("Subject: You have used 80% of your \"pro\" API limit"), "{raw}");
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("Content-Type: text/plain; charset=utf-8"), "{raw}");
        assert!(raw.contains("Content-Type: text/html; charset=utf-8"), "{raw}");
        assert!(raw.contains("Content-Transfer-Encoding: quoted-printable"), "{raw}");
        assert!(message(&from, &Notice::new("nobody", "pro", "pro", 1, 0, 0, 0)).is_err());
    }
}
