//! The pictures of the report, as inline SVG: a value over time (size, duration), the
//! verification outcomes over time, and the recovery timeline. Every mark has a shape of
//! its own and a `<title>`, so the pictures read without colour too.

use std::fmt::Write;

use backup_core::catalog::BackupState;
use chrono::{DateTime, Utc};

use super::fmt::{esc, short};

const W: f64 = 640.0;

/// One point of a history: a backup, or several older ones aggregated.
#[derive(Debug, Clone)]
pub struct Mark {
    /// When (the newest backup's time, for an aggregate).
    pub time: DateTime<Utc>,
    /// The value (the mean, for an aggregate).
    pub value: f64,
    /// Smallest and largest value aggregated.
    pub min: f64,
    pub max: f64,
    /// Backups in it (1: a backup of its own).
    pub count: usize,
    /// The backup's name (None for an aggregate).
    pub name: Option<String>,
    /// Tooltip text (plain; escaped when drawn).
    pub label: String,
    /// A drop of 40% or more from the backup before (for an aggregate: one of its own).
    pub drop: Option<f64>,
    /// The worst verification state in it.
    pub state: BackupState,
}

/// Maps time to x between `left` and `W - right`.
struct Scale {
    t0: i64,
    t1: i64,
    left: f64,
    right: f64,
}

impl Scale {
    fn new(times: impl Iterator<Item = DateTime<Utc>>, left: f64, right: f64) -> Self {
        let (mut t0, mut t1) = (i64::MAX, i64::MIN);
        for t in times {
            t0 = t0.min(t.timestamp());
            t1 = t1.max(t.timestamp());
        }
        if t0 > t1 {
            (t0, t1) = (0, 0);
        }
        Self {
            t0,
            t1,
            left,
            right,
        }
    }

    fn x(&self, t: DateTime<Utc>) -> f64 {
        let width = W - self.left - self.right;
        if self.t1 <= self.t0 {
            return self.left + width / 2.0;
        }
        let f = (t.timestamp() - self.t0) as f64 / (self.t1 - self.t0) as f64;
        self.left + f.clamp(0.0, 1.0) * width
    }

    fn start(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(self.t0, 0)
    }

    fn end(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(self.t1, 0)
    }
}

fn axis_dates(out: &mut String, s: &Scale, y: f64) {
    if let (Some(a), Some(b)) = (s.start(), s.end()) {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{y:.1}\">{}</text>",
            s.left,
            short(a)
        );
        if b > a {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{y:.1}\" text-anchor=\"end\">{}</text>",
                W - s.right,
                short(b)
            );
        }
    }
}

/// A value over time: a line through the marks, each a circle (`class="pt"`, one per
/// backup or aggregate), a min–max whisker on aggregates, drops marked with a triangle
/// and their percentage. `class` names the chart (`size`, `duration`).
pub fn line_chart(
    class: &str,
    title: &str,
    marks: &[Mark],
    value_text: impl Fn(f64) -> String,
) -> String {
    const H: f64 = 190.0;
    let (top, bottom) = (14.0, 26.0);
    let s = Scale::new(marks.iter().map(|m| m.time), 62.0, 14.0);
    let vmax = marks
        .iter()
        .map(|m| m.max)
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.12;
    let y = |v: f64| top + (1.0 - v / vmax) * (H - top - bottom);
    let mut out = format!(
        "<svg class=\"chart {class}\" data-points=\"{}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>",
        marks.len(),
        esc(title),
        esc(title)
    );
    for f in [0.0, 0.5, 1.0] {
        let v = vmax / 1.12 * f;
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            s.left,
            W - s.right,
            s.left - 6.0,
            y(v) + 4.0,
            esc(&value_text(v)),
            y = y(v),
        );
    }
    axis_dates(&mut out, &s, H - 6.0);
    if marks.len() > 1 {
        out.push_str("<polyline class=\"line\" points=\"");
        for m in marks {
            let _ = write!(out, "{:.1},{:.1} ", s.x(m.time), y(m.value));
        }
        out.push_str("\"/>");
    }
    for m in marks {
        let (cx, cy) = (s.x(m.time), y(m.value));
        if m.count > 1 && m.max > m.min {
            let _ = write!(
                out,
                "<line class=\"whisker\" x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
                y(m.min),
                y(m.max)
            );
        }
        let mut classes = String::from("pt");
        if m.count > 1 {
            classes.push_str(" agg");
        }
        if m.drop.is_some() {
            classes.push_str(" drop");
        }
        let name = m
            .name
            .as_deref()
            .map(|n| format!(" data-name=\"{}\"", esc(n)))
            .unwrap_or_default();
        let r = if m.count > 1 { 2.5 } else { 3.5 };
        let _ = write!(
            out,
            "<circle class=\"{classes}\"{name} cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"{r}\"><title>{}</title></circle>",
            esc(&m.label)
        );
        if let Some(p) = m.drop {
            let _ = write!(
                out,
                "<path class=\"drop-mark\" d=\"M{:.1} {:.1}h10l-5 8z\"/><text class=\"drop-text\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">−{:.0}%</text>",
                cx - 5.0,
                cy - 18.0,
                cx,
                cy - 21.0,
                p * 100.0
            );
        }
    }
    out.push_str("</svg>");
    out
}

fn shape(state: BackupState, cx: f64, cy: f64) -> String {
    match state {
        BackupState::Verified => format!("<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"5\"/>"),
        BackupState::VerifiedQuick => {
            format!("<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"4.5\" fill=\"none\"/>")
        }
        BackupState::Failed => format!(
            "<path d=\"M{:.1} {:.1}l10 10M{:.1} {:.1}l-10 10\"/>",
            cx - 5.0,
            cy - 5.0,
            cx + 5.0,
            cy - 5.0
        ),
        BackupState::Unverified => {
            format!("<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"3\" fill=\"none\"/>")
        }
        BackupState::Incomplete => format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"9\" height=\"9\" fill=\"none\"/>",
            cx - 4.5,
            cy - 4.5
        ),
    }
}

/// The CSS class of a state (`v-verified`, `v-failed`, …).
pub fn state_class(state: BackupState) -> &'static str {
    match state {
        BackupState::Verified => "verified",
        BackupState::VerifiedQuick => "quick",
        BackupState::Failed => "failed",
        BackupState::Unverified => "unverified",
        BackupState::Incomplete => "incomplete",
    }
}

/// Verification outcomes over time: one mark per backup (or aggregate), shaped by state:
/// ● verified, ○ verified quickly, ✕ FAILED, small ○ unverified, □ incomplete.
pub fn verify_strip(title: &str, marks: &[Mark]) -> String {
    const H: f64 = 58.0;
    let s = Scale::new(marks.iter().map(|m| m.time), 14.0, 14.0);
    let mut out = format!(
        "<svg class=\"chart verify\" data-points=\"{}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title><line class=\"grid\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"22\" y2=\"22\"/>",
        marks.len(),
        esc(title),
        esc(title),
        s.left,
        W - s.right
    );
    for m in marks {
        let name = m
            .name
            .as_deref()
            .map(|n| format!(" data-name=\"{}\"", esc(n)))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<g class=\"vmark v-{}\"{name}><title>{}</title>{}</g>",
            state_class(m.state),
            esc(&m.label),
            shape(m.state, s.x(m.time), 22.0)
        );
    }
    axis_dates(&mut out, &s, H - 6.0);
    out.push_str("</svg>");
    out
}

/// A span of the recovery timeline.
#[derive(Debug, Clone)]
pub struct Span {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub label: String,
}

/// What the recovery timeline shows.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Base backups: when they ended, and their names.
    pub bases: Vec<(DateTime<Utc>, String)>,
    /// Gap-free runs of archived WAL.
    pub runs: Vec<Span>,
    /// Missing WAL.
    pub gaps: Vec<Span>,
    /// What a restore can reach.
    pub recoverable: Vec<Span>,
    /// The report's time.
    pub now: Option<DateTime<Utc>>,
}

/// Three lanes over time: base backups (◆), archived WAL (bars; gaps hatched and marked
/// ✕), and the recoverable window (bars).
pub fn timeline(title: &str, t: &Timeline) -> String {
    const H: f64 = 150.0;
    let times = t
        .bases
        .iter()
        .map(|b| b.0)
        .chain(t.runs.iter().flat_map(|r| [r.from, r.to]))
        .chain(t.recoverable.iter().flat_map(|r| [r.from, r.to]))
        .chain(t.now);
    let s = Scale::new(times, 10.0, 10.0);
    let mut out = format!(
        "<svg class=\"chart timeline\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>\
         <defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\"><rect width=\"3\" height=\"6\" class=\"hatch\"/></pattern></defs>",
        esc(title),
        esc(title)
    );
    let lane = |out: &mut String, y: f64, label: &str| {
        let _ = write!(
            out,
            "<text class=\"lane\" x=\"{:.1}\" y=\"{:.1}\">{label}</text><line class=\"grid\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
            s.left,
            y - 12.0,
            s.left,
            W - s.right,
            y + 7.0,
            y + 7.0
        );
    };
    let bar = |out: &mut String, class: &str, sp: &Span, y: f64| {
        let (x0, x1) = (s.x(sp.from), s.x(sp.to));
        let _ = write!(
            out,
            "<rect class=\"{class}\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"14\"><title>{}</title></rect>",
            x0.min(x1),
            (x1 - x0).abs().max(3.0),
            esc(&sp.label)
        );
    };
    lane(&mut out, 26.0, "base backups ◆");
    for (at, name) in &t.bases {
        let x = s.x(*at);
        let _ = write!(
            out,
            "<path class=\"base\" d=\"M{:.1} 26l6 7-6 7-6-7z\"><title>{}</title></path>",
            x,
            esc(&format!("base backup {name}, ended {}", short(*at)))
        );
    }
    lane(&mut out, 70.0, "WAL archived ▬ (gaps ✕)");
    for r in &t.runs {
        bar(&mut out, "run", r, 63.0);
    }
    for g in &t.gaps {
        bar(&mut out, "gap", g, 63.0);
        let _ = write!(
            out,
            "<text class=\"gap-text\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">✕ gap</text>",
            (s.x(g.from) + s.x(g.to)) / 2.0,
            92.0
        );
    }
    lane(&mut out, 118.0, "recoverable ▬");
    for r in &t.recoverable {
        bar(&mut out, "window", r, 111.0);
    }
    if let Some(now) = t.now {
        let x = s.x(now);
        let _ = write!(
            out,
            "<line class=\"now\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"14\" y2=\"132\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"end\">now</text>",
            H - 6.0
        );
    }
    out.push_str("</svg>");
    out
}
