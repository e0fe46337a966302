//! The ledger: devices and what they hold, bundles and where they are on their way, and
//! deployment sets. Every write is one transaction; every ingest is idempotent and ordered
//! by the device's own clock, so the same report twice changes nothing and an older report
//! never overwrites a newer state.

use crate::db::{Connection, Database, Row, Value};
use crate::reports::{BundleReport, EngineInventory, HeldImage, Inventory, TransferState};
use crate::LedgerError;

/// Schema migrations, in order; `ledger_schema.version` counts those applied. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        route TEXT NOT NULL DEFAULT '',
        contact TEXT NOT NULL DEFAULT '',
        inventory_at BIGINT,
        inventory TEXT,
        free_bytes BIGINT,
        last_seen BIGINT
    );
    CREATE TABLE device_images (
        device_id TEXT NOT NULL REFERENCES devices (device_id),
        repository TEXT NOT NULL,
        manifest_digest TEXT NOT NULL,
        config_digest TEXT NOT NULL,
        tags TEXT NOT NULL,
        diff_ids TEXT NOT NULL,
        PRIMARY KEY (device_id, repository, manifest_digest)
    );
    CREATE INDEX device_images_by_repository ON device_images (repository);
    CREATE TABLE device_sequences (
        device_id TEXT NOT NULL REFERENCES devices (device_id),
        repository TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        PRIMARY KEY (device_id, repository)
    );
    CREATE TABLE bundles (
        bundle_id TEXT PRIMARY KEY,
        file TEXT NOT NULL,
        size BIGINT NOT NULL,
        repository TEXT NOT NULL,
        tags TEXT NOT NULL,
        manifest_digest TEXT NOT NULL,
        bases TEXT NOT NULL,
        deployment TEXT,
        ordered_by TEXT NOT NULL DEFAULT '',
        contact TEXT NOT NULL DEFAULT '',
        created_at BIGINT NOT NULL
    );
    CREATE TABLE transfers (
        device_id TEXT NOT NULL REFERENCES devices (device_id),
        bundle_id TEXT NOT NULL,
        bundle_name TEXT NOT NULL,
        route TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        advice TEXT,
        sent_at BIGINT NOT NULL,
        state_at BIGINT,
        PRIMARY KEY (device_id, bundle_id)
    );
    CREATE TABLE transfer_events (
        device_id TEXT NOT NULL,
        bundle_id TEXT NOT NULL,
        state TEXT NOT NULL,
        at BIGINT NOT NULL,
        source TEXT NOT NULL,
        reason TEXT,
        PRIMARY KEY (device_id, bundle_id, state, at)
    );
    CREATE TABLE deployments (
        name TEXT PRIMARY KEY,
        manifest TEXT NOT NULL,
        images TEXT NOT NULL,
        ordered_by TEXT NOT NULL DEFAULT '',
        contact TEXT NOT NULL DEFAULT '',
        created_at BIGINT NOT NULL
    );
    CREATE TABLE deployment_devices (
        deployment TEXT NOT NULL REFERENCES deployments (name),
        device_id TEXT NOT NULL REFERENCES devices (device_id),
        PRIMARY KEY (deployment, device_id)
    );",
];

/// The ledger, on SQLite or PostgreSQL.
pub struct Ledger {
    conn: Connection,
    database: Database,
}

/// What an ingest changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ingested {
    /// The ledger moved to what the report says.
    Changed,
    /// The ledger already said this (the same report again).
    Unchanged,
    /// The ledger knows something newer; the report was kept in the history only.
    Older,
}

/// A device as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Device {
    /// Its id (the plugin's `device_id`).
    pub device_id: String,
    /// How bundles reach it (`usb`, `wifi`, `satellite`, …; free text for the outbox).
    pub route: String,
    /// Whom to ask about it.
    pub contact: String,
    /// When its newest inventory was made (Unix seconds).
    pub inventory_at: Option<u64>,
    /// Free bytes its last inventory reported.
    pub free_bytes: Option<u64>,
    /// What it holds.
    pub images: Vec<HeldImage>,
    /// Its anti-rollback floors.
    pub sequences: Vec<(String, u64)>,
    /// What its container engine resolved at its newest inventory; `None` when the device
    /// has no engine sink (or reported before sideload reported engines).
    pub engine: Option<EngineInventory>,
}

/// A bundle the ledger sent or knows of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BundleRecord {
    /// Statement digest.
    pub bundle_id: String,
    /// Where the built file is.
    pub file: String,
    /// Its size in bytes.
    pub size: u64,
    /// Target repository.
    pub repository: String,
    /// Target tags.
    pub tags: Vec<String>,
    /// The manifest digest devices will hold once it is applied.
    pub manifest_digest: String,
    /// Manifest digests of the base images it was built against.
    pub bases: Vec<String>,
    /// The deployment set it belongs to.
    pub deployment: Option<String>,
    /// Who ordered it.
    pub ordered_by: String,
    /// Whom to contact.
    pub contact: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// One bundle on its way to one device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Transfer {
    /// The device.
    pub device_id: String,
    /// The bundle.
    pub bundle_id: String,
    /// Its file name.
    pub bundle_name: String,
    /// How it went (the device's route when sent, or where the report came from).
    pub route: String,
    /// Where it stands.
    pub state: TransferState,
    /// Why it failed or was refused.
    pub reason: Option<String>,
    /// What to do.
    pub advice: Option<String>,
    /// When it was put in the outbox (the ledger's clock), or first heard of.
    pub sent_at: u64,
    /// When the device last reported on it, by the device's own clock (`None`: not yet).
    /// Device reports are ordered by this alone: a device whose clock is off (no NTP on a
    /// ship) is consistent with itself, not with the ledger's machine.
    pub state_at: Option<u64>,
}

/// A state change in a transfer's history (for the picture over time).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TransferEvent {
    /// The device.
    pub device_id: String,
    /// The bundle.
    pub bundle_id: String,
    /// The state reported.
    pub state: TransferState,
    /// When.
    pub at: u64,
    /// Which report said so (`outbox`, `usb`, `api`, `file`, `inventory`).
    pub source: String,
}

/// A deployment set: a manifest's images, the devices it targets, who ordered it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Deployment {
    /// Its name.
    pub name: String,
    /// The manifest file it came from.
    pub manifest: String,
    /// The image references the manifest uses, verbatim.
    pub images: Vec<String>,
    /// The devices it targets.
    pub devices: Vec<String>,
    /// Who ordered it.
    pub ordered_by: String,
    /// Whom to contact.
    pub contact: String,
    /// Unix seconds.
    pub created_at: u64,
}

impl Ledger {
    /// Opens the ledger and brings its schema up to date.
    pub fn open(database: &Database) -> Result<Ledger, LedgerError> {
        let mut conn = Connection::open(database)?;
        migrate(&mut conn)?;
        Ok(Ledger {
            conn,
            database: database.clone(),
        })
    }

    /// The database, for messages.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The schema version the ledger is at.
    pub fn schema_version(&mut self) -> Result<u64, LedgerError> {
        schema_version(&mut self.conn)
    }

    /// Adds a device or updates its route and contact (empty values keep the old ones).
    pub fn set_device(
        &mut self,
        device_id: &str,
        route: &str,
        contact: &str,
    ) -> Result<(), LedgerError> {
        check_name("device id", device_id)?;
        if !route.is_empty() {
            check_name("route", route)?;
        }
        self.conn.transaction(|c| {
            ensure_device(c, device_id)?;
            if !route.is_empty() {
                c.execute(
                    "UPDATE devices SET route = $2 WHERE device_id = $1",
                    &[device_id.into(), route.into()],
                )?;
            }
            if !contact.is_empty() {
                c.execute(
                    "UPDATE devices SET contact = $2 WHERE device_id = $1",
                    &[device_id.into(), contact.into()],
                )?;
            }
            Ok(())
        })
    }

    /// Takes a device's inventory: what it holds replaces what the ledger knew, if the
    /// inventory is newer than the last one taken. Bundles in transit whose image the device
    /// now holds count as applied (`source` says who brought the inventory).
    pub fn ingest_inventory(
        &mut self,
        inv: &Inventory,
        source: &str,
    ) -> Result<Ingested, LedgerError> {
        check_name("device id", &inv.device)?;
        let document = serde_json::to_string(inv).expect("inventory serializes");
        self.conn.transaction(|c| {
            ensure_device(c, &inv.device)?;
            if !store_if_newer(c, inv, document)? {
                let known = c.query(
                    "SELECT inventory_at FROM devices WHERE device_id = $1",
                    &[inv.device.as_str().into()],
                )?;
                let known_at = known.first().and_then(|r| r[0].int());
                return Ok(not_newer(known_at, inv.generated_at));
            }
            replace_held_images(c, inv)?;
            replace_sequences(c, inv)?;
            mark_held_transfers_applied(c, inv, source)?;
            Ok(Ingested::Changed)
        })
    }

    /// Takes one device report about one bundle.
    pub fn ingest_report(
        &mut self,
        report: &BundleReport,
        source: &str,
    ) -> Result<Ingested, LedgerError> {
        check_name("device id", &report.device)?;
        // A bundle refused before its head could be read has no id: it is known by its name.
        let bundle_id = report
            .bundle_id
            .clone()
            .unwrap_or_else(|| format!("name:{}", report.bundle_name));
        self.conn.transaction(|c| {
            ensure_device(c, &report.device)?;
            let known = c.query(
                "SELECT state, state_at, reason FROM transfers
                 WHERE device_id = $1 AND bundle_id = $2",
                &[report.device.as_str().into(), bundle_id.as_str().into()],
            )?;
            record_event(
                c,
                &report.device,
                &bundle_id,
                report.state,
                report.at,
                source,
                report.reason.as_deref(),
            )?;
            match known.first() {
                None => {
                    c.execute(
                        "INSERT INTO transfers (device_id, bundle_id, bundle_name, route, state,
                             reason, advice, sent_at, state_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
                        &[
                            report.device.as_str().into(),
                            bundle_id.as_str().into(),
                            report.bundle_name.as_str().into(),
                            source.into(),
                            report.state.as_str().into(),
                            report.reason.clone().into(),
                            report.advice.clone().into(),
                            report.at.into(),
                        ],
                    )?;
                    Ok(Ingested::Changed)
                }
                Some(row) => {
                    let same = row[0].text() == Some(report.state.as_str())
                        && row[2].text() == report.reason.as_deref();
                    let known_state = row[0].text().and_then(TransferState::parse);
                    let newer = match row[1].int() {
                        // Nothing heard from the device yet (only the ledger's "sent").
                        None => true,
                        Some(at) if (report.at as i64) != at => (report.at as i64) > at,
                        // Two reports of the same moment (a stick and the API, in either
                        // order): the further state stands, so the order does not matter.
                        Some(_) => {
                            !same && known_state.is_none_or(|k| report.state.rank() > k.rank())
                        }
                    };
                    if same && row[1].int() == Some(report.at as i64) {
                        Ok(Ingested::Unchanged)
                    } else if !newer {
                        Ok(Ingested::Older)
                    } else {
                        set_transfer_state(
                            c,
                            &report.device,
                            &bundle_id,
                            report.state,
                            report.reason.as_deref(),
                            report.advice.as_deref(),
                            report.at,
                            source,
                        )?;
                        Ok(Ingested::Changed)
                    }
                }
            }
        })
    }

    /// Records a built bundle (again: nothing changes).
    pub fn record_bundle(&mut self, b: &BundleRecord) -> Result<(), LedgerError> {
        self.conn.transaction(|c| {
            c.execute(
                "INSERT INTO bundles (bundle_id, file, size, repository, tags, manifest_digest,
                     bases, deployment, ordered_by, contact, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (bundle_id) DO NOTHING",
                &[
                    b.bundle_id.as_str().into(),
                    b.file.as_str().into(),
                    b.size.into(),
                    b.repository.as_str().into(),
                    b.tags.join(" ").into(),
                    b.manifest_digest.as_str().into(),
                    b.bases.join(" ").into(),
                    b.deployment.clone().into(),
                    b.ordered_by.as_str().into(),
                    b.contact.as_str().into(),
                    b.created_at.into(),
                ],
            )?;
            Ok(())
        })
    }

    /// Records that `bundle` was put in `device`'s outbox at `at`: in transit, unless the
    /// device already reported on it.
    pub fn record_sent(
        &mut self,
        device: &str,
        bundle_id: &str,
        bundle_name: &str,
        route: &str,
        at: u64,
    ) -> Result<Ingested, LedgerError> {
        self.conn.transaction(|c| {
            ensure_device(c, device)?;
            let n = c.execute(
                "INSERT INTO transfers (device_id, bundle_id, bundle_name, route, state,
                     sent_at, state_at)
                 VALUES ($1, $2, $3, $4, 'in_transit', $5, NULL)
                 ON CONFLICT (device_id, bundle_id) DO NOTHING",
                &[
                    device.into(),
                    bundle_id.into(),
                    bundle_name.into(),
                    route.into(),
                    at.into(),
                ],
            )?;
            if n == 0 {
                return Ok(Ingested::Unchanged);
            }
            record_event(
                c,
                device,
                bundle_id,
                TransferState::InTransit,
                at,
                "outbox",
                None,
            )?;
            Ok(Ingested::Changed)
        })
    }

    /// Creates or replaces a deployment set.
    pub fn set_deployment(&mut self, d: &Deployment) -> Result<(), LedgerError> {
        check_name("deployment name", &d.name)?;
        self.conn.transaction(|c| {
            c.execute(
                "INSERT INTO deployments (name, manifest, images, ordered_by, contact, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (name) DO UPDATE SET manifest = excluded.manifest,
                     images = excluded.images, ordered_by = excluded.ordered_by,
                     contact = excluded.contact",
                &[
                    d.name.as_str().into(),
                    d.manifest.as_str().into(),
                    d.images.join("\n").into(),
                    d.ordered_by.as_str().into(),
                    d.contact.as_str().into(),
                    d.created_at.into(),
                ],
            )?;
            c.execute(
                "DELETE FROM deployment_devices WHERE deployment = $1",
                &[d.name.as_str().into()],
            )?;
            for device in &d.devices {
                ensure_device(c, device)?;
                c.execute(
                    "INSERT INTO deployment_devices (deployment, device_id) VALUES ($1, $2)",
                    &[d.name.as_str().into(), device.into()],
                )?;
            }
            Ok(())
        })
    }

    /// One deployment set.
    pub fn deployment(&mut self, name: &str) -> Result<Deployment, LedgerError> {
        let rows = self.conn.query(
            "SELECT name, manifest, images, ordered_by, contact, created_at FROM deployments
             WHERE name = $1",
            &[name.into()],
        )?;
        let Some(r) = rows.into_iter().next() else {
            return Err(LedgerError::NotFound(format!(
                "no deployment set {name:?} in {}; create it with `sideload fleet deployment NAME --manifest FILE --device ID...`",
                self.database.display()
            )));
        };
        let devices = self
            .conn
            .query(
                "SELECT device_id FROM deployment_devices WHERE deployment = $1
                 ORDER BY device_id",
                &[name.into()],
            )?
            .into_iter()
            .map(|r| r[0].string())
            .collect();
        Ok(deployment_from(r, devices))
    }

    /// Every deployment set, newest first.
    pub fn deployments(&mut self) -> Result<Vec<Deployment>, LedgerError> {
        let names: Vec<String> = self
            .conn
            .query(
                "SELECT name FROM deployments ORDER BY created_at DESC, name",
                &[],
            )?
            .into_iter()
            .map(|r| r[0].string())
            .collect();
        names.iter().map(|n| self.deployment(n)).collect()
    }

    /// Every device, by id.
    pub fn devices(&mut self) -> Result<Vec<Device>, LedgerError> {
        let ids: Vec<String> = self
            .conn
            .query("SELECT device_id FROM devices ORDER BY device_id", &[])?
            .into_iter()
            .map(|r| r[0].string())
            .collect();
        ids.iter().map(|id| self.device(id)).collect()
    }

    /// One device.
    pub fn device(&mut self, device_id: &str) -> Result<Device, LedgerError> {
        let rows = self.conn.query(
            "SELECT device_id, route, contact, inventory_at, free_bytes, inventory FROM devices
             WHERE device_id = $1",
            &[device_id.into()],
        )?;
        let Some(r) = rows.into_iter().next() else {
            return Err(LedgerError::NotFound(format!(
                "no device {device_id:?} in {}; ingest its inventory (`sideload fleet ingest`) or add it with `sideload fleet device ID`",
                self.database.display()
            )));
        };
        let images = self
            .conn
            .query(
                "SELECT repository, tags, manifest_digest, config_digest, diff_ids
                 FROM device_images WHERE device_id = $1 ORDER BY repository, manifest_digest",
                &[device_id.into()],
            )?
            .into_iter()
            .map(|r| HeldImage {
                repository: r[0].string(),
                tags: words(&r[1]),
                manifest_digest: r[2].string(),
                config_digest: r[3].string(),
                diff_ids: words(&r[4]),
            })
            .collect();
        let sequences = self
            .conn
            .query(
                "SELECT repository, sequence FROM device_sequences WHERE device_id = $1
                 ORDER BY repository",
                &[device_id.into()],
            )?
            .into_iter()
            .map(|r| (r[0].string(), r[1].int().unwrap_or(0) as u64))
            .collect();
        Ok(Device {
            device_id: r[0].string(),
            route: r[1].string(),
            contact: r[2].string(),
            inventory_at: r[3].int().map(|v| v as u64),
            free_bytes: r[4].int().map(|v| v as u64),
            images,
            sequences,
            // The stored document is the inventory as it came; its engine part is read back
            // from it rather than kept in tables of its own, since only the gate reads it.
            engine: r[5].text().and_then(engine_of),
        })
    }

    /// The newest inventory document of a device, as it came (for `sideload build
    /// --inventory`).
    pub fn inventory_document(&mut self, device_id: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .conn
            .query(
                "SELECT inventory FROM devices WHERE device_id = $1",
                &[device_id.into()],
            )?
            .into_iter()
            .next()
            .and_then(|r| r[0].text().map(str::to_owned)))
    }

    /// Every bundle, newest first.
    pub fn bundles(&mut self) -> Result<Vec<BundleRecord>, LedgerError> {
        Ok(self
            .conn
            .query(
                "SELECT bundle_id, file, size, repository, tags, manifest_digest, bases,
                     deployment, ordered_by, contact, created_at
                 FROM bundles ORDER BY created_at DESC, bundle_id",
                &[],
            )?
            .into_iter()
            .map(|r| BundleRecord {
                bundle_id: r[0].string(),
                file: r[1].string(),
                size: r[2].int().unwrap_or(0) as u64,
                repository: r[3].string(),
                tags: words(&r[4]),
                manifest_digest: r[5].string(),
                bases: words(&r[6]),
                deployment: r[7].text().map(str::to_owned),
                ordered_by: r[8].string(),
                contact: r[9].string(),
                created_at: r[10].int().unwrap_or(0) as u64,
            })
            .collect())
    }

    /// Every transfer, newest first (`device`: only that device's).
    pub fn transfers(&mut self, device: Option<&str>) -> Result<Vec<Transfer>, LedgerError> {
        let (sql, params) = match device {
            Some(d) => (
                "SELECT device_id, bundle_id, bundle_name, route, state, reason, advice,
                     sent_at, state_at
                 FROM transfers WHERE device_id = $1
                 ORDER BY COALESCE(state_at, sent_at) DESC, device_id, bundle_id",
                vec![Value::from(d)],
            ),
            None => (
                "SELECT device_id, bundle_id, bundle_name, route, state, reason, advice,
                     sent_at, state_at
                 FROM transfers ORDER BY COALESCE(state_at, sent_at) DESC, device_id, bundle_id",
                vec![],
            ),
        };
        self.conn
            .query(sql, &params)?
            .into_iter()
            .map(|r| {
                Ok(Transfer {
                    device_id: r[0].string(),
                    bundle_id: r[1].string(),
                    bundle_name: r[2].string(),
                    route: r[3].string(),
                    state: parse_state(&r[4])?,
                    reason: r[5].text().map(str::to_owned),
                    advice: r[6].text().map(str::to_owned),
                    sent_at: r[7].int().unwrap_or(0) as u64,
                    state_at: r[8].int().map(|v| v as u64),
                })
            })
            .collect()
    }

    /// Every state change ever reported, oldest first.
    pub fn events(&mut self) -> Result<Vec<TransferEvent>, LedgerError> {
        self.conn
            .query(
                "SELECT device_id, bundle_id, state, at, source FROM transfer_events
                 ORDER BY at, device_id, bundle_id, state",
                &[],
            )?
            .into_iter()
            .map(|r| {
                Ok(TransferEvent {
                    device_id: r[0].string(),
                    bundle_id: r[1].string(),
                    state: parse_state(&r[2])?,
                    at: r[3].int().unwrap_or(0) as u64,
                    source: r[4].string(),
                })
            })
            .collect()
    }
}

/// Stores `inv` (serialized as `document`) as the device's inventory if it is newer than the
/// one the ledger holds, or the first; says whether it was.
fn store_if_newer(
    c: &mut Connection,
    inv: &Inventory,
    document: String,
) -> Result<bool, LedgerError> {
    // Conditional, so that of two ingests racing on PostgreSQL the older inventory
    // cannot win (the row lock makes the second re-check the condition).
    let n = c.execute(
        "UPDATE devices SET inventory_at = $2, inventory = $3, free_bytes = $4,
             last_seen = $2
         WHERE device_id = $1 AND (inventory_at IS NULL OR inventory_at < $2)",
        &[
            inv.device.as_str().into(),
            inv.generated_at.into(),
            document.into(),
            inv.free_bytes.into(),
        ],
    )?;
    Ok(n != 0)
}

/// What an inventory generated at `generated_at` is to the ledger when it was not stored, the
/// ledger's own being from `known_at`: the same one again, or an older one.
fn not_newer(known_at: Option<i64>, generated_at: u64) -> Ingested {
    if known_at == Some(generated_at as i64) {
        Ingested::Unchanged
    } else {
        Ingested::Older
    }
}

/// Replaces the images the ledger lists on the device with those of `inv`.
fn replace_held_images(c: &mut Connection, inv: &Inventory) -> Result<(), LedgerError> {
    c.execute(
        "DELETE FROM device_images WHERE device_id = $1",
        &[inv.device.as_str().into()],
    )?;
    for image in &inv.images {
        c.execute(
            "INSERT INTO device_images
                 (device_id, repository, manifest_digest, config_digest, tags, diff_ids)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (device_id, repository, manifest_digest) DO UPDATE
                 SET tags = excluded.tags",
            &[
                inv.device.as_str().into(),
                image.repository.as_str().into(),
                image.manifest_digest.as_str().into(),
                image.config_digest.as_str().into(),
                image.tags.join(" ").into(),
                image.diff_ids.join(" ").into(),
            ],
        )?;
    }
    Ok(())
}

/// Replaces the device's anti-rollback floors with those of `inv`.
fn replace_sequences(c: &mut Connection, inv: &Inventory) -> Result<(), LedgerError> {
    c.execute(
        "DELETE FROM device_sequences WHERE device_id = $1",
        &[inv.device.as_str().into()],
    )?;
    for (repo, seq) in &inv.sequences {
        c.execute(
            "INSERT INTO device_sequences (device_id, repository, sequence)
             VALUES ($1, $2, $3)",
            &[inv.device.as_str().into(), repo.into(), (*seq).into()],
        )?;
    }
    Ok(())
}

/// Marks as applied (by `source`, at the inventory's time) the device's transfers in transit
/// or received, heard of before `inv` was generated, whose image `inv` holds.
fn mark_held_transfers_applied(
    c: &mut Connection,
    inv: &Inventory,
    source: &str,
) -> Result<(), LedgerError> {
    // Transfers whose image is now on the device are done, whatever else was heard.
    let pending = c.query(
        "SELECT t.bundle_id, b.manifest_digest, b.repository FROM transfers t
             JOIN bundles b ON b.bundle_id = t.bundle_id
         WHERE t.device_id = $1 AND t.state IN ('in_transit', 'received')
             AND (t.state_at IS NULL OR t.state_at < $2)",
        &[inv.device.as_str().into(), inv.generated_at.into()],
    )?;
    for row in pending {
        let (bundle, digest, repo) = (row[0].string(), row[1].string(), row[2].string());
        if holds(inv, &repo, &digest) {
            set_transfer_state(
                c,
                &inv.device,
                &bundle,
                TransferState::Applied,
                None,
                None,
                inv.generated_at,
                source,
            )?;
        }
    }
    Ok(())
}

/// Whether `inv` lists the image `repository` at `manifest_digest`.
fn holds(inv: &Inventory, repository: &str, manifest_digest: &str) -> bool {
    inv.images
        .iter()
        .any(|i| i.repository == repository && i.manifest_digest == manifest_digest)
}

fn deployment_from(r: Row, devices: Vec<String>) -> Deployment {
    Deployment {
        name: r[0].string(),
        manifest: r[1].string(),
        images: r[2]
            .string()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        devices,
        ordered_by: r[3].string(),
        contact: r[4].string(),
        created_at: r[5].int().unwrap_or(0) as u64,
    }
}

/// The engine part of a stored inventory document. One that cannot be read any more (written by
/// a newer sideload, say) counts as an engine that could not be asked: the gate then finds
/// nothing there, rather than falling back to the registry and releasing on less evidence.
fn engine_of(document: &str) -> Option<EngineInventory> {
    match serde_json::from_str::<Inventory>(document) {
        Ok(inventory) => inventory.engine,
        Err(e) => Some(EngineInventory {
            kind: "unknown".into(),
            images: Vec::new(),
            error: Some(format!(
                "the ledger cannot read this device's stored inventory: {e}; ingest a new one"
            )),
        }),
    }
}

fn parse_state(v: &Value) -> Result<TransferState, LedgerError> {
    v.text().and_then(TransferState::parse).ok_or_else(|| {
        LedgerError::Invalid(format!("the ledger holds an unknown transfer state {v:?}"))
    })
}

fn words(v: &Value) -> Vec<String> {
    v.string().split_whitespace().map(str::to_owned).collect()
}

/// Names the ledger stores are shown in tables and used as outbox folder names on sticks
/// (FAT, exFAT): printable, no path separators, nothing those filesystems refuse.
fn check_name(what: &str, name: &str) -> Result<(), LedgerError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(LedgerError::Invalid(format!(
            "{what} {name:?} is not allowed: use letters, digits and - _ . @ (at most 253)"
        )))
    }
}

/// Adds the device if missing and locks its row for the rest of the transaction: every
/// read-then-write about one device (on PostgreSQL, at READ COMMITTED) is serialized by it.
/// SQLite's `BEGIN IMMEDIATE` already serializes all writers.
fn ensure_device(c: &mut Connection, device: &str) -> Result<(), LedgerError> {
    check_name("device id", device)?;
    c.execute(
        "INSERT INTO devices (device_id) VALUES ($1) ON CONFLICT (device_id) DO NOTHING",
        &[device.into()],
    )?;
    c.execute(
        "UPDATE devices SET device_id = device_id WHERE device_id = $1",
        &[device.into()],
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn set_transfer_state(
    c: &mut Connection,
    device: &str,
    bundle: &str,
    state: TransferState,
    reason: Option<&str>,
    advice: Option<&str>,
    at: u64,
    source: &str,
) -> Result<(), LedgerError> {
    c.execute(
        "UPDATE transfers SET state = $3, reason = $4, advice = $5, state_at = $6
         WHERE device_id = $1 AND bundle_id = $2",
        &[
            device.into(),
            bundle.into(),
            state.as_str().into(),
            reason.into(),
            advice.into(),
            at.into(),
        ],
    )?;
    record_event(c, device, bundle, state, at, source, reason)
}

fn record_event(
    c: &mut Connection,
    device: &str,
    bundle: &str,
    state: TransferState,
    at: u64,
    source: &str,
    reason: Option<&str>,
) -> Result<(), LedgerError> {
    c.execute(
        "INSERT INTO transfer_events (device_id, bundle_id, state, at, source, reason)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (device_id, bundle_id, state, at) DO NOTHING",
        &[
            device.into(),
            bundle.into(),
            state.as_str().into(),
            at.into(),
            source.into(),
            reason.into(),
        ],
    )?;
    Ok(())
}

fn schema_version(c: &mut Connection) -> Result<u64, LedgerError> {
    Ok(c.query("SELECT version FROM ledger_schema", &[])?
        .first()
        .and_then(|r| r[0].int())
        .unwrap_or(0) as u64)
}

/// Applies the migrations the database has not seen, in one transaction. On PostgreSQL an
/// advisory lock keeps two operators' first runs from migrating at once.
fn migrate(c: &mut Connection) -> Result<(), LedgerError> {
    if c.is_postgres() {
        c.batch("SELECT pg_advisory_lock(7305861)")?;
    }
    let done = migrate_locked(c);
    if c.is_postgres() {
        let _ = c.batch("SELECT pg_advisory_unlock(7305861)");
    }
    done
}

fn migrate_locked(c: &mut Connection) -> Result<(), LedgerError> {
    c.batch("CREATE TABLE IF NOT EXISTS ledger_schema (version BIGINT NOT NULL)")?;
    c.transaction(|c| {
        if c.query("SELECT version FROM ledger_schema", &[])?.is_empty() {
            c.execute("INSERT INTO ledger_schema (version) VALUES ($1)", &[0u64.into()])?;
        }
        let at = schema_version(c)? as usize;
        if at > MIGRATIONS.len() {
            return Err(LedgerError::Invalid(format!(
                "the ledger's schema is version {at}, newer than this sideload knows ({}); upgrade sideload",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(at) {
            c.batch(sql)?;
            c.execute(
                "UPDATE ledger_schema SET version = $1",
                &[((i + 1) as u64).into()],
            )?;
        }
        Ok(())
    })
}

/// The number of migrations this build knows (the schema version it brings a ledger to).
pub fn current_schema_version() -> u64 {
    MIGRATIONS.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inventory_not_stored_is_the_same_again_or_older() {
        assert_eq!(not_newer(Some(100), 100), Ingested::Unchanged);
        assert_eq!(not_newer(Some(100), 99), Ingested::Older);
        assert_eq!(not_newer(Some(100), 101), Ingested::Older);
        assert_eq!(not_newer(None, 100), Ingested::Older);
    }

    #[test]
    fn an_inventory_holds_an_image_by_repository_and_digest() {
        let image = HeldImage {
            repository: "edge/app".into(),
            tags: vec!["v2".into()],
            manifest_digest: "sha256:aa".into(),
            config_digest: "sha256:cc".into(),
            diff_ids: vec![],
        };
        let inv = Inventory {
            format: 1,
            device: "d".into(),
            generated_at: 1,
            images: vec![image],
            sequences: Default::default(),
            free_bytes: 0,
            engine: None,
        };
        assert!(holds(&inv, "edge/app", "sha256:aa"));
        assert!(!holds(&inv, "edge/app", "sha256:bb"));
        assert!(!holds(&inv, "edge/other", "sha256:aa"));
    }
}
