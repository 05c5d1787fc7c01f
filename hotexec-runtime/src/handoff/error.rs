//! Why a hand-off did not happen, shared by both sides of the channel (`send.rs` for the old
//! generation, `recv.rs` for the new one), so that neither side imports the other.

use std::fmt;

/// Why a hand-off did not happen. The connection is still this generation's.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandoffError {
    /// The channel to the new generation is closed: it exited or was killed before it
    /// acknowledged the connection, or this side finished the hand-off.
    Closed(String),
    /// The new generation refused the connection; its reason.
    Refused(String),
    /// The unread bytes or the state are over the limits ([`MAX_UNREAD`](super::MAX_UNREAD),
    /// [`MAX_STATE`](super::MAX_STATE)).
    TooLarge(String),
    /// The hand-off deadline (half the drain timeout after the new generation reported ready)
    /// passed before the new generation acknowledged it.
    Deadline,
    /// A record on the channel was garbage; nothing was adopted from it.
    Protocol(String),
    /// A connection's record was readable but its fd could not be received (the receiving
    /// generation is at its fd limit); nothing was adopted, and the sender keeps it.
    Unreceivable(String),
    /// The state could not be serialized or deserialized (feature `serde`).
    State(String),
}

impl fmt::Display for HandoffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffError::Closed(why) => write!(f, "hand-off channel closed: {why}"),
            HandoffError::Refused(why) => {
                write!(f, "the new generation refused the connection: {why}")
            }
            HandoffError::TooLarge(why) => write!(f, "cannot hand off {why}"),
            HandoffError::Deadline => write!(
                f,
                "the hand-off deadline passed before the new generation acknowledged the connection"
            ),
            HandoffError::Protocol(why) => write!(f, "hand-off protocol error: {why}"),
            HandoffError::Unreceivable(why) => {
                write!(f, "a handed-off connection could not be received: {why}")
            }
            HandoffError::State(why) => write!(f, "hand-off state: {why}"),
        }
    }
}

impl std::error::Error for HandoffError {}

/// The state of a hand-off as a serde type (JSON, as [`Handoff::send_serde`] sends it).
///
/// [`Handoff::send_serde`]: super::Handoff::send_serde
#[cfg(feature = "serde")]
pub(crate) fn decode_state<T: serde::de::DeserializeOwned>(
    state: &[u8],
) -> Result<T, HandoffError> {
    serde_json::from_slice(state).map_err(|e| {
        HandoffError::State(format!(
            "cannot read the state ({} bytes) as {}: {e}",
            state.len(),
            std::any::type_name::<T>()
        ))
    })
}
