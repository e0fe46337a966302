//! Which block device the loader is looking at, and whether it may touch it.
//!
//! The loader is started for a device node (`/dev/sdb1`). Before anything is mounted, the
//! device's udev properties are checked, and everything that is not a filesystem of an allowed
//! type on a USB mass-storage device is refused. The udev rule that starts the loader matches on
//! the same properties, but the loader can also be run by hand and rules can be changed, so the
//! loader never relies on the rule alone.
//!
//! - [`properties_from_udev`] reads the properties from udev's database through libudev (the
//!   `udev` crate): what `udevadm info --query=property --name=DEV` prints. It also checks in
//!   sysfs that a device whose properties say `ID_BUS=usb` really hangs below a USB device.
//! - [`properties_from_file`] reads the same `KEY=VALUE` lines from a file, so tests (loop
//!   devices are never USB) and a person debugging a stick can supply them. The checks still run
//!   on them.
//! - [`check`] is a pure function of the properties: it returns the [`Stick`] to work on, or a
//!   [`DeviceError`] naming the device, the property and its value.
//!
//! What this module does not do: open, mount or read the device (see the mount module), or wait
//! for udev. Under systemd the unit starts only after `dev-<name>.device` is up, that is after
//! udev has finished with the device; run by hand on a device udev has not processed,
//! [`properties_from_udev`] says so ([`DeviceError::NotInitialized`]) instead of guessing.
//!
//! Serial number, label, vendor and model come from the stick (its USB descriptors and its
//! filesystem) and are untrusted: [`Stick`] keeps them printable and short, and
//! [`Stick::name`] turns them into a name that is safe as a single path component.
//!
//! Tests: the checks and the file format are unit-tested here; `tests/device_units.rs` runs
//! [`properties_from_udev`] on a real loop device.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

/// udev properties of one device, as `KEY` → `VALUE`.
pub type Properties = BTreeMap<String, String>;

/// Largest properties file [`properties_from_file`] reads. `udevadm info --query=property`
/// prints about 2 KiB for a USB stick.
pub const MAX_PROPERTIES_FILE_BYTES: u64 = 64 * 1024;

/// Longest value (in characters) kept for the untrusted text fields of a [`Stick`].
pub const MAX_FIELD_CHARS: usize = 128;

/// Longest serial or UUID part (in characters) of [`Stick::name`].
pub const MAX_NAME_CHARS: usize = 64;

/// A USB filesystem that passed [`check`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stick {
    /// The device node the loader was started for, e.g. `/dev/sdb1`.
    pub devnode: PathBuf,
    /// `ID_FS_TYPE`, one of the allowed filesystem types (the type passed to mount(2)).
    pub fs_type: String,
    /// `ID_SERIAL_SHORT` (the USB serial number), else `ID_SERIAL` (vendor, model and serial).
    pub serial: Option<String>,
    /// `ID_FS_LABEL`, the filesystem's label.
    pub label: Option<String>,
    /// `ID_FS_UUID`, the filesystem's UUID (vfat/exfat: its volume serial number).
    pub uuid: Option<String>,
    /// `ID_VENDOR`, from the USB descriptors.
    pub vendor: Option<String>,
    /// `ID_MODEL`, from the USB descriptors.
    pub model: Option<String>,
    /// `ID_PART_ENTRY_NUMBER`: the partition's number in its table, `None` for a whole disk.
    pub partition: Option<u32>,
}

impl Stick {
    /// A name for this filesystem that is safe as one path component (mount directory, receipt
    /// name): only `[A-Za-z0-9._-]`, never starting with `.` or `-`, at most
    /// [`MAX_NAME_CHARS`] characters before the partition suffix.
    ///
    /// The serial number identifies the stick, so it comes first, with `-part<N>` added for a
    /// partition so that two partitions of one stick get different names. Without a usable
    /// serial the filesystem UUID is used, else the device node's file name (`sdb1`).
    pub fn name(&self) -> String {
        if let Some(serial) = self.serial.as_deref().and_then(safe_name) {
            // The whole name must fit the mount directory's limit (64), suffix included.
            let suffix = self
                .partition
                .map(|n| format!("-part{n}"))
                .unwrap_or_default();
            let keep = MAX_NAME_CHARS.saturating_sub(suffix.len());
            let serial: String = serial.chars().take(keep).collect();
            return format!("{serial}{suffix}");
        }
        if let Some(uuid) = self.uuid.as_deref().and_then(safe_name) {
            return uuid;
        }
        self.devnode
            .file_name()
            .and_then(OsStr::to_str)
            .and_then(safe_name)
            .unwrap_or_else(|| "stick".to_owned())
    }
}

/// Why a device is not used. Every variant names the device (or the properties file); the
/// refusals name the property and its value.
#[derive(Debug, thiserror::Error)]
// Each variant's #[error] message, which names every field, is its documentation.
#[allow(missing_docs)]
pub enum DeviceError {
    #[error("cannot stat {}: {source}", devnode.display())]
    Stat {
        devnode: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a block device", devnode.display())]
    NotBlockDevice { devnode: PathBuf },
    #[error("udev knows no block device {major}:{minor} ({}): {source}", devnode.display())]
    Udev {
        devnode: PathBuf,
        major: u32,
        minor: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "udev has not processed {} yet: it has no entry in udev's database, so its bus and \
         filesystem are unknown",
        devnode.display()
    )]
    NotInitialized { devnode: PathBuf },
    #[error(
        "refusing {}: its properties say ID_BUS=\"usb\" but {} has no USB device above it in sysfs",
        devnode.display(),
        syspath.display()
    )]
    NoUsbParent { devnode: PathBuf, syspath: PathBuf },
    #[error("cannot read udev properties from {}: {source}", path.display())]
    ReadProperties {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("udev properties file {} is larger than {limit} bytes", path.display())]
    PropertiesTooLarge { path: PathBuf, limit: u64 },
    #[error("{}:{line}: {problem}", path.display())]
    ParseProperties {
        path: PathBuf,
        line: usize,
        problem: LineProblem,
    },
    #[error("refusing {}: it has no {property} property", devnode.display())]
    MissingProperty {
        devnode: PathBuf,
        property: &'static str,
    },
    #[error("refusing {}: the properties are those of DEVNAME={devname:?}", devnode.display())]
    OtherDevice { devnode: PathBuf, devname: String },
    #[error("refusing {}: SUBSYSTEM={subsystem:?}, not \"block\"", devnode.display())]
    NotBlockSubsystem { devnode: PathBuf, subsystem: String },
    #[error(
        "refusing {}: DEVTYPE={devtype:?}, not \"partition\" or \"disk\"",
        devnode.display()
    )]
    NotPartitionOrDisk { devnode: PathBuf, devtype: String },
    #[error("refusing {}: ID_BUS={bus:?}, not \"usb\"", devnode.display())]
    NotUsb { devnode: PathBuf, bus: String },
    #[error("refusing {}: ID_FS_USAGE={usage:?}, not \"filesystem\"", devnode.display())]
    NotFilesystem { devnode: PathBuf, usage: String },
    #[error(
        "refusing {}: ID_FS_TYPE={fs_type:?} is not an allowed filesystem (allowed: {})",
        devnode.display(),
        allowed.join(", ")
    )]
    FilesystemNotAllowed {
        devnode: PathBuf,
        fs_type: String,
        allowed: Vec<String>,
    },
}

/// What is wrong with one line of a properties file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Each variant's #[error] message, which names every field, is its documentation.
#[allow(missing_docs)]
pub enum LineProblem {
    #[error("expected KEY=VALUE")]
    NoEquals,
    #[error("invalid property name {0:?} (ASCII without spaces expected)")]
    BadKey(String),
    #[error("property {0} is given twice")]
    Duplicate(String),
}

impl DeviceError {
    /// True when the device was looked at and is not one the loader reads (not USB, not an
    /// allowed filesystem, ...), as opposed to a device or file that could not be looked at.
    /// A refusal is the normal outcome for most devices and no reason for a failed unit.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            DeviceError::NoUsbParent { .. }
                | DeviceError::MissingProperty { .. }
                | DeviceError::OtherDevice { .. }
                | DeviceError::NotBlockSubsystem { .. }
                | DeviceError::NotPartitionOrDisk { .. }
                | DeviceError::NotUsb { .. }
                | DeviceError::NotFilesystem { .. }
                | DeviceError::FilesystemNotAllowed { .. }
        )
    }

    /// What a person can do about it.
    pub fn advice(&self) -> &'static str {
        match self {
            DeviceError::Stat { .. } => {
                "check the device path; the stick may already have been pulled out"
            }
            DeviceError::NotBlockDevice { .. } => {
                "pass the device node of the stick's partition, e.g. /dev/sdb1"
            }
            DeviceError::Udev { .. } => {
                "the device may have disappeared while it was looked at; insert the stick again"
            }
            DeviceError::NotInitialized { .. } => {
                "udev (systemd-udevd) must be running and have processed the device; under \
                 systemd the loader starts only after that. To test without udev, supply the \
                 properties in a file (udevadm info --query=property --name=DEV)"
            }
            DeviceError::NoUsbParent { .. } => {
                "the udev properties do not match the hardware; look for a udev rule on this \
                 device that sets ID_BUS"
            }
            DeviceError::ReadProperties { .. }
            | DeviceError::PropertiesTooLarge { .. }
            | DeviceError::ParseProperties { .. } => {
                "the file must hold the KEY=VALUE lines that \
                 `udevadm info --query=property --name=DEV` prints"
            }
            DeviceError::MissingProperty { property, .. } => match *property {
                "ID_BUS" => {
                    "only USB sticks are read, and udev did not find this device on any bus \
                     (loop, device-mapper and virtual devices have none)"
                }
                "ID_FS_USAGE" | "ID_FS_TYPE" => {
                    "udev found no filesystem on it: the stick may be unformatted or damaged; \
                     format it with vfat, exfat or ext4"
                }
                _ => "udev did not describe this device completely; insert the stick again",
            },
            DeviceError::OtherDevice { .. } => {
                "the properties belong to another device; produce them again with \
                 `udevadm info --query=property --name=DEV` for this device"
            }
            DeviceError::NotBlockSubsystem { .. } | DeviceError::NotPartitionOrDisk { .. } => {
                "only block devices are read: pass the partition that holds the filesystem"
            }
            DeviceError::NotUsb { .. } => {
                "only USB sticks are read, internal disks never are; copy the bundles to a USB \
                 stick"
            }
            DeviceError::NotFilesystem { .. } => {
                "the partition holds no plain filesystem (encrypted, RAID member, swap, ...); \
                 format the stick with vfat, exfat or ext4"
            }
            DeviceError::FilesystemNotAllowed { .. } => {
                "format the stick with one of the allowed filesystems, or allow this type in \
                 the loader's configuration"
            }
        }
    }
}

/// The udev properties of the block device at `devnode`, from udev's database.
///
/// The device is found by its device number (the node is `stat`ed; a symlink such as
/// `/dev/disk/by-uuid/...` is followed), so the properties are those of the device behind
/// the node, whatever it is called. Fails with [`DeviceError::NotInitialized`] when udev has
/// not processed the device (udevd not running, or asked too early), and with
/// [`DeviceError::NoUsbParent`] when the properties say `ID_BUS=usb` but sysfs shows no USB
/// device above it. Everything else is left to [`check`].
pub fn properties_from_udev(devnode: &Path) -> Result<Properties, DeviceError> {
    let stat = rustix::fs::stat(devnode).map_err(|e| DeviceError::Stat {
        devnode: devnode.to_owned(),
        source: e.into(),
    })?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::BlockDevice {
        return Err(DeviceError::NotBlockDevice {
            devnode: devnode.to_owned(),
        });
    }
    let rdev = stat.st_rdev;
    let device = udev::Device::from_devnum(udev::DeviceType::Block, rdev).map_err(|source| {
        DeviceError::Udev {
            devnode: devnode.to_owned(),
            major: rustix::fs::major(rdev),
            minor: rustix::fs::minor(rdev),
            source,
        }
    })?;
    if !device.is_initialized() {
        return Err(DeviceError::NotInitialized {
            devnode: devnode.to_owned(),
        });
    }
    let props: Properties = device
        .properties()
        .map(|p| {
            (
                p.name().to_string_lossy().into_owned(),
                p.value().to_string_lossy().into_owned(),
            )
        })
        .collect();
    // usb-storage and uas disks sit below a SCSI host below a USB interface below a USB
    // device; ID_BUS comes from a udev rule, this comes from the kernel.
    if props.get("ID_BUS").map(String::as_str) == Some("usb") {
        let parent = device
            .parent_with_subsystem("usb")
            .map_err(|source| DeviceError::Udev {
                devnode: devnode.to_owned(),
                major: rustix::fs::major(rdev),
                minor: rustix::fs::minor(rdev),
                source,
            })?;
        if parent.is_none() {
            return Err(DeviceError::NoUsbParent {
                devnode: devnode.to_owned(),
                syspath: device.syspath().to_owned(),
            });
        }
    }
    Ok(props)
}

/// Udev properties from a file in the format `udevadm info --query=property --name=DEV`
/// prints: one `KEY=VALUE` per line; the value is everything after the first `=` (it may
/// contain `=` and spaces; no quoting). Blank lines and lines starting with `#` are skipped, a
/// trailing `\r` is dropped. A key given twice is an error. At most
/// [`MAX_PROPERTIES_FILE_BYTES`] are read.
pub fn properties_from_file(path: &Path) -> Result<Properties, DeviceError> {
    let read_error = |source| DeviceError::ReadProperties {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    file.take(MAX_PROPERTIES_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_PROPERTIES_FILE_BYTES {
        return Err(DeviceError::PropertiesTooLarge {
            path: path.to_owned(),
            limit: MAX_PROPERTIES_FILE_BYTES,
        });
    }
    parse_properties(&text).map_err(|(line, problem)| DeviceError::ParseProperties {
        path: path.to_owned(),
        line,
        problem,
    })
}

/// Parses `KEY=VALUE` lines; on error returns the 1-based line number and the problem.
fn parse_properties(text: &str) -> Result<Properties, (usize, LineProblem)> {
    let mut props = Properties::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let number = index + 1;
        let (key, value) = trimmed
            .split_once('=')
            .ok_or((number, LineProblem::NoEquals))?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((number, LineProblem::BadKey(key.to_owned())));
        }
        if props.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err((number, LineProblem::Duplicate(key.to_owned())));
        }
    }
    Ok(props)
}

/// Decides whether the loader may use the device at `devnode`, given its udev properties.
///
/// Refuses, in this order, unless:
/// - `DEVNAME`, when present, is `devnode` (properties of another device are refused; pass the
///   kernel's node, e.g. `/dev/sdb1`, not a symlink to it);
/// - `SUBSYSTEM`, when present, is `block`;
/// - `DEVTYPE` is `partition` or `disk` (a whole disk without a partition table);
/// - `ID_BUS` is `usb`;
/// - `ID_FS_USAGE` is `filesystem` (not `crypto`, `raid`, `other`, ...);
/// - `ID_FS_TYPE` is one of `allowed_fs` (compared exactly: it is the type given to mount(2)).
///
/// Missing required properties are refusals too ([`DeviceError::MissingProperty`]).
pub fn check(
    devnode: &Path,
    props: &Properties,
    allowed_fs: &[String],
) -> Result<Stick, DeviceError> {
    let get = |key: &str| props.get(key).map(String::as_str);
    let require = |key: &'static str| {
        get(key).ok_or_else(|| DeviceError::MissingProperty {
            devnode: devnode.to_owned(),
            property: key,
        })
    };
    if let Some(devname) = get("DEVNAME") {
        if Path::new(devname) != devnode {
            return Err(DeviceError::OtherDevice {
                devnode: devnode.to_owned(),
                devname: devname.to_owned(),
            });
        }
    }
    if let Some(subsystem) = get("SUBSYSTEM") {
        if subsystem != "block" {
            return Err(DeviceError::NotBlockSubsystem {
                devnode: devnode.to_owned(),
                subsystem: subsystem.to_owned(),
            });
        }
    }
    let devtype = require("DEVTYPE")?;
    if devtype != "partition" && devtype != "disk" {
        return Err(DeviceError::NotPartitionOrDisk {
            devnode: devnode.to_owned(),
            devtype: devtype.to_owned(),
        });
    }
    let bus = require("ID_BUS")?;
    if bus != "usb" {
        return Err(DeviceError::NotUsb {
            devnode: devnode.to_owned(),
            bus: bus.to_owned(),
        });
    }
    let usage = require("ID_FS_USAGE")?;
    if usage != "filesystem" {
        return Err(DeviceError::NotFilesystem {
            devnode: devnode.to_owned(),
            usage: usage.to_owned(),
        });
    }
    let fs_type = require("ID_FS_TYPE")?;
    if !allowed_fs.iter().any(|allowed| allowed == fs_type) {
        return Err(DeviceError::FilesystemNotAllowed {
            devnode: devnode.to_owned(),
            fs_type: fs_type.to_owned(),
            allowed: allowed_fs.to_vec(),
        });
    }
    let field = |key: &str| get(key).and_then(printable);
    Ok(Stick {
        devnode: devnode.to_owned(),
        fs_type: fs_type.to_owned(),
        serial: field("ID_SERIAL_SHORT").or_else(|| field("ID_SERIAL")),
        label: field("ID_FS_LABEL"),
        uuid: field("ID_FS_UUID"),
        vendor: field("ID_VENDOR"),
        model: field("ID_MODEL"),
        partition: match devtype {
            "partition" => get("ID_PART_ENTRY_NUMBER").and_then(|n| n.parse().ok()),
            _ => None,
        },
    })
}

/// An untrusted text value fit for logs and receipts: control characters replaced by `?`,
/// at most [`MAX_FIELD_CHARS`] characters, `None` when empty.
fn printable(value: &str) -> Option<String> {
    let text: String = value
        .chars()
        .take(MAX_FIELD_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    (!text.trim().is_empty()).then_some(text)
}

/// `value` as one safe path component: characters outside `[A-Za-z0-9._-]` become `_`, a
/// leading `.` or `-` becomes `_`, at most [`MAX_NAME_CHARS`] characters. `None` when no
/// ASCII letter or digit is left (nothing that identifies anything).
fn safe_name(value: &str) -> Option<String> {
    let mut name: String = value
        .chars()
        .take(MAX_NAME_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !name.chars().any(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    if name.starts_with(['.', '-']) {
        name.replace_range(..1, "_");
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        ["vfat", "exfat", "ext4"].map(String::from).to_vec()
    }

    /// What `udevadm info --query=property` prints for the first partition of a USB stick
    /// formatted with ext4 (abridged).
    const USB_EXT4: &str = "\
DEVPATH=/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb/sdb1
DEVNAME=/dev/sdb1
DEVTYPE=partition
DISKSEQ=12
PARTN=1
MAJOR=8
MINOR=17
SUBSYSTEM=block
USEC_INITIALIZED=123456789
ID_VENDOR=SanDisk
ID_MODEL=Ultra
ID_SERIAL=SanDisk_Ultra_4C530001230615117465-0:0
ID_SERIAL_SHORT=4C530001230615117465
ID_BUS=usb
ID_USB_DRIVER=usb-storage
ID_FS_LABEL=BUNDLES
ID_FS_UUID=0b6f5d7e-3c1a-4c1e-9f51-6a1d2e3f4a5b
ID_FS_TYPE=ext4
ID_FS_USAGE=filesystem
ID_PART_ENTRY_NUMBER=1
";

    fn props(text: &str) -> Properties {
        parse_properties(text).expect("valid properties")
    }

    fn with(text: &str, key: &str, value: Option<&str>) -> Properties {
        let mut p = props(text);
        match value {
            Some(v) => p.insert(key.to_owned(), v.to_owned()),
            None => p.remove(key),
        };
        p
    }

    fn sdb1() -> &'static Path {
        Path::new("/dev/sdb1")
    }

    #[test]
    fn good_usb_ext4_partition_is_accepted() {
        let stick = check(sdb1(), &props(USB_EXT4), &allowed()).expect("accepted");
        assert_eq!(
            stick,
            Stick {
                devnode: "/dev/sdb1".into(),
                fs_type: "ext4".into(),
                serial: Some("4C530001230615117465".into()),
                label: Some("BUNDLES".into()),
                uuid: Some("0b6f5d7e-3c1a-4c1e-9f51-6a1d2e3f4a5b".into()),
                vendor: Some("SanDisk".into()),
                model: Some("Ultra".into()),
                partition: Some(1),
            }
        );
        assert_eq!(stick.name(), "4C530001230615117465-part1");
    }

    #[test]
    fn whole_disk_filesystem_and_absent_subsystem_are_accepted() {
        let mut p = with(USB_EXT4, "DEVTYPE", Some("disk"));
        p.remove("SUBSYSTEM");
        p.remove("DEVNAME");
        let stick = check(sdb1(), &p, &allowed()).expect("accepted");
        assert_eq!(stick.partition, None);
        assert_eq!(stick.name(), "4C530001230615117465");
    }

    #[test]
    fn sata_disk_is_refused() {
        let err = check(sdb1(), &with(USB_EXT4, "ID_BUS", Some("ata")), &allowed()).unwrap_err();
        assert!(
            matches!(&err, DeviceError::NotUsb { bus, .. } if bus == "ata"),
            "{err:?}"
        );
        assert!(err.is_refusal());
        assert_eq!(
            err.to_string(),
            "refusing /dev/sdb1: ID_BUS=\"ata\", not \"usb\""
        );
    }

    #[test]
    fn filesystem_type_not_allowed_is_refused() {
        let p = with(USB_EXT4, "ID_FS_TYPE", Some("ntfs"));
        let err = check(sdb1(), &p, &allowed()).unwrap_err();
        assert!(
            matches!(&err, DeviceError::FilesystemNotAllowed { fs_type, .. } if fs_type == "ntfs"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "refusing /dev/sdb1: ID_FS_TYPE=\"ntfs\" is not an allowed filesystem \
             (allowed: vfat, exfat, ext4)"
        );
        // The allowed list comes from the configuration.
        let only_vfat = vec!["vfat".to_owned()];
        let err = check(sdb1(), &props(USB_EXT4), &only_vfat).unwrap_err();
        assert!(matches!(err, DeviceError::FilesystemNotAllowed { .. }));
        // Compared exactly: the value is the type passed to mount(2).
        let p = with(USB_EXT4, "ID_FS_TYPE", Some("EXT4"));
        assert!(check(sdb1(), &p, &allowed()).is_err());
    }

    #[test]
    fn encrypted_partition_is_refused() {
        let mut p = with(USB_EXT4, "ID_FS_USAGE", Some("crypto"));
        p.insert("ID_FS_TYPE".into(), "crypto_LUKS".into());
        let err = check(sdb1(), &p, &allowed()).unwrap_err();
        assert!(
            matches!(&err, DeviceError::NotFilesystem { usage, .. } if usage == "crypto"),
            "{err:?}"
        );
    }

    #[test]
    fn missing_properties_are_refused_by_name() {
        for key in ["DEVTYPE", "ID_BUS", "ID_FS_USAGE", "ID_FS_TYPE"] {
            let err = check(sdb1(), &with(USB_EXT4, key, None), &allowed()).unwrap_err();
            assert!(
                matches!(&err, DeviceError::MissingProperty { property, .. } if *property == key),
                "{key}: {err:?}"
            );
            assert!(err.is_refusal());
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = check(sdb1(), &Properties::new(), &allowed()).unwrap_err();
        assert!(matches!(
            err,
            DeviceError::MissingProperty {
                property: "DEVTYPE",
                ..
            }
        ));
    }

    #[test]
    fn loop_device_without_bus_is_refused_for_its_bus() {
        // What a loop device with an ext4 image looks like once udev has processed it.
        let p = props(
            "DEVNAME=/dev/loop0\nDEVTYPE=disk\nSUBSYSTEM=block\nID_FS_TYPE=ext4\n\
             ID_FS_USAGE=filesystem\n",
        );
        let err = check(Path::new("/dev/loop0"), &p, &allowed()).unwrap_err();
        assert!(
            matches!(
                err,
                DeviceError::MissingProperty {
                    property: "ID_BUS",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn wrong_subsystem_devtype_or_device_is_refused() {
        let p = with(USB_EXT4, "SUBSYSTEM", Some("usb"));
        assert!(matches!(
            check(sdb1(), &p, &allowed()),
            Err(DeviceError::NotBlockSubsystem { .. })
        ));
        let p = with(USB_EXT4, "DEVTYPE", Some("usb_device"));
        assert!(matches!(
            check(sdb1(), &p, &allowed()),
            Err(DeviceError::NotPartitionOrDisk { .. })
        ));
        let err = check(Path::new("/dev/sdc1"), &props(USB_EXT4), &allowed()).unwrap_err();
        assert!(
            matches!(&err, DeviceError::OtherDevice { devname, .. } if devname == "/dev/sdb1"),
            "{err:?}"
        );
    }

    #[test]
    fn untrusted_fields_are_printable_and_short() {
        let mut p = with(USB_EXT4, "ID_FS_LABEL", Some("evil\u{1b}[2Jlabel"));
        p.insert("ID_MODEL".into(), "m".repeat(1000));
        p.insert("ID_VENDOR".into(), "   ".into());
        let stick = check(sdb1(), &p, &allowed()).expect("accepted");
        assert_eq!(stick.label.as_deref(), Some("evil?[2Jlabel"));
        assert_eq!(stick.model.map(|m| m.len()), Some(MAX_FIELD_CHARS));
        assert_eq!(stick.vendor, None);
    }

    #[test]
    fn name_is_a_safe_path_component() {
        let base = check(sdb1(), &props(USB_EXT4), &allowed()).expect("accepted");
        let named = |serial: Option<&str>, uuid: Option<&str>| {
            Stick {
                serial: serial.map(String::from),
                uuid: uuid.map(String::from),
                partition: None,
                ..base.clone()
            }
            .name()
        };
        assert_eq!(named(Some("../../etc/passwd"), None), "_._.._etc_passwd");
        assert_eq!(named(Some("-rf *"), None), "_rf__");
        assert_eq!(named(Some("ünï"), None), "_n_");
        // Nothing identifying left: fall back to the UUID, then to the device node.
        assert_eq!(named(Some("///"), Some("1234-ABCD")), "1234-ABCD");
        assert_eq!(named(None, None), "sdb1");
        assert_eq!(named(None, Some("..")), "sdb1");
        let long = named(Some(&"x".repeat(500)), None);
        assert_eq!(long.len(), MAX_NAME_CHARS);
        for name in [named(Some(".hidden"), None), named(Some("a/b\0c\nd"), None)] {
            assert!(!name.starts_with('.'), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
                "{name}"
            );
        }
        // No serial, no UUID and an odd device node name.
        let odd = Stick {
            devnode: "/dev/..".into(),
            ..base.clone()
        };
        assert_eq!(
            Stick {
                serial: None,
                uuid: None,
                ..odd
            }
            .name(),
            "stick"
        );
    }

    #[test]
    fn parser_skips_comments_and_blank_lines_and_keeps_equals_in_values() {
        let p = parse_properties(
            "# udevadm info --query=property --name=/dev/sdb1\n\n  \nID_FS_LABEL=a=b==c \r\n\
             \t# indented comment\nEMPTY=\nDEVLINKS=/dev/disk/by-id/usb-X /dev/disk/by-label/a\\x3db",
        )
        .expect("parsed");
        assert_eq!(p.len(), 3);
        assert_eq!(p["ID_FS_LABEL"], "a=b==c ");
        assert_eq!(p["EMPTY"], "");
        assert_eq!(
            p["DEVLINKS"],
            "/dev/disk/by-id/usb-X /dev/disk/by-label/a\\x3db"
        );
        assert_eq!(parse_properties("").expect("empty"), Properties::new());
    }

    #[test]
    fn parser_rejects_bad_lines_with_their_number() {
        assert_eq!(
            parse_properties("A=1\n\njust text\n"),
            Err((3, LineProblem::NoEquals))
        );
        assert_eq!(
            parse_properties("=value"),
            Err((1, LineProblem::BadKey(String::new())))
        );
        assert_eq!(
            parse_properties("E: ID_BUS=usb"),
            Err((1, LineProblem::BadKey("E: ID_BUS".into())))
        );
        assert_eq!(
            parse_properties("ID_BUS=ata\nID_BUS=usb\n"),
            Err((2, LineProblem::Duplicate("ID_BUS".into())))
        );
    }

    #[test]
    fn properties_file_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sdb1.properties");
        std::fs::write(&path, USB_EXT4).expect("write");
        let p = properties_from_file(&path).expect("read");
        assert_eq!(p, props(USB_EXT4));
        check(sdb1(), &p, &allowed()).expect("accepted");

        std::fs::write(&path, "ID_BUS=usb\nbroken\n").expect("write");
        let err = properties_from_file(&path).unwrap_err();
        assert!(
            matches!(
                &err,
                DeviceError::ParseProperties {
                    line: 2,
                    problem: LineProblem::NoEquals,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("sdb1.properties:2"), "{err}");

        let big = "A=".to_owned() + &"x".repeat(MAX_PROPERTIES_FILE_BYTES as usize);
        std::fs::write(&path, big).expect("write");
        assert!(matches!(
            properties_from_file(&path),
            Err(DeviceError::PropertiesTooLarge { .. })
        ));

        let missing = dir.path().join("missing");
        assert!(matches!(
            properties_from_file(&missing),
            Err(DeviceError::ReadProperties { .. })
        ));
    }

    #[test]
    fn udev_refuses_what_is_not_a_block_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("image");
        std::fs::write(&file, b"not a device").expect("write");
        let err = properties_from_udev(&file).unwrap_err();
        assert!(matches!(err, DeviceError::NotBlockDevice { .. }), "{err:?}");
        assert!(!err.is_refusal());
        let err = properties_from_udev(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, DeviceError::Stat { .. }), "{err:?}");
        // /dev/null is a character device.
        let err = properties_from_udev(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, DeviceError::NotBlockDevice { .. }), "{err:?}");
    }

    #[test]
    fn every_error_has_advice() {
        let node = PathBuf::from("/dev/sdb1");
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let errors = [
            DeviceError::Stat {
                devnode: node.clone(),
                source: io(),
            },
            DeviceError::NotInitialized {
                devnode: node.clone(),
            },
            DeviceError::MissingProperty {
                devnode: node.clone(),
                property: "ID_BUS",
            },
            DeviceError::MissingProperty {
                devnode: node.clone(),
                property: "ID_FS_TYPE",
            },
            DeviceError::NoUsbParent {
                devnode: node.clone(),
                syspath: "/sys/devices/virtual/block/loop0".into(),
            },
        ];
        for err in errors {
            assert!(!err.advice().is_empty(), "{err}");
            assert!(err.to_string().contains("/dev/sdb1"), "{err}");
        }
    }
}
