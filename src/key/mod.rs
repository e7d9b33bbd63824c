//! Who is asking: the [`Key`] a client is limited by, and the extractors that find it.
//!
//! An extractor looks at the request's [`Parts`] and returns a [`Client`]: a key, and
//! optionally the name of the tier the client belongs to. Extractors chain with
//! [`KeyExtractor::or`]: the first that recognises the request wins.
//!
//! Ready implementations:
//! * [`ApiKeys`]: an API key header looked up in a table of known keys → tier. An unknown,
//!   non-UTF-8 or absurdly long key is *not* recognised, so inventing keys never buys a bucket.
//! * [`ClientIp`]: the TCP peer (axum's `ConnectInfo<SocketAddr>` or a bare `SocketAddr`
//!   extension), or, only when the peer is a trusted proxy, the right-most untrusted address of
//!   the one header that proxy writes ([`ClientIpHeader`]: `X-Forwarded-For` by default,
//!   `Forwarded` or `X-Real-IP`); the others are the client's own claims and are ignored. IPv6
//!   clients are keyed by their prefix (default /64), so rotating addresses inside one
//!   allocation buys nothing.
//! * [`FromExtension`]: a [`Client`] an authentication layer put into the request extensions.
//! * Any closure `Fn(&Parts) -> Option<Client>`.
//!
//! ```
//! use tollgate::key::{ApiKeys, ClientIp, Client, Key, KeyExtractor};
//! use http::Request;
//! use std::net::SocketAddr;
//!
//! let keys = ApiKeys::new("x-api-key").key("k-123", "pro");
//! let extractor = keys.or(ClientIp::new());
//!
//! let mut req = Request::builder().header("x-api-key", "k-123").body(()).unwrap();
//! let (parts, _) = req.into_parts();
//! let client = extractor.extract(&parts).unwrap();
//! assert_eq!(client.tier(), Some("pro"));
//!
//! let mut req = Request::builder().header("x-api-key", "made-up").body(()).unwrap();
//! req.extensions_mut().insert("192.0.2.7:5555".parse::<SocketAddr>().unwrap());
//! let (parts, _) = req.into_parts();
//! let client = extractor.extract(&parts).unwrap();
//! assert_eq!(client.key(), &Key::from_ip("192.0.2.7".parse().unwrap()));
//! assert_eq!(client.tier(), None); // the default tier
//! ```

mod allow;
mod api_key;
mod ip;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::request::Parts;

use crate::policy::{Limits, Tier};

pub use allow::AllowList;
pub use api_key::ApiKeys;
pub use ip::{ClientIp, ClientIpHeader, UnknownClientIpHeader};

/// The extractor a configuration builds: a [`Client`] set by an auth layer, else a known API
/// key (`X-API-Key`), else the client IP.
pub type DefaultExtractor = Or<Or<FromExtension, ApiKeys>, ClientIp>;

/// The identity a client is limited by. Cheap to clone (an address, or a shared string).
///
/// Keys are compared by value; a store hashes them with a per-process random seed.
///
/// ```
/// use tollgate::key::Key;
/// let a = Key::new("user-42");
/// assert_eq!(a, Key::new(String::from("user-42")));
/// assert_ne!(a, Key::new("user-43"));
/// assert_eq!(a.to_string(), "id:user-42");
/// assert_eq!(Key::from_ip("::1".parse().unwrap()).to_string(), "ip:::1");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Ip(IpAddr),
    Name(Arc<str>),
}

impl Key {
    /// A key named by a string (an API key, a user id, a tenant).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(Repr::Name(name.into()))
    }

    /// A key for a client address (already reduced to its prefix, if wanted).
    pub fn from_ip(ip: IpAddr) -> Self {
        Self(Repr::Ip(ip))
    }

    /// The address, when this key is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match &self.0 {
            Repr::Ip(ip) => Some(*ip),
            Repr::Name(_) => None,
        }
    }

    /// The name, when this key is one (an API key is a secret: never show it whole).
    ///
    /// ```
    /// use tollgate::key::Key;
    /// assert_eq!(Key::new("user-42").name(), Some("user-42"));
    /// assert_eq!(Key::from_ip("::1".parse().unwrap()).name(), None);
    /// ```
    pub fn name(&self) -> Option<&str> {
        match &self.0 {
            Repr::Ip(_) => None,
            Repr::Name(name) => Some(name),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Ip(ip) => write!(f, "ip:{ip}"),
            Repr::Name(name) => write!(f, "id:{name}"),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Ip(ip) => write!(f, "Key(ip {ip})"),
            // A key may be a secret (an API key): show only its length.
            Repr::Name(name) => write!(f, "Key(name, {} bytes)", name.len()),
        }
    }
}

/// A recognised client: its key, the tier it belongs to (`None`: the default tier), and
/// optionally how people know it (`name`) and where to write to it (`email`, for near-quota
/// emails).
///
/// An authentication layer can insert a `Client` into the request extensions for
/// [`FromExtension`] to find.
///
/// ```
/// use tollgate::key::{Client, Key};
/// let c = Client::new(Key::new("user-1")).with_tier("pro").with_name("Acme Corp").with_email("ops@acme.example");
/// assert_eq!(c.tier(), Some("pro"));
/// assert_eq!(c.key(), &Key::new("user-1"));
/// assert_eq!((c.name(), c.email()), (Some("Acme Corp"), Some("ops@acme.example")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    key: Key,
    tier: Option<Arc<str>>,
    name: Option<Arc<str>>,
    email: Option<Arc<str>>,
}

impl Client {
    /// A client of the default tier.
    pub fn new(key: Key) -> Self {
        Self { key, tier: None, name: None, email: None }
    }

    /// The same client in the tier named `tier`.
    pub fn with_tier(mut self, tier: impl Into<Arc<str>>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// The same client, shown to people as `name` (dashboard, operator's view, emails, logs)
    /// instead of its key.
    pub fn with_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The same client, with an address for near-quota emails.
    pub fn with_email(mut self, email: impl Into<Arc<str>>) -> Self {
        self.email = Some(email.into());
        self
    }

    /// How people know the client, when it has a name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Where near-quota emails go, when the client has an address.
    pub fn email(&self) -> Option<&str> {
        self.email.as_deref()
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The tier's name, when one was resolved.
    pub fn tier(&self) -> Option<&str> {
        self.tier.as_deref()
    }

    #[inline]
    pub(crate) fn into_parts(self) -> (Key, Option<Arc<str>>, Who) {
        let identified = self.key.ip().is_none();
        (self.key, self.tier, Who { name: self.name, email: self.email, identified })
    }
}

/// What the limiter knows of a client beyond its key and tier: how people know it, where to
/// write to it, and whether it is identified (an API key or an authentication layer's
/// identity, not an address). Shared strings: cloning costs no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Who {
    pub(crate) name: Option<Arc<str>>,
    pub(crate) email: Option<Arc<str>>,
    pub(crate) identified: bool,
}

/// A client an extractor recognised, as the layer uses it: the key, the tier already found in
/// the limits in force (`None`: the default tier), and the rest of what is known of it.
/// Made by [`KeyExtractor::identify`].
#[doc(hidden)]
#[derive(Debug)]
pub struct Identified<'l> {
    pub(crate) key: Key,
    pub(crate) tier: Option<&'l Tier>,
    pub(crate) who: Who,
}

impl<'l> Identified<'l> {
    /// `client`, its tier looked up by name in `limits`.
    #[inline]
    fn resolve(client: Client, limits: &'l Limits) -> Self {
        let (key, tier, who) = client.into_parts();
        Self { key, tier: tier.and_then(|name| limits.tier(&name)), who }
    }
}

/// A secret (an API key) as it may be shown to people, in an error message or a log: at most
/// its first four characters, and no more than a third of it, then `…`. Never the whole key.
pub(crate) fn redact(secret: &str) -> String {
    let chars = secret.chars().count();
    let mut shown: String = secret.chars().take((chars / 3).min(4)).collect();
    shown.push('…');
    shown
}

/// Finds who is asking. Implemented by the ready extractors, by closures
/// `Fn(&Parts) -> Option<Client>`, and by chains made with [`or`](KeyExtractor::or).
///
/// Returning `None` means "not recognised": the next extractor of a chain is asked, and when
/// none recognises the request the layer limits it under one shared key of the default tier
/// (and logs a warning once), so an unidentifiable client is still limited.
///
/// ```
/// use tollgate::key::{Client, Key, KeyExtractor};
/// use http::request::Parts;
///
/// let by_tenant = |parts: &Parts| {
///     let tenant = parts.headers.get("x-tenant")?.to_str().ok()?;
///     Some(Client::new(Key::new(tenant)).with_tier("pro"))
/// };
/// let (parts, _) = http::Request::builder().header("x-tenant", "acme").body(()).unwrap().into_parts();
/// assert_eq!(by_tenant.extract(&parts).unwrap().key(), &Key::new("acme"));
/// ```
pub trait KeyExtractor: Send + Sync + 'static {
    /// The client making this request, if this extractor recognises it.
    fn extract(&self, parts: &Parts) -> Option<Client>;

    /// What the layer asks: [`extract`](Self::extract), with the client's tier found in
    /// `limits`. An extractor that keeps its clients (a table of API keys) answers from them
    /// without handing out a copy of a [`Client`] (issue 14: no shared string counted up and
    /// down per request); any other needs nothing more than `extract`.
    #[doc(hidden)]
    #[inline]
    fn identify<'l>(&self, parts: &Parts, limits: &'l Limits) -> Option<Identified<'l>> {
        self.extract(parts).map(|client| Identified::resolve(client, limits))
    }

    /// Asks `self` first, then `other`.
    fn or<E: KeyExtractor>(self, other: E) -> Or<Self, E>
    where
        Self: Sized,
    {
        Or { first: self, second: other }
    }
}

impl<F> KeyExtractor for F
where
    F: Fn(&Parts) -> Option<Client> + Send + Sync + 'static,
{
    fn extract(&self, parts: &Parts) -> Option<Client> {
        self(parts)
    }
}

impl<E: KeyExtractor + ?Sized> KeyExtractor for Arc<E> {
    fn extract(&self, parts: &Parts) -> Option<Client> {
        (**self).extract(parts)
    }

    #[inline]
    fn identify<'l>(&self, parts: &Parts, limits: &'l Limits) -> Option<Identified<'l>> {
        (**self).identify(parts, limits)
    }
}

/// Two extractors in order; made by [`KeyExtractor::or`].
#[derive(Debug, Clone)]
pub struct Or<A, B> {
    first: A,
    second: B,
}

impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for Or<A, B> {
    #[inline]
    fn extract(&self, parts: &Parts) -> Option<Client> {
        self.first.extract(parts).or_else(|| self.second.extract(parts))
    }

    #[inline]
    fn identify<'l>(&self, parts: &Parts, limits: &'l Limits) -> Option<Identified<'l>> {
        self.first.identify(parts, limits).or_else(|| self.second.identify(parts, limits))
    }
}

/// Recognises a [`Client`] that an earlier layer (authentication) put into the request
/// extensions.
///
/// ```
/// use tollgate::key::{Client, FromExtension, Key, KeyExtractor};
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(Client::new(Key::new("user-9")).with_tier("enterprise"));
/// let (parts, _) = req.into_parts();
/// assert_eq!(FromExtension.extract(&parts).unwrap().tier(), Some("enterprise"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct FromExtension;

impl KeyExtractor for FromExtension {
    #[inline]
    fn extract(&self, parts: &Parts) -> Option<Client> {
        parts.extensions.get::<Client>().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::request::Builder) -> Parts {
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn chain_falls_through_in_order() {
        let never = |_: &Parts| None;
        let always = |_: &Parts| Some(Client::new(Key::new("b")));
        let chain = never.or(always).or(|_: &Parts| Some(Client::new(Key::new("c"))));
        assert_eq!(chain.extract(&parts(http::Request::builder())).unwrap().key(), &Key::new("b"));
    }

    #[test]
    fn a_redacted_secret_shows_at_most_a_third_and_four_characters() {
        assert_eq!(redact("sk_live_0123456789abcdef"), "sk_l…");
        assert_eq!(redact("free-demo-key"), "free…");
        assert_eq!(redact("abcdef"), "ab…");
        assert_eq!(redact("ab"), "…");
        assert_eq!(redact("ééééééééé"), "ééé…");
        assert_eq!(redact(""), "…");
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let shown = format!("{:?}", Key::new("sk_live_secret"));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
