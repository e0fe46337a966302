//! The sideload bundle engine: image model, bundle format, delta encoder and decoder.
//!
//! # Design overview
//!
//! A *bundle* is one file that rebuilds one image on a device from what the device already
//! holds. Its front is a small signed [`Statement`](sideload_signing::Statement) (what image
//! will exist, what must already be there, the payload's size and sha256) followed by a
//! signature slot; after them, the payload. [`container`] reads and writes that frame,
//! [`payload`] the record stream inside the payload, [`build`] is the encoder and [`apply`] the
//! decoder, both over [`scratch`] (the device's base layers and the ranges gathered from them);
//! [`verify`] makes the trust decisions. Each of `build` and `apply` keeps its decisions in
//! pure, unit-tested parts (`build::plan`, `build::statement`; `apply::preflight`,
//! `apply::decode::layer_action`) and its I/O in thin ones around them. [`image`] reads images from docker-archives,
//! OCI layouts and registries and writes them back.
//!
//! The types fit together like this:
//!
//! ```text
//! ImageSource (target) + [ImageSource] (bases) --build_bundle--> bundle file (unsigned)
//! bundle file --container::attach_signatures--> signed bundle   (signatures made offline)
//! signed bundle + Trust --open_trusted (judge_head)--> TrustedHead --apply_trusted(BaseStore)--> image
//! ```
//!
//! What it deliberately does not do: run a server, talk to the local registry or engine, keep
//! device state (the receiver passes in what it holds, sequence floors included, as [`Holdings`]). Those belong
//! to the registry plugin and the USB loader.
//!
//! Bounded resources: nothing reads a layer or a payload into memory. The largest buffers are
//! the payload's window (declared in the statement, capped by [`Limits`]) and one patch's base range.
//! Every length in a bundle is checked against [`Limits`] before it sizes anything.
//!
//! Tests: `cargo test -p sideload-bundle`. The image tests start a real `docker-registry` on
//! loopback and use `skopeo`; `.ci/run` installs both.

#![warn(missing_docs)]

pub mod apply;
pub mod bspatch;
pub mod build;
pub mod codec;
pub mod container;
pub mod covers;
mod deflate_scan;
pub mod delta;
pub mod demo;
pub mod error;
pub mod exact;
pub mod fsutil;
pub mod goflate;
pub mod gzip_recipe;
pub mod image;
pub mod limits;
pub mod manifest;
pub mod payload;
pub mod progress;
pub mod scratch;
pub mod stream;
pub mod text;
pub mod verify;

pub use apply::{apply_bundle, apply_trusted, ApplyReport, BaseStore, ImageSet, Output};
pub use build::{
    build_bundle, rank_bases, BuildOptions, BuildReport, DeltaStats, LayerEncoding, LayerReport,
};
pub use container::{
    attach_signatures, bundle_name, check_header, head_len, open_bundle, read_head, BundleHead,
};
pub use error::Error;
pub use exact::{ExactOptions, Exactness};
pub use limits::Limits;
pub use progress::{NoProgress, Progress};
pub use verify::{
    check_file_length, check_payload, check_payload_digest, digest_bundle_file, judge_head,
    open_trusted, BundleDigests, Claims, Holdings, Trust, TrustedHead, Verdict,
};
