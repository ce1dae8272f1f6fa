//! Issue 9: TLS to the database. A throwaway cluster with `ssl=on` and a test CA made
//! here; verify-full succeeds with the right CA and host name and fails clearly otherwise.
//! The same settings reach pg_dump (through PGSSLMODE & co.), so whole backups run over TLS.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kaizen_backup_e2e::{Cli, free_port};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

struct TlsCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

fn as_postgres(cmd: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

impl TlsCluster {
    /// Start a cluster whose server certificate (for `localhost` only) is signed by a new CA.
    fn start() -> (Self, PathBuf, PathBuf) {
        let bin = PathBuf::from(kaizen_backup_e2e::env("KAIZEN_TEST_PG_BIN"));
        let dir = tempfile::Builder::new()
            .prefix("kb-tls-")
            .tempdir_in("/tmp")
            .unwrap();
        let p = dir.path();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kaizen test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut wrong_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        wrong_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let wrong =
            CertifiedIssuer::self_signed(wrong_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut sp = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        sp.distinguished_name.push(DnType::CommonName, "localhost");
        let server = sp.signed_by(&server_key, &ca).unwrap();
        let data = p.join("data");
        std::fs::write(p.join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(p.join("wrong-ca.crt"), wrong.pem()).unwrap();
        let out = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(p)
            .output();
        let _ = out;
        let st = as_postgres(&bin.join("initdb"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        std::fs::write(data.join("server.crt"), server.pem()).unwrap();
        std::fs::write(data.join("server.key"), server_key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(p)
            .output();
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c fsync=off",
            p.display()
        );
        let st = as_postgres(&bin.join("pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                p.join("log").to_str().unwrap(),
                "-w",
                "start",
            ])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "pg_ctl: {}",
            std::fs::read_to_string(p.join("log")).unwrap_or_default()
        );
        let ca_path = p.join("ca.crt");
        let wrong_path = p.join("wrong-ca.crt");
        (Self { dir, bin, port }, ca_path, wrong_path)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args([
                "-D",
                self.dir.path().join("data").to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}

fn cli(port: u16, host: &str, mode: &str, ca: Option<&Path>) -> Cli {
    let mut c = Cli::new()
        .env("POSTGRES_HOST", host)
        .env("POSTGRES_PORT", &port.to_string())
        .env("POSTGRES_USER", "postgres")
        .env("POSTGRES_DB", "postgres")
        .env("PGSSLMODE", mode);
    if let Some(ca) = ca {
        c = c.env("PGSSLROOTCERT", ca.to_str().unwrap());
    }
    c
}

#[test]
fn tls_modes_against_a_real_tls_server() {
    let (cluster, ca, wrong_ca) = TlsCluster::start();
    let port = cluster.port;
    // verify-full with the right CA and host name: our connection and pg_dump both verify.
    cli(port, "localhost", "verify-full", Some(&ca))
        .run(&["backup", "full"])
        .assert_code(0);
    // A wrong CA: refused clearly.
    let out = cli(port, "localhost", "verify-full", Some(&wrong_ca)).run(&["backup", "x"]);
    out.assert_code(1)
        .assert_stderr_contains("Cannot connect to database")
        .assert_stderr_contains("certificate");
    // The certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca accepts.
    cli(port, "127.0.0.1", "verify-full", Some(&ca))
        .run(&["config", "check", "--connect"])
        .assert_code(1);
    cli(port, "127.0.0.1", "verify-ca", Some(&ca))
        .run(&["config", "check", "--connect"])
        .assert_code(0);
    // require encrypts without verifying; disable does not use TLS (the server allows both).
    cli(port, "127.0.0.1", "require", None)
        .run(&["backup", "req"])
        .assert_code(0);
    cli(port, "127.0.0.1", "disable", None)
        .run(&["config", "check", "--connect"])
        .assert_code(0);
    // A CA file that does not exist is a configuration error naming the key.
    cli(
        port,
        "localhost",
        "verify-full",
        Some(Path::new("/nonexistent/ca.crt")),
    )
    .run(&["config", "check", "--connect"])
    .assert_code(1)
    .assert_stderr_contains("database.sslrootcert");
    drop(cluster);
}
