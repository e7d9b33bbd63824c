//! `GET /admin`: the operator's view of the last hour as one self-contained HTML page: a
//! chart of everyone's requests, the busiest clients, and where rejections happen.

use std::fmt::Write;

use super::calendar::utc_minute;
use super::chart::{self, thousands, Chart, CHART_STYLE};
use super::html::escape_html;
use super::policy_page::BASE_STYLE;
use crate::history::{AdminReport, NamedCount};

const ADMIN_STYLE: &str = "\
.share{display:block;height:6px;margin-top:.3rem;border-radius:3px;background:var(--track);overflow:hidden}\
.share i{display:block;height:100%;background:var(--admitted)}\
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(16rem,1fr));gap:0 1.5rem}\
td.client{word-break:break-word}";

/// Renders the operator's page of `report`, as of `now` (Unix epoch seconds).
pub(crate) fn render(report: &AdminReport, now: u64) -> String {
    let mut html = String::with_capacity(16_384);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>API usage · operator</title>\
         <style>{BASE_STYLE}{CHART_STYLE}{ADMIN_STYLE}</style></head><body><main>\
         <h1>Who uses the API</h1><p class=\"lede\">The last hour, as of {} UTC. Clients are \
         shown by name, by address, or by the first characters of their key, never by a whole \
         key.</p>",
        utc_minute(now)
    );
    html.push_str(&chart::render(&Chart {
        id: "everyone",
        title: "Everyone, last hour",
        per: "minute",
        periods: &report.minutes,
        period_s: 60,
        count: 60,
        now,
    }));
    let top = report.clients.first().map_or(0, |c| c.tokens).max(1);
    html.push_str(
        "<h2>Busiest clients</h2><div class=\"scroll\"><table id=\"clients\"><thead><tr>\
         <th scope=\"col\">Client</th><th scope=\"col\">Tier</th><th scope=\"col\" class=\"num\">Tokens</th>\
         <th scope=\"col\" class=\"num\">Admitted</th><th scope=\"col\" class=\"num\">Rejected</th>\
         </tr></thead><tbody>",
    );
    if report.clients.is_empty() {
        html.push_str("<tr><td colspan=\"5\">No requests in the last hour.</td></tr>");
    }
    for client in &report.clients {
        let percent = client.tokens as f64 * 100.0 / top as f64;
        let _ = write!(
            html,
            "<tr><td class=\"client\">{}<span class=\"share\"><i style=\"width:{percent:.1}%\"></i></span></td>\
             <td class=\"tier\">{}</td><td class=\"num tokens\">{}</td><td class=\"num admitted\">{}</td>\
             <td class=\"num rejected\">{}</td></tr>",
            escape_html(&client.client),
            escape_html(&client.tier),
            thousands(client.tokens),
            thousands(client.admitted),
            thousands(client.rejected),
        );
    }
    html.push_str("</tbody></table></div><div class=\"grid2\">");
    rejections(&mut html, "by-tier", "Rejections by tier", "Tier", &report.rejected_by_tier);
    rejections(&mut html, "by-route", "Rejections by route", "Route", &report.rejected_by_route);
    html.push_str(
        "</div><footer>As JSON: <code>GET /admin/usage</code> with the same admin key. Counts \
         cover the last 60 minutes; this page is not cached.</footer></main></body></html>",
    );
    html
}

fn rejections(html: &mut String, id: &str, title: &str, what: &str, counts: &[NamedCount]) {
    let _ = write!(
        html,
        "<section><h2>{title}</h2><div class=\"scroll\"><table id=\"{id}\"><thead><tr><th scope=\"col\">{what}</th>\
         <th scope=\"col\" class=\"num\">Rejected</th></tr></thead><tbody>"
    );
    if counts.is_empty() {
        html.push_str("<tr><td colspan=\"2\">None in the last hour.</td></tr>");
    }
    for count in counts {
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
            escape_html(&count.name),
            thousands(count.rejected)
        );
    }
    html.push_str("</tbody></table></div></section>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{History, Visit};
    use crate::key::Key;

    #[test]
    fn the_page_lists_clients_in_order_redacted_and_escaped() {
        let history = History::memory();
        let now = 1_700_000_000;
        let acme = Key::new("sk_live_acme_0123456789");
        let bare = Key::new("sk_live_bare_0123456789");
        let ip = Key::from_ip("192.0.2.9".parse().unwrap());
        for _ in 0..3 {
            history.record(&Visit::new(&acme, "pro", "/api", now, true, 5).name("<Acme & Co>"));
        }
        history.record(&Visit::new(&bare, "free", "/api", now, true, 1));
        history.record(&Visit::new(&ip, "anonymous", "/api/search", now, false, 0));
        let report = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(history.report(now, 10))
            .unwrap();
        let html = render(&report, now);
        let acme_at = html.find("&lt;Acme &amp; Co&gt;").expect("escaped name");
        let bare_at = html.find(">sk_l…<").expect("a short prefix");
        let ip_at = html.find(">192.0.2.9<").expect("the address");
        assert!(acme_at < bare_at && bare_at < ip_at, "most tokens first");
        assert!(!html.contains("sk_live"), "never a whole key");
        assert!(html.contains("<td class=\"num tokens\">15</td>"), "{html}");
        assert!(html.contains("<svg"), "a chart");
        assert!(html.contains("<td>/api/search</td><td class=\"num\">1</td>"), "{html}");
        assert!(html.contains("<td>anonymous</td><td class=\"num\">1</td>"), "{html}");
        assert!(html.contains("2023-11-14 22:13 UTC"), "{html}");
    }

    #[test]
    fn an_empty_hour() {
        let html = render(&AdminReport::default(), 1_700_000_000);
        assert!(html.contains("No requests in the last hour."));
        assert!(html.contains("None in the last hour."));
    }
}
