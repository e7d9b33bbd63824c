use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::header::{HeaderName, FORWARDED};
use http::request::Parts;
use ipnet::IpNet;

use super::{Client, Key, KeyExtractor};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The most forwarding hops examined; a longer chain is cut (its right-most hops are the ones
/// our proxies wrote, the rest is whatever the client claimed).
const MAX_HOPS: usize = 32;

/// Recognises clients by IP address.
///
/// The address is the TCP peer: axum's `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`), or a bare [`SocketAddr`] in the
/// request extensions (for hyper users). Forwarding headers count **only** when the peer is
/// inside one of the [`trusted`](ClientIp::trusted) proxy networks; then the client is the
/// right-most address of the chain that is not itself a trusted proxy. `Forwarded` (RFC 7239)
/// is read first, then `X-Forwarded-For`, then `X-Real-IP`. A malformed hop ends the walk and
/// the last good address is used, so a forged or broken header never yields a fresh key.
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
///     .body(()).unwrap();
/// req.extensions_mut().insert("10.0.0.2:4000".parse::<SocketAddr>().unwrap());
/// let (parts, _) = req.into_parts();
/// assert_eq!(ip.extract(&parts).unwrap().key(), &Key::from_ip("203.0.113.9".parse().unwrap()));
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: Arc<[IpNet]>,
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
        Self { trusted: Arc::new([]), ipv6_prefix: Self::DEFAULT_IPV6_PREFIX }
    }

    /// Trusts forwarding headers from peers inside these networks.
    pub fn trusted(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted = networks.into_iter().collect();
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

    /// The client address behind a trusted peer, from the forwarding headers.
    fn forwarded_client(&self, parts: &Parts, peer: IpAddr) -> IpAddr {
        let headers = &parts.headers;
        if headers.contains_key(FORWARDED) {
            let hops = headers
                .get_all(FORWARDED)
                .iter()
                .rev()
                .flat_map(|v| v.to_str().ok().into_iter().flat_map(|s| s.rsplit(',')))
                .map(forwarded_for);
            self.walk(hops, peer)
        } else if headers.contains_key(&X_FORWARDED_FOR) {
            let hops = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .rev()
                .flat_map(|v| v.to_str().ok().into_iter().flat_map(|s| s.rsplit(',')))
                .map(parse_addr);
            self.walk(hops, peer)
        } else if let Some(real) = headers.get(&X_REAL_IP) {
            let hop = real.to_str().ok().and_then(parse_addr);
            self.walk(std::iter::once(hop), peer)
        } else {
            peer
        }
    }

    /// Walks hops right to left: the first untrusted address is the client.
    fn walk(&self, hops: impl Iterator<Item = Option<IpAddr>>, peer: IpAddr) -> IpAddr {
        let mut last = peer;
        for hop in hops.take(MAX_HOPS) {
            let Some(ip) = hop else { break };
            last = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        last
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// An address as written in `X-Forwarded-For` or `X-Real-IP`: `ip`, `ip:port` or `[v6]:port`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>().or_else(|_| s.parse::<SocketAddr>().map(|a| a.ip())).ok().map(canonical)
}

/// The `for=` of one `Forwarded` element (RFC 7239): `for=192.0.2.1`, `for="[2001:db8::1]:80"`.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then_some(value.trim())
    })?;
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    if let Some(rest) = value.strip_prefix('[') {
        let (v6, _) = rest.split_once(']')?;
        return v6.parse::<IpAddr>().ok().map(canonical);
    }
    parse_addr(value)
}

fn peer(parts: &Parts) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    parts.extensions.get::<SocketAddr>().map(|a| a.ip())
}

impl ClientIp {
    /// The client's address, as [`extract`](KeyExtractor::extract) finds it (the TCP peer, or
    /// the forwarded client behind a trusted proxy), before IPv6 addresses are reduced to
    /// their prefix; `None` when the request carries no peer address.
    ///
    /// ```
    /// use tollgate::key::ClientIp;
    /// let ip = ClientIp::new().trusted(["10.0.0.0/8".parse().unwrap()]);
    /// let mut req = http::Request::builder().header("x-forwarded-for", "203.0.113.9").body(()).unwrap();
    /// req.extensions_mut().insert("10.0.0.2:4000".parse::<std::net::SocketAddr>().unwrap());
    /// assert_eq!(ip.resolve(&req.into_parts().0), Some("203.0.113.9".parse().unwrap()));
    /// ```
    pub fn resolve(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = canonical(peer(parts)?);
        Some(if self.is_trusted(peer) { self.forwarded_client(parts, peer) } else { peer })
    }
}

impl KeyExtractor for ClientIp {
    fn extract(&self, parts: &Parts) -> Option<Client> {
        Some(Client::new(self.key_for(self.resolve(parts)?)))
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
    fn forwarded_header_wins_and_is_parsed() {
        let parts = request(
            "10.0.0.1:1",
            &[
                ("forwarded", b"for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, For=10.3.3.3"),
                ("x-forwarded-for", b"7.7.7.7"),
            ],
        );
        assert_eq!(key(&proxied(), &parts), ip("2001:db8:cafe::"));
    }

    #[test]
    fn real_ip_is_a_last_resort() {
        let parts = request("10.0.0.1:1", &[("x-real-ip", b"203.0.113.8")]);
        assert_eq!(key(&proxied(), &parts), ip("203.0.113.8"));
    }

    #[test]
    fn garbage_stops_the_walk() {
        for value in [&b"1.2.3.4, garbage"[..], b"\xff\xfe", b"", b"unknown"] {
            let parts = request("10.0.0.1:1", &[("x-forwarded-for", value)]);
            assert_eq!(key(&proxied(), &parts), ip("10.0.0.1"), "{value:?}");
        }
        let parts = request("10.0.0.1:1", &[("forwarded", b"for=_hidden")]);
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
