//! The bundle reader against broken and hostile bundles: every truncation point, flipped bytes
//! in every part, statements that lie, payloads that expand, hostile tar names, untrusted keys,
//! expired and replayed bundles. Each must give its own clear error and leave no output.
//! Also the decoder's copy and patch operations, on payloads forged here (the encoder of this
//! version emits only literals and whole layers).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

mod support;

use sideload_bundle::container::{read_head, write_bundle};
use sideload_bundle::image::from_files::{build_image, ConfigExtras};
use sideload_bundle::image::oci_layout::OciLayoutSource;
use sideload_bundle::image::spec::{linux_amd64, Descriptor};
use sideload_bundle::image::ImageSource;
use sideload_bundle::payload::{Extent, MixRuns, PatchKind, PayloadWriter};
use sideload_bundle::{
    apply_bundle, build_bundle, BuildOptions, Error, ImageSet, Limits, NoProgress, Output,
};
use sideload_signing::{
    key_entry_toml, Digest, Refusal, Signature, SigningKey, Statement, TrustPolicy, VerifyContext,
};

const NOW: u64 = 1_790_000_000;

struct Fixture {
    dir: tempfile::TempDir,
    keys: Vec<SigningKey>,
    policy: TrustPolicy,
    /// v2 (target) and v1 (on the device) as OCI layouts.
    v1: PathBuf,
    v2: PathBuf,
    /// A bundle v1 → v2 signed by keys 0 and 1.
    bundle: PathBuf,
}

fn open(layout: &Path) -> Box<dyn ImageSource> {
    Box::new(
        OciLayoutSource::open(layout, None, &linux_amd64(), &layout.display().to_string()).unwrap(),
    )
}

fn write_tree(root: &Path, files: &[(&str, &[u8])]) {
    for (name, body) in files {
        let path = root.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, body).unwrap();
    }
}

fn keys(n: usize) -> Vec<SigningKey> {
    (0..n).map(|_| SigningKey::generate().unwrap().0).collect()
}

fn policy_for(keys: &[&SigningKey], threshold: usize) -> TrustPolicy {
    let mut text = format!("threshold = {threshold}\n");
    for k in keys {
        text.push_str(&key_entry_toml(
            &k.public_key(),
            &["edge/*".parse().unwrap()],
            None,
        ));
    }
    TrustPolicy::from_toml(&text, Path::new("test-policy.toml")).unwrap()
}

fn options() -> BuildOptions {
    let mut o = BuildOptions::new(
        "edge/app".parse().unwrap(),
        vec!["v2".parse().unwrap()],
        NOW,
    );
    o.sequence = 10;
    o.patch_level = 3;
    // These tests forge payload records and statements field by field: layers stored
    // uncompressed keep them about the records (exact blobs are tested in cli/tests/exact.rs).
    o.exact.mode = sideload_bundle::Exactness::Never;
    o
}

fn sign(bundle: &Path, keys: &[&SigningKey]) {
    let (head, _) = sideload_bundle::open_bundle(bundle, &Limits::default()).unwrap();
    let sigs: Vec<Signature> = keys
        .iter()
        .map(|k| k.sign_statement(&head.statement_bytes))
        .collect();
    sideload_bundle::attach_signatures(bundle, &sigs, &Limits::default()).unwrap();
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let licence = fs::read("/usr/share/common-licenses/Apache-2.0")
        .unwrap_or_else(|_| b"licence text ".repeat(500));
    write_tree(
        &src.join("base"),
        &[
            ("etc/os-release", b"ID=demo\n"),
            ("usr/share/licence", &licence),
        ],
    );
    write_tree(
        &src.join("app1"),
        &[
            ("opt/app/app.conf", b"version = 1\n"),
            ("opt/app/readme", &licence[..2000]),
        ],
    );
    write_tree(
        &src.join("app2"),
        &[
            ("opt/app/app.conf", b"version = 2\n"),
            ("opt/app/readme", &licence[..2500]),
        ],
    );
    let v1 = dir.path().join("v1");
    let v2 = dir.path().join("v2");
    build_image(
        &v1,
        "v1",
        &[&src.join("base"), &src.join("app1")],
        &ConfigExtras::default(),
    )
    .unwrap();
    build_image(
        &v2,
        "v2",
        &[&src.join("base"), &src.join("app2")],
        &ConfigExtras::default(),
    )
    .unwrap();
    let keys = keys(3);
    let policy = policy_for(&[&keys[0], &keys[1], &keys[2]], 2);
    let bundle = dir.path().join("app.bundle");
    let target = open(&v2);
    let base = open(&v1);
    build_bundle(
        target.as_ref(),
        &[base.as_ref()],
        &options(),
        &bundle,
        &NoProgress,
    )
    .unwrap();
    sign(&bundle, &[&keys[0], &keys[1]]);
    Fixture {
        dir,
        keys,
        policy,
        v1,
        v2,
        bundle,
    }
}

impl Fixture {
    fn ctx(&self) -> VerifyContext {
        VerifyContext {
            now: NOW + 60,
            recorded_sequence: None,
        }
    }

    fn bases(&self) -> ImageSet {
        ImageSet::new(vec![open(&self.v1)])
    }

    /// Applies `bundle` to a fresh output path; returns the result and whether the output exists.
    fn apply(&self, bundle: &Path, ctx: &VerifyContext) -> (Result<(), Error>, bool) {
        let out = self.dir.path().join(format!("out-{}", rand_suffix()));
        let result = apply_bundle(
            bundle,
            &self.policy,
            ctx,
            &self.bases(),
            &Output::OciLayout(out.clone()),
            &Limits::default(),
            &NoProgress,
        );
        (result.map(|_| ()), out.exists())
    }

    /// Asserts the bundle is refused with an error for which `check` holds, and nothing is left
    /// behind: no output, no staging directory.
    fn assert_refused(&self, bundle: &Path, check: impl Fn(&Error) -> bool) -> Error {
        let (result, exists) = self.apply(bundle, &self.ctx());
        let err = result.expect_err("bundle must be refused");
        assert!(check(&err), "unexpected error: {err:?}");
        assert!(!exists, "refused bundle left an output");
        assert!(no_staging(self.dir.path()), "staging directory left behind");
        err
    }

    fn copy_with(&self, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
        let mut bytes = fs::read(&self.bundle).unwrap();
        edit(&mut bytes);
        let path = self.dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn statement(&self) -> (Statement, Vec<u8>) {
        let bytes = fs::read(&self.bundle).unwrap();
        let head = read_head(&mut &bytes[..], "b", &Limits::default()).unwrap();
        let payload = bytes[head.payload_offset() as usize..].to_vec();
        (
            Statement::from_canonical_json(&head.statement_bytes).unwrap(),
            payload,
        )
    }

    /// Writes a bundle with the given statement and payload, signed by keys 0 and 1.
    fn forge(&self, name: &str, statement: &Statement, payload: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        let bytes = statement.to_canonical_json();
        let sigs = [
            self.keys[0].sign_statement(&bytes),
            self.keys[1].sign_statement(&bytes),
        ];
        let mut f = fs::File::create(&path).unwrap();
        write_bundle(&mut f, &bytes, &sigs, 4096, &mut &payload[..]).unwrap();
        path
    }

    /// Forges a bundle from decoded payload records: compresses them and fixes the statement's
    /// payload size, digest and decoded size to match.
    fn forge_records(&self, name: &str, mut statement: Statement, records: &[u8]) -> PathBuf {
        let payload = zstd::encode_all(records, 3).unwrap();
        statement.payload.codec = sideload_signing::PayloadCodec::Zstd;
        // zstd's default window at level 3 (2 MiB) may exceed the built bundle's capped one.
        statement.payload.window_log = 27;
        statement.payload.size = payload.len() as u64;
        statement.payload.sha256 = Digest::of_bytes(&payload);
        statement.payload.decoded_size = records.len() as u64;
        self.forge(name, &statement, &payload)
    }

    fn layer_bytes(&self, layout: &Path, index: usize) -> Vec<u8> {
        let source = open(layout);
        let mut bytes = Vec::new();
        source
            .open_layer(index)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    }

    fn config_bytes(&self) -> Vec<u8> {
        open(&self.v2).image().config.bytes.clone()
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn no_staging(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".sideload-apply-")
    })
}

fn refusal(err: &Error) -> Option<&Refusal> {
    match err {
        Error::Refused { refusal, .. } => Some(refusal),
        _ => None,
    }
}

#[test]
fn applies_and_rebuilds_the_exact_image() {
    let f = fixture();
    let out = f.dir.path().join("rebuilt");
    let report = apply_bundle(
        &f.bundle,
        &f.policy,
        &f.ctx(),
        &f.bases(),
        &Output::OciLayout(out.clone()),
        &Limits::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!((report.rebuilt_layers, report.reused_layers), (1, 1));
    let rebuilt = open(&out);
    let source = open(&f.v2);
    assert_eq!(rebuilt.image().config.digest, source.image().config.digest);
    assert_eq!(rebuilt.image().diff_ids(), source.image().diff_ids());
    assert_eq!(
        rebuilt.image().manifest.as_ref().unwrap().digest,
        report.statement.target.manifest_digest
    );
    for i in 0..2 {
        assert_eq!(f.layer_bytes(&out, i), f.layer_bytes(&f.v2, i), "layer {i}");
    }
    // Errors say which bundle they are about.
    let (err, _) = f.apply(
        &f.bundle,
        &VerifyContext {
            now: NOW + 60,
            recorded_sequence: Some(10),
        },
    );
    assert!(err
        .unwrap_err()
        .to_string()
        .starts_with("app.bundle: refused"));
}

#[test]
fn docker_archive_output_is_the_same_image() {
    let f = fixture();
    let out = f.dir.path().join("rebuilt.tar");
    apply_bundle(
        &f.bundle,
        &f.policy,
        &f.ctx(),
        &f.bases(),
        &Output::DockerArchive(out.clone()),
        &Limits::default(),
        &NoProgress,
    )
    .unwrap();
    let rebuilt = sideload_bundle::image::open_image(
        &format!("docker-archive:{}", out.display()).parse().unwrap(),
        &Default::default(),
    )
    .unwrap();
    let source = open(&f.v2);
    assert_eq!(rebuilt.image().config.digest, source.image().config.digest);
    assert_eq!(rebuilt.image().diff_ids(), source.image().diff_ids());
    assert_eq!(rebuilt.image().repo_tags, vec!["edge/app:v2".to_owned()]);
}

#[test]
fn against_itself_the_payload_is_a_few_hundred_bytes() {
    let f = fixture();
    let out = f.dir.path().join("self.bundle");
    let v2 = open(&f.v2);
    let report = build_bundle(v2.as_ref(), &[v2.as_ref()], &options(), &out, &NoProgress).unwrap();
    assert!(
        report.statement.payload.size < 1000,
        "payload {} bytes",
        report.statement.payload.size
    );
    assert_eq!(report.statement.requires.len(), 2);
}

#[test]
fn without_base_the_payload_is_smaller_than_the_gzip_image() {
    let dir = tempfile::tempdir().unwrap();
    let images = sideload_bundle::demo::make_demo_images(dir.path()).unwrap();
    let v2 = open(&images.v2);
    let gzip_size: u64 = v2.image().layers.iter().map(|l| l.blob_size).sum::<u64>()
        + v2.image().config.bytes.len() as u64;
    let mut o = options();
    o.patch_level = 19;
    let report = build_bundle(
        v2.as_ref(),
        &[],
        &o,
        &dir.path().join("full.bundle"),
        &NoProgress,
    )
    .unwrap();
    assert!(report.statement.requires.is_empty());
    assert!(
        report.statement.payload.size < gzip_size,
        "payload {} >= gzip image {gzip_size}",
        report.statement.payload.size
    );
}

#[test]
fn two_of_three_and_a_policy_trusting_only_one_signer() {
    let f = fixture();
    assert!(f.apply(&f.bundle, &f.ctx()).0.is_ok());
    // Trusts key 0 and key 2, needs both: key 1's signature is from an unknown key.
    let narrow = policy_for(&[&f.keys[0], &f.keys[2]], 2);
    let out = f.dir.path().join("narrow");
    let err = apply_bundle(
        &f.bundle,
        &narrow,
        &f.ctx(),
        &f.bases(),
        &Output::OciLayout(out.clone()),
        &Limits::default(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(
        matches!(
            refusal(&err),
            Some(Refusal::UnknownKey {
                valid: 1,
                required: 2,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(!out.exists());
}

#[test]
fn the_default_slot_holds_three_signatures_and_says_so_when_full() {
    let f = fixture();
    let bundle = f.copy_with("slot.bundle", |_| {});
    let before = fs::read(&bundle).unwrap();
    // Keys 0 and 1 are in; key 2 fits; a fourth does not, and nothing is written.
    sign(&bundle, &[&f.keys[2]]);
    let fourth = keys(1).remove(0);
    let (head, _) = sideload_bundle::open_bundle(&bundle, &Limits::default()).unwrap();
    assert_eq!(head.signatures.len(), 3);
    let full = fs::read(&bundle).unwrap();
    let err = sideload_bundle::attach_signatures(
        &bundle,
        &[fourth.sign_statement(&head.statement_bytes)],
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::SignatureSlotFull { .. }), "{err:?}");
    assert!(err.to_string().contains("slot.bundle"), "{err}");
    assert!(
        err.advice().contains("--signature-slot"),
        "{}",
        err.advice()
    );
    assert_eq!(fs::read(&bundle).unwrap(), full);
    // Re-signing with a key already present replaces its signature; the payload never moves.
    sign(&bundle, &[&f.keys[0]]);
    let after = fs::read(&bundle).unwrap();
    let payload_at = head.payload_offset() as usize;
    assert_eq!(after[payload_at..], before[payload_at..]);
    assert!(f.apply(&bundle, &f.ctx()).0.is_ok());
}

#[test]
fn unknown_key_expired_and_replayed() {
    let f = fixture();
    let stranger = keys(1);
    let unknown = f.copy_with("unknown.bundle", |_| {});
    // Replace the signatures by one from a key nobody trusts.
    let (head, _) = sideload_bundle::open_bundle(&unknown, &Limits::default()).unwrap();
    let mut bytes = fs::read(&unknown).unwrap();
    let slot = format!(
        "[{}]",
        stranger[0]
            .sign_statement(&head.statement_bytes)
            .to_json()
            .trim()
    );
    let at = head.signature_slot_offset() as usize;
    bytes[at..at + head.signature_slot as usize].fill(b' ');
    bytes[at..at + slot.len()].copy_from_slice(slot.as_bytes());
    fs::write(&unknown, bytes).unwrap();
    let err = f.assert_refused(&unknown, |e| {
        matches!(refusal(e), Some(Refusal::UnknownKey { .. }))
    });
    assert_eq!(err.code(), "unknown_key");

    let (result, exists) = f.apply(
        &f.bundle,
        &VerifyContext {
            now: NOW + 91 * 24 * 3600,
            recorded_sequence: None,
        },
    );
    assert!(matches!(
        refusal(&result.unwrap_err()),
        Some(Refusal::Expired { .. })
    ));
    assert!(!exists);

    let (result, exists) = f.apply(
        &f.bundle,
        &VerifyContext {
            now: NOW + 60,
            recorded_sequence: Some(10),
        },
    );
    let err = result.unwrap_err();
    assert!(matches!(
        refusal(&err),
        Some(Refusal::Rollback {
            sequence: 10,
            recorded: 10,
            ..
        })
    ));
    assert!(err.advice().contains("higher sequence"), "{}", err.advice());
    assert!(!exists);
}

#[test]
fn every_truncation_point_is_refused() {
    let f = fixture();
    let bytes = fs::read(&f.bundle).unwrap();
    let path = f.dir.path().join("cut.bundle");
    let limits = Limits::default();
    let trust = sideload_bundle::Trust {
        policy: &f.policy,
        limits: &limits,
        now: f.ctx().now,
    };
    for len in 0..bytes.len() {
        fs::write(&path, &bytes[..len]).unwrap();
        let err = match sideload_bundle::open_trusted(&path, &trust, |_| Ok(None)) {
            Ok(_) => panic!("truncated at {len} of {} accepted", bytes.len()),
            Err(e) => e,
        };
        assert!(matches!(err, Error::Truncated { .. }), "at {len}: {err:?}");
        assert!(err.is_refusal());
    }
    // And through apply, at a sample of points: nothing written.
    for len in [0, 31, 32, bytes.len() / 2, bytes.len() - 1] {
        let cut = f.copy_with("cut2.bundle", |b| b.truncate(len));
        f.assert_refused(&cut, |e| matches!(e, Error::Truncated { .. }));
    }
    // One byte too many is refused too.
    let long = f.copy_with("long.bundle", |b| b.push(0));
    f.assert_refused(&long, |e| matches!(e, Error::SizeMismatch { .. }));
}

#[test]
fn flipped_bytes_in_every_part_are_refused() {
    let f = fixture();
    let bytes = fs::read(&f.bundle).unwrap();
    let head = read_head(&mut &bytes[..], "b", &Limits::default()).unwrap();
    let statement_range = 32..head.signature_slot_offset() as usize;
    let slot_range = head.signature_slot_offset() as usize..head.payload_offset() as usize;
    let payload_range = head.payload_offset() as usize..bytes.len();
    let path = f.dir.path().join("flip.bundle");
    let flip = |at: usize| {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        fs::write(&path, b).unwrap();
    };
    // Header: every byte.
    for at in 0..32 {
        flip(at);
        f.assert_refused(&path, |e| e.is_refusal());
    }
    // Statement: every byte; its frame no longer decodes, a signature no longer matches, or it
    // no longer parses. zstd leaves a few bits without effect on the output (the stored form is
    // not canonical, like the slot's padding): such a flip decodes to the very JSON that was
    // signed, so the device acts on exactly what was signed, and it applies.
    let frame_len = statement_range.len();
    let mut same_meaning = 0;
    for at in statement_range {
        flip(at);
        let flipped = fs::read(&path).unwrap();
        if read_head(&mut &flipped[..], "b", &Limits::default())
            .is_ok_and(|h| h.statement_bytes == head.statement_bytes)
        {
            let (result, _) = f.apply(&path, &f.ctx());
            result.unwrap_or_else(|e| panic!("byte {at}: same statement, refused: {e}"));
            same_meaning += 1;
            continue;
        }
        f.assert_refused(&path, |e| {
            matches!(e, Error::UndecodableStatement { .. })
                || matches!(
                    refusal(e),
                    Some(
                        Refusal::BadSignature { .. }
                            | Refusal::MalformedStatement(_)
                            | Refusal::UnknownFormatVersion { .. }
                    )
                )
        });
    }
    // A handful at most (1 of 426 bytes when measured): a decoder that ignored its input
    // would show hundreds.
    assert!(
        same_meaning * 50 <= frame_len,
        "{same_meaning} of {frame_len} flipped statement bytes decode to the same JSON"
    );
    // Signatures: every byte of the used part of the slot.
    let used = slot_range.start
        + bytes[slot_range.clone()]
            .iter()
            .rposition(|&b| b != b' ')
            .unwrap()
        + 1;
    for at in slot_range.start..used {
        flip(at);
        f.assert_refused(&path, |e| {
            matches!(e, Error::MalformedSignatures { .. })
                || matches!(
                    refusal(e),
                    Some(
                        Refusal::BadSignature { .. }
                            | Refusal::UnknownKey { .. }
                            | Refusal::TooFewSignatures { .. }
                    )
                )
        });
    }
    // Payload: every byte; whatever breaks first, the error says the payload is not the signed one.
    for at in payload_range {
        flip(at);
        let err = f.assert_refused(&path, |e| matches!(e, Error::PayloadDigestMismatch { .. }));
        assert!(err.to_string().contains("flip.bundle"));
    }
}

#[test]
fn a_header_that_lies_about_sizes_allocates_nothing() {
    let f = fixture();
    let huge = f.copy_with("huge.bundle", |b| {
        b[12..16].copy_from_slice(&u32::MAX.to_be_bytes())
    });
    let err = f.assert_refused(&huge, |e| {
        matches!(
            e,
            Error::OverLimit {
                field: "statement",
                ..
            }
        )
    });
    assert!(err.to_string().contains("over the limit"));
    let slot = f.copy_with("slot.bundle", |b| {
        b[16..20].copy_from_slice(&u32::MAX.to_be_bytes())
    });
    f.assert_refused(&slot, |e| {
        matches!(
            e,
            Error::OverLimit {
                field: "signature slot",
                ..
            }
        )
    });
    let version = f.copy_with("version.bundle", |b| b[9] = 3);
    f.assert_refused(&version, |e| {
        matches!(e, Error::UnsupportedVersion { found: 3, .. })
    });
    let magic = f.copy_with("magic.bundle", |b| b[0] = b'X');
    f.assert_refused(&magic, |e| matches!(e, Error::NotABundle { .. }));
}

/// The fixture's bundle with its statement stored as `stored` under container `version`.
fn reframed(bytes: &[u8], version: u16, stored: &[u8]) -> Vec<u8> {
    let head = read_head(&mut &bytes[..], "b", &Limits::default()).unwrap();
    let mut out = bytes[..32].to_vec();
    out[8..10].copy_from_slice(&version.to_be_bytes());
    out[12..16].copy_from_slice(&(stored.len() as u32).to_be_bytes());
    out.extend_from_slice(stored);
    out.extend_from_slice(&bytes[head.signature_slot_offset() as usize..]);
    out
}

#[test]
fn the_statement_is_stored_compressed_and_checked_before_use() {
    let f = fixture();
    let bytes = fs::read(&f.bundle).unwrap();
    let head = read_head(&mut &bytes[..], "b", &Limits::default()).unwrap();
    let json = head.statement_bytes.clone();
    let stored = head.statement_stored_len as usize;
    // The dictionary is frozen with container version 2: devices decode with their own copy.
    assert_eq!(
        Digest::of_bytes(sideload_bundle::container::STATEMENT_DICTIONARY).to_string(),
        "sha256:27f99510d43ff54059ab0c35e57bd995da33428986b35acdba59abcbbda4a9f6"
    );
    assert_eq!(&bytes[8..10], &[0, 2]);
    assert!(
        stored * 2 < json.len(),
        "stored {stored} B of {} B of JSON",
        json.len()
    );
    assert_eq!(
        &bytes[32..32 + stored],
        &sideload_bundle::container::compress_statement(&json).unwrap()[..]
    );

    // A version 1 bundle (plain JSON statement) still applies, signatures unchanged.
    let plain = f.dir.path().join("v1-container.bundle");
    fs::write(&plain, reframed(&bytes, 1, &json)).unwrap();
    let (result, exists) = f.apply(&plain, &f.ctx());
    result.unwrap();
    assert!(exists);

    // Hostile stored statements, each refused before anything is verified or written.
    let frame = &bytes[32..32 + stored];
    let mut trailing = frame.to_vec();
    trailing.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd]);
    let mut no_size = zstd::bulk::Compressor::with_dictionary(
        3,
        sideload_bundle::container::STATEMENT_DICTIONARY,
    )
    .unwrap();
    no_size.include_contentsize(false).unwrap();
    let no_size = no_size.compress(&json).unwrap();
    let mut short = frame.to_vec();
    short.truncate(stored - 3);
    // A skippable frame (any content, decodes to nothing) and a pre-1.0 zstd frame (v0.7's
    // magic) are not the regular frame the format allows.
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18];
    skippable.extend_from_slice(&(json.len() as u32).to_le_bytes());
    skippable.extend_from_slice(&json);
    let mut legacy = frame.to_vec();
    legacy[0] = 0x27;
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("a skippable frame", skippable, "not a zstd frame"),
        ("a v0.7 frame", legacy, "not a zstd frame"),
        (
            "plain JSON under version 2",
            json.clone(),
            "not a zstd frame",
        ),
        (
            "bytes after the frame",
            trailing,
            "4 bytes follow its zstd frame",
        ),
        ("no declared size", no_size, "does not declare its size"),
        ("a cut frame", short, "damaged"),
    ];
    for (what, stored, expected) in cases {
        let path = f.dir.path().join("hostile.bundle");
        fs::write(&path, reframed(&bytes, 2, &stored)).unwrap();
        let err = f.assert_refused(&path, |e| matches!(e, Error::UndecodableStatement { .. }));
        let text = err.to_string();
        assert!(text.contains(expected), "{what}: {text}");
        assert!(
            text.starts_with("hostile.bundle: statement cannot be read"),
            "{what}: {text}"
        );
        assert!(err.is_refusal());
    }

    // A small frame that declares more than the statement cap is refused before it is
    // inflated (the cap bounds the allocation, not the compressed size).
    let limits = Limits {
        max_statement: (stored + 10) as u32,
        ..Limits::default()
    };
    let err = read_head(&mut &bytes[..], "b", &limits).unwrap_err();
    assert!(
        matches!(
            err,
            Error::OverLimit {
                field: "statement (decompressed)",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_signed_statement_that_lies_is_refused() {
    let f = fixture();
    let (statement, payload) = f.statement();

    // Payload size: longer than the file, shorter than the file.
    let mut s = statement.clone();
    s.payload.size += 1;
    f.assert_refused(&f.forge("size-up.bundle", &s, &payload), |e| {
        matches!(
            e,
            Error::Truncated {
                part: "payload",
                ..
            }
        )
    });
    let mut s = statement.clone();
    s.payload.size -= 1;
    f.assert_refused(&f.forge("size-down.bundle", &s, &payload), |e| {
        matches!(e, Error::SizeMismatch { .. })
    });

    // Payload expands past its declared decoded size.
    let mut s = statement.clone();
    s.payload.decoded_size = 100;
    let err = f.assert_refused(&f.forge("bomb.bundle", &s, &payload), |e| {
        matches!(e, Error::CorruptPayload { .. })
    });
    assert!(err.to_string().contains("larger than declared"), "{err}");

    // A window larger than the device allows.
    let mut s = statement.clone();
    s.payload.window_log = 31;
    f.assert_refused(&f.forge("window.bundle", &s, &payload), |e| {
        matches!(
            e,
            Error::OverLimit {
                field: "payload window log",
                ..
            }
        )
    });

    // Scratch space declared without extents.
    let mut s = statement.clone();
    s.payload.scratch_bytes = 1 << 20;
    let err = f.assert_refused(&f.forge("scratch.bundle", &s, &payload), |e| {
        matches!(e, Error::CorruptPayload { .. })
    });
    assert!(err.to_string().contains("extents add up to"), "{err}");

    // A manifest that does not match the statement's layers.
    let mut s = statement.clone();
    s.target.layers[1].size -= 512;
    let err = f.assert_refused(&f.forge("manifest.bundle", &s, &payload), |e| {
        matches!(e, Error::CorruptPayload { .. })
    });
    assert!(
        err.to_string().contains("statement is inconsistent"),
        "{err}"
    );

    // A layer declared smaller than what the payload makes (manifest kept consistent).
    let mut s = statement.clone();
    s.target.layers[1].size -= 512;
    fix_manifest(&mut s);
    let err = f.assert_refused(&f.forge("layer-size.bundle", &s, &payload), |e| {
        matches!(e, Error::CorruptPayload { .. })
    });
    assert!(err.to_string().contains("grow past its declared"), "{err}");

    // A different config digest.
    let mut s = statement.clone();
    s.target.config_digest = Digest::of_bytes(b"another config");
    fix_manifest(&mut s);
    let err = f.assert_refused(&f.forge("config.bundle", &s, &payload), |e| {
        matches!(e, Error::CorruptPayload { .. })
    });
    assert!(err.to_string().contains("config is sha256:"), "{err}");
}

fn fix_manifest(s: &mut Statement) {
    let layers = s
        .target
        .layers
        .iter()
        .map(|l| {
            Descriptor::new(
                "application/vnd.oci.image.layer.v1.tar",
                l.diff_id.clone(),
                l.size,
            )
        })
        .collect();
    let config_size = serde_json::from_str::<serde_json::Value>(&s.target.manifest).unwrap()
        ["config"]["size"]
        .as_u64()
        .unwrap();
    let manifest =
        sideload_bundle::manifest::build_manifest(&s.target.config_digest, config_size, layers);
    s.target.manifest_digest = Digest::of_bytes(&manifest);
    s.target.manifest = String::from_utf8(manifest).unwrap();
}

/// Payload records for the fixture's target, with layer 0 present and layer 1 made by `ops`.
fn records(
    f: &Fixture,
    extents: &[Extent],
    ops: impl FnOnce(&mut PayloadWriter<Vec<u8>>),
) -> Vec<u8> {
    let mut w = PayloadWriter::new(Vec::new()).unwrap();
    w.config(&f.config_bytes()).unwrap();
    w.extents(extents).unwrap();
    w.present(0).unwrap();
    w.begin_layer(1).unwrap();
    ops(&mut w);
    w.end_layer().unwrap();
    w.finish().unwrap()
}

#[test]
fn a_literal_longer_than_its_layer_is_refused_before_it_is_read() {
    let f = fixture();
    let (mut statement, _) = f.statement();
    statement.payload.scratch_bytes = 0;
    let mut rec = records(&f, &[], |_| {});
    // Replace the empty layer by a literal record that declares a terabyte and holds nothing.
    let end_layer = rec.len() - 2;
    // LITERAL with a varint length of 2^40.
    let bomb = vec![0x10, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20];
    rec.splice(end_layer..end_layer, bomb);
    let err = f.assert_refused(&f.forge_records("literal.bundle", statement, &rec), |e| {
        matches!(
            e,
            Error::CorruptPayload { .. } | Error::PayloadDigestMismatch { .. }
        )
    });
    assert!(err.to_string().contains("grow past its declared"), "{err}");
}

#[test]
fn copy_and_patch_operations_rebuild_the_exact_layer() {
    let f = fixture();
    let (statement, _) = f.statement();
    let target = f.layer_bytes(&f.v2, 1);
    let base = f.layer_bytes(&f.v1, 1);
    let base_diff_id = open(&f.v1).image().layers[1].diff_id.clone();
    let mut s = statement.clone();
    s.requires.push(base_diff_id.clone());
    let base_index = (s.requires.len() - 1) as u32;
    s.payload.scratch_bytes = base.len() as u64;
    let whole = [Extent {
        requires_index: base_index,
        offset: 0,
        len: base.len() as u64,
    }];

    // zstd with the base layer as dictionary.
    let patch = zstd::bulk::Compressor::with_dictionary(19, &base)
        .unwrap()
        .compress(&target)
        .unwrap();
    let rec = records(&f, &whole, |w| {
        w.patch(
            PatchKind::Zstd,
            0,
            base.len() as u64,
            target.len() as u64,
            &patch,
        )
        .unwrap()
    });
    let bundle = f.forge_records("zstd-patch.bundle", s.clone(), &rec);
    let (result, exists) = f.apply(&bundle, &f.ctx());
    result.unwrap();
    assert!(exists);
    assert!(patch.len() < 1000, "zstd patch is {} bytes", patch.len());

    // bsdiff.
    let mut raw = Vec::new();
    bsdiff::diff(&base, &target, &mut raw).unwrap();
    let patch = sideload_bundle::bspatch::split(&raw).unwrap();
    let rec = records(&f, &whole, |w| {
        w.patch(
            PatchKind::Bsdiff,
            0,
            base.len() as u64,
            target.len() as u64,
            &patch,
        )
        .unwrap()
    });
    let (result, _) = f.apply(&f.forge_records("bsdiff.bundle", s.clone(), &rec), &f.ctx());
    result.unwrap();

    // Copies of base ranges around a literal: the common prefix is copied, the rest sent.
    let common = base.iter().zip(&target).take_while(|(a, b)| a == b).count() as u64;
    assert!(common > 512, "fixture layers share a tar prefix");
    let mut s2 = s.clone();
    s2.payload.scratch_bytes = common;
    let extents = [Extent {
        requires_index: base_index,
        offset: 0,
        len: common,
    }];
    let rec = records(&f, &extents, |w| {
        w.copy(0, 100).unwrap();
        w.copy(100, common - 100).unwrap();
        w.literal(&target[common as usize..]).unwrap();
    });
    let (result, _) = f.apply(&f.forge_records("copy.bundle", s2.clone(), &rec), &f.ctx());
    result.unwrap();

    // A copy outside the scratch store, and a patch producing the wrong bytes.
    let rec = records(&f, &extents, |w| {
        w.copy(common - 10, 20).unwrap();
    });
    let err = f.assert_refused(&f.forge_records("copy-out.bundle", s2.clone(), &rec), |e| {
        matches!(e, Error::CorruptPayload { .. })
    });
    assert!(err.to_string().contains("operation reads scratch"), "{err}");

    // MIX: the base bytes plus the differences rebuild the layer; a MIX reaching outside the
    // store or past the layer's size is refused before it is read.
    let mut diff: Vec<u8> = target[..common as usize]
        .iter()
        .zip(&base)
        .map(|(t, b)| t.wrapping_sub(*b))
        .collect();
    let rec = records(&f, &extents, |w| {
        w.mix(0, &diff).unwrap();
        w.literal(&target[common as usize..]).unwrap();
    });
    let (result, _) = f.apply(&f.forge_records("mix.bundle", s2.clone(), &rec), &f.ctx());
    result.unwrap();
    let rec = records(&f, &extents, |w| w.mix(10, &diff).unwrap());
    let err = f.assert_refused(&f.forge_records("mix-out.bundle", s2.clone(), &rec), |e| {
        matches!(e, Error::CorruptPayload { .. })
    });
    assert!(err.to_string().contains("operation reads scratch"), "{err}");
    diff[0] ^= 1;
    let rec = records(&f, &extents, |w| {
        w.mix(0, &diff).unwrap();
        w.literal(&target[common as usize..]).unwrap();
    });
    f.assert_refused(
        &f.forge_records("mix-wrong.bundle", s2.clone(), &rec),
        |e| matches!(e, Error::LayerMismatch { index: 1, .. }),
    );

    // MIX_RUNS: the same differences as runs rebuild the layer; runs that do not add up to
    // the record's length, an empty run, a body with bytes after the runs, or a range outside
    // the store are refused with the reason.
    // (Against the store shifted by a byte, so that the runs hold differences and equal
    // stretches both.)
    let common = common as usize;
    let shifted: Vec<u8> = target[..common - 1]
        .iter()
        .zip(&base[1..common])
        .map(|(t, b)| t.wrapping_sub(*b))
        .collect();
    assert!(shifted.windows(8).any(|w| w == [0; 8]) && shifted.iter().any(|&b| b != 0));
    let mut runs = MixRuns::default();
    runs.same(0);
    runs.diff(&shifted);
    let rec = records(&f, &extents, |w| {
        w.mix_runs(1, runs).unwrap();
        w.literal(&target[common - 1..]).unwrap();
    });
    let (result, _) = f.apply(&f.forge_records("runs.bundle", s2.clone(), &rec), &f.ctx());
    result.unwrap();
    for (name, offset, len, body, reason) in [
        (
            "past",
            0,
            10,
            vec![5, 6, 1, 2, 3, 4, 5, 6],
            "go past their length",
        ),
        ("short", 0, 10, vec![5, 0], "end before their length"),
        ("empty", 0, 10, vec![0, 0, 10, 0], "an empty mix run"),
        ("trailing", 0, 5, vec![5, 0, 0], "longer than their length"),
        ("varint", 0, 5, vec![0x85], "ends inside a varint"),
        (
            "outside",
            common as u64 - 5,
            10,
            vec![10, 0],
            "operation reads scratch",
        ),
    ] {
        let mut rec = records(&f, &extents, |_| {});
        let mut raw = vec![0x16];
        for v in [offset * 2, len, body.len() as u64] {
            assert!(v < 1 << 21, "test varints stay short");
            let mut v = v;
            while v >= 0x80 {
                raw.push(v as u8 | 0x80);
                v >>= 7;
            }
            raw.push(v as u8);
        }
        raw.extend_from_slice(&body);
        let end_layer = rec.len() - 2;
        rec.splice(end_layer..end_layer, raw);
        let err = f.assert_refused(
            &f.forge_records(&format!("runs-{name}.bundle"), s2.clone(), &rec),
            |e| matches!(e, Error::CorruptPayload { .. }),
        );
        assert!(err.to_string().contains(reason), "{name}: {err}");
        assert!(
            err.to_string().contains(&format!("runs-{name}.bundle")),
            "{err}"
        );
    }

    // LITERAL_X86 longer than the layer, or cut short by the payload's end.
    let rec = records(&f, &[], |w| {
        w.literal_x86(
            target.len() as u64 + 1,
            &mut vec![0x90; target.len() + 1].as_slice(),
        )
        .unwrap()
    });
    let mut no_scratch = s.clone();
    no_scratch.payload.scratch_bytes = 0;
    no_scratch.requires.pop();
    let err = f.assert_refused(
        &f.forge_records("x86-long.bundle", no_scratch.clone(), &rec),
        |e| matches!(e, Error::CorruptPayload { .. }),
    );
    assert!(err.to_string().contains("grow past its declared"), "{err}");
    let mut rec = records(&f, &[], |w| {
        w.literal_x86(target.len() as u64, &mut target.as_slice())
            .unwrap()
    });
    rec.truncate(rec.len() - 2 - 100);
    let err = f.assert_refused(
        &f.forge_records("x86-short.bundle", no_scratch, &rec),
        |e| matches!(e, Error::CorruptPayload { .. }),
    );
    assert!(err.to_string().contains("x86 literal"), "{err}");
    let wrong = zstd::bulk::Compressor::with_dictionary(3, &base)
        .unwrap()
        .compress(&base[..target.len().min(base.len())])
        .unwrap();
    let rec = records(&f, &whole, |w| {
        w.patch(
            PatchKind::Zstd,
            0,
            base.len() as u64,
            target.len().min(base.len()) as u64,
            &wrong,
        )
        .unwrap()
    });
    f.assert_refused(&f.forge_records("wrong.bundle", s.clone(), &rec), |e| {
        matches!(
            e,
            Error::LayerMismatch { index: 1, .. } | Error::CorruptPayload { .. }
        )
    });

    // Extents that name a layer the statement does not require, or overlap.
    let mut bad = s.clone();
    bad.payload.scratch_bytes = 20;
    let rec = records(
        &f,
        &[
            Extent {
                requires_index: 0,
                offset: 0,
                len: 10,
            },
            Extent {
                requires_index: 0,
                offset: 5,
                len: 10,
            },
        ],
        |_| {},
    );
    let err = f.assert_refused(&f.forge_records("overlap.bundle", bad, &rec), |e| {
        matches!(e, Error::CorruptPayload { .. })
    });
    assert!(err.to_string().contains("sorted and disjoint"), "{err}");
}

#[test]
fn missing_base_and_existing_output_fail_without_writing() {
    let f = fixture();
    let out = f.dir.path().join("nobase");
    let err = apply_bundle(
        &f.bundle,
        &f.policy,
        &f.ctx(),
        &ImageSet::new(vec![]),
        &Output::OciLayout(out.clone()),
        &Limits::default(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::MissingBase { .. }) && !err.is_refusal(),
        "{err:?}"
    );
    assert!(!out.exists());
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep"), b"x").unwrap();
    let err = apply_bundle(
        &f.bundle,
        &f.policy,
        &f.ctx(),
        &f.bases(),
        &Output::OciLayout(out.clone()),
        &Limits::default(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err, Error::OutputExists(_)));
    assert_eq!(fs::read(out.join("keep")).unwrap(), b"x");
}

/// A layer whose tar entries are named `../../escape` and `/etc/sideload-abs`: rebuilt byte for
/// byte, and nothing appears at those paths, relative or absolute.
#[test]
fn hostile_tar_names_are_data_not_paths() {
    let dir = tempfile::tempdir().unwrap();
    let mut tar = Vec::new();
    for name in ["../../escape", "/etc/sideload-abs", "a/../../../b"] {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(5);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.write_all(header.as_bytes()).unwrap();
        tar.write_all(b"evil\n").unwrap();
        tar.write_all(&[0u8; 507]).unwrap();
    }
    tar.write_all(&[0u8; 1024]).unwrap();
    let layout = dir.path().join("hostile");
    let diff_id = support::image_from_tar(&layout, &tar);

    let keys = keys(1);
    let policy = policy_for(&[&keys[0]], 1);
    let bundle = dir.path().join("hostile.bundle");
    let source = open(&layout);
    build_bundle(source.as_ref(), &[], &options(), &bundle, &NoProgress).unwrap();
    sign(&bundle, &[&keys[0]]);
    let work = dir.path().join("deep/er");
    fs::create_dir_all(&work).unwrap();
    let out = work.join("out");
    apply_bundle(
        &bundle,
        &policy,
        &VerifyContext {
            now: NOW,
            recorded_sequence: None,
        },
        &ImageSet::new(vec![]),
        &Output::OciLayout(out.clone()),
        &Limits::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(open(&out).image().diff_ids(), vec![diff_id]);
    for path in [
        dir.path().join("escape"),
        dir.path().join("deep/escape"),
        PathBuf::from("/etc/sideload-abs"),
        dir.path().join("b"),
    ] {
        assert!(!path.exists(), "{} was created", path.display());
    }
}

/// Random multi-byte damage anywhere in a bundle: always an error (never a panic, never an
/// output), whatever the damage hits.
#[test]
fn random_damage_is_always_refused() {
    let f = fixture();
    let bytes = fs::read(&f.bundle).unwrap();
    let path = f.dir.path().join("random.bundle");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 8 {
            let at = (next() % b.len() as u64) as usize;
            b[at] = next() as u8;
        }
        if b == bytes {
            continue;
        }
        fs::write(&path, &b).unwrap();
        f.assert_refused(&path, |e| e.is_refusal());
    }
}
