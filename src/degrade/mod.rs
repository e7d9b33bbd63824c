//! Graceful degradation: cheaper answers as a client's tokens run low.
//!
//! A route opted into degradation (`[degrade] routes` in the configuration) is answered in
//! one of three [`Band`]s, chosen from the fraction of the burst left *before* the request is
//! charged:
//! * at or above `cached_below`: in full, at the route's cost;
//! * below `cached_below`: a GET or HEAD is answered from the caller's *own* cached last
//!   complete answer to the same method, path and query (and the same values of every header
//!   the answer varies on), without calling the handler, with `Age` and
//!   `X-RateLimit-Degraded: cached`, for at most 1 token. Without a cached copy the request is
//!   served (and charged) in full;
//! * below `minimal_below`: the handler runs, told through the [`Band`] request extension
//!   (an axum extractor) to answer with essential fields only, for at most 1 token, and the
//!   response carries `X-RateLimit-Degraded: minimal`;
//! * when even that cannot be paid: 429.
//!
//! ## A worked example
//! The demo's `pro` tier has a burst of 100 (10 tokens a second); `/api/search` costs 5 and is
//! degradable with `cached_below = 0.5`, `minimal_below = 0.1`.
//!
//! | tokens before | fraction | band | charged | answer |
//! | --- | --- | --- | --- | --- |
//! | 100 | 1.0 | full | 5 | the handler's, kept for this client |
//! | 50 | 0.5 | full | 5 | the handler's (0.5 is not below 0.5) |
//! | 45 | 0.45 | cached | 1 | the same query's last answer with `Age`; the handler is not called |
//! | 45, another query | 0.45 | full | 5 | no copy of that query: served and charged in full |
//! | 9 | 0.09 | minimal | 1 | the handler, told through [`Band`] to answer minimally |
//! | 0.5 | 0.005 | — | — | 429: not even one token |
//!
//! ## Whose answers are replayed
//! Only a client with an identity of its own has cached answers: an API key of `[api_keys]`,
//! or a [`Client`](crate::key::Client) an authentication layer put in the request. *Decision:*
//! a client keyed by its IP address (or not recognised at all) never gets the cached band. An
//! address is not an identity: users behind one NAT or proxy share it, and an application may
//! tell them apart by credentials the limiter does not know (its own API keys, sessions), so
//! "the caller's own last answer" cannot be promised to an address. Such clients go from the
//! full band straight to the minimal one.
//!
//! The cache is bounded in entries and in bytes (every byte an entry holds counts, not only its
//! body), drops expired entries without waiting for a lookup, never shares an answer between
//! clients, honours `Vary` in full, keeps only complete `200` answers to GET/HEAD under a size
//! limit, and honours `Cache-Control: no-store` and `private` from the handler. It never keeps
//! an answer that sets a cookie or says `Vary: *`, a `206` (part of a body), nor one to a
//! request carrying `Cookie` or `Authorization`: such answers may be personal.

mod cache;
mod plan;

pub use cache::CacheLimits;
pub(crate) use cache::{Pending, Recorder, ResponseCache};
pub(crate) use plan::{replay, Asked, BandPlan, Chosen};

/// How fully a request should be answered. Inserted into the request extensions by the
/// limiter when it degrades a request; absent means [`Band::Full`].
///
/// With the `axum` feature it is also an extractor that never fails:
///
/// ```
/// use tollgate::degrade::Band;
///
/// async fn search(band: Band) -> &'static str {
///     if band == Band::Minimal { "ids only" } else { "everything" }
/// }
/// # let _ = search;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Band {
    /// Answer in full.
    #[default]
    Full,
    /// Answered from the caller's cached copy (the handler is not called in this band, so a
    /// handler never sees this value).
    Cached,
    /// Answer with essential fields only.
    Minimal,
}

impl Band {
    /// The band of a request: the one the limiter put in its extensions, else `Full`.
    pub fn of(extensions: &http::Extensions) -> Self {
        extensions.get::<Band>().copied().unwrap_or_default()
    }

    /// The band's name, as in `X-RateLimit-Degraded`: `full`, `cached` or `minimal`.
    ///
    /// ```
    /// assert_eq!(tollgate::degrade::Band::Minimal.as_str(), "minimal");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Cached => "cached",
            Self::Minimal => "minimal",
        }
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Band {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Band::of(&parts.extensions))
    }
}
