//! What an answer of the device means for a client: every status and body mapped to one
//! action. Pure, so every answer is tested without a socket.

use crate::answers::{ErrorBody, Intake, Known, Taken, UploadCreated};
use crate::refusal::Refusal;
use crate::state::BundleState;

/// What an answer from the device means for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `POST`: the device already has this bundle.
    Known {
        /// The bundle id.
        bundle: String,
        /// Its state.
        state: BundleState,
    },
    /// `POST`: an upload to send to.
    Upload {
        /// Its URL path.
        location: String,
        /// Bytes the device holds.
        offset: u64,
    },
    /// The last byte arrived and the device took the bundle (`queued` or `duplicate`).
    Taken {
        /// The bundle id.
        bundle: String,
        /// `queued` or `duplicate`.
        intake: Intake,
    },
    /// Go on from this offset (`204`, `409`, `400 overflow`).
    Offset(u64),
    /// Refused for good: the bundle will not be taken as it is.
    Refused(Refusal),
    /// The upload no longer exists (expired, cancelled): create a new one.
    Gone,
    /// A passing problem (busy, device-side I/O): retry later.
    Retry(String),
    /// A problem retrying does not fix.
    Fatal(Refusal),
}

/// A 2xx body of the upload API: which of its three shapes it is.
fn success(status: u16, body: &[u8]) -> Answer {
    if let Ok(known) = serde_json::from_slice::<Known>(body) {
        return Answer::Known {
            bundle: known.bundle.id,
            state: known.bundle.state,
        };
    }
    if let Ok(taken) = serde_json::from_slice::<Taken>(body) {
        return Answer::Taken {
            bundle: taken.bundle,
            intake: taken.outcome,
        };
    }
    match serde_json::from_slice::<UploadCreated>(body) {
        Ok(created) => Answer::Upload {
            location: created.location,
            offset: created.offset,
        },
        Err(_) => Answer::Fatal(Refusal::new(
            "unexpected_answer",
            &format!(
                "the device answered HTTP {status} with {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
            "check that --to points at a sideload device daemon",
        )),
    }
}

/// Interprets a device answer (`status`, its `Upload-Offset`, its JSON body).
pub fn classify(status: u16, upload_offset: Option<u64>, body: &[u8]) -> Answer {
    if (200..=202).contains(&status) {
        return success(status, body);
    }
    let error = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| Refusal::new("", "", ""));
    let code = error.code;
    let reason = match error.reason {
        r if r.is_empty() => format!("the device answered HTTP {status}"),
        r => r,
    };
    let advice = error.advice;
    let or = |text: String, default: String| if text.is_empty() { default } else { text };
    match status {
        409 if code == "upload_busy" => Answer::Retry(reason),
        204 | 409 => match upload_offset {
            Some(o) => Answer::Offset(o),
            None => Answer::Retry(format!("HTTP {status} without Upload-Offset: {reason}")),
        },
        400 if code == "overflow" => match upload_offset {
            Some(o) => Answer::Offset(o),
            None => Answer::Retry(reason),
        },
        403 => Answer::Refused(Refusal::new(
            &or(code, "forbidden".into()),
            &reason,
            &advice,
        )),
        404 => Answer::Gone,
        401 => Answer::Fatal(Refusal::new(
            "unauthorized",
            &reason,
            "pass the device's upload token with --token-file (or SIDELOAD_DEVICE_TOKEN)",
        )),
        s if crate::refusal::is_passing(s) => Answer::Retry(reason),
        _ => Answer::Fatal(Refusal::new(
            &or(code, format!("http_{status}")),
            &reason,
            &or(advice, "check --to and the device's logs".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_what_the_client_does() {
        let created = br#"{"location":"/sideload/v1/uploads/ab","offset":0,"upload":"ab"}"#;
        assert_eq!(
            classify(201, Some(0), created),
            Answer::Upload {
                location: "/sideload/v1/uploads/ab".into(),
                offset: 0
            }
        );
        let known = br#"{"outcome":"known","bundle":{"id":"sha256:1","state":"applied"}}"#;
        assert_eq!(
            classify(200, None, known),
            Answer::Known {
                bundle: "sha256:1".into(),
                state: BundleState::Applied
            }
        );
        let queued = br#"{"outcome":"queued","bundle":"sha256:1","status":"/x"}"#;
        assert_eq!(
            classify(202, Some(9), queued),
            Answer::Taken {
                bundle: "sha256:1".into(),
                intake: Intake::Queued
            }
        );
        assert_eq!(classify(204, Some(7), b""), Answer::Offset(7));
        let mismatch = br#"{"error":{"code":"offset_mismatch","reason":"r","advice":"a"}}"#;
        assert_eq!(classify(409, Some(5), mismatch), Answer::Offset(5));
        let overflow = br#"{"error":{"code":"overflow","reason":"r","advice":"a"}}"#;
        assert_eq!(classify(400, Some(5), overflow), Answer::Offset(5));
        let refused = br#"{"error":{"code":"unknown_key","reason":"why","advice":"fix"}}"#;
        assert_eq!(
            classify(403, None, refused),
            Answer::Refused(Refusal::new("unknown_key", "why", "fix"))
        );
        assert_eq!(classify(404, None, b""), Answer::Gone);
        assert!(matches!(classify(429, None, b""), Answer::Retry(_)));
        assert!(matches!(classify(503, None, b"{}"), Answer::Retry(_)));
        assert!(matches!(classify(401, None, b""), Answer::Fatal(r) if r.code == "unauthorized"));
        let full = br#"{"error":{"code":"insufficient_storage","reason":"full","advice":"free"}}"#;
        assert!(
            matches!(classify(507, None, full), Answer::Fatal(r) if r.code == "insufficient_storage")
        );
        assert!(
            matches!(classify(200, None, b"<html>"), Answer::Fatal(r) if r.code == "unexpected_answer")
        );
        let strange = br#"{"outcome":"known","bundle":{"id":"sha256:1","state":"exploded"}}"#;
        assert!(
            matches!(classify(200, None, strange), Answer::Fatal(r) if r.code == "unexpected_answer"),
            "an unknown state is not read as some other"
        );
    }
}
