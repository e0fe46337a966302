//! The bundle file: a fixed header, the statement, a signature slot, then the payload.
//!
//! ```text
//! offset 0   magic "SIDELOAD" (8 bytes)
//!        8   container version, u16 big-endian (2; readers also take 1)
//!       10   flags, u16 big-endian (0; readers refuse other values)
//!       12   stored statement length S, u32 big-endian
//!       16   signature slot length G, u32 big-endian
//!       20   12 zero bytes (reserved)
//!       32   statement: S bytes, one zstd frame of its canonical JSON made with the
//!            built-in dictionary (version 1: the canonical JSON itself)
//!     32+S   signature slot: G bytes, a JSON array of signatures padded with spaces
//!   32+S+G   payload: exactly statement.payload.size bytes, then end of file
//! ```
//!
//! The slot is reserved when the bundle is built, so attaching signatures later rewrites only
//! the slot, never the payload. Signatures cover the canonical JSON, not its compressed form,
//! so signers see and sign what the device acts on. See `docs/bundle-format.md`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use sideload_signing::Signature;

use crate::error::Error;
use crate::limits::Limits;

/// First bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"SIDELOAD";
/// The container version this build writes; it reads this one and version 1.
pub const CONTAINER_VERSION: u16 = 2;
/// The first container version, whose statement is stored as plain canonical JSON; still
/// read, so bundles built before version 2 (on a stick in a drawer) still apply.
pub const CONTAINER_VERSION_PLAIN_STATEMENT: u16 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: u64 = 32;
/// Bytes one Ed25519 signature takes in the slot: `{"key_id":"<16 hex>","signature":"<88
/// base64>"}` (132) and its comma.
pub const SIGNATURE_SLOT_BYTES_EACH: u32 = 133;
/// Default signature slot size: room for 3 signatures (a 2-of-3 policy, or one signer and a
/// spare). Every byte of it travels over the link, on an app update a few percent of the
/// bundle, so larger policies ask for more with `--signature-slot`.
pub const DEFAULT_SIGNATURE_SLOT: u32 = 2 + 3 * SIGNATURE_SLOT_BYTES_EACH;

/// zstd dictionary the statement is compressed with (container version 2): a few statements
/// of the shapes `sideload build` writes, with their digests, numbers and names taken out, so
/// what is left of a statement is mostly its digests. A 2 KB statement stores in about 450
/// bytes (zstd alone: 850). Frozen: a device decodes with its own copy, so changing one byte
/// needs a new container version (a test pins its sha256).
pub const STATEMENT_DICTIONARY: &[u8] = include_bytes!("statement.dict");

/// zstd level for the statement: it is a few KB, so the slowest level costs nothing.
const STATEMENT_LEVEL: i32 = 19;

/// The front of a bundle: everything needed to decide whether to trust it.
#[derive(Debug, Clone)]
pub struct BundleHead {
    /// Name used in messages (usually the file name).
    pub name: String,
    /// The statement's canonical JSON (what signatures cover), decompressed.
    pub statement_bytes: Vec<u8>,
    /// Bytes the statement takes in the file (compressed, in container version 2).
    pub statement_stored_len: u32,
    /// Signatures found in the slot.
    pub signatures: Vec<Signature>,
    /// Size of the signature slot.
    pub signature_slot: u32,
}

impl BundleHead {
    /// Offset of the signature slot in the file.
    pub fn signature_slot_offset(&self) -> u64 {
        HEADER_LEN + u64::from(self.statement_stored_len)
    }

    /// Offset of the payload in the file.
    pub fn payload_offset(&self) -> u64 {
        self.signature_slot_offset() + u64::from(self.signature_slot)
    }
}

/// What the fixed header declares, once it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Container version (1 or 2).
    pub version: u16,
    /// Bytes the stored statement takes.
    pub statement_len: u32,
    /// Bytes the signature slot takes.
    pub slot_len: u32,
}

impl Header {
    /// Bytes of the whole head: header, statement and signature slot.
    pub fn head_len(&self) -> u64 {
        HEADER_LEN + u64::from(self.statement_len) + u64::from(self.slot_len)
    }
}

/// Checks the fixed header alone: magic, version, flags, reserved bytes, and each declared
/// length against `limits`. A receiver calls it as soon as the first [`HEADER_LEN`] bytes are
/// in, so a head that declares more than the limits is refused before any of it is stored.
pub fn check_header(header: &[u8], name: &str, limits: &Limits) -> Result<Header, Error> {
    if header.len() < HEADER_LEN as usize || header[..8] != MAGIC {
        return Err(Error::NotABundle {
            bundle: name.to_owned(),
        });
    }
    let version = u16::from_be_bytes([header[8], header[9]]);
    let flags = u16::from_be_bytes([header[10], header[11]]);
    let known = version == CONTAINER_VERSION || version == CONTAINER_VERSION_PLAIN_STATEMENT;
    if !known || flags != 0 || header[20..HEADER_LEN as usize].iter().any(|&b| b != 0) {
        return Err(Error::UnsupportedVersion {
            bundle: name.to_owned(),
            found: version,
            supported: CONTAINER_VERSION,
        });
    }
    let statement_len = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
    let slot_len = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes"));
    check_limit(
        name,
        "statement",
        statement_len.into(),
        limits.max_statement.into(),
    )?;
    check_limit(
        name,
        "signature slot",
        slot_len.into(),
        limits.max_signature_slot.into(),
    )?;
    Ok(Header {
        version,
        statement_len,
        slot_len,
    })
}

/// Reads the header, statement and signatures from the front of a bundle. Reads at most
/// `HEADER_LEN + max_statement + max_signature_slot` bytes and allocates only after each length
/// is checked against `limits`.
pub fn read_head(reader: &mut impl Read, name: &str, limits: &Limits) -> Result<BundleHead, Error> {
    let mut header = [0u8; HEADER_LEN as usize];
    read_part(reader, &mut header, name, "header")?;
    let Header {
        version,
        statement_len,
        slot_len,
    } = check_header(&header, name, limits)?;

    let mut stored = vec![0u8; statement_len as usize];
    read_part(reader, &mut stored, name, "statement")?;
    let statement_bytes = if version == CONTAINER_VERSION_PLAIN_STATEMENT {
        stored
    } else {
        decompress_statement(&stored, name, limits)?
    };
    let mut slot = vec![0u8; slot_len as usize];
    read_part(reader, &mut slot, name, "signature slot")?;
    let signatures = decode_slot(&slot, name, limits)?;
    Ok(BundleHead {
        name: name.to_owned(),
        statement_bytes,
        statement_stored_len: statement_len,
        signatures,
        signature_slot: slot_len,
    })
}

/// The statement as a version 2 bundle stores it: one zstd frame with the built-in dictionary,
/// its content size in the frame header (the reader bounds its allocation by it), no
/// checksum (the signatures cover the decompressed bytes).
pub fn compress_statement(statement_bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut compressor =
        zstd::bulk::Compressor::with_dictionary(STATEMENT_LEVEL, STATEMENT_DICTIONARY)?;
    compressor.include_contentsize(true)?;
    compressor.include_checksum(false)?;
    compressor.include_dictid(false)?;
    compressor.compress(statement_bytes)
}

/// Decompresses a stored statement. The stored bytes are still unauthenticated here, so the
/// frame must declare its size, that size must be within the statement limit, the frame must
/// fill the stored bytes exactly (nothing appended that a signature would not cover), and the
/// output must be exactly the declared size.
fn decompress_statement(stored: &[u8], name: &str, limits: &Limits) -> Result<Vec<u8>, Error> {
    let undecodable = |reason: String| Error::UndecodableStatement {
        bundle: name.to_owned(),
        reason,
    };
    // Only a regular frame (its magic, as layer blobs are told apart): zstd also takes
    // skippable frames (any content, no output).
    if crate::image::compression::detect(stored) != crate::image::Compression::Zstd {
        return Err(undecodable("it is not a zstd frame".into()));
    }
    let declared = match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(n)) => n,
        Ok(None) => {
            return Err(undecodable(
                "its zstd frame does not declare its size".into(),
            ))
        }
        Err(_) => return Err(undecodable("it is not a zstd frame".into())),
    };
    check_limit(
        name,
        "statement (decompressed)",
        declared,
        limits.max_statement.into(),
    )?;
    match zstd::zstd_safe::find_frame_compressed_size(stored) {
        Ok(n) if n == stored.len() => {}
        Ok(n) => {
            return Err(undecodable(format!(
                "{} bytes follow its zstd frame",
                stored.len() - n
            )))
        }
        Err(code) => {
            return Err(undecodable(format!(
                "its zstd frame is damaged ({})",
                zstd::zstd_safe::get_error_name(code)
            )))
        }
    }
    let mut out = Vec::with_capacity(declared as usize);
    let written = zstd::bulk::Decompressor::with_dictionary(STATEMENT_DICTIONARY)
        .and_then(|mut d| d.decompress_to_buffer(stored, &mut out))
        .map_err(|e| undecodable(format!("its zstd frame does not decode ({e})")))?;
    if written as u64 != declared {
        return Err(undecodable(format!(
            "its zstd frame declares {declared} bytes but holds {written}"
        )));
    }
    Ok(out)
}

/// How many bytes the head (header, statement, signature slot) takes, from the fixed header
/// alone: lets a receiver know when enough of an upload has arrived to judge it. `None` if
/// `header` is shorter than [`HEADER_LEN`] or does not start with the bundle magic.
pub fn head_len(header: &[u8]) -> Option<u64> {
    if header.len() < HEADER_LEN as usize || header[..8] != MAGIC {
        return None;
    }
    let statement_len = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
    let slot_len = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes"));
    Some(HEADER_LEN + u64::from(statement_len) + u64::from(slot_len))
}

/// Opens a bundle file and reads its head; the file is left positioned at the payload.
pub fn open_bundle(path: &Path, limits: &Limits) -> Result<(BundleHead, File), Error> {
    let mut file = open_regular(path, OpenOptions::new().read(true), "opening bundle")?;
    let head = read_head(&mut file, &bundle_name(path), limits)?;
    Ok((head, file))
}

/// Opens a bundle file, refusing anything but a regular file before opening it: opening a FIFO
/// waits for a writer that may never come (a `sideload inspect` that hangs), and a device or
/// a directory is no bundle. The kind is checked again on the open file, in case the path was
/// replaced in between.
fn open_regular(path: &Path, options: &OpenOptions, what: &'static str) -> Result<File, Error> {
    let not_regular = |kind: std::fs::FileType| Error::NotAFile {
        path: path.to_owned(),
        kind: file_kind(kind),
    };
    let meta = std::fs::metadata(path).map_err(Error::io(what, path))?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let file = options.open(path).map_err(Error::io(what, path))?;
    let opened = file.metadata().map_err(Error::io(what, path))?;
    if !opened.is_file() {
        return Err(not_regular(opened.file_type()));
    }
    Ok(file)
}

/// What a file that is not a regular file is, for messages.
fn file_kind(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO (named pipe)"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// The name a bundle goes by in messages: its file name.
pub fn bundle_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Writes a complete bundle: header, statement, a signature slot holding `signatures`, then
/// the payload copied from `payload`.
pub fn write_bundle(
    out: &mut impl Write,
    statement_bytes: &[u8],
    signatures: &[Signature],
    slot_len: u32,
    payload: &mut impl Read,
) -> std::io::Result<u64> {
    let slot = encode_slot(signatures, slot_len).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("signatures do not fit a {slot_len}-byte slot"),
        )
    })?;
    let stored = compress_statement(statement_bytes)?;
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(&MAGIC);
    header[8..10].copy_from_slice(&CONTAINER_VERSION.to_be_bytes());
    let statement_len = u32::try_from(stored.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "statement too large")
    })?;
    header[12..16].copy_from_slice(&statement_len.to_be_bytes());
    header[16..20].copy_from_slice(&slot_len.to_be_bytes());
    out.write_all(&header)?;
    out.write_all(&stored)?;
    out.write_all(&slot)?;
    let copied = std::io::copy(payload, out)?;
    Ok(HEADER_LEN + stored.len() as u64 + u64::from(slot_len) + copied)
}

/// Adds signatures to a bundle, rewriting only its signature slot. A signature by a key already
/// in the slot replaces the old one. Returns the signatures now in the slot.
///
/// Nothing here checks that a signature covers this bundle's statement: callers that take
/// signatures from outside (`sideload attach`) check them against the public keys first.
///
/// The write is atomic: a bundle with one link is copied aside with the new slot (the payload
/// copy is an in-kernel `copy_file_range`, a reflink where the filesystem has them), synced,
/// renamed over the original and the folder synced, so a crash leaves the old bundle or the new
/// one, never a torn slot. A bundle with several hard links (a fleet's outboxes share one file,
/// so one attach signs every copy) is rewritten in place instead, its slot in one `pwrite`
/// within the head, then synced: a rename would leave the other links unsigned.
pub fn attach_signatures(
    path: &Path,
    new: &[Signature],
    limits: &Limits,
) -> Result<Vec<Signature>, Error> {
    let mut file = open_regular(path, OpenOptions::new().read(true), "opening bundle")?;
    let head = read_head(&mut file, &bundle_name(path), limits)?;
    let mut signatures = head.signatures.clone();
    for sig in new {
        signatures.retain(|s| s.key_id != sig.key_id);
        signatures.push(sig.clone());
    }
    if signatures.len() > limits.max_signatures {
        return Err(Error::SignatureSlotFull {
            bundle: head.name,
            slot: head.signature_slot,
        });
    }
    let slot = encode_slot(&signatures, head.signature_slot).ok_or(Error::SignatureSlotFull {
        bundle: head.name.clone(),
        slot: head.signature_slot,
    })?;
    let links = std::os::unix::fs::MetadataExt::nlink(
        &file
            .metadata()
            .map_err(Error::io("reading metadata of", path))?,
    );
    if links > 1 {
        rewrite_slot_in_place(path, head.signature_slot_offset(), &slot)
            .map_err(Error::io("writing signature slot of", path))?;
    } else {
        replace_with_new_slot(path, &mut file, &head, &slot)
            .map_err(Error::io("writing signed copy of", path))?;
    }
    Ok(signatures)
}

/// Writes `slot` at `offset` of the bundle at `path` in one write, and syncs it.
fn rewrite_slot_in_place(path: &Path, offset: u64, slot: &[u8]) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    std::os::unix::fs::FileExt::write_all_at(&file, slot, offset)?;
    file.sync_all()
}

/// Copies the bundle `original` (open at `path`) beside itself with `slot` in place of its
/// signature slot, syncs the copy, renames it over `path` and syncs the folder. The copy keeps
/// the original's permissions; on any error it is removed and the original is untouched.
fn replace_with_new_slot(
    path: &Path,
    original: &mut File,
    head: &BundleHead,
    slot: &[u8],
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = original.metadata()?.permissions().mode() & 0o7777;
    crate::fsutil::replace_file(path, mode, |copy| {
        original.seek(SeekFrom::Start(0))?;
        std::io::copy(
            &mut Read::by_ref(original).take(head.signature_slot_offset()),
            copy,
        )?;
        copy.write_all(slot)?;
        original.seek(SeekFrom::Start(head.payload_offset()))?;
        std::io::copy(original, copy)?;
        Ok(())
    })
}

/// The slot's bytes: compact JSON array, padded with spaces. `None` if it does not fit.
fn encode_slot(signatures: &[Signature], slot_len: u32) -> Option<Vec<u8>> {
    let mut bytes = serde_json::to_vec(signatures).expect("signatures serialize");
    if bytes.len() > slot_len as usize {
        return None;
    }
    bytes.resize(slot_len as usize, b' ');
    Some(bytes)
}

fn decode_slot(slot: &[u8], name: &str, limits: &Limits) -> Result<Vec<Signature>, Error> {
    let malformed = |reason: String| Error::MalformedSignatures {
        bundle: name.to_owned(),
        reason,
    };
    let end = slot.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    if end == 0 {
        return Err(malformed(
            "the slot is empty (not even an empty list)".into(),
        ));
    }
    let signatures: Vec<Signature> =
        serde_json::from_slice(&slot[..end]).map_err(|e| malformed(e.to_string()))?;
    if signatures.len() > limits.max_signatures {
        return Err(malformed(format!(
            "{} signatures, more than the {} allowed",
            signatures.len(),
            limits.max_signatures
        )));
    }
    Ok(signatures)
}

fn read_part(
    reader: &mut impl Read,
    buf: &mut [u8],
    name: &str,
    part: &'static str,
) -> Result<(), Error> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(Error::Truncated {
                    bundle: name.to_owned(),
                    part,
                    expected: buf.len() as u64,
                    available: filled as u64,
                })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "reading bundle",
                    path: name.into(),
                    source,
                })
            }
        }
    }
    Ok(())
}

pub(crate) fn check_limit(
    name: &str,
    field: &'static str,
    value: u64,
    limit: u64,
) -> Result<(), Error> {
    if value > limit {
        return Err(Error::OverLimit {
            bundle: name.to_owned(),
            field,
            value,
            limit,
        });
    }
    Ok(())
}
