//! The markdown of a bench run's logical cases (the PITR section comes from
//! [`super::pitr`]).

use super::Results;
use super::measure::{Sample, machine, median};

/// What the logical cases measured.
pub(super) struct Logical<'a> {
    pub(super) quick: bool,
    pub(super) scale: u32,
    pub(super) runs: usize,
    pub(super) db_size: &'a str,
    pub(super) db_size_big: &'a str,
    pub(super) results: &'a Results<'a>,
    pub(super) case2: &'a str,
    pub(super) rss_small: f64,
    pub(super) rss_big: f64,
    pub(super) modes: &'a [(String, Sample, u64)],
    pub(super) zstd_md: &'a str,
    pub(super) pitr_md: &'a str,
    pub(super) external: bool,
}

/// The median wall-time ratio of ours over the baseline of the case whose label
/// starts with `prefix`.
pub(super) fn ratio(results: &Results<'_>, prefix: &str) -> f64 {
    results
        .iter()
        .find(|(label, _)| label.starts_with(prefix))
        .map_or(0.0, |(_, (o, b))| {
            let bw = median(b.iter().map(|s| s.wall).collect());
            if bw > 0.0 {
                median(o.iter().map(|s| s.wall).collect()) / bw
            } else {
                0.0
            }
        })
}

/// What a selective restore (case 4c) reads.
const SELECTIVE_READS: &str = "What a one-table restore reads (4c): kaizen-backup reads the stored object once, whole, \
    from local storage or the cloud (one GET, no range requests), because the checksum is proven before anything is \
    created; it is decoded (zstd, age) into a local file as it arrives. pg_restore then reads that file's table of \
    contents and seeks straight to the selected table's data block (a custom-format archive written to a seekable \
    file records each block's offset), so the restore itself reads only the TOC and that table's data. A parallel \
    (directory-format) backup is unpacked whole and pg_restore opens only that table's file. The baseline reads the \
    local dump the same way, without a download or a checksum.\n\n";

/// BENCHMARKS.md.
pub(super) fn markdown(r: &Logical<'_>) -> String {
    let Logical {
        quick,
        scale,
        runs,
        db_size,
        db_size_big,
        case2,
        rss_small,
        rss_big,
        modes,
        zstd_md,
        pitr_md,
        external,
        ..
    } = *r;
    let mut md = String::new();
    let machine = machine();
    md.push_str("# Benchmarks\n\nNumbers from `cargo xtask bench");
    if quick {
        md.push_str(" --quick");
    }
    md.push_str(&format!(
        "` (scale {scale}, {runs} alternating runs per case, medians).\n\n"
    ));
    md.push_str(&format!("- Machine: {machine}\n- Database: {db_size} (pgbench scale {scale} plus an incompressible table)\n"));
    md.push_str(&format!(
        "- Binary: {} build\n\n",
        if quick {
            "debug (quick smoke run)"
        } else {
            "release"
        }
    ));
    md.push_str("| case | ours (s) | baseline (s) | ratio | CPU (s) | peak RSS (MiB) |\n|---|---:|---:|---:|---:|---:|\n");
    for (label, (o, b)) in r.results {
        let ow = median(o.iter().map(|s| s.wall).collect());
        let bw = median(b.iter().map(|s| s.wall).collect());
        let ratio = if bw > 0.0 { ow / bw } else { 0.0 };
        md.push_str(&format!(
            "| {label} | {ow:.2} | {bw:.2} | {ratio:.2} | {:.2} | {:.1} |\n",
            median(o.iter().map(|s| s.cpu).collect()),
            median(o.iter().map(|s| s.rss_mib).collect())
        ));
    }
    if let (Some((o2, _)), Some((_, b1))) =
        (r.results.get(case2), r.results.get("1. backup, local"))
    {
        let o = median(o2.iter().map(|s| s.wall).collect());
        let b = median(b1.iter().map(|s| s.wall).collect());
        if b > 0.0 {
            md.push_str(&format!(
                "\nCase 2 against the dump alone (baseline of 1): {o:.2} s / {b:.2} s = {:.2}.\n",
                o / b
            ));
        }
    }
    md.push_str("\nCPU and peak RSS are those `wait4` reports for our process, which include the pg_dump/pg_restore it ran and waited for.\n");
    md.push_str("\nBaselines: 1, 1b `pg_dump -Fc -Z6 -f FILE` (1b is our backup without the exact row counts, which run beside pg_dump in its snapshot: on 2 cores they compete with pg_dump and the server for CPU); 2 the same, then `curl -T FILE` (SigV4-signed) to the same S3 server (s3s-fs in a full run, moto in a quick one); 4 `pg_restore [-j2] -d DB FILE`; 4c `pg_restore -t pgbench_branches -d DB FILE` (ours: `restore b1 DB --table public.pgbench_branches`, with the row-count proof); 5 create database, `pg_restore`, `count(*)` of every table, drop; 6a `pg_dump -Fd -j2 -Z6 -f DIR` (a directory, not yet one file anywhere); 6b `pg_restore -j2 -d DB DIR`.\n\n");
    md.push_str(SELECTIVE_READS);
    md.push_str(&format!(
        "3. Peak RSS of our process: {rss_small:.1} MiB at {db_size}, {:.1} MiB at {db_size_big} (goal: flat, at most 64 MiB).\n\n",
        rss_big
    ));
    md.push_str(&format!(
        "| compression ({runs} rounds, medians) | backup (s) | stored size |\n|---|---:|---:|\n"
    ));
    for (label, s, size) in modes {
        md.push_str(&format!(
            "| {label} | {:.2} | {:.1} MiB |\n",
            s.wall,
            *size as f64 / 1048576.0
        ));
    }
    let theirs = modes.iter().find(|m| m.0.contains("pg_dump's own"));
    let ours_zstd = modes.iter().find(|m| m.0.starts_with("zstd-3 (in-process"));
    let zstd_choice = match (theirs, ours_zstd) {
        (Some(t), Some(o)) => format!(
            "PostgreSQL 16+'s own `pg_dump --compress=zstd` (given with `--pg-dump-zstd`) took {:.2} s against our \
             {:.2} s: {}",
            t.1.wall,
            o.1.wall,
            if o.1.wall <= t.1.wall {
                "kaizen-backup keeps compressing zstd itself, whatever pg_dump's version."
            } else {
                "pg_dump's own zstd was faster in this run."
            }
        ),
        _ => "PostgreSQL 16+'s own `pg_dump --compress=zstd` is measured only when such a pg_dump is given with \
              `--pg-dump-zstd`."
            .to_string(),
    };
    md.push_str(&format!(
        "\nGoals (issue 8): 1 at most 1.03; 2 at most 1.10 x the dump alone; 3 flat and at most 64 MiB; 4 at most 1.05. \
         zstd is compressed in-process on worker threads (at most 4, in 2 MiB jobs) while pg_dump runs uncompressed. {zstd_choice} A parallel dump (`--jobs`) is \
         staged on local disk by pg_dump's workers and streamed to storage as one tar archive, each table's file as \
         soon as it is complete; its restore unpacks the archive to local disk before `pg_restore -j`.\n",
    ));
    md.push_str(zstd_md);
    md.push_str(pitr_md);
    md.push_str(&format!(
        "\nReproduce: `cargo xtask bench{}{}`{}\n",
        if quick { " --quick" } else { "" },
        if external {
            " --pg-dump-zstd PROGRAM"
        } else {
            ""
        },
        if quick {
            ""
        } else {
            " (default scale 60, about 1 GB)"
        }
    ));
    if external {
        md.push_str(
            "\nPROGRAM was the pg_dump named in the compression table; on Debian 12, whose own is PostgreSQL 15, \
             one way is `debootstrap --variant=minbase --include=postgresql-client-17 trixie DIR` and a script \
             running `chroot DIR /usr/lib/postgresql/17/bin/pg_dump \"$@\"`.\n",
        );
    }
    md
}
