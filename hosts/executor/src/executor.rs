//! Runs a plugin over a batch of events, carrying per-entity state.

use crate::ExecError;
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_schema::SchemaRef;
use arrow_select::concat::concat_batches;
use arrow_select::take::take;
use lockstep_abi::{ApplyRequest, ApplyResponse, Kind, Manifest, ValueType};
use lockstep_core::convert::{read_column, write_column};
use lockstep_core::key::{EntityKey, KeyHasher, StateMap};
use lockstep_core::order::order_events;
use lockstep_core::schema::{input_schema, row_schema};
use lockstep_runtime::{Plugin, PluginInstance};
use std::collections::HashSet;
use std::sync::Arc;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Events handed in.
    pub events_in: usize,
    /// Events applied (after duplicates were dropped).
    pub events_applied: usize,
    /// Events dropped as duplicates.
    pub duplicates: usize,
    /// Rows emitted.
    pub rows_out: usize,
    /// Plugin calls made.
    pub calls: usize,
    /// Entities touched.
    pub entities: usize,
    /// Events the plugin failed on (skipped; see [`FailedEvent`]).
    pub failed: usize,
    /// Of `rows_out`: rows wake-ups emitted (a plugin with timers), not events.
    pub wake_rows: usize,
}

impl RunStats {
    /// Adds another run's counters to these.
    pub fn add(&mut self, other: &RunStats) {
        self.events_in += other.events_in;
        self.events_applied += other.events_applied;
        self.duplicates += other.duplicates;
        self.rows_out += other.rows_out;
        self.calls += other.calls;
        self.entities += other.entities;
        self.failed += other.failed;
        self.wake_rows += other.wake_rows;
    }
}

/// An event the plugin failed on when applied alone on top of its entity's state:
/// skipped, everything else applied. The engine is deterministic, so every host fails
/// on the same event with the same message and skips it alike (the batch host's
/// rejects, the stream host's dead letters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEvent {
    /// Its row in the batch handed in.
    pub row: usize,
    /// Its entity.
    pub key: EntityKey,
    /// The plugin's error.
    pub message: String,
}

/// Whether `error` is the plugin failing on its input (a panic, an error it returned,
/// a trap, a budget exceeded, a malformed response), which isolating the event that
/// causes it can get past, rather than a fault of the host.
fn is_plugin_failure(error: &ExecError) -> bool {
    use lockstep_runtime::CallError;
    match error {
        ExecError::Protocol { .. } => true,
        ExecError::Call(call) => matches!(
            call,
            CallError::CpuBudget { .. }
                | CallError::MemoryLimit { .. }
                | CallError::Panicked { .. }
                | CallError::Plugin { .. }
                | CallError::Trap { .. }
        ),
        _ => false,
    }
}

/// The rows a run emitted (in [`row_schema`] order) and its counters.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Emitted rows, ordered by entity key, then application order.
    pub rows: RecordBatch,
    /// The entities whose events were applied (each once, in key order): those whose
    /// state the plugin may have changed.
    pub entities: Vec<EntityKey>,
    /// Counters.
    pub stats: RunStats,
    /// Events the plugin failed on, skipped (rows of the batch handed in).
    pub failed: Vec<FailedEvent>,
}

/// An entity's events in a sorted batch, and the instant up to which its wake-ups are
/// due after them.
#[derive(Debug, Clone)]
struct Run {
    key: EntityKey,
    start: usize,
    len: usize,
    fire_until: Option<i64>,
}

/// The part of a [`Run`] one plugin call carries.
#[derive(Debug, Clone, Copy)]
struct Segment<'k> {
    key: &'k EntityKey,
    start: usize,
    len: usize,
    fire_until: Option<i64>,
}

/// A column of entity keys of type `ty` (Utf8 or Int64): the key of every row (rows of
/// a wake-up have no event to take their key from).
fn key_array(ty: &arrow_schema::DataType, keys: &[&EntityKey]) -> Result<ArrayRef, ExecError> {
    use arrow_array::builder::{Int64Builder, StringBuilder};
    use arrow_schema::DataType;
    let wrong = || ExecError::Input("entity key must be string or int64".into());
    match ty {
        DataType::Utf8 => {
            let bytes = keys
                .iter()
                .map(|k| match k {
                    EntityKey::Str(s) => s.len(),
                    EntityKey::Int(_) => 0,
                })
                .sum();
            let mut b = StringBuilder::with_capacity(keys.len(), bytes);
            for k in keys {
                match k {
                    EntityKey::Str(s) => b.append_value(s),
                    EntityKey::Int(_) => return Err(wrong()),
                }
            }
            Ok(Arc::new(b.finish()))
        }
        DataType::Int64 => {
            let mut b = Int64Builder::with_capacity(keys.len());
            for k in keys {
                match k {
                    EntityKey::Int(i) => b.append_value(*i),
                    EntityKey::Str(_) => return Err(wrong()),
                }
            }
            Ok(Arc::new(b.finish()))
        }
        _ => Err(wrong()),
    }
}

/// Drives one plugin instance: orders events, batches them into calls, keeps state.
pub struct Executor {
    instance: PluginInstance,
    manifest: Manifest,
    input_types: Vec<ValueType>,
    feature_types: Vec<ValueType>,
    input_schema: SchemaRef,
    row_schema: SchemaRef,
    max_events_per_call: usize,
    /// Rows wake-ups emitted over this executor's calls.
    wake_rows: usize,
}

impl Executor {
    /// An executor with a fresh instance of `plugin`.
    pub fn new(plugin: &Plugin) -> Result<Self, ExecError> {
        let manifest = plugin.manifest().clone();
        Ok(Executor {
            instance: plugin.instantiate()?,
            input_types: plugin.input_types(),
            feature_types: plugin.feature_types(),
            input_schema: input_schema(&manifest),
            row_schema: row_schema(&manifest),
            manifest,
            max_events_per_call: 16_384,
            wake_rows: 0,
        })
    }

    /// Caps the events per plugin call (default 16384). Larger calls amortise the
    /// boundary better; smaller ones bound the plugin's memory.
    pub fn with_max_events_per_call(mut self, n: usize) -> Self {
        self.max_events_per_call = n.max(1);
        self
    }

    /// The schema of emitted rows.
    pub fn row_schema(&self) -> &SchemaRef {
        &self.row_schema
    }

    /// Applies `events` (in the plugin's input schema) on top of `states`, updating
    /// them, and returns the emitted rows. Wake-ups between an entity's events are
    /// taken (see [`lockstep_abi::timers`]); none after its last event.
    pub fn run(
        &mut self,
        events: &RecordBatch,
        states: &mut StateMap,
    ) -> Result<RunOutput, ExecError> {
        self.run_until(events, states, None, &[])
    }

    /// What the batch host computes from `events` alone: [`run_until`](Self::run_until)
    /// the latest event time among them (the end of the input), so each entity takes
    /// its wake-ups after its last event up to there.
    pub fn run_to_end(
        &mut self,
        events: &RecordBatch,
        states: &mut StateMap,
    ) -> Result<RunOutput, ExecError> {
        let end = lockstep_core::order::latest_event_time(events, &self.manifest)?;
        self.run_until(events, states, end, &[])
    }

    /// Like [`run`](Self::run), and then takes every wake-up at or before `fire_until`
    /// of the entities with events and of those in `woken` (which need no events; keys
    /// without a state are skipped): for a plugin with timers, what is due once no
    /// event at or before `fire_until` can come any more.
    pub fn run_until(
        &mut self,
        events: &RecordBatch,
        states: &mut StateMap,
        fire_until: Option<i64>,
        woken: &[EntityKey],
    ) -> Result<RunOutput, ExecError> {
        let expected = self.input_schema.fields();
        for (i, field) in expected.iter().enumerate() {
            let actual = events
                .schema_ref()
                .fields()
                .get(i)
                .map(|f| f.data_type().clone());
            if actual.as_ref() != Some(field.data_type()) {
                return Err(ExecError::Input(format!(
                    "events column {i} should be `{}` of type {}, found {:?}",
                    field.name(),
                    field.data_type(),
                    actual
                )));
            }
        }
        let ordered = order_events(events, &self.manifest)?;
        let indices = UInt32Array::from(ordered.indices.clone());
        let sorted: Vec<ArrayRef> = events
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<Result<_, _>>()?;
        let key_col = self
            .manifest
            .input_index(&self.manifest.entity_key)
            .ok_or_else(|| ExecError::Input("entity key is not an input field".into()))?;

        let mut stats = RunStats {
            events_in: events.num_rows(),
            events_applied: ordered.indices.len(),
            duplicates: ordered.duplicates,
            entities: ordered.entity_starts.len(),
            ..RunStats::default()
        };
        let mut runs = Vec::with_capacity(ordered.entity_starts.len());
        for (start, end) in ordered.entity_ranges() {
            let key = EntityKey::from_array(sorted[key_col].as_ref(), start)
                .ok_or_else(|| ExecError::Input("entity key must be string or int64".into()))?;
            runs.push(Run {
                key,
                start,
                len: end - start,
                fire_until,
            });
        }
        if fire_until.is_some() && self.manifest.timer_resolution.is_some() && !woken.is_empty() {
            // Entities woken without events, in key order among the others.
            let with_events: std::collections::HashSet<&EntityKey> =
                runs.iter().map(|r| &r.key).collect();
            let mut extra: Vec<EntityKey> = woken
                .iter()
                .filter(|k| !with_events.contains(k) && states.contains_key(*k))
                .cloned()
                .collect();
            extra.sort();
            extra.dedup();
            let end = sorted.first().map_or(0, |c| c.len());
            runs.extend(extra.into_iter().map(|key| Run {
                key,
                start: end,
                len: 0,
                fire_until,
            }));
            runs.sort_by(|a, b| a.key.cmp(&b.key));
            // A call's segments are contiguous in `sorted`: an entity without events
            // sits where its key falls, between its neighbours' events.
            let mut next = 0;
            for run in &mut runs {
                if run.len == 0 {
                    run.start = next;
                }
                next = run.start + run.len;
            }
            stats.entities = runs.len();
        }
        let mut failed = Vec::new();
        let woken_before = self.wake_rows;
        let out = self.apply_runs(&sorted, key_col, &runs, states, &mut stats, &mut failed)?;
        let rows = concat_batches(&self.row_schema, &out)?;
        stats.rows_out = rows.num_rows();
        stats.wake_rows = self.wake_rows - woken_before;
        stats.events_applied -= failed.len();
        Ok(RunOutput {
            rows,
            stats,
            entities: runs.into_iter().map(|r| r.key).collect(),
            failed: failed
                .into_iter()
                .map(|(at, key, message)| FailedEvent {
                    row: ordered.indices[at] as usize,
                    key,
                    message,
                })
                .collect(),
        })
    }

    /// The features of each entity at each read point, computed from `events` (in the
    /// plugin's input schema) alone: for point `(key, at)`, the plugin's
    /// `read(state, at)` over the state its entity's events strictly before `at` (at or
    /// before it when `inclusive`) leave, applied in the contract's order with
    /// duplicates dropped. One row per point, in point order, in the feature columns of
    /// [`row_schema`]; null where the entity has no state then (no events yet). The
    /// labels of a training set, merged into the events as read points: exact at the
    /// label instant whatever the stored rows say.
    ///
    /// Calls are batched across entities: round `r` applies, for every entity with an
    /// `r`-th point, its events up to that point, then reads them all in one call.
    pub fn read_at(
        &mut self,
        events: &RecordBatch,
        points: &[(EntityKey, i64)],
        inclusive: bool,
    ) -> Result<RecordBatch, ExecError> {
        let plugin = self.manifest.name.clone();
        if !self.manifest.supports_read || self.manifest.kind != Kind::KeyedStateful {
            return Err(ExecError::Input(format!(
                "plugin `{plugin}` does not implement `read(state, as_of)`: its features \
                 exist only as the rows it emits"
            )));
        }
        // Order and de-duplicate once, over everything: a round applies a slice.
        let ordered = order_events(events, &self.manifest)?;
        let indices = UInt32Array::from(ordered.indices.clone());
        let sorted: Vec<ArrayRef> = events
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<Result<_, _>>()?;
        let sorted = RecordBatch::try_new(events.schema(), sorted)?;
        let key_col = self
            .manifest
            .input_index(&self.manifest.entity_key)
            .ok_or_else(|| ExecError::Input("entity key is not an input field".into()))?;
        let time_col = self
            .manifest
            .input_index(&self.manifest.event_time)
            .ok_or_else(|| ExecError::Input("event time is not an input field".into()))?;
        let times = sorted
            .column(time_col)
            .as_primitive_opt::<arrow_array::types::TimestampMicrosecondType>()
            .ok_or_else(|| ExecError::Input("event time is not a timestamp column".into()))?
            .values()
            .clone();
        let mut ranges: std::collections::HashMap<EntityKey, (usize, usize)> =
            std::collections::HashMap::with_capacity(ordered.entity_starts.len());
        for (start, end) in ordered.entity_ranges() {
            let key = EntityKey::from_array(sorted.column(key_col).as_ref(), start)
                .ok_or_else(|| ExecError::Input("entity key must be string or int64".into()))?;
            ranges.insert(key, (start, end));
        }
        // Each entity's points in time order (ties in point order).
        let mut by_entity: std::collections::BTreeMap<&EntityKey, Vec<usize>> =
            std::collections::BTreeMap::new();
        for (i, (key, _)) in points.iter().enumerate() {
            by_entity.entry(key).or_default().push(i);
        }
        for list in by_entity.values_mut() {
            list.sort_by_key(|&i| points[i].1);
        }
        let rounds = by_entity.values().map(Vec::len).max().unwrap_or(0);
        let mut cursor: std::collections::HashMap<&EntityKey, usize> =
            ranges.iter().map(|(k, &(start, _))| (k, start)).collect();
        let mut states = StateMap::default();
        // Where each point's features are: (batch, row); batch 0 is one row of nulls.
        let feature_schema = Arc::new(arrow_schema::Schema::new(
            self.row_schema.fields()[self.row_schema.fields().len() - self.feature_types.len()..]
                .to_vec(),
        ));
        let one_null_row = feature_schema
            .fields()
            .iter()
            .map(|f| arrow_array::new_null_array(f.data_type(), 1))
            .collect();
        let mut read_batches = vec![RecordBatch::try_new(feature_schema.clone(), one_null_row)?];
        let mut at_point: Vec<(usize, usize)> = vec![(0, 0); points.len()];
        for round in 0..rounds {
            let mut take_rows: Vec<u32> = Vec::new();
            let mut reading: Vec<(usize, &EntityKey)> = Vec::new();
            for (key, list) in &by_entity {
                let Some(&point) = list.get(round) else {
                    continue;
                };
                let at = points[point].1;
                if let (Some(&(_, end)), Some(from)) = (ranges.get(*key), cursor.get_mut(*key)) {
                    let visible = &times[*from..end];
                    let n = if inclusive {
                        visible.partition_point(|&t| t <= at)
                    } else {
                        visible.partition_point(|&t| t < at)
                    };
                    take_rows.extend((*from..*from + n).map(|i| i as u32));
                    *from += n;
                }
                reading.push((point, key));
            }
            if !take_rows.is_empty() {
                let slice =
                    arrow_select::take::take_record_batch(&sorted, &UInt32Array::from(take_rows))?;
                self.run(&slice, &mut states)?;
            }
            let asked: Vec<(usize, &[u8])> = reading
                .iter()
                .filter_map(|&(point, key)| states.get(key).map(|s| (point, s.as_slice())))
                .collect();
            if asked.is_empty() {
                continue;
            }
            let prior: Vec<Option<&[u8]>> = asked.iter().map(|&(_, s)| Some(s)).collect();
            let as_of: Vec<i64> = asked.iter().map(|&(point, _)| points[point].1).collect();
            let request = lockstep_abi::ReadRequest::encode(&prior, &as_of)
                .map_err(|e| ExecError::Input(e.to_string()))?;
            let response = self.instance.read(&request)?;
            let parsed =
                lockstep_abi::ReadResponse::parse(&response, &self.feature_types, asked.len())
                    .map_err(|e| ExecError::Protocol {
                        plugin: plugin.clone(),
                        message: format!("read response: {e}"),
                    })?;
            let columns = parsed
                .features
                .iter()
                .zip(&self.feature_types)
                .map(|(view, &ty)| read_column(view, ty))
                .collect::<Result<Vec<_>, _>>()?;
            let batch = RecordBatch::try_new(feature_schema.clone(), columns)?;
            let b = read_batches.len();
            for (row, &(point, _)) in asked.iter().enumerate() {
                at_point[point] = (b, row);
            }
            read_batches.push(batch);
        }
        let refs: Vec<&RecordBatch> = read_batches.iter().collect();
        let columns = (0..feature_schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> = refs.iter().map(|b| b.column(c).as_ref()).collect();
                arrow_select::interleave::interleave(&arrays, &at_point)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new_with_options(
            feature_schema,
            columns,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(points.len())),
        )?)
    }

    /// Applies contiguous entity runs of `sorted`, in calls of at most
    /// `max_events_per_call` events (a longer run is split; its state carries over, and
    /// only its last piece takes the wake-ups after it). Events the plugin fails on are
    /// skipped and listed in `failed` as (position in `sorted`, entity, message).
    fn apply_runs(
        &mut self,
        sorted: &[ArrayRef],
        key_col: usize,
        runs: &[Run],
        states: &mut StateMap,
        stats: &mut RunStats,
        failed: &mut Vec<(usize, EntityKey, String)>,
    ) -> Result<Vec<RecordBatch>, ExecError> {
        let mut out = Vec::new();
        let mut call: Vec<Segment<'_>> = Vec::new();
        let mut pending = 0;
        for run in runs {
            let (mut at, end) = (run.start, run.start + run.len);
            loop {
                let take_n = (end - at).min(self.max_events_per_call - pending);
                let last = at + take_n == end;
                call.push(Segment {
                    key: &run.key,
                    start: at,
                    len: take_n,
                    fire_until: if last { run.fire_until } else { None },
                });
                pending += take_n;
                at += take_n;
                if pending == self.max_events_per_call {
                    self.call_isolating(sorted, key_col, &call, states, stats, &mut out, failed)?;
                    call.clear();
                    pending = 0;
                }
                if at >= end {
                    break;
                }
            }
        }
        if !call.is_empty() {
            self.call_isolating(sorted, key_col, &call, states, stats, &mut out, failed)?;
        }
        Ok(out)
    }

    /// One call over `segments`; if the plugin fails, the events it fails on are found
    /// and skipped: each entity is called alone, and the events of an entity that fails
    /// are applied one at a time on top of its state (then its wake-ups after them). A
    /// failed call changes no state, so what is applied, and in which order, is what an
    /// uninterrupted run applies, less the failing events: the same in every host,
    /// however calls were cut.
    #[allow(clippy::too_many_arguments)]
    fn call_isolating(
        &mut self,
        sorted: &[ArrayRef],
        key_col: usize,
        segments: &[Segment<'_>],
        states: &mut StateMap,
        stats: &mut RunStats,
        out: &mut Vec<RecordBatch>,
        failed: &mut Vec<(usize, EntityKey, String)>,
    ) -> Result<(), ExecError> {
        stats.calls += 1;
        match self.call(sorted, key_col, segments, states) {
            Ok(rows) => {
                out.push(rows);
                return Ok(());
            }
            Err(e) if is_plugin_failure(&e) => {}
            Err(e) => return Err(e),
        }
        for segment in segments {
            if segments.len() > 1 {
                stats.calls += 1;
                match self.call(sorted, key_col, std::slice::from_ref(segment), states) {
                    Ok(rows) => {
                        out.push(rows);
                        continue;
                    }
                    Err(e) if is_plugin_failure(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            let key = segment.key;
            for at in segment.start..segment.start + segment.len {
                stats.calls += 1;
                let one = Segment {
                    key,
                    start: at,
                    len: 1,
                    fire_until: None,
                };
                match self.call(sorted, key_col, &[one], states) {
                    Ok(rows) => out.push(rows),
                    Err(e) if is_plugin_failure(&e) => {
                        stats.failed += 1;
                        failed.push((at, key.clone(), e.to_string()));
                    }
                    Err(e) => return Err(e),
                }
            }
            if segment.fire_until.is_some() {
                // The wake-ups after the entity's events, alone: a plugin failing there
                // has no event to skip, and going on would wake it again and again.
                stats.calls += 1;
                let wake = Segment {
                    key,
                    start: segment.start + segment.len,
                    len: 0,
                    fire_until: segment.fire_until,
                };
                match self.call(sorted, key_col, &[wake], states) {
                    Ok(rows) => out.push(rows),
                    Err(e) => {
                        return Err(ExecError::Wake {
                            plugin: self.manifest.name.clone(),
                            key: key.to_string(),
                            message: e.to_string(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts applying events that arrive already in order, batch by batch; see
    /// [`OrderedRun`].
    pub fn ordered<'e>(&'e mut self, states: &'e mut StateMap) -> OrderedRun<'e> {
        OrderedRun {
            executor: self,
            states,
            current: None,
            seen: HashSet::default(),
            stats: RunStats::default(),
            keep_finished: true,
            failed: Vec::new(),
            fire_until: None,
        }
    }

    /// One plugin call over contiguous entity segments of `sorted`.
    fn call(
        &mut self,
        sorted: &[ArrayRef],
        key_col: usize,
        segments: &[Segment<'_>],
        states: &mut StateMap,
    ) -> Result<RecordBatch, ExecError> {
        let plugin = &self.manifest.name;
        let keyed = self.manifest.kind == Kind::KeyedStateful;
        let first = segments.first().map(|s| s.start).unwrap_or(0);
        let total: usize = segments.iter().map(|s| s.len).sum();
        let counts: Vec<u32> = segments.iter().map(|s| s.len as u32).collect();
        let timers = self.manifest.timer_resolution;
        let fire_until: Vec<Option<i64>> = match timers {
            Some(_) => segments.iter().map(|s| s.fire_until).collect(),
            None => Vec::new(),
        };
        let mut prior: Vec<Option<&[u8]>> = Vec::with_capacity(segments.len());
        for Segment { key, .. } in segments {
            let state = if keyed {
                states.get(*key).map(Vec::as_slice)
            } else {
                None
            };
            if let Some(s) = state {
                let version = lockstep_abi::state_version(s);
                if version != Some(self.manifest.state_version) {
                    return Err(ExecError::Input(format!(
                        "state of entity `{key}` has state version {version:?}; plugin `{plugin}` reads version {}",
                        self.manifest.state_version
                    )));
                }
            }
            prior.push(state);
        }
        let mut request = ApplyRequest::with_fire_until(&counts, &prior, &fire_until, sorted.len())
            .map_err(|e| ExecError::Input(e.to_string()))?;
        for (column, &ty) in sorted.iter().zip(&self.input_types) {
            write_column(&mut request, column.slice(first, total).as_ref(), ty)?;
        }
        let request = request
            .finish()
            .map_err(|e| ExecError::Input(e.to_string()))?;
        let response = self.instance.apply(&request)?;
        let protocol = |message: String| ExecError::Protocol {
            plugin: plugin.clone(),
            message,
        };
        let parsed = ApplyResponse::parse(&response, &self.feature_types, segments.len(), total)
            .map_err(|e| protocol(e.to_string()))?;

        if let Some(resolution) = timers {
            // A state whose wake-up list is broken would stall or misfire every host
            // alike: refused before any of the call's states is kept.
            for (i, segment) in segments.iter().enumerate() {
                if let Some(s) = parsed.state(i) {
                    lockstep_abi::timers::check_state(s, resolution)
                        .map_err(|e| protocol(format!("state of entity `{}`: {e}", segment.key)))?;
                }
            }
        }
        self.wake_rows += (0..parsed.n_rows())
            .filter(|&r| parsed.source_event(r) == lockstep_abi::timers::WAKE_ROW as usize)
            .count();
        let mut key_rows = Vec::with_capacity(parsed.n_rows());
        for (i, Segment { key, .. }) in segments.iter().enumerate() {
            if keyed {
                match (parsed.state(i), states.get_mut(*key)) {
                    // Most calls update a state that exists: reuse its key and buffer.
                    (Some(s), Some(held)) => {
                        held.clear();
                        held.extend_from_slice(s);
                    }
                    (Some(s), None) => {
                        states.insert((*key).clone(), s.to_vec());
                    }
                    (None, _) => {
                        states.remove(*key);
                    }
                }
            }
            key_rows.extend(std::iter::repeat_n(*key, parsed.row_count(i)));
        }
        let mut columns = Vec::with_capacity(2 + self.feature_types.len());
        columns.push(key_array(sorted[key_col].data_type(), &key_rows)?);
        columns.push(read_column(&parsed.event_time, ValueType::Timestamp)?);
        for (view, &ty) in parsed.features.iter().zip(&self.feature_types) {
            columns.push(read_column(view, ty)?);
        }
        Ok(RecordBatch::try_new(self.row_schema.clone(), columns)?)
    }
}

/// Applies events that arrive sorted by entity key, event time, event id and content
/// (the order [`lockstep_core::order::with_order_columns`] makes sortable), across any number
/// of batches: duplicates are dropped as they go and an entity may span batches, its
/// state carried over. The result equals [`Executor::run`] over all the events at once.
pub struct OrderedRun<'e> {
    executor: &'e mut Executor,
    states: &'e mut StateMap,
    current: Option<EntityKey>,
    /// Event ids of the open entity (ids are already hashes: a fast hasher will do).
    seen: HashSet<u128, KeyHasher>,
    stats: RunStats,
    keep_finished: bool,
    /// Events of the last pushed batch that the plugin failed on.
    failed: Vec<FailedEvent>,
    /// Once an entity's last event is applied, its wake-ups up to here are taken.
    fire_until: Option<i64>,
}

impl OrderedRun<'_> {
    /// The events of the batch last [pushed](Self::push) that the plugin failed on
    /// (skipped; rows of that batch), taken.
    pub fn take_failed(&mut self) -> Vec<FailedEvent> {
        std::mem::take(&mut self.failed)
    }

    /// Drops each entity's state once its last event has been applied (the input is
    /// sorted, so an entity is finished when the next one starts): memory stays bounded
    /// by one entity instead of growing with all of them. For jobs whose final states
    /// are not wanted.
    pub fn discard_finished_states(mut self) -> Self {
        self.keep_finished = false;
        self
    }

    /// Takes, for a plugin with timers, every wake-up at or before `until` of each
    /// entity once its last event is applied (the end of the input: no event at or
    /// before `until` will come). Set it before the first [`push`](Self::push) of a
    /// batch holding an entity's end; [`finish`](Self::finish) wakes the last one.
    pub fn set_fire_until(&mut self, until: Option<i64>) {
        self.fire_until = until.filter(|_| self.executor.manifest.timer_resolution.is_some());
    }

    /// Ends the run: the entity still open takes its wake-ups (see
    /// [`set_fire_until`](Self::set_fire_until)); the rows they emitted.
    pub fn finish(&mut self) -> Result<RecordBatch, ExecError> {
        let exec = &mut *self.executor;
        let empty = RecordBatch::new_empty(exec.row_schema.clone());
        let (Some(until), Some(key)) = (self.fire_until, self.current.take()) else {
            return Ok(empty);
        };
        let columns: Vec<ArrayRef> = exec
            .input_schema
            .fields()
            .iter()
            .map(|f| arrow_array::new_empty_array(f.data_type()))
            .collect();
        let key_col = exec
            .manifest
            .input_index(&exec.manifest.entity_key)
            .ok_or_else(|| ExecError::Input("entity key is not an input field".into()))?;
        let run = Run {
            key: key.clone(),
            start: 0,
            len: 0,
            fire_until: Some(until),
        };
        let mut stats = RunStats::default();
        let mut failed = Vec::new();
        let woken_before = exec.wake_rows;
        let out = exec.apply_runs(
            &columns,
            key_col,
            &[run],
            self.states,
            &mut stats,
            &mut failed,
        )?;
        if !self.keep_finished {
            self.states.remove(&key);
        }
        self.stats.calls += stats.calls;
        self.stats.wake_rows += exec.wake_rows - woken_before;
        let rows = concat_batches(&exec.row_schema, &out)?;
        self.stats.rows_out += rows.num_rows();
        Ok(rows)
    }

    /// Applies one sorted batch (input columns followed by the two order columns) and
    /// returns the rows it emitted.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<RecordBatch, ExecError> {
        use arrow_array::BooleanArray;
        use arrow_select::filter::filter;
        let exec = &mut *self.executor;
        let n_input = exec.input_types.len();
        let key_col = exec
            .manifest
            .input_index(&exec.manifest.entity_key)
            .ok_or_else(|| ExecError::Input("entity key is not an input field".into()))?;
        let ids = batch
            .column_by_name(lockstep_core::order::EVENT_ID_COLUMN)
            .and_then(|c| c.as_primitive_opt::<arrow_array::types::Decimal128Type>())
            .ok_or_else(|| ExecError::Input("ordered batches need the event id column".into()))?;
        let n = batch.num_rows();
        self.stats.events_in += n;
        let open_before = self.current.clone();
        let mut keep = Vec::with_capacity(n);
        let mut runs: Vec<Run> = Vec::new();
        let mut kept = 0usize;
        for row in 0..n {
            let key_array = batch.column(key_col).as_ref();
            // Compare in place; an owned key is only made when the entity changes.
            if !self
                .current
                .as_ref()
                .is_some_and(|k| k.equals(key_array, row))
            {
                let key = EntityKey::from_array(key_array, row)
                    .ok_or_else(|| ExecError::Input("entity key must be string or int64".into()))?;
                if let Some(previous) = &self.current
                    && key < *previous
                {
                    return Err(ExecError::Input(format!(
                        "events are not sorted by entity key: `{key}` after `{previous}`"
                    )));
                }
                self.current = Some(key.clone());
                // Clearing wipes the whole table: one busy entity would make that cost
                // be paid again for every entity after it.
                if self.seen.capacity() > 1024 {
                    self.seen = HashSet::default();
                } else {
                    self.seen.clear();
                }
                self.stats.entities += 1;
                runs.push(Run {
                    key,
                    start: kept,
                    len: 0,
                    fire_until: None,
                });
            } else if runs.is_empty()
                && let Some(key) = self.current.clone()
            {
                runs.push(Run {
                    key,
                    start: kept,
                    len: 0,
                    fire_until: None,
                });
            }
            let id = lockstep_core::order::from_order_value(ids.value(row));
            let fresh = self.seen.insert(id);
            keep.push(fresh);
            if fresh {
                kept += 1;
                if let Some(run) = runs.last_mut() {
                    run.len += 1;
                }
            } else {
                self.stats.duplicates += 1;
            }
        }
        let started: Vec<EntityKey> = if self.keep_finished {
            Vec::new()
        } else {
            runs.iter().map(|r| r.key.clone()).collect()
        };
        if let Some(until) = self.fire_until {
            // Every entity but the one still open has seen its last event, the one
            // open before this batch included when the batch starts another.
            let open_runs = runs.len();
            for run in runs.iter_mut().take(open_runs.saturating_sub(1)) {
                run.fire_until = Some(until);
            }
            if let Some(previous) = &open_before
                && runs.first().is_some_and(|r| r.key != *previous)
            {
                runs.insert(
                    0,
                    Run {
                        key: previous.clone(),
                        start: 0,
                        len: 0,
                        fire_until: Some(until),
                    },
                );
            }
        }
        runs.retain(|r| r.len > 0 || r.fire_until.is_some());
        self.stats.events_applied += kept;
        let mask = BooleanArray::from(keep);
        let columns: Vec<ArrayRef> = batch.columns()[..n_input]
            .iter()
            .map(|c| filter(c.as_ref(), &mask))
            .collect::<Result<_, _>>()?;
        let mut stats = RunStats::default();
        let mut failed = Vec::new();
        let woken_before = exec.wake_rows;
        let out = exec.apply_runs(
            &columns,
            key_col,
            &runs,
            self.states,
            &mut stats,
            &mut failed,
        )?;
        if !failed.is_empty() {
            // Positions among the kept events, back to rows of `batch`.
            let kept_rows: Vec<usize> = (0..n).filter(|&row| mask.value(row)).collect();
            self.stats.events_applied -= failed.len();
            self.stats.failed += failed.len();
            self.failed = failed
                .into_iter()
                .map(|(at, key, message)| FailedEvent {
                    row: kept_rows[at],
                    key,
                    message,
                })
                .collect();
        } else {
            self.failed.clear();
        }
        if !self.keep_finished {
            // Every entity but the one still open has seen its last event.
            let open = self.current.as_ref();
            for key in open_before.iter().chain(&started) {
                if Some(key) != open {
                    self.states.remove(key);
                }
            }
        }
        self.stats.calls += stats.calls;
        self.stats.wake_rows += exec.wake_rows - woken_before;
        let rows = concat_batches(&exec.row_schema, &out)?;
        self.stats.rows_out += rows.num_rows();
        Ok(rows)
    }

    /// Counters so far.
    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    /// How many entity states the run holds now.
    pub fn states_held(&self) -> usize {
        self.states.len()
    }
}
