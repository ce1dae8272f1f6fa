//! Stream transforms applied to the dump between pg_dump and storage
//! (compression, encryption) and their inverses on restore.
//!
//! A transform is push-based: feed input chunks, collect output bytes. The pipeline
//! hashes what comes out of the last transform, which is what storage holds.

use crate::error::Result;

/// One streaming stage. Implementations must not buffer without bound: output
/// produced for an input chunk should be appended to `out` in the same call,
/// apart from a bounded internal window.
pub trait Transform: Send {
    /// Name for logs and errors (`zstd`, `age`, ...).
    fn name(&self) -> &'static str;
    /// Process one input chunk, appending any output to `out`.
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()>;
    /// End of input: flush everything remaining into `out`.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<()>;
}

/// Run `input` through a chain of transforms, returning the final output.
/// `scratch` buffers are reused between calls to avoid per-chunk allocation.
pub fn apply_chain(
    chain: &mut [Box<dyn Transform>],
    input: &[u8],
    scratch: &mut [Vec<u8>; 2],
) -> Result<Vec<u8>> {
    let mut cur: Vec<u8> = input.to_vec();
    for t in chain.iter_mut() {
        let out = &mut scratch[0];
        out.clear();
        t.push(&cur, out)?;
        std::mem::swap(&mut cur, out);
    }
    Ok(cur)
}

/// Flush a chain at end of input: each stage's tail goes through the stages after it.
pub fn finish_chain(chain: &mut [Box<dyn Transform>]) -> Result<Vec<u8>> {
    let mut carry: Vec<u8> = Vec::new();
    for t in chain.iter_mut() {
        let mut out = Vec::new();
        if !carry.is_empty() {
            t.push(&carry, &mut out)?;
        }
        t.finish(&mut out)?;
        carry = out;
    }
    Ok(carry)
}
