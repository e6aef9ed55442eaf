//! [`StreamProcessor`]: raw records in arrival order → the plugin, in event order.

use crate::{DeadLetter, LateEvent, Record, StreamError};
use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{BooleanArray, RecordBatch};
use arrow_schema::SchemaRef;
use arrow_select::concat::concat_batches;
use arrow_select::filter::filter_record_batch;
use lockstep_abi::Manifest;
use lockstep_core::decode::JsonDecoder;
use lockstep_core::erasure::Erasures;
use lockstep_core::key::{EntityKey, KeyHasher, KeySet, StateMap};
use lockstep_core::order::{event_ids, identity};
use lockstep_core::schema::{input_schema, row_schema};
use lockstep_executor::{Executor, RunStats};
use lockstep_runtime::Plugin;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// How the processor orders events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// How far behind the latest event time seen an event may arrive and still be
    /// applied in order (UTC microseconds). The watermark is the latest event time
    /// seen minus this.
    pub allowed_lateness: i64,
    /// Events before this instant (UTC µs) belong to a backfill the stream goes on
    /// from: they are skipped (counted, neither applied nor late).
    pub start_at: Option<i64>,
    /// Events more than this ahead of the clock (µs) are dead letters: they never
    /// reach the reorder buffer, so they never move the watermark. The batch host
    /// refuses them by the same rule ([`lockstep_core::decode::event_time_problem`]).
    /// `None` accepts any time.
    pub max_future: Option<i64>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            allowed_lateness: 5_000_000,
            start_at: None,
            max_future: Some(lockstep_core::decode::DEFAULT_MAX_FUTURE_MICROS),
        }
    }
}

/// What one [`StreamProcessor::push`] or [`StreamProcessor::drain`] produced.
#[derive(Debug)]
pub struct Step {
    /// Rows the plugin emitted for the events released (in the row schema: entity
    /// key, `event_time`, features), by entity key, then application order.
    pub rows: RecordBatch,
    /// Events that arrived behind the watermark: not applied (DESIGN §4).
    pub late: Vec<LateEvent>,
    /// Records that could not be decoded: not applied.
    pub dead: Vec<DeadLetter>,
    /// Counters of the plugin calls made.
    pub stats: RunStats,
    /// Late arrivals recognised as redeliveries of events already taken.
    pub late_duplicates: usize,
}

/// Counters since the processor started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Records received.
    pub records: u64,
    /// Records decoded into events.
    pub events: u64,
    /// Events applied by the plugin (duplicates excluded).
    pub applied: u64,
    /// Duplicates dropped (in the buffer and late redeliveries).
    pub duplicates: u64,
    /// Late events (to the late log).
    pub late: u64,
    /// Records that could not be decoded, or that the plugin failed on (to the
    /// dead-letter log).
    pub dead: u64,
    /// Of `dead`: events the plugin failed on, skipped while everything else was
    /// applied.
    pub plugin_failures: u64,
    /// Rows emitted.
    pub rows: u64,
    /// Events before the start instant, left to the backfill.
    pub before_start: u64,
    /// Events of erased entities at or before their erasure time: dropped, never
    /// applied (see `lockstep_core::erasure`).
    pub erased: u64,
    /// Entities woken for their wake-ups without an event (a plugin with timers;
    /// wake-ups between events are taken inside the plugin's calls).
    pub woken: u64,
    /// Rows wake-ups emitted (timers fired), with or without an event.
    pub wake_rows: u64,
}

impl StreamStats {
    /// Adds another processor's counters to these.
    pub fn add(&mut self, other: &StreamStats) {
        self.records += other.records;
        self.events += other.events;
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.plugin_failures += other.plugin_failures;
        self.late += other.late;
        self.dead += other.dead;
        self.rows += other.rows;
        self.before_start += other.before_start;
        self.erased += other.erased;
        self.woken += other.woken;
        self.wake_rows += other.wake_rows;
    }
}

/// The column of a held event's shard, after the input columns.
pub const SHARD_COLUMN: &str = "__lockstep_shard";
/// The column of a held event's sequence number, after [`SHARD_COLUMN`].
pub const SEQUENCE_COLUMN: &str = "__lockstep_sequence";

/// The schema of held events: `manifest`'s input schema, then [`SHARD_COLUMN`] and
/// [`SEQUENCE_COLUMN`], so an event the plugin fails on when it is applied (maybe after
/// a checkpoint) is dead-lettered with the record it came from. These columns never
/// reach the plugin, its ordering or its duplicate identities.
pub fn buffer_schema(manifest: &Manifest) -> arrow_schema::SchemaRef {
    let mut fields: Vec<arrow_schema::Field> = input_schema(manifest)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(arrow_schema::Field::new(
        SHARD_COLUMN,
        arrow_schema::DataType::Utf8,
        false,
    ));
    fields.push(arrow_schema::Field::new(
        SEQUENCE_COLUMN,
        arrow_schema::DataType::Utf8,
        false,
    ));
    std::sync::Arc::new(arrow_schema::Schema::new(fields))
}

/// `batch` in [`buffer_schema`]: as is, or (held events of a checkpoint written before
/// events carried their origin) with empty origins.
fn with_origins(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, StreamError> {
    if batch.num_columns() == schema.fields().len() {
        return Ok(batch);
    }
    let empty: arrow_array::ArrayRef =
        std::sync::Arc::new(arrow_array::StringArray::from(vec![""; batch.num_rows()]));
    let mut columns = batch.columns().to_vec();
    columns.extend([empty.clone(), empty]);
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Records decoded into a plugin's input schema by [`StreamProcessor::decode`]: what
/// [`StreamProcessor::push_decoded`] takes, for this processor or any other whose
/// plugin has the same [`decode_signature`] (several feature groups on one stream
/// decode each record once per distinct input schema).
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The events, in the input schema.
    pub events: RecordBatch,
    /// For each event, the index of its record in the batch decoded.
    pub sources: Vec<usize>,
    /// Records that could not be decoded.
    pub dead: Vec<DeadLetter>,
    /// How many records were decoded.
    pub records: usize,
}

/// What decides how a plugin's records decode: its input fields (name, type,
/// nullability), entity key and event time. Two plugins with equal signatures turn the
/// same records into the same events and dead letters.
pub fn decode_signature(manifest: &Manifest) -> String {
    let fields: Vec<String> = manifest
        .input
        .iter()
        .map(|f| format!("{}:{:?}:{}", f.name, f.ty, f.nullable))
        .collect();
    format!(
        "{}|key={}|time={}",
        fields.join(","),
        manifest.entity_key,
        manifest.event_time
    )
}

/// Applies a plugin to a stream of records exactly as the batch host applies it to
/// the same events at rest, whatever their arrival order within the allowed lateness.
///
/// Records are decoded by the shared decoder. Each event is held in a reorder buffer
/// until the watermark (latest event time seen − allowed lateness) passes it; then the
/// released events are applied per entity in `(event_time, event_id)` order, on top of
/// each entity's state, duplicates once. An event whose time is already behind the
/// watermark when it arrives is **late**: applying it would break the order, so it is
/// returned in [`Step::late`] (unless it redelivers an event already taken, which is
/// a duplicate) and never applied.
///
/// Whether an event is late depends only on the events that arrived before it, never
/// on how records are grouped into calls to [`push`](Self::push).
pub struct StreamProcessor {
    manifest: Manifest,
    executor: Executor,
    /// [`buffer_schema`], made once.
    buffer_schema: SchemaRef,
    config: StreamConfig,
    states: StateMap,
    decoder: JsonDecoder,
    /// Held events ([`buffer_schema`]: the input columns, then each event's shard and
    /// sequence number), each with its time not behind the watermark at its arrival.
    buffer: Vec<RecordBatch>,
    buffered: usize,
    max_seen: Option<i64>,
    /// Events taken (buffered or applied) that a late redelivery may still repeat,
    /// by event time, pruned behind the horizon; see [`Taken`].
    taken: Taken,
    /// The identities of `taken` ([`identity`]: one 128-bit hash of entity and event
    /// id): a lookup per event without cloning or hashing the key text.
    taken_set: HashSet<u128, KeyHasher>,
    stats: StreamStats,
    time_col: usize,
    key_col: usize,
    id_col: Option<usize>,
    /// Entities whose state the plugin may have changed since [`Self::take_changed`].
    touched: KeySet,
    /// Erased entities: their events at or before the erasure are dropped on arrival.
    erasures: Arc<Erasures>,
    /// For a plugin with timers: the entities by their earliest wake-up, one entry
    /// each time an entity's state changed (an entry may be stale: it is checked
    /// against the state before the entity is woken). Keyed by instant alone: wake-ups
    /// fall on the manifest's grid, so many entities share one, and an entry costs no
    /// key comparison.
    wakes: std::collections::BTreeMap<i64, Vec<EntityKey>>,
}

/// What a processor holds for its shard: per-entity states, the events still in the
/// reorder buffer, the latest event time seen and the identities a late redelivery may
/// repeat. It moves with the shard's entities when the shard is split or merged, so
/// that the next shard goes on exactly where this one stopped.
#[derive(Debug, Default)]
pub struct ShardState {
    states: StateMap,
    buffer: Vec<RecordBatch>,
    max_seen: Option<i64>,
    taken: Taken,
}

/// Events taken within the horizon: `(event time, identity)` → `(entity, event id)`.
/// One entry per event, ordered by time so that the horizon cuts it with one split;
/// the identity in the key is what `taken_set` holds, so forgetting an event needs no
/// rehash, and two events of one time never share a slot.
type Taken = BTreeMap<(i64, u128), (EntityKey, u128)>;

/// What a shard holds besides its entities' states: the events in the reorder
/// buffer, the latest event time seen and the identities a late redelivery may
/// repeat. Bounded by the allowed lateness, so it is saved whole with every
/// checkpoint, while entity states are saved as they change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pending {
    /// Held events, in the input schema.
    pub buffer: Vec<RecordBatch>,
    /// The latest event time seen (UTC µs).
    pub max_seen: Option<i64>,
    /// `(event time, entity, event id)` of events taken within the horizon.
    pub taken: Vec<(i64, EntityKey, u128)>,
}

impl Pending {
    fn of(buffer: &[RecordBatch], max_seen: Option<i64>, taken: &Taken) -> Self {
        Pending {
            buffer: buffer
                .iter()
                .filter(|b| b.num_rows() > 0)
                .cloned()
                .collect(),
            max_seen,
            taken: taken
                .iter()
                .map(|((t, _), (k, id))| (*t, k.clone(), *id))
                .collect(),
        }
    }
}

impl ShardState {
    /// A shard's state from what a checkpoint saved: its pending part and the states
    /// of its entities.
    pub fn from_saved(pending: Pending, states: StateMap) -> Self {
        let taken = pending
            .taken
            .into_iter()
            .map(|(t, k, id)| ((t, identity(&k, id)), (k, id)))
            .collect();
        ShardState {
            states,
            buffer: pending.buffer,
            max_seen: pending.max_seen,
            taken,
        }
    }

    /// Everything but the entity states.
    pub fn pending(&self) -> Pending {
        Pending::of(&self.buffer, self.max_seen, &self.taken)
    }

    /// Entities with state or buffered events.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.buffer.iter().all(|b| b.num_rows() == 0)
    }

    /// Whether it holds nothing at all: no entity state, no held event, no recent
    /// identity.
    pub fn is_pending_empty(&self) -> bool {
        self.is_empty() && self.taken.is_empty()
    }

    /// The per-entity states.
    pub fn states(&self) -> &StateMap {
        &self.states
    }

    /// The per-entity states, taken out.
    pub fn into_states(self) -> StateMap {
        self.states
    }

    /// Takes out the part of this state that belongs to the entities `belongs` selects
    /// (`key_col`: the entity key's input column). The latest event time seen is
    /// shared: it is a property of the stream so far, not of an entity.
    pub fn take_entities(
        &mut self,
        key_col: usize,
        belongs: impl Fn(&EntityKey) -> bool,
    ) -> Result<ShardState, StreamError> {
        let mut out = ShardState {
            max_seen: self.max_seen,
            ..ShardState::default()
        };
        let keys: Vec<EntityKey> = self.states.keys().filter(|k| belongs(k)).cloned().collect();
        for key in keys {
            if let Some(state) = self.states.remove(&key) {
                out.states.insert(key, state);
            }
        }
        let mut rest = Vec::new();
        for batch in self.buffer.drain(..) {
            let column = batch.column(key_col);
            let mask: BooleanArray = (0..batch.num_rows())
                .map(|row| {
                    Some(EntityKey::from_array(column.as_ref(), row).is_some_and(|k| belongs(&k)))
                })
                .collect();
            let others: BooleanArray = mask.iter().map(|m| Some(m != Some(true))).collect();
            out.buffer.push(filter_record_batch(&batch, &mask)?);
            rest.push(filter_record_batch(&batch, &others)?);
        }
        self.buffer = rest;
        let (mine, theirs): (Taken, Taken) = std::mem::take(&mut self.taken)
            .into_iter()
            .partition(|(_, (k, _))| belongs(k));
        self.taken = theirs;
        out.taken = mine;
        Ok(out)
    }

    /// Adds `other` (another shard's entities) to this state.
    pub fn merge(&mut self, other: ShardState) {
        self.states.extend(other.states);
        self.buffer.extend(other.buffer);
        self.max_seen = match (self.max_seen, other.max_seen) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.taken.extend(other.taken);
    }

    /// Drops what this state holds of the entities `erasures` names: their states
    /// (whole) and their buffered events at or before the erasure (`key_col`,
    /// `time_col`: the input columns). Returns the entities whose state went.
    pub fn forget_erased(
        &mut self,
        erasures: &Erasures,
        key_col: usize,
        time_col: usize,
    ) -> Result<Vec<EntityKey>, StreamError> {
        forget_erased(
            &mut self.states,
            &mut self.buffer,
            erasures,
            key_col,
            time_col,
        )
    }

    /// The latest event time the shard saw.
    pub fn latest_event_time(&self) -> Option<i64> {
        self.max_seen
    }

    /// A state holding only per-entity states (a backfill's hand-off).
    pub fn from_states(states: StateMap) -> Self {
        ShardState {
            states,
            ..ShardState::default()
        }
    }
}

impl StreamProcessor {
    /// A processor that goes on from `state` (a shard's parents', or a checkpoint).
    pub fn resume(
        plugin: &Plugin,
        config: StreamConfig,
        state: ShardState,
    ) -> Result<Self, StreamError> {
        let mut p = Self::new(plugin, config)?;
        p.buffered = state.buffer.iter().map(RecordBatch::num_rows).sum();
        p.buffer = state
            .buffer
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| with_origins(b, &p.buffer_schema))
            .collect::<Result<_, _>>()?;
        p.states = state.states;
        p.max_seen = state.max_seen;
        p.taken_set
            .extend(state.taken.keys().map(|&(_, identity)| identity));
        p.taken = state.taken;
        p.index_wakes_of_all();
        Ok(p)
    }

    /// Rebuilds the wake-up index from every state (at start, and after states came in
    /// whole).
    fn index_wakes_of_all(&mut self) {
        self.wakes.clear();
        if self.manifest.timer_resolution.is_none() {
            return;
        }
        for (key, state) in &self.states {
            if let Ok(Some(at)) = lockstep_abi::timers::next_wake(state) {
                self.wakes.entry(at).or_default().push(key.clone());
            }
        }
    }

    /// Indexes the earliest wake-up of each of `keys` (states that just changed).
    fn index_wakes(&mut self, keys: &[EntityKey]) {
        if self.manifest.timer_resolution.is_none() {
            return;
        }
        for key in keys {
            if let Some(Ok(Some(at))) = self
                .states
                .get(key)
                .map(|s| lockstep_abi::timers::next_wake(s))
            {
                self.wakes.entry(at).or_default().push(key.clone());
            }
        }
    }

    /// Takes out of the index the entities with a wake-up at or before `until`, as
    /// their states say now.
    fn due_wakes(&mut self, until: i64) -> Vec<EntityKey> {
        let mut due = Vec::new();
        while let Some((&at, _)) = self.wakes.first_key_value() {
            if at > until {
                break;
            }
            let Some((_, keys)) = self.wakes.pop_first() else {
                break;
            };
            for key in keys {
                let pending = self
                    .states
                    .get(&key)
                    .and_then(|s| lockstep_abi::timers::next_wake(s).ok().flatten());
                if pending.is_some_and(|at| at <= until) {
                    due.push(key);
                }
            }
        }
        due.sort();
        due.dedup();
        due
    }

    /// The entities whose state changed since the last call, each with its state now
    /// (`None`: the plugin dropped it). A checkpoint saves only these.
    pub fn take_changed(&mut self) -> Vec<(EntityKey, Option<Vec<u8>>)> {
        let mut changed: Vec<_> = self
            .touched
            .drain()
            .map(|key| {
                let state = self.states.get(&key).cloned();
                (key, state)
            })
            .collect();
        changed.sort_by(|a, b| a.0.cmp(&b.0));
        changed
    }

    /// Everything but the entity states: what a checkpoint saves of this processor
    /// besides [`Self::take_changed`].
    pub fn pending(&self) -> Pending {
        Pending::of(&self.buffer, self.max_seen, &self.taken)
    }

    /// Ends this processor, keeping everything it holds for whoever goes on.
    pub fn into_shard_state(self) -> ShardState {
        ShardState {
            states: self.states,
            buffer: self.buffer,
            max_seen: self.max_seen,
            taken: self.taken,
        }
    }

    /// The input column of the entity key.
    pub fn key_column(&self) -> usize {
        self.key_col
    }

    /// A processor running a fresh instance of `plugin`, every entity without state.
    pub fn new(plugin: &Plugin, config: StreamConfig) -> Result<Self, StreamError> {
        let manifest = plugin.manifest().clone();
        let index = |name: &str| {
            manifest.input_index(name).ok_or_else(|| {
                StreamError::Manifest(format!("the manifest has no input field `{name}`"))
            })
        };
        let time_col = index(&manifest.event_time)?;
        let key_col = index(&manifest.entity_key)?;
        let id_col = manifest.event_id.as_deref().map(index).transpose()?;
        if config.allowed_lateness < 0 {
            return Err(StreamError::Config(
                "allowed lateness must not be negative".into(),
            ));
        }
        Ok(StreamProcessor {
            executor: Executor::new(plugin)?,
            buffer_schema: buffer_schema(&manifest),
            decoder: JsonDecoder::new(&manifest),
            manifest,
            config,
            states: StateMap::default(),
            buffer: Vec::new(),
            buffered: 0,
            max_seen: None,
            taken: Taken::new(),
            taken_set: HashSet::default(),
            stats: StreamStats::default(),
            time_col,
            key_col,
            id_col,
            touched: KeySet::default(),
            erasures: Arc::default(),
            wakes: Default::default(),
        })
    }

    /// Honours `erasures` from now on: an arriving event of an erased entity at or
    /// before its erasure time is dropped (counted in [`StreamStats::erased`]), and
    /// what this processor holds of an erased entity — its state (whole) and its held
    /// events at or before the erasure — goes now; the next checkpoint removes the
    /// state. Returns the entities whose state was dropped.
    pub fn set_erasures(&mut self, erasures: Arc<Erasures>) -> Result<Vec<EntityKey>, StreamError> {
        let dropped = forget_erased(
            &mut self.states,
            &mut self.buffer,
            &erasures,
            self.key_col,
            self.time_col,
        )?;
        self.buffered = self.buffer.iter().map(RecordBatch::num_rows).sum();
        for key in &dropped {
            self.touched.insert(key.clone());
        }
        self.erasures = erasures;
        Ok(dropped)
    }

    /// Starts every entity from `states` (a backfill's final states: the hand-off).
    pub fn with_states(mut self, states: StateMap) -> Self {
        self.states = states;
        self.index_wakes_of_all();
        self
    }

    /// The latest event time seen (or the clock a caught-up shard's watermark
    /// followed; see [`advance_watermark`](Self::advance_watermark)).
    pub fn latest_event_time(&self) -> Option<i64> {
        self.max_seen
    }

    /// The watermark: the latest event time seen minus the allowed lateness.
    pub fn watermark(&self) -> Option<i64> {
        self.max_seen
            .map(|m| m.saturating_sub(self.config.allowed_lateness))
    }

    /// Events held in the reorder buffer.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Each entity's state after the events applied so far.
    pub fn states(&self) -> &StateMap {
        &self.states
    }

    /// Counters since the start.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Takes `records` in arrival order, then applies every held event the watermark
    /// has passed.
    pub fn push(&mut self, records: &[Record<'_>]) -> Result<Step, StreamError> {
        let decoded = self.decode(records)?;
        self.push_decoded(records, &decoded)
    }

    /// Decodes `records` into this processor's input schema, touching nothing else:
    /// the first half of [`push`](Self::push). Processors of plugins with the same
    /// [`decode_signature`] decode alike, so one decoding serves them all.
    pub fn decode(&mut self, records: &[Record<'_>]) -> Result<Decoded, StreamError> {
        let latest = self
            .config
            .max_future
            .map(|lead| lockstep_core::now_micros().saturating_add(lead));
        self.decoder.set_latest_event_time(latest);
        let mut dead = Vec::new();
        let mut sources = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            let text = match std::str::from_utf8(record.data) {
                Ok(t) => t,
                Err(e) => {
                    dead.push(DeadLetter::of(record, format!("not UTF-8 text: {e}")));
                    continue;
                }
            };
            match self.decoder.push_record(text.trim_end(), 0) {
                Ok(()) => sources.push(index),
                Err(e) => dead.push(DeadLetter::of(
                    record,
                    match &e.field {
                        Some(field) => format!("field `{field}`: {}", e.message),
                        None => e.message.clone(),
                    },
                )),
            }
        }
        Ok(Decoded {
            events: self.decoder.finish()?,
            sources,
            dead,
            records: records.len(),
        })
    }

    /// The second half of [`push`](Self::push): takes `records`, decoded as
    /// `decoded` (by [`decode`](Self::decode) of this processor or of one with the
    /// same [`decode_signature`]), then applies every held event the watermark has
    /// passed.
    pub fn push_decoded(
        &mut self,
        records: &[Record<'_>],
        decoded: &Decoded,
    ) -> Result<Step, StreamError> {
        if decoded.records != records.len()
            || decoded.sources.iter().any(|&i| i >= records.len())
            || decoded.events.num_rows() != decoded.sources.len()
            || decoded.events.schema().fields()[..]
                != self.buffer_schema.fields()[..self.manifest.input.len()]
        {
            return Err(StreamError::Config(
                "records decoded for another batch or another input schema".into(),
            ));
        }
        self.stats.records += records.len() as u64;
        let mut dead = decoded.dead.clone();
        self.stats.dead += dead.len() as u64;
        let events = decoded.events.clone();
        let sources: Vec<&Record<'_>> = decoded.sources.iter().map(|&i| &records[i]).collect();
        self.stats.events += events.num_rows() as u64;

        // Classify in arrival order: late iff behind the watermark of what came before.
        let times = events
            .column(self.time_col)
            .as_primitive::<TimestampMicrosecondType>();
        let keys = events.column(self.key_col).clone();
        // The content hash is the id only when the event has no declared one.
        let ids = event_ids(&events, self.id_col);
        let mut keep = Vec::with_capacity(events.num_rows());
        let mut late = Vec::new();
        let mut late_duplicates = 0;
        for (row, &record) in sources.iter().enumerate() {
            let time = times.value(row);
            let watermark = self.watermark();
            let key = EntityKey::from_array(keys.as_ref(), row)
                .ok_or_else(|| StreamError::Manifest("unsupported entity key type".into()))?;
            if let Some(partition_key) = record.partition_key
                && !partition_key_matches(partition_key, &key)
            {
                keep.push(false);
                self.stats.events -= 1;
                self.stats.dead += 1;
                dead.push(DeadLetter::of(
                    record,
                    format!(
                        "partition key `{partition_key}` is not the entity key `{key}`: \
                         an entity's events must share a shard to be applied in order"
                    ),
                ));
                continue;
            }
            if self.erasures.drops(&key, time) {
                // As if it had never arrived: no watermark move, no duplicate identity.
                keep.push(false);
                self.stats.erased += 1;
                continue;
            }
            if self.config.start_at.is_some_and(|start| time < start) {
                keep.push(false);
                self.stats.before_start += 1;
                continue;
            }
            let id = ids[row];
            match watermark {
                Some(w) if time < w => {
                    keep.push(false);
                    // Recognised only within the horizon, judged from this watermark:
                    // when identities were pruned must not decide (that depends on how
                    // records were grouped).
                    let horizon = w.saturating_sub(self.config.allowed_lateness);
                    if time >= horizon && self.taken_set.contains(&identity(&key, id)) {
                        late_duplicates += 1;
                    } else {
                        late.push(LateEvent {
                            shard: record.shard.to_owned(),
                            sequence: record.sequence.to_owned(),
                            event_time: time,
                            watermark: w,
                            record: String::from_utf8_lossy(record.data).trim_end().to_owned(),
                        });
                    }
                }
                _ => {
                    keep.push(true);
                    let identity = identity(&key, id);
                    if self.taken_set.insert(identity) {
                        self.taken.insert((time, identity), (key, id));
                    }
                    self.max_seen = Some(self.max_seen.map_or(time, |m| m.max(time)));
                }
            }
        }
        self.stats.late += late.len() as u64;
        self.stats.duplicates += late_duplicates as u64;
        let origins = std::sync::Arc::new(arrow_array::StringArray::from_iter_values(
            sources.iter().map(|r| r.shard),
        )) as arrow_array::ArrayRef;
        let sequences = std::sync::Arc::new(arrow_array::StringArray::from_iter_values(
            sources.iter().map(|r| r.sequence),
        )) as arrow_array::ArrayRef;
        let mut columns = events.columns().to_vec();
        columns.extend([origins, sequences]);
        let with_origin = RecordBatch::try_new(self.buffer_schema.clone(), columns)?;
        let held = filter_record_batch(&with_origin, &BooleanArray::from(keep))?;
        if held.num_rows() > 0 {
            self.buffered += held.num_rows();
            self.buffer.push(held);
        }
        // Events before the watermark are applied; then every wake-up before it is
        // due, since an event at the watermark may still arrive.
        let released = match self.watermark() {
            Some(w) => self.release(|t| t < w, Some(w.saturating_sub(1)))?,
            None => self.release(|_| false, None)?,
        };
        self.forget_before_horizon();
        Ok(Step {
            late,
            dead,
            late_duplicates,
            ..released
        })
    }

    /// Applies every held event (end of a finite input), then the wake-ups up to the
    /// latest event time seen. Not for a service that will resume: it keeps its buffer
    /// in a checkpoint instead.
    pub fn drain(&mut self) -> Result<Step, StreamError> {
        self.drain_until(self.max_seen)
    }

    /// Applies every held event, then the wake-ups at or before `fire_until`: the end
    /// of the input over every shard (the batch host wakes entities up to its input's
    /// latest event time), or where the stream stops.
    pub fn drain_until(&mut self, fire_until: Option<i64>) -> Result<Step, StreamError> {
        self.release(|_| true, fire_until)
    }

    /// Moves the watermark up to `to` (UTC µs), as if an event at `to` plus the
    /// allowed lateness had been seen — a shard with no new events at its tip, whose
    /// watermark follows the clock (see DESIGN §4) — then applies what that releases:
    /// held events and wake-ups before it. Never moves it back.
    pub fn advance_watermark(&mut self, to: i64) -> Result<Step, StreamError> {
        let seen = to.saturating_add(self.config.allowed_lateness);
        if self.max_seen.is_some_and(|m| m >= seen) {
            return self.release(|_| false, None);
        }
        self.max_seen = Some(seen);
        let w = to;
        let step = self.release(|t| t < w, Some(w.saturating_sub(1)))?;
        self.forget_before_horizon();
        Ok(step)
    }

    /// Applies the held events whose time satisfies `due`, then the wake-ups at or
    /// before `fire_until` of the entities they touched and of those due by the index.
    fn release(
        &mut self,
        due: impl Fn(i64) -> bool,
        fire_until: Option<i64>,
    ) -> Result<Step, StreamError> {
        let schema = self.buffer_schema.clone();
        let mut now = Vec::new();
        let mut later = Vec::new();
        for batch in self.buffer.drain(..) {
            let times = batch
                .column(self.time_col)
                .as_primitive::<TimestampMicrosecondType>();
            let mask: BooleanArray = times.iter().map(|t| Some(t.is_some_and(&due))).collect();
            let ready = mask.true_count();
            if ready == batch.num_rows() {
                now.push(batch);
            } else if ready == 0 {
                later.push(batch);
            } else {
                now.push(filter_record_batch(&batch, &mask)?);
                let rest: BooleanArray = mask.iter().map(|m| Some(m != Some(true))).collect();
                later.push(filter_record_batch(&batch, &rest)?);
            }
        }
        self.buffer = later;
        self.buffered = self.buffer.iter().map(RecordBatch::num_rows).sum();
        let held = concat_batches(&schema, &now)?;
        let n_input = self.manifest.input.len();
        let events = held.project(&(0..n_input).collect::<Vec<_>>())?;
        let timers = self.manifest.timer_resolution.is_some();
        let woken = match fire_until {
            Some(until) if timers => self.due_wakes(until),
            _ => Vec::new(),
        };
        if events.num_rows() == 0 && woken.is_empty() {
            return Ok(Step {
                rows: RecordBatch::new_empty(row_schema(&self.manifest)),
                late: Vec::new(),
                dead: Vec::new(),
                stats: RunStats::default(),
                late_duplicates: 0,
            });
        }
        let fire_until = fire_until.filter(|_| timers);
        let mut out = self
            .executor
            .run_until(&events, &mut self.states, fire_until, &woken)?;
        self.stats.woken += woken.len() as u64;
        self.index_wakes(&out.entities);
        self.touched.extend(std::mem::take(&mut out.entities));
        self.stats.applied += out.stats.events_applied as u64;
        self.stats.duplicates += out.stats.duplicates as u64;
        self.stats.rows += out.rows.num_rows() as u64;
        self.stats.wake_rows += out.stats.wake_rows as u64;
        // Events the plugin failed on: dead letters naming their record, as the batch
        // host's rejects name them; everything else was applied.
        let shards = held.column(n_input).as_string::<i32>();
        let sequences = held.column(n_input + 1).as_string::<i32>();
        let dead: Vec<DeadLetter> = out
            .failed
            .iter()
            .map(|f| DeadLetter {
                shard: shards.value(f.row).to_owned(),
                sequence: sequences.value(f.row).to_owned(),
                reason: format!(
                    "the plugin failed on this event of entity `{}`: {}",
                    f.key, f.message
                ),
                record: serde_json::Value::Object(lockstep_core::rows::row_json(&events, f.row))
                    .to_string(),
            })
            .collect();
        self.stats.dead += dead.len() as u64;
        self.stats.plugin_failures += dead.len() as u64;
        Ok(Step {
            rows: out.rows,
            late: Vec::new(),
            dead,
            stats: out.stats,
            late_duplicates: 0,
        })
    }

    /// Forgets identities of events older than the horizon within which a late
    /// redelivery is still recognised as a duplicate: twice the allowed lateness
    /// behind the latest event time. An older redelivery is reported late, never
    /// applied twice.
    fn forget_before_horizon(&mut self) {
        let Some(w) = self.watermark() else { return };
        let horizon = w.saturating_sub(self.config.allowed_lateness);
        let keep = self.taken.split_off(&(horizon, 0));
        for (_, identity) in std::mem::replace(&mut self.taken, keep).into_keys() {
            self.taken_set.remove(&identity);
        }
    }
}

/// Whether a record's partition key names `key`, compared without formatting a string
/// key.
fn partition_key_matches(partition_key: &str, key: &EntityKey) -> bool {
    match key {
        EntityKey::Str(s) => partition_key == s,
        EntityKey::Int(_) => partition_key == key.to_string(),
    }
}

/// Drops the states of the entities `erasures` names and their held events at or before
/// the erasure; returns the entities whose state went, sorted.
fn forget_erased(
    states: &mut StateMap,
    buffer: &mut Vec<RecordBatch>,
    erasures: &Erasures,
    key_col: usize,
    time_col: usize,
) -> Result<Vec<EntityKey>, StreamError> {
    if erasures.is_empty() {
        return Ok(Vec::new());
    }
    let mut dropped: Vec<EntityKey> = erasures
        .iter()
        .filter_map(|(key, _)| states.remove(&key).map(|_| key))
        .collect();
    dropped.sort();
    for batch in buffer.iter_mut() {
        *batch = erasures.filter(batch, key_col, time_col)?.0;
    }
    buffer.retain(|b| b.num_rows() > 0);
    Ok(dropped)
}
