//! Retention policy: which backups to keep, and why. Pure functions over a list of
//! backups, so the rules can be tested exhaustively; the prune pipeline applies them.
//!
//! The rules combine as in restic's `forget`: a backup is kept if any rule keeps it.
//! Whatever the rules say, these are never removed: the newest valid backup, pinned
//! backups, backups still being written, and (by default) the newest verified one.
//! `min_keep` then tops up with the newest remaining backups.
//!
//! Physical backups ([`decide_physical`]) also keep the base backup a point-in-time
//! restore to the oldest moment `max_age_days` promises starts from, and
//! [`promised_window`] says how far back recovery must reach under a policy (what
//! `status` compares the recovery window with).

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The `[retention]` configuration section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep the N newest backups (`BACKUP_RETENTION_COUNT`).
    pub keep_last: Option<u32>,
    /// Keep backups newer than this many days (`BACKUP_RETENTION_DAYS`); of physical
    /// backups also the newest older one, so point-in-time recovery reaches that far back.
    pub max_age_days: Option<u32>,
    /// Keep the newest backup of each of the N most recent days that have backups.
    pub keep_daily: Option<u32>,
    /// Same per ISO week.
    pub keep_weekly: Option<u32>,
    /// Same per month.
    pub keep_monthly: Option<u32>,
    /// Same per year.
    pub keep_yearly: Option<u32>,
    /// Never fewer than this many valid backups remain.
    pub min_keep: u32,
    /// Never remove the newest backup whose verification passed.
    pub keep_verified: bool,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            keep_last: None,
            max_age_days: None,
            keep_daily: None,
            keep_weekly: None,
            keep_monthly: None,
            keep_yearly: None,
            min_keep: 1,
            keep_verified: true,
        }
    }
}

impl RetentionPolicy {
    /// Whether any removal rule is configured (without one, everything is kept).
    pub fn is_active(&self) -> bool {
        self.keep_last.is_some()
            || self.max_age_days.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some()
            || self.keep_yearly.is_some()
    }
}

/// What retention needs to know about one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Backup name.
    pub name: String,
    /// When it finished.
    pub time: DateTime<Utc>,
    /// Pinned backups are never removed.
    pub pinned: bool,
    /// `Some(true)` when a full verification passed.
    pub verified: Option<bool>,
    /// Still being written (never removed).
    pub in_progress: bool,
}

/// Why a backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// No removal rule is configured.
    NoPolicy,
    /// The newest valid backup.
    Newest,
    /// Pinned.
    Pinned,
    /// Still being written.
    InProgress,
    /// The newest verified backup.
    NewestVerified,
    /// One of the N newest.
    KeepLast,
    /// Younger than max_age_days.
    MaxAge,
    /// Newest of its day.
    Daily,
    /// Newest of its ISO week.
    Weekly,
    /// Newest of its month.
    Monthly,
    /// Newest of its year.
    Yearly,
    /// Kept to honour min_keep.
    MinKeep,
    /// Being read by a restore or a verification (it holds a lease).
    InUse,
    /// The physical backup the recovery window promised by max_age_days starts from.
    WindowStart,
    /// Retention would delete it, but its objects are still under S3 Object Lock.
    KeptByLock,
}

impl KeepReason {
    /// Short text for `prune --dry-run`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoPolicy => "no retention rule configured",
            Self::Newest => "newest backup",
            Self::Pinned => "pinned",
            Self::InProgress => "being written",
            Self::NewestVerified => "newest verified backup",
            Self::KeepLast => "keep_last",
            Self::MaxAge => "max_age_days",
            Self::Daily => "keep_daily",
            Self::Weekly => "keep_weekly",
            Self::Monthly => "keep_monthly",
            Self::Yearly => "keep_yearly",
            Self::MinKeep => "min_keep",
            Self::InUse => "being restored or verified",
            Self::WindowStart => "max_age_days: the recovery window starts from it",
            Self::KeptByLock => "kept by Object Lock",
        }
    }
}

/// The decision for one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Backup name.
    pub name: String,
    /// Why it is kept; empty means it is removed.
    pub keep: Vec<KeepReason>,
}

impl Decision {
    /// Whether the backup is removed.
    pub fn remove(&self) -> bool {
        self.keep.is_empty()
    }
}

/// Maps a time to its calendar bucket (day, week, month, year).
type BucketKey = fn(&DateTime<Utc>) -> (i32, u32);

/// Bucket keys for the calendar rules.
fn day(t: &DateTime<Utc>) -> (i32, u32) {
    (t.year(), t.ordinal())
}
fn week(t: &DateTime<Utc>) -> (i32, u32) {
    let w = t.iso_week();
    (w.year(), w.week())
}
fn month(t: &DateTime<Utc>) -> (i32, u32) {
    (t.year(), t.month())
}
fn year(t: &DateTime<Utc>) -> (i32, u32) {
    (t.year(), 0)
}

/// How far back point-in-time recovery must reach under `policy`: the longest span its
/// time rules guarantee with physical backups, or None when no rule promises one (without
/// a rule everything is kept; `keep_last` and `min_keep` count backups, not time).
///
/// - `max_age_days = N`: N days ([`decide_physical`] keeps the base backup it starts from).
/// - `keep_daily`, `keep_weekly`, `keep_monthly`, `keep_yearly = N`: N − 2 whole days,
///   weeks, 28-day months or 365-day years. The oldest kept backup is the newest of its
///   period, so it may end just before the next period begins, and the current period
///   may just have begun.
pub fn promised_window(policy: &RetentionPolicy) -> Option<Duration> {
    if !policy.is_active() {
        return None;
    }
    let calendar = |n: Option<u32>, period_days: i64| {
        n.map(|n| Duration::days(period_days * (i64::from(n) - 2)))
    };
    [
        policy.max_age_days.map(|d| Duration::days(i64::from(d))),
        calendar(policy.keep_daily, 1),
        calendar(policy.keep_weekly, 7),
        calendar(policy.keep_monthly, 28),
        calendar(policy.keep_yearly, 365),
    ]
    .into_iter()
    .flatten()
    .filter(|d| *d > Duration::zero())
    .max()
}

/// Decide, for every backup of one database in one storage, whether it is kept.
/// `now` is passed in so the result is deterministic. Output is newest first.
pub fn decide(
    policy: &RetentionPolicy,
    backups: &[Candidate],
    now: DateTime<Utc>,
) -> Vec<Decision> {
    decide_kind(policy, backups, now, false)
}

/// As [`decide`], for physical backups: `max_age_days` also keeps the newest backup that
/// finished at or before its cutoff, so that point-in-time recovery reaches back the whole
/// `max_age_days` (as pgBackRest's time retention and Barman's recovery window do).
pub fn decide_physical(
    policy: &RetentionPolicy,
    backups: &[Candidate],
    now: DateTime<Utc>,
) -> Vec<Decision> {
    decide_kind(policy, backups, now, true)
}

fn decide_kind(
    policy: &RetentionPolicy,
    backups: &[Candidate],
    now: DateTime<Utc>,
    physical: bool,
) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.name.cmp(&a.name)));
    let mut keep: Vec<Vec<KeepReason>> = vec![Vec::new(); sorted.len()];

    if !policy.is_active() {
        for k in &mut keep {
            k.push(KeepReason::NoPolicy);
        }
    }
    if let Some(i) = sorted.iter().position(|b| !b.in_progress) {
        keep[i].push(KeepReason::Newest);
    }
    for (i, b) in sorted.iter().enumerate() {
        if b.pinned {
            keep[i].push(KeepReason::Pinned);
        }
        if b.in_progress {
            keep[i].push(KeepReason::InProgress);
        }
    }
    if policy.keep_verified
        && let Some(i) = sorted.iter().position(|b| b.verified == Some(true))
    {
        keep[i].push(KeepReason::NewestVerified);
    }
    if let Some(n) = policy.keep_last {
        for k in keep.iter_mut().take(n as usize) {
            k.push(KeepReason::KeepLast);
        }
    }
    if let Some(days) = policy.max_age_days {
        let cutoff = now - Duration::days(i64::from(days));
        for (i, b) in sorted.iter().enumerate() {
            if b.time >= cutoff {
                keep[i].push(KeepReason::MaxAge);
            }
        }
        if physical
            && let Some(i) = sorted
                .iter()
                .position(|b| !b.in_progress && b.time <= cutoff)
        {
            keep[i].push(KeepReason::WindowStart);
        }
    }
    let buckets: [(Option<u32>, BucketKey, KeepReason); 4] = [
        (policy.keep_daily, day, KeepReason::Daily),
        (policy.keep_weekly, week, KeepReason::Weekly),
        (policy.keep_monthly, month, KeepReason::Monthly),
        (policy.keep_yearly, year, KeepReason::Yearly),
    ];
    for (n, key, reason) in buckets {
        let Some(n) = n else { continue };
        let mut seen = HashSet::new();
        for (i, b) in sorted.iter().enumerate() {
            if seen.len() >= n as usize {
                break;
            }
            // Newest first: the first backup of each bucket is that bucket's newest.
            if seen.insert(key(&b.time)) {
                keep[i].push(reason);
            }
        }
    }
    // min_keep counts valid (finished) backups that remain.
    let mut kept_valid = sorted
        .iter()
        .zip(&keep)
        .filter(|(b, k)| !b.in_progress && !k.is_empty())
        .count();
    for (i, b) in sorted.iter().enumerate() {
        if kept_valid >= policy.min_keep as usize {
            break;
        }
        if !b.in_progress && keep[i].is_empty() {
            keep[i].push(KeepReason::MinKeep);
            kept_valid += 1;
        }
    }
    sorted
        .iter()
        .zip(keep)
        .map(|(b, mut k)| {
            k.sort();
            k.dedup();
            Decision {
                name: b.name.clone(),
                keep: k,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(days_ago: i64, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 6, 30, hour, 0, 0)
            .single()
            .unwrap()
            - Duration::days(days_ago)
    }

    fn cands(times: &[DateTime<Utc>]) -> Vec<Candidate> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                name: format!("b{i:03}"),
                time: *t,
                pinned: false,
                verified: None,
                in_progress: false,
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        let mut v: Vec<String> = d
            .iter()
            .filter(|d| !d.remove())
            .map(|d| d.name.clone())
            .collect();
        v.sort();
        v
    }

    fn now() -> DateTime<Utc> {
        at(0, 23)
    }

    #[test]
    fn no_rule_keeps_everything() {
        let c = cands(&[at(1, 2), at(2, 2), at(300, 2)]);
        assert!(
            decide(&RetentionPolicy::default(), &c, now())
                .iter()
                .all(|d| !d.remove())
        );
    }

    #[test]
    fn keep_last_and_pinned() {
        let mut c = cands(&[at(1, 2), at(2, 2), at(3, 2), at(4, 2)]);
        c[3].pinned = true;
        let p = RetentionPolicy {
            keep_last: Some(1),
            keep_verified: false,
            ..Default::default()
        };
        let d = decide(&p, &c, now());
        assert_eq!(kept(&d), ["b000", "b003"]);
    }

    #[test]
    fn daily_keeps_newest_per_day() {
        let c = cands(&[at(0, 2), at(0, 14), at(1, 2), at(1, 20), at(2, 2), at(5, 2)]);
        let p = RetentionPolicy {
            keep_daily: Some(3),
            keep_verified: false,
            ..Default::default()
        };
        assert_eq!(kept(&decide(&p, &c, now())), ["b001", "b003", "b004"]);
    }

    #[test]
    fn max_age_and_min_keep() {
        let c = cands(&[at(40, 2), at(50, 2), at(60, 2)]);
        let p = RetentionPolicy {
            max_age_days: Some(30),
            min_keep: 2,
            keep_verified: false,
            ..Default::default()
        };
        // Nothing is younger than 30 days: the newest is always kept, min_keep adds the next.
        assert_eq!(kept(&decide(&p, &c, now())), ["b000", "b001"]);
    }

    #[test]
    fn newest_verified_is_kept() {
        let mut c = cands(&[at(1, 2), at(2, 2), at(3, 2)]);
        c[2].verified = Some(true);
        let p = RetentionPolicy {
            keep_last: Some(1),
            ..Default::default()
        };
        assert_eq!(kept(&decide(&p, &c, now())), ["b000", "b002"]);
    }

    #[test]
    fn in_progress_is_never_removed_and_not_newest() {
        let mut c = cands(&[at(0, 22), at(1, 2), at(2, 2)]);
        c[0].in_progress = true;
        let p = RetentionPolicy {
            keep_last: Some(1),
            keep_verified: false,
            ..Default::default()
        };
        let d = decide(&p, &c, now());
        assert_eq!(kept(&d), ["b000", "b001"]);
    }

    #[test]
    fn physical_max_age_keeps_the_base_backup_the_window_starts_from() {
        let c = cands(&[at(1, 2), at(2, 2), at(3, 2), at(4, 2), at(5, 2)]);
        let p = RetentionPolicy {
            max_age_days: Some(3),
            keep_verified: false,
            ..Default::default()
        };
        // Cutoff: 3 days before 23:00. b002 ended 21 hours before it: too old for
        // max_age_days, but a restore to the cutoff needs it.
        assert_eq!(kept(&decide(&p, &c, now())), ["b000", "b001"]);
        let d = decide_physical(&p, &c, now());
        assert_eq!(kept(&d), ["b000", "b001", "b002"]);
        assert_eq!(d[2].keep, [KeepReason::WindowStart]);
        // Without max_age_days nothing changes.
        let last = RetentionPolicy {
            keep_last: Some(2),
            keep_verified: false,
            ..Default::default()
        };
        assert_eq!(decide_physical(&last, &c, now()), decide(&last, &c, now()));
    }

    #[test]
    fn promised_window_is_the_longest_span_a_time_rule_guarantees() {
        let days = |d: i64| Some(Duration::days(d));
        let p = |f: fn(&mut RetentionPolicy)| {
            let mut p = RetentionPolicy::default();
            f(&mut p);
            promised_window(&p)
        };
        assert_eq!(p(|_| {}), None);
        assert_eq!(p(|p| p.keep_last = Some(30)), None);
        assert_eq!(p(|p| p.max_age_days = Some(30)), days(30));
        assert_eq!(p(|p| p.keep_daily = Some(7)), days(5));
        assert_eq!(p(|p| p.keep_daily = Some(2)), None);
        assert_eq!(p(|p| p.keep_weekly = Some(4)), days(14));
        assert_eq!(p(|p| p.keep_yearly = Some(3)), days(365));
        assert_eq!(
            p(|p| {
                p.max_age_days = Some(30);
                p.keep_daily = Some(7);
                p.keep_monthly = Some(12);
            }),
            days(280)
        );
    }

    /// Many generated sets: invariants hold for every policy.
    #[test]
    fn invariants_over_generated_sets() {
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        let mut rnd = move |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for _ in 0..2000 {
            let n = 1 + rnd(40) as usize;
            let times: Vec<DateTime<Utc>> = (0..n)
                .map(|_| at(rnd(800) as i64, rnd(24) as u32))
                .collect();
            let mut c = cands(&times);
            for b in &mut c {
                b.pinned = rnd(10) == 0;
                b.verified = match rnd(4) {
                    0 => Some(true),
                    1 => Some(false),
                    _ => None,
                };
            }
            let opt =
                |r: &mut dyn FnMut(u64) -> u64| if r(2) == 0 { None } else { Some(r(10) as u32) };
            let p = RetentionPolicy {
                keep_last: opt(&mut rnd),
                max_age_days: opt(&mut rnd).map(|d| d * 30),
                keep_daily: opt(&mut rnd),
                keep_weekly: opt(&mut rnd),
                keep_monthly: opt(&mut rnd),
                keep_yearly: opt(&mut rnd),
                min_keep: rnd(4) as u32,
                keep_verified: rnd(2) == 0,
            };
            let d = decide(&p, &c, now());
            assert_eq!(d.len(), c.len());
            let newest = c
                .iter()
                .max_by(|a, b| a.time.cmp(&b.time).then_with(|| a.name.cmp(&b.name)))
                .unwrap();
            let by_name = |n: &str| d.iter().find(|x| x.name == n).unwrap();
            assert!(!by_name(&newest.name).remove(), "newest removed");
            for b in &c {
                if b.pinned {
                    assert!(!by_name(&b.name).remove(), "pinned removed");
                }
            }
            let kept_n = d.iter().filter(|x| !x.remove()).count();
            assert!(
                kept_n >= (p.min_keep as usize).min(c.len()),
                "min_keep violated"
            );
            if let Some(k) = p.keep_last {
                for x in d.iter().take(k as usize) {
                    assert!(x.keep.contains(&KeepReason::KeepLast));
                }
            }
            if let Some(days) = p.max_age_days {
                for b in &c {
                    if b.time >= now() - Duration::days(i64::from(days)) {
                        assert!(!by_name(&b.name).remove(), "young backup removed");
                    }
                }
            }
            if let Some(k) = p.keep_daily {
                let mut days: Vec<(i32, u32)> = c.iter().map(|b| day(&b.time)).collect();
                days.sort();
                days.dedup();
                days.reverse();
                for dk in days.iter().take(k as usize) {
                    let newest_of_day = c
                        .iter()
                        .filter(|b| day(&b.time) == *dk)
                        .max_by(|a, b| a.time.cmp(&b.time).then_with(|| a.name.cmp(&b.name)))
                        .unwrap();
                    assert!(
                        by_name(&newest_of_day.name)
                            .keep
                            .contains(&KeepReason::Daily)
                    );
                }
            }
            if !p.is_active() {
                assert_eq!(kept_n, c.len());
            }
            assert_eq!(d, decide(&p, &c, now()), "not deterministic");

            // Physical backups: everything decide keeps, and the promised window holds
            // for each rule once the backups reach back far enough.
            let dp = decide_physical(&p, &c, now());
            for (a, b) in d.iter().zip(&dp) {
                assert!(
                    a.remove() || !b.remove(),
                    "decide_physical removed {}",
                    a.name
                );
            }
            let oldest_kept = c
                .iter()
                .filter(|b| !dp.iter().any(|x| x.name == b.name && x.remove()))
                .map(|b| b.time)
                .min()
                .unwrap();
            let reach = now() - oldest_kept;
            if let Some(days) = p.max_age_days {
                let cutoff = now() - Duration::days(i64::from(days));
                if c.iter().any(|b| b.time <= cutoff) {
                    assert!(
                        reach >= Duration::days(i64::from(days)),
                        "max_age_days {days}"
                    );
                }
            }
            let rules: [(Option<u32>, BucketKey, i64); 4] = [
                (p.keep_daily, day, 1),
                (p.keep_weekly, week, 7),
                (p.keep_monthly, month, 28),
                (p.keep_yearly, year, 365),
            ];
            for (n, key, period) in rules {
                let Some(n) = n else { continue };
                let buckets: HashSet<(i32, u32)> = c.iter().map(|b| key(&b.time)).collect();
                if n >= 2 && buckets.len() >= n as usize {
                    let promised = Duration::days(period * (i64::from(n) - 2));
                    assert!(reach >= promised, "{n} periods of {period} days: {reach}");
                }
            }
        }
    }
}
