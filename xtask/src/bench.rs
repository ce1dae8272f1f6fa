//! `cargo xtask bench [--quick] [--scale N] [--runs N]`: measure kaizen-backup against the
//! tools it replaces, in the same run, on a generated database, and write BENCHMARKS.md.
//!
//! Each case runs several times, alternating ours and the baseline; medians are
//! reported. Peak RSS and CPU come from `wait4` on our process alone (pg_dump and the
//! server are separate processes). `--quick` is a smoke run on a small database (CI runs
//! it so the harness cannot rot); only a full run enforces the ratio goal. The
//! point-in-time recovery cases live in [`pitr`], on a cluster of their own;
//! `--pitr-only` runs just those and writes `target/bench/BENCHMARKS.pitr.md`. The zstd
//! mode against the shell pipeline and the peak RSS of every mode live in [`zstd`];
//! `--zstd-only` runs just those and writes `target/bench/BENCHMARKS.zstd.md`.

mod measure;
mod pitr;
mod report;
mod zstd;

use measure::{Sample, machine, measure, median};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{build_binary, root, target_dir};

struct Env {
    bin: PathBuf,
    pgbin: PathBuf,
    vars: Vec<(String, String)>,
    work: PathBuf,
}

impl Env {
    fn ours(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .envs(self.vars.iter().cloned())
            .current_dir(&self.work);
        c
    }
    fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(self.pgbin.join(name));
        c.envs(self.vars.iter().cloned()).current_dir(&self.work);
        c
    }
    /// `sh -c script` with the bench's environment.
    fn shell(&self, script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]).envs(self.vars.iter().cloned());
        c
    }
    /// The trimmed, unaligned output of one query.
    fn query(&self, db: &str, sql: &str) -> Result<String> {
        let out = self
            .tool("psql")
            .args(["-X", "-At", "-d", db, "-c", sql])
            .output()?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
    fn psql(&self, db: &str, sql: &str) -> Result<()> {
        let out = self
            .tool("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql])
            .output()?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

/// Run both sides of a case, in the given order; returns (ours, baseline).
fn pair(
    ours_first: bool,
    ours: impl FnOnce() -> Result<Sample>,
    base: impl FnOnce() -> Result<Sample>,
) -> Result<(Sample, Sample)> {
    if ours_first {
        let o = ours()?;
        Ok((o, base()?))
    } else {
        let b = base()?;
        Ok((ours()?, b))
    }
}

/// `kaizen-backup restore BACKUP --jobs N` into a new database vs `pg_restore -j N` of
/// `source` into a database created beforehand (untimed); both dropped afterwards.
fn restore_pair(
    env: &Env,
    backup: &str,
    source: &Path,
    jobs: &str,
    tag: &str,
) -> Result<(Sample, Sample)> {
    let (d1, d2) = (format!("{tag}_a"), format!("{tag}_b"));
    let o = measure(&mut env.ours(&["restore", backup, &d1, "--jobs", jobs, "-q"]))?;
    env.psql("postgres", &format!("CREATE DATABASE {d2}"))?;
    let b = measure(
        env.tool("pg_restore")
            .args(["-j", jobs, "-d", &d2])
            .arg(source),
    )?;
    env.psql("postgres", &format!("DROP DATABASE {d1}"))?;
    env.psql("postgres", &format!("DROP DATABASE {d2}"))?;
    Ok((o, b))
}

/// Fill `db` with the bench database: pgbench at `scale` plus an incompressible table,
/// vacuumed and analysed. `pgbench` is connected to the server; `psql` runs SQL in `db`.
fn generate(
    pgbench: &mut Command,
    db: &str,
    psql: &dyn Fn(&str) -> Result<()>,
    scale: u32,
) -> Result<()> {
    let st = pgbench
        .args(["-i", "-q", "-s", &scale.to_string(), db])
        .output()?;
    if !st.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&st.stderr));
    }
    psql(&format!(
        "CREATE TABLE noise AS SELECT g, md5(g::text) || md5((g * 7)::text) AS h FROM generate_series(1, {}) g",
        scale * 50_000
    ))?;
    psql("VACUUM ANALYZE")
}

const SIZE_SQL: &str = "SELECT pg_size_pretty(pg_database_size('bench'))";

/// Samples of each case: (ours, baseline), one pair per run.
type Results<'a> = BTreeMap<&'a str, (Vec<Sample>, Vec<Sample>)>;

fn record<'a>(results: &mut Results<'a>, case: &'a str, (ours, base): (Sample, Sample)) {
    let e = results.entry(case).or_default();
    e.0.push(ours);
    e.1.push(base);
}

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u32>().ok())
    };
    let scale = value("--scale").unwrap_or(if quick { 2 } else { 60 });
    let runs = value("--runs").unwrap_or(3).max(1) as usize;
    let pitr_only = args.iter().any(|a| a == "--pitr-only");
    let zstd_only = args.iter().any(|a| a == "--zstd-only");
    if pitr_only && zstd_only {
        bail!("--pitr-only and --zstd-only exclude each other");
    }
    // A quick run measures the debug build (it only proves the harness works).
    let bin = if quick {
        build_binary(false, &[])?
    } else {
        build_binary(true, &[])?
    };
    // The cluster and its generated database are kept between runs (one per scale).
    let cluster_dir = target_dir()
        .join("bench")
        .join(format!("cluster-scale{scale}"));
    // S3: a full run uploads to s3s-fs (Rust; built on first use), whose own CPU cost is
    // small next to pg_dump's. moto (Python) costs about as much CPU as the dump it
    // receives, which on 2 cores says more about moto than about us; the quick smoke
    // run keeps moto, which the tests install anyway, and so does `--zstd-only`, which
    // reports our own process's memory and CPU to S3 (moto's CPU only skews wall times).
    let moto = quick || zstd_only;
    let mut selected: Vec<String> = Vec::new();
    if !pitr_only {
        selected.push("pg".into());
    }
    if moto {
        selected.push("s3".into());
    }
    let services = crate::test::start_with(
        &selected,
        Some(&bin),
        (!pitr_only).then_some(cluster_dir.as_path()),
    )?;
    let get = |k: &str| {
        services
            .env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    pitr::remove_stale(&target_dir().join("bench"));
    let work = target_dir()
        .join("bench")
        .join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let (s3, _s3s) = if moto {
        (get("KAIZEN_TEST_S3_ENDPOINT"), None)
    } else {
        let (proc, url) =
            crate::services::start_s3s_fs(&crate::test::env_dir(), &work, "bench", "benchsecret")?;
        eprintln!("bench: S3 (s3s-fs) on {url}");
        (url, Some(proc))
    };
    let bucket = crate::services::BUCKET;
    let bench_bin = PathBuf::from(get("KAIZEN_BACKUP_BIN"));
    let pitr = pitr::Options {
        quick,
        scale,
        runs,
        bin: &bench_bin,
        work: &work,
        s3: pitr::S3 {
            endpoint: &s3,
            bucket,
            access: "bench",
            secret: "benchsecret",
            server: if quick { "moto" } else { "s3s-fs" },
        },
    };
    if pitr_only {
        let mut md = format!(
            "# Benchmarks: point-in-time recovery only\n\nNumbers from `cargo xtask bench{} --pitr-only` (scale {scale}).\n\n- Machine: {}\n- Binary: {} build\n",
            if quick { " --quick" } else { "" },
            machine(),
            if quick { "debug" } else { "release" }
        );
        md.push_str(&pitr::run(&pitr)?);
        let out = target_dir().join("bench").join("BENCHMARKS.pitr.md");
        std::fs::write(&out, &md)?;
        println!("{md}");
        println!("written to {}", out.display());
        drop(services);
        let _ = std::fs::remove_dir_all(&work);
        return Ok(());
    }
    let case2: &str = if quick {
        "2. backup, S3 (moto)"
    } else {
        "2. backup, S3 (s3s-fs)"
    };
    let env = Env {
        bin: PathBuf::from(get("KAIZEN_BACKUP_BIN")),
        pgbin: PathBuf::from(get("KAIZEN_TEST_PG_BIN")),
        vars: vec![
            ("PGHOST".into(), get("KAIZEN_TEST_PG_HOST")),
            ("PGPORT".into(), get("KAIZEN_TEST_PG_PORT")),
            ("PGUSER".into(), "postgres".into()),
            ("PGPASSWORD".into(), get("KAIZEN_TEST_PG_PASSWORD")),
            ("PGDATABASE".into(), "bench".into()),
            (
                "BACKUP_DIR".into(),
                work.join("backups").display().to_string(),
            ),
            ("AWS_ACCESS_KEY_ID".into(), "bench".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "benchsecret".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ENDPOINT_URL".into(), s3.clone()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("KAIZEN_BACKUP_BACKUP__PRUNE".into(), "false".into()),
        ],
        work: work.clone(),
    };

    // Databases left by an interrupted run go first.
    let leftovers = env.query(
        "postgres",
        "SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1', 'bench_seed')",
    )?;
    for db in leftovers.lines().filter(|l| !l.trim().is_empty()) {
        env.psql("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)"))?;
    }
    let seed_ready = cluster_dir.join("seed-ready");
    if seed_ready.is_file() {
        eprintln!(
            "bench: reusing the generated database (scale {scale}) in {}",
            cluster_dir.display()
        );
    } else {
        eprintln!(
            "bench: generating the database (pgbench scale {scale} + an incompressible table)"
        );
        env.psql("postgres", "DROP DATABASE IF EXISTS bench_seed")?;
        env.psql("postgres", "CREATE DATABASE bench_seed")?;
        generate(
            &mut env.tool("pgbench"),
            "bench_seed",
            &|sql| env.psql("bench_seed", sql),
            scale,
        )?;
        std::fs::write(&seed_ready, "")?;
    }
    let s3_url = format!("s3://{bucket}/bench");
    let zstd_opts = zstd::Options {
        quick,
        runs,
        s3_url: &s3_url,
        s3_server: if moto { "moto" } else { "s3s-fs" },
    };
    let counter = std::cell::Cell::new(0u32);
    let next = || {
        counter.set(counter.get() + 1);
        format!("b{}", counter.get())
    };
    if zstd_only {
        let mut md = format!(
            "# Benchmarks: zstd mode and memory only\n\nNumbers from `cargo xtask bench{} --zstd-only` (scale {scale}).\n\n- Machine: {}\n- Binary: {} build\n",
            if quick { " --quick" } else { "" },
            machine(),
            if quick { "debug" } else { "release" }
        );
        md.push_str(&zstd::run(&env, &zstd_opts, &next)?);
        let out = target_dir().join("bench").join("BENCHMARKS.zstd.md");
        std::fs::write(&out, &md)?;
        println!("{md}");
        println!("written to {}", out.display());
        drop(services);
        let _ = std::fs::remove_dir_all(&work);
        return Ok(());
    }
    // Each run works on a fresh copy (case 3 grows it).
    env.psql("postgres", "CREATE DATABASE bench TEMPLATE bench_seed")?;
    let db_size = env.query("bench", SIZE_SQL)?;

    let mut results: Results = BTreeMap::new();
    for i in 0..runs {
        // Alternate which side goes first.
        let ours_first = i % 2 == 0;
        // 1. backup to local storage vs pg_dump -Fc -Z6 -f
        let name = next();
        let dump = work.join(format!("{name}.pgdump"));
        let ours = || measure(&mut env.ours(&["backup", &name, "-q"]));
        let base = || {
            measure(env.tool("pg_dump").args([
                "-Fc",
                "-Z6",
                "-f",
                dump.to_str().unwrap_or_default(),
            ]))
        };
        let (o, b) = pair(ours_first, ours, base)?;
        record(&mut results, "1. backup, local", (o, b));
        // 1b. the same without the snapshot row counts: what exact counts cost here
        let name = next();
        let o = measure(
            env.ours(&["backup", &name, "-q"])
                .env("KAIZEN_BACKUP_BACKUP__ROW_COUNTS", "false"),
        )?;
        record(
            &mut results,
            "1b. backup, local, row_counts = false",
            (o, b),
        );

        // 2. backup to S3 vs dump to a file, then upload it
        let name = next();
        let url = &s3_url;
        let dump2 = work.join(format!("{name}.pgdump"));
        // curl signs the upload (SigV4) with the same keys as ours, read from a config on
        // its stdin (printf is a shell builtin): the secret never is a process argument.
        let base_cmd = format!(
            "{} -Fc -Z6 -f {f} && printf 'user = \"%s:%s\"\\n' \"$AWS_ACCESS_KEY_ID\" \"$AWS_SECRET_ACCESS_KEY\" | \
             curl -sf -K - --aws-sigv4 aws:amz:us-east-1:s3 \
             -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T {f} {s3}/{bucket}/upload/{name}.dump",
            env.pgbin.join("pg_dump").display(),
            f = dump2.display()
        );
        let ours = || measure(&mut env.ours(&["--storage", url, "backup", &name, "-q"]));
        let base = || measure(&mut env.shell(&base_cmd));
        record(&mut results, case2, pair(ours_first, ours, base)?);

        // 6. parallel backup (directory format streamed as tar) vs pg_dump -Fd -j2 alone
        let pname = next();
        let pdir = work.join(format!("{pname}.dir"));
        let ours = || measure(&mut env.ours(&["backup", &pname, "--jobs", "2", "-q"]));
        let base = || {
            measure(env.tool("pg_dump").args([
                "-Fd",
                "-j2",
                "-Z6",
                "-f",
                pdir.to_str().unwrap_or_default(),
            ]))
        };
        record(
            &mut results,
            "6a. backup --jobs 2, local",
            pair(ours_first, ours, base)?,
        );

        // ... and its restore with 2 jobs vs pg_restore -j2 of the directory
        let restored = restore_pair(&env, &pname, &pdir, "2", &format!("p{}", counter.get()))?;
        let _ = std::fs::remove_dir_all(&pdir);
        record(&mut results, "6b. restore of 6a, --jobs 2", restored);

        // 4. restore vs pg_restore, single and 2 jobs
        for (label, jobs) in [("4a. restore", "1"), ("4b. restore --jobs 2", "2")] {
            let restored = restore_pair(
                &env,
                "b1",
                &dump,
                jobs,
                &format!("r{}_{jobs}", counter.get()),
            )?;
            record(&mut results, label, restored);
        }

        // 4c. one small table into a new database vs pg_restore -t of the dump
        let (d1, d2) = (
            format!("t{}_a", counter.get()),
            format!("t{}_b", counter.get()),
        );
        let o = measure(&mut env.ours(&[
            "restore",
            "b1",
            &d1,
            "--table",
            "public.pgbench_branches",
            "-q",
        ]))?;
        env.psql("postgres", &format!("CREATE DATABASE {d2}"))?;
        let b = measure(
            env.tool("pg_restore")
                .args(["-t", "pgbench_branches", "-d", &d2])
                .arg(&dump),
        )?;
        env.psql("postgres", &format!("DROP DATABASE {d1}"))?;
        env.psql("postgres", &format!("DROP DATABASE {d2}"))?;
        record(&mut results, "4c. restore one small table", (o, b));

        // 5. verify (full) vs restore + count queries by hand
        let o = measure(&mut env.ours(&["verify", "b1", "-q"]))?;
        let d = format!("v{}", counter.get());
        let script = format!(
            "{psql} -X -q -d postgres -c 'CREATE DATABASE {d}' && {pr} -d {d} {f} && {psql} -X -q -d {d} -c 'SELECT count(*) FROM pgbench_accounts; SELECT count(*) FROM pgbench_history; SELECT count(*) FROM pgbench_branches; SELECT count(*) FROM pgbench_tellers; SELECT count(*) FROM noise' && {psql} -X -q -d postgres -c 'DROP DATABASE {d}'",
            psql = env.pgbin.join("psql").display(),
            pr = env.pgbin.join("pg_restore").display(),
            f = dump.display()
        );
        let b = measure(&mut env.shell(&script))?;
        record(&mut results, "5. verify (full)", (o, b));
    }

    // Compression modes: speed and size, `runs` rounds in alternating order, medians.
    // PostgreSQL 16+ can compress with zstd itself (one core, inside pg_dump): measured
    // when such a pg_dump is given, since this machine's own is PostgreSQL 15.
    let mut specs: Vec<(String, Option<(&str, &str)>)> = [
        ("gzip-6", "gzip", "1"),
        ("zstd-3 (in-process, worker threads)", "zstd", "1"),
        ("none", "none", "1"),
        ("gzip-6, --jobs 2 (directory format)", "gzip", "2"),
        ("zstd-3, --jobs 2 (directory format)", "zstd", "2"),
    ]
    .into_iter()
    .map(|(label, comp, jobs)| (label.to_string(), Some((comp, jobs))))
    .collect();
    let external = args
        .iter()
        .position(|a| a == "--pg-dump-zstd")
        .and_then(|i| args.get(i + 1));
    if let Some(program) = external {
        let version = Command::new(program)
            .arg("--version")
            .output()
            .with_context(|| format!("running {program} --version"))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        specs.push((
            format!("{version} `--compress=zstd:3` (pg_dump's own, not ours)"),
            None,
        ));
    }
    let mut samples: Vec<(Vec<Sample>, u64)> = vec![(Vec::new(), 0); specs.len()];
    for round in 0..runs {
        let mut order: Vec<usize> = (0..specs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let name = next();
            let (s, size) = match (&specs[i].1, external) {
                (Some((comp, jobs)), _) => {
                    let s = measure(
                        env.ours(&["backup", &name, "--jobs", jobs, "-q"])
                            .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", comp),
                    )?;
                    let size = std::fs::read_dir(work.join("backups"))?
                        .flatten()
                        .filter(|e| {
                            let f = e.file_name().to_string_lossy().to_string();
                            f.starts_with(&format!("{name}.")) && !f.ends_with(".json")
                        })
                        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                        .sum::<u64>();
                    (s, size)
                }
                (None, Some(program)) => {
                    let file = work.join(format!("{name}.external.pgdump"));
                    let script =
                        format!("'{program}' -Fc --compress=zstd:3 > '{}'", file.display());
                    let s = measure(&mut env.shell(&script))?;
                    (s, std::fs::metadata(&file)?.len())
                }
                (None, None) => continue,
            };
            samples[i].0.push(s);
            samples[i].1 = size;
        }
    }
    let modes: Vec<(String, Sample, u64)> = specs
        .into_iter()
        .zip(samples)
        .map(|((label, _), (ss, size))| {
            let s = Sample {
                wall: median(ss.iter().map(|s| s.wall).collect()),
                cpu: median(ss.iter().map(|s| s.cpu).collect()),
                rss_mib: median(ss.iter().map(|s| s.rss_mib).collect()),
            };
            (label, s, size)
        })
        .collect();

    // 3. peak RSS at two sizes: double the database and back up again.
    let rss_small = median(
        results["1. backup, local"]
            .0
            .iter()
            .map(|s| s.rss_mib)
            .collect(),
    );
    env.psql(
        "bench",
        "INSERT INTO noise SELECT g + 100000000, h FROM noise",
    )?;
    env.psql("bench", "INSERT INTO pgbench_accounts SELECT aid + 100000000, bid, abalance, filler FROM pgbench_accounts")?;
    let big_name = next();
    let big = measure(&mut env.ours(&["backup", &big_name, "-q"]))?;
    let db_size_big = env.query("bench", SIZE_SQL)?;

    let zstd_md = zstd::run(&env, &zstd_opts, &next)?;
    let pitr_md = pitr::run(&pitr)?;

    let md = report::markdown(&report::Logical {
        quick,
        scale,
        runs,
        db_size: &db_size,
        db_size_big: &db_size_big,
        results: &results,
        case2,
        rss_small,
        rss_big: big.rss_mib,
        modes: &modes,
        zstd_md: &zstd_md,
        pitr_md: &pitr_md,
        external: external.is_some(),
    });
    let ratio1 = report::ratio(&results, "1.");
    let out = if quick {
        target_dir().join("bench").join("BENCHMARKS.quick.md")
    } else {
        root().join("BENCHMARKS.md")
    };
    std::fs::write(&out, &md)?;
    println!("{md}");
    println!("written to {}", out.display());
    // The seed stays for the next run; this run's copy goes.
    let _ = env.psql("postgres", "DROP DATABASE IF EXISTS bench WITH (FORCE)");
    drop(services);
    let _ = std::fs::remove_dir_all(&work);
    if !quick && ratio1 > 1.10 {
        bail!("regression: backup to local storage takes {ratio1:.2}x pg_dump's time (limit 1.10)");
    }
    Ok(())
}
