//! What the device reports about itself: its inventory (the JSON `sideload build
//! --inventory` takes to choose bases, and the fleet gate reads: the registry's images and,
//! with `[engine]`, every name the container engine resolves) and Prometheus metrics.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::daemon::Daemon;
use crate::upstream::UpstreamError;

pub use sideload_device_api::{Inventory, INVENTORY_FORMAT};

/// Why no inventory could be made.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The registry did not answer.
    #[error(transparent)]
    Registry(#[from] UpstreamError),
    /// The journal could not be read.
    #[error("cannot read the journal's sequences: {0}")]
    Journal(rusqlite::Error),
}

/// Builds the inventory from the registry and the journal.
pub async fn inventory(daemon: &Daemon) -> Result<Inventory, InventoryError> {
    let mut configs = HashMap::new();
    let images = daemon.upstream.images(&mut configs).await?;
    // Without its sequences the inventory would tell the cloud (and the USB loader's checks)
    // that no floor exists: better no inventory.
    let sequences = daemon
        .journal
        .sequences()
        .map_err(InventoryError::Journal)?;
    Ok(Inventory {
        format: INVENTORY_FORMAT,
        device: daemon.config.device_id.clone(),
        generated_at: crate::journal::now(),
        images,
        sequences: sequences.into_iter().collect(),
        free_bytes: fs4::available_space(&daemon.config.data_dir).unwrap_or(0),
        engine: match (&daemon.engine, &daemon.config.engine) {
            (Some(engine), Some(settings)) => Some(engine.inventory(settings.kind).await),
            _ => None,
        },
    })
}

/// Prometheus text exposition. Written by hand: the values are read from the journal and a
/// few counters at scrape time, so a metrics registry would only add a copy of them.
pub fn metrics(daemon: &Daemon, uploads_active: usize) -> String {
    let mut out = String::new();
    let m = &daemon.metrics;
    let _ = writeln!(
        out,
        "# HELP sideload_bundles Bundles in the journal by state."
    );
    let _ = writeln!(out, "# TYPE sideload_bundles gauge");
    for (state, n) in daemon.journal.counts().unwrap_or_default() {
        let _ = writeln!(out, "sideload_bundles{{state=\"{state}\"}} {n}");
    }
    let gauges = [
        (
            "sideload_uploads_active",
            "Unfinished uploads.",
            uploads_active as u64,
        ),
        (
            "sideload_events_pending",
            "Events waiting for delivery.",
            daemon.events.pending() as u64,
        ),
        (
            "sideload_last_apply_seconds",
            "Duration of the last apply.",
            m.last_apply_millis.load(Ordering::Relaxed) / 1000,
        ),
        (
            "sideload_free_bytes",
            "Free bytes in the data directory.",
            fs4::available_space(&daemon.config.data_dir).unwrap_or(0),
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let counters = [
        (
            "sideload_upload_bytes_total",
            "Bundle bytes received by upload.",
            m.upload_bytes.load(Ordering::Relaxed),
        ),
        (
            "sideload_applies_total",
            "Applies finished, either way.",
            m.applies.load(Ordering::Relaxed),
        ),
        (
            "sideload_untrusted_refusals_total",
            "Refusals of untrusted deliveries (no statement that verified), kept or not.",
            daemon.journal.untrusted_refusals().unwrap_or(0),
        ),
        (
            "sideload_untrusted_events_dropped_total",
            "Refusal events of untrusted deliveries dropped from the spool's ring since start.",
            daemon.events.untrusted_dropped(),
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let secs = m.apply_millis.load(Ordering::Relaxed) as f64 / 1000.0;
    let _ = writeln!(
        out,
        "# HELP sideload_apply_seconds_total Time spent applying.\n# TYPE sideload_apply_seconds_total counter\nsideload_apply_seconds_total {secs}"
    );
    out
}
