//! Fuzz bodies for every parser of untrusted input, one public function per fuzz target.
//!
//! Each function takes the fuzzer's bytes, feeds them to one parser through the crates' public
//! API with small [`Limits`], and checks what must hold whatever the input (a parsed value
//! round-trips, a length the parser accepted is within its limit). A panic, a hang or an
//! allocation over libFuzzer's limit is a finding. `fuzz_targets/NAME.rs` wraps `NAME` for
//! libFuzzer; `tests/seeds.rs` runs every body over every committed seed in `seeds/NAME/`
//! as a plain `cargo test`, so a crash once found stays fixed without libFuzzer.
//!
//! The bodies only read: whatever touches the disk (the docker-archive and config targets,
//! the stick scan) works in a private temporary directory.

#![warn(missing_docs)]

use std::io::{self, BufReader, Cursor, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::OnceLock;

use sideload_bundle::container::{head_len, read_head};
use sideload_bundle::gzip_recipe::GzipRecipe;
use sideload_bundle::image::docker_archive::{DockerArchiveSource, TarIndex};
use sideload_bundle::image::oci_layout::{BlobStore, OciLayoutSource};
use sideload_bundle::image::{spec, ImageError, ImageSource};
use sideload_bundle::payload::{read_body_varint, PayloadReader, Record};
use sideload_bundle::stream::CappedReader;
use sideload_bundle::{judge_head, Holdings, Limits, Trust};
use sideload_signing::{
    parse_statement, verify_statement, Digest, Signature, SigningKey, Statement, TrustPolicy,
    VerifyContext,
};

/// The fuzzing key: a test key, committed so that seeds signed with it stay valid. It is trusted
/// only by the policy these bodies build; nothing else ever trusts it.
pub const FUZZ_KEY_PEM: &str = include_str!("../keys/fuzz.key");

/// A statement `sideload build` wrote for a tiny image (from `tests/make_seeds.rs`).
pub const SEED_STATEMENT: &[u8] = include_bytes!("../seeds/statement/built.json");

/// Small caps, so that an input that tries to make a parser allocate is refused quickly.
pub fn limits() -> Limits {
    Limits {
        max_statement: 64 << 10,
        max_signature_slot: 16 << 10,
        max_signatures: 8,
        max_config: 64 << 10,
        max_layers: 16,
        max_extents: 1 << 10,
        max_window_log: 20,
        max_payload: 1 << 20,
        max_decoded: 4 << 20,
        max_scratch: 1 << 20,
        max_patch_base: 64 << 10,
        max_patch_output: 64 << 10,
        max_dictionary: 64 << 10,
        max_recipe: 64 << 10,
    }
}

/// The fuzzing key.
pub fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_pem(FUZZ_KEY_PEM).expect("the fuzz key parses"))
}

/// A policy trusting only the fuzzing key, for every repository.
pub fn policy() -> &'static TrustPolicy {
    static POLICY: OnceLock<TrustPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let text = sideload_signing::key_entry_toml(
            &key().public_key(),
            &["*".parse().expect("pattern")],
            Some("fuzz"),
        );
        TrustPolicy::from_toml(
            &format!("threshold = 1\n{text}"),
            Path::new("fuzz-policy.toml"),
        )
        .expect("the fuzz policy parses")
    })
}

/// A context in which the seed statements are neither expired nor replayed.
fn context() -> VerifyContext {
    VerifyContext {
        now: 1_700_000_000,
        recorded_sequence: None,
    }
}

/// The receiver's side of the trust decision, at [`context`]'s time.
fn trust(limits: &Limits) -> Trust<'_> {
    Trust {
        policy: policy(),
        limits,
        now: context().now,
    }
}

/// A private scratch directory for the bodies that must touch the disk:
/// `sideload-fuzz-PID` in /dev/shm (or the temp dir). libFuzzer ends the process with `exit`,
/// so nothing removes it then; each run removes those of processes that are gone instead.
fn scratch() -> &'static Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            Path::new("/dev/shm").to_owned()
        } else {
            std::env::temp_dir()
        };
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix("sideload-fuzz-"));
            if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = base.join(format!("sideload-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("scratch directory");
        dir
    })
}

/// Bundle container head: header, statement (zstd with the built-in dictionary), signature
/// slot; then the trust decision on whatever parsed.
pub fn bundle_head(data: &[u8]) {
    let limits = limits();
    let Ok(head) = read_head(&mut &data[..], "fuzz.bundle", &limits) else {
        return;
    };
    // The receiver sizes its wait for the head from the fixed header alone: both must agree.
    assert_eq!(head_len(data), Some(head.payload_offset()));
    assert!(head.statement_bytes.len() <= limits.max_statement as usize);
    assert!(head.signatures.len() <= limits.max_signatures);
    let _ = judge_head(head, &trust(&limits), Holdings::<()>::none());
}

/// Statement: the strict parse, canonical form, the statement's own checks and the signature
/// check (signed by the fuzz key, so the decision runs past the signatures).
pub fn statement(data: &[u8]) {
    let Ok(statement) = parse_statement(data) else {
        return;
    };
    let canonical = statement.to_canonical_json();
    let again = Statement::from_canonical_json(&canonical).expect("canonical form parses");
    assert_eq!(
        again.to_canonical_json(),
        canonical,
        "canonical form is stable"
    );
    let _ = sideload_bundle::verify::check_statement("fuzz.bundle", &statement, &limits());
    let _ = sideload_bundle::manifest::check_statement_manifest(&statement.target);
    let _ = sideload_signing::summary::statement_summary(&statement, data);
    let signature = key().sign_statement(data);
    let _ = verify_statement(data, &[signature], policy(), &context());
}

/// Signature slot: the bytes as the slot of a version-1 bundle around the seed statement.
pub fn signature_slot(data: &[u8]) {
    let Ok(slot_len) = u32::try_from(data.len()) else {
        return;
    };
    let mut bundle = Vec::with_capacity(32 + SEED_STATEMENT.len() + data.len());
    bundle.extend_from_slice(b"SIDELOAD");
    bundle.extend_from_slice(&1u16.to_be_bytes());
    bundle.extend_from_slice(&0u16.to_be_bytes());
    bundle.extend_from_slice(&(SEED_STATEMENT.len() as u32).to_be_bytes());
    bundle.extend_from_slice(&slot_len.to_be_bytes());
    bundle.extend_from_slice(&[0; 12]);
    bundle.extend_from_slice(SEED_STATEMENT);
    bundle.extend_from_slice(data);
    let limits = limits();
    let Ok(head) = read_head(&mut &bundle[..], "fuzz.bundle", &limits) else {
        return;
    };
    assert!(head.signatures.len() <= limits.max_signatures);
    for signature in &head.signatures {
        let _ = Signature::from_json(&signature.to_json()).expect("a slot signature re-parses");
    }
    let _ = judge_head(head, &trust(&limits), Holdings::<()>::none());
}

/// Payload records: the record stream as the decoder pulls it, bodies read through the
/// bounded readers (MIX_RUNS bodies as their varint runs).
pub fn payload_records(data: &[u8]) {
    let limits = limits();
    let mut reader = PayloadReader::new(Cursor::new(data), limits.max_extents);
    for _ in 0..10_000 {
        let record = match reader.next_record() {
            Ok(record) => record,
            Err(_) => return,
        };
        let body_len = match &record {
            Record::Extents(extents) => {
                assert!(extents.len() <= limits.max_extents as usize);
                0
            }
            Record::Frame(ranges) => {
                assert!(ranges.len() <= limits.max_extents as usize);
                0
            }
            Record::Config { len } => u64::from(*len),
            Record::Blob { len, .. }
            | Record::Recipe { len, .. }
            | Record::LayerRecipe { len }
            | Record::Literal { len }
            | Record::LiteralX86 { len } => *len,
            Record::Mix { len, .. } => *len,
            Record::MixRuns { body_len, .. } => {
                let mut body = reader.body(*body_len);
                while let Ok(Some(_)) = read_body_varint(&mut body) {}
                let _ = io::copy(&mut body, &mut io::sink());
                continue;
            }
            Record::Patch { patch_len, .. } => *patch_len,
            Record::End => {
                let _ = reader.expect_eof();
                return;
            }
            Record::Copy { .. } | Record::Present { .. } | Record::Layer { .. } => 0,
            Record::EndLayer => 0,
        };
        if io::copy(&mut reader.body(body_len), &mut io::sink()).is_err() {
            return;
        }
    }
}

/// Splits `[flags u8][base_len u16 LE][base][patch]`.
fn base_and_patch(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&flags, rest) = data.split_first()?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_le_bytes(*len));
    (rest.len() >= len).then(|| (flags, &rest[..len], &rest[len..]))
}

/// bsdiff patch decoder (plain and x86): `[flags][base_len u16][base][patch]`, flags bit 0
/// picks the x86 form.
pub fn patch_bsdiff(data: &[u8]) {
    let Some((flags, base, patch)) = base_and_patch(data) else {
        return;
    };
    let max_out = limits().max_patch_output as usize;
    let result = if flags & 1 == 0 {
        sideload_bundle::bspatch::apply(base, patch, max_out)
    } else {
        sideload_bundle::bspatch::apply_x86(base, patch, max_out)
    };
    if let Ok(out) = result {
        assert!(out.len() <= max_out, "output beyond its cap");
    }
}

/// zstd patch decoder, configured as the decoder configures it: the base as a referenced
/// prefix, the window capped, one frame, the output capped, nothing after the frame.
pub fn patch_zstd(data: &[u8]) {
    let Some((_, base, patch)) = base_and_patch(data) else {
        return;
    };
    let limits = limits();
    let out_len = limits.max_patch_output;
    let Ok(mut dec) = zstd::stream::read::Decoder::with_ref_prefix(BufReader::new(patch), base)
    else {
        return;
    };
    if dec.window_log_max(limits.max_window_log).is_err() {
        return;
    }
    let mut dec = dec.single_frame();
    let mut capped = CappedReader::new(&mut dec, out_len, "patch output");
    if let Ok(n) = io::copy(&mut capped, &mut io::sink()) {
        assert!(n <= out_len);
        let _ = dec.finish().buffer().is_empty();
    }
}

/// gzip recipe: its own binary encoding; a parsed recipe re-encodes to a recipe that parses
/// to the same value, and its encoded length is what it says. Read as the recipe of a layer
/// too (a recipe may leave its plain length to the layer's size), the layer's size taken from
/// the input's length; re-encoded for that layer, it parses back equal.
pub fn gzip_recipe(data: &[u8]) {
    let max_chunks = sideload_bundle::gzip_recipe::max_chunks(1 << 20);
    let layer_size = data.len() as u64 * 977;
    if let Ok(recipe) = GzipRecipe::from_bytes_in_layer(data, layer_size, max_chunks) {
        let bytes = recipe.to_bytes_in_layer(layer_size);
        let again = GzipRecipe::from_bytes_in_layer(&bytes, layer_size, max_chunks)
            .expect("re-encoded recipe parses in its layer");
        assert_eq!(again, recipe);
    }
    let Ok(recipe) = GzipRecipe::from_bytes(data, max_chunks) else {
        return;
    };
    let bytes = recipe.to_bytes();
    assert_eq!(recipe.encoded_len(), bytes.len() as u64);
    let again = GzipRecipe::from_bytes(&bytes, max_chunks).expect("re-encoded recipe parses");
    assert_eq!(again, recipe);
    let _ = recipe.describe();
    let _ = recipe.plain_len();
}

/// The device API as its clients read it (`sideload push`, the USB loader, the fleet ledger):
/// the first byte picks an HTTP status and whether an `Upload-Offset` came with it, the rest is
/// the body. Every answer type that parses serialises and parses back equal; `classify` never
/// fails on any answer; a state word that parses is its own name.
pub fn device_answers(data: &[u8]) {
    use sideload_device_api as api;
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    const STATUSES: [u16; 8] = [200, 201, 202, 204, 400, 403, 409, 503];
    let status = STATUSES[usize::from(pick) % STATUSES.len()];
    let offset = (pick & 0x80 != 0).then_some(u64::from(pick));
    let _ = api::classify(status, offset, body);
    round_trips::<api::UploadCreated>(body);
    round_trips::<api::Taken>(body);
    round_trips::<api::Known>(body);
    round_trips::<api::BundleStatus>(body);
    round_trips::<api::BundleList>(body);
    round_trips::<api::JournalPage>(body);
    round_trips::<api::Health>(body);
    round_trips::<api::ErrorBody>(body);
    round_trips::<api::Inventory>(body);
    round_trips::<api::Receipt>(body);
    if let Ok(word) = std::str::from_utf8(body) {
        if let Ok(state) = word.parse::<api::BundleState>() {
            assert_eq!(state.as_str().parse::<api::BundleState>().ok(), Some(state));
        }
        if let Ok(state) = word.parse::<api::ReceiptState>() {
            assert_eq!(
                state.as_str().parse::<api::ReceiptState>().ok(),
                Some(state)
            );
        }
    }
}

/// If `body` parses as a `T`, its JSON parses back to the same `T`.
fn round_trips<T>(body: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(value) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let again = serde_json::to_vec(&value).expect("a parsed answer serialises");
    let back: T = serde_json::from_slice(&again).expect("a serialised answer parses");
    assert_eq!(back, value);
}

/// Tar scanning of images: the docker-archive index and the layer scanner of the encoder.
pub fn tar_scan(data: &[u8]) {
    if let Ok(index) = TarIndex::scan(Cursor::new(data)) {
        for name in ["manifest.json", "index.json", "oci-layout", "repositories"] {
            if let Some(span) = index.lookup(name) {
                assert!(span.offset.saturating_add(span.size) <= data.len() as u64);
            }
        }
    }
    let _ = sideload_bundle::delta::scan_layer(Cursor::new(data));
}

/// Reads an image's layers to their end or their first error, at most 1 MiB each.
fn drain_layers(source: &dyn ImageSource) {
    for index in 0..source.image().layers.len().min(8) {
        if let Ok(layer) = source.open_layer(index) {
            let _ = io::copy(&mut layer.take(1 << 20), &mut io::sink());
        }
    }
}

/// docker-archive: the whole `docker save` tar (manifest.json or an OCI index inside),
/// opened as the build side opens it, then its layers read through their checks.
pub fn docker_archive(data: &[u8]) {
    let path = scratch().join("image.tar");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let platform = spec::linux_amd64();
    for name in [None, Some("edge/app:v2")] {
        if let Ok(source) = DockerArchiveSource::open(&path, name, &platform, "fuzz") {
            drain_layers(&source);
        }
    }
}

/// An OCI layout held in memory: `oci-layout`, `index.json`, then blobs found by digest.
struct MemStore {
    marker: Vec<u8>,
    index: Vec<u8>,
    blobs: Vec<(Digest, Vec<u8>)>,
}

impl BlobStore for MemStore {
    fn name(&self) -> &str {
        "fuzz-layout"
    }

    fn open_blob(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Box<dyn Read + Send + '_>, u64)>, ImageError> {
        Ok(self
            .blobs
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, b)| (Box::new(&b[..]) as Box<dyn Read + Send>, b.len() as u64)))
    }

    fn read_file(&self, name: &'static str, limit: u64) -> Result<Option<Vec<u8>>, ImageError> {
        let bytes = match name {
            "index.json" => &self.index,
            _ => &self.marker,
        };
        if bytes.len() as u64 > limit {
            return Err(ImageError::Io {
                image: "fuzz-layout".into(),
                action: "read",
                path: name.into(),
                source: io::Error::new(io::ErrorKind::InvalidData, "too large"),
            });
        }
        Ok(Some(bytes.clone()))
    }
}

/// OCI layout: `oci-layout`, `index.json`, then blobs (manifests, indexes, configs, layers),
/// separated by NUL bytes; each blob is found by its sha256.
pub fn oci_layout(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0);
    let marker = parts.next().unwrap_or_default().to_vec();
    let index = parts.next().unwrap_or_default().to_vec();
    let blobs = parts
        .take(16)
        .map(|b| (Digest::of_bytes(b), b.to_vec()))
        .collect();
    let store = MemStore {
        marker,
        index,
        blobs,
    };
    let platform = spec::linux_amd64();
    if let Ok(source) = OciLayoutSource::open_in(store, None, &platform, "fuzz") {
        drain_layers(&source);
    }
    // The same bytes straight to the JSON parsers.
    let _ = spec::parse_index(data, "fuzz", "index");
    let _ = spec::parse_config(data, "fuzz");
    let _ = spec::parse_archive_manifest(data, "fuzz");
}

/// The upload token the fuzzed `Authorization` headers are checked against.
const TOKEN: &str = "fuzz-upload-token";

fn auth() -> &'static sideload_registry_plugin::auth::Auth {
    static AUTH: OnceLock<sideload_registry_plugin::auth::Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let file = scratch().join("token");
        std::fs::write(&file, format!("{TOKEN}\n")).expect("token file");
        let config: sideload_registry_plugin::config::AuthConfig = toml::from_str(&format!(
            "upload_token_file = {:?}",
            file.display().to_string()
        ))
        .expect("auth config");
        sideload_registry_plugin::auth::Auth::load(&config).expect("auth loads")
    })
}

/// The upload API's header parsing, at its pure layers: the `Authorization` check, the
/// numeric `Upload-Offset`/`Upload-Length` values, and the head length a receiver reads from
/// the first 32 bytes of an upload. (The request handlers themselves read headers inline in
/// `registry-plugin/src/server.rs`; they are exercised by its HTTP tests.)
pub fn upload_headers(data: &[u8]) {
    use sideload_registry_plugin::auth::Scope;
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let _ = head_len(rest);
    let Ok(value) = hyper::header::HeaderValue::from_bytes(rest) else {
        return;
    };
    let _ = value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
    let scope = match selector % 4 {
        0 => Scope::Upload,
        1 => Scope::Status,
        2 => Scope::Operator,
        _ => Scope::Open,
    };
    request_checks(selector, rest, &value);
    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let allowed = auth().check(scope, peer, Some(&value)).is_ok();
    if allowed && matches!(scope, Scope::Upload | Scope::Operator) {
        let text = String::from_utf8_lossy(rest);
        let (scheme, token) = text.trim().split_once(' ').expect("a bearer value");
        assert!(scheme.eq_ignore_ascii_case("bearer"));
        assert_eq!(token.trim(), TOKEN, "only the token lets an upload through");
    }
}

/// The request checks of `registry-plugin/src/request.rs` that run before a body byte is read:
/// the value as each header they read, the bytes as a path to route. An accepted
/// `Bundle-Name` is the name the clients' encoding gives back.
fn request_checks(selector: u8, raw: &[u8], value: &hyper::header::HeaderValue) {
    use sideload_registry_plugin::request::{self, BundleName};
    let mut headers = hyper::HeaderMap::new();
    let name = [
        "upload-offset",
        "upload-length",
        "transfer-encoding",
        "content-encoding",
    ][usize::from(selector >> 2) % 4];
    headers.append(name, value.clone());
    if selector & 0x80 != 0 {
        headers.append(name, value.clone());
    }
    let _ = request::upload_offset(&headers);
    let _ = request::upload_length(&headers);
    let _ = request::check_body_codings(&headers, selector & 0x40 != 0);
    if let Ok(decoded) = BundleName::from_header(value) {
        let again = sideload_bundle::text::bundle_name_header(decoded.as_str());
        let again = hyper::header::HeaderValue::from_str(&again).expect("encoded names are ASCII");
        assert_eq!(
            BundleName::from_header(&again).expect("re-encoded"),
            decoded
        );
    }
    if let Ok(text) = std::str::from_utf8(raw) {
        if BundleName::new(text).is_ok() {
            let header = sideload_bundle::text::bundle_name_header(text);
            let header = hyper::header::HeaderValue::from_str(&header).expect("ASCII");
            assert_eq!(
                BundleName::from_header(&header)
                    .expect("round trip")
                    .as_str(),
                text
            );
        }
        let segments: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
        for method in [
            hyper::Method::GET,
            hyper::Method::PUT,
            hyper::Method::DELETE,
        ] {
            let _ = request::route(&method, &segments);
        }
    }
}

/// Trust policy files (TOML).
pub fn trust_policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = TrustPolicy::from_toml(text, Path::new("fuzz-policy.toml")) else {
        return;
    };
    assert!(policy.threshold() >= 1);
    for key in policy.keys() {
        assert!(policy.key(&key.id).is_some());
        for repo in ["edge/app", "library/busybox", "a"] {
            let _ = key.allows(&repo.parse().expect("repository"));
        }
    }
}

/// Config files of the daemons: the registry plugin's (first byte even) and the USB loader's
/// (odd), loaded from a file as the daemons load them.
pub fn config_files(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let path = scratch().join("config.toml");
    if std::fs::write(&path, rest).is_err() {
        return;
    }
    if selector % 2 == 0 {
        if let Ok(config) = sideload_registry_plugin::config::Config::load(&path) {
            let _ = config.inbox_dir();
            let _ = config.quarantine_dir();
        }
    } else {
        let _ = sideload_usb_loader::config::Config::load(&path, true);
    }
}

/// Stick folder scanning: a folder built from the input, one entry a line:
/// `f NAME SIZE` (file of zeros), `h NAME LENS` (a file with a bundle header), `d NAME`
/// (folder), `l NAME TARGET` (symlink). Scanned with small
/// caps; what the scan accepts must have a checked name and open as a regular file.
pub fn stick_scan(data: &[u8]) {
    use sideload_usb_loader::scan::{check_bundle_name, scan, ScanLimits};
    use std::os::unix::ffi::OsStrExt;
    let Ok(root) = tempfile::tempdir_in(scratch()) else {
        return;
    };
    let folder = root.path().join("sideload");
    if std::fs::create_dir(&folder).is_err() {
        return;
    }
    for line in data.split(|&b| b == b'\n').take(40) {
        let mut fields = line.splitn(3, |&b| b == b' ');
        let (Some(kind), Some(name)) = (fields.next(), fields.next()) else {
            continue;
        };
        let arg = fields.next().unwrap_or_default();
        if name.is_empty()
            || name.contains(&0)
            || name.contains(&b'/')
            || name == b"."
            || name == b".."
        {
            continue;
        }
        let path = folder.join(std::ffi::OsStr::from_bytes(name));
        let _ = match kind {
            b"f" => {
                let size = std::str::from_utf8(arg)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                std::fs::File::create(&path)
                    .and_then(|mut f| f.write_all(&vec![0u8; size.unwrap_or(0).min(300) as usize]))
            }
            // A file that starts with a well-formed bundle header (statement and slot
            // lengths from the input), so the scan's header check is reached both ways.
            b"h" => {
                let len = |b: Option<&u8>| u32::from(*b.unwrap_or(&0));
                let mut header = b"SIDELOAD\0\x02\0\0".to_vec();
                header.extend_from_slice(&len(arg.first()).to_be_bytes());
                header.extend_from_slice(&len(arg.get(1)).to_be_bytes());
                header.resize(32 + arg.len().min(200), 0);
                std::fs::write(&path, &header)
            }
            b"d" => std::fs::create_dir(&path),
            b"l" if !arg.contains(&0) => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(arg), &path)
            }
            _ => Ok(()),
        };
    }
    let limits = ScanLimits {
        max_entries: 32,
        max_bundle_bytes: 200,
        max_time: std::time::Duration::from_millis(500),
        max_listed: 8,
        engine: limits(),
    };
    let Ok(found) = scan(&folder, &limits) else {
        return;
    };
    assert!(found.skipped.len() <= limits.max_listed);
    for candidate in &found.candidates {
        assert!(check_bundle_name(&candidate.name).is_ok(), "{candidate:?}");
        assert!(candidate.len <= limits.max_bundle_bytes);
        let _ = found.open(candidate);
    }
}

/// A pin for every image: digest and a local registry.
fn pin(_reference: &str) -> Option<sideload_fleet::manifest::Pin> {
    Some(sideload_fleet::manifest::Pin {
        digest: format!("sha256:{}", "ab".repeat(32)),
        registry: Some("localhost:5000".parse().expect("registry host")),
    })
}

/// IoT Edge deployment manifests: images listed, rewritten (no pull, pinned); a rewritten
/// manifest lists its images again.
pub fn iotedge_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    use sideload_fleet::deployment;
    let _ = deployment::images("deployment.json", text);
    if let Ok(rewritten) = deployment::rewrite("deployment.json", text, &pin) {
        deployment::images("deployment.json", &rewritten.text)
            .expect("a rewritten deployment still lists its images");
    }
}

/// Kubernetes manifests (YAML or JSON): images listed, rewritten; a rewritten manifest lists
/// its images again.
pub fn kubernetes_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    use sideload_fleet::kubernetes;
    let _ = kubernetes::looks_like(text);
    let _ = kubernetes::images("pod.yaml", text);
    if let Ok(rewritten) = kubernetes::rewrite("pod.yaml", text, &pin) {
        kubernetes::images("pod.yaml", &rewritten.text)
            .expect("a rewritten manifest still lists its images");
    }
}

/// A fuzz body.
pub type Body = fn(&[u8]);

/// Every fuzz body by target name, for the seed test.
pub const TARGETS: &[(&str, Body)] = &[
    ("bundle_head", bundle_head),
    ("statement", statement),
    ("signature_slot", signature_slot),
    ("payload_records", payload_records),
    ("patch_bsdiff", patch_bsdiff),
    ("patch_zstd", patch_zstd),
    ("gzip_recipe", gzip_recipe),
    ("tar_scan", tar_scan),
    ("docker_archive", docker_archive),
    ("oci_layout", oci_layout),
    ("upload_headers", upload_headers),
    ("trust_policy", trust_policy),
    ("config_files", config_files),
    ("stick_scan", stick_scan),
    ("iotedge_manifest", iotedge_manifest),
    ("kubernetes_manifest", kubernetes_manifest),
    ("device_answers", device_answers),
];
