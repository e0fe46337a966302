//! Human-readable renderings of statements and times.
//!
//! A signer must see what they sign before the signature exists; these are the words they see.
//! Pure functions of their input, so the CLI, the device's receipts and tests render alike.

use std::time::{Duration, UNIX_EPOCH};

use crate::statement::Statement;

/// Last second humantime can render (9999-12-31T23:59:59Z).
const MAX_RFC3339_SECS: u64 = 253_402_300_799;

/// Unix seconds as RFC 3339 UTC (`2026-09-21T12:26:40Z`). Times past the year 9999, which only a
/// hostile or broken statement holds, are shown as raw seconds rather than failing.
pub fn rfc3339(unix_secs: u64) -> String {
    if unix_secs > MAX_RFC3339_SECS {
        return format!("{unix_secs} s after the Unix epoch");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

/// A short, multi-line account of what signing `statement` vouches for. `statement_bytes` are
/// its canonical bytes (their digest identifies the bundle).
pub fn statement_summary(statement: &Statement, statement_bytes: &[u8]) -> String {
    let t = &statement.target;
    let tags: Vec<&str> = t.tags.iter().map(|t| t.as_str()).collect();
    let platform = if t.platform.variant.is_empty() {
        format!("{}/{}", t.platform.os, t.platform.architecture)
    } else {
        format!(
            "{}/{}/{}",
            t.platform.os, t.platform.architecture, t.platform.variant
        )
    };
    let lines = [
        (
            "statement",
            crate::names::Digest::of_bytes(statement_bytes).to_string(),
        ),
        ("repository", t.repository.to_string()),
        ("tags", tags.join(", ")),
        ("platform", platform),
        ("config (image ID)", t.config_digest.to_string()),
        (
            "manifest",
            if t.source.manifest_digest.as_ref() == Some(&t.manifest_digest) {
                format!("{} (the source's own)", t.manifest_digest)
            } else {
                format!(
                    "{} (sideload's; layers stored uncompressed)",
                    t.manifest_digest
                )
            },
        ),
        ("source", t.source.reference.clone()),
        ("sequence", statement.sequence.to_string()),
        (
            "allow_downgrade",
            if statement.allow_downgrade {
                "YES: may replace a newer image on the device".to_owned()
            } else {
                "no".to_owned()
            },
        ),
        ("created", rfc3339(statement.created_at)),
        ("expires", rfc3339(statement.expires_at)),
        (
            "payload",
            format!(
                "{} bytes, {}",
                statement.payload.size, statement.payload.sha256
            ),
        ),
        ("ordered_by", statement.ordered_by.clone()),
        ("contact", statement.contact.clone()),
    ];
    let mut out = String::new();
    for (label, value) in lines {
        out.push_str(&format!("  {label:<18} {value}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
        assert_eq!(rfc3339(MAX_RFC3339_SECS), "9999-12-31T23:59:59Z");
        assert_eq!(
            rfc3339(u64::MAX),
            format!("{} s after the Unix epoch", u64::MAX)
        );
    }

    #[test]
    fn summary_names_what_is_signed() {
        let s = crate::statement::tests::sample();
        let text = statement_summary(&s, &s.to_canonical_json());
        for needle in [
            "edge/app",
            "v2",
            s.target.config_digest.as_str(),
            s.target.manifest_digest.as_str(),
            "sequence           7",
            "allow_downgrade    no",
            "2027-01-15T08:00:00Z",
            "100 bytes",
            s.payload.sha256.as_str(),
            "ticket OPS-1",
            "ops@example.com",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in\n{text}");
        }
    }
}
