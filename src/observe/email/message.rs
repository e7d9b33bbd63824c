//! The near-quota email itself: pure text, no I/O, so every word of it is unit-tested.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

/// What a near-quota email says: who it is for and the standing of the policy that crossed
/// the threshold. [`subject`](Self::subject), [`text`](Self::text) and [`html`](Self::html)
/// render it; nothing here does I/O.
///
/// ```
/// use tollgate::observe::Notice;
///
/// let notice = Notice::new("ops@acme.example", "free", "free-daily", 10_000, 2_000, 1_700_003_600, 1_700_000_000)
///     .name("Acme Corp")
///     .upgrade_url("https://example.com/pricing");
/// assert_eq!(notice.subject(), "You have used 80% of your \"free-daily\" API limit");
/// let text = notice.text();
/// assert!(text.starts_with("Hello Acme Corp,"));
/// assert!(text.contains("8000 of the 10000 requests"));
/// assert!(text.contains("full again on Tue, 14 Nov 2023 23:13:20 GMT (in 1 h)"));
/// assert!(text.contains("tier \"free\""));
/// assert!(text.contains("https://example.com/pricing"));
/// assert!(notice.html().contains("<a href=\"https://example.com/pricing\">"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Notice {
    /// The address the email goes to.
    pub to: String,
    /// How the client is called (`name` in `[api_keys]`), used in the greeting.
    pub name: Option<String>,
    /// The client's tier.
    pub tier: String,
    /// The policy that crossed the threshold (as named in the `RateLimit` headers).
    pub policy: String,
    /// The policy's capacity (its burst, or its daily quota).
    pub limit: u64,
    /// Whole units left when the email was queued.
    pub remaining: u64,
    /// Unix epoch seconds at which the policy is full again.
    pub reset: u64,
    /// Unix epoch seconds at which the threshold was crossed.
    pub at: u64,
    /// Where to get a higher limit, when the tier has such a page.
    pub upgrade_url: Option<String>,
}

impl Notice {
    /// A notice to `to`: `policy` of `tier`, of capacity `limit`, has `remaining` left at `at`
    /// and is full again at `reset` (both Unix epoch seconds).
    pub fn new(
        to: impl Into<String>,
        tier: impl Into<String>,
        policy: impl Into<String>,
        limit: u64,
        remaining: u64,
        reset: u64,
        at: u64,
    ) -> Self {
        Self {
            to: to.into(),
            name: None,
            tier: tier.into(),
            policy: policy.into(),
            limit,
            remaining: remaining.min(limit),
            reset,
            at,
            upgrade_url: None,
        }
    }

    /// Greets the client by `name`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Points to `url` for a higher limit.
    pub fn upgrade_url(mut self, url: impl Into<String>) -> Self {
        self.upgrade_url = Some(url.into());
        self
    }

    /// Units used: `limit - remaining`.
    pub fn used(&self) -> u64 {
        self.limit - self.remaining
    }

    /// The share used, in whole percent, rounded down (a policy at 79.9 % is not "80 %").
    ///
    /// ```
    /// # use tollgate::observe::Notice;
    /// assert_eq!(Notice::new("a@b", "t", "p", 3, 0, 0, 0).percent_used(), 100);
    /// assert_eq!(Notice::new("a@b", "t", "p", 1000, 201, 0, 0).percent_used(), 79);
    /// assert_eq!(Notice::new("a@b", "t", "p", 0, 0, 0, 0).percent_used(), 100);
    /// ```
    pub fn percent_used(&self) -> u64 {
        if self.limit == 0 {
            100
        } else {
            (u128::from(self.used()) * 100 / u128::from(self.limit)) as u64
        }
    }

    /// `You have used 80% of your "free-daily" API limit`: the policy's name, always.
    pub fn subject(&self) -> String {
        format!("You have used {}% of your \"{}\" API limit", self.percent_used(), one_line(&self.policy))
    }

    /// The plain-text body.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(768);
        let _ = writeln!(out, "Hello {},\n", self.greeting());
        let _ = writeln!(
            out,
            "You have used {}% of the \"{}\" limit of your API access (tier \"{}\"): {} of the {} \
             requests it allows are used, {} are left.\n",
            self.percent_used(),
            one_line(&self.policy),
            one_line(&self.tier),
            self.used(),
            self.limit,
            self.remaining,
        );
        let _ = writeln!(
            out,
            "The limit refills continuously: it is full again on {} ({}). When nothing is left, \
             the API answers 429 Too Many Requests, with a Retry-After header saying how long to \
             wait.\n",
            http_date(self.reset),
            self.wait_words(),
        );
        match &self.upgrade_url {
            Some(url) => {
                let _ = writeln!(out, "Need more? A higher tier raises this limit: {}\n", one_line(url));
            }
            None => out.push_str("Need more? Ask us for a higher tier.\n\n"),
        }
        out.push_str(
            "You get this email at most once per limit in a while; your current usage is on your \
             dashboard.\n",
        );
        out
    }

    /// The HTML body: the same words, with the numbers emphasised and the upgrade link
    /// clickable (only for `http(s)://` URLs). Every interpolated string is escaped.
    pub fn html(&self) -> String {
        let mut out = String::with_capacity(1536);
        out.push_str(
            "<!doctype html><html><body style=\"font-family:system-ui,sans-serif;line-height:1.5\">",
        );
        let _ = write!(out, "<p>Hello {},</p>", escape(&self.greeting()));
        let _ = write!(
            out,
            "<p>You have used <strong>{}%</strong> of the <strong>&quot;{}&quot;</strong> limit of \
             your API access (tier <strong>{}</strong>): <strong>{}</strong> of the {} requests it \
             allows are used, <strong>{}</strong> are left.</p>",
            self.percent_used(),
            escape(&self.policy),
            escape(&self.tier),
            self.used(),
            self.limit,
            self.remaining,
        );
        let _ = write!(
            out,
            "<p>The limit refills continuously: it is full again on <strong>{}</strong> ({}). When \
             nothing is left, the API answers <code>429 Too Many Requests</code>, with a \
             <code>Retry-After</code> header saying how long to wait.</p>",
            escape(&http_date(self.reset)),
            escape(&self.wait_words()),
        );
        match &self.upgrade_url {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                let _ = write!(
                    out,
                    "<p>Need more? <a href=\"{0}\">A higher tier raises this limit</a>: {0}</p>",
                    escape(url)
                );
            }
            Some(url) => {
                let _ = write!(out, "<p>Need more? A higher tier raises this limit: {}</p>", escape(url));
            }
            None => out.push_str("<p>Need more? Ask us for a higher tier.</p>"),
        }
        out.push_str(
            "<p style=\"color:#666\">You get this email at most once per limit in a while; your \
             current usage is on your dashboard.</p></body></html>",
        );
        out
    }

    fn greeting(&self) -> String {
        match &self.name {
            Some(name) if !name.trim().is_empty() => one_line(name),
            _ => "there".to_owned(),
        }
    }

    fn wait_words(&self) -> String {
        if self.reset <= self.at {
            "now".to_owned()
        } else {
            format!("in {}", duration_words(self.reset - self.at))
        }
    }
}

/// An IMF-fixdate (`Tue, 14 Nov 2023 22:13:20 GMT`): unambiguous in any time zone.
fn http_date(epoch: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(epoch.min(253_402_300_799)))
}

/// A short duration in words: `45 s`, `2 min 5 s`, `3 h 20 min`, `2 d 4 h`.
fn duration_words(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) if s == 0 => format!("{m} min"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) if m == 0 => format!("{h} h"),
        (0, _, _) => format!("{h} h {m} min"),
        _ if h == 0 => format!("{d} d"),
        _ => format!("{d} d {h} h"),
    }
}

/// Control characters (a newline in a configured name) would let a value forge lines of the
/// email: replace them with spaces.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> Notice {
        Notice::new("ops@acme.example", "free", "free", 10, 2, 1_700_000_008, 1_700_000_000)
    }

    #[test]
    fn subject_names_the_policy_and_the_share() {
        assert_eq!(notice().subject(), "You have used 80% of your \"free\" API limit");
        let mut n = notice();
        n.policy = "free-daily\r\nBcc: victim@example.com".into();
        assert!(!n.subject().contains('\n'), "{}", n.subject());
        assert!(n.subject().contains("free-daily"));
    }

    #[test]
    fn text_says_policy_share_reset_tier_and_upgrade() {
        let text = notice().name("Acme Corp").upgrade_url("https://example.com/pricing").text();
        assert!(text.starts_with("Hello Acme Corp,\n\n"), "{text}");
        assert!(text.contains("used 80% of the \"free\" limit"), "{text}");
        assert!(text.contains("(tier \"free\")"), "{text}");
        assert!(text.contains("8 of the 10 requests it allows are used, 2 are left"), "{text}");
        assert!(text.contains("full again on Tue, 14 Nov 2023 22:13:28 GMT (in 8 s)"), "{text}");
        assert!(text.contains("A higher tier raises this limit: https://example.com/pricing"), "{text}");
    }

    #[test]
    fn without_a_name_or_an_upgrade_url() {
        let text = notice().text();
        assert!(text.starts_with("Hello there,"), "{text}");
        assert!(text.contains("Ask us for a higher tier"), "{text}");
        assert!(!text.contains("http"), "{text}");
    }

    #[test]
    fn a_reset_in_the_past_is_now() {
        let mut n = notice();
        n.reset = n.at;
        assert!(n.text().contains("GMT (now)"), "{}", n.text());
    }

    #[test]
    fn html_escapes_everything_and_links_only_web_urls() {
        let mut n = notice().name("<b>Eve</b>").upgrade_url("https://x.example/?a=1&b=\"2\"");
        n.tier = "<script>".into();
        let html = n.html();
        assert!(html.contains("Hello &lt;b&gt;Eve&lt;/b&gt;,"), "{html}");
        assert!(html.contains("tier <strong>&lt;script&gt;</strong>"), "{html}");
        assert!(html.contains("href=\"https://x.example/?a=1&amp;b=&quot;2&quot;\""), "{html}");
        assert!(!html.contains("<script>"));
        let html = notice().upgrade_url("javascript:alert(1)").html();
        assert!(!html.contains("href=\"javascript"), "{html}");
        assert!(html.contains("javascript:alert(1)"));
    }

    #[test]
    fn html_has_the_same_facts_as_the_text() {
        let html = notice().upgrade_url("https://example.com/pricing").html();
        for fact in [
            "80%",
            "&quot;free&quot;",
            "<strong>8</strong> of the 10",
            "<strong>2</strong> are left",
            "Tue, 14 Nov 2023 22:13:28 GMT",
            "in 8 s",
        ] {
            assert!(html.contains(fact), "{fact} missing from {html}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration_words(10), "10 s");
        assert_eq!(duration_words(125), "2 min 5 s");
        assert_eq!(duration_words(3_600), "1 h");
        assert_eq!(duration_words(3_660), "1 h 1 min");
        assert_eq!(duration_words(90_000), "1 d 1 h");
    }

    #[test]
    fn remaining_never_exceeds_the_limit() {
        let n = Notice::new("a@b", "t", "p", 5, 9, 0, 0);
        assert_eq!((n.used(), n.remaining), (0, 5));
    }
}
