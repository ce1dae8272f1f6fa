//! Issue 7: the deployment files are valid and agree with the binary and with each other.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn yaml(path: &Path) -> Value {
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validate(files: &[PathBuf]) {
    let bin =
        PathBuf::from(kaizen_backup_e2e::env("KAIZEN_TEST_VENV_BIN")).join("kubernetes-validate");
    let out = Command::new(&bin)
        .arg("--strict")
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "kubernetes-validate failed:\n{text}"
    );
    for f in files {
        assert!(
            text.contains(&format!("{} passed", f.display())),
            "{} not validated:\n{text}",
            f.display()
        );
    }
}

const BASE: [&str; 4] = [
    "serviceaccount.yaml",
    "backup-pvc.yaml",
    "backup-cronjob.yaml",
    "verify-cronjob.yaml",
];

#[test]
fn every_manifest_validates_offline() {
    let k8s = root().join("deploy/k8s");
    validate(&BASE.iter().map(|f| k8s.join(f)).collect::<Vec<_>>());
    // The kustomization lists exactly those files.
    let kust = yaml(&k8s.join("kustomization.yaml"));
    let listed: Vec<&str> = kust["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listed, BASE);
}

/// Apply the s3 overlay's patches the way kustomize's strategic merge does for these
/// shapes (annotations merged, container env merged by name) and validate the result.
#[test]
fn the_s3_overlay_renders_to_valid_resources() {
    let k8s = root().join("deploy/k8s");
    let overlay = k8s.join("overlays/s3");
    let kust = yaml(&overlay.join("kustomization.yaml"));
    assert_eq!(kust["resources"][0], "../../");
    let out = tempfile::tempdir().unwrap();
    let mut sa = yaml(&k8s.join("serviceaccount.yaml"));
    let sa_patch = yaml(&overlay.join("serviceaccount-irsa.yaml"));
    assert_eq!(sa_patch["metadata"]["name"], sa["metadata"]["name"]);
    sa["metadata"]["annotations"] = sa_patch["metadata"]["annotations"].clone();
    let mut cj = yaml(&k8s.join("backup-cronjob.yaml"));
    let cj_patch = yaml(&overlay.join("cronjob-s3.yaml"));
    assert_eq!(cj_patch["metadata"]["name"], cj["metadata"]["name"]);
    let extra = cj_patch["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap()
        .clone();
    let env = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence_mut()
        .unwrap();
    for e in extra {
        env.retain(|x| x["name"] != e["name"]);
        env.push(e);
    }
    let files = [("sa.yaml", sa), ("cronjob.yaml", cj)].map(|(n, v)| {
        let p = out.path().join(n);
        std::fs::write(&p, serde_norway::to_string(&v).unwrap()).unwrap();
        p
    });
    validate(&files);
    let rendered = std::fs::read_to_string(&files[1]).unwrap();
    assert!(rendered.contains("S3_BACKUP_BUCKET"));
}

#[test]
fn the_cronjob_is_what_the_old_readme_promises() {
    let cj = yaml(&root().join("deploy/k8s/backup-cronjob.yaml"));
    assert_eq!(
        cj["metadata"]["name"], "postgres-backup",
        "kubectl create job --from=cronjob/postgres-backup"
    );
    assert_eq!(cj["metadata"]["namespace"], "kaizen-studio");
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Forbid");
    for k in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        assert!(cj["spec"][k].as_u64().is_some(), "{k}");
    }
    let job = &cj["spec"]["jobTemplate"]["spec"];
    assert!(
        job["backoffLimit"].as_u64().is_some() && job["activeDeadlineSeconds"].as_u64().is_some()
    );
    let pod = &job["template"];
    assert_eq!(
        pod["metadata"]["labels"]["component"], "backup",
        "kubectl logs -l component=backup"
    );
    assert_eq!(pod["metadata"]["labels"]["app"], "kaizen-backup");
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
    let env = c["env"].as_sequence().unwrap();
    let from = |name: &str| env.iter().find(|e| e["name"] == name).unwrap().clone();
    assert_eq!(
        from("POSTGRES_PASSWORD")["valueFrom"]["secretKeyRef"]["name"],
        "kaizen-secrets"
    );
    assert_eq!(
        from("POSTGRES_USER")["valueFrom"]["secretKeyRef"]["key"],
        "postgres-user"
    );
    assert_eq!(
        from("POSTGRES_DB")["valueFrom"]["configMapKeyRef"]["name"],
        "kaizen-config"
    );
    let verify = yaml(&root().join("deploy/k8s/verify-cronjob.yaml"));
    assert_eq!(
        verify["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "verify"
    );
    assert_eq!(
        verify["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][1],
        "latest"
    );
}

/// Environment variable names the binary reads (its configuration layer).
fn known_variable(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "POSTGRES_HOST",
        "POSTGRES_PORT",
        "POSTGRES_DB",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_PASSWORD_FILE",
        "DATABASE_URL",
        "DATABASE_URL_FILE",
        "BACKUP_DIR",
        "BACKUP_RETENTION_DAYS",
        "BACKUP_RETENTION_COUNT",
        "SLACK_WEBHOOK_URL",
        "BACKUP_EMAIL_RECIPIENT",
        "SMTP_HOST",
        "SMTP_PORT",
        "SMTP_USER",
        "SMTP_PASSWORD",
        "SMTP_PASSWORD_FILE",
        "SMTP_FROM",
        "SMTP_TLS",
        "S3_BACKUP_BUCKET",
        "GCS_BACKUP_BUCKET",
        "AZURE_BACKUP_CONTAINER",
        "ENVIRONMENT",
        "APP_ENV",
        "DEBUG",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "PATH",
    ];
    EXACT.contains(&name)
        || ["PG", "AWS_", "AZURE_STORAGE_"]
            .iter()
            .any(|p| name.starts_with(p))
        || (name.starts_with("KAIZEN_BACKUP_") && name.contains("__"))
}

#[test]
fn every_variable_in_the_deploy_files_is_one_the_binary_reads() {
    let d = root().join("deploy");
    let mut names = Vec::new();
    for f in [
        "k8s/backup-cronjob.yaml",
        "k8s/verify-cronjob.yaml",
        "k8s/overlays/s3/cronjob-s3.yaml",
    ] {
        let text = std::fs::read_to_string(d.join(f)).unwrap();
        for line in text.lines() {
            let t = line
                .trim()
                .trim_start_matches("# ")
                .trim_start_matches("- ");
            if let Some(n) = t.strip_prefix("name: ") {
                let n = n.trim().trim_matches('"');
                if n.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    && n.len() > 2
                {
                    names.push((f, n.to_string()));
                }
            }
        }
    }
    for f in ["systemd/kaizen-backup.service", "docker/Dockerfile"] {
        let text = std::fs::read_to_string(d.join(f)).unwrap();
        for line in text.lines() {
            for part in line.split_whitespace() {
                let part = part.trim_start_matches("Environment=");
                if let Some((n, _)) = part.split_once('=')
                    && n.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    && n.len() > 2
                    && !line.trim_start().starts_with("ARG")
                {
                    names.push((f, n.to_string()));
                }
            }
        }
    }
    assert!(names.len() >= 8, "{names:?}");
    for (f, n) in &names {
        assert!(
            known_variable(n),
            "{f} sets {n}, which kaizen-backup does not read"
        );
    }
}

#[test]
fn image_binary_path_and_user_match_the_other_files() {
    let d = root().join("deploy");
    let docker = std::fs::read_to_string(d.join("docker/Dockerfile")).unwrap();
    assert!(docker.contains("ENTRYPOINT [\"/usr/local/bin/kaizen-backup\"]"));
    assert!(docker.contains("USER 10001:10001"));
    assert!(docker.contains("--uid 10001"));
    for f in ["k8s/backup-cronjob.yaml", "k8s/verify-cronjob.yaml"] {
        let cj = yaml(&d.join(f));
        let pod = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsUser"], 10001, "{f}");
        assert_eq!(
            pod["containers"][0]["command"][0], "/usr/local/bin/kaizen-backup",
            "{f}"
        );
    }
    for f in [
        "systemd/kaizen-backup.service",
        "systemd/kaizen-backup-verify.service",
    ] {
        let unit = std::fs::read_to_string(d.join(f)).unwrap();
        assert!(
            unit.contains("ExecStart=/usr/local/bin/kaizen-backup "),
            "{f}"
        );
    }
    // The crontab's commands are ones the binary accepts.
    let cron = std::fs::read_to_string(d.join("cron/crontab.example")).unwrap();
    for line in cron
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("kaizen-backup "))
    {
        let cmd = line
            .split("kaizen-backup ")
            .nth(1)
            .unwrap()
            .split(">>")
            .next()
            .unwrap();
        let sub = cmd.split_whitespace().next().unwrap();
        assert_accepted(&[sub], "crontab");
    }
    for f in ["kaizen-backup.timer", "kaizen-backup-verify.timer"] {
        assert!(
            std::fs::read_to_string(d.join("systemd").join(f))
                .unwrap()
                .contains("OnCalendar=")
        );
    }
}

/// Issue 17: the `pitr` overlay (WAL receiver, base backups, drills) validates offline, lists
/// what it ships, runs commands the binary accepts, and its configuration passes `config check`.
#[test]
fn the_pitr_overlay_validates_and_agrees_with_the_binary() {
    let dir = root().join("deploy/k8s/overlays/pitr");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    validate(&files.iter().map(|f| dir.join(f)).collect::<Vec<_>>());
    let kust = yaml(&dir.join("kustomization.yaml"));
    let mut listed: Vec<String> = kust["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.remove(0), "../../");
    listed.sort();
    let resources: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with(".example.yaml"))
        .cloned()
        .collect();
    assert_eq!(
        listed, resources,
        "the kustomization lists every resource file"
    );

    // The shared configuration is valid for the binary.
    let config = yaml(&dir.join("config.yaml"));
    let toml = config["data"]["config.toml"].as_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.toml");
    std::fs::write(&path, toml).unwrap();
    assert_config_valid(&path);

    // Every container runs a command line the binary accepts, as uid 10001, with the
    // configuration mounted where the binary reads it by default.
    let mut commands = Vec::new();
    for f in &resources {
        let doc = yaml(&dir.join(f));
        let pod = match doc["kind"].as_str().unwrap() {
            "Deployment" => doc["spec"]["template"]["spec"].clone(),
            "CronJob" => doc["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone(),
            _ => continue,
        };
        assert_eq!(pod["securityContext"]["runAsUser"], 10001, "{f}");
        let c = &pod["containers"][0];
        assert_eq!(c["command"][0], "/usr/local/bin/kaizen-backup", "{f}");
        let mounts = c["volumeMounts"].as_sequence().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m["mountPath"] == "/etc/kaizen-backup"),
            "{f}: configuration not mounted"
        );
        for e in c["env"].as_sequence().unwrap() {
            let name = e["name"].as_str().unwrap();
            assert!(known_variable(name), "{f} sets {name}");
        }
        let args: Vec<String> = c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_accepted(&args, f);
        commands.push(args[0].clone());
    }
    commands.sort();
    assert_eq!(commands, ["backup", "drill", "wal-receive"]);
}

/// Issue 17: the Docker Compose files run commands the binary accepts, with a configuration
/// it accepts, and the init script is valid shell.
#[test]
fn the_compose_files_agree_with_the_binary() {
    let dir = root().join("deploy/compose");
    let compose = yaml(&dir.join("compose.yaml"));
    let services = compose["services"].as_mapping().unwrap();
    let mut seen = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if !svc["image"].as_str().unwrap().starts_with("kaizen-backup") {
            continue;
        }
        let mounts: Vec<&str> = svc["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            mounts.contains(&"./config.toml:/etc/kaizen-backup/config.toml:ro"),
            "{name}: {mounts:?}"
        );
        for (k, _) in svc["environment"].as_mapping().unwrap() {
            let k = k.as_str().unwrap();
            assert!(known_variable(k), "{name} sets {k}");
        }
        let cmd: Vec<&str> = svc["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        if svc["entrypoint"].is_null() {
            assert_accepted(&cmd, name);
            seen.push(cmd[0].to_string());
        } else {
            // A shell loop: every kaizen-backup command line in it.
            for line in cmd[0].lines() {
                if let Some(rest) = line.split("/usr/local/bin/kaizen-backup ").nth(1) {
                    let args: Vec<&str> =
                        rest.split(';').next().unwrap().split_whitespace().collect();
                    assert_accepted(&args, name);
                    seen.push(args[0].to_string());
                }
            }
        }
    }
    seen.sort();
    assert_eq!(seen, ["backup", "drill", "wal-receive"]);
    assert_config_valid(&dir.join("config.toml"));
    let out = Command::new("sh")
        .arg("-n")
        .arg(dir.join("initdb/10-kaizen-backup-role.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The binary accepts this command line (asked with `--help`, so nothing runs).
fn assert_accepted<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], what: &str) {
    let bin = kaizen_backup_e2e::env("KAIZEN_BACKUP_BIN");
    let out = Command::new(&bin)
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: kaizen-backup {args:?} is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `config check` accepts the configuration file at `path`.
fn assert_config_valid(path: &Path) {
    let bin = kaizen_backup_e2e::env("KAIZEN_BACKUP_BIN");
    let out = Command::new(&bin)
        .args(["--config", path.to_str().unwrap(), "config", "check"])
        .env_remove("BACKUP_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "config check of {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
