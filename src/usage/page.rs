//! The `/dashboard` page: one self-contained HTML document (inline CSS, no script, no
//! external assets), every interpolated string escaped.

use std::fmt::Write;

use super::calendar::{iso8601, utc_clock};
use super::chart::{self, Chart, CHART_STYLE};
use super::html::escape_html;
use super::report::{KeyedBy, UsageReport};

const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#5b6470;--bg:#f6f7f9;--card:#fff;--track:#e3e7ec;\
--ok:#3b6fd8;--warn:#d99a1e;--low:#d0463b;--link:#2458c6}\
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ee;--muted:#9aa4b1;--bg:#14171b;--card:#1d2127;\
--track:#2c323a;--link:#7fa6ff}}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif}\
main{max-width:46rem;margin:2.5rem auto;padding:0 1.25rem}\
h1{font-size:1.6rem;margin:0 0 .25rem}\
.who{color:var(--muted);margin:0 0 1.5rem}\
.who strong{color:var(--fg)}\
.policy{background:var(--card);border-radius:12px;padding:1.1rem 1.25rem;margin:0 0 1rem;\
box-shadow:0 1px 3px rgba(0,0,0,.08)}\
.policy h2{font-size:1.05rem;margin:0 0 .6rem;display:flex;justify-content:space-between;gap:1rem}\
.policy h2 .rate{font-weight:400;color:var(--muted);font-size:.9rem}\
.bar{height:14px;background:var(--track);border-radius:7px;overflow:hidden}\
.bar .used{height:100%;background:var(--ok);border-radius:7px 0 0 7px}\
.policy.warn .used{background:var(--warn)}\
.policy.low .used{background:var(--low)}\
.numbers{display:flex;justify-content:space-between;flex-wrap:wrap;gap:.5rem;margin:.6rem 0 0;\
color:var(--muted);font-size:.92rem}\
.numbers b{color:var(--fg);font-size:1.05rem}\
.upgrade{margin:1.5rem 0;padding:1rem 1.25rem;border-radius:12px;background:var(--card);\
border-left:4px solid var(--link)}\
a{color:var(--link)}\
footer{color:var(--muted);font-size:.85rem;margin-top:2rem}";

/// Renders the dashboard of `report`, as seen at `now` (Unix epoch seconds).
pub(crate) fn render(report: &UsageReport, now: u64) -> String {
    let tier = escape_html(&report.tier);
    let mut html = String::with_capacity(4096);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>API usage · {tier}</title><style>{STYLE}{CHART_STYLE}</style></head><body><main>\
         <h1>Your API usage</h1><p class=\"who\">Tier <strong id=\"tier\">{tier}</strong> · "
    );
    match (report.keyed_by, &report.ip) {
        (KeyedBy::Ip, Some(ip)) => {
            let _ =
                write!(html, "identified by your address <strong id=\"client\">{}</strong>", escape_html(ip));
        }
        _ => match &report.name {
            Some(name) => {
                let _ = write!(html, "<strong id=\"client\">{}</strong>", escape_html(name));
            }
            None => html.push_str("identified by <strong id=\"client\">your API key</strong>"),
        },
    }
    html.push_str("</p>");
    // Usage over time, above the current standing.
    match (&report.history, report.keyed_by) {
        (Some(history), KeyedBy::Key) => {
            html.push_str(&chart::render(&Chart {
                id: "hour",
                title: "Last hour",
                per: "minute",
                periods: &history.minutes,
                period_s: 60,
                count: 60,
                now,
            }));
            html.push_str(&chart::render(&Chart {
                id: "day",
                title: "Last 24 hours",
                per: "hour",
                periods: &history.hours,
                period_s: 3_600,
                count: 24,
                now,
            }));
        }
        (Some(_), KeyedBy::Ip) => html.push_str(
            "<p class=\"who\">Usage over time is kept for clients with an API key; send yours in \
             the <code>X-API-Key</code> header to see it here.</p>",
        ),
        (None, _) => {}
    }
    for policy in &report.policies {
        let used = policy.limit.saturating_sub(policy.remaining);
        let percent = if policy.limit == 0 { 100.0 } else { used as f64 * 100.0 / policy.limit as f64 };
        let class = match percent {
            p if p >= 90.0 => "policy low",
            p if p >= 80.0 => "policy warn",
            _ => "policy",
        };
        let name = escape_html(&policy.name);
        let _ = write!(
            html,
            "<section class=\"{class}\" data-policy=\"{name}\" data-remaining=\"{remaining}\" \
             data-limit=\"{limit}\" data-reset=\"{reset}\">\
             <h2><span class=\"name\">{name}</span><span class=\"rate\">{limit} per {window}</span></h2>\
             <div class=\"bar\" role=\"progressbar\" aria-label=\"{name} used\" aria-valuemin=\"0\" \
             aria-valuemax=\"{limit}\" aria-valuenow=\"{used}\"><div class=\"used\" style=\"width:{percent:.1}%\">\
             </div></div><p class=\"numbers\"><span><b class=\"remaining\">{remaining}</b> of \
             <span class=\"limit\">{limit}</span> left</span><span>full again \
             <time class=\"reset\" datetime=\"{iso}\">{clock}</time> ({wait})</span></p></section>",
            remaining = policy.remaining,
            limit = policy.limit,
            reset = policy.reset,
            window = duration(policy.window),
            iso = iso8601(policy.reset),
            clock = utc_clock(policy.reset),
            wait = if policy.reset <= now {
                "now".to_owned()
            } else {
                format!("in {}", duration(policy.reset - now))
            },
        );
    }
    if let Some(url) = &report.upgrade_url {
        let url_text = escape_html(url);
        // Only web links become links: a `javascript:` URL must never be clickable.
        let link = if url.starts_with("https://") || url.starts_with("http://") {
            format!("<a id=\"upgrade\" href=\"{url_text}\">Upgrade your plan</a>")
        } else {
            format!("Upgrade your plan: <span id=\"upgrade\">{url_text}</span>")
        };
        let _ = write!(html, "<p class=\"upgrade\">Need more than the {tier} tier allows? {link}</p>");
    }
    let _ = write!(
        html,
        "<footer>As of <time datetime=\"{}\">{}</time>. Reloading this page costs nothing. \
         As JSON: <a href=\"usage\">your usage</a> · <a href=\"policy\">every tier's limits</a>.</footer>\
         </main></body></html>",
        iso8601(now),
        utc_clock(now)
    );
    html
}

/// A short human duration: `45 s`, `2 min 5 s`, `3 h 20 min`, `2 d 4 h`.
fn duration(secs: u64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::report::PolicyUsage;

    #[test]
    fn durations() {
        assert_eq!(duration(10), "10 s");
        assert_eq!(duration(60), "1 min");
        assert_eq!(duration(125), "2 min 5 s");
        assert_eq!(duration(3_600), "1 h");
        assert_eq!(duration(86_400), "1 d");
        assert_eq!(duration(90_000), "1 d 1 h");
    }

    fn report(tier: &str, upgrade: Option<&str>) -> UsageReport {
        UsageReport {
            tier: tier.to_owned(),
            keyed_by: KeyedBy::Key,
            ip: None,
            limit: 10,
            remaining: 1,
            reset: 1_700_000_009,
            policies: vec![PolicyUsage {
                name: format!("{tier}-p"),
                limit: 10,
                remaining: 1,
                reset: 1_700_000_009,
                window: 10,
            }],
            upgrade_url: upgrade.map(str::to_owned),
            name: None,
            history: None,
        }
    }

    #[test]
    fn everything_interpolated_is_escaped() {
        let html =
            render(&report("<script>alert(1)</script>", Some("https://x/?a=1&b=\"2\"")), 1_700_000_000);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("href=\"https://x/?a=1&amp;b=&quot;2&quot;\""));
        assert!(html.contains("class=\"policy low\""));
        assert!(html.contains("in 9 s"));
    }

    #[test]
    fn only_web_urls_become_links() {
        let html = render(&report("free", Some("javascript:alert(1)")), 1_700_000_000);
        assert!(!html.contains("href=\"javascript"), "{html}");
        assert!(html.contains("javascript:alert(1)"));
    }
}
