//! Issue 9: encrypted backups (age recipients or passphrase, with zstd), keys checked
//! before anything is touched, integrity checkable without the key.

#![allow(clippy::unwrap_used)]

use kaizen_backup_e2e::pg::assert_same;
use kaizen_backup_e2e::{Cli, Pg, unique};

fn keygen(cli: &Cli, name: &str) -> (std::path::PathBuf, String) {
    let path = cli.path().join(name);
    let out = cli.run(&["keygen", "--output", path.to_str().unwrap()]);
    out.assert_code(0);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    (path, out.stdout.trim().to_string())
}

#[test]
fn encrypted_round_trip_with_recipients_and_the_wrong_key_refused() {
    let pg = Pg::get();
    let src = pg.sample_db("ks_enc");
    let base = Cli::new();
    let (key1, rcpt1) = keygen(&base, "k1");
    let (key2, rcpt2) = keygen(&base, "k2");
    let (other, _) = keygen(&base, "other");
    assert!(rcpt1.starts_with("age1"));
    let cli = Cli::for_db(&src.name)
        .env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "zstd")
        .env("KAIZEN_BACKUP_ENCRYPTION__TYPE", "age")
        .env(
            "KAIZEN_BACKUP_ENCRYPTION__RECIPIENTS",
            &format!("{rcpt1},{rcpt2}"),
        );
    cli.run(&["backup", "e1"])
        .assert_code(0)
        .assert_stderr_contains("e1.dump.zst.age");
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cli.backups().join("e1.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["encryption"], "age");
    assert_eq!(m["compression"], "zstd");
    assert_eq!(m["recipients"], serde_json::json!([rcpt1, rcpt2]));
    let secret = std::fs::read_to_string(&key1).unwrap();
    let secret_line = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    assert!(!m.to_string().contains(secret_line));
    let data = std::fs::read(cli.backups().join("e1.dump.zst.age")).unwrap();
    assert!(
        data.starts_with(b"age-encryption.org/v1"),
        "not an age file"
    );

    // Integrity without any key.
    cli.run(&["verify", "e1", "--quick"]).assert_code(0);
    // Full verify and restore with either identity.
    cli.run_with(
        &[("KAIZEN_BACKUP_AGE_IDENTITY_FILE", key2.to_str().unwrap())],
        &["verify", "e1"],
    )
    .assert_code(0);
    let dst = pg.adopt(&unique("ks_enc_dst"));
    cli.run_with(
        &[("KAIZEN_BACKUP_AGE_IDENTITY_FILE", key1.to_str().unwrap())],
        &["restore", "e1", &dst.name],
    )
    .assert_code(0);
    assert_same(&pg.fingerprint(&src.name), &pg.fingerprint(&dst.name));

    // Missing and wrong keys: refused, the target untouched, no temporary database left.
    let target = pg.target_with_content("ks_target");
    let before = pg.fingerprint(&target.name);
    cli.run(&["restore", "e1", &target.name, "--no-safety-backup"])
        .assert_code(1)
        .assert_stderr_contains("no key was given")
        .assert_stderr_contains(&rcpt1);
    cli.run_with(
        &[("KAIZEN_BACKUP_AGE_IDENTITY_FILE", other.to_str().unwrap())],
        &["restore", "e1", &target.name, "--no-safety-backup"],
    )
    .assert_code(1)
    .assert_stderr_contains("no matching identity");
    assert_same(&pg.fingerprint(&target.name), &before);
    assert!(
        pg.databases_with_prefix("kaizen_restore_")
            .iter()
            .all(|d| !d.contains(&target.name))
    );
}

#[test]
fn passphrase_round_trip() {
    let pg = Pg::get();
    let src = pg.sample_db("ks_pass");
    let cli = Cli::for_db(&src.name)
        .env("KAIZEN_BACKUP_ENCRYPTION__TYPE", "age")
        .env(
            "KAIZEN_BACKUP_ENCRYPTION__PASSPHRASE",
            "correct horse battery staple",
        );
    let out = cli.run(&["backup", "p1", "-vv"]);
    out.assert_code(0);
    assert!(!out.all().contains("correct horse"));
    let dst = pg.adopt(&unique("ks_pass_dst"));
    let restorer = Cli::for_db(&src.name)
        .env("BACKUP_DIR", cli.backups().to_str().unwrap())
        .env(
            "KAIZEN_BACKUP_AGE_PASSPHRASE",
            "correct horse battery staple",
        );
    restorer.run(&["restore", "p1", &dst.name]).assert_code(0);
    assert_same(&pg.fingerprint(&src.name), &pg.fingerprint(&dst.name));
    let wrong = Cli::for_db(&src.name)
        .env("BACKUP_DIR", cli.backups().to_str().unwrap())
        .env("KAIZEN_BACKUP_AGE_PASSPHRASE", "wrong horse");
    wrong.run(&["verify", "p1"]).assert_code(1);
}

#[test]
fn a_flipped_byte_in_an_encrypted_backup_is_caught_without_a_key() {
    let pg = Pg::get();
    let src = pg.sample_db("ks_flip");
    let base = Cli::new();
    let (_key, rcpt) = keygen(&base, "k");
    let cli = Cli::for_db(&src.name)
        .env("KAIZEN_BACKUP_ENCRYPTION__TYPE", "age")
        .env("KAIZEN_BACKUP_ENCRYPTION__RECIPIENTS", &rcpt);
    cli.run(&["backup", "f"]).assert_code(0);
    let p = cli.backups().join("f.dump.age");
    let mut d = std::fs::read(&p).unwrap();
    let i = d.len() / 2;
    d[i] ^= 1;
    std::fs::write(&p, d).unwrap();
    cli.run(&["verify", "f", "--quick"])
        .assert_code(1)
        .assert_stderr_contains("checksum mismatch");
}

#[test]
fn invalid_recipients_are_configuration_errors() {
    let cli = Cli::new()
        .env("KAIZEN_BACKUP_ENCRYPTION__TYPE", "age")
        .env("KAIZEN_BACKUP_ENCRYPTION__RECIPIENTS", "age1notakey");
    cli.run(&["config", "check"])
        .assert_code(2)
        .assert_stderr_contains("encryption.recipients");
    let none = Cli::new().env("KAIZEN_BACKUP_ENCRYPTION__TYPE", "age");
    none.run(&["config", "check"])
        .assert_code(2)
        .assert_stderr_contains("recipients");
}

#[test]
fn zstd_round_trip_and_verify() {
    let pg = Pg::get();
    let src = pg.sample_db("ks_zstd");
    let cli = Cli::for_db(&src.name).env("KAIZEN_BACKUP_BACKUP__COMPRESSION", "zstd");
    cli.run(&["backup", "z", "--verify"])
        .assert_code(0)
        .assert_stderr_contains("All integrity checks passed");
    let dst = pg.adopt(&unique("ks_zstd_dst"));
    cli.run(&["restore", "z", &dst.name, "--jobs", "2"])
        .assert_code(0);
    assert_same(&pg.fingerprint(&src.name), &pg.fingerprint(&dst.name));
}
