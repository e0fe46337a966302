//! The device daemon's HTTP API as types, and its one client.
//!
//! `docs/upload-api.md` describes the API; this crate is that description in Rust, shared by
//! everything that speaks it: the daemon (`sideload-registry-plugin`) writes its answers from
//! these types, and `sideload push`, the USB loader and the fleet ledger read the daemon's
//! answers only through them. Nothing here does I/O except the optional [`client`].
//!
//! How the types fit together:
//!
//! - [`BundleState`] is a bundle's state on the device, with a strict parser (an unknown word
//!   is an error, never some other state); [`ReceiptState`] is the same seen from a USB stick,
//!   derived from it by [`ReceiptState::from_device`].
//! - [`answers`] holds every answer body: [`UploadCreated`], [`Taken`], [`Known`],
//!   [`BundleStatus`] (a [`BundleRecord`] and its [`HistoryEntry`]s), [`BundleList`],
//!   [`JournalPage`], [`Health`], and [`ErrorBody`] around the one [`Refusal`] (code, reason,
//!   advice, whether to retry). [`answers::body`] writes them as the daemon always has: pretty,
//!   keys sorted.
//! - [`reply::classify`] maps any answer (status, `Upload-Offset`, body) to one [`Answer`]:
//!   what a client does next. Pure, tested without a socket.
//! - [`Inventory`] is `GET /sideload/v1/inventory`; [`Receipt`] is the USB loader's receipt.
//! - [`client`] (feature `client`): one HTTP client for the API, hyper on sockets set for bad
//!   links, TLS trusted by the platform, a CA file or certificate pins.
//!
//! It deliberately holds no decisions of the daemon (intake, apply) and no retry policy (the
//! callers' own: `sideload push` backs off and resumes, the loader waits for a stick visit).
//!
//! Tests: `cargo test -p sideload-device-api --all-features`.

#![warn(missing_docs)]

pub mod answers;
#[cfg(feature = "client")]
pub mod client;
pub mod inventory;
pub mod receipt;
pub mod refusal;
pub mod reply;
pub mod state;

pub use answers::{
    BundleList, BundleRecord, BundleStatus, ErrorBody, Health, HistoryEntry, Intake, JournalPage,
    Known, Taken, UploadCreated, API,
};
pub use inventory::{EngineHeld, EngineInventory, HeldImage, Inventory, INVENTORY_FORMAT};
pub use receipt::Receipt;
pub use refusal::Refusal;
pub use reply::{classify, Answer};
pub use state::{BundleState, ReceiptState, UnknownReceiptState, UnknownState};
