//! The page: a summary of the newest backup of each database on each target, then per
//! target the history of each database (size, duration, verification, retention), the
//! recovery window of physical backups, and the last drills.
//!
//! Everything from the storage (names, databases, URLs, check details, errors) goes
//! through [`esc`]. Long histories stay small: charts draw the newest [`RAW_POINTS`]
//! backups one by one and aggregate older ones into at most [`MAX_POINTS`] marks in all;
//! tables list the newest [`TABLE_ROWS`] backups (and older pinned or failed ones).

use std::fmt::Write;

use backup_core::catalog::{BackupEntry, BackupState};
use backup_core::overview::Overview;
use backup_core::retention::RetentionPolicy;
use backup_core::util::human_size;
use chrono::Utc;

use super::fmt::{esc, when};
use super::history::series_section;
use super::recovery::{drills_section, pitr_section};
use super::svg::state_class;

/// Marks a chart draws at most.
pub(super) const MAX_POINTS: usize = 120;
/// The newest backups drawn one by one when a history is longer than [`MAX_POINTS`].
pub(super) const RAW_POINTS: usize = 60;
/// Rows of the newest backups a table lists.
pub(super) const TABLE_ROWS: usize = 40;
/// Older pinned or failed backups a table lists besides.
pub(super) const EXTRA_ROWS: usize = 40;
/// A backup this much smaller than the one before it is marked.
pub(super) const DROP: f64 = 0.4;

const CSS: &str = r#"
:root{--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--muted:#57606a;--fg:#1f2328;--bg:#fff;--line:#d0d7de;--soft:#f6f8fa}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;color:var(--fg);background:var(--bg);margin:0 auto;max-width:1100px;padding:14px}
h1{font-size:1.45em;margin:.2em 0}h2{font-size:1.25em;margin:1.4em 0 .4em;border-bottom:1px solid var(--line);padding-bottom:.2em}
h3{font-size:1.08em;margin:1.1em 0 .3em}h4{font-size:.98em;margin:.8em 0 .2em}
p{margin:.35em 0}code{font:.9em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
.meta,.ago,.muted{color:var(--muted)}.ago{white-space:nowrap}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:10px}
.card{border:1px solid var(--line);border-left:7px solid var(--muted);border-radius:6px;padding:8px 10px;background:var(--soft);overflow-wrap:anywhere}
.card h3{margin:0 0 .2em}.card.verified,.card.quick{border-left-color:var(--ok)}.card.failed{border-left:7px double var(--bad)}
.card.unverified{border-left-style:dashed}.card.incomplete,.card.none{border-left:7px dotted var(--warn)}
.badge{display:inline-block;padding:0 .5em;border-radius:1em;border:1.5px solid currentColor;font-weight:600;font-size:.85em;white-space:nowrap}
.badge.verified{background:var(--ok);border-color:var(--ok);color:#fff}.badge.quick{color:var(--ok)}
.badge.failed{background:var(--bad);border-color:var(--bad);color:#fff}.badge.unverified{color:var(--muted);border-style:dashed}
.badge.incomplete,.badge.none{color:var(--warn);border-style:dotted}.badge.pinned{color:#0550ae}.badge.remove{color:var(--bad);border-style:dashed}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-size:.9em}th,td{padding:4px 6px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft)}td.num{text-align:right;white-space:nowrap}tr.removed td{color:var(--muted)}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:8px 16px}
figure{margin:0}figcaption{font-size:.88em;color:var(--muted)}
svg{display:block;width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:var(--muted)}
svg .grid{stroke:var(--line);stroke-width:1}svg .line{fill:none;stroke:#0969da;stroke-width:1.5}
svg .pt{fill:#0969da}svg .pt.agg{fill:#8c959f}svg .pt.drop{fill:var(--bad);r:5}svg .whisker{stroke:#8c959f}
svg .drop-mark{fill:var(--bad)}svg .drop-text{fill:var(--bad);font-weight:700}
svg .vmark{stroke-width:2}svg .v-verified{fill:var(--ok);stroke:var(--ok)}svg .v-quick{stroke:var(--ok)}
svg .v-failed{stroke:var(--bad);stroke-width:3}svg .v-unverified{stroke:var(--muted)}svg .v-incomplete{stroke:var(--warn)}
svg .base{fill:#0550ae}svg .run{fill:#54aeff}svg .gap{fill:url(#hatch);stroke:var(--bad)}svg .hatch{fill:var(--bad)}
svg .window{fill:var(--ok)}svg .now{stroke:var(--fg);stroke-dasharray:3 3}svg .lane{fill:var(--fg)}svg .gap-text{fill:var(--bad);font-weight:700}
.warn{color:var(--warn)}.error{color:var(--bad);font-weight:600}ul{padding-left:1.2em;margin:.3em 0}
.legend{font-size:.85em;color:var(--muted)}
@media (max-width:600px){body{padding:8px;font-size:14px}th,td{padding:3px 4px}.wide{display:none}}
"#;

/// The whole page for `overviews` (one per target).
pub fn render(overviews: &[Overview]) -> String {
    let now = overviews.first().map_or_else(Utc::now, |o| o.now);
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><meta name=\"generator\" content=\"kaizen-backup {v}\"><title>kaizen-backup report</title><style>{CSS}</style></head><body>\
         <header><h1>kaizen-backup report</h1><p class=\"meta\">Generated {} by kaizen-backup {v} · {} storage target(s)</p></header>",
        when(now, now),
        overviews.len(),
        v = esc(backup_core::TOOL_VERSION),
    );
    newest_section(&mut out, overviews);
    for o in overviews {
        target_section(&mut out, o);
    }
    out.push_str("</body></html>\n");
    out
}

pub(super) fn badge(state: BackupState) -> String {
    let symbol = match state {
        BackupState::Verified => "✔",
        BackupState::VerifiedQuick => "✓",
        BackupState::Failed => "✖",
        BackupState::Unverified => "?",
        BackupState::Incomplete => "◐",
    };
    format!(
        "<span class=\"badge {}\">{symbol} {}</span>",
        state_class(state),
        state.as_str()
    )
}

pub(super) fn kind_word(b: &BackupEntry) -> &'static str {
    match b.manifest.kind.unwrap_or_default() {
        backup_core::manifest::Kind::Logical => "logical",
        backup_core::manifest::Kind::Safety => "safety copy",
        backup_core::manifest::Kind::Physical => "physical",
    }
}

fn newest_section(out: &mut String, overviews: &[Overview]) {
    out.push_str("<section id=\"newest\"><h2>Newest backups</h2><div class=\"cards\">");
    for o in overviews {
        if let Err(e) = &o.catalog {
            let _ = write!(
                out,
                "<article class=\"card none\"><h3>{}</h3><p><span class=\"badge none\">✖ unreadable</span></p><p class=\"error\">{}</p></article>",
                esc(&o.target),
                esc(&e.to_string())
            );
            continue;
        }
        for db in o.databases() {
            let Some(b) = o.newest(db) else {
                let _ = write!(
                    out,
                    "<article class=\"card none\" data-database=\"{d}\"><h3>{d}</h3><p class=\"meta\"><code>{t}</code></p><p><span class=\"badge none\">– no backup</span></p></article>",
                    d = esc(db),
                    t = esc(&o.target)
                );
                continue;
            };
            let state = b.state();
            let m = &b.manifest;
            let _ = write!(
                out,
                "<article class=\"card {}\" data-database=\"{d}\" data-name=\"{n}\"><h3>{d}</h3><p class=\"meta\"><code>{t}</code></p><p>{}{}</p><p><code>{n}</code> · {} · {}</p><p>{}</p>",
                state_class(state),
                badge(state),
                if m.pinned {
                    " <span class=\"badge pinned\">⚑ pinned</span>"
                } else {
                    ""
                },
                kind_word(b),
                human_size(m.size_bytes),
                when(m.finished_at, o.now),
                d = esc(db),
                n = esc(&m.name),
                t = esc(&o.target),
            );
            if let Some(c) = b.failed_check() {
                let _ = write!(
                    out,
                    "<p class=\"error\">check <code>{}</code> failed: {}</p>",
                    esc(&c.name),
                    esc(&c.detail)
                );
            }
            out.push_str("</article>");
        }
        if let Ok(cat) = &o.catalog
            && !cat.incomplete.is_empty()
        {
            let _ = write!(
                out,
                "<article class=\"card incomplete\"><h3>{}</h3><p>{}</p><p>{} object(s) without a manifest: a run was killed or is still writing. <code>prune</code> removes them after a day.</p></article>",
                esc(&o.target),
                badge(BackupState::Incomplete),
                cat.incomplete.len()
            );
        }
    }
    out.push_str("</div></section>");
}

fn target_section(out: &mut String, o: &Overview) {
    let _ = write!(
        out,
        "<section class=\"target\" data-target=\"{t}\"><h2>Storage <code>{t}</code></h2>",
        t = esc(&o.target)
    );
    let cat = match &o.catalog {
        Ok(c) => c,
        Err(e) => {
            let _ = write!(
                out,
                "<p class=\"error\">✖ The storage cannot be read: {}</p></section>",
                esc(&e.to_string())
            );
            return;
        }
    };
    for (key, why) in &cat.unreadable {
        let _ = write!(
            out,
            "<p class=\"error\">✖ Unreadable manifest <code>{}</code>: {}</p>",
            esc(key),
            esc(why)
        );
    }
    if cat.backups.is_empty() {
        out.push_str("<p class=\"muted\">No backups.</p>");
    }
    retention_summary(out, o);
    for s in o.series() {
        series_section(out, o, &s);
    }
    if !cat.incomplete.is_empty() {
        out.push_str("<h3>Incomplete (no manifest)</h3><div class=\"scroll\"><table class=\"incomplete\"><tr><th>Object</th><th>Size</th><th>Last written</th><th>Status</th></tr>");
        for obj in cat.incomplete.iter().take(TABLE_ROWS) {
            let _ = write!(
                out,
                "<tr class=\"leftover\" data-name=\"{k}\"><td><code>{k}</code></td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                human_size(obj.size),
                obj.last_modified
                    .map_or_else(|| "?".into(), |t| when(t, o.now)),
                badge(BackupState::Incomplete),
                k = esc(&obj.key),
            );
        }
        if cat.incomplete.len() > TABLE_ROWS {
            let _ = write!(
                out,
                "<tr><td colspan=\"4\" class=\"muted\">… and {} more</td></tr>",
                cat.incomplete.len() - TABLE_ROWS
            );
        }
        out.push_str("</table></div>");
    }
    pitr_section(out, o);
    drills_section(out, o);
    out.push_str("</section>");
}

fn policy_text(p: &RetentionPolicy) -> String {
    if !p.is_active() {
        return "No retention rule is configured: prune keeps every backup.".into();
    }
    let mut rules = Vec::new();
    for (n, what) in [
        (p.keep_last, "keep_last"),
        (p.max_age_days, "max_age_days"),
        (p.keep_daily, "keep_daily"),
        (p.keep_weekly, "keep_weekly"),
        (p.keep_monthly, "keep_monthly"),
        (p.keep_yearly, "keep_yearly"),
    ] {
        if let Some(n) = n {
            rules.push(format!("<code>{what} = {n}</code>"));
        }
    }
    rules.push(format!("<code>min_keep = {}</code>", p.min_keep));
    if p.keep_verified {
        rules.push("the newest verified backup".into());
    }
    format!(
        "Retention: {}; never the newest backup, pinned backups or backups being read.",
        rules.join(", ")
    )
}

fn retention_summary(out: &mut String, o: &Overview) {
    out.push_str("<div class=\"retention\">");
    let _ = write!(out, "<p>{}</p>", policy_text(&o.policy));
    match &o.retention {
        Ok(r) if !r.is_empty() => {
            let removed = r.iter().filter(|e| e.removed).count();
            let pinned = o
                .catalog
                .as_ref()
                .map(|c| c.backups.iter().filter(|b| b.manifest.pinned).count())
                .unwrap_or(0);
            let _ = write!(
                out,
                "<p><code>prune</code> now would keep <strong>{}</strong> and remove <strong>{removed}</strong> of {} backup(s); {pinned} pinned. Each table below says why a backup is kept.</p>",
                r.len() - removed,
                r.len()
            );
        }
        Ok(_) => {}
        Err(e) => {
            let _ = write!(
                out,
                "<p class=\"error\">What prune would do is unknown: {}</p>",
                esc(&e.to_string())
            );
        }
    }
    out.push_str("</div>");
}
