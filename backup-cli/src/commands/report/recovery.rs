//! Point-in-time recovery (the recovery window on a timeline with the archived WAL and
//! its gaps) and the last restore drills of one target.

use std::fmt::Write;

use backup_core::catalog::BackupEntry;
use backup_core::overview::{Overview, WalOverview};
use backup_core::util::human_size;
use chrono::{DateTime, Utc};

use super::fmt::{esc, seconds, utc, when};
use super::svg::{self, Span, Timeline};

pub(super) fn pitr_section(out: &mut String, o: &Overview) {
    let physical: Vec<&BackupEntry> = o
        .catalog
        .as_ref()
        .map(|c| {
            c.backups
                .iter()
                .filter(|b| b.manifest.is_physical())
                .collect()
        })
        .unwrap_or_default();
    let wal = match &o.wal {
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            let _ = write!(
                out,
                "<h3>Point-in-time recovery</h3><p class=\"error\">✖ The WAL archive cannot be read: {}</p>",
                esc(&e.to_string())
            );
            return;
        }
        None => None,
    };
    if physical.is_empty() && wal.is_none_or(|w| w.files == 0) {
        return;
    }
    out.push_str("<section class=\"pitr\"><h3>Point-in-time recovery</h3>");
    let empty = WalOverview::default();
    let w = wal.unwrap_or(&empty);
    let span = |from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>, label: String| {
        Some(Span {
            from: from?,
            to: to?,
            label,
        })
    };
    let t = Timeline {
        bases: physical
            .iter()
            .map(|b| (b.manifest.finished_at, b.manifest.name.clone()))
            .collect(),
        runs: w
            .runs
            .iter()
            .filter_map(|r| {
                span(
                    r.from,
                    r.to,
                    format!("{} segment(s) {} to {}", r.segments, r.first, r.last),
                )
            })
            .collect(),
        gaps: w
            .gaps
            .iter()
            .filter_map(|g| {
                span(
                    g.after,
                    g.before,
                    format!("missing: {} ({} segment(s))", g.first_missing, g.missing),
                )
            })
            .collect(),
        recoverable: w
            .recoverable
            .iter()
            .map(|r| Span {
                from: r.from,
                to: r.to,
                label: format!(
                    "recoverable {} to {} (from base backup {})",
                    utc(r.from),
                    utc(r.to),
                    r.backup
                ),
            })
            .collect(),
        now: Some(o.now),
    };
    let _ = write!(
        out,
        "<figure>{}<figcaption class=\"legend\">◆ base backups · ▬ archived WAL (hatched ✕: missing) · ▬ what a restore can reach</figcaption></figure><ul class=\"window\">",
        svg::timeline("Recovery window and WAL coverage", &t)
    );
    if w.recoverable.is_empty() {
        out.push_str("<li class=\"warn\">No recovery window: no physical backup (<code>kaizen-backup backup --physical</code>).</li>");
    }
    for r in &w.recoverable {
        let _ = write!(
            out,
            "<li class=\"stretch\">Recoverable from {} to {} ({}), starting from base backup <code>{}</code></li>",
            when(r.from, o.now),
            when(r.to, o.now),
            seconds((r.to - r.from).num_seconds() as f64),
            esc(&r.backup)
        );
    }
    if let (Some(p), Some(last)) = (
        backup_core::retention::promised_window(&o.policy),
        w.recoverable.last(),
    ) && last.to - last.from < p
    {
        let _ = write!(
            out,
            "<li class=\"warn\">The window is shorter than the {} the retention rules promise.</li>",
            seconds(p.num_seconds() as f64)
        );
    }
    for g in &w.gaps {
        let between = match (g.after, g.before) {
            (Some(a), Some(b)) => format!(" between {} and {}", utc(a), utc(b)),
            _ => String::new(),
        };
        let _ = write!(
            out,
            "<li class=\"error gap\">✕ WAL gap: segment <code>{}</code> is missing ({} segment(s)){between}: recovery cannot pass it, later points need a base backup taken after it.</li>",
            esc(&g.first_missing),
            g.missing
        );
    }
    match &w.last {
        Some(l) => {
            let _ = write!(
                out,
                "<li>WAL archive: {} file(s), {}, timeline {}; last archived <code>{}</code>{}.</li>",
                w.files,
                human_size(w.bytes),
                w.timeline,
                esc(&l.name),
                l.time
                    .map_or_else(String::new, |t| format!(" at {}", when(t, o.now)))
            );
        }
        None => out.push_str("<li class=\"warn\">No WAL archived.</li>"),
    }
    if let Some(n) = &w.note {
        let _ = write!(out, "<li class=\"warn\">{}</li>", esc(n));
    }
    out.push_str("</ul></section>");
}

pub(super) fn drills_section(out: &mut String, o: &Overview) {
    out.push_str("<section class=\"drills\"><h3>Restore drills</h3>");
    let mut rows = String::new();
    for d in &o.drills {
        match &d.record {
            Ok(Some(r)) => {
                let result = if r.passed {
                    "<span class=\"badge verified\">✔ passed</span>".to_string()
                } else {
                    "<span class=\"badge failed\">✖ FAILED</span>".to_string()
                };
                let _ = write!(
                    rows,
                    "<tr class=\"drill\" data-database=\"{}\"><td>{}</td><td>{result}</td><td>{}</td><td>{}</td><td class=\"num rto\">{}</td><td class=\"num\">{}</td><td><code>{}</code>{}</td><td>{}</td></tr>",
                    esc(&d.database),
                    esc(&d.database),
                    esc(&r.kind),
                    when(r.finished_at, o.now),
                    r.rto_seconds.map_or_else(|| "?".into(), seconds),
                    r.rpo_seconds.map_or_else(|| "?".into(), seconds),
                    esc(r.backup.as_deref().unwrap_or("?")),
                    r.target
                        .as_deref()
                        .map_or_else(String::new, |t| format!(" to {}", esc(t))),
                    esc(r.error.as_deref().unwrap_or("")),
                );
            }
            Ok(None) => {}
            Err(e) => {
                let _ = write!(
                    rows,
                    "<tr><td>{}</td><td colspan=\"7\" class=\"error\">the drill record cannot be read: {}</td></tr>",
                    esc(&d.database),
                    esc(&e.to_string())
                );
            }
        }
    }
    if rows.is_empty() {
        out.push_str(
            "<p class=\"muted\">No restore drill recorded (<code>kaizen-backup drill</code>).</p>",
        );
    } else {
        let _ = write!(
            out,
            "<div class=\"scroll\"><table class=\"drills\"><tr><th>Database</th><th>Result</th><th>Kind</th><th>Finished (UTC)</th><th>RTO</th><th>RPO</th><th>Backup</th><th>Error</th></tr>{rows}</table></div>"
        );
    }
    out.push_str("</section>");
}
