//! The fleet ledger: which images are on which device, which bundles are on their way to
//! which device (since when, by which route), which deployment sets they belong to, who
//! ordered them; and the decisions an operator or a release pipeline makes from it.
//!
//! # Design overview
//!
//! - [`Ledger`] is the database: SQLite by default (one file, no server), PostgreSQL when
//!   several operators or pipelines share it ([`Database::Postgres`]). The same SQL runs on
//!   both ([`db`]); the schema migrates itself on open.
//! - [`reports`] parses what devices send back: the registry plugin's inventory and bundle
//!   list, and the USB loader's receipts. Ingesting is idempotent and ordered by the device's
//!   clock: the same report twice changes nothing, an older one never overwrites newer state.
//! - [`plan`] decides, purely, which bundle each device needs for a set of target images and
//!   which of those are the same bundle (built once, sent to many).
//! - [`deployment`] reads and rewrites IoT Edge deployment manifests in place
//!   (`imagePullPolicy: never`, digest pins), keeping the file as written; [`kubernetes`] does
//!   the same for Kubernetes workload YAML (`imagePullPolicy: Never` for k3s and other edge
//!   kubelets); [`manifest`] tells the two apart by content and answers for both in the same
//!   types, and spells pinned references (renamed for a device-local registry on request);
//!   [`gate`] decides whether a deployment may go out.
//! - [`chart`] draws transfers over time as SVG.
//!
//! What it does not do: build bundles or talk to devices, or expand manifest templates (a
//! template reference is reported, never pinned). The `sideload fleet` commands of
//! the CLI wire the ledger to the bundle engine, the device API and the file system.
//!
//! Tests: `cargo test -p sideload-fleet` (SQLite); the CLI's `fleet` tests also run every
//! ledger test against a real PostgreSQL server they start on loopback.

#![warn(missing_docs)]

pub mod chart;
pub mod db;
pub mod deployment;
pub mod gate;
pub mod kubernetes;
pub mod ledger;
pub mod manifest;
pub mod plan;
pub mod reports;

pub use db::Database;
pub use ledger::{BundleRecord, Deployment, Device, Ingested, Ledger, Transfer, TransferEvent};
pub use reports::{BundleReport, HeldImage, Inventory, TransferState};

/// Why the ledger could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database could not be opened or created.
    #[error("cannot open the fleet ledger {database}: {message}")]
    Open {
        /// The database (a PostgreSQL password is never shown).
        database: String,
        /// The driver's message.
        message: String,
    },
    /// A statement failed.
    #[error("fleet ledger: {statement}…: {message}")]
    Query {
        /// The statement's first words.
        statement: String,
        /// The driver's message.
        message: String,
    },
    /// A report (inventory, receipt, bundle list) could not be read.
    #[error("{origin}: {message}")]
    BadReport {
        /// Where it came from (file, URL).
        origin: String,
        /// What is wrong with it.
        message: String,
    },
    /// Something asked for is not in the ledger.
    #[error("{0}")]
    NotFound(String),
    /// A value the ledger will not store, or a ledger it cannot use.
    #[error("{0}")]
    Invalid(String),
}
