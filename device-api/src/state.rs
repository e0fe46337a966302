//! One bundle's state on the device, and what a USB receipt says about it: one vocabulary with
//! strict parsers. An unknown word is an error, never read as some other state: a bundle must
//! not be retried, deleted or reported as failed on a guess.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a bundle is in its life on the device (the journal's state, `state` in
/// `GET /sideload/v1/bundles/ID`, the events' `state` for a bundle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BundleState {
    /// Trusted and whole; waiting for its turn.
    Queued,
    /// Being rebuilt into the registry.
    Applying,
    /// The image is in the registry under its tags.
    Applied,
    /// The apply failed for a cause that passes (a full disk, the registry down; `reason` says
    /// which): the stored bundle is kept and applied again once the cause is gone, unless the
    /// operator deletes it (`DELETE /sideload/v1/admin/bundles/ID`).
    Waiting,
    /// Could not be applied; `reason` says why. Delivering it again retries.
    Failed,
    /// Not trusted or not valid; its bytes were deleted. Delivering a good copy retries.
    Refused,
}

impl BundleState {
    /// Every state, in lifecycle order.
    pub const ALL: [BundleState; 6] = [
        BundleState::Queued,
        BundleState::Applying,
        BundleState::Applied,
        BundleState::Waiting,
        BundleState::Failed,
        BundleState::Refused,
    ];

    /// The name stored and reported.
    pub fn as_str(self) -> &'static str {
        match self {
            BundleState::Queued => "queued",
            BundleState::Applying => "applying",
            BundleState::Applied => "applied",
            BundleState::Waiting => "waiting",
            BundleState::Failed => "failed",
            BundleState::Refused => "refused",
        }
    }

    /// True while the bundle counts as on its way or done: another delivery of it is a
    /// duplicate, not a retry.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            BundleState::Queued
                | BundleState::Applying
                | BundleState::Waiting
                | BundleState::Applied
        )
    }

    /// True while the device keeps the bundle's stored file: it is still to be applied.
    pub fn keeps_file(self) -> bool {
        matches!(
            self,
            BundleState::Queued | BundleState::Applying | BundleState::Waiting
        )
    }

    /// True when the device will do nothing more with the bundle by itself (applied, failed,
    /// refused): a client following it can stop.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            BundleState::Applied | BundleState::Failed | BundleState::Refused
        )
    }
}

/// A state name this build does not know: a damaged row, or an answer from a newer sideload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown bundle state {0:?} (known: queued, applying, applied, waiting, failed, refused)")]
pub struct UnknownState(pub String);

impl std::str::FromStr for BundleState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<BundleState, UnknownState> {
        BundleState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

impl std::fmt::Display for BundleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for BundleState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BundleState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BundleState, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a USB receipt says about one bundle of a stick: the device's [`BundleState`] seen from
/// the stick ([`ReceiptState::from_device`]), plus what only the loader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptState {
    /// Not handed over (not a bundle, unreadable, a dry run); the reason says why.
    Skipped,
    /// Refused, on the stick or by the device.
    Refused,
    /// Handed over; the device has it queued.
    Received,
    /// The device is applying it.
    Applying,
    /// On the device until a passing cause is gone (disk space, the registry).
    Waiting,
    /// Applied on this visit.
    Applied,
    /// The device already held it when the stick came.
    AlreadyApplied,
    /// The apply or the hand-over failed.
    Failed,
}

impl ReceiptState {
    /// Every receipt state.
    pub const ALL: [ReceiptState; 8] = [
        ReceiptState::Skipped,
        ReceiptState::Refused,
        ReceiptState::Received,
        ReceiptState::Applying,
        ReceiptState::Waiting,
        ReceiptState::Applied,
        ReceiptState::AlreadyApplied,
        ReceiptState::Failed,
    ];

    /// The word written into the receipt.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptState::Skipped => "skipped",
            ReceiptState::Refused => "refused",
            ReceiptState::Received => "received",
            ReceiptState::Applying => "applying",
            ReceiptState::Waiting => "waiting",
            ReceiptState::Applied => "applied",
            ReceiptState::AlreadyApplied => "already-applied",
            ReceiptState::Failed => "failed",
        }
    }

    /// The device's state of a handed-over bundle, as a receipt says it (`queued` is
    /// `received`: the stick's side of it).
    pub fn from_device(state: BundleState) -> ReceiptState {
        match state {
            BundleState::Queued => ReceiptState::Received,
            BundleState::Applying => ReceiptState::Applying,
            BundleState::Applied => ReceiptState::Applied,
            BundleState::Waiting => ReceiptState::Waiting,
            BundleState::Failed => ReceiptState::Failed,
            BundleState::Refused => ReceiptState::Refused,
        }
    }

    /// True while the device still works on the bundle (received, applying): the loader waits
    /// for it, and the next visit asks again.
    pub fn is_open(self) -> bool {
        matches!(self, ReceiptState::Received | ReceiptState::Applying)
    }

    /// True when the bundle did not get onto the device (refused, failed, skipped).
    pub fn is_problem(self) -> bool {
        matches!(
            self,
            ReceiptState::Refused | ReceiptState::Failed | ReceiptState::Skipped
        )
    }
}

/// A receipt state this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown receipt state {0:?} (known: skipped, refused, received, applying, waiting, applied, already-applied, failed)")]
pub struct UnknownReceiptState(pub String);

impl std::str::FromStr for ReceiptState {
    type Err = UnknownReceiptState;

    fn from_str(s: &str) -> Result<ReceiptState, UnknownReceiptState> {
        ReceiptState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownReceiptState(s.to_owned()))
    }
}

impl std::fmt::Display for ReceiptState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ReceiptState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReceiptState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ReceiptState, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_unknown_words_are_refused() {
        for s in BundleState::ALL {
            assert_eq!(s.as_str().parse::<BundleState>(), Ok(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<BundleState>(&json).unwrap(), s);
        }
        assert!("Failed".parse::<BundleState>().is_err());
        assert!("".parse::<BundleState>().is_err());
        assert!(serde_json::from_str::<BundleState>(r#""exploded""#).is_err());
        for s in ReceiptState::ALL {
            assert_eq!(s.as_str().parse::<ReceiptState>(), Ok(s));
        }
        assert!("queued".parse::<ReceiptState>().is_err());
    }

    #[test]
    fn receipts_say_the_device_state_from_the_stick() {
        assert_eq!(
            ReceiptState::from_device(BundleState::Queued),
            ReceiptState::Received
        );
        for s in [
            BundleState::Applying,
            BundleState::Applied,
            BundleState::Waiting,
        ] {
            assert_eq!(ReceiptState::from_device(s).as_str(), s.as_str());
        }
        assert!(ReceiptState::from_device(BundleState::Queued).is_open());
        assert!(!ReceiptState::Waiting.is_open());
        assert!(ReceiptState::Skipped.is_problem());
    }
}
