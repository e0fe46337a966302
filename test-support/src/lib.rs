//! Fixtures the end-to-end tests of several crates share, one copy each (they used to be
//! included into other crates' tests with `#[path]`). Everything here starts real programs on
//! loopback or Unix sockets under a temp dir and stops them by PID:
//!
//! - [`registry`]: a real `docker-registry` on a free loopback port, the registry plugin as a
//!   child process, the demo images, keys and signed bundles, a raw HTTP/1.1 client;
//! - [`docker`]: Debian's `dockerd` with its own roots and socket (the engine IoT Edge runs);
//! - [`containerd`]: containerd with its CRI plugin, isolated (the kubelet's engine);
//! - [`databases`]: an SQLite file or a real PostgreSQL server for the fleet ledger.
//!
//! A dev-dependency only: nothing ships it.

#![warn(missing_docs)]

pub mod containerd;
pub mod databases;
pub mod docker;
pub mod registry;
