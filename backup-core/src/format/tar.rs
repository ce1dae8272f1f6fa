//! The archive that carries a directory-format dump (`pg_dump -Fd -j N`) as one stream.
//!
//! Only what that needs: regular files with flat names, written in POSIX ustar form
//! (sizes beyond ustar's 8 GiB in the base-256 form GNU tar and every common reader
//! accept), so `tar -xf` unpacks a backup by hand. The reader is strict: it accepts
//! only flat names of letters, digits, `.`, `_` and `-`, checks every header's
//! checksum and requires the end-of-archive marker, so a truncated or foreign stream
//! is reported as corrupt rather than half-unpacked.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::storage::ByteStream;

/// Tar block size.
pub const BLOCK: usize = 512;

/// Largest size the 11 octal digits of a ustar header hold.
const OCTAL_MAX: u64 = 0o77_777_777_777;

/// Whether `name` is a flat file name this format carries.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn octal(field: &mut [u8], value: u64) {
    // Zero-padded octal with a trailing NUL, filling the field.
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

/// The header block of a regular file `name` of `size` bytes.
pub fn header(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK]> {
    if !valid_name(name) {
        return Err(Error::other(format!(
            "cannot archive {name:?}: not a flat file name"
        )));
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o600);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if size <= OCTAL_MAX {
        octal(&mut h[124..136], size);
    } else {
        // Base-256: high bit of the first byte set, big-endian value in the rest.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], mtime.min(OCTAL_MAX));
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// Zero bytes that pad a file of `size` bytes to a whole block.
pub fn padding(size: u64) -> usize {
    let rem = (size % BLOCK as u64) as usize;
    if rem == 0 { 0 } else { BLOCK - rem }
}

/// The end-of-archive marker: two zero blocks.
pub const END: [u8; 2 * BLOCK] = [0u8; 2 * BLOCK];

/// Whether `block` looks like the first header of an archive this module wrote.
pub fn is_header(block: &[u8]) -> bool {
    block.len() >= BLOCK && &block[257..262] == b"ustar" && parse_header(block).is_ok()
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // Base-256.
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// `(name, size)` of a file header, checked.
fn parse_header(h: &[u8]) -> Result<(String, u64)> {
    let bad = |why: &str| Err(Error::Corrupt(format!("archive header: {why}")));
    let stored = match parse_octal(&h[148..156]) {
        Some(v) => v,
        None => return bad("unreadable checksum"),
    };
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    if sum != stored {
        return bad("checksum mismatch");
    }
    if !matches!(h[156], b'0' | 0) {
        return bad("entry is not a regular file");
    }
    let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
    let name = match std::str::from_utf8(&h[..name_end]) {
        Ok(n) => n.to_string(),
        Err(_) => return bad("file name is not UTF-8"),
    };
    if h[345] != 0 || !valid_name(&name) {
        return bad(&format!("unexpected file name {name:?}"));
    }
    let Some(size) = parse_octal(&h[124..136]) else {
        return bad("unreadable size");
    };
    Ok((name, size))
}

/// Unpack the archive in `stream` into `dir` (which must exist). Only files for which
/// `want` is true are written; the rest of the stream is still read (and checked), so a
/// hash tap upstream sees every byte. Returns the names written.
pub async fn unpack(
    mut stream: ByteStream,
    dir: &Path,
    want: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    enum State {
        Header,
        Data {
            name: String,
            left: u64,
            pad: usize,
            file: Option<tokio::fs::File>,
        },
        Padding(usize),
        End,
    }
    let mut state = State::Header;
    let mut pending: Vec<u8> = Vec::with_capacity(BLOCK);
    let mut written = Vec::new();
    let mut zero_blocks = 0;
    let mut saw_any = false;
    let path_of = |name: &str| -> PathBuf { dir.join(name) };

    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = chunk?;
        let mut data: &[u8] = &chunk;
        while !data.is_empty() {
            match &mut state {
                State::Header => {
                    let take = (BLOCK - pending.len()).min(data.len());
                    pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if pending.len() < BLOCK {
                        continue;
                    }
                    if pending.iter().all(|&b| b == 0) {
                        zero_blocks += 1;
                        pending.clear();
                        if zero_blocks == 2 {
                            state = State::End;
                        }
                        continue;
                    }
                    if zero_blocks > 0 {
                        return Err(Error::Corrupt("archive: data after a zero block".into()));
                    }
                    let (name, size) = parse_header(&pending)?;
                    pending.clear();
                    saw_any = true;
                    let file = if want(&name) {
                        let path = path_of(&name);
                        let f = tokio::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&path)
                            .await
                            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                        written.push(name.clone());
                        Some(f)
                    } else {
                        None
                    };
                    state = State::Data {
                        name,
                        left: size,
                        pad: padding(size),
                        file,
                    };
                }
                State::Data {
                    name,
                    left,
                    pad,
                    file,
                } => {
                    let take = (*left).min(data.len() as u64) as usize;
                    if take > 0 {
                        if let Some(f) = file.as_mut() {
                            f.write_all(&data[..take]).await.map_err(|e| {
                                Error::io(format!("writing {}", path_of(name).display()), e)
                            })?;
                        }
                        *left -= take as u64;
                        data = &data[take..];
                    }
                    if *left == 0 {
                        if let Some(mut f) = file.take() {
                            f.flush().await.map_err(|e| {
                                Error::io(format!("writing {}", path_of(name).display()), e)
                            })?;
                        }
                        state = State::Padding(*pad);
                    }
                }
                State::Padding(left) => {
                    let take = (*left).min(data.len());
                    *left -= take;
                    data = &data[take..];
                    if *left == 0 {
                        state = State::Header;
                    }
                }
                State::End => {
                    // GNU tar pads archives to a record size; accept zeros only.
                    if data.iter().any(|&b| b != 0) {
                        return Err(Error::Corrupt(
                            "archive: data after the end-of-archive marker".into(),
                        ));
                    }
                    data = &[];
                }
            }
        }
    }
    match state {
        State::End => {}
        _ if !saw_any => return Err(Error::Corrupt("the archive is empty".into())),
        _ => {
            return Err(Error::Corrupt(
                "archive truncated: the stream ended before the end-of-archive marker".into(),
            ));
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files {
            out.extend_from_slice(&header(name, data.len() as u64, 0).unwrap());
            out.extend_from_slice(data);
            out.extend(std::iter::repeat_n(0u8, padding(data.len() as u64)));
        }
        out.extend_from_slice(&END);
        out
    }

    fn stream(data: Vec<u8>, piece: usize) -> ByteStream {
        let chunks: Vec<Result<Bytes>> = data
            .chunks(piece)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(chunks).boxed()
    }

    #[tokio::test]
    async fn round_trip_in_any_chunking() {
        let big = vec![7u8; 3000];
        let files: Vec<(&str, &[u8])> = vec![
            ("3001.dat.gz", b"hello"),
            ("empty.dat", b""),
            ("3002.dat", &big),
            ("toc.dat", b"PGDMP..."),
        ];
        let data = archive(&files);
        for piece in [1, 7, 512, 513, 100_000] {
            let dir = tempfile::tempdir().unwrap();
            let names = unpack(stream(data.clone(), piece), dir.path(), |_| true)
                .await
                .unwrap();
            assert_eq!(names.len(), 4);
            for (name, content) in &files {
                assert_eq!(&std::fs::read(dir.path().join(name)).unwrap(), content);
            }
        }
    }

    #[tokio::test]
    async fn filter_and_refusals() {
        let data = archive(&[("a.dat", b"x"), ("toc.dat", b"y")]);
        let dir = tempfile::tempdir().unwrap();
        let names = unpack(stream(data.clone(), 64), dir.path(), |n| n == "toc.dat")
            .await
            .unwrap();
        assert_eq!(names, vec!["toc.dat".to_string()]);
        assert!(!dir.path().join("a.dat").exists());

        // Truncated.
        let dir = tempfile::tempdir().unwrap();
        let cut = data[..data.len() - 1024].to_vec();
        let e = unpack(stream(cut, 64), dir.path(), |_| true).await;
        assert!(matches!(e, Err(Error::Corrupt(_))), "{e:?}");

        // A flipped byte in a header.
        let mut bad = data.clone();
        bad[3] ^= 1;
        let dir = tempfile::tempdir().unwrap();
        assert!(unpack(stream(bad, 64), dir.path(), |_| true).await.is_err());

        // Path traversal never gets a header.
        assert!(header("../etc/passwd", 1, 0).is_err());
        assert!(header("a/b", 1, 0).is_err());
        assert!(header(".hidden", 1, 0).is_err());
    }

    #[test]
    fn large_sizes_use_base_256() {
        let size = 20 * 1024 * 1024 * 1024u64;
        let h = header("1.dat", size, 0).unwrap();
        assert_eq!(parse_header(&h).unwrap(), ("1.dat".to_string(), size));
        let small = header("1.dat", 1234, 0).unwrap();
        assert_eq!(parse_header(&small).unwrap().1, 1234);
        assert!(is_header(&small));
    }
}
