//! One visit of a stick: check the device, mount it read-only, find bundles in the one folder,
//! check each head on the stick, hand the trusted ones to the registry plugin in order (per
//! repository by sequence), say when the stick may be removed, wait (bounded) for the applies,
//! write receipts and the inventory back, unmount, and report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sideload_bundle::Limits;
use sideload_signing::{Statement, TrustPolicy, VerifyContext};

use crate::config::Config;
use crate::plugin::{Handed, Plugin};
use crate::receipts::{self, Receipt};

/// What the loader was pointed at.
#[derive(Debug, Clone)]
pub enum Target {
    /// A block device (udev gave its node); checked, then mounted by the loader.
    Device {
        /// `/dev/sdb1`, `/dev/loop3`.
        devnode: PathBuf,
        /// udev properties from a file (`udevadm info --query=property` format) instead of
        /// udev's database: for tests and for debugging; the same checks run on them.
        properties: Option<PathBuf>,
    },
    /// An already mounted stick, or a folder laid out like one (for `--dry-run` and tests).
    Dir(PathBuf),
}

/// How a visit ended, in one word: the journal line, the hook's first argument, `--json`'s
/// `result` and the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VisitResult {
    /// No bundles on the stick.
    Nothing,
    /// Every bundle taken, already there, or waiting on the device for a cause that passes.
    Ok,
    /// Some bundles refused or failed, others taken.
    Partial,
    /// Nothing could be done: every bundle refused or failed, a bad stick, the plugin down.
    Failed,
}

impl VisitResult {
    /// The word as written to the journal, the hook and `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            VisitResult::Nothing => "nothing",
            VisitResult::Ok => "ok",
            VisitResult::Partial => "partial",
            VisitResult::Failed => "failed",
        }
    }

    /// Whether the loader exits 0 (nothing for the technician to do).
    pub fn is_success(self) -> bool {
        matches!(self, VisitResult::Nothing | VisitResult::Ok)
    }
}

/// How the visit ended, for the journal line, the hook and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The visit's result in one word.
    pub result: VisitResult,
    /// One line for a person.
    pub summary: String,
    /// Per bundle.
    pub receipts: Vec<Receipt>,
    /// Entries of the folder that were not looked at, with reasons.
    pub skipped: Vec<(String, String)>,
    /// Whether receipts reached the stick (false on a write-protected stick or a dry run).
    pub receipts_written: bool,
    /// True when this was a dry run (nothing sent, nothing written).
    pub dry_run: bool,
}

/// Set once every trusted bundle of the stick is on the device: a stop after this (the stick
/// pulled, the unit stopped) does not make the visit a failure.
pub static HANDED_OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A plugin state as a receipt says it.
fn receipt_state(plugin_state: &str) -> &str {
    match plugin_state {
        "queued" => "received",
        other => other,
    }
}

impl Outcome {
    /// The visit was stopped (stick pulled, unit stopped) after every trusted bundle was on the
    /// device and the receipts so far were written.
    pub fn removed_after_hand_over(dry_run: bool) -> Outcome {
        Outcome {
            result: VisitResult::Ok,
            summary: "stopped after every bundle was handed over; applying continues on the device, results go onto the stick at its next visit".into(),
            receipts: Vec::new(),
            skipped: Vec::new(),
            receipts_written: true,
            dry_run,
        }
    }
}

/// What the loader remembers per stick between visits.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StickState {
    /// Uploads started and not finished (the stick was pulled): statement digest → location.
    uploads: BTreeMap<String, String>,
    /// Bundles handed over whose final result has not reached the stick yet: id → name.
    pending: BTreeMap<String, String>,
}

/// Runs one visit.
pub async fn run(config: &Config, target: Target, dry_run: bool) -> anyhow::Result<Outcome> {
    let policy = TrustPolicy::load(&config.trust_policy).map_err(|e| {
        anyhow::anyhow!(
            "{e}; the loader checks bundles against the device's trust policy (trust_policy)"
        )
    })?;
    match target {
        Target::Dir(dir) => visit(config, &policy, &dir, None, "dir", dry_run).await,
        Target::Device {
            devnode,
            properties,
        } => {
            let props = match &properties {
                Some(file) => crate::device::properties_from_file(file),
                None => crate::device::properties_from_udev(&devnode),
            }
            .map_err(|e| anyhow::anyhow!("{e}; {}", e.advice()))?;
            let stick = crate::device::check(&devnode, &props, &config.allowed_filesystems)
                .map_err(|e| anyhow::anyhow!("{e}; {}", e.advice()))?;
            let name = stick.name();
            let mounted =
                crate::mount::mount_readonly(&devnode, &stick.fs_type, &config.mount_root, &name)
                    .map_err(|e| anyhow::anyhow!("{e}; {}", e.advice()))?;
            tracing::info!(device = %devnode.display(), stick = %name, fs = %stick.fs_type,
                at = %mounted.path().display(), "stick mounted read-only");
            let root = mounted.path().to_owned();
            let result = visit(config, &policy, &root, Some(&mounted), &name, dry_run).await;
            match mounted.unmount() {
                Ok(()) => tracing::info!(device = %devnode.display(), "stick unmounted"),
                // The visit's result stands; the mount point is gone either way.
                Err(e) => {
                    tracing::error!(error = %e, advice = e.advice(), "stick not unmounted cleanly")
                }
            }
            result
        }
    }
}

async fn visit(
    config: &Config,
    policy: &TrustPolicy,
    root: &Path,
    mounted: Option<&crate::mount::Mounted>,
    stick: &str,
    dry_run: bool,
) -> anyhow::Result<Outcome> {
    let now = VerifyContext::at_system_time(None).now;
    let limits = crate::scan::ScanLimits {
        max_entries: config.max_entries,
        max_bundle_bytes: config.max_bundle_bytes,
        max_time: Duration::from_secs(config.scan_secs),
        ..crate::scan::ScanLimits::default()
    };
    let scan = crate::scan::scan(&root.join(&config.folder), &limits)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let skipped: Vec<(String, String)> = scan
        .skipped
        .iter()
        .map(|s| (s.name.clone(), s.reason.clone()))
        .collect();
    for (name, reason) in &skipped {
        tracing::warn!(entry = %name, %reason, "skipped on the stick");
    }
    if scan.skipped_unlisted > 0 {
        tracing::warn!(
            more = scan.skipped_unlisted,
            "more entries were skipped than are listed by name"
        );
    }
    if scan.truncated {
        tracing::warn!(
            max_entries = config.max_entries,
            "the stick's folder has more entries than max_entries; the rest were not looked at"
        );
    }
    let plugin = Plugin::new(&config.plugin_url);
    let mut plugin_down = None;
    let inventory = match plugin.inventory().await {
        Ok(inv) => inv,
        Err(e) if dry_run => {
            tracing::warn!(error = %e, "registry plugin unreachable; dry run goes on without it");
            serde_json::Value::Null
        }
        // Go on without it: the stick still gets receipts saying why nothing was taken.
        Err(e) => {
            tracing::error!(error = %e, "registry plugin unreachable");
            plugin_down = Some(format!(
                "{e}; the loader hands bundles to the registry plugin: start it (systemctl start sideload-registry-plugin) and insert the stick again"
            ));
            serde_json::Value::Null
        }
    };
    let floors = Plugin::sequences(&inventory);
    let limits_engine = Limits::default();

    // Check the heads on the stick, those signed by a trusted key first, within the budget;
    // sort the trusted ones per repository by sequence.
    let mut receipts: Vec<Receipt> = Vec::new();
    let mut to_send: Vec<(Statement, crate::scan::Candidate)> = Vec::new();
    let mut head_budget = config.max_head_bytes;
    for c in verification_order(&scan, policy) {
        let receipt = |state: &str, reason: Option<String>, advice: Option<String>| Receipt {
            bundle: c.name.clone(),
            id: None,
            repository: None,
            tags: Vec::new(),
            sequence: None,
            state: state.into(),
            reason,
            advice,
            at: now,
        };
        if c.head_len > head_budget {
            receipts.push(receipt(
                "skipped",
                Some(format!(
                    "{}: not checked: this visit's budget for reading bundle heads \
                     (max_head_bytes = {}) ran out on other files",
                    c.name, config.max_head_bytes
                )),
                Some("it stays on the stick: insert the stick again, or remove the files the device refused".into()),
            ));
            continue;
        }
        head_budget -= c.head_len;
        let mut file = match scan.open(c) {
            Ok((f, _)) => f,
            Err(e) => {
                receipts.push(receipt(
                    "skipped",
                    Some(format!("{}: cannot open on the stick: {e}", c.name)),
                    Some("check the stick on another machine".into()),
                ));
                continue;
            }
        };
        // A bundle the device already has is reported as such, before the sequence floor
        // (which it would fail, being the very bundle that set it) is looked at.
        if let Ok(head) = sideload_bundle::read_head(&mut file, &c.name, &limits_engine) {
            if let Ok(unverified) = Statement::from_canonical_json(&head.statement_bytes) {
                let id = unverified.digest().to_string();
                if let Ok(Some(known)) = plugin.state(&id).await {
                    if known.state != "failed" {
                        let state = if known.state == "applied" {
                            "already-applied"
                        } else {
                            "received"
                        };
                        receipts.push(with_statement(receipt(state, None, None), &unverified, &id));
                        continue;
                    }
                }
            }
        }
        if let Err(e) = std::io::Seek::rewind(&mut file) {
            receipts.push(receipt(
                "skipped",
                Some(format!("{}: cannot read it on the stick: {e}", c.name)),
                None,
            ));
            continue;
        }
        match sideload_bundle::verify_head_with_floor(
            &mut file,
            &c.name,
            policy,
            now,
            &limits_engine,
            |repo| floors.get(repo).copied(),
        ) {
            Ok((head, statement)) => {
                let id = statement.digest().to_string();
                let total = head.payload_offset() + statement.payload.size;
                if total != c.len {
                    receipts.push(with_statement(
                        receipt(
                            "refused",
                            Some(format!(
                                "{}: the file is {} bytes, its head declares {total}",
                                c.name, c.len
                            )),
                            Some(
                                "the copy on the stick is incomplete or damaged: copy it again"
                                    .into(),
                            ),
                        ),
                        &statement,
                        &id,
                    ));
                    continue;
                }
                to_send.push((statement, c.clone()));
            }
            Err(e) => receipts.push(receipt(
                "refused",
                Some(e.to_string()),
                Some(e.advice().into()),
            )),
        }
    }
    to_send.sort_by(|a, b| {
        (a.0.target.repository.as_str(), a.0.sequence, &a.1.name).cmp(&(
            b.0.target.repository.as_str(),
            b.0.sequence,
            &b.1.name,
        ))
    });
    if to_send.len() > config.max_bundles {
        for (statement, c) in to_send.split_off(config.max_bundles) {
            let id = statement.digest().to_string();
            receipts.push(with_statement(
                Receipt {
                    bundle: c.name.clone(),
                    id: None,
                    repository: None,
                    tags: Vec::new(),
                    sequence: None,
                    state: "skipped".into(),
                    reason: Some(format!(
                        "{}: more than max_bundles = {} trusted bundles on this stick",
                        c.name, config.max_bundles
                    )),
                    advice: Some("it stays on the stick for the next visit".into()),
                    at: now,
                },
                &statement,
                &id,
            ));
        }
    }

    let state_path = config
        .state_dir
        .join(format!("{}.json", receipts::safe_name(stick)));
    let mut state: StickState = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();

    if dry_run {
        for (statement, c) in &to_send {
            let (name, len) = (&c.name, c.len);
            let what = "would hand over";
            println!(
                "{name}: trusted, {} {} sequence {}, {len} bytes: {what}",
                statement.target.repository,
                statement
                    .target
                    .tags
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                statement.sequence
            );
        }
        for r in &receipts {
            println!(
                "{}: {}: {}",
                r.bundle,
                r.state,
                r.reason.as_deref().unwrap_or("")
            );
        }
        for (name, reason) in &skipped {
            println!("{name}: skipped: {reason}");
        }
        return Ok(Outcome {
            result: if to_send.is_empty() && receipts.is_empty() {
                VisitResult::Nothing
            } else {
                VisitResult::Ok
            },
            summary: format!(
                "dry run: {} trusted bundle(s), {} refused, {} skipped; nothing sent or written",
                to_send.len(),
                receipts.len(),
                skipped.len()
            ),
            receipts,
            skipped,
            receipts_written: false,
            dry_run,
        });
    }

    // Hand over, in order; bundles the device already has are not sent again.
    let mut handed: Vec<(String, usize)> = Vec::new();
    let mut hand_over_failed = false;
    for (statement, c) in &to_send {
        let (name, len) = (&c.name, c.len);
        let id = statement.digest().to_string();
        let base = with_statement(
            Receipt {
                bundle: name.clone(),
                id: None,
                repository: None,
                tags: Vec::new(),
                sequence: None,
                state: String::new(),
                reason: None,
                advice: None,
                at: now,
            },
            statement,
            &id,
        );
        if let Some(reason) = &plugin_down {
            hand_over_failed = true;
            receipts.push(Receipt {
                state: "failed".into(),
                reason: Some(format!("{name}: {reason}")),
                advice: Some("start the registry plugin, then insert the stick again".into()),
                ..base
            });
            continue;
        }
        let file = match scan.open(c) {
            Ok((f, _)) => f,
            Err(e) => {
                hand_over_failed = true;
                receipts.push(Receipt {
                    state: "failed".into(),
                    reason: Some(format!("{name}: cannot read it on the stick: {e}")),
                    advice: Some("insert the stick again; if it repeats, check the stick".into()),
                    ..base
                });
                continue;
            }
        };
        match hand_over(&plugin, &state_path, &mut state, &id, name, len, file).await {
            Ok(Handed::Queued) | Ok(Handed::Duplicate) => {
                tracing::info!(bundle = %name, %id, "handed over to the registry plugin");
                state.pending.insert(id.clone(), name.clone());
                receipts.push(Receipt {
                    state: "received".into(),
                    ..base
                });
                handed.push((id, receipts.len() - 1));
            }
            Ok(Handed::Refused {
                code,
                reason,
                advice,
            }) => {
                tracing::warn!(bundle = %name, %code, %reason, "registry plugin refused the bundle");
                receipts.push(Receipt {
                    state: "refused".into(),
                    reason: Some(reason),
                    advice: Some(advice),
                    ..base
                });
            }
            Err(e) => {
                hand_over_failed = true;
                tracing::error!(bundle = %name, error = %e, "hand-over failed; the next insertion resumes it");
                receipts.push(Receipt {
                    state: "failed".into(),
                    reason: Some(format!("{name}: {e}")),
                    advice: Some(
                        "insert the stick again: the transfer resumes where it stopped".into(),
                    ),
                    ..base
                });
            }
        }
        save_state(&state_path, &state);
    }
    // Results of bundles from earlier visits that finished since (not on the stick any more,
    // or already reported above).
    for (id, name) in state.pending.clone() {
        if receipts
            .iter()
            .any(|r| r.id.as_deref() == Some(id.as_str()))
        {
            continue;
        }
        if let Ok(Some(s)) = plugin.state(&id).await {
            receipts.push(Receipt {
                bundle: name.clone(),
                id: Some(id.clone()),
                repository: None,
                tags: Vec::new(),
                sequence: None,
                state: receipt_state(&s.state).into(),
                reason: s.reason.clone(),
                advice: s.advice.clone(),
                at: now,
            });
            handed.push((id.clone(), receipts.len() - 1));
        }
    }
    // Receipts now, before the stick may be pulled; updated after the wait below.
    let early = serde_json::json!({
        "device": config.device_id,
        "at": now,
        "result": if hand_over_failed { "failed" } else { "handed-over" },
        "summary": "bundles handed over; applying continues",
    });
    let mut receipts_written = write_receipts(config, root, mounted, &receipts, &inventory, &early);
    if !hand_over_failed {
        HANDED_OVER.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(
            handed = handed.len(),
            "SAFE TO REMOVE: every trusted bundle of this stick is on the device; applying continues"
        );
    }

    // Wait (bounded) for the applies, so the receipts can say how they ended.
    let deadline = Instant::now() + Duration::from_secs(config.apply_wait_secs);
    loop {
        let mut open = false;
        for (id, i) in &handed {
            if let Ok(Some(s)) = plugin.state(id).await {
                let r = &mut receipts[*i];
                r.state = receipt_state(&s.state).into();
                r.reason = s.reason.clone();
                r.advice = s.advice.clone();
                // A `waiting` bundle waits for a cause to pass (disk space, the registry):
                // it is on the device, and no use keeping the stick for it.
                open |= matches!(s.state.as_str(), "queued" | "applying");
            }
        }
        if !open || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let (result, summary) = judge_visit(&receipts);

    // Receipts back onto the stick, where it is writable.
    let visit_json = serde_json::json!({
        "device": config.device_id,
        "at": now,
        "result": result,
        "summary": summary,
        "skipped": skipped.iter().map(|(n, r)| serde_json::json!({"entry": n, "reason": r})).collect::<Vec<_>>(),
        // Skipped entries beyond the ones listed by name.
        "skipped_unlisted": scan.skipped_unlisted,
        // More entries than max_entries: the rest of the folder was not looked at.
        "entries_truncated": scan.truncated,
    });
    receipts_written &= write_receipts(config, root, mounted, &receipts, &inventory, &visit_json);
    if receipts_written {
        // Everything final is now on the stick; keep what is still running or unknown.
        state.pending.retain(|id, _| {
            receipts
                .iter()
                .find(|r| r.id.as_deref() == Some(id))
                .is_none_or(|r| matches!(r.state.as_str(), "received" | "applying"))
        });
    }
    save_state(&state_path, &state);
    Ok(Outcome {
        result,
        summary,
        receipts,
        skipped,
        receipts_written,
        dry_run,
    })
}

/// The order in which candidates' heads are verified: those whose signature slot names a key
/// of the trust policy first (a cheap look at the slot, trusted for nothing else), then the
/// rest; by name within each. Junk that merely looks like a bundle cannot use up the head
/// budget before a trusted bundle is reached.
fn verification_order<'a>(
    scan: &'a crate::scan::Scan,
    policy: &TrustPolicy,
) -> Vec<&'a crate::scan::Candidate> {
    let mut ranked: Vec<(bool, &crate::scan::Candidate)> = scan
        .candidates
        .iter()
        .map(|c| {
            let signers = slot_signers(scan, c);
            (!signers.iter().any(|id| policy.key(id).is_some()), c)
        })
        .collect();
    ranked.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    ranked.into_iter().map(|(_, c)| c).collect()
}

/// Bytes of a signature slot looked at to rank a candidate: room for seven signatures, so the
/// ranking reads at most this much (and one open) per candidate, whatever the slot declares.
const SLOT_PEEK_BYTES: u64 = 1024;

/// The key ids a candidate's signature slot names in its first [`SLOT_PEEK_BYTES`], unverified
/// (a hint for the order of verification, nothing else); empty if it cannot be read.
fn slot_signers(
    scan: &crate::scan::Scan,
    c: &crate::scan::Candidate,
) -> Vec<sideload_signing::KeyId> {
    use std::io::{Read, Seek, SeekFrom};
    let read = || -> Option<Vec<u8>> {
        let (mut file, _) = scan.open(c).ok()?;
        file.seek(SeekFrom::Start(
            sideload_bundle::container::HEADER_LEN + u64::from(c.statement_len),
        ))
        .ok()?;
        let mut slot = Vec::new();
        file.take(u64::from(c.slot_len).min(SLOT_PEEK_BYTES))
            .read_to_end(&mut slot)
            .ok()?;
        Some(slot)
    };
    read().map(|slot| key_ids_named(&slot)).unwrap_or_default()
}

/// Every `"key_id":"<16 hex>"` in a (possibly cut) compact JSON signature list. Pure.
fn key_ids_named(slot: &[u8]) -> Vec<sideload_signing::KeyId> {
    const FIELD: &[u8] = b"\"key_id\":\"";
    let mut ids = Vec::new();
    let mut rest = slot;
    while let Some(at) = rest.windows(FIELD.len()).position(|w| w == FIELD) {
        rest = &rest[at + FIELD.len()..];
        if let Some(id) = rest
            .get(..16)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| hex.parse().ok())
        {
            ids.push(id);
        }
    }
    ids
}

/// Sends one bundle, resuming an upload an earlier visit started.
async fn hand_over(
    plugin: &Plugin,
    state_path: &Path,
    state: &mut StickState,
    id: &str,
    name: &str,
    len: u64,
    file: std::fs::File,
) -> Result<Handed, String> {
    let (location, offset) = match state.uploads.get(id) {
        Some(loc) => match plugin.offset(loc).await? {
            Some(off) => (loc.clone(), off),
            None => (plugin.create(name, len).await?, 0),
        },
        None => (plugin.create(name, len).await?, 0),
    };
    state.uploads.insert(id.to_owned(), location.clone());
    // Remembered before a byte is sent: if the stick is pulled mid-transfer, its next
    // insertion resumes this upload instead of starting over.
    save_state(state_path, state);
    if offset > 0 {
        tracing::info!(bundle = %name, offset, "resuming the transfer an earlier insertion started");
    }
    let handed = plugin.send(&location, file, offset).await?;
    state.uploads.remove(id);
    Ok(handed)
}

fn with_statement(mut r: Receipt, s: &Statement, id: &str) -> Receipt {
    r.id = Some(id.to_owned());
    r.repository = Some(s.target.repository.to_string());
    r.tags = s.target.tags.iter().map(|t| t.to_string()).collect();
    r.sequence = Some(s.sequence);
    r
}

fn write_receipts(
    config: &Config,
    root: &Path,
    mounted: Option<&crate::mount::Mounted>,
    receipts: &[Receipt],
    inventory: &serde_json::Value,
    summary: &serde_json::Value,
) -> bool {
    if let Some(m) = mounted {
        if let Err(e) = m.remount_writable() {
            tracing::warn!(error = %e, "stick is write-protected; no receipts this time");
            return false;
        }
    }
    let written = receipts::write(
        root,
        &config.folder,
        &config.device_id,
        receipts,
        inventory,
        summary,
    );
    if let Some(m) = mounted {
        if let Err(e) = m.remount_readonly() {
            tracing::warn!(error = %e, "cannot return the stick to read-only");
        }
    }
    match written {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot write receipts onto the stick");
            false
        }
    }
}

fn save_state(path: &Path, state: &StickState) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let body = serde_json::to_vec_pretty(state).expect("serializes");
        sideload_bundle::fsutil::replace_file_with(path, 0o600, &body)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e, "cannot save the loader's state");
    }
}

/// The visit's result (`nothing`, `ok`, `partial`, `failed`) and its one-line summary, from the
/// receipts. A bundle the device keeps `waiting` (for disk space, for its registry) is on the
/// device and applies when the cause passes: it is named with its reason, not counted as bad.
fn judge_visit(receipts: &[Receipt]) -> (VisitResult, String) {
    let count = |states: &[&str]| {
        receipts
            .iter()
            .filter(|r| states.contains(&r.state.as_str()))
            .count()
    };
    let applied = count(&["applied"]);
    let already = count(&["already-applied"]);
    let in_progress = count(&["received", "applying"]);
    let waiting: Vec<&Receipt> = receipts.iter().filter(|r| r.state == "waiting").collect();
    let bad: Vec<&Receipt> = receipts
        .iter()
        .filter(|r| matches!(r.state.as_str(), "refused" | "failed" | "skipped"))
        .collect();
    let result = if receipts.is_empty() {
        VisitResult::Nothing
    } else if bad.is_empty() {
        VisitResult::Ok
    } else if applied + already + in_progress + waiting.len() > 0 {
        VisitResult::Partial
    } else {
        VisitResult::Failed
    };
    let mut summary = format!(
        "{applied} applied, {already} already there, {in_progress} still applying, {} waiting on the device, {} refused or failed",
        waiting.len(),
        bad.len()
    );
    for r in waiting.iter().chain(&bad) {
        summary.push_str(&format!(
            "; {}: {}",
            r.bundle,
            r.reason.as_deref().unwrap_or(&r.state)
        ));
    }
    (result, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(bundle: &str, state: &str, reason: Option<&str>) -> Receipt {
        Receipt {
            bundle: bundle.into(),
            id: None,
            repository: None,
            tags: Vec::new(),
            sequence: None,
            state: state.into(),
            reason: reason.map(Into::into),
            advice: None,
            at: 0,
        }
    }

    #[test]
    fn a_waiting_bundle_is_named_with_its_reason_and_is_not_a_failure() {
        let (result, summary) = judge_visit(&[
            receipt("a.bundle", "applied", None),
            receipt("b.bundle", "waiting", Some("no space left for the apply")),
        ]);
        assert_eq!(result, VisitResult::Ok);
        assert_eq!(
            summary,
            "1 applied, 0 already there, 0 still applying, 1 waiting on the device, 0 refused or \
             failed; b.bundle: no space left for the apply"
        );
        let (result, _) = judge_visit(&[
            receipt("b.bundle", "waiting", None),
            receipt("c.bundle", "refused", Some("unknown key")),
        ]);
        assert_eq!(result, VisitResult::Partial);
        let (result, summary) = judge_visit(&[receipt("c.bundle", "refused", None)]);
        assert_eq!(result, VisitResult::Failed);
        assert!(
            summary.ends_with("1 refused or failed; c.bundle: refused"),
            "{summary}"
        );
        assert_eq!(judge_visit(&[]).0, VisitResult::Nothing);
    }

    #[test]
    fn key_ids_are_picked_from_a_slot_even_when_cut() {
        let sig = |id: &str| format!(r#"{{"key_id":"{id}","signature":"AAAA"}}"#);
        let slot = format!(
            "[{},{}]   ",
            sig("0123456789abcdef"),
            sig("fedcba9876543210")
        );
        let ids: Vec<String> = key_ids_named(slot.as_bytes())
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(ids, ["0123456789abcdef", "fedcba9876543210"]);
        assert_eq!(key_ids_named(&slot.as_bytes()[..30]).len(), 1);
        assert!(key_ids_named(b"[{\"key_id\":\"short\"}]").is_empty());
        assert!(key_ids_named(b"").is_empty());
    }
}
