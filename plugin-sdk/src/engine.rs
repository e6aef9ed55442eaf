//! The guest-side driver: decodes a batch, runs the transform, encodes the result.
//!
//! This is plain Rust, compiled into every component and callable natively, so a
//! benchmark can run the exact code path a component runs, minus the Wasm boundary.

use crate::de::{FieldMap, RowDeserializer};
use crate::ser::RowSerializer;
use crate::{Error, Timestamp, Transform, state};
use lockstep_abi::{
    ApplyRequestView, ApplyResponseWriter, Feature, Kind, Manifest, ReadRequestView,
    ReadResponseWriter, ValueType,
};

use serde::{Deserialize, Serialize};
use std::marker::PhantomData;

/// A failed call: the message and, when tied to one, the index of the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// Index of the request event being processed.
    pub event_index: Option<u32>,
    /// What went wrong, naming the field or feature where known.
    pub message: String,
}

impl CallError {
    fn general(message: impl Into<String>) -> Self {
        CallError {
            event_index: None,
            message: message.into(),
        }
    }

    fn at(event: usize, message: impl Into<String>) -> Self {
        CallError {
            event_index: Some(event as u32),
            message: message.into(),
        }
    }
}

enum Sink<'w, R> {
    Columns {
        writer: &'w mut ApplyResponseWriter,
        features: &'w [Feature],
        names_checked: &'w mut bool,
    },
    Collect(&'w mut Vec<(Timestamp, R)>),
}

impl<R> Sink<'_, R> {
    /// The same sink, borrowed for one more `Emit`.
    fn reborrow(&mut self) -> Sink<'_, R> {
        match self {
            Sink::Columns {
                writer,
                features,
                names_checked,
            } => Sink::Columns {
                writer,
                features,
                names_checked,
            },
            Sink::Collect(rows) => Sink::Collect(rows),
        }
    }
}

/// An entity's pending wake-ups (see [`lockstep_abi::timers`]): ascending, on the
/// manifest's grid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wakeups {
    /// The wake-up times, µs, strictly ascending.
    pub pending: Vec<i64>,
    /// The grid they are rounded up to, µs.
    pub resolution: u64,
}

impl Wakeups {
    /// No wake-up pending, on a grid of `resolution` µs.
    pub fn new(resolution: u64) -> Self {
        Wakeups {
            pending: Vec::new(),
            resolution,
        }
    }

    fn insert(&mut self, at: i64) {
        if let Err(i) = self.pending.binary_search(&at) {
            self.pending.insert(i, at);
        }
    }

    /// Takes the earliest wake-up if `due` says it is due.
    fn take_due(&mut self, due: impl Fn(i64) -> bool) -> Option<i64> {
        let first = *self.pending.first()?;
        if !due(first) {
            return None;
        }
        self.pending.remove(0);
        Some(first)
    }
}

/// Where a transform puts the rows it emits for the event (or wake-up) being applied,
/// and asks for wake-ups.
pub struct Emit<'w, R> {
    sink: Sink<'w, R>,
    event_time: Timestamp,
    source_event: u32,
    wakeups: Option<&'w mut Wakeups>,
    _row: PhantomData<R>,
}

impl<'w, R: Serialize> Emit<'w, R> {
    /// Emits a row stamped with the current event's time.
    #[inline]
    pub fn emit(&mut self, row: R) -> Result<(), Error> {
        self.emit_at(self.event_time, row)
    }

    /// Emits a row stamped with another time (e.g. the end of a window).
    pub fn emit_at(&mut self, time: Timestamp, row: R) -> Result<(), Error> {
        match &mut self.sink {
            Sink::Columns {
                writer,
                features,
                names_checked,
            } => {
                let ser = RowSerializer {
                    columns: writer.features_mut(),
                    features,
                    check_names: !**names_checked,
                };
                row.serialize(ser).map_err(|e| Error::new(e.0))?;
                **names_checked = true;
                writer.end_row(time.0, self.source_event);
            }
            Sink::Collect(rows) => rows.push((time, row)),
        }
        Ok(())
    }

    /// The time of the event (or wake-up) being applied.
    pub fn event_time(&self) -> Timestamp {
        self.event_time
    }

    /// Asks to be woken for this entity at `at` (rounded up to the manifest's timer
    /// resolution), after every event at or before it: [`Transform::wake`] then runs
    /// with the instant, in every host alike. Two requests for one instant are one
    /// wake-up. `at` must be after the current instant, and the manifest must declare
    /// timers (`ManifestBuilder::timers`).
    pub fn wake_at(&mut self, at: Timestamp) -> Result<(), Error> {
        let now = self.event_time;
        let Some(wakeups) = self.wakeups.as_deref_mut() else {
            return Err(Error::new(
                "wake_at needs timers: declare them in the manifest (`.timers(resolution)`)",
            ));
        };
        let t = lockstep_abi::timers::round_up(at.0, wakeups.resolution);
        if t <= now.0 {
            return Err(Error::new(format!(
                "a wake-up must be after the current instant {}, not at {}",
                now.0, at.0
            )));
        }
        wakeups.insert(t);
        Ok(())
    }
}

/// The parts of a manifest the driver needs, checked.
#[derive(Debug, Clone)]
struct Contract {
    manifest: Manifest,
    input_types: Vec<ValueType>,
    feature_types: Vec<ValueType>,
    time_column: usize,
}

impl Contract {
    fn of<T: Transform>() -> Result<Self, CallError> {
        let manifest = T::manifest();
        manifest
            .validate()
            .map_err(|e| CallError::general(e.to_string()))?;
        let time_column = manifest
            .input_index(&manifest.event_time)
            .ok_or_else(|| CallError::general("event time is not an input field"))?;
        Ok(Contract {
            input_types: manifest.input.iter().map(|f| f.ty).collect(),
            feature_types: manifest.features.iter().map(|f| f.ty).collect(),
            time_column,
            manifest,
        })
    }
}

/// Runs encoded requests through a transform, with its manifest validated once.
///
/// A component holds one `Driver` for its lifetime; a native benchmark should hold one
/// too, so both sides pay the same per-call cost.
#[derive(Debug, Clone)]
pub struct Driver<T> {
    contract: Contract,
    _transform: PhantomData<fn() -> T>,
}

impl<T: Transform> Driver<T> {
    /// Reads and validates `T`'s manifest.
    pub fn new() -> Result<Self, CallError> {
        Ok(Driver {
            contract: Contract::of::<T>()?,
            _transform: PhantomData,
        })
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.contract.manifest
    }

    /// Runs an encoded apply request and returns the encoded response.
    pub fn apply(&self, request: &[u8]) -> Result<Vec<u8>, CallError> {
        apply_with::<T>(&self.contract, request)
    }

    /// Runs an encoded read request and returns the encoded response.
    pub fn read(&self, request: &[u8]) -> Result<Vec<u8>, CallError> {
        read_with::<T>(&self.contract, request)
    }
}

/// Runs an encoded apply request through `T` (validating its manifest first; hold a
/// [`Driver`] to do that once).
pub fn apply<T: Transform>(request: &[u8]) -> Result<Vec<u8>, CallError> {
    Driver::<T>::new()?.apply(request)
}

/// Runs an encoded read request through `T::read`; see [`apply`].
pub fn read<T: Transform>(request: &[u8]) -> Result<Vec<u8>, CallError> {
    Driver::<T>::new()?.read(request)
}

/// Decodes a keyed state: its wake-ups (timer plugins) and the transform's state.
fn decode_state<T: Transform>(
    m: &Manifest,
    bytes: Option<&[u8]>,
) -> Result<(T::State, Option<Wakeups>), Error> {
    let Some(resolution) = m.timer_resolution else {
        let state = match bytes {
            Some(bytes) => state::decode(bytes, m.state_version)?,
            None => T::State::default(),
        };
        return Ok((state, None));
    };
    let mut wakeups = Wakeups::new(resolution);
    let state = match bytes {
        Some(bytes) => {
            let (pending, body) = state::split_timers(bytes, m.state_version)?;
            wakeups.pending = pending;
            state::decode_body(body)?
        }
        None => T::State::default(),
    };
    Ok((state, Some(wakeups)))
}

/// Takes every wake-up `due` says is due, in time order: each runs
/// [`Transform::wake`] with rows stamped at its instant.
fn fire<T: Transform>(
    state: &mut T::State,
    wakeups: &mut Option<Wakeups>,
    due: impl Fn(i64) -> bool,
    sink: &mut Sink<'_, T::Row>,
) -> Result<(), Error> {
    let Some(w) = wakeups else { return Ok(()) };
    while let Some(at) = w.take_due(&due) {
        let mut out = Emit {
            sink: sink.reborrow(),
            event_time: Timestamp(at),
            source_event: lockstep_abi::timers::WAKE_ROW,
            wakeups: Some(&mut *w),
            _row: PhantomData,
        };
        T::wake(state, Timestamp(at), &mut out)?;
    }
    Ok(())
}

/// Natively (tests): applies `event` at `time`, after the wake-ups due before it when
/// `wake_first`, collecting rows.
pub(crate) fn apply_collecting<'e, T: Transform>(
    state: &mut T::State,
    wakeups: &mut Option<Wakeups>,
    time: Timestamp,
    event: T::Event<'e>,
    rows: &mut Vec<(Timestamp, T::Row)>,
    wake_first: bool,
) -> Result<(), Error> {
    let mut sink = Sink::Collect(rows);
    if wake_first {
        fire::<T>(state, wakeups, |t| t < time.0, &mut sink)?;
    }
    let mut out = Emit {
        sink,
        event_time: time,
        source_event: 0,
        wakeups: wakeups.as_mut(),
        _row: PhantomData,
    };
    T::apply(state, event, &mut out)
}

/// Natively (tests): takes the wake-ups at or before `until`, collecting rows.
pub(crate) fn advance_collecting<T: Transform>(
    state: &mut T::State,
    wakeups: &mut Option<Wakeups>,
    until: Timestamp,
    rows: &mut Vec<(Timestamp, T::Row)>,
) -> Result<(), Error> {
    fire::<T>(state, wakeups, |t| t <= until.0, &mut Sink::Collect(rows))
}

fn apply_with<T: Transform>(contract: &Contract, request: &[u8]) -> Result<Vec<u8>, CallError> {
    let m = &contract.manifest;
    let batch = ApplyRequestView::parse(request, &contract.input_types)
        .map_err(|e| CallError::general(format!("malformed apply request: {e}")))?;
    let times = batch.columns[contract.time_column];
    // Most transforms emit about one row per event; sizing for that avoids regrowth.
    let mut writer = ApplyResponseWriter::with_capacity(
        &contract.feature_types,
        batch.n_entities(),
        batch.n_events(),
    );
    let mut fields = FieldMap::default();
    let mut names_checked = false;
    let mut event = 0usize;
    for entity in 0..batch.n_entities() {
        let (mut state, mut wakeups) = match m.kind {
            Kind::KeyedStateful => decode_state::<T>(m, batch.state(entity))
                .map_err(|e| CallError::at(event, e.message))?,
            Kind::Stateless => (T::State::default(), None),
        };
        let mut sink = Sink::Columns {
            writer: &mut writer,
            features: &m.features,
            names_checked: &mut names_checked,
        };
        for _ in 0..batch.event_count(entity) {
            let time = times.i64(event);
            // The rule: a wake-up before this event's time comes first.
            fire::<T>(&mut state, &mut wakeups, |t| t < time, &mut sink)
                .map_err(|e| CallError::at(event, format!("waking before this event: {e}")))?;
            let decoded = T::Event::deserialize(RowDeserializer {
                columns: &batch.columns,
                schema: &m.input,
                map: &mut fields,
                row: event,
            })
            .map_err(|e| CallError::at(event, format!("cannot decode event: {e}")))?;
            let mut out = Emit {
                sink: sink.reborrow(),
                event_time: Timestamp(time),
                source_event: event as u32,
                wakeups: wakeups.as_mut(),
                _row: PhantomData,
            };
            T::apply(&mut state, decoded, &mut out).map_err(|e| CallError::at(event, e.message))?;
            event += 1;
        }
        if let Some(until) = batch.fire_until(entity) {
            fire::<T>(&mut state, &mut wakeups, |t| t <= until, &mut sink)
                .map_err(|e| CallError::general(format!("waking an entity: {e}")))?;
        }
        match (m.kind, &wakeups) {
            (Kind::KeyedStateful, Some(w)) => writer
                .end_entity_with_state(|out| {
                    lockstep_abi::timers::write_state_header(out, m.state_version, &w.pending);
                    state::encode_body_into(&state, out)
                })
                .map_err(|e| CallError::general(e.message))?,
            (Kind::KeyedStateful, None) => writer
                .end_entity_with_state(|out| state::encode_into(&state, m.state_version, out))
                .map_err(|e| CallError::general(e.message))?,
            (Kind::Stateless, _) => writer.end_entity(None),
        }
    }
    Ok(writer.finish())
}

fn read_with<T: Transform>(contract: &Contract, request: &[u8]) -> Result<Vec<u8>, CallError> {
    let m = &contract.manifest;
    if !m.supports_read {
        return Err(CallError::general(format!(
            "plugin `{}` does not support read",
            m.name
        )));
    }
    let queries = ReadRequestView::parse(request)
        .map_err(|e| CallError::general(format!("malformed read request: {e}")))?;
    let mut writer = ReadResponseWriter::new(&contract.feature_types);
    for i in 0..queries.len() {
        let (state, _) =
            decode_state::<T>(m, queries.state(i)).map_err(|e| CallError::at(i, e.message))?;
        match T::read(&state, Timestamp(queries.as_of.i64(i))) {
            Some(row) => row
                .serialize(RowSerializer {
                    columns: writer.features_mut(),
                    features: &m.features,
                    check_names: i == 0,
                })
                .map_err(|e| CallError::at(i, e.0))?,
            None => writer.features_mut().iter_mut().for_each(|c| c.push_null()),
        }
    }
    Ok(writer.finish(queries.len()))
}
