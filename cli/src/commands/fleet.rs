//! `sideload fleet`: the ledger of a fleet, and the rollouts planned from it. The decisions
//! live in `sideload-fleet` (pure planning, gating, manifest rewriting) and the bundle
//! engine; this module reads files and devices, builds, writes outboxes and prints.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use sideload_bundle::{build_bundle, BuildOptions, NoProgress};
use sideload_fleet::deployment::image_name;
use sideload_fleet::manifest::{self, Pin, RegistryHost};
use sideload_fleet::plan::{plan, DeviceView, Need, Target};
use sideload_fleet::{
    chart, gate, BundleRecord, Database, Deployment, Ingested, Ledger, TransferState,
};

use super::{now, open_images, print_json};
use crate::RegistryArgs;

/// Exit code of `fleet gate` when some device lacks an image (the manifest must wait).
pub const EXIT_HELD_BACK: u8 = 4;

/// Arguments of `sideload fleet`.
#[derive(Args)]
pub struct FleetArgs {
    /// The ledger: an SQLite file (created if missing), or `postgres://USER@HOST/DB` for a
    /// ledger several operators or pipelines share.
    #[arg(
        long,
        global = true,
        env = "SIDELOAD_FLEET_DATABASE",
        default_value = "fleet.db"
    )]
    database: String,
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Add a device, or change how bundles reach it and whom to ask about it.
    Device(DeviceArgs),
    /// Take what devices report: inventories and bundle states, from a device's API, files, or
    /// a folder of receipts a USB stick brought back. The same report twice changes nothing;
    /// an older one never overwrites newer state.
    Ingest(IngestArgs),
    /// Create or replace a deployment set: a manifest's images and the devices it targets.
    Deployment(DeploymentArgs),
    /// Decide which bundle each device needs; with --build, build each distinct bundle once,
    /// write an outbox per device and record the bundles as in transit.
    Plan(Box<PlanArgs>),
    /// Rewrite an IoT Edge deployment manifest or Kubernetes workload YAML: never pull (on every
    /// module or container), and optionally image references pinned to the digests the devices
    /// hold. Only those spots change; comments and layout stay as written.
    Rewrite(RewriteArgs),
    /// Exit 0 only if every image of the manifest is on every target device; otherwise list
    /// what is missing where and exit 4.
    Gate(GateArgs),
    /// Answer what the fleet holds and how transfers went: overview, one device, one image,
    /// a deployment set, transfers, orderers; a picture of transfers over time with --svg.
    Status(StatusArgs),
}

#[derive(Args)]
struct DeviceArgs {
    /// The device's id (the registry plugin's `device_id`).
    id: String,
    /// How bundles reach it (`usb`, `wifi`, `satellite`, ...); names its outbox folder.
    #[arg(long, default_value = "")]
    route: String,
    /// Whom to ask about it.
    #[arg(long, default_value = "")]
    contact: String,
}

#[derive(Args)]
struct IngestArgs {
    /// A device's registry plugin (`http://HOST:PORT`): its inventory and bundle list.
    #[arg(long = "device-url")]
    device_urls: Vec<String>,
    /// The plugin's upload token, if its status API asks for one.
    #[arg(long, env = "SIDELOAD_DEVICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An inventory file (`GET /sideload/v1/inventory`, or a stick's `inventory.json`).
    #[arg(long = "inventory")]
    inventories: Vec<PathBuf>,
    /// A folder of receipts from a stick (`receipts/`, one folder per device, or one
    /// device's folder).
    #[arg(long = "receipts")]
    receipts: Vec<PathBuf>,
    /// Print what changed as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DeploymentArgs {
    /// Its name.
    name: String,
    /// The manifest: IoT Edge deployment (JSON) or Kubernetes workloads (YAML), told apart by
    /// content.
    #[arg(long)]
    manifest: PathBuf,
    /// A device it targets; repeatable.
    #[arg(long = "device", required = true)]
    devices: Vec<String>,
    /// Who ordered it (ticket, person).
    #[arg(long, default_value = "")]
    ordered_by: String,
    /// Whom to contact.
    #[arg(long, default_value = "")]
    contact: String,
}

#[derive(Args)]
struct PlanArgs {
    /// Target images (`docker://HOST/REPO:TAG`, `oci:DIR:TAG`, ...); or use --deployment.
    targets: Vec<String>,
    /// Roll out a deployment set: its manifest's images, to its devices.
    #[arg(long, conflicts_with = "manifest")]
    deployment: Option<String>,
    /// Roll out the images of this manifest, IoT Edge deployment or Kubernetes workloads (to
    /// --device, or every device).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// The registry that holds the deployment's images (and, unless --bases-registry, the
    /// images the devices hold, by digest), e.g. the CI registry. A loopback registry
    /// (127.x, localhost) is reached over plain HTTP.
    #[arg(long)]
    registry: Option<String>,
    /// Registry holding the devices' images by digest, used as delta bases.
    #[arg(long)]
    bases_registry: Option<String>,
    /// Only these devices (default: the deployment's, else every device in the ledger).
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Build the bundles into this folder, write the outboxes, record them as in transit.
    #[arg(long, value_name = "DIR")]
    build: Option<PathBuf>,
    /// Who ordered the rollout; recorded in the bundles' signed statements.
    #[arg(long, default_value = "")]
    ordered_by: String,
    /// Whom to contact; recorded in the bundles' signed statements.
    #[arg(long, default_value = "")]
    contact: String,
    /// How long the bundles stay valid.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    expires_in: Duration,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry_args: RegistryArgs,
}

#[derive(Args)]
struct RewriteArgs {
    /// The manifest: IoT Edge deployment (JSON) or Kubernetes workloads (YAML, `---` documents
    /// and `kind: List` included), told apart by content.
    manifest: PathBuf,
    /// Where to write the result (default: stdout).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Pin each image to the manifest digest the devices hold (or will hold: the newest
    /// bundle built for it).
    #[arg(long)]
    pin: bool,
    /// With --pin, write every pinned reference under this registry host instead of the one it
    /// names (`registry.example/edge/app:v2` -> `HOST/edge/app:v2@sha256:…`, Docker Hub's
    /// `nginx` -> `HOST/library/nginx@…`): Docker/moby, which IoT Edge runs on, resolves a digest
    /// reference only under the registry name it loaded the image from, so on a moby device it
    /// must name the device-local registry. containerd (k3s) resolves the upstream name too.
    /// Unpinned references are left as written.
    #[arg(long, value_name = "HOST[:PORT]", requires = "pin")]
    device_registry: Option<RegistryHost>,
    /// Print what changed as JSON (on stdout, so the text needs --output).
    #[arg(long, requires = "output")]
    json: bool,
}

#[derive(Args)]
struct GateArgs {
    /// The manifest, IoT Edge deployment or Kubernetes workloads (default: the deployment
    /// set's).
    manifest: Option<PathBuf>,
    /// The deployment set whose devices (and manifest) to check.
    #[arg(long)]
    deployment: Option<String>,
    /// Devices to check (default: the deployment set's).
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StatusArgs {
    /// One device: what it holds and its transfers.
    #[arg(long, conflicts_with_all = ["image", "deployment", "transfers", "by_orderer"])]
    device: Option<String>,
    /// Devices that hold this image (`REPO:TAG`, `REPO@DIGEST`, or a manifest reference).
    #[arg(long, conflicts_with_all = ["deployment", "transfers", "by_orderer"])]
    image: Option<String>,
    /// A deployment set: which of its devices are ready and what the others lack.
    #[arg(long, conflicts_with_all = ["transfers", "by_orderer"])]
    deployment: Option<String>,
    /// Every transfer, newest first.
    #[arg(long, conflicts_with = "by_orderer")]
    transfers: bool,
    /// Bundles and deployments by who ordered them.
    #[arg(long)]
    by_orderer: bool,
    /// Also draw transfers over time (sent, applied, failed per day) into this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `sideload fleet`.
pub fn run(args: FleetArgs) -> Result<ExitCode> {
    let db = Database::parse(&args.database);
    let mut ledger = Ledger::open(&db)?;
    match args.command {
        FleetCommand::Device(a) => {
            ledger.set_device(&a.id, &a.route, &a.contact)?;
            println!("device {} recorded in {}", a.id, db.display());
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Ingest(a) => ingest(&mut ledger, a),
        FleetCommand::Deployment(a) => {
            let text = read_text(&a.manifest)?;
            let name = a.manifest.display().to_string();
            let (_, images) = manifest::images(&name, &text)?;
            ledger.set_deployment(&Deployment {
                name: a.name.clone(),
                manifest: std::path::absolute(&a.manifest)
                    .unwrap_or(a.manifest.clone())
                    .display()
                    .to_string(),
                images: images.iter().map(|i| i.image.clone()).collect(),
                devices: a.devices.clone(),
                ordered_by: a.ordered_by,
                contact: a.contact,
                created_at: now(),
            })?;
            println!(
                "deployment {}: {} images, {} devices",
                a.name,
                images.len(),
                a.devices.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Plan(a) => run_plan(&mut ledger, *a),
        FleetCommand::Rewrite(a) => rewrite(&mut ledger, a),
        FleetCommand::Gate(a) => run_gate(&mut ledger, a),
        FleetCommand::Status(a) => status(&mut ledger, a),
    }
}

/// Each device with the images the ledger says it holds (an unknown device is an error).
fn held_by(ledger: &mut Ledger, devices: &[String]) -> Result<Vec<(String, gate::Holdings)>> {
    devices
        .iter()
        .map(|id| Ok((id.clone(), holdings(ledger.device(id)?))))
        .collect()
}

/// What a device holds as the gate sees it: its registry, and its engine when it has one.
fn holdings(device: sideload_fleet::Device) -> gate::Holdings {
    gate::Holdings {
        images: device.images,
        engine: device.engine,
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn ingest(ledger: &mut Ledger, a: IngestArgs) -> Result<ExitCode> {
    let mut results = Vec::new();
    let mut note = |what: String, outcome: Ingested| {
        results.push(json!({"what": what, "outcome": outcome}));
    };
    for url in &a.device_urls {
        let base = url.trim_end_matches('/');
        let inv_url = format!("{base}/sideload/v1/inventory");
        let bytes = http_get(&inv_url, a.token.as_deref())?;
        let inv = sideload_fleet::reports::parse_inventory(&inv_url, &bytes)?;
        let device = inv.device.clone();
        let list_url = format!("{base}/sideload/v1/bundles?limit=1000");
        let bytes = http_get(&list_url, a.token.as_deref())?;
        let reports = sideload_fleet::reports::parse_plugin_bundles(&list_url, &device, &bytes)?;
        for r in reports {
            let what = format!("{} on {device}: {}", r.bundle_name, r.state.as_str());
            note(what, ledger.ingest_report(&r, "api")?);
        }
        note(
            format!("inventory of {device} from {base}"),
            ledger.ingest_inventory(&inv, "api")?,
        );
    }
    for path in &a.inventories {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let inv = sideload_fleet::reports::parse_inventory(&path.display().to_string(), &bytes)?;
        note(
            format!("inventory of {} from {}", inv.device, path.display()),
            ledger.ingest_inventory(&inv, "file")?,
        );
    }
    for dir in &a.receipts {
        // What happened to each bundle first, then what the device holds now (which also
        // settles transfers no receipt spoke of).
        let (inventories, reports) = sideload_fleet::reports::read_receipt_folder(dir)?;
        for r in &reports {
            let what = format!("{} on {}: {}", r.bundle_name, r.device, r.state.as_str());
            note(what, ledger.ingest_report(r, "usb")?);
        }
        for inv in &inventories {
            note(
                format!("inventory of {} from {}", inv.device, dir.display()),
                ledger.ingest_inventory(inv, "usb")?,
            );
        }
    }
    if results.is_empty() {
        bail!("nothing to ingest: give --device-url, --inventory or --receipts");
    }
    if a.json {
        print_json(&json!({ "ingested": results }));
    } else {
        let changed = results.iter().filter(|r| r["outcome"] == "changed").count();
        for r in &results {
            println!(
                "{:<9} {}",
                r["outcome"].as_str().unwrap_or(""),
                r["what"].as_str().unwrap_or("")
            );
        }
        println!(
            "{changed} of {} reports changed the ledger ({})",
            results.len(),
            ledger.database().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One GET to a device's status API; the body, capped (an inventory of thousands of images
/// is a few MiB).
fn http_get(url: &str, token: Option<&str>) -> Result<Vec<u8>> {
    use http_body_util::BodyExt;
    const MAX: usize = 64 << 20;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = crate::push::http::client(&crate::push::http::Options {
            stall_timeout: Duration::from_secs(30),
            connect_timeout: None,
            trust: crate::push::http::Trust::Platform,
        })?;
        let mut req = hyper::Request::get(url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(crate::push::http::empty())
            .with_context(|| format!("bad URL {url}"))?;
        let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
            .await
            .with_context(|| format!("{url}: no answer in 60 s"))?
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.with_context(|| format!("{url}: answer cut short"))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > MAX {
                    bail!("{url}: answer larger than {MAX} bytes");
                }
                out.extend_from_slice(&data);
            }
        }
        if !status.is_success() {
            bail!(
                "{url}: {status}: {}",
                String::from_utf8_lossy(&out[..out.len().min(500)])
            );
        }
        Ok(out)
    })
}

/// A target to roll out: where to build it from, the `REPO:TAG` the device stores it under
/// (empty: from the image's own tag), and whether it may be left out when the registry does
/// not have it (every device already holds an image under that name).
type TargetName = (String, String, bool);

/// The images a plan rolls out and the devices it rolls them out to.
fn plan_inputs(ledger: &mut Ledger, a: &PlanArgs) -> Result<(Vec<TargetName>, Vec<String>)> {
    let mut targets = Vec::new();
    let mut devices = a.devices.clone();
    let manifest_images = match (&a.deployment, &a.manifest) {
        (Some(name), _) => {
            let d = ledger.deployment(name)?;
            if devices.is_empty() {
                devices = d.devices.clone();
            }
            Some((format!("deployment {name}"), d.images))
        }
        (None, Some(path)) => {
            let text = read_text(path)?;
            let file = path.display().to_string();
            let (_, images) = manifest::images(&file, &text)?;
            Some((file, images.into_iter().map(|i| i.image).collect()))
        }
        (None, None) => None,
    };
    if devices.is_empty() {
        devices = ledger.devices()?.into_iter().map(|d| d.device_id).collect();
    }
    if let Some((name, images)) = manifest_images {
        let Some(registry) = &a.registry else {
            bail!("{name}: rolling out a manifest needs --registry, the registry that holds its images");
        };
        let held = held_by(ledger, &devices)?;
        for reference in &images {
            let Some(n) = image_name(reference) else {
                bail!(
                    "{name}: image {reference:?} is a template or not an image name; expand the manifest first"
                );
            };
            // An image every device already holds under the manifest's name need not be in
            // the registry (the edge runtime's own images often are not); if it is, its
            // content decides (a tag pushed again is rolled out).
            let optional = held.iter().all(|(_, h)| gate::resolves(h, reference));
            let tag = n.tag.clone().unwrap_or_else(|| "latest".into());
            let source = match &n.digest {
                Some(digest) => format!("docker://{registry}/{}@{digest}", n.repository),
                None => format!("docker://{registry}/{}:{tag}", n.repository),
            };
            targets.push((source, format!("{}:{tag}", n.repository), optional));
        }
    }
    for t in &a.targets {
        targets.push((t.clone(), String::new(), false));
    }
    if targets.is_empty() && a.deployment.is_none() && a.manifest.is_none() {
        bail!("nothing to roll out: name target images, a --deployment or a --manifest");
    }
    if devices.is_empty() {
        bail!(
            "no devices in {}: ingest their inventories first (`sideload fleet ingest`)",
            ledger.database().display()
        );
    }
    Ok((targets, devices))
}

fn run_plan(ledger: &mut Ledger, a: PlanArgs) -> Result<ExitCode> {
    let (target_names, device_ids) = plan_inputs(ledger, &a)?;
    let mut insecure = a.registry_args.clone();
    for host in [&a.registry, &a.bases_registry].into_iter().flatten() {
        if host.starts_with("127.") || host.starts_with("localhost") {
            insecure.insecure_registries.push(host.clone());
        }
    }
    let mut targets = Vec::new();
    for (source, name, optional) in &target_names {
        let image = match open_images("target", std::slice::from_ref(source), &insecure) {
            Ok(mut v) => v.pop().expect("one image"),
            Err(e) if *optional => {
                eprintln!("{source}: not in the registry ({e:#}); every device holds it already, so it is left out");
                continue;
            }
            Err(e) => return Err(e),
        };
        let img = image.image();
        let (repository, tag) = if name.is_empty() {
            super::build::default_name(&img.repo_tags)
        } else {
            let (r, t) = name.rsplit_once(':').expect("REPO:TAG");
            (Some(r.to_owned()), Some(t.to_owned()))
        };
        let (Some(repository), Some(tag)) = (repository, tag) else {
            bail!("{source}: the image names no repository and tag; name it REPO:TAG");
        };
        targets.push(Target {
            source: source.clone(),
            repository,
            tags: vec![tag],
            manifest_digest: img
                .manifest_digest()
                .map(|d| d.to_string())
                .unwrap_or_default(),
            config_digest: img.id().to_string(),
            diff_ids: img.diff_ids().iter().map(|d| d.to_string()).collect(),
            layer_sizes: img.layers.iter().map(|l| l.blob_size).collect(),
            config_size: img.config.bytes.len() as u64,
        });
    }
    let mut views = Vec::new();
    let mut floors = std::collections::BTreeMap::<String, u64>::new();
    let mut silent = Vec::new();
    for id in &device_ids {
        let d = ledger.device(id)?;
        if d.inventory_at.is_none() {
            silent.push(d.device_id.clone());
        }
        for (repo, seq) in &d.sequences {
            let f = floors.entry(repo.clone()).or_default();
            *f = (*f).max(*seq);
        }
        views.push(DeviceView {
            device_id: d.device_id,
            route: d.route,
            images: d.images,
        });
    }
    if !silent.is_empty() {
        eprintln!(
            "warning: {} devices never reported an inventory and are planned as holding nothing (whole images): {}",
            silent.len(),
            silent.join(", ")
        );
    }
    let p = plan(&targets, &views);
    let mut sizes: Vec<Option<Built>> = vec![None; p.bundles.len()];
    if let Some(out) = &a.build {
        let bases_registry = a.bases_registry.clone().or(a.registry.clone());
        build_all(
            ledger,
            &a,
            &p,
            &views,
            &floors,
            out,
            bases_registry.as_deref(),
            &insecure,
            &mut sizes,
        )?;
    }
    print_plan(&a, &p, &views, &sizes);
    Ok(ExitCode::SUCCESS)
}

/// A bundle built by `fleet plan --build`: its size, its id (the statement's digest), its file.
type Built = (u64, String, PathBuf);

#[allow(clippy::too_many_arguments)]
fn build_all(
    ledger: &mut Ledger,
    a: &PlanArgs,
    p: &sideload_fleet::plan::Plan,
    views: &[DeviceView],
    floors: &std::collections::BTreeMap<String, u64>,
    out: &Path,
    bases_registry: Option<&str>,
    registry_args: &RegistryArgs,
    sizes: &mut [Option<Built>],
) -> Result<()> {
    let bundles_dir = out.join("bundles");
    std::fs::create_dir_all(&bundles_dir)
        .with_context(|| format!("creating {}", bundles_dir.display()))?;
    let now = now();
    for (i, b) in p.bundles.iter().enumerate() {
        let target = &p.targets[b.target];
        let image = open_images(
            "target",
            std::slice::from_ref(&target.source),
            registry_args,
        )?
        .pop()
        .expect("one image");
        let (bases, base_digests) = open_bases(&b.bases, bases_registry, registry_args);
        let floor = floors.get(&target.repository).copied().unwrap_or(0);
        let options = bundle_options(a, target, &b.bases, floor, now, i)?;
        let slug = bundle_slug(target, i);
        let path = bundles_dir.join(format!("{slug}.bundle"));
        let base_refs: Vec<&dyn sideload_bundle::image::ImageSource> =
            bases.iter().map(|b| b.as_ref()).collect();
        let report = build_bundle(image.as_ref(), &base_refs, &options, &path, &NoProgress)
            .with_context(|| format!("building {}", path.display()))?;
        std::fs::write(
            bundles_dir.join(format!("{slug}.statement.json")),
            report.statement.to_canonical_json(),
        )?;
        let id = report.statement.digest().to_string();
        ledger.record_bundle(&BundleRecord {
            bundle_id: id.clone(),
            file: path.display().to_string(),
            size: report.bundle_size,
            repository: target.repository.clone(),
            tags: target.tags.clone(),
            manifest_digest: report.statement.target.manifest_digest.to_string(),
            bases: base_digests,
            deployment: a.deployment.clone(),
            ordered_by: a.ordered_by.clone(),
            contact: a.contact.clone(),
            created_at: now,
        })?;
        sizes[i] = Some((report.bundle_size, id, path));
    }
    write_outboxes(ledger, p, views, out, sizes, now)
}

/// Opens the images a bundle is built against from the bases registry: the images and their
/// manifest digests. One that cannot be opened (or no registry) is left out with a warning:
/// its layers still count as on the device.
fn open_bases(
    held: &[sideload_fleet::HeldImage],
    bases_registry: Option<&str>,
    registry_args: &RegistryArgs,
) -> (
    Vec<Box<dyn sideload_bundle::image::ImageSource>>,
    Vec<String>,
) {
    let mut bases = Vec::new();
    let mut base_digests = Vec::new();
    for held in held {
        let Some(host) = bases_registry else {
            eprintln!(
                "warning: no --bases-registry: {} is not used as a base (its layers still count as on the device)",
                held.manifest_digest
            );
            continue;
        };
        let reference = format!(
            "docker://{host}/{}@{}",
            held.repository, held.manifest_digest
        );
        match open_images(
            "--bases-registry",
            std::slice::from_ref(&reference),
            registry_args,
        ) {
            Ok(mut v) => {
                bases.push(v.pop().expect("one image"));
                base_digests.push(held.manifest_digest.clone());
            }
            Err(e) => eprintln!(
                "warning: base {reference} cannot be opened ({e:#}); the bundle is built without it"
            ),
        }
    }
    (bases, base_digests)
}

/// The options of the `i`th bundle of a run at `now`, for `target` against `held`: its
/// sequence above every floor the devices reported for the repository (`floor`) and above the
/// run's earlier bundles (two in one second must not share one), and the layers `held` holds
/// as the device's, so they cost nothing even when a base could not be opened.
fn bundle_options(
    a: &PlanArgs,
    target: &Target,
    held: &[sideload_fleet::HeldImage],
    floor: u64,
    now: u64,
    i: usize,
) -> Result<BuildOptions> {
    let mut options = BuildOptions::new(
        target.repository.parse()?,
        target
            .tags
            .iter()
            .map(|t| t.parse())
            .collect::<Result<_, _>>()?,
        now,
    );
    options.sequence = now.max(floor + 1) + i as u64;
    options.expires_at = now + a.expires_in.as_secs();
    options.ordered_by = a.ordered_by.clone();
    options.contact = a.contact.clone();
    options.device_layers = held
        .iter()
        .flat_map(|h| h.diff_ids.iter())
        .filter_map(|d| d.parse().ok())
        .collect::<BTreeSet<sideload_signing::Digest>>()
        .into_iter()
        .collect();
    Ok(options)
}

/// The file name (without extension) of the `i`th bundle: `REPO-TAGS-NN`, slashes made `_`.
fn bundle_slug(target: &Target, i: usize) -> String {
    format!(
        "{}-{}-{:02}",
        target.repository.replace('/', "_"),
        target.tags.join("_"),
        i
    )
}

/// Outboxes: one folder per route and device, the device's bundles hard-linked (signing a
/// bundle in bundles/ with `sideload attach` signs every outbox's copy) in apply order, each
/// recorded as sent.
fn write_outboxes(
    ledger: &mut Ledger,
    p: &sideload_fleet::plan::Plan,
    views: &[DeviceView],
    out: &Path,
    sizes: &[Option<Built>],
    now: u64,
) -> Result<()> {
    for v in views {
        let route = if v.route.is_empty() {
            "unrouted"
        } else {
            &v.route
        };
        let dir = out.join("outbox").join(route).join(&v.device_id);
        let mine = p.bundles_for(&v.device_id);
        if mine.is_empty() {
            continue;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut listed = Vec::new();
        for i in mine {
            let (size, id, path) = sizes[i].clone().expect("built");
            let name = link_into(&path, &dir)?;
            ledger.record_sent(&v.device_id, &id, &name, route, now)?;
            listed.push(json!({"bundle": name, "id": id, "size": size}));
        }
        let mut f = std::fs::File::create(dir.join("outbox.json"))?;
        f.write_all(
            serde_json::to_string_pretty(
                &json!({"device": v.device_id, "route": route, "bundles": listed}),
            )?
            .as_bytes(),
        )?;
    }
    Ok(())
}

/// Hard-links `path` into `dir` (a copy, with a warning, across filesystems); returns its name.
fn link_into(path: &Path, dir: &Path) -> Result<String> {
    let name = path.file_name().expect("file name").to_owned();
    let link = dir.join(&name);
    let _ = std::fs::remove_file(&link);
    if std::fs::hard_link(path, &link).is_err() {
        std::fs::copy(path, &link)
            .with_context(|| format!("copying {} to {}", path.display(), link.display()))?;
        eprintln!(
            "warning: {} is a copy, not a hard link (another filesystem?): attach the signatures to it too",
            link.display()
        );
    }
    Ok(name.to_string_lossy().into_owned())
}

/// What a plan moves, per device (as `--json` lists it) and in all: (rows, whole-image bytes,
/// missing-layer bytes, bundle bytes).
fn plan_device_rows(
    p: &sideload_fleet::plan::Plan,
    views: &[DeviceView],
    sizes: &[Option<Built>],
    built: bool,
) -> (Vec<serde_json::Value>, u64, u64, u64) {
    let (mut whole_total, mut layers_total, mut bundle_total) = (0u64, 0u64, 0u64);
    let mut per_device = Vec::new();
    for ((device, needs), v) in p.devices.iter().zip(views) {
        let mut bytes = 0u64;
        let mut whole = 0u64;
        let mut layers = 0u64;
        let mut bundles = Vec::new();
        for (t, need) in needs.iter().enumerate() {
            if let Need::Bundle { bundle } = need {
                whole += p.targets[t].whole_bytes();
                layers += p.bundles[*bundle].missing_layer_bytes;
                if let Some((size, _, path)) = &sizes[*bundle] {
                    bytes += size;
                    bundles.push(path.file_name().unwrap().to_string_lossy().into_owned());
                } else {
                    bundles.push(format!("#{bundle}"));
                }
            }
        }
        whole_total += whole;
        layers_total += layers;
        bundle_total += bytes;
        per_device.push(json!({
            "device": device, "route": v.route, "bundles": bundles,
            "bytes": built.then_some(bytes), "whole_image_bytes": whole, "missing_layer_bytes": layers,
        }));
    }
    (per_device, whole_total, layers_total, bundle_total)
}

/// The plan's distinct bundles as `--json` lists them.
fn plan_bundle_rows(
    p: &sideload_fleet::plan::Plan,
    sizes: &[Option<Built>],
) -> Vec<serde_json::Value> {
    p.bundles
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let t = &p.targets[b.target];
            json!({
                "index": i,
                "target": format!("{}:{}", t.repository, t.tags.join(",")),
                "bases": b.bases.iter().map(|h| format!("{}:{}@{}", h.repository, h.tags.join(","), h.manifest_digest)).collect::<Vec<_>>(),
                "devices": b.devices,
                "file": sizes[i].as_ref().map(|s| s.2.display().to_string()),
                "bundle_id": sizes[i].as_ref().map(|s| s.1.clone()),
                "size": sizes[i].as_ref().map(|s| s.0),
                "missing_layer_bytes": b.missing_layer_bytes,
                "whole_image_bytes": t.whole_bytes(),
            })
        })
        .collect()
}

fn print_plan(
    a: &PlanArgs,
    p: &sideload_fleet::plan::Plan,
    views: &[DeviceView],
    sizes: &[Option<Built>],
) {
    let built = a.build.is_some();
    let (per_device, whole_total, layers_total, bundle_total) =
        plan_device_rows(p, views, sizes, built);
    let up_to_date = p
        .devices
        .iter()
        .filter(|(_, n)| n.iter().all(|n| *n == Need::Has))
        .count();
    if a.json {
        print_json(&json!({
            "built": built,
            "targets": p.targets,
            "bundles": plan_bundle_rows(p, sizes),
            "devices": per_device,
            "totals": {
                "devices": p.devices.len(),
                "devices_up_to_date": up_to_date,
                "distinct_bundles": p.bundles.len(),
                "bundle_bytes": built.then_some(bundle_total),
                "whole_image_bytes": whole_total,
                "missing_layer_bytes": layers_total,
            },
        }));
        return;
    }
    println!(
        "{} devices, {} already hold everything; {} distinct bundles{}",
        p.devices.len(),
        up_to_date,
        p.bundles.len(),
        if built {
            " (built)"
        } else {
            " to build (run again with --build DIR)"
        }
    );
    for (i, b) in p.bundles.iter().enumerate() {
        println!("  {}", plan_bundle_line(p, i, b, sizes[i].as_ref()));
    }
    if built {
        println!(
            "total over the links: {bundle_total} B, against {whole_total} B of whole images ({:.2} %) and {layers_total} B of missing layers",
            100.0 * bundle_total as f64 / whole_total.max(1) as f64
        );
        println!(
            "next: sign every bundles/*.statement.json offline (sideload-sign sign), `sideload attach --policy TRUST.toml` the signatures to bundles/*.bundle (the outboxes hold hard links), then send each outbox/ROUTE/DEVICE folder"
        );
    } else {
        println!(
            "whole images would be {whole_total} B over the links, missing layers {layers_total} B"
        );
    }
}

/// One planned bundle in words.
fn plan_bundle_line(
    p: &sideload_fleet::plan::Plan,
    i: usize,
    b: &sideload_fleet::plan::PlannedBundle,
    built: Option<&Built>,
) -> String {
    let t = &p.targets[b.target];
    let bases = if b.bases.is_empty() {
        "nothing on the device (whole image)".to_owned()
    } else {
        b.bases
            .iter()
            .map(|h| format!("{}:{}", h.repository, h.tags.join(",")))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let size = match built {
        Some((s, _, _)) => format!("{s} B"),
        None => "not built".into(),
    };
    format!(
        "#{i} {}:{} from {bases}: {size}, to {} devices (whole image {} B, missing layers {} B each)",
        t.repository,
        t.tags.join(","),
        b.devices.len(),
        t.whole_bytes(),
        b.missing_layer_bytes
    )
}

fn rewrite(ledger: &mut Ledger, a: RewriteArgs) -> Result<ExitCode> {
    let text = read_text(&a.manifest)?;
    let name = a.manifest.display().to_string();
    let bundles = if a.pin { ledger.bundles()? } else { Vec::new() };
    let devices = if a.pin { ledger.devices()? } else { Vec::new() };
    let registry = a.device_registry.clone();
    let pin = |reference: &str| -> Option<Pin> {
        let n = image_name(reference)?;
        let tag = n.tag.clone().unwrap_or_else(|| "latest".into());
        // What a rollout will leave on the devices: the newest bundle built for this tag...
        if let Some(b) = bundles
            .iter()
            .find(|b| b.repository == n.repository && b.tags.contains(&tag))
        {
            return Some(Pin {
                digest: b.manifest_digest.clone(),
                registry: registry.clone(),
            });
        }
        // ...else what the devices hold under it, if they all agree.
        let held: BTreeSet<&str> = devices
            .iter()
            .flat_map(|d| d.images.iter())
            .filter(|i| i.repository == n.repository && i.tags.contains(&tag))
            .map(|i| i.manifest_digest.as_str())
            .collect();
        (held.len() == 1).then(|| Pin {
            digest: held.into_iter().next().expect("one").to_owned(),
            registry: registry.clone(),
        })
    };
    let (kind, out) = manifest::rewrite(&name, &text, &pin)?;
    match &a.output {
        Some(path) => std::fs::write(path, &out.text)
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{}", out.text),
    }
    if a.json {
        print_json(&json!({ "kind": kind, "changes": out.changes }));
    } else {
        for c in &out.changes {
            eprintln!("{c}");
        }
        if out.changes.is_empty() {
            eprintln!("{name} ({kind}): nothing to change");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_gate(ledger: &mut Ledger, a: GateArgs) -> Result<ExitCode> {
    let set = match &a.deployment {
        Some(n) => Some(ledger.deployment(n)?),
        None => None,
    };
    let manifest = match (&a.manifest, &set) {
        (Some(m), _) => m.clone(),
        (None, Some(d)) => PathBuf::from(&d.manifest),
        (None, None) => bail!("name a manifest or a --deployment"),
    };
    let text = read_text(&manifest)?;
    let (_, images) = manifest::images(&manifest.display().to_string(), &text)?;
    let references: Vec<String> = images.into_iter().map(|i| i.image).collect();
    let devices = if !a.devices.is_empty() {
        a.devices.clone()
    } else if let Some(d) = &set {
        d.devices.clone()
    } else {
        bail!("name the devices (--device) or a --deployment whose devices to check");
    };
    let missing = gate::gate(&references, &held_by(ledger, &devices)?);
    if a.json {
        print_json(&json!({
            "manifest": manifest.display().to_string(),
            "devices": devices.len(),
            "ready": devices.len() - missing.len(),
            "release": missing.is_empty(),
            "missing": missing,
        }));
    } else if missing.is_empty() {
        println!(
            "release: all {} devices hold all {} images of {}",
            devices.len(),
            references.len(),
            manifest.display()
        );
    } else {
        println!(
            "hold: {} of {} devices lack images of {}",
            missing.len(),
            devices.len(),
            manifest.display()
        );
        for m in &missing {
            println!(
                "  {} (checked in its {}): {}",
                m.device,
                m.checked,
                m.images.join(", ")
            );
            if let Some(error) = &m.engine_error {
                println!("    the device could not ask its engine: {error}");
            }
        }
    }
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_HELD_BACK)
    })
}

fn status(ledger: &mut Ledger, a: StatusArgs) -> Result<ExitCode> {
    if let Some(path) = &a.svg {
        let svg = chart::transfers_svg(&ledger.events()?, "sideload: transfers per day");
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        if !a.json {
            eprintln!("wrote {}", path.display());
        }
    }
    let text = !a.json;
    let value = if let Some(id) = &a.device {
        status_device(ledger, id, text)?
    } else if let Some(reference) = &a.image {
        status_image(ledger, reference, text)?
    } else if let Some(name) = &a.deployment {
        status_deployment(ledger, name, text)?
    } else if a.transfers {
        let t = ledger.transfers(None)?;
        if text {
            print_transfers(&t);
        }
        json!({"transfers": t})
    } else if a.by_orderer {
        status_orderers(ledger, text)?
    } else {
        status_overview(ledger, text)?
    };
    if a.json {
        print_json(&value);
    }
    Ok(ExitCode::SUCCESS)
}

/// `fleet status --device ID`: what it holds and its transfers (printed when `text`).
fn status_device(ledger: &mut Ledger, id: &str, text: bool) -> Result<serde_json::Value> {
    let d = ledger.device(id)?;
    let t = ledger.transfers(Some(id))?;
    if text {
        println!(
            "{}  route {}  contact {}  inventory {}  free {}",
            d.device_id,
            or_dash(&d.route),
            or_dash(&d.contact),
            d.inventory_at.map_or("never".into(), when),
            d.free_bytes.map_or("-".into(), |b| format!("{b} B"))
        );
        for i in &d.images {
            println!(
                "  {}:{}  {}",
                i.repository,
                i.tags.join(","),
                i.manifest_digest
            );
        }
        print_transfers(&t);
    }
    Ok(json!({"device": d, "transfers": t}))
}

/// `fleet status --image REF`: which devices hold it.
fn status_image(ledger: &mut Ledger, reference: &str, text: bool) -> Result<serde_json::Value> {
    let Some(name) =
        image_name(reference).or_else(|| image_name(&format!("x.invalid/{reference}")))
    else {
        bail!("{reference:?} is not an image reference");
    };
    let (have, lack): (Vec<_>, Vec<_>) = ledger
        .devices()?
        .into_iter()
        .partition(|d| d.images.iter().any(|i| gate::holds(i, &name)));
    let have: Vec<String> = have.into_iter().map(|d| d.device_id).collect();
    let lack: Vec<String> = lack.into_iter().map(|d| d.device_id).collect();
    if text {
        println!(
            "{reference}: on {} devices, not on {}",
            have.len(),
            lack.len()
        );
        for d in &have {
            println!("  {d}");
        }
    }
    Ok(json!({"image": reference, "devices": have, "devices_without": lack}))
}

/// `fleet status --deployment NAME`: how many of its devices are ready.
fn status_deployment(ledger: &mut Ledger, name: &str, text: bool) -> Result<serde_json::Value> {
    let d = ledger.deployment(name)?;
    let missing = gate::gate(&d.images, &held_by(ledger, &d.devices)?);
    if text {
        println!(
            "{}: {} of {} devices ready; ordered by {}, contact {}",
            d.name,
            d.devices.len() - missing.len(),
            d.devices.len(),
            or_dash(&d.ordered_by),
            or_dash(&d.contact)
        );
        for m in &missing {
            println!("  {} lacks {}", m.device, m.images.join(", "));
        }
    }
    Ok(json!({"deployment": d, "ready": d.devices.len() - missing.len(), "missing": missing}))
}

/// Per orderer (of bundles or deployments): their deployments, bundles, and those bundles'
/// transfers in transit, applied and failed (refused ones included).
fn orderer_rows(
    bundles: &[BundleRecord],
    deployments: &[Deployment],
    transfers: &[sideload_fleet::Transfer],
) -> Vec<serde_json::Value> {
    let mut orderers: BTreeSet<String> = bundles.iter().map(|b| b.ordered_by.clone()).collect();
    orderers.extend(deployments.iter().map(|d| d.ordered_by.clone()));
    let mut rows = Vec::new();
    for o in orderers {
        let mine: Vec<&BundleRecord> = bundles.iter().filter(|b| b.ordered_by == o).collect();
        let count = |s: TransferState| {
            transfers
                .iter()
                .filter(|t| t.state == s && mine.iter().any(|b| b.bundle_id == t.bundle_id))
                .count()
        };
        let deps: Vec<&str> = deployments
            .iter()
            .filter(|d| d.ordered_by == o)
            .map(|d| d.name.as_str())
            .collect();
        rows.push(json!({
            "ordered_by": o, "deployments": deps, "bundles": mine.len(),
            "in_transit": count(TransferState::InTransit), "applied": count(TransferState::Applied),
            "failed": count(TransferState::Failed) + count(TransferState::Refused),
        }));
    }
    rows
}

/// `fleet status --by-orderer`.
fn status_orderers(ledger: &mut Ledger, text: bool) -> Result<serde_json::Value> {
    let rows = orderer_rows(
        &ledger.bundles()?,
        &ledger.deployments()?,
        &ledger.transfers(None)?,
    );
    if text {
        println!(
            "{:<24} {:>7} {:>10} {:>7} {:>6}  deployments",
            "ordered by", "bundles", "in transit", "applied", "failed"
        );
        for r in &rows {
            println!(
                "{:<24} {:>7} {:>10} {:>7} {:>6}  {}",
                or_dash(r["ordered_by"].as_str().unwrap_or("")),
                r["bundles"],
                r["in_transit"],
                r["applied"],
                r["failed"],
                r["deployments"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            );
        }
    }
    Ok(json!({"orderers": rows}))
}

/// Per deployment set: its name, devices, how many are ready, who ordered it.
fn deployment_rows(
    deployments: &[Deployment],
    devices: &[sideload_fleet::Device],
) -> Vec<serde_json::Value> {
    let mut sets = Vec::new();
    for d in deployments {
        let held: Vec<_> = d
            .devices
            .iter()
            .map(|id| {
                let holdings = devices
                    .iter()
                    .find(|x| &x.device_id == id)
                    .map(|x| holdings(x.clone()))
                    .unwrap_or_default();
                (id.clone(), holdings)
            })
            .collect();
        let missing = gate::gate(&d.images, &held);
        sets.push(json!({"name": d.name, "devices": d.devices.len(), "ready": d.devices.len() - missing.len(), "ordered_by": d.ordered_by}));
    }
    sets
}

/// `fleet status`: devices, transfers by state, deployment sets.
fn status_overview(ledger: &mut Ledger, text: bool) -> Result<serde_json::Value> {
    let devices = ledger.devices()?;
    let transfers = ledger.transfers(None)?;
    let deployments = ledger.deployments()?;
    let count = |s: TransferState| transfers.iter().filter(|t| t.state == s).count();
    let sets = deployment_rows(&deployments, &devices);
    let never = devices.iter().filter(|d| d.inventory_at.is_none()).count();
    if text {
        println!(
            "{} devices ({} never reported), {} images held in all",
            devices.len(),
            never,
            devices.iter().map(|d| d.images.len()).sum::<usize>()
        );
        println!(
            "transfers: {} in transit, {} received, {} applied, {} failed, {} refused",
            count(TransferState::InTransit),
            count(TransferState::Received),
            count(TransferState::Applied),
            count(TransferState::Failed),
            count(TransferState::Refused)
        );
        for s in &sets {
            println!(
                "deployment {}: {} of {} devices ready (ordered by {})",
                s["name"].as_str().unwrap_or(""),
                s["ready"],
                s["devices"],
                or_dash(s["ordered_by"].as_str().unwrap_or(""))
            );
        }
    }
    Ok(json!({
        "devices": devices.len(),
        "devices_never_reported": never,
        "transfers": {
            "in_transit": count(TransferState::InTransit),
            "received": count(TransferState::Received),
            "applied": count(TransferState::Applied),
            "failed": count(TransferState::Failed),
            "refused": count(TransferState::Refused),
        },
        "deployments": sets,
    }))
}

fn print_transfers(t: &[sideload_fleet::Transfer]) {
    println!(
        "{:<20} {:<34} {:<10} {:<11} {:<20} reason",
        "device", "bundle", "route", "state", "since"
    );
    for x in t {
        println!(
            "{:<20} {:<34} {:<10} {:<11} {:<20} {}",
            x.device_id,
            x.bundle_name,
            x.route,
            x.state.as_str(),
            when(x.state_at.unwrap_or(x.sent_at)),
            x.reason.as_deref().unwrap_or("")
        );
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// `YYYY-MM-DD HH:MM` UTC.
fn when(t: u64) -> String {
    format!(
        "{} {:02}:{:02}",
        chart::date(t / 86_400),
        t % 86_400 / 3600,
        t % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(id: &str, ordered_by: &str) -> BundleRecord {
        BundleRecord {
            bundle_id: id.into(),
            file: format!("{id}.bundle"),
            size: 1,
            repository: "edge/app".into(),
            tags: vec!["v2".into()],
            manifest_digest: String::new(),
            bases: Vec::new(),
            deployment: None,
            ordered_by: ordered_by.into(),
            contact: String::new(),
            created_at: 0,
        }
    }

    fn transfer(bundle_id: &str, state: TransferState) -> sideload_fleet::Transfer {
        sideload_fleet::Transfer {
            device_id: "dev".into(),
            bundle_id: bundle_id.into(),
            bundle_name: String::new(),
            route: String::new(),
            state,
            reason: None,
            advice: None,
            sent_at: 0,
            state_at: None,
        }
    }

    #[test]
    fn orderers_count_their_own_bundles_transfers_and_refusals_as_failures() {
        let bundles = [bundle("b1", "ops"), bundle("b2", "ci"), bundle("b3", "ops")];
        let deployments = [Deployment {
            name: "site".into(),
            manifest: String::new(),
            images: Vec::new(),
            devices: Vec::new(),
            ordered_by: "release".into(),
            contact: String::new(),
            created_at: 0,
        }];
        let transfers = [
            transfer("b1", TransferState::Applied),
            transfer("b3", TransferState::Refused),
            transfer("b3", TransferState::Failed),
            transfer("b2", TransferState::InTransit),
        ];
        let rows = orderer_rows(&bundles, &deployments, &transfers);
        let row = |o: &str| rows.iter().find(|r| r["ordered_by"] == o).unwrap().clone();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            row("ops"),
            json!({"ordered_by": "ops", "deployments": [], "bundles": 2,
                   "in_transit": 0, "applied": 1, "failed": 2})
        );
        assert_eq!(row("ci")["in_transit"], 1);
        assert_eq!(row("release")["deployments"], json!(["site"]));
        assert_eq!(row("release")["bundles"], 0);
    }

    #[test]
    fn bundle_files_are_named_after_the_target_and_their_place_in_the_run() {
        let target = Target {
            source: "docker://r/edge/app:v2".into(),
            repository: "edge/app".into(),
            tags: vec!["v2".into(), "stable".into()],
            manifest_digest: String::new(),
            config_digest: String::new(),
            diff_ids: Vec::new(),
            layer_sizes: Vec::new(),
            config_size: 0,
        };
        assert_eq!(bundle_slug(&target, 3), "edge_app-v2_stable-03");
        assert_eq!(bundle_slug(&target, 12), "edge_app-v2_stable-12");
    }
}
