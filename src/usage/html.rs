//! Escaping for the pages: every page and the chart they draw use it, so it is a module of its
//! own (the pages depend on it, never on each other for it).

/// Escapes `text` for HTML element content and quoted attribute values: `& < > " '`.
///
/// Five replacements need no dependency; a templating crate would bring a macro and a
/// compile-time step for one page.
///
/// ```
/// use tollgate::usage::escape_html;
/// assert_eq!(escape_html(r#"<a href="x">Tom & 'Jerry'</a>"#),
///            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;");
/// assert_eq!(escape_html("plain"), "plain");
/// ```
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
