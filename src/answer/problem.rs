use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;

/// `Content-Type` of every problem the limiter writes.
pub(crate) static PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// `type` of a 429: the client is over its rate for now.
pub const PROBLEM_RATE_LIMITED: &str = "https://docs.rs/tollgate/latest/tollgate/answer/#rate-limited";
/// `type` of a 403: the request costs more than the tier's burst and can never be admitted.
pub const PROBLEM_OVER_CAPACITY: &str = "https://docs.rs/tollgate/latest/tollgate/answer/#over-capacity";
/// `type` of a 429 for too many requests in flight at once.
pub const PROBLEM_CONCURRENCY: &str = "https://docs.rs/tollgate/latest/tollgate/answer/#too-many-in-flight";
/// `type` of a 503: the limiter's store is unreachable and `on_error = "deny"`.
pub const PROBLEM_UNAVAILABLE: &str = "https://docs.rs/tollgate/latest/tollgate/answer/#store-unavailable";

/// `type` of a 403 from the operator's routes: no admin key.
pub const PROBLEM_ADMIN_ONLY: &str = "https://docs.rs/tollgate/latest/tollgate/answer/#admin-only";

/// An RFC 9457 problem body (`application/problem+json`) with tollgate's extension members.
///
/// ```
/// use tollgate::answer::{Problem, PROBLEM_RATE_LIMITED};
///
/// let body = Problem::new(PROBLEM_RATE_LIMITED, "Too Many Requests", 429, "Slow down.")
///     .tier("free")
///     .retry_after(3)
///     .to_bytes();
/// let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(json["status"], 429);
/// assert_eq!(json["retry_after"], 3);
/// assert_eq!(json["tier"], "free");
/// assert!(json.get("upgrade_url").is_none());
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct Problem<'a> {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// A short, human-readable summary of the kind.
    pub title: &'a str,
    /// The HTTP status code.
    pub status: u16,
    /// A human-readable explanation of this occurrence.
    pub detail: &'a str,
    /// The client's tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<&'a str>,
    /// The violated policy's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<&'a str>,
    /// The violated policy's capacity (burst).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Tokens left in the violated policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// What the request costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
    /// Whole seconds to wait before retrying (as in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Where to get a higher limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_url: Option<&'a str>,
}

impl<'a> Problem<'a> {
    /// A problem of kind `kind` with its title, status and detail.
    pub fn new(kind: &'a str, title: &'a str, status: u16, detail: &'a str) -> Self {
        Self {
            kind,
            title,
            status,
            detail,
            tier: None,
            policy: None,
            limit: None,
            remaining: None,
            cost: None,
            retry_after: None,
            upgrade_url: None,
        }
    }

    /// Names the client's tier.
    pub fn tier(mut self, tier: &'a str) -> Self {
        self.tier = Some(tier);
        self
    }

    /// Sets the seconds to wait.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The JSON text.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a problem always serialises"))
    }
}
