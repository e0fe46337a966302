//! Caps on every length a bundle declares.

/// Caps on every length a bundle declares, checked before the length sizes a buffer or a read.
///
/// The defaults fit a device with a few hundred MiB to spare. What is ever held in memory at
/// once: the payload's window (`1 << window_log`, at most 128 MiB, allocated as the frame
/// needs it) and its frame dictionary (`max_dictionary`), plus, while one patch is applied, its
/// base range (`max_patch_base`), its output for bsdiff (`max_patch_output`) or its own zstd
/// window; never a layer or the payload.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest statement, bytes.
    pub max_statement: u32,
    /// Largest signature slot, bytes.
    pub max_signature_slot: u32,
    /// Most signatures in one slot.
    pub max_signatures: usize,
    /// Largest image config, bytes.
    pub max_config: u32,
    /// Most layers in the target image.
    pub max_layers: usize,
    /// Most base extents gathered into scratch.
    pub max_extents: u32,
    /// Largest window (zstd) or dictionary (LZMA2) log a payload may use (27 = 128 MiB), and
    /// the largest window of a zstd patch.
    pub max_window_log: u32,
    /// Largest payload, bytes.
    pub max_payload: u64,
    /// Largest decoded payload, bytes.
    pub max_decoded: u64,
    /// Largest scratch store for gathered base data, bytes.
    pub max_scratch: u64,
    /// Largest base range one patch operation may use as its dictionary/source (held in
    /// memory while that patch is applied).
    pub max_patch_base: u64,
    /// Largest output of one patch operation (held in memory by the bsdiff decoder).
    pub max_patch_output: u64,
    /// Largest dictionary of one frame of the payload (held in memory while the frame is
    /// decoded, beside the window).
    pub max_dictionary: u64,
    /// Largest gzip recipe of one layer, bytes (held in memory while the layer's blob is
    /// recreated).
    pub max_recipe: u64,
}

impl Default for Limits {
    fn default() -> Self {
        const GIB: u64 = 1 << 30;
        Limits {
            max_statement: 1 << 20,
            max_signature_slot: 64 << 10,
            max_signatures: 64,
            max_config: 16 << 20,
            max_layers: 1024,
            max_extents: 1 << 22,
            max_window_log: 27,
            max_payload: 64 * GIB,
            max_decoded: 256 * GIB,
            max_scratch: 64 * GIB,
            max_patch_base: 64 << 20,
            max_patch_output: 64 << 20,
            max_dictionary: 32 << 20,
            max_recipe: 64 << 20,
        }
    }
}
