//! The allow list: clients that are never limited.

use std::collections::HashSet;
use std::sync::Arc;

use http::header::HeaderName;
use http::request::Parts;
use ipnet::IpNet;

use super::ClientIp;

/// Clients never limited, never charged and never given rate-limit headers, like an exempt
/// route (`[allow]` in the configuration): addresses in some networks, and holders of some
/// `X-API-Key` values (which need not be keys of `[api_keys]`).
///
/// The address is the client IP as the limiter resolves it, after trusted proxies (the
/// [`ClientIp`] given to [`resolver`](Self::resolver)). The layer checks the list before it
/// looks anything else up: an allowed request costs no store call.
///
/// ```
/// use tollgate::key::{AllowList, ClientIp};
///
/// let allow = AllowList::new()
///     .ips(["10.20.0.0/16".parse().unwrap()])
///     .keys(["internal-monitor-key"])
///     .resolver(ClientIp::new().trusted(["192.0.2.0/24".parse().unwrap()]));
/// let request = |peer: &str, headers: &[(&str, &str)]| {
///     let mut req = http::Request::new(());
///     for (name, value) in headers {
///         req.headers_mut().insert(http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
///     }
///     req.extensions_mut().insert(peer.parse::<std::net::SocketAddr>().unwrap());
///     req.into_parts().0
/// };
/// assert!(allow.allows(&request("10.20.3.4:5000", &[])));
/// assert!(allow.allows(&request("192.0.2.1:5000", &[("x-forwarded-for", "10.20.9.9")])), "behind a trusted proxy");
/// assert!(!allow.allows(&request("203.0.113.1:5000", &[("x-forwarded-for", "10.20.9.9")])), "a forged header");
/// assert!(allow.allows(&request("203.0.113.1:5000", &[("x-api-key", "internal-monitor-key")])));
/// assert!(!allow.allows(&request("203.0.113.1:5000", &[("x-api-key", "guess")])));
/// assert!(AllowList::new().is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct AllowList {
    ips: Arc<[IpNet]>,
    keys: Arc<HashSet<Box<str>, foldhash::fast::RandomState>>,
    header: HeaderName,
    resolver: ClientIp,
}

impl Default for AllowList {
    fn default() -> Self {
        Self::new()
    }
}

impl AllowList {
    /// An empty list: nobody is allowed through unlimited. Keys are read from `X-API-Key`, and
    /// addresses are TCP peers (no trusted proxies) until [`resolver`](Self::resolver) says
    /// otherwise.
    pub fn new() -> Self {
        Self {
            ips: Arc::new([]),
            keys: Arc::default(),
            header: HeaderName::from_static("x-api-key"),
            resolver: ClientIp::new(),
        }
    }

    /// Allows clients whose address is in one of `networks`.
    pub fn ips(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.ips = networks.into_iter().collect();
        self
    }

    /// Allows requests carrying one of `keys` in the key header.
    pub fn keys<S: AsRef<str>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.keys = Arc::new(keys.into_iter().map(|k| Box::from(k.as_ref())).collect());
        self
    }

    /// Reads keys from `header` instead of `X-API-Key`.
    ///
    /// # Panics
    /// When `header` is not a valid header name.
    pub fn header(mut self, header: &str) -> Self {
        self.header = HeaderName::try_from(header).expect("a valid header name");
        self
    }

    /// Finds the client's address as `resolver` does (its trusted proxies).
    pub fn resolver(mut self, resolver: ClientIp) -> Self {
        self.resolver = resolver;
        self
    }

    /// True when nobody is allowed: the layer then skips the check.
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.keys.is_empty()
    }

    /// True when the request comes from an allowed address or carries an allowed key.
    pub fn allows(&self, parts: &Parts) -> bool {
        if !self.keys.is_empty() {
            let key = parts.headers.get(&self.header).and_then(|v| v.to_str().ok());
            if key.is_some_and(|key| self.keys.contains(key)) {
                return true;
            }
        }
        !self.ips.is_empty()
            && self.resolver.client_of(parts).is_some_and(|ip| self.ips.iter().any(|net| net.contains(&ip)))
    }
}
