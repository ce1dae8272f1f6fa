//! Exact row counts read from a custom-format archive as it streams past, for dumps whose
//! data blocks pg_dump wrote uncompressed (`--compress=0`: the zstd and none modes).
//!
//! ```text
//! header + TOC (see toc.rs)   then per data entry:
//! BLK_DATA(1) dumpId  { len bytes }*  len=0        COPY text: one row per line, then `\.`
//! BLK_BLOBS(3) dumpId { oid { len bytes }* len=0 }* oid=0     large objects: skipped
//! ```
//! In COPY's text format a row is one line: a newline or backslash inside a value is
//! written as `\n` or `\\`, so every newline byte ends a row, up to the `\.` line that
//! pg_dump writes after the last row (no value can start a line with `\.`). Chunks and
//! reads split rows anywhere; the counter keeps the few bytes of state that needs.
//!
//! The counter never fails the backup: anything it cannot count exactly (compressed
//! blocks, `--inserts` data, a damaged stream, a table of contents larger than
//! [`MAX_TOC`]) makes [`CopyRowCounter::finish`] say why, and the caller counts in the
//! snapshot instead.

use std::collections::BTreeMap;

use super::toc::{self, Toc, TocError};

/// A table of contents larger than this is not buffered: the rows are counted in the
/// snapshot instead (this bounds the counter's memory).
pub const MAX_TOC: usize = 16 * 1024 * 1024;

const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;

/// What the next integer in the stream is.
#[derive(Debug, Clone, Copy)]
enum IntFor {
    DumpId { blobs: bool },
    ChunkLen { blobs: bool },
    BlobOid,
}

#[derive(Debug)]
enum State {
    /// Buffering the header and TOC until they parse.
    Toc,
    /// At a block boundary (the end of the archive may come here).
    BlockType,
    /// Reading `1 + int_size` bytes of an integer.
    Int(IntFor),
    /// Inside a chunk of `left` more bytes.
    Data { left: u64, blobs: bool },
    /// Counting gave up (see `failed`).
    Failed,
}

/// Rows of the block being read.
#[derive(Debug, Default)]
struct Lines {
    dump_id: i64,
    rows: i64,
    /// The first bytes of the current line (enough to recognise `\.`).
    head: [u8; 3],
    head_len: usize,
    /// The `\.` line was seen: nothing after it is a row.
    ended: bool,
}

impl Lines {
    fn scan(&mut self, mut data: &[u8]) {
        while !self.ended && !data.is_empty() {
            let (line, newline) = match memchr::memchr(b'\n', data) {
                Some(i) => (&data[..i], Some(i)),
                None => (data, None),
            };
            for &b in line.iter().take(self.head.len() - self.head_len) {
                self.head[self.head_len] = b;
                self.head_len += 1;
            }
            let Some(i) = newline else { return };
            if self.head_len == 2 && self.head[..2] == *b"\\." {
                self.ended = true;
            } else {
                self.rows += 1;
            }
            self.head_len = 0;
            data = &data[i + 1..];
        }
    }
}

/// Counts the COPY rows of every `TABLE DATA` entry of a custom-format archive fed to it
/// in pieces of any size.
#[derive(Debug)]
pub struct CopyRowCounter {
    state: State,
    /// Header and TOC bytes while they are incomplete.
    head: Vec<u8>,
    /// Re-parse the buffered TOC once it holds this many bytes (doubling: linear work).
    next_try: usize,
    toc: Option<Toc>,
    int: Vec<u8>,
    /// The data block being read: `None` for blocks that are not counted.
    current: Option<Lines>,
    rows: BTreeMap<i64, i64>,
    failed: Option<String>,
}

impl Default for CopyRowCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyRowCounter {
    /// A counter at the start of an archive.
    pub fn new() -> Self {
        Self {
            state: State::Toc,
            head: Vec::new(),
            next_try: 64 * 1024,
            toc: None,
            int: Vec::with_capacity(9),
            current: None,
            rows: BTreeMap::new(),
            failed: None,
        }
    }

    fn fail(&mut self, why: impl Into<String>) {
        if self.failed.is_none() {
            self.failed = Some(why.into());
        }
        self.state = State::Failed;
        self.head = Vec::new();
        self.current = None;
    }

    /// Feed the next bytes of the archive.
    pub fn feed(&mut self, data: &[u8]) {
        match self.state {
            State::Failed => {}
            State::Toc => {
                self.head.extend_from_slice(data);
                if self.head.len() >= self.next_try {
                    self.next_try = self.head.len().saturating_mul(2);
                    self.try_toc(false);
                }
            }
            _ => self.blocks(data),
        }
    }

    /// Parse the buffered TOC; once it is complete, what follows it are data blocks.
    fn try_toc(&mut self, ended: bool) {
        match toc::parse(&self.head) {
            Ok(t) if t.format != toc::ArchiveFormat::Custom => {
                self.fail("the archive is not in pg_dump's custom format")
            }
            Ok(t) if t.compressed => self.fail("pg_dump compressed the data blocks"),
            Ok(t) => {
                if let Some(e) = t
                    .entries
                    .iter()
                    .find(|e| e.desc == "TABLE DATA" && e.had_dumper && e.copy_stmt.is_none())
                {
                    let why = format!(
                        "the data of {}.{} is not COPY data (pg_dump --inserts?)",
                        e.namespace.as_deref().unwrap_or_default(),
                        e.tag
                    );
                    self.fail(why);
                    return;
                }
                let rest = self.head.split_off(t.len.min(self.head.len()));
                self.head = Vec::new();
                self.toc = Some(t);
                self.state = State::BlockType;
                self.blocks(&rest);
            }
            Err(TocError::Incomplete) if ended => {
                self.fail("the archive ends inside its table of contents")
            }
            Err(TocError::Incomplete) if self.head.len() > MAX_TOC => self.fail(format!(
                "the table of contents is larger than {} MiB",
                MAX_TOC / (1024 * 1024)
            )),
            Err(TocError::Incomplete) => {}
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn int_size(&self) -> usize {
        self.toc.as_ref().map_or(4, |t| t.int_size)
    }

    fn blocks(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Failed | State::Toc => return,
                State::BlockType => {
                    let kind = data[0];
                    data = &data[1..];
                    self.state = match kind {
                        BLK_DATA => State::Int(IntFor::DumpId { blobs: false }),
                        BLK_BLOBS => State::Int(IntFor::DumpId { blobs: true }),
                        other => return self.fail(format!("unknown data block type {other}")),
                    };
                }
                State::Int(what) => {
                    let need = 1 + self.int_size() - self.int.len();
                    let n = need.min(data.len());
                    self.int.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if n == need {
                        let v = decode_int(&self.int);
                        self.int.clear();
                        match v {
                            Some(v) => self.int_done(what, v),
                            None => return self.fail("an integer out of range in a data block"),
                        }
                    }
                }
                State::Data { left, blobs } => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    if !blobs && let Some(lines) = &mut self.current {
                        lines.scan(&data[..n]);
                    }
                    data = &data[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Int(IntFor::ChunkLen { blobs })
                    } else {
                        State::Data { left, blobs }
                    };
                }
            }
        }
    }

    fn int_done(&mut self, what: IntFor, v: i64) {
        self.state = match what {
            IntFor::DumpId { blobs: true } => State::Int(IntFor::BlobOid),
            IntFor::DumpId { blobs: false } => {
                let counted = self
                    .toc
                    .as_ref()
                    .and_then(|t| t.entries.iter().find(|e| e.dump_id == v))
                    .is_some_and(|e| e.desc == "TABLE DATA");
                if counted && self.rows.contains_key(&v) {
                    return self.fail(format!("entry {v} has two data blocks"));
                }
                self.current = counted.then(|| Lines {
                    dump_id: v,
                    ..Lines::default()
                });
                State::Int(IntFor::ChunkLen { blobs: false })
            }
            IntFor::BlobOid if v == 0 => State::BlockType,
            IntFor::BlobOid => State::Int(IntFor::ChunkLen { blobs: true }),
            IntFor::ChunkLen { .. } if v < 0 => {
                return self.fail(format!("a data chunk of negative length {v}"));
            }
            IntFor::ChunkLen { blobs: true } if v == 0 => State::Int(IntFor::BlobOid),
            IntFor::ChunkLen { blobs: false } if v == 0 => {
                if let Some(lines) = self.current.take() {
                    if lines.head_len > 0 && !lines.ended {
                        return self.fail(format!(
                            "the data of entry {} ends inside a row",
                            lines.dump_id
                        ));
                    }
                    self.rows.insert(lines.dump_id, lines.rows);
                }
                State::BlockType
            }
            IntFor::ChunkLen { blobs } => State::Data {
                left: v as u64,
                blobs,
            },
        };
    }

    /// The end of the archive: rows per table, `(schema, name) → rows`, for every
    /// `TABLE DATA` entry; or why they could not be counted exactly.
    pub fn finish(mut self) -> Result<BTreeMap<(String, String), i64>, String> {
        if matches!(self.state, State::Toc) {
            self.try_toc(true);
        }
        if let Some(why) = self.failed {
            return Err(why);
        }
        if !matches!(self.state, State::BlockType) {
            return Err("the archive ends inside a data block".into());
        }
        let Some(toc) = self.toc else {
            return Err("the archive has no table of contents".into());
        };
        let mut out = BTreeMap::new();
        for e in toc.entries.iter().filter(|e| e.desc == "TABLE DATA") {
            let Some(&rows) = self.rows.get(&e.dump_id) else {
                return Err(format!(
                    "the archive has no data block for {}.{}",
                    e.namespace.as_deref().unwrap_or_default(),
                    e.tag
                ));
            };
            let key = (e.namespace.clone().unwrap_or_default(), e.tag.clone());
            if out.insert(key, rows).is_some() {
                return Err(format!(
                    "two data entries for {}.{}",
                    e.namespace.as_deref().unwrap_or_default(),
                    e.tag
                ));
            }
        }
        Ok(out)
    }
}

/// A sign byte then little-endian magnitude.
fn decode_int(bytes: &[u8]) -> Option<i64> {
    let (&sign, magnitude) = bytes.split_first()?;
    let v = magnitude.iter().rev().try_fold(0u64, |acc, &b| {
        acc.checked_mul(256).map(|a| a | u64::from(b))
    })?;
    let v = i64::try_from(v).ok()?;
    Some(if sign != 0 { -v } else { v })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use crate::toc::tests::Writer;

    /// An entry: (desc, name, COPY statement).
    type Entry<'a> = (&'a str, &'a str, Option<&'a str>);

    fn header(entries: &[Entry], compression: i64) -> Writer {
        let mut w = Writer(b"PGDMP".to_vec());
        w.0.extend_from_slice(&[1, 14, 0, 4, 8, 1]);
        w.int(compression);
        for v in [0, 0, 0, 1, 0, 124, 0] {
            w.int(v);
        }
        for s in ["db", "15.8", "15.8"] {
            w.str(Some(s));
        }
        w.int(entries.len() as i64);
        for (i, (desc, tag, copy)) in entries.iter().enumerate() {
            w.int(i as i64 + 1);
            w.int(i64::from(*desc != "TABLE"));
            w.str(Some("1259"));
            w.str(Some("16390"));
            w.str(Some(tag));
            w.str(Some(desc));
            w.int(2);
            w.str(Some(""));
            w.str(Some(""));
            w.str(*copy);
            w.str(Some("public"));
            w.str(Some(""));
            w.str(Some("heap"));
            w.str(Some("owner"));
            w.str(Some("false"));
            w.str(None);
            w.0.push(1);
            w.0.extend_from_slice(&[0; 8]);
        }
        w
    }

    /// A data block of entry `id` whose COPY text is sent in `chunks`.
    fn data(w: &mut Writer, id: i64, chunks: &[&[u8]]) {
        w.0.push(BLK_DATA);
        w.int(id);
        for c in chunks {
            w.int(c.len() as i64);
            w.0.extend_from_slice(c);
        }
        w.int(0);
    }

    const COPY: Option<&str> = Some("COPY public.t (a) FROM stdin;\n");

    /// Awkward rows: escaped newlines and backslashes, a value that is `\.` (escaped),
    /// NULLs, bytea; an empty table; rows of a table without columns; large objects.
    fn sample() -> Vec<u8> {
        let entries = [
            ("TABLE", "t", None),
            ("TABLE DATA", "t", COPY),
            ("TABLE DATA", "empty", COPY),
            ("TABLE DATA", "no columns", COPY),
            ("BLOBS", "BLOBS", None),
            ("TABLE DATA", "last", COPY),
        ];
        let mut w = header(&entries, 0);
        data(
            &mut w,
            2,
            &[
                b"line\\none\\\\\t\\N\n",
                b"\\\\.\t\\\\x0a5c\n\\",
                b".x\n",
                b"\\.\n\n\n",
            ],
        );
        data(&mut w, 3, &[b"\\.\n\n\n"]);
        data(&mut w, 4, &[b"\n", b"\n", b"\n\\.\n\n\n"]);
        w.0.push(BLK_BLOBS);
        w.int(5);
        for oid in [16400, 16401] {
            w.int(oid);
            w.int(3);
            w.0.extend_from_slice(b"\n\n\n");
            w.int(0);
        }
        w.int(0);
        data(&mut w, 6, &[b"a\nb\n", b"c\n\\.\n\n\n"]);
        w.0
    }

    fn expected() -> BTreeMap<(String, String), i64> {
        [("t", 3), ("empty", 0), ("no columns", 3), ("last", 3)]
            .into_iter()
            .map(|(n, r)| (("public".to_string(), n.to_string()), r))
            .collect()
    }

    fn count(pieces: &[&[u8]]) -> Result<BTreeMap<(String, String), i64>, String> {
        let mut c = CopyRowCounter::new();
        for p in pieces {
            c.feed(p);
        }
        c.finish()
    }

    #[test]
    fn counts_rows_however_the_stream_is_split() {
        let bytes = sample();
        assert_eq!(count(&[&bytes]).unwrap(), expected());
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(count(&single).unwrap(), expected());
        for cut in 0..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(count(&[a, b]).unwrap(), expected(), "split at {cut}");
        }
    }

    #[test]
    fn what_cannot_be_counted_exactly_says_why() {
        let bytes = sample();
        for cut in [10, bytes.len() - 1, bytes.len() - 8] {
            let why = count(&[&bytes[..cut]]).unwrap_err();
            assert!(why.contains("ends inside"), "{cut}: {why}");
        }
        let mut w = header(&[("TABLE DATA", "t", COPY)], -1);
        data(&mut w, 1, &[b"x\n\\.\n"]);
        let why = count(&[&w.0]).unwrap_err();
        assert!(why.contains("compressed"), "{why}");
        let mut w = header(&[("TABLE DATA", "t", None)], 0);
        data(&mut w, 1, &[b"INSERT INTO t VALUES (1);\n"]);
        let why = count(&[&w.0]).unwrap_err();
        assert!(why.contains("--inserts"), "{why}");
        let mut w = header(&[("TABLE DATA", "t", COPY)], 0);
        data(&mut w, 1, &[b"x\ny"]);
        let why = count(&[&w.0]).unwrap_err();
        assert!(why.contains("inside a row"), "{why}");
        let w = header(&[("TABLE DATA", "t", COPY)], 0);
        let why = count(&[&w.0]).unwrap_err();
        assert!(why.contains("no data block"), "{why}");
        let why = count(&[b"not an archive at all"]).unwrap_err();
        assert!(why.contains("PGDMP"), "{why}");
    }

    #[test]
    fn never_panics_on_mutated_archives() {
        let bytes = sample();
        for i in 0..bytes.len() {
            for v in [0u8, 1, 3, 0x7f, 0xff] {
                let mut m = bytes.clone();
                m[i] = v;
                let _ = count(&[&m]);
            }
        }
    }
}
