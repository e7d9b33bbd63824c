use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use http::header::HeaderName;
use http::request::Parts;

use super::{Client, Identified, Key, KeyExtractor, Who};
use crate::policy::Limits;

/// The longest API key looked up; anything longer is not a key of ours.
const DEFAULT_MAX_LEN: usize = 256;

/// Recognises clients by an API key header, looked up in a table of known keys.
///
/// Only keys in the table are recognised; an unknown key, a key that is not visible ASCII, an
/// empty key or one longer than [`max_len`](ApiKeys::max_len) (256 bytes by default) is
/// *not*, so the next extractor of a chain (usually [`ClientIp`](super::ClientIp)) decides.
/// Inventing keys therefore never buys a fresh bucket.
///
/// ```
/// use tollgate::key::{ApiKeys, KeyExtractor};
///
/// let keys = ApiKeys::new("x-api-key").key("free-demo-key", "free");
/// let (parts, _) = http::Request::builder()
///     .header("x-api-key", "free-demo-key").body(()).unwrap().into_parts();
/// assert_eq!(keys.extract(&parts).unwrap().tier(), Some("free"));
///
/// let (parts, _) = http::Request::builder()
///     .header("x-api-key", "guess").body(()).unwrap().into_parts();
/// assert!(keys.extract(&parts).is_none());
/// ```
#[derive(Clone)]
pub struct ApiKeys {
    header: HeaderName,
    max_len: usize,
    keys: Arc<HashMap<Box<str>, Known, foldhash::fast::RandomState>>,
}

/// A key of the table: its client, and where its tier was in the limits the table was made
/// for ([`ApiKeys::for_limits`]), so that the layer finds the tier without looking its name up.
#[derive(Debug, Clone)]
struct Known {
    client: Client,
    tier: Option<u32>,
}

impl ApiKeys {
    /// An empty table read from the header `header`.
    ///
    /// # Panics
    /// When `header` is not a valid header name.
    pub fn new(header: &str) -> Self {
        Self {
            header: HeaderName::try_from(header).expect("a valid header name"),
            max_len: DEFAULT_MAX_LEN,
            keys: Arc::default(),
        }
    }

    /// Adds the key `key`, in the tier named `tier`.
    pub fn key(mut self, key: &str, tier: &str) -> Self {
        let client = Client::new(Key::new(key)).with_tier(tier);
        Arc::make_mut(&mut self.keys).insert(key.into(), Known { client, tier: None });
        self
    }

    /// Adds the key `key` as `client` (its key is replaced by `key`): the long form of
    /// `[api_keys]`, with a `name` and an `email`.
    ///
    /// ```
    /// use tollgate::key::{ApiKeys, Client, Key, KeyExtractor};
    /// let keys = ApiKeys::new("x-api-key")
    ///     .client("acme-key", Client::new(Key::new("")).with_tier("pro").with_name("Acme Corp"));
    /// let (parts, _) = http::Request::builder().header("x-api-key", "acme-key").body(()).unwrap().into_parts();
    /// let client = keys.extract(&parts).unwrap();
    /// assert_eq!((client.tier(), client.name()), (Some("pro"), Some("Acme Corp")));
    /// assert_eq!(client.key(), &Key::new("acme-key"));
    /// assert_eq!(keys.get(&Key::new("acme-key")).unwrap().name(), Some("Acme Corp"));
    /// ```
    pub fn client(mut self, key: &str, client: Client) -> Self {
        let client = Client { key: Key::new(key), ..client };
        Arc::make_mut(&mut self.keys).insert(key.into(), Known { client, tier: None });
        self
    }

    /// Notes where each key's tier is in `limits` (the limits a configuration made with this
    /// table): the layer then finds a client's tier by its position, checked by name, instead
    /// of looking the name up (issue 14). In other limits (a reload renumbered the tiers) the
    /// check fails and the name is looked up as before.
    pub(crate) fn for_limits(mut self, limits: &Limits) -> Self {
        for known in Arc::make_mut(&mut self.keys).values_mut() {
            let tier = known.client.tier().and_then(|name| limits.tier(name));
            known.tier = tier.and_then(|tier| u32::try_from(tier.index()).ok());
        }
        self
    }

    /// The client of a key of this table, by its [`Key`] (as an observer sees it).
    pub fn get(&self, key: &Key) -> Option<&Client> {
        self.keys.get(key.name()?).map(|known| &known.client)
    }

    /// Ignores keys longer than `max_len` bytes.
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// How many keys the table holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("header", &self.header)
            .field("max_len", &self.max_len)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl ApiKeys {
    /// The table's client for the key `parts` carries.
    #[inline]
    fn find(&self, parts: &Parts) -> Option<&Known> {
        let value = parts.headers.get(&self.header)?;
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > self.max_len {
            return None;
        }
        let key = value.to_str().ok()?;
        self.keys.get(key)
    }
}

impl KeyExtractor for ApiKeys {
    #[inline]
    fn extract(&self, parts: &Parts) -> Option<Client> {
        self.find(parts).map(|known| known.client.clone())
    }

    /// From the table's own client: the tier's name is read where it is kept, not copied.
    #[inline]
    fn identify<'l>(&self, parts: &Parts, limits: &'l Limits) -> Option<Identified<'l>> {
        let Known { client, tier } = self.find(parts)?;
        let tier = client.tier.as_deref().and_then(|name| {
            match tier.and_then(|at| limits.tiers().get(at as usize)) {
                Some(tier) if tier.name() == name => Some(tier),
                _ => limits.tier(name),
            }
        });
        let who = Who {
            name: client.name.clone(),
            email: client.email.clone(),
            identified: client.key.ip().is_none(),
        };
        Some(Identified { key: client.key.clone(), tier, who })
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::policy::Tier;

    fn with_key(value: HeaderValue) -> Parts {
        let mut req = http::Request::new(());
        req.headers_mut().insert("x-api-key", value);
        req.into_parts().0
    }

    #[test]
    fn hostile_keys_are_not_recognised() {
        let long = "k".repeat(300);
        let keys = ApiKeys::new("x-api-key").key("good", "pro").key(&long, "pro");
        assert!(keys.extract(&with_key(HeaderValue::from_static("good"))).is_some());
        assert!(keys.extract(&with_key(HeaderValue::from_bytes(b"go\xffod").unwrap())).is_none());
        assert!(keys.extract(&with_key(HeaderValue::from_static(""))).is_none());
        assert!(keys.extract(&with_key(HeaderValue::from_str(&long).unwrap())).is_none(), "too long");
        let keys = keys.max_len(400);
        assert!(keys.extract(&with_key(HeaderValue::from_str(&long).unwrap())).is_some());
        assert!(keys.extract(&http::Request::new(()).into_parts().0).is_none());
    }

    fn limits(tiers: &[&str]) -> Limits {
        use crate::algorithm::Quota;
        use crate::policy::TierSpec;
        let quota = Quota::per_second(std::num::NonZeroU32::MIN);
        tiers.iter().fold(Limits::builder(), |b, name| b.tier(name, TierSpec::new(quota))).build().unwrap()
    }

    /// The tier a table found by position is the one its name says, in the limits it was made
    /// for and in any other (a reload that renumbers the tiers, a table made for no limits).
    #[test]
    fn a_tier_found_by_position_is_checked_by_name() {
        let made_for = limits(&["anonymous", "free", "pro"]);
        let renumbered = limits(&["pro", "anonymous", "gold", "free"]);
        let keys =
            ApiKeys::new("x-api-key").key("k-free", "free").key("k-pro", "pro").key("k-gone", "silver");
        let indexed = keys.clone().for_limits(&made_for);
        for table in [&keys, &indexed] {
            for limits in [&made_for, &renumbered] {
                let tier =
                    |key| table.identify(&with_key(HeaderValue::from_static(key)), limits).unwrap().tier;
                assert_eq!(tier("k-free").map(Tier::name), Some("free"));
                assert_eq!(tier("k-pro").map(Tier::name), Some("pro"));
                assert!(tier("k-gone").is_none(), "a tier the limits lack: the default");
            }
        }
        let who = indexed.identify(&with_key(HeaderValue::from_static("k-pro")), &made_for).unwrap();
        assert_eq!((who.key, who.who.identified), (Key::new("k-pro"), true));
    }
}
