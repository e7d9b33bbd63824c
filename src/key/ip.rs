use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use http::header::{HeaderName, FORWARDED};
use http::request::Parts;
use http::HeaderMap;
use ipnet::IpNet;

use super::{Client, Key, KeyExtractor};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The most forwarding hops examined, readable or not; a longer chain is cut (its right-most
/// hops are the ones our proxies wrote, the rest is whatever the client claimed).
const MAX_HOPS: usize = 32;

/// The one forwarding header a trusted proxy writes: `client_ip_header` in the configuration.
///
/// A proxy writes one of these and passes the others through from the client untouched, so
/// only the one named here is read; the others are whatever the client sent, and are ignored.
/// Its name as written in the configuration is the header's name, in any case.
///
/// ```
/// use tollgate::key::ClientIpHeader;
/// assert_eq!(ClientIpHeader::default(), ClientIpHeader::XForwardedFor);
/// assert_eq!("Forwarded".parse::<ClientIpHeader>(), Ok(ClientIpHeader::Forwarded));
/// assert_eq!(ClientIpHeader::XRealIp.as_str(), "x-real-ip");
/// assert!("x-client-ip".parse::<ClientIpHeader>().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`: each proxy appends the address it saw (the
    /// default: nginx, HAProxy, AWS and Google load balancers, Cloudflare write it).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
    /// `X-Real-IP: client`: one address, set (not appended) by the proxy.
    XRealIp,
}

impl ClientIpHeader {
    /// Every header, in the order of [`as_str`](Self::as_str)'s names.
    pub const ALL: [Self; 3] = [Self::XForwardedFor, Self::Forwarded, Self::XRealIp];

    /// The header's name, lower case: the configuration's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
            Self::XRealIp => "x-real-ip",
        }
    }

    fn name(self) -> &'static HeaderName {
        match self {
            Self::XForwardedFor => &X_FORWARDED_FOR,
            Self::Forwarded => &FORWARDED,
            Self::XRealIp => &X_REAL_IP,
        }
    }
}

impl fmt::Display for ClientIpHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A header name that is not one a proxy writes client addresses in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownClientIpHeader(String);

impl fmt::Display for UnknownClientIpHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not \"x-forwarded-for\", \"forwarded\" or \"x-real-ip\"", self.0)
    }
}

impl std::error::Error for UnknownClientIpHeader {}

impl FromStr for ClientIpHeader {
    type Err = UnknownClientIpHeader;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|h| h.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownClientIpHeader(s.to_owned()))
    }
}

impl serde::Serialize for ClientIpHeader {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ClientIpHeader {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(|_| {
            serde::de::Error::unknown_variant(&name, &["x-forwarded-for", "forwarded", "x-real-ip"])
        })
    }
}

/// Recognises clients by IP address.
///
/// The address is the TCP peer: axum's `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`), or a bare [`SocketAddr`] in the
/// request extensions (for hyper users). A forwarding header counts **only** when the peer is
/// inside one of the [`trusted`](ClientIp::trusted) proxy networks, and only the one
/// [`header`](ClientIp::header) the proxy writes (`X-Forwarded-For` unless told otherwise):
/// the others are whatever the client sent, and are ignored. In that header the client is the
/// right-most address that is not itself a trusted proxy. A hop that cannot be read (junk, an
/// obfuscated identifier, non-ASCII bytes) is skipped: it is never a reason to fall back to the
/// proxy's own address, which would put every client of the proxy in one bucket.
///
/// IPv6 addresses are reduced to their first [`ipv6_prefix`](ClientIp::ipv6_prefix) bits
/// (64 by default): one allocation, one key. IPv4-mapped IPv6 addresses count as IPv4.
///
/// ```
/// use tollgate::key::{ClientIp, Key, KeyExtractor};
/// use std::net::SocketAddr;
///
/// let ip = ClientIp::new().trusted(["10.0.0.0/8".parse().unwrap()]);
/// let mut req = http::Request::builder()
///     .header("x-forwarded-for", "203.0.113.9, 10.1.1.1")
///     .header("forwarded", "for=198.51.100.1") // the client's own claim: ignored
///     .body(()).unwrap();
/// req.extensions_mut().insert("10.0.0.2:4000".parse::<SocketAddr>().unwrap());
/// let (parts, _) = req.into_parts();
/// assert_eq!(ip.extract(&parts).unwrap().key(), &Key::from_ip("203.0.113.9".parse().unwrap()));
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: Arc<[IpNet]>,
    header: ClientIpHeader,
    ipv6_prefix: u8,
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientIp {
    /// The bits of an IPv6 address that name one client unless told otherwise: a /64 is what
    /// one subscriber is usually given.
    pub const DEFAULT_IPV6_PREFIX: u8 = 64;

    /// Peer addresses only (no trusted proxies), IPv6 keyed by /64.
    pub fn new() -> Self {
        Self {
            trusted: Arc::new([]),
            header: ClientIpHeader::default(),
            ipv6_prefix: Self::DEFAULT_IPV6_PREFIX,
        }
    }

    /// Trusts forwarding headers from peers inside these networks.
    pub fn trusted(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted = networks.into_iter().collect();
        self
    }

    /// Reads the client address from `header`, the one the trusted proxies write
    /// (`X-Forwarded-For` by default).
    ///
    /// ```
    /// use tollgate::key::{ClientIp, ClientIpHeader};
    /// use std::net::IpAddr;
    ///
    /// let ip = ClientIp::new().trusted(["10.0.0.0/8".parse().unwrap()]).header(ClientIpHeader::XRealIp);
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("x-real-ip", "203.0.113.7".parse().unwrap());
    /// headers.insert("x-forwarded-for", "198.51.100.1".parse().unwrap());
    /// let peer: IpAddr = "10.0.0.1".parse().unwrap();
    /// assert_eq!(ip.resolve(peer, &headers), "203.0.113.7".parse::<IpAddr>().unwrap());
    /// ```
    pub fn header(mut self, header: ClientIpHeader) -> Self {
        self.header = header;
        self
    }

    /// Keys IPv6 clients by their first `bits` bits (clamped to 0..=128).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    fn key_for(&self, ip: IpAddr) -> Key {
        Key::from_ip(match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX.checked_shl(128 - u32::from(self.ipv6_prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        })
    }

    /// The client's address (before the IPv6 prefix is applied) for a request that came from
    /// `peer` with `headers`: `peer` itself unless it is a trusted proxy; otherwise the
    /// right-most readable address of the proxy's header that is not a trusted proxy (the
    /// left-most readable one examined when all are trusted), or `peer` when the header has
    /// no readable address. Always an address written in `headers` or `peer`.
    ///
    /// ```
    /// use tollgate::key::ClientIp;
    /// use std::net::IpAddr;
    ///
    /// let ip = ClientIp::new().trusted(["10.0.0.0/8".parse().unwrap()]);
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("x-forwarded-for", http::HeaderValue::from_bytes(b"6.6.6.6, 203.0.113.5, \xff junk").unwrap());
    /// let addr = |s: &str| s.parse::<IpAddr>().unwrap();
    /// assert_eq!(ip.resolve(addr("10.0.0.1"), &headers), addr("203.0.113.5"));
    /// assert_eq!(ip.resolve(addr("192.0.2.1"), &headers), addr("192.0.2.1"), "an untrusted peer");
    /// ```
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let lines = headers.get_all(self.header.name()).iter().rev();
        let hops = lines.flat_map(|line| line.as_bytes().rsplit(|&b| b == b','));
        let mut client = None;
        for hop in hops.take(MAX_HOPS) {
            let read = match self.header {
                ClientIpHeader::Forwarded => forwarded_for(hop),
                ClientIpHeader::XForwardedFor | ClientIpHeader::XRealIp => parse_addr(hop),
            };
            let Some(ip) = read else { continue };
            client = Some(ip);
            if !self.is_trusted(ip) {
                break;
            }
        }
        client.unwrap_or(peer)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// An address as written in `X-Forwarded-For` or `X-Real-IP`: `ip`, `[v6]`, `ip:port` or
/// `[v6]:port`. `None` for anything else (junk, `unknown`, bytes that are not ASCII).
fn parse_addr(hop: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(hop.trim_ascii()).ok()?;
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    let v6 = s.strip_prefix('[')?.strip_suffix(']')?;
    v6.parse::<Ipv6Addr>().ok().map(|ip| canonical(IpAddr::V6(ip)))
}

/// The `for=` of one `Forwarded` element (RFC 7239): `for=192.0.2.1`, `for="[2001:db8::1]:80"`.
/// Other parameters of the element may hold any bytes.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    let value = element.split(|&b| b == b';').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
        name.eq_ignore_ascii_case(b"for").then_some(value)
    })?;
    let value = value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value);
    parse_addr(value)
}

fn peer(parts: &Parts) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    parts.extensions.get::<SocketAddr>().map(|a| a.ip())
}

impl KeyExtractor for ClientIp {
    fn extract(&self, parts: &Parts) -> Option<Client> {
        let client = self.resolve(peer(parts)?, &parts.headers);
        Some(Client::new(self.key_for(client)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, headers: &[(&str, &[u8])]) -> Parts {
        let mut req = http::Request::new(());
        for (name, value) in headers {
            req.headers_mut()
                .append(HeaderName::try_from(*name).unwrap(), http::HeaderValue::from_bytes(value).unwrap());
        }
        req.extensions_mut().insert(peer.parse::<SocketAddr>().unwrap());
        req.into_parts().0
    }

    fn ip(s: &str) -> Key {
        Key::from_ip(s.parse().unwrap())
    }

    fn proxied() -> ClientIp {
        ClientIp::new().trusted(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
    }

    fn key(extractor: &ClientIp, parts: &Parts) -> Key {
        extractor.extract(parts).unwrap().key().clone()
    }

    #[test]
    fn forged_headers_from_untrusted_peers_are_ignored() {
        let parts = request(
            "198.51.100.4:1",
            &[("x-forwarded-for", b"1.2.3.4"), ("forwarded", b"for=5.6.7.8"), ("x-real-ip", b"9.9.9.9")],
        );
        assert_eq!(key(&ClientIp::new(), &parts), ip("198.51.100.4"));
        assert_eq!(key(&proxied(), &parts), ip("198.51.100.4"));
    }

    #[test]
    fn right_most_untrusted_hop_is_the_client() {
        let parts = request(
            "10.0.0.1:1",
            &[("x-forwarded-for", b"6.6.6.6, 203.0.113.5"), ("x-forwarded-for", b"10.2.2.2")],
        );
        assert_eq!(key(&proxied(), &parts), ip("203.0.113.5"), "the client's own claim 6.6.6.6 is ignored");
    }

    #[test]
    fn the_forwarded_header_is_read_when_named() {
        let parts = request(
            "10.0.0.1:1",
            &[
                ("forwarded", b"for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, For=10.3.3.3"),
                ("x-forwarded-for", b"7.7.7.7"),
            ],
        );
        let forwarded = proxied().header(ClientIpHeader::Forwarded);
        assert_eq!(key(&forwarded, &parts), ip("2001:db8:cafe::"));
        assert_eq!(key(&proxied(), &parts), ip("7.7.7.7"), "by default only X-Forwarded-For counts");
    }

    #[test]
    fn x_real_ip_is_read_when_named() {
        let parts = request("10.0.0.1:1", &[("x-real-ip", b"203.0.113.8"), ("x-forwarded-for", b"6.6.6.6")]);
        assert_eq!(key(&proxied().header(ClientIpHeader::XRealIp), &parts), ip("203.0.113.8"));
    }

    /// Issue 11, finding 1: behind a proxy that writes only `X-Forwarded-For`, a client's own
    /// `Forwarded` (or `X-Real-IP`) header was believed first, so rotating it bought a fresh
    /// bucket per request.
    #[test]
    fn a_client_rotating_headers_the_proxy_does_not_write_keeps_one_key() {
        let keys: std::collections::HashSet<Key> = (0..100)
            .map(|i| {
                let forged = format!("for=198.51.100.{i}");
                let real = format!("192.0.2.{i}");
                let parts = request(
                    "10.0.0.1:1",
                    &[
                        ("forwarded", forged.as_bytes()),
                        ("x-real-ip", real.as_bytes()),
                        ("x-forwarded-for", b"203.0.113.5"),
                    ],
                );
                key(&proxied(), &parts)
            })
            .collect();
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), [ip("203.0.113.5")]);
    }

    /// Issue 11, finding 1: one unreadable byte made the whole line unreadable, and the client
    /// was keyed as the proxy (one bucket for everyone behind it).
    #[test]
    fn unreadable_hops_are_skipped_never_a_fall_back_to_the_proxy() {
        let cases: [(&[u8], &str); 6] = [
            (b"\xff\xfe, 203.0.113.5", "203.0.113.5"),
            (b"203.0.113.5, garbage", "203.0.113.5"),
            (b"203.0.113.5,\xc3\xa9t\xc3\xa9, 10.2.2.2", "203.0.113.5"),
            (b"unknown, 198.51.100.7:8080, _hidden", "198.51.100.7"),
            (b"[2001:db8::1], ", "2001:db8::"),
            (b"[2001:db8::2]:443", "2001:db8::"),
        ];
        for (value, client) in cases {
            let parts = request("10.0.0.1:1", &[("x-forwarded-for", value)]);
            assert_eq!(key(&proxied(), &parts), ip(client), "{}", String::from_utf8_lossy(value));
        }
        let parts = request("10.0.0.1:1", &[("forwarded", b"for=203.0.113.9;by=\xff, for=_hidden")]);
        assert_eq!(key(&proxied().header(ClientIpHeader::Forwarded), &parts), ip("203.0.113.9"));
    }

    #[test]
    fn without_a_readable_address_the_peer_is_the_client() {
        for value in [&b"\xff\xfe"[..], b"", b"unknown", b" , ,"] {
            let parts = request("10.0.0.1:1", &[("x-forwarded-for", value)]);
            assert_eq!(key(&proxied(), &parts), ip("10.0.0.1"), "{value:?}");
        }
        let parts = request("10.0.0.1:1", &[]);
        assert_eq!(key(&proxied(), &parts), ip("10.0.0.1"));
    }

    #[test]
    fn long_chains_are_cut() {
        let chain = vec!["10.9.9.9"; 100].join(",");
        let parts = request("10.0.0.1:1", &[("x-forwarded-for", format!("1.1.1.1,{chain}").as_bytes())]);
        assert_eq!(key(&proxied(), &parts), ip("10.9.9.9"));
    }

    #[test]
    fn ipv6_rotation_inside_a_prefix_is_one_key() {
        let a = request("[2001:db8:1:2:aaaa::1]:1", &[]);
        let b = request("[2001:db8:1:2:ffff:ffff:ffff:ffff]:1", &[]);
        let c = request("[2001:db8:1:3::1]:1", &[]);
        let x = ClientIp::new();
        assert_eq!(key(&x, &a), key(&x, &b));
        assert_ne!(key(&x, &a), key(&x, &c));
        let wide = ClientIp::new().ipv6_prefix(48);
        assert_eq!(key(&wide, &a), key(&wide, &c));
        let exact = ClientIp::new().ipv6_prefix(128);
        assert_ne!(key(&exact, &a), key(&exact, &b));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let parts = request("[::ffff:192.0.2.1]:1", &[]);
        assert_eq!(key(&ClientIp::new(), &parts), ip("192.0.2.1"));
    }

    #[test]
    fn no_peer_is_not_recognised() {
        assert!(ClientIp::new().extract(&http::Request::new(()).into_parts().0).is_none());
    }
}
