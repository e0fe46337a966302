//! The USB loader: turns an inserted stick into bundles handed to the registry plugin, and
//! writes receipts back. See the README's "USB loader" section.

#![warn(missing_docs)]

pub mod config;
pub mod device;
pub mod loader;
pub mod mount;
pub mod plugin;
pub mod receipts;
pub mod scan;
