//! `GET /policy` for people: every tier side by side, like a pricing table, in one
//! self-contained HTML document (inline CSS, no script, no external asset).

use std::fmt::Write;

use super::chart::thousands;
use super::html::escape_html;
use super::report::{PolicyLimits, PublishedLimits, TierLimits};

/// The look shared by the operator's page and this one: the dashboard's colours (light and
/// dark), cards and tables.
pub(crate) const BASE_STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#5b6470;--bg:#f6f7f9;--card:#fff;--track:#e3e7ec;\
--ok:#3b6fd8;--warn:#d99a1e;--low:#d0463b;--link:#2458c6;--accent:#eef3ff}\
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ee;--muted:#9aa4b1;--bg:#14171b;--card:#1d2127;\
--track:#2c323a;--link:#7fa6ff;--accent:#232a36}}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif}\
main{max-width:64rem;margin:2.5rem auto;padding:0 1.25rem}\
h1{font-size:1.6rem;margin:0 0 .25rem}\
h2{font-size:1.15rem;margin:2rem 0 .6rem}\
.lede{color:var(--muted);margin:0 0 1.5rem}\
a{color:var(--link)}\
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;background:var(--card);border-radius:12px;\
box-shadow:0 1px 3px rgba(0,0,0,.08)}\
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}\
th,td{padding:.6rem .8rem;text-align:left;border-bottom:1px solid var(--track);vertical-align:top}\
tr:last-child>th,tr:last-child>td{border-bottom:0}\
thead th{font-size:1.05rem}\
tbody th{font-weight:600;color:var(--muted);white-space:nowrap}\
td.num,th.num{text-align:right;white-space:nowrap}\
.small{display:block;color:var(--muted);font-size:.85rem}\
.badge{display:inline-block;margin-left:.4rem;padding:0 .45rem;border-radius:999px;background:var(--accent);\
color:var(--muted);font-size:.75rem;font-weight:500;vertical-align:middle}\
.cta{display:inline-block;padding:.35rem .8rem;border-radius:8px;background:var(--ok);color:#fff;\
text-decoration:none;font-weight:600}\
footer{color:var(--muted);font-size:.85rem;margin-top:2rem}";

/// `30 per minute`, `2.5 per second`, `12 per hour`: the largest everyday unit in which the
/// rate is at least one.
fn rate_words(per_second: f64) -> String {
    let (value, unit) = if per_second >= 1.0 {
        (per_second, "second")
    } else if per_second * 60.0 >= 1.0 {
        (per_second * 60.0, "minute")
    } else if per_second * 3_600.0 >= 1.0 {
        (per_second * 3_600.0, "hour")
    } else {
        (per_second * 86_400.0, "day")
    };
    // A per-second rate of 10 reads better as "600 per minute".
    let (value, unit) = if unit == "second" && per_second * 60.0 <= 100_000.0 {
        (per_second * 60.0, "minute")
    } else {
        (value, unit)
    };
    format!("{} per {unit}", number(value))
}

/// A whole number with separators, or one decimal when it is not whole.
fn number(value: f64) -> String {
    let rounded = value.round();
    if (value - rounded).abs() < 0.005 {
        thousands(rounded as u64)
    } else {
        format!("{value:.1}")
    }
}

/// `per day`, `per hour`, `per 10 min`: a policy's window in words.
fn window_words(secs: u64) -> String {
    match secs {
        86_400 => "per day".to_owned(),
        3_600 => "per hour".to_owned(),
        60 => "per minute".to_owned(),
        s if s % 86_400 == 0 => format!("per {} days", s / 86_400),
        s if s % 3_600 == 0 => format!("per {} hours", s / 3_600),
        s if s % 60 == 0 => format!("per {} minutes", s / 60),
        s => format!("per {s} seconds"),
    }
}

fn rate_cell(policy: &PolicyLimits) -> String {
    let per_second = policy.requests_per_second;
    format!(
        "{}<span class=\"small\">{} a day, sustained</span>",
        rate_words(per_second),
        number(per_second * 86_400.0)
    )
}

/// Renders the pricing table of `limits`.
pub(crate) fn render(limits: &PublishedLimits) -> String {
    let mut html = String::with_capacity(8_192);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>API limits and tiers</title><style>{BASE_STYLE}</style></head>\
         <body><main><h1>API limits and tiers</h1><p class=\"lede\">What each tier may do, before a \
         request is answered <code>429 Too Many Requests</code>. Requests without a known API key \
         are in the <strong>{}</strong> tier, counted per address.</p>",
        escape_html(&limits.default_tier)
    );
    // Cheapest first, like a pricing table: by sustained rate, then burst.
    let mut tiers: Vec<&TierLimits> = limits.tiers.iter().collect();
    tiers.sort_by(|a, b| {
        let key = |t: &TierLimits| t.policies.first().map_or((0.0, 0), |p| (p.requests_per_second, p.burst));
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
    });
    let tiers = &tiers[..];
    html.push_str("<div class=\"scroll\"><table id=\"tiers\"><thead><tr><th scope=\"col\"></th>");
    for &tier in tiers {
        let name = escape_html(&tier.name);
        let _ = write!(html, "<th scope=\"col\" data-tier=\"{name}\">{name}");
        if tier.name == limits.default_tier {
            html.push_str("<span class=\"badge\">without a key</span>");
        }
        html.push_str("</th>");
    }
    html.push_str("</tr></thead><tbody>");
    row(&mut html, "Rate", "rate", tiers, |t| t.policies.first().map(rate_cell));
    row(&mut html, "Burst", "burst", tiers, |t| {
        t.policies.first().map(|p| {
            format!("{}<span class=\"small\">requests at once, from full</span>", thousands(p.burst))
        })
    });
    row(&mut html, "Quotas", "quota", tiers, |t| {
        let extra: Vec<String> = t
            .policies
            .iter()
            .skip(1)
            .map(|p| format!("{} {}", thousands(p.burst), window_words(p.window)))
            .collect();
        (!extra.is_empty()).then(|| extra.join("<br>"))
    });
    row(&mut html, "At once", "concurrency", tiers, |t| {
        t.concurrency.map(|n| format!("{n}<span class=\"small\">requests in flight</span>"))
    });
    row(&mut html, "Upgrade", "upgrade", tiers, |t| {
        t.upgrade_url.as_deref().map(|url| {
            let text = escape_html(url);
            if url.starts_with("https://") || url.starts_with("http://") {
                format!("<a class=\"cta upgrade\" href=\"{text}\">Upgrade</a>")
            } else {
                format!("<span class=\"upgrade\">{text}</span>")
            }
        })
    });
    html.push_str("</tbody></table></div>");

    // Route costs, and what they mean in each tier.
    let _ = write!(
        html,
        "<h2>What each request costs</h2><p class=\"lede\">A request takes as many units as its \
         route costs from every limit above; a route not listed costs {}.</p>\
         <div class=\"scroll\"><table id=\"routes\"><thead><tr><th scope=\"col\">Route</th>\
         <th scope=\"col\" class=\"num\">Cost</th>",
        limits.default_cost
    );
    for &tier in tiers {
        let _ = write!(
            html,
            "<th scope=\"col\" class=\"num\">{} <span class=\"small\">per minute</span></th>",
            escape_html(&tier.name)
        );
    }
    html.push_str("</tr></thead><tbody>");
    for route in &limits.routes {
        let name = escape_html(&route.route);
        let _ = write!(html, "<tr data-route=\"{name}\"><th scope=\"row\"><code>{name}</code>");
        if route.degrade {
            html.push_str("<span class=\"small\">answered more cheaply when you run low</span>");
        }
        html.push_str("</th>");
        if route.exempt {
            let _ = write!(
                html,
                "<td class=\"num cost\">free</td><td colspan=\"{}\">never limited</td></tr>",
                tiers.len()
            );
            continue;
        }
        let _ = write!(html, "<td class=\"num cost\">{}</td>", route.cost);
        for &tier in tiers {
            let cell = match (route.cost, tier.policies.first()) {
                (0, _) => "unlimited".to_owned(),
                (cost, Some(p)) => number(p.requests_per_minute / f64::from(cost)),
                (_, None) => "—".to_owned(),
            };
            let _ = write!(html, "<td class=\"num\">{cell}</td>");
        }
        html.push_str("</tr>");
    }
    html.push_str(
        "</tbody></table></div><footer>Limits refill continuously (a token bucket), never all at \
         once at a fixed hour. Every answer carries <code>RateLimit</code> and \
         <code>X-RateLimit-*</code> headers; a refused one says in <code>Retry-After</code> how \
         long to wait. For programs: this page as JSON with <code>Accept: application/json</code>.\
         </footer></main></body></html>",
    );
    html
}

/// One row of the tier table: `label`, then `cell(tier)` for each tier (`—` when `None`);
/// no row at all when no tier has a value.
fn row(
    html: &mut String,
    label: &str,
    class: &str,
    tiers: &[&TierLimits],
    cell: impl Fn(&TierLimits) -> Option<String>,
) {
    let cells: Vec<Option<String>> = tiers.iter().map(|t| cell(t)).collect();
    if cells.iter().all(Option::is_none) {
        return;
    }
    let _ = write!(html, "<tr class=\"{class}\"><th scope=\"row\">{label}</th>");
    for (tier, cell) in tiers.iter().zip(cells) {
        let _ = write!(
            html,
            "<td data-tier=\"{}\">{}</td>",
            escape_html(&tier.name),
            cell.unwrap_or_else(|| "—".to_owned())
        );
    }
    html.push_str("</tr>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Quota;
    use crate::policy::{Limits, TierSpec};
    use nonzero_ext::nonzero;

    fn limits() -> PublishedLimits {
        let limits = Limits::builder()
            .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32))))
            .tier(
                "free",
                TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)))
                    .daily(10_000)
                    .upgrade_url("https://example.com/pricing?a=1&b=2"),
            )
            .tier(
                "<pro>",
                TierSpec::new(Quota::per_second(nonzero!(10u32)).allow_burst(nonzero!(100u32)))
                    .upgrade_url("javascript:alert(1)"),
            )
            .route("/api/search", 5)
            .route("POST /api/generate", 20)
            .route("/usage", 0)
            .exempt("/health")
            .build()
            .unwrap();
        PublishedLimits::new(&limits)
    }

    #[test]
    fn rates_in_everyday_units() {
        assert_eq!(rate_words(0.5), "30 per minute");
        assert_eq!(rate_words(10.0), "600 per minute");
        assert_eq!(rate_words(1.0 / 3_600.0 * 60.0), "1 per minute");
        assert_eq!(rate_words(1.0 / 3_600.0), "1 per hour");
        assert_eq!(rate_words(100_000.0), "100,000 per second");
        assert_eq!(rate_words(0.025), "1.5 per minute");
        assert_eq!(window_words(86_400), "per day");
        assert_eq!(window_words(7_200), "per 2 hours");
    }

    #[test]
    fn every_tier_side_by_side_with_rates_burst_quota_and_upgrade() {
        let html = render(&limits());
        for tier in ["anonymous", "free", "&lt;pro&gt;"] {
            assert!(
                html.contains(&format!("<th scope=\"col\" data-tier=\"{tier}\">{tier}")),
                "{tier}: {html}"
            );
        }
        assert!(html.contains("30 per minute<span class=\"small\">43,200 a day, sustained"), "{html}");
        assert!(html.contains("600 per minute<span class=\"small\">864,000 a day"), "{html}");
        assert!(html.contains("10<span class=\"small\">requests at once"), "{html}");
        assert!(html.contains("10,000 per day"), "{html}");
        assert!(html.contains("href=\"https://example.com/pricing?a=1&amp;b=2\">Upgrade</a>"), "{html}");
        assert!(!html.contains("href=\"javascript"), "{html}");
        assert!(!html.contains("<pro>"), "escaped");
        assert!(!html.contains("<script") && !html.contains("<link rel=\"stylesheet"), "self-contained");
    }

    #[test]
    fn route_costs_and_what_they_allow_per_tier() {
        let html = render(&limits());
        let search = &html[html.find("data-route=\"/api/search\"").unwrap()..];
        let search = &search[..search.find("</tr>").unwrap()];
        assert!(search.contains("<td class=\"num cost\">5</td>"), "{search}");
        // anonymous 30/min ÷ 5 = 6; free 60 ÷ 5 = 12; pro 600 ÷ 5 = 120.
        assert!(
            search.contains("<td class=\"num\">6</td><td class=\"num\">12</td><td class=\"num\">120</td>"),
            "{search}"
        );
        assert!(html.contains("data-route=\"/health\"><th scope=\"row\"><code>/health</code></th><td class=\"num cost\">free</td>"), "{html}");
        assert!(html.contains("data-route=\"POST /api/generate\""), "{html}");
        assert!(html.contains("a route not listed costs 1"), "{html}");
        assert!(!html.contains("class=\"concurrency\""), "a row no tier uses is left out");
        // Cheapest tier first.
        assert!(html.find("data-tier=\"anonymous\"").unwrap() < html.find("data-tier=\"free\"").unwrap());
        assert!(html.find("data-tier=\"free\"").unwrap() < html.find("data-tier=\"&lt;pro&gt;\"").unwrap());
    }
}
