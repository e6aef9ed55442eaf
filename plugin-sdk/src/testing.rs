//! Helpers for testing a transform natively, without building a component.

use crate::engine::{Wakeups, advance_collecting, apply_collecting};
use crate::{Error, Timestamp, Transform};
use lockstep_abi::ManifestError;

/// Applies `events` in order to `state`, returning the rows emitted with their times.
///
/// This calls [`Transform::apply`] directly: it checks the transform's logic. To check
/// decoding and encoding as well, run an encoded batch through [`crate::engine::apply`].
/// A plugin's wake-up requests are accepted and dropped: the rows are the events'
/// only (use [`Entity`] for events and wake-ups as a host interleaves them).
pub fn run<'a, T: Transform>(
    state: &mut T::State,
    events: impl IntoIterator<Item = T::Event<'a>>,
) -> Result<Vec<(Timestamp, T::Row)>, Error>
where
    T::Event<'a>: HasEventTime,
{
    run_timed::<T>(state, events.into_iter().map(|e| (e.event_time(), e)))
}

/// One entity driven natively as every host drives it: events and wake-ups in the
/// order of [`lockstep_abi::timers`] — a wake-up at `t` after every event at or before
/// `t`, before any later one.
pub struct Entity<T: Transform> {
    /// The transform's state.
    pub state: T::State,
    /// Its pending wake-ups (`None` when the manifest declares no timers).
    pub wakeups: Option<Wakeups>,
}

impl<T: Transform> Default for Entity<T> {
    fn default() -> Self {
        Entity {
            state: T::State::default(),
            wakeups: T::manifest().timer_resolution.map(Wakeups::new),
        }
    }
}

impl<T: Transform> Entity<T> {
    /// An entity without state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `event` at `time`, after the wake-ups before `time`; the rows emitted.
    pub fn apply(
        &mut self,
        time: Timestamp,
        event: T::Event<'_>,
    ) -> Result<Vec<(Timestamp, T::Row)>, Error> {
        let mut rows = Vec::new();
        apply_collecting::<T>(
            &mut self.state,
            &mut self.wakeups,
            time,
            event,
            &mut rows,
            true,
        )?;
        Ok(rows)
    }

    /// Takes the wake-ups at or before `until` (no event will come before it); the rows
    /// emitted.
    pub fn advance(&mut self, until: Timestamp) -> Result<Vec<(Timestamp, T::Row)>, Error> {
        let mut rows = Vec::new();
        advance_collecting::<T>(&mut self.state, &mut self.wakeups, until, &mut rows)?;
        Ok(rows)
    }

    /// The earliest pending wake-up.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.wakeups
            .as_ref()
            .and_then(|w| w.pending.first().copied().map(Timestamp))
    }
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
    let mut wakeups = T::manifest().timer_resolution.map(Wakeups::new);
    for (time, event) in events {
        apply_collecting::<T>(state, &mut wakeups, time, event, &mut rows, false)?;
        if let Some(w) = &mut wakeups {
            w.pending.clear();
        }
    }
    Ok(rows)
}
