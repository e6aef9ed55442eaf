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

/// Checks `T`'s manifest against its types: the input fields, entity key, event time
/// and event id `#[derive(Event)]` reads from `T::Event`, and the features
/// `#[derive(Features)]` reads from `T::Row` (names, types, nullability, defaults, in
/// order). A manifest written by hand that drifted from the structs fails here, in
/// `cargo test`, instead of at load or at the first event. Descriptions may differ.
pub fn check_derived<T>() -> Result<(), String>
where
    T: Transform,
    for<'a> T::Event<'a>: crate::schema::EventSchema,
    T::Row: crate::schema::FeatureSchema,
{
    let written = T::manifest();
    let derived = crate::schema::manifest::<T>(&written.name, &written.version).build();
    let mut problems = Vec::new();
    let shape = |f: &crate::Field| (f.name.clone(), f.ty, f.nullable);
    let written_input: Vec<_> = written.input.iter().map(shape).collect();
    let derived_input: Vec<_> = derived.input.iter().map(shape).collect();
    if written_input != derived_input {
        problems.push(format!(
            "input fields: the manifest has {written_input:?}, the event struct {derived_input:?}"
        ));
    }
    for (what, a, b) in [
        ("entity key", &written.entity_key, &derived.entity_key),
        ("event time", &written.event_time, &derived.event_time),
    ] {
        if a != b {
            problems.push(format!(
                "{what}: the manifest says `{a}`, the event struct `{b}`"
            ));
        }
    }
    if written.event_id != derived.event_id {
        problems.push(format!(
            "event id: the manifest says {:?}, the event struct {:?}",
            written.event_id, derived.event_id
        ));
    }
    // Defaults compare by their printed form: a NaN default equals itself.
    let feature = |f: &crate::Feature| (f.name.clone(), f.ty, format!("{:?}", f.default_value));
    let written_features: Vec<_> = written.features.iter().map(feature).collect();
    let derived_features: Vec<_> = derived.features.iter().map(feature).collect();
    if written_features != derived_features {
        problems.push(format!(
            "features: the manifest has {written_features:?}, the row struct {derived_features:?}"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}@{}: {}",
            written.name,
            written.version,
            problems.join("; ")
        ))
    }
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
