//! The point-in-time recovery cases of `cargo xtask bench` (issue 16), on a cluster of
//! their own: physical backups need a whole cluster that archives its WAL, and the
//! logical cases' cluster runs without durability or archiving.
//!
//! ```text
//! initdb, archive_mode = on ─▶ the bench database (same generator and scale as the logical cases)
//!   │ archive_command = pgbackrest archive-push && wal-push (local)
//!   ├─ 1. base backup ×runs: ours │ pg_basebackup | zstd -T0 │ pgBackRest      (rotating order)
//!   ├─    pgbench -c 4 for a while: the WAL every physical restore below replays
//!   ├─ 2. restore to a usable server ×runs: ours │ pgBackRest                  (rotating order)
//!   │ archive_command = /bin/true
//!   ├─    logical restore ×runs into a new database (--jobs 1 │ 2)
//!   │ archive_command = wal-push alone
//!   ├─ 3. pgbench -c 4 while pg_stat_archiver is sampled: to local storage, then to S3
//!   │ archive_command = /bin/true
//!   └─ 4. peak RSS of a base backup at twice the size
//! ```
//!
//! A quick run (CI) is a smoke run of the same harness: one run per case, seconds of
//! load, no pgBackRest, wal-push under load to S3 only, nothing at twice the size.
//!
//! Restored servers start with `archive_mode = off`: a bench's look at the past must not
//! add a timeline to the archives the next case reads. Every wait polls observable state
//! (pg_stat_archiver, the server log, a write that succeeds) against a deadline.

mod servers;
mod site;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Sample, measure, median};
use site::{Site, WalRun};

/// The S3 server the wal-push case archives to.
pub struct S3<'a> {
    pub endpoint: &'a str,
    pub bucket: &'a str,
    pub access: &'a str,
    pub secret: &'a str,
    /// How BENCHMARKS.md names it (`s3s-fs`, `moto`).
    pub server: &'a str,
}

/// What the PITR cases run with.
pub struct Options<'a> {
    pub quick: bool,
    pub scale: u32,
    pub runs: usize,
    /// The kaizen-backup binary (a copy the build cannot replace mid-run).
    pub bin: &'a Path,
    /// The bench run's directory (removed afterwards).
    pub work: &'a Path,
    pub s3: S3<'a>,
}

/// "A few segments behind" (issue 16).
const KEEPS_UP: u64 = 3;
/// How often pg_stat_archiver is sampled under load.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Everything the cases measured, for the report.
struct Results {
    quick: bool,
    runs: usize,
    replay_secs: u32,
    push_secs: u32,
    micro: usize,
    pg_version: String,
    db_size: String,
    size_small: String,
    /// Per contender: each run's sample and stored size.
    base: Vec<(Base, Vec<(Sample, u64)>)>,
    /// A base backup of ours at twice the size, and that size.
    big: Option<(Sample, String)>,
    /// MiB of WAL each physical restore replays.
    replay_mib: f64,
    /// Per contender: the restore command's sample and the seconds until a write commits.
    restores: Vec<(Restore, Vec<(Sample, f64)>)>,
    pushes: Vec<(String, WalRun)>,
    labels: Labels,
}

/// The PITR section of BENCHMARKS.md.
pub fn run(o: &Options) -> Result<String> {
    let started = Instant::now();
    let backrest = if o.quick {
        eprintln!(
            "bench: PITR: pgBackRest is skipped in --quick (a full run installs and measures it)"
        );
        None
    } else {
        Some(crate::install::ensure_pgbackrest(&crate::test::env_dir())?)
    };
    eprintln!(
        "bench: PITR: a cluster with archiving, the bench database at scale {}",
        o.scale
    );
    let load_start = load_average();
    let site = Site::new(o, backrest)?;
    let results = cases(o, &site, started)?;
    say(started, "done");
    let mut md = report(&results);
    if let (Some(a), Some(b)) = (load_start, load_average()) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        md.push_str(&format!(
            "\nLoad average (1 min) on this {cores}-core machine: {a:.1} when these cases began, {b:.1} when they ended. Other work on the machine inflates wall times and their spread; CPU times are steadier.\n"
        ));
    }
    Ok(md)
}

/// Stop the servers of bench runs that were killed (SIGKILL skips every cleanup) and
/// remove their directories: `run-PID` whose process is gone.
pub fn remove_stale(bench_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(bench_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("run-")
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let site = e.path().join("pitr");
        let mut data = vec![site.join("cluster").join("data")];
        data.extend(
            std::fs::read_dir(&site)
                .into_iter()
                .flatten()
                .flatten()
                .map(|d| d.path())
                .filter(|d| d.join("postmaster.pid").is_file()),
        );
        for d in &data {
            crate::pg::stop_data(d);
        }
        eprintln!(
            "bench: removing {} (left by a killed run)",
            e.path().display()
        );
        let _ = std::fs::remove_dir_all(e.path());
    }
}

/// The 1-minute load average (other work on a shared machine skews wall times).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A progress line with the seconds since the PITR cases began.
fn say(started: Instant, what: impl std::fmt::Display) {
    eprintln!(
        "bench: PITR [{:4.0} s] {what}",
        started.elapsed().as_secs_f64()
    );
}

/// How much the cases do: a full run measures; a quick one (CI) proves the harness works
/// in well under a minute.
struct Plan {
    runs: usize,
    /// Seconds of pgbench before the restores.
    replay_secs: u32,
    /// Seconds of pgbench per wal-push target.
    push_secs: u32,
    /// How many segments the per-segment timings use.
    micro: usize,
    /// Whether a base backup is measured at twice the size too.
    double: bool,
    /// Whether wal-push under load is measured to local storage too, not just to S3 (a
    /// quick run archived locally through wal-push in the cases before).
    push_local: bool,
    /// `--jobs` of the logical restores.
    logical_jobs: &'static [u32],
}

impl Plan {
    fn new(o: &Options) -> Self {
        if o.quick {
            Self {
                runs: 1,
                replay_secs: 1,
                push_secs: 2,
                micro: 1,
                double: false,
                push_local: false,
                logical_jobs: &[1],
            }
        } else {
            Self {
                runs: o.runs,
                replay_secs: 20,
                push_secs: 60,
                micro: 10,
                double: true,
                push_local: true,
                logical_jobs: &[1, 2],
            }
        }
    }
}

fn cases(o: &Options, site: &Site, started: Instant) -> Result<Results> {
    let plan = Plan::new(o);
    let Plan {
        runs,
        replay_secs,
        push_secs,
        ..
    } = plan;
    let labels = Labels::new(site);

    // 1. Base backups, in rotating order.
    let mut tools = vec![Base::Ours, Base::Pipeline];
    if site.backrest.is_some() {
        tools.push(Base::BackRest);
    }
    let base = rotating(runs, &tools, |tool, round| {
        say(
            started,
            format!("base backup, {} (run {})", labels.base(tool), round + 1),
        );
        site.base_backup(tool, round)
    })?;
    let size_small = site.cluster_size()?;
    let db_size = site.sql("SELECT pg_size_pretty(pg_database_size('bench'))")?;

    // The logical backup to compare with, and the WAL every physical restore replays.
    site.backup_logical()?;
    say(
        started,
        format!("pgbench -c 4 for {replay_secs} s (the WAL restores replay)"),
    );
    let replay_mib = site.load_and_archive(replay_secs)?;

    // 2. Restores to a usable server. The physical ones first: each replays the same WAL.
    let mut physical = vec![Restore::Ours];
    if site.backrest.is_some() {
        physical.push(Restore::BackRest);
    }
    let restore = |kind: Restore, round: usize| {
        say(
            started,
            format!("{} (run {})", labels.restore(kind), round + 1),
        );
        site.restore(kind, round)
    };
    let mut restores = rotating(runs, &physical, restore)?;
    // A logical restore writes GBs of WAL into the archived cluster: none of it is
    // archived, so it adds no CPU to its own measurement and no WAL to any restore.
    site.set_archive_command("/bin/true", None)?;
    let logical: Vec<Restore> = plan
        .logical_jobs
        .iter()
        .map(|j| Restore::Logical(*j))
        .collect();
    restores.extend(rotating(runs, &logical, restore)?);

    // 3. wal-push under load, to local storage and to S3.
    let mut targets = vec![(
        format!("S3 ({})", o.s3.server),
        &site.s3,
        format!("s3://{}/pitr-micro", o.s3.bucket),
    )];
    if plan.push_local {
        targets.insert(
            0,
            (
                "local storage".to_string(),
                &site.local,
                site.dir.join("micro-local").display().to_string(),
            ),
        );
    }
    let mut pushes = Vec::new();
    for (label, config, micro) in targets {
        say(
            started,
            format!("wal-push to {label} under pgbench -c 4 for {push_secs} s"),
        );
        pushes.push((
            label,
            site.wal_push_run(config, &micro, push_secs, plan.micro)?,
        ));
    }

    // 4. Peak RSS at twice the size; the copy's WAL is not archived.
    let big = if plan.double {
        say(started, "base backup at twice the size");
        site.set_archive_command("/bin/true", None)?;
        site.sql("INSERT INTO noise SELECT g + 100000000, h FROM noise")?;
        site.sql(
            "INSERT INTO pgbench_accounts SELECT aid + 100000000, bid, abalance, filler FROM pgbench_accounts",
        )?;
        let size = site.cluster_size()?;
        let s = measure(&mut site.ours(&site.local, &["backup", "--physical", "big", "-q"]))?;
        Some((s, size))
    } else {
        None
    };

    Ok(Results {
        quick: o.quick,
        runs,
        replay_secs,
        push_secs,
        micro: plan.micro,
        pg_version: site.sql("SHOW server_version")?,
        db_size,
        size_small,
        base,
        big,
        replay_mib,
        restores,
        pushes,
        labels,
    })
}

/// The median of `f` over `v`.
fn med<T>(v: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(v.iter().map(f).collect())
}

/// `runs` rounds of `case` over `contenders`, each round starting one further along the
/// list; each contender with its results in round order.
fn rotating<C: Copy, R>(
    runs: usize,
    contenders: &[C],
    mut case: impl FnMut(C, usize) -> Result<R>,
) -> Result<Vec<(C, Vec<R>)>> {
    let mut out: Vec<(C, Vec<R>)> = contenders.iter().map(|c| (*c, Vec::new())).collect();
    for round in 0..runs {
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.rotate_left(round % out.len().max(1));
        for i in order {
            let r = case(out[i].0, round)?;
            out[i].1.push(r);
        }
    }
    Ok(out)
}

fn report(r: &Results) -> String {
    let mut md = format!(
        "\n## Point-in-time recovery (issue 16)\n\nA cluster of its own (PostgreSQL {}, `archive_mode = on`, full page writes on, fsync off) holding the bench database ({}; all databases {}); {} run{} per case in rotating order, medians. Our side runs with `backup.compression = \"zstd\"` (level 3) and local storage unless named.\n\n",
        r.pg_version,
        r.db_size,
        r.size_small,
        r.runs,
        if r.runs == 1 { "" } else { "s" }
    );
    md.push_str("| base backup | time (s) | ratio | CPU (s) | peak RSS (MiB) | stored (MiB) |\n|---|---:|---:|---:|---:|---:|\n");
    let pipe = r
        .base
        .iter()
        .find(|b| matches!(b.0, Base::Pipeline))
        .map_or(0.0, |b| med(&b.1, |(s, _)| s.wall));
    let ratio = |w: f64| if pipe > 0.0 { w / pipe } else { 0.0 };
    for (tool, samples) in &r.base {
        let w = med(samples, |(s, _)| s.wall);
        md.push_str(&format!(
            "| {} | {w:.2} | {:.2} | {:.2} | {:.1} | {:.1} |\n",
            r.labels.base(*tool),
            ratio(w),
            med(samples, |(s, _)| s.cpu),
            med(samples, |(s, _)| s.rss_mib),
            med(samples, |(_, size)| *size as f64 / 1048576.0)
        ));
    }
    let ours = &r.base[0].1;
    let ours_ratio = ratio(med(ours, |(s, _)| s.wall));
    let rss_small = med(ours, |(s, _)| s.rss_mib);
    let (rss_big, at_big) = match &r.big {
        Some((s, size)) => (s.rss_mib, format!(", {:.1} MiB at {size}", s.rss_mib)),
        None => (0.0, " (twice the size: not in a quick run)".to_string()),
    };
    md.push_str(&format!(
        "\nRatio: time over the pipeline's. CPU and peak RSS: what `wait4` reports for the process and the children it waited for (ours: pg_basebackup too; the pipeline: bash, pg_basebackup and zstd; pgBackRest: runuser and pgBackRest's processes). Goal (issue 16): ours at most 1.05 x the pipeline: {ours_ratio:.2}, {}. Peak RSS of ours: {rss_small:.1} MiB at {}{at_big} (goal: flat, at most 64 MiB){}.\n\n",
        if r.quick {
            "no verdict on a quick run's debug build"
        } else if ours_ratio <= 1.05 {
            "met"
        } else {
            "**not met**"
        },
        r.size_small,
        if r.quick || rss_small.max(rss_big) <= 64.0 {
            ""
        } else {
            ": **not met**"
        }
    ));
    if !r.base.iter().any(|b| matches!(b.0, Base::BackRest)) {
        md.push_str("pgBackRest is not measured in a quick run.\n\n");
    }

    md.push_str("| restore to a usable server | restore (s) | start to writable (s) | total (s) | CPU (s) | peak RSS (MiB) |\n|---|---:|---:|---:|---:|---:|\n");
    for (kind, samples) in &r.restores {
        let restore = med(samples, |(s, _)| s.wall);
        let total = med(samples, |(_, t)| *t);
        let start = match kind {
            Restore::Logical(_) => "-".to_string(),
            _ => format!("{:.2}", med(samples, |(s, t)| t - s.wall)),
        };
        md.push_str(&format!(
            "| {} | {restore:.2} | {start} | {total:.2} | {:.2} | {:.1} |\n",
            r.labels.restore(*kind),
            med(samples, |(s, _)| s.cpu),
            med(samples, |(s, _)| s.rss_mib),
        ));
    }
    md.push_str(&format!(
        "\nTotal: from the restore command's start until the server is promoted and a write commits (a logical restore's database is usable when the command ends). After the base backups, `pgbench -c 4` ran {} s ({:.0} MiB of WAL): each physical restore recovers to the end of its archive, fetching that WAL with its own `restore_command` (`kaizen-backup wal-fetch`, `pgbackrest archive-get`), and starts with `archive_mode = off`. The logical backup is our zstd backup of the bench database, restored into a new database on the same cluster after the physical restores, its WAL not archived (`archive_command = '/bin/true'`). CPU and peak RSS: the restore command's.\n\n",
        r.replay_secs, r.replay_mib
    ));

    md.push_str(&format!(
        "| wal-push, pgbench -c 4 for {} s | pgbench (tps) | WAL written (segments/s) | archived (segments) | segments/s | max behind | caught up after (s) | wal-push (ms/segment) | peak RSS (MiB) | wal-fetch (ms/segment) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        r.push_secs
    ));
    let or_dash = |v: &[Sample], f: fn(&Sample) -> f64, digits: usize| {
        if v.is_empty() {
            "-".to_string()
        } else {
            format!("{:.digits$}", med(v, f))
        }
    };
    let mut verdicts = Vec::new();
    for (label, w) in &r.pushes {
        md.push_str(&format!(
            "| {label} | {:.0} | {:.2} | {} | {:.2} | {} | {:.1} | {} | {} | {} |\n",
            w.tps,
            w.written as f64 / f64::from(r.push_secs),
            w.archived,
            w.archived as f64 / w.elapsed,
            w.max_behind,
            w.drain,
            or_dash(&w.push, |s| s.wall * 1000.0, 0),
            or_dash(&w.push, |s| s.rss_mib, 1),
            or_dash(&w.fetch, |s| s.wall * 1000.0, 0),
        ));
        verdicts.push(if w.failed == 0 && w.max_behind <= KEEPS_UP {
            format!("to {label} it kept up (at most {} behind)", w.max_behind)
        } else {
            format!(
                "to {label} it **did not keep up**: {} segments behind at worst, {} failed pushes, {:.1} s to catch up after the load",
                w.max_behind, w.failed, w.drain
            )
        });
    }
    md.push_str(&format!(
        "\nThe cluster archives through `archive_command = 'kaizen-backup --config FILE wal-push %p'` while `pgbench -c 4` runs; pg_stat_archiver and the current WAL segment are sampled every {} ms. Behind: complete segments not archived yet (current segment - last archived - 1; 1 is the one in flight). Segments/s: segments archived from the load's start until everything is archived, over that time. ms/segment: one `wal-push` (process start included) of each of up to {} of the run's segments, pushed one after the other to a fresh prefix of the same storage while the cluster is idle, and one `wal-fetch` of each (the cost a restore pays per segment). Goal (issue 16): never more than a few ({KEEPS_UP}) segments behind; {}.\n",
        SAMPLE_EVERY.as_millis(),
        r.micro,
        verdicts.join("; ")
    ));
    md
}

/// The names of the contenders in the report (pgBackRest's with its version).
struct Labels {
    backrest: String,
}

impl Labels {
    fn new(site: &Site) -> Self {
        Self {
            backrest: site
                .backrest
                .as_ref()
                .map_or_else(|| "pgBackRest".into(), |b| b.version.clone()),
        }
    }

    fn base(&self, tool: Base) -> String {
        match tool {
            Base::Ours => "`kaizen-backup backup --physical` (zstd)".into(),
            Base::Pipeline => {
                "`pg_basebackup -Ft -D - -X fetch -c fast \\| zstd -T0 > FILE`".into()
            }
            Base::BackRest => format!(
                "{} `backup --type=full` (zst, process-max=2)",
                self.backrest
            ),
        }
    }

    fn restore(&self, kind: Restore) -> String {
        match kind {
            Restore::Ours => "`kaizen-backup restore --pgdata DIR` (latest) + start".into(),
            Restore::BackRest => format!("{} `restore` + start", self.backrest),
            Restore::Logical(1) => "`kaizen-backup restore` (logical) into a new database".into(),
            Restore::Logical(n) => {
                format!("`kaizen-backup restore --jobs {n}` (logical) into a new database")
            }
        }
    }
}

/// A base backup contender.
#[derive(Debug, Clone, Copy)]
enum Base {
    Ours,
    Pipeline,
    BackRest,
}

/// A restore contender.
#[derive(Debug, Clone, Copy)]
enum Restore {
    Ours,
    BackRest,
    /// `kaizen-backup restore NAME DB --jobs N` of the logical backup.
    Logical(u32),
}
