//! The ledger on SQLite and on a real PostgreSQL server: the same calls, the same answers.

use sideload_test_support::databases as support;

use sideload_fleet::reports::{parse_receipt, read_receipt_folder};
use sideload_fleet::{
    BundleRecord, BundleReport, Deployment, HeldImage, Ingested, Inventory, Ledger, TransferState,
};

fn image(repo: &str, tag: &str, n: u8) -> HeldImage {
    HeldImage {
        repository: repo.into(),
        tags: vec![tag.into()],
        manifest_digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
        config_digest: format!("sha256:{}", format!("{:02x}", n + 100).repeat(32)),
        diff_ids: vec![format!("sha256:{}", "ab".repeat(32))],
    }
}

fn inventory(device: &str, at: u64, images: Vec<HeldImage>) -> Inventory {
    Inventory {
        format: 1,
        device: device.into(),
        generated_at: at,
        images,
        sequences: [("edge/app".to_owned(), at)].into_iter().collect(),
        free_bytes: 1 << 30,
        engine: None,
    }
}

fn bundle(id: &str, target: &HeldImage) -> BundleRecord {
    BundleRecord {
        bundle_id: id.into(),
        file: format!("/out/{id}.bundle"),
        size: 1234,
        repository: target.repository.clone(),
        tags: target.tags.clone(),
        manifest_digest: target.manifest_digest.clone(),
        bases: vec![],
        deployment: Some("rollout-1".into()),
        ordered_by: "CHG-42".into(),
        contact: "ops@example".into(),
        created_at: 1000,
    }
}

fn report(device: &str, bundle: &str, state: TransferState, at: u64) -> BundleReport {
    BundleReport {
        device: device.into(),
        bundle_id: Some(bundle.into()),
        bundle_name: format!("{bundle}.bundle"),
        repository: Some("edge/app".into()),
        state,
        reason: (state == TransferState::Failed).then(|| "disk full".to_owned()),
        advice: None,
        at,
    }
}

#[test]
fn the_schema_migrates_once_and_reopens() {
    let dbs = support::databases();
    for db in &dbs.list {
        let mut l = Ledger::open(db).unwrap();
        assert_eq!(
            l.schema_version().unwrap(),
            sideload_fleet::ledger::current_schema_version()
        );
        l.set_device("dev-1", "usb", "site A").unwrap();
        drop(l);
        let mut l = Ledger::open(db).unwrap();
        assert_eq!(l.devices().unwrap().len(), 1, "{}", db.display());
        assert!(l.set_device("../etc", "usb", "").is_err());
    }
}

#[test]
fn the_engine_a_device_reports_is_what_the_gate_sees_and_newer_reports_replace_it() {
    use sideload_fleet::gate::{self, Holdings};
    use sideload_fleet::reports::{EngineHeld, EngineInventory};
    let dbs = support::databases();
    for db in &dbs.list {
        let mut l = Ledger::open(db).unwrap();
        let v2 = image("edge/app", "v2", 2);
        let engine = |references: &[&str]| EngineInventory {
            kind: "docker".into(),
            images: vec![EngineHeld {
                id: v2.config_digest.clone(),
                references: references.iter().map(|r| r.to_string()).collect(),
            }],
            error: None,
        };
        let mut inv = inventory("dev-1", 100, vec![v2.clone()]);
        inv.engine = Some(engine(&["registry.example/edge/app:v2"]));
        l.ingest_inventory(&inv, "api").unwrap();
        let device = l.device("dev-1").unwrap();
        assert_eq!(device.engine, inv.engine, "{}", db.display());
        let holdings = Holdings {
            images: device.images,
            engine: device.engine,
        };
        let refs = vec!["registry.example/edge/app:v2".to_owned()];
        assert!(gate::gate(&refs, &[("dev-1".into(), holdings)]).is_empty());
        // The image left the engine; the registry still has it: held.
        let mut later = inventory("dev-1", 200, vec![v2.clone()]);
        later.engine = Some(engine(&[]));
        l.ingest_inventory(&later, "api").unwrap();
        let device = l.device("dev-1").unwrap();
        let holdings = Holdings {
            images: device.images,
            engine: device.engine,
        };
        assert_eq!(gate::gate(&refs, &[("dev-1".into(), holdings)]).len(), 1);
    }
}

#[test]
fn inventories_replace_older_ones_and_never_newer() {
    let dbs = support::databases();
    for db in &dbs.list {
        let mut l = Ledger::open(db).unwrap();
        let v1 = image("edge/app", "v1", 1);
        let v2 = image("edge/app", "v2", 2);
        assert_eq!(
            l.ingest_inventory(&inventory("dev-1", 100, vec![v1.clone()]), "api")
                .unwrap(),
            Ingested::Changed
        );
        assert_eq!(
            l.ingest_inventory(&inventory("dev-1", 200, vec![v2.clone()]), "api")
                .unwrap(),
            Ingested::Changed
        );
        // The same again, and an old one that a late stick brought back.
        assert_eq!(
            l.ingest_inventory(&inventory("dev-1", 200, vec![v2.clone()]), "api")
                .unwrap(),
            Ingested::Unchanged
        );
        assert_eq!(
            l.ingest_inventory(&inventory("dev-1", 100, vec![v1.clone()]), "usb")
                .unwrap(),
            Ingested::Older
        );
        let d = l.device("dev-1").unwrap();
        assert_eq!(d.images, vec![v2.clone()], "{}", db.display());
        assert_eq!(d.inventory_at, Some(200));
        assert_eq!(d.sequences, vec![("edge/app".to_owned(), 200)]);
        let doc = l.inventory_document("dev-1").unwrap().unwrap();
        assert!(doc.contains(&v2.manifest_digest));
        assert!(l.device("nope").is_err());
    }
}

#[test]
fn receipts_move_transfers_and_replays_change_nothing() {
    let dbs = support::databases();
    for db in &dbs.list {
        let mut l = Ledger::open(db).unwrap();
        let v2 = image("edge/app", "v2", 2);
        l.record_bundle(&bundle("sha256:b1", &v2)).unwrap();
        l.record_bundle(&bundle("sha256:b1", &v2)).unwrap();
        for d in ["dev-1", "dev-2", "dev-3"] {
            assert_eq!(
                l.record_sent(d, "sha256:b1", "b1.bundle", "usb", 1000)
                    .unwrap(),
                Ingested::Changed
            );
        }
        assert_eq!(
            l.record_sent("dev-1", "sha256:b1", "b1.bundle", "usb", 1001)
                .unwrap(),
            Ingested::Unchanged
        );
        let applied = report("dev-1", "sha256:b1", TransferState::Applied, 2000);
        assert_eq!(l.ingest_report(&applied, "usb").unwrap(), Ingested::Changed);
        assert_eq!(
            l.ingest_report(&applied, "usb").unwrap(),
            Ingested::Unchanged
        );
        // An older receipt (received, from an earlier visit) does not undo it.
        let older = report("dev-1", "sha256:b1", TransferState::Received, 1500);
        assert_eq!(l.ingest_report(&older, "usb").unwrap(), Ingested::Older);
        let failed = report("dev-2", "sha256:b1", TransferState::Failed, 2100);
        assert_eq!(l.ingest_report(&failed, "usb").unwrap(), Ingested::Changed);
        // A report of a bundle the ledger never sent is recorded too.
        let stray = report("dev-4", "sha256:b9", TransferState::Refused, 2200);
        assert_eq!(l.ingest_report(&stray, "api").unwrap(), Ingested::Changed);

        let t = l.transfers(None).unwrap();
        let state = |d: &str, b: &str| {
            t.iter()
                .find(|x| x.device_id == d && x.bundle_id == b)
                .map(|x| x.state)
        };
        assert_eq!(state("dev-1", "sha256:b1"), Some(TransferState::Applied));
        assert_eq!(state("dev-2", "sha256:b1"), Some(TransferState::Failed));
        assert_eq!(state("dev-3", "sha256:b1"), Some(TransferState::InTransit));
        assert_eq!(state("dev-4", "sha256:b9"), Some(TransferState::Refused));
        let reason = t.iter().find(|x| x.device_id == "dev-2").unwrap();
        assert_eq!(reason.reason.as_deref(), Some("disk full"));
        let before = l.events().unwrap();
        // Replaying every report again changes nothing, history included.
        for r in [&applied, &older, &failed, &stray] {
            assert_ne!(l.ingest_report(r, "usb").unwrap(), Ingested::Changed);
        }
        assert_eq!(l.events().unwrap(), before, "{}", db.display());
        assert_eq!(l.transfers(None).unwrap(), t);

        // An inventory that shows dev-3 holding the image settles its transfer.
        l.ingest_inventory(&inventory("dev-3", 3000, vec![v2.clone()]), "api")
            .unwrap();
        let t3 = l.transfers(Some("dev-3")).unwrap();
        assert_eq!(t3[0].state, TransferState::Applied);
        assert_eq!(t3[0].state_at, Some(3000));
    }
}

#[test]
fn deployment_sets_keep_their_devices() {
    let dbs = support::databases();
    for db in &dbs.list {
        let mut l = Ledger::open(db).unwrap();
        let mut d = Deployment {
            name: "rollout-1".into(),
            manifest: "deployment.json".into(),
            images: vec!["acr.io/edge/app:v2".into(), "acr.io/edge/agent:1".into()],
            devices: vec!["dev-2".into(), "dev-1".into()],
            ordered_by: "CHG-42".into(),
            contact: "ops@example".into(),
            created_at: 10,
        };
        l.set_deployment(&d).unwrap();
        let got = l.deployment("rollout-1").unwrap();
        assert_eq!(got.devices, vec!["dev-1", "dev-2"]);
        assert_eq!(got.images, d.images);
        d.devices = vec!["dev-3".into()];
        l.set_deployment(&d).unwrap();
        assert_eq!(l.deployment("rollout-1").unwrap().devices, vec!["dev-3"]);
        assert_eq!(l.deployments().unwrap().len(), 1);
        assert!(l.deployment("nope").is_err());
    }
}

#[test]
fn a_receipt_folder_from_a_stick() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("receipts").join("truck-7");
    std::fs::create_dir_all(&dev).unwrap();
    let inv = inventory("truck-7", 500, vec![image("edge/app", "v2", 2)]);
    std::fs::write(
        dev.join("inventory.json"),
        serde_json::to_vec(&inv).unwrap(),
    )
    .unwrap();
    std::fs::write(dev.join("visit.json"), b"{\"summary\": true}").unwrap();
    std::fs::write(
        dev.join("app-v2.bundle.json"),
        br#"{"bundle":"app-v2.bundle","id":"sha256:b1","repository":"edge/app","tags":["v2"],"sequence":5,"state":"applied","reason":null,"advice":null,"at":500}"#,
    )
    .unwrap();
    std::fs::write(
        dev.join("bad.bundle.json"),
        br#"{"bundle":"bad.bundle","id":null,"repository":null,"tags":[],"sequence":null,"state":"refused","reason":"bad.bundle: not signed by a trusted key","advice":"sign it","at":500}"#,
    )
    .unwrap();
    let (invs, reports) = read_receipt_folder(&dir.path().join("receipts")).unwrap();
    assert_eq!(invs, vec![inv]);
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.device == "truck-7"));
    let refused = reports
        .iter()
        .find(|r| r.bundle_name == "bad.bundle")
        .unwrap();
    assert_eq!(refused.state, TransferState::Refused);
    assert!(parse_receipt("x", "d", b"[]").is_err());
    // One device's folder works too.
    let (invs, reports) = read_receipt_folder(&dev).unwrap();
    assert_eq!((invs.len(), reports.len()), (1, 2));
}

#[test]
fn device_clocks_order_reports_whatever_the_ledger_clock_says() {
    let dbs = support::databases();
    for db in &dbs.list {
        let mut l = Ledger::open(db).unwrap();
        let v2 = image("edge/app", "v2", 2);
        l.record_bundle(&bundle("sha256:b1", &v2)).unwrap();
        // The ledger's machine says 5000; the ship's clock, never synchronised, says 100.
        for d in ["ship-1", "ship-2"] {
            l.record_sent(d, "sha256:b1", "b1.bundle", "usb", 5000)
                .unwrap();
        }
        let r = |d: &str, s| report(d, "sha256:b1", s, 100);
        assert_eq!(
            l.ingest_report(&r("ship-1", TransferState::Applied), "usb")
                .unwrap(),
            Ingested::Changed,
            "{}",
            db.display()
        );
        // Two reports of the same moment, in either order: the further state stands.
        assert_eq!(
            l.ingest_report(&r("ship-1", TransferState::Received), "api")
                .unwrap(),
            Ingested::Older
        );
        l.ingest_report(&r("ship-2", TransferState::Failed), "api")
            .unwrap();
        assert_eq!(
            l.ingest_report(&r("ship-2", TransferState::Applied), "usb")
                .unwrap(),
            Ingested::Changed
        );
        for t in l.transfers(None).unwrap() {
            assert_eq!(t.state, TransferState::Applied, "{t:?}");
            assert_eq!((t.sent_at, t.state_at), (5000, Some(100)));
        }
        // An inventory by the ship's clock settles a transfer sent "later" by the ledger's.
        l.record_sent("ship-3", "sha256:b1", "b1.bundle", "usb", 5000)
            .unwrap();
        l.ingest_inventory(&inventory("ship-3", 200, vec![v2.clone()]), "usb")
            .unwrap();
        assert_eq!(
            l.transfers(Some("ship-3")).unwrap()[0].state,
            TransferState::Applied
        );
        // Routes name outbox folders: nothing that leaves the output folder or a FAT stick
        // refuses.
        for bad in ["../up", "/srv", "a:b", "a/b"] {
            assert!(l.set_device("ship-1", bad, "").is_err(), "{bad}");
        }
        l.set_device("ship-1", "sat-link_2", "").unwrap();
    }
}
