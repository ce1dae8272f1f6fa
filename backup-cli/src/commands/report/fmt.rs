//! Words of the report: escaping, dates in UTC and in the reader's terms, durations.

use chrono::{DateTime, Utc};

/// Escape text for HTML content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// `2024-01-15 14:30:00 UTC`
pub fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `2024-01-15 14:30`, for axis labels.
pub fn short(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

/// How long ago `t` was at `now`: `just now`, `12 min ago`, `3 h ago`, `5 d ago`
/// (`in 3 min` for a time ahead of this clock).
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (n, ahead) = (secs.unsigned_abs(), secs < 0);
    let span = if n < 60 {
        return "just now".into();
    } else if n < 3600 {
        format!("{} min", n / 60)
    } else if n < 48 * 3600 {
        format!("{} h", n / 3600)
    } else {
        format!("{} d", n / 86400)
    };
    if ahead {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// A `<time>` element: the UTC date, then how long ago.
pub fn when(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "<time datetime=\"{}\">{}</time> <span class=\"ago\">({})</span>",
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        utc(t),
        ago(t, now)
    )
}

/// `850 ms`, `42 s`, `3 min 5 s`, `2 h 10 min`, `7 d 0 h`.
pub fn seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "?".into();
    }
    if s < 1.0 {
        return format!("{:.0} ms", s * 1000.0);
    }
    if s < 60.0 {
        return format!("{s:.0} s");
    }
    let s = s.round() as u64;
    if s < 3600 {
        return format!("{} min {} s", s / 60, s % 60);
    }
    if s < 2 * 86400 {
        return format!("{} h {} min", s / 3600, (s % 3600) / 60);
    }
    format!("{} d {} h", s / 86400, (s % 86400) / 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            esc(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn relative_times() {
        let now = Utc::now();
        let h = chrono::Duration::hours;
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - chrono::Duration::minutes(12), now), "12 min ago");
        assert_eq!(ago(now - h(3), now), "3 h ago");
        assert_eq!(ago(now - h(24 * 5), now), "5 d ago");
        assert_eq!(ago(now + h(2), now), "in 2 h");
    }

    #[test]
    fn durations() {
        assert_eq!(seconds(0.25), "250 ms");
        assert_eq!(seconds(42.0), "42 s");
        assert_eq!(seconds(185.0), "3 min 5 s");
        assert_eq!(seconds(7800.0), "2 h 10 min");
        assert_eq!(seconds(7.0 * 86400.0 + 3600.0), "7 d 1 h");
        assert_eq!(seconds(f64::NAN), "?");
    }
}
