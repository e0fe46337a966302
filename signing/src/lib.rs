//! Keys, trust policy, statements and signatures for sideload bundles.
//!
//! (Design overview: to be written with the keys/policy modules.)

pub mod names;
pub mod statement;

pub use names::{Digest, InvalidName, RepositoryName, Tag};
pub use statement::{
    LayerStorage, PayloadInfo, Platform, SourceRef, Statement, StatementError, Target,
    TargetLayer, FORMAT_VERSION, MAX_STATEMENT_LEN,
};
