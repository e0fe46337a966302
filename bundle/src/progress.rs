//! Progress reporting, kept out of the engine's way: the CLI draws bars, tests see nothing.

/// Receives progress of long operations. Every method has a no-op default.
pub trait Progress: Sync {
    /// A new step starts; `total` is its expected byte count (0 if unknown).
    fn start(&self, _what: &str, _total: u64) {}
    /// `bytes` more of the current step are done.
    fn advance(&self, _bytes: u64) {}
    /// The current step is done.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
