//! The table of contents of a pg_dump archive, read exactly.
//!
//! `pg_restore --list` prints the TOC as text with names separated by spaces and newlines
//! rewritten, so names with spaces, newlines or words like `DATA` cannot be read back from
//! it. This module reads the binary header and TOC that pg_dump writes at the start of a
//! custom-format archive (and in `toc.dat` of a directory-format one) — archive versions
//! 1.12 (PostgreSQL 9.x) to 1.16 (PostgreSQL 17) — so every name comes back byte for byte.
//!
//! ```text
//! "PGDMP" vmaj vmin vrev intSize offSize format
//! compression (int; 1.15+: one byte algorithm)   created-at (7 ints)   dbname  server  pg_dump
//! tocCount, then per entry: dumpId hadDumper tableoid oid tag desc section defn dropStmt
//! copyStmt namespace tablespace [tableam 1.14+] [relkind 1.16+] owner withOids deps… NULL
//! [custom: data offset flag + offSize bytes | directory: file name]
//! ```
//! An int is a sign byte then `intSize` bytes, least significant first; a string is an int
//! length (negative: NULL) then that many bytes. Parsing never panics: malformed input is an
//! [`TocError::Invalid`], a prefix that ends early is [`TocError::Incomplete`] (read more).

use std::collections::{BTreeSet, HashMap};

use futures::StreamExt;

use crate::error::{Error, Result};
use crate::storage::ByteStream;

/// Why a TOC could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TocError {
    /// The bytes end before the TOC does: give the parser a longer prefix.
    #[error("the archive ends inside its table of contents")]
    Incomplete,
    /// Not a pg_dump archive, an unsupported version, or a damaged TOC.
    #[error("{0}")]
    Invalid(String),
}

/// Archive format byte in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArchiveFormat {
    /// `pg_dump -Fc`
    Custom,
    /// `pg_dump -Ft`
    Tar,
    /// `pg_dump -Fd` (`toc.dat`)
    Directory,
}

/// One TOC entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    /// pg_dump's id of the entry (what `pg_restore -L` lists).
    pub dump_id: i64,
    /// Whether the entry has data (a `TABLE DATA`, large objects).
    pub had_dumper: bool,
    /// The object's oid in the source database (0 for entries without one).
    pub oid: u32,
    /// Object name (for a `TABLE`, the table's name, unquoted).
    pub tag: String,
    /// Entry type: `TABLE`, `TABLE DATA`, `SEQUENCE`, `INDEX`, `SCHEMA`, ...
    pub desc: String,
    /// Schema, for objects that live in one.
    pub namespace: Option<String>,
    /// Owning role.
    pub owner: Option<String>,
    /// The SQL that creates the object.
    pub defn: Option<String>,
    /// The `COPY ... FROM stdin` that loads a `TABLE DATA` entry; `None` when the data
    /// is SQL statements (`pg_dump --inserts`) or the entry has no data.
    pub copy_stmt: Option<String>,
    /// Ids of the entries this one depends on.
    pub dependencies: Vec<i64>,
    /// Custom format: where the entry's data block starts, when pg_dump recorded it.
    pub data_offset: Option<u64>,
    /// Directory format: the entry's data file (`1234.dat.gz`).
    pub file_name: Option<String>,
}

/// Header and entries of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    /// Archive version `(major, minor, revision)`, e.g. `(1, 14, 0)` from PostgreSQL 15.
    pub version: (u8, u8, u8),
    /// The archive format.
    pub format: ArchiveFormat,
    /// Name of the dumped database.
    pub database: String,
    /// Version of the server that was dumped.
    pub server_version: String,
    /// Version of pg_dump that wrote the archive.
    pub dump_version: String,
    /// The entries, in archive order.
    pub entries: Vec<TocEntry>,
    /// Bytes the header and TOC take (custom format: data blocks start here).
    pub len: usize,
    /// Bytes of an integer after its sign byte (the header's `intSize`).
    pub int_size: usize,
    /// Whether pg_dump compressed the data blocks (any level or algorithm but none).
    pub compressed: bool,
}

impl Toc {
    /// `(schema, name)` of every table (`TABLE` entries: ordinary and partitioned tables,
    /// partitions; not views, sequences or data entries).
    pub fn tables(&self) -> BTreeSet<(String, String)> {
        self.entries
            .iter()
            .filter(|e| e.desc == "TABLE")
            .map(|e| (e.namespace.clone().unwrap_or_default(), e.tag.clone()))
            .collect()
    }

    /// Partition's `TABLE` dump id -> its parent's, from the `TABLE ATTACH` entries (each
    /// depends on the parent and on the partition, and is tagged with the partition's name).
    pub fn partition_parents(&self) -> HashMap<i64, i64> {
        let by_id: HashMap<i64, &TocEntry> = self.entries.iter().map(|e| (e.dump_id, e)).collect();
        let mut parent_of = HashMap::new();
        for e in self.entries.iter().filter(|e| e.desc == "TABLE ATTACH") {
            let tables: Vec<&&TocEntry> = e
                .dependencies
                .iter()
                .filter_map(|d| by_id.get(d))
                .filter(|d| d.desc == "TABLE")
                .collect();
            let is_child = |t: &&&TocEntry| t.tag == e.tag && t.namespace == e.namespace;
            let child = tables.iter().find(|t| is_child(t));
            let parent = tables.iter().find(|t| !is_child(t));
            if let (Some(c), Some(p)) = (child, parent) {
                parent_of.insert(c.dump_id, p.dump_id);
            }
        }
        parent_of
    }
}

const MIN_VERSION: (u8, u8) = (1, 12);
const MAX_VERSION: (u8, u8) = (1, 16);
/// A TOC larger than this is not plausible (a million entries of a few hundred bytes).
const MAX_STRING: i64 = 256 * 1024 * 1024;

/// Read the header and TOC from the start of an archive (custom format) or of `toc.dat`.
pub fn parse(bytes: &[u8]) -> Result<Toc, TocError> {
    let mut r = Reader {
        buf: bytes,
        pos: 0,
        int_size: 4,
        off_size: 8,
        latin1: false,
    };
    let magic = r.take(5)?;
    if magic != b"PGDMP" {
        return Err(TocError::Invalid(
            "not a pg_dump archive (no PGDMP header)".into(),
        ));
    }
    let (vmaj, vmin, vrev) = (r.byte()?, r.byte()?, r.byte()?);
    if (vmaj, vmin) < MIN_VERSION || (vmaj, vmin) > MAX_VERSION {
        return Err(TocError::Invalid(format!(
            "unsupported archive version {vmaj}.{vmin} (this build reads 1.12 to 1.16: PostgreSQL 9.0 to 17)"
        )));
    }
    r.int_size = usize::from(r.byte()?);
    r.off_size = usize::from(r.byte()?);
    if !(1..=8).contains(&r.int_size) || !(1..=8).contains(&r.off_size) {
        return Err(TocError::Invalid(format!(
            "implausible integer sizes {} and {} in the header",
            r.int_size, r.off_size
        )));
    }
    let format = match r.byte()? {
        1 => ArchiveFormat::Custom,
        3 => ArchiveFormat::Tar,
        5 => ArchiveFormat::Directory,
        other => {
            return Err(TocError::Invalid(format!("unknown archive format {other}")));
        }
    };
    let v = (vmaj, vmin);
    let compressed = if v >= (1, 15) {
        r.byte()? != 0 // compression algorithm, 0 = none
    } else {
        r.int()? != 0 // compression level, 0 = none (-1 is zlib's default)
    };
    for _ in 0..7 {
        r.int()?; // creation time: sec, min, hour, mday, mon, year, isdst
    }
    let database = r.string()?.unwrap_or_default();
    let server_version = r.string()?.unwrap_or_default();
    let dump_version = r.string()?.unwrap_or_default();
    let count = r.int()?;
    if count < 0 {
        return Err(TocError::Invalid(format!("negative entry count {count}")));
    }
    let mut entries = Vec::with_capacity(usize::try_from(count.min(100_000)).unwrap_or(0));
    for _ in 0..count {
        let dump_id = r.int()?;
        if dump_id <= 0 {
            return Err(TocError::Invalid(format!(
                "entry id {dump_id} out of range: the table of contents is damaged"
            )));
        }
        let had_dumper = r.int()? != 0;
        r.string()?; // tableoid
        let oid = r.string()?.and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let tag = r.string()?.unwrap_or_default();
        let desc = r.string()?.unwrap_or_default();
        r.int()?; // section
        let defn = r.string()?;
        r.string()?; // drop statement
        let copy_stmt = r.string()?.filter(|c| !c.is_empty());
        let namespace = r.string()?;
        r.string()?; // tablespace
        if v >= (1, 14) {
            r.string()?; // table access method
        }
        if v >= (1, 16) {
            r.int()?; // relkind
        }
        let owner = r.string()?;
        r.string()?; // "with oids"
        let mut dependencies = Vec::new();
        while let Some(dep) = r.string()? {
            let id = dep
                .trim()
                .parse()
                .map_err(|_| TocError::Invalid(format!("dependency {dep:?} is not an entry id")))?;
            dependencies.push(id);
        }
        let (mut data_offset, mut file_name) = (None, None);
        match format {
            ArchiveFormat::Custom => {
                let flag = r.byte()?;
                let off = r.offset()?;
                // 2 = K_OFFSET_POS_SET: the offset was known when the TOC was written.
                if flag == 2 {
                    data_offset = Some(off);
                }
            }
            ArchiveFormat::Directory | ArchiveFormat::Tar => {
                file_name = r.string()?.filter(|f| !f.is_empty());
            }
        }
        // ENCODING comes first: later names are in the archive's encoding.
        if desc == "ENCODING" {
            r.latin1 = defn
                .as_deref()
                .is_some_and(|d| d.contains("'LATIN1'") || d.contains("'ISO_8859_1'"));
        }
        entries.push(TocEntry {
            dump_id,
            had_dumper,
            oid,
            tag,
            desc,
            namespace,
            owner,
            defn,
            copy_stmt,
            dependencies,
            data_offset,
            file_name,
        });
    }
    Ok(Toc {
        version: (vmaj, vmin, vrev),
        format,
        database,
        server_version,
        dump_version,
        entries,
        len: r.pos,
        int_size: r.int_size,
        compressed,
    })
}

/// A TOC larger than this is refused rather than buffered.
const MAX_TOC: usize = 512 * 1024 * 1024;

/// Read the TOC of an archive from its (decoded) byte stream: the start of a custom-format
/// archive (reading stops once the TOC is complete), or `toc.dat` inside the tar archive of
/// a parallel backup (the whole stream is read, and the tar checked, on the way).
///
/// The outer error is an I/O or storage failure; the inner one says why the bytes are not
/// a readable archive (a verification failure, not an operational error).
pub async fn read(stream: ByteStream, directory: bool) -> Result<std::result::Result<Toc, String>> {
    if directory {
        read_directory(stream).await
    } else {
        read_custom(stream).await
    }
}

async fn read_custom(mut stream: ByteStream) -> Result<std::result::Result<Toc, String>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut next_try = 64 * 1024;
    loop {
        let ended = match stream.next().await {
            Some(chunk) => {
                buf.extend_from_slice(&chunk?);
                if buf.len() < next_try {
                    continue;
                }
                // Re-parse at doubling sizes: linear work overall.
                next_try = buf.len().saturating_mul(2);
                false
            }
            None => true,
        };
        match parse(&buf) {
            Ok(t) => return Ok(Ok(t)),
            Err(TocError::Incomplete) if ended => {
                return Ok(Err(
                    "the archive ends inside its table of contents (truncated)".into(),
                ));
            }
            Err(TocError::Incomplete) if buf.len() > MAX_TOC => {
                return Ok(Err(format!(
                    "the table of contents is larger than {} MiB",
                    MAX_TOC / (1024 * 1024)
                )));
            }
            Err(TocError::Incomplete) => {}
            Err(e) => return Ok(Err(e.to_string())),
        }
    }
}

async fn read_directory(stream: ByteStream) -> Result<std::result::Result<Toc, String>> {
    // Only toc.dat (schema, no table data) is unpacked, into a 0700 directory.
    let tmp = tempfile::Builder::new()
        .prefix("kaizen-toc-")
        .tempdir()
        .map_err(|e| Error::io("creating a temporary directory", e))?;
    match crate::tar::unpack(stream, tmp.path(), |n| n == "toc.dat").await {
        Ok(names) if names.is_empty() => return Ok(Err("the archive has no toc.dat".into())),
        Ok(_) => {}
        Err(Error::Corrupt(why)) => return Ok(Err(why)),
        Err(e) => return Err(e),
    }
    let bytes = tokio::fs::read(tmp.path().join("toc.dat"))
        .await
        .map_err(|e| Error::io("reading the unpacked toc.dat", e))?;
    Ok(parse(&bytes).map_err(|e| match e {
        TocError::Incomplete => "toc.dat ends inside the table of contents (truncated)".into(),
        e => e.to_string(),
    }))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    int_size: usize,
    off_size: usize,
    /// Strings are LATIN1 (the archive's ENCODING entry said so), else UTF-8.
    latin1: bool,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], TocError> {
        let end = self.pos.checked_add(n).ok_or(TocError::Incomplete)?;
        let s = self.buf.get(self.pos..end).ok_or(TocError::Incomplete)?;
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, TocError> {
        Ok(self.take(1)?[0])
    }

    /// Little-endian unsigned value of `n` bytes (at most 8).
    fn unsigned(&mut self, n: usize) -> Result<u64, TocError> {
        let bytes = self.take(n)?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn int(&mut self) -> Result<i64, TocError> {
        let negative = self.byte()? != 0;
        let v = self.unsigned(self.int_size)?;
        let v = i64::try_from(v)
            .map_err(|_| TocError::Invalid("integer out of range in the archive".into()))?;
        Ok(if negative { -v } else { v })
    }

    fn offset(&mut self) -> Result<u64, TocError> {
        self.unsigned(self.off_size)
    }

    fn string(&mut self) -> Result<Option<String>, TocError> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        if len > MAX_STRING {
            return Err(TocError::Invalid(format!(
                "a string of {len} bytes in the table of contents: the archive is damaged"
            )));
        }
        let latin1 = self.latin1;
        let bytes = self.take(usize::try_from(len).unwrap_or(usize::MAX))?;
        Ok(Some(if latin1 {
            bytes.iter().map(|&b| char::from(b)).collect()
        } else {
            String::from_utf8_lossy(bytes).into_owned()
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Custom-format archive bytes, written the way pg_dump writes them (4-byte ints);
    /// also used by the row counter's tests.
    pub(crate) struct Writer(pub(crate) Vec<u8>);
    impl Writer {
        pub(crate) fn int(&mut self, v: i64) {
            self.0.push(u8::from(v < 0));
            self.0
                .extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        }
        pub(crate) fn str(&mut self, s: Option<&str>) {
            match s {
                None => self.int(-1),
                Some(s) => {
                    self.int(s.len() as i64);
                    self.0.extend_from_slice(s.as_bytes());
                }
            }
        }
    }

    fn archive(entries: &[(&str, &str, Option<&str>)]) -> Vec<u8> {
        let mut w = Writer(b"PGDMP".to_vec());
        w.0.extend_from_slice(&[1, 14, 0, 4, 8, 1]);
        w.int(0);
        for v in [0, 0, 0, 1, 0, 124, 0] {
            w.int(v);
        }
        for s in ["db", "15.8", "15.8"] {
            w.str(Some(s));
        }
        w.int(entries.len() as i64);
        for (i, (desc, tag, ns)) in entries.iter().enumerate() {
            w.int(i as i64 + 1);
            w.int(i64::from(*desc == "TABLE DATA"));
            w.str(Some("1259"));
            w.str(Some("16390"));
            w.str(Some(tag));
            w.str(Some(desc));
            w.int(1);
            w.str(Some("CREATE ..."));
            w.str(Some(""));
            w.str(None);
            w.str(*ns);
            w.str(Some(""));
            w.str(Some("heap"));
            w.str(Some("owner"));
            w.str(Some("false"));
            if i > 0 {
                w.str(Some("1"));
            }
            w.str(None);
            w.0.push(1);
            w.0.extend_from_slice(&[0; 8]);
        }
        w.0
    }

    #[test]
    fn reads_names_with_spaces_newlines_and_keywords() {
        let bytes = archive(&[
            ("SCHEMA", "Sales Data", None),
            ("TABLE", "Audit Log", Some("Sales Data")),
            ("TABLE", "DATA x", Some("public")),
            ("TABLE", "line\nbreak", Some("public")),
            ("TABLE DATA", "Audit Log", Some("Sales Data")),
        ]);
        let toc = parse(&bytes).unwrap();
        assert_eq!(toc.version, (1, 14, 0));
        assert_eq!(toc.format, ArchiveFormat::Custom);
        assert_eq!(toc.entries.len(), 5);
        assert_eq!(toc.entries[1].dependencies, [1]);
        assert_eq!(toc.len, bytes.len());
        let tables: Vec<_> = toc.tables().into_iter().collect();
        assert_eq!(
            tables,
            [
                ("Sales Data".to_string(), "Audit Log".to_string()),
                ("public".to_string(), "DATA x".to_string()),
                ("public".to_string(), "line\nbreak".to_string()),
            ]
        );
    }

    #[test]
    fn every_prefix_is_incomplete_and_garbage_is_invalid() {
        let bytes = archive(&[("TABLE", "t", Some("public"))]);
        for n in 0..bytes.len() {
            match parse(&bytes[..n]) {
                Err(TocError::Incomplete) => {}
                Err(TocError::Invalid(why)) if n < 5 => panic!("{n}: {why}"),
                other => panic!("prefix of {n} bytes: {other:?}"),
            }
        }
        assert!(matches!(parse(b"PGDMQ...."), Err(TocError::Invalid(_))));
        let mut bad = bytes.clone();
        bad[5] = 2; // version 2.x
        assert!(matches!(parse(&bad), Err(TocError::Invalid(_))));
    }

    #[test]
    fn never_panics_on_mutated_archives() {
        let bytes = archive(&[
            ("TABLE", "a", Some("public")),
            ("TABLE DATA", "a", Some("public")),
        ]);
        // Flip every byte to a few values, truncate anywhere: an error or a TOC, no panic.
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut m = bytes.clone();
                m[i] = v;
                let _ = parse(&m);
                let _ = parse(&m[..i]);
            }
        }
    }
}
