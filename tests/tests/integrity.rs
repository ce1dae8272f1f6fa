//! Issue 19: tamper-evident backups. A manifest names only its own objects; with
//! `[integrity] verify_keys`, restore, verify and contents read only backups whose
//! manifest carries a valid signature by one of the keys (the manifest covers every
//! object by name, size and SHA-256). Refusals exit 1 and touch nothing.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kaizen_backup_e2e::pg::assert_same;
use kaizen_backup_e2e::pitr_site::Site;
use kaizen_backup_e2e::{Cli, Pg, unique};

/// `keygen --signing` into `dir/name`: (private key file, public key).
fn signing_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Cli::new().run(&["keygen", "--signing", "--output", path.to_str().unwrap()]);
    out.assert_code(0);
    let public = out.stdout.trim().to_string();
    (path, public)
}

/// Write `./kaizen-backup.toml` of `cli` with an `[integrity]` section.
fn integrity(cli: Cli, signing: Option<&Path>, verify: &[&str]) -> Cli {
    let mut text = String::from("[integrity]\n");
    if let Some(k) = signing {
        text.push_str(&format!("signing_key = {{ file = \"{}\" }}\n", k.display()));
    }
    let keys: Vec<String> = verify.iter().map(|k| format!("\"{k}\"")).collect();
    text.push_str(&format!("verify_keys = [{}]\n", keys.join(", ")));
    std::fs::write(cli.path().join("kaizen-backup.toml"), text).unwrap();
    cli
}

/// A reader of `writer`'s backups (same storage) for `db`, trusting `verify`.
fn reader(writer: &Cli, db: &str, verify: &[&str]) -> Cli {
    let cli = Cli::for_db(db).env("BACKUP_DIR", writer.backups().to_str().unwrap());
    integrity(cli, None, verify)
}

fn manifest(cli: &Cli, name: &str) -> serde_json::Value {
    let path = cli.backups().join(format!("{name}.manifest.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_manifest(cli: &Cli, name: &str, m: &serde_json::Value) {
    let path = cli.backups().join(format!("{name}.manifest.json"));
    std::fs::write(path, serde_json::to_vec_pretty(m).unwrap()).unwrap();
}

fn authenticity(cli: &Cli, name: &str) -> serde_json::Value {
    cli.list().into_iter().find(|b| b["name"] == name).unwrap()["authenticity"].clone()
}

#[test]
fn signing_keygen_writes_both_keys_never_overwrites_and_config_show_redacts() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = signing_key(dir.path(), "sign.key");
    assert!(public.starts_with("ed25519:"), "{public}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let pub_file = std::fs::read_to_string(dir.path().join("sign.key.pub")).unwrap();
    assert_eq!(pub_file, format!("{public}\n"));
    let secret = std::fs::read_to_string(&key).unwrap();
    let secret_line = secret.lines().find(|l| !l.starts_with('#')).unwrap();

    // Never overwritten.
    let again = Cli::new().run(&["keygen", "--signing", "--output", key.to_str().unwrap()]);
    again
        .assert_code(1)
        .assert_stderr_contains("refusing to overwrite");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), secret);

    // The key never prints.
    let cli = integrity(Cli::new(), Some(&key), &[&public]);
    let out = cli.run(&["config", "show"]);
    out.assert_code(0);
    assert!(!out.all().contains(secret_line), "{}", out.all());
    assert!(!out.all().contains(&secret_line[secret_line.len() - 16..]));
    assert!(out.all().contains(&public), "{}", out.all());

    // A damaged key or verify key is a configuration error.
    let bad = integrity(Cli::new(), None, &["ed25519:nothex"]);
    bad.run(&["list"])
        .assert_code(2)
        .assert_stderr_contains("integrity.verify_keys");
}

#[test]
fn forged_backup_is_refused_by_restore_verify_and_contents() {
    let pg = Pg::get();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = signing_key(keys.path(), "k");
    let good = pg.sample_db("ki_good");
    let evil = pg.create_db("ki_evil");
    pg.psql(
        &evil.name,
        "create table t (x text); insert into t values ('forged')",
    );

    let writer = integrity(Cli::for_db(&good.name), Some(&key), &[&public]);
    writer.run(&["backup", "g1"]).assert_code(0);
    let m = manifest(&writer, "g1");
    assert_eq!(m["signature"]["algorithm"], "ed25519");
    assert_eq!(m["signature"]["key"], public.as_str());
    // A backup of the attacker's database, taken without the key.
    let attacker = Cli::for_db(&evil.name).env("BACKUP_DIR", writer.backups().to_str().unwrap());
    attacker.run(&["backup", "e1"]).assert_code(0);

    let rd = reader(&writer, &good.name, &[&public]);
    assert_eq!(authenticity(&rd, "g1"), "signed");
    assert_eq!(authenticity(&rd, "e1"), "unsigned");

    // The forgery: g1's data replaced by e1's, its manifest rewritten to match (keeping
    // the signature, since the key is not at hand).
    let e = manifest(&writer, "e1");
    let mut forged = m.clone();
    for field in [
        "sha256",
        "size_bytes",
        "tables",
        "counts",
        "database_size_bytes",
        "roles",
    ] {
        forged[field] = e[field].clone();
    }
    forged["roles"]["object"] = m["roles"]["object"].clone();
    std::fs::copy(
        writer.backups().join("e1.dump"),
        writer.backups().join("g1.dump"),
    )
    .unwrap();
    std::fs::copy(
        writer.backups().join("e1.roles.json"),
        writer.backups().join("g1.roles.json"),
    )
    .unwrap();
    write_manifest(&writer, "g1", &forged);

    let target = pg.target_with_content("ki_target");
    let before = pg.fingerprint(&target.name);
    rd.run(&["restore", "g1", &target.name, "--no-safety-backup"])
        .assert_code(1)
        .assert_stderr_contains("does not match its signature");
    rd.run(&["verify", "g1"])
        .assert_code(1)
        .assert_stderr_contains("does not match its signature");
    rd.run(&["contents", "g1"])
        .assert_code(1)
        .assert_stderr_contains("does not match its signature");
    // A selective restore reads the same way: refused, no side database created.
    let side = format!("{}_side", good.name);
    rd.run(&["restore", "g1", &side, "--table", "public.t"])
        .assert_code(1)
        .assert_stderr_contains("does not match its signature");
    assert_eq!(
        pg.psql(
            "postgres",
            &format!("select count(*) from pg_database where datname = '{side}'")
        ),
        "0"
    );
    // The unsigned one too.
    rd.run(&["restore", "e1", &target.name, "--no-safety-backup"])
        .assert_code(1)
        .assert_stderr_contains("is not signed");
    assert_same(&pg.fingerprint(&target.name), &before);
    assert!(!writer.backups().join("g1.verify.json").exists());
    assert_eq!(authenticity(&rd, "g1"), "forged");
    let text = rd.run(&["list"]);
    text.assert_code(0);
    assert!(text.stdout.contains("FORGED"), "{}", text.stdout);

    // Without verify keys, as before: the forgery goes through (why keys matter), and
    // list and status say backups are not authenticated.
    let open = Cli::for_db(&good.name).env("BACKUP_DIR", writer.backups().to_str().unwrap());
    open.run(&["verify", "g1", "--quick"]).assert_code(0);
    open.run(&["list"])
        .assert_code(0)
        .assert_stderr_contains("not authenticated");
    let status = open.run(&["status", "--json"]);
    assert_eq!(status.json()[0]["authenticated"], false);
    assert!(open.list().iter().all(|b| b["authenticity"].is_null()));
}

#[test]
fn rotation_a_retired_key_is_accepted_while_listed() {
    let pg = Pg::get();
    let keys = tempfile::tempdir().unwrap();
    let (old, old_pub) = signing_key(keys.path(), "old");
    let (new, new_pub) = signing_key(keys.path(), "new");
    let src = pg.sample_db("ki_rot");
    let writer = integrity(Cli::for_db(&src.name), Some(&old), &[&old_pub]);
    writer.run(&["backup", "r1"]).assert_code(0);
    // The backup host moves to the new key; r1 stays signed by the old one.
    let writer = integrity(writer, Some(&new), &[&new_pub]);
    writer.run(&["backup", "r2"]).assert_code(0);
    assert_eq!(
        manifest(&writer, "r1")["signature"]["key"],
        old_pub.as_str()
    );
    assert_eq!(
        manifest(&writer, "r2")["signature"]["key"],
        new_pub.as_str()
    );

    let both = reader(&writer, &src.name, &[&new_pub, &old_pub]);
    let dst = pg.adopt(&unique("ki_rot_dst"));
    both.run(&["restore", "r1", &dst.name]).assert_code(0);
    assert_same(&pg.fingerprint(&src.name), &pg.fingerprint(&dst.name));
    both.run(&["verify", "r2", "--quick"]).assert_code(0);
    assert_eq!(authenticity(&both, "r1"), "signed");

    // Once the old key is retired, its backups are refused.
    let only_new = reader(&writer, &src.name, &[&new_pub]);
    only_new
        .run(&["verify", "r1", "--quick"])
        .assert_code(1)
        .assert_stderr_contains("not in integrity.verify_keys");
    assert_eq!(authenticity(&only_new, "r1"), "unknown_key");
    only_new.run(&["contents", "r2"]).assert_code(0);

    // Pinning rewrites the manifest without the key: still valid.
    let plain = Cli::for_db(&src.name).env("BACKUP_DIR", writer.backups().to_str().unwrap());
    plain.run(&["pin", "r2"]).assert_code(0);
    assert_eq!(manifest(&writer, "r2")["pinned"], true);
    only_new.run(&["verify", "r2", "--quick"]).assert_code(0);
}

#[test]
fn wrong_and_missing_signatures_are_refused() {
    let pg = Pg::get();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = signing_key(keys.path(), "k");
    let (_, stranger) = signing_key(keys.path(), "stranger");
    let src = pg.sample_db("ki_sig");
    let writer = integrity(Cli::for_db(&src.name), Some(&key), &[]);
    writer.run(&["backup", "s1"]).assert_code(0);
    let rd = reader(&writer, &src.name, &[&public]);

    // A damaged signature value.
    let m = manifest(&writer, "s1");
    let mut bad = m.clone();
    let value = bad["signature"]["value"].as_str().unwrap().to_string();
    let flipped = if value.starts_with('0') { "1" } else { "0" };
    bad["signature"]["value"] = format!("{flipped}{}", &value[1..]).into();
    write_manifest(&writer, "s1", &bad);
    rd.run(&["verify", "s1", "--quick"])
        .assert_code(1)
        .assert_stderr_contains("does not match its signature");
    // A signature claiming to be by a trusted key it was not made with.
    let mut claimed = m.clone();
    claimed["signature"]["key"] = stranger.clone().into();
    write_manifest(&writer, "s1", &claimed);
    let rd_both = reader(&writer, &src.name, &[&public, &stranger]);
    rd_both
        .run(&["verify", "s1", "--quick"])
        .assert_code(1)
        .assert_stderr_contains("does not match its signature");
    // No signature at all.
    let mut unsigned = m.clone();
    unsigned.as_object_mut().unwrap().remove("signature");
    write_manifest(&writer, "s1", &unsigned);
    rd.run(&["contents", "s1"])
        .assert_code(1)
        .assert_stderr_contains("is not signed");
    // A bare dump file has no manifest, hence no signature.
    let elsewhere = tempfile::tempdir().unwrap();
    let bare = elsewhere.path().join("s1.dump");
    std::fs::copy(writer.backups().join("s1.dump"), &bare).unwrap();
    rd.run(&["verify", bare.to_str().unwrap(), "--quick"])
        .assert_code(1)
        .assert_stderr_contains("no manifest");
    // The original again: accepted.
    write_manifest(&writer, "s1", &m);
    rd.run(&["verify", "s1", "--quick"]).assert_code(0);
}

#[test]
fn a_manifest_pointing_at_another_backups_object_is_refused_whatever_the_keys() {
    let pg = Pg::get();
    let src = pg.sample_db("ki_cross");
    let cli = Cli::for_db(&src.name);
    cli.run(&["backup", "c1"]).assert_code(0);
    cli.run(&["backup", "c2"]).assert_code(0);
    let c1 = manifest(&cli, "c1");
    let mut c2 = manifest(&cli, "c2");
    for field in ["object", "sha256", "size_bytes"] {
        c2[field] = c1[field].clone();
    }
    write_manifest(&cli, "c2", &c2);
    let target = pg.target_with_content("ki_cross_target");
    let before = pg.fingerprint(&target.name);
    cli.run(&["restore", "c2", &target.name, "--no-safety-backup"])
        .assert_code(1)
        .assert_stderr_contains("not an object of backup");
    cli.run(&["verify", "c2"])
        .assert_code(1)
        .assert_stderr_contains("not an object of backup");
    cli.run(&["contents", "c2"])
        .assert_code(1)
        .assert_stderr_contains("not an object of backup");
    assert_same(&pg.fingerprint(&target.name), &before);
    assert!(!cli.backups().join("c2.verify.json").exists());

    // The roles object and the name are held to the same rule.
    let mut c2 = manifest(&cli, "c2");
    c2["object"] = "c2.dump".into();
    c2["roles"]["object"] = "c1.roles.json".into();
    write_manifest(&cli, "c2", &c2);
    cli.run(&["verify", "c2", "--quick"])
        .assert_code(1)
        .assert_stderr_contains("not an object of backup");
    let mut c2 = manifest(&cli, "c2");
    c2["roles"]["object"] = "c2.roles.json".into();
    c2["name"] = "c1".into();
    write_manifest(&cli, "c2", &c2);
    cli.run(&["verify", "c2", "--quick"])
        .assert_code(1)
        .assert_stderr_contains("not an object of backup");
    let listed = cli.list();
    let row = listed.iter().find(|b| b["object"] == "c2.dump").unwrap();
    assert_eq!(row["authenticity"], "foreign_objects");
    // c1 itself is untouched and fine.
    cli.run(&["verify", "c1", "--quick"]).assert_code(0);
}

#[test]
fn physical_backups_are_signed_and_a_forged_one_is_not_restored() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = signing_key(keys.path(), "k");
    kaizen_backup_e2e::cluster::give_to_postgres(keys.path());
    let site = Site::new(&format!(
        "\n[integrity]\nverify_keys = [\"{public}\"]\nsigning_key = {{ file = \"{}\" }}\n",
        key.display()
    ));
    // Another backup host's configuration: the same, without the signing key.
    let unsigned = site.root.path().join("unsigned.toml");
    let text = std::fs::read_to_string(&site.config).unwrap();
    let text: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("signing_key"))
        .collect();
    std::fs::write(&unsigned, text.join("\n")).unwrap();
    let unsigned_s = unsigned.display().to_string();

    site.cli
        .run(&["--config", &unsigned_s, "backup", "--physical", "u1"])
        .assert_code(0);
    site.run(&["backup", "--physical", "p1"]).assert_code(0);
    site.mark(1);
    site.archive_now();

    let m_path = site.archive.join("p1.manifest.json");
    let original = std::fs::read_to_string(&m_path).unwrap();
    let m: serde_json::Value = serde_json::from_str(&original).unwrap();
    assert_eq!(m["kind"], "physical");
    assert_eq!(m["signature"]["key"], public.as_str());
    site.run(&["verify", "p1", "--quick"]).assert_code(0);

    // Unsigned: refused by name, before anything is written.
    let pgdata = site.new_pgdata("refused");
    let pgdata_s = pgdata.display().to_string();
    site.run(&["restore", "u1", "--pgdata", &pgdata_s, "--no-archive"])
        .assert_code(1)
        .assert_stderr_contains("is not signed");
    assert!(!pgdata.exists());
    // Forged: a field rewritten without the key.
    let mut forged = m.clone();
    forged["database_size_bytes"] = 1.into();
    std::fs::write(&m_path, serde_json::to_vec_pretty(&forged).unwrap()).unwrap();
    site.run(&["restore", "p1", "--pgdata", &pgdata_s, "--no-archive"])
        .assert_code(1)
        .assert_stderr_contains("does not match its signature");
    site.run(&["verify", "p1", "--quick"]).assert_code(1);
    assert!(!pgdata.exists());
    // The signed original restores.
    std::fs::write(&m_path, original).unwrap();
    let (_restored, markers) = site.restore_markers("ok", &["p1"]);
    assert_eq!(markers, vec![1]);
}

#[test]
fn archived_wal_is_signed_and_wal_fetch_serves_only_signed_files() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = signing_key(keys.path(), "k");
    let (_, stranger) = signing_key(keys.path(), "stranger");
    // archive_command runs as the server's OS user, and reads the key.
    kaizen_backup_e2e::cluster::give_to_postgres(keys.path());
    let site = Site::new(&format!(
        "\n[integrity]\nsigning_key = {{ file = \"{}\" }}\nverify_keys = [\"{public}\"]\n",
        key.display()
    ));
    site.run(&["backup", "--physical", "w1"]).assert_code(0);
    site.mark(1);
    site.archive_now();

    // Every archived file has its signature beside it.
    let wal = site.archive.join("wal");
    let files: Vec<String> = kaizen_backup_e2e::pitr_site::names(&wal);
    let data: Vec<&String> = files.iter().filter(|f| !f.ends_with(".sig")).collect();
    assert!(!data.is_empty());
    for f in &data {
        let stem = f.trim_end_matches(".age").trim_end_matches(".zst");
        assert!(
            files.contains(&format!("{stem}.sig")),
            "{f} is not signed: {files:?}"
        );
    }
    // Recovery fetches (and checks) them.
    let (_restored, markers) = site.restore_markers("ok", &[]);
    assert_eq!(markers, vec![1]);

    let segment = data
        .iter()
        .map(|f| f.trim_end_matches(".age").trim_end_matches(".zst"))
        .filter(|s| s.len() == 24 + 1 + 64)
        .max()
        .unwrap()
        .to_string();
    let (name, _sha) = segment.split_once('-').unwrap();
    let dest = site.root.path().join("fetched");
    let dest_s = dest.display().to_string();
    site.run(&["wal-fetch", name, &dest_s]).assert_code(0);
    std::fs::remove_file(&dest).unwrap();

    // A reader that trusts another key only.
    let other = site.root.path().join("other.toml");
    let text = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(&other, text.replace(&public, &stranger)).unwrap();
    let other_s = other.display().to_string();
    site.cli
        .run(&["--config", &other_s, "wal-fetch", name, &dest_s])
        .assert_code(1)
        .assert_stderr_contains("not in integrity.verify_keys");
    assert!(!dest.exists());
    // Its signature removed: refused, nothing written.
    let sig = wal.join(format!("{segment}.sig"));
    let saved = std::fs::read(&sig).unwrap();
    std::fs::remove_file(&sig).unwrap();
    site.run(&["wal-fetch", name, &dest_s])
        .assert_code(1)
        .assert_stderr_contains("is not signed");
    assert!(!dest.exists());
    // Another segment's signature in its place: refused.
    let other_seg = data
        .iter()
        .map(|f| f.trim_end_matches(".age").trim_end_matches(".zst"))
        .find(|s| s.len() == 24 + 1 + 64 && *s != segment)
        .unwrap();
    std::fs::copy(wal.join(format!("{other_seg}.sig")), &sig).unwrap();
    site.run(&["wal-fetch", name, &dest_s])
        .assert_code(1)
        .assert_stderr_contains("does not match its signature");
    std::fs::write(&sig, saved).unwrap();
    site.run(&["wal-fetch", name, &dest_s]).assert_code(0);
}
