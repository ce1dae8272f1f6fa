//! The history of one database on one target: size and duration over time (a 40% drop
//! marked), verification outcomes with the failing check, and the table of backups with
//! what prune would do. Long histories are aggregated (see [`buckets`]).

use std::fmt::Write;
use std::ops::Range;

use backup_core::catalog::{BackupEntry, BackupState};
use backup_core::overview::{Overview, Point, Series};
use backup_core::util::human_size;
use chrono::Utc;

use super::fmt::{ago, esc, seconds, short, utc, when};
use super::html::{DROP, EXTRA_ROWS, MAX_POINTS, RAW_POINTS, TABLE_ROWS, badge, kind_word};
use super::svg::{self, Mark, state_class};

/// Index ranges of the marks of a history of `n` backups (oldest first): one per backup
/// up to [`MAX_POINTS`]; beyond, the newest [`RAW_POINTS`] one by one and the older ones
/// in equal groups.
pub fn buckets(n: usize) -> Vec<Range<usize>> {
    if n <= MAX_POINTS {
        return (0..n).map(|i| i..i + 1).collect();
    }
    let old = n - RAW_POINTS;
    let groups = MAX_POINTS - RAW_POINTS;
    let mut out: Vec<Range<usize>> = (0..groups)
        .map(|g| old * g / groups..old * (g + 1) / groups)
        .filter(|r| !r.is_empty())
        .collect();
    out.extend((old..n).map(|i| i..i + 1));
    out
}

/// How much smaller each backup is than the one before it, when that is [`DROP`] or more.
fn drops(points: &[Point<'_>]) -> Vec<Option<f64>> {
    let mut out = vec![None; points.len()];
    for i in 1..points.len() {
        let (prev, cur) = (
            points[i - 1].backup.manifest.size_bytes as f64,
            points[i].backup.manifest.size_bytes as f64,
        );
        if prev > 0.0 && cur < prev * (1.0 - DROP) {
            out[i] = Some(1.0 - cur / prev);
        }
    }
    out
}

fn severity(s: BackupState) -> u8 {
    match s {
        BackupState::Verified => 0,
        BackupState::VerifiedQuick => 1,
        BackupState::Unverified => 2,
        BackupState::Incomplete => 3,
        BackupState::Failed => 4,
    }
}

fn marks(
    points: &[Point<'_>],
    drops: &[Option<f64>],
    value: impl Fn(&BackupEntry) -> f64,
    value_text: impl Fn(f64) -> String,
) -> Vec<Mark> {
    buckets(points.len())
        .into_iter()
        .map(|r| {
            let group = &points[r.clone()];
            let values: Vec<f64> = group.iter().map(|p| value(p.backup)).collect();
            let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
            let (min, max) = values
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
            let state = group
                .iter()
                .map(|p| p.backup.state())
                .max_by_key(|s| severity(*s))
                .unwrap_or(BackupState::Unverified);
            let drop = drops[r.clone()].iter().flatten().copied().reduce(f64::max);
            let last = group.last().map(|p| p.backup);
            let first = group.first().map(|p| p.backup);
            match (group, first, last) {
                ([one], _, Some(b)) => {
                    let mut label = format!(
                        "{}: {}, {}, {}",
                        b.manifest.name,
                        value_text(values[0]),
                        utc(b.manifest.finished_at),
                        b.state()
                    );
                    if let Some(c) = b.failed_check() {
                        let _ = write!(label, " (check {}: {})", c.name, c.detail);
                    }
                    if let Some(d) = drop {
                        let _ = write!(label, "; {:.0}% smaller than the backup before", d * 100.0);
                    }
                    Mark {
                        time: b.manifest.finished_at,
                        value: mean,
                        min,
                        max,
                        count: 1,
                        name: Some(one.backup.manifest.name.clone()),
                        label,
                        drop,
                        state,
                    }
                }
                (_, Some(f), Some(l)) => {
                    let failed = group
                        .iter()
                        .filter(|p| p.backup.state() == BackupState::Failed)
                        .count();
                    Mark {
                        time: l.manifest.finished_at,
                        value: mean,
                        min,
                        max,
                        count: group.len(),
                        name: None,
                        label: format!(
                            "{} backups {} – {}: mean {}, {} to {}; {failed} failed verification",
                            group.len(),
                            short(f.manifest.finished_at),
                            short(l.manifest.finished_at),
                            value_text(mean),
                            value_text(min),
                            value_text(max)
                        ),
                        drop,
                        state,
                    }
                }
                _ => Mark {
                    time: Utc::now(),
                    value: 0.0,
                    min: 0.0,
                    max: 0.0,
                    count: 0,
                    name: None,
                    label: String::new(),
                    drop: None,
                    state,
                },
            }
        })
        .filter(|m| m.count > 0)
        .collect()
}

pub(super) fn series_section(out: &mut String, o: &Overview, s: &Series<'_>) {
    let kind = if s.physical { "physical" } else { "logical" };
    let n = s.points.len();
    let _ = write!(
        out,
        "<section class=\"series\" data-database=\"{d}\" data-kind=\"{kind}\" data-backups=\"{n}\"><h3>{d} — {kind} backups <span class=\"muted\">({n})</span></h3>",
        d = esc(s.database),
    );
    let drops = drops(&s.points);
    let size_text = |v: f64| human_size(v.max(0.0) as u64);
    let sizes = marks(
        &s.points,
        &drops,
        |b| b.manifest.size_bytes as f64,
        size_text,
    );
    let no_drops = vec![None; n];
    let durations = marks(
        &s.points,
        &no_drops,
        |b| b.duration().num_milliseconds() as f64 / 1000.0,
        seconds,
    );
    let aggregated = if n > MAX_POINTS {
        format!(
            " The newest {RAW_POINTS} are drawn one by one; the {} older are aggregated (a grey dot: their mean, the bar: smallest to largest).",
            n - RAW_POINTS
        )
    } else {
        String::new()
    };
    let _ = write!(
        out,
        "<div class=\"charts\"><figure>{}<figcaption>Stored size per backup; ▼ marks a backup {:.0}% or more smaller than the one before.{aggregated}</figcaption></figure><figure>{}<figcaption>Duration per backup.</figcaption></figure></div>",
        svg::line_chart(
            "size",
            &format!("Size of the {kind} backups of {}", s.database),
            &sizes,
            size_text
        ),
        DROP * 100.0,
        svg::line_chart(
            "duration",
            &format!("Duration of the {kind} backups of {}", s.database),
            &durations,
            seconds
        ),
    );
    let _ = write!(
        out,
        "<h4>Verification over time</h4><figure>{}<figcaption class=\"legend\">● verified · ○ verified (quick) · ✕ FAILED · ◦ unverified · □ incomplete (data missing)</figcaption></figure>",
        svg::verify_strip(
            &format!("Verification of the {kind} backups of {}", s.database),
            &sizes
        )
    );
    let big_drops: Vec<String> = s
        .points
        .iter()
        .zip(&drops)
        .filter_map(|(p, d)| d.map(|d| (p, d)))
        .rev()
        .take(10)
        .map(|(p, d)| {
            format!(
                "<li class=\"drop\">▼ <code>{}</code> ({}) is {:.0}% smaller than the backup before it</li>",
                esc(&p.backup.manifest.name),
                utc(p.backup.manifest.finished_at),
                d * 100.0
            )
        })
        .collect();
    if !big_drops.is_empty() {
        let _ = write!(out, "<ul class=\"warn\">{}</ul>", big_drops.join(""));
    }
    let failures: Vec<&Point<'_>> = s
        .points
        .iter()
        .rev()
        .filter(|p| p.backup.state() == BackupState::Failed)
        .collect();
    if !failures.is_empty() {
        out.push_str("<ul class=\"failures\">");
        for p in failures.iter().take(TABLE_ROWS) {
            let b = p.backup;
            let (check, detail) = b
                .failed_check()
                .map_or(("?", ""), |c| (c.name.as_str(), c.detail.as_str()));
            let at = b
                .verify
                .as_ref()
                .map_or_else(String::new, |v| format!(" on {}", utc(v.finished_at)));
            let _ = write!(
                out,
                "<li class=\"error\" data-name=\"{}\">✖ <code>{}</code>: check <code class=\"check\">{}</code> FAILED{at}: {}</li>",
                esc(&b.manifest.name),
                esc(&b.manifest.name),
                esc(check),
                esc(detail)
            );
        }
        out.push_str("</ul>");
    }
    backups_table(out, o, s, &drops);
    out.push_str("</section>");
}

fn keep_text(p: &Point<'_>) -> String {
    match p.retention {
        None => "<span class=\"muted\">?</span>".into(),
        Some(e) if e.removed => "<span class=\"badge remove\">✕ would be removed</span>".into(),
        Some(e) => format!(
            "keep: {}",
            e.keep
                .iter()
                .map(|k| esc(k.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn backups_table(out: &mut String, o: &Overview, s: &Series<'_>, drops: &[Option<f64>]) {
    out.push_str("<div class=\"scroll\"><table class=\"backups\"><tr><th>Backup</th><th>Finished (UTC)</th><th>Size</th><th class=\"wide\">Duration</th><th>Verification</th><th>Prune</th></tr>");
    let n = s.points.len();
    // The newest rows, then older pinned or failed ones up to EXTRA_ROWS.
    let mut listed = vec![false; n];
    let mut extra = 0;
    for (i, p) in s.points.iter().enumerate().rev() {
        let notable = p.backup.manifest.pinned || p.backup.state() == BackupState::Failed;
        listed[i] = n - i <= TABLE_ROWS || (notable && extra < EXTRA_ROWS);
        if listed[i] && n - i > TABLE_ROWS {
            extra += 1;
        }
    }
    let mut shown = 0;
    for (i, p) in s.points.iter().enumerate().rev() {
        if !listed[i] {
            continue;
        }
        shown += 1;
        let b = p.backup;
        let m = &b.manifest;
        let removed = p.retention.is_some_and(|e| e.removed);
        let mut name = format!("<code>{}</code>", esc(&m.name));
        if m.pinned {
            name.push_str(" <span class=\"badge pinned\">⚑ pinned</span>");
        }
        if kind_word(b) == "safety copy" {
            name.push_str(" <span class=\"muted\">(safety copy)</span>");
        }
        let mut size = human_size(m.size_bytes);
        if let Some(d) = drops[i] {
            let _ = write!(size, " <span class=\"error\">▼ {:.0}%</span>", d * 100.0);
        }
        let mut verify = badge(b.state());
        if let Some(v) = &b.verify {
            let _ = write!(
                verify,
                " <span class=\"ago\">{}</span>",
                ago(v.finished_at, o.now)
            );
        }
        if let Some(c) = b.failed_check() {
            let _ = write!(
                verify,
                "<br>check <code class=\"check\">{}</code>: {}",
                esc(&c.name),
                esc(&c.detail)
            );
        }
        let _ = write!(
            out,
            "<tr class=\"backup {}{}\" data-name=\"{}\"><td>{name}</td><td>{}</td><td class=\"num\">{size}</td><td class=\"num wide\">{}</td><td>{verify}</td><td>{}</td></tr>",
            state_class(b.state()),
            if removed { " removed" } else { "" },
            esc(&m.name),
            when(m.finished_at, o.now),
            seconds(b.duration().num_milliseconds() as f64 / 1000.0),
            keep_text(p),
        );
    }
    if shown < n {
        let hidden: Vec<&Point<'_>> = s
            .points
            .iter()
            .zip(&listed)
            .filter(|(_, l)| !**l)
            .map(|(p, _)| p)
            .collect();
        let removed = hidden
            .iter()
            .filter(|p| p.retention.is_some_and(|e| e.removed))
            .count();
        let _ = write!(
            out,
            "<tr class=\"more\"><td colspan=\"6\" class=\"muted\">… and {} older backup(s) not listed (in the charts above; <code>kaizen-backup list</code> lists them all): prune would keep {} and remove {removed} of them.</td></tr>",
            n - shown,
            (n - shown).saturating_sub(removed),
        );
    }
    out.push_str("</table></div>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_histories_are_drawn_whole_and_long_ones_aggregated() {
        assert_eq!(buckets(3), [0..1, 1..2, 2..3]);
        assert_eq!(buckets(MAX_POINTS).len(), MAX_POINTS);
        let b = buckets(5000);
        assert_eq!(b.len(), MAX_POINTS);
        // Every backup is in exactly one mark, in order.
        let mut next = 0;
        for r in &b {
            assert_eq!(r.start, next);
            next = r.end;
        }
        assert_eq!(next, 5000);
        assert!(b[MAX_POINTS - RAW_POINTS..].iter().all(|r| r.len() == 1));
    }
}
