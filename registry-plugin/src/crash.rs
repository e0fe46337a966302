//! The named steps of intake and apply, each a point where a crash leaves a distinct on-disk
//! state that start-up recovery ([`crate::daemon::Daemon::recover`]) must bring to a good end.
//!
//! Built with the cargo feature `crash-points` (tests only, never a device build), the daemon
//! aborts (`std::process::abort`, as abrupt as a power cut for the process) when it reaches
//! the step named by the environment variable `SIDELOAD_CRASH_AT`. Without the feature
//! [`reached`] is empty and the variable is ignored. The test `tests/crash_points.rs` kills
//! the daemon at every step of [`Step::ALL`], restarts it, and checks that the bundle applies
//! exactly once and nothing is left behind.

/// One step of intake or apply, named after what has just become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// An inbox file was moved into `bundles/inbox-NAME.incoming` (and linked into
    /// quarantine as `.NAME.pending`); nothing checked yet.
    InboxMoved,
    /// An upload's last byte arrived and its file moved to `bundles/ID.incoming`.
    UploadMoved,
    /// Intake checked the head and the payload digest; the file is still `*.incoming`.
    IntakeChecked,
    /// The file was renamed to `bundles/HEX.bundle`; the journal has no row yet.
    IntakeStored,
    /// The journal row is `queued`; the delivery (upload record) does not know yet.
    IntakeJournaled,
    /// The upload record holds intake's result; the client's answer was not sent.
    UploadRecorded,
    /// The journal row is `applying`; nothing decoded yet.
    ApplyStarted,
    /// The image is decoded into `staging/`; nothing pushed yet.
    ApplyStaged,
    /// Every blob and the manifest (by digest) are in the registry; no tag moved.
    ApplyManifestStored,
    /// The tags point at the new manifest; the journal still says `applying`.
    ApplyTagged,
    /// The journal says `applied` and the sequence floor moved; the stored file is still there.
    ApplyJournaled,
    /// The `applied` event is spooled; the stored file is still there.
    ApplyAnnounced,
    /// The stored file is removed: the apply's last step.
    ApplyCleaned,
}

impl Step {
    /// Every step, in the order a delivery passes them.
    pub const ALL: &'static [Step] = &[
        Step::InboxMoved,
        Step::UploadMoved,
        Step::IntakeChecked,
        Step::IntakeStored,
        Step::IntakeJournaled,
        Step::UploadRecorded,
        Step::ApplyStarted,
        Step::ApplyStaged,
        Step::ApplyManifestStored,
        Step::ApplyTagged,
        Step::ApplyJournaled,
        Step::ApplyAnnounced,
        Step::ApplyCleaned,
    ];

    /// The name `SIDELOAD_CRASH_AT` takes.
    pub fn name(self) -> &'static str {
        match self {
            Step::InboxMoved => "inbox-moved",
            Step::UploadMoved => "upload-moved",
            Step::IntakeChecked => "intake-checked",
            Step::IntakeStored => "intake-stored",
            Step::IntakeJournaled => "intake-journaled",
            Step::UploadRecorded => "upload-recorded",
            Step::ApplyStarted => "apply-started",
            Step::ApplyStaged => "apply-staged",
            Step::ApplyManifestStored => "apply-manifest-stored",
            Step::ApplyTagged => "apply-tagged",
            Step::ApplyJournaled => "apply-journaled",
            Step::ApplyAnnounced => "apply-announced",
            Step::ApplyCleaned => "apply-cleaned",
        }
    }

    /// True for the steps only an inbox delivery passes.
    pub fn inbox_only(self) -> bool {
        self == Step::InboxMoved
    }

    /// True for the steps only an upload passes.
    pub fn upload_only(self) -> bool {
        matches!(self, Step::UploadMoved | Step::UploadRecorded)
    }
}

/// Marks that `step` is done. With the `crash-points` feature, aborts the process when
/// `SIDELOAD_CRASH_AT` names this step.
#[inline]
pub fn reached(step: Step) {
    #[cfg(feature = "crash-points")]
    #[allow(clippy::disallowed_methods)]
    if std::env::var("SIDELOAD_CRASH_AT").is_ok_and(|v| v == step.name()) {
        eprintln!("crash point {}: aborting", step.name());
        std::process::abort();
    }
    #[cfg(not(feature = "crash-points"))]
    let _ = step;
}
