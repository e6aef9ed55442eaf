//! The four payloads: apply request/response and read request/response.

use crate::column::{Reader, TAG_BINARY, TAG_STRING, TAG_TIMESTAMP, Writer, read_u32, tag_of};
use crate::{AbiError, ColumnBuilder, ColumnView, ValueType};

const APPLY_REQUEST: &[u8; 4] = b"LSA2";
const APPLY_RESPONSE: &[u8; 4] = b"LSR2";
const READ_REQUEST: &[u8; 4] = b"LSQ1";
const READ_RESPONSE: &[u8; 4] = b"LSP1";

/// Packs optional byte strings (states) into a binary column.
fn write_states<'s>(w: &mut Writer, states: impl ExactSizeIterator<Item = Option<&'s [u8]>>) {
    let n = states.len();
    let mut offsets = Vec::with_capacity(n + 1);
    let mut data = Vec::new();
    let mut validity = vec![0u8; n.div_ceil(8)];
    offsets.push(0u32);
    for (i, s) in states.enumerate() {
        if let Some(s) = s {
            data.extend_from_slice(s);
            validity[i >> 3] |= 1 << (i & 7);
        }
        offsets.push(data.len() as u32);
    }
    w.var(TAG_BINARY, &offsets, &data, Some(&validity));
}

fn to_usize(n: u32) -> usize {
    n as usize
}

/// Builds an apply request on the host side.
///
/// Entities are written first (event counts and prior states), then exactly
/// `n_columns` input columns of `n_events` values each, in manifest order.
pub struct ApplyRequest {
    w: Writer,
    n_events: usize,
    n_columns: usize,
    written: usize,
}

impl ApplyRequest {
    /// Starts a request for entities with these event counts and prior states
    /// (`None` = the entity has no state yet), waking none.
    pub fn new(
        event_counts: &[u32],
        states: &[Option<&[u8]>],
        n_columns: usize,
    ) -> Result<Self, AbiError> {
        Self::with_fire_until(event_counts, states, &[], n_columns)
    }

    /// Starts a request whose entities, after their events, take their wake-ups at or
    /// before `fire_until` (one per entity, or none at all: nobody is woken; see
    /// [`crate::timers`]). An entity may have no events, only to be woken.
    pub fn with_fire_until(
        event_counts: &[u32],
        states: &[Option<&[u8]>],
        fire_until: &[Option<i64>],
        n_columns: usize,
    ) -> Result<Self, AbiError> {
        if event_counts.len() != states.len() {
            return Err(AbiError::Inconsistent("one state per entity"));
        }
        if !fire_until.is_empty() && fire_until.len() != states.len() {
            return Err(AbiError::Inconsistent("one wake-up bound per entity"));
        }
        let n_events: u64 = event_counts.iter().map(|&c| c as u64).sum();
        let n_events =
            u32::try_from(n_events).map_err(|_| AbiError::Inconsistent("more than 2^32 events"))?;
        let state_bytes: usize = states.iter().flatten().map(|s| s.len()).sum();
        let mut w = Writer {
            buf: Vec::with_capacity(16 + event_counts.len() * 18 + state_bytes),
        };
        w.buf.extend_from_slice(APPLY_REQUEST);
        w.u32(event_counts.len() as u32);
        w.u32(n_events);
        w.u32(n_columns as u32);
        for &c in event_counts {
            w.u32(c);
        }
        write_states(&mut w, states.iter().copied());
        let n = event_counts.len();
        let mut until = vec![0i64; n];
        let mut validity = vec![0u8; n.div_ceil(8)];
        for (i, t) in fire_until.iter().enumerate() {
            if let Some(t) = t {
                until[i] = *t;
                validity[i >> 3] |= 1 << (i & 7);
            }
        }
        w.fixed(TAG_TIMESTAMP, &until, Some(&validity));
        Ok(ApplyRequest {
            w,
            n_events: n_events as usize,
            n_columns,
            written: 0,
        })
    }

    fn check(&mut self, len: usize) -> Result<(), AbiError> {
        if len != self.n_events {
            return Err(AbiError::Inconsistent(
                "column length differs from event count",
            ));
        }
        if self.written == self.n_columns {
            return Err(AbiError::Inconsistent("more columns than declared"));
        }
        self.written += 1;
        Ok(())
    }

    /// Appends an int64 (or, with `ty = Timestamp`, timestamp) column.
    pub fn int64_column(
        &mut self,
        ty: ValueType,
        values: &[i64],
        validity: Option<&[u8]>,
    ) -> Result<(), AbiError> {
        self.check(values.len())?;
        let tag = if ty == ValueType::Timestamp {
            TAG_TIMESTAMP
        } else {
            tag_of(ValueType::Int64)
        };
        self.w.fixed(tag, values, validity);
        Ok(())
    }

    /// Appends a float64 column.
    pub fn float64_column(
        &mut self,
        values: &[f64],
        validity: Option<&[u8]>,
    ) -> Result<(), AbiError> {
        self.check(values.len())?;
        self.w.floats(values, validity);
        Ok(())
    }

    /// Appends a boolean column, one byte (0 or 1) per value.
    pub fn boolean_column(
        &mut self,
        values: &[u8],
        validity: Option<&[u8]>,
    ) -> Result<(), AbiError> {
        self.check(values.len())?;
        self.w.bools(values, validity);
        Ok(())
    }

    /// Appends a string column: `offsets` (`n + 1` of them, starting at 0) into `data`.
    pub fn string_column(
        &mut self,
        offsets: &[u32],
        data: &[u8],
        validity: Option<&[u8]>,
    ) -> Result<(), AbiError> {
        self.check(offsets.len().saturating_sub(1))?;
        self.w.var(TAG_STRING, offsets, data, validity);
        Ok(())
    }

    /// Appends a column built value by value.
    pub fn column(&mut self, column: &ColumnBuilder) -> Result<(), AbiError> {
        self.check(column.len())?;
        column.write_to(&mut self.w);
        Ok(())
    }

    /// The finished payload; fails if fewer columns were written than declared.
    pub fn finish(self) -> Result<Vec<u8>, AbiError> {
        if self.written != self.n_columns {
            return Err(AbiError::Inconsistent("fewer columns than declared"));
        }
        Ok(self.w.buf)
    }
}

/// An apply request read in place, as the plugin sees it.
#[derive(Debug)]
pub struct ApplyRequestView<'a> {
    event_counts: &'a [u8],
    n_events: usize,
    /// Prior state per entity (binary column; null = none).
    pub states: ColumnView<'a>,
    /// Per entity, the instant up to which wake-ups are due after its events
    /// (timestamp column; null = none).
    pub fire_until: ColumnView<'a>,
    /// Input columns, in manifest order.
    pub columns: Vec<ColumnView<'a>>,
}

impl<'a> ApplyRequestView<'a> {
    /// Parses a request whose columns must have the given types.
    pub fn parse(buf: &'a [u8], schema: &[ValueType]) -> Result<Self, AbiError> {
        let mut r = Reader::new(buf);
        r.magic(APPLY_REQUEST, "apply request")?;
        let n_entities = to_usize(r.u32("entity count")?);
        let n_events = to_usize(r.u32("event count")?);
        let n_columns = to_usize(r.u32("column count")?);
        if n_columns != schema.len() {
            return Err(AbiError::Inconsistent(
                "column count differs from input schema",
            ));
        }
        let counts_len = n_entities
            .checked_mul(4)
            .ok_or(AbiError::Truncated("entity table"))?;
        let event_counts = r.bytes(counts_len, "entity table")?;
        let total: u64 = (0..n_entities)
            .map(|i| read_u32(event_counts, i) as u64)
            .sum();
        if total != n_events as u64 {
            return Err(AbiError::Inconsistent("entity event counts do not add up"));
        }
        let states = r.column(n_entities, 0, None)?;
        let fire_until = r.column(n_entities, 0, Some(ValueType::Timestamp))?;
        let columns = schema
            .iter()
            .enumerate()
            .map(|(i, &ty)| r.column(n_events, i, Some(ty)))
            .collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(ApplyRequestView {
            event_counts,
            n_events,
            states,
            fire_until,
            columns,
        })
    }

    /// Number of entities.
    pub fn n_entities(&self) -> usize {
        self.event_counts.len() / 4
    }

    /// Number of events over all entities.
    pub fn n_events(&self) -> usize {
        self.n_events
    }

    /// Number of events of entity `i`; its events follow those of entity `i - 1`.
    pub fn event_count(&self, i: usize) -> usize {
        read_u32(self.event_counts, i) as usize
    }

    /// Prior state of entity `i`, if it has one.
    pub fn state(&self, i: usize) -> Option<&'a [u8]> {
        self.states.is_valid(i).then(|| self.states.bytes(i))
    }

    /// The instant up to which entity `i`'s wake-ups are due after its events, if any.
    pub fn fire_until(&self, i: usize) -> Option<i64> {
        self.fire_until.is_valid(i).then(|| self.fire_until.i64(i))
    }
}

/// Builds an apply response inside the plugin.
///
/// For each entity in request order: push that entity's rows (features via
/// [`ApplyResponseWriter::features_mut`], then [`ApplyResponseWriter::end_row`]), then
/// [`ApplyResponseWriter::end_entity`] with its new state.
pub struct ApplyResponseWriter {
    row_counts: Vec<u32>,
    /// Every entity's new state, end to end; `state_ends[i]` is where entity `i`'s ends.
    state_data: Vec<u8>,
    state_ends: Vec<u32>,
    /// Bit `i` set: entity `i` has a state (an entity without one has an empty span).
    state_validity: Vec<u8>,
    event_time: Vec<i64>,
    source_event: Vec<u32>,
    features: Vec<ColumnBuilder>,
    rows_in_entity: u32,
}

impl ApplyResponseWriter {
    /// A writer for features of these types.
    pub fn new(feature_types: &[ValueType]) -> Self {
        Self::with_capacity(feature_types, 0, 0)
    }

    /// A writer sized for about `rows` rows over `entities` entities.
    pub fn with_capacity(feature_types: &[ValueType], entities: usize, rows: usize) -> Self {
        let mut writer = ApplyResponseWriter {
            row_counts: Vec::new(),
            state_data: Vec::new(),
            state_ends: Vec::new(),
            state_validity: Vec::new(),
            event_time: Vec::new(),
            source_event: Vec::new(),
            features: feature_types
                .iter()
                .map(|&t| ColumnBuilder::new(t))
                .collect(),
            rows_in_entity: 0,
        };
        writer.row_counts.reserve(entities);
        writer.state_ends.reserve(entities);
        writer.state_validity.reserve(entities.div_ceil(8));
        writer.event_time.reserve(rows);
        writer.source_event.reserve(rows);
        for f in &mut writer.features {
            f.reserve(rows);
        }
        writer
    }

    /// The feature columns, to push one value each per row.
    pub fn features_mut(&mut self) -> &mut [ColumnBuilder] {
        &mut self.features
    }

    /// Ends a row whose features were pushed: its event time and the index of the
    /// request event that produced it.
    pub fn end_row(&mut self, event_time: i64, source_event: u32) {
        self.event_time.push(event_time);
        self.source_event.push(source_event);
        self.rows_in_entity += 1;
    }

    /// Number of complete rows so far.
    pub fn rows(&self) -> usize {
        self.event_time.len()
    }

    /// Ends the current entity with its new state (`None`: no state to keep).
    pub fn end_entity(&mut self, state: Option<Vec<u8>>) {
        if let Some(bytes) = &state {
            self.state_data.extend_from_slice(bytes);
        }
        self.close_entity(state.is_some());
    }

    /// Ends the current entity with a new state that `encode` appends to the buffer it
    /// is given, written in place: no buffer of its own per entity, no copy. If
    /// `encode` fails, whatever it appended is removed, the entity stays open and
    /// the error is returned.
    pub fn end_entity_with_state<E>(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.state_data.len();
        if let Err(e) = encode(&mut self.state_data) {
            self.state_data.truncate(start);
            return Err(e);
        }
        self.close_entity(true);
        Ok(())
    }

    fn close_entity(&mut self, has_state: bool) {
        let i = self.state_ends.len();
        if i.is_multiple_of(8) {
            self.state_validity.push(0);
        }
        if has_state {
            self.state_validity[i / 8] |= 1 << (i % 8);
        }
        self.state_ends.push(self.state_data.len() as u32);
        self.row_counts.push(self.rows_in_entity);
        self.rows_in_entity = 0;
    }

    /// The finished payload.
    pub fn finish(self) -> Vec<u8> {
        let mut w = Writer {
            buf: Vec::with_capacity(64 + self.event_time.len() * (12 + 9 * self.features.len())),
        };
        w.buf.extend_from_slice(APPLY_RESPONSE);
        w.u32(self.row_counts.len() as u32);
        w.u32(self.event_time.len() as u32);
        w.u32(self.features.len() as u32);
        for &c in &self.row_counts {
            w.u32(c);
        }
        let mut offsets = Vec::with_capacity(self.state_ends.len() + 1);
        offsets.push(0);
        offsets.extend_from_slice(&self.state_ends);
        w.var(
            TAG_BINARY,
            &offsets,
            &self.state_data,
            Some(&self.state_validity),
        );
        w.fixed(TAG_TIMESTAMP, &self.event_time, None);
        for &s in &self.source_event {
            w.u32(s);
        }
        for f in &self.features {
            f.write_to(&mut w);
        }
        w.buf
    }
}

/// An apply response read in place, as the host sees it.
#[derive(Debug)]
pub struct ApplyResponse<'a> {
    row_counts: &'a [u8],
    source_event: &'a [u8],
    /// New state per entity (binary column; null = none).
    pub states: ColumnView<'a>,
    /// Event time of each row.
    pub event_time: ColumnView<'a>,
    /// Feature columns, in manifest order.
    pub features: Vec<ColumnView<'a>>,
}

impl<'a> ApplyResponse<'a> {
    /// Parses a response to a request of `n_entities` entities and `n_events` events,
    /// whose features must have the given types.
    pub fn parse(
        buf: &'a [u8],
        feature_types: &[ValueType],
        n_entities: usize,
        n_events: usize,
    ) -> Result<Self, AbiError> {
        let mut r = Reader::new(buf);
        r.magic(APPLY_RESPONSE, "apply response")?;
        if to_usize(r.u32("entity count")?) != n_entities {
            return Err(AbiError::Inconsistent(
                "response entity count differs from request",
            ));
        }
        let n_rows = to_usize(r.u32("row count")?);
        if to_usize(r.u32("feature count")?) != feature_types.len() {
            return Err(AbiError::Inconsistent(
                "feature count differs from manifest",
            ));
        }
        let row_counts = r.bytes(n_entities * 4, "row table")?;
        let total: u64 = (0..n_entities)
            .map(|i| read_u32(row_counts, i) as u64)
            .sum();
        if total != n_rows as u64 {
            return Err(AbiError::Inconsistent("entity row counts do not add up"));
        }
        let states = r.column(n_entities, 0, None)?;
        let event_time = r.column(n_rows, 0, Some(ValueType::Timestamp))?;
        if event_time.validity().is_some() {
            return Err(AbiError::Inconsistent("row event time must not be null"));
        }
        let source_event = r.bytes(n_rows * 4, "row source events")?;
        if (0..n_rows).any(|i| {
            let e = read_u32(source_event, i);
            e != crate::timers::WAKE_ROW && e as usize >= n_events
        }) {
            return Err(AbiError::Inconsistent("row source event out of range"));
        }
        let features = feature_types
            .iter()
            .enumerate()
            .map(|(i, &ty)| r.column(n_rows, i, Some(ty)))
            .collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(ApplyResponse {
            row_counts,
            source_event,
            states,
            event_time,
            features,
        })
    }

    /// Number of rows over all entities.
    pub fn n_rows(&self) -> usize {
        self.source_event.len() / 4
    }

    /// Number of rows entity `i` emitted; they follow those of entity `i - 1`.
    pub fn row_count(&self, i: usize) -> usize {
        read_u32(self.row_counts, i) as usize
    }

    /// Index of the request event that produced row `i`
    /// ([`crate::timers::WAKE_ROW`] for a wake-up's row).
    pub fn source_event(&self, i: usize) -> usize {
        read_u32(self.source_event, i) as usize
    }

    /// New state of entity `i`, if any.
    pub fn state(&self, i: usize) -> Option<&'a [u8]> {
        self.states.is_valid(i).then(|| self.states.bytes(i))
    }
}

/// Builds a read request on the host side: one state and one instant per query.
pub struct ReadRequest;

impl ReadRequest {
    /// Encodes queries `(state, as_of)`; `states` and `as_of` have equal lengths.
    pub fn encode(states: &[Option<&[u8]>], as_of: &[i64]) -> Result<Vec<u8>, AbiError> {
        if states.len() != as_of.len() {
            return Err(AbiError::Inconsistent("one instant per state"));
        }
        let mut w = Writer { buf: Vec::new() };
        w.buf.extend_from_slice(READ_REQUEST);
        w.u32(states.len() as u32);
        write_states(&mut w, states.iter().copied());
        w.fixed(TAG_TIMESTAMP, as_of, None);
        Ok(w.buf)
    }
}

/// A read request read in place, as the plugin sees it.
#[derive(Debug)]
pub struct ReadRequestView<'a> {
    /// State per query (binary column; null = none).
    pub states: ColumnView<'a>,
    /// Instant per query.
    pub as_of: ColumnView<'a>,
}

impl<'a> ReadRequestView<'a> {
    /// Parses a read request.
    pub fn parse(buf: &'a [u8]) -> Result<Self, AbiError> {
        let mut r = Reader::new(buf);
        r.magic(READ_REQUEST, "read request")?;
        let n = to_usize(r.u32("query count")?);
        let states = r.column(n, 0, None)?;
        let as_of = r.column(n, 1, Some(ValueType::Timestamp))?;
        r.finish()?;
        Ok(ReadRequestView { states, as_of })
    }

    /// Number of queries.
    pub fn len(&self) -> usize {
        self.as_of.len()
    }

    /// Whether there are no queries.
    pub fn is_empty(&self) -> bool {
        self.as_of.is_empty()
    }

    /// State of query `i`, if any.
    pub fn state(&self, i: usize) -> Option<&'a [u8]> {
        self.states.is_valid(i).then(|| self.states.bytes(i))
    }
}

/// Builds a read response inside the plugin: one row of features per query.
pub struct ReadResponseWriter {
    features: Vec<ColumnBuilder>,
}

impl ReadResponseWriter {
    /// A writer for features of these types.
    pub fn new(feature_types: &[ValueType]) -> Self {
        ReadResponseWriter {
            features: feature_types
                .iter()
                .map(|&t| ColumnBuilder::new(t))
                .collect(),
        }
    }

    /// The feature columns, to push one value each per query.
    pub fn features_mut(&mut self) -> &mut [ColumnBuilder] {
        &mut self.features
    }

    /// The finished payload for `n` queries.
    pub fn finish(self, n: usize) -> Vec<u8> {
        let mut w = Writer { buf: Vec::new() };
        w.buf.extend_from_slice(READ_RESPONSE);
        w.u32(n as u32);
        w.u32(self.features.len() as u32);
        for f in &self.features {
            f.write_to(&mut w);
        }
        w.buf
    }
}

/// A read response read in place, as the host sees it.
#[derive(Debug)]
pub struct ReadResponse<'a> {
    /// Feature columns, one value per query, in manifest order.
    pub features: Vec<ColumnView<'a>>,
}

impl<'a> ReadResponse<'a> {
    /// Parses a response to `n` queries for features of the given types.
    pub fn parse(buf: &'a [u8], feature_types: &[ValueType], n: usize) -> Result<Self, AbiError> {
        let mut r = Reader::new(buf);
        r.magic(READ_RESPONSE, "read response")?;
        if to_usize(r.u32("query count")?) != n {
            return Err(AbiError::Inconsistent(
                "response query count differs from request",
            ));
        }
        if to_usize(r.u32("feature count")?) != feature_types.len() {
            return Err(AbiError::Inconsistent(
                "feature count differs from manifest",
            ));
        }
        let features = feature_types
            .iter()
            .enumerate()
            .map(|(i, &ty)| r.column(n, i, Some(ty)))
            .collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(ReadResponse { features })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Column;
    use proptest::prelude::*;

    fn schema() -> Vec<ValueType> {
        vec![
            ValueType::String,
            ValueType::Timestamp,
            ValueType::Float64,
            ValueType::Boolean,
        ]
    }

    fn request() -> Vec<u8> {
        let mut req = ApplyRequest::new(&[2, 1], &[None, Some(b"st")], 4).expect("header");
        req.string_column(&[0, 1, 2, 5], b"aabcd", None)
            .expect("keys");
        req.int64_column(ValueType::Timestamp, &[1, 2, 3], None)
            .expect("time");
        req.float64_column(&[1.5, f64::NAN, -0.0], Some(&[0b101]))
            .expect("x");
        req.boolean_column(&[1, 0, 1], None).expect("b");
        req.finish().expect("finish")
    }

    #[test]
    fn apply_request_round_trips() {
        let buf = request();
        let v = ApplyRequestView::parse(&buf, &schema()).expect("parse");
        assert_eq!(v.n_entities(), 2);
        assert_eq!((v.event_count(0), v.event_count(1)), (2, 1));
        assert_eq!((v.state(0), v.state(1)), (None, Some(&b"st"[..])));
        assert_eq!(v.columns[0].str(2), "bcd");
        assert_eq!(v.columns[1].i64(1), 2);
        assert!(!v.columns[2].is_valid(1));
        assert_eq!(v.columns[2].f64(2).to_bits(), (-0.0f64).to_bits());
        assert!(v.columns[3].bool(0) && !v.columns[3].bool(1));
    }

    #[test]
    fn wake_up_bounds_round_trip_and_an_entity_may_come_without_events() {
        let mut req =
            ApplyRequest::with_fire_until(&[0, 1], &[Some(b"s"), None], &[Some(60), None], 1)
                .expect("header");
        req.int64_column(ValueType::Timestamp, &[5], None)
            .expect("time");
        let buf = req.finish().expect("finish");
        let v = ApplyRequestView::parse(&buf, &[ValueType::Timestamp]).expect("parse");
        assert_eq!((v.event_count(0), v.event_count(1)), (0, 1));
        assert_eq!((v.fire_until(0), v.fire_until(1)), (Some(60), None));
        assert!(
            ApplyRequest::with_fire_until(&[1], &[None], &[None, None], 1).is_err(),
            "one bound per entity"
        );
        // A wake-up's row names no event; any other index must be in range.
        let mut w = ApplyResponseWriter::new(&[ValueType::Int64]);
        w.features_mut()[0].push_i64(1);
        w.end_row(60, crate::timers::WAKE_ROW);
        w.end_entity(None);
        let buf = w.finish();
        let r = ApplyResponse::parse(&buf, &[ValueType::Int64], 1, 0).expect("a wake row");
        assert_eq!(r.source_event(0), crate::timers::WAKE_ROW as usize);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let buf = request();
        for cut in 0..buf.len() {
            assert!(
                ApplyRequestView::parse(&buf[..cut], &schema()).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = buf.clone();
        longer.push(0);
        assert_eq!(
            ApplyRequestView::parse(&longer, &schema()).map(|_| ()),
            Err(AbiError::Trailing(1))
        );
    }

    #[test]
    fn wrong_schema_is_a_type_mismatch() {
        let buf = request();
        let mut s = schema();
        s[2] = ValueType::String;
        let err = ApplyRequestView::parse(&buf, &s).expect_err("mismatch");
        assert!(
            matches!(err, AbiError::TypeMismatch { index: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn bad_utf8_and_split_characters_are_rejected() {
        let mut req = ApplyRequest::new(&[1], &[None], 1).expect("header");
        req.string_column(&[0, 1], "é".as_bytes(), None)
            .expect("col");
        let buf = req.finish().expect("finish");
        let err = ApplyRequestView::parse(&buf, &[ValueType::String]).expect_err("split char");
        assert_eq!(err, AbiError::BadStrings(0));
    }

    #[test]
    fn response_round_trips_and_checks_counts() {
        let types = [ValueType::Int64, ValueType::String];
        let mut w = ApplyResponseWriter::new(&types);
        w.features_mut()[0].push_i64(7);
        w.features_mut()[1].push_str("x");
        w.end_row(10, 0);
        w.end_entity(Some(vec![1, 2]));
        w.end_entity(None);
        let buf = w.finish();
        let r = ApplyResponse::parse(&buf, &types, 2, 3).expect("parse");
        assert_eq!((r.n_rows(), r.row_count(0), r.row_count(1)), (1, 1, 0));
        assert_eq!(r.state(0), Some(&[1u8, 2][..]));
        assert_eq!(r.state(1), None);
        assert_eq!(r.event_time.i64(0), 10);
        assert_eq!(r.features[1].str(0), "x");
        // A response that claims a row came from an event the request did not have.
        assert!(ApplyResponse::parse(&buf, &types, 2, 0).is_err());
        assert!(ApplyResponse::parse(&buf, &types, 3, 3).is_err());
    }

    #[test]
    fn states_written_in_place_keep_their_entities_and_a_failed_one_leaves_nothing() {
        let types = [ValueType::Int64];
        let mut w = ApplyResponseWriter::new(&types);
        // Nine entities, so the validity bitmap spans two bytes.
        for i in 0..9u8 {
            if i == 3 {
                let failed = w.end_entity_with_state(|out| {
                    out.extend_from_slice(b"partial");
                    Err("cannot encode")
                });
                assert_eq!(failed, Err("cannot encode"));
            }
            match i % 3 {
                0 => w.end_entity(None),
                1 => w.end_entity(Some(vec![i; i as usize])),
                _ => w
                    .end_entity_with_state(|out| {
                        out.extend_from_slice(&[i, i]);
                        Ok::<(), ()>(())
                    })
                    .expect("state"),
            }
        }
        let buf = w.finish();
        let r = ApplyResponse::parse(&buf, &types, 9, 0).expect("parse");
        for i in 0..9u8 {
            let expected = match i % 3 {
                0 => None,
                1 => Some(vec![i; i as usize]),
                _ => Some(vec![i, i]),
            };
            assert_eq!(
                r.state(i as usize).map(<[u8]>::to_vec),
                expected,
                "entity {i}"
            );
        }
    }

    #[test]
    fn read_messages_round_trip() {
        let buf = ReadRequest::encode(&[Some(b"s"), None], &[5, 6]).expect("encode");
        let v = ReadRequestView::parse(&buf).expect("parse");
        assert_eq!(
            (v.len(), v.state(0), v.state(1), v.as_of.i64(1)),
            (2, Some(&b"s"[..]), None, 6)
        );
        let mut w = ReadResponseWriter::new(&[ValueType::Float64]);
        w.features_mut()[0].push_f64(1.0);
        w.features_mut()[0].push_null();
        let buf = w.finish(2);
        let r = ReadResponse::parse(&buf, &[ValueType::Float64], 2).expect("parse");
        assert_eq!(
            Column::from_view(&r.features[0]),
            Some(Column::Float64(vec![Some(1.0), None]))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ApplyRequestView::parse(&bytes, &schema());
            let _ = ApplyResponse::parse(&bytes, &schema(), 1, 1);
            let _ = ReadRequestView::parse(&bytes);
            let _ = ReadResponse::parse(&bytes, &schema(), 1);
        }

        #[test]
        fn string_columns_round_trip(values in proptest::collection::vec(proptest::option::of(".{0,8}"), 0..40)) {
            let mut b = ColumnBuilder::new(ValueType::String);
            for v in &values {
                match v { Some(s) => { b.push_str(s); } None => b.push_null() }
            }
            let mut req = ApplyRequest::new(&[values.len() as u32], &[None], 1).expect("header");
            req.column(&b).expect("column");
            let buf = req.finish().expect("finish");
            let v = ApplyRequestView::parse(&buf, &[ValueType::String]).expect("parse");
            prop_assert_eq!(Column::from_view(&v.columns[0]), Some(Column::String(values)));
        }
    }
}
