//! Inline SVG bar charts of a usage history: admitted and rejected requests per period,
//! stacked, with the counts on the left and the times below. No script, no external style or
//! font: the page's own `<style>` (with [`CHART_STYLE`]) colours it, in the light and the dark
//! scheme alike.
//!
//! The chart is as wide as its container: horizontal positions are percentages and the bars
//! live in a nested `<svg>` stretched to fit (`preserveAspectRatio="none"`), while the text
//! keeps its size in CSS pixels, so labels stay readable on a 390 px phone and a wide screen.

use std::fmt::Write;

use super::html::escape_html;
use crate::history::Period;

/// The chart's colours and layout; include it in the page's `<style>`. It relies on the
/// page's `--card`, `--track`, `--muted` and `--fg` custom properties.
pub(crate) const CHART_STYLE: &str = "\
:root{--admitted:#2f6fdf;--rejected:#e0591f}\
@media (prefers-color-scheme:dark){:root{--admitted:#73a0ff;--rejected:#ff8f57}}\
.chart{background:var(--card);border-radius:12px;padding:.9rem 1.1rem .6rem;margin:0 0 1rem;\
box-shadow:0 1px 3px rgba(0,0,0,.08)}\
.chart figcaption{display:flex;flex-wrap:wrap;justify-content:space-between;align-items:baseline;\
gap:.2rem 1rem;margin:0 0 .4rem;color:var(--muted);font-size:.92rem}\
.chart figcaption b{color:var(--fg);font-size:1.02rem}\
.chart .keys{display:inline-flex;gap:.9rem}\
.chart .key{display:inline-flex;align-items:center;gap:.35rem}\
.chart .sw{display:inline-block;width:.8rem;height:.8rem;border-radius:2px}\
.sw.adm{background:var(--admitted)}.sw.rej{background:var(--rejected)}\
.chart svg{display:block;overflow:visible}\
.chart .adm{fill:var(--admitted)}.chart .rej{fill:var(--rejected)}\
.chart .grid{stroke:var(--track);stroke-width:1}\
.chart .base{stroke:var(--muted);stroke-width:1}\
.chart text{fill:var(--muted);font-size:12px;font-family:inherit}\
.chart .yl{paint-order:stroke;stroke:var(--card);stroke-width:4px;stroke-linejoin:round}\
.chart .empty{fill:var(--muted);font-size:14px}";

/// Pixels: the space above the plot (for the top label), the plot's height, the space below
/// it (for the time labels).
const TOP: u32 = 14;
const PLOT: u32 = 150;
const BOTTOM: u32 = 22;

/// What to draw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chart<'a> {
    /// `id` of the `<figure>`.
    pub(crate) id: &'a str,
    /// The heading, e.g. `Last hour`.
    pub(crate) title: &'a str,
    /// The unit of one bar, for the caption: `minute` or `hour`.
    pub(crate) per: &'a str,
    /// Periods with requests, any order; others are drawn empty.
    pub(crate) periods: &'a [Period],
    /// The length of one period, in seconds (60 or 3600).
    pub(crate) period_s: u64,
    /// How many periods end with the current one (60 or 24).
    pub(crate) count: u64,
    /// Unix epoch seconds.
    pub(crate) now: u64,
}

/// `HH:MM` of `epoch`, in UTC.
fn hh_mm(epoch: u64) -> String {
    format!("{:02}:{:02}", epoch / 3_600 % 24, epoch / 60 % 60)
}

/// The smallest step of 1, 2 or 5 × 10ⁿ with at most four steps up to `max`, and the top.
fn scale(max: u64) -> (u64, u64) {
    let mut magnitude = 1u64;
    loop {
        for step in [magnitude, 2 * magnitude, 5 * magnitude] {
            if max.div_ceil(step) <= 4 {
                return (step, (max.div_ceil(step) * step).max(step));
            }
        }
        magnitude = magnitude.saturating_mul(10);
    }
}

/// A count with thousands separated: `12,345`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The chart as a `<figure>`: a caption with the totals and a key, then the SVG.
pub(crate) fn render(chart: &Chart<'_>) -> String {
    let current = chart.now / chart.period_s;
    let first = current.saturating_sub(chart.count - 1);
    let slots: Vec<Period> = (first..=current)
        .map(|p| {
            let start = p * chart.period_s;
            chart
                .periods
                .iter()
                .find(|x| x.start == start)
                .copied()
                .unwrap_or(Period { start, ..Period::default() })
        })
        .collect();
    let (admitted, rejected): (u64, u64) =
        slots.iter().fold((0, 0), |(a, r), p| (a + p.admitted, r + p.rejected));
    let max = slots.iter().map(|p| p.admitted + p.rejected).max().unwrap_or(0);
    let (step, top) = scale(max.max(1));
    let height = TOP + PLOT + BOTTOM;
    let id = escape_html(chart.id);
    let mut out = String::with_capacity(8_192);
    let _ = write!(
        out,
        "<figure class=\"chart\" id=\"{id}\"><figcaption><b>{title}</b><span>{from}{since}–{to} UTC · \
         <span class=\"total-admitted\">{ta}</span> admitted, <span class=\"total-rejected\">{tr}</span> \
         rejected</span><span class=\"keys\"><span class=\"key\"><i class=\"sw adm\"></i>admitted</span>\
         <span class=\"key\"><i class=\"sw rej\"></i>rejected</span></span></figcaption>\
         <svg width=\"100%\" height=\"{height}\" role=\"img\" aria-labelledby=\"{id}-desc\">\
         <desc id=\"{id}-desc\">{title}: requests per {per}, admitted and rejected, from {from} to {to} UTC; \
         {ta} admitted and {tr} rejected in all.</desc>",
        title = escape_html(chart.title),
        per = escape_html(chart.per),
        from = hh_mm(first * chart.period_s),
        since = if chart.period_s * chart.count >= 86_400 { " yesterday" } else { "" },
        to = hh_mm(chart.now),
        ta = thousands(admitted),
        tr = thousands(rejected),
    );
    // Grid lines and their counts (drawn over the bars), from the top down to the base line.
    let mut labels = String::with_capacity(256);
    let mut value = top;
    loop {
        let y = TOP + (PLOT as u64 * (top - value) / top) as u32;
        let class = if value == 0 { "base" } else { "grid" };
        let _ = write!(out, "<line class=\"{class}\" x1=\"0\" x2=\"100%\" y1=\"{y}.5\" y2=\"{y}.5\"/>");
        if value > 0 {
            let _ = write!(
                labels,
                "<text class=\"yl\" x=\"2\" y=\"{}\">{}</text>",
                y.saturating_sub(3),
                thousands(value)
            );
        }
        if value == 0 {
            break;
        }
        value -= step;
    }
    // The bars, in a box stretched to the plot: one unit per period across, one per request up.
    let _ = write!(
        out,
        "<svg x=\"0\" y=\"{TOP}\" width=\"100%\" height=\"{PLOT}\" viewBox=\"0 0 {} {top}\" \
         preserveAspectRatio=\"none\" shape-rendering=\"crispEdges\">",
        chart.count
    );
    for (i, p) in slots.iter().enumerate() {
        if p.admitted + p.rejected == 0 {
            continue;
        }
        let _ = write!(
            out,
            "<g data-start=\"{}\" data-admitted=\"{}\" data-rejected=\"{}\"><title>{} UTC: {} admitted, {} rejected, {} tokens</title>",
            p.start,
            p.admitted,
            p.rejected,
            hh_mm(p.start),
            thousands(p.admitted),
            thousands(p.rejected),
            thousands(p.tokens)
        );
        let x = i as f64 + 0.12;
        if p.admitted > 0 {
            let _ = write!(
                out,
                "<rect class=\"adm\" x=\"{x:.2}\" width=\"0.76\" y=\"{}\" height=\"{}\"/>",
                top - p.admitted,
                p.admitted
            );
        }
        if p.rejected > 0 {
            let _ = write!(
                out,
                "<rect class=\"rej\" x=\"{x:.2}\" width=\"0.76\" y=\"{}\" height=\"{}\"/>",
                top - p.admitted - p.rejected,
                p.rejected
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>");
    out.push_str(&labels);
    if admitted + rejected == 0 {
        let _ = write!(
            out,
            "<text class=\"empty\" x=\"50%\" y=\"{}\" text-anchor=\"middle\">No requests in this period</text>",
            TOP + PLOT / 2
        );
    }
    // Times below: the start, the middle and the end of the window, in the reader's terms.
    let (span, unit) = if chart.period_s >= 3_600 { (chart.count, "h") } else { (chart.count, "min") };
    let y = TOP + PLOT + 16;
    let _ = write!(
        out,
        "<text x=\"0\" y=\"{y}\">{span} {unit} ago</text>\
         <text x=\"50%\" y=\"{y}\" text-anchor=\"middle\">{} {unit} ago</text>\
         <text x=\"100%\" y=\"{y}\" text-anchor=\"end\">now</text></svg></figure>",
        span / 2
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(periods: &[Period]) -> String {
        render(&Chart {
            id: "hour",
            title: "Last hour",
            per: "minute",
            periods,
            period_s: 60,
            count: 60,
            now: 1_700_000_000,
        })
    }

    #[test]
    fn scales_are_round() {
        assert_eq!(scale(1), (1, 1));
        assert_eq!(scale(3), (1, 3));
        assert_eq!(scale(7), (2, 8));
        assert_eq!(scale(17), (5, 20));
        assert_eq!(scale(100), (50, 100));
        assert_eq!(scale(101), (50, 150));
        assert_eq!(scale(12_345), (5_000, 15_000));
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(86_400_000), "86,400,000");
    }

    #[test]
    fn bars_stack_admitted_under_rejected_in_their_minute() {
        let now_minute = 1_700_000_000 / 60 * 60;
        let svg = chart(&[
            Period { start: now_minute, admitted: 6, rejected: 2, tokens: 30 },
            Period { start: now_minute - 59 * 60, admitted: 1, rejected: 0, tokens: 1 },
            Period { start: now_minute - 3_600, admitted: 99, rejected: 0, tokens: 99 },
        ]);
        // Scale: max 8 → step 2, top 8; the newest minute is the last slot (x = 59.12).
        assert!(svg.contains("viewBox=\"0 0 60 8\""), "{svg}");
        assert!(
            svg.contains("<rect class=\"adm\" x=\"59.12\" width=\"0.76\" y=\"2\" height=\"6\"/>"),
            "{svg}"
        );
        assert!(
            svg.contains("<rect class=\"rej\" x=\"59.12\" width=\"0.76\" y=\"0\" height=\"2\"/>"),
            "{svg}"
        );
        assert!(svg.contains("<rect class=\"adm\" x=\"0.12\""), "the oldest minute is the first slot");
        assert!(!svg.contains("99 admitted"), "a period out of the window is not drawn");
        assert!(svg.contains("22:13 UTC: 6 admitted, 2 rejected, 30 tokens"), "{svg}");
        assert!(svg.contains(">7</span> admitted"), "caption totals: {svg}");
        for label in [">8<", ">6<", ">4<", ">2<", ">60 min ago<", ">30 min ago<", ">now<"] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(!svg.contains("<script") && !svg.contains("href"), "nothing external");
    }

    #[test]
    fn an_empty_history_says_so() {
        let svg = chart(&[]);
        assert!(svg.contains("No requests in this period"), "{svg}");
        assert!(!svg.contains("<rect"));
    }

    #[test]
    fn hours_are_labelled_in_hours() {
        let svg = render(&Chart {
            id: "day",
            title: "Last day",
            per: "hour",
            periods: &[],
            period_s: 3_600,
            count: 24,
            now: 1_700_000_000,
        });
        assert!(svg.contains(">24 h ago<") && svg.contains(">12 h ago<"), "{svg}");
        assert!(svg.contains("23:00 yesterday–22:13 UTC"), "{svg}");
    }
}
