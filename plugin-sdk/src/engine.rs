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

/// Where a transform puts the rows it emits for the event being applied.
pub struct Emit<'w, R> {
    sink: Sink<'w, R>,
    event_time: Timestamp,
    source_event: u32,
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

    /// The time of the event being applied.
    pub fn event_time(&self) -> Timestamp {
        self.event_time
    }

    /// A sink that keeps rows as values (native tests).
    pub(crate) fn collecting(rows: &'w mut Vec<(Timestamp, R)>, event_time: Timestamp) -> Self {
        Emit {
            sink: Sink::Collect(rows),
            event_time,
            source_event: 0,
            _row: PhantomData,
        }
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
        let mut state: T::State = match (m.kind, batch.state(entity)) {
            (Kind::KeyedStateful, Some(bytes)) => state::decode(bytes, m.state_version)
                .map_err(|e| CallError::at(event, e.message))?,
            _ => T::State::default(),
        };
        for _ in 0..batch.event_count(entity) {
            let decoded = T::Event::deserialize(RowDeserializer {
                columns: &batch.columns,
                schema: &m.input,
                map: &mut fields,
                row: event,
            })
            .map_err(|e| CallError::at(event, format!("cannot decode event: {e}")))?;
            let mut out = Emit {
                sink: Sink::Columns {
                    writer: &mut writer,
                    features: &m.features,
                    names_checked: &mut names_checked,
                },
                event_time: Timestamp(times.i64(event)),
                source_event: event as u32,
                _row: PhantomData,
            };
            T::apply(&mut state, decoded, &mut out).map_err(|e| CallError::at(event, e.message))?;
            event += 1;
        }
        match m.kind {
            Kind::KeyedStateful => writer
                .end_entity_with_state(|out| state::encode_into(&state, m.state_version, out))
                .map_err(|e| CallError::general(e.message))?,
            Kind::Stateless => writer.end_entity(None),
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
        let state: T::State = match queries.state(i) {
            Some(bytes) => {
                state::decode(bytes, m.state_version).map_err(|e| CallError::at(i, e.message))?
            }
            None => T::State::default(),
        };
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
