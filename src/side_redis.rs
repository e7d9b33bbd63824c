//! A Redis connection for the limiter's side channels (the email dedupe, the usage history):
//! one node (a multiplexed, auto-reconnecting `ConnectionManager`) or a Redis Cluster, made
//! lazily on first use so that it can be configured outside a runtime and while Redis is down.
//!
//! These channels never sit on a request's path: a call that fails is counted and logged by
//! its caller, never retried here.

use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
enum Target {
    Node(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// A lazily opened connection to one Redis node or a Cluster.
pub(crate) struct SideRedis {
    target: Target,
    conn: OnceLock<Conn>,
}

impl std::fmt::Debug for SideRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the URL: it may hold a password.
        f.debug_struct("SideRedis")
            .field("cluster", &matches!(self.target, Target::Cluster(_)))
            .field("started", &self.conn.get().is_some())
            .finish()
    }
}

impl SideRedis {
    /// A connection to the node at `url` (`redis://`, `rediss://`, `unix://`).
    pub(crate) fn node(url: &str) -> RedisResult<Self> {
        Ok(Self { target: Target::Node(redis::Client::open(url)?), conn: OnceLock::new() })
    }

    /// A connection to the Cluster that `nodes` belong to.
    pub(crate) fn cluster(nodes: &[String]) -> RedisResult<Self> {
        let client = ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Self { target: Target::Cluster(Box::new(client)), conn: OnceLock::new() })
    }

    /// True for a Cluster: a pipeline must then stay within one hash slot.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The connection (a cheap clone), started on first call. Must be called inside a Tokio
    /// runtime.
    pub(crate) fn get(&self) -> RedisResult<Conn> {
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        let conn = match &self.target {
            Target::Node(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(500));
                Conn::Node(ConnectionManager::new_lazy_with_config(client.clone(), config)?)
            }
            Target::Cluster(client) => Conn::Cluster(client.get_pending_async_connection_with_config(
                redis::cluster::ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT),
            )),
        };
        Ok(self.conn.get_or_init(|| conn).clone())
    }
}

/// An open connection, usable with `query_async`.
#[derive(Clone)]
pub(crate) enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// `{<first 128 bits of the SHA-1 of the key's display form, in hex>}`: the same client
/// digest (and so the same Cluster slot) as the Redis store uses, so a raw API key never
/// appears in Redis.
pub(crate) fn client_tag(key: &crate::key::Key) -> String {
    use std::fmt::Write;
    let digest = sha1_smol::Sha1::from(key.to_string()).digest().bytes();
    let mut tag = String::with_capacity(34);
    tag.push('{');
    for byte in &digest[..16] {
        let _ = write!(tag, "{byte:02x}");
    }
    tag.push('}');
    tag
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    #[test]
    fn tags_hide_the_key_and_differ_per_client() {
        let a = client_tag(&Key::new("sk_live_secret"));
        assert_eq!(a.len(), 34);
        assert!(a.starts_with('{') && a.ends_with('}'));
        assert!(!a.contains("secret"));
        assert_ne!(a, client_tag(&Key::new("sk_live_other")));
        assert_eq!(a, client_tag(&Key::new("sk_live_secret")));
    }

    #[test]
    fn urls_are_checked_and_never_printed() {
        assert!(SideRedis::node("not a url").is_err());
        let side = SideRedis::node("redis://:hunter2@127.0.0.1:6379").unwrap();
        assert!(!format!("{side:?}").contains("hunter2"));
        assert!(!side.is_cluster());
    }
}
