//! A bit-exact port of `github.com/klauspost/compress/flate` **1.15.12** (Debian bookworm's
//! `golang-github-klauspost-compress-dev`), the deflate encoder under `klauspost/pgzip`.
//!
//! # Design overview
//!
//! klauspost's encoder is not Go's: levels 1 to 6 are "fast" matchers (`level1.go` …
//! `level6.go`) run over windows of 65 535 bytes with a history of up to 320 KiB, and its block
//! writer keeps dynamic tables open across windows, estimating with float32 Shannon sums
//! whether a new table pays. It shares nothing with the standard-library port beside it
//! (`super::deflate` and friends), so changes here cannot move that port's proven bytes.
//! Modules, one per Go file:
//!
//! - this file — `deflate.go`, the fast-level path only (`storeFast`, `fillWindow`,
//!   `ResetDict`, `Flush`, `Close`);
//! - `fast` — `fast_encoder.go` and the level matchers;
//! - `bitwriter` — `huffman_bit_writer.go`;
//! - `huffman` — `huffman_code.go` (sorting is by a total order, so any sort agrees);
//! - `token` — `token.go`.
//!
//! The core is sans-I/O: compressed bytes collect in the bit writer's buffer and the caller
//! takes them after each call, at most one window's worth (~70 KiB).
//!
//! # What is ported
//!
//! Level 5 only (what `flate.DefaultCompression` maps to, and so what `pgzip.NewWriter` and
//! containers/image write). Levels 0, -2, 1 to 4 and 6 to 9 are refused by [`Compressor::new`].
//! The float32 arithmetic of `EstimatedBits` is reproduced as Go compiles it on amd64 (no fused
//! multiply-add); Go on arm64 may fuse it, so blobs written by arm64 builds are unproven.

mod bitwriter;
mod fast;
mod huffman;
mod token;

use bitwriter::HuffmanBitWriter;
use fast::{FastEnc, MAX_MATCH_OFFSET};
use token::{Tokens, MAX_STORE_BLOCK_SIZE};

/// The library version this port reproduces, as recipes name it.
pub const KLAUSPOST_COMPRESS_VERSION: &str = "1.15.12";

/// klauspost's `compressor` for the fast levels.
pub(crate) struct Compressor {
    window: Vec<u8>,
    tokens: Tokens,
    fast: FastEnc,
    w: HuffmanBitWriter,
    sync: bool,
}

impl Compressor {
    /// `NewWriter(w, level)` for a ported level (-1 means 5); `None` otherwise.
    pub(crate) fn new(level: i32) -> Option<Compressor> {
        let level = if level == -1 { 5 } else { level };
        let fast = FastEnc::new(level)?;
        let mut w = HuffmanBitWriter::new();
        w.log_new_table_penalty = 7;
        Some(Compressor {
            window: Vec::with_capacity(MAX_STORE_BLOCK_SIZE),
            tokens: Tokens::new(),
            fast,
            w,
            sync: false,
        })
    }

    /// The compressed bytes produced so far (take them with `std::mem::take` or `drain`).
    pub(crate) fn output(&mut self) -> &mut Vec<u8> {
        &mut self.w.out
    }

    /// `ResetDict`: start a new stream as if `dict` had been written without output.
    pub(crate) fn reset_dict(&mut self, dict: &[u8]) {
        // reset
        self.w.reset();
        self.sync = false;
        self.fast.reset();
        self.window.clear();
        self.tokens.reset();
        // fillWindow: encode the dictionary's last 32 KiB and discard the tokens.
        let dict = &dict[dict.len().saturating_sub(MAX_MATCH_OFFSET as usize)..];
        self.fast.encode(&mut self.tokens, dict);
        self.tokens.reset();
    }

    /// `Write`: whole windows are compressed when the next byte arrives, so the output does
    /// not depend on how the input is split.
    pub(crate) fn write(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.window.len() == MAX_STORE_BLOCK_SIZE || self.sync {
                self.store_fast();
            }
            let n = b.len().min(MAX_STORE_BLOCK_SIZE - self.window.len());
            self.window.extend_from_slice(&b[..n]);
            b = &b[n..];
        }
    }

    /// `storeFast`.
    fn store_fast(&mut self) {
        // We only compress if we have maxStoreBlockSize.
        if self.window.len() < MAX_STORE_BLOCK_SIZE {
            if !self.sync {
                return;
            }
            // Handle extremely small sizes.
            if self.window.len() < 128 {
                if self.window.is_empty() {
                    return;
                }
                if self.window.len() <= 32 {
                    self.w.write_stored_header(self.window.len(), false);
                    self.w.write_bytes(&self.window);
                } else {
                    self.w.write_block_huff(false, &self.window, true);
                }
                self.tokens.reset();
                self.window.clear();
                self.fast.reset();
                return;
            }
        }
        self.fast.encode(&mut self.tokens, &self.window);
        let window_end = self.window.len();
        if self.tokens.n == 0 {
            // If we made zero matches, store the block as is.
            self.w.write_stored_header(window_end, false);
            self.w.write_bytes(&self.window);
        } else if i64::from(self.tokens.n) > (window_end - (window_end >> 4)) as i64 {
            // If we removed less than 1/16th, huffman compress the block.
            self.w.write_block_huff(false, &self.window, self.sync);
        } else {
            self.w
                .write_block_dynamic(&mut self.tokens, false, Some(&self.window), self.sync);
        }
        self.tokens.reset();
        self.window.clear();
    }

    /// `Flush`: compress what is buffered and write a sync marker (`00 00 ff ff`).
    pub(crate) fn sync_flush(&mut self) {
        self.sync = true;
        self.store_fast();
        self.w.write_stored_header(0, false);
        self.w.flush();
        self.sync = false;
    }

    /// `Close`: compress what is buffered and write the final empty block.
    pub(crate) fn close(&mut self) {
        self.sync = true;
        self.store_fast();
        self.w.write_stored_header(0, true);
        self.w.flush();
        self.w.reset();
    }
}
