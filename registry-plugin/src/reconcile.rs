//! Offers the container engine again the applied images it did not take.
//!
//! The engine can miss an image: it was down when the bundle applied (a boot where the plugin
//! starts first), the daemon stopped between the apply and the load, or `[engine]` was turned
//! on later. The queue worker calls [`Daemon::retry_engine_loads`] between applies; it loads
//! each such image again, with the tags that still name it in the registry, so an older bundle
//! never takes a tag back in the engine. A bundle none of whose tags name it any more is marked
//! superseded and left alone.
//!
//! Retries back off per bundle (from `[engine] retry_secs`, doubling, at most an hour), so an
//! engine that accepts connections but never answers costs the apply queue one timeout per
//! bundle and back-off period, not one per minute. The journal's `engine` field is rewritten
//! only when the outcome's text changes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sideload_signing::{Digest, Tag};

use crate::daemon::{engine_outcome, Daemon};
use crate::journal::{BundleRecord, State};

/// Longest wait between two offers of the same image.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// When each bundle may be offered again.
#[derive(Debug, Default)]
pub struct Backoff {
    next: HashMap<String, (u32, Instant)>,
}

impl Backoff {
    /// Whether `bundle` may be tried at `now`.
    pub fn due(&self, bundle: &str, now: Instant) -> bool {
        self.next.get(bundle).is_none_or(|(_, at)| now >= *at)
    }

    /// Records a failed try: the next one waits `base` × 2^(failures-1), at most an hour.
    pub fn failed(&mut self, bundle: &str, base: Duration, now: Instant) {
        let failures = self.next.get(bundle).map_or(0, |(n, _)| *n) + 1;
        let wait = base
            .saturating_mul(1 << (failures - 1).min(16))
            .min(MAX_BACKOFF);
        self.next.insert(bundle.to_owned(), (failures, now + wait));
    }

    /// Forgets `bundle` (loaded, or no longer pending).
    pub fn done(&mut self, bundle: &str) {
        self.next.remove(bundle);
    }
}

/// Whether an applied bundle's engine outcome asks for another try: none recorded (the daemon
/// stopped before the load, or the engine was configured later) or a failure.
pub fn needs_load(outcome: Option<&str>) -> bool {
    outcome.is_none_or(|o| o.starts_with("failed"))
}

/// The tags of a bundle that still name its manifest, given what the registry answers for each
/// (`None`: the tag is gone). `None` when the bundle had tags and none is left: superseded.
pub fn current_tags<'a>(
    manifest_digest: &str,
    answers: &'a [(String, Option<String>)],
) -> Option<Vec<&'a str>> {
    let current: Vec<&str> = answers
        .iter()
        .filter(|(_, digest)| digest.as_deref() == Some(manifest_digest))
        .map(|(tag, _)| tag.as_str())
        .collect();
    (answers.is_empty() || !current.is_empty()).then_some(current)
}

impl Daemon {
    /// Offers the engine each applied image it did not take and that is due (see the module
    /// doc).
    pub(crate) async fn retry_engine_loads(&self, backoff: &mut Backoff) {
        let (Some(_), Some(settings)) = (&self.engine, &self.config.engine) else {
            return;
        };
        let pending = match self.journal.in_state(State::Applied) {
            Ok(applied) => applied,
            Err(e) => {
                tracing::error!(error = %e, "cannot read applied bundles from the journal");
                return;
            }
        };
        let base = Duration::from_secs(settings.retry_secs.max(1));
        for b in pending.iter().filter(|b| needs_load(b.engine.as_deref())) {
            if !backoff.due(&b.id, Instant::now()) {
                continue;
            }
            match self.offer_again(b).await {
                Ok(()) => backoff.done(&b.id),
                Err(failed) => {
                    let outcome = failed.to_string();
                    backoff.failed(&b.id, base, Instant::now());
                    if b.engine.as_deref() != Some(outcome.as_str()) {
                        let _ = self.journal.set_engine(&b.id, &outcome);
                    }
                }
            }
        }
    }

    /// One try for `b`: `Err` carries the outcome to record.
    async fn offer_again(&self, b: &BundleRecord) -> Result<(), OfferFailed> {
        let (Some(engine), Some(settings)) = (&self.engine, &self.config.engine) else {
            return Ok(());
        };
        let (config_digest, tags) = match self.still_current(b).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                let _ = self.journal.set_engine(
                    &b.id,
                    "superseded: every tag of this bundle names a newer image in the registry; not loaded",
                );
                return Ok(());
            }
            Err(e) => return Err(OfferFailed::Registry(e)),
        };
        let (Ok(repository), Ok(digest)) = (b.repository.parse(), b.manifest_digest.parse()) else {
            return Ok(());
        };
        let applied = crate::names::Applied {
            repository: &repository,
            tags: &tags,
            manifest_digest: &digest,
        };
        match engine.load(settings, &applied, &config_digest).await {
            Ok(loaded) => {
                tracing::info!(bundle = %b.name, id = %loaded.id, "the engine took the image on a retry");
                let _ = self.journal.set_engine(&b.id, &engine_outcome(&loaded));
                self.announce(b, "engine-loaded", None, None);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(bundle = %b.name, error = %e, "the engine still does not take the image");
                Err(OfferFailed::Engine(e))
            }
        }
    }

    /// `b`'s config digest and the tags that still name its manifest in the registry; `None`
    /// when it is superseded (it had tags and none is left) or its manifest is gone.
    async fn still_current(
        &self,
        b: &BundleRecord,
    ) -> Result<Option<(Digest, Vec<Tag>)>, crate::upstream::UpstreamError> {
        let mut answers = Vec::new();
        for tag in &b.tags {
            let digest = self
                .upstream
                .manifest(&b.repository, tag)
                .await?
                .map(|m| m.digest.as_str().to_owned());
            answers.push((tag.clone(), digest));
        }
        let Some(tags) = current_tags(&b.manifest_digest, &answers) else {
            return Ok(None);
        };
        let tags: Vec<Tag> = tags.iter().filter_map(|t| t.parse().ok()).collect();
        let Some(manifest) = self
            .upstream
            .manifest(&b.repository, &b.manifest_digest)
            .await?
        else {
            return Ok(None);
        };
        let config = serde_json::from_slice::<serde_json::Value>(&manifest.bytes)
            .ok()
            .and_then(|v| v["config"]["digest"].as_str()?.parse().ok());
        Ok(config.map(|c| (c, tags)))
    }
}

/// Why a retry of an engine load did not take; its text is the engine outcome the journal
/// records.
#[derive(Debug, thiserror::Error)]
enum OfferFailed {
    /// The local registry could not say whether the image is still current.
    #[error("failed: cannot read the registry: {0}")]
    Registry(crate::upstream::UpstreamError),
    /// The engine refused the image again.
    #[error("failed (retrying): {0}; {advice}", advice = .0.advice())]
    Engine(crate::sink::SinkError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failed_or_missing_loads_are_retried() {
        assert!(needs_load(None));
        assert!(needs_load(Some("failed: cannot connect")));
        assert!(!needs_load(Some("loaded as sha256:c under a:b")));
        assert!(!needs_load(Some("superseded: …")));
    }

    #[test]
    fn a_bundle_keeps_the_tags_that_still_name_it() {
        let answers = |pairs: &[(&str, Option<&str>)]| -> Vec<(String, Option<String>)> {
            pairs
                .iter()
                .map(|(t, d)| (t.to_string(), d.map(str::to_owned)))
                .collect()
        };
        let a = answers(&[("v2", Some("sha256:a")), ("latest", Some("sha256:b"))]);
        assert_eq!(current_tags("sha256:a", &a), Some(vec!["v2"]));
        let moved = answers(&[("latest", Some("sha256:b")), ("gone", None)]);
        assert_eq!(current_tags("sha256:a", &moved), None);
        assert_eq!(current_tags("sha256:a", &[]), Some(vec![]));
    }

    #[test]
    fn retries_back_off_per_bundle_up_to_an_hour() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        let base = Duration::from_secs(60);
        assert!(b.due("x", t0));
        b.failed("x", base, t0);
        assert!(!b.due("x", t0 + Duration::from_secs(59)));
        assert!(b.due("x", t0 + Duration::from_secs(60)));
        assert!(b.due("y", t0), "other bundles are not held back");
        b.failed("x", base, t0);
        assert!(!b.due("x", t0 + Duration::from_secs(119)));
        for _ in 0..40 {
            b.failed("x", base, t0);
        }
        assert!(b.due("x", t0 + MAX_BACKOFF));
        b.done("x");
        assert!(b.due("x", t0));
    }
}
