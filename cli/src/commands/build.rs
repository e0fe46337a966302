//! `sideload build`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use sideload_bundle::codec::CodecSettings;
use sideload_bundle::image::Image;
use sideload_bundle::payload::PatchKind;
use sideload_bundle::{
    build_bundle, rank_bases, BuildOptions, BuildReport, LayerEncoding, LayerReport,
};
use sideload_signing::{PayloadCodec, RepositoryName, Tag};

use super::{now, open_images, print_json};
use crate::progress::TermProgress;
use crate::RegistryArgs;
use sideload_signing::{BlobFrom, LayerStorage};

/// Arguments of `sideload build`.
#[derive(Args)]
pub struct BuildArgs {
    /// The new image: `docker-archive:PATH[:REF]`, `oci:DIR[:TAG]`, `docker://HOST/REPO:TAG`,
    /// or a bare path (file = docker-archive, directory = OCI layout).
    target: String,
    /// An image already on the device (same syntax); repeat for every image it holds. Layers
    /// the device has cost nothing.
    #[arg(long = "base", short = 'b')]
    bases: Vec<String>,
    /// The device's inventory (`GET /sideload/v1/inventory` of its registry plugin, or the
    /// inventory a USB receipt brought back): its layers cost nothing; with
    /// `--inventory-registry`, its images are also used as bases.
    #[arg(long)]
    inventory: Option<PathBuf>,
    /// A registry holding the inventory's images by digest (e.g. the CI registry the device's
    /// images came from): each is opened as `docker://HOST/REPO@DIGEST` and used as a base.
    #[arg(long, requires = "inventory")]
    inventory_registry: Option<String>,
    /// Where to write the bundle.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Repository the device stores the image under (default: from the target's tag).
    #[arg(long)]
    repository: Option<String>,
    /// Tag to set on the device; repeatable (default: from the target's tag).
    #[arg(long = "tag", short = 't')]
    tags: Vec<String>,
    /// Anti-rollback sequence for the repository (default: current Unix time, which grows).
    #[arg(long)]
    sequence: Option<u64>,
    /// Let this bundle go to devices that applied a higher sequence (deliberate downgrade).
    #[arg(long)]
    allow_downgrade: bool,
    /// How long the bundle stays valid, e.g. `30d`, `12h`.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    expires_in: Duration,
    /// Who ordered the bundle (ticket, person); recorded in the signed statement.
    #[arg(long, default_value = "")]
    ordered_by: String,
    /// Whom to contact about the bundle; recorded in the signed statement.
    #[arg(long, default_value = "")]
    contact: String,
    /// Payload compression: `lzma2` (smallest; default) or `zstd` (decodes several times
    /// faster, for fast links).
    #[arg(long, default_value = "lzma2", value_parser = parse_codec)]
    codec: PayloadCodec,
    /// Payload compression level: lzma2 0-9 (default 9, with xz's extreme search), zstd 1-22
    /// (default 19).
    #[arg(long)]
    level: Option<i32>,
    /// Window (zstd) or dictionary (lzma2) size log; the device needs 2^N bytes of memory to
    /// decode (12-27). Capped to what the payload can use.
    #[arg(long, default_value_t = 26)]
    window_log: u32,
    /// zstd level (1-22) for per-file patches and for the size estimates that choose between a
    /// patch and a literal.
    #[arg(long, default_value_t = 19)]
    patch_level: i32,
    /// Bytes reserved at the front for signatures: 133 each, plus 2. The default holds 3 (a
    /// 2-of-3 policy); every byte travels over the link. Attaching more than fit fails, and
    /// the bundle must be built again with a larger slot.
    #[arg(long, default_value_t = sideload_bundle::container::DEFAULT_SIGNATURE_SLOT)]
    signature_slot: u32,
    /// zstd compression threads (lzma2 compresses on one thread, as one stream; patches are
    /// always computed on every core).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Layers up to this many bytes (and their closest base layer) are also tried as one patch
    /// of the whole layer; the device holds both in memory to apply it. 0 turns it off.
    #[arg(long, default_value_t = sideload_bundle::build::MAX_WHOLE_LAYER)]
    whole_layer_patch_limit: u64,
    /// Time the encoder may spend on bsdiff patches (the slow part); after it, files are
    /// patched with zstd only. E.g. `10m`, `90s`.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    patch_time_budget: Duration,
    /// Whether the device gets the source's exact compressed layer blobs, and so serves the
    /// source's manifest digest (what deployments pin and image signatures cover):
    /// `where-possible` (gzip layers are recreated from a small recipe; if any layer cannot
    /// be, every layer is stored uncompressed), `required` (fail instead), or `never` (always
    /// uncompressed: the smallest bundle, a manifest digest of sideload's own).
    #[arg(long, default_value = "where-possible", value_name = "MODE")]
    exact: sideload_bundle::Exactness,
    /// Largest recipe accepted for a gzip layer, in percent of its compressed size (4 KiB is
    /// always accepted); above it the layer counts as not recreatable.
    #[arg(long, default_value_t = 5, value_name = "PERCENT",
          value_parser = clap::value_parser!(u32).range(0..=100))]
    exact_max_recipe: u32,
    /// Send recipes even for layers whose exact blob a base image holds: for devices that
    /// hold the bases' content but not their exact compressed blobs (images pushed to them
    /// re-compressed, or delivered by sideload before exact digests). `--inventory` tells
    /// which blobs a device really holds either way.
    #[arg(long)]
    resend_base_blobs: bool,
    /// Also write the statement here, ready for `sideload-sign sign`.
    #[arg(long)]
    statement_out: Option<PathBuf>,
    /// Also rank the base images by the bundle each alone would give (one trial build per
    /// base); the bundle itself always uses all of them together.
    #[arg(long)]
    explain: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Runs `sideload build`.
pub fn run(args: BuildArgs) -> Result<ExitCode> {
    // Every path named on the command line, before the (possibly slow) opening of any image.
    super::check_local_images("TARGET", std::slice::from_ref(&args.target))?;
    super::check_local_images("--base", &args.bases)?;
    let target = open_images("TARGET", std::slice::from_ref(&args.target), &args.registry)?
        .pop()
        .expect("one image");
    let inventory = match &args.inventory {
        Some(path) => Some(DeviceInventory::load(path)?),
        None => None,
    };
    let mut bases = open_images("--base", &args.bases, &args.registry)?;
    if let (Some(inv), Some(host)) = (&inventory, &args.inventory_registry) {
        let held = inv.base_references(host);
        bases.extend(open_images("--inventory-registry", &held, &args.registry)?);
    }
    let options = build_options(&args, target.image(), inventory.as_ref())?;

    let base_refs: Vec<&dyn sideload_bundle::image::ImageSource> =
        bases.iter().map(|b| b.as_ref()).collect();
    let progress = TermProgress::new(args.json);
    let report = build_bundle(
        target.as_ref(),
        &base_refs,
        &options,
        &args.output,
        &progress,
    )?;
    if let Some(path) = &args.statement_out {
        std::fs::write(path, report.statement.to_canonical_json())
            .with_context(|| format!("writing statement {}", path.display()))?;
    }

    let ranking = if args.explain && !base_refs.is_empty() {
        let dir = args
            .output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        rank_bases(target.as_ref(), &base_refs, &options, dir)?
    } else {
        Vec::new()
    };
    if args.json {
        print_json(&report_json(&report, &ranking));
    } else {
        print_report(&report, &ranking);
    }
    Ok(ExitCode::SUCCESS)
}

/// The repository and tags a bundle names: those given, else the source's first `repo:tag`
/// (its tag, else `latest`). `image` names the source in errors.
fn names(
    repo_tags: &[String],
    image: &str,
    repository: Option<&str>,
    tags: &[String],
) -> Result<(RepositoryName, Vec<Tag>)> {
    let (default_repo, default_tag) = default_name(repo_tags);
    let repository: RepositoryName = match repository.map(str::to_owned).or(default_repo) {
        Some(r) => r.parse()?,
        None => bail!("{image} has no repository name; pass --repository"),
    };
    let tags: Vec<Tag> = if tags.is_empty() {
        vec![default_tag.unwrap_or_else(|| "latest".into()).parse()?]
    } else {
        tags.iter().map(|t| t.parse()).collect::<Result<_, _>>()?
    };
    Ok((repository, tags))
}

/// The build's options from the arguments, the target's names and the device's inventory.
fn build_options(
    args: &BuildArgs,
    image: &Image,
    inventory: Option<&DeviceInventory>,
) -> Result<BuildOptions> {
    let (repository, tags) = names(
        &image.repo_tags,
        &image.reference,
        args.repository.as_deref(),
        &args.tags,
    )?;
    let now = now();
    let mut options = BuildOptions::new(repository, tags, now);
    options.sequence = args.sequence.unwrap_or(now);
    options.allow_downgrade = args.allow_downgrade;
    options.expires_at = now + args.expires_in.as_secs();
    options.ordered_by = args.ordered_by.clone();
    options.contact = args.contact.clone();
    options.codec = CodecSettings {
        codec: args.codec,
        level: args
            .level
            .unwrap_or_else(|| CodecSettings::default_level(args.codec)),
        window_log: args.window_log,
        threads: args.threads,
    };
    options.patch_level = args.patch_level;
    options.signature_slot = args.signature_slot;
    options.whole_layer_patch_limit = args.whole_layer_patch_limit;
    options.patch_time_budget = args.patch_time_budget;
    options.exact = sideload_bundle::ExactOptions {
        mode: args.exact,
        max_recipe_percent: args.exact_max_recipe,
        trust_base_blobs: !args.resend_base_blobs,
    };
    if let Some(inv) = inventory {
        options.device_layers = inv.diff_ids()?;
        options.device_blobs = inv.blobs()?;
    }
    Ok(options)
}

/// The build report as `--json` prints it.
fn report_json(report: &BuildReport, ranking: &[(String, u64)]) -> serde_json::Value {
    serde_json::json!({
        "bundle": report.bundle,
        "bundle_size": report.bundle_size,
        "payload_size": report.statement.payload.size,
        "source_image_size": report.source_image_size(),
        "statement_digest": report.statement.digest(),
        "manifest_digest": report.statement.target.manifest_digest,
        "source_manifest_digest": report.statement.target.source.manifest_digest,
        "exact": report.not_exact.is_none(),
        "not_exact_reason": report.not_exact,
        "recipe_bytes": report.layers.iter().map(|l| l.recipe_bytes).sum::<u64>(),
        "config_digest": report.statement.target.config_digest,
        "layers": report.layers.iter().map(layer_json).collect::<Vec<_>>(),
        "base_ranking": ranking
            .iter()
            .map(|(base, size)| serde_json::json!({"base": base, "bundle_size_alone": size}))
            .collect::<Vec<_>>(),
    })
}

/// One layer of the build report as `--json` prints it.
fn layer_json(l: &LayerReport) -> serde_json::Value {
    let mut value = serde_json::json!({
        "diff_id": l.diff_id,
        "size": l.size,
        "source_blob_size": l.source_blob_size,
        "payload_bytes": l.payload_bytes,
        "storage": storage_code(&l.storage),
        "recipe_bytes": l.recipe_bytes,
        "recipe": l.recipe,
    });
    match &l.encoding {
        LayerEncoding::Present { base } => {
            value["encoding"] = "present".into();
            value["bases"] = serde_json::json!([base]);
        }
        LayerEncoding::SourceBlob => value["encoding"] = "source_blob".into(),
        LayerEncoding::Delta(d) => {
            value["encoding"] = "delta".into();
            value["bases"] = serde_json::json!(d.bases);
            value["copied_files"] = d.copied_files.into();
            value["copied_bytes"] = d.copied_bytes.into();
            value["zstd_patched_files"] = d.zstd_patched_files.into();
            value["bsdiff_patched_files"] = d.bsdiff_patched_files.into();
            value["patched_bytes"] = d.patched_bytes.into();
            value["patch_bytes"] = d.patch_bytes.into();
            value["literal_bytes"] = d.literal_bytes.into();
            value["mixed_bytes"] = d.mixed_bytes.into();
            value["whole_layer_patch"] = match d.whole_layer_patch {
                Some(PatchKind::Zstd) => "zstd".into(),
                Some(PatchKind::Bsdiff) => "bsdiff".into(),
                Some(PatchKind::BsdiffX86) => "bsdiff-x86".into(),
                None => serde_json::Value::Null,
            };
        }
    }
    value
}

/// How a layer was encoded, in words.
fn encoding_text(encoding: &LayerEncoding) -> String {
    match encoding {
        LayerEncoding::Present { base } => format!("on device (in {base})"),
        LayerEncoding::SourceBlob => "sent as the source's compressed blob".into(),
        LayerEncoding::Delta(d) if d.whole_layer_patch.is_some() => format!(
            "one {:?} patch of the whole layer against {}",
            d.whole_layer_patch.expect("checked"),
            d.bases.join(", ")
        ),
        LayerEncoding::Delta(d) => format!(
            "{} files copied ({} B), {} patched with zstd and {} with bsdiff ({} B into {} B of patches), {} B of metadata as differences to the base's, {} B literal{}",
            d.copied_files,
            d.copied_bytes,
            d.zstd_patched_files,
            d.bsdiff_patched_files,
            d.patched_bytes,
            d.patch_bytes,
            d.mixed_bytes,
            d.literal_bytes,
            if d.bases.is_empty() { String::new() } else { format!("; from {}", d.bases.join(", ")) }
        ),
    }
}

/// Prints the build report for people.
fn print_report(report: &BuildReport, ranking: &[(String, u64)]) {
    let source_size = report.source_image_size();
    println!(
        "wrote {} ({} bytes; the image's layer blobs are {} bytes, {:.2} %)",
        report.bundle.display(),
        report.bundle_size,
        source_size,
        100.0 * report.bundle_size as f64 / source_size.max(1) as f64
    );
    for (i, l) in report.layers.iter().enumerate() {
        println!(
            "  layer {i} {} {:>12} bytes: {}, {} payload bytes; {}",
            l.diff_id.short(),
            l.size,
            encoding_text(&l.encoding),
            l.payload_bytes,
            storage_text(&l.storage, Some((l.recipe_bytes, l.recipe.as_deref())))
        );
    }
    match &report.not_exact {
        None => println!(
            "exact: the device will serve the source's manifest {}",
            report.statement.target.manifest_digest
        ),
        Some(why) => println!(
            "not exact: the device's manifest will be {}, not the source's ({why})",
            report.statement.target.manifest_digest
        ),
    }
    if !ranking.is_empty() {
        println!("bases ranked by the bundle each alone would give (this bundle uses all):");
        for (i, (base, size)) in ranking.iter().enumerate() {
            println!("  {}. {size:>12} bytes  {base}", i + 1);
        }
    }
    println!(
        "unsigned: export the statement with `sideload statement {}`, sign it offline with `sideload-sign sign`, then `sideload attach`",
        report.bundle.display()
    );
}

/// A layer's storage as `--json` names it.
pub(crate) fn storage_code(storage: &LayerStorage) -> &'static str {
    match storage {
        LayerStorage::Uncompressed { .. } => "uncompressed",
        LayerStorage::SourceBlob {
            from: BlobFrom::Recipe,
            ..
        } => "recipe",
        LayerStorage::SourceBlob {
            from: BlobFrom::Device,
            ..
        } => "held",
        LayerStorage::SourceBlob {
            from: BlobFrom::Payload,
            ..
        } => "blob",
    }
}

/// A layer's storage in words (with its recipe's size and kind when known).
pub(crate) fn storage_text(storage: &LayerStorage, recipe: Option<(u64, Option<&str>)>) -> String {
    let LayerStorage::SourceBlob { digest, from, .. } = storage else {
        return "stored uncompressed".into();
    };
    let blob = match digest {
        Some(digest) => format!("exact blob {}", digest.short()),
        None => "exact blob (digest derived on the device)".into(),
    };
    match (from, recipe) {
        (BlobFrom::Recipe, Some((n, kind))) => format!(
            "{blob} recreated from a {n}-byte gzip recipe{}",
            kind.map(|k| format!(" ({k})")).unwrap_or_default()
        ),
        (BlobFrom::Recipe, None) => format!("{blob} recreated from a gzip recipe"),
        (BlobFrom::Device, _) => format!("{blob} already on the device"),
        (BlobFrom::Payload, _) => format!("{blob} sent whole"),
    }
}

/// Repository and tag from the first `repo:tag` the source gives, with any registry host
/// removed (the device stores images under its own registry).
pub(crate) fn default_name(repo_tags: &[String]) -> (Option<String>, Option<String>) {
    let Some(first) = repo_tags.first() else {
        return (None, None);
    };
    let (name, tag) = match first.rfind(':') {
        Some(i) if !first[i..].contains('/') => (&first[..i], Some(first[i + 1..].to_owned())),
        _ => (first.as_str(), None),
    };
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        parts.remove(0);
    }
    (Some(parts.join("/")), tag)
}

fn parse_codec(s: &str) -> Result<PayloadCodec, String> {
    match s {
        "lzma2" | "xz" => Ok(PayloadCodec::Lzma2),
        "zstd" => Ok(PayloadCodec::Zstd),
        other => Err(format!("unknown codec `{other}`: use lzma2 or zstd")),
    }
}

/// A device's inventory (the registry plugin's `/sideload/v1/inventory`), read through the
/// device API's own type: what `sideload build --inventory` takes the device's layers, blobs
/// and images from.
struct DeviceInventory(sideload_device_api::Inventory);

impl DeviceInventory {
    fn load(path: &std::path::Path) -> Result<DeviceInventory> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading inventory {}", path.display()))?;
        let inv = sideload_device_api::Inventory::parse(&bytes)
            .with_context(|| format!("--inventory {}", path.display()))?;
        Ok(DeviceInventory(inv))
    }

    /// Every layer the device holds.
    fn diff_ids(&self) -> Result<Vec<sideload_signing::Digest>> {
        let mut out: Vec<sideload_signing::Digest> = Vec::new();
        for image in &self.0.images {
            for d in &image.diff_ids {
                let d = d.parse().with_context(|| {
                    format!("inventory of {}: bad diff_id {d:?}", self.0.device)
                })?;
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Every layer blob the device holds, compressed or not.
    fn blobs(&self) -> Result<Vec<sideload_signing::Digest>> {
        let mut out: Vec<sideload_signing::Digest> = Vec::new();
        for d in self.0.images.iter().flat_map(|i| &i.layer_blobs) {
            let d = d
                .parse()
                .with_context(|| format!("inventory of {}: bad layer blob {d:?}", self.0.device))?;
            if !out.contains(&d) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// `docker://HOST/REPO@DIGEST` for each distinct image.
    fn base_references(&self, host: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for image in &self.0.images {
            let r = format!(
                "docker://{}/{}@{}",
                host.trim_end_matches('/'),
                image.repository,
                image.manifest_digest
            );
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_repo_tags() {
        let n = |s: &str| default_name(&[s.to_owned()]);
        assert_eq!(
            n("edge/app:v2"),
            (Some("edge/app".into()), Some("v2".into()))
        );
        assert_eq!(
            n("localhost:5000/edge/app:v2"),
            (Some("edge/app".into()), Some("v2".into()))
        );
        assert_eq!(n("registry.example/app"), (Some("app".into()), None));
        assert_eq!(default_name(&[]), (None, None));
    }

    #[test]
    fn given_names_win_over_the_sources_and_latest_is_the_last_resort() {
        let tags = |t: Vec<Tag>| t.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let source = ["registry.example/edge/app:v2".to_owned()];
        let (repo, t) = names(&source, "src", None, &[]).unwrap();
        assert_eq!(
            (repo.to_string(), tags(t)),
            ("edge/app".into(), vec!["v2".into()])
        );
        let (repo, t) =
            names(&source, "src", Some("other/app"), &["a".into(), "b".into()]).unwrap();
        assert_eq!(
            (repo.to_string(), tags(t)),
            ("other/app".into(), vec!["a".into(), "b".into()])
        );
        let (_, t) = names(&["edge/app".to_owned()], "src", None, &[]).unwrap();
        assert_eq!(tags(t), vec!["latest".to_owned()]);
        let e = names(&[], "oci:/x", None, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "oci:/x has no repository name; pass --repository"
        );
        assert!(names(&source, "src", Some("Bad Name"), &[]).is_err());
    }

    #[test]
    fn a_layer_encoding_reads_as_what_it_cost() {
        use sideload_bundle::DeltaStats;
        assert_eq!(
            encoding_text(&LayerEncoding::Present {
                base: "oci:v1".into()
            }),
            "on device (in oci:v1)"
        );
        let whole = DeltaStats {
            whole_layer_patch: Some(PatchKind::Zstd),
            bases: vec!["oci:v1".into()],
            ..DeltaStats::default()
        };
        assert_eq!(
            encoding_text(&LayerEncoding::Delta(whole)),
            "one Zstd patch of the whole layer against oci:v1"
        );
        let files = DeltaStats {
            copied_files: 2,
            copied_bytes: 300,
            literal_bytes: 7,
            ..DeltaStats::default()
        };
        assert_eq!(
            encoding_text(&LayerEncoding::Delta(files)),
            "2 files copied (300 B), 0 patched with zstd and 0 with bsdiff (0 B into 0 B of patches), 0 B of metadata as differences to the base's, 7 B literal"
        );
    }
}
