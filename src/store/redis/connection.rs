//! The connection: one node (a multiplexed, auto-reconnecting `ConnectionManager`) or a Redis
//! Cluster (redis-rs' async cluster connection, which follows slots and redirections), made
//! lazily on first use so a store can be built synchronously, outside any runtime, while Redis
//! is down.

use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, ScriptInvocation};

/// How long one attempt to open a TCP connection may take (reconnects run in the background,
/// so this never delays a request beyond the store's own timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection backoff: start at 10 ms, never wait more than 100 ms between attempts, so a
/// restarted Redis is found again within about a tenth of a second of accepting connections.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(10);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(100);

/// Where Redis is, parsed and checked but not connected.
#[derive(Clone)]
pub(super) enum Target {
    Node(redis::Client),
    Cluster(Box<ClusterClient>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never print URLs: they may hold passwords.
            Self::Node(_) => f.write_str("Node"),
            Self::Cluster(_) => f.write_str("Cluster"),
        }
    }
}

impl Target {
    pub(super) fn node(url: &str) -> RedisResult<Self> {
        redis::Client::open(url).map(Self::Node)
    }

    pub(super) fn cluster(nodes: &[String]) -> RedisResult<Self> {
        ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()
            .map(|client| Self::Cluster(Box::new(client)))
    }

    /// Starts connecting (in the background). Needs a Tokio runtime.
    fn connect(&self) -> RedisResult<Conn> {
        match self {
            Self::Node(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_min_delay(RECONNECT_MIN_DELAY)
                    .set_max_delay(RECONNECT_MAX_DELAY);
                ConnectionManager::new_lazy_with_config(client.clone(), config).map(Conn::Node)
            }
            Self::Cluster(client) => {
                let config = ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT);
                Ok(Conn::Cluster(client.get_pending_async_connection_with_config(config)))
            }
        }
    }
}

#[derive(Clone)]
pub(super) enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub(super) async fn invoke(&mut self, invocation: &ScriptInvocation<'_>) -> RedisResult<Vec<i64>> {
        match self {
            Self::Node(conn) => invocation.invoke_async(conn).await,
            Self::Cluster(conn) => invocation.invoke_async(conn).await,
        }
    }
}

/// A connection made on first use.
pub(super) struct Lazy {
    target: Target,
    conn: OnceLock<Conn>,
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("target", &self.target)
            .field("started", &self.conn.get().is_some())
            .finish()
    }
}

impl Lazy {
    pub(super) fn new(target: Target) -> Self {
        Self { target, conn: OnceLock::new() }
    }

    /// The connection (a cheap clone), started on first call. Must be called inside a Tokio
    /// runtime, which then drives its background tasks.
    pub(super) fn get(&self) -> RedisResult<Conn> {
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        let conn = self.target.connect()?;
        // Two first callers may race: one connection wins, the other is dropped unused.
        Ok(self.conn.get_or_init(|| conn).clone())
    }
}
