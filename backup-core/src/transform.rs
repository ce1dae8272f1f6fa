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

/// Run a whole buffer through a chain and finish it: what the chain stores for `input`.
pub fn encode_all(chain: &mut [Box<dyn Transform>], input: &[u8]) -> Result<Vec<u8>> {
    let mut carry = input.to_vec();
    for t in chain.iter_mut() {
        let mut out = Vec::new();
        t.push(&carry, &mut out)?;
        carry = out;
    }
    carry.extend(finish_chain(chain)?);
    Ok(carry)
}
