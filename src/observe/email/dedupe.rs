//! At most one email per client and policy per interval: in process, or shared through Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::clock::{Clock, Nanos};
use crate::key::Key;

/// `(client, policy)` pairs remembered at most by the in-process dedupe. Beyond that, expired
/// entries are dropped; when none has expired, an email goes out without being remembered
/// (an email too many rather than one missed). Emails go only to clients with an address, so
/// this is far more than a configuration names.
const REMEMBERED: usize = 100_000;

/// The in-process record of emails sent: `(client, policy)` → the time before which no other
/// email goes out.
pub(super) struct MemoryDedupe {
    clock: Arc<dyn Clock>,
    sent: Mutex<HashMap<(Key, Box<str>), Nanos, foldhash::fast::RandomState>>,
}

impl std::fmt::Debug for MemoryDedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.sent.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("MemoryDedupe").field("remembered", &len).finish()
    }
}

impl MemoryDedupe {
    pub(super) fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, sent: Mutex::default() }
    }

    /// True when no email for `(key, policy)` went out in the last `interval`; then
    /// remembers this one.
    pub(super) fn claim(&self, key: &Key, policy: &str, interval: Nanos) -> bool {
        let now = self.clock.now();
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        let pair = (key.clone(), Box::<str>::from(policy));
        if sent.get(&pair).is_some_and(|&until| now < until) {
            return false;
        }
        if sent.len() >= REMEMBERED && !sent.contains_key(&pair) {
            sent.retain(|_, &mut until| now < until);
            if sent.len() >= REMEMBERED {
                return true;
            }
        }
        sent.insert(pair, now.saturating_add(interval));
        true
    }

    /// Forgets a claim whose email could not be sent, so that a later crossing may try again.
    pub(super) fn release(&self, key: &Key, policy: &str) {
        let pair = (key.clone(), Box::<str>::from(policy));
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).remove(&pair);
    }
}

/// The dedupe shared by every instance: `SET <prefix>:mail:{<client digest>}:<policy> 1 NX PX
/// <interval>`. Only the instance whose `SET` succeeds sends; the key expires by itself.
#[cfg(feature = "redis")]
pub(super) struct RedisDedupe {
    pub(super) redis: crate::side_redis::SideRedis,
    pub(super) prefix: String,
}

#[cfg(feature = "redis")]
impl RedisDedupe {
    fn name(&self, key: &Key, policy: &str) -> String {
        format!("{}:mail:{}:{policy}", self.prefix, crate::side_redis::client_tag(key))
    }

    pub(super) async fn claim(&self, key: &Key, policy: &str, interval_ms: u64) -> redis::RedisResult<bool> {
        let mut conn = self.redis.get()?;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.name(key, policy))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(interval_ms.max(1))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    pub(super) async fn release(&self, key: &Key, policy: &str) -> redis::RedisResult<()> {
        let mut conn = self.redis.get()?;
        redis::cmd("DEL").arg(self.name(key, policy)).query_async::<()>(&mut conn).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn one_claim_per_client_policy_and_interval() {
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        let dedupe = MemoryDedupe::new(Arc::new(clock.clone()));
        let day = Nanos::from_secs(86_400);
        let (a, b) = (Key::new("a"), Key::new("b"));
        assert!(dedupe.claim(&a, "free", day));
        assert!(!dedupe.claim(&a, "free", day));
        assert!(dedupe.claim(&a, "free-daily", day), "another policy");
        assert!(dedupe.claim(&b, "free", day), "another client");
        clock.advance(Duration::from_secs(86_399));
        assert!(!dedupe.claim(&a, "free", day));
        clock.advance(Duration::from_secs(1));
        assert!(dedupe.claim(&a, "free", day), "a day later");
        dedupe.release(&a, "free");
        assert!(dedupe.claim(&a, "free", day), "released after a failed send");
    }
}
