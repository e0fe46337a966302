//! One visit of a stick: check the device, mount it read-only, find bundles in the one folder,
//! check each head on the stick, hand the trusted ones to the registry plugin in order (per
//! repository by sequence), say when the stick may be removed, wait (bounded) for the applies,
//! write receipts and the inventory back, unmount, and report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sideload_bundle::{judge_head, BundleHead, Claims, Holdings, Limits, Trust, Verdict};
use sideload_signing::{Statement, TrustPolicy, VerifyContext};

use sideload_device_api::{BundleRecord, BundleState, Inventory};

use crate::config::Config;
use crate::plugin::{Handed, Plugin, PluginError};
use crate::receipts::{self, Receipt, ReceiptState};

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

/// Why a visit could not look at the stick at all. Each message ends with what to do.
#[derive(Debug, thiserror::Error)]
pub enum VisitError {
    /// The device's trust policy could not be read.
    #[error("{0}; the loader checks bundles against the device's trust policy (trust_policy)")]
    Policy(#[from] sideload_signing::PolicyError),
    /// The block device is not one the loader takes.
    #[error("{0}; {advice}", advice = .0.advice())]
    Device(#[from] crate::device::DeviceError),
    /// The stick could not be mounted.
    #[error("{0}; {advice}", advice = .0.advice())]
    Mount(#[from] crate::mount::MountError),
    /// The stick's folder could not be listed.
    #[error("{0}")]
    Scan(#[from] crate::scan::ScanError),
    /// The plugin's client could not be set up.
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

/// Runs one visit.
pub async fn run(config: &Config, target: Target, dry_run: bool) -> Result<Outcome, VisitError> {
    let policy = TrustPolicy::load(&config.trust_policy)?;
    match target {
        Target::Dir(dir) => visit(config, &policy, &dir, None, "dir", dry_run).await,
        Target::Device {
            devnode,
            properties,
        } => {
            let props = match &properties {
                Some(file) => crate::device::properties_from_file(file),
                None => crate::device::properties_from_udev(&devnode),
            }?;
            let stick = crate::device::check(&devnode, &props, &config.allowed_filesystems)?;
            let name = stick.name();
            let mounted =
                crate::mount::mount_readonly(&devnode, &stick.fs_type, &config.mount_root, &name)?;
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

/// What one visit works with: the stick, the plugin and the moment.
struct Visit<'a> {
    config: &'a Config,
    root: &'a Path,
    mounted: Option<&'a crate::mount::Mounted>,
    plugin: Plugin,
    now: u64,
}

/// `visit.json`: the visit's summary on the stick. Written with its keys sorted.
#[derive(Debug, Serialize)]
struct VisitRecord<'a> {
    at: u64,
    device: &'a str,
    /// More entries than max_entries: the rest of the folder was not looked at.
    #[serde(skip_serializing_if = "Option::is_none")]
    entries_truncated: Option<bool>,
    result: VisitWord,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<Vec<SkippedEntry<'a>>>,
    /// Skipped entries beyond the ones listed by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped_unlisted: Option<usize>,
    summary: &'a str,
}

impl<'a> VisitRecord<'a> {
    /// The record written before the wait: every bundle handed over, or a hand-over failed.
    fn early(at: u64, device: &'a str, hand_over_failed: bool) -> VisitRecord<'a> {
        VisitRecord {
            at,
            device,
            entries_truncated: None,
            result: if hand_over_failed {
                VisitWord::Result(VisitResult::Failed)
            } else {
                VisitWord::HandedOver
            },
            skipped: None,
            skipped_unlisted: None,
            summary: "bundles handed over; applying continues",
        }
    }

    /// The record written at the end of the visit.
    fn last(
        at: u64,
        device: &'a str,
        result: VisitResult,
        summary: &'a str,
        skipped: &'a [(String, String)],
        scan: &crate::scan::Scan,
    ) -> VisitRecord<'a> {
        VisitRecord {
            at,
            device,
            entries_truncated: Some(scan.truncated),
            result: VisitWord::Result(result),
            skipped: Some(
                skipped
                    .iter()
                    .map(|(entry, reason)| SkippedEntry { entry, reason })
                    .collect(),
            ),
            skipped_unlisted: Some(scan.skipped_unlisted),
            summary,
        }
    }
}

/// An entry of the folder that was not looked at, in `visit.json`.
#[derive(Debug, Serialize)]
struct SkippedEntry<'a> {
    entry: &'a str,
    reason: &'a str,
}

/// The visit's word in `visit.json`: [`VisitResult`] at the end, `handed-over` or `failed` in
/// the early write before the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum VisitWord {
    /// Every bundle handed over (the early write).
    HandedOver,
    /// The visit's result.
    #[serde(untagged)]
    Result(VisitResult),
}

async fn visit(
    config: &Config,
    policy: &TrustPolicy,
    root: &Path,
    mounted: Option<&crate::mount::Mounted>,
    stick: &str,
    dry_run: bool,
) -> Result<Outcome, VisitError> {
    let v = Visit {
        config,
        root,
        mounted,
        plugin: Plugin::new(&config.plugin_url)?,
        now: VerifyContext::at_system_time(None).now,
    };
    let scan = scan_folder(config, root)?;
    let skipped: Vec<(String, String)> = scan
        .skipped
        .iter()
        .map(|s| (s.name.clone(), s.reason.clone()))
        .collect();
    let (inventory, plugin_down) = v.inventory(dry_run).await;
    let floors = inventory
        .as_ref()
        .map(|i| i.sequences.clone())
        .unwrap_or_default();
    let (mut receipts, mut to_send) = v.check_heads(&scan, policy, &floors).await;
    order_for_hand_over(&mut to_send);
    receipts.extend(over_the_cap(&mut to_send, config.max_bundles, v.now));

    let state_path = config
        .state_dir
        .join(format!("{}.json", receipts::safe_name(stick)));
    let mut state: StickState = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if dry_run {
        return Ok(dry_run_outcome(&to_send, receipts, skipped));
    }
    let mut handed = Vec::new();
    let hand_over_failed = v
        .hand_over_all(
            &scan,
            &to_send,
            plugin_down.as_deref(),
            &state_path,
            &mut state,
            &mut receipts,
            &mut handed,
        )
        .await;
    v.pending_results(&state, &mut receipts, &mut handed).await;
    // Receipts now, before the stick may be pulled; updated after the wait below.
    let early = VisitRecord::early(v.now, &config.device_id, hand_over_failed);
    let mut receipts_written = v.write_receipts(&receipts, inventory.as_ref(), &early);
    if !hand_over_failed {
        HANDED_OVER.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(
            handed = handed.len(),
            "SAFE TO REMOVE: every trusted bundle of this stick is on the device; applying continues"
        );
    }
    v.wait_for_applies(&handed, &mut receipts).await;

    let (result, summary) = judge_visit(&receipts);
    // Receipts back onto the stick, where it is writable.
    let visit_json = VisitRecord::last(v.now, &config.device_id, result, &summary, &skipped, &scan);
    receipts_written &= v.write_receipts(&receipts, inventory.as_ref(), &visit_json);
    if receipts_written {
        // Everything final is now on the stick; keep what is still running or unknown.
        state.pending.retain(|id, _| still_pending(&receipts, id));
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

/// Lists the stick's folder within the configured bounds, and logs what it skipped.
fn scan_folder(config: &Config, root: &Path) -> Result<crate::scan::Scan, VisitError> {
    let limits = crate::scan::ScanLimits {
        max_entries: config.max_entries,
        max_bundle_bytes: config.max_bundle_bytes,
        max_time: Duration::from_secs(config.scan_secs),
        ..crate::scan::ScanLimits::default()
    };
    let scan = crate::scan::scan(&root.join(&config.folder), &limits)?;
    for s in &scan.skipped {
        tracing::warn!(entry = %s.name, reason = %s.reason, "skipped on the stick");
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
    Ok(scan)
}

/// A receipt for the candidate `name`, before its statement is known.
fn bare_receipt(
    name: &str,
    state: ReceiptState,
    reason: Option<String>,
    advice: Option<String>,
    at: u64,
) -> Receipt {
    Receipt {
        bundle: name.to_owned(),
        id: None,
        repository: None,
        tags: Vec::new(),
        sequence: None,
        state,
        reason,
        advice,
        at,
    }
}

/// What the receipt says about a bundle the device already knows, when that settles it
/// (`already-applied`, `received`); `None` when it should be checked and handed over again
/// (it failed there: delivering it again retries). Pure.
pub fn known_on_device(state: BundleState) -> Option<ReceiptState> {
    match state {
        BundleState::Failed => None,
        BundleState::Applied => Some(ReceiptState::AlreadyApplied),
        _ => Some(ReceiptState::Received),
    }
}

/// Sorts trusted bundles for hand-over: per repository by sequence, then by name. Pure.
fn order_for_hand_over(to_send: &mut [(Statement, crate::scan::Candidate)]) {
    to_send.sort_by(|a, b| {
        (a.0.target.repository.as_str(), a.0.sequence, &a.1.name).cmp(&(
            b.0.target.repository.as_str(),
            b.0.sequence,
            &b.1.name,
        ))
    });
}

/// Cuts the list at `max_bundles`; the rest get `skipped` receipts. Pure.
fn over_the_cap(
    to_send: &mut Vec<(Statement, crate::scan::Candidate)>,
    max_bundles: usize,
    now: u64,
) -> Vec<Receipt> {
    if to_send.len() <= max_bundles {
        return Vec::new();
    }
    to_send
        .split_off(max_bundles)
        .into_iter()
        .map(|(statement, c)| {
            let id = statement.digest().to_string();
            let reason = format!(
                "{}: more than max_bundles = {max_bundles} trusted bundles on this stick",
                c.name
            );
            let advice = "it stays on the stick for the next visit".to_owned();
            let r = bare_receipt(
                &c.name,
                ReceiptState::Skipped,
                Some(reason),
                Some(advice),
                now,
            );
            with_statement(r, &statement, &id)
        })
        .collect()
}

/// A dry run's outcome: what would be handed over, printed; nothing sent or written.
fn dry_run_outcome(
    to_send: &[(Statement, crate::scan::Candidate)],
    receipts: Vec<Receipt>,
    skipped: Vec<(String, String)>,
) -> Outcome {
    for (statement, c) in to_send {
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
    Outcome {
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
        dry_run: true,
    }
}

/// The receipt of a hand-over, from the plugin's answer. Pure.
fn hand_over_receipt(base: Receipt, result: &Result<Handed, PluginError>) -> Receipt {
    let name = &base.bundle;
    match result {
        Ok(Handed::Queued) | Ok(Handed::Duplicate) => Receipt {
            state: ReceiptState::Received,
            ..base
        },
        Ok(Handed::Refused(r)) => Receipt {
            state: ReceiptState::Refused,
            reason: Some(r.reason.clone()),
            advice: Some(r.advice.clone()),
            ..base
        },
        Err(e) => Receipt {
            state: ReceiptState::Failed,
            reason: Some(format!("{name}: {e}")),
            advice: Some("insert the stick again: the transfer resumes where it stopped".into()),
            ..base
        },
    }
}

/// Takes the device's record of a handed-over bundle into its receipt; true while the device
/// still works on it. A `waiting` bundle waits for a cause to pass (disk space, the registry):
/// it is on the device, and no use keeping the stick for it. Pure.
fn take_record(receipt: &mut Receipt, record: &BundleRecord) -> bool {
    receipt.state = ReceiptState::from_device(record.state);
    receipt.reason = record.reason.clone();
    receipt.advice = record.advice.clone();
    matches!(record.state, BundleState::Queued | BundleState::Applying)
}

/// Whether a handed-over bundle stays pending after its receipts reached the stick: its
/// result is still open, or not on the stick at all. Pure.
fn still_pending(receipts: &[Receipt], id: &str) -> bool {
    receipts
        .iter()
        .find(|r| r.id.as_deref() == Some(id))
        .is_none_or(|r| r.state.is_open())
}

impl Visit<'_> {
    /// The device's inventory, and why the plugin is down when it is (the visit goes on
    /// without it: the stick still gets receipts saying why nothing was taken).
    async fn inventory(&self, dry_run: bool) -> (Option<Inventory>, Option<String>) {
        match self.plugin.inventory().await {
            Ok(inv) => (Some(inv), None),
            Err(e) if dry_run => {
                tracing::warn!(error = %e, "registry plugin unreachable; dry run goes on without it");
                (None, None)
            }
            Err(e) => {
                tracing::error!(error = %e, "registry plugin unreachable");
                (None, Some(format!(
                    "{e}; the loader hands bundles to the registry plugin: start it (systemctl start sideload-registry-plugin) and insert the stick again"
                )))
            }
        }
    }

    /// Checks the heads on the stick, those signed by a trusted key first, within the budget:
    /// receipts for what is settled here, and the trusted bundles to hand over.
    async fn check_heads(
        &self,
        scan: &crate::scan::Scan,
        policy: &TrustPolicy,
        floors: &BTreeMap<String, u64>,
    ) -> (Vec<Receipt>, Vec<(Statement, crate::scan::Candidate)>) {
        let mut receipts = Vec::new();
        let mut to_send = Vec::new();
        let mut head_budget = self.config.max_head_bytes;
        for c in verification_order(scan, policy) {
            if c.head_len > head_budget {
                receipts.push(bare_receipt(
                    &c.name,
                    ReceiptState::Skipped,
                    Some(format!(
                        "{}: not checked: this visit's budget for reading bundle heads \
                         (max_head_bytes = {}) ran out on other files",
                        c.name, self.config.max_head_bytes
                    )),
                    Some("it stays on the stick: insert the stick again, or remove the files the device refused".into()),
                    self.now,
                ));
                continue;
            }
            head_budget -= c.head_len;
            match self.check_head(scan, c, policy, floors).await {
                Ok(statement) => to_send.push((statement, c.clone())),
                Err(receipt) => receipts.push(*receipt),
            }
        }
        (receipts, to_send)
    }

    /// One candidate's head: its statement when trusted and the file whole, else its receipt.
    async fn check_head(
        &self,
        scan: &crate::scan::Scan,
        c: &crate::scan::Candidate,
        policy: &TrustPolicy,
        floors: &BTreeMap<String, u64>,
    ) -> Result<Statement, Box<Receipt>> {
        let receipt = |state, reason: Option<String>, advice: Option<String>| {
            Box::new(bare_receipt(&c.name, state, reason, advice, self.now))
        };
        let limits = Limits::default();
        let mut file = scan.open(c).map(|(f, _)| f).map_err(|e| {
            receipt(
                ReceiptState::Skipped,
                Some(format!("{}: cannot open on the stick: {e}", c.name)),
                Some("check the stick on another machine".into()),
            )
        })?;
        let refused = |e: sideload_bundle::Error| {
            receipt(
                ReceiptState::Refused,
                Some(e.to_string()),
                Some(e.advice().into()),
            )
        };
        let head = sideload_bundle::read_head(&mut file, &c.name, &limits).map_err(refused)?;
        let holdings = match Claims::of(&head) {
            Some(claims) => Holdings {
                known: self.known(&head, &claims).await,
                sequence_floor: floors.get(&claims.repository).copied(),
            },
            None => Holdings::none(),
        };
        let trust = Trust {
            policy,
            limits: &limits,
            now: self.now,
        };
        let (head, statement) = match judge_head(head, &trust, holdings).map_err(refused)? {
            Verdict::Trusted(head, statement) => (head, *statement),
            Verdict::AlreadyHere(receipt) => return Err(receipt),
        };
        let total = head.payload_offset() + statement.payload.size;
        if total != c.len {
            let id = statement.digest().to_string();
            let r = receipt(
                ReceiptState::Refused,
                Some(format!(
                    "{}: the file is {} bytes, its head declares {total}",
                    c.name, c.len
                )),
                Some("the copy on the stick is incomplete or damaged: copy it again".into()),
            );
            return Err(Box::new(with_statement(*r, &statement, &id)));
        }
        Ok(statement)
    }

    /// The receipt of a bundle the device already has (applied, or received and not failed),
    /// asked of the plugin by the head's claimed statement digest. The judgement puts it
    /// before the sequence floor, which the very bundle that set it would fail.
    async fn known(&self, head: &BundleHead, claims: &Claims) -> Option<Box<Receipt>> {
        let record = self.plugin.state(&claims.statement_digest).await.ok()??;
        let state = known_on_device(record.state)?;
        let unverified = Statement::from_canonical_json(&head.statement_bytes).ok()?;
        let r = bare_receipt(&head.name, state, None, None, self.now);
        Some(Box::new(with_statement(
            r,
            &unverified,
            &claims.statement_digest,
        )))
    }

    /// Hands the trusted bundles over in order; true if any hand-over failed. `handed` gets
    /// each handed bundle's id and receipt index.
    #[allow(clippy::too_many_arguments)]
    async fn hand_over_all(
        &self,
        scan: &crate::scan::Scan,
        to_send: &[(Statement, crate::scan::Candidate)],
        plugin_down: Option<&str>,
        state_path: &Path,
        state: &mut StickState,
        receipts: &mut Vec<Receipt>,
        handed: &mut Vec<(String, usize)>,
    ) -> bool {
        let mut failed = false;
        for (statement, c) in to_send {
            let (name, len) = (&c.name, c.len);
            let id = statement.digest().to_string();
            let base = with_statement(
                bare_receipt(name, ReceiptState::Received, None, None, self.now),
                statement,
                &id,
            );
            if let Some(reason) = plugin_down {
                failed = true;
                receipts.push(Receipt {
                    state: ReceiptState::Failed,
                    reason: Some(format!("{name}: {reason}")),
                    advice: Some("start the registry plugin, then insert the stick again".into()),
                    ..base
                });
                continue;
            }
            let file = match scan.open(c) {
                Ok((f, _)) => f,
                Err(e) => {
                    failed = true;
                    receipts.push(Receipt {
                        state: ReceiptState::Failed,
                        reason: Some(format!("{name}: cannot read it on the stick: {e}")),
                        advice: Some(
                            "insert the stick again; if it repeats, check the stick".into(),
                        ),
                        ..base
                    });
                    continue;
                }
            };
            let result = hand_over(&self.plugin, state_path, state, &id, name, len, file).await;
            match &result {
                Ok(Handed::Queued | Handed::Duplicate) => {
                    tracing::info!(bundle = %name, %id, "handed over to the registry plugin");
                    state.pending.insert(id.clone(), name.clone());
                }
                Ok(Handed::Refused(r)) => {
                    tracing::warn!(bundle = %name, code = %r.code, reason = %r.reason, "registry plugin refused the bundle");
                }
                Err(e) => {
                    failed = true;
                    tracing::error!(bundle = %name, error = %e, "hand-over failed; the next insertion resumes it");
                }
            }
            receipts.push(hand_over_receipt(base, &result));
            if matches!(result, Ok(Handed::Queued | Handed::Duplicate)) {
                handed.push((id, receipts.len() - 1));
            }
            save_state(state_path, state);
        }
        failed
    }

    /// Results of bundles from earlier visits that finished since (not on the stick any more,
    /// or already reported above).
    async fn pending_results(
        &self,
        state: &StickState,
        receipts: &mut Vec<Receipt>,
        handed: &mut Vec<(String, usize)>,
    ) {
        for (id, name) in &state.pending {
            if receipts
                .iter()
                .any(|r| r.id.as_deref() == Some(id.as_str()))
            {
                continue;
            }
            if let Ok(Some(record)) = self.plugin.state(id).await {
                let mut r = bare_receipt(name, ReceiptState::Received, None, None, self.now);
                r.id = Some(id.clone());
                take_record(&mut r, &record);
                receipts.push(r);
                handed.push((id.clone(), receipts.len() - 1));
            }
        }
    }

    /// Waits (bounded) for the applies, so the receipts can say how they ended.
    async fn wait_for_applies(&self, handed: &[(String, usize)], receipts: &mut [Receipt]) {
        let deadline = Instant::now() + Duration::from_secs(self.config.apply_wait_secs);
        loop {
            let mut open = false;
            for (id, i) in handed {
                if let Ok(Some(record)) = self.plugin.state(id).await {
                    open |= take_record(&mut receipts[*i], &record);
                }
            }
            if !open || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn write_receipts(
        &self,
        receipts: &[Receipt],
        inventory: Option<&Inventory>,
        summary: &VisitRecord<'_>,
    ) -> bool {
        write_receipts(
            self.config,
            self.root,
            self.mounted,
            receipts,
            inventory,
            summary,
        )
    }
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
) -> Result<Handed, PluginError> {
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
    inventory: Option<&Inventory>,
    summary: &impl Serialize,
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
/// Pure.
pub fn judge_visit(receipts: &[Receipt]) -> (VisitResult, String) {
    let count = |states: &[ReceiptState]| {
        receipts
            .iter()
            .filter(|r| states.contains(&r.state))
            .count()
    };
    let applied = count(&[ReceiptState::Applied]);
    let already = count(&[ReceiptState::AlreadyApplied]);
    let in_progress = count(&[ReceiptState::Received, ReceiptState::Applying]);
    let waiting: Vec<&Receipt> = receipts
        .iter()
        .filter(|r| r.state == ReceiptState::Waiting)
        .collect();
    let bad: Vec<&Receipt> = receipts.iter().filter(|r| r.state.is_problem()).collect();
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
            r.reason.as_deref().unwrap_or(r.state.as_str())
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
            state: state.parse().unwrap(),
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
    fn a_bundle_the_device_knows_is_reported_unless_it_failed_there() {
        assert_eq!(
            known_on_device(BundleState::Applied),
            Some(ReceiptState::AlreadyApplied)
        );
        for s in [
            BundleState::Queued,
            BundleState::Applying,
            BundleState::Waiting,
        ] {
            assert_eq!(known_on_device(s), Some(ReceiptState::Received));
        }
        assert_eq!(known_on_device(BundleState::Failed), None, "retried");
    }

    #[test]
    fn hand_over_answers_become_receipts() {
        let base = receipt("a.bundle", "received", None);
        let r = hand_over_receipt(base.clone(), &Ok(Handed::Duplicate));
        assert_eq!((r.state, r.reason), (ReceiptState::Received, None));
        let refusal = sideload_device_api::Refusal::new("unknown_key", "why", "fix");
        let r = hand_over_receipt(base.clone(), &Ok(Handed::Refused(refusal)));
        assert_eq!(r.state, ReceiptState::Refused);
        assert_eq!(
            (r.reason.as_deref(), r.advice.as_deref()),
            (Some("why"), Some("fix"))
        );
        let r = hand_over_receipt(base, &Err(PluginError::StickEnded));
        assert_eq!(r.state, ReceiptState::Failed);
        assert_eq!(
            r.reason.as_deref(),
            Some("a.bundle: the stick ended before the bundle did")
        );
    }

    #[test]
    fn device_records_update_receipts_and_say_whether_to_wait() {
        let record = |state: &str| -> BundleRecord {
            serde_json::from_str(&format!(r#"{{"state":"{state}","reason":"r"}}"#)).unwrap()
        };
        let mut r = receipt("a.bundle", "received", None);
        r.id = Some("sha256:1".into());
        assert!(take_record(&mut r, &record("queued")));
        assert_eq!(r.state, ReceiptState::Received);
        assert!(still_pending(std::slice::from_ref(&r), "sha256:1"));
        assert!(!take_record(&mut r, &record("waiting")));
        assert_eq!(
            (r.state, r.reason.as_deref()),
            (ReceiptState::Waiting, Some("r"))
        );
        assert!(!take_record(&mut r, &record("applied")));
        assert!(!still_pending(std::slice::from_ref(&r), "sha256:1"));
        assert!(still_pending(&[], "sha256:1"), "not on the stick: kept");
    }

    #[test]
    fn visit_records_keep_their_layout() {
        let early = serde_json::to_value(VisitRecord::early(5, "d1", false)).unwrap();
        assert_eq!(
            early.to_string(),
            r#"{"at":5,"device":"d1","result":"handed-over","summary":"bundles handed over; applying continues"}"#
        );
        let failed = serde_json::to_value(VisitRecord::early(5, "d1", true)).unwrap();
        assert_eq!(failed["result"], "failed");
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
