//! The loader end to end: real ext4 sticks on loop devices, the real registry plugin in front
//! of a real registry, the loader binary as udev's unit would run it (with the udev
//! properties supplied from a file, so the checks run here too).

mod support;

use sideload_test_support::registry as plugin_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use plugin_support::{
    bundle, bundle_id, fixture, seed_v1, BundleSpec, Daemon, DaemonOptions, Registry, Signer,
};
use support::{mounts_under, require_root_and_loop, Image};

/// A device and plugin ready for sticks.
struct Device {
    _registry: Registry,
    daemon: Daemon,
    dir: tempfile::TempDir,
    /// `apply_wait_secs` of the loader's config.
    apply_wait: u64,
    /// More lines for the loader's config.
    extra_config: String,
}

impl Device {
    fn start() -> Device {
        Device::start_with(DaemonOptions::default())
    }

    fn start_with(options: DaemonOptions) -> Device {
        require_root_and_loop();
        let registry = Registry::start();
        seed_v1(&registry);
        let daemon = Daemon::start(&registry, options);
        Device {
            _registry: registry,
            daemon,
            dir: tempfile::tempdir().unwrap(),
            apply_wait: 120,
            extra_config: String::new(),
        }
    }

    fn mount_root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn config(&self) -> PathBuf {
        let path = self.dir.path().join("usb-loader.toml");
        let policy = self.dir.path().join("trust.toml");
        std::fs::write(&policy, &fixture().policy_toml).unwrap();
        std::fs::write(
            &path,
            format!(
                "plugin_url = \"http://{}\"\ntrust_policy = \"{}\"\ndevice_id = \"test-device\"\n\
                 mount_root = \"{}\"\nstate_dir = \"{}\"\napply_wait_secs = {}\nmax_bundle_bytes = 8000000\n\
                 hook = [\"sh\", \"-c\", \"echo $SIDELOAD_USB_RESULT >> {}\"]\n{}",
                self.daemon.addr,
                policy.display(),
                self.mount_root().display(),
                self.dir.path().join("state").display(),
                self.apply_wait,
                self.dir.path().join("hook.log").display(),
                self.extra_config,
            ),
        )
        .unwrap();
        path
    }

    /// The loader command for `device` with udev properties `props`.
    fn command(&self, device: &Path, props: &str, extra: &[&str]) -> Command {
        let props_file = self.dir.path().join("props");
        std::fs::write(&props_file, props).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sideload-usb-loader"));
        cmd.arg("--config")
            .arg(self.config())
            .arg("--properties")
            .arg(&props_file)
            .args(extra)
            .arg(device)
            .env("SIDELOAD_LOG", "info")
            .env("NO_COLOR", "1");
        cmd
    }

    /// Runs the loader on `device` with udev properties `props`.
    fn load(&self, device: &Path, props: &str, extra: &[&str]) -> Output {
        let out = self
            .command(device, props, extra)
            .output()
            .expect("run the loader");
        assert!(
            mounts_under(&self.mount_root()).is_empty(),
            "something stayed mounted: {:?}",
            mounts_under(&self.mount_root())
        );
        out
    }

    /// Runs the loader with `--json` and returns its outcome, after checking its exit code.
    fn load_json(&self, device: &Path, props: &str, exit: i32) -> serde_json::Value {
        let out = self.load(device, props, &["--json"]);
        assert_eq!(out.status.code(), Some(exit), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn hook_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hook.log")).unwrap_or_default()
    }
}

/// udev properties of a USB stick's ext4 filesystem.
fn usb_ext4() -> String {
    "SUBSYSTEM=block\nDEVTYPE=disk\nID_BUS=usb\nID_FS_USAGE=filesystem\nID_FS_TYPE=ext4\n\
     ID_SERIAL_SHORT=TESTSTICK01\nID_FS_LABEL=FIELD\n"
        .into()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A stick folder with the given files (name, bytes).
fn stick_dir(files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sideload")).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join("sideload").join(name), bytes).unwrap();
    }
    dir
}

/// A file from the stick image, read without mounting it (`debugfs`, e2fsprogs).
fn read_from_image(image: &Path, path: &str) -> Option<String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (!text.trim().is_empty()).then_some(text)
}

#[test]
fn a_good_stick_in_the_wrong_order_applies_by_sequence_and_carries_receipts_back() {
    let device = Device::start();
    let first = bundle(BundleSpec {
        name: "seq-100.bundle",
        sequence: 100,
        ..Default::default()
    });
    let second = bundle(BundleSpec {
        name: "seq-101.bundle",
        sequence: 101,
        ..Default::default()
    });
    // Names sort the later sequence first.
    let src = stick_dir(&[
        ("a-second.bundle", std::fs::read(&second).unwrap()),
        ("b-first.bundle", std::fs::read(&first).unwrap()),
    ]);
    let image = Image::ext4(src.path());
    let image_path = image.path().to_owned();
    let stick = image.attach();
    let out = device.load(stick.device(), &usb_ext4(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("SAFE TO REMOVE"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("sideload-usb DONE: ok"),
        "{}",
        stderr(&out)
    );
    for path in [&first, &second] {
        let s = device.daemon.wait_state(
            &bundle_id(path),
            &["applied", "failed"],
            Duration::from_secs(60),
        );
        assert_eq!(s["bundle"]["state"], "applied", "{s:#}");
        assert_eq!(s["bundle"]["source"], "upload");
    }
    // Applied in sequence order: 100 before 101 (the other order would refuse 100 as a rollback).
    let journal = device.daemon.get_json("/sideload/v1/journal");
    let applied: Vec<String> = journal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "applied")
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(applied, ["b-first.bundle", "a-second.bundle"]);
    // Receipts came back onto the stick, one per bundle, with the visit's summary (read from
    // the image while the stick, which owns it, is still attached).
    let visit = read_from_image(&image_path, "/sideload/receipts/test-device/visit.json")
        .expect("visit.json");
    let visit: serde_json::Value = serde_json::from_str(&visit).unwrap();
    assert_eq!(visit["result"], "ok", "{visit:#}");
    for name in ["a-second.bundle", "b-first.bundle"] {
        assert!(read_from_image(
            &image_path,
            &format!("/sideload/receipts/test-device/{name}.json")
        )
        .is_some());
    }
    assert_eq!(device.hook_log().trim(), "ok");
}

#[test]
fn receipts_reach_a_writable_stick_and_a_read_only_stick_still_applies() {
    let device = Device::start();
    let good = bundle(BundleSpec::default());
    let src = stick_dir(&[("app-v2.bundle", std::fs::read(&good).unwrap())]);
    let image = Image::ext4(src.path());
    let image_path = image.path().to_owned();
    let stick = image.attach();
    let outcome = device.load_json(stick.device(), &usb_ext4(), 0);
    assert_eq!(outcome["receipts_written"], true, "{outcome:#}");
    assert_eq!(outcome["receipts"][0]["state"], "applied", "{outcome:#}");
    let receipt = read_from_image(
        &image_path,
        "/sideload/receipts/test-device/app-v2.bundle.json",
    )
    .expect("receipt on the stick");
    let receipt: serde_json::Value = serde_json::from_str(&receipt).unwrap();
    assert_eq!(receipt["state"], "applied");
    assert_eq!(receipt["id"], bundle_id(&good).as_str());
    let inventory =
        read_from_image(&image_path, "/sideload/receipts/test-device/inventory.json").unwrap();
    let inventory: serde_json::Value = serde_json::from_str(&inventory).unwrap();
    assert_eq!(inventory["device"], "test-device");
    assert_eq!(
        inventory["format"], 1,
        "the inventory sideload build --inventory reads"
    );
    drop(stick);

    // A write-protected stick: the same bundle is already there, nothing written, no error.
    let other = bundle(BundleSpec {
        name: "seq-102.bundle",
        sequence: 102,
        ..Default::default()
    });
    let src = stick_dir(&[("app-v2-again.bundle", std::fs::read(&other).unwrap())]);
    let stick = Image::ext4(src.path()).attach_read_only();
    let outcome = device.load_json(stick.device(), &usb_ext4(), 0);
    assert_eq!(outcome["receipts_written"], false);
    assert_eq!(outcome["receipts"][0]["state"], "applied", "{outcome:#}");
}

#[test]
fn bad_bundles_and_hostile_entries_next_to_a_good_one() {
    let device = Device::start();
    let good = bundle(BundleSpec::default());
    let unsigned = bundle(BundleSpec {
        name: "unsigned.bundle",
        signer: Signer::Unsigned,
        ..Default::default()
    });
    let expired = bundle(BundleSpec {
        name: "expired.bundle",
        expires_in: -1,
        ..Default::default()
    });
    let mut tampered = std::fs::read(bundle(BundleSpec {
        name: "tamper-src.bundle",
        sequence: 103,
        ..Default::default()
    }))
    .unwrap();
    let at = tampered.len() - 5;
    tampered[at] ^= 0xff;
    let src = stick_dir(&[
        ("good.bundle", std::fs::read(&good).unwrap()),
        ("unsigned.bundle", std::fs::read(&unsigned).unwrap()),
        ("expired.bundle", std::fs::read(&expired).unwrap()),
        ("tampered.bundle", tampered),
        ("huge.bundle", vec![0u8; 9_000_000]),
    ]);
    std::os::unix::fs::symlink("/etc/shadow", src.path().join("sideload/shadow.bundle")).unwrap();
    let fifo = src.path().join("sideload/fifo.bundle");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let stick = Image::ext4(src.path()).attach();
    let outcome = device.load_json(stick.device(), &usb_ext4(), 3);
    let state = |name: &str| {
        outcome["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["bundle"] == name)
            .unwrap_or_else(|| panic!("no receipt for {name}: {outcome:#}"))
            .clone()
    };
    assert_eq!(state("good.bundle")["state"], "applied");
    assert_eq!(state("unsigned.bundle")["state"], "refused");
    assert_eq!(state("expired.bundle")["state"], "refused");
    assert!(state("expired.bundle")["reason"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let t = state("tampered.bundle");
    assert_eq!(t["state"], "refused", "{t:#}");
    assert!(t["reason"].as_str().unwrap().contains("payload"), "{t:#}");
    let skipped = outcome["skipped"].to_string();
    for name in ["shadow.bundle", "fifo.bundle", "huge.bundle"] {
        assert!(skipped.contains(name), "{name} not skipped: {skipped}");
    }
    assert_eq!(device.hook_log().trim(), "partial");
}

#[test]
fn the_same_stick_twice_applies_nothing_twice() {
    let device = Device::start();
    let good = bundle(BundleSpec::default());
    let src = stick_dir(&[("app-v2.bundle", std::fs::read(&good).unwrap())]);
    let stick = Image::ext4(src.path()).attach();
    for round in 0..2 {
        let out = device.load(stick.device(), &usb_ext4(), &["--json"]);
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = if round == 0 {
            "applied"
        } else {
            "already-applied"
        };
        assert_eq!(outcome["receipts"][0]["state"], want, "{outcome:#}");
    }
    let id = bundle_id(&good);
    let journal = device
        .daemon
        .get_json(&format!("/sideload/v1/journal?bundle={id}"));
    let applies = journal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "applying")
        .count();
    assert_eq!(applies, 1);
}

#[test]
fn sticks_that_are_not_usb_filesystems_or_do_not_mount_are_refused_cleanly() {
    let device = Device::start();
    let src = stick_dir(&[]);
    let stick = Image::ext4(src.path()).attach();
    // udev says SATA: never mounted.
    let out = device.load(
        stick.device(),
        &usb_ext4().replace("ID_BUS=usb", "ID_BUS=ata"),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("ID_BUS"), "{}", stderr(&out));
    // A filesystem type that is not allowed.
    let out = device.load(stick.device(), &usb_ext4().replace("ext4", "ntfs"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("ntfs"), "{}", stderr(&out));
    // Random bytes claiming to be ext4: the mount fails with a reason, nothing stays mounted.
    let junk: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let corrupt = Image::raw(&junk).attach();
    let out = device.load(corrupt.device(), &usb_ext4(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("mount"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dry_run_on_a_folder_says_what_it_would_do_and_does_nothing() {
    let device = Device::start();
    let good = bundle(BundleSpec::default());
    let unsigned = bundle(BundleSpec {
        name: "unsigned.bundle",
        signer: Signer::Unsigned,
        ..Default::default()
    });
    let src = stick_dir(&[
        ("app-v2.bundle", std::fs::read(&good).unwrap()),
        ("unsigned.bundle", std::fs::read(&unsigned).unwrap()),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_sideload-usb-loader"))
        .arg("--config")
        .arg(device.config())
        .arg("--dry-run")
        .arg(src.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("app-v2.bundle: trusted"), "{text}");
    assert!(text.contains("would hand over"), "{text}");
    assert!(text.contains("unsigned.bundle: refused"), "{text}");
    let r = device.daemon.request(
        "GET",
        &format!("/sideload/v1/bundles/{}", bundle_id(&good)),
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "a dry run sends nothing");
    assert!(
        !src.path().join("sideload/receipts").exists(),
        "a dry run writes nothing"
    );
}

#[test]
fn a_stick_pulled_mid_transfer_fails_cleanly_and_the_next_insertion_resumes() {
    let device = Device::start();
    // A whole-image bundle (~3.6 MB): bigger than what the head check brings into the cache.
    let whole = bundle(BundleSpec {
        name: "whole.bundle",
        with_base: false,
        sequence: 104,
        ..Default::default()
    });
    let bytes = std::fs::read(&whole).unwrap();
    let src = stick_dir(&[("whole.bundle", bytes)]);
    let stick = Image::ext4(src.path()).attach();
    let log = device.dir.path().join("pulled.log");
    let mut child = device
        .command(stick.device(), &usb_ext4(), &[])
        .env("SIDELOAD_FAULT_PAUSE_BEFORE_SEND_MS", "3000")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("pausing before the transfer")
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stick.pull();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("insert the stick again") || text.contains("next insertion resumes"),
        "{text}"
    );
    assert!(!text.contains("SAFE TO REMOVE"), "{text}");
    assert!(mounts_under(&device.mount_root()).is_empty());
    let id = bundle_id(&whole);
    let r = device
        .daemon
        .request("GET", &format!("/sideload/v1/bundles/{id}"), &[], b"");
    assert_eq!(r.status, 404, "nothing half-applied: {}", r.text());
    drop(stick);

    // The same stick again (same serial): the transfer resumes and the bundle applies.
    let stick = Image::ext4(src.path()).attach();
    let out = device.load(stick.device(), &usb_ext4(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resuming the transfer"),
        "{}",
        stderr(&out)
    );
    let s = device
        .daemon
        .wait_state(&id, &["applied", "failed"], Duration::from_secs(60));
    assert_eq!(s["bundle"]["state"], "applied", "{s:#}");
}

#[test]
fn results_that_finish_after_the_stick_left_go_onto_it_at_its_next_visit() {
    // Applies take a few seconds (held before the tag moves), and the loader does not wait.
    let mut device = Device::start_with(DaemonOptions {
        env: vec![("SIDELOAD_FAULT_PAUSE_BEFORE_TAG_MS".into(), "3000".into())],
        ..Default::default()
    });
    device.apply_wait = 0;
    let good = bundle(BundleSpec {
        name: "seq-105.bundle",
        sequence: 105,
        ..Default::default()
    });
    let src = stick_dir(&[("app-v2.bundle", std::fs::read(&good).unwrap())]);
    let stick = Image::ext4(src.path()).attach();
    let outcome = device.load_json(stick.device(), &usb_ext4(), 0);
    let first = outcome["receipts"][0]["state"].as_str().unwrap().to_owned();
    assert!(first == "received" || first == "applying", "{outcome:#}");
    let id = bundle_id(&good);
    device
        .daemon
        .wait_state(&id, &["applied"], Duration::from_secs(60));
    // Next visit of the same stick (the bundle taken off it in between): the final result
    // of the earlier visit is written onto it.
    std::fs::remove_file(src.path().join("sideload/app-v2.bundle")).unwrap();
    drop(stick);
    let stick = Image::ext4(src.path()).attach();
    let image_path_2 = stick.image().to_owned();
    let outcome = device.load_json(stick.device(), &usb_ext4(), 0);
    let earlier = &outcome["receipts"][0];
    assert_eq!(earlier["bundle"], "app-v2.bundle", "{outcome:#}");
    assert_eq!(earlier["state"], "applied", "{outcome:#}");
    let receipt = read_from_image(
        &image_path_2,
        "/sideload/receipts/test-device/app-v2.bundle.json",
    )
    .expect("the earlier visit's result on the stick");
    assert!(receipt.contains("\"applied\""), "{receipt}");
}

#[test]
fn with_the_plugin_down_the_stick_still_gets_receipts_saying_why() {
    let mut device = Device::start();
    device.daemon.kill9();
    let good = bundle(BundleSpec::default());
    let src = stick_dir(&[("app-v2.bundle", std::fs::read(&good).unwrap())]);
    let stick = Image::ext4(src.path()).attach();
    let out = device.load(stick.device(), &usb_ext4(), &["--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["result"], "failed", "{outcome:#}");
    assert_eq!(outcome["receipts_written"], true, "{outcome:#}");
    let r = &outcome["receipts"][0];
    assert_eq!(r["state"], "failed", "{outcome:#}");
    assert!(
        r["reason"].as_str().unwrap().contains("registry plugin"),
        "{outcome:#}"
    );
    assert!(!stderr(&out).contains("SAFE TO REMOVE"));
}

/// Undoes percent-encoding (`%C3%BC` -> `ü`); other text stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Every file in the stick's receipt folder for this device, by name, with its content.
fn receipt_files(stick: &support::Stick) -> std::collections::BTreeMap<String, String> {
    let mut files = std::collections::BTreeMap::new();
    stick.fill(|root| {
        for entry in std::fs::read_dir(root.join("sideload/receipts/test-device")).unwrap() {
            let entry = entry.unwrap();
            files.insert(
                entry.file_name().into_string().unwrap(),
                std::fs::read_to_string(entry.path()).unwrap(),
            );
        }
    });
    files
}

#[test]
fn look_alike_and_non_ascii_names_each_get_their_own_receipt_and_reach_the_journal() {
    let device = Device::start();
    let on_stick = [
        ("ü.bundle", "n5-110.bundle", 110),
        ("é.bundle", "n5-111.bundle", 111),
        ("a b.bundle", "n5-112.bundle", 112),
        ("a_b.bundle", "n5-113.bundle", 113),
    ];
    let mut files = Vec::new();
    let mut ids = Vec::new();
    for (name, built, sequence) in on_stick {
        let path = bundle(BundleSpec {
            name: built,
            sequence,
            ..Default::default()
        });
        ids.push(bundle_id(&path));
        files.push((name, std::fs::read(&path).unwrap()));
    }
    let src = stick_dir(&files);
    let stick = Image::ext4(src.path()).attach();
    let outcome = device.load_json(stick.device(), &usb_ext4(), 0);
    assert_eq!(outcome["result"], "ok", "{outcome:#}");

    let receipts = receipt_files(&stick);
    println!("receipt files: {:?}", receipts.keys().collect::<Vec<_>>());
    assert_eq!(
        receipts.len(),
        on_stick.len() + 2,
        "one receipt per bundle, plus inventory.json and visit.json: {:?}",
        receipts.keys()
    );
    let mut named: Vec<String> = receipts
        .iter()
        .filter(|(file, _)| !matches!(file.as_str(), "inventory.json" | "visit.json"))
        .map(|(_, text)| {
            let r: serde_json::Value = serde_json::from_str(text).unwrap();
            r["bundle"].as_str().unwrap().to_owned()
        })
        .collect();
    named.sort();
    let mut expected: Vec<&str> = on_stick.iter().map(|(n, _, _)| *n).collect();
    expected.sort();
    assert_eq!(named, expected);
    for ((name, _, _), id) in on_stick.iter().zip(&ids) {
        let file = sideload_usb_loader::receipts::receipt_file_name(name);
        let receipt: serde_json::Value = serde_json::from_str(
            receipts
                .get(&file)
                .unwrap_or_else(|| panic!("no receipt {file} for {name}")),
        )
        .unwrap();
        assert_eq!(receipt["bundle"], *name);
        assert_eq!(receipt["id"], id.as_str());
        assert_eq!(receipt["state"], "applied", "{receipt:#}");
        assert_eq!(
            sideload_usb_loader::receipts::bundle_name_from_receipt_file(&file).as_deref(),
            Some(*name)
        );
    }

    // The journal names each bundle by its file name on the stick (sent percent-encoded).
    let journal = device.daemon.get_json("/sideload/v1/journal");
    for ((name, _, _), id) in on_stick.iter().zip(&ids) {
        let entry = journal["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["state"] == "applied" && e["bundle"] == id.as_str())
            .unwrap_or_else(|| panic!("{name} not applied: {journal:#}"));
        let journaled = entry["name"].as_str().unwrap();
        println!("{name}: journal name {journaled:?}");
        assert_eq!(percent_decode(journaled), *name, "{entry:#}");
    }
}

#[test]
fn a_stick_full_of_junk_still_gives_up_its_good_bundles_and_lists_the_rest() {
    let mut device = Device::start();
    let good = bundle(BundleSpec {
        name: "n6-120.bundle",
        sequence: 120,
        ..Default::default()
    });
    let upper = bundle(BundleSpec {
        name: "n6-121.bundle",
        sequence: 121,
        ..Default::default()
    });
    let stranger = bundle(BundleSpec {
        name: "n6-stranger.bundle",
        sequence: 122,
        signer: Signer::Stranger,
        ..Default::default()
    });
    // Room to verify three heads: the two signed by the device's key come first, then one of
    // the 150 well-formed bundles by a stranger; the rest are listed as not checked.
    let head = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        sideload_bundle::head_len(&bytes[..32]).unwrap()
    };
    let budget = head(&good) + head(&upper) + head(&stranger);
    device.extra_config = format!("max_head_bytes = {budget}\n");

    let src = stick_dir(&[]);
    let image = Image::ext4_with(
        src.path(),
        &support::Ext4 {
            size_mib: 96,
            inodes: Some(20_000),
            label: None,
        },
    );
    let stick = image.attach();
    let (good_bytes, upper_bytes, stranger_bytes) = (
        std::fs::read(&good).unwrap(),
        std::fs::read(&upper).unwrap(),
        std::fs::read(&stranger).unwrap(),
    );
    stick.fill(|root| {
        let folder = root.join("sideload");
        std::fs::create_dir_all(&folder).unwrap();
        // Junk named like bundles, sorting before the good ones: with the strangers, more
        // entries than the old max_entries and more names than max_bundles.
        for i in 0..9_998u64 {
            let junk: Vec<u8> = (0..(i % 200)).map(|b| (b * 7 + i) as u8).collect();
            std::fs::write(folder.join(format!("a-junk-{i:05}.bundle")), junk).unwrap();
        }
        for i in 0..150 {
            std::fs::write(
                folder.join(format!("b-stranger-{i:03}.bundle")),
                &stranger_bytes,
            )
            .unwrap();
        }
        std::fs::write(folder.join("zz-good.bundle"), &good_bytes).unwrap();
        std::fs::write(folder.join("ZZ-UPPER.BUNDLE"), &upper_bytes).unwrap();
        std::fs::write(folder.join("zz-trailing.bundle "), &good_bytes).unwrap();
    });

    let started = std::time::Instant::now();
    let out = device.load(stick.device(), &usb_ext4(), &["--json"]);
    println!("loader on 10 151 entries: {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(3), "partial: {}", stderr(&out));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let receipts = outcome["receipts"].as_array().unwrap();
    let state_of = |name: &str| {
        receipts
            .iter()
            .find(|r| r["bundle"] == name)
            .unwrap_or_else(|| panic!("no receipt for {name}"))
            .clone()
    };
    assert_eq!(state_of("zz-good.bundle")["state"], "applied");
    assert_eq!(state_of("ZZ-UPPER.BUNDLE")["state"], "applied");
    let refused = receipts.iter().filter(|r| r["state"] == "refused").count();
    let not_checked: Vec<_> = receipts
        .iter()
        .filter(|r| r["state"] == "skipped")
        .collect();
    println!(
        "{} receipts: {refused} refused, {} not checked; e.g. {:#}",
        receipts.len(),
        not_checked.len(),
        not_checked[0]
    );
    assert_eq!(refused, 1);
    assert_eq!(not_checked.len(), 149);
    assert!(not_checked[0]["reason"]
        .as_str()
        .unwrap()
        .contains("max_head_bytes"));
    let skipped = outcome["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 9_999, "every junk entry and the odd name");
    let trailing = skipped
        .iter()
        .find(|s| s[0] == "zz-trailing.bundle ")
        .expect("the trailing-space name is listed");
    assert!(
        trailing[1].as_str().unwrap().contains("spaces"),
        "{trailing}"
    );
    assert!(skipped.iter().all(|s| s[1].as_str().unwrap().len() > 10));
}
