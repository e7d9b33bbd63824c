//! Graceful degradation: cheaper answers as a client's tokens run low.
//!
//! A route opted into degradation (`[degrade] routes` in the configuration) is answered in
//! one of three [`Band`]s, chosen from the fraction of the burst left *before* the request is
//! charged:
//! * above `cached_below`: in full, at the route's cost;
//! * below `minimal_below`: the handler runs, told through the [`Band`] request extension
//!   (an axum extractor) to answer with essential fields only, for at most 1 token, and the
//!   response carries `X-RateLimit-Degraded: minimal`;
//! * when even that cannot be paid: 429.

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
    /// Answered from the caller's cached copy (the handler is not called in this band).
    Cached,
    /// Answer with essential fields only.
    Minimal,
}

impl Band {
    /// The band of a request: the one the limiter put in its extensions, else `Full`.
    pub fn of(extensions: &http::Extensions) -> Self {
        extensions.get::<Band>().copied().unwrap_or_default()
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Band {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Band::of(&parts.extensions))
    }
}
