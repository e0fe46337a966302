//! One refusal type for every "no" the device says: a stable code, the reason, what to do, and
//! whether trying again later can help.

use serde::{Deserialize, Serialize};

/// A refusal or error as the API carries it (`error` in every error answer, the USB receipt's
/// reason and advice, the events of refused deliveries).
///
/// On the wire, whether to retry is the HTTP status (403 for the bundle's own fault, 503 for a
/// passing cause, and so on), so [`Refusal::retry`] is not serialized: the daemon picks the
/// status from it ([`Refusal::status`]), a client sets it from the status it got
/// ([`Refusal::with_status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What to do about it.
    #[serde(default)]
    pub advice: String,
    /// The delivery's name, when the refusal is about a bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// Stable code (`unknown_key`, `expired`, `offset_mismatch`, ...).
    #[serde(default)]
    pub code: String,
    /// What is wrong.
    #[serde(default)]
    pub reason: String,
    /// True if the same request may succeed later (busy, a passing device-side problem);
    /// false if the request or the bundle itself is at fault.
    #[serde(skip)]
    pub retry: bool,
}

impl Refusal {
    /// A refusal not tied to a bundle; not to be retried as it is.
    pub fn new(code: &str, reason: &str, advice: &str) -> Refusal {
        Refusal {
            advice: advice.to_owned(),
            bundle: None,
            code: code.to_owned(),
            reason: reason.to_owned(),
            retry: false,
        }
    }

    /// The refusal of delivery `bundle`.
    pub fn of_bundle(mut self, bundle: &str) -> Refusal {
        self.bundle = Some(bundle.to_owned());
        self
    }

    /// Marks it as one a later try may get past.
    pub fn retryable(mut self, retry: bool) -> Refusal {
        self.retry = retry;
        self
    }

    /// The HTTP status the daemon answers a bundle refusal with: 403 when the bundle itself is
    /// bad, 503 when the device could not take it now.
    pub fn status(&self) -> u16 {
        if self.retry {
            503
        } else {
            403
        }
    }

    /// As read from an answer with HTTP `status`: whether to retry follows from it (408, 429,
    /// 5xx other than 507).
    pub fn with_status(mut self, status: u16) -> Refusal {
        self.retry = is_passing(status);
        self
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

impl std::error::Error for Refusal {}

/// Whether an HTTP status means a passing problem: busy, timed out, the device's side
/// failing for now. 507 (insufficient storage) is not: the device needs space first.
pub fn is_passing(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_is_the_documented_one() {
        let r = Refusal::new("unknown_key", "why", "fix").of_bundle("u.bundle");
        assert_eq!(
            crate::answers::body(&crate::answers::ErrorBody { error: r.clone() }),
            b"{\n  \"error\": {\n    \"advice\": \"fix\",\n    \"bundle\": \"u.bundle\",\n    \"code\": \"unknown_key\",\n    \"reason\": \"why\"\n  }\n}\n"
        );
        assert_eq!(r.status(), 403);
        assert_eq!(r.clone().retryable(true).status(), 503);
        let read: crate::answers::ErrorBody =
            serde_json::from_slice(br#"{"error":{"code":"c","reason":"r","advice":"a"}}"#).unwrap();
        assert_eq!(read.error.bundle, None);
        assert!(read.error.clone().with_status(503).retry);
        assert!(!read.error.with_status(507).retry);
    }
}
