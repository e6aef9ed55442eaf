//! Helpers for testing a transform natively, without building a component.

use crate::{Emit, Error, Timestamp, Transform};
use lockstep_abi::ManifestError;

/// Applies `events` in order to `state`, returning the rows emitted with their times.
///
/// This calls [`Transform::apply`] directly: it checks the transform's logic. To check
/// decoding and encoding as well, run an encoded batch through [`crate::engine::apply`].
pub fn run<'a, T: Transform>(
    state: &mut T::State,
    events: impl IntoIterator<Item = T::Event<'a>>,
) -> Result<Vec<(Timestamp, T::Row)>, Error>
where
    T::Event<'a>: HasEventTime,
{
    let mut rows = Vec::new();
    for event in events {
        let time = event.event_time();
        let mut out = Emit::collecting(&mut rows, time);
        T::apply(state, event, &mut out)?;
    }
    Ok(rows)
}

/// Gives the event time of a test event, so [`run`] can stamp rows like a host does.
///
/// Implement it for your event type in tests (usually one line).
pub trait HasEventTime {
    /// The event's time.
    fn event_time(&self) -> Timestamp;
}

/// Validates `T`'s manifest exactly as hosts do at load time.
pub fn check_manifest<T: Transform>() -> Result<(), ManifestError> {
    T::manifest().validate()
}

/// Like [`run`], with each event's time given beside it.
pub fn run_timed<'a, T: Transform>(
    state: &mut T::State,
    events: impl IntoIterator<Item = (Timestamp, T::Event<'a>)>,
) -> Result<Vec<(Timestamp, T::Row)>, Error> {
    let mut rows = Vec::new();
    for (time, event) in events {
        let mut out = Emit::collecting(&mut rows, time);
        T::apply(state, event, &mut out)?;
    }
    Ok(rows)
}
